import { createCreditManager } from "../src/index.js";
const m = await createCreditManager({ ledger: { filePath: "/tmp/prof-ledger.jsonl" } });
const users = Array.from({ length: 1000 }, (_, i) => `user-${i}`);
for (const u of users) await m.credits.addCredits(u, 1e12);
let next = 0; const N = 300000;
const t = performance.now();
await Promise.all(Array.from({ length: 64 }, async () => { for (;;) { const i = next++; if (i >= N) return; await m.credits.deductCredits(users[(i * 7919) % 1000] as string, 1); } }));
console.log("ops/s", Math.round(N / ((performance.now() - t) / 1000)));
await m.close();
