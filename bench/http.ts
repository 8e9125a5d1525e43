/**
 * HTTP: requests/s and server CPU per request of a trivial JSON endpoint with and without
 * metering, in the same run, over loopback against a server in its own process
 * (`bench/http-server.ts`). Each metered request places a hold of 10 and commits the 3 the handler
 * records (reserve + commit with the rest returned in the same entry). Targets:
 * - fixed-price metering (`price`, one deduction per request, no hold) on node:http: >= 0.80× req/s;
 * - the HTTP glue (metered − unmetered server CPU per request − `meter()`'s): <= half of `meter()`
 *   on node:http and Fetch; Express <= 1.5× node's;
 * - a handler awaiting a 2 ms upstream, estimate → actual metering: >= 0.97× req/s.
 * Hosts: bare node:http with creditMeteringMiddleware, toNodeHandler over creditMetering(fetch), an
 * Express 5 route with the middleware mounted by app.use, and a node:http handler awaiting 2 ms;
 * and the credit API itself (createCreditHandler through toNodeHandler, GET /credits/balance).
 *   tsx bench/http.ts           (also run by `npm run bench`)
 * BENCH_HTTP_SECONDS sets the seconds per measurement (default 3), BENCH_HTTP_CONNECTIONS the
 * connections (default 32), BENCH_HTTP_ROUNDS the interleaved rounds (default 4, every other one
 * in reverse order; more on a noisy machine): req/s is the best round, a ratio the median of each
 * round's ratio to its baseline measured beside it. BENCH_HTTP_LOADGEN=autocannon uses autocannon
 * even where wrk is installed.
 *
 * Load generator: `wrk` (C, one thread) when it is on the PATH, else autocannon (in this Node
 * process); the output says which. On Linux with `taskset` and 2+ CPUs the server is pinned to CPU
 * 0 and the load generator to CPU 1 (wrk by `taskset`, this process with autocannon by `taskset
 * -p`), so they do not take turns on one core; other processes on the machine still share both,
 * and the output says so. Without pinning the generator shares the server's cores, and req/s also
 * measures how much CPU it leaves over.
 *
 * Server CPU per request: `process.cpuUsage()` in the server (all its threads: the ledger's writer
 * thread and the collector's helpers too) over each round, divided by the requests answered — the
 * figure other load on the machine hardly moves, and the one the glue is defined on.
 * `meter()`'s cost is measured twice: in the server under the same load (`/k/ping`: an unmetered
 * handler that calls `credits.meter()` itself, less the unmetered endpoint), and in a loop of
 * sequential calls in the server after the load (hot caches: a lower bound). The glue rows
 * subtract the first; their note gives both.
 *
 * Calibration row: the unmetered endpoint whose handler first spins 10 µs of CPU.
 */
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import type { BenchRow } from "./lib.js";

const here = dirname(fileURLToPath(import.meta.url));
const USERS = 100;
/**
 * Keep-alive connections of the load generator (BENCH_HTTP_CONNECTIONS, default 32). At 32 the
 * 2 ms upstream rows are bound by the server's CPU on a slow host (32 requests every ~2 ms is more
 * than one core serves metered); at 4 they measure the latency metering adds to each request.
 */
const CONNECTIONS = Number(process.env.BENCH_HTTP_CONNECTIONS ?? 32);

interface Measured {
  reqPerSec: number;
  /** Server CPU per request in µs (all threads, `process.cpuUsage()`). */
  cpuPerRequest: number;
}

/** Whether `cmd args` runs (exit 0 or 1: wrk prints its usage with 1). */
const runs = (cmd: string, args: string[]) => {
  const r = spawnSync(cmd, args, { stdio: "ignore" });
  return r.error === undefined && (r.status === 0 || r.status === 1);
};

/** The load generator: wrk when installed (and not overridden), else autocannon. */
const WRK = process.env.BENCH_HTTP_LOADGEN !== "autocannon" && runs("wrk", ["--version"]);
/** Pin server and load generator to CPUs 0 and 1 (Linux, taskset, 2+ CPUs). */
const PIN = process.platform === "linux" && availableParallelism() >= 2 && runs("taskset", ["-c", "0", "true"]);

