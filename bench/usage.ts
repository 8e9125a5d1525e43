/**
 * Usage reports (docs/usage.md) on a big journal: one account's month by day by model (target
 * <= 50 ms on PostgreSQL) and the fleet's top 100 accounts for a month (target <= 1 s), on
 * PostgreSQL (CREDIT_PG_URL), SQLite, MongoDB (CREDIT_MONGO_URI) and memory.
 *
 * The journals are written straight into each store (PostgreSQL: one `INSERT … SELECT` over
 * `generate_series`; SQLite: a recursive CTE; MongoDB: `insertMany` batches; memory: deductions
 * through the service), not through units of work — the hash chain is not what is measured. Each
 * entry is a deduction of 1–20 credits with one LLM usage (one of 5 models, tokens), a feature and
 * a spender, spread evenly over the last 365 days in time order; the month asked for is the last
 * whole calendar month (UTC). On PostgreSQL the daily rollup is filled after the load by the
 * statement of the upgrade to version 12; the top 100 is measured through the rollup and, for the
 * ratio, through the journal alone; then the first top 100 after new entries, which the report
 * adds to the rollup first, alternated with the same after the worker's usage round added them
 * (BENCH_USAGE_CATCHUP, below).
 * Sizes: BENCH_USAGE_ENTRIES (PostgreSQL, default 10,000,000; 0 skips it),
 * BENCH_USAGE_ACCOUNTS (default: one per 1,000 entries), BENCH_USAGE_SQLITE (default 1,000,000),
 * BENCH_USAGE_SQLITE_ACCOUNT (SQLite's reports and the event loop: the entries of one account this
 * month, default 200,000; 0 skips it), BENCH_USAGE_SQLITE_ROLLUP (SQLite's daily rollup: one account's
 * entries this month, its month by day and feature, default 50,000; 0 skips it),
 * BENCH_USAGE_MONGO (default 200,000), BENCH_USAGE_MEMORY (default 200,000). Alone: `npx tsx
 * bench/usage.ts`. A PostgreSQL journal is kept in the schema `cm_bench_usage_<entries>` between
 * runs (BENCH_USAGE_FRESH=1 makes it again). 10,000,000 entries take about 5 GB: drop them with
 * `psql "$CREDIT_PG_URL" -c 'DROP SCHEMA cm_bench_usage_10000000 CASCADE'`.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { core, mongodb, postgres, sqlite, worker } from "./pkg.js";
import { type BenchRow, printTable } from "./lib.js";
import { rollupBackfillSql, rollupNames } from "../src/schema/rollup.js";
import type { PostgresDbManager } from "../src/db/postgres/index.js";

const DAY = 86_400_000;
const MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-haiku-4-5", "o3"];

/** The last whole calendar month (UTC) before now. */
function lastMonth(): { from: Date; to: Date } {
  const now = new Date();
  return {
    from: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1)),
    to: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)),
  };
}

interface Usage {
  getUsage(q: Record<string, unknown>): Promise<{ rows: unknown[] }>;
}

/** The median time of `times` runs of `fn`, in ms (after one warm-up run). */
async function median(times: number, fn: () => Promise<unknown>): Promise<number> {
  await fn();
  const ms: number[] = [];
  for (let i = 0; i < times; i++) {
    const t = process.hrtime.bigint();
    await fn();
    ms.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)]!;
}

