/**
 * The customer's state, page by page (docs/customer-state.md, docs/benchmarks.md): on PostgreSQL,
 * `listCustomerStates` reading 1,000 accounts in one page — each with an open grant, a scoped grant,
 * a spend limit and a few journal entries, under three feature rules — by cursor over the store's
 * accounts and by a list of their ids. Target: at most one second per 1,000 accounts. The best of
 * five rounds, with the median in the note.
 *
 * And an alert's recount (docs/customer-state.md, "Alerts"): `setAlerts` with 32 `period_spend`
 * thresholds on an account with BENCH_RECOUNT_ENTRIES entries this month (default 50,000; 0 skips
 * it), on a SQLite file and on PostgreSQL: the window's spend is summed by the store's usage scan
 * beside the unit of work (SQLite at schema version 2: through its daily rollup, which the entries
 * written straight into the file are added to first). Each row: the recount's median time of BENCH_RECOUNT_ROUNDS (default 3),
 * the longest the event loop waited for a 5 ms timer meanwhile, and a deduction on the same account
 * made while the recount runs, against the same deduction with nothing running.
 *   tsx bench/customer-state.ts      → one JSON line: BenchRow[] (PostgreSQL's rows only with CREDIT_PG_URL)
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { core, postgres, sqlite } from "./pkg.js";
import type { BenchRow } from "./lib.js";

const ACCOUNTS = 1000;
const ROUNDS = 5;

async function pgRows(): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const pool = new pg.Pool({ connectionString: url, max: 16 });
  const schema = `cm_state_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  try {
    const db = new PostgresDbManager({ pool, schema });
    await db.init();
    const m = await core.createCreditManager({
      db,
      init: false,
      features: {
        images: { minAvailable: 10 },
        chat: { minAvailable: 1 },
        export: { minAvailable: 0, enabled: false },
      },
    });
    const ids = Array.from({ length: ACCOUNTS }, (_, i) => `acct-${String(i).padStart(5, "0")}`);
    for (let i = 0; i < ACCOUNTS; i += 16)
      await Promise.all(
        ids.slice(i, i + 16).map(async (u) => {
          await m.credits.addCredits(u, 1_000, { expiresAt: new Date(Date.now() + 30 * 86_400_000) });
          await m.credits.addCredits(u, 200, { scope: { features: ["images"] } });
          await m.credits.setLimit(u, { feature: "chat", amount: 500, period: "day" });
          await m.credits.deductCredits(u, 30, { feature: "images" });
          await m.credits.deductCredits(u, 20, { feature: "chat" });
        }),
      );
    const time = async (read: () => Promise<{ items: unknown[] }>) => {
      const seconds: number[] = [];
      await read(); // warm-up
      for (let r = 0; r < ROUNDS; r++) {
        const start = process.hrtime.bigint();
        const page = await read();
        seconds.push(Number(process.hrtime.bigint() - start) / 1e9);
        if (page.items.length !== ACCOUNTS) throw new Error(`read ${page.items.length} accounts, not ${ACCOUNTS}`);
      }
      seconds.sort((a, b) => a - b);
      return { best: seconds[0] as number, median: seconds[Math.floor(ROUNDS / 2)] as number };
    };
    const byCursor = await time(() => m.credits.listCustomerStates({ limit: ACCOUNTS }));
    const byIds = await time(() => m.credits.listCustomerStates({ userIds: ids, limit: ACCOUNTS }));
    await m.close();
    const row = (how: string, t: { best: number; median: number }): BenchRow => ({
      backend: "postgres",
      scenario: `listCustomerStates: ${ACCOUNTS.toLocaleString("en-US")} accounts in one page, ${how} (accounts/s)`,
      opsPerSec: ACCOUNTS / t.best,
      target: "<= 1 s per 1,000 accounts",
      met: t.best <= 1,
      note: `${t.best.toFixed(3)} s for the page (best of ${ROUNDS}; median ${t.median.toFixed(3)} s)`,
    });
    return [row("by cursor", byCursor), row("by a list of ids", byIds)];
  } finally {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
    await pool.end();
  }
}

/** 32 `period_spend` thresholds over this month: all spend, each of 8 keys', each key's per feature, lines. */
function recountThresholds(): Parameters<InstanceType<typeof core.NotificationService>["setAlerts"]>[1] {
  const list: {
    id: string;
    kind: "period_spend";
    atOrAbove: number;
    window: "month";
    spender?: string;
    feature?: string;
  }[] = [{ id: "all", kind: "period_spend", atOrAbove: 1e12, window: "month" }];
  for (let k = 0; k < 8; k++) {
    list.push({ id: `k${k}`, kind: "period_spend", atOrAbove: 1e12, window: "month", spender: `key-${k}` });
    for (const feature of ["chat", "search"])
      list.push({
        id: `k${k}-${feature}`,
        kind: "period_spend",
        atOrAbove: 1e12,
        window: "month",
        spender: `key-${k}`,
        feature,
      });
  }
  while (list.length < 32)
    list.push({ id: `line-${list.length}`, kind: "period_spend", atOrAbove: list.length * 1000, window: "month" });
  return list;
}

