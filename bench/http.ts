/**
 * HTTP: requests/s of a trivial JSON endpoint with and without metering, in the same run, driven by
 * autocannon over loopback against a server in its own process (`bench/http-server.ts`). Each
 * metered request places a hold of 10 and commits the 3 the handler records (reserve + commit with
 * release of the rest: two units of work, three journal entries). Target: metering costs <= 20%.
 *   tsx bench/http.ts           (also run by `npm run bench`)
 * BENCH_HTTP_SECONDS sets the seconds per measurement (default 3).
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import type { BenchRow } from "./lib.js";

const here = dirname(fileURLToPath(import.meta.url));
const USERS = 100;
const CONNECTIONS = 32;

async function load(url: string, seconds: number): Promise<number> {
  let i = 0;
  const result = await autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    requests: [
      {
        method: "GET",
        setupRequest: (req) => ({ ...req, headers: { ...req.headers, authorization: `Bearer user-${i++ % USERS}` } }),
      },
    ],
  });
  if (result.non2xx > 0 || result.errors > 0) {
    throw new Error(`bench/http: ${result.non2xx} non-2xx responses and ${result.errors} errors at ${url}`);
  }
  return result.requests.average;
}

export async function run(): Promise<BenchRow[]> {
  const seconds = Number(process.env.BENCH_HTTP_SECONDS ?? 3);
  const child = spawn(process.execPath, ["--import", "tsx", join(here, "http-server.ts"), String(USERS)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  try {
    const [line] = (await once(child.stdout, "data")) as [Buffer];
    const { port } = JSON.parse(line.toString().trim().split("\n")[0] as string) as { port: number };
    const base = `http://127.0.0.1:${port}`;
    await load(`${base}/n/api/ping`, 1); // warm-up (JIT, keep-alive sockets)
    await load(`${base}/f/api/ping`, 1);
    const best = { nPlain: 0, nMeter: 0, fPlain: 0, fMeter: 0, uPlain: 0, uMeter: 0 };
    // Interleaved, best of two: the figure least disturbed by the other core's load.
    for (let round = 0; round < 2; round++) {
      best.nPlain = Math.max(best.nPlain, await load(`${base}/n/ping`, seconds));
      best.nMeter = Math.max(best.nMeter, await load(`${base}/n/api/ping`, seconds));
      best.fPlain = Math.max(best.fPlain, await load(`${base}/f/ping`, seconds));
      best.fMeter = Math.max(best.fMeter, await load(`${base}/f/api/ping`, seconds));
      best.uPlain = Math.max(best.uPlain, await load(`${base}/n/upstream`, seconds));
      best.uMeter = Math.max(best.uMeter, await load(`${base}/n/api/upstream`, seconds));
    }
    const row = (scenario: string, opsPerSec: number, baseline?: { name: string; ops: number }, target = true): BenchRow => {
      if (!baseline) return { backend: "memory", scenario, opsPerSec };
      const ratio = opsPerSec / baseline.ops;
      return target
        ? { backend: "memory", scenario, opsPerSec, baseline: baseline.name, ratio, target: ">= 0.80 of unmetered", met: ratio >= 0.8 }
        : { backend: "memory", scenario, opsPerSec, baseline: baseline.name, ratio };
    };
    return [
      row("HTTP node:http, unmetered (req/s)", best.nPlain),
      row("HTTP node:http + creditMeteringMiddleware", best.nMeter, { name: "unmetered", ops: best.nPlain }),
      row("HTTP toNodeHandler(fetch), unmetered", best.fPlain),
      row("HTTP toNodeHandler(creditMetering(fetch))", best.fMeter, { name: "unmetered", ops: best.fPlain }),
      row("HTTP node:http, handler awaits 2 ms upstream, unmetered", best.uPlain),
      row("HTTP node:http, 2 ms upstream + creditMeteringMiddleware", best.uMeter, { name: "unmetered", ops: best.uPlain }, false),
    ];
  } finally {
    child.stdin.end();
    await once(child, "exit").catch(() => undefined);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { printTable } = await import("./lib.js");
  printTable(await run());
}
