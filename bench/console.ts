/**
 * The console's account page with a large journal, in a process of its own:
 *   tsx bench/console.ts [entries]   (default 1,000,000; BENCH_CONSOLE_ENTRIES)
 * One account gets `entries` journal entries (in memory: deductions, a few holds, some grants);
 * a small account (100 entries) is the baseline. Each page is requested 30 times through the
 * Fetch handler (server time: request in, whole HTML body out), alternating; the median is
 * reported. Target: the big account's page under 200 ms (docs/console.md). Prints one JSON line.
 */
import { core, consoleEntry } from "./pkg.js";
import type { BenchRow } from "./lib.js";

const { createCreditManager } = core;
const entries = Number(process.argv[2] ?? process.env.BENCH_CONSOLE_ENTRIES ?? 1_000_000);
const ROUNDS = 30;

const manager = await createCreditManager({ ledger: false });
const { credits } = manager;
const t0 = performance.now();
await credits.addCredits("busy", 1e12, { description: "big grant" });
for (let i = 0; i < 5; i++)
  await credits.addCredits("busy", 1000, { expiresAt: new Date(Date.now() + (i + 1) * 86_400_000), priority: 1 });
for (let i = 0; i < 3; i++) await credits.reserveCredits("busy", 10);
for (let seq = 10; seq <= entries; seq++)
  await credits.deductCredits("busy", 1, { metadata: { model: seq % 2 ? "gpt-4o-mini" : "tiny-1" } });
await credits.addCredits("small", 10_000);
for (let i = 1; i < 100; i++) await credits.deductCredits("small", 1);
const prefill = (performance.now() - t0) / 1000;

const handler = consoleEntry.createConsoleHandler(manager, { authorize: () => ({ role: "admin", actor: "bench" }) });
const open = async (user: string): Promise<number> => {
  const t = performance.now();
  const res = await handler(new Request(`http://bench.local/console/accounts/${user}`));
  const body = await res.text();
  if (res.status !== 200 || !body.includes("journal-table"))
    throw new Error(`bench: page of ${user} answered ${res.status}`);
  return performance.now() - t;
};
const times: Record<string, number[]> = { busy: [], small: [] };
for (let i = 0; i < 3; i++) {
  await open("busy");
  await open("small");
}
for (let r = 0; r < ROUNDS; r++)
  for (const u of r % 2 ? ["busy", "small"] : ["small", "busy"]) times[u]?.push(await open(u));
await manager.close();
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const small = median(times.small as number[]);
const busy = median(times.busy as number[]);
const baseline = "console: account page (100 entries)";
const rows: BenchRow[] = [
  {
    backend: "memory",
    scenario: baseline,
    opsPerSec: 1000 / small,
    note: `${small.toFixed(1)} ms median of ${ROUNDS}`,
  },
  {
    backend: "memory",
    scenario: `console: account page (${entries.toLocaleString("en-US")} entries)`,
    opsPerSec: 1000 / busy,
    baseline,
    ratio: small / busy,
    target: "< 200 ms server time",
    met: busy < 200,
    note: `${busy.toFixed(1)} ms median of ${ROUNDS} (max ${Math.max(...(times.busy as number[])).toFixed(1)}); journal built in ${prefill.toFixed(0)} s`,
  },
];
console.log(JSON.stringify(rows));