/** wrk's Lua script: each request authenticates as one of USERS users, in turn. */
const WRK_SCRIPT = `local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer user-" .. (i % ${USERS}) })
end
`;

async function wrk(url: string, seconds: number, script: string): Promise<{ requests: number; bad: string | null }> {
  const args = ["-t1", `-c${CONNECTIONS}`, `-d${seconds}s`, "--timeout", "10s", "-s", script, url]; // 10 s: as autocannon
  const child = PIN ? spawn("taskset", ["-c", "1", "wrk", ...args]) : spawn("wrk", args);
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const [code] = (await once(child, "exit")) as [number | null];
  const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? NaN);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1];
  const errors = /Socket errors: (.*)/.exec(out)?.[1];
  const bad =
    code !== 0 || !Number.isFinite(requests)
      ? `wrk exited with ${code}: ${out.trim()}`
      : non2xx !== undefined || errors !== undefined
        ? `${non2xx ?? 0} non-2xx responses; socket errors: ${errors ?? "none"}`
        : null;
  return { requests, bad };
}

async function autocannonLoad(url: string, seconds: number): Promise<{ requests: number; bad: string | null }> {
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
  const bad =
    result.non2xx > 0 || result.errors > 0 ? `${result.non2xx} non-2xx responses and ${result.errors} errors` : null;
  return { requests: result.requests.total, bad };
}

/** The server's CPU so far (µs, all threads). */
async function serverCpu(base: string): Promise<number> {
  return ((await (await fetch(`${base}/cpu`)).json()) as { cpu: number }).cpu;
}

async function load(base: string, path: string, seconds: number, script: string): Promise<Measured> {
  const before = await serverCpu(base);
  const started = performance.now();
  const { requests, bad } = WRK
    ? await wrk(`${base}${path}`, seconds, script)
    : await autocannonLoad(`${base}${path}`, seconds);
  const elapsed = (performance.now() - started) / 1000;
  const after = await serverCpu(base);
  if (bad !== null) throw new Error(`bench/http: ${path}: ${bad}`);
  return { reqPerSec: requests / elapsed, cpuPerRequest: (after - before) / requests };
}

/** What the load generator is and where it runs: printed with the table. */
export function loadGeneratorNote(): string {
  const gen = WRK
    ? `wrk (1 thread, ${CONNECTIONS} connections)`
    : `autocannon in the bench's Node process (${CONNECTIONS} connections)`;
  return PIN
    ? `${gen} pinned to CPU 1, the server to CPU 0 (taskset); other processes on the machine still share both CPUs`
    : `${gen} SHARES the server's ${availableParallelism()} CPU(s) (no taskset pinning here): req/s also measures what it leaves over`;
}

/** Pins this process (all its threads) to `cpus`; returns the affinity it had (Linux, taskset), or null. */
function pinSelf(cpus: string): string | null {
  const was = /: *([\d,-]+)\s*$/.exec(spawnSync("taskset", ["-cp", String(process.pid)]).stdout?.toString() ?? "")?.[1];
  if (was === undefined) return null;
  spawnSync("taskset", ["-a", "-cp", cpus, String(process.pid)], { stdio: "ignore" });
  return was;
}

