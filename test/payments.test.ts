import { createHmac } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DomainEvent } from "../src/models/index.js";
import {
  ConfigurationError,
  ConflictError,
  CreditService,
  InMemoryDbManager,
  NotFoundError,
  PaymentProviderError,
  PaymentService,
  RazorpayProvider,
  STRIPE_API_VERSION,
  StripeProvider,
  ValidationError,
  WebhookRejectedError,
  createCreditManager,
  eventEnvelope,
  type CheckoutRequest,
  type CheckoutResult,
  type FetchLike,
  type Payment,
  type PaymentProvider,
} from "../src/index.js";

const RZP_SECRET = "rzp_webhook_test_secret";
const STRIPE_SECRET = "whsec_test_secret";
const T0 = Date.parse("2030-01-01T00:00:00.000Z");

// ---- A local stand-in for the providers' REST APIs, checking what it is sent. ----------------------
//
// Built from the providers' documentation, not tried against them:
// - Razorpay: `reference_id` is "the unique reference number" of a link (at most 40 characters);
//   "Fetch All Payment Links" (`GET /v1/payment_links`) takes `reference_id` (and `payment_id`) as
//   query parameters and answers `{ payment_links: [...] }`. A second link with a reference_id
//   in use is refused here with a 400; the docs found give no text for that refusal, and the
//   library does not read it (a failed attempt to open a link is followed by a look-up).
//   https://razorpay.com/docs/api/payments/payment-links/fetch-all-standard
//   https://razorpay.com/docs/api/payments/payment-links/update-standard ("a unique reference number")
//   https://github.com/razorpay/razorpay-node/blob/master/documents/paymentLink.md
// - Stripe: the status and body of the first request with an `Idempotency-Key`, once the endpoint
//   started executing, are saved and returned to every retry with that key, 500s included; a
//   request refused before that saves nothing. https://docs.stripe.com/api/idempotent_requests

interface Seen {
  method: string;
  path: string;
  auth: string | undefined;
  type: string | undefined;
  idem: string | undefined;
  body: string;
}
let server: Server;
let baseUrl: string;
const seen: Seen[] = [];

/** Razorpay links by reference_id; Stripe's saved answers by Idempotency-Key. */
const rzpLinks = new Map<string, Record<string, unknown>>();
const stripeSaved = new Map<string, { status: number; json: unknown }>();
let made = 0;
/**
 * Faults the next matching requests (method, path prefix) meet, in order: `before` (refused with a
 * 500 before anything is made or read), `after` (the checkout is made, then the answer is a 500),
 * `drop` (made, then the connection is cut: the caller never hears back).
 */
const faults: { method: string; path: string; mode: "before" | "after" | "drop" }[] = [];
beforeEach(() => {
  rzpLinks.clear();
  stripeSaved.clear();
  faults.length = 0;
});

const readBody = (req: IncomingMessage) =>
  new Promise<string>((resolve) => {
    let s = "";
    req.on("data", (c) => (s += c));
    req.on("end", () => resolve(s));
  });

