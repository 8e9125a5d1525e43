/**
 * `credit-management serve`: requests per second of an admin deduction through the whole
 * service (API key check, request id, one pino line per request, the Prometheus metrics) against
 * the same handler mounted by hand in node:http (bench/serve-baseline.ts), both on a SQLite file
 * (the service's default store), each in its own process, measured in turns in the same run. Both
 * run the built package (`node dist/cli/index.js serve`, as `npx credit-management serve` does), or
 * src/ through tsx with BENCH_SOURCE=1 (bench/serve-lib.ts).
 * Target: serve >= 0.9× the hand-mounted handler.
 *   tsx bench/serve.ts       (also run by `npm run bench`)
 * BENCH_SERVE_SECONDS: seconds per turn (default 3); 16 keep-alive connections (autocannon, in this process).
 */
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { printTable, type BenchRow } from "./lib.js";
import { adminKey, baselineArgs, deductions, fund, serveArgs, startServer, storeWithKey } from "./serve-lib.js";

const SECONDS = Number(process.env.BENCH_SERVE_SECONDS ?? 3);
const load = (port: number, token: string, seconds: number) => deductions(port, token, { seconds });

export async function run(): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), "bench-serve-"));
  const children: ChildProcess[] = [];
  try {
    const servePath = join(dir, "serve.sqlite");
    const { key, record } = adminKey();
    await storeWithKey(servePath, record);
    const serve = await startServer(serveArgs(), { CREDIT_SQLITE_PATH: servePath });
    children.push(serve.child);
    const hand = await startServer(baselineArgs(join(dir, "hand.sqlite")), {});
    children.push(hand.child);
    await fund(serve.port, key);
    await fund(hand.port, "any");
    // Warm-up, 3 s each, in six runs on new connections (so the connections' own code is compiled
    // too): with one run of 1 s, each side's first turn still read 5-10% below its others (V8 still
    // compiling, serve's code the more), which the ABBA order does not cancel.
    for (let i = 0; i < 6; i++) {
      await load(serve.port, key, 0.5);
      await load(hand.port, "any", 0.5);
    }
    const a: number[] = [];
    const b: number[] = [];
    // Four turns, the order swapped each turn (ABBA), so neither side always runs first.
    for (let turn = 0; turn < 4; turn++) {
      if (turn % 2 === 0) {
        b.push(await load(hand.port, "any", SECONDS));
        a.push(await load(serve.port, key, SECONDS));
      } else {
        a.push(await load(serve.port, key, SECONDS));
        b.push(await load(hand.port, "any", SECONDS));
      }
    }
    const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
    const ratio = mean(a) / mean(b);
    const { loadavg } = await import("node:os");
    const note = `turns (req/s): hand ${b.map(Math.round).join(", ")}; serve ${a.map(Math.round).join(", ")}; load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`;
    return [
      {
        backend: "sqlite",
        scenario: "HTTP deduction: createCreditHandler in node:http by hand (16 conns)",
        opsPerSec: Math.round(mean(b)),
      },
      {
        backend: "sqlite",
        scenario: "HTTP deduction: credit-management serve (API key, logs, metrics)",
        opsPerSec: Math.round(mean(a)),
        baseline: "HTTP deduction: createCreditHandler in node:http by hand (16 conns)",
        ratio,
        target: ">= 0.90 of baseline",
        met: ratio >= 0.9,
        note,
      },
    ];
  } finally {
    for (const c of children) c.kill("SIGTERM");
    await new Promise((resolve) => setTimeout(resolve, 500));
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) printTable(await run());
