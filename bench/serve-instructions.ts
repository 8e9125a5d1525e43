/**
 * serve's extra work per request as a count that holds still: machine instructions per admin
 * deduction of `credit-management serve` and of the hand-mounted handler (bench/serve-baseline.ts),
 * each run under valgrind's callgrind (user space: node, V8's threads, SQLite; not the kernel), with
 * the count started after a warm-up and read after the measured requests. Runs of the same build
 * agree within ~1%, where the req/s ratio of bench/serve.ts moves by ±0.07 on a shared 2-core
 * machine (docs/benchmarks.md, `credit-management serve`). Needs valgrind (callgrind and
 * callgrind_control on the PATH); not part of `npm run bench` (about 6 minutes).
 *   tsx bench/serve-instructions.ts [warm-up] [measured]   (default 12,000 and 3,000 requests)
 * Both sides run the built package (dist/; BENCH_SOURCE=1: src/ through tsx), one after the other.
 * Extra environment for serve only: SERVE_ENV='{"CREDIT_METRICS":"off"}'.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { adminKey, baselineArgs, deductions, fund, serveArgs, startServer, storeWithKey } from "./serve-lib.js";

const WARM = Number(process.argv[2] ?? 12_000);
const MEASURED = Number(process.argv[3] ?? 3000);

/** Instructions per request of one server: started under callgrind, counted over `MEASURED` deductions. */
async function count(
  dir: string,
  name: string,
  args: string[],
  env: Record<string, string>,
  token: string,
): Promise<number> {
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
  let total = 0;
  for (const file of readdirSync(dir).filter((f) => f.startsWith(`${name}.callgrind.`))) {
    const m = /^(?:summary|totals): (\d+)/m.exec(readFileSync(join(dir, file), "utf8"));
    if (m !== null) total += Number(m[1]);
  }
  if (total === 0) throw new Error(`no callgrind dump for ${name}`);
  return total / MEASURED;
}

export async function run(): Promise<{ hand: number; serve: number }> {
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
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { hand, serve } = await run();
  const k = (n: number) => `${(n / 1000).toFixed(1)}k`;
  console.log(`hand-mounted ${k(hand)} instructions a deduction (${WARM} warm-up, ${MEASURED} counted)`);
  console.log(
    `serve        ${k(serve)} instructions a deduction: +${k(serve - hand)}, ${(hand / serve).toFixed(3)}× hand's rate`,
  );
}
