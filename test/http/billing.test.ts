import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ConfigurationError, createCreditManager, StripeProvider, type CreditManager } from "../../src/index.js";
import { createCreditHandler, toNodeHandler, type CreditHandler, type Identity } from "../../src/http/index.js";
import { paymentRoutes, promoRoutes } from "../../src/modules/billing/routes.js";

const WHSEC = "whsec_http_test";
const T0 = Date.parse("2030-01-01T00:00:00Z");

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};

/** Stripe's API stand-in: checks the call and answers a Checkout Session. */
const stripeApi = async (url: string, init: RequestInit) => {
  expect(url).toBe("https://stripe.test/v1/checkout/sessions");
  expect((init.headers as Record<string, string>).authorization).toBe("Bearer sk_test_http");
  const form = new URLSearchParams(init.body as string);
  const id = `cs_test_${form.get("client_reference_id")}`;
  return new Response(JSON.stringify({ id, url: `https://checkout.stripe.com/c/pay/${id}` }), { status: 200 });
};

function signed(body: string, secret = WHSEC, at = T0) {
  const t = Math.floor(at / 1000);
  return `t=${t},v1=${createHmac("sha256", secret).update(`${t}.${body}`).digest("hex")}`;
}

describe("HTTP: payments, webhooks and promos", () => {
  let m: CreditManager;
  let handler: CreditHandler;
  const call = (
    method: string,
    path: string,
    options: { user?: string; body?: unknown; raw?: string; headers?: Record<string, string> } = {},
  ) => {
    const headers: Record<string, string> = { ...options.headers };
    if (options.user) headers.authorization = `Bearer ${options.user}`;
    let body: string | undefined = options.raw;
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    return handler(new Request(`http://x${path}`, { method, headers, body }));
  };

  beforeAll(async () => {
    m = await createCreditManager({
      clock: () => new Date(T0),
      payments: {
        providers: [
          new StripeProvider({
            secretKey: "sk_test_http",
            webhookSecret: WHSEC,
            successUrl: "https://app/ok",
            cancelUrl: "https://app/no",
            baseUrl: "https://stripe.test",
            fetch: stripeApi,
          }),
        ],
      },
    });
    handler = createCreditHandler(m, { authenticate });
  });
  afterAll(() => m.close());

  it("creates a payment, pages it, and hides it from other users", async () => {
    const res = await call("POST", "/credits/payments/create", {
      user: "ann",
      body: { amount: 1500, currency: "usd", provider: "stripe" },
    });
    expect(res.status).toBe(201);
    const p = (await res.json()) as { id: string };
    expect(p).toMatchObject({
      userId: "ann",
      status: "created",
      credits: 1500,
      checkoutUrl: expect.stringContaining("checkout.stripe.com"),
    });
    expect((await call("GET", `/credits/payments/${p.id}`, { user: "ann" })).status).toBe(200);
    expect((await call("GET", `/credits/payments/${p.id}`, { user: "bob" })).status).toBe(404);
    const page = (await (await call("GET", "/credits/payments/history?limit=5", { user: "ann" })).json()) as {
      items: { id: string }[];
    };
    expect(page.items.map((x) => x.id)).toEqual([p.id]);
    expect(
      (await call("POST", "/credits/payments/create", { body: { amount: 1, currency: "USD", provider: "stripe" } }))
        .status,
    ).toBe(401);
    const asAdmin = (await (await call("GET", "/admin/credits/users/ann/payments", { user: "admin:ops" })).json()) as {
      items: { id: string }[];
    };
    expect(asAdmin.items.map((x) => x.id)).toEqual([p.id]);
    expect((await call("GET", "/admin/credits/users/ann/payments", { user: "bob" })).status).toBe(403);
    expect(
      (
        await call("POST", "/credits/payments/create", {
          user: "ann",
          body: { amount: -1, currency: "USD", provider: "stripe" },
        })
      ).status,
    ).toBe(400);
  });

  it("POST /webhooks/stripe: raw body verified; forged → 400 and nothing credited; 20 deliveries → credited once", async () => {
    const p = (await (
      await call("POST", "/credits/payments/create", {
        user: "cat",
        body: { amount: 900, currency: "USD", provider: "stripe" },
      })
    ).json()) as {
      id: string;
      providerRef: string;
    };
    const event = {
      id: "evt_1",
      object: "event",
      type: "checkout.session.completed",
      data: {
        object: {
          id: p.providerRef,
          object: "checkout.session",
          amount_total: 900,
          currency: "usd",
          client_reference_id: p.id,
          metadata: { credit_payment_id: p.id, user_id: "cat" },
          payment_intent: "pi_http_1",
          payment_status: "paid",
        },
      },
    };
    // Whitespace matters: the signature covers these exact bytes.
    const raw = JSON.stringify(event, null, 4);
    const forged = await call("POST", "/webhooks/stripe", {
      raw,
      headers: { "stripe-signature": signed(raw, "whsec_wrong"), "content-type": "application/json" },
    });
    expect(forged.status).toBe(400);
    expect(((await forged.json()) as { error: unknown }).error).toMatchObject({ code: "WEBHOOK_REJECTED" });
    const stale = await call("POST", "/webhooks/stripe", {
      raw,
      headers: { "stripe-signature": signed(raw, WHSEC, T0 - 301_000) },
    });
    expect(stale.status).toBe(400);
    expect((await m.credits.getUserCreditsInfo("cat")).balance).toBe(0);
    const results = await Promise.all(
      Array.from({ length: 20 }, () =>
        call("POST", "/webhooks/stripe", {
          raw,
          headers: { "stripe-signature": signed(raw), "content-type": "application/json" },
        }),
      ),
    );
    expect(results.every((r) => r.status === 200)).toBe(true);
    const bodies = (await Promise.all(results.map((r) => r.json()))) as { outcome: string }[];
    expect(bodies.filter((b) => b.outcome === "credited")).toHaveLength(1);
    expect((await m.credits.getUserCreditsInfo("cat")).balance).toBe(900);
    expect((await call("POST", "/webhooks/paypal", { raw: "{}" })).status).toBe(404);
    // Only the webhook paths of providers that can check a signature belong to the handler.
    expect(handler.basePaths).toContain("/webhooks/stripe");
    expect(handler.basePaths).not.toContain("/webhooks");
  });

  it("promo eligibility and claim for users; create, list and activation for admins only", async () => {
    const created = await call("POST", "/admin/credits/promos", {
      user: "admin:ops",
      body: { code: "spring", credits: 40, maxUses: 2 },
    });
    expect(created.status).toBe(201);
    expect((await call("POST", "/admin/credits/promos", { user: "dan", body: { code: "x", credits: 1 } })).status).toBe(
      403,
    );
    expect(
      (await call("POST", "/admin/credits/promos", { user: "admin:ops", body: { code: "SPRING", credits: 1 } })).status,
    ).toBe(409);
    expect(
      await (await call("GET", "/credits/promo/eligibility?promo_code=Spring", { user: "dan" })).json(),
    ).toMatchObject({
      eligible: true,
      credits: 40,
    });
    const claim = await call("POST", "/credits/promo/claim", { user: "dan", body: { promo_code: "spring" } });
    expect(claim.status).toBe(201);
    expect(((await claim.json()) as { claim: unknown }).claim).toMatchObject({
      code: "SPRING",
      userId: "dan",
      claimNumber: 1,
    });
    const again = await call("POST", "/credits/promo/claim", { user: "dan", body: { promo_code: "spring" } });
    expect(again.status).toBe(409);
    expect(((await again.json()) as { error: unknown }).error).toMatchObject({
      code: "PROMO_NOT_ELIGIBLE",
      details: { reason: "already_claimed" },
    });
    expect((await call("POST", "/credits/promo/claim", { user: "dan", body: { promo_code: "nope" } })).status).toBe(
      404,
    );
    const off = await call("POST", "/admin/credits/promos/spring/activation", {
      user: "admin:ops",
      body: { isActive: false },
    });
    expect(await off.json()).toMatchObject({ code: "SPRING", isActive: false, uses: 1 });
    expect(
      await (await call("GET", "/credits/promo/eligibility?promo_code=spring", { user: "eve" })).json(),
    ).toMatchObject({
      eligible: false,
      reason: "inactive",
    });
    const list = (await (await call("GET", "/admin/credits/promos", { user: "admin:ops" })).json()) as {
      items: unknown[];
    };
    expect(list.items).toEqual([expect.objectContaining({ code: "SPRING", uses: 1 })]);
    expect((await call("GET", "/admin/credits/promos", { user: "dan" })).status).toBe(403);
    expect((await m.credits.getUserCreditsInfo("dan")).balance).toBe(40);
  });

  it("the OpenAPI document lists the payment, webhook and promo operations", async () => {
    const doc = (await (await call("GET", "/credits/openapi.json")).json()) as { paths: Record<string, unknown> };
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        "/credits/payments/create",
        "/credits/payments/history",
        "/credits/payments/{id}",
        "/webhooks/{provider}",
        "/credits/promo/eligibility",
        "/credits/promo/claim",
        "/admin/credits/promos",
        "/admin/credits/promos/{code}/activation",
      ]),
    );
  });
});