/** The entries' spread: from the start of this month (UTC) until a second ago. */
function thisMonth(entries: number): { month: number; step: number } {
  const now = new Date();
  const month = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
  return { month, step: Math.max(1, now.getTime() - month - 1000) / entries };
}

/**
 * `setAlerts` (the recount) `rounds` times on `user`: its median time, the longest stall of the
 * event loop (a 5 ms timer) during them, and a deduction on the account made while each runs
 * against the same with nothing running (median ms).
 */
async function timeRecounts(
  credits: InstanceType<typeof core.CoreCreditService>,
  notifications: InstanceType<typeof core.NotificationService>,
  user: string,
  rounds: number,
): Promise<{ ms: number; stallMs: number; deductMs: number; aloneMs: number }> {
  const list = recountThresholds();
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const times: number[] = [];
  const during: number[] = [];
  const alone: number[] = [];
  let stallMs = 0;
  for (let r = 0; r < rounds; r++) {
    let t = performance.now();
    await credits.deductCredits(user, 1, { spender: "key-0", feature: "chat" });
    alone.push(performance.now() - t);
    await notifications.setAlerts(user, null); // the next setAlerts counts again
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      stallMs = Math.max(stallMs, now - last);
      last = now;
    }, 5);
    t = performance.now();
    const setting = notifications.setAlerts(user, list).then(() => performance.now() - t);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const d = performance.now();
    await credits.deductCredits(user, 1, { spender: "key-0", feature: "chat" });
    during.push(performance.now() - d);
    times.push(await setting);
    clearInterval(timer);
    stallMs = Math.max(stallMs, performance.now() - last);
  }
  return { ms: median(times), stallMs, deductMs: median(during), aloneMs: median(alone) };
}

function recountRow(backend: string, entries: number, m: Awaited<ReturnType<typeof timeRecounts>>): BenchRow {
  return {
    backend,
    scenario: `setAlerts: 32 period_spend thresholds recounted over ${entries.toLocaleString("en-US")} entries this month`,
    opsPerSec: 1000 / m.ms,
    target: "event loop held < 100 ms",
    met: m.stallMs < 100,
    note:
      `${m.ms.toFixed(0)} ms median; event loop held up to ${m.stallMs.toFixed(0)} ms; a deduction on the account ` +
      `meanwhile ${m.deductMs.toFixed(1)} ms (alone ${m.aloneMs.toFixed(1)} ms)`,
  };
}