/** The two rows of one store. */
async function measureStore(
  backend: string,
  credits: Usage,
  entries: number,
  accounts: number,
  index: string,
  options: { only?: "top" } = {},
): Promise<BenchRow[]> {
  const { from, to } = lastMonth();
  const account = `acct-${Math.floor(accounts / 2)}`;
  const one = () => credits.getUsage({ account, from, to, interval: "day", groupBy: ["model"] });
  const top = () =>
    credits.getUsage({
      from,
      to,
      interval: null,
      groupBy: ["account"],
      kinds: ["spend"],
      orderBy: "credits",
      limit: 100,
    });
  const scale = `${entries.toLocaleString("en-US")} entries, ${accounts.toLocaleString("en-US")} accounts`;
  if (options.only === "top") {
    const topMs = await median(3, top);
    return [{ backend, scenario: `top 100 (${scale})`, opsPerSec: 1000 / topMs }];
  }
  const oneRows = (await one()).rows.length;
  const topRows = (await top()).rows.length;
  const oneMs = await median(15, one);
  const topMs = await median(3, top);
  return [
    {
      backend,
      scenario: `getUsage: one account's month by day by model (${scale})`,
      opsPerSec: 1000 / oneMs,
      target: backend === "postgres" ? "<= 50 ms" : undefined,
      met: backend === "postgres" ? oneMs <= 50 : undefined,
      note: `${oneMs.toFixed(1)} ms median, ${oneRows} rows; ${index}`,
    },
    {
      backend,
      scenario: `getUsage: top 100 accounts for a month (${scale})`,
      opsPerSec: 1000 / topMs,
      target: backend === "postgres" ? "<= 1 s" : undefined,
      met: backend === "postgres" ? topMs <= 1000 : undefined,
      note: `${topMs.toFixed(0)} ms median, ${topRows} rows; ${index}`,
    },
  ];
}

/** The SQL expression of entry number `i` (0-based, time order) for PostgreSQL and SQLite. */
const models = (dialect: "pg" | "sqlite", i: string) =>
  dialect === "pg"
    ? `(ARRAY['${MODELS.join("','")}'])[(${i} % ${MODELS.length}) + 1]`
    : `CASE ${i} % ${MODELS.length} ${MODELS.map((m, k) => `WHEN ${k} THEN '${m}'`).join(" ")} END`;

async function pgRows(entries: number, accounts: number): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const schema = `cm_bench_usage_${entries}`;
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    if (process.env.BENCH_USAGE_FRESH === "1") await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    const db = new PostgresDbManager({ connectionString: url, schema });
    await db.init();
    const t = `"${schema}"."journal_entries"`;
    const have = Number((await client.query(`SELECT count(*) AS n FROM (SELECT 1 FROM ${t} LIMIT 1) x`)).rows[0].n);
    let loadNote = "";
    const rollup = rollupNames({ schema });
    if (have === 0) {
      const start = Date.now();
      const first = Date.now() - 365 * DAY;
      const step = (365 * DAY) / entries;
      // The rollup is filled once after the load, as the upgrade to version 12 fills it (the same
      // statements), from the accounts' seqs.
      // Time order is insert order, as a journal grows: what the BRIN index on created_at summarizes.
      await client.query(
        `INSERT INTO ${t} (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
          `SELECT 'e' || i, 'acct-' || (i % ${accounts}), i / ${accounts} + 1, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
          `jsonb_build_object('usages', jsonb_build_array(jsonb_build_object('amount', 1 + i % 20, 'model', ${models("pg", "i")}, 'inputTokens', 100 + i % 900, 'outputTokens', 10 + i % 90))), ` +
          `'key-' || (i % 7), CASE WHEN i % 3 = 0 THEN 'chat' ELSE 'search' END, ` +
          `to_timestamp((${first}::float8 + i * ${step}::float8) / 1000.0), '\\x00'::bytea FROM generate_series(0, ${entries - 1}) AS i`,
      );
      await client.query(
        `INSERT INTO "${schema}"."accounts" (user_id, balance, reserved, debt, seq, created_at, updated_at) ` +
          `SELECT user_id, 0, 0, 0, max(seq), now(), now() FROM ${t} GROUP BY user_id`,
      );
      const filled = Date.now();
      for (const statement of rollupBackfillSql(t, `"${schema}"."accounts"`, { schema })) await client.query(statement);
      await client.query(`VACUUM ANALYZE ${t}`);
      await client.query(`VACUUM ANALYZE ${rollup.table}`);
      loadNote = `; loaded in ${((filled - start) / 1000).toFixed(0)} s, rollup filled in ${((Date.now() - filled) / 1000).toFixed(0)} s`;
    }
    const size = (
      await client.query(
        `SELECT count(*)::int AS n, pg_size_pretty(pg_total_relation_size('${rollup.table}')) AS size FROM ${rollup.table}`,
      )
    ).rows[0] as { n: number; size: string };
    const credits = new core.CreditService({ db });
    const rows = await measureStore(
      "postgres",
      credits as unknown as Usage,
      entries,
      accounts,
      `one account: the primary key (user_id, seq); the fleet: the daily rollup (${size.n.toLocaleString("en-US")} rows, ${size.size})${loadNote}`,
    );
    // The same fleet query through the journal (the path before the rollup), for the ratio.
    const journalOnly = new PostgresDbManager({ connectionString: url, schema });
    (journalOnly as unknown as { hasRollup: boolean }).hasRollup = false;
    const viaJournal = new core.CreditService({ db: journalOnly });
    const fleet = rows[1]!;
    const [journalRow] = (await measureStore("postgres", viaJournal as unknown as Usage, entries, accounts, "", {
      only: "top",
    }))!;
    const journalMs = 1000 / journalRow!.opsPerSec;
    rows.push({
      backend: "postgres",
      scenario: `getUsage: top 100 accounts for a month, through the journal (no rollup) (${entries.toLocaleString("en-US")} entries)`,
      opsPerSec: journalRow!.opsPerSec,
      note: `${journalMs.toFixed(0)} ms median; the BRIN index on created_at`,
    });
    fleet.baseline = rows[2]!.scenario;
    fleet.ratio = fleet.opsPerSec / journalRow!.opsPerSec;
    await journalOnly.close();
    rows.push(...(await pgCatchUpRows(client, db, credits as unknown as Usage, schema, accounts)));
    return rows;
  } finally {
    await client.end();
  }
}

