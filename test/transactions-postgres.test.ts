import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { sql, type SQL } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { CompiledQuery, Kysely, PostgresDialect } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InMemoryCache } from "../src/core/cache/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { ConfigurationError, ConflictError, InsufficientCreditsError, LockTimeoutError } from "../src/core/errors.js";
import { createCreditManager, type CreditManager } from "../src/manager.js";
import type { TransactionScope } from "../src/transactions.js";
import { runProcess } from "./fixtures/processes.js";
import { billingStore } from "../src/modules/billing/store.js";

const url = process.env.CREDIT_PG_URL;
// reason: needs a PostgreSQL server (CREDIT_PG_URL, set by .ci/run); the run's closing block names it when skipped
describe.skipIf(!url)("credit operations inside the application's transaction (PostgreSQL)", () => {
  const schema = `cm_tx_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  const dir = mkdtempSync(join(tmpdir(), "cm-tx-"));
  const filePath = join(dir, "ledger.jsonl");
  let pool: pg.Pool;
  let cache: InMemoryCache;
  let manager: CreditManager;
  const user = () => `u-${randomUUID()}`;
  const orders = `"${schema}".orders`;
  const fileText = async () => {
    await manager.ledger.flush();
    return existsSync(filePath) ? readFileSync(filePath, "utf8") : "";
  };

  beforeAll(async () => {
    pool = new pg.Pool({ connectionString: url, max: 6 });
    cache = new InMemoryCache();
    manager = await createCreditManager({
      db: new PostgresDbManager({ pool, schema }),
      cache,
      ledger: { filePath },
      domainEvents: true,
    });
    await pool.query(`CREATE TABLE ${orders} (id text PRIMARY KEY, user_id text NOT NULL)`);
  });

  afterAll(async () => {
    await manager?.close();
    await pool?.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await pool?.end();
  });

  it("commit: the order, the account, the journal, the outbox, the file and the cache all show it", async () => {
    const u = user();
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(0); // cached: 0
    const order = randomUUID();
    const entries = await manager.transaction(pool, async (tx, client) => {
      await client.query(`INSERT INTO ${orders} (id, user_id) VALUES ($1, $2)`, [order, u]);
      const added = await tx.credits.addCredits(u, 100, { idempotencyKey: `order:${order}` });
      const spent = await tx.credits.deductCredits(u, 30);
      // Inside, the transaction's own writes; outside, nothing yet (and no wait: a plain read).
      expect((await tx.credits.getUserCreditsInfo(u)).balance).toBe(70);
      expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(0);
      expect(await cache.get(`credits:info:${u}`)).toMatchObject({ info: { balance: 0 } }); // never the uncommitted 70
      expect(await fileText()).not.toContain(added.id); // the file follows the commit only
      return [added, spent];
    });
    expect((await pool.query(`SELECT 1 FROM ${orders} WHERE id = $1`, [order])).rowCount).toBe(1);
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 70 });
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(70); // the cache was invalidated
    const journal = await manager.db.listJournal(u, { order: "asc", limit: 10 });
    expect(journal.map((e) => e.id)).toEqual(entries.map((e) => e.id));
    expect(await manager.db.listNotifications(u, { limit: 10 })).toHaveLength(2); // credits_added, credits_deducted
    const text = await fileText();
    for (const e of entries) expect(text).toContain(e.id);
    expect((await manager.credits.getCreditHistory(u)).items).toHaveLength(2);
    // The key committed with the order: a retry of the grant answers with the same entry.
    const again = await manager.credits.addCredits(u, 100, { idempotencyKey: `order:${order}` });
    expect(again.id).toBe(entries[0]?.id);
  });

  it("rollback: nothing anywhere — store, journal, outbox, file, cache", async () => {
    const u = user();
    await manager.credits.addCredits(u, 10);
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(10); // cached: 10
    const order = randomUUID();
    let added = "";
    await expect(
      manager.transaction(pool, async (tx, client) => {
        await client.query(`INSERT INTO ${orders} (id, user_id) VALUES ($1, $2)`, [order, u]);
        added = (await tx.credits.addCredits(u, 500)).id;
        await tx.credits.reserveCredits(u, 200);
        throw new Error("payment declined");
      }),
    ).rejects.toThrow("payment declined");
    expect((await pool.query(`SELECT 1 FROM ${orders} WHERE id = $1`, [order])).rowCount).toBe(0);
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 10, reserved: 0 });
    expect(await manager.db.listJournal(u, { order: "asc", limit: 10 })).toHaveLength(1);
    expect(await manager.db.listReservations(u)).toEqual([]);
    expect(await manager.db.listNotifications(u, { limit: 10 })).toHaveLength(1); // the first grant's event only
    expect(await fileText()).not.toContain(added);
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(10);
    expect(await cache.get(`credits:info:${u}`)).toMatchObject({ info: { balance: 10 } });
  });

  it("inTransaction on a raw pg client: committed() and rolledBack() decide the after-commit effects", async () => {
    const u = user();
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const scope = manager.inTransaction(client);
      const entry = await scope.credits.addCredits(u, 40);
      await client.query("ROLLBACK");
      await scope.rolledBack();
      expect(await manager.db.getAccount(u)).toBeNull();
      expect(await fileText()).not.toContain(entry.id);
      await expect(scope.credits.addCredits(u, 1)).rejects.toBeInstanceOf(ConfigurationError);
      await expect(scope.committed()).rejects.toBeInstanceOf(ConfigurationError);

      await client.query("BEGIN");
      const next = manager.inTransaction(client);
      const kept = await next.credits.addCredits(u, 40);
      // A refusal writes nothing and leaves the transaction usable.
      await expect(next.credits.deductCredits(u, 41)).rejects.toBeInstanceOf(InsufficientCreditsError);
      // Units of one scope run one after another on its connection: no conflict among them.
      const spent = await Promise.all([1, 2, 3].map(() => next.credits.deductCredits(u, 5)));
      await client.query("COMMIT");
      await next.committed();
      expect(await manager.db.getAccount(u)).toMatchObject({ balance: 25 });
      const text = await fileText();
      for (const e of [kept, ...spent]) expect(text).toContain(e.id);
    } finally {
      client.release();
    }
  });

  it("subscriptions and promos join the transaction too", async () => {
    const u = user();
    const plan = await manager.subscriptions.createPlan({
      name: `p-${u}`,
      creditsPerPeriod: 50,
      billingPeriod: "monthly",
    });
    const code = `TX${randomUUID().slice(0, 8)}`.toUpperCase();
    await manager.promos.createPromo({ code, credits: 7 });
    await expect(
      manager.transaction(pool, async (tx) => {
        await tx.subscriptions.subscribe(u, plan.id);
        await tx.promos.claimPromo(u, code);
        expect((await tx.credits.getUserCreditsInfo(u)).balance).toBe(57);
        throw new Error("undo");
      }),
    ).rejects.toThrow("undo");
    expect(await manager.db.getActiveSubscription(u)).toBeNull();
    expect(await billingStore(manager.db).listPromoClaims(u)).toEqual([]);
    expect(await manager.db.getAccount(u)).toBeNull();
    await manager.transaction(pool, async (tx) => {
      await tx.subscriptions.subscribe(u, plan.id);
      await tx.promos.claimPromo(u, code);
    });
    expect(await manager.db.getActiveSubscription(u)).not.toBeNull();
    expect(await billingStore(manager.db).listPromoClaims(u)).toHaveLength(1);
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 57 });
  });

  /** The adapter of docs/transactions.md: `$n` become Drizzle's bound parameters. */
  function statement(text: string, values: unknown[] = []): SQL {
    const parts = text.split(/\$(\d+)/);
    return sql.join(parts.map((part, i) => (i % 2 === 0 ? sql.raw(part) : sql`${values[Number(part) - 1]}`)));
  }

  /**
   * Runs `inBuilder` (the query builder's transaction: it inserts the order, grants 500 and spends
   * 100 through the scope it sets, then throws when asked) once failing and once not, as
   * docs/transactions.md shows, and checks that the order and the credits went together.
   */
  async function commitAndRollback(
    inBuilder: (u: string, order: string, fail: boolean, set: (tx: TransactionScope) => void) => Promise<unknown>,
  ): Promise<void> {
    for (const fail of [true, false]) {
      const u = user();
      const order = randomUUID();
      let tx: TransactionScope | undefined;
      try {
        await inBuilder(u, order, fail, (scope) => (tx = scope));
      } catch (error) {
        await tx?.rolledBack();
        expect(String(error)).toContain("declined");
      }
      if (!fail) await tx?.committed();
      expect((await pool.query(`SELECT 1 FROM ${orders} WHERE id = $1`, [order])).rowCount).toBe(fail ? 0 : 1);
      expect(await manager.db.getAccount(u)).toEqual(fail ? null : expect.objectContaining({ balance: 400 }));
    }
  }

  it("Drizzle's db.transaction (the docs' adapter): commit and rollback", async () => {
    const db = drizzle(pool);
    await commitAndRollback((u, order, fail, set) =>
      db.transaction(async (trx) => {
        const tx = manager.inTransaction({ query: (text, values) => trx.execute(statement(text, values)) });
        set(tx);
        await trx.execute(sql.raw(`INSERT INTO ${orders} (id, user_id) VALUES ('${order}', '${u}')`));
        await tx.credits.addCredits(u, 500, { idempotencyKey: `order:${order}` });
        await tx.credits.deductCredits(u, 100);
        if (fail) throw new Error("declined");
      }),
    );
  });

  it("Kysely's transaction().execute (the docs' adapter): commit and rollback", async () => {
    const kysely = new Kysely<Record<string, { id: string; user_id: string }>>({
      dialect: new PostgresDialect({ pool }),
    });
    await commitAndRollback((u, order, fail, set) =>
      kysely.transaction().execute(async (trx) => {
        const tx = manager.inTransaction({
          query: (text, values) => trx.executeQuery(CompiledQuery.raw(text, values ?? [])),
        });
        set(tx);
        await trx.withSchema(schema).insertInto("orders").values({ id: order, user_id: u }).execute();
        await tx.credits.addCredits(u, 500, { idempotencyKey: `order:${order}` });
        const hold = await tx.credits.reserveCredits(u, 100);
        await tx.credits.commitReservedCredits(hold.id); // found by id inside the transaction
        if (fail) throw new Error("declined");
      }),
    );
  });

  it("a transaction holding the account: another process waits at most lockTimeoutMs, then LockTimeoutError; no double spend", async () => {
    const u = user();
    await manager.credits.addCredits(u, 100);
    const child = () =>
      runProcess<{ ok: boolean; name?: string; code?: string; amount?: number; ms: number }>(
        "test/fixtures/tx-deduct.ts",
        { TX_SCHEMA: schema, TX_USER: u, TX_AMOUNT: "60", TX_LOCK_TIMEOUT_MS: "400" },
      );
    let inProcess: Promise<unknown> | undefined;
    await manager.transaction(pool, async (tx) => {
      await tx.credits.deductCredits(u, 60); // holds the account's row lock until COMMIT
      const other = await child();
      expect(other).toMatchObject({ ok: false, name: "LockTimeoutError", code: "CONFLICT" });
      expect(other.ms).toBeGreaterThanOrEqual(350);
      expect(other.ms).toBeLessThan(5_000);
      // This process: its unit waits for the lock too, without blocking the transaction's own units.
      inProcess = manager.credits.deductCredits(u, 60).then(
        () => "spent",
        (e: unknown) => e,
      );
      await tx.credits.deductCredits(u, 1);
    });
    expect(await inProcess).toBeInstanceOf(InsufficientCreditsError); // 39 left after the commit
    expect(await child()).toMatchObject({ ok: false, code: "INSUFFICIENT_CREDITS" });
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 39 });
  });

  it("a serialization failure is a ConflictError; manager.transaction runs fn again", async () => {
    const u = user();
    await manager.credits.addCredits(u, 10);
    const client = await pool.connect();
    try {
      await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
      await client.query("SELECT 1"); // the snapshot
      await manager.credits.addCredits(u, 5); // committed after it
      const scope = manager.inTransaction(client);
      const error = await scope.credits.deductCredits(u, 1).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConflictError);
      expect(error).not.toBeInstanceOf(LockTimeoutError);
      expect((error as ConflictError).details).toMatchObject({ sqlstate: "40001", retry: "transaction" });
      await client.query("ROLLBACK");
      await scope.rolledBack();
    } finally {
      client.release();
    }
    let runs = 0;
    const entry = await manager.transaction(pool, async (tx, c) => {
      runs++;
      await c.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ");
      await c.query("SELECT 1");
      if (runs === 1) await manager.credits.addCredits(u, 5);
      return tx.credits.deductCredits(u, 20);
    });
    expect(runs).toBe(2);
    expect(entry.amount).toBe(20);
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 0 });
  });
});

describe("stores without a transaction to join", () => {
  const client = { query: async () => ({ rows: [] }) };
  const pool = { connect: async () => ({ ...client, release: () => {} }) };

  it("the in-memory store refuses with a ConfigurationError, before anything runs", async () => {
    const manager = await createCreditManager();
    expect(() => manager.inTransaction(client)).toThrow(ConfigurationError);
    expect(() => manager.inTransaction(client)).toThrow(/memory store cannot join/);
    let ran = false;
    await expect(manager.transaction(pool, async () => (ran = true))).rejects.toBeInstanceOf(ConfigurationError);
    expect(ran).toBe(false);
    await manager.close();
  });

  it("the SQLite store refuses with a ConfigurationError", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cm-tx-sqlite-"));
    const manager = await createCreditManager({ db: new SqliteDbManager({ filename: join(dir, "tx.db") }) });
    expect(() => manager.inTransaction(client)).toThrow(/sqlite store cannot join/);
    await manager.close();
  });

  it("PostgreSQL refuses a handle without query(), and a bad lockTimeoutMs", () => {
    const db = new PostgresDbManager({ connectionString: "postgres://127.0.0.1:1/none" });
    expect(() => db.joinTransaction({} as never)).toThrow(ConfigurationError);
    expect(() => new PostgresDbManager({ connectionString: "postgres://x", lockTimeoutMs: -1 })).toThrow(
      ConfigurationError,
    );
  });
});
