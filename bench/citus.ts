/**
 * Deductions per second on a Citus cluster, against what Citus itself does and against a single
 * PostgreSQL server, in one run, alternated (docs/benchmarks.md, "Citus"):
 *
 * - the store's `deductCredits` on Citus at 1 and 16 callers, through the coordinator, and at 16
 *   callers through the workers (one manager per worker, the callers split between them: Citus
 *   routes from any node whose metadata is synced); each unit of work is one call Citus delegates
 *   to the account's worker (docs/scaling-out.md, "A unit of work in one call");
 * - the same store as a role that does not own its tables, whose calls write through the
 *   distributed tables (the store of schema versions 20 to 22), 16 callers;
 * - the same store with every unit of work as a transaction of its own (BEGIN, lock and read,
 *   save, COMMIT: the store before the delegated calls), 16 callers;
 * - the raw single-shard conditional `UPDATE … SET balance = balance - $1 WHERE user_id = $2 AND
 *   balance >= $1` through the coordinator, 16 callers (the ceiling of one statement per unit);
 * - the same UPDATE and an INSERT of a journal row as `BEGIN; UPDATE; INSERT; COMMIT` (4 round
 *   trips), and as one call of a plpgsql function Citus delegates to the account's worker
 *   (`create_distributed_function(…, distribution_arg_name, colocate_with)`), 16 callers;
 * - the store's `deductCredits` on the single server at 1 and 16 callers.
 *
 * 1,000 accounts; each round measures every variant, the order reversed every other round; prints
 * each figure, the median per variant and the ratios of the medians to the raw UPDATE.
 *
 *   CREDIT_PG_URL=… CREDIT_CITUS_URL=$(bash ../shared/citus/up.sh | tail -n 1) tsx bench/citus.ts
 *
 * Where the cluster's data directories are readable (`CITUS_HOME`, ../shared/citus/up.sh's), it
 * also prints the CPU time each node's server processes spent per operation of each variant.
 *
 * Before the rounds, every variant runs once untimed for `BENCH_WARMUP_SECONDS` (default 3).
 * `BENCH_ROUNDS` (default 3), `BENCH_SECONDS` per measurement (default 4), `BENCH_FILTER` (a regular
 * expression: only the variants whose name it matches). `CITUS_WORKER_URLS` (comma-separated):
 * the workers' URLs (default: the coordinator's with its port + 1 and + 2).
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { loadavg } from "node:os";
import pg from "pg";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { CreditService } from "../src/credit-service.js";

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const WARMUP = Number(process.env.BENCH_WARMUP_SECONDS ?? 3);
/** Whether `rate` runs the untimed warm-up pass. */
let warming = false;
async function warm(run: () => Promise<number>): Promise<void> {
  warming = true;
  try {
    await run();
  } finally {
    warming = false;
  }
}
const USERS = 1000;
const pgUrl = process.env.CREDIT_PG_URL;
const citusUrl = process.env.CREDIT_CITUS_URL;
if (!pgUrl || !citusUrl) {
  console.log("CREDIT_PG_URL and CREDIT_CITUS_URL must both be set: nothing to measure.");
  process.exit(0);
}
const workerUrls =
  process.env.CITUS_WORKER_URLS?.split(",") ??
  [1, 2].map((d) => {
    const u = new URL(citusUrl);
    u.port = String(Number(u.port) + d);
    return u.toString();
  });

interface Store {
  url: string;
  schema: string;
  db: PostgresDbManager;
  credits: CreditService;
}

/** The schemas and roles this run made, dropped at its end whatever happens (`finally` below). */
const made: Array<{ url: string; schema: string }> = [];
const roles: string[] = [];

/** Funds the accounts `<prefix>0` … `<prefix>999`. */
async function fund(credits: CreditService, prefix: string): Promise<void> {
  for (let i = 0; i < USERS; i += 50)
    await Promise.all(Array.from({ length: 50 }, (_, j) => credits.addCredits(`${prefix}${i + j}`, 1_000_000_000)));
}

