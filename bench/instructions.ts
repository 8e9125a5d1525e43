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
 *
 * How a count repeats: each case runs in two child processes under callgrind, one doing `WARM`
 * operations and one `WARM + COUNTED`; both start, warm up and exit the same way, so their
 * difference / `COUNTED` is the instructions of `COUNTED` warm operations — no handshake, nothing
 * timed. V8 runs `--single-threaded` (no background compiler or GC thread: every instruction on
 * the main thread, in an order fixed by the program), `--predictable` with fixed random and hash
 * seeds. V8's optimizing compilers' instructions in the difference (a function reaching its budget
 * there) are reported apart and left out of the figure. The child writes no ledger file.
 *
 * Environment: BENCH_INSTR_TOLERANCE (default 0.05: fail above 5 % more than the baseline; the same
 * tree counted from another folder moved by up to 4.2 %, in glibc's malloc: docs/benchmarks.md),
 * BENCH_INSTR_JOBS (processes at once, default 2), BENCH_INSTR_KEEP=1 keeps the callgrind files.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

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
const WARM = 6000;
const COUNTED = 2000;
const TOLERANCE = Number(process.env.BENCH_INSTR_TOLERANCE ?? 0.05);
const JOBS = Number(process.env.BENCH_INSTR_JOBS ?? 2);

/** V8 and node settings that make a process's instruction count repeat (see above). */
const NODE_FLAGS = [
  "--single-threaded",
  "--predictable",
  "--random-seed=1",
  "--hash-seed=1",
  "--v8-pool-size=0",
  // No mark-compact in either run: one landing inside the counted operations or not is a step of
  // several thousand instructions per operation that says nothing about them (scavenges, which
  // are many and proportional to what the operations allocate, stay in the count).
  "--initial-old-space-size=512",
  // JIT code's names, for the functions that grew (read from /tmp/perf-PID.map, then removed).
  "--perf-basic-prof",
];

const COMPILER = /v8::internal::(?:compiler|maglev|turboshaft)::/;

/** Self instructions by function of one callgrind file, JIT code named from the perf map. */
interface Profile {
  total: number;
  functions: Map<string, number>;
}

/** A perf map's code ranges, sorted by start: `start size name` per line. */
function perfMap(pid: number): { start: bigint; end: bigint; name: string }[] {
  const file = `/tmp/perf-${pid}.map`;
  if (!existsSync(file)) return [];
  const ranges = readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => {
      const [start = "0", size = "0", ...rest] = l.split(" ");
      const s = BigInt(`0x${start}`);
      // "JS:~name file:line:col" / "JS:*name …" / "Builtin:Name": the tier mark (~ interpreted and
      // baseline, ^ Maglev, * TurboFan) dropped, and the checkout's path, so a name compares across runs.
      const name = rest
        .join(" ")
        .replace(/^(JS|LazyCompile|Function):[~^*+]?/, "JS:")
        .replaceAll(`file://${root}/`, "")
        .replaceAll(`${root}/`, "");
      return { start: s, end: s + BigInt(`0x${size}`), name };
    })
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  rmSync(file, { force: true });
  return ranges;
}

function lookup(ranges: ReturnType<typeof perfMap>, address: bigint): string | undefined {
  let lo = 0;
  let hi = ranges.length - 1;
  let found: (typeof ranges)[number] | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid] as (typeof ranges)[number];
    if (r.start <= address) {
      found = r;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found !== undefined && address < found.end ? found.name : undefined;
}

