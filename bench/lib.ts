import { readFileSync } from "node:fs";

/**
 * CPU time of a process's main (event-loop) thread in µs, from /proc (Linux), else null. Steadier
 * than ops/s on a shared machine: another process's load slows the wall clock far more than it
 * changes the CPU an operation needs. Read from the scheduler's own count (`schedstat`, in ns)
 * where the kernel keeps one, else from `stat` in clock ticks of 10 ms.
 */
export function mainThreadCpu(pid: number | undefined = process.pid): number | null {
  if (pid === undefined || process.platform !== "linux") return null;
  try {
    const ns = Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").split(" ", 1)[0]);
    if (Number.isFinite(ns) && ns > 0) return ns / 1000;
  } catch {
    // (no schedstat: the ticks below)
  }
  try {
    const fields = (readFileSync(`/proc/${pid}/task/${pid}/stat`, "utf8").split(") ")[1] ?? "").split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / 100; // clock ticks of 1/100 s (USER_HZ)
  } catch {
    return null;
  }
}

/**
 * The whole machine's CPU time from /proc/stat (Linux), in ticks: all of it, and what the host
 * gave to other guests while this one wanted to run ("steal"); null elsewhere. On a shared VM the
 * stolen share is what moves identical runs apart: printed beside each part of the run.
 */
export function machineCpu(): { total: number; steal: number } | null {
  if (process.platform !== "linux") return null;
  try {
    // cpu  user nice system idle iowait irq softirq steal …
    const fields = (readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "")
      .trim()
      .split(/\s+/)
      .slice(1, 9)
      .map(Number);
    if (fields.length < 8 || fields.some((n) => !Number.isFinite(n))) return null;
    return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7] as number };
  } catch {
    return null;
  }
}

/** The share of the machine's CPU time stolen by the host between two `machineCpu()` readings, as "n.n%" (null if unknown). */
export function stolen(before: ReturnType<typeof machineCpu>, after: ReturnType<typeof machineCpu>): string | null {
  if (before === null || after === null || after.total <= before.total) return null;
  return `${((100 * (after.steal - before.steal)) / (after.total - before.total)).toFixed(1)}%`;
}

/** One row of the `npm run bench` table. Figures are ratios against a baseline measured in the same run. */
export interface BenchRow {
  /** Which store ("memory", "postgres", …). */
  backend: string;
  /** What was measured, e.g. "deductCredits (16 callers, 1,000 users)". */
  scenario: string;
  /** Operations per second. */
  opsPerSec: number;
  /** Name of the baseline row this one is compared with (same run), if any. */
  baseline?: string;
  /** opsPerSec / baseline opsPerSec. */
  ratio?: number;
  /** Target, e.g. ">= 0.25 of baseline" or ">= 150,000 ops/s", and whether it was met. */
  target?: string;
  met?: boolean;
  note?: string;
}

/** Runs `op` `count` times with `concurrency` callers; returns ops/s. */
export async function measure(
  count: number,
  concurrency: number,
  op: (i: number) => Promise<unknown>,
): Promise<number> {
  let next = 0;
  const start = process.hrtime.bigint();
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= count) return;
      await op(i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return count / seconds;
}

export function formatOps(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

/** Prints the rows as a Markdown table (pasteable into the README). */
export function printTable(rows: readonly BenchRow[]): void {
  const header = ["backend", "scenario", "ops/s", "vs baseline", "target", "met"];
  const lines = rows.map((r) => [
    r.backend,
    r.scenario,
    formatOps(r.opsPerSec),
    r.ratio === undefined ? "" : `${r.ratio.toFixed(2)}× ${r.baseline ?? ""}`.trim(),
    r.target ?? "",
    r.met === undefined ? "" : r.met ? "yes" : "NO",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? "").length)));
  const row = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  console.log(row(header));
  console.log(`| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`);
  for (const l of lines) console.log(row(l));
  for (const r of rows) if (r.note) console.log(`- ${r.backend} / ${r.scenario}: ${r.note}`);
}
