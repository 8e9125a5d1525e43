/**
 * PostgreSQL `deductCredits` of one or more built checkouts beside a raw conditional `UPDATE`, in
 * one run, alternated (docs/benchmarks.md, "PostgreSQL"). 16 callers (`BENCH_CALLERS`) over 1,000 accounts, each variant on its own pool of that
 * many connections and its own schema of the same server; every round measures the raw
 * `UPDATE balances SET balance = balance - 1 WHERE user_id = $1 AND balance >= 1` and each variant,
 * the order reversed every other round, and a variant's ratio in a round is to the mean of the raw
 * figures measured just before and after it. Prints each round's ratios and their range, each
 * variant's ratio to the first one named (its ratio to the raw `UPDATE` over the first's, round by
 * round: both against the same statement measured beside them), and the server's CPU per operation
 * (from /proc: the server must run on this host for that column).
 *
 *   tsx bench/postgres-compare.ts [root[#options] ...]   (default: this checkout; each root built: dist/)
 *
 * `#options`: the `PostgresDbManager` options of that variant as JSON, e.g.
 * `'.#{"batch":{"maxUnits":8}}'` (a root may be named several times with different options).
 *
 * `raw+journal` in place of a root: what a careful hand-rolled ledger does per deduction, as a
 * variant measured like the others: one statement that takes the balance down only where it
 * covers the amount and writes a journal row of the deduction when it did (a data-modifying `WITH`:
 * one round trip, its own commit). Named first, the ratio-to-the-first column gives each store's
 * figure against it.
 *
 * e.g. the commit before a change in a `git worktree` (node_modules a symlink to this one's), built
 * with `npx tsup --silent`, then `tsx bench/postgres-compare.ts /tmp/old .`. Each root also runs
 * with its usage rollup's trigger disabled when it has one (`BENCH_PG_NO_ROLLUP=1`), to show what
 * the rollup costs. `BENCH_ROUNDS` (default 4), `BENCH_SECONDS` per measurement (default 3).
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";
import type * as Core from "../src/index.js";
import type * as Postgres from "../src/db/postgres/index.js";
import { measure } from "./lib.js";

const CALLERS = Number(process.env.BENCH_CALLERS ?? 16);
const USERS = 1000;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const NO_ROLLUP = process.env.BENCH_PG_NO_ROLLUP === "1";

const url = process.env.CREDIT_PG_URL;
if (!url) {
  console.log("CREDIT_PG_URL is not set: nothing to measure.");
  process.exit(0);
}

interface Variant {
  name: string;
  pool: pg.Pool;
  app: string;
  op: (i: number) => Promise<unknown>;
  ratios: number[];
  /** Per round: `ratios` over the first variant's in the same round. */
  toFirst: number[];
  rates: number[];
  serverUs: number[];
  clientUs: number[];
}

const user = (i: number) => `u${(i * 7919) % USERS}`;
const schemas: string[] = [];
const pools: pg.Pool[] = [];

function newPool(app: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: CALLERS, application_name: app, idleTimeoutMillis: 0 });
  pools.push(pool);
  return pool;
}

/** CPU µs so far of the server backends of `app` (null when /proc cannot tell). */
async function serverCpu(pool: pg.Pool, app: string): Promise<Map<number, number> | null> {
  try {
    const r = await pool.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE application_name = $1", [app]);
    const out = new Map<number, number>();
    for (const { pid } of r.rows) {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.set(pid, (Number(f[11]) + Number(f[12])) * 10_000);
    }
    return out;
  } catch {
    return null;
  }
}

async function timed(
  v: Variant,
  ops: number,
  offset: number,
): Promise<{ rate: number; server: number | null; client: number }> {
  const s0 = await serverCpu(v.pool, v.app);
  const c0 = process.cpuUsage();
  const rate = await measure(ops, CALLERS, (i) => v.op(i + offset));
  const c1 = process.cpuUsage(c0);
  const s1 = await serverCpu(v.pool, v.app);
  let server: number | null = null;
  if (s0 && s1) {
    server = 0;
    for (const [pid, t] of s1) server += t - (s0.get(pid) ?? 0);
    server /= ops;
  }
  return { rate, server, client: (c1.user + c1.system) / ops };
}

