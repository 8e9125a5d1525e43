/**
 * A large revenue report's memory and event-loop stall (docs/revenue.md, "How large a report can
 * be"), on the in-memory store: ACCOUNTS accounts (BENCH_REVENUE_MEMORY_ACCOUNTS, default 500) that
 * paid DAYS days ago and used a little, their report by hour and account (ACCOUNTS × DAYS × 24
 * cells, under the cap of 1,000,000; `limit` 100,000 rows), then its CSV —
 * `mode` `stream`: read from `revenueCsvStream` as the HTTP route sends it, by a sink that takes
 * each chunk on a later turn of the event loop, as a socket does; `string`: built whole
 * by `revenueCsv`, for the comparison. Each mode runs in a process of its own (the peak RSS is the
 * process's): `npx tsx bench/revenue-memory.ts` runs both and prints a table.
 *
 * Measured: the report's and the CSV's time, the longest the event loop was held meanwhile
 * (`monitorEventLoopDelay`, what a health check would have waited), and the process's RSS before
 * the report and its peak.
 */
import { execFileSync } from "node:child_process";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createCreditManager } from "../src/index.js";
import { revenueCsv, revenueCsvStream } from "../src/modules/revenue/csv.js";

const DAY = 86_400_000;
const ACCOUNTS = Number(process.env.BENCH_REVENUE_MEMORY_ACCOUNTS ?? 500);
const DAYS = 80;

interface Result {
  mode: string;
  reportMs: number;
  reportHeldMs: number;
  csvMs: number;
  csvHeldMs: number;
  csvBytes: number;
  /** The process's RSS before the report, and its peak (the book's load included), in MiB. */
  rssBeforeMb: number;
  rssPeakMb: number;
}

async function measure(mode: "stream" | "string"): Promise<Result> {
  const now = Date.now();
  const clock = { t: now - DAYS * DAY };
  const m = await createCreditManager({ clock: () => new Date(clock.t) });
  for (let a = 0; a < ACCOUNTS; a++) {
    clock.t = now - DAYS * DAY + a * 60_000;
    await m.credits.addCredits(`acct-${a}`, 100_000, { costBasis: { perCredit: "1/3", currency: "USD" } });
    await m.credits.deductCredits(`acct-${a}`, 7);
  }
  clock.t = now;
  global.gc?.();
  const rssBefore = process.memoryUsage().rss;
  // The longest the event loop was held while `fn` ran (the monitor notes a stall when its timer
  // runs after it: it runs once before `fn` and once after).
  const held = async <T>(fn: () => Promise<T>): Promise<{ value: T; ms: number; heldMs: number }> => {
    const delay = monitorEventLoopDelay({ resolution: 5 });
    delay.enable();
    // Its timer's first turn: a stall before it would go unnoted.
    await new Promise((resolve) => setTimeout(resolve, 20));
    const t = performance.now();
    const value = await fn();
    const ms = performance.now() - t;
    await new Promise((resolve) => setTimeout(resolve, 20));
    delay.disable();
    return { value, ms, heldMs: delay.max / 1e6 };
  };
  const report = await held(() =>
    m.credits.getRevenue({
      from: new Date(now - DAYS * DAY),
      to: new Date(now),
      interval: "hour",
      groupBy: ["account"],
      limit: 100_000,
    }),
  );
  const csv = await held(async () => {
    if (mode === "string") return Buffer.byteLength(revenueCsv(report.value, ["account"]));
    // Read as a socket reads: each chunk written on a later turn of the event loop.
    let bytes = 0;
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        bytes += chunk.byteLength;
        setImmediate(done);
      },
    });
    await pipeline(Readable.fromWeb(revenueCsvStream(report.value, ["account"]) as never), sink);
    return bytes;
  });
  // maxRSS is in KiB: the process's peak, the book's load before the report included.
  return {
    mode,
    reportMs: report.ms,
    reportHeldMs: report.heldMs,
    csvMs: csv.ms,
    csvHeldMs: csv.heldMs,
    csvBytes: csv.value,
    rssBeforeMb: rssBefore / 2 ** 20,
    rssPeakMb: process.resourceUsage().maxRSS / 1024,
  };
}

const mode = process.argv[2];
if (mode === "stream" || mode === "string") {
  process.stdout.write(JSON.stringify(await measure(mode)));
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const self = fileURLToPath(import.meta.url);
  console.log(`| CSV | report (event loop held) | CSV (held) | CSV size | RSS before the report | peak RSS |`);
  console.log(`| --- | --- | --- | --- | --- | --- |`);
  for (const m of ["string", "stream"] as const) {
    const out = execFileSync(process.execPath, ["--import", "tsx", "--expose-gc", self, m], { encoding: "utf8" });
    const r = JSON.parse(out) as Result;
    console.log(
      `| ${r.mode} | ${r.reportMs.toFixed(0)} ms (${r.reportHeldMs.toFixed(0)} ms) | ${r.csvMs.toFixed(0)} ms (${r.csvHeldMs.toFixed(0)} ms) | ${(r.csvBytes / 2 ** 20).toFixed(1)} MiB | ${r.rssBeforeMb.toFixed(0)} MiB | ${r.rssPeakMb.toFixed(0)} MiB |`,
    );
  }
}