beforeAll(async () => {
  server = createServer(async (req, res) => {
    const body = await readBody(req);
    const s: Seen = {
      method: req.method ?? "",
      path: req.url ?? "",
      auth: req.headers.authorization,
      type: req.headers["content-type"],
      idem: req.headers["idempotency-key"] as string | undefined,
      body,
    };
    seen.push(s);
    const send = (status: number, json: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(json));
    };
    const fi = faults.findIndex((f) => f.method === s.method && s.path.startsWith(f.path));
    const fault = fi < 0 ? undefined : faults.splice(fi, 1)[0]?.mode;
    if (fault === "before") return send(500, { error: { code: "SERVER_ERROR", description: "The server encountered an error." } });
    /** The answer to a create that made its object: as planned, or lost to the fault. */
    const answer = (status: number, json: unknown) => {
      if (fault === "drop") return res.socket?.destroy();
      if (fault === "after") return send(500, { error: { code: "SERVER_ERROR", message: "Something went wrong on our end." } });
      send(status, json);
    };
    const rzpAuth = s.auth === `Basic ${Buffer.from("rzp_test_key:rzp_test_secret").toString("base64")}`;
    if (s.method === "POST" && s.path === "/v1/payment_links") {
      if (!rzpAuth) return send(401, { error: { code: "BAD_REQUEST_ERROR", description: "Authentication failed" } });
      const b = JSON.parse(body);
      // As Razorpay documents it: a reference_id of at most 40 characters, unique per link.
      if (typeof b.reference_id === "string" && b.reference_id.length > 40) {
        return send(400, { error: { code: "BAD_REQUEST_ERROR", description: "The reference id may not be greater than 40 characters.", field: "reference_id" } });
      }
      if (typeof b.reference_id === "string" && rzpLinks.has(b.reference_id)) {
        return send(400, { error: { code: "BAD_REQUEST_ERROR", description: "reference_id is not unique", field: "reference_id" } });
      }
      const n = ++made;
      const link = { ...b, id: `plink_T${n}`, short_url: `https://rzp.io/i/T${n}`, amount_paid: 0, status: "created", payments: null };
      if (typeof b.reference_id === "string") rzpLinks.set(b.reference_id, link);
      return answer(200, link);
    }
    if (s.method === "GET" && s.path.startsWith("/v1/payment_links?")) {
      if (!rzpAuth) return send(401, { error: { code: "BAD_REQUEST_ERROR", description: "Authentication failed" } });
      const ref = new URLSearchParams(s.path.slice(s.path.indexOf("?") + 1)).get("reference_id");
      const links = ref === null ? [...rzpLinks.values()] : [rzpLinks.get(ref)].filter((x) => x !== undefined);
      return send(200, { payment_links: links });
    }
    if (s.method === "POST" && s.path === "/v1/checkout/sessions") {
      if (s.auth !== "Bearer sk_test_123") return send(401, { error: { message: "Invalid API Key provided" } });
      const saved = s.idem === undefined ? undefined : stripeSaved.get(s.idem);
      if (saved !== undefined) return send(saved.status, saved.json);
      const n = ++made;
      const session = { id: `cs_test_${n}`, url: `https://checkout.stripe.com/c/pay/cs_test_${n}`, object: "checkout.session" };
      // Saved once the endpoint started: the session, or the 500 its answer turned into.
      const status = fault === "after" ? 500 : 200;
      const json = fault === "after" ? { error: { type: "api_error", message: "Something went wrong on our end." } } : session;
      if (s.idem !== undefined) stripeSaved.set(s.idem, { status, json });
      return answer(200, session);
    }
    if (s.method === "POST" && /^\/v1\/payment_links\/[^/]+\/cancel$/.test(s.path)) {
      if (s.auth !== `Basic ${Buffer.from("rzp_test_key:rzp_test_secret").toString("base64")}`) return send(401, { error: { description: "Authentication failed" } });
      return send(200, { id: s.path.split("/")[3], status: "cancelled" });
    }
    if (s.method === "POST" && /^\/v1\/checkout\/sessions\/[^/]+\/expire$/.test(s.path)) {
      if (s.auth !== "Bearer sk_test_123") return send(401, { error: { message: "Invalid API Key provided" } });
      return send(200, { id: s.path.split("/")[4], object: "checkout.session", status: "expired" });
    }
    send(404, { error: { message: "not found" } });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

// ---- Payloads in the providers' documented shapes, signed with the test secrets. --------------------

function rzpSign(body: string, secret = RZP_SECRET) {
  return { "X-Razorpay-Signature": createHmac("sha256", secret).update(body).digest("hex"), "content-type": "application/json" };
}

function stripeSign(body: string, at = T0, secret = STRIPE_SECRET) {
  const t = Math.floor(at / 1000);
  const v1 = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
  return { "stripe-signature": `t=${t},v1=${v1}` };
}

function rzpPaymentEntity(p: Payment, status: string, extra: Record<string, unknown> = {}) {
  return {
    id: "pay_29QQoUBi66xm2f",
    entity: "payment",
    amount: p.amount,
    currency: p.currency,
    status,
    order_id: "order_9A33XWu170gUtm",
    method: "card",
    amount_refunded: 0,
    captured: status === "captured",
    email: "gaurav.kumar@example.com",
    notes: { credit_payment_id: p.id, user_id: p.userId },
    created_at: 1567674599,
    ...extra,
  };
}

function rzpEvent(event: string, payload: Record<string, unknown>) {
  // A pretty-printed body: signatures must cover the bytes as sent, not a re-serialization.
  return JSON.stringify(
    { entity: "event", account_id: "acc_BFQ7uQEaa7j2z7", event, contains: Object.keys(payload), payload, created_at: 1567674606 },
    null,
    2,
  );
}

function rzpLinkPaid(p: Payment) {
  return rzpEvent("payment_link.paid", {
    payment_link: {
      entity: {
        id: p.providerRef,
        amount: p.amount,
        amount_paid: p.amount,
        currency: p.currency,
        reference_id: p.id,
        status: "paid",
        notes: { credit_payment_id: p.id, user_id: p.userId },
      },
    },
    payment: { entity: rzpPaymentEntity(p, "captured") },
    order: { entity: { id: "order_9A33XWu170gUtm", amount: p.amount, status: "paid" } },
  });
}

function stripeEvent(type: string, object: Record<string, unknown>) {
  return JSON.stringify({
    id: `evt_${type.replace(/\W/g, "")}`,
    object: "event",
    api_version: "2024-06-20",
    created: Math.floor(T0 / 1000),
    type,
    data: { object },
    livemode: false,
    pending_webhooks: 1,
  });
}

function stripeSession(p: Payment, payment_status: string) {
  return {
    id: p.providerRef,
    object: "checkout.session",
    amount_total: p.amount,
    currency: p.currency.toLowerCase(),
    client_reference_id: p.id,
    metadata: { credit_payment_id: p.id, user_id: p.userId },
    mode: "payment",
    payment_intent: "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    payment_status,
    status: "complete",
  };
}

async function setup(opts: { rzpSecret?: string | undefined; domainEvents?: boolean } = {}) {
  const db = new InMemoryDbManager();
  const clock = { now: T0 };
  const credits = new CreditService({ db, clock: () => new Date(clock.now), domainEvents: opts.domainEvents });
  const razorpay = new RazorpayProvider({
    keyId: "rzp_test_key",
    keySecret: "rzp_test_secret",
    webhookSecret: "rzpSecret" in opts ? opts.rzpSecret : RZP_SECRET,
    baseUrl,
    callbackUrl: "https://app.example.com/paid",
  });
  const stripe = new StripeProvider({
    secretKey: "sk_test_123",
    webhookSecret: STRIPE_SECRET,
    successUrl: "https://app.example.com/ok",
    cancelUrl: "https://app.example.com/cancel",
    baseUrl,
  });
  const payments = new PaymentService({
    db,
    clock: () => new Date(clock.now),
    providers: [razorpay, stripe],
    creditsPerUnit: 0.1,
    ...(opts.domainEvents === true ? { credits } : {}),
  });
  return { db, clock, credits, payments };
}

describe("Razorpay payment links", () => {
  it("creates a link through the API (path, auth, body checked) and stores a pending payment", async () => {
    const { payments } = await setup();
    seen.length = 0;
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "inr", provider: "razorpay", description: "Top-up" });
    expect(p).toMatchObject({ status: "created", credits: 5000, currency: "INR", providerRef: expect.stringMatching(/^plink_T\d+$/) });
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
    await expect(payments.createPaymentLink("alice", { amount: 100, currency: "INR", provider: "razorpay" })).rejects.toBeInstanceOf(
      PaymentProviderError,
    );
    const [p] = (await payments.getPaymentHistory("alice")).items;
    expect(p?.status).toBe("failed");
  });

  it("credits a paid link once, even when the event arrives 20 times at once", async () => {
    const { payments, credits, db } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const body = rzpLinkPaid(p);
    const results = await Promise.all(Array.from({ length: 20 }, () => payments.handleWebhook("razorpay", body, rzpSign(body))));
    expect(results.filter((r) => r.outcome === "credited")).toHaveLength(1);
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
    const stored = await payments.getPayment("alice", p.id);
    expect(stored).toMatchObject({ status: "paid", providerPaymentId: "pay_29QQoUBi66xm2f" });
    expect(await db.getGrant(stored.grantId as string)).toMatchObject({ source: "payment", sourceRef: "pay_29QQoUBi66xm2f" });
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
    await expect(payments.handleWebhook("razorpay", body, forged)).rejects.toMatchObject({ status: 400, reason: "bad_signature" });
    // Signed over a re-serialization (what the original did): not the bytes received.
    const reserialized = rzpSign(JSON.stringify(JSON.parse(body)));
    await expect(payments.handleWebhook("razorpay", body, reserialized)).rejects.toBeInstanceOf(WebhookRejectedError);
    await expect(payments.handleWebhook("razorpay", body, {})).rejects.toBeInstanceOf(WebhookRejectedError);
    // The genuine signature over the raw bytes passes, as bytes or string.
    expect((await payments.handleWebhook("razorpay", new TextEncoder().encode(body), rzpSign(body))).outcome).toBe("credited");
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
    await expect(payments.handleWebhook("razorpay", otherUser, rzpSign(otherUser))).rejects.toMatchObject({ reason: "user_mismatch" });
    const otherAmount = rzpEvent("payment.captured", { payment: { entity: rzpPaymentEntity(p, "captured", { amount: 100 }) } });
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
          entity: { id, amount: p.amount, currency: p.currency, reference_id: p.id, status, notes: { credit_payment_id: p.id, user_id: p.userId } },
        },
      });
    for (const [event, status] of [["payment_link.cancelled", "cancelled"], ["payment_link.expired", "expired"]] as const) {
      const other = linkEvent(event, "plink_discarded_second", status);
      expect(await payments.handleWebhook("razorpay", other, rzpSign(other))).toMatchObject({ outcome: "ignored", status: "created" });
    }
    expect((await payments.getPayment("alice", p.id)).status).toBe("created");
    // Paying the recorded link still credits.
    const paid = rzpLinkPaid(p);
    expect((await payments.handleWebhook("razorpay", paid, rzpSign(paid))).outcome).toBe("credited");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
    // The payment's own link cancelled: that one counts (on an unpaid payment).
    const q = await payments.createPaymentLink("alice", { amount: 100, currency: "INR", provider: "razorpay" });
    const own = rzpEvent("payment_link.cancelled", {
      payment_link: { entity: { id: q.providerRef, amount: q.amount, currency: q.currency, reference_id: q.id, status: "cancelled", notes: { credit_payment_id: q.id } } },
    });
    expect(await payments.handleWebhook("razorpay", own, rzpSign(own))).toMatchObject({ outcome: "updated", status: "cancelled" });
  });

  it("a failed attempt, then a successful one: credited", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const failed = rzpEvent("payment.failed", { payment: { entity: rzpPaymentEntity(p, "failed", { id: "pay_failed1" }) } });
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
      refund: { entity: { id: "rfnd_FP8QHiV938haTz", entity: "refund", amount: 50_000, currency: "INR", payment_id: "pay_29QQoUBi66xm2f", status: "processed" } },
      payment: { entity: rzpPaymentEntity(p, "refunded", { amount_refunded: 50_000, notes: {} }) },
    });
    const results = await Promise.all(Array.from({ length: 5 }, () => payments.handleWebhook("razorpay", refund, rzpSign(refund))));
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
    expect(await payments.getPayment("alice", p.id)).toMatchObject({ status: "partially_refunded", creditsReversed: 1001 });
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
    const events = rows.map((r) => DomainEvent.parse(eventEnvelope({ ...r, createdAt: r.createdAt.toISOString(), attempt: 1 })));
    expect(events.map((e) => [e.type, (e.payload as { amount: number }).amount])).toEqual([
      ["credits_added", 5000],
      ["credits_refunded", 1001],
      ["credits_refunded", 3999],
      ["credits_exhausted", undefined], // the level change the dispute's take-back caused
    ]);
    expect(events[0]?.payload).toMatchObject({ source: "payment", sourceRef: "pay_29QQoUBi66xm2f" });
    expect(events[1]?.payload).toMatchObject({ via: "deduct", paymentId: p.id, refundedAmount: 10_001, balanceAfter: 3999 });
    expect(events[2]?.payload).toMatchObject({ via: "void", paymentId: p.id, refundedAmount: 50_000, balanceAfter: 0 });
  });

  it("a refund or lost dispute of another attempt at the link (not the payment credited) is ignored", async () => {
    const { payments, credits } = await setup();
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    // pay_other: authorized, never captured; then the credited attempt.
    const auth = rzpEvent("payment.authorized", { payment: { entity: rzpPaymentEntity(p, "authorized", { id: "pay_other" }) } });
    expect((await payments.handleWebhook("razorpay", auth, rzpSign(auth))).outcome).toBe("updated");
    const body = rzpLinkPaid(p);
    expect((await payments.handleWebhook("razorpay", body, rzpSign(body))).outcome).toBe("credited");
    // Razorpay auto-refunds pay_other: the event names our payment in the notes, but not the credited pay_….
    const autoRefund = rzpEvent("refund.processed", {
      refund: { entity: { id: "rfnd_auto", entity: "refund", amount: 50_000, currency: "INR", payment_id: "pay_other", status: "processed" } },
      payment: { entity: rzpPaymentEntity(p, "refunded", { id: "pay_other", captured: false, amount_refunded: 50_000 }) },
    });
    expect(await payments.handleWebhook("razorpay", autoRefund, rzpSign(autoRefund))).toMatchObject({ outcome: "ignored", paymentId: p.id, status: "paid" });
    const lost = rzpEvent("payment.dispute.lost", {
      payment: { entity: rzpPaymentEntity(p, "captured", { id: "pay_other" }) },
      dispute: { entity: { id: "disp_1", amount: 50_000, status: "lost", payment_id: "pay_other" } },
    });
    expect((await payments.handleWebhook("razorpay", lost, rzpSign(lost))).outcome).toBe("ignored");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 5000 });
    expect(await payments.getPayment("alice", p.id)).toMatchObject({ status: "paid", creditsReversed: 0, refundedAmount: 0 });
    // The credited attempt's refund still takes the credits back.
    const refund = rzpEvent("refund.processed", {
      refund: { entity: { id: "rfnd_2", entity: "refund", amount: 50_000, currency: "INR", payment_id: "pay_29QQoUBi66xm2f", status: "processed" } },
      payment: { entity: rzpPaymentEntity(p, "refunded", { amount_refunded: 50_000 }) },
    });
    expect((await payments.handleWebhook("razorpay", refund, rzpSign(refund))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("alice")).toMatchObject({ balance: 0 });
  });

  it("ignores event types and payments it does not track", async () => {
    const { payments } = await setup();
    const order = rzpEvent("order.paid", { order: { entity: { id: "order_1" } } });
    expect((await payments.handleWebhook("razorpay", order, rzpSign(order))).outcome).toBe("ignored");
    const stranger = rzpEvent("payment.captured", { payment: { entity: { id: "pay_x", amount: 1, currency: "INR", notes: {} } } });
    expect((await payments.handleWebhook("razorpay", stranger, rzpSign(stranger))).outcome).toBe("ignored");
    await expect(payments.handleWebhook("paypal", "{}", {})).rejects.toBeInstanceOf(NotFoundError);
  });
});

