/**
 * The SQLite store on a file (WAL, `synchronous = FULL`, as `SqliteDbManager` sets them):
 * `deductCredits` against a raw better-sqlite3 baseline on the same kind of file in the same run —
 * a conditional `UPDATE` of a balance row and the `INSERT` of a journal row in one transaction
 * (the transaction function made once) — at 1 and 16 callers over 1,000 accounts. Every round
 * measures the raw transaction and each variant, the order reversed every other round, and a
 * variant's ratio in a round is to the mean of the raw figures measured just before and after it;
 * the median of the rounds' ratios is reported, with their range (docs/benchmarks.md, "SQLite").
 *
 *   tsx bench/sqlite.ts [root[#options] ...]   (also run by `npm run bench`; BENCH_SQLITE=0 skips it there)
 *
 * Without roots it measures this checkout (bench/pkg.ts: dist/, or src/ with BENCH_SOURCE=1). Each
 * root is a built checkout (its dist/), e.g. the commit before a change unpacked in /tmp/old with
 * node_modules a symlink to this one's and built with `npx tsup --silent`: `tsx bench/sqlite.ts
 * /tmp/old .`; `#options` are that variant's `SqliteDbManager` options as JSON
 * (`'.#{"batch":false}'`; a root may be named several times). `BENCH_ROUNDS` (default 4),
 * `BENCH_SECONDS` per measurement (default 2), `BENCH_CALLERS` (default `1,16`).
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import type * as Core from "../src/index.js";
import type * as Sqlite from "../src/db/sqlite/index.js";
import { measure, printTable, type BenchRow } from "./lib.js";

const USERS = 1000;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 4);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const CALLERS = (process.env.BENCH_CALLERS ?? "1,16").split(",").map(Number);

const user = (i: number) => `u${(i * 7919) % USERS}`;

/** One side of the comparison: a name and one operation (`i`: the operation's number). */
interface Side {
  name: string;
  op: (i: number) => Promise<unknown>;
  close: () => Promise<void> | void;
}

/** What a variant is made from: the package's entry points (`credit-management`, `credit-management/sqlite`). */
interface Package {
  core: typeof Core;
  sqlite: typeof Sqlite;
}

/** The raw baseline on `file`: a conditional UPDATE of the balance and a journal INSERT in one transaction. */
function rawSide(file: string): Side {
  const raw = new Database(file);
  raw.pragma("journal_mode = WAL");
  raw.pragma("synchronous = FULL");
  raw.exec(
    "CREATE TABLE balances (user_id TEXT PRIMARY KEY, balance INTEGER NOT NULL, seq INTEGER NOT NULL);" +
      "CREATE TABLE journal (user_id TEXT NOT NULL, seq INTEGER NOT NULL, amount INTEGER NOT NULL, " +
      "balance_after INTEGER NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (user_id, seq))",
  );
  const insert = raw.prepare("INSERT INTO balances VALUES (?, ?, 0)");
  raw.transaction(() => {
    for (let i = 0; i < USERS; i++) insert.run(`u${i}`, 1e12);
  })();
  const update = raw.prepare(
    "UPDATE balances SET balance = balance - ?, seq = seq + 1 WHERE user_id = ? AND balance >= ? RETURNING balance, seq",
  );
  const entry = raw.prepare("INSERT INTO journal VALUES (?, ?, ?, ?, ?)");
  const deduct = raw.transaction((userId: string, amount: number) => {
    const row = update.get(amount, userId, amount) as { balance: number; seq: number } | undefined;
    if (row === undefined) throw new Error(`insufficient credits: ${userId}`);
    entry.run(userId, row.seq, amount, row.balance, new Date().toISOString());
  });
  return {
    name: "raw UPDATE + INSERT transaction",
    op: async (i) => deduct(user(i), 1),
    close: () => void raw.close(),
  };
}

/** `deductCredits` of `pkg` on `file`, with the store's `options`. */
async function storeSide(name: string, pkg: Package, file: string, options: Record<string, unknown>): Promise<Side> {
  const db = new pkg.sqlite.SqliteDbManager({ ...options, filename: file });
  const manager = await pkg.core.createCreditManager({ db });
  for (let i = 0; i < USERS; i += 50)
    await Promise.all(Array.from({ length: 50 }, (_, j) => manager.credits.addCredits(`u${i + j}`, 1e12)));
  return { name, op: (i) => manager.credits.deductCredits(user(i), 1), close: () => manager.close() };
}

/** A built checkout's package (`root/dist/`). */
async function packageAt(root: string): Promise<Package> {
  const at = (entry: string) => pathToFileURL(resolve(root, "dist", entry, "index.js")).href;
  return {
    core: (await import(at(""))) as typeof Core,
    sqlite: (await import(at("sqlite"))) as typeof Sqlite,
  };
}

const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

interface Result {
  callers: number;
  raw: number[];
  variants: Array<{ name: string; rates: number[]; ratios: number[] }>;
  load: string;
}

