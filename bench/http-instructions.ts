/**
 * The HTTP metering overhead as counts that hold still: machine instructions per HTTP request, counted
 * with valgrind's callgrind in one node:http server process (bench/http-instructions-server.mjs, a
 * checkout's built package), where wall-clock ratios on a loaded 2-core machine are noise-bound
 * (bench/http.ts reads the same rows in req/s, ±15 % a measurement). Two ratios, each of a rate
 * (instructions of the baseline ÷ instructions of the row, so higher is better, as req/s would be):
 * - **metered through a lease ≥ 0.9× hand-mounted**: `creditMeteringMiddleware({ price: 3, lease })`
 *   around a trivial handler (`/l/api/ping`) against the *hand-mounted handler* (`/h/ping`): the same
 *   manager and the same lease call, `await lease.charge(user, 3, { reason })`, written by hand in a
 *   node:http handler as a user would without our middleware (caller from `Authorization`, 402 when
 *   refused, `X-Credits-Deducted` on the answer). What the row pays for over it: the check before
 *   the handler runs (a refused request never runs it), no charge for a failed or aborted request,
 *   the path rules, the payer's id validated, `Idempotency-Key`.
 * - **fixed-price metered endpoint ≥ 0.9× unmetered**: the same `/l/api/ping` against `/n/ping`, the
 *   handler with no metering (the fixed-price endpoint through a lease: without one, each request
 *   is an account read and a deduction in the store, the `/p/api/ping` row, shown for reference).
 * Also shown: estimate, then usage, through the lease (`/u/api/ping`).
 *
 * The server runs under callgrind with counting off; it is warmed up with WARM requests a route
 * (rounds of 500, each on new connections, so V8 compiles the connections' code too), then each
 * route's MEASURED requests are counted (`callgrind_control --zero`, the load, `--dump`),
 * routes in ABBA order over ROUNDS rounds. Node runs with the callgrind driver's flags
 * (bench/callgrind.ts: `--single-threaded`, `--predictable`, fixed seeds: every instruction on the
 * main thread, in an order the program fixes), so GC is counted where it happens; V8's optimizing
 * compilers' instructions are reported apart and left out of the figure. The load: autocannon in
 * this process, 8 keep-alive connections, a request per user in turn (100 users), not counted. The
 * kernel's work (the sockets) is not counted: it is the same on every route, so the ratios of
 * whole requests sit closer to 1 than these. Blocks are open and never settle during the count
 * (a 10-minute window): a settle costs 23–45 µs a user a window (docs/benchmarks.md, "Credit
 * leases"), about 0.07 µs a request at 30,000 requests/s over 100 users.
 *   tsx bench/http-instructions.ts [root ...]       (default: this checkout; build it first)
 * With several roots (e.g. a worktree of the commit before a change, built), each is counted in
 * the same run, rows side by side. Environment: BENCH_HTTP_INSTR_WARM (default 5,000 a route),
 * BENCH_HTTP_INSTR_MEASURED (default 1,500), BENCH_HTTP_INSTR_ROUNDS (default 2),
 * BENCH_HTTP_INSTR_JSON=1 prints BenchRow[] as one JSON line instead of the table,
 * BENCH_HTTP_INSTR_KEEP=1 keeps the callgrind files (`callgrind_annotate <file>.N`: one per
 * counted route and round, in the order printed).
 */
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import { compilingOf, NODE_FLAGS, type Profile, profile, startCounting } from "./callgrind.js";
import type { BenchRow } from "./lib.js";

const here = dirname(fileURLToPath(import.meta.url));
const USERS = 100;
const CONNECTIONS = 8;
const WARM = Number(process.env.BENCH_HTTP_INSTR_WARM ?? 5000);
const MEASURED = Number(process.env.BENCH_HTTP_INSTR_MEASURED ?? 1500);
const ROUNDS = Number(process.env.BENCH_HTTP_INSTR_ROUNDS ?? 2);

