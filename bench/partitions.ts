/**
 * Deductions (keyed and not) on a PostgreSQL store partitioned by day against the same on an unpartitioned
 * one, in the same run (docs/running-for-years.md, "Partitioning on PostgreSQL"): every keyed
 * unit of work looks its key up in every partition (the key's index cannot be unique across
 * partitions), so the rows compare 3 and BENCH_PARTITIONS_DAYS (default 90) daily partitions, each
 * holding entries, with the plain table. BENCH_PARTITIONS_OPS (default 4,000) deductions over 100
 * users, 16 callers, each layout measured twice in alternation (the better of the two). Alone:
 * `npx tsx bench/partitions.ts` (with CREDIT_PG_URL).
 */
import { randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";
import { core, postgres } from "./pkg.js";
import { type BenchRow, measure, printTable } from "./lib.js";

const USERS = 100;
const CALLERS = 16;
const OPS = Number(process.env.BENCH_PARTITIONS_OPS ?? 4_000);
const DAYS = Number(process.env.BENCH_PARTITIONS_DAYS ?? 90);
const DAY = 86_400_000;

export async function run(): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const pool = new pg.Pool({ connectionString: url, max: CALLERS });
  const schemas: string[] = [];
  try {
    /** A store with `days` days of history (one keyed entry per user and day), and its service. */
    const setup = async (days: number | null) => {
      const schema = `cm_bpart_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
      schemas.push(schema);
      const clock = { now: Date.now() - (days ?? 3) * DAY };
      const db = new PostgresDbManager({
        pool,
        schema,
        ...(days === null ? {} : { partitions: { interval: "day" as const, ahead: 1 } }),
      });
      await db.init();
      const credits = new core.CreditService({ db, clock: () => new Date(clock.now) });
      for (let d = 0; d < (days ?? 3); d++) {
        await db.ensurePartitions(new Date(clock.now));
        await Promise.all(
          Array.from({ length: USERS }, (_, u) =>
            d === 0
              ? credits.addCredits(`u${u}`, 1_000_000)
              : credits.deductCredits(`u${u}`, 1, { idempotencyKey: `day-${d}-${u}` }),
          ),
        );
        clock.now += DAY;
      }
      clock.now = Date.now();
      await pool.query(`VACUUM ANALYZE "${schema}".journal_entries`);
      return { credits, partitions: days === null ? 0 : (await db.listPartitions()).length / 2 };
    };
    const layouts = [
      { name: "unpartitioned", store: await setup(null) },
      { name: "3 daily partitions", store: await setup(3) },
      { name: `${DAYS} daily partitions`, store: await setup(DAYS) },
    ];
    const best = new Map<string, number>();
    const kinds = [
      { kind: "keyed", key: (round: number, i: number) => ({ idempotencyKey: `r${round}-${i}` }) },
      { kind: "unkeyed", key: () => ({}) },
    ];
    for (let round = 0; round < 2; round++) {
      for (const k of kinds)
        for (const l of layouts) {
          const ops = await measure(OPS, CALLERS, (i) =>
            l.store.credits.deductCredits(`u${i % USERS}`, 1, k.key(round, i)),
          );
          const name = `${k.kind} ${l.name}`;
          best.set(name, Math.max(best.get(name) ?? 0, ops));
        }
    }
    return kinds.flatMap((k) => {
      const base = best.get(`${k.kind} unpartitioned`) as number;
      return layouts.map((l) => {
        const ops = best.get(`${k.kind} ${l.name}`) as number;
        return {
          backend: "postgres",
          scenario: `${k.kind} deductCredits, journal ${l.name} (${USERS} users, ${CALLERS} callers)`,
          opsPerSec: ops,
          ...(l.name === "unpartitioned" ? {} : { baseline: `${k.kind} unpartitioned`, ratio: ops / base }),
          note: `${l.store.partitions} partitions per table incl. DEFAULT; better of 2 alternating runs of ${OPS.toLocaleString("en-US")}`,
        };
      });
    });
  } finally {
    for (const s of schemas) await pool.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`).catch(() => undefined);
    await pool.end();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  printTable(await run());
}
