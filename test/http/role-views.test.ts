/**
 * What each role sees (docs/service.md, "What each role sees"): a user's key, a member's (spender)
 * key and a customer token read the account holder's view of grants, journal entries, holds,
 * payments, the auto top-up rule, subscriptions and plans — never the operator's notes (descriptions,
 * reasons, metadata such as the console's actor or a refund's `refundedBy`), the cost basis, the
 * keys of the operator's requests, nor the provider's customer, payment method or payment ids. Every
 * route such a caller can reach is called here, with data whose every operator field holds a marker:
 * a route missing from the table below fails the test, so a new route cannot forget.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import { createCreditHandler, type CreditHandler, type Identity } from "../../src/http/index.js";
import type { PaymentProvider } from "../../src/modules/billing/provider.js";

const MARK = "OPERATOR-ONLY";
/** Keys no non-admin answer may hold, whatever their value. */
const OPERATOR_KEYS = [
  "metadata",
  "costBasis",
  "sourceRef",
  "providerPaymentId",
  "fingerprint",
  "correlationId",
  "idempotencyKey",
  "customer",
  "paymentMethod",
  "intent",
  "refundedBy",
  "actor",
];

let charges = 0;
const cardPay: PaymentProvider = {
  name: "cardpay",
  createCheckout: async (r) => ({ providerRef: `ref-${r.paymentId}`, url: `https://pay.example/${r.paymentId}` }),
  verifyWebhook() {},
  parseEvent: () => null as never,
  chargeSaved: async () => ({ status: "succeeded", providerPaymentId: `pi_${MARK}_${++charges}` }),
};

const SECRET = "customer-token-secret-of-32-characters!";
const by = { actor: `admin:${MARK}`, via: "console", ticket: MARK };

/** Who calls: a user's own key, a member's key (spender `member-1`), an admin. */
const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "") ?? "";
  if (token === "admin") return { userId: "admin:ops", admin: true };
  const [userId, spender] = token.split("/");
  if (userId === undefined || userId === "" || token.startsWith("ey")) return null;
  return spender === undefined ? { userId } : { userId, spender };
};

interface Seeded {
  /** Holds placed by an operator with a reason and metadata, under `member-1`: one per settle call. */
  holds: string[];
  payment: string;
}

/** An account whose every record carries the operator's notes. */
async function seed(m: CreditManager, account: string): Promise<Seeded> {
  const soon = new Date(Date.now() + 3 * 86_400_000);
  // An auto top-up on the operator's saved card: the deduction below crosses its threshold.
  await m.payments.setAutoTopUp(account, {
    below: 990,
    amount: 500,
    provider: "cardpay",
    customer: `cus_${MARK}`,
    paymentMethod: `pm_${MARK}`,
    currency: "USD",
  });
  await m.credits.addCredits(account, 1_000, {
    description: `support goodwill, ticket #4411 (${MARK})`,
    metadata: by,
    sourceRef: `${MARK}-ref`,
    source: "manual",
    expiresAt: soon,
    costBasis: { perCredit: "0.01", currency: "USD" },
    idempotencyKey: `${MARK}-add-${account}`,
  });
  await m.credits.deductCredits(account, 20, {
    description: `correction (${MARK})`,
    metadata: by,
    spender: "member-1",
    idempotencyKey: `${MARK}-deduct-${account}`,
  });
  const holds: string[] = [];
  for (let i = 0; i < 4; i++) {
    const h = await m.credits.reserveCredits(account, 5, {
      reason: `fraud review (${MARK})`,
      metadata: by,
      spender: "member-1",
      idempotencyKey: `${MARK}-hold-${account}-${i}`,
    });
    holds.push(h.id);
  }
  // The top-up charged, then partly refunded by an admin.
  await m.notifications.dispatchPending({ limit: 10 });
  const [payment] = (await m.payments.getPaymentHistory(account)).items;
  if (payment === undefined || payment.status !== "paid")
    throw new Error(
      `the auto top-up was not charged: ${JSON.stringify([payment, await m.payments.getAutoTopUp(account)])}`,
    );
  await m.payments.recordRefund(account, payment.id, { refundedTotal: 100, by: `admin:${MARK}` });
  await m.subscriptions.subscribe(account, "pro", { metadata: by, idempotencyKey: `${MARK}-sub-${account}` });
  return { holds, payment: payment.id };
}

