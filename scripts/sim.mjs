#!/usr/bin/env node
// The deterministic simulation (CONTRIBUTING.md, "The simulation"), with more seeds than CI runs:
//
//   npm run sim -- --seeds 10000            seeds 1..10000 (stops at the first failure)
//   npm run sim -- --seed 123               one seed: the replay of a failure
//   npm run sim -- --seeds 500 --first 7000 --steps 120
//   npm run sim -- --seed 123 --trace       a failure prints the whole run
//
// It runs test/simulation.test.ts under vitest with SIM_* variables set (see that file).
import { spawnSync } from "node:child_process";
import console from "node:console";
import process from "node:process";

const args = process.argv.slice(2);
const env = { ...process.env };
const names = { "--seed": "SIM_SEED", "--seeds": "SIM_SEEDS", "--first": "SIM_FIRST_SEED", "--steps": "SIM_STEPS" };
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--trace") {
    env.SIM_TRACE = "1"; // a failure prints every request and commit of the run, not the last 15
    continue;
  }
  const name = names[args[i]];
  const value = args[i + 1];
  if (name === undefined || value === undefined || !/^\d+$/.test(value)) {
    console.error(
      `usage: npm run sim -- [--seed N | --seeds N [--first N]] [--steps N] [--trace]  (got ${JSON.stringify(args[i])})`,
    );
    process.exit(2);
  }
  env[name] = value;
  i++;
}
const run = spawnSync("npx", ["vitest", "run", "test/simulation.test.ts", "-t", "seed\\(s\\)"], {
  stdio: "inherit",
  env,
});
process.exit(run.status ?? 1);
