/**
 * The callgrind driver of the instruction-count benches (bench/instructions.ts, the CI guard;
 * bench/deduct-instructions.ts; bench/http-instructions.ts): the node flags that make a count
 * repeat, one process under valgrind, and its instructions by function (native and V8 functions by
 * symbol, JavaScript that V8 compiled by its `--perf-basic-prof` name). docs/benchmarks.md,
 * "Instruction guard", says how the figures are read.
 *
 * Two ways to count, one driver:
 * - `countOps`: a child that takes the number of operations as its last argument, sets up, does
 *   them and exits, run twice (`WARM` and `WARM + COUNTED` operations) by `perOperation`; the
 *   difference / `COUNTED` is the instructions of warm operations, start-up and warm-up cancelled
 *   out, no handshake, nothing timed;
 * - `startCounting`: a long-lived child (a server) started with counting off; the caller turns it
 *   on, zeroes and dumps around what it counts (`callgrind_control`), and reads each dump with
 *   `profile`.
 *
 * Threads: `--single-threaded` puts every instruction of V8 on the main thread, and the library's
 * own worker threads (the ledger file's writer) are counted too — callgrind sums every thread of
 * the process unless `--separate-threads` — so a figure is the process's whole work.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
/** This checkout: its path is cut out of JavaScript function names, so a name compares across runs. */
export const ROOT = resolve(here, "..");

