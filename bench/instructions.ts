/**
 * The instruction-count regression guard (CI; docs/benchmarks.md, "Instruction guard"): machine
 * instructions per operation of the hot paths, counted with valgrind's callgrind, against the
 * committed baseline `bench/instructions-baseline.json`. A case whose count grew past the tolerance
 * fails the run, naming the functions that grew most (native and V8 functions by their symbols, the
 * JavaScript that V8 compiled by its `--perf-basic-prof` name).
 *
 *   tsx bench/instructions.ts                 check this checkout's dist/ against the baseline
 *   tsx bench/instructions.ts --update        write the baseline from this checkout (only the cases
 *                                             counted: `--update --case NAME` leaves the others')
 *   tsx bench/instructions.ts --case NAME     only that case (repeatable); also the cases outside CI
 *                                             (`ON_REQUEST`: the floor; the exact
 *                                             HTTP path)
 *   tsx bench/instructions.ts --functions     also print each case's 25 costliest functions (self, per operation)
 *   tsx bench/instructions.ts --root DIR ...  count other checkouts' dist/ (repeatable; no baseline:
 *                                             each case side by side, ratios to the first root)
 *
 * How a count repeats: each case runs in two child processes under callgrind, one doing `WARM`
 * operations and one `WARM + COUNTED`; both start, warm up and exit the same way, so their
 * difference / `COUNTED` is the instructions of `COUNTED` warm operations — no handshake, nothing
 * timed (the driver, shared with the other instruction benches: bench/callgrind.ts). V8 runs
 * `--single-threaded` (no background compiler or GC thread: every instruction on the main thread,
 * in an order fixed by the program), `--predictable` with fixed random and hash seeds. V8's
 * optimizing compilers' instructions in the difference (a function reaching its budget there) are
 * reported apart and left out of the figure. The child writes no ledger file. The HTTP cases
 * are counted differently: one server process under callgrind, warmed up,
 * then zeroed and dumped around each route's requests (see `HttpCase`). The targets a run's cases
 * can tell (3 and 5) are printed under the table (`TARGETS`).
 *
 * Environment: BENCH_INSTR_TOLERANCE (default 0.10: fail above 10 % more than the baseline — a
 * guard against regressions a user would feel, not a count of saved instructions; the same tree
 * counted from another folder moved by up to 4.2 %, in glibc's malloc: docs/benchmarks.md),
 * BENCH_INSTR_JOBS (processes at once, default 2), BENCH_INSTR_KEEP=1 keeps the callgrind files,
 * BENCH_INSTR_WARM / BENCH_INSTR_COUNTED (6,000 / 2,000 operations), BENCH_INSTR_HTTP_WARM /
 * BENCH_INSTR_HTTP_COUNTED (3,000 requests a route / 1,000).
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { NODE_FLAGS, type PerOp, type Profile, perOp, perOperationTasks, pool } from "./callgrind.js";
import { countRoutes, type Route } from "./http-instructions.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const BASELINE = join(here, "instructions-baseline.json");

/** Operations before the counted ones (tier-up done), and the counted ones, where a case names none. */
const WARM = Number(process.env.BENCH_INSTR_WARM ?? 6000);
const COUNTED = Number(process.env.BENCH_INSTR_COUNTED ?? 2000);

/** A case: a child script's operation, counted as the difference of two processes. */
interface ChildCase {
  name: string;
  /** The child script, run as `node <script> <root> ...args <ops>`: it sets up, does the operation `ops` times, exits. */
  script: string;
  args: string[];
  route?: undefined;
}

/**
 * Or an HTTP request of one route of bench/http-instructions-server.mjs,
 * counted in one long-lived server process per run for all the HTTP cases (bench/http-instructions.ts's
 * `countRoutes`: callgrind zeroed and dumped around each route's requests, autocannon in this
 * process, not counted), so a figure is the server's instructions per request. The server's start
 * and its warm-up are paid once, not twice a case: CI's HTTP routes are always all warmed up (the
 * same compiled code whichever are counted), HTTP_WARM requests a route, then HTTP_COUNTED counted.
 */
interface HttpCase {
  name: string;
  route: Route;
}

type Case = ChildCase | HttpCase;

const HTTP_WARM = Number(process.env.BENCH_INSTR_HTTP_WARM ?? 3000);
const HTTP_COUNTED = Number(process.env.BENCH_INSTR_HTTP_COUNTED ?? 1000);
const http = (name: string, route: Route): HttpCase => ({ name, route });

