/**
 * Spend limits across processes (docs/teams-and-limits.md, "Spend limits"): three processes, each
 * with its own manager over one store, spend at once on one account under an account limit and two
 * spender limits — deductions and holds committed in full, from 6 callers each. Then, from the
 * journal: no window of any limit ever counted past its amount, every spend a process reported done
 * is in the journal (and nothing else is), `getLimits` counts exactly what the journal spent, no
 * spend was refused while its limit still had room for it (the counts never go down here: no
 * release, no refund), no grant paid for a spend outside its scope (an images allowance beside
 * the pool), and the account audits clean. On SQLite always; PostgreSQL and MongoDB when
 * their URLs are set (.ci/run sets them).
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
import { inScope } from "../src/core/domain/scope.js";
import { createCreditManager } from "../src/manager.js";
import type { DbManager } from "../src/store.js";
import type { JournalEntry } from "../src/models-public.js";
import { runProcess } from "./fixtures/processes.js";

const FIXTURE = "test/fixtures/limits-process.ts";
const LIMITS = { org: 400, alice: 120, bob: 150 } as const;
const MAX_AMOUNT = 3;

interface Report {
  done: { amount: number; spender: string | null }[];
  refused: {
    spender: string | null;
    limit: { spender: string | null; amount: number };
    used: number;
    requested: number;
  }[];
  conflicts: number;
  unexpected: string[];
}

interface Store {
  name: string;
  target: string;
  open: () => Promise<{ db: DbManager; close: () => Promise<void> }>;
  drop: () => Promise<void>;
}

const dir = mkdtempSync(join(tmpdir(), "cm-limits-processes-"));
const stores: Store[] = [
  {
    name: "sqlite",
    target: join(dir, "limits.db"),
    open: async () => ({ db: new SqliteDbManager({ filename: join(dir, "limits.db") }), close: async () => undefined }),
    drop: async () => undefined,
  },
];
const pgUrl = process.env.CREDIT_PG_URL;
if (pgUrl) {
  const schema = `cm_limits_p_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
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
  const dbName = `credit_test_limits_p_${randomUUID().slice(0, 8)}`;
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

/** The UTC month an entry falls in: the window of a monthly limit. */
const month = (e: JournalEntry) => `${e.createdAt.getUTCFullYear()}-${e.createdAt.getUTCMonth()}`;

describe.each(stores)("spend limits and scoped grants across three processes: $name", (store) => {
  it("no window passes a limit, nothing reported done is lost, no refusal while a limit had room", async () => {
    const { db, close } = await store.open();
    const manager = await createCreditManager({ db });
    const { credits } = manager;
    await credits.addCredits("org", 100_000);
    // An allowance for images only: the images spends draw it first, no other spend ever does.
    await credits.addCredits("org", 60, { scope: { features: ["images"] } });
    await credits.setLimits("org", [
      { amount: LIMITS.org, period: "month" },
      { spender: "alice", amount: LIMITS.alice, period: "month" },
      { spender: "bob", amount: LIMITS.bob, period: "month" },
    ]);
    const start = String(Date.now() + 1500);
    const reports = await Promise.all(
      [11, 22, 33].map((seed) =>
        runProcess<Report>(FIXTURE, {
          LP_STORE: store.name,
          LP_TARGET: store.target,
          LP_OPS: "150",
          LP_SEED: String(seed),
          LP_START: start,
        }),
      ),
    );
    expect(
      reports.flatMap((r) => r.unexpected),
      JSON.stringify(reports.map((r) => r.unexpected)),
    ).toEqual([]);
    // 18 callers on one hot account, and none gives up with ConflictError: a SQLite unit of work
    // that keeps meeting conflicts runs once more holding the write lock (docs/storage.md).
    expect(reports.map((r) => r.conflicts)).toEqual([0, 0, 0]);
    const refused = reports.flatMap((r) => r.refused);
    expect(refused.length).toBeGreaterThan(0); // the run asked for more than the limits allow

    // The journal's spends, per window, against each limit.
    const entries: JournalEntry[] = [];
    for (let cursor: string | null | undefined = undefined; cursor !== null;) {
      const page = await credits.getCreditHistory("org", { limit: 1000, ...(cursor ? { cursor } : {}) });
      entries.push(...page.items);
      cursor = page.nextCursor;
    }
    const spends = entries.filter((e) => e.type === "deduct" || e.type === "commit_reserved");
    const windows = new Map<string, { org: number; alice: number; bob: number }>();
    for (const e of spends) {
      const w = windows.get(month(e)) ?? { org: 0, alice: 0, bob: 0 };
      w.org += e.amount;
      if (e.spender === "alice" || e.spender === "bob") w[e.spender] += e.amount;
      windows.set(month(e), w);
    }
    for (const w of windows.values()) {
      expect(w.org).toBeLessThanOrEqual(LIMITS.org);
      expect(w.alice).toBeLessThanOrEqual(LIMITS.alice);
      expect(w.bob).toBeLessThanOrEqual(LIMITS.bob);
    }
    // Every spend reported done is in the journal, and only those.
    const done = reports.flatMap((r) => r.done);
    const sum = (xs: { amount: number }[]) => xs.reduce((s, x) => s + x.amount, 0);
    expect(sum(spends)).toBe(sum(done));
    expect(spends.length).toBe(done.length);
    // getLimits counts what the journal spent in this window.
    const now = windows.get(month({ createdAt: new Date() } as JournalEntry)) ?? { org: 0, alice: 0, bob: 0 };
    const status = await credits.getLimits("org");
    const used = (spender: string | null) => status.find((l) => l.spender === spender)?.used;
    expect([used(null), used("alice"), used("bob")]).toEqual([now.org, now.alice, now.bob]);
    // No wrong refusal: a limit that refused has (at most) less than one spend's room left.
    for (const r of refused) {
      const key = r.limit.spender === null ? "org" : (r.limit.spender as "alice" | "bob");
      expect(LIMITS[key] - now[key]).toBeLessThan(MAX_AMOUNT);
    }
    // No grant paid for a spend outside its scope; the images allowance was spent.
    const scopes = new Map(
      (await credits.getGrants("org", { includeInactive: true })).map((g) => [g.id, g.scope ?? null]),
    );
    let fromAllowance = 0;
    for (const e of spends)
      for (const p of e.grants) {
        const scope = scopes.get(p.grantId);
        if (scope === null || p.kind !== undefined) continue;
        expect(inScope(scope, { spender: e.spender ?? null, feature: e.feature ?? null })).toBe(true);
        fromAllowance += p.amount;
      }
    expect(fromAllowance).toBeGreaterThan(0);
    expect((await credits.audit("org", { from: "genesis" })).ok).toBe(true);
    await manager.close();
    await close();
  }, 120_000);
});
