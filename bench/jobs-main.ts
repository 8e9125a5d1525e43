/** Runs bench/jobs.ts in its own process and prints its rows as one JSON line (for bench/index.ts). */
import { run } from "./jobs.js";

console.log(JSON.stringify(await run()));
