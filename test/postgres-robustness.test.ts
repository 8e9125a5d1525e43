import { randomUUID } from "node:crypto";
import * as net from "node:net";
import pg from "pg";
import { startArmProxy as startProxy } from "./fixtures/arm-proxy.js";
import { withPgClient } from "./fixtures/pg-admin.js";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { AccountWork } from "../src/core/domain/account-work.js";
import { OutcomeUnknownError, StorageError } from "../src/core/errors.js";
import { createCreditManager, type CreditManager } from "../src/index.js";
import { CreditService } from "../src/credit-service.js";
import { contextProbe } from "./fixtures/module-context.js";
import { IN_FLIGHT_CASES, checkCommitInFlight, type HeldTransaction } from "./fixtures/commit-in-flight.js";

const url = process.env.CREDIT_PG_URL;
const newSchema = (tag: string) => `cm_${tag}_${randomUUID().replace(/-/g, "").slice(0, 10)}`;

const admin = <T>(fn: (client: pg.Client) => Promise<T>): Promise<T> => withPgClient(url as string, fn);

const dropSchema = (schema: string) => admin((c) => c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));

/** Errors nobody handled while a test ran (an 'error' event without a listener ends up here). */
const uncaught: unknown[] = [];
const onUncaught = (error: unknown) => uncaught.push(error);

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)("PostgresDbManager when the connection dies", () => {
  // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
  const schema = newSchema("drop");
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  beforeAll(async () => {
    proxy = await startProxy(new URL(url as string));
    process.on("uncaughtException", onUncaught);
    process.on("unhandledRejection", onUncaught);
    const db = new PostgresDbManager({ connectionString: url as string, schema });
    await db.init();
    await db.close();
  });
  afterAll(async () => {
    process.off("uncaughtException", onUncaught);
    process.off("unhandledRejection", onUncaught);
    await proxy.close();
    await dropSchema(schema);
  });
  afterEach(() => {
    expect(uncaught).toEqual([]); // the process would have died of these
    uncaught.length = 0;
  });

  const through = (options: Partial<ConstructorParameters<typeof PostgresDbManager>[0]> = {}) =>
    new PostgresDbManager({
      connectionString: proxy.url,
      schema,
      poolConfig: { max: 4 },
      ...options,
    } as ConstructorParameters<typeof PostgresDbManager>[0]);
  /** Lets node-pg deliver the socket's 'end' and 'error' events. */
  const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

  it("a read whose connection is cut fails with StorageError, the process lives, the next read works", async () => {
    const db = through();
    const credits = new CreditService({ db });
    const u = `read-${randomUUID()}`;
    await credits.addCredits(u, 100);
    const cuts = proxy.cuts;
    proxy.arm(u); // getAccount's SELECT carries the user id
    await expect(db.getAccount(u)).rejects.toBeInstanceOf(StorageError);
    expect(proxy.cuts).toBe(cuts + 1);
    await settle();
    expect(await db.getAccount(u)).toMatchObject({ balance: 100 });
    await db.close();
  });

  it("a unit of work cut after its COMMIT was sent answers the real outcome: the commit landed, so its result; never a StorageError", async () => {
    for (const batch of [undefined, false] as const) {
      const db = through({ batch });
      const credits = new CreditService({ db });
      const u = `commit-${randomUUID()}`;
      await credits.addCredits(u, 100);
      const cuts = proxy.cuts;
      proxy.arm("; COMMIT"); // the save message (not "READ COMMITTED" in the load)
      // The server committed before the reply was lost: the call looks its entry up and says so.
      const entry = await credits.deductCredits(u, 10, { idempotencyKey: "k1" });
      expect(proxy.cuts).toBe(cuts + 1);
      expect(entry).toMatchObject({ type: "deduct", amount: 10, balanceAfter: 90 });
      expect((await db.listJournal(u, { order: "asc", limit: 10 })).map((e) => e.id)).toContain(entry.id);
      // The same key answers the same entry; nothing was applied twice.
      expect((await credits.deductCredits(u, 10, { idempotencyKey: "k1" })).id).toBe(entry.id);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 90 });
      // Without a key too: the unit knows the id it wrote.
      proxy.arm("; COMMIT");
      const keyless = await credits.deductCredits(u, 5);
      expect(proxy.cuts).toBe(cuts + 2);
      expect(keyless.balanceAfter).toBe(85);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 85 });
      await credits.deductCredits(u, 1);
      expect((await credits.audit(u)).ok).toBe(true);
      await db.close();
    }
  });

  it("a unit of work cut after its COMMIT was sent, while the server stays out of reach: OutcomeUnknownError with the entry id and the key", async () => {
    const db = through({ batch: false });
    const credits = new CreditService({ db, outcomeWaitMs: 300 });
    const u = `unknown-${randomUUID()}`;
    await credits.addCredits(u, 100);
    proxy.arm("; COMMIT");
    proxy.refuseFor(2000); // new connections are refused past outcomeWaitMs
    const error = (await credits
      .deductCredits(u, 10, { idempotencyKey: "k1" })
      .catch((e: unknown) => e)) as OutcomeUnknownError;
    expect(error).toBeInstanceOf(OutcomeUnknownError);
    expect(error).toMatchObject({ code: "OUTCOME_UNKNOWN", status: 503, userId: u, idempotencyKey: "k1" });
    // It landed: the id it names is in the journal (read once the server is in reach again: each
    // try is refused until then), and the key answers it.
    const ids = await vi.waitFor(async () => (await db.listJournal(u, { order: "asc", limit: 10 })).map((e) => e.id), {
      timeout: 10_000,
      interval: 100,
    });
    expect(ids).toContain(error.entryIds[0]);
    expect((await credits.deductCredits(u, 10, { idempotencyKey: "k1" })).id).toBe(error.entryIds[0]);
    expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 90 });
    await db.close();
  });

  it("a lone unit of work whose load is cut runs again on another connection (nothing was written)", async () => {
    for (const batch of [undefined, false] as const) {
      const db = through({ batch });
      const credits = new CreditService({ db });
      const u = `load-${randomUUID()}`;
      await credits.addCredits(u, 100);
      // Nothing cached: the unit locks and loads first (a unit started from the cache has no load to cut).
      db.states?.delete(u);
      const cuts = proxy.cuts;
      proxy.arm("BEGIN ISOLATION");
      const entry = await credits.deductCredits(u, 10);
      expect(proxy.cuts).toBe(cuts + 1);
      expect(entry.balanceAfter).toBe(90);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 90 });
      expect((await credits.audit(u)).ok).toBe(true);
      await db.close();
    }
  });

  it("a connection the server ends while a unit of work holds it is closed, not reused; a pool you pass gets it back as an error", async () => {
    // The server ends a session idle in a transaction for longer than this (managed services set it).
    const pool = new pg.Pool({ connectionString: url, max: 2, options: "-c idle_in_transaction_session_timeout=200" });
    const poolErrors: unknown[] = [];
    pool.on("error", (e) => poolErrors.push(e)); // as node-pg asks of every pool's owner
    const released: unknown[] = [];
    pool.on("release", (err: unknown) => released.push(err));
    const db = new PostgresDbManager({ pool, schema, batch: false });
    const credits = new CreditService({ db });
    const u = `idle-${randomUUID()}`;
    await credits.addCredits(u, 50);
    released.length = 0;
    const slow = db.transaction(u, async (tx) => {
      const state = await tx.load();
      await new Promise((resolve) => setTimeout(resolve, 600)); // the FATAL arrives while no query runs
      const work = new AccountWork(u, state, new Date(), randomUUID);
      work.add(
        5,
        { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
        {},
      );
      await tx.save(work.changes());
      return "saved";
    });
    const error = await slow.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect(released).toHaveLength(1);
    expect(released[0]).toBeInstanceOf(Error); // release(err): pg-pool closes it
    expect(pool.totalCount).toBe(0);
    expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 50 });
    await credits.deductCredits(u, 1);
    expect((await credits.audit(u)).ok).toBe(true);
    await db.close();
    await pool.end();
    expect(poolErrors).toEqual([]);
  });
});

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)("PostgresDbManager under any DateStyle and TimeZone", () => {
  // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
  const T = Date.UTC(2031, 0, 31, 12);
  const DAY = 86_400_000;
  const schemas: string[] = [];
  afterAll(async () => {
    for (const s of schemas) await dropSchema(s);
  });

  // What a DBA may set on the server, the database or the role; here through the connection.
  const sessions = [
    "-c DateStyle=SQL,DMY",
    "-c DateStyle=German -c TimeZone=Asia/Kolkata",
    "-c DateStyle=Postgres,MDY -c TimeZone=America/Sao_Paulo",
  ];

  for (const options of sessions) {
    for (const owner of ["connectionString", "pool"] as const) {
      it(
        `${options} (${owner}): dates read back as written and the jobs page through everything due`,
        { timeout: 60_000 },
        async () => {
          const schema = newSchema("ds");
          schemas.push(schema);
          const pool = owner === "pool" ? new pg.Pool({ connectionString: url, options, max: 6 }) : null;
          const db =
            pool === null
              ? new PostgresDbManager({ connectionString: url as string, schema, poolConfig: { options, max: 6 } })
              : new PostgresDbManager({ pool, schema });
          const clock = { now: T };
          let m: CreditManager | null = null;
          try {
            m = await createCreditManager({ db, ledger: false, clock: () => new Date(clock.now) });
            const [shown] = await db.read("DateStyle", "SELECT current_setting('DateStyle') AS d", []);
            expect(shown?.d).not.toMatch(/^ISO/); // the session really is non-ISO

            // Dates at the edges of what the models allow, through plain reads and units of work.
            const far = new Date("9999-12-31T23:59:59.999Z");
            const early = new Date(T + DAY + 123);
            await m.credits.addCredits("edge", 5, { expiresAt: far });
            await m.credits.addCredits("edge", 7, { expiresAt: early });
            const grants = await db.listGrants("edge");
            expect(grants.map((g) => g.expiresAt?.toISOString()).sort()).toEqual([
              early.toISOString(),
              far.toISOString(),
            ]);
            for (const g of grants)
              expect((await db.getGrant(g.id))?.expiresAt?.getTime()).toBe(g.expiresAt?.getTime());
            expect(grants.every((g) => g.createdAt.getTime() === T)).toBe(true);
            const journal = await db.listJournal("edge", { order: "asc", limit: 10 });
            expect(journal.map((e) => e.createdAt.getTime())).toEqual([T, T]);
            await m.credits.deductCredits("edge", 8); // burns the soonest expiry first: needs both dates
            expect((await db.listGrants("edge")).map((g) => [g.expiresAt?.toISOString(), g.remaining])).toEqual([
              [far.toISOString(), 4],
            ]);
            expect((await m.credits.audit("edge")).ok).toBe(true);
            // A unit of work that reads the state from the server (no kept state): JSON dates.
            const fresh =
              pool === null
                ? new PostgresDbManager({
                    connectionString: url as string,
                    schema,
                    stateCacheSize: 0,
                    poolConfig: { options, max: 2 },
                  })
                : new PostgresDbManager({ pool, schema, stateCacheSize: 0 });
            try {
              await new CreditService({ db: fresh, clock: () => new Date(clock.now) }).deductCredits("edge", 1);
            } finally {
              await fresh.close();
            }
            expect((await db.listGrants("edge")).map((g) => [g.expiresAt?.toISOString(), g.remaining])).toEqual([
              [far.toISOString(), 3],
            ]);
            expect((await m.credits.audit("edge")).ok).toBe(true);

            // Six of each due, read two to a page: every page's cursor is a date read back.
            const users = Array.from({ length: 6 }, (_, i) => `u${i}`);
            for (const [i, u] of users.entries()) {
              await m.credits.addCredits(u, 100, { expiresAt: new Date(T + DAY + i * 1000) });
              await m.credits.reserveCredits(u, 10, { ttlSeconds: 60 + i });
            }
            await m.subscriptions.createPlan({
              id: "daily",
              name: "Daily",
              creditsPerPeriod: 3,
              billingPeriod: "daily",
            });
            for (const u of users) await m.subscriptions.subscribe(u, "daily");
            const due = await db.findDueGrants(new Date(T + 2 * DAY), 10);
            expect(due.every((g) => g.expiresAt instanceof Date && !Number.isNaN(g.expiresAt.getTime()))).toBe(true);

            clock.now = T + 600_000;
            const holds = await m.expiration.releaseExpiredHolds(undefined, { batchSize: 2 });
            expect(holds).toMatchObject({ holdsReleased: 6, creditsReleased: 60, errors: 0 });
            clock.now = T + DAY + 3_600_000;
            // The 100s and the first period's 3s (expiring at the period's end).
            const expiry = await m.expiration.expireDueGrants(undefined, { batchSize: 2 });
            expect(expiry).toMatchObject({ users: 6, grantsExpired: 12, creditsExpired: 618, errors: 0 });
            const renewals = await m.expiration.renewDueSubscriptions(undefined, { batchSize: 2 });
            expect(renewals).toMatchObject({ subscriptionsScanned: 6, renewed: 6, errors: 0 });
            for (const u of users) {
              expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ reserved: 0, balance: 3 }); // the second period's credits
              expect((await m.credits.audit(u)).ok).toBe(true);
            }
            const system = await db.listLedgerEntries({ eventType: "system", limit: 10 });
            expect(system.length).toBeGreaterThan(0);
            expect(system.every((e) => e.createdAt instanceof Date && !Number.isNaN(e.createdAt.getTime()))).toBe(true);
          } finally {
            await (m ? m.close() : db.close());
            await pool?.end();
          }
        },
      );
    }
  }
});

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)("PostgresDbManager idempotency lookups", () => {
  // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
  const schema = newSchema("idem");
  let db: PostgresDbManager;
  beforeAll(async () => {
    db = new PostgresDbManager({ connectionString: url as string, schema });
    await db.init();
  });
  afterAll(async () => {
    await db.close();
    await dropSchema(schema);
  });

  it("never answers a unit of work with the entry of another key that reached the server as the same text", async () => {
    const probe = contextProbe();
    const credits = new CreditService({ db, modules: [probe.module] });
    const u = `idem-${randomUUID()}`;
    const first = await credits.addCredits(u, 100, { idempotencyKey: "top-up-\uFFFD" });
    // A unit of work below the service's validation: node-pg sends the lone surrogate as U+FFFD,
    // so the load finds the first key's entry, and the unit of work refuses it as a replay.
    const unit = (key: string) =>
      probe.ctx().runUnitOfWork(
        u,
        { idempotencyKey: key, fingerprint: first.fingerprint ?? undefined },
        async () => "ran",
        async (e) => e.id,
        { periods: false },
      );
    expect(await unit("top-up-\uFFFD")).toBe(first.id);
    const error = await unit("top-up-\uD800").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect((error as Error).message).toMatch(/cannot tell them apart/);
    expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100 });
  });
});

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)("PostgresDbManager.init() in a new schema", () => {
  // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
  const schemas: string[] = [];
  afterAll(async () => {
    for (const s of schemas) await dropSchema(s);
  });

  it(
    "several managers with different table prefixes create the schema once, at the same time",
    { timeout: 60_000 },
    async () => {
      for (let round = 0; round < 3; round++) {
        const schema = newSchema("prefixes");
        schemas.push(schema);
        const managers = ["a_", "b_", "c_", "d_", "e_", "f_"].map(
          (tablePrefix) => new PostgresDbManager({ connectionString: url as string, schema, tablePrefix }),
        );
        const results = await Promise.allSettled(managers.map((m) => m.init()));
        expect(results.filter((r) => r.status === "rejected")).toEqual([]);
        await Promise.all(managers.map((m) => m.close()));
      }
    },
  );

  it("waits for a schema someone else is creating, then uses it", async () => {
    const schema = newSchema("foreign");
    schemas.push(schema);
    const other = new pg.Client({ connectionString: url });
    await other.connect();
    await other.query("BEGIN");
    await other.query(`CREATE SCHEMA "${schema}"`); // not committed yet: init() waits on it
    const db = new PostgresDbManager({ connectionString: url as string, schema });
    const init = db.init().then(
      () => null,
      (e: unknown) => e,
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    await other.query("COMMIT");
    await other.end();
    expect(await init).toBeNull();
    await new CreditService({ db }).addCredits("u", 1);
    expect(await db.getAccount("u")).toMatchObject({ balance: 1 });
    await db.close();
  });
});

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)("PostgresDbManager after a commit", () => {
  // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
  const schema = newSchema("after");
  afterAll(async () => dropSchema(schema));

  it("a failure after COMMIT (keeping the committed state) neither fails nor reruns the committed units", async () => {
    for (const batch of [undefined, false] as const) {
      const db = new PostgresDbManager({
        connectionString: url as string,
        schema,
        batch,
        tablePrefix: batch === false ? "solo_" : "",
      });
      await db.init();
      const states = db.states as NonNullable<typeof db.states>;
      const set = states.set.bind(states);
      const failedOnce = new Set<string>();
      // The first time each account's committed state is kept, it throws.
      states.set = (userId, state) => {
        if (!failedOnce.has(userId)) {
          failedOnce.add(userId);
          throw new Error("injected after COMMIT");
        }
        set(userId, state);
      };
      const credits = new CreditService({ db });
      const users = Array.from({ length: 8 }, () => `after-${randomUUID()}`);
      const results = await Promise.allSettled(users.map((u) => credits.addCredits(u, 10)));
      expect(results.map((r) => r.status)).toEqual(users.map(() => "fulfilled"));
      expect(failedOnce.size).toBeGreaterThan(0);
      for (const u of users) {
        expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 10 }); // once, not twice
        expect((await db.listJournal(u, { order: "asc", limit: 10 })).length).toBe(1);
      }
      await db.close();
    }
  });
});

