/**
 * The payment provider contract (src/modules/billing/contract-providers.ts, docs/testing.md) run on both
 * built-in providers, with webhooks in their documented shapes signed in the test.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RazorpayProvider, StripeProvider, type PaymentProvider } from "../src/index.js";
import { type Payment } from "../src/models-public.js";
import { runPaymentProviderContract } from "../src/testing/index.js";
import {
  RZP_SECRET,
  STRIPE_SECRET,
  T0,
  rzpEvent,
  rzpLinkPaid,
  rzpPaymentEntity,
  rzpSign,
  stripeEvent,
  stripeSession,
  stripeSign,
} from "./payments-fixtures.js";

const test = { describe, it, expect, beforeAll, afterAll };
const now = new Date(T0);
const p = { id: "cm_pay_1", userId: "alice", amount: 50_000, currency: "INR", providerRef: "plink_T1" } as Payment;
const PAY = "pay_29QQoUBi66xm2f";
const none = {
  eventId: null,
  paymentId: null,
  providerIds: [],
  providerPaymentId: null,
  userId: null,
  amount: null,
  currency: null,
  refundedTotal: null,
};

const rzpPaid = rzpLinkPaid(p);
const rzpFailed = rzpEvent("payment.failed", { payment: { entity: rzpPaymentEntity(p, "failed") } });
const rzpRefund = rzpEvent("refund.processed", {
  refund: { entity: { id: "rfnd_1", entity: "refund", payment_id: PAY, amount: 20_000, currency: "INR" } },
  payment: { entity: rzpPaymentEntity(p, "refunded", { amount_refunded: 20_000 }) },
});
const rzpOther = rzpEvent("order.paid", { order: { entity: { id: "order_9A33XWu170gUtm" } } });

runPaymentProviderContract({
  provider: new RazorpayProvider({ webhookSecret: RZP_SECRET }),
  test,
  vectors: {
    valid: [
      {
        name: "payment_link.paid",
        body: rzpPaid,
        headers: rzpSign(rzpPaid),
        now,
        event: {
          ...none,
          type: "payment_link.paid",
          kind: "paid",
          paymentId: p.id,
          providerIds: ["plink_T1", PAY],
          providerPaymentId: PAY,
          userId: "alice",
          amount: 50_000,
          currency: "INR",
        },
      },
      {
        name: "payment.failed",
        body: rzpFailed,
        headers: new Headers(rzpSign(rzpFailed)),
        now,
        event: {
          ...none,
          type: "payment.failed",
          kind: "failed",
          paymentId: p.id,
          providerIds: [PAY],
          userId: "alice",
          amount: 50_000,
          currency: "INR",
        },
      },
      {
        name: "refund.processed (cumulative refunded total)",
        body: rzpRefund,
        headers: rzpSign(rzpRefund),
        now,
        event: {
          ...none,
          type: "refund.processed",
          kind: "refund",
          paymentId: p.id,
          providerIds: [PAY],
          providerPaymentId: PAY,
          userId: "alice",
          amount: 50_000,
          currency: "INR",
          refundedTotal: 20_000,
        },
      },
      {
        name: "an event type not acted on",
        body: rzpOther,
        headers: rzpSign(rzpOther),
        now,
        event: { ...none, type: "order.paid", kind: null },
      },
    ],
    invalid: [
      { name: "signed with a wrong secret", body: rzpPaid, headers: rzpSign(rzpPaid, "another_secret"), now },
      { name: "a signature of another body", body: rzpPaid, headers: rzpSign(rzpFailed), now },
      {
        name: "a signature that is not hex",
        body: rzpPaid,
        headers: { "X-Razorpay-Signature": "not-a-signature" },
        now,
      },
    ],
    notEvents: ["not json", "[1,2]"],
  },
});

const session = stripeSession({ ...p, amount: 1999, currency: "USD", providerRef: "cs_test_1" } as Payment, "paid");
const PI = "pi_3MtwBwLkdIwHu7ix28a3tqPa";
const stripePaid = stripeEvent("checkout.session.completed", session);
const stripeExpired = stripeEvent("checkout.session.expired", {
  ...session,
  payment_status: "unpaid",
  status: "expired",
});
const stripeRefund = stripeEvent("charge.refunded", {
  id: "ch_1",
  object: "charge",
  amount: 1999,
  amount_refunded: 500,
  currency: "usd",
  payment_intent: PI,
  metadata: {},
});
const stripeOther = stripeEvent("customer.created", { id: "cus_1", object: "customer" });

runPaymentProviderContract({
  provider: new StripeProvider({ webhookSecret: STRIPE_SECRET }),
  test,
  vectors: {
    valid: [
      {
        name: "checkout.session.completed, paid",
        body: stripePaid,
        headers: stripeSign(stripePaid),
        now,
        event: {
          ...none,
          eventId: "evt_checkoutsessioncompleted",
          type: "checkout.session.completed",
          kind: "paid",
          paymentId: p.id,
          providerIds: ["cs_test_1", PI],
          providerPaymentId: PI,
          userId: "alice",
          amount: 1999,
          currency: "USD",
        },
      },
      {
        name: "checkout.session.expired, within the tolerance (signed 299 s earlier)",
        body: stripeExpired,
        headers: stripeSign(stripeExpired, T0 - 299_000),
        now,
        event: {
          ...none,
          eventId: "evt_checkoutsessionexpired",
          type: "checkout.session.expired",
          kind: "expired",
          paymentId: p.id,
          providerIds: ["cs_test_1", PI],
          userId: "alice",
          amount: 1999,
          currency: "USD",
        },
      },
      {
        name: "charge.refunded (cumulative refunded total)",
        body: stripeRefund,
        headers: new Headers(stripeSign(stripeRefund)),
        now,
        event: {
          ...none,
          eventId: "evt_chargerefunded",
          type: "charge.refunded",
          kind: "refund",
          providerIds: [PI, "ch_1"],
          providerPaymentId: PI,
          amount: 1999,
          currency: "USD",
          refundedTotal: 500,
        },
      },
      {
        name: "an event type not acted on",
        body: stripeOther,
        headers: stripeSign(stripeOther),
        now,
        event: { ...none, eventId: "evt_customercreated", type: "customer.created", kind: null },
      },
    ],
    invalid: [
      {
        name: "signed with a wrong secret",
        body: stripePaid,
        headers: stripeSign(stripePaid, T0, "whsec_another"),
        now,
      },
      {
        name: "a stale timestamp (signed 301 s earlier)",
        body: stripePaid,
        headers: stripeSign(stripePaid, T0 - 301_000),
        now,
      },
      {
        name: "a timestamp from the future (301 s ahead)",
        body: stripePaid,
        headers: stripeSign(stripePaid, T0 + 301_000),
        now,
      },
      { name: "a malformed signature header", body: stripePaid, headers: { "stripe-signature": "v1=abc" }, now },
    ],
    notEvents: ["not json", "null"],
  },
});

describe("the contract fails a provider that breaks it", () => {
  /** Runs the contract on `provider` with a runner that collects its tests (the last suite of this file: it leaves that runner set); the names of those that fail. */
  async function failing(
    provider: PaymentProvider,
    vectors: Parameters<typeof runPaymentProviderContract>[0]["vectors"],
  ) {
    const tests: [string, () => unknown][] = [];
    const collect = {
      describe: (_: string, body: () => void) => body(),
      it: (name: string, body: () => unknown) => void tests.push([name, body]),
      expect,
      beforeAll,
      afterAll,
    };
    runPaymentProviderContract({ provider, vectors, test: collect });
    const failed: string[] = [];
    for (const [name, body] of tests) {
      try {
        await body();
      } catch {
        failed.push(name);
      }
    }
    return failed;
  }
  const noCheckouts = () => Promise.reject(new Error("no checkouts"));
  const vectors = {
    valid: [
      {
        name: "paid",
        body: rzpPaid,
        headers: rzpSign(rzpPaid),
        now,
        event: { ...none, type: "payment_link.paid", kind: "paid" as const },
      },
    ],
    invalid: [],
  };

  it("one that accepts any signature", async () => {
    const real = new RazorpayProvider({ webhookSecret: RZP_SECRET });
    const lax = {
      name: "lax",
      createCheckout: noCheckouts,
      verifyWebhook: () => undefined,
      parseEvent: (b: Uint8Array) => real.parseEvent(b),
    };
    expect(
      await failing(lax, {
        ...vectors,
        invalid: [{ name: "wrong secret", body: rzpPaid, headers: rzpSign(rzpPaid, "x"), now }],
      }),
    ).toEqual([
      "verifies and maps: paid",
      "refuses a tampered body: paid",
      "refuses it unsigned: paid",
      "refuses: wrong secret",
    ]);
  });
  it("one that maps an event wrongly, or refuses with another error", async () => {
    const real = new RazorpayProvider({ webhookSecret: RZP_SECRET });
    const wrong = {
      name: "wrong",
      createCheckout: noCheckouts,
      verifyWebhook: (b: Uint8Array, h: Parameters<RazorpayProvider["verifyWebhook"]>[1]) => {
        try {
          real.verifyWebhook(b, h);
        } catch {
          throw new Error("no");
        }
      },
      parseEvent: (b: Uint8Array) => ({ ...real.parseEvent(b), kind: "failed" as const }),
    };
    expect(await failing(wrong, vectors)).toEqual([
      "verifies and maps: paid",
      "refuses a tampered body: paid",
      "refuses it unsigned: paid",
    ]);
  });
});
