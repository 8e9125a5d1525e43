/** The shared part of the payment tests: a local stand-in for the providers' APIs, signed payloads, helpers. */
import { createHmac } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, expect } from "vitest";
import {
  CreditService,
  InMemoryDbManager,
  PaymentService,
  RazorpayProvider,
  StripeProvider,
  type CheckoutRequest,
  type CheckoutResult,
  type PaymentProvider,
} from "../src/index.js";
import { type Payment } from "../src/models-public.js";

export const RZP_SECRET = "rzp_webhook_test_secret";
export const STRIPE_SECRET = "whsec_test_secret";
export const T0 = Date.parse("2030-01-01T00:00:00.000Z");

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

export interface Seen {
  method: string;
  path: string;
  auth: string | undefined;
  type: string | undefined;
  idem: string | undefined;
  body: string;
}
let server: Server;
export let baseUrl: string;
export const seen: Seen[] = [];

/** Razorpay links by reference_id; Stripe's saved answers by Idempotency-Key. */
export const rzpLinks = new Map<string, Record<string, unknown>>();
export const stripeSaved = new Map<string, { status: number; json: unknown }>();
let made = 0;
/**
 * Faults the next matching requests (method, path prefix) meet, in order: `before` (refused with a
 * 500 before anything is made or read), `after` (the checkout is made, then the answer is a 500),
 * `drop` (made, then the connection is cut: the caller never hears back).
 */
export const faults: { method: string; path: string; mode: "before" | "after" | "drop" }[] = [];

const readBody = (req: IncomingMessage) =>
  new Promise<string>((resolve) => {
    let s = "";
    req.on("data", (c) => (s += c));
    req.on("end", () => resolve(s));
  });

/** Starts the stand-in (before all tests of the file), clears its links, saved answers and faults before each. */
export function serveFakeProviders(): void {
  beforeEach(() => {
    rzpLinks.clear();
    stripeSaved.clear();
    faults.length = 0;
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
      if (fault === "before")
        return send(500, { error: { code: "SERVER_ERROR", description: "The server encountered an error." } });
      /** The answer to a create that made its object: as planned, or lost to the fault. */
      const answer = (status: number, json: unknown) => {
        if (fault === "drop") return res.socket?.destroy();
        if (fault === "after")
          return send(500, { error: { code: "SERVER_ERROR", message: "Something went wrong on our end." } });
        send(status, json);
      };
      const rzpAuth = s.auth === `Basic ${Buffer.from("rzp_test_key:rzp_test_secret").toString("base64")}`;
      if (s.method === "POST" && s.path === "/v1/payment_links") {
        if (!rzpAuth) return send(401, { error: { code: "BAD_REQUEST_ERROR", description: "Authentication failed" } });
        const b = JSON.parse(body);
        // As Razorpay documents it: a reference_id of at most 40 characters, unique per link.
        if (typeof b.reference_id === "string" && b.reference_id.length > 40) {
          return send(400, {
            error: {
              code: "BAD_REQUEST_ERROR",
              description: "The reference id may not be greater than 40 characters.",
              field: "reference_id",
            },
          });
        }
        if (typeof b.reference_id === "string" && rzpLinks.has(b.reference_id)) {
          return send(400, {
            error: { code: "BAD_REQUEST_ERROR", description: "reference_id is not unique", field: "reference_id" },
          });
        }
        const n = ++made;
        const link = {
          ...b,
          id: `plink_T${n}`,
          short_url: `https://rzp.io/i/T${n}`,
          amount_paid: 0,
          status: "created",
          payments: null,
        };
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
        const session = {
          id: `cs_test_${n}`,
          url: `https://checkout.stripe.com/c/pay/cs_test_${n}`,
          object: "checkout.session",
        };
        // Saved once the endpoint started: the session, or the 500 its answer turned into.
        const status = fault === "after" ? 500 : 200;
        const json =
          fault === "after" ? { error: { type: "api_error", message: "Something went wrong on our end." } } : session;
        if (s.idem !== undefined) stripeSaved.set(s.idem, { status, json });
        return answer(200, session);
      }
      if (s.method === "POST" && /^\/v1\/payment_links\/[^/]+\/cancel$/.test(s.path)) {
        if (s.auth !== `Basic ${Buffer.from("rzp_test_key:rzp_test_secret").toString("base64")}`)
          return send(401, { error: { description: "Authentication failed" } });
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
}

// ---- Payloads in the providers' documented shapes, signed with the test secrets. --------------------

export function rzpSign(body: string, secret = RZP_SECRET) {
  return {
    "X-Razorpay-Signature": createHmac("sha256", secret).update(body).digest("hex"),
    "content-type": "application/json",
  };
}

export function stripeSign(body: string, at = T0, secret = STRIPE_SECRET) {
  const t = Math.floor(at / 1000);
  const v1 = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
  return { "stripe-signature": `t=${t},v1=${v1}` };
}

export function rzpPaymentEntity(p: Payment, status: string, extra: Record<string, unknown> = {}) {
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

export function rzpEvent(event: string, payload: Record<string, unknown>) {
  // A pretty-printed body: signatures must cover the bytes as sent, not a re-serialization.
  return JSON.stringify(
    {
      entity: "event",
      account_id: "acc_BFQ7uQEaa7j2z7",
      event,
      contains: Object.keys(payload),
      payload,
      created_at: 1567674606,
    },
    null,
    2,
  );
}

export function rzpLinkPaid(p: Payment) {
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

export function stripeEvent(type: string, object: Record<string, unknown>) {
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

export function stripeSession(p: Payment, payment_status: string) {
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

export async function setup(opts: { rzpSecret?: string | undefined; domainEvents?: boolean } = {}) {
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

// ---- One checkout per (user, idempotency key) -----------------------------------------------------

/** A provider whose checkouts the test answers by hand (each call waits on its own deferred). */
export function manualProvider(name = "manual") {
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

export const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(cond()).toBe(true);
};

/**
 * A first call for erin's key "k" whose provider call hangs, and a retry 5 s later (the claim is
 * stale) that takes the payment over and calls the provider again; both provider calls unanswered.
 */
export async function takenOver() {
  const clock = { now: T0 };
  const { provider, calls, cancelled } = manualProvider();
  const payments = new PaymentService({
    db: new InMemoryDbManager(),
    clock: () => new Date(clock.now),
    providers: [provider],
    checkoutStaleSeconds: 5,
  });
  const input = { amount: 700, currency: "USD", provider: "manual", idempotencyKey: "k" };
  const first = payments.createPaymentLink("erin", input);
  await until(() => calls.length === 1);
  clock.now += 5_000;
  const retry = payments.createPaymentLink("erin", input);
  await until(() => calls.length === 2);
  return { payments, calls, cancelled, first, retry };
}

// ---- Retrying a payment whose checkout failed to open; finding a checkout already opened -----------

/** A Razorpay provider whose `fetch` holds (until released) or swallows the answer of link creations, in order. */
export function razorpayWith(plan: ("crash" | "hold")[]) {
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

export const rzpInput = { amount: 50_000, currency: "INR", provider: "razorpay", idempotencyKey: "buy-1" };
export const stripeInput = { amount: 1999, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" };
export const requests = () => seen.map((x) => `${x.method} ${x.path}`);
