/**
 * The worked month of docs/revenue.md ("A worked month"): one account's top-up, promo credits,
 * usage, an invoice sold at its own basis, expiries and a refund, on an injected clock that starts
 * on the first of next month (UTC), then the revenue report of each day something happened and of
 * the month — what finance books. The test (test/examples.test.ts) checks every figure it prints
 * against the doc's table.
 *   npx tsx examples/revenue.ts
 */
import { createCreditManager, revenueCsv, type PaymentEvent, type PaymentProvider } from "credit-management";

const DAY = 86_400_000;
const now = new Date();
/** Day 0: the first of next month, 00:00 UTC (never a date in the past). */
const monthStart = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
const monthEnd = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 2, 1);
const clock = { t: monthStart };
/** Noon of day `d` of the month. */
const at = (d: number) => (clock.t = monthStart + d * DAY + DAY / 2);

/** A stand-in for the card provider: its webhook body is the event itself (Stripe's would be signed). */
const card: PaymentProvider = {
  name: "card",
  createCheckout: async (r) => ({ providerRef: `cs_${r.paymentId}`, url: "https://pay.example.com/checkout" }),
  verifyWebhook() {},
  parseEvent: (body) => JSON.parse(Buffer.from(body).toString("utf8")) as PaymentEvent,
};

const manager = await createCreditManager({
  clock: () => new Date(clock.t),
  // 3 credits a cent: $19.99 buys 5,997 credits, at a basis of 1/3 cent each.
  payments: { providers: [card], creditsPerUnit: 3 },
});
const { credits, payments, expiration } = manager;
const events = new Map<number, string>();

// Day 0: a top-up of $19.99, paid; 1,000 promo credits expiring on day 10.
at(0);
const topUp = await payments.createPaymentLink("acme", { amount: 1999, currency: "USD", provider: "card" });
const paid: PaymentEvent = {
  eventId: "evt_1",
  type: "checkout.session.completed",
  kind: "paid",
  paymentId: topUp.id,
  providerIds: [],
  providerPaymentId: "pi_1",
  userId: "acme",
  amount: 1999,
  currency: "USD",
  refundedTotal: null,
};
await payments.handleWebhook("card", JSON.stringify(paid), {});
await credits.addCredits("acme", 1000, { source: "promo", expiresAt: new Date(monthStart + 10 * DAY) });
events.set(0, "top-up of $19.99 (5,997 credits at 1/3 cent); 1,000 promo credits");

// Day 1: 1,600 credits used: the promo credits first (they expire first), then 600 paid ones.
at(1);
await credits.deductCredits("acme", 1600, { feature: "chat" });
events.set(1, "1,600 credits used");

// Day 2: 1,000 credits sold on an invoice at half a cent, expiring on day 20.
at(2);
await credits.addCredits("acme", 1000, {
  description: "Invoice INV-117",
  costBasis: { perCredit: "0.5", currency: "USD" },
  expiresAt: new Date(monthStart + 20 * DAY),
});
events.set(2, "1,000 credits sold on an invoice at 0.5 cent");

// Day 3: 300 credits used, from the invoice's grant (it expires first).
at(3);
await credits.deductCredits("acme", 300, { feature: "search" });
events.set(3, "300 credits used");

// Day 10 and day 20: the expiry job runs; the promo credits (none left), then the invoice's 700.
at(10);
await expiration.runAll();
events.set(10, "the promo credits expire (none left)");
at(20);
await expiration.runAll();
events.set(20, "the invoice's 700 unused credits expire");

// Day 21: $10.00 of the top-up refunded at the provider.
at(21);
await payments.recordRefund("acme", topUp.id, { refundedTotal: 1000, by: "support@example.com" });
events.set(21, "$10.00 of the top-up refunded");

const figures = ["paid", "recognized", "breakage", "refunds", "deferredEnd"] as const;
const head = ["day", "paid", "recognized", "breakage", "refunds", "deferred after", ""];
const line = (cells: readonly (string | number)[]) =>
  cells
    .map((c, i) => (i === cells.length - 1 ? ` ${c}` : String(c).padStart(head[i]!.length + 2)))
    .join("")
    .trimEnd();

console.log(`acme, US cents, the month from ${new Date(monthStart).toISOString().slice(0, 10)} (UTC)`);
console.log(line(head));
const days = await credits.getRevenue({
  account: "acme",
  from: new Date(monthStart),
  to: new Date(monthEnd),
  interval: "day",
});
for (const [d, what] of events) {
  const row = days.rows.find((r) => r.start.getTime() === monthStart + d * DAY && r.currency === "USD");
  if (row === undefined) throw new Error(`no row for day ${d}`);
  console.log(line([d, ...figures.map((f) => row[f]), what]));
}
const month = await credits.getRevenue({
  account: "acme",
  from: new Date(monthStart),
  to: new Date(monthEnd),
  interval: "month",
});
const m = month.rows[0]!;
console.log(line(["month", ...figures.map((f) => m[f]), ""]));
// The roll-forward finance checks: deferred at the start + paid − recognized − breakage − refunds.
console.log(
  `roll-forward: ${m.deferredStart} + ${m.paid} - ${m.recognized} - ${m.breakage} - ${m.refunds} = ${m.deferredEnd}`,
);
console.log(`audit: ${(await credits.audit("acme")).ok ? "ok" : "FAILED"}`);
console.log("\nAs CSV (GET /admin/credits/revenue.csv, credit-management revenue --csv):");
process.stdout.write(revenueCsv(month));
await manager.close();