describe("Stripe Checkout Sessions", () => {
  it("creates a session through the API (form body, bearer key, idempotency key)", async () => {
    const { payments } = await setup();
    seen.length = 0;
    const p = await payments.createPaymentLink("bob", { amount: 1999, currency: "USD", provider: "stripe", idempotencyKey: "k1" });
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
    const a = await payments.createPaymentLink("alice", { amount: 700, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" });
    const b = await payments.createPaymentLink("bob", { amount: 900, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" });
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
    await expect(payments.handleWebhook("stripe", body, { "stripe-signature": "garbage" })).rejects.toBeInstanceOf(WebhookRejectedError);
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: 0 });
    clock.now = T0 + 4 * 60_000; // within 5 minutes
    const results = await Promise.all(Array.from({ length: 20 }, () => payments.handleWebhook("stripe", body, stripeSign(body))));
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
    const other = { id: "ch_other", object: "charge", amount: 2000, currency: "usd", payment_intent: "pi_other", metadata: { credit_payment_id: p.id, user_id: "bob" } };
    const otherRefunded = stripeEvent("charge.refunded", { ...other, amount_refunded: 2000, refunded: true });
    expect((await payments.handleWebhook("stripe", otherRefunded, stripeSign(otherRefunded))).outcome).toBe("ignored");
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: 50 });
    const charge = { id: "ch_3MtwBw", object: "charge", amount: 2000, currency: "usd", payment_intent: "pi_3MtwBwLkdIwHu7ix28a3tqPa" };
    const refunded = stripeEvent("charge.refunded", { ...charge, amount_refunded: 2000, refunded: true });
    expect((await payments.handleWebhook("stripe", refunded, stripeSign(refunded))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("bob")).toMatchObject({ balance: -150, debt: 150 });
    const lost = stripeEvent("charge.dispute.closed", { id: "dp_1", object: "dispute", amount: 2000, currency: "usd", charge: "ch_3MtwBw", payment_intent: "pi_3MtwBwLkdIwHu7ix28a3tqPa", status: "lost" });
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
      await expect(credits.reserveCredits("mallory", 1, { idempotencyKey: key })).rejects.toMatchObject({ code: "VALIDATION_ERROR" });
      await expect(credits.addCredits("mallory", 1, { idempotencyKey: key })).rejects.toThrow(/reserved for the library's own operations/);
    }
    // … and the keys without it (what the library used to use) are just the user's own.
    for (const key of [`dispute:stripe:${p.id}`, `refund:stripe:${p.id}:2000`]) {
      await credits.releaseReservedCredits((await credits.reserveCredits("mallory", 1, { idempotencyKey: key })).id);
    }
    const charge = { id: "ch_1", object: "charge", amount: 2000, currency: "usd", payment_intent: "pi_3MtwBwLkdIwHu7ix28a3tqPa" };
    const refunded = stripeEvent("charge.refunded", { ...charge, amount_refunded: 2000, refunded: true });
    expect((await payments.handleWebhook("stripe", refunded, stripeSign(refunded))).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("mallory")).toMatchObject({ balance: 0, available: 0 });
    const keys = (await db.listJournal("mallory", { order: "asc", limit: 100 })).map((e) => e.idempotencyKey).filter((k) => k?.startsWith("cm:"));
    expect(keys).toEqual([`cm:payment:stripe:pi_3MtwBwLkdIwHu7ix28a3tqPa`, `cm:refund:stripe:${p.id}:2000`]);
  });
});

describe("payments: inputs and history", () => {
  it("validates inputs and pages the history newest first", async () => {
    const { payments, clock } = await setup();
    await expect(payments.createPaymentLink("bob", { amount: 1.5, currency: "USD", provider: "stripe" })).rejects.toBeInstanceOf(ValidationError);
    await expect(payments.createPaymentLink("bob", { amount: 100, currency: "US", provider: "stripe" })).rejects.toBeInstanceOf(ValidationError);
    await expect(payments.createPaymentLink("bob", { amount: 100, currency: "USD", provider: "paypal" })).rejects.toBeInstanceOf(ValidationError);
    await expect(payments.createPaymentLink("bob", { amount: 5, currency: "USD", provider: "stripe" })).rejects.toThrow(/no whole credit/);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      clock.now = T0 + i * 1000;
      ids.push((await payments.createPaymentLink("carol", { amount: 100 + i, currency: "USD", provider: "stripe" })).id);
    }
    const first = await payments.getPaymentHistory("carol", { limit: 2 });
    expect(first.items.map((p) => p.id)).toEqual([ids[4], ids[3]]);
    const second = await payments.getPaymentHistory("carol", { limit: 2, cursor: first.nextCursor as string });
    expect(second.items.map((p) => p.id)).toEqual([ids[2], ids[1]]);
    const third = await payments.getPaymentHistory("carol", { limit: 2, cursor: second.nextCursor as string });
    expect(third).toEqual({ items: [expect.objectContaining({ id: ids[0] })], nextCursor: null });
    await expect(payments.getPaymentHistory("carol", { cursor: "!!" })).rejects.toBeInstanceOf(ValidationError);
  });

  it("createPaymentLink with an idempotency key: one payment, one checkout; other arguments conflict", async () => {
    const { payments } = await setup();
    seen.length = 0;
    const a = await payments.createPaymentLink("erin", { amount: 700, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" });
    const b = await payments.createPaymentLink("erin", { amount: 700, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" });
    expect(b).toEqual(a);
    expect(seen).toHaveLength(1);
    await expect(
      payments.createPaymentLink("erin", { amount: 800, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" }),
    ).rejects.toMatchObject({ code: "IDEMPOTENCY_CONFLICT" });
    // Keys are per user.
    const c = await payments.createPaymentLink("frank", { amount: 700, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" });
    expect(c.id).not.toBe(a.id);
  });

  it("createPaymentLink with an idempotency key: another description or metadata conflicts too", async () => {
    const { payments } = await setup();
    const args = { amount: 700, currency: "USD", provider: "stripe", idempotencyKey: "k", description: "Top-up", metadata: { plan: "a", n: 1 } };
    const a = await payments.createPaymentLink("erin", args);
    seen.length = 0;
    for (const other of [{ description: "something else" }, { description: undefined }, { metadata: { plan: "b", n: 1 } }, { metadata: undefined }]) {
      await expect(payments.createPaymentLink("erin", { ...args, ...other })).rejects.toMatchObject({ code: "IDEMPOTENCY_CONFLICT" });
    }
    // The same metadata in another key order is the same argument.
    expect(await payments.createPaymentLink("erin", { ...args, metadata: { n: 1, plan: "a" } })).toEqual(a);
    expect(seen).toHaveLength(0);
    expect((await payments.getPaymentHistory("erin")).items).toEqual([a]);
  });

  it("creditsPerUnit: exact decimal products are not short-changed by floating point; fractions still round down", async () => {
    const cases: [number, number, number][] = [
      [0.29, 100, 29], // 28.999999999999996 in doubles
      [0.57, 100, 57],
      [1.13, 100, 113],
      [2.01, 100, 201],
      [0.07, 100, 7], // 7.000000000000001: not rounded up past 7
      [0.29, 101, 29], // 29.29
      [1.13, 99, 111], // 111.87
    ];
    for (const [rate, amount, credits] of cases) {
      const payments = new PaymentService({
        db: new InMemoryDbManager(),
        creditsPerUnit: rate,
        providers: [new StripeProvider({ secretKey: "sk_test_123", successUrl: "https://a/ok", cancelUrl: "https://a/no", baseUrl })],
      });
      const p = await payments.createPaymentLink("alice", { amount, currency: "USD", provider: "stripe" });
      expect([rate, amount, p.credits]).toEqual([rate, amount, credits]);
    }
  });

  it("keyNamespace: two stores on one provider account open their own checkouts for the same user and key", async () => {
    const stripe = new StripeProvider({ secretKey: "sk_test_123", successUrl: "https://a/ok", cancelUrl: "https://a/no", baseUrl });
    const open = async (keyNamespace?: string) => {
      const payments = new PaymentService({ db: new InMemoryDbManager(), providers: [stripe], ...(keyNamespace ? { keyNamespace } : {}) });
      seen.length = 0;
      const p = await payments.createPaymentLink("alice", { amount: 100, currency: "USD", provider: "stripe", idempotencyKey: "order-7" });
      return { p, idem: seen[0]?.idem };
    };
    // Without namespaces both stores derive one id: the second gets the first's saved session.
    const [a, b] = [await open(), await open()];
    expect(b.p.id).toBe(a.p.id);
    expect(b.p.providerRef).toBe(a.p.providerRef);
    // With their own namespaces: two ids, two Idempotency-Keys, two sessions; each store's retry finds its own.
    const [eu, us] = [await open("eu"), await open("us")];
    expect(new Set([a.p.id, eu.p.id, us.p.id]).size).toBe(3);
    expect(eu.idem).toBe(eu.p.id);
    expect(us.idem).toBe(us.p.id);
    expect(eu.p.providerRef).not.toBe(us.p.providerRef);
    expect(eu.p.id).toMatch(/^pl_[0-9a-f]{37}$/);
    // Validated up front, as the wait options are.
    for (const bad of [{ checkoutWaitMs: -1 }, { checkoutStaleSeconds: Number.NaN }]) {
      expect(() => new PaymentService({ db: new InMemoryDbManager(), ...bad })).toThrow(ConfigurationError);
      await expect(createCreditManager({ payments: { providers: [stripe], ...bad } })).rejects.toBeInstanceOf(ValidationError);
    }
    for (const keyNamespace of ["", "x".repeat(65), "a\u0000b"]) {
      expect(() => new PaymentService({ db: new InMemoryDbManager(), keyNamespace })).toThrow(ConfigurationError);
      await expect(createCreditManager({ payments: { providers: [stripe], keyNamespace } })).rejects.toBeInstanceOf(ValidationError);
    }
  });

  it("creditsPerUnit per currency: other currencies are refused with a ValidationError, nothing stored or sent", async () => {
    const stripe = new StripeProvider({ secretKey: "sk_test_123", successUrl: "https://a/ok", cancelUrl: "https://a/no", baseUrl });
    const m = await createCreditManager({ payments: { providers: [stripe], creditsPerUnit: { INR: 1, USD: 85 } } });
    expect((await m.payments.createPaymentLink("eve", { amount: 100, currency: "usd", provider: "stripe" })).credits).toBe(8500);
    expect((await m.payments.createPaymentLink("eve", { amount: 100, currency: "INR", provider: "stripe" })).credits).toBe(100);
    seen.length = 0;
    for (const currency of ["VND", "XYZ", "EUR"]) {
      const error = await m.payments.createPaymentLink("eve", { amount: 100_000, currency, provider: "stripe" }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect(error).toMatchObject({ issues: [{ path: "currency", message: "accepted: INR, USD" }] });
    }
    expect(seen).toHaveLength(0);
    expect((await m.payments.getPaymentHistory("eve")).items.map((p) => p.currency)).toEqual(["INR", "USD"]);
    await m.close();
    // A rate table that names nothing, or not as codes, or a bad rate, is refused up front.
    for (const creditsPerUnit of [{}, { usd: 1 }, { USD: 0 }, { USD: Number.NaN }] as Record<string, number>[]) {
      await expect(createCreditManager({ payments: { providers: [stripe], creditsPerUnit } })).rejects.toBeInstanceOf(ValidationError);
      expect(() => new PaymentService({ db: new InMemoryDbManager(), creditsPerUnit })).toThrow(ConfigurationError);
    }
    for (const creditsPerUnit of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new PaymentService({ db: new InMemoryDbManager(), creditsPerUnit })).toThrow(ConfigurationError);
    }
  });

  it("rejected webhooks are recorded as ledger error events", async () => {
    const m = await createCreditManager({
      payments: { providers: [new RazorpayProvider({ webhookSecret: RZP_SECRET, baseUrl })] },
    });
    const body = rzpEvent("payment.captured", {});
    await expect(m.payments.handleWebhook("razorpay", body, rzpSign(body, "forged"))).rejects.toBeInstanceOf(WebhookRejectedError);
    const [e] = await m.ledger.getEntries({ eventType: "error" });
    expect(e).toMatchObject({ eventType: "error", details: { provider: "razorpay", reason: "bad_signature" } });
    await m.close();
  });

  it("createCreditManager wires promos and payments", async () => {
    const m = await createCreditManager({
      payments: { providers: [new StripeProvider({ secretKey: "sk_test_123", webhookSecret: STRIPE_SECRET, successUrl: "https://a/ok", cancelUrl: "https://a/no", baseUrl })] },
    });
    const p = await m.payments.createPaymentLink("dave", { amount: 500, currency: "EUR", provider: "stripe" });
    const body = stripeEvent("checkout.session.completed", stripeSession(p, "paid"));
    expect((await m.payments.handleWebhook("stripe", body, stripeSign(body, Date.now()))).outcome).toBe("credited");
    expect(await m.credits.getUserCreditsInfo("dave")).toMatchObject({ balance: 500 });
    await m.promos.createPromo({ code: "hello", credits: 5 });
    await m.promos.claimPromo("dave", "HELLO");
    expect(await m.credits.getUserCreditsInfo("dave")).toMatchObject({ balance: 505 });
    await m.close();
  });
});

// ---- One checkout per (user, idempotency key) -----------------------------------------------------

/** A provider whose checkouts the test answers by hand (each call waits on its own deferred). */
function manualProvider(name = "manual") {
  const calls: { request: CheckoutRequest; resolve: (r: CheckoutResult) => void; reject: (e: Error) => void }[] = [];
  const cancelled: string[] = [];
  const provider: PaymentProvider = {
    name,
    createCheckout: (request) => new Promise((resolve, reject) => calls.push({ request, resolve, reject })),
    async cancelCheckout(ref) {
      cancelled.push(ref);
    },
    verifyWebhook() {},
    parseEvent() {
      throw new Error("not used");
    },
  };
  return { provider, calls, cancelled };
}

const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(cond()).toBe(true);
};

/**
 * A first call for erin's key "k" whose provider call hangs, and a retry 5 s later (the claim is
 * stale) that takes the payment over and calls the provider again; both provider calls unanswered.
 */
async function takenOver() {
  const clock = { now: T0 };
  const { provider, calls, cancelled } = manualProvider();
  const payments = new PaymentService({ db: new InMemoryDbManager(), clock: () => new Date(clock.now), providers: [provider], checkoutStaleSeconds: 5 });
  const input = { amount: 700, currency: "USD", provider: "manual", idempotencyKey: "k" };
  const first = payments.createPaymentLink("erin", input);
  await until(() => calls.length === 1);
  clock.now += 5_000;
  const retry = payments.createPaymentLink("erin", input);
  await until(() => calls.length === 2);
  return { payments, calls, cancelled, first, retry };
}

describe("payments: one checkout per idempotency key", () => {
  it("a keyed payment's id fits Razorpay's 40-character reference_id (an unkeyed one too)", async () => {
    const service = new PaymentService({
      db: new InMemoryDbManager(),
      providers: [new RazorpayProvider({ keyId: "rzp_test_key", keySecret: "rzp_test_secret", webhookSecret: RZP_SECRET, baseUrl })],
    });
    seen.length = 0;
    const keyed = await service.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay", idempotencyKey: "k".repeat(255) });
    const plain = await service.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const sent = seen.filter((x) => x.path === "/v1/payment_links").map((x) => (JSON.parse(x.body) as { reference_id: string }).reference_id);
    expect(sent).toEqual([keyed.id, plain.id]);
    for (const ref of sent) expect(ref.length).toBeLessThanOrEqual(40);
    expect(keyed).toMatchObject({ providerRef: expect.stringMatching(/^plink_T/), status: "created" });
  });

  it("concurrent calls with one key, over two services sharing a store (two processes), open one checkout and answer the same payment", async () => {
    const db = new InMemoryDbManager();
    const mk = () =>
      new PaymentService({
        db,
        providers: [new RazorpayProvider({ keyId: "rzp_test_key", keySecret: "rzp_test_secret", webhookSecret: RZP_SECRET, baseUrl })],
      });
    const [a, b] = [mk(), mk()];
    seen.length = 0;
    const input = { amount: 50_000, currency: "INR", provider: "razorpay", idempotencyKey: "buy-1" };
    const all = await Promise.all([0, 1, 2, 3, 4, 5].map((n) => (n % 2 === 0 ? a : b).createPaymentLink("alice", input)));
    expect(seen.filter((x) => x.path === "/v1/payment_links")).toHaveLength(1);
    for (const p of all) expect(p).toEqual(all[0]);
    expect(all[0]).toMatchObject({ providerRef: expect.stringMatching(/^plink_T/), checkoutUrl: expect.stringMatching(/^https:\/\/rzp.io\/i\/T/), status: "created" });
    expect(await a.getPayment("alice", all[0]!.id)).toEqual(all[0]);
    // The paid link is credited.
    const body = rzpLinkPaid(all[0]!);
    expect((await a.handleWebhook("razorpay", body, rzpSign(body))).outcome).toBe("credited");
  });

  it("a call waiting on another's checkout fails with a retryable ConflictError; a claim older than checkoutStaleSeconds is taken over, and the late first checkout is cancelled, never handed out", async () => {
    const clock = { now: T0 };
    const { provider, calls, cancelled } = manualProvider();
    const m = await createCreditManager({
      clock: () => new Date(clock.now),
      payments: { providers: [provider], checkoutWaitMs: 40, checkoutStaleSeconds: 30 },
    });
    const input = { amount: 700, currency: "USD", provider: "manual", idempotencyKey: "buy-1" };
    // The first call claims the payment and hangs at the provider (or its process died).
    const first = m.payments.createPaymentLink("erin", input);
    await until(() => calls.length === 1);
    const started = performance.now();
    const err = await m.payments.createPaymentLink("erin", input).catch((e: unknown) => e);
    expect(performance.now() - started).toBeGreaterThanOrEqual(35);
    expect(err).toBeInstanceOf(ConflictError);
    expect(err).toMatchObject({ code: "CONFLICT", details: { reason: "checkout_in_progress", paymentId: calls[0]!.request.paymentId } });
    expect(calls).toHaveLength(1);
    // Still within checkoutStaleSeconds: still waits.
    clock.now += 29_000;
    await expect(m.payments.createPaymentLink("erin", input)).rejects.toBeInstanceOf(ConflictError);
    expect(calls).toHaveLength(1);
    // Past it: a retry takes the claim over and opens the checkout, with the same provider idempotency key.
    clock.now += 1_000;
    const retry = m.payments.createPaymentLink("erin", input);
    await until(() => calls.length === 2);
    expect(calls[1]!.request).toEqual(calls[0]!.request);
    expect(calls[1]!.request.idempotencyKey).toBe(calls[1]!.request.paymentId);
    // A third call meanwhile waits for the take-over instead of taking it again.
    const third = m.payments.createPaymentLink("erin", input);
    calls[1]!.resolve({ providerRef: "ref_2", url: "https://pay.test/2" });
    const p = await retry;
    expect(p).toMatchObject({ providerRef: "ref_2", checkoutUrl: "https://pay.test/2", status: "created" });
    expect(await third).toEqual(p);
    // The first call's provider answers late with another checkout: it is cancelled and its caller
    // gets the recorded one.
    calls[0]!.resolve({ providerRef: "ref_1", url: "https://pay.test/1" });
    expect(await first).toEqual(p);
    expect(cancelled).toEqual(["ref_1"]);
    expect(await m.payments.getPayment("erin", p.id)).toEqual(p);
    expect(calls).toHaveLength(2);
    const [e] = await m.ledger.getEntries({ eventType: "system", userId: "erin" });
    expect(e).toMatchObject({ details: { paymentId: p.id, discardedRef: "ref_1", recordedRef: "ref_2" } });
    await m.close();
  });

  it("a first call that fails after its claim was taken over leaves the take-over's checkout standing", async () => {
    const { payments, calls, cancelled, first, retry } = await takenOver();
    calls[1]!.resolve({ providerRef: "ref_2", url: "https://pay.test/2" });
    const p = await retry;
    calls[0]!.reject(new PaymentProviderError("timeout"));
    expect(await first).toEqual(p);
    expect(await payments.getPayment("erin", p.id)).toMatchObject({ status: "created", providerRef: "ref_2" });
    expect(cancelled).toEqual([]);
  });

  it("a provider failure of the claim holder marks the payment failed; a waiting call answers with it", async () => {
    const { provider, calls } = manualProvider();
    const payments = new PaymentService({ db: new InMemoryDbManager(), clock: () => new Date(T0), providers: [provider] });
    const input = { amount: 700, currency: "USD", provider: "manual", idempotencyKey: "k" };
    const first = payments.createPaymentLink("erin", input);
    await until(() => calls.length === 1);
    const second = payments.createPaymentLink("erin", input);
    await new Promise((r) => setTimeout(r, 20));
    calls[0]!.reject(new PaymentProviderError("refused"));
    await expect(first).rejects.toBeInstanceOf(PaymentProviderError);
    expect(await second).toMatchObject({ status: "failed", checkoutUrl: null });
    expect(calls).toHaveLength(1);
  });

  it("checkoutWaitMs and checkoutStaleSeconds must be finite and >= 0", () => {
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new PaymentService({ db: new InMemoryDbManager(), checkoutWaitMs: bad })).toThrow(ConfigurationError);
      expect(() => new PaymentService({ db: new InMemoryDbManager(), checkoutStaleSeconds: bad })).toThrow(ConfigurationError);
    }
  });

  it("the built-in providers cancel a checkout: Razorpay cancels the link, Stripe expires the session", async () => {
    seen.length = 0;
    await new RazorpayProvider({ keyId: "rzp_test_key", keySecret: "rzp_test_secret", baseUrl }).cancelCheckout("plink_X1");
    await new StripeProvider({ secretKey: "sk_test_123", successUrl: "https://app/ok", cancelUrl: "https://app/no", baseUrl }).cancelCheckout("cs_test_X2");
    expect(seen.map((x) => [x.method, x.path])).toEqual([
      ["POST", "/v1/payment_links/plink_X1/cancel"],
      ["POST", "/v1/checkout/sessions/cs_test_X2/expire"],
    ]);
    await expect(new RazorpayProvider({ keyId: "wrong", keySecret: "wrong", baseUrl }).cancelCheckout("plink_X1")).rejects.toBeInstanceOf(
      PaymentProviderError,
    );
  });
});

// ---- Retrying a payment whose checkout failed to open; finding a checkout already opened -----------

/** A Razorpay provider whose `fetch` holds (until released) or swallows the answer of link creations, in order. */
function razorpayWith(plan: ("crash" | "hold")[]) {
  const held: (() => void)[] = [];
  const provider = new RazorpayProvider({
    keyId: "rzp_test_key",
    keySecret: "rzp_test_secret",
    webhookSecret: RZP_SECRET,
    baseUrl,
    fetch: async (url, init) => {
      const mode = init.method === "POST" && url.endsWith("/v1/payment_links") ? plan.shift() : undefined;
      if (mode === "hold") await new Promise<void>((resolve) => held.push(resolve));
      const res = await fetch(url, init);
      // The link is made; the process that asked dies before it hears the answer.
      if (mode === "crash") return res.text().then(() => new Promise<never>(() => undefined));
      return res;
    },
  });
  return { provider, held };
}

const rzpInput = { amount: 50_000, currency: "INR", provider: "razorpay", idempotencyKey: "buy-1" };
const stripeInput = { amount: 1999, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" };
const requests = () => seen.map((x) => `${x.method} ${x.path}`);

describe("payments: a retry with the same key after the checkout failed to open", () => {
  it("Razorpay refused before making the link: the retry opens it (one link) and answers the payment", async () => {
    const { payments } = await setup();
    faults.push({ method: "POST", path: "/v1/payment_links", mode: "before" });
    await expect(payments.createPaymentLink("alice", rzpInput)).rejects.toBeInstanceOf(PaymentProviderError);
    const [failed] = (await payments.getPaymentHistory("alice")).items;
    expect(failed).toMatchObject({ status: "failed", checkoutUrl: null, providerRef: null });
    seen.length = 0;
    const p = await payments.createPaymentLink("alice", rzpInput);
    expect(p).toMatchObject({ id: failed!.id, status: "created", providerRef: expect.stringMatching(/^plink_T/) });
    // Asked first for a link of an earlier attempt (none), then opened one with the same reference_id.
    expect(requests()).toEqual([`GET /v1/payment_links?reference_id=${p.id}`, "POST /v1/payment_links"]);
    expect(JSON.parse(seen[1]!.body)).toMatchObject({ reference_id: p.id });
    expect([...rzpLinks.values()].map((l) => l.id)).toEqual([p.providerRef]);
    expect((await payments.getPaymentHistory("alice")).items).toEqual([p]);
    // Done: a further retry answers the payment, asking nothing.
    seen.length = 0;
    expect(await payments.createPaymentLink("alice", rzpInput)).toEqual(p);
    expect(seen).toHaveLength(0);
    const body = rzpLinkPaid(p);
    expect((await payments.handleWebhook("razorpay", body, rzpSign(body))).outcome).toBe("credited");
  });

  it("Razorpay made the link but its answer was lost (and the look-up failed too): the retry finds the link, opens none", async () => {
    const { payments } = await setup();
    faults.push({ method: "POST", path: "/v1/payment_links", mode: "drop" }, { method: "GET", path: "/v1/payment_links", mode: "before" });
    await expect(payments.createPaymentLink("alice", rzpInput)).rejects.toThrow(/Request failed/);
    expect(rzpLinks.size).toBe(1);
    seen.length = 0;
    const p = await payments.createPaymentLink("alice", rzpInput);
    const [link] = [...rzpLinks.values()];
    expect(p).toMatchObject({ status: "created", providerRef: link!.id, checkoutUrl: link!.short_url });
    expect(requests()).toEqual([`GET /v1/payment_links?reference_id=${p.id}`]);
    expect(rzpLinks.size).toBe(1);
  });

  it("Razorpay made the link and answered an error: the same call finds the link and answers it", async () => {
    const { payments } = await setup();
    faults.push({ method: "POST", path: "/v1/payment_links", mode: "after" });
    seen.length = 0;
    const p = await payments.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const [link] = [...rzpLinks.values()];
    expect(p).toMatchObject({ status: "created", providerRef: link!.id });
    expect(requests()).toEqual(["POST /v1/payment_links", `GET /v1/payment_links?reference_id=${p.id}`]);
  });

  it("Stripe made the session but the answer was lost: the retry sends the same Idempotency-Key and records that session", async () => {
    const { payments } = await setup();
    faults.push({ method: "POST", path: "/v1/checkout/sessions", mode: "drop" });
    await expect(payments.createPaymentLink("bob", stripeInput)).rejects.toBeInstanceOf(PaymentProviderError);
    expect((await payments.getPaymentHistory("bob")).items[0]).toMatchObject({ status: "failed", checkoutUrl: null });
    const p = await payments.createPaymentLink("bob", stripeInput);
    const [saved] = [...stripeSaved.values()];
    expect(stripeSaved.size).toBe(1);
    expect(p).toMatchObject({ status: "created", providerRef: (saved!.json as { id: string }).id });
    const posts = seen.filter((x) => x.path === "/v1/checkout/sessions");
    expect(posts.map((x) => x.idem)).toEqual([p.id, p.id]);
    expect(posts[1]!.body).toBe(posts[0]!.body);
  });

  it("Stripe refused before starting (nothing saved): the retry opens the session; a saved 500 is replayed to the retry (use a new key)", async () => {
    const { payments } = await setup();
    faults.push({ method: "POST", path: "/v1/checkout/sessions", mode: "before" });
    await expect(payments.createPaymentLink("bob", stripeInput)).rejects.toBeInstanceOf(PaymentProviderError);
    expect(await payments.createPaymentLink("bob", stripeInput)).toMatchObject({ status: "created", providerRef: expect.stringMatching(/^cs_test_/) });

    // A 500 once the endpoint ran is saved under the key: Stripe answers every retry with it.
    const input = { ...stripeInput, idempotencyKey: "buy-2" };
    faults.push({ method: "POST", path: "/v1/checkout/sessions", mode: "after" });
    await expect(payments.createPaymentLink("bob", input)).rejects.toBeInstanceOf(PaymentProviderError);
    seen.length = 0;
    await expect(payments.createPaymentLink("bob", input)).rejects.toMatchObject({ details: { status: 500 } });
    expect(seen).toHaveLength(1);
    expect((await payments.getPaymentHistory("bob")).items[0]).toMatchObject({ status: "failed", checkoutUrl: null });
    expect(await payments.createPaymentLink("bob", { ...stripeInput, idempotencyKey: "buy-3" })).toMatchObject({ status: "created" });
  });

  it("retries at once make one provider call and answer one payment; a retry that fails answers its waiters with it", async () => {
    const { provider, calls } = manualProvider();
    const payments = new PaymentService({ db: new InMemoryDbManager(), clock: () => new Date(T0), providers: [provider] });
    const input = { amount: 700, currency: "USD", provider: "manual", idempotencyKey: "k" };
    const first = payments.createPaymentLink("erin", input);
    await until(() => calls.length === 1);
    calls[0]!.reject(new PaymentProviderError("HTTP 503"));
    await expect(first).rejects.toBeInstanceOf(PaymentProviderError);

    // Two retries at once: one takes the payment over and calls the provider, the other waits.
    const a = payments.createPaymentLink("erin", input);
    const b = payments.createPaymentLink("erin", input);
    await until(() => calls.length === 2);
    await new Promise((r) => setTimeout(r, 20));
    expect(calls).toHaveLength(2);
    expect(calls[1]!.request).toEqual(calls[0]!.request);
    expect(calls[1]!.request.idempotencyKey).toBe(calls[1]!.request.paymentId);
    // That attempt fails too: the waiter answers with it rather than trying once more.
    calls[1]!.reject(new PaymentProviderError("HTTP 503"));
    await expect(a).rejects.toBeInstanceOf(PaymentProviderError);
    expect(await b).toMatchObject({ status: "failed", checkoutUrl: null });
    expect(calls).toHaveLength(2);

    // The next retries: one call, which succeeds; both answer the same payment.
    const c = payments.createPaymentLink("erin", input);
    const d = payments.createPaymentLink("erin", input);
    await until(() => calls.length === 3);
    await new Promise((r) => setTimeout(r, 20));
    calls[2]!.resolve({ providerRef: "ref_3", url: "https://pay.test/3" });
    const p = await c;
    expect(p).toMatchObject({ status: "created", providerRef: "ref_3", checkoutUrl: "https://pay.test/3" });
    expect(await d).toEqual(p);
    expect(calls).toHaveLength(3);
  });

  it("a late checkout of an earlier attempt is recorded on a payment whose retry failed (not cancelled)", async () => {
    const { payments, calls, cancelled, first, retry } = await takenOver();
    calls[1]!.reject(new PaymentProviderError("timeout"));
    await expect(retry).rejects.toBeInstanceOf(PaymentProviderError);
    calls[0]!.resolve({ providerRef: "ref_1", url: "https://pay.test/1" });
    const p = await first;
    expect(p).toMatchObject({ status: "created", providerRef: "ref_1", checkoutUrl: "https://pay.test/1" });
    expect(await payments.getPayment("erin", p.id)).toEqual(p);
    expect(cancelled).toEqual([]);
  });

  it("what a retry does not reopen: a failed payment attempt on a checkout, a payment the provider moved on, other arguments", async () => {
    const { payments, db } = await setup();
    // A payment attempt failed on the link (the link is still payable): the retry answers the payment.
    const p = await payments.createPaymentLink("alice", rzpInput);
    const failed = rzpEvent("payment.failed", { payment: { entity: rzpPaymentEntity(p, "failed", { id: "pay_failed1" }) } });
    expect((await payments.handleWebhook("razorpay", failed, rzpSign(failed))).outcome).toBe("updated");
    seen.length = 0;
    expect(await payments.createPaymentLink("alice", rzpInput)).toMatchObject({ id: p.id, status: "failed", checkoutUrl: p.checkoutUrl });
    expect(seen).toHaveLength(0);

    // No checkout, but the provider's word moved it on (e.g. an unrecorded session expired): answered as stored.
    const input = { ...rzpInput, idempotencyKey: "buy-2" };
    faults.push({ method: "POST", path: "/v1/payment_links", mode: "before" });
    await expect(payments.createPaymentLink("alice", input)).rejects.toBeInstanceOf(PaymentProviderError);
    const f = (await payments.getPaymentHistory("alice")).items.find((x) => x.id !== p.id);
    await db.updatePayment({ ...f!, status: "expired", version: f!.version + 1 });
    seen.length = 0;
    expect(await payments.createPaymentLink("alice", input)).toMatchObject({ id: f!.id, status: "expired", checkoutUrl: null });

    // Other arguments with the key of a failed payment: still a conflict, nothing sent.
    const input3 = { ...rzpInput, idempotencyKey: "buy-3" };
    faults.push({ method: "POST", path: "/v1/payment_links", mode: "before" });
    await expect(payments.createPaymentLink("alice", input3)).rejects.toBeInstanceOf(PaymentProviderError);
    seen.length = 0;
    await expect(payments.createPaymentLink("alice", { ...input3, amount: 60_000 })).rejects.toMatchObject({ code: "IDEMPOTENCY_CONFLICT" });
    expect(seen).toHaveLength(0);
  });
});

describe("payments: Razorpay links found by reference_id", () => {
  it("a crash between opening a link and recording it: the take-over finds the link by reference_id, records it, opens no second one", async () => {
    const clock = { now: T0 };
    const { provider } = razorpayWith(["crash"]);
    const db = new InMemoryDbManager();
    const payments = new PaymentService({ db, clock: () => new Date(clock.now), providers: [provider], checkoutStaleSeconds: 60 });
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
    const payments = new PaymentService({ db: new InMemoryDbManager(), clock: () => new Date(clock.now), providers: [provider], checkoutStaleSeconds: 5 });
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
    const request: CheckoutRequest = { paymentId: "pl_abc", userId: "alice", amount: 500, currency: "INR", credits: 500, description: "x" };
    expect(await provider.findCheckout(request)).toBeNull();
    rzpLinks.set("pl_abc", { id: "plink_X", short_url: "https://rzp.io/i/X", reference_id: "pl_abc", amount: 500, currency: "INR", notes: { credit_payment_id: "pl_abc" } });
    expect(await provider.findCheckout(request)).toEqual({ providerRef: "plink_X", url: "https://rzp.io/i/X" });
    await expect(provider.findCheckout({ ...request, amount: 600 })).rejects.toThrow(/not this payment's/);
    rzpLinks.set("pl_abc", { id: "plink_Y", short_url: "https://rzp.io/i/Y", reference_id: "pl_abc", amount: 500, currency: "INR", notes: { credit_payment_id: "pl_other" } });
    await expect(provider.findCheckout(request)).rejects.toBeInstanceOf(PaymentProviderError);
    await expect(new RazorpayProvider({ keyId: "wrong", keySecret: "wrong", baseUrl }).findCheckout(request)).rejects.toBeInstanceOf(PaymentProviderError);
  });
});

/** @see issue 24, item 14 */
describe("payment providers: time-outs, a pinned Stripe API version, configuration checked at startup", () => {
  const urls = { successUrl: "https://app/ok", cancelUrl: "https://app/no" };

  it("a provider API that does not answer fails the call after timeoutMs with PaymentProviderError", async () => {
    const hang: FetchLike = (_url, init) =>
      new Promise((_, reject) => init.signal?.addEventListener("abort", () => reject(init.signal?.reason as Error)));
    const stripe = new StripeProvider({ secretKey: "sk", ...urls, fetch: hang, timeoutMs: 50 });
    const error = await stripe.cancelCheckout("cs_1").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PaymentProviderError);
    expect((error as Error).message).toContain("did not answer within 50 ms");
    const razorpay = new RazorpayProvider({ keyId: "k", keySecret: "s", fetch: hang, timeoutMs: 50 });
    await expect(razorpay.cancelCheckout("plink_1")).rejects.toThrow(/did not answer within 50 ms/);
    expect(() => new StripeProvider({ timeoutMs: 0 })).toThrow(ConfigurationError);
  });

  it("every Stripe call names the API version (default STRIPE_API_VERSION, or the configured one)", async () => {
    const versions: (string | undefined)[] = [];
    const api: FetchLike = async (_url, init) => {
      versions.push((init.headers as Record<string, string>)["stripe-version"]);
      return new Response(JSON.stringify({ id: "cs_1", url: "https://checkout.stripe.com/c/pay/cs_1" }), { status: 200 });
    };
    const request = { paymentId: "p1", userId: "u", amount: 100, currency: "USD", credits: 10, description: "top-up" };
    await new StripeProvider({ secretKey: "sk", ...urls, fetch: api }).createCheckout(request);
    await new StripeProvider({ secretKey: "sk", ...urls, fetch: api, apiVersion: "2025-01-27.acacia" }).cancelCheckout("cs_1");
    expect(versions).toEqual([STRIPE_API_VERSION, "2025-01-27.acacia"]);
  });

  it("a Stripe key without return pages is refused at startup; an unconfigured provider records no failed payment", async () => {
    const saved = process.env.APP_BASE_URL;
    delete process.env.APP_BASE_URL;
    try {
      expect(() => new StripeProvider({ secretKey: "sk" })).toThrow(/no successUrl and cancelUrl/);
      await expect(createCreditManager({ payments: { stripe: { secretKey: "sk" } } })).rejects.toBeInstanceOf(ConfigurationError);
      const manager = await createCreditManager({ payments: { providers: [new StripeProvider({ secretKey: undefined, ...urls })] } });
      await expect(manager.payments.createPaymentLink("u", { amount: 500, currency: "USD", provider: "stripe" })).rejects.toBeInstanceOf(ConfigurationError);
      expect((await manager.payments.getPaymentHistory("u")).items).toEqual([]);
      await manager.close();
    } finally {
      if (saved !== undefined) process.env.APP_BASE_URL = saved;
    }
  });
});
