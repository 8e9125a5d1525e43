/**
 * npm run example — the library on its in-memory default, printing what happens.
 * A movable clock stands in for time so the expiry shows without waiting.
 */
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCreditManager, InsufficientCreditsError } from "credit-management";

const DAY = 86_400_000;
let now = Date.parse("2026-01-01T09:00:00Z");
const ledgerFile = join(mkdtempSync(join(tmpdir(), "credit-management-")), "credit_ledger.jsonl");

const manager = await createCreditManager({
  clock: () => new Date(now),
  ledger: { filePath: ledgerFile },
});
const { credits } = manager;
const user = "user-1";
const show = async (label: string) => {
  const info = await credits.getUserCreditsInfo(user);
  console.log(`${label.padEnd(46)} balance=${info.balance} reserved=${info.reserved} available=${info.available}`);
};

await credits.addCredits(user, 500, {
  description: "Pro plan, January",
  source: "subscription",
  expiresAt: new Date(now + 30 * DAY),
});
await show("added 500 expiring in 30 days");
await credits.addCredits(user, 100, { description: "Welcome bonus", source: "promo" });
await show("added 100 that never expire");

const spend = await credits.deductCredits(user, 120, { description: "image generation", idempotencyKey: "req-1" });
await show(`deducted 120 (from grant ${spend.grants[0]?.grantId.slice(0, 8)}…, expiring first)`);
await credits.deductCredits(user, 120, { description: "image generation", idempotencyKey: "req-1" });
await show("same request retried with its idempotency key");

const hold = await credits.reserveCredits(user, 200, { ttlSeconds: 60, reason: "LLM call, estimate" });
await show("reserved 200 for an LLM call");
await credits.commitReservedCredits(hold.id, { amount: 73, metadata: { model: "gpt-x", tokens: 73 } });
await show("committed 73 of the 200 held (127 returned)");

try {
  await credits.deductCredits(user, 10_000);
} catch (error) {
  if (error instanceof InsufficientCreditsError) console.log(`deducting 10,000 refused: ${error.message}`);
}

now += 31 * DAY;
const grants = await credits.getGrants(user);
await show("31 days later: the unspent rest of the 500 expired");
console.log(`grants left: ${grants.map((g) => `${g.remaining} (${g.source})`).join(", ")}`);

const history = await credits.getCreditHistory(user, { limit: 10 });
console.log("\nhistory, newest first:");
for (const e of history.items)
  console.log(`  #${e.seq} ${e.type.padEnd(16)} ${String(e.amount).padStart(5)}  balance after ${e.balanceAfter}`);

const report = await credits.audit(user);
console.log(`\naudit: ${report.ok ? "ok" : "FAILED"} — ${report.entries} entries replayed, hash chain intact`);

await manager.close();
const lines = readFileSync(ledgerFile, "utf8").trim().split("\n").length;
console.log(`ledger file: ${ledgerFile} (${lines} JSON lines)`);
