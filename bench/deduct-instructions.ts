/**
 * Machine instructions per `deductCredits`, counted with valgrind's callgrind (docs/benchmarks.md,
 * "Spend limits: instructions per deduction"): a plain spend (neither spender nor limits), and one
 * naming a spender and a feature under two limits with a scoped grant present, which should cost
 * at most 1.25× that plain spend.
 *
 * Each figure is the callgrind driver's difference of two processes (bench/callgrind.ts, the one
 * bench/instructions.ts — the CI guard — uses): bench/instructions-child.mjs on a checkout's built
 * package deducts `warm` times in one and `warm + measured` in the other, and the difference over
 * `measured` is the instructions of warm deductions. V8 runs with the driver's flags
 * (`--single-threaded`, `--predictable`, fixed seeds, no worker pool), so a count repeats; V8's
 * optimizing compilers' instructions in the count are reported apart and left out of the figure.
 * Each checkout runs its built package (dist/: `npm run build` in it first).
 *
 *   tsx bench/deduct-instructions.ts [root ...]      (default: this checkout)
 *
 * The first root is the baseline: e.g. a `git worktree` of the commit before a change, built, with
 * node_modules (a symlink to this checkout's will do). Rows: "plain" on every root; "limits" and
 * "scoped" on roots that have scoped grants. Environment: BENCH_DEDUCT_STORES (default
 * "memory,sqlite"), BENCH_DEDUCT_ROUNDS (default 1: each figure counted that many times, rounds
 * alternating over the rows), BENCH_DEDUCT_JOBS (processes at once, default 2); per store
 * BENCH_DEDUCT_WARM / BENCH_DEDUCT_MEASURED (memory 6,000 / 2,000, as the guard) and
 * BENCH_DEDUCT_SQLITE_WARM / BENCH_DEDUCT_SQLITE_MEASURED (3,000 / 1,000). BENCH_DEDUCT_JSON=1
 * prints BenchRow[] as one JSON line (for `npm run bench`) instead of the table.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { NODE_FLAGS, type PerOp, perOperationTasks, pool } from "./callgrind.js";
import type { BenchRow } from "./lib.js";

const here = dirname(fileURLToPath(import.meta.url));
type Store = "memory" | "sqlite";
type Variant = "plain" | "limits" | "scoped";

/** Instructions per deduction: all, and of them V8's optimizing compilers'. */
interface Count {
  all: number;
  compiling: number;
}

interface Row {
  root: string;
  store: Store;
  variant: Variant;
  counts: Count[];
}

const describe: Record<Variant, string> = {
  plain: "plain (no spender, no limits)",
  limits: "spender and feature, two limits",
  scoped: "spender and feature, two limits, a scoped grant",
};

/** Instructions of one warm deduction of `row` (the driver's two processes). */
async function instructions(dir: string, row: Row, tag: string, warm: number, measured: number): Promise<Count> {
  const { tasks, result } = perOperationTasks(
    dir,
    join(here, "instructions-child.mjs"),
    [row.root, `deduct-${row.variant}`, row.store],
    tag,
    warm,
    measured,
  );
  const [a, b] = await Promise.all([tasks[0](), tasks[1]()]);
  const p: PerOp = result(a, b);
  return { all: p.instructions + p.compiling, compiling: p.compiling };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};

export interface Counted {
  /** `perDeduction`: the median over rounds of the count without the optimizing compilers; `all` with them. */
  rows: (Row & { perDeduction: number; all: number; spread: number })[];
  settings: string;
}

