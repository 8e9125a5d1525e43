/** Razorpay payment links: checkouts, webhooks, refunds and disputes, links found by reference_id. The stand-in for the providers' APIs is in payments-fixtures.ts. */
import { describe, expect, it } from "vitest";
import { DomainEvent } from "../src/core/models/index.js";
import {
  CreditService,
  InMemoryDbManager,
  NotFoundError,
  PaymentProviderError,
  PaymentService,
  RazorpayProvider,
  WebhookRejectedError,
  eventEnvelope,
  type CheckoutRequest,
} from "../src/index.js";
import {
  RZP_SECRET,
  T0,
  type Seen,
  baseUrl,
  seen,
  rzpLinks,
  rzpSign,
  rzpPaymentEntity,
  rzpEvent,
  rzpLinkPaid,
  setup,
  until,
  razorpayWith,
  rzpInput,
  requests,
  serveFakeProviders,
} from "./payments-fixtures.js";

serveFakeProviders();

describe("Razorpay payment links", () => {
  it("creates a link through the API (path, auth, body checked) and stores a pending payment", async () => {
    const { payments } = await setup();
    seen.length = 0;
    const p = await payments.createPaymentLink("alice", {
      amount: 50_000,
      currency: "inr",
      provider: "razorpay",
      description: "Top-up",
    });
    expect(p).toMatchObject({
      status: "created",
      credits: 5000,
      currency: "INR",
      providerRef: expect.stringMatching(/^plink_T\d+$/),
    });
    expect(p.checkoutUrl).toBe(`https://rzp.io/i/${(p.providerRef as string).slice(6)}`);
    expect(seen).toHaveLength(1);
    const body = JSON.parse((seen[0] as Seen).body);
    expect(body).toEqual({
      amount: 50_000,
      currency: "INR",
      description: "Top-up",
      reference_id: p.id,
      notes: { credit_payment_id: p.id, user_id: "alice", credits: "5000" },
      callback_url: "https://app.example.com/paid",
      callback_method: "get",
    });
    expect(await payments.getPayment("alice", p.id)).toEqual(p);
    await expect(payments.getPayment("bob", p.id)).rejects.toBeInstanceOf(NotFoundError);
  });

  it("an API refusal is a PaymentProviderError and marks the payment failed", async () => {
    const db = new InMemoryDbManager();
    const payments = new PaymentService({
      db,
      providers: [new RazorpayProvider({ keyId: "wrong", keySecret: "wrong", webhookSecret: RZP_SECRET, baseUrl })],
    });
    await expect(
      payments.createPaymentLink("alice", { amount: 100, currency: "INR", provider: "razorpay" }),
    ).rejects.toBeInstanceOf(PaymentProviderError);
    const [p] = (await payments.getPaymentHistory("alice")).items;
    expect(p?.status).toBe("failed");
  });

  it("credits a paid link once, even when the event arrives 20 times at once", async () => {
    const { payments, credits, db } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const body = rzpLinkPaid(p);
    const results = await Promise.all(
      Array.from({ length: 20 }, () => payments.handleWebhook("razorpay", body, rzpSign(body))),
    );
    expect(results.filter((r) => r.outcome === "credited")).toHaveLength(1);
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
    const stored = await payments.getPayment("alice", p.id);
    expect(stored).toMatchObject({ status: "paid", providerPaymentId: "pay_29QQoUBi66xm2f" });
    expect(await db.getGrant(stored.grantId as string)).toMatchObject({
      source: "payment",
      sourceRef: "pay_29QQoUBi66xm2f",
    });
    // payment.captured for the same payment later: no second credit.
    const captured = rzpEvent("payment.captured", { payment: { entity: rzpPaymentEntity(p, "captured") } });
    expect((await payments.handleWebhook("razorpay", captured, rzpSign(captured))).outcome).toBe("duplicate");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
  });

  it("refuses a forged signature, a re-serialized body and a missing header with 400, crediting nothing", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const body = rzpLinkPaid(p);
    const forged = rzpSign(body, "not-the-secret");
    await expect(payments.handleWebhook("razorpay", body, forged)).rejects.toMatchObject({
      status: 400,
      reason: "bad_signature",
    });
    // Signed over a re-serialization (what the original did): not the bytes received.
    const reserialized = rzpSign(JSON.stringify(JSON.parse(body)));
    await expect(payments.handleWebhook("razorpay", body, reserialized)).rejects.toBeInstanceOf(WebhookRejectedError);
    await expect(payments.handleWebhook("razorpay", body, {})).rejects.toBeInstanceOf(WebhookRejectedError);
    // The genuine signature over the raw bytes passes, as bytes or string.
    expect((await payments.handleWebhook("razorpay", new TextEncoder().encode(body), rzpSign(body))).outcome).toBe(
      "credited",
    );
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
  });

  /** @see issue 24, item 8: a provider without a secret made every anonymous webhook a 500. */
  it("answers a webhook for a provider without a webhook secret as for an unknown one (NotFoundError: HTTP 404)", async () => {
    const saved = process.env.RAZORPAY_WEBHOOK_SECRET;
    delete process.env.RAZORPAY_WEBHOOK_SECRET;
    try {
      const { payments } = await setup({ rzpSecret: undefined });
      const body = rzpEvent("payment.captured", {});
      await expect(payments.handleWebhook("razorpay", body, rzpSign(body))).rejects.toBeInstanceOf(NotFoundError);
      expect(payments.webhookProviders()).not.toContain("razorpay");
    } finally {
      if (saved !== undefined) process.env.RAZORPAY_WEBHOOK_SECRET = saved;
    }
  });

  it("refuses events whose user or amount differ from the stored payment", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const otherUser = rzpEvent("payment.captured", {
      payment: { entity: rzpPaymentEntity(p, "captured", { notes: { credit_payment_id: p.id, user_id: "mallory" } }) },
    });
    await expect(payments.handleWebhook("razorpay", otherUser, rzpSign(otherUser))).rejects.toMatchObject({
      reason: "user_mismatch",
    });
    const otherAmount = rzpEvent("payment.captured", {
      payment: { entity: rzpPaymentEntity(p, "captured", { amount: 100 }) },
    });
    await expect(payments.handleWebhook("razorpay", otherAmount, rzpSign(otherAmount))).rejects.toMatchObject({
      reason: "amount_mismatch",
    });
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 0 });
    expect((await payments.getPayment("alice", p.id)).status).toBe("created");
  });

  it("events out of order: captured before authorized and failed — the status never moves back", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const captured = rzpEvent("payment.captured", { payment: { entity: rzpPaymentEntity(p, "captured") } });
    const authorized = rzpEvent("payment.authorized", { payment: { entity: rzpPaymentEntity(p, "authorized") } });
    const failed = rzpEvent("payment.failed", { payment: { entity: rzpPaymentEntity(p, "failed") } });
    expect((await payments.handleWebhook("razorpay", captured, rzpSign(captured))).outcome).toBe("credited");
    expect((await payments.handleWebhook("razorpay", authorized, rzpSign(authorized))).outcome).toBe("unchanged");
    expect((await payments.handleWebhook("razorpay", failed, rzpSign(failed))).outcome).toBe("unchanged");
    expect((await payments.getPayment("alice", p.id)).status).toBe("paid");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
  });

  it("the cancellation or expiry of another link of the payment (a discarded second checkout) leaves it open; its own ends it", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const linkEvent = (event: string, id: string, status: string) =>
      rzpEvent(event, {
        payment_link: {
          entity: {
            id,
            amount: p.amount,
            currency: p.currency,
            reference_id: p.id,
            status,
            notes: { credit_payment_id: p.id, user_id: p.userId },
          },
        },
      });
    for (const [event, status] of [
      ["payment_link.cancelled", "cancelled"],
      ["payment_link.expired", "expired"],
    ] as const) {
      const other = linkEvent(event, "plink_discarded_second", status);
      expect(await payments.handleWebhook("razorpay", other, rzpSign(other))).toMatchObject({
        outcome: "ignored",
        status: "created",
      });
    }
    expect((await payments.getPayment("alice", p.id)).status).toBe("created");
    // Paying the recorded link still credits.
    const paid = rzpLinkPaid(p);
    expect((await payments.handleWebhook("razorpay", paid, rzpSign(paid))).outcome).toBe("credited");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
    // The payment's own link cancelled: that one counts (on an unpaid payment).
    const q = await payments.createPaymentLink("alice", { amount: 100, currency: "INR", provider: "razorpay" });
    const own = rzpEvent("payment_link.cancelled", {
      payment_link: {
        entity: {
          id: q.providerRef,
          amount: q.amount,
          currency: q.currency,
          reference_id: q.id,
          status: "cancelled",
          notes: { credit_payment_id: q.id },
        },
      },
    });
    expect(await payments.handleWebhook("razorpay", own, rzpSign(own))).toMatchObject({
      outcome: "updated",
      status: "cancelled",
    });
  });

  it("a failed attempt, then a successful one: credited", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const failed = rzpEvent("payment.failed", {
      payment: { entity: rzpPaymentEntity(p, "failed", { id: "pay_failed1" }) },
    });
    expect((await payments.handleWebhook("razorpay", failed, rzpSign(failed))).outcome).toBe("updated");
    const body = rzpLinkPaid(p);
    expect((await payments.handleWebhook("razorpay", body, rzpSign(body))).outcome).toBe("credited");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
  });

  it("a refund after half the credits were spent: voids the rest, deducts the spent half as debt, once", async () => {
    const { payments, credits, db } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const body = rzpLinkPaid(p);
    await payments.handleWebhook("razorpay", body, rzpSign(body));
    await credits.deductCredits("alice", 2500);
    const refund = rzpEvent("refund.processed", {
      refund: {
        entity: {
          id: "rfnd_FP8QHiV938haTz",
          entity: "refund",
          amount: 50_000,
          currency: "INR",
          payment_id: "pay_29QQoUBi66xm2f",
          status: "processed",
        },
      },
      payment: { entity: rzpPaymentEntity(p, "refunded", { amount_refunded: 50_000, notes: {} }) },
    });
    const results = await Promise.all(
      Array.from({ length: 5 }, () => payments.handleWebhook("razorpay", refund, rzpSign(refund))),
    );
    expect(results.filter((r) => r.outcome === "reversed")).toHaveLength(1);
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: -2500, debt: 2500, available: -2500 });
    const journal = await db.listJournal("alice", { order: "asc", limit: 10 });
    expect(journal.map((e) => [e.type, e.amount, e.balanceAfter, e.debtAfter])).toEqual([
      ["add", 5000, 5000, 0],
      ["deduct", 2500, 2500, 0],
      ["void", 2500, 0, 0],
      ["deduct", 2500, -2500, 2500],
    ]);
    expect(journal[2]?.correlationId).toBe(p.id);
    expect(await payments.getPayment("alice", p.id)).toMatchObject({ status: "refunded", creditsReversed: 5000 });
    // A late paid event after the refund credits nothing.
    expect((await payments.handleWebhook("razorpay", body, rzpSign(body))).outcome).toBe("duplicate");
    expect((await credits.audit("alice")).ok).toBe(true);
    // The next top-up pays the debt first.
    await credits.addCredits("alice", 3000);
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 500, debt: 0 });
  });

  it("a partial refund takes back its share, rounded up; a lost dispute takes the rest", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const body = rzpLinkPaid(p);
    await payments.handleWebhook("razorpay", body, rzpSign(body));
    const partial = rzpEvent("refund.processed", {
      refund: { entity: { id: "rfnd_1", amount: 10_001, payment_id: "pay_29QQoUBi66xm2f" } },
      payment: { entity: rzpPaymentEntity(p, "captured", { amount_refunded: 10_001 }) },
    });
    expect((await payments.handleWebhook("razorpay", partial, rzpSign(partial))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 3999 });
    expect(await payments.getPayment("alice", p.id)).toMatchObject({
      status: "partially_refunded",
      creditsReversed: 1001,
    });
    const lost = rzpEvent("payment.dispute.lost", {
      payment: { entity: rzpPaymentEntity(p, "captured", { amount_refunded: 10_001 }) },
      dispute: { entity: { id: "disp_1", amount: 39_999, status: "lost", payment_id: "pay_29QQoUBi66xm2f" } },
    });
    expect((await payments.handleWebhook("razorpay", lost, rzpSign(lost))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 0, debt: 0 });
    expect((await payments.getPayment("alice", p.id)).status).toBe("disputed_lost");
    expect((await payments.handleWebhook("razorpay", lost, rzpSign(lost))).outcome).toBe("duplicate");
    expect((await credits.audit("alice")).ok).toBe(true);
  });

  it("with domain events on: the payment is credits_added (source payment), its refund and lost dispute credits_refunded, in the webhook's unit of work", async () => {
    const { payments, db } = await setup({ domainEvents: true });
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const body = rzpLinkPaid(p);
    await payments.handleWebhook("razorpay", body, rzpSign(body));
    const partial = rzpEvent("refund.processed", {
      refund: { entity: { id: "rfnd_1", amount: 10_001, payment_id: "pay_29QQoUBi66xm2f" } },
      payment: { entity: rzpPaymentEntity(p, "captured", { amount_refunded: 10_001 }) },
    });
    await payments.handleWebhook("razorpay", partial, rzpSign(partial));
    await payments.handleWebhook("razorpay", partial, rzpSign(partial)); // a duplicate webhook: no entry, no event
    const lost = rzpEvent("payment.dispute.lost", {
      payment: { entity: rzpPaymentEntity(p, "captured", { amount_refunded: 10_001 }) },
      dispute: { entity: { id: "disp_1", amount: 39_999, status: "lost", payment_id: "pay_29QQoUBi66xm2f" } },
    });
    await payments.handleWebhook("razorpay", lost, rzpSign(lost));
    const rows = await db.listNotifications("alice", { limit: 10 });
    const events = rows.map((r) =>
      DomainEvent.parse(eventEnvelope({ ...r, createdAt: r.createdAt.toISOString(), attempt: 1 })),
    );
    expect(events.map((e) => [e.type, (e.payload as { amount: number }).amount])).toEqual([
      ["credits_added", 5000],
      ["credits_refunded", 1001],
      ["credits_refunded", 3999],
      ["credits_exhausted", undefined], // the level change the dispute's take-back caused
    ]);
    expect(events[0]?.payload).toMatchObject({ source: "payment", sourceRef: "pay_29QQoUBi66xm2f" });
    expect(events[1]?.payload).toMatchObject({
      via: "deduct",
      paymentId: p.id,
      refundedAmount: 10_001,
      balanceAfter: 3999,
    });
    expect(events[2]?.payload).toMatchObject({ via: "void", paymentId: p.id, refundedAmount: 50_000, balanceAfter: 0 });
  });

  it("a refund or lost dispute of another attempt at the link (not the payment credited) is ignored", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    // pay_other: authorized, never captured; then the credited attempt.
    const auth = rzpEvent("payment.authorized", {
      payment: { entity: rzpPaymentEntity(p, "authorized", { id: "pay_other" }) },
    });
    expect((await payments.handleWebhook("razorpay", auth, rzpSign(auth))).outcome).toBe("updated");
    const body = rzpLinkPaid(p);
    expect((await payments.handleWebhook("razorpay", body, rzpSign(body))).outcome).toBe("credited");
    // Razorpay auto-refunds pay_other: the event names our payment in the notes, but not the credited pay_….
    const autoRefund = rzpEvent("refund.processed", {
      refund: {
        entity: {
          id: "rfnd_auto",
          entity: "refund",
          amount: 50_000,
          currency: "INR",
          payment_id: "pay_other",
          status: "processed",
        },
      },
      payment: {
        entity: rzpPaymentEntity(p, "refunded", { id: "pay_other", captured: false, amount_refunded: 50_000 }),
      },
    });
    expect(await payments.handleWebhook("razorpay", autoRefund, rzpSign(autoRefund))).toMatchObject({
      outcome: "ignored",
      paymentId: p.id,
      status: "paid",
    });
    const lost = rzpEvent("payment.dispute.lost", {
      payment: { entity: rzpPaymentEntity(p, "captured", { id: "pay_other" }) },
      dispute: { entity: { id: "disp_1", amount: 50_000, status: "lost", payment_id: "pay_other" } },
    });
    expect((await payments.handleWebhook("razorpay", lost, rzpSign(lost))).outcome).toBe("ignored");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
    expect(await payments.getPayment("alice", p.id)).toMatchObject({
      status: "paid",
      creditsReversed: 0,
      refundedAmount: 0,
    });
    // The credited attempt's refund still takes the credits back.
    const refund = rzpEvent("refund.processed", {
      refund: {
        entity: {
          id: "rfnd_2",
          entity: "refund",
          amount: 50_000,
          currency: "INR",
          payment_id: "pay_29QQoUBi66xm2f",
          status: "processed",
        },
      },
      payment: { entity: rzpPaymentEntity(p, "refunded", { amount_refunded: 50_000 }) },
    });
    expect((await payments.handleWebhook("razorpay", refund, rzpSign(refund))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 0 });
  });

  it("ignores event types and payments it does not track", async () => {
    const { payments } = await setup();
    const order = rzpEvent("order.paid", { order: { entity: { id: "order_1" } } });
    expect((await payments.handleWebhook("razorpay", order, rzpSign(order))).outcome).toBe("ignored");
    const stranger = rzpEvent("payment.captured", {
      payment: { entity: { id: "pay_x", amount: 1, currency: "INR", notes: {} } },
    });
    expect((await payments.handleWebhook("razorpay", stranger, rzpSign(stranger))).outcome).toBe("ignored");
    await expect(payments.handleWebhook("paypal", "{}", {})).rejects.toBeInstanceOf(NotFoundError);
  });
});