function variant(name: string, app: string, pool: pg.Pool, op: (i: number) => Promise<unknown>): Variant {
  return { name, pool, app, op, ratios: [], toFirst: [], rates: [], serverUs: [], clientUs: [] };
}

async function build(spec: string, label: string, noRollup: boolean): Promise<Variant> {
  // `root#{"batch":{"spread":1}}`: the manager's options after the `#`, as JSON.
  const at = spec.indexOf("#");
  const root = at < 0 ? spec : spec.slice(0, at);
  const extra = at < 0 ? {} : (JSON.parse(spec.slice(at + 1)) as Record<string, unknown>);
  const core = (await import(pathToFileURL(resolve(root, "dist/index.js")).href)) as typeof Core;
  const { PostgresDbManager } = (await import(
    pathToFileURL(resolve(root, "dist/postgres/index.js")).href
  )) as typeof Postgres;
  const schema = `cm_cmp_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  schemas.push(schema);
  const app = `cm-cmp-${schema}`;
  const pool = newPool(app);
  const db = new PostgresDbManager({ ...extra, pool, schema });
  await db.init();
  if (noRollup) {
    const t = await pool.query<{ tgname: string }>(
      `SELECT tgname FROM pg_trigger WHERE tgrelid = '${schema}.journal_entries'::regclass AND NOT tgisinternal`,
    );
    if (t.rows.length === 0) return variant("", app, pool, async () => {});
    await pool.query(`ALTER TABLE ${schema}.journal_entries DISABLE TRIGGER USER`);
  }
  const credits = new core.CreditService({ db });
  for (let i = 0; i < USERS; i += 50)
    await Promise.all(Array.from({ length: 50 }, (_, j) => credits.addCredits(`u${i + j}`, 1_000_000_000)));
  return variant(`${label}${noRollup ? ", rollup trigger off" : ""}`, app, pool, (i) =>
    credits.deductCredits(user(i), 1),
  );
}

/** The `raw+journal` variant: a conditional `UPDATE` and a journal `INSERT` in one statement. */
async function rawJournal(admin: pg.Pool): Promise<Variant> {
  const schema = `cm_cmp_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  schemas.push(schema);
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.query(`CREATE TABLE ${schema}.balances (user_id TEXT PRIMARY KEY, balance BIGINT NOT NULL)`);
  await admin.query(
    `CREATE TABLE ${schema}.journal (id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL, amount BIGINT NOT NULL,
       balance_after BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), description TEXT)`,
  );
  await admin.query(`CREATE INDEX ON ${schema}.journal (user_id, id)`);
  await admin.query(
    `INSERT INTO ${schema}.balances SELECT 'u' || i, 1000000000 FROM generate_series(0, ${USERS - 1}) i`,
  );
  const app = `cm-cmp-rawj-${schema}`;
  const pool = newPool(app);
  const text =
    `WITH d AS (UPDATE ${schema}.balances SET balance = balance - 1 WHERE user_id = $1 AND balance >= 1 ` +
    `RETURNING user_id, balance) INSERT INTO ${schema}.journal (user_id, amount, balance_after, description) ` +
    `SELECT user_id, -1, balance, 'deduction' FROM d`;
  return variant("raw UPDATE + journal INSERT (one statement)", app, pool, (i) =>
    pool.query({ name: "rawj", text, values: [user(i)] }),
  );
}