/** The median of `xs` (the mean of the middle two for an even count). */
function median(xs: readonly number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

export async function run(): Promise<BenchRow[]> {
  const seconds = Number(process.env.BENCH_HTTP_SECONDS ?? 3);
  const server = [process.execPath, "--import", "tsx", join(here, "http-server.ts"), String(USERS)];
  const child = PIN
    ? spawn("taskset", ["-c", "0", ...server], { stdio: ["pipe", "pipe", "inherit"] })
    : spawn(server[0] as string, server.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
  const dir = mkdtempSync(join(tmpdir(), "bench-http-"));
  const script = join(dir, "users.lua");
  writeFileSync(script, WRK_SCRIPT);
  // autocannon runs in this process: pin it to the other CPU for the HTTP rows, then put it back.
  const affinity = PIN && !WRK ? pinSelf("1") : null;
  try {
    const [line] = (await once(child.stdout, "data")) as [Buffer];
    const { port } = JSON.parse(line.toString().trim().split("\n")[0] as string) as { port: number };
    const base = `http://127.0.0.1:${port}`;
    // Each row with a target comes right after its baseline (and before it in the reversed rounds), so its
    // ratio pairs two measurements taken seconds apart.
    const paths = {
      nPlain: "/n/ping",
      lMeter: "/l/api/ping",
      pMeter: "/p/api/ping",
      nMeter: "/n/api/ping",
      nBusy: "/n/busy",
      nByHand: "/k/ping",
      pByHand: "/kp/ping",
      fPlain: "/f/ping",
      fMeter: "/f/api/ping",
      cApi: "/c/credits/balance",
      ePlain: "/e/ping",
      eMeter: "/e/api/ping",
      uPlain: "/n/upstream",
      luMeter: "/l/api/upstream",
      uMeter: "/n/api/upstream",
    };
    type Key = keyof typeof paths;
    for (const key of Object.keys(paths) as Key[]) await load(base, paths[key], 1, script); // warm-up (JIT, sockets)
    const best = {} as Record<Key, number>;
    const cpu = {} as Record<Key, number>;
    /** Each round's req/s, by path. */
    const perRound = {} as Record<Key, number[]>;
    // Interleaved rounds, every other one in reverse order (ABBA), so no row always runs first. The
    // table's req/s is the best round (CPU: the lower), the figure least disturbed by the machine's
    // other load; a ratio is the median of each round's ratio to its baseline in the same round.
    const rounds = Number(process.env.BENCH_HTTP_ROUNDS ?? 4);
    for (let round = 0; round < rounds; round++) {
      const keys = Object.keys(paths) as Key[];
      for (const key of round % 2 === 0 ? keys : keys.reverse()) {
        const m = await load(base, paths[key], seconds, script);
        best[key] = Math.max(best[key] ?? 0, m.reqPerSec);
        cpu[key] = Math.min(cpu[key] ?? Infinity, m.cpuPerRequest);
        (perRound[key] ??= []).push(m.reqPerSec);
      }
    }
    const us = (key: Key) => `${cpu[key].toFixed(0)} µs`;
    const row = (scenario: string, key: Key, baselineKey?: Key, target?: number): BenchRow => {
      const opsPerSec = best[key];
      if (!baselineKey) return { backend: "memory", scenario, opsPerSec, note: `server ${us(key)} CPU/request` };
      const ratios = perRound[key].map((r, i) => r / (perRound[baselineKey][i] as number));
      const ratio = median(ratios);
      const note =
        `server ${us(key)} CPU/request (${(cpu[key] / cpu[baselineKey]).toFixed(2)}× the ${us(baselineKey)} of ${paths[baselineKey]}); ` +
        `ratio per round ${ratios.map((r) => r.toFixed(2)).join(", ")}`;
      const out: BenchRow = { backend: "memory", scenario, opsPerSec, baseline: "unmetered", ratio, note };
      if (target !== undefined) {
        out.target = `>= ${target.toFixed(2)} of unmetered`;
        out.met = ratio >= target;
      }
      return out;
    };
    // meter() in the server: under the load (the by-hand endpoint less the unmetered one), and alone in a loop after it.
    const meterLoop = ((await (await fetch(`${base}/meter-cost`)).json()) as { us: number }).us;
    const meterUs = cpu.nByHand - cpu.nPlain;
    const fixedCoreUs = cpu.pByHand - cpu.nPlain;
    /** The HTTP glue of a metered endpoint: its CPU per request − its unmetered twin's − meter()'s (under load). */
    const glue = (metered: Key, plain: Key): number => cpu[metered] - cpu[plain] - meterUs;
    const nGlue = glue("nMeter", "nPlain");
    const fGlue = glue("fMeter", "fPlain");
    const eGlue = glue("eMeter", "ePlain");
    const pGlue = cpu.pMeter - cpu.pByHand;
    const glueRow = (scenario: string, value: number, target?: string, met?: boolean, loop?: number): BenchRow => ({
      backend: "memory",
      scenario,
      // One "operation" is one µs of glue: the table shows the µs (lower is better) as ops/s of 1e6/µs.
      opsPerSec: value <= 0 ? 0 : 1e6 / value,
      ...(target === undefined ? {} : { target, met }),
      note:
        `glue ${value.toFixed(1)} µs CPU/request` +
        (loop === undefined
          ? ""
          : `; meter() ${meterUs.toFixed(1)} µs under the load (${paths.nByHand} − ${paths.nPlain}), ${loop.toFixed(1)} µs alone in a loop` +
            ` (with that one subtracted instead, the glue would read ${(value + meterUs - loop).toFixed(1)} µs)`),
    });
    const upstream = row("HTTP node:http, 2 ms upstream + creditMeteringMiddleware", "uMeter", "uPlain", 0.97);
    return [
      row("HTTP node:http, unmetered (req/s)", "nPlain"),
      row("HTTP node:http + creditMeteringMiddleware", "nMeter", "nPlain"),
      row("HTTP node:http, unmetered, handler spins 10 µs of CPU (calibration)", "nBusy", "nPlain"),
      row("HTTP node:http, unmetered handler calling credits.meter() itself", "nByHand", "nPlain"),
      row("HTTP toNodeHandler(fetch), unmetered", "fPlain"),
      row("HTTP toNodeHandler(creditMetering(fetch))", "fMeter", "fPlain"),
      row("HTTP toNodeHandler(createCreditHandler), GET /credits/balance", "cApi", "nPlain"),
      row("HTTP Express, unmetered", "ePlain"),
      row("HTTP Express + creditMeteringMiddleware", "eMeter", "ePlain"),
      row("HTTP node:http + creditMeteringMiddleware, fixed price (one deduction, no hold)", "pMeter", "nPlain", 0.8),
      row("HTTP node:http, unmetered handler doing the fixed price's check + deduction itself", "pByHand", "nPlain"),
      row("HTTP node:http, handler awaits 2 ms upstream, unmetered", "uPlain"),
      upstream,
      row("HTTP node:http + creditMeteringMiddleware, fixed price through a lease", "lMeter", "nPlain", 0.9),
      row("HTTP node:http, 2 ms upstream + fixed price through a lease", "luMeter", "uPlain", 0.97),
      glueRow(
        "HTTP glue, node:http middleware (ops/s = 1e6 / glue µs)",
        nGlue,
        "<= meter() / 2",
        nGlue <= meterUs / 2,
        meterLoop,
      ),
      glueRow(
        "HTTP glue, toNodeHandler(creditMetering(fetch)) (ops/s = 1e6 / glue µs)",
        fGlue,
        "<= meter() / 2",
        fGlue <= meterUs / 2,
        meterLoop,
      ),
      glueRow(
        "HTTP glue, Express middleware (ops/s = 1e6 / glue µs)",
        eGlue,
        "<= 1.5 × node:http glue",
        eGlue <= 1.5 * Math.max(nGlue, 0),
        meterLoop,
      ),
      {
        ...glueRow("HTTP glue, node:http middleware, fixed price (ops/s = 1e6 / glue µs)", pGlue),
        note: `glue ${pGlue.toFixed(1)} µs CPU/request (${paths.pMeter} − ${paths.pByHand}); the check + deduction by hand ${fixedCoreUs.toFixed(1)} µs under the load`,
      },
    ];
  } finally {
    if (affinity !== null) pinSelf(affinity);
    rmSync(dir, { recursive: true, force: true });
    child.stdin.end();
    await once(child, "exit").catch(() => undefined);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { printTable } = await import("./lib.js");
  const rows = await run();
  console.log(`Load generator: ${loadGeneratorNote()}.`);
  printTable(rows);
}
