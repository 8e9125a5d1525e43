/** Stripe Checkout Sessions: checkouts, webhooks, refunds and disputes. The stand-in for the providers' APIs is in payments-fixtures.ts. */
import { describe, expect, it } from "vitest";
import { WebhookRejectedError } from "../src/index.js";
import {
  T0,
  type Seen,
  seen,
  stripeSign,
  stripeEvent,
  stripeSession,
  setup,
  serveFakeProviders,
} from "./payments-fixtures.js";

serveFakeProviders();

describe("Stripe Checkout Sessions", () => {
  it("creates a session through the API (form body, bearer key, idempotency key)", async () => {
    const { payments } = await setup();
    seen.length = 0;
    const p = await payments.createPaymentLink("bob", {
      amount: 1999,
      currency: "USD",
      provider: "stripe",
      idempotencyKey: "k1",
    });
    expect(p).toMatchObject({ providerRef: expect.stringMatching(/^cs_test_\d+$/), credits: 199 });
    expect(p.checkoutUrl).toBe(`https://checkout.stripe.com/c/pay/${p.providerRef}`);
    const s = seen[0] as Seen;
    expect(s.type).toBe("application/x-www-form-urlencoded");
    // Not the raw key (Stripe's keys are per account, ours per user): the payment id derived from both.
    expect(s.idem).toBe(p.id);
    const form = new URLSearchParams(s.body);
    expect(form.get("mode")).toBe("payment");
    expect(form.get("line_items[0][price_data][currency]")).toBe("usd");
    expect(form.get("line_items[0][price_data][unit_amount]")).toBe("1999");
    expect(form.get("client_reference_id")).toBe(p.id);
    expect(form.get("metadata[user_id]")).toBe("bob");
    expect(form.get("payment_intent_data[metadata][credit_payment_id]")).toBe(p.id);
    expect(form.get("success_url")).toBe(`https://app.example.com/ok?payment_id=${p.id}`);
  });

  it("two users' identical idempotency keys send different Stripe Idempotency-Keys", async () => {
    const { payments } = await setup();
    seen.length = 0;
    const a = await payments.createPaymentLink("alice", {
      amount: 700,
      currency: "USD",
      provider: "stripe",
      idempotencyKey: "buy-1",
    });
    const b = await payments.createPaymentLink("bob", {
      amount: 900,
      currency: "USD",
      provider: "stripe",
      idempotencyKey: "buy-1",
    });
    const keys = seen.map((x) => x.idem);
    expect(keys).toEqual([a.id, b.id]);
    expect(a.id).not.toBe(b.id);
    expect(keys).not.toContain("buy-1");
    // Without a key, none is sent.
    seen.length = 0;
    await payments.createPaymentLink("alice", { amount: 700, currency: "USD", provider: "stripe" });
    expect(seen[0]?.idem).toBeUndefined();
  });

  it("credits checkout.session.completed once; refuses stale and forged signatures", async () => {
    const { payments, credits, clock } = await setup();
    const p = await payments.createPaymentLink("bob", { amount: 1999, currency: "USD", provider: "stripe" });
    const body = stripeEvent("checkout.session.completed", stripeSession(p, "paid"));
    // Signed 6 minutes ago: stale.
    await expect(payments.handleWebhook("stripe", body, stripeSign(body, T0 - 6 * 60_000))).rejects.toMatchObject({
      reason: "stale_signature",
    });
    await expect(payments.handleWebhook("stripe", body, stripeSign(body, T0, "whsec_other"))).rejects.toMatchObject({
      status: 400,
      reason: "bad_signature",
    });
    await expect(payments.handleWebhook("stripe", body, { "stripe-signature": "garbage" })).rejects.toBeInstanceOf(
      WebhookRejectedError,
    );
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: 0 });
    clock.now = T0 + 4 * 60_000; // within 5 minutes
    const results = await Promise.all(
      Array.from({ length: 20 }, () => payments.handleWebhook("stripe", body, stripeSign(body))),
    );
    expect(results.filter((r) => r.outcome === "credited")).toHaveLength(1);
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: 199 });
    expect((await payments.getPayment("bob", p.id)).providerPaymentId).toBe("pi_3MtwBwLkdIwHu7ix28a3tqPa");
  });

  it("an unpaid completed session waits; async success credits; expiry after payment changes nothing", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("bob", { amount: 1999, currency: "USD", provider: "stripe" });
    const pending = stripeEvent("checkout.session.completed", stripeSession(p, "unpaid"));
    expect((await payments.handleWebhook("stripe", pending, stripeSign(pending))).outcome).toBe("ignored");
    const ok = stripeEvent("checkout.session.async_payment_succeeded", stripeSession(p, "paid"));
    expect((await payments.handleWebhook("stripe", ok, stripeSign(ok))).outcome).toBe("credited");
    const expired = stripeEvent("checkout.session.expired", { ...stripeSession(p, "paid"), status: "expired" });
    expect((await payments.handleWebhook("stripe", expired, stripeSign(expired))).outcome).toBe("unchanged");
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: 199 });
  });

  it("charge.refunded and charge.dispute.closed (lost) find the payment by its PaymentIntent", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("bob", { amount: 2000, currency: "USD", provider: "stripe" });
    const body = stripeEvent("checkout.session.completed", stripeSession(p, "paid"));
    await payments.handleWebhook("stripe", body, stripeSign(body));
    await credits.deductCredits("bob", 150);
    // A refund of another PaymentIntent naming our payment in its metadata is not of the money credited.
    const other = {
      id: "ch_other",
      object: "charge",
      amount: 2000,
      currency: "usd",
      payment_intent: "pi_other",
      metadata: { credit_payment_id: p.id, user_id: "bob" },
    };
    const otherRefunded = stripeEvent("charge.refunded", { ...other, amount_refunded: 2000, refunded: true });
    expect((await payments.handleWebhook("stripe", otherRefunded, stripeSign(otherRefunded))).outcome).toBe("ignored");
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: 50 });
    const charge = {
      id: "ch_3MtwBw",
      object: "charge",
      amount: 2000,
      currency: "usd",
      payment_intent: "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    };
    const refunded = stripeEvent("charge.refunded", { ...charge, amount_refunded: 2000, refunded: true });
    expect((await payments.handleWebhook("stripe", refunded, stripeSign(refunded))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: -150, debt: 150 });
    const lost = stripeEvent("charge.dispute.closed", {
      id: "dp_1",
      object: "dispute",
      amount: 2000,
      currency: "usd",
      charge: "ch_3MtwBw",
      payment_intent: "pi_3MtwBwLkdIwHu7ix28a3tqPa",
      status: "lost",
    });
    expect((await payments.handleWebhook("stripe", lost, stripeSign(lost))).outcome).toBe("unchanged");
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: -150 });
  });

  it("a user cannot take the keys of the library's own operations: a refund and a lost dispute still take their credits back", async () => {
    const { payments, credits, db } = await setup();
    const p = await payments.createPaymentLink("mallory", { amount: 2000, currency: "USD", provider: "stripe" });
    const body = stripeEvent("checkout.session.completed", stripeSession(p, "paid"));
    expect((await payments.handleWebhook("stripe", body, stripeSign(body))).outcome).toBe("credited");
    // The reserved prefix is refused before anything changes …
    for (const key of [`cm:dispute:stripe:${p.id}`, `cm:refund:stripe:${p.id}:2000`, "cm:anything"]) {
      await expect(credits.reserveCredits("mallory", 1, { idempotencyKey: key })).rejects.toMatchObject({
        code: "VALIDATION_ERROR",
      });
      await expect(credits.addCredits("mallory", 1, { idempotencyKey: key })).rejects.toThrow(
        /reserved for the library's own operations/,
      );
    }
    // … and the keys without it (what the library used to use) are just the user's own.
    for (const key of [`dispute:stripe:${p.id}`, `refund:stripe:${p.id}:2000`]) {
      await credits.releaseReservedCredits((await credits.reserveCredits("mallory", 1, { idempotencyKey: key })).id);
    }
    const charge = {
      id: "ch_1",
      object: "charge",
      amount: 2000,
      currency: "usd",
      payment_intent: "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    };
    const refunded = stripeEvent("charge.refunded", { ...charge, amount_refunded: 2000, refunded: true });
    expect((await payments.handleWebhook("stripe", refunded, stripeSign(refunded))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("mallory")).toMatchObject({ balance: 0, available: 0 });
    const keys = (await db.listJournal("mallory", { order: "asc", limit: 100 }))
      .map((e) => e.idempotencyKey)
      .filter((k) => k?.startsWith("cm:"));
    expect(keys).toEqual([`cm:payment:stripe:pi_3MtwBwLkdIwHu7ix28a3tqPa`, `cm:refund:stripe:${p.id}:2000`]);
  });
});