async function store(url: string): Promise<Store> {
  const schema = `bench_citus_${randomUUID().replace(/-/g, "").slice(0, 8)}`;
  made.push({ url, schema });
  const db = new PostgresDbManager({ connectionString: url, schema, poolConfig: { max: 24 } });
  await db.init();
  const credits = new CreditService({ db });
  await fund(credits, "u");
  return { url, schema, db, credits };
}

/** Operations per second of `op` with `callers` at once for SECONDS (WARMUP while warming). */
async function rate(callers: number, op: (i: number, caller: number) => Promise<unknown>): Promise<number> {
  const end = Date.now() + (warming ? WARMUP : SECONDS) * 1000;
  let n = 0;
  let next = Math.floor(Math.random() * USERS);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: callers }, async (_, caller) => {
      while (Date.now() < end) {
        await op(next++, caller);
        n++;
      }
    }),
  );
  return n / ((performance.now() - t0) / 1000);
}

/**
 * The i-th account a variant spends from. The store's variants on Citus each have accounts of
 * their own (`prefix`), as processes that each serve their own users: a manager's state of an
 * account another manager keeps writing is always stale (docs/scaling-out.md).
 */
const user = (i: number, prefix = "u") => `${prefix}${(i * 7919) % USERS}`;
const closing: Array<{ close(): Promise<unknown> } | { end(): Promise<unknown> }> = [];
try {
  const single = await store(pgUrl);
  closing.push(single.db);
  const citus = await store(citusUrl);
  closing.push(citus.db);
  console.log(`citus store distributed: ${citus.db.sql.distributed}; single: ${single.db.sql.distributed}`);

  // The same store through each worker: one manager (and pool) per worker.
  const viaWorkers = workerUrls.map((url) => {
    // `migrate: false`: a worker runs no DDL (the coordinator made the store); init() only checks it.
    const db = new PostgresDbManager({
      connectionString: url,
      schema: citus.schema,
      migrate: false,
      poolConfig: { max: 12 },
    });
    return { db, credits: new CreditService({ db }) };
  });
  for (const w of viaWorkers) {
    closing.push(w.db);
    await w.db.init();
  }

  // What Citus itself does: a distributed table of balances and one of journal rows, colocated.
  const raw = new pg.Pool({ connectionString: citusUrl, max: 24 });
  closing.push(raw);
  const rs = `"${citus.schema}"`;
  await raw.query(`CREATE TABLE ${rs}.raw_balances (user_id text PRIMARY KEY, balance bigint NOT NULL)`);
  await raw.query(
    `CREATE TABLE ${rs}.raw_entries (user_id text NOT NULL, id text NOT NULL, amount bigint NOT NULL, balance_after bigint NOT NULL, PRIMARY KEY (user_id, id))`,
  );
  await raw.query(`SELECT create_distributed_table('${rs}.raw_balances', 'user_id', colocate_with => 'none')`);
  await raw.query(
    `SELECT create_distributed_table('${rs}.raw_entries', 'user_id', colocate_with => '${rs}.raw_balances')`,
  );
  await raw.query(`INSERT INTO ${rs}.raw_balances SELECT 'u' || i, 1000000000 FROM generate_series(0, ${USERS - 1}) i`);
  await raw.query(
    `CREATE FUNCTION ${rs}.raw_deduct(p_user text, p_amount bigint, p_id text) RETURNS bigint LANGUAGE plpgsql AS $$
   DECLARE b bigint;
   BEGIN
     UPDATE ${rs}.raw_balances SET balance = balance - p_amount WHERE user_id = p_user AND balance >= p_amount RETURNING balance INTO b;
     IF b IS NULL THEN RETURN NULL; END IF;
     INSERT INTO ${rs}.raw_entries VALUES (p_user, p_id, p_amount, b);
     RETURN b;
   END $$`,
  );
  await raw.query(
    `SELECT create_distributed_function('${rs}.raw_deduct(text, bigint, text)', 'p_user', colocate_with => '${rs}.raw_balances')`,
  );
  const update = `UPDATE ${rs}.raw_balances SET balance = balance - $1 WHERE user_id = $2 AND balance >= $1`;

  /** CPU seconds the server processes of the node on `port` have used (live backends and exited ones). */
  const CITUS_HOME = process.env.CITUS_HOME ?? "/opt/citus-cluster";
  const ports = [citusUrl, ...workerUrls].map((u) => Number(new URL(u).port));
  function nodeCpu(port: number): number | null {
    const pidFile = `${CITUS_HOME}/n${port}/postmaster.pid`;
    if (!existsSync(pidFile)) return null;
    try {
      const pid = (readFileSync(pidFile, "utf8").split("\n")[0] ?? "").trim();
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
      // utime, stime, cutime, cstime (fields 14–17, here from the state field on), in clock ticks.
      let ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0);
      const children = execFileSync("ps", ["--ppid", pid, "-o", "pid="], { encoding: "utf8" }).split("\n");
      for (const child of children.map((c) => c.trim()).filter(Boolean)) {
        try {
          const f = readFileSync(`/proc/${child}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
          ticks += Number(f[11] ?? 0) + Number(f[12] ?? 0);
        } catch {
          // ended meanwhile: its time is in the parent's cutime
        }
      }
      return ticks / 100;
    } catch {
      return null;
    }
  }

  type Variant = { name: string; run: () => Promise<number>; figures: number[]; cpu?: number[][] };
  const variants: Variant[] = [];
  const add = (name: string, run: () => Promise<number>) => variants.push({ name, run, figures: [] });
  for (const callers of [1, 16])
    add(`citus store, deductCredits, ${callers} caller${callers > 1 ? "s" : ""}`, () =>
      rate(callers, (i) => citus.credits.deductCredits(user(i), 1)),
    );
  // The same store, each unit of work a transaction of its own (the store before the delegated calls).
  const asTransactions = new PostgresDbManager({
    connectionString: citusUrl,
    schema: citus.schema,
    poolConfig: { max: 24 },
  });
  closing.push(asTransactions);
  await asTransactions.init();
  asTransactions.units.calls = false;
  const transactions = new CreditService({ db: asTransactions });
  await fund(transactions, "t");
  for (let i = 0; i < USERS; i++)
    await (viaWorkers[i % viaWorkers.length] as (typeof viaWorkers)[0]).credits.addCredits(`w${i}`, 1_000_000_000);
  add("citus store, a transaction per unit of work, 16 callers", () =>
    rate(16, (i) => transactions.deductCredits(user(i, "t"), 1)),
  );
  // The same store as a role that does not own its tables: each call writes through the distributed
  // tables, which Citus plans again at every call (the store of schema versions 20 to 22).
  const role = `${citus.schema}_app`;
  const admin = new pg.Client({ connectionString: citusUrl });
  await admin.connect();
  await admin.query(`CREATE ROLE ${role} LOGIN`);
  roles.push(role);
  await admin.query(`GRANT USAGE ON SCHEMA "${citus.schema}" TO ${role}`);
  await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "${citus.schema}" TO ${role}`);
  await admin.end();
  const asAppUrl = new URL(citusUrl);
  asAppUrl.username = role;
  const notOwner = new PostgresDbManager({
    connectionString: asAppUrl.toString(),
    schema: citus.schema,
    migrate: false,
    poolConfig: { max: 24 },
  });
  closing.push(notOwner);
  await notOwner.init();
  const notOwnerCredits = new CreditService({ db: notOwner });
  await fund(notOwnerCredits, "n");
  add("citus store, not the tables' owner (through the distributed tables), 16 callers", () =>
    rate(16, (i) => notOwnerCredits.deductCredits(user(i, "n"), 1)),
  );
  // Each account through one worker's manager (the even ones through the first).
  add("citus store via the workers, deductCredits, 16 callers", () =>
    rate(16, (i) =>
      (viaWorkers[((i * 7919) % USERS) % viaWorkers.length] as (typeof viaWorkers)[0]).credits.deductCredits(
        user(i, "w"),
        1,
      ),
    ),
  );
  add("citus raw UPDATE, 16 callers", () => rate(16, (i) => raw.query(update, [1, user(i)])));
  add("citus raw BEGIN; UPDATE; INSERT; COMMIT, 16 callers", () =>
    rate(16, async (i) => {
      const c = await raw.connect();
      try {
        await c.query("BEGIN");
        const u = user(i);
        const r = await c.query(`${update} RETURNING balance`, [1, u]);
        await c.query(`INSERT INTO ${rs}.raw_entries VALUES ($1, $2, 1, $3)`, [u, randomUUID(), r.rows[0]?.balance]);
        await c.query("COMMIT");
      } finally {
        c.release();
      }
    }),
  );
  add("citus raw delegated function (UPDATE + INSERT), 16 callers", () =>
    rate(16, (i) => raw.query(`SELECT ${rs}.raw_deduct($1, 1, $2)`, [user(i), randomUUID()])),
  );
  for (const callers of [1, 16])
    add(`single PostgreSQL store, deductCredits, ${callers} caller${callers > 1 ? "s" : ""}`, () =>
      rate(callers, (i) => single.credits.deductCredits(user(i), 1)),
    );

  const only = process.env.BENCH_FILTER === undefined ? null : new RegExp(process.env.BENCH_FILTER);
  const chosen = variants.filter((v) => only === null || only.test(v.name));
  // Untimed, once: each variant's connections warm (on Citus, the statements a worker's session
  // prepares once per shard: docs/scaling-out.md), so that the rounds measure the steady state.
  for (const v of chosen) await warm(v.run);
  const load: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? chosen : [...chosen].reverse();
    for (const v of order) {
      const before = ports.map(nodeCpu);
      const t0 = performance.now();
      const x = await v.run();
      const ops = (x * (performance.now() - t0)) / 1000;
      const after = ports.map(nodeCpu);
      // CPU ms per operation on each node (coordinator first).
      if (before.every((c) => c !== null) && after.every((c) => c !== null))
        (v.cpu ??= []).push(ports.map((_, k) => (((after[k] as number) - (before[k] as number)) * 1000) / ops));
      v.figures.push(x);
      load.push(loadavg()[0] as number);
      console.log(`round ${r + 1}: ${v.name}: ${Math.round(x)}/s`);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const base = variants.find((v) => v.name === "citus raw UPDATE, 16 callers");
  const baseline = base !== undefined && base.figures.length > 0 ? median(base.figures) : null;
  console.log(
    `\nmedian over rounds (load average over the run: ${Math.min(...load).toFixed(1)}–${Math.max(...load).toFixed(1)}):`,
  );
  for (const v of chosen) {
    const m = median(v.figures);
    const ratio = baseline === null ? "" : `  ${(m / baseline).toFixed(2)}× the raw UPDATE`;
    const cpu =
      v.cpu === undefined
        ? ""
        : `; CPU ms per op, coordinator / workers: ${ports.map((_, k) => median(v.cpu?.map((c) => c[k] as number) ?? []).toFixed(2)).join(" / ")}`;
    console.log(`${v.name}: ${Math.round(m)}/s${ratio}  (${v.figures.map(Math.round).join(", ")})${cpu}`);
  }
} finally {
  for (const c of closing) await ("close" in c ? c.close() : c.end()).catch(() => undefined);
  for (const { url, schema } of made) {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    if (url === citusUrl) for (const role of roles) await c.query(`DROP ROLE IF EXISTS ${role}`);
    await c.end();
  }
}