/** Each variant against the raw side at `callers`, alternated round by round. */
async function compare(raw: Side, variants: readonly Side[], callers: number): Promise<Result> {
  for (const side of [raw, ...variants]) await measure(500, callers, side.op); // warm-up
  const probe = await measure(2000, callers, raw.op);
  const ops = Math.max(1000, Math.round(probe * SECONDS));
  const result: Result = {
    callers,
    raw: [],
    variants: variants.map((v) => ({ name: v.name, rates: [], ratios: [] })),
    load: loadavg(),
  };
  let offset = 10_000;
  for (let round = 0; round < ROUNDS; round++) {
    const order = variants.map((v, k) => ({ v, k }));
    if (round % 2 === 1) order.reverse();
    let before = await measure(ops, callers, (i) => raw.op(i + offset));
    offset += ops;
    result.raw.push(before);
    for (const { v, k } of order) {
      const rate = await measure(ops, callers, (i) => v.op(i + offset));
      offset += ops;
      const after = await measure(ops, callers, (i) => raw.op(i + offset));
      offset += ops;
      result.raw.push(after);
      const r = result.variants[k] as Result["variants"][number];
      r.rates.push(rate);
      r.ratios.push(rate / ((before + after) / 2));
      before = after;
    }
    console.error(
      `${callers} caller(s), round ${round + 1}: ` +
        result.variants.map((r) => `${r.name} ${(r.ratios[r.ratios.length - 1] as number).toFixed(2)}×`).join(", "),
    );
  }
  result.load += ` → ${loadavg()}`;
  return result;
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const range = (xs: readonly number[], f: (n: number) => string) => `${f(Math.min(...xs))} – ${f(Math.max(...xs))}`;

/** `npm run bench`'s rows: this checkout (bench/pkg.ts) at each number of callers. */
export async function run(): Promise<BenchRow[]> {
  const { core, sqlite } = await import("./pkg.js");
  const dir = mkdtempSync(join(tmpdir(), "bench-sqlite-"));
  const sides: Side[] = [];
  try {
    const raw = rawSide(join(dir, "raw.sqlite"));
    sides.push(raw);
    const store = await storeSide("deductCredits", { core, sqlite: await sqlite() }, join(dir, "store.sqlite"), {});
    sides.push(store);
    const rows: BenchRow[] = [];
    for (const callers of CALLERS) {
      const r = await compare(raw, [store], callers);
      const v = r.variants[0] as Result["variants"][number];
      const baseline = `SQLite file: raw UPDATE + INSERT transaction, ${callers} caller(s)`;
      rows.push(
        { backend: "sqlite", scenario: baseline, opsPerSec: Math.round(median(r.raw)) },
        {
          backend: "sqlite",
          scenario: `SQLite file: deductCredits (${callers} caller(s), ${USERS} users)`,
          opsPerSec: Math.round(median(v.rates)),
          baseline,
          ratio: median(v.ratios),
          note: `ratios per round ${v.ratios.map((x) => x.toFixed(2)).join(", ")}; load ${r.load}`,
        },
      );
    }
    return rows;
  } finally {
    for (const s of sides) await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The command line: the roots named (built checkouts, with options) side by side. */
async function main(specs: readonly string[]): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "bench-sqlite-"));
  const sides: Side[] = [];
  try {
    const raw = rawSide(join(dir, "raw.sqlite"));
    sides.push(raw);
    const variants: Side[] = [];
    for (const [k, spec] of specs.entries()) {
      const at = spec.indexOf("#");
      const root = at < 0 ? spec : spec.slice(0, at);
      const options = at < 0 ? {} : (JSON.parse(spec.slice(at + 1)) as Record<string, unknown>);
      const side = await storeSide(
        `deductCredits (${spec})`,
        await packageAt(root),
        join(dir, `v${k}.sqlite`),
        options,
      );
      sides.push(side);
      variants.push(side);
    }
    for (const callers of CALLERS) {
      const r = await compare(raw, variants, callers);
      console.log(
        `\n${callers} caller(s), ${USERS.toLocaleString("en-US")} accounts, ${ROUNDS} rounds, load average ${r.load}\n`,
      );
      console.log("| row | ops/s | ratio to the raw transaction (median; range) | ratio to the first (median) |");
      console.log("| --- | --- | --- | --- |");
      console.log(`| ${raw.name} | ${range(r.raw, fmt)} | 1 | — |`);
      const first = r.variants[0] as Result["variants"][number];
      for (const v of r.variants) {
        const toFirst = median(v.ratios.map((x, i) => x / (first.ratios[i] as number)));
        console.log(
          `| ${v.name} | ${range(v.rates, fmt)} | ${median(v.ratios).toFixed(2)}× (${range(v.ratios, (x) => x.toFixed(2))}) | ${toFirst.toFixed(2)} |`,
        );
      }
    }
  } finally {
    for (const s of sides) await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const specs = process.argv.slice(2);
  if (specs.length === 0) printTable(await run());
  else await main(specs);
}