/** CI's cases, each against its baseline. One line each; `--update --case NAME` records a new one. */
const CASES: Case[] = [
  { name: "deduct-plain", script: "bench/instructions-child.mjs", args: ["deduct-plain"] },
  { name: "deduct-scoped", script: "bench/instructions-child.mjs", args: ["deduct-scoped"] },
  { name: "reserve-commit", script: "bench/instructions-child.mjs", args: ["reserve-commit"] },
  http("http-unmetered", "unmetered"), // the handler alone
  http("http-hand", "hand"), // lease.charge() mounted by hand
  http("http-leased", "leased"), // creditMeteringMiddleware({ price: 3, lease })
];

/**
 * Cases counted only when named (`--case`), with no baseline: the in-memory deduction's floor,
 * beside `deduct-plain` at 1 caller and `deduct-16` at 16 (docs/benchmarks.md, "In memory"), and the fixed price without a lease (an account
 * read and a deduction a request: left out of CI for its time). They check a target, not a regression.
 */
const ON_REQUEST: Case[] = [
  http("http-exact", "exact"),
  { name: "floor", script: "bench/instructions-child.mjs", args: ["floor"] },
  { name: "floor-16", script: "bench/instructions-child.mjs", args: ["floor-16"] },
  { name: "deduct-16", script: "bench/instructions-child.mjs", args: ["deduct-16"] },
];

/** CI's HTTP routes: always warmed up, whichever HTTP cases a run counts. */
const HTTP_ROUTES = CASES.flatMap((c) => (c.route === undefined ? [] : [c.route]));

/**
 * The targets that a run's counts can tell (printed when their cases were counted): rates,
 * so the baseline's instructions ÷ the row's. The HTTP counts are the server's alone, as
 * bench/http-instructions.ts's (which counts two rounds of 1,500 requests after 5,000 a route).
 */
const TARGETS: { of: string; base: string; what: string; target: number }[] = [
  {
    of: "http-leased",
    base: "http-hand",
    what: "target 5: through a lease vs the hand-mounted lease.charge()",
    target: 0.9,
  },
  {
    of: "http-leased",
    base: "http-unmetered",
    what: "target 5: fixed price through a lease vs unmetered",
    target: 0.9,
  },
  { of: "deduct-plain", base: "floor", what: "target 3: deductCredits vs its floor, 1 caller", target: 0.85 },
  { of: "deduct-16", base: "floor-16", what: "target 3: deductCredits vs its floor, 16 callers", target: 0.95 },
];

/** The TARGETS lines for the cases in `counted` (by name). */
function targetLines(counted: Map<string, PerOp>): string[] {
  return TARGETS.flatMap((t) => {
    const of = counted.get(t.of);
    const base = counted.get(t.base);
    if (of === undefined || base === undefined) return [];
    const rate = base.instructions / of.instructions;
    return [
      `${t.what}: ${k(of.instructions)} against ${k(base.instructions)} instructions, ${(of.instructions / base.instructions).toFixed(3)}× the instructions, a rate of ${rate.toFixed(3)}× (target >= ${t.target}×)`,
    ];
  });
}

const TOLERANCE = Number(process.env.BENCH_INSTR_TOLERANCE ?? 0.1);
const JOBS = Number(process.env.BENCH_INSTR_JOBS ?? 2);
/** How many times a case over the tolerance is counted again (its lowest count kept). */
const RETRIES = Number(process.env.BENCH_INSTR_RETRIES ?? 2);

interface Baseline {
  node: string;
  valgrind: string;
  settings: string;
  cases: Record<string, PerOp>;
}

const k = (n: number) => Math.round(n).toLocaleString("en");

