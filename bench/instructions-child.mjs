/**
 * One counted process of bench/instructions.ts and bench/deduct-instructions.ts (plain JavaScript:
 * no loader thread, no transform): loads the built package of a checkout, sets up one case of
 * `cases` below over a fresh manager (in memory, or SQLite with `sqlite`), runs its operation `ops`
 * times one after another and exits. By hand:
 *   node bench/instructions-child.mjs <root> <case> [sqlite] <ops>
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";
import { createFloor } from "./floor-deduct.mjs";

const argv = process.argv.slice(2);
const [rootArg = ".", name = "deduct-plain"] = argv;
const store = argv.length > 3 ? argv[2] : "memory";
const opsArg = argv[argv.length - 1] ?? "0";
const root = resolve(rootArg);
const lib = await import(pathToFileURL(join(root, "dist/index.js")).href);

/**
 * The cases: a name, a set-up over a fresh in-memory manager, and the operation counted. Adding a
 * case is one line here and one in bench/instructions.ts's `CASES` (its baseline: `--update`).
 */
const cases = {
  // deductCredits(user, 1): no options, no limits, no scoped grant.
  "deduct-plain": async ({ credits }) => {
    await credits.addCredits("u", 1e12);
    return () => credits.deductCredits("u", 1);
  },
  // A spender and a feature under an account limit (monthly) and the spender's (daily), both far
  // from full.
  "deduct-limits": (manager) => limited(manager, false),
  // The same, and a grant scoped to the feature (the spend draws it).
  "deduct-scoped": (manager) => limited(manager, true),
  // The floor (bench/floor-deduct.mjs): the least a correct deduction does, by
  // hand, beside deduct-plain (one account, one grant, an amount of 1). No file: deductCredits runs
  // here without a ledger file, so the floor keeps its entries in the account only, as the memory
  // store does (docs/benchmarks.md, "In memory").
  floor: async () => {
    const floor = createFloor(null);
    floor.open("u", 1e12);
    return () => floor.deduct("u", 1);
  },
  // The two at 16 callers (bench/floor.ts's other row): 1,000 accounts, the i-th operation on
  // account (i × 7919) mod 1,000, 16 loops awaiting one operation each at a time.
  "floor-16": async () => {
    const floor = createFloor(null);
    for (const u of USERS) floor.open(u, 1e12);
    return (i) => floor.deduct(pick(i), 1);
  },
  "deduct-16": async ({ credits }) => {
    for (const u of USERS) await credits.addCredits(u, 1e12);
    return (i) => credits.deductCredits(pick(i), 1);
  },
  // A hold of 5 captured in part (3): two units of work, the rest returned to its grant.
  "reserve-commit": async ({ credits }) => {
    await credits.addCredits("u", 1e12);
    const partial = { amount: 3 };
    return async () => {
      const r = await credits.reserveCredits("u", 5);
      await credits.commitReservedCredits(r.id, partial);
    };
  },
};

const USERS = Array.from({ length: 1000 }, (_, i) => `user-${i}`);
const pick = (i) => USERS[(i * 7919) % USERS.length];
/** Callers at once (loops of one awaited operation each); 1 where not named. */
const CALLERS = { "floor-16": 16, "deduct-16": 16 };

async function limited({ credits }, scoped) {
  await credits.addCredits("u", 1e12);
  await credits.setLimits("u", [
    { amount: 1e12, period: "month" },
    { spender: "alice", amount: 1e12, period: "day" },
  ]);
  if (scoped) await credits.addCredits("u", 1e12, { scope: { features: ["chat"] } });
  const spend = { spender: "alice", feature: "chat" };
  return () => credits.deductCredits("u", 1, spend);
}

const setUp = cases[name];
if (setUp === undefined) throw new Error(`unknown case ${name}: ${Object.keys(cases).join(", ")}`);
let dir = null;
const options = {};
if (store === "sqlite") {
  // A file in /dev/shm where there is one: the kernel's share is not counted, the disk's times don't matter.
  dir = mkdtempSync(join(process.platform === "linux" ? "/dev/shm" : (process.env.TMPDIR ?? "/tmp"), "instr-"));
  const Database = createRequire(join(root, "package.json"))("better-sqlite3");
  const database = new Database(join(dir, "store.sqlite"));
  database.pragma("journal_mode = WAL");
  const { SqliteDbManager } = await import(pathToFileURL(join(root, "dist/sqlite/index.js")).href);
  options.db = new SqliteDbManager({ database });
} else if (store !== "memory") throw new Error(`unknown store ${store}: memory, sqlite`);
const manager = await lib.createCreditManager(options);
const op = await setUp(manager);
const ops = Number(opsArg);
const callers = CALLERS[name] ?? 1;
if (callers === 1) for (let i = 0; i < ops; i++) await op(i);
else {
  let next = 0;
  const caller = async () => {
    while (next < ops) await op(next++);
  };
  await Promise.all(Array.from({ length: callers }, caller));
}
await manager.close();
if (dir !== null) rmSync(dir, { recursive: true, force: true });
