/** The payment service across providers: inputs and history, one checkout per idempotency key, retries, provider configuration. The stand-in for the providers' APIs is in payments-fixtures.ts. */
import { billingStore } from "../src/modules/billing/store.js";
import { describe, expect, it } from "vitest";
import {
  ConfigurationError,
  ConflictError,
  InMemoryDbManager,
  PaymentProviderError,
  PaymentService,
  RazorpayProvider,
  STRIPE_API_VERSION,
  StripeProvider,
  ValidationError,
  WebhookRejectedError,
  createCreditManager,
  type FetchLike,
} from "../src/index.js";
import {
  RZP_SECRET,
  STRIPE_SECRET,
  T0,
  baseUrl,
  seen,
  rzpLinks,
  stripeSaved,
  faults,
  rzpSign,
  stripeSign,
  rzpPaymentEntity,
  rzpEvent,
  rzpLinkPaid,
  stripeEvent,
  stripeSession,
  setup,
  manualProvider,
  until,
  takenOver,
  rzpInput,
  stripeInput,
  requests,
  serveFakeProviders,
} from "./payments-fixtures.js";

serveFakeProviders();

describe("payments: inputs and history", () => {
  it("validates inputs and pages the history newest first", async () => {
    const { payments, clock } = await setup();
    await expect(
      payments.createPaymentLink("bob", { amount: 1.5, currency: "USD", provider: "stripe" }),
    ).rejects.toBeInstanceOf(ValidationError);
    await expect(
      payments.createPaymentLink("bob", { amount: 100, currency: "US", provider: "stripe" }),
    ).rejects.toBeInstanceOf(ValidationError);
    await expect(
      payments.createPaymentLink("bob", { amount: 100, currency: "USD", provider: "paypal" }),
    ).rejects.toBeInstanceOf(ValidationError);
    await expect(payments.createPaymentLink("bob", { amount: 5, currency: "USD", provider: "stripe" })).rejects.toThrow(
      /no whole credit/,
    );
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      clock.now = T0 + i * 1000;
      ids.push(
        (await payments.createPaymentLink("carol", { amount: 100 + i, currency: "USD", provider: "stripe" })).id,
      );
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
    const a = await payments.createPaymentLink("erin", {
      amount: 700,
      currency: "USD",
      provider: "stripe",
      idempotencyKey: "buy-1",
    });
    const b = await payments.createPaymentLink("erin", {
      amount: 700,
      currency: "USD",
      provider: "stripe",
      idempotencyKey: "buy-1",
    });
    expect(b).toEqual(a);
    expect(seen).toHaveLength(1);
    await expect(
      payments.createPaymentLink("erin", { amount: 800, currency: "USD", provider: "stripe", idempotencyKey: "buy-1" }),
    ).rejects.toMatchObject({ code: "IDEMPOTENCY_CONFLICT" });
    // Keys are per user.
    const c = await payments.createPaymentLink("frank", {
      amount: 700,
      currency: "USD",
      provider: "stripe",
      idempotencyKey: "buy-1",
    });
    expect(c.id).not.toBe(a.id);
  });

  it("createPaymentLink with an idempotency key: another description or metadata conflicts too", async () => {
    const { payments } = await setup();
    const args = {
      amount: 700,
      currency: "USD",
      provider: "stripe",
      idempotencyKey: "k",
      description: "Top-up",
      metadata: { plan: "a", n: 1 },
    };
    const a = await payments.createPaymentLink("erin", args);
    seen.length = 0;
    for (const other of [
      { description: "something else" },
      { description: undefined },
      { metadata: { plan: "b", n: 1 } },
      { metadata: undefined },
    ]) {
      await expect(payments.createPaymentLink("erin", { ...args, ...other })).rejects.toMatchObject({
        code: "IDEMPOTENCY_CONFLICT",
      });
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
        providers: [
          new StripeProvider({
            secretKey: "sk_test_123",
            successUrl: "https://a/ok",
            cancelUrl: "https://a/no",
            baseUrl,
          }),
        ],
      });
      const p = await payments.createPaymentLink("alice", { amount, currency: "USD", provider: "stripe" });
      expect([rate, amount, p.credits]).toEqual([rate, amount, credits]);
    }
  });

  it("addProvider: a provider registered after construction takes checkouts; one of the same name replaces it", async () => {
    const stripe = (successUrl: string) =>
      new StripeProvider({ secretKey: "sk_test_123", successUrl, cancelUrl: "https://a/no", baseUrl });
    const payments = new PaymentService({ db: new InMemoryDbManager() });
    const link = () => payments.createPaymentLink("alice", { amount: 100, currency: "USD", provider: "stripe" });
    await expect(link()).rejects.toThrow('"stripe" is not configured');
    payments.addProvider(stripe("https://a/first"));
    seen.length = 0;
    expect((await link()).status).toBe("created");
    expect(seen).toHaveLength(1);
    payments.addProvider(stripe("https://a/second"));
    seen.length = 0;
    await link();
    expect(seen[0]?.body).toContain(encodeURIComponent("https://a/second"));
  });

  it("keyNamespace: two stores on one provider account open their own checkouts for the same user and key", async () => {
    const stripe = new StripeProvider({
      secretKey: "sk_test_123",
      successUrl: "https://a/ok",
      cancelUrl: "https://a/no",
      baseUrl,
    });
    const open = async (keyNamespace?: string) => {
      const payments = new PaymentService({
        db: new InMemoryDbManager(),
        providers: [stripe],
        ...(keyNamespace ? { keyNamespace } : {}),
      });
      seen.length = 0;
      const p = await payments.createPaymentLink("alice", {
        amount: 100,
        currency: "USD",
        provider: "stripe",
        idempotencyKey: "order-7",
      });
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
      await expect(createCreditManager({ payments: { providers: [stripe], ...bad } })).rejects.toBeInstanceOf(
        ConfigurationError,
      );
    }
    for (const keyNamespace of ["", "x".repeat(65), "a\u0000b"]) {
      expect(() => new PaymentService({ db: new InMemoryDbManager(), keyNamespace })).toThrow(ConfigurationError);
      await expect(createCreditManager({ payments: { providers: [stripe], keyNamespace } })).rejects.toBeInstanceOf(
        ConfigurationError,
      );
    }
  });

  it("creditsPerUnit per currency: other currencies are refused with a ValidationError, nothing stored or sent", async () => {
    const stripe = new StripeProvider({
      secretKey: "sk_test_123",
      successUrl: "https://a/ok",
      cancelUrl: "https://a/no",
      baseUrl,
    });
    const m = await createCreditManager({ payments: { providers: [stripe], creditsPerUnit: { INR: 1, USD: 85 } } });
    expect(
      (await m.payments.createPaymentLink("eve", { amount: 100, currency: "usd", provider: "stripe" })).credits,
    ).toBe(8500);
    expect(
      (await m.payments.createPaymentLink("eve", { amount: 100, currency: "INR", provider: "stripe" })).credits,
    ).toBe(100);
    seen.length = 0;
    for (const currency of ["VND", "XYZ", "EUR"]) {
      const error = await m.payments
        .createPaymentLink("eve", { amount: 100_000, currency, provider: "stripe" })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ValidationError);
      expect(error).toMatchObject({ issues: [{ path: "currency", message: "accepted: INR, USD" }] });
    }
    expect(seen).toHaveLength(0);
    expect((await m.payments.getPaymentHistory("eve")).items.map((p) => p.currency)).toEqual(["INR", "USD"]);
    await m.close();
    // A rate table that names nothing, or not as codes, or a bad rate, is refused up front.
    for (const creditsPerUnit of [{}, { usd: 1 }, { USD: 0 }, { USD: Number.NaN }] as Record<string, number>[]) {
      await expect(createCreditManager({ payments: { providers: [stripe], creditsPerUnit } })).rejects.toBeInstanceOf(
        ConfigurationError,
      );
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
    await expect(m.payments.handleWebhook("razorpay", body, rzpSign(body, "forged"))).rejects.toBeInstanceOf(
      WebhookRejectedError,
    );
    const [e] = await m.ledger.getEntries({ eventType: "error" });
    expect(e).toMatchObject({ eventType: "error", details: { provider: "razorpay", reason: "bad_signature" } });
    await m.close();
  });

  it("createCreditManager wires promos and payments", async () => {
    const m = await createCreditManager({
      payments: {
        providers: [
          new StripeProvider({
            secretKey: "sk_test_123",
            webhookSecret: STRIPE_SECRET,
            successUrl: "https://a/ok",
            cancelUrl: "https://a/no",
            baseUrl,
          }),
        ],
      },
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

describe("payments: one checkout per idempotency key", () => {
  it("a keyed payment's id fits Razorpay's 40-character reference_id (an unkeyed one too)", async () => {
    const service = new PaymentService({
      db: new InMemoryDbManager(),
      providers: [
        new RazorpayProvider({
          keyId: "rzp_test_key",
          keySecret: "rzp_test_secret",
          webhookSecret: RZP_SECRET,
          baseUrl,
        }),
      ],
    });
    seen.length = 0;
    const keyed = await service.createPaymentLink("alice", {
      amount: 50_000,
      currency: "INR",
      provider: "razorpay",
      idempotencyKey: "k".repeat(255),
    });
    const plain = await service.createPaymentLink("alice", { amount: 50_000, currency: "INR", provider: "razorpay" });
    const sent = seen
      .filter((x) => x.path === "/v1/payment_links")
      .map((x) => (JSON.parse(x.body) as { reference_id: string }).reference_id);
    expect(sent).toEqual([keyed.id, plain.id]);
    for (const ref of sent) expect(ref.length).toBeLessThanOrEqual(40);
    expect(keyed).toMatchObject({ providerRef: expect.stringMatching(/^plink_T/), status: "created" });
  });

  it("concurrent calls with one key, over two services sharing a store (two processes), open one checkout and answer the same payment", async () => {
    const db = new InMemoryDbManager();
    const mk = () =>
      new PaymentService({
        db,
        providers: [
          new RazorpayProvider({
            keyId: "rzp_test_key",
            keySecret: "rzp_test_secret",
            webhookSecret: RZP_SECRET,
            baseUrl,
          }),
        ],
      });
    const [a, b] = [mk(), mk()];
    seen.length = 0;
    const input = { amount: 50_000, currency: "INR", provider: "razorpay", idempotencyKey: "buy-1" };
    const all = await Promise.all(
      [0, 1, 2, 3, 4, 5].map((n) => (n % 2 === 0 ? a : b).createPaymentLink("alice", input)),
    );
    expect(seen.filter((x) => x.path === "/v1/payment_links")).toHaveLength(1);
    for (const p of all) expect(p).toEqual(all[0]);
    expect(all[0]).toMatchObject({
      providerRef: expect.stringMatching(/^plink_T/),
      checkoutUrl: expect.stringMatching(/^https:\/\/rzp.io\/i\/T/),
      status: "created",
    });
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
    expect(err).toMatchObject({
      code: "CONFLICT",
      details: { reason: "checkout_in_progress", paymentId: calls[0]!.request.paymentId },
    });
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
    const payments = new PaymentService({
      db: new InMemoryDbManager(),
      clock: () => new Date(T0),
      providers: [provider],
    });
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
      expect(() => new PaymentService({ db: new InMemoryDbManager(), checkoutWaitMs: bad })).toThrow(
        ConfigurationError,
      );
      expect(() => new PaymentService({ db: new InMemoryDbManager(), checkoutStaleSeconds: bad })).toThrow(
        ConfigurationError,
      );
    }
  });

  it("the built-in providers cancel a checkout: Razorpay cancels the link, Stripe expires the session", async () => {
    seen.length = 0;
    await new RazorpayProvider({ keyId: "rzp_test_key", keySecret: "rzp_test_secret", baseUrl }).cancelCheckout(
      "plink_X1",
    );
    await new StripeProvider({
      secretKey: "sk_test_123",
      successUrl: "https://app/ok",
      cancelUrl: "https://app/no",
      baseUrl,
    }).cancelCheckout("cs_test_X2");
    expect(seen.map((x) => [x.method, x.path])).toEqual([
      ["POST", "/v1/payment_links/plink_X1/cancel"],
      ["POST", "/v1/checkout/sessions/cs_test_X2/expire"],
    ]);
    await expect(
      new RazorpayProvider({ keyId: "wrong", keySecret: "wrong", baseUrl }).cancelCheckout("plink_X1"),
    ).rejects.toBeInstanceOf(PaymentProviderError);
  });
});
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
    faults.push(
      { method: "POST", path: "/v1/payment_links", mode: "drop" },
      { method: "GET", path: "/v1/payment_links", mode: "before" },
    );
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
    expect(await payments.createPaymentLink("bob", stripeInput)).toMatchObject({
      status: "created",
      providerRef: expect.stringMatching(/^cs_test_/),
    });

    // A 500 once the endpoint ran is saved under the key: Stripe answers every retry with it.
    const input = { ...stripeInput, idempotencyKey: "buy-2" };
    faults.push({ method: "POST", path: "/v1/checkout/sessions", mode: "after" });
    await expect(payments.createPaymentLink("bob", input)).rejects.toBeInstanceOf(PaymentProviderError);
    seen.length = 0;
    await expect(payments.createPaymentLink("bob", input)).rejects.toMatchObject({ details: { status: 500 } });
    expect(seen).toHaveLength(1);
    expect((await payments.getPaymentHistory("bob")).items[0]).toMatchObject({ status: "failed", checkoutUrl: null });
    expect(await payments.createPaymentLink("bob", { ...stripeInput, idempotencyKey: "buy-3" })).toMatchObject({
      status: "created",
    });
  });

  it("retries at once make one provider call and answer one payment; a retry that fails answers its waiters with it", async () => {
    const { provider, calls } = manualProvider();
    const payments = new PaymentService({
      db: new InMemoryDbManager(),
      clock: () => new Date(T0),
      providers: [provider],
    });
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
    const failed = rzpEvent("payment.failed", {
      payment: { entity: rzpPaymentEntity(p, "failed", { id: "pay_failed1" }) },
    });
    expect((await payments.handleWebhook("razorpay", failed, rzpSign(failed))).outcome).toBe("updated");
    seen.length = 0;
    expect(await payments.createPaymentLink("alice", rzpInput)).toMatchObject({
      id: p.id,
      status: "failed",
      checkoutUrl: p.checkoutUrl,
    });
    expect(seen).toHaveLength(0);

    // No checkout, but the provider's word moved it on (e.g. an unrecorded session expired): answered as stored.
    const input = { ...rzpInput, idempotencyKey: "buy-2" };
    faults.push({ method: "POST", path: "/v1/payment_links", mode: "before" });
    await expect(payments.createPaymentLink("alice", input)).rejects.toBeInstanceOf(PaymentProviderError);
    const f = (await payments.getPaymentHistory("alice")).items.find((x) => x.id !== p.id);
    await billingStore(db).updatePayment({ ...f!, status: "expired", version: f!.version + 1 });
    seen.length = 0;
    expect(await payments.createPaymentLink("alice", input)).toMatchObject({
      id: f!.id,
      status: "expired",
      checkoutUrl: null,
    });

    // Other arguments with the key of a failed payment: still a conflict, nothing sent.
    const input3 = { ...rzpInput, idempotencyKey: "buy-3" };
    faults.push({ method: "POST", path: "/v1/payment_links", mode: "before" });
    await expect(payments.createPaymentLink("alice", input3)).rejects.toBeInstanceOf(PaymentProviderError);
    seen.length = 0;
    await expect(payments.createPaymentLink("alice", { ...input3, amount: 60_000 })).rejects.toMatchObject({
      code: "IDEMPOTENCY_CONFLICT",
    });
    expect(seen).toHaveLength(0);
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
      return new Response(JSON.stringify({ id: "cs_1", url: "https://checkout.stripe.com/c/pay/cs_1" }), {
        status: 200,
      });
    };
    const request = { paymentId: "p1", userId: "u", amount: 100, currency: "USD", credits: 10, description: "top-up" };
    await new StripeProvider({ secretKey: "sk", ...urls, fetch: api }).createCheckout(request);
    await new StripeProvider({ secretKey: "sk", ...urls, fetch: api, apiVersion: "2025-01-27.acacia" }).cancelCheckout(
      "cs_1",
    );
    expect(versions).toEqual([STRIPE_API_VERSION, "2025-01-27.acacia"]);
  });

  it("a Stripe key without return pages is refused at startup; an unconfigured provider records no failed payment", async () => {
    const saved = process.env.APP_BASE_URL;
    delete process.env.APP_BASE_URL;
    try {
      expect(() => new StripeProvider({ secretKey: "sk" })).toThrow(/no successUrl and cancelUrl/);
      await expect(createCreditManager({ payments: { stripe: { secretKey: "sk" } } })).rejects.toBeInstanceOf(
        ConfigurationError,
      );
      const manager = await createCreditManager({
        payments: { providers: [new StripeProvider({ secretKey: undefined, ...urls })] },
      });
      await expect(
        manager.payments.createPaymentLink("u", { amount: 500, currency: "USD", provider: "stripe" }),
      ).rejects.toBeInstanceOf(ConfigurationError);
      expect((await manager.payments.getPaymentHistory("u")).items).toEqual([]);
      await manager.close();
    } finally {
      if (saved !== undefined) process.env.APP_BASE_URL = saved;
    }
  });
});