/**
 * What a report across accounts pays to catch the rollup up (docs/usage.md, "The daily rollup":
 * nothing on the write path since schema version 18, so reads pay the fold): `n` new deductions,
 * spread over the accounts, are written straight into the journal (each account's seq moved past
 * them, as a unit of work does), then the top 100 is timed once (it adds them to the rollup first)
 * and again (nothing left to add); alternated with that, `n` more, the worker's usage round
 * (`createWorker`'s `usageEveryMs`, docs/usage.md "Keeping the rollup caught up": `runOnce()` with
 * that round alone) timed, then the first top 100 after it. BENCH_USAGE_CATCHUP: the sizes,
 * comma-separated (default 1000,10000,100000; 0 skips it); BENCH_USAGE_ROUNDS: the alternations per
 * size (default 3: each figure a median of 3). Closes `db`.
 */
async function pgCatchUpRows(
  client: { query(text: string): Promise<unknown> },
  db: PostgresDbManager,
  credits: Usage,
  schema: string,
  accounts: number,
): Promise<BenchRow[]> {
  const sizes = (process.env.BENCH_USAGE_CATCHUP ?? "1000,10000,100000")
    .split(",")
    .map(Number)
    .filter((x) => x > 0);
  const { from, to } = lastMonth();
  const top = () =>
    credits.getUsage({
      from,
      to,
      interval: null,
      groupBy: ["account"],
      kinds: ["spend"],
      orderBy: "credits",
      limit: 100,
    });
  const t = `"${schema}"."journal_entries"`;
  const a = `"${schema}"."accounts"`;
  await db.catchUpUsageRollup();
  const { createWorker } = await worker();
  const manager = await core.createCreditManager({ db, init: false });
  const usageWorker = createWorker(manager, { jobsEveryMs: 0, topUpEveryMs: 0, usageEveryMs: 60_000 });
  const reps = Number(process.env.BENCH_USAGE_ROUNDS ?? 3);
  const rows: BenchRow[] = [];
  /** `n` new deductions over the accounts (now), each account's seq moved past them. */
  const write = async (n: number) => {
    const tag = `${Date.now()}-${n}-${Math.random().toString(36).slice(2)}`;
    await client.query(
      `INSERT INTO ${t} (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
        `SELECT 'f${tag}-' || i, a.user_id, a.seq + 1 + i / ${accounts}, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
        `jsonb_build_object('usages', jsonb_build_array(jsonb_build_object('amount', 1 + i % 20, 'model', ${models("pg", "i")}, 'inputTokens', 100 + i % 900, 'outputTokens', 10 + i % 90))), ` +
        `'key-' || (i % 7), 'chat', now(), '\\x00'::bytea FROM generate_series(0, ${n - 1}) AS i JOIN ${a} a ON a.user_id = 'acct-' || (i % ${accounts})`,
    );
    await client.query(
      `UPDATE ${a} SET seq = seq + (${n - 1} - substr(user_id, 6)::int) / ${accounts} + 1 WHERE substr(user_id, 6)::int < ${n}`,
    );
  };
  const time = async (fn: () => Promise<unknown>) => {
    const start = process.hrtime.bigint();
    await fn();
    return Number(process.hrtime.bigint() - start) / 1e6;
  };
  const mid = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  for (const n of sizes) {
    const first: number[] = [];
    const steady: number[] = [];
    const round: number[] = [];
    const afterRound: number[] = [];
    let added = 0;
    for (let i = 0; i < reps; i++) {
      // The report pays the catch-up …
      await write(n);
      first.push(await time(top));
      steady.push(await median(3, top));
      // … or the worker's round did it first.
      await write(n);
      let report: Record<string, unknown> = {};
      round.push(
        await time(async () => {
          const r = await usageWorker.runOnce();
          if (!r.ok) throw r.rounds[0]?.error ?? new Error("the usage round failed");
          report = r.rounds[0]!.report;
        }),
      );
      added += Number((report.usage as { entries?: number } | undefined)?.entries ?? 0);
      afterRound.push(await time(top));
    }
    const scale = `${n.toLocaleString("en-US")} new entries`;
    rows.push({
      backend: "postgres",
      scenario: `getUsage: top 100 accounts for a month, the first after ${scale}`,
      opsPerSec: 1000 / mid(first),
      note: `${mid(first).toFixed(0)} ms median of ${reps}, then ${mid(steady).toFixed(0)} ms: the catch-up about ${(mid(first) - mid(steady)).toFixed(0)} ms, ${(((mid(first) - mid(steady)) * 1000) / n).toFixed(1)} µs an entry`,
    });
    rows.push({
      backend: "postgres",
      scenario: `getUsage: top 100 accounts for a month, the first after ${scale} and the worker's usage round`,
      opsPerSec: 1000 / mid(afterRound),
      baseline: rows[rows.length - 1]!.scenario,
      ratio: mid(first) / mid(afterRound),
      note: `${mid(afterRound).toFixed(0)} ms median of ${reps}, alternated with the above; the round itself ${mid(round).toFixed(0)} ms median (${(added / reps).toLocaleString("en-US")} entries a round)`,
    });
  }
  await manager.close(); // and the store
  return rows;
}