/** V8 and node settings that make a process's instruction count repeat. */
export const NODE_FLAGS = [
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

/** V8's optimizing compilers: functions that reach their budget inside a count are compiled there (left out). */
export const COMPILER = /v8::internal::(?:compiler|maglev|turboshaft)::/;

/** Self instructions by function of one callgrind file, JIT code named from the perf map. */
export interface Profile {
  total: number;
  functions: Map<string, number>;
}

/** A count per operation: all of it less the optimizing compilers' share, that share, and by function. */
export interface PerOp {
  instructions: number;
  compiling: number;
  functions: Record<string, number>;
}

type Ranges = { start: bigint; end: bigint; name: string }[];

/** A perf map's code ranges, sorted by start (`start size name` per line); the file is removed unless `keep`. */
function perfMap(pid: number, keep = false): Ranges {
  const file = `/tmp/perf-${pid}.map`;
  if (!existsSync(file)) return [];
  const text = readFileSync(file, "utf8");
  if (!keep) rmSync(file, { force: true });
  return text
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => {
      const [start = "0", size = "0", ...rest] = l.split(" ");
      const s = BigInt(`0x${start}`);
      // "JS:~name file:line:col" / "JS:*name …" / "Builtin:Name": the tier mark (~ interpreted and
      // baseline, ^ Maglev, * TurboFan) dropped, and the checkout's path (up to dist/ or bench/), so
      // a name compares across runs and checkouts.
      const name = rest
        .join(" ")
        .replace(/^(JS|LazyCompile|Function):[~^*+]?/, "JS:")
        .replace(/file:\/\/\/\S*?\/(dist|bench)\//g, "$1/")
        .replace(/(^|\s)\/\S*?\/(dist|bench)\//g, "$1$2/");
      return { start: s, end: s + BigInt(`0x${size}`), name };
    })
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

function lookup(ranges: Ranges, address: bigint): string | undefined {
  let lo = 0;
  let hi = ranges.length - 1;
  let found: Ranges[number] | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid] as Ranges[number];
    if (r.start <= address) {
      found = r;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found !== undefined && address < found.end ? found.name : undefined;
}

/**
 * The profile of one callgrind file (a dump of a running process too). `pid`: the process whose
 * perf map names its JIT code (read and removed unless `keepMap`, for the process's other dumps;
 * without it JIT code is named by address).
 */
export function profile(file: string, pid?: number, keepMap = false): Profile {
  const text = execFileSync("callgrind_annotate", ["--inclusive=no", "--threshold=100", file], {
    encoding: "utf8",
    maxBuffer: 512 * 1024 * 1024,
  });
  const ranges = pid === undefined ? [] : perfMap(pid, keepMap);
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

/** valgrind's arguments to run `node <script> ...args` under callgrind into `out`. */
function valgrindArgs(out: string, script: string, args: string[], countFromStart: boolean): string[] {
  return [
    "-q",
    "--tool=callgrind",
    ...(countFromStart ? [] : ["--instr-atstart=no"]),
    `--callgrind-out-file=${out}`,
    process.execPath,
    ...NODE_FLAGS,
    script,
    ...args,
  ];
}

/**
 * One child under callgrind: `node <script> ...args <ops>` (it sets up, does the operation `ops`
 * times, exits). Run in `dir`: V8's code log (`--perf-basic-prof` turns it on) is written to the cwd.
 */
export function countOps(dir: string, script: string, args: string[], ops: number, tag: string): Promise<Profile> {
  const out = join(dir, `${tag}-${ops}.callgrind`);
  const argv = valgrindArgs(out, script, [...args, String(ops)], true);
  return new Promise((ok, fail) => {
    const child = spawn("valgrind", argv, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("exit", (code) => {
      if (code !== 0 || !existsSync(out)) return fail(new Error(`valgrind ${argv.join(" ")}: exit ${code}\n${stderr}`));
      try {
        ok(profile(out, child.pid as number));
      } catch (error) {
        fail(error as Error);
      }
    });
  });
}

/** The difference of two profiles (`b` did `counted` operations more than `a`), per operation. */
export function perOp(a: Profile, b: Profile, counted: number): PerOp {
  const functions: Record<string, number> = {};
  let compiling = 0;
  for (const name of new Set([...a.functions.keys(), ...b.functions.keys()])) {
    const d = ((b.functions.get(name) ?? 0) - (a.functions.get(name) ?? 0)) / counted;
    if (COMPILER.test(name)) compiling += d;
    else if (Math.abs(d) >= 0.5) functions[name] = Math.round(d * 10) / 10;
  }
  const all = (b.total - a.total) / counted;
  return { instructions: Math.round(all - compiling), compiling: Math.round(compiling), functions };
}

/** The two runs of `perOperation` as tasks (for `pool`), and how to combine their profiles. */
export function perOperationTasks(
  dir: string,
  script: string,
  args: string[],
  tag: string,
  warm: number,
  counted: number,
): { tasks: [() => Promise<Profile>, () => Promise<Profile>]; result: (a: Profile, b: Profile) => PerOp } {
  return {
    tasks: [() => countOps(dir, script, args, warm, tag), () => countOps(dir, script, args, warm + counted, tag)],
    result: (a, b) => perOp(a, b, counted),
  };
}

/** Runs `tasks` with at most `jobs` at once; results in order. */
export async function pool<T>(tasks: (() => Promise<T>)[], jobs: number): Promise<T[]> {
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

/**
 * A long-lived child under callgrind with counting off (`node <script> ...args`, cwd `cwd`): the
 * caller turns counting on (`on`, once: turned off and on again, callgrind's dumps come out
 * wrong), zeroes it before what it counts and dumps after (`zero`, `dump`: the dump's file).
 */
export function startCounting(
  out: string,
  script: string,
  args: string[],
  cwd: string,
): { child: ChildProcess; on(): void; zero(): void; dump(): string } {
  const child = spawn("valgrind", valgrindArgs(out, script, args, false), { cwd, stdio: ["pipe", "pipe", "inherit"] });
  const pid = String(child.pid);
  const control = (...a: string[]) => execFileSync("callgrind_control", [...a, pid], { stdio: "ignore" });
  let dumps = 0;
  return {
    child,
    on: () => control("-i", "on"),
    zero: () => control("--zero"),
    dump: () => {
      control("--dump");
      return `${out}.${++dumps}`;
    },
  };
}

/** The optimizing compilers' instructions in a profile (`perOp` leaves them out the same way). */
export function compilingOf(p: Profile): number {
  let sum = 0;
  for (const [name, n] of p.functions) if (COMPILER.test(name)) sum += n;
  return sum;
}
