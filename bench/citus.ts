/**
 * Deductions per second on a Citus cluster against a single PostgreSQL server, in one run,
 * alternated (docs/benchmarks.md, "Citus"): `deductCredits` of 1 and 16 callers over 1,000
 * accounts, each store on its own pool and schema (on Citus: one unit of work per transaction, and
 * group commit by shard, `units.byShard`), and credit leases (`credits.leases()`) on the
 * cluster. Each round measures every variant, the order reversed every other round; prints each
 * figure and the median per variant.
 *
 *   CREDIT_PG_URL=… CREDIT_CITUS_URL=$(bash ../shared/citus/up.sh | tail -n 1) tsx bench/citus.ts
 *
 * `BENCH_ROUNDS` (default 3), `BENCH_SECONDS` per measurement (default 4), `BENCH_FILTER` (a regular
 * expression: only the variants whose name it matches).
 */
import { randomUUID } from "node:crypto";
import pg from "pg";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { CreditService } from "../src/services/credit-service.js";

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const USERS = 1000;
const pgUrl = process.env.CREDIT_PG_URL;
const citusUrl = process.env.CREDIT_CITUS_URL;
if (!pgUrl || !citusUrl) {
  console.log("CREDIT_PG_URL and CREDIT_CITUS_URL must both be set: nothing to measure.");
  process.exit(0);
}

interface Store {
  name: string;
  url: string;
  schema: string;
  db: PostgresDbManager;
  credits: CreditService;
}

async function store(name: string, url: string, byShard = false): Promise<Store> {
  const schema = `bench_citus_${randomUUID().replace(/-/g, "").slice(0, 8)}`;
  // By shard: as many batches at once as the one-unit path has transactions (16 callers).
  const db = new PostgresDbManager({
    connectionString: url,
    schema,
    poolConfig: { max: 24 },
    ...(byShard ? { batch: { concurrency: 16 } } : {}),
  });
  await db.init();
  db.units.byShard = byShard;
  const credits = new CreditService({ db });
  for (let i = 0; i < USERS; i += 50)
    await Promise.all(Array.from({ length: 50 }, (_, j) => credits.addCredits(`u${i + j}`, 1_000_000_000)));
  return { name, url, schema, db, credits };
}

/** Operations per second of `op` with `callers` at once for SECONDS. */
async function rate(callers: number, op: (i: number) => Promise<unknown>): Promise<number> {
  const end = Date.now() + SECONDS * 1000;
  let n = 0;
  let next = Math.floor(Math.random() * USERS);
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: callers }, async () => {
      while (Date.now() < end) {
        await op(next++);
        n++;
      }
    }),
  );
  return n / ((performance.now() - t0) / 1000);
}

const user = (i: number) => `u${(i * 7919) % USERS}`;
const single = await store("single PostgreSQL", pgUrl);
const citus = await store("Citus (coordinator + 2 workers)", citusUrl);
const byShard = await store("Citus, group commit by shard", citusUrl, true);
console.log(`citus store distributed: ${citus.db.sql.distributed}; single: ${single.db.sql.distributed}`);

type Variant = { name: string; run: () => Promise<number>; figures: number[] };
const variants: Variant[] = [];
for (const s of [single, citus, byShard])
  for (const callers of [1, 16])
    variants.push({
      name: `${s.name}, deductCredits, ${callers} caller${callers > 1 ? "s" : ""}`,
      run: () => rate(callers, (i) => s.credits.deductCredits(user(i), 1)),
      figures: [],
    });
for (const callers of [1, 16])
  variants.push({
    name: `${citus.name}, leases.charge, ${callers} caller${callers > 1 ? "s" : ""}`,
    run: async () => {
      const lease = citus.credits.leases({ size: 1_000, settleEveryMs: 1_000 });
      try {
        return await rate(callers, async (i) => lease.charge(user(i), 1));
      } finally {
        await lease.close();
      }
    },
    figures: [],
  });

const only = process.env.BENCH_FILTER === undefined ? null : new RegExp(process.env.BENCH_FILTER);
const chosen = variants.filter((v) => only === null || only.test(v.name));
for (let r = 0; r < ROUNDS; r++) {
  const order = r % 2 === 0 ? chosen : [...chosen].reverse();
  for (const v of order) {
    const x = await v.run();
    v.figures.push(x);
    console.log(`round ${r + 1}: ${v.name}: ${Math.round(x)}/s`);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
console.log("\nmedian over rounds:");
for (const v of chosen)
  console.log(`${v.name}: ${Math.round(median(v.figures))}/s  (${v.figures.map(Math.round).join(", ")})`);

for (const s of [single, citus, byShard]) {
  await s.db.close();
  const c = new pg.Client({ connectionString: s.url });
  await c.connect();
  await c.query(`DROP SCHEMA IF EXISTS "${s.schema}" CASCADE`);
  await c.end();
}