/**
 * A TCP proxy that, once armed, holds back the server's answer to the next client message that
 * contains `match` for `ms` milliseconds (on that connection only): one slow answer on a busy
 * machine, made to happen every time.
 */
async function startDelayingProxy(
  target: URL,
): Promise<{ url: string; arm(match: string, ms: number): void; close(): Promise<void> }> {
  let armed: { match: string; ms: number } | null = null;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    sockets.add(client).add(upstream);
    let delay = 0;
    client.on("data", (d) => {
      if (armed !== null && d.includes(armed.match)) {
        delay = armed.ms;
        armed = null;
      }
      upstream.write(d);
    });
    upstream.on("data", (d) => {
      if (delay === 0) client.write(d);
      else {
        const ms = delay;
        delay = 0;
        upstream.pause();
        setTimeout(() => {
          client.write(d);
          upstream.resume();
        }, ms);
      }
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const t = new URL(target.toString());
  t.hostname = "127.0.0.1";
  t.port = String((server.address() as net.AddressInfo).port);
  return {
    url: t.toString(),
    arm: (match, ms) => void (armed = { match, ms }),
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)("PostgresDbManager answers an account's units in commit order", () => {
  // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
  /** @see issue 24, item 15: the ledger file had an account's lines out of seq order. */
  it("a unit that locks the account after an earlier one committed resolves after it, however late the earlier COMMIT's answer", async () => {
    const schema = newSchema("order");
    const proxy = await startDelayingProxy(new URL(url as string));
    const db = new PostgresDbManager({ connectionString: proxy.url, schema });
    const manager = await createCreditManager({ db });
    try {
      const { credits } = manager;
      await credits.addCredits("hot", 100);
      const resolved: number[] = [];
      const recorded: number[] = [];
      const record = manager.ledger.recordTransactions.bind(manager.ledger);
      manager.ledger.recordTransactions = (entries, canonicals) => {
        for (const e of entries) recorded.push(e.seq);
        record(entries, canonicals);
      };
      // The first deduction's COMMIT is applied at once, but its answer comes 300 ms late; the
      // second, started meanwhile, waits for the row lock, gets it at that COMMIT, and is answered first.
      proxy.arm("; COMMIT\u0000", 300); // the save message, not BEGIN … READ COMMITTED
      const first = credits.deductCredits("hot", 1).then((e) => void resolved.push(e.seq));
      await new Promise((resolve) => setTimeout(resolve, 100));
      const second = credits.deductCredits("hot", 2).then((e) => void resolved.push(e.seq));
      await Promise.all([first, second]);
      expect(resolved).toEqual([2, 3]);
      expect(recorded).toEqual([2, 3]);
      expect((await credits.audit("hot")).ok).toBe(true);
    } finally {
      await manager.close();
      await proxy.close();
      await dropSchema(schema);
    }
  });
});

describe("PostgresDbManager without the pg package", () => {
  afterEach(() => {
    vi.doUnmock("pg");
    vi.resetModules();
  });

  it("says so with ConfigurationError, from init() and from every call", async () => {
    vi.resetModules();
    vi.doMock("pg", () => {
      throw Object.assign(new Error("Cannot find package 'pg'"), { code: "ERR_MODULE_NOT_FOUND" });
    });
    // A fresh module graph, in which `import("pg")` fails as it does when the package is missing.
    const { createDbManagerFromEnv } = await import("../src/index.js");
    const { ConfigurationError } = await import("../src/core/errors.js");
    const db = await createDbManagerFromEnv({ CREDIT_PG_URL: "postgres://nobody@127.0.0.1:1/none" });
    const error = await db.init().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as Error).message).toMatch(/install the "pg" package/);
    await expect(db.getAccount("u")).rejects.toBeInstanceOf(ConfigurationError);
    await expect(db.transaction("u", async (tx) => tx.load())).rejects.toBeInstanceOf(ConfigurationError);
    await db.close();
  });
});

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)(
  'PostgresDbManager: a commit in doubt still in progress: the look-up waits for it (docs/concepts.md, "Certain and uncertain errors")',
  () => {
    const schema = newSchema("inflight");
    let db: PostgresDbManager;
    beforeAll(async () => {
      db = new PostgresDbManager({ connectionString: url as string, schema, poolConfig: { max: 4 } });
      await db.init();
    });
    afterAll(async () => {
      await db?.close();
      await dropSchema(schema);
    });
    /** A transaction of the test's own, on a connection of its own, with the store joined to it. */
    const hold = async (): Promise<HeldTransaction> => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      await client.query("BEGIN");
      const end = async (statement: string) => {
        try {
          await client.query(statement);
        } finally {
          await client.end();
        }
      };
      return { joined: db.joinTransaction(client), commit: () => end("COMMIT"), abort: () => end("ROLLBACK") };
    };
    it.each(IN_FLIGHT_CASES)("$account account, the transaction then ends with $end", (c) =>
      checkCommitInFlight(db, hold, c),
    );
  },
);
