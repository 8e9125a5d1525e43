/**
 * Job rows of `npm run bench`: `expireDueGrants` over 1,000,000 due grants across 100,000 users and
 * `renewDueSubscriptions` over 100,000 due subscriptions, in memory (target <= 30 s each), and on
 * MongoDB / PostgreSQL when CREDIT_MONGO_URI / CREDIT_PG_URL are set, at smaller sizes (the shared
 * test servers here are slow and shared: BENCH_JOBS_DB_GRANTS, default 5,000 grants / 500 users and
 * 500 subscriptions).
 *
 * BENCH_JOBS_GRANTS (default 1,000,000; users = grants / 10) and BENCH_JOBS_SUBS (default 100,000)
 * shrink the in-memory run. Baseline: the same number of objects updated in a plain Map scan, in the
 * same process. Alone: `tsx bench/jobs.ts`.
 */
import { randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";
import type { DbManager } from "../src/store.js";
import { core, mongodb, postgres } from "./pkg.js";
import { printTable, type BenchRow } from "./lib.js";

const { CreditService, ExpirationService, InMemoryDbManager, SubscriptionService } = core;

const HOUR = 3_600_000;
const T0 = Date.UTC(2031, 0, 31, 12);

function services(db: DbManager) {
  const clock = { now: T0 };
  const now = () => new Date(clock.now);
  const credits = new CreditService({ db, clock: now, subscriptions: true });
  const subscriptions = new SubscriptionService({ db, credits, clock: now });
  const expiration = new ExpirationService({ db, credits, subscriptions, clock: now });
  return { clock, credits, subscriptions, expiration };
}

/** Runs `op` over 0..count-1 with `concurrency` callers. */
async function each(count: number, concurrency: number, op: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (;;) {
        const i = next++;
        if (i >= count) return;
        await op(i);
      }
    }),
  );
}

const seconds = (start: number) => (performance.now() - start) / 1000;

/** The plain cost of touching `n` objects: a Map scan that closes each. */
function baseline(n: number): number {
  const m = new Map<string, { remaining: number; closedAt: number | null; expiresAt: number }>();
  for (let i = 0; i < n; i++) m.set(`g${i}`, { remaining: 10, closedAt: null, expiresAt: i });
  const start = performance.now();
  for (const [id, g] of m) if (g.expiresAt <= n) m.set(id, { ...g, remaining: 0, closedAt: 1 });
  return n / seconds(start);
}

async function expireRows(backend: string, db: DbManager, grants: number, concurrency: number): Promise<BenchRow> {
  const { clock, credits, expiration } = services(db);
  const users = Math.max(1, Math.round(grants / 10));
  const perUser = Math.round(grants / users);
  const tag = randomUUID().slice(0, 8);
  const prefill = performance.now();
  // Ten grants per user, through the public API (one unit of work per grant).
  await each(users, concurrency, async (u) => {
    for (let k = 0; k < perUser; k++) {
      await credits.addCredits(`exp-${tag}-${u}`, 10, {
        expiresAt: new Date(T0 + HOUR + ((u * perUser + k) % 3_600_000)),
      });
    }
  });
  const prefillSeconds = seconds(prefill);
  clock.now = T0 + 3 * HOUR;
  const start = performance.now();
  const report = await expiration.expireDueGrants(undefined, {
    batchSize: backend === "memory" ? 10_000 : 1000,
    concurrency,
  });
  const took = seconds(start);
  return {
    backend,
    scenario: `expireDueGrants: ${report.grantsExpired.toLocaleString("en-US")} due grants, ${report.users.toLocaleString("en-US")} users (grants/s)`,
    opsPerSec: report.grantsExpired / took,
    target: backend === "memory" && grants >= 1_000_000 ? "<= 30 s" : undefined,
    met: backend === "memory" && grants >= 1_000_000 ? took <= 30 : undefined,
    note: `${took.toFixed(1)} s (prefill ${prefillSeconds.toFixed(1)} s); ${report.creditsExpired.toLocaleString("en-US")} credits expired, ${report.errors} errors`,
  };
}