async function sqliteRows(entries: number, accounts: number): Promise<BenchRow[]> {
  const { SqliteDbManager } = await sqlite();
  const { default: Database } = await import("better-sqlite3");
  const dir = mkdtempSync(join(tmpdir(), "cm-bench-usage-"));
  try {
    const file = join(dir, "usage.db");
    const db = new SqliteDbManager({ filename: file });
    await db.init();
    const raw = new Database(file);
    const first = Date.now() - 365 * DAY;
    const step = (365 * DAY) / entries;
    const start = Date.now();
    raw.exec(
      `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ${entries - 1}) ` +
        `INSERT INTO journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
        `SELECT 'e' || i, 'acct-' || (i % ${accounts}), i / ${accounts} + 1, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
        `json_object('usages', json_array(json_object('amount', 1 + i % 20, 'model', ${models("sqlite", "i")}, 'inputTokens', 100 + i % 900, 'outputTokens', 10 + i % 90))), ` +
        `'key-' || (i % 7), CASE WHEN i % 3 = 0 THEN 'chat' ELSE 'search' END, ` +
        `strftime('%Y-%m-%dT%H:%M:%fZ', (${first} + i * ${step}) / 1000.0, 'unixepoch'), '00' FROM s`,
    );
    raw.exec("ANALYZE");
    raw.close();
    const loaded = (Date.now() - start) / 1000;
    const credits = new core.CreditService({ db });
    const rows = await measureStore(
      "sqlite",
      credits as unknown as Usage,
      entries,
      accounts,
      `one account: the primary key; the fleet: the index on created_at; loaded in ${loaded.toFixed(0)} s`,
    );
    await db.close();
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The median time of `fn` over `times` runs (after a warm-up) and the longest the event loop was
 * held during one of them, in ms: a timer every 5 ms, whose longest wait between turns is how long
 * a health check would have waited. The event loop runs for 20 ms between runs.
 */
async function withStalls(times: number, fn: () => Promise<unknown>): Promise<{ ms: number; stallMs: number }> {
  await fn();
  const ms: number[] = [];
  let stallMs = 0;
  for (let i = 0; i < times; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      stallMs = Math.max(stallMs, now - last);
      last = now;
    }, 5);
    const started = performance.now();
    try {
      await fn();
    } finally {
      clearInterval(timer);
    }
    ms.push(performance.now() - started);
    stallMs = Math.max(stallMs, performance.now() - last);
  }
  ms.sort((a, b) => a - b);
  return { ms: ms[Math.floor(ms.length / 2)]!, stallMs };
}

