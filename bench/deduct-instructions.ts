/**
 * Machine instructions per `deductCredits` on the in-memory store, counted with valgrind's
 * callgrind: a count that holds still on a busy machine, for the spend-rule targets of
 * docs/teams-and-limits.md ("a spend with neither spender nor limits costs what it did before
 * them"; "a spend under two limits costs at most 1.25× a plain one").
 *
 * Each figure is the difference of two runs of the same process, one with `M` more deductions than
 * the other after the same warm-up, divided by `M`: start-up, module loading and the warm-up's
 * compilation cancel out (a first short run fills tsx's transform cache for both). Needs valgrind on the PATH; not part of `npm run bench` (a few minutes).
 *
 *   tsx bench/deduct-instructions.ts [root ...]      (default: this checkout)
 *
 * Each `root` is a checkout of this repository (its src/ is loaded through tsx), so a tree from
 * before a change and one after it are counted in the same run: e.g. a `git worktree` of the
 * older commit with its own node_modules. BENCH_DEDUCT_WARM (default 20,000) and
 * BENCH_DEDUCT_MEASURED (default 20,000) set the counts. Variants: "plain" (no spender, no limits)
 * on every root; "two limits" (an account limit and the spender's, with spender and feature named)
 * on roots that have `setLimits`.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type * as Library from "../src/index.js";

type Variant = "plain" | "limits";

/** The child: `deduct-instructions.ts child <root> <variant> <count>`. */
async function child(root: string, variant: Variant, count: number): Promise<void> {
  const lib = (await import(pathToFileURL(join(root, "src/index.ts")).href)) as typeof Library;
  const manager = await lib.createCreditManager({});
  const credits = manager.credits;
  await credits.addCredits("u", 1e12);
  const options: Record<string, unknown> = {};
  if (variant === "limits") {
    await credits.setLimits("u", [
      { amount: 1e12, period: "month" },
      { spender: "alice", amount: 1e12, period: "day" },
    ]);
    options.spender = "alice";
    options.feature = "chat";
  }
  for (let i = 0; i < count; i++) await credits.deductCredits("u", 1, options);
  await manager.close();
}

function instructions(root: string, variant: Variant, count: number, dir: string): number {
  const out = join(dir, `cg-${variant}-${count}-${Math.random().toString(36).slice(2)}`);
  const self = fileURLToPath(import.meta.url);
  execFileSync(
    "valgrind",
    [
      "-q",
      "--tool=callgrind",
      `--callgrind-out-file=${out}`,
      process.execPath,
      "--import",
      "tsx",
      self,
      "child",
      root,
      variant,
      String(count),
    ],
    { stdio: ["ignore", "ignore", "inherit"], cwd: root },
  );
  const summary = /^(?:summary|totals): (\d+)/m.exec(readFileSync(out, "utf8"));
  if (!summary) throw new Error(`no total in ${out}`);
  return Number(summary[1]);
}

if (process.argv[2] === "child") {
  await child(process.argv[3] as string, process.argv[4] as Variant, Number(process.argv[5]));
} else {
  const roots = process.argv.slice(2).length ? process.argv.slice(2).map((r) => resolve(r)) : [process.cwd()];
  const warm = Number(process.env.BENCH_DEDUCT_WARM ?? 20_000);
  const measured = Number(process.env.BENCH_DEDUCT_MEASURED ?? 20_000);
  const dir = mkdtempSync(join(tmpdir(), "deduct-instr-"));
  const rows: { root: string; variant: string; perDeduction: number }[] = [];
  try {
    for (const root of roots) {
      const hasLimits = readFileSync(join(root, "src/services/credit-service.ts"), "utf8").includes("setLimits(");
      for (const variant of ["plain", ...(hasLimits ? ["limits"] : [])] as Variant[]) {
        instructions(root, variant, 100, dir); // fills tsx's transform cache, which the next two then share
        const base = instructions(root, variant, warm, dir);
        const more = instructions(root, variant, warm + measured, dir);
        rows.push({ root, variant, perDeduction: Math.round((more - base) / measured) });
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const first = rows[0]?.perDeduction ?? 1;
  console.log("| root | variant | instructions / deduction | ratio to the first row |");
  console.log("| --- | --- | ---: | ---: |");
  for (const r of rows)
    console.log(
      `| ${r.root} | ${r.variant} | ${r.perDeduction.toLocaleString("en")} | ${(r.perDeduction / first).toFixed(3)} |`,
    );
}