async function renewRows(backend: string, db: DbManager, count: number, concurrency: number): Promise<BenchRow> {
  const { clock, subscriptions, expiration } = services(db);
  const plan = await subscriptions.createPlan({
    name: "bench",
    creditsPerPeriod: 100,
    billingPeriod: "monthly",
    rollover: { cap: 50 },
  });
  const tag = randomUUID().slice(0, 8);
  const prefill = performance.now();
  await each(count, concurrency, (i) => subscriptions.subscribe(`sub-${tag}-${i}`, plan.id));
  const prefillSeconds = seconds(prefill);
  clock.now = Date.UTC(2031, 1, 28, 13); // past the Jan 31 → Feb 28 period's end
  const start = performance.now();
  const report = await expiration.renewDueSubscriptions(undefined, {
    batchSize: backend === "memory" ? 10_000 : 1000,
    concurrency,
  });
  const took = seconds(start);
  return {
    backend,
    scenario: `renewDueSubscriptions: ${report.renewed.toLocaleString("en-US")} due subscriptions (renewals/s)`,
    opsPerSec: report.renewed / took,
    target: backend === "memory" && count >= 100_000 ? "<= 30 s" : undefined,
    met: backend === "memory" && count >= 100_000 ? took <= 30 : undefined,
    note: `${took.toFixed(1)} s (prefill ${prefillSeconds.toFixed(1)} s); each: rollover (cap 50) + allocation in one unit of work, two guarded subscription writes; ${report.errors} errors`,
  };
}

const sizes = () => ({
  grants: Number(process.env.BENCH_JOBS_GRANTS ?? 1_000_000),
  subs: Number(process.env.BENCH_JOBS_SUBS ?? 100_000),
  dbGrants: Number(process.env.BENCH_JOBS_DB_GRANTS ?? 5000),
});

/** In memory: the baseline and expireDueGrants over `BENCH_JOBS_GRANTS` grants. */
export async function memoryExpire(): Promise<BenchRow[]> {
  const { grants } = sizes();
  const base: BenchRow = {
    backend: "memory",
    scenario: `baseline: Map scan closing ${grants.toLocaleString("en-US")} objects`,
    opsPerSec: baseline(grants),
  };
  const row = await expireRows("memory", new InMemoryDbManager(), grants, 1);
  return [base, { ...row, baseline: "Map scan", ratio: row.opsPerSec / base.opsPerSec }];
}

/** In memory: renewDueSubscriptions over `BENCH_JOBS_SUBS` subscriptions. */
export async function memoryRenew(): Promise<BenchRow[]> {
  return [await renewRows("memory", new InMemoryDbManager(), sizes().subs, 1)];
}

/** MongoDB (and PostgreSQL) when their URL is set, at `BENCH_JOBS_DB_GRANTS`. */
export async function databases(): Promise<BenchRow[]> {
  const { dbGrants } = sizes();
  const rows: BenchRow[] = [];
  if (process.env.CREDIT_MONGO_URI) {
    const { MongoDbManager } = await mongodb();
    const dbName = `credit_bench_jobs_${process.pid}`;
    const db = MongoDbManager.fromUri(process.env.CREDIT_MONGO_URI, dbName);
    await db.init();
    try {
      rows.push(await expireRows("mongodb", db, dbGrants, 8));
      rows.push(await renewRows("mongodb", db, Math.round(dbGrants / 10), 8));
    } finally {
      const { MongoClient } = await import("mongodb");
      const c = new MongoClient(process.env.CREDIT_MONGO_URI);
      await c
        .db(dbName)
        .dropDatabase()
        .catch(() => undefined);
      await c.close();
      await db.close();
    }
  }
  if (process.env.CREDIT_PG_URL) {
    const { PostgresDbManager } = await postgres();
    const schema = `bench_jobs_${process.pid}`;
    const db = new PostgresDbManager({ connectionString: process.env.CREDIT_PG_URL, schema });
    await db.init();
    try {
      rows.push(await expireRows("postgres", db, dbGrants, 8));
      rows.push(await renewRows("postgres", db, Math.round(dbGrants / 10), 8));
    } finally {
      await db.close();
      const pg = (await import("pg")).default;
      const c = new pg.Client({ connectionString: process.env.CREDIT_PG_URL });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
      await c.end();
    }
  }
  return rows;
}

/** Everything, in this process. */
export async function run(): Promise<BenchRow[]> {
  const rows = await memoryExpire();
  (globalThis as { gc?: () => void }).gc?.();
  rows.push(...(await memoryRenew()));
  rows.push(...(await databases()));
  return rows;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  printTable(await run());
}
