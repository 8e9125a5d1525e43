// The usage queries generated from USAGE_RULES (src/core/domain/usage.ts) against the hand-written ones
// of an earlier commit (REV, default a85ae43: the last before the rules table): which indexes each
// reads on PostgreSQL (EXPLAIN on a store's own tables, sequential scans off, as on a large
// journal), and how long each takes on PostgreSQL, MongoDB and SQLite (in memory): the median of
// RUNS, alternating, over N entries in 100 accounts and 40 days (a third metered with two usages,
// a third lease windows with parts).
//
//   CREDIT_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//   CREDIT_MONGO_URI='mongodb://127.0.0.1:37017/?directConnection=true' \
//   N=100000 RUNS=9 npx tsx bench/usage-rules-compare.ts
//
// The earlier files are copied next to today's (src/db/*/usage-before.tmp.ts) for the run and
// removed after.
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { MongoClient } from "mongodb";
import pg from "pg";
import { usagePipeline } from "../src/db/mongodb/usage.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { rollupDays, usageSql } from "../src/db/postgres/usage.js";
import { SQLITE_QUERY, usageQuery } from "../src/db/usage-query.js";
import type { UsageScan } from "../src/core/domain/usage.js";
import { createCreditManager } from "../src/index.js";
import { rollupNames } from "../src/schema/rollup.js";

const REV = process.env.REV ?? "a85ae43";
const N = Number(process.env.N ?? 100_000);
const RUNS = Number(process.env.RUNS ?? 9);
const pgUrl = process.env.CREDIT_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const mongoUri = process.env.CREDIT_MONGO_URI;
const root = join(import.meta.dirname, "..");
const DAY = 86_400_000;

type SqlFn = typeof usageSql;
type PipelineFn = typeof usagePipeline;
type SqliteFn = (journal: string, scan: UsageScan) => { text: string; params: unknown[] };
const usageSqliteSql: SqliteFn = (journal, scan) => usageQuery(SQLITE_QUERY, journal, scan);

/** REV's version of `file`, imported from a copy beside today's. */
async function before<T>(file: string, copies: string[]): Promise<T> {
  const copy = join(root, file.replace(/\.ts$/, "-before.tmp.ts"));
  writeFileSync(copy, execFileSync("git", ["show", `${REV}:${file}`], { cwd: root }));
  copies.push(copy);
  return (await import(pathToFileURL(copy).href)) as T;
}

function scan(account: string | null, groupBy: string[], from: Date, to: Date, days: number): UsageScan {
  const boundaries = [from.getTime()];
  for (let i = 1; i < days; i++) boundaries.push(from.getTime() + i * DAY);
  boundaries.push(to.getTime());
  return {
    account,
    from,
    to,
    interval: days > 1 ? "day" : null,
    timeZone: "UTC",
    groupBy: groupBy as UsageScan["groupBy"],
    kinds: ["spend", "refund", "clawback"],
    orderBy: "start",
    limit: 10_000,
    boundaries,
  };
}

const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1]!;
async function time(f: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await f();
  return performance.now() - t;
}

