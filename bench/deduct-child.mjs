/**
 * One counted process of bench/deduct-instructions.ts (plain JavaScript, so no loader thread and no
 * transform runs in it): loads the built package of a checkout, makes one account, deducts `warm`
 * then `measured` times and exits. Run by that script under callgrind; by hand:
 *   node bench/deduct-child.mjs <root> <memory|sqlite> <plain|limits|scoped> <warm> <measured>
 * plain: `deductCredits(user, 1)`, no options, no limits, no scoped grant. limits: spender and
 * feature named, under an account limit (monthly) and the spender's (daily), both far from full.
 * scoped: the same, and the account also holds a grant scoped to the feature (the spend draws it).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import process from "node:process";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const [rootArg = ".", store = "memory", variant = "plain", warm = "0", measured = "0"] = process.argv.slice(2);
const root = resolve(rootArg);
const lib = await import(pathToFileURL(join(root, "dist/index.js")).href);

let dir = null;
const options = {};
if (store === "sqlite") {
  // A file in /dev/shm where there is one: the kernel's share is not counted, the disk's times don't matter.
  dir = mkdtempSync(join(process.platform === "linux" ? "/dev/shm" : (process.env.TMPDIR ?? "/tmp"), "deduct-"));
  const Database = createRequire(join(root, "package.json"))("better-sqlite3");
  const database = new Database(join(dir, "store.sqlite"));
  database.pragma("journal_mode = WAL");
  const { SqliteDbManager } = await import(pathToFileURL(join(root, "dist/sqlite/index.js")).href);
  options.db = new SqliteDbManager({ database });
}
const manager = await lib.createCreditManager(options);
const { credits } = manager;
await credits.addCredits("u", 1e12);
let spend;
if (variant !== "plain") {
  await credits.setLimits("u", [
    { amount: 1e12, period: "month" },
    { spender: "alice", amount: 1e12, period: "day" },
  ]);
  if (variant === "scoped") await credits.addCredits("u", 1e12, { scope: { features: ["chat"] } });
  spend = { spender: "alice", feature: "chat" };
}
const deduct = async (n) => {
  if (spend === undefined) for (let i = 0; i < n; i++) await credits.deductCredits("u", 1);
  else for (let i = 0; i < n; i++) await credits.deductCredits("u", 1, spend);
};
// With DEDUCT_HANDSHAKE=1 (under callgrind with instrumentation off): "ready" after the warm-up, then
// wait for a line on stdin (the parent turns counting on), the measured deductions, "done", wait.
const handshake = process.env.DEDUCT_HANDSHAKE === "1";
const input = handshake ? createInterface({ input: process.stdin }) : null;
const lines = input === null ? null : input[Symbol.asyncIterator]();
const step = async (word) => {
  if (lines === null) return;
  process.stdout.write(`${word}\n`);
  await lines.next();
};
await deduct(Number(warm));
await step("ready");
await deduct(Number(measured));
await step("done");
input?.close();
await manager.close();
if (dir !== null) rmSync(dir, { recursive: true, force: true });