export const ROUTES = {
  unmetered: "/n/ping",
  hand: "/h/ping",
  leased: "/l/api/ping",
  exact: "/p/api/ping",
  usage: "/u/api/ping",
} as const;
export type Route = keyof typeof ROUTES;
const describe: Record<Route, string> = {
  unmetered: "unmetered handler",
  hand: "hand-mounted lease.charge()",
  leased: "fixed price through a lease (middleware)",
  exact: "fixed price, exact (no lease)",
  usage: "estimate, then usage, through a lease",
};

/** Instructions a request: all, and of them V8's optimizing compilers'. */
interface Count {
  all: number;
  compiling: number;
}

/** `amount` requests of `path` over new keep-alive connections, a user each in turn. */
async function requests(port: number, path: string, amount: number): Promise<void> {
  const r = await autocannon({
    url: `http://127.0.0.1:${port}`,
    connections: CONNECTIONS,
    amount,
    requests: Array.from({ length: USERS }, (_, i) => ({
      method: "GET" as const,
      path,
      headers: { authorization: `Bearer user-${i}` },
    })),
  });
  if (r.non2xx > 0 || r.errors > 0)
    throw new Error(`bench/http-instructions: ${path}: ${r.non2xx} non-2xx, ${r.errors} errors`);
}

/**
 * Counts `routes` of one checkout's server (also the HTTP cases of bench/instructions.ts): `warm`
 * requests a route first (rounds of 500 over the routes, each on new connections), then `rounds`
 * rounds in ABBA order of each route's 200 requests more and `measured` counted ones. Each counted
 * dump's profile (JIT code named from the server's perf map), per route in round order.
 */
export async function countRoutes(
  dir: string,
  root: string,
  tag: string,
  routes: Route[],
  warm: number,
  measured: number,
  rounds: number,
  /** The routes counted (the others only warmed up): all of them unless named. */
  countOnly: Route[] = routes,
): Promise<Record<Route, Profile[]>> {
  const counting = startCounting(
    join(dir, `${tag}.callgrind`),
    join(here, "http-instructions-server.mjs"),
    [root, String(USERS)],
    dir, // V8's code log (--perf-basic-prof) goes to the cwd: the temporary folder, not the checkout
  );
  const child = counting.child;
  const counted: [Route, string][] = [];
  try {
    const [line] = (await once(createInterface({ input: child.stdout as NodeJS.ReadableStream }), "line")) as [string];
    const { port } = JSON.parse(line) as { port: number };
    for (let done = 0; done < warm; done += 500)
      for (const r of routes) await requests(port, ROUTES[r], Math.min(500, warm - done));
    // Counting is turned on once, then zeroed before each route's counted requests and dumped after them.
    counting.on();
    const counts = routes.filter((r) => countOnly.includes(r));
    for (let round = 0; round < rounds; round++)
      for (const r of round % 2 === 0 ? counts : [...counts].reverse()) {
        await requests(port, ROUTES[r], 200); // this route's code run last before the count
        counting.zero();
        await requests(port, ROUTES[r], measured);
        counted.push([r, counting.dump()]);
      }
  } finally {
    const exited = once(child, "exit");
    child.stdin?.end();
    await exited;
  }
  const result = Object.fromEntries(countOnly.map((r) => [r, [] as Profile[]])) as Record<Route, Profile[]>;
  for (const [i, [route, file]] of counted.entries()) {
    if (!existsSync(file)) throw new Error(`bench/http-instructions: no callgrind dump ${file}`);
    result[route].push(profile(file, child.pid, i < counted.length - 1));
  }
  return result;
}