describe("payments: Razorpay links found by reference_id", () => {
  it("a crash between opening a link and recording it: the take-over finds the link by reference_id, records it, opens no second one", async () => {
    const clock = { now: T0 };
    const { provider } = razorpayWith(["crash"]);
    const db = new InMemoryDbManager();
    const payments = new PaymentService({
      db,
      clock: () => new Date(clock.now),
      providers: [provider],
      checkoutStaleSeconds: 60,
    });
    seen.length = 0;
    void payments.createPaymentLink("alice", rzpInput);
    await until(() => rzpLinks.size === 1);
    const [link] = [...rzpLinks.values()];
    clock.now += 60_000;
    const p = await payments.createPaymentLink("alice", rzpInput);
    expect(p).toMatchObject({ status: "created", providerRef: link!.id, checkoutUrl: link!.short_url });
    expect(requests()).toEqual(["POST /v1/payment_links", `GET /v1/payment_links?reference_id=${p.id}`]);
    expect(rzpLinks.size).toBe(1);
    expect(await payments.getPayment("alice", p.id)).toEqual(p);
    // The link is paid: credited.
    const body = rzpLinkPaid(p);
    expect((await payments.handleWebhook("razorpay", body, rzpSign(body))).outcome).toBe("credited");
    expect(await new CreditService({ db }).getUserCreditsInfo("alice")).toMatchObject({ balance: 50_000 });
  });

  it("a take-over racing a slow first attempt: one link, recorded once, none cancelled", async () => {
    const clock = { now: T0 };
    const { provider, held } = razorpayWith(["hold"]);
    const payments = new PaymentService({
      db: new InMemoryDbManager(),
      clock: () => new Date(clock.now),
      providers: [provider],
      checkoutStaleSeconds: 5,
    });
    seen.length = 0;
    const first = payments.createPaymentLink("alice", rzpInput);
    await until(() => held.length === 1);
    clock.now += 5_000;
    const p = await payments.createPaymentLink("alice", rzpInput);
    expect(rzpLinks.size).toBe(1);
    // The first attempt's request reaches Razorpay now: refused (its reference_id is taken), it
    // looks the link up and answers the one recorded.
    held[0]!();
    expect(await first).toEqual(p);
    expect(rzpLinks.size).toBe(1);
    expect(requests().filter((r) => r.includes("/cancel"))).toEqual([]);
    expect(requests().filter((r) => r.startsWith("POST /v1/payment_links"))).toHaveLength(2);
  });

  it("findCheckout: the link with the payment's reference_id; null without one; a link of another amount or payment is refused", async () => {
    const provider = new RazorpayProvider({ keyId: "rzp_test_key", keySecret: "rzp_test_secret", baseUrl });
    const request: CheckoutRequest = {
      paymentId: "pl_abc",
      userId: "alice",
      amount: 500,
      currency: "INR",
      credits: 500,
      description: "x",
    };
    expect(await provider.findCheckout(request)).toBeNull();
    rzpLinks.set("pl_abc", {
      id: "plink_X",
      short_url: "https://rzp.io/i/X",
      reference_id: "pl_abc",
      amount: 500,
      currency: "INR",
      notes: { credit_payment_id: "pl_abc" },
    });
    expect(await provider.findCheckout(request)).toEqual({ providerRef: "plink_X", url: "https://rzp.io/i/X" });
    await expect(provider.findCheckout({ ...request, amount: 600 })).rejects.toThrow(/not this payment's/);
    rzpLinks.set("pl_abc", {
      id: "plink_Y",
      short_url: "https://rzp.io/i/Y",
      reference_id: "pl_abc",
      amount: 500,
      currency: "INR",
      notes: { credit_payment_id: "pl_other" },
    });
    await expect(provider.findCheckout(request)).rejects.toBeInstanceOf(PaymentProviderError);
    await expect(
      new RazorpayProvider({ keyId: "wrong", keySecret: "wrong", baseUrl }).findCheckout(request),
    ).rejects.toBeInstanceOf(PaymentProviderError);
  });
});