/** Which journal and rollup indexes each query reads, on a store's own tables. */
async function explain(oldSql: SqlFn): Promise<void> {
  const schema = `cm_rulescmp_${process.pid}`;
  const m = await createCreditManager({ db: new PostgresDbManager({ connectionString: pgUrl, schema }) });
  const c = new pg.Client({ connectionString: pgUrl });
  await c.connect();
  try {
    for (let a = 0; a < 20; a++) {
      await m.credits.addCredits(`u${a}`, 10_000);
      for (let i = 0; i < 10; i++) await m.credits.deductCredits(`u${a}`, 1 + i, { feature: "chat" });
    }
    const j = `"${schema}"."journal_entries"`;
    await c.query(`ANALYZE ${j}`);
    await c.query("SET enable_seqscan = off");
    const now = Date.now();
    const range = (whole: boolean) =>
      whole
        ? [new Date(Math.floor((now - 3 * DAY) / DAY) * DAY), new Date(Math.ceil((now + DAY) / DAY) * DAY)]
        : [new Date(now - 3 * DAY), new Date(now + 3_600_000)];
    const cases: [string, UsageScan, boolean][] = [
      ["one account", scan("u3", [], ...(range(false) as [Date, Date]), 1), false],
      ["one account by model", scan("u3", ["model"], ...(range(false) as [Date, Date]), 1), false],
      ["every account by account", scan(null, ["account"], ...(range(false) as [Date, Date]), 1), false],
      ["every account by feature", scan(null, ["feature"], ...(range(false) as [Date, Date]), 1), false],
      ["every account by account, whole days", scan(null, ["account"], ...(range(true) as [Date, Date]), 1), true],
    ];
    for (const [name, s, withRollup] of cases) {
      const rollup = withRollup ? { table: rollupNames({ schema }).table, days: rollupDays(s)! } : undefined;
      for (const [tag, f] of [
        ["before", oldSql],
        ["generated", usageSql],
      ] as const) {
        const q = f(j, s, rollup);
        const plan = (await c.query(`EXPLAIN (COSTS OFF) ${q.text}`, q.params)).rows.map((r) =>
          String(r["QUERY PLAN"]),
        );
        const reads = plan.filter((l) => /Scan on (journal_entries|usage_daily)/.test(l)).map((l) => l.trim());
        console.log(`EXPLAIN ${name} [${tag}]: ${reads.join("; ")}`);
      }
    }
  } finally {
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await c.end();
    await m.close();
  }
}

const meta = (i: number) =>
  i % 3 === 0
    ? {
        usages: [
          { model: "small", amount: 2, inputTokens: 10, outputTokens: 3 },
          { model: "large", amount: 1, cachedTokens: 2 },
        ],
      }
    : i % 3 === 1
      ? { leaseWindow: { requests: 4, parts: [{ model: "m", feature: "f", credits: 3, requests: 4, inputTokens: 9 }] } }
      : i % 50 === 2
        ? { paymentId: "p", refundedAmount: 3 }
        : null;

