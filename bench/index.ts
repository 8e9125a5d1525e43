/**
 * npm run bench — prints a table. Figures are ratios against baselines measured in the same run.
 * In-memory at journal sizes 1k, 100k and 1M (each in its own process, for a clean peak RSS);
 * PostgreSQL and MongoDB when CREDIT_PG_URL / CREDIT_MONGO_URI are set; HTTP requests/s with and
 * without metering (bench/http.ts) always.
 * BENCH_SIZES=1000,100000 limits the sizes; BENCH_OPS sets operations per measurement.
 * Jobs (bench/jobs.ts): BENCH_JOBS_GRANTS / BENCH_JOBS_SUBS shrink them, BENCH_JOBS=0 skips them.
 * The ledger file's writer, thread against sonic-boom (bench/ledger-writer.ts, from src/):
 * BENCH_LEDGER_WRITER=0 skips it.
 * Diagnostics channels (bench/diagnostics.ts): BENCH_DIAGNOSTICS=0 skips them.
 * Bytes per journal entry on PostgreSQL and MongoDB, and the idempotency index under the retention
 * job (bench/rows.ts, when their URLs are set): BENCH_ROWS=0 skips them, BENCH_ROWS_OPS sets the deductions.
 * Audit from the first entry against from a checkpoint (bench/audit.ts): BENCH_AUDIT=0 skips it.
 * The console's pages on an account of 200,000 entries (bench/console.ts): BENCH_CONSOLE=0 skips it.
 * PostgreSQL partitioned by time (bench/partitions.ts, with CREDIT_PG_URL): BENCH_PARTITIONS=0 skips it.
 * Spend limits against a plain deduction (bench/limits.ts): BENCH_LIMITS=0 skips it.
 * The customer's state, 1,000 accounts a page on PostgreSQL (bench/customer-state.ts, with
 * CREDIT_PG_URL): BENCH_CUSTOMER_STATE=0 skips it.
 * Instructions per deduction under callgrind (bench/deduct-instructions.ts; plain, two limits, two
 * limits and a scoped grant; memory and SQLite; about 10 minutes): opt-in, BENCH_INSTRUCTIONS=1 with
 * valgrind on the PATH; BENCH_DEDUCT_BASE=<a built checkout> adds its plain spend as the baseline.
 * Credit leases against the exact path (bench/leases.ts; PostgreSQL with CREDIT_PG_URL): BENCH_LEASES=0 skips it.
 * The node metering middleware's glue per request, in process (bench/glue.ts): always.
 * The SQLite store against a raw better-sqlite3 write (bench/sqlite.ts): BENCH_SQLITE=0 skips it.
 * Usage reports on a big journal (bench/usage.ts; PostgreSQL, SQLite, MongoDB, memory): BENCH_USAGE=0 skips it.
 * Every row measures the built package in dist/ (`npm run bench` builds it first; see bench/pkg.ts),
 * or the sources with BENCH_SOURCE=1.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { machineCpu, printTable, stolen, type BenchRow } from "./lib.js";
import { measured } from "./pkg.js";

const here = dirname(fileURLToPath(import.meta.url));
const sizes = (process.env.BENCH_SIZES ?? "1000,100000,1000000").split(",").map(Number);
const rows: BenchRow[] = [];
const notes: string[] = [];
const deductAt = new Map<number, number>();

/** Per part of the run, the share of CPU the host stole from this machine (one note line at the end). */
const steal: string[] = [];
function stealNote(part: string, before: ReturnType<typeof machineCpu>): void {
  const share = stolen(before, machineCpu());
  if (share !== null) steal.push(`${part} ${share}`);
}
const runStart = machineCpu();

