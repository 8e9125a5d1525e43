/**
 * One counted process of bench/instructions.ts (plain JavaScript: no loader thread, no transform):
 * loads the built package of a checkout, sets up one case of `cases` below, runs its operation
 * `ops` times one after another and exits. By hand:
 *   node bench/instructions-child.mjs <root> <case> <ops>
 */
import { join, resolve } from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";

const [rootArg = ".", name = "deduct-plain", opsArg = "0"] = process.argv.slice(2);
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
  // from full, and a grant scoped to the feature (the spend draws it).
  "deduct-scoped": async ({ credits }) => {
    await credits.addCredits("u", 1e12);
    await credits.setLimits("u", [
      { amount: 1e12, period: "month" },
      { spender: "alice", amount: 1e12, period: "day" },
    ]);
    await credits.addCredits("u", 1e12, { scope: { features: ["chat"] } });
    const spend = { spender: "alice", feature: "chat" };
    return () => credits.deductCredits("u", 1, spend);
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

const setUp = cases[name];
if (setUp === undefined) throw new Error(`unknown case ${name}: ${Object.keys(cases).join(", ")}`);
const manager = await lib.createCreditManager();
const op = await setUp(manager);
const ops = Number(opsArg);
for (let i = 0; i < ops; i++) await op();
await manager.close();