async function timings(oldSql: SqlFn, oldPipeline: PipelineFn | null, oldSqlite: SqliteFn): Promise<void> {
  const now = Date.now();
  const from = new Date(now - 40 * DAY);
  const to = new Date(now);
  const rows = Array.from({ length: N }, (_, i) => ({
    u: `u${i % 100}`,
    seq: Math.floor(i / 100),
    type: i % 3 === 1 ? "commit_reserved" : "deduct",
    m: meta(i),
    at: new Date(from.getTime() + (i / N) * 40 * DAY),
  }));
  const c = new pg.Client({ connectionString: pgUrl });
  await c.connect();
  const schema = `cm_rulesbench_${process.pid}`;
  const j = `"${schema}"."journal"`;
  const mc = mongoUri === undefined ? null : await new MongoClient(mongoUri).connect();
  const dbName = `credit_rulesbench_${process.pid}`;
  const lite = new Database(":memory:");
  try {
    await c.query(`CREATE SCHEMA "${schema}"`);
    await c.query(
      `CREATE TABLE ${j} (user_id TEXT, seq BIGINT, type TEXT, amount BIGINT, metadata JSONB, description TEXT, ` +
        `spender TEXT, feature TEXT, reservation_id TEXT, created_at TIMESTAMPTZ, PRIMARY KEY (user_id, seq))`,
    );
    await c.query(`CREATE INDEX ON ${j} USING brin (created_at)`);
    for (let k = 0; k < N; k += 5000) {
      const b = rows.slice(k, k + 5000);
      await c.query(
        `INSERT INTO ${j} (user_id, seq, type, amount, metadata, created_at, feature) SELECT *, 'chat' ` +
          `FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::jsonb[], $6::timestamptz[])`,
        [
          b.map((r) => r.u),
          b.map((r) => r.seq),
          b.map((r) => r.type),
          b.map(() => 3),
          b.map((r) => (r.m === null ? null : JSON.stringify(r.m))),
          b.map((r) => r.at),
        ],
      );
    }
    await c.query(`ANALYZE ${j}`);
    lite.exec(
      "CREATE TABLE journal (user_id TEXT, seq INTEGER, type TEXT, amount INTEGER, metadata TEXT, description TEXT, " +
        "spender TEXT, feature TEXT, reservation_id TEXT, created_at TEXT, PRIMARY KEY (user_id, seq)); " +
        "CREATE INDEX journal_created ON journal (created_at)",
    );
    const ins = lite.prepare("INSERT INTO journal VALUES (?, ?, ?, 3, ?, NULL, NULL, 'chat', NULL, ?)");
    lite.transaction(() => {
      for (const r of rows) ins.run(r.u, r.seq, r.type, r.m === null ? null : JSON.stringify(r.m), r.at.toISOString());
    })();
    const col = mc?.db(dbName).collection("journal");
    if (col !== undefined) {
      for (let k = 0; k < N; k += 5000) {
        await col.insertMany(
          rows.slice(k, k + 5000).map((r) => ({
            userId: r.u,
            seq: r.seq,
            type: r.type,
            amount: 3,
            createdAt: r.at,
            feature: "chat",
            ...(r.m === null ? {} : { metadata: r.m }),
          })),
        );
      }
      await col.createIndex({ userId: 1, seq: 1 });
      await col.createIndex({ createdAt: 1 });
    }
    const cases: [string, UsageScan][] = [
      ["one account by day", scan("u7", [], from, to, 40)],
      ["one account by day and model", scan("u7", ["model"], from, to, 40)],
      ["every account by day and account", scan(null, ["account"], from, to, 40)],
      ["every account by day, model and feature", scan(null, ["model", "feature"], from, to, 40)],
    ];
    for (const [name, s] of cases) {
      const t: Record<string, number[]> = { pgBefore: [], pgNow: [], mBefore: [], mNow: [], sBefore: [], sNow: [] };
      for (let r = 0; r < RUNS; r++) {
        for (const [tag, f] of [
          ["pgBefore", oldSql],
          ["pgNow", usageSql],
        ] as const) {
          const q = f(j, s);
          t[tag]!.push(await time(() => c.query(q.text, q.params)));
        }
        for (const [tag, f] of [
          ["sBefore", oldSqlite],
          ["sNow", usageSqliteSql],
        ] as const) {
          const q = f("journal", s);
          const st = lite.prepare(q.text);
          t[tag]!.push(await time(async () => st.all(...q.params)));
        }
        if (col !== undefined && oldPipeline !== null) {
          for (const [tag, f] of [
            ["mBefore", oldPipeline],
            ["mNow", usagePipeline],
          ] as const) {
            t[tag]!.push(await time(() => col.aggregate(f(s), { allowDiskUse: true, batchSize: 100_000 }).toArray()));
          }
        }
      }
      const ms = (xs: number[]) => (xs.length === 0 ? "-" : `${median(xs).toFixed(0)} ms`);
      console.log(
        `${name}: PostgreSQL before ${ms(t.pgBefore!)}, generated ${ms(t.pgNow!)}; ` +
          `MongoDB before ${ms(t.mBefore!)}, generated ${ms(t.mNow!)}; SQLite before ${ms(t.sBefore!)}, generated ${ms(t.sNow!)}`,
      );
    }
  } finally {
    lite.close();
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await c.end();
    await mc?.db(dbName).dropDatabase();
    await mc?.close();
  }
}

const copies: string[] = [];
try {
  const { usageSql: oldSql } = await before<{ usageSql: SqlFn }>("src/db/postgres/usage.ts", copies);
  const { usagePipeline: oldPipeline } = await before<{ usagePipeline: PipelineFn }>("src/db/mongodb/usage.ts", copies);
  const { usageSqliteSql: oldSqlite } = await before<{ usageSqliteSql: SqliteFn }>("src/db/sqlite/usage.ts", copies);
  await explain(oldSql);
  await timings(oldSql, oldPipeline, oldSqlite);
} finally {
  for (const f of copies) rmSync(f, { force: true });
}
