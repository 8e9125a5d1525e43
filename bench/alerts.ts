/**
 * What `left_percent` and `expiring` alert thresholds cost a deduction (docs/benchmarks.md,
 * "Alerts"): `deductCredits` in memory, one after another, on one account with many open grants,
 * without thresholds and with 1 or 32 of them (half `left_percent`, half `expiring`), in turns so
 * drift of a shared machine hits each alike; the best round's mean per deduction, in process CPU
 * time (steadier than the wall clock on a shared machine).
 *   npx tsx --expose-gc bench/alerts.ts      → one JSON line: BenchRow[]
 * BENCH_GRANTS (default 10,000) open grants; BENCH_OPS (default 200) deductions per round.
 */
import { core } from "./pkg.js";
import type { BenchRow } from "./lib.js";
import type { AlertThreshold } from "../src/models-public.js";

const GRANTS = Number(process.env.BENCH_GRANTS ?? 10_000);
const OPS = Number(process.env.BENCH_OPS ?? 200);
const ROUNDS = 5;
const DAY = 86_400_000;

const thresholds = (n: number): AlertThreshold[] =>
  Array.from({ length: n }, (_, i) =>
    i % 2 === 0
      ? { id: `pct${i}`, kind: "left_percent" as const, atOrBelow: 1 + (i % 10) }
      : { id: `exp${i}`, kind: "expiring" as const, withinDays: 1 + i, atOrAbove: 1e12 },
  );

const manager = await core.createCreditManager({ notifications: {} });
const { credits, notifications } = manager;
const modes = { none: 0, one: 1, many: 32 } as const;
const now = Date.now();
for (const [mode, n] of Object.entries(modes)) {
  const u = `alerts-${mode}`;
  for (let i = 0; i < GRANTS; i++)
    await credits.addCredits(u, 1_000_000, { expiresAt: new Date(now + (1 + (i % 60)) * DAY) });
  await notifications.setAlerts(u, n === 0 ? [] : thresholds(n));
}

const best: Record<keyof typeof modes, number> = { none: Infinity, one: Infinity, many: Infinity };
for (let r = 0; r < ROUNDS; r++) {
  for (const mode of Object.keys(modes) as (keyof typeof modes)[]) {
    (globalThis as { gc?: () => void }).gc?.();
    const started = process.cpuUsage();
    for (let i = 0; i < OPS; i++) await credits.deductCredits(`alerts-${mode}`, 1);
    const used = process.cpuUsage(started);
    best[mode] = Math.min(best[mode], (used.user + used.system) / 1000 / OPS);
  }
}
await manager.close();

const label = `deductCredits (memory, one account, ${GRANTS.toLocaleString("en")} open grants)`;
const rows: BenchRow[] = (Object.keys(modes) as (keyof typeof modes)[]).map((mode) => ({
  backend: "memory",
  scenario: `alerts: ${label}, ${modes[mode]} left_percent/expiring thresholds`,
  opsPerSec: 1000 / best[mode],
  note: `${best[mode].toFixed(3)} ms CPU per deduction (best round's mean)`,
}));
console.log(JSON.stringify(rows));