function profile(file: string, pid: number): Profile {
  const text = execFileSync("callgrind_annotate", ["--inclusive=no", "--threshold=100", file], {
    encoding: "utf8",
    maxBuffer: 512 * 1024 * 1024,
  });
  const ranges = perfMap(pid);
  const functions = new Map<string, number>();
  let total = 0;
  for (const line of text.split("\n")) {
    const t = /^\s*([\d,]+) .*PROGRAM TOTALS/.exec(line);
    if (t !== null) {
      total = Number((t[1] as string).replaceAll(",", ""));
      continue;
    }
    const m = /^\s*([\d,]+) (?:\([\s\d.]+%\))?\s+(\S.*)$/.exec(line);
    if (m === null) continue;
    let name = (m[2] as string).replace(/ \[[^\]]*\]$/, "").replace(/^[^:]*:/, "");
    // (callgrind marks a function's recursion levels and cycles with 'N: one function here.)
    name = name.replace(/'\d+$/, "");
    const jit = /^0x([0-9a-f]+)$/.exec(name);
    if (jit !== null) name = lookup(ranges, BigInt(`0x${jit[1]}`)) ?? "(JIT code without a name)";
    functions.set(name, (functions.get(name) ?? 0) + Number((m[1] as string).replaceAll(",", "")));
  }
  return { total, functions };
}

/** One child under callgrind doing `ops` operations of `c`: its profile. */
function run(dir: string, c: (typeof CASES)[number], ops: number): Promise<Profile> {
  const out = join(dir, `${c.name}-${ops}.callgrind`);
  const args = [
    "-q",
    "--tool=callgrind",
    `--callgrind-out-file=${out}`,
    process.execPath,
    ...NODE_FLAGS,
    join(root, c.script),
    root,
    ...c.args,
    String(ops),
  ];
  return new Promise((ok, fail) => {
    // In the scratch folder: V8's code log (`--perf-basic-prof` turns it on) is written to the cwd.
    const child = spawn("valgrind", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("exit", (code) => {
      if (code !== 0 || !existsSync(out)) return fail(new Error(`valgrind ${args.join(" ")}: exit ${code}\n${stderr}`));
      try {
        ok(profile(out, child.pid as number));
      } catch (error) {
        fail(error as Error);
      }
    });
  });
}

/** A case's figures per operation: all of it, the optimizing compilers' share, and by function. */
interface PerOp {
  instructions: number;
  compiling: number;
  functions: Record<string, number>;
}

function perOp(a: Profile, b: Profile): PerOp {
  const functions: Record<string, number> = {};
  let compiling = 0;
  for (const name of new Set([...a.functions.keys(), ...b.functions.keys()])) {
    const d = ((b.functions.get(name) ?? 0) - (a.functions.get(name) ?? 0)) / COUNTED;
    if (COMPILER.test(name)) compiling += d;
    else if (Math.abs(d) >= 0.5) functions[name] = Math.round(d * 10) / 10;
  }
  const all = (b.total - a.total) / COUNTED;
  return { instructions: Math.round(all - compiling), compiling: Math.round(compiling), functions };
}

async function pool<T>(tasks: (() => Promise<T>)[], jobs: number): Promise<T[]> {
  const results: T[] = new Array<T>(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await (tasks[i] as () => Promise<T>)();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, jobs) }, worker));
  return results;
}

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
  if (!existsSync(join(root, "dist/index.js"))) throw new Error(`${root}: no dist/index.js (npm run build first)`);
  const valgrind = execFileSync("valgrind", ["--version"], { encoding: "utf8" }).trim();
  const settings = `${WARM} warm-up operations, ${COUNTED} counted; node ${NODE_FLAGS.join(" ")}`;
  const dir = mkdtempSync(join(tmpdir(), "instructions-"));
  let measured: PerOp[];
  try {
    const runs = await pool(
      cases.flatMap((c) => [() => run(dir, c, WARM), () => run(dir, c, WARM + COUNTED)]),
      JOBS,
    );
    measured = cases.map((_, i) => perOp(runs[2 * i] as Profile, runs[2 * i + 1] as Profile));
  } finally {
    if (process.env.BENCH_INSTR_KEEP === "1") console.error(`callgrind files kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
  const old: Baseline | null = existsSync(BASELINE) ? (JSON.parse(readFileSync(BASELINE, "utf8")) as Baseline) : null;
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
