/**
 * A fleet-wide usage report over a closed month (docs/usage.md, "Closed months") on PostgreSQL
 * (CREDIT_PG_URL): BENCH_CLOSE_ACCOUNTS accounts (default 2,000), each with one addition and a
 * deduction a day over the last 8 days, written through the service with a clock moved back; the
 * report is the usage of all accounts by day over those 8 days (no groups), measured
 * before any close, then after a close through the start of yesterday (UTC) with late usage of one
 * account in ten recorded after it. Alone: `npx tsx bench/usage-close.ts` (the built package:
 * `npm run build` first, or BENCH_SOURCE=1). The schema is dropped at the end.
 */
import { randomUUID } from "node:crypto";
import { postgres, core } from "./pkg.js";

const DAY = 86_400_000;
const HOUR = 3_600_000;

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

async function main(): Promise<void> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) throw new Error("bench/usage-close.ts: set CREDIT_PG_URL");
  const accounts = Number(process.env.BENCH_CLOSE_ACCOUNTS ?? 2_000);
  const { PostgresDbManager } = await postgres();
  const { CreditService } = core;
  const schema = `cm_bench_close_${randomUUID().replace(/-/g, "").slice(0, 8)}`;
  const db = new PostgresDbManager({ connectionString: url, schema });
  await db.init();
  const today = Math.floor(Date.now() / DAY) * DAY;
  const clock = { now: today - 8 * DAY + HOUR };
  const credits = new CreditService({ db, clock: () => new Date(clock.now) });
  const ids = Array.from({ length: accounts }, (_, i) => `acct-${String(i).padStart(6, "0")}`);
  /** Runs `fn` for every account, 16 at a time. */
  const each = async (fn: (id: string, i: number) => Promise<unknown>) => {
    for (let i = 0; i < ids.length; i += 16) await Promise.all(ids.slice(i, i + 16).map((id, k) => fn(id, i + k)));
  };
  try {
    const load = Date.now();
    await each((id) => credits.addCredits(id, 10_000));
    for (let d = 0; d < 8; d++) {
      clock.now = today - (8 - d) * DAY + 2 * HOUR;
      await each((id, i) => credits.deductCredits(id, 1 + (i % 20), { feature: "chat" }));
    }
    clock.now = Date.now();
    const loaded = Date.now() - load;
    const report = () =>
      credits.getUsage({
        from: new Date(today - 7 * DAY),
        to: new Date(today + DAY),
        interval: "day",
      });
    const open = await median(7, report);
    const openRows = (await report()).rows.length;
    await credits.closePeriod(new Date(today - DAY));
    await each((id, i) =>
      i % 10 === 0
        ? credits.deductCreditsAfterService(id, 3, { feature: "chat", occurredAt: new Date(today - DAY - HOUR) })
        : Promise.resolve(),
    );
    const closed = await median(7, report);
    const closedRows = (await report()).rows.length;
    console.log(
      `${accounts.toLocaleString("en-US")} accounts (loaded in ${(loaded / 1000).toFixed(1)} s): ` +
        `all accounts by day over 8 days, no close ${open.toFixed(1)} ms (${openRows} rows); ` +
        `close in range ${closed.toFixed(1)} ms (${closedRows} rows)`,
    );
  } finally {
    await db.close();
    const { default: pg } = await import("pg");
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await client.end();
  }
}

await main();