type Call = { method: string; path: string; body?: unknown };
/** A request for each route a non-admin may call, by operationId (`next` settles a fresh operator hold). */
type Table = Record<string, (s: Seeded, next: () => string) => Call | Call[]>;

const range = `from=${new Date(Date.now() - 86_400_000).toISOString()}&to=${new Date(Date.now() + 60_000).toISOString()}`;
const TABLE: Table = {
  getBalance: () => ({ method: "GET", path: "/credits/balance" }),
  checkAllowed: () => ({ method: "GET", path: "/credits/check?amount=1" }),
  getHistory: () => ({ method: "GET", path: "/credits/history?limit=100" }),
  getExpiringCredits: () => ({ method: "GET", path: "/credits/expiring?days=30" }),
  getGrants: () => ({ method: "GET", path: "/credits/grants" }),
  createReservation: () => ({ method: "POST", path: "/credits/reservations", body: { amount: 1 } }),
  getReservation: (_s, next) => ({ method: "GET", path: `/credits/reservations/${next()}` }),
  commitReservation: (_s, next) => ({ method: "POST", path: `/credits/reservations/${next()}/commit`, body: {} }),
  releaseReservation: (_s, next) => ({ method: "POST", path: `/credits/reservations/${next()}/release`, body: {} }),
  getLimits: () => ({ method: "GET", path: "/credits/limits" }),
  getCustomerState: () => ({ method: "GET", path: "/credits/state" }),
  getUsage: () => ({ method: "GET", path: `/credits/usage?${range}&groupBy=model,spender,feature` }),
  getUsageCsv: () => ({ method: "GET", path: `/credits/usage.csv?${range}&groupBy=model,spender,feature` }),
  listPlans: () => ({ method: "GET", path: "/credits/plans" }),
  getPlan: () => ({ method: "GET", path: "/credits/plans/pro" }),
  getSubscription: () => ({ method: "GET", path: "/credits/subscription" }),
  changePlan: () => ({
    method: "POST",
    path: "/credits/subscription/change",
    body: { planId: "team", when: "period_end" },
  }),
  cancelSubscription: () => ({ method: "POST", path: "/credits/subscription/cancel", body: {} }),
  resumeSubscription: () => ({ method: "POST", path: "/credits/subscription/resume", body: {} }),
  // Subscribing again: cancel now first (a fresh subscription, its answer checked too).
  subscribe: () => [
    { method: "POST", path: "/credits/subscription/cancel", body: { atPeriodEnd: false } },
    { method: "POST", path: "/credits/subscription", body: { planId: "pro" } },
  ],
  checkPromoEligibility: () => ({ method: "GET", path: "/credits/promo/eligibility?promo_code=WELCOME" }),
  claimPromo: () => ({ method: "POST", path: "/credits/promo/claim", body: { promo_code: "WELCOME" } }),
  createPayment: () => ({
    method: "POST",
    path: "/credits/payments/create",
    body: { amount: 1_000, currency: "USD", provider: "cardpay" },
  }),
  getPaymentHistory: () => ({ method: "GET", path: "/credits/payments/history" }),
  getPayment: (s) => ({ method: "GET", path: `/credits/payments/${s.payment}` }),
  getAutoTopUp: () => ({ method: "GET", path: "/credits/auto-top-up" }),
  setAutoTopUp: () => ({ method: "PUT", path: "/credits/auto-top-up", body: { below: 1_500 } }),
  disableAutoTopUp: () => ({ method: "POST", path: "/credits/auto-top-up/disable", body: {} }),
};

