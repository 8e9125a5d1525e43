/**
 * Credit leases (docs/metering.md, "Leases"): a fixed-price API charged from a block of each
 * user's credits held in memory, one journal entry per user per window instead of one per request.
 *   npx tsx examples/leases.ts
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCreditManager } from "credit-management";
import { creditMeteringMiddleware } from "credit-management/http";

const ledgerFile = join(mkdtempSync(join(tmpdir(), "credit-leases-")), "ledger.jsonl");
const manager = await createCreditManager({ ledger: { filePath: ledgerFile } });
await manager.credits.addCredits("user-1", 10_000);

// Blocks of up to 1,000 credits, settled every 30 seconds (and when a block runs out or goes idle,
// and at close): this short run settles once, at close.
const lease = manager.credits.leases({ size: 1_000, settleEveryMs: 30_000 });
// At startup: settle what a predecessor on this ledger file used and did not settle (nothing here).
console.log("recovered:", (await lease.recover()).windows, "windows");

// In code: charge() answers from the block at once when it covers the amount.
for (let i = 0; i < 10; i++) await lease.charge("user-1", 2, { reason: "search" });

// Over HTTP: the fixed-price middleware checks and charges through the lease.
const meter = creditMeteringMiddleware({
  credits: manager.credits,
  price: 5,
  lease,
  authenticate: (req) => (req.headers.authorization ? { userId: req.headers.authorization.slice(7) } : null),
});
const server = createServer((req, res) =>
  meter(req, res, () => {
    res.setHeader("content-type", "application/json");
    res.end('{"ok":true}');
  }),
);
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/search`;
for (let i = 0; i < 20; i++) {
  const res = await fetch(url, { headers: { authorization: "Bearer user-1" } });
  await res.text();
}
const info = await manager.credits.getUserCreditsInfo("user-1");
console.log(`before the settle: balance ${info.balance}, reserved ${info.reserved}`);

// close() settles every window and returns the blocks (flush() settles and keeps them).
await lease.close();
const after = await manager.credits.getUserCreditsInfo("user-1");
console.log(`after the settle: balance ${after.balance}, reserved ${after.reserved}`);
const windows = (await manager.credits.getCreditHistory("user-1")).items.filter((e) => e.metadata?.leaseWindow);
for (const e of windows) console.log("window entry:", JSON.stringify(e.metadata?.leaseWindow));
console.log("audit:", (await manager.credits.audit("user-1")).ok ? "ok" : "FAILED");
server.close();
await manager.close();
