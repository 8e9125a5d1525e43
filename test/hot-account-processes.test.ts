/**
 * One hot account, three processes (docs/storage.md): 8 callers in each spend on it at once under
 * `maxAttempts: 2`, so that units of work keep running out of optimistic attempts. Such a unit
 * then runs holding the account (SQLite: the write lock from its first read; MongoDB: its account
 * document written first; PostgreSQL: alone, waiting for the row lock), so it cannot conflict: no
 * spend is refused with `ConflictError`, every spend a process reported done is in the journal
 * (and nothing else is), the balance is the grant less their sum, and the account audits clean.
 * On SQLite always; PostgreSQL and MongoDB when their URLs are set (.ci/run sets them).
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager } from "../src/manager.js";
import type { DbManager } from "../src/store.js";
import type { JournalEntry } from "../src/models-public.js";
import { runProcess } from "./fixtures/processes.js";

interface Report {
  done: { id: string; amount: number }[];
  conflicts: number;
  unexpected: string[];
}

interface Store {
  name: string;
  target: string;
  open: () => Promise<{ db: DbManager; close: () => Promise<void> }>;
  drop: () => Promise<void>;
}

const dir = mkdtempSync(join(tmpdir(), "cm-hot-"));
const stores: Store[] = [
  {
    name: "sqlite",
    target: join(dir, "hot.db"),
    open: async () => ({ db: new SqliteDbManager({ filename: join(dir, "hot.db") }), close: async () => undefined }),
    drop: async () => undefined,
  },
];
const pgUrl = process.env.CREDIT_PG_URL;
if (pgUrl) {
  const schema = `cm_hot_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  stores.push({
    name: "postgres",
    target: schema,
    open: async () => ({
      db: new PostgresDbManager({ connectionString: pgUrl, schema, poolConfig: { max: 4 } }),
      close: async () => undefined,
    }),
    drop: async () => {
      const c = new pg.Client({ connectionString: pgUrl });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await c.end();
    },
  });
}
const mongoUri = process.env.CREDIT_MONGO_URI;
if (mongoUri) {
  const dbName = `credit_test_hot_${randomUUID().slice(0, 8)}`;
  stores.push({
    name: "mongodb",
    target: dbName,
    open: async () => {
      const client = await new MongoClient(mongoUri).connect();
      return { db: new MongoDbManager({ client, dbName }), close: () => client.close() };
    },
    drop: async () => {
      const client = await new MongoClient(mongoUri).connect();
      await client.db(dbName).dropDatabase();
      await client.close();
    },
  });
}

afterAll(async () => {
  for (const s of stores) await s.drop().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

describe.each(stores)("one hot account, three processes, maxAttempts 2: $name", (store) => {
  it("refuses no spend with ConflictError; every reported spend is in the journal; balance and audit agree", async () => {
    const { db, close } = await store.open();
    const manager = await createCreditManager({ db });
    const { credits } = manager;
    const supply = 100_000;
    await credits.addCredits("hot", supply);
    const start = String(Date.now() + 1500);
    const reports = await Promise.all(
      [7, 8, 9].map((seed) =>
        runProcess<Report>("test/fixtures/hot-account-process.ts", {
          HOT_STORE: store.name,
          HOT_TARGET: store.target,
          HOT_OPS: "200",
          HOT_CALLERS: "8",
          HOT_MAX_ATTEMPTS: "2",
          HOT_SEED: String(seed),
          HOT_START: start,
        }),
      ),
    );
    expect(reports.flatMap((r) => r.unexpected)).toEqual([]);
    expect(reports.map((r) => r.conflicts)).toEqual([0, 0, 0]);
    const done = reports.flatMap((r) => r.done);
    expect(done.length).toBe(600);

    const entries: JournalEntry[] = [];
    for (let cursor: string | null | undefined = undefined; cursor !== null;) {
      const page = await credits.getCreditHistory("hot", { limit: 1000, ...(cursor ? { cursor } : {}) });
      entries.push(...page.items);
      cursor = page.nextCursor;
    }
    const spends = entries.filter((e) => e.type === "deduct" || e.type === "commit_reserved");
    expect(spends.map((e) => e.id).sort()).toEqual(done.map((d) => d.id).sort());
    const spent = done.reduce((s, d) => s + d.amount, 0);
    expect(spends.reduce((s, e) => s + e.amount, 0)).toBe(spent);
    expect(await credits.getUserCreditsInfo("hot")).toMatchObject({ balance: supply - spent });
    expect((await credits.audit("hot", { from: "genesis" })).ok).toBe(true);
    await manager.close();
    await close();
  }, 120_000);
});