/** @see issue 24, items 8, 9 and 10 */
describe("HTTP: the webhook paths and the host's own routes", () => {
  const stripe = () =>
    new StripeProvider({
      secretKey: "sk",
      webhookSecret: WHSEC,
      successUrl: "https://app/ok",
      cancelUrl: "https://app/no",
    });

  it("a manager without payment configuration answers a webhook 404 and calls no onError (it was a 500 blaming the store)", async () => {
    const saved = { s: process.env.STRIPE_WEBHOOK_SECRET, r: process.env.RAZORPAY_WEBHOOK_SECRET };
    delete process.env.STRIPE_WEBHOOK_SECRET;
    delete process.env.RAZORPAY_WEBHOOK_SECRET;
    try {
      const m = await createCreditManager();
      const errors: unknown[] = [];
      const h = createCreditHandler(m, { authenticate, onError: (e) => errors.push(e) });
      for (const provider of ["stripe", "razorpay"]) {
        const res = await h(
          new Request(`http://x/webhooks/${provider}`, {
            method: "POST",
            body: "{}",
            headers: { "content-type": "application/json" },
          }),
        );
        expect(res.status).toBe(404);
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe("NOT_FOUND");
      }
      expect(errors).toEqual([]);
      expect(h.basePaths).toEqual(["/credits", "/admin/credits"]);
      await m.close();
    } finally {
      if (saved.s !== undefined) process.env.STRIPE_WEBHOOK_SECRET = saved.s;
      if (saved.r !== undefined) process.env.RAZORPAY_WEBHOOK_SECRET = saved.r;
    }
  });

  it("through toNodeHandler, the host's own /webhooks/github after the handler is reached; the base path is configurable", async () => {
    const m = await createCreditManager({ payments: { providers: [stripe()] } });
    const h = createCreditHandler(m, { authenticate, webhookBasePath: "/hooks/pay" });
    const node = toNodeHandler(h);
    const server = createServer((req, res) => {
      void node(req, res, () => {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(`host ${req.method} ${req.url}`);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const post = (path: string) =>
        fetch(`${base}${path}`, { method: "POST", body: "{}", headers: { "content-type": "application/json" } });
      expect(await (await post("/webhooks/github")).text()).toBe("host POST /webhooks/github");
      expect(await (await post("/hooks/pay/github")).text()).toBe("host POST /hooks/pay/github");
      expect(await (await post("/webhooks/stripe")).text()).toBe("host POST /webhooks/stripe"); // not the base any more
      const ours = await post("/hooks/pay/stripe"); // ours: the signature is missing
      expect(ours.status).toBe(400);
      expect(((await ours.json()) as { error: { code: string } }).error.code).toBe("WEBHOOK_REJECTED");
      expect(h.basePaths).toContain("/hooks/pay/stripe");
    } finally {
      await new Promise((resolve) => server.close(resolve));
      await m.close();
    }
    const off = createCreditHandler(m, { authenticate, webhookBasePath: false });
    expect(off.routes.some((r) => r.operationId === "paymentWebhook")).toBe(false);
    expect(() => createCreditHandler(m, { authenticate, webhookBasePath: "hooks" })).toThrow(ConfigurationError);
  });

  it("the built-in route groups are always there: passing one again in `routes` is a ConfigurationError", async () => {
    const m = await createCreditManager();
    expect(() => createCreditHandler(m, { authenticate, routes: paymentRoutes })).toThrow(/is built in/);
    expect(() => createCreditHandler(m, { authenticate, routes: [...promoRoutes] })).toThrow(ConfigurationError);
    const h = createCreditHandler(m, { authenticate });
    const ids = h.routes.map((r) => r.operationId);
    for (const def of [...paymentRoutes, ...promoRoutes]) expect(ids).toContain(def.operationId);
    // A route of one's own with the method and path of another is one too.
    const mine = {
      method: "GET",
      base: "user",
      path: "/mine/:id",
      access: "user",
      operationId: "mine",
      summary: "mine",
      handle: () => ({}),
    } as const;
    expect(() =>
      createCreditHandler(m, { authenticate, routes: [mine, { ...mine, path: "/mine/:other", operationId: "again" }] }),
    ).toThrow(ConfigurationError);
    expect(() =>
      createCreditHandler(m, { authenticate, routes: [{ ...mine, path: "/balance", operationId: "balance2" }] }),
    ).toThrow(ConfigurationError);
    await m.close();
  });
});