/**
 * SQLite's reports and the event loop (docs/storage.md, "Reports off the event loop"): one account
 * of `entries` entries this month, its month by day by model, and the fleet's top 100, on the
 * store's reader thread against the same reports on the event loop (the same file handed in as a
 * database without its name: no file for a thread). Each row: the report's median time, and the
 * longest the event loop went without running a 5 ms timer meanwhile.
 */
async function sqliteAvailabilityRows(entries: number): Promise<BenchRow[]> {
  const { SqliteDbManager } = await sqlite();
  const { default: Database } = await import("better-sqlite3");
  const dir = mkdtempSync(join(tmpdir(), "cm-bench-usage-thread-"));
  try {
    const file = join(dir, "usage.db");
    const db = new SqliteDbManager({ filename: file });
    await db.init();
    const raw = new Database(file);
    const now = Date.now();
    const month = new Date(Date.UTC(new Date(now).getUTCFullYear(), new Date(now).getUTCMonth(), 1)).getTime();
    const step = Math.max(1, now - month - 1000) / entries;
    raw.exec(
      `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ${entries - 1}) ` +
        `INSERT INTO journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
        `SELECT 'e' || i, 'acct-big', i + 1, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
        `json_object('usages', json_array(json_object('amount', 1 + i % 20, 'model', ${models("sqlite", "i")}, 'inputTokens', 100 + i % 900, 'outputTokens', 10 + i % 90))), ` +
        `'key-' || (i % 7), 'chat', strftime('%Y-%m-%dT%H:%M:%fZ', (${month} + i * ${step}) / 1000.0, 'unixepoch'), '00' FROM s`,
    );
    raw.exec("ANALYZE");
    const nameless = new SqliteDbManager({
      database: {
        prepare: (text) => raw.prepare(text),
        exec: (text) => raw.exec(text),
        pragma: (source, options) => raw.pragma(source, options),
        transaction: (fn) => raw.transaction(fn),
        close: () => raw.close(),
      },
    });
    await nameless.init();
    const from = new Date(month);
    const reports = {
      "one account's month by day by model": { account: "acct-big", from, interval: "day", groupBy: ["model"] },
      "top 100 accounts of the month": { from, interval: null, groupBy: ["account"], orderBy: "credits", limit: 100 },
    };
    const rows: BenchRow[] = [];
    const scale = `${entries.toLocaleString("en-US")} entries in one account, this month`;
    for (const [name, q] of Object.entries(reports)) {
      const ask = (d: typeof db) => () =>
        (new core.CreditService({ db: d }) as unknown as Usage).getUsage({ ...q, to: new Date() });
      const thread = await withStalls(3, ask(db));
      const loop = await withStalls(3, ask(nameless));
      const scenario = `getUsage: ${name} (${scale})`;
      rows.push(
        {
          backend: "sqlite",
          scenario: `${scenario}, on the event loop`,
          opsPerSec: 1000 / loop.ms,
          note: `${loop.ms.toFixed(0)} ms median; event loop held up to ${loop.stallMs.toFixed(0)} ms`,
        },
        {
          backend: "sqlite",
          scenario: `${scenario}, on the reader thread`,
          opsPerSec: 1000 / thread.ms,
          baseline: `${scenario}, on the event loop`,
          ratio: loop.ms / thread.ms,
          target: "event loop held < 100 ms",
          met: thread.stallMs < 100,
          note: `${thread.ms.toFixed(0)} ms median; event loop held up to ${thread.stallMs.toFixed(0)} ms`,
        },
      );
    }
    await nameless.close();
    raw.close();
    await db.close();
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * SQLite's daily rollup (docs/usage.md, "The daily rollup"; schema version 2): one account of
 * `entries` entries this month (written straight into the file, so its first report adds them to
 * the rollup: timed once), its month by day and feature — the rollup's whole UTC days and the
 * journal's edges — against the same report by the days of a zone one hour off UTC (Etc/GMT-1),
 * whose windows are no UTC days: the journal alone. Medians of 15 runs. Target: <= 100 ms at
 * 50,000 entries. On a store without the rollup (version 1) both read the journal.
 */
async function sqliteRollupRows(entries: number): Promise<BenchRow[]> {
  const { SqliteDbManager } = await sqlite();
  const { default: Database } = await import("better-sqlite3");
  const dir = mkdtempSync(join(tmpdir(), "cm-bench-usage-rollup-"));
  try {
    const file = join(dir, "usage.db");
    const db = new SqliteDbManager({ filename: file });
    await db.init();
    const raw = new Database(file);
    const now = Date.now();
    const month = new Date(Date.UTC(new Date(now).getUTCFullYear(), new Date(now).getUTCMonth(), 1)).getTime();
    const step = Math.max(1, now - month - 1000) / entries;
    raw.exec(
      `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ${entries - 1}) ` +
        `INSERT INTO journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
        `SELECT 'e' || i, 'acct-big', i + 1, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
        `json_object('usages', json_array(json_object('amount', 1 + i % 20, 'model', ${models("sqlite", "i")}, 'inputTokens', 100 + i % 900, 'outputTokens', 10 + i % 90))), ` +
        `'key-' || (i % 7), CASE WHEN i % 3 = 0 THEN 'chat' ELSE 'search' END, strftime('%Y-%m-%dT%H:%M:%fZ', (${month} + i * ${step}) / 1000.0, 'unixepoch'), '00' FROM s`,
    );
    raw.exec(
      `INSERT INTO accounts (user_id, balance, reserved, debt, seq, created_at, updated_at) ` +
        `VALUES ('acct-big', 0, 0, 0, ${entries}, '${new Date(month).toISOString()}', '${new Date(month).toISOString()}')`,
    );
    raw.exec("ANALYZE");
    raw.close();
    const kept = ((await db.usageRollup?.("acct-big")) ?? null) !== null;
    const credits = new core.CreditService({ db }) as unknown as Usage;
    const from = new Date(month);
    const to = new Date(Math.floor(now / DAY) * DAY + DAY);
    const report = (timeZone: string) => () =>
      credits.getUsage({ account: "acct-big", from, to, interval: "day", groupBy: ["feature"], timeZone });
    const scale = `${entries.toLocaleString("en-US")} entries in one account, this month`;
    const started = performance.now();
    await report("UTC")();
    const firstMs = performance.now() - started;
    const journalMs = await median(15, report("Etc/GMT-1"));
    const rollupMs = await median(15, report("UTC"));
    const rows = (await report("UTC")()).rows.length;
    await db.close();
    const name = `getUsage: one account's month by day and feature (${scale})`;
    return [
      {
        backend: "sqlite",
        scenario: `${name}, days of Etc/GMT-1 (the journal)`,
        opsPerSec: 1000 / journalMs,
        note: `${journalMs.toFixed(1)} ms median`,
      },
      {
        backend: "sqlite",
        scenario: `${name}, UTC days${kept ? " (the daily rollup)" : " (no rollup: schema version 1)"}`,
        opsPerSec: 1000 / rollupMs,
        baseline: `${name}, days of Etc/GMT-1 (the journal)`,
        ratio: journalMs / rollupMs,
        target: "<= 100 ms",
        met: rollupMs <= 100,
        note: `${rollupMs.toFixed(1)} ms median, ${rows} rows; the first, which added the entries to the rollup, ${firstMs.toFixed(0)} ms`,
      },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function mongoRows(entries: number, accounts: number): Promise<BenchRow[]> {
  const uri = process.env.CREDIT_MONGO_URI;
  if (!uri) return [];
  const { MongoClient } = await import("mongodb");
  const { MongoDbManager } = await mongodb();
  const client = await new MongoClient(uri).connect();
  const dbName = `cm_bench_usage_${process.pid}`;
  try {
    const db = new MongoDbManager({ client, dbName });
    await db.init();
    const col = client.db(dbName).collection("credit_journal");
    const first = Date.now() - 365 * DAY;
    const step = (365 * DAY) / entries;
    const start = Date.now();
    for (let b = 0; b < entries; b += 5000) {
      const docs = [];
      for (let i = b; i < Math.min(entries, b + 5000); i++) {
        const amount = 1 + (i % 20);
        docs.push({
          _id: `e${i}`,
          userId: `acct-${i % accounts}`,
          seq: Math.floor(i / accounts) + 1,
          type: "deduct",
          amount,
          balanceAfter: 0,
          reservedAfter: 0,
          debtAfter: 0,
          grants: [],
          metadata: {
            usages: [
              { amount, model: MODELS[i % MODELS.length], inputTokens: 100 + (i % 900), outputTokens: 10 + (i % 90) },
            ],
          },
          spender: `key-${i % 7}`,
          feature: i % 3 === 0 ? "chat" : "search",
          createdAt: new Date(first + i * step),
        });
      }
      await col.insertMany(docs as never[], { ordered: false });
    }
    const loaded = (Date.now() - start) / 1000;
    const credits = new core.CreditService({ db });
    return await measureStore(
      "mongodb",
      credits as unknown as Usage,
      entries,
      accounts,
      `one account: the (userId, seq) index; the fleet: the createdAt index; loaded in ${loaded.toFixed(0)} s`,
    );
  } finally {
    await client.db(dbName).dropDatabase();
    await client.close();
  }
}

async function memoryRows(entries: number, accounts: number): Promise<BenchRow[]> {
  const clock = { now: Date.now() - 365 * DAY };
  const step = (365 * DAY) / entries;
  const m = await core.createCreditManager({ clock: () => new Date(clock.now) });
  for (let a = 0; a < accounts; a++) await m.credits.addCredits(`acct-${a}`, 1_000_000_000);
  for (let i = 0; i < entries; i++) {
    clock.now += step;
    const amount = 1 + (i % 20);
    await m.credits.deductCredits(`acct-${i % accounts}`, amount, {
      spender: `key-${i % 7}`,
      feature: i % 3 === 0 ? "chat" : "search",
      metadata: {
        usages: [
          { amount, model: MODELS[i % MODELS.length]!, inputTokens: 100 + (i % 900), outputTokens: 10 + (i % 90) },
        ],
      },
    });
  }
  return measureStore(
    "memory",
    m.credits as unknown as Usage,
    entries,
    accounts,
    "a scan of each account's journal in memory",
  );
}

export async function run(): Promise<BenchRow[]> {
  const n = (name: string, d: number) => Number(process.env[name] ?? d);
  const pgN = n("BENCH_USAGE_ENTRIES", 10_000_000);
  const perAccount = (e: number) => n("BENCH_USAGE_ACCOUNTS", Math.max(1, Math.round(e / 1000)));
  const rows: BenchRow[] = [];
  if (pgN > 0) rows.push(...(await pgRows(pgN, perAccount(pgN))));
  const sq = n("BENCH_USAGE_SQLITE", 1_000_000);
  if (sq > 0) rows.push(...(await sqliteRows(sq, perAccount(sq))));
  const big = n("BENCH_USAGE_SQLITE_ACCOUNT", 200_000);
  if (big > 0) rows.push(...(await sqliteAvailabilityRows(big)));
  const rolled = n("BENCH_USAGE_SQLITE_ROLLUP", 50_000);
  if (rolled > 0) rows.push(...(await sqliteRollupRows(rolled)));
  const mo = n("BENCH_USAGE_MONGO", 200_000);
  if (mo > 0) rows.push(...(await mongoRows(mo, perAccount(mo))));
  const me = n("BENCH_USAGE_MEMORY", 200_000);
  if (me > 0) rows.push(...(await memoryRows(me, perAccount(me))));
  return rows;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) printTable(await run());
