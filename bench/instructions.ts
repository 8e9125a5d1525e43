/**
 * The instruction-count regression guard (CI; docs/benchmarks.md, "Instruction guard"): machine
 * instructions per operation of the hot paths, counted with valgrind's callgrind, against the
 * committed baseline `bench/instructions-baseline.json`. A case whose count grew past the tolerance
 * fails the run, naming the functions that grew most (native and V8 functions by their symbols, the
 * JavaScript that V8 compiled by its `--perf-basic-prof` name).
 *
 *   tsx bench/instructions.ts                 check this checkout's dist/ against the baseline
 *   tsx bench/instructions.ts --update        write the baseline from this checkout
 *   tsx bench/instructions.ts --case NAME     only that case (repeatable)
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
 * reported apart and left out of the figure. The child writes no ledger file.
 *
 * Environment: BENCH_INSTR_TOLERANCE (default 0.05: fail above 5 % more than the baseline; the same
 * tree counted from another folder moved by up to 4.2 %, in glibc's malloc: docs/benchmarks.md),
 * BENCH_INSTR_JOBS (processes at once, default 2), BENCH_INSTR_KEEP=1 keeps the callgrind files.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { NODE_FLAGS, type PerOp, type Profile, perOperationTasks, pool } from "./callgrind.js";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..");
const BASELINE = join(here, "instructions-baseline.json");

/**
 * The cases: a name, the child script (run as `node <script> <root> ...args <ops>`: it sets up, does
 * the operation `ops` times, exits) and its arguments. One line each; `--update` records a new one.
 */
const CASES: { name: string; script: string; args: string[] }[] = [
  { name: "deduct-plain", script: "bench/instructions-child.mjs", args: ["deduct-plain"] },
  { name: "deduct-scoped", script: "bench/instructions-child.mjs", args: ["deduct-scoped"] },
  { name: "reserve-commit", script: "bench/instructions-child.mjs", args: ["reserve-commit"] },
];

/** Operations before the counted ones (tier-up done), and the counted ones. */
const WARM = Number(process.env.BENCH_INSTR_WARM ?? 6000);
const COUNTED = Number(process.env.BENCH_INSTR_COUNTED ?? 2000);
const TOLERANCE = Number(process.env.BENCH_INSTR_TOLERANCE ?? 0.05);
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
  const cases = only.length > 0 ? CASES.filter((c) => only.includes(c.name)) : CASES;
  const roots = argv.flatMap((a, i) => (argv[i - 1] === "--root" ? [resolve(a)] : []));
  const counted = roots.length > 0 ? roots : [root];
  for (const r of counted)
    if (!existsSync(join(r, "dist/index.js"))) throw new Error(`${r}: no dist/index.js (npm run build first)`);
  const valgrind = execFileSync("valgrind", ["--version"], { encoding: "utf8" }).trim();
  const settings = `${WARM} warm-up operations, ${COUNTED} counted; node ${NODE_FLAGS.join(" ")}`;
  const dir = mkdtempSync(join(tmpdir(), "instructions-"));
  let round = 0;
  /** Counts `list` on each root in `rs` (rounds alternate over the roots when there are several). */
  const count = async (list: typeof cases, rs: string[]): Promise<PerOp[]> => {
    round += 1;
    const jobs = rs.flatMap((r, ri) =>
      list.map((c) =>
        perOperationTasks(dir, join(root, c.script), [r, ...c.args], `${c.name}-${ri}-${round}`, WARM, COUNTED),
      ),
    );
    const runs = await pool(
      jobs.flatMap((j) => j.tasks),
      JOBS,
    );
    return jobs.map((j, i) => j.result(runs[2 * i] as Profile, runs[2 * i + 1] as Profile));
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
  if (update) {
    const cases0 = { ...(old?.cases ?? {}) };
    cases.forEach((c, i) => (cases0[c.name] = measured[i] as PerOp));
    const next: Baseline = { node: process.version, valgrind, settings, cases: cases0 };
    writeFileSync(BASELINE, `${JSON.stringify(next, null, 2)}\n`);
    console.log(`\nwrote ${BASELINE}`);
  } else {
    if (old === null) throw new Error(`no baseline ${BASELINE}: run with --update`);
    if (old.node !== process.version)
      throw new Error(`the baseline was counted on node ${old.node}, this is ${process.version}: run --update on one`);
    for (const c of cases)
      if (old.cases[c.name] === undefined) throw new Error(`case ${c.name} has no baseline: run --update`);
    cases.forEach((c, i) => {
      const now = measured[i] as PerOp;
      const was = old.cases[c.name] as PerOp;
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