for (const size of sizes) {
  const sizeStart = machineCpu();
  const out = execFileSync(
    process.execPath,
    ["--import", "tsx", "--expose-gc", join(here, "memory.ts"), String(size)],
    {
      encoding: "utf8",
      maxBuffer: 1 << 20,
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const result = JSON.parse(out.trim().split("\n").pop() as string) as {
    size: number;
    rows: BenchRow[];
    peakRssMb: number;
    prefillSeconds: number;
  };
  for (const r of result.rows) {
    if (r.scenario.startsWith("deductCredits (")) {
      r.target = ">= 150,000 ops/s";
      r.met = r.opsPerSec >= 150_000;
      deductAt.set(size, r.opsPerSec);
    }
    rows.push(r);
  }
  const label = `journal ${size.toLocaleString("en-US")}`;
  stealNote(label, sizeStart);
  notes.push(
    `${label}: peak RSS ${Math.round(result.peakRssMb)} MB` +
      (size >= 1_000_000 ? ` (target <= 1,536 MB: ${result.peakRssMb <= 1536 ? "met" : "NOT met"})` : "") +
      `, prefill ${result.prefillSeconds.toFixed(1)} s`,
  );
}

const small = deductAt.get(Math.min(...deductAt.keys()));
const large = deductAt.get(Math.max(...deductAt.keys()));
if (small !== undefined && large !== undefined && deductAt.size > 1) {
  const slower = 1 - large / small;
  notes.push(
    `deductCredits at the largest journal is ${(slower * 100).toFixed(1)}% ${slower >= 0 ? "slower" : "faster"} than at the smallest (target: no more than 20% slower: ${slower <= 0.2 ? "met" : "NOT met"})`,
  );
}

// The JSONL ledger's writer: its worker thread against pino's sonic-boom, in one process of its own.
if (process.env.BENCH_LEDGER_WRITER !== "0") {
  const start = machineCpu();
  const out = execFileSync(process.execPath, ["--import", "tsx", join(here, "ledger-writer.ts")], {
    encoding: "utf8",
    maxBuffer: 1 << 20,
    stdio: ["ignore", "pipe", "inherit"],
  });
  rows.push(...(JSON.parse(out.trim().split("\n").pop() as string) as BenchRow[]));
  stealNote("ledger writer", start);
} else {
  notes.push("ledger writer: skipped (BENCH_LEDGER_WRITER=0)");
}

for (const [env, file] of [
  ["CREDIT_PG_URL", "postgres.ts"],
  ["CREDIT_MONGO_URI", "mongodb.ts"],
] as const) {
  if (!process.env[env]) {
    notes.push(`${file.replace(".ts", "")}: skipped (set ${env})`);
    continue;
  }
  if (!existsSync(join(here, file))) continue;
  const mod = (await import(`./${file.replace(".ts", ".js")}`)) as { run: () => Promise<BenchRow[]> };
  rows.push(...(await mod.run()));
}

// PostgreSQL partitioned by time against unpartitioned (docs/running-for-years.md).
if (process.env.BENCH_PARTITIONS === "0") notes.push("partitions: skipped (BENCH_PARTITIONS=0)");
else if (process.env.CREDIT_PG_URL) rows.push(...(await (await import("./partitions.js")).run()));

// Usage reports (docs/usage.md): one account's month by day by model, the fleet's top 100 accounts.
if (process.env.BENCH_USAGE === "0") notes.push("usage: skipped (BENCH_USAGE=0)");
else rows.push(...(await (await import("./usage.js")).run()));

// Bytes per journal entry (docs/running-for-years.md).
if (process.env.BENCH_ROWS === "0") notes.push("rows: skipped (BENCH_ROWS=0)");
else if (process.env.CREDIT_PG_URL || process.env.CREDIT_MONGO_URI)
  rows.push(...(await (await import("./rows.js")).run()));

/** Runs a bench script in a process of its own (a clean heap) and returns the rows of its last line. */
function childRows(args: string[]): BenchRow[] {
  const out = execFileSync(process.execPath, ["--import", "tsx", "--expose-gc", ...args], {
    encoding: "utf8",
    maxBuffer: 1 << 20,
    stdio: ["ignore", "pipe", "inherit"],
    env: process.env,
  });
  return JSON.parse(out.trim().split("\n").pop() as string) as BenchRow[];
}

// Jobs (expiry and renewals at scale), in their own process for a clean heap.
if (process.env.BENCH_JOBS !== "0") {
  for (const part of ["expire", "renew", "databases"])
    rows.push(...childRows(["--max-old-space-size=6144", join(here, "jobs-main.ts"), part]));
} else {
  notes.push("jobs: skipped (BENCH_JOBS=0)");
}
// Audit of one account with 1M entries, from its first entry against from its latest checkpoint
// (bench/audit.ts, in memory, its own process). BENCH_AUDIT_ENTRIES sets the size, BENCH_AUDIT=0 skips it.
if (process.env.BENCH_AUDIT !== "0") rows.push(...childRows(["--max-old-space-size=6144", join(here, "audit.ts")]));
else notes.push("audit: skipped (BENCH_AUDIT=0)");
// The console's pages on an account of 200,000 journal entries (bench/console.ts: memory, SQLite,
// PostgreSQL; its own process). BENCH_CONSOLE_ENTRIES sets the size, BENCH_CONSOLE=0 skips it. It
// exits 1 when a page misses its bound: its rows are kept, and a note says so.
if (process.env.BENCH_CONSOLE !== "0") {
  try {
    rows.push(...childRows(["--max-old-space-size=6144", join(here, "console.ts")]));
  } catch (error) {
    const out = String((error as { stdout?: unknown }).stdout ?? "").trim();
    if (out === "") throw error;
    rows.push(...(JSON.parse(out.split("\n").pop() as string) as BenchRow[]));
    notes.push("console: a page missed its 200 ms bound (bench/console.ts exited 1)");
  }
} else notes.push("console: skipped (BENCH_CONSOLE=0)");
// The diagnostics channels: a deduction with no subscriber, with one, and with the OTel metrics
// (bench/diagnostics.ts, its own process; about 40 s). BENCH_DIAGNOSTICS=0 skips it.
if (process.env.BENCH_DIAGNOSTICS !== "0") rows.push(...childRows([join(here, "diagnostics.ts")]));
else notes.push("diagnostics: skipped (BENCH_DIAGNOSTICS=0)");
// Spend limits against a plain deduction (bench/limits.ts, its own process). BENCH_LIMITS=0 skips it.
if (process.env.BENCH_LIMITS !== "0") rows.push(...childRows([join(here, "limits.ts")]));
else notes.push("limits: skipped (BENCH_LIMITS=0)");
// The customer's state, 1,000 accounts a page (bench/customer-state.ts, its own process; PostgreSQL
// with CREDIT_PG_URL). BENCH_CUSTOMER_STATE=0 skips it.
if (process.env.BENCH_CUSTOMER_STATE !== "0") rows.push(...childRows([join(here, "customer-state.ts")]));
else notes.push("customer state: skipped (BENCH_CUSTOMER_STATE=0)");
// Instructions per deduction (bench/deduct-instructions.ts; opt-in: BENCH_INSTRUCTIONS=1, needs valgrind).
if (process.env.BENCH_INSTRUCTIONS === "1") {
  const base = process.env.BENCH_DEDUCT_BASE;
  const roots = [...(base ? [resolve(base)] : []), resolve(here, "..")];
  const out = execFileSync(process.execPath, ["--import", "tsx", join(here, "deduct-instructions.ts"), ...roots], {
    encoding: "utf8",
    maxBuffer: 1 << 20,
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, BENCH_DEDUCT_JSON: "1" },
  });
  rows.push(...(JSON.parse(out.trim().split("\n").pop() as string) as BenchRow[]));
} else notes.push("instructions per deduction (callgrind): skipped (opt-in: BENCH_INSTRUCTIONS=1)");
// Credit leases (bench/leases.ts, its own process; PostgreSQL rows with CREDIT_PG_URL). BENCH_LEASES=0 skips it.
if (process.env.BENCH_LEASES !== "0") rows.push(...childRows([join(here, "leases.ts")]));
else notes.push("leases: skipped (BENCH_LEASES=0)");
// The node middleware's own cost per request, in process (bench/glue.ts, its own process; about 10 s).
rows.push(...childRows([join(here, "glue.ts")]));
// HTTP with and without metering (in-memory store; always runs, about 3.5 min).
const httpStart = machineCpu();
const http = await import("./http.js");
rows.push(...(await http.run()));
notes.push(`HTTP load generator: ${http.loadGeneratorNote()}`);
stealNote("HTTP", httpStart);
// `credit-management serve` against the same handler mounted by hand (bench/serve.ts; about 20 s).
const serveStart = machineCpu();
rows.push(...(await (await import("./serve.js")).run()));
stealNote("serve", serveStart);

// The SQLite store's deduction against a raw better-sqlite3 write on the same kind of file (bench/sqlite.ts).
if (process.env.BENCH_SQLITE !== "0") {
  const start = machineCpu();
  rows.push(...(await (await import("./sqlite.js")).run()));
  stealNote("sqlite", start);
} else {
  notes.push("sqlite: skipped (BENCH_SQLITE=0)");
}

stealNote("whole run", runStart);
if (steal.length > 0) {
  notes.push(`CPU stolen by the host (other guests' share of this machine's time, /proc/stat): ${steal.join(", ")}`);
}

printTable(rows);
console.log("");
for (const n of notes) console.log(`- ${n}`);
console.log(
  `- node ${process.version}, ${(await import("node:os")).cpus().length} cores; JSONL ledger on for every in-memory row; measured: ${measured}`,
);
