/**
 * serve's extra work per request as a count that holds still: machine instructions per admin
 * deduction of `credit-management serve` and of the hand-mounted handler (bench/serve-baseline.ts),
 * each run under valgrind's callgrind (user space: node, V8's threads, SQLite; not the kernel), with
 * the count started after a warm-up and read after the measured requests. It moves far less than
 * the req/s ratio of bench/serve.ts (±0.07 a run on a shared 2-core machine). Run it on a quiet
 * machine: on a busy one V8 is still optimizing during the count, so each count is also given
 * without TurboFan's instructions (docs/benchmarks.md, "The service").
 * Needs valgrind (callgrind and callgrind_control on the PATH); not part of `npm run bench` (6–10
 * minutes).
 *   tsx bench/serve-instructions.ts [warm-up] [measured]   (default 12,000 and 3,000 requests)
 * Both sides run the built package (dist/; BENCH_SOURCE=1: src/ through tsx), one after the other.
 * Extra environment for serve only: SERVE_ENV='{"CREDIT_METRICS":"off"}'. SERVE_INSTR_KEEP=1 keeps
 * the callgrind files (for callgrind_annotate) and prints where.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { adminKey, baselineArgs, deductions, fund, serveArgs, startServer, storeWithKey } from "./serve-lib.js";

const WARM = Number(process.argv[2] ?? 12_000);
const MEASURED = Number(process.argv[3] ?? 3000);

/** Instructions a request, and of them V8's optimizing compiler's. */
interface Count {
  all: number;
  compiling: number;
}

/** Instructions per request of one server: started under callgrind, counted over `MEASURED` deductions. */
async function count(
  dir: string,
  name: string,
  args: string[],
  env: Record<string, string>,
  token: string,
): Promise<Count> {
  const out = join(dir, `${name}.callgrind`);
  const server = await startServer(args, env, {
    launcher: ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", `--callgrind-out-file=${out}`],
    timeoutMs: 300_000,
  });
  const pid = String(server.child.pid);
  try {
    await fund(server.port, token);
    // The warm-up in rounds of 500, each on new connections: the connection's own code (accept,
    // close, timers) gets hot too, so V8 compiles it before the count, not during it.
    for (let done = 0; done < WARM; done += 500) await deductions(server.port, token, { amount: 500 });
    execFileSync("callgrind_control", ["--instr=on", pid], { stdio: "ignore" });
    await deductions(server.port, token, { amount: MEASURED });
    execFileSync("callgrind_control", ["--dump", pid], { stdio: "ignore" });
  } finally {
    const exited = new Promise((resolve) => server.child.once("exit", resolve));
    server.child.kill("SIGTERM");
    await exited; // callgrind writes its last file on the way out
  }
  // The dump is `<out>.1` (the file of the whole run, `<out>`, comes at exit and is not read).
  const dump = `${out}.1`;
  const m = existsSync(dump) ? /^(?:summary|totals): (\d+)/m.exec(readFileSync(dump, "utf8")) : null;
  if (m === null) throw new Error(`no callgrind dump for ${name}`);
  return { all: Number(m[1]) / MEASURED, compiling: compiling(dump) / MEASURED };
}

/**
 * Instructions of V8's optimizing compiler (TurboFan) in a dump. On a busy machine V8's background
 * compile jobs fall behind, and TurboFan is still at work during the counted requests: ~50k
 * instructions a request on the hand-mounted side and ~80k on serve's with the CI suite running
 * beside it, against 0 and 2k on a quiet machine. Natively, after the same warm-up, `node
 * --trace-opt` shows a few functions optimized, so the report gives each count with and without it.
 */
function compiling(file: string): number {
  const text = execFileSync("callgrind_annotate", ["--inclusive=no", "--threshold=100", file], {
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
  let sum = 0;
  for (const line of text.split("\n")) {
    const m = /^\s*([\d,]+) .*v8::internal::compiler::/.exec(line);
    if (m !== null) sum += Number((m[1] as string).replaceAll(",", ""));
  }
  return sum;
}

export async function run(): Promise<{ hand: Count; serve: Count }> {
  execFileSync("callgrind_control", ["--help"], { stdio: "ignore" }); // valgrind is there, or this fails first
  const dir = mkdtempSync(join(tmpdir(), "bench-serve-instr-"));
  try {
    const { key, record } = adminKey();
    const servePath = join(dir, "serve.sqlite");
    await storeWithKey(servePath, record);
    const extra = JSON.parse(process.env.SERVE_ENV ?? "{}") as Record<string, string>;
    const hand = await count(dir, "hand", baselineArgs(join(dir, "hand.sqlite")), {}, "any");
    const serve = await count(dir, "serve", serveArgs(), { CREDIT_SQLITE_PATH: servePath, ...extra }, key);
    return { hand, serve };
  } finally {
    if (process.env.SERVE_INSTR_KEEP === "1") console.log(`callgrind files kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { hand, serve } = await run();
  const k = (n: number) => `${(n / 1000).toFixed(1)}k`;
  const line = (label: string, h: number, s: number) =>
    console.log(`${label}: hand-mounted ${k(h)}, serve ${k(s)} (+${k(s - h)}), ${(h / s).toFixed(3)}× hand's rate`);
  console.log(`instructions a deduction (${WARM} warm-up, ${MEASURED} counted):`);
  line("all                    ", hand.all, serve.all);
  line("without TurboFan's work", hand.all - hand.compiling, serve.all - serve.compiling);
}