describe("payments: a refund recorded outside a webhook (recordRefund)", () => {
  it("validates its options, takes back the credits once per total, and names who recorded it", async () => {
    const { payments, credits } = await setup({ domainEvents: true });
    const p = await payments.createPaymentLink("erin", { amount: 500, currency: "USD", provider: "stripe" });
    const body = stripeEvent("checkout.session.completed", stripeSession(p, "paid"));
    expect((await payments.handleWebhook("stripe", body, stripeSign(body))).outcome).toBe("credited");
    const before = await credits.getUserCreditsInfo("erin");
    expect(before.balance).toBe(50);
    for (const bad of [
      { refundedTotal: 0 },
      { refundedTotal: 1.5 },
      { refundedTotal: 501 },
      { by: "" },
      { who: "x" },
    ]) {
      await expect(payments.recordRefund("erin", p.id, bad as never)).rejects.toBeInstanceOf(ValidationError);
    }
    expect(await credits.getUserCreditsInfo("erin")).toEqual(before); // refused: nothing changed
    expect((await payments.recordRefund("erin", p.id, { refundedTotal: 200, by: "ops@example.com" })).outcome).not.toBe(
      "duplicate",
    );
    expect((await credits.getUserCreditsInfo("erin")).balance).toBe(30);
    // The same total again (a double-clicked form): nothing more taken.
    expect((await payments.recordRefund("erin", p.id, { refundedTotal: 200 })).outcome).toBe("duplicate");
    expect((await credits.getUserCreditsInfo("erin")).balance).toBe(30);
    const refund = (await credits.getCreditHistory("erin")).items[0];
    expect(refund?.metadata).toMatchObject({ refundedBy: "ops@example.com" });
  });
});
