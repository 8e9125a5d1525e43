/**
 * Where bench/serve.ts's gap goes: CPU time per request of `credit-management serve` and of the
 * hand-mounted handler (bench/serve-baseline.ts), each under the same fixed number of admin
 * deductions, read from /proc/<pid>/stat (user + system) before and after (Linux only).
 *   tsx bench/serve-cpu.ts [requests]       (default 20,000 per side and turn, 16 connections)
 * SERVE_CPU_ROUNDS: rounds of turns (default 2), each round in the reverse order of the one before.
 * The report: each side's mean CPU per request, and its difference to the hand-mounted one's
 * (docs/benchmarks.md, "The service").
 * SERVE_CPU_PROF=dir: every server also writes a V8 CPU profile there (`node --cpu-prof`).
 * Extra environment for serve (and other) only: SERVE_ENV='{"CREDIT_METRICS":"off"}'.
 * SERVE_OTHER=dir: a third server, `serve` run from another checkout (its dist/, so build it first, or
 * its src/ with BENCH_SOURCE=1; e.g. an older commit unpacked with `git archive`), measured in the
 * same turns as "other".
 */
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  adminKey,
  baselineArgs,
  deductions,
  fund,
  serveArgs,
  startServer,
  storeWithKey,
  type Started,
} from "./serve-lib.js";

const REQUESTS = Number(process.argv[2] ?? 20_000);
const PROF = process.env.SERVE_CPU_PROF;
const nodeArgs = PROF === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", PROF];
const load = (port: number, token: string, amount: number) => deductions(port, token, { amount });

/** User + system CPU of a process, in ms (/proc/<pid>/stat, 100 ticks a second). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const dir = mkdtempSync(join(tmpdir(), "bench-serve-cpu-"));
const children: ChildProcess[] = [];
try {
  const servePath = join(dir, "serve.sqlite");
  const { key, record } = adminKey();
  await storeWithKey(servePath, record);
  const extra = JSON.parse(process.env.SERVE_ENV ?? "{}") as Record<string, string>;
  const serve = await startServer(serveArgs(), { CREDIT_SQLITE_PATH: servePath, ...extra }, { nodeArgs });
  children.push(serve.child);
  const hand = await startServer(baselineArgs(join(dir, "hand.sqlite")), {}, { nodeArgs });
  children.push(hand.child);
  const sides: [string, Started, string][] = [
    ["hand", hand, "any"],
    ["serve", serve, key],
  ];
  const otherRoot = process.env.SERVE_OTHER;
  if (otherRoot !== undefined) {
    const otherPath = join(dir, "other.sqlite");
    await storeWithKey(otherPath, record);
    const other = await startServer(
      serveArgs(),
      { CREDIT_SQLITE_PATH: otherPath, ...extra },
      { cwd: otherRoot, nodeArgs },
    );
    children.push(other.child);
    sides.push(["other", other, key]);
  }
  console.log(`pids: ${sides.map(([n, x]) => `${n} ${x.child.pid}`).join(", ")}`);
  for (const [, side, token] of sides) await fund(side.port, token);
  for (const [, side, token] of sides) await load(side.port, token, 2000); // warm-up
  const cpu = new Map<string, number[]>();
  const rounds = Number(process.env.SERVE_CPU_ROUNDS ?? 2);
  for (let round = 0; round < rounds; round++) {
    // Forward then backward each round (ABC CBA), so no side always runs first.
    const order = round % 2 === 0 ? sides : [...sides].reverse();
    for (const [name, side, token] of order) {
      const pid = side.child.pid as number;
      const before = cpuMs(pid);
      const rps = await load(side.port, token, REQUESTS);
      const per = ((cpuMs(pid) - before) * 1000) / REQUESTS;
      cpu.set(name, [...(cpu.get(name) ?? []), per]);
      console.log(`${name.padEnd(5)} ${REQUESTS} requests: ${Math.round(rps)} req/s, ${per.toFixed(1)} µs CPU/request`);
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const handMean = mean(cpu.get("hand") ?? []);
  for (const [name, xs] of cpu)
    console.log(
      `${name.padEnd(5)} mean ${mean(xs).toFixed(1)} µs CPU/request, ${(mean(xs) / handMean).toFixed(3)}× hand, +${(mean(xs) - handMean).toFixed(1)} µs`,
    );
} finally {
  for (const c of children) c.kill("SIGTERM");
  await new Promise((resolve) => setTimeout(resolve, 1500));
  rmSync(dir, { recursive: true, force: true });
}