/** The functions whose instructions per operation moved most against the baseline's. */
function movers(now: PerOp, was: PerOp, n = 8): string[] {
  const names = new Set([...Object.keys(now.functions), ...Object.keys(was.functions)]);
  return [...names]
    .map((name) => ({ name, d: (now.functions[name] ?? 0) - (was.functions[name] ?? 0) }))
    .filter((m) => Math.abs(m.d) >= 1)
    .sort((x, y) => y.d - x.d)
    .slice(0, n)
    .map((m) => `    ${m.d > 0 ? "+" : ""}${k(m.d)}  ${m.name}`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const update = argv.includes("--update");
  const only = argv.flatMap((a, i) => (argv[i - 1] === "--case" ? [a] : []));
  for (const name of only)
    if (![...CASES, ...ON_REQUEST].some((c) => c.name === name))
      throw new Error(`unknown case ${name}: ${[...CASES, ...ON_REQUEST].map((c) => c.name).join(", ")}`);
  const cases = only.length > 0 ? [...CASES, ...ON_REQUEST].filter((c) => only.includes(c.name)) : CASES;
  const guarded = (c: Case) => CASES.includes(c);
  const roots = argv.flatMap((a, i) => (argv[i - 1] === "--root" ? [resolve(a)] : []));
  const counted = roots.length > 0 ? roots : [root];
  for (const r of counted)
    if (!existsSync(join(r, "dist/index.js"))) throw new Error(`${r}: no dist/index.js (npm run build first)`);
  const valgrind = execFileSync("valgrind", ["--version"], { encoding: "utf8" }).trim();
  const settings = `${WARM} warm-up operations, ${COUNTED} counted (HTTP: one server, ${HTTP_WARM} warm-up requests a route, ${HTTP_COUNTED} counted); node ${NODE_FLAGS.join(" ")}`;
  const dir = mkdtempSync(join(tmpdir(), "instructions-"));
  let round = 0;
  /** Counts `list` on each root in `rs` (rounds alternate over the roots when there are several). */
  const count = async (list: typeof cases, rs: string[]): Promise<PerOp[]> => {
    round += 1;
    const kids = list.filter((c): c is ChildCase => c.route === undefined);
    const routes = list.flatMap((c) => (c.route === undefined ? [] : [c.route]));
    const jobs = rs.flatMap((r, ri) =>
      kids.map((c) =>
        perOperationTasks(dir, join(root, c.script), [r, ...c.args], `${c.name}-${ri}-${round}`, WARM, COUNTED),
      ),
    );
    const served = async () => {
      const out: Record<Route, Profile[]>[] = [];
      for (const [ri, r] of rs.entries()) {
        const warmed = [...new Set([...HTTP_ROUTES, ...routes])];
        out.push(await countRoutes(dir, r, `http-${ri}-${round}`, warmed, HTTP_WARM, HTTP_COUNTED, 1, routes));
      }
      return out;
    };
    const [runs, http] = await Promise.all([
      pool(
        jobs.flatMap((j) => j.tasks),
        JOBS,
      ),
      routes.length > 0 ? served() : Promise.resolve([]),
    ]);
    let j = 0;
    const none: Profile = { total: 0, functions: new Map() };
    return rs.flatMap((_, ri) =>
      list.map((c) => {
        if (c.route !== undefined)
          return perOp(none, (http[ri] as Record<Route, Profile[]>)[c.route][0] as Profile, HTTP_COUNTED);
        const at = j++;
        return (jobs[at] as (typeof jobs)[number]).result(runs[2 * at] as Profile, runs[2 * at + 1] as Profile);
      }),
    );
  };
  const old: Baseline | null = existsSync(BASELINE) ? (JSON.parse(readFileSync(BASELINE, "utf8")) as Baseline) : null;
  const over = (c: (typeof cases)[number], p: PerOp) => {
    const was = old?.cases[c.name];
    return was !== undefined && p.instructions > was.instructions * (1 + TOLERANCE);
  };
  let all: PerOp[];
  const recounted = new Map<string, number[]>();
  try {
    all = await count(cases, counted);
    // A case over the tolerance is counted again, up to RETRIES times, and its lowest count kept:
    // V8's heuristics (when a scavenge lands, what gets inlined) move a count by a few percent
    // from run to run (docs/benchmarks.md, "Instruction guard"); a path that really grew is over
    // in every count.
    if (!update && roots.length === 0)
      for (let retry = 0; retry < RETRIES; retry++) {
        const again = cases.flatMap((c, i) => (over(c, all[i] as PerOp) ? [i] : []));
        if (again.length === 0) break;
        const more = await count(
          again.map((i) => cases[i] as (typeof cases)[number]),
          counted,
        );
        again.forEach((i, j) => {
          const c = cases[i] as (typeof cases)[number];
          const seen = recounted.get(c.name) ?? [(all[i] as PerOp).instructions];
          const next = more[j] as PerOp;
          seen.push(next.instructions);
          recounted.set(c.name, seen);
          if (next.instructions < (all[i] as PerOp).instructions) all[i] = next;
        });
      }
  } finally {
    if (process.env.BENCH_INSTR_KEEP === "1") console.error(`callgrind files kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
  const costliest = (p: PerOp) =>
    Object.entries(p.functions)
      .sort((x, y) => y[1] - x[1])
      .slice(0, 25)
      .map(([name, n]) => `    ${k(n)}  ${name}`)
      .join("\n");
  if (roots.length > 0) {
    console.log(`callgrind (${valgrind}), node ${process.version}, ${settings}`);
    console.log(`| case | ${roots.join(" | ")} | ratio to the first |`);
    console.log(`| --- |${roots.map(() => " ---: |").join("")} ---: |`);
    cases.forEach((c, i) => {
      const per = roots.map((_, ri) => all[ri * cases.length + i] as PerOp);
      const first = (per[0] as PerOp).instructions;
      console.log(
        `| ${c.name} | ${per.map((p) => k(p.instructions)).join(" | ")} | ${per.map((p) => (p.instructions / first).toFixed(4)).join(", ")} |`,
      );
    });
    roots.forEach((r, ri) => {
      const lines = targetLines(new Map(cases.map((c, i) => [c.name, all[ri * cases.length + i] as PerOp])));
      if (lines.length > 0) console.log(`\n${r}:\n${lines.join("\n")}`);
    });
    if (argv.includes("--functions"))
      roots.forEach((r, ri) =>
        cases.forEach((c, i) => console.log(`\n${r}, ${c.name}:\n${costliest(all[ri * cases.length + i] as PerOp)}`)),
      );
    process.exit(0);
  }
  const measured = all;
  if (argv.includes("--functions"))
    cases.forEach((c, i) =>
      console.error(`${c.name}, the costliest functions (self, per operation):\n${costliest(measured[i] as PerOp)}\n`),
    );
  console.log(
    `callgrind (${valgrind}), node ${process.version}, ${settings}; tolerance ${(TOLERANCE * 100).toFixed(1)} %`,
  );
  console.log("| case | instructions / operation | baseline | ratio | optimizing compilers (left out) |");
  console.log("| --- | ---: | ---: | ---: | ---: |");
  const failed: string[] = [];
  cases.forEach((c, i) => {
    const now = measured[i] as PerOp;
    const was = old?.cases[c.name];
    const ratio = was === undefined ? null : now.instructions / was.instructions;
    console.log(
      `| ${c.name} | ${k(now.instructions)} | ${was === undefined ? "none" : k(was.instructions)} | ${ratio === null ? "" : ratio.toFixed(4)} | ${k(now.compiling)} |`,
    );
    if (was !== undefined && ratio !== null && ratio > 1 + TOLERANCE) failed.push(c.name);
  });
  for (const [name, seen] of recounted)
    console.log(`${name}: counted ${seen.length} times (${seen.map(k).join(", ")}); the lowest kept`);
  const targets = targetLines(new Map(cases.map((c, i) => [c.name, measured[i] as PerOp])));
  if (targets.length > 0) console.log(`\n${targets.join("\n")}`);
  if (update) {
    // Only the cases counted, and only CI's: the others' baselines stay as they were.
    const cases0 = { ...(old?.cases ?? {}) };
    cases.forEach((c, i) => {
      if (guarded(c)) cases0[c.name] = measured[i] as PerOp;
    });
    const next: Baseline = { node: process.version, valgrind, settings, cases: cases0 };
    writeFileSync(BASELINE, `${JSON.stringify(next, null, 2)}\n`);
    console.log(`\nwrote ${BASELINE}`);
  } else {
    if (old === null) throw new Error(`no baseline ${BASELINE}: run with --update`);
    if (old.node !== process.version)
      throw new Error(`the baseline was counted on node ${old.node}, this is ${process.version}: run --update on one`);
    for (const c of cases)
      if (guarded(c) && old.cases[c.name] === undefined)
        throw new Error(`case ${c.name} has no baseline: run --update --case ${c.name}`);
    cases.forEach((c, i) => {
      const now = measured[i] as PerOp;
      const was = old.cases[c.name];
      if (was === undefined) return;
      const lines = movers(now, was);
      if (failed.includes(c.name)) {
        console.log(
          `\n${c.name}: ${k(now.instructions)} instructions per operation, ${((now.instructions / was.instructions - 1) * 100).toFixed(2)} % over the baseline's ${k(was.instructions)}; what grew most (instructions per operation, self):`,
        );
        console.log(lines.join("\n"));
      } else if (now.instructions < was.instructions * (1 - TOLERANCE))
        console.log(
          `\n${c.name}: ${k(was.instructions - now.instructions)} fewer than the baseline: --update to keep the gain`,
        );
    });
    if (failed.length > 0) {
      console.error(`\ninstruction guard: ${failed.join(", ")} grew past ${(TOLERANCE * 100).toFixed(1)} %`);
      process.exit(1);
    }
  }
}
