/**
 * One part of bench/jobs.ts in its own process (a clean heap for each scenario), printing its rows
 * as one JSON line for bench/index.ts: `tsx bench/jobs-main.ts expire|renew|databases`.
 */
import { databases, memoryExpire, memoryRenew } from "./jobs.js";

const part = process.argv[2];
const rows = part === "expire" ? await memoryExpire() : part === "renew" ? await memoryRenew() : await databases();
console.log(JSON.stringify(rows));