/** Counts every row, `rounds` times, rounds alternating over the rows. */
export async function count(roots: string[]): Promise<Counted> {
  const stores = (process.env.BENCH_DEDUCT_STORES ?? "memory,sqlite").split(",") as Store[];
  const rounds = Number(process.env.BENCH_DEDUCT_ROUNDS ?? 1);
  const jobs = Number(process.env.BENCH_DEDUCT_JOBS ?? 2);
  const sizes: Record<Store, { warm: number; measured: number }> = {
    memory: {
      warm: Number(process.env.BENCH_DEDUCT_WARM ?? 6000),
      measured: Number(process.env.BENCH_DEDUCT_MEASURED ?? 2000),
    },
    sqlite: {
      warm: Number(process.env.BENCH_DEDUCT_SQLITE_WARM ?? 3000),
      measured: Number(process.env.BENCH_DEDUCT_SQLITE_MEASURED ?? 1000),
    },
  };
  for (const root of roots)
    if (!existsSync(join(root, "dist/index.js"))) throw new Error(`${root}: no dist/index.js (build it first)`);
  const rows: Row[] = [];
  for (const store of stores)
    for (const root of roots) {
      // Scoped grants and limits came with the domain's scope.ts (checkouts before them lack it); the
      // core moved under src/core/ later.
      const scoped = ["src/core/domain/scope.ts", "src/domain/scope.ts"].some((f) => existsSync(join(root, f)));
      for (const variant of ["plain", ...(scoped ? ["limits", "scoped"] : [])] as Variant[])
        rows.push({ root, store, variant, counts: [] });
    }
  const dir = mkdtempSync(join(tmpdir(), "deduct-instr-"));
  try {
    const tasks: (() => Promise<void>)[] = [];
    for (let r = 0; r < rounds; r++)
      (r % 2 === 0 ? rows : [...rows].reverse()).forEach((row, i) => {
        const { warm, measured } = sizes[row.store];
        tasks.push(async () => {
          row.counts.push(await instructions(dir, row, `r${r}-${i}`, warm, measured));
        });
      });
    // (Each task runs its two processes at once.)
    await pool(tasks, Math.max(1, Math.floor(jobs / 2)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const settings = stores.map((s) => `${s} ${sizes[s].warm} warm-up + ${sizes[s].measured} counted`).join(", ");
  return {
    rows: rows.map((r) => {
      const steady = r.counts.map((c) => c.all - c.compiling);
      const perDeduction = median(steady);
      return {
        ...r,
        perDeduction,
        all: median(r.counts.map((c) => c.all)),
        spread: (Math.max(...steady) - Math.min(...steady)) / perDeduction,
      };
    }),
    settings: `${settings}, ${rounds} rounds, node ${NODE_FLAGS.join(" ")}`,
  };
}

const k = (n: number) => Math.round(n).toLocaleString("en");
const rounds = (r: Row) => r.counts.map((c) => k(c.all - c.compiling)).join(", ");

/**
 * The two targets as bench rows, ratios to the first root's plain spend on each store.
 * `names`: a label per root (default its path).
 */
export function benchRows(counted: Counted, names: Record<string, string> = {}): BenchRow[] {
  const out: BenchRow[] = [];
  const name = (root: string) => names[root] ?? root;
  for (const store of new Set(counted.rows.map((r) => r.store))) {
    const mine = counted.rows.filter((r) => r.store === store);
    const base = mine[0];
    if (base === undefined) continue;
    for (const r of mine) {
      const ratio = r.perDeduction / base.perDeduction;
      const row: BenchRow = {
        backend: store,
        scenario: `instructions/deduction (callgrind) ${k(r.perDeduction)}: ${name(r.root)}, ${describe[r.variant]}`,
        opsPerSec: 0,
        note: `${k(r.perDeduction)} instructions/deduction without V8's optimizing compilers (rounds ${rounds(r)}; spread ${(r.spread * 100).toFixed(2)} %; with them ${k(r.all)})`,
      };
      if (r !== base) {
        row.baseline = `${name(base.root)}, plain`;
        row.ratio = base.perDeduction / r.perDeduction;
        if (r.variant === "plain") {
          row.target = "instructions <= 1.03x the baseline's plain spend";
          row.met = ratio <= 1.03;
        } else if (r.variant === "scoped") {
          row.target = "instructions <= 1.25x the baseline's plain spend";
          row.met = ratio <= 1.25;
        }
        row.note += `; ${ratio.toFixed(3)}x the baseline's instructions`;
      }
      out.push(row);
    }
  }
  return out;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  execFileSync("valgrind", ["--version"], { stdio: "ignore" }); // valgrind is there, or this fails first
  const roots = process.argv.slice(2).length ? process.argv.slice(2).map((r) => resolve(r)) : [process.cwd()];
  const counted = await count(roots);
  if (process.env.BENCH_DEDUCT_JSON === "1") {
    const tree = resolve(here, "..");
    console.log(
      JSON.stringify(benchRows(counted, Object.fromEntries(roots.map((r) => [r, r === tree ? "this tree" : r])))),
    );
  } else {
    console.log(`callgrind, ${counted.settings}`);
    console.log(
      "| store | root | spend | instructions / deduction without the optimizing compilers (rounds) | spread | with them | ratio to the first root's plain |",
    );
    console.log("| --- | --- | --- | ---: | ---: | ---: | ---: |");
    for (const r of counted.rows) {
      const base = counted.rows.find((b) => b.store === r.store) as Counted["rows"][number];
      console.log(
        `| ${r.store} | ${r.root} | ${describe[r.variant]} | ${k(r.perDeduction)} (${rounds(r)}) | ${(r.spread * 100).toFixed(2)} % | ${k(r.all)} | ${(r.perDeduction / base.perDeduction).toFixed(3)} |`,
      );
    }
  }
}
