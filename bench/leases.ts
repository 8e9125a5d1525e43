/**
 * Credit leases (docs/metering.md "Leases"), ratios against the exact path in the same run:
 * - memory, JSONL ledger file on: `lease.charge()` served from a block (its ledger line included)
 *   per second on one core, against `deductCredits` (target: >= 1,000,000 charges/s);
 * - PostgreSQL (CREDIT_PG_URL), 1,000 users, 16 callers, each user charged >= 100 times per window:
 *   requests/s through leases against the exact path (target >= 20×), and journal bytes per request
 *   (`pg_total_relation_size` of journal_entries after VACUUM; target <= 10 bytes). The window is
 *   5 s so that a busy machine still charges each user >= 100 times per window (the note says how many).
 * Alone: `npx tsx bench/leases.ts` (BENCH_SOURCE=1 for src/; piped, it prints the rows as JSON). BENCH_LEASE_CHARGES sets the leased
 * charges in memory (default 2,000,000).
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { core, postgres } from "./pkg.js";
import { type BenchRow, measure, printTable } from "./lib.js";

const { createCreditManager } = core;

async function memoryRows(): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), "bench-leases-"));
  const m = await createCreditManager({ ledger: { filePath: join(dir, "ledger.jsonl") } });
  try {
    const users = 100;
    for (let i = 0; i < users; i++) await m.credits.addCredits(`u${i}`, 1e12);
    // The exact path: one unit of work (and ledger line) per charge, sequential.
    const exactOps = 30_000;
    const exact = await measure(exactOps, 1, (i) => m.credits.deductCredits(`u${i % users}`, 1));
    const lease = m.credits.leases({ size: 1_000_000_000, settleEveryMs: 1000, ttlSeconds: 60 });
    for (let i = 0; i < users; i++) await lease.charge(`u${i}`, 1); // the blocks
    const n = Number(process.env.BENCH_LEASE_CHARGES ?? 2_000_000);
    const names = Array.from({ length: users }, (_, i) => `u${i}`);
    const start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      const c = lease.charge(names[i % users] as string, 1, { reason: "GET /api/ping" });
      if (c instanceof Promise) await c; // a roll: rare
    }
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const leased = n / seconds;
    await lease.close();
    return [
      { backend: "memory", scenario: "deductCredits, exact path (ledger file on, 100 users)", opsPerSec: exact },
      {
        backend: "memory",
        scenario: "lease.charge() from a block (ledger line each, 100 users, one core)",
        opsPerSec: leased,
        baseline: "deductCredits",
        ratio: leased / exact,
        target: ">= 1,000,000 ops/s",
        met: leased >= 1_000_000,
      },
    ];
  } finally {
    await m.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function pgRows(): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const USERS = 1000;
  const CALLERS = 16;
  const pool = new pg.Pool({ connectionString: url, max: CALLERS });
  const schema = `cm_lease_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  try {
    const db = new PostgresDbManager({ pool, schema });
    await db.init();
    const m = await createCreditManager({ db, init: false });
    const names = Array.from({ length: USERS }, (_, i) => `u${i}`);
    for (let i = 0; i < USERS; i += CALLERS)
      await Promise.all(names.slice(i, i + CALLERS).map((u) => m.credits.addCredits(u, 1e12)));
    const bytes = async () => {
      await pool.query(`VACUUM ANALYZE ${schema}.journal_entries`);
      const r = await pool.query<{ total: string }>(
        `SELECT pg_total_relation_size('${schema}.journal_entries') AS total`,
      );
      return Number(r.rows[0]?.total);
    };
    const exactOps = Number(process.env.BENCH_LEASE_PG_EXACT ?? 4000);
    const before = await bytes();
    const exact = await measure(exactOps, CALLERS, (i) => m.credits.deductCredits(names[i % USERS] as string, 1));
    const exactBytes = ((await bytes()) - before) / exactOps;
    // Leases: 300 charges per user, the opens and the closing settles included. The window (5 s) is
    // long enough on a busy machine that each user is charged >= 100 times in each; the note says
    // how many it was.
    const perUser = 300;
    const ops = USERS * perUser;
    const lease = m.credits.leases({ size: 1_000_000, settleEveryMs: 5000, ttlSeconds: 60, exactBelow: 1 });
    const mid = await bytes();
    const start = process.hrtime.bigint();
    await measure(ops, CALLERS, async (i) => {
      const c = lease.charge(names[i % USERS] as string, 1);
      if (c instanceof Promise) await c;
    });
    await lease.close();
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const leased = ops / seconds;
    const leaseBytes = ((await bytes()) - mid) / ops;
    const windows = await pool.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${schema}.journal_entries WHERE type = 'commit_reserved'`,
    );
    const perWindow = ops / Number(windows.rows[0]?.n);
    await m.close();
    return [
      {
        backend: "postgres",
        scenario: `deductCredits, exact path (${USERS} users, ${CALLERS} callers)`,
        opsPerSec: exact,
        note: `${exactBytes.toFixed(0)} journal bytes per request`,
      },
      {
        backend: "postgres",
        scenario: `lease.charge() (${USERS} users, ${CALLERS} callers, ${perUser} per user per window, opens and settles included)`,
        opsPerSec: leased,
        baseline: "exact path",
        ratio: leased / exact,
        target: ">= 20× exact, <= 10 journal bytes/request",
        met: leased / exact >= 20 && leaseBytes <= 10,
        note: `${leaseBytes.toFixed(1)} journal bytes per request (exact path: ${exactBytes.toFixed(0)}); ${perWindow.toFixed(0)} requests per user per window on average`,
      },
    ];
  } finally {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
    await pool.end();
  }
}

export async function run(): Promise<BenchRow[]> {
  return [...(await memoryRows()), ...(await pgRows())];
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  const rows = await run();
  // Piped (`npm run bench` runs it as a child): the rows as JSON on the last line; else the table.
  if (process.stdout.isTTY) printTable(rows);
  else console.log(JSON.stringify(rows));
}