async function sqliteRecountRows(entries: number, rounds: number): Promise<BenchRow[]> {
  const { SqliteDbManager } = await sqlite();
  const { default: Database } = await import("better-sqlite3");
  const dir = mkdtempSync(join(tmpdir(), "cm-bench-recount-"));
  try {
    const file = join(dir, "recount.db");
    const db = new SqliteDbManager({ filename: file });
    await db.init();
    const credits = new core.CoreCreditService({ db });
    const notifications = new core.NotificationService({ db, alerts: [] });
    await credits.addCredits("big", 1_000_000_000);
    const { month, step } = thisMonth(entries);
    const raw = new Database(file);
    raw.exec(
      `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ${entries - 1}) ` +
        `INSERT INTO journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
        `SELECT 'e' || i, 'big', i + 2, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
        `json_object('usages', json_array(json_object('amount', 1 + i % 20, 'model', 'm' || (i % 5), 'inputTokens', 100))), ` +
        `'key-' || (i % 8), CASE WHEN i % 3 = 0 THEN 'chat' ELSE 'search' END, ` +
        `strftime('%Y-%m-%dT%H:%M:%fZ', (${month} + i * ${step}) / 1000.0, 'unixepoch'), '00' FROM s`,
    );
    raw.prepare("UPDATE accounts SET seq = ? WHERE user_id = 'big'").run(entries + 1);
    raw.exec("ANALYZE");
    raw.close();
    // Written straight into the file, the entries are not in the daily rollup yet (schema version
    // 2, docs/usage.md "On SQLite"), which units of work keep: added first, timed apart.
    const started = performance.now();
    const kept = ((await db.usageRollup?.("big")) ?? null) !== null;
    const catchUpMs = performance.now() - started;
    const row = recountRow("sqlite", entries, await timeRecounts(credits, notifications, "big", rounds));
    row.note += kept
      ? `; the daily rollup (its catch-up of the entries first: ${catchUpMs.toFixed(0)} ms)`
      : "; no rollup (schema version 1): the journal";
    await db.close();
    return [row];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function pgRecountRows(entries: number, rounds: number): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const pool = new pg.Pool({ connectionString: url, max: 8 });
  const schema = `cm_recount_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  try {
    const db = new PostgresDbManager({ pool, schema });
    await db.init();
    const credits = new core.CoreCreditService({ db });
    const notifications = new core.NotificationService({ db, alerts: [] });
    await credits.addCredits("big", 1_000_000_000);
    const { month, step } = thisMonth(entries);
    await pool.query(
      `INSERT INTO "${schema}".journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
        `SELECT 'e' || i, 'big', i + 2, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
        `jsonb_build_object('usages', jsonb_build_array(jsonb_build_object('amount', 1 + i % 20, 'model', 'm' || (i % 5), 'inputTokens', 100))), ` +
        `'key-' || (i % 8), CASE WHEN i % 3 = 0 THEN 'chat' ELSE 'search' END, ` +
        `to_timestamp((${month}::float8 + i * ${step}::float8) / 1000.0), '\\x00'::bytea FROM generate_series(0, ${entries - 1}) AS i`,
    );
    await pool.query(`UPDATE "${schema}".accounts SET seq = $1 WHERE user_id = 'big'`, [entries + 1]);
    await pool.query(`VACUUM ANALYZE "${schema}".journal_entries`);
    const row = recountRow("postgres", entries, await timeRecounts(credits, notifications, "big", rounds));
    await db.close();
    return [row];
  } finally {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
    await pool.end();
  }
}

const recountEntries = Number(process.env.BENCH_RECOUNT_ENTRIES ?? 50_000);
const recountRounds = Number(process.env.BENCH_RECOUNT_ROUNDS ?? 3);
const recounts =
  recountEntries > 0
    ? [
        ...(await sqliteRecountRows(recountEntries, recountRounds)),
        ...(await pgRecountRows(recountEntries, recountRounds)),
      ]
    : [];
console.log(JSON.stringify([...(process.env.BENCH_CUSTOMER_STATE_PAGES === "0" ? [] : await pgRows()), ...recounts]));
