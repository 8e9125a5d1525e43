/**
 * Audit of one busy account, from its first entry against from its latest checkpoint, in memory,
 * in a process of its own: tsx --expose-gc bench/audit.ts [entries]
 * The account gets `entries` journal entries (default 1,000,000; BENCH_AUDIT_ENTRIES): deductions,
 * and a checkpoint every 10,000 entries up to 10,000 entries before the end (the audit from the
 * latest checkpoint then replays as much as it ever does with `checkpointEvery: 10_000`). The two audits alternate, three rounds each;
 * the best round of each is reported as audits per second, the one from the first entry being the
 * baseline. Prints one JSON line: BenchRow[].
 */
import { core } from "./pkg.js";
import type { BenchRow } from "./lib.js";

const { createCreditManager } = core;
const entries = Number(process.argv[2] ?? process.env.BENCH_AUDIT_ENTRIES ?? 1_000_000);
const EVERY = 10_000;
const ROUNDS = 3;

const manager = await createCreditManager({ ledger: false });
const { credits } = manager;
await credits.addCredits("busy", 1e12);
// Deductions until the journal holds `entries` entries, with a checkpoint at every multiple of
// EVERY up to EVERY entries before the end: the latest one is then as far back as `checkpointEvery:
// 10_000` ever leaves it (the worst case of the audit from it).
for (let seq = 2; seq <= entries; seq++) {
  if (seq % EVERY === 0 && seq <= entries - EVERY) await credits.checkpoint("busy");
  else await credits.deductCredits("busy", 1);
}

const time = async (from: "genesis" | "checkpoint"): Promise<{ seconds: number; checked: number }> => {
  (globalThis as { gc?: () => void }).gc?.();
  const t0 = performance.now();
  const report = await credits.audit("busy", { from });
  const seconds = (performance.now() - t0) / 1000;
  if (!report.ok) throw new Error(`bench: audit from ${from} failed: ${report.problems.slice(0, 3).join("; ")}`);
  return { seconds, checked: report.entries };
};

const best = { genesis: Infinity, checkpoint: Infinity };
const checked = { genesis: 0, checkpoint: 0 };
for (let r = 0; r < ROUNDS; r++) {
  for (const from of r % 2 === 0 ? (["genesis", "checkpoint"] as const) : (["checkpoint", "genesis"] as const)) {
    const t = await time(from);
    best[from] = Math.min(best[from], t.seconds);
    checked[from] = t.checked;
  }
}
await manager.close();

const label = `1 account, ${entries.toLocaleString("en-US")} entries`;
const baseline = `audit from the first entry (${label})`;
const rows: BenchRow[] = [
  {
    backend: "memory",
    scenario: baseline,
    opsPerSec: 1 / best.genesis,
    note: `${best.genesis.toFixed(2)} s per audit; ${checked.genesis.toLocaleString("en-US")} entries replayed`,
  },
  {
    backend: "memory",
    scenario: `audit from the latest checkpoint (${label}, ${EVERY.toLocaleString("en-US")} back)`,
    opsPerSec: 1 / best.checkpoint,
    baseline,
    ratio: best.genesis / best.checkpoint,
    note: `${(best.checkpoint * 1000).toFixed(1)} ms per audit; ${checked.checkpoint.toLocaleString("en-US")} entries replayed`,
  },
];
console.log(JSON.stringify(rows));