/** Where an operator key sits in `value`, or null. */
function operatorKey(value: unknown, path = "$"): string | null {
  if (Array.isArray(value)) {
    for (const [i, v] of value.entries()) {
      const hit = operatorKey(v, `${path}[${i}]`);
      if (hit !== null) return hit;
    }
  } else if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (OPERATOR_KEYS.includes(k)) return `${path}.${k}`;
      const hit = operatorKey(v, `${path}.${k}`);
      if (hit !== null) return hit;
    }
  }
  return null;
}

describe("what each role sees", () => {
  let m: CreditManager;
  let handler: CreditHandler;
  const seeded = new Map<string, Seeded>();

  beforeAll(async () => {
    m = await createCreditManager({
      payments: { providers: [cardPay], creditsPerUnit: { USD: 1 } },
      customerTokens: { secret: SECRET },
    });
    await m.subscriptions.createPlan({
      id: "pro",
      name: "Pro",
      description: "1,000 credits a month",
      creditsPerPeriod: 1_000,
      price: 2_000,
      currency: "USD",
      billingPeriod: "monthly",
      metadata: { stripePrice: `price_${MARK}`, note: MARK },
    });
    await m.subscriptions.createPlan({
      id: "team",
      name: "Team",
      creditsPerPeriod: 5_000,
      price: 9_000,
      currency: "USD",
      billingPeriod: "monthly",
      metadata: { stripePrice: `price_${MARK}` },
    });
    await m.promos.createPromo({ code: "WELCOME", credits: 10 });
    for (const account of ["alice", "bob"]) seeded.set(account, await seed(m, account));
    handler = createCreditHandler(m, {
      authenticate,
      selfServiceAutoTopUp: "limits",
      selfServiceSubscriptions: "all",
      customerRateLimit: false,
    });
  });
  afterAll(() => m.close());

  const send = async (c: Call, token: string) => {
    const r = await handler(
      new Request(`http://h${c.path}`, {
        method: c.method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        ...(c.body === undefined ? {} : { body: JSON.stringify(c.body) }),
      }),
    );
    const text = await r.text();
    return {
      status: r.status,
      text,
      json: (r.headers.get("content-type") ?? "").includes("json") ? JSON.parse(text) : null,
    };
  };

  it("the table lists every route a non-admin can reach", () => {
    const reachable = handler.routes.filter((r) => r.access === "user").map((r) => r.operationId);
    expect(reachable.filter((id) => TABLE[id] === undefined)).toEqual([]);
    expect(Object.keys(TABLE).filter((id) => !reachable.includes(id))).toEqual([]);
  });

  for (const [who, account, token] of [
    ["a user's key", "bob", "bob"],
    ["a member's key", "alice", "alice/member-1"],
  ] as const) {
    it(`${who}: every route it can reach answers without the operator's fields`, async () => {
      const s = seeded.get(account) as Seeded;
      const holds = [...s.holds];
      const next = () => holds.shift() as string;
      for (const r of handler.routes.filter((d) => d.access === "user")) {
        const calls = [TABLE[r.operationId]?.(s, next) ?? []].flat();
        for (const c of calls) {
          const res = await send(c, token);
          expect(res.status, `${r.operationId} ${c.method} ${c.path}: ${res.text}`).toBeLessThan(300);
          expect(res.text, `${r.operationId} ${c.method} ${c.path}`).not.toContain(MARK);
          expect(operatorKey(res.json), `${r.operationId} ${c.method} ${c.path}`).toBeNull();
        }
      }
    });
  }

  it("a customer token: its routes answer without the operator's fields", async () => {
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 600 });
    const customerRoutes = handler.routes.filter((r) => r.customer === true);
    expect(customerRoutes.map((r) => r.operationId).sort()).toEqual(
      ["getBalance", "getCustomerState", "getGrants", "getUsage", "getUsageCsv"].sort(),
    );
    const s = seeded.get("alice") as Seeded;
    for (const r of customerRoutes) {
      for (const c of [(TABLE[r.operationId] as Table[string])(s, () => "")].flat()) {
        const res = await send(c, token);
        expect(res.status, `${r.operationId}: ${res.text}`).toBe(200);
        expect(res.text, r.operationId).not.toContain(MARK);
        expect(operatorKey(res.json), r.operationId).toBeNull();
      }
    }
    // The grant is there, without its description, metadata, reference or cost basis.
    const grants = (await send({ method: "GET", path: "/credits/grants" }, token)).json as { items: object[] };
    expect(grants.items.length).toBeGreaterThan(0);
    expect(grants.items[0]).toMatchObject({ source: "manual", amount: 1_000 });
    expect(grants.items[0]).not.toHaveProperty("description");
  });

  it("grouping usage by reason or metadata is for admins: 403 for everyone else", async () => {
    const { token } = await m.credits.customerToken("alice", { ttlSeconds: 600 });
    for (const groupBy of ["reason", "metadata.refundedBy", "model,metadata.actor"]) {
      for (const caller of [token, "bob", "alice/member-1"]) {
        for (const path of ["/credits/usage", "/credits/usage.csv"]) {
          const res = await send(
            { method: "GET", path: `${path}?${range}&groupBy=${groupBy}&kinds=spend,refund` },
            caller,
          );
          expect(res.status, `${path} ${groupBy}`).toBe(403);
          expect(res.json).toMatchObject({ error: { code: "FORBIDDEN" } });
        }
      }
    }
    const admin = await send(
      { method: "GET", path: `/admin/credits/users/alice/usage?${range}&groupBy=metadata.refundedBy&kinds=refund` },
      "admin",
    );
    expect(admin.status).toBe(200);
    expect(admin.text).toContain(`admin:${MARK}`);
  });

  it("an admin reads the whole records, on the admin routes and on its own user routes", async () => {
    const s = seeded.get("alice") as Seeded;
    const grants = await send({ method: "GET", path: "/admin/credits/users/alice/grants" }, "admin");
    expect(grants.text).toContain(`ticket #4411 (${MARK})`);
    expect(grants.json.items[0]).toMatchObject({
      metadata: by,
      sourceRef: `${MARK}-ref`,
      costBasis: { currency: "USD" },
    });
    const topUp = await send({ method: "GET", path: "/admin/credits/users/alice/auto-top-up" }, "admin");
    expect(topUp.json.autoTopUp.rule).toMatchObject({ customer: `cus_${MARK}`, paymentMethod: `pm_${MARK}` });
    const payments = await send({ method: "GET", path: "/admin/credits/users/alice/payments" }, "admin");
    const charged = (payments.json.items as { id: string; providerPaymentId: string }[]).find(
      (p) => p.id === s.payment,
    );
    expect(charged).toMatchObject({ metadata: { autoTopUp: true } });
    expect(charged?.providerPaymentId).toContain(MARK);
    const history = await send({ method: "GET", path: "/admin/credits/users/alice/history?limit=100" }, "admin");
    expect(history.text).toContain(`by admin:${MARK}`);
    // A hold settled by an admin through the user route: the whole record too.
    const release = await send(
      { method: "POST", path: `/credits/reservations/${s.holds[3]}/release`, body: {} },
      "admin",
    );
    expect(release.status, release.text).toBe(200);
    expect(release.json.reservation).toMatchObject({ reason: `fraud review (${MARK})`, metadata: by });
    // The member's view of the same payment: its own fields, and whether it was an auto top-up.
    const mine = await send({ method: "GET", path: `/credits/payments/${s.payment}` }, "alice/member-1");
    expect(mine.json).toMatchObject({ id: s.payment, status: "partially_refunded", autoTopUp: true, amount: 500 });
  });
});