/** Counts every route of one checkout's server, ROUNDS times in ABBA order. */
async function countRoot(dir: string, root: string, tag: string): Promise<Record<Route, Count[]>> {
  const profiles = await countRoutes(dir, root, tag, Object.keys(ROUTES) as Route[], WARM, MEASURED, ROUNDS);
  const result = {} as Record<Route, Count[]>;
  for (const r of Object.keys(ROUTES) as Route[])
    result[r] = profiles[r].map((p) => ({ all: p.total / MEASURED, compiling: compilingOf(p) / MEASURED }));
  return result;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const k = (n: number) => Math.round(n).toLocaleString("en");

export interface Counted {
  root: string;
  /** Per route: the mean over rounds without the optimizing compilers, each round's, and the mean with them. */
  routes: Record<Route, { perRequest: number; rounds: number[]; all: number }>;
}

/** Counts every checkout in `roots`, one after the other. */
export async function count(roots: string[]): Promise<Counted[]> {
  for (const root of roots)
    if (!existsSync(join(root, "dist/http/index.js")))
      throw new Error(`${root}: no dist/http/index.js (build it first)`);
  const dir = mkdtempSync(join(tmpdir(), "http-instr-"));
  try {
    const out: Counted[] = [];
    for (const [i, root] of roots.entries()) {
      const counts = await countRoot(dir, root, `root${i}`);
      const routes = {} as Counted["routes"];
      for (const r of Object.keys(ROUTES) as Route[]) {
        const steady = counts[r].map((c) => c.all - c.compiling);
        routes[r] = { perRequest: mean(steady), rounds: steady, all: mean(counts[r].map((c) => c.all)) };
      }
      out.push({ root, routes });
    }
    return out;
  } finally {
    if (process.env.BENCH_HTTP_INSTR_KEEP === "1") console.error(`callgrind files kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

export const settings = () =>
  `callgrind, ${WARM} warm-up + ${MEASURED} counted requests a route, ${ROUNDS} rounds ABBA, ${CONNECTIONS} connections, node ${NODE_FLAGS.join(" ")}`;

/** The two targets (and the reference rows) as bench rows: a rate ratio = baseline instructions ÷ the row's. */
export function benchRows(counted: Counted, name = counted.root): BenchRow[] {
  const c = counted.routes;
  const note = (r: Route) =>
    `${k(c[r].perRequest)} instructions/request without V8's optimizing compilers (rounds ${c[r].rounds.map(k).join(", ")}; with them ${k(c[r].all)})`;
  const row = (r: Route, base?: Route, target?: number): BenchRow => {
    const out: BenchRow = {
      backend: "memory",
      scenario: `HTTP instructions/request (callgrind), ${describe[r]}: ${name}`,
      opsPerSec: 0,
      note: note(r),
    };
    if (base !== undefined) {
      out.baseline = describe[base];
      out.ratio = c[base].perRequest / c[r].perRequest;
      if (target !== undefined) {
        out.target = `>= ${target}x the ${describe[base]}'s rate (instructions)`;
        out.met = out.ratio >= target;
      }
    }
    return out;
  };
  return [
    row("unmetered"),
    row("hand", "unmetered"),
    row("leased", "hand", 0.9),
    row("leased", "unmetered", 0.9),
    row("exact", "unmetered"),
    row("usage", "unmetered"),
  ];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  execFileSync("callgrind_control", ["--help"], { stdio: "ignore" }); // valgrind is there, or this fails first
  const roots = process.argv.slice(2).length ? process.argv.slice(2).map((r) => resolve(r)) : [resolve(here, "..")];
  const counted = await count(roots);
  if (process.env.BENCH_HTTP_INSTR_JSON === "1") console.log(JSON.stringify(counted.flatMap((c) => benchRows(c))));
  else {
    console.log(settings());
    console.log(
      "| root | route | instructions / request without the optimizing compilers (rounds) | with them | vs unmetered | vs hand-mounted |",
    );
    console.log("| --- | --- | ---: | ---: | ---: | ---: |");
    for (const { root, routes } of counted)
      for (const r of Object.keys(ROUTES) as Route[]) {
        const x = routes[r];
        const vs = (b: Route) => (r === b ? "" : `${(routes[b].perRequest / x.perRequest).toFixed(3)}×`);
        console.log(
          `| ${root} | ${describe[r]} | ${k(x.perRequest)} (${x.rounds.map(k).join(", ")}) | ${k(x.all)} | ${vs("unmetered")} | ${vs("hand")} |`,
        );
      }
    console.log(
      "Targets: fixed price through a lease >= 0.9x the hand-mounted lease.charge() and >= 0.9x the unmetered handler (rates: baseline instructions / the row's).",
    );
  }
}
