/**
 * The JSONL ledger's file writer: its worker thread (`LedgerFile`, what ships) against pino's own
 * writer, sonic-boom (bench/ledger-sonic.ts), asynchronous (`fs.write` on libuv's pool) and
 * synchronous — in one process, in alternating rounds, best round of each:
 *
 * - "writer": chunks of 16 journal entries' texts (one event-loop turn of 16 callers), one chunk
 *   per turn, until 60,000 lines are in the file; the figure is lines per second of event-loop CPU
 *   (the thread's or libuv's own CPU is not the event loop's), wall time in the note;
 * - "deductCredits": a credit service over the in-memory store with the ledger file on through each
 *   writer, 64 callers; ops/s.
 *
 * The writers are internal, so this runs the sources (tsx): `tsx bench/ledger-writer.ts`; prints its
 * rows as one JSON line for bench/index.ts. Linux (the event loop's CPU is read from /proc).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { canonicalEntry } from "../src/core/domain/hash.js";
import { LedgerFile } from "../src/core/ledger/file.js";
import { LedgerLogger, type LedgerFileLike } from "../src/core/ledger/index.js";
import { CreditService, InMemoryDbManager } from "../src/index.js";
import { SonicLedgerFile } from "./ledger-sonic.js";
import { mainThreadCpu, measure, type BenchRow } from "./lib.js";

const LINES = Number(process.env.BENCH_LEDGER_LINES ?? 60_000);
const PER_CHUNK = 16;
const ROUNDS = Number(process.env.BENCH_LEDGER_ROUNDS ?? 4);
const OPS = Number(process.env.BENCH_OPS ?? 30_000);
const dir = mkdtempSync(join(tmpdir(), "cm-bench-ledger-"));

type Factory = (path: string, failed: (error: Error) => void) => LedgerFileLike;
const failed = (error: Error) => {
  throw error;
};
const writers: { name: string; make: Factory }[] = [
  { name: "worker thread (LedgerFile, current)", make: (p, f) => new LedgerFile(p, f) },
  { name: "sonic-boom, async", make: (p, f) => new SonicLedgerFile(p, f, false) },
  { name: "sonic-boom, sync", make: (p, f) => new SonicLedgerFile(p, f, true) },
];

// The chunks as the ledger hands them over: canonical text and hash per entry, newline-separated.
const chunks: string[] = [];
for (let c = 0; c < LINES / PER_CHUNK; c++) {
  const parts: string[] = [];
  for (let i = 0; i < PER_CHUNK; i++) {
    const n = c * PER_CHUNK + i;
    parts.push(
      canonicalEntry({
        id: `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`,
        userId: `user-${n % 1000}`,
        seq: n,
        type: "deduct",
        amount: 1,
        balanceAfter: 1e12 - n,
        reservedAfter: 0,
        debtAfter: 0,
        grants: [{ grantId: `grant-${n % 1000}`, amount: 1 }],
        reservationId: null,
        idempotencyKey: null,
        fingerprint: null,
        correlationId: null,
        description: null,
        metadata: {},
        createdAt: new Date(1_700_000_000_000 + n),
        prevHash: "a".repeat(64),
      }),
      "b".repeat(64),
    );
  }
  chunks.push(parts.join("\n"));
}
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

async function writerRound(make: Factory, file: string): Promise<{ cpuPerLine: number; wallPerLine: number }> {
  const w = make(file, failed);
  await w.reopen();
  const cpu0 = mainThreadCpu() as number;
  const t0 = performance.now();
  for (const chunk of chunks) {
    w.write(chunk);
    await turn();
  }
  await w.flush();
  const wall = performance.now() - t0;
  const cpu = (mainThreadCpu() as number) - cpu0;
  await w.close();
  const lines = readFileSync(file, "utf8").split("\n").length - 1;
  if (lines !== chunks.length * PER_CHUNK)
    throw new Error(`${file}: ${lines} lines, expected ${chunks.length * PER_CHUNK}`);
  rmSync(file);
  return { cpuPerLine: cpu / (chunks.length * PER_CHUNK), wallPerLine: (wall * 1000) / (chunks.length * PER_CHUNK) };
}

async function deductRound(make: Factory, file: string): Promise<number> {
  const db = new InMemoryDbManager();
  const ledger = new LedgerLogger({ db, filePath: file, file: make });
  const credits = new CreditService({ db, ledger });
  for (let u = 0; u < 1000; u++) await credits.addCredits(`user-${u}`, 1e12);
  const opsPerSec = await measure(OPS, 64, (i) => credits.deductCredits(`user-${(i * 7919) % 1000}`, 1));
  await ledger.close();
  rmSync(file);
  return opsPerSec;
}

const best = writers.map(() => ({ cpuPerLine: Infinity, wallPerLine: Infinity, deduct: 0 }));
for (let r = 0; r < ROUNDS; r++) {
  for (const [i, w] of writers.entries()) {
    const b = best[i] as (typeof best)[number];
    const one = await writerRound(w.make, join(dir, `w-${i}.jsonl`));
    b.cpuPerLine = Math.min(b.cpuPerLine, one.cpuPerLine);
    b.wallPerLine = Math.min(b.wallPerLine, one.wallPerLine);
    b.deduct = Math.max(b.deduct, await deductRound(w.make, join(dir, `d-${i}.jsonl`)));
  }
}
rmSync(dir, { recursive: true, force: true });

const rows: BenchRow[] = [];
const base = best[0] as (typeof best)[number];
for (const [i, w] of writers.entries()) {
  const b = best[i] as (typeof best)[number];
  const linesPerCpuSecond = 1e6 / b.cpuPerLine;
  rows.push({
    backend: "memory",
    scenario: `ledger file writer: ${w.name}, lines per event-loop CPU second`,
    opsPerSec: linesPerCpuSecond,
    ...(i === 0
      ? {}
      : {
          baseline: "thread",
          ratio: linesPerCpuSecond / (1e6 / base.cpuPerLine),
          target: ">= 1.00 of thread",
          met: base.cpuPerLine >= b.cpuPerLine,
        }),
    note: `event loop ${b.cpuPerLine.toFixed(2)} µs/line, wall ${b.wallPerLine.toFixed(2)} µs/line until flushed (${LINES.toLocaleString("en-US")} lines, ${PER_CHUNK} a turn, best of ${ROUNDS}, src/)`,
  });
}
for (const [i, w] of writers.entries()) {
  const b = best[i] as (typeof best)[number];
  rows.push({
    backend: "memory",
    scenario: `deductCredits, ledger file by ${w.name} (64 callers)`,
    opsPerSec: b.deduct,
    ...(i === 0
      ? {}
      : {
          baseline: "thread",
          ratio: b.deduct / base.deduct,
          target: ">= 1.00 of thread",
          met: b.deduct >= base.deduct,
        }),
  });
}
console.log(JSON.stringify(rows));
