/**
 * The in-memory deduction's floor (docs/benchmarks.md, "In memory",
 * against its floor): `deductCredits` of the built package (memory store, JSONL ledger
 * file on) beside a hand-written deduction that does only what a correct one must — find the
 * account, check its balance, burn down its grants in order, build the journal entry and keep it,
 * chain SHA-256 over the previous hash and the entry's canonical JSON, append the JSON line to a
 * buffered file — through the same async harness, 1,000 accounts, at 1 and at 16 callers.
 * The two run in alternating rounds (the order reversed every other round); each round's ratio is
 * `deductCredits`' ops/s over the floor's, and the main thread's CPU per operation is printed
 * beside it (the library writes its ledger file on a worker thread, the floor on the main thread).
 * The floor's code is bench/floor-deduct.mjs; the instruction guard counts it too
 * (`tsx bench/instructions.ts --case floor --case deduct-plain`, without a file on either side).
 *
 *   tsx bench/floor.ts        (BENCH_FLOOR_OPS per round, default 20,000; BENCH_FLOOR_ROUNDS, default 6)
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createFloor } from "./floor-deduct.mjs";
import { core } from "./pkg.js";
import { mainThreadCpu, measure } from "./lib.js";

const USERS = 1000;
const OPS = Number(process.env.BENCH_FLOOR_OPS ?? 20_000);
const ROUNDS = Number(process.env.BENCH_FLOOR_ROUNDS ?? 6);

const dir = mkdtempSync(join(tmpdir(), "cm-floor-"));
const users = Array.from({ length: USERS }, (_, i) => `user-${i}`);
const pick = (i: number) => users[(i * 7919) % USERS] as string;

// --- The floor (bench/floor-deduct.mjs, shared with the instruction guard's `floor` case) --------

const floor = createFloor(join(dir, "floor.jsonl"));
for (const u of users) floor.open(u, 1e12);

// --- The library --------------------------------------------------------------------------------

const manager = await core.createCreditManager({ ledger: { filePath: join(dir, "ledger.jsonl") } });
const { credits } = manager;
for (const u of users) await credits.addCredits(u, 1e12);

const ops = {
  floor: (i: number) => floor.deduct(pick(i), 1),
  deductCredits: (i: number) => credits.deductCredits(pick(i), 1),
};

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}
const range = (xs: readonly number[], d: number) => `${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}`;

console.log(
  `| callers | floor ops/s | deductCredits ops/s | ratio (median; range) | main-thread µs/op floor / deductCredits |`,
);
console.log(`| --- | --- | --- | --- | --- |`);
let offset = 0;
for (const callers of [1, 16]) {
  // Warm both.
  for (const op of Object.values(ops)) await measure(OPS / 2, callers, (i) => op(i + (offset += 1)));
  const rate: Record<keyof typeof ops, number[]> = { floor: [], deductCredits: [] };
  const cpu: Record<keyof typeof ops, number[]> = { floor: [], deductCredits: [] };
  const ratios: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const order = (round % 2 === 0 ? ["floor", "deductCredits"] : ["deductCredits", "floor"]) as (keyof typeof ops)[];
    for (const k of order) {
      const base = offset;
      offset += OPS;
      const before = mainThreadCpu();
      rate[k].push(await measure(OPS, callers, (i) => ops[k](i + base)));
      const after = mainThreadCpu();
      if (before !== null && after !== null) cpu[k].push((after - before) / OPS);
    }
    ratios.push((rate.deductCredits.at(-1) as number) / (rate.floor.at(-1) as number));
  }
  await manager.ledger.flush();
  floor.flush();
  console.log(
    `| ${callers} | ${Math.round(median(rate.floor)).toLocaleString("en-US")} | ${Math.round(median(rate.deductCredits)).toLocaleString("en-US")} | ` +
      `${median(ratios).toFixed(2)}× (${range(ratios, 2)}) | ` +
      (cpu.floor.length ? `${median(cpu.floor).toFixed(2)} / ${median(cpu.deductCredits).toFixed(2)}` : "—") +
      " |",
  );
}
floor.close();
await manager.close();
rmSync(dir, { recursive: true, force: true });
