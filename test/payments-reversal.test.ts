import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { simProvider, webhook } from "./sim/payments.js";

// The simulation's provider: no network, no signatures; its events are the JSON of `PaymentEvent`.
const event = webhook;
const provider = simProvider;

/**
 * @see issue 26, item 4: the simulation (seed 8) found a payment refunded in part before it was
 * credited, then refunded again: the second refund took back credits the payment had never added
 * (its status, partially_refunded, ranks after paid), from the user's other credits.
 */
describe("a payment refunded before it was credited", () => {
  it("takes nothing back on later refunds, and a late paid event credits nothing", async () => {
    const m = await createCreditManager({ payments: { providers: [provider] } });
    await m.credits.addCredits("u", 500);
    const p = await m.payments.createPaymentLink("u", { amount: 200, currency: "USD", provider: "sim" });
    await expect(m.payments.handleWebhook("sim", event("refund", p.id, 50), {})).resolves.toMatchObject({
      outcome: "updated",
    });
    await m.payments.handleWebhook("sim", event("refund", p.id, 120), {});
    await m.payments.handleWebhook("sim", event("refund", p.id, 200), {});
    await m.payments.handleWebhook("sim", event("paid", p.id, null), {});
    expect(await m.payments.getPayment("u", p.id)).toMatchObject({
      status: "refunded",
      refundedAmount: 200,
      creditsReversed: 0,
    });
    // The 500 added by hand are untouched: nothing of the payment was ever added, nothing taken.
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 500, debt: 0 });
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("still takes back the share of a payment credited and then refunded in steps", async () => {
    const m = await createCreditManager({ payments: { providers: [provider] } });
    const p = await m.payments.createPaymentLink("u", { amount: 200, currency: "USD", provider: "sim" });
    await m.payments.handleWebhook("sim", event("paid", p.id, null), {});
    await m.payments.handleWebhook("sim", event("refund", p.id, 50), {});
    await m.payments.handleWebhook("sim", event("refund", p.id, 120), {});
    expect(await m.payments.getPayment("u", p.id)).toMatchObject({
      status: "partially_refunded",
      creditsReversed: 120,
    });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(80);
  });
});

/**
 * @see issue 26, item 4: the simulation (seed 382 of an earlier generator) found a full refund
 * taking back less than the payment's credits when a hold on its grant had lapsed and was
 * released in the refund's own unit of work: the credits the hold returned were still counted as
 * held (left to be voided when the hold ends, which had already happened), so the user kept them.
 */
describe("a refund right after a hold on the payment's credits lapsed", () => {
  /** A payment of 100 credits, 60 of them spent. */
  async function paidAndSpent() {
    const clock = { now: Date.parse("2031-01-01T00:00:00Z") };
    const m = await createCreditManager({ clock: () => new Date(clock.now), payments: { providers: [provider] } });
    const p = await m.payments.createPaymentLink("u", { amount: 100, currency: "USD", provider: "sim" });
    await m.payments.handleWebhook("sim", event("paid", p.id, null), {});
    await m.credits.deductCredits("u", 60);
    return { m, p, clock };
  }

  it("takes back all of the payment's credits", async () => {
    const { m, p, clock } = await paidAndSpent();
    await m.credits.reserveCredits("u", 30, { ttlSeconds: 60 });
    clock.now += 61_000; // the hold lapsed; nothing has touched the account since
    await m.payments.handleWebhook("sim", event("refund", p.id, 100), {});
    // All 100 back: the 40 unspent (10 free + 30 the hold returned) voided, the 60 spent as debt.
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: -60, reserved: 0, debt: 60 });
    expect(await m.payments.getPayment("u", p.id)).toMatchObject({ status: "refunded", creditsReversed: 100 });
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("still leaves credits a live hold holds to be voided when it ends (documented limit)", async () => {
    const { m, p } = await paidAndSpent();
    const hold = await m.credits.reserveCredits("u", 30, { ttlSeconds: 600 });
    await m.payments.handleWebhook("sim", event("refund", p.id, 100), {});
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: -30, reserved: 30, debt: 60 });
    await m.credits.releaseReservedCredits(hold.id);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: -60, reserved: 0, debt: 60 });
  });
});
