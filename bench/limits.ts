/**
 * What spend limits cost a deduction (docs/teams-and-limits.md, docs/benchmarks.md): `deductCredits`
 * in memory over 1,000 users, plain (no spender, no limits) against the same naming a spender and a
 * feature under two limits (the account's, monthly, and the spender's, daily, both far from full),
 * measured in turns, round after round, so drift of a shared machine hits both alike. The ratio is
 * of main-thread CPU per deduction (Linux; elsewhere of ops/s). The spend limits' target is counted in
 * machine instructions, steadier still: `npx tsx bench/deduct-instructions.ts` (callgrind).
 *   tsx --expose-gc bench/limits.ts      → one JSON line: BenchRow[]
 */
import { core } from "./pkg.js";
import { mainThreadCpu, measure, type BenchRow } from "./lib.js";

const USERS = 1000;
const CALLERS = 64;
const OPS = Number(process.env.BENCH_OPS ?? 30_000);
const ROUNDS = 7;

const manager = await core.createCreditManager();
const { credits } = manager;
const plainUsers = Array.from({ length: USERS }, (_, i) => `plain-${i}`);
const limitedUsers = Array.from({ length: USERS }, (_, i) => `limited-${i}`);
for (const u of plainUsers) await credits.addCredits(u, 1e12);
for (const u of limitedUsers) {
  await credits.addCredits(u, 1e12);
  await credits.setLimits(u, [
    { amount: 1e12, period: "month" },
    { spender: "alice", amount: 1e12, period: "day" },
  ]);
}
const pick = (list: string[], i: number) => list[(i * 7919) % USERS] as string;
const spend = { spender: "alice", feature: "chat" };
const modes = {
  plain: (i: number) => credits.deductCredits(pick(plainUsers, i), 1),
  limits: (i: number) => credits.deductCredits(pick(limitedUsers, i), 1, spend),
} as const;
for (const op of Object.values(modes)) await measure(OPS, CALLERS, op); // warm-up

const best: Record<keyof typeof modes, { ops: number; cpu: number }> = {
  plain: { ops: 0, cpu: Infinity },
  limits: { ops: 0, cpu: Infinity },
};
for (let r = 0; r < ROUNDS; r++) {
  for (const mode of (r % 2 === 0 ? ["plain", "limits"] : ["limits", "plain"]) as (keyof typeof modes)[]) {
    (globalThis as { gc?: () => void }).gc?.();
    const before = mainThreadCpu();
    const ops = await measure(OPS, CALLERS, modes[mode]);
    const after = mainThreadCpu();
    best[mode].ops = Math.max(best[mode].ops, ops);
    if (before !== null && after !== null) best[mode].cpu = Math.min(best[mode].cpu, (after - before) / OPS);
  }
}

const cpu = Number.isFinite(best.plain.cpu) && Number.isFinite(best.limits.cpu);
/** Cost of a spend under two limits relative to a plain one (CPU per deduction; else inverse ops/s). */
const cost = cpu ? best.limits.cpu / best.plain.cpu : best.plain.ops / best.limits.ops;
const note = (mode: keyof typeof modes) =>
  cpu ? `main thread ${best[mode].cpu.toFixed(1)} µs CPU/op (lowest round)` : undefined;
const label = "deductCredits (memory, 1,000 users, 64 callers)";
const rows: BenchRow[] = [
  { backend: "memory", scenario: `limits: ${label}, plain`, opsPerSec: best.plain.ops, note: note("plain") },
  {
    backend: "memory",
    scenario: `limits: ${label}, spender and feature under two limits`,
    opsPerSec: best.limits.ops,
    baseline: "plain",
    ratio: 1 / cost,
    target: "cost <= 1.25x plain (ratio >= 0.80; the target proper is in instructions: bench/deduct-instructions.ts)",
    met: cost <= 1.25,
    note: `${note("limits") ?? ""}; ${cost.toFixed(2)}x plain's ${cpu ? "CPU" : "time"} per deduction`.replace(
      /^; /,
      "",
    ),
  },
];
await manager.close();
console.log(JSON.stringify(rows));