const roots = process.argv.slice(2);
if (roots.length === 0) roots.push(".");
try {
  const admin = newPool("cm-cmp-admin");
  const rawSchema = `cm_cmp_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  schemas.push(rawSchema);
  await admin.query(`CREATE SCHEMA ${rawSchema}`);
  await admin.query(`CREATE TABLE ${rawSchema}.balances (user_id TEXT PRIMARY KEY, balance BIGINT NOT NULL)`);
  await admin.query(
    `INSERT INTO ${rawSchema}.balances SELECT 'u' || i, 1000000000 FROM generate_series(0, ${USERS - 1}) i`,
  );
  const rawApp = `cm-cmp-raw-${rawSchema}`;
  const rawPool = newPool(rawApp);
  const text = `UPDATE ${rawSchema}.balances SET balance = balance - 1 WHERE user_id = $1 AND balance >= 1`;
  const raw = variant("raw conditional UPDATE", rawApp, rawPool, (i) =>
    rawPool.query({ name: "raw", text, values: [user(i)] }),
  );
  const variants: Variant[] = [];
  for (const root of roots) {
    if (root === "raw+journal") {
      variants.push(await rawJournal(admin));
      continue;
    }
    const label = root;
    variants.push(await build(root, `deductCredits (${label})`, false));
    if (NO_ROLLUP) {
      const v = await build(root, `deductCredits (${label})`, true);
      if (v.name !== "") variants.push(v);
    }
  }
  // Warm every pool and calibrate the number of operations on the raw UPDATE.
  for (const v of [raw, ...variants]) await measure(400, CALLERS, v.op);
  const probe = await measure(2000, CALLERS, raw.op);
  const ops = Math.max(2000, Math.round((probe * SECONDS) / 2));
  let offset = 10_000;
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? variants : [...variants].reverse();
    let before = await timed(raw, ops, (offset += ops));
    raw.rates.push(before.rate);
    for (const v of order) {
      const ours = await timed(v, ops, (offset += ops));
      const after = await timed(raw, ops, (offset += ops));
      raw.rates.push(after.rate);
      if (after.server !== null) raw.serverUs.push(after.server);
      raw.clientUs.push(after.client);
      v.rates.push(ours.rate);
      v.ratios.push(ours.rate / ((before.rate + after.rate) / 2));
      if (ours.server !== null) v.serverUs.push(ours.server);
      v.clientUs.push(ours.client);
      before = after;
    }
    const first = variants[0]!.ratios[round]!;
    for (const v of variants) v.toFirst.push(v.ratios[round]! / first);
    console.error(
      `round ${round + 1}: ` +
        variants.map((v) => `${v.name} ${v.ratios[v.ratios.length - 1]!.toFixed(2)}×`).join(", "),
    );
  }
  const range = (xs: number[], d = 0) =>
    xs.length === 0
      ? "—"
      : `${Math.min(...xs).toLocaleString("en-US", { maximumFractionDigits: d })} – ${Math.max(...xs).toLocaleString("en-US", { maximumFractionDigits: d })}`;
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  console.log(
    `\n${CALLERS} callers, ${USERS.toLocaleString("en-US")} accounts, ${ROUNDS} rounds of ${ops.toLocaleString("en-US")} operations, load average ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}\n`,
  );
  const firstName = variants[0]?.name ?? "";
  console.log(
    `| row | ops/s | ratio to the raw UPDATE (median; range) | ratio to ${firstName} (median; range) | server CPU µs/op | client CPU µs/op |`,
  );
  console.log("| --- | --- | --- | --- | --- | --- |");
  const ratioOf = (xs: number[]) => `${median(xs).toFixed(2)}× (${range(xs, 2)})`;
  for (const v of [raw, ...variants]) {
    const ratio = v === raw ? "1" : ratioOf(v.ratios);
    const toFirst = v === raw ? "—" : v === variants[0] ? "1" : ratioOf(v.toFirst);
    console.log(
      `| ${v.name} | ${range(v.rates)} | ${ratio} | ${toFirst} | ${v.serverUs.length ? median(v.serverUs).toFixed(0) : "—"} | ${median(v.clientUs).toFixed(0)} |`,
    );
  }
} finally {
  const admin = pools[0];
  for (const s of schemas) await admin?.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`).catch(() => {});
  for (const p of pools) await p.end().catch(() => {});
}
