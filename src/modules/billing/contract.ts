/**
 * Contract tests of promo codes and payments (part of `runDbManagerContract`, also `runPromoPaymentContract`): what the store keeps,
 * the guarded promo counter and payment compare-and-set, and — through the services — atomic
 * claims, once-only crediting and refunds, on the store under test.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "../../core/testing/runner.js";
import type { DbManager } from "../../core/db/types.js";
import { BILLING, billingStore, type BillingDb } from "./store.js";
import type { Changes } from "../../core/domain/state.js";
import { AccountWork } from "../../core/domain/account-work.js";
import { ConflictError, RuleViolationError } from "../../core/errors.js";
import { PaymentProviderError, PromoNotEligibleError } from "./errors.js";
import { newPayment } from "./rules-payments.js";
import type { Payment, Promo } from "../../models-entry.js";
import type { PaymentEvent, PaymentProvider } from "./provider.js";
import { CreditService } from "../../credit-service.js";
import { PaymentService } from "./service-payments.js";
import { PromoService } from "./service-promos.js";
import { scribble } from "../../core/testing/scribble.js";
import { managerServices, T0 } from "../../core/testing/support.js";

/** A provider without signatures: the body is the `PaymentEvent` as JSON. Checkouts are local. */
export const unsignedTestProvider: PaymentProvider = {
  name: "test",
  async createCheckout(r) {
    return { providerRef: `ref_${r.paymentId}`, url: `https://pay.test/${r.paymentId}` };
  },
  verifyWebhook() {},
  parseEvent(raw) {
    return JSON.parse(Buffer.from(raw).toString("utf8")) as PaymentEvent;
  },
};

export function testEvent(p: Payment, e: Partial<PaymentEvent>): string {
  const event: PaymentEvent = {
    eventId: randomUUID(),
    type: `test.${e.kind ?? "x"}`,
    kind: null,
    paymentId: p.id,
    providerIds: [],
    providerPaymentId: null,
    userId: p.userId,
    amount: p.amount,
    currency: p.currency,
    refundedTotal: null,
    ...e,
  };
  return JSON.stringify(event);
}

function promo(code: string, over: Partial<Promo> = {}): Promo {
  const now = new Date(T0);
  return {
    code,
    credits: 10,
    creditsExpireInDays: null,
    userIds: null,
    maxUses: null,
    maxUsesPerUser: 1,
    validFrom: null,
    validUntil: null,
    isActive: true,
    uses: 0,
    description: null,
    metadata: null,
    createdAt: now,
    updatedAt: now,
    ...over,
  };
}

/** A payment of `userId` as the store keeps it, just created. */
function payment(userId: string, over: Partial<Payment> = {}): Payment {
  const fields = {
    id: randomUUID(),
    userId,
    provider: "test",
    amount: 100,
    currency: "USD",
    credits: 10,
    description: null,
    metadata: null,
  };
  return { ...newPayment(fields, new Date(T0)), ...over };
}

export function runPromoPaymentContract(getDb: () => DbManager): void {
  // The store with the billing part (bound on first use), fetched at each call as `lazy` does.
  const db = new Proxy({} as BillingDb, {
    get: (_target, key) => Reflect.get(billingStore(getDb()), key) as unknown,
    has: (_target, key) => key in getDb(),
  });
  const code = () => `P${randomUUID().replace(/-/g, "").slice(0, 16).toUpperCase()}`;
  const user = () => `u-${randomUUID()}`;
  const services = () => {
    const clock = () => new Date(T0);
    return {
      db,
      credits: new CreditService({ db, clock }),
      promos: new PromoService({ db, clock }),
      payments: new PaymentService({ db, clock, providers: [unsignedTestProvider] }),
    };
  };

  describe("promos and payments: store", () => {
    it("keeps promos by code, refuses a duplicate, activates without touching uses", async () => {
      const c = code();
      const p = promo(c, { userIds: ["a", "b"], maxUses: 5, metadata: { k: 1 } });
      await db.insertPromo(p);
      await expect(db.insertPromo(promo(c))).rejects.toBeInstanceOf(ConflictError);
      expect(await db.getPromo(c)).toEqual(p);
      expect(await db.getPromo(code())).toBeNull();
      const later = new Date(T0 + 1000);
      expect(await db.setPromoActive(c, false, later)).toEqual({ ...p, isActive: false, updatedAt: later });
      expect(await db.setPromoActive(code(), false, later)).toBeNull();
      const page = await db.listPromos({ limit: 1000 });
      expect(page.find((x) => x.code === c)).toEqual({ ...p, isActive: false, updatedAt: later });
    });

    it("hands out copies: mutating a promo, claim or payment read (or written) changes nothing stored", async () => {
      const { db, promos } = services();
      const u = user();
      const c = code();
      const p = promo(c, { userIds: [u], maxUses: 5, metadata: { k: [1] } });
      await db.insertPromo(p);
      scribble(p);
      await promos.claimPromo(u, c);
      const pay = payment(u, { providerRef: `ref-${u}`, metadata: { order: { n: 1 } } });
      const payId = pay.id;
      await db.insertPayment(pay);
      scribble(pay);
      const reads = async () => ({
        promo: await db.getPromo(c),
        promos: (await db.listPromos({ limit: 1000 })).filter((x) => x.code === c),
        claims: await db.listPromoClaims(u),
        payment: await db.getPayment(payId),
        byProvider: await db.findPaymentByProviderId("test", `ref-${u}`),
        payments: await db.listPayments(u, { limit: 10 }),
      });
      const before = await reads();
      expect(before.promo).toMatchObject({ code: c, uses: 1, userIds: [u], metadata: { k: [1] } });
      expect(before.payment).toMatchObject({ id: payId, amount: 100, metadata: { order: { n: 1 } } });
      expect(before.claims).toHaveLength(1);
      scribble(await reads());
      expect(await reads()).toEqual(before);
    });

    it("keeps payments, finds them by provider ids, pages newest first, updates by compare-and-set", async () => {
      const u = user();
      const ps = [0, 1, 2].map((i) =>
        payment(u, {
          providerRef: `ref-${i}-${u}`,
          amount: 100 + i,
          createdAt: new Date(T0 + i * 1000),
          updatedAt: new Date(T0 + i * 1000),
        }),
      );
      for (const p of ps) await db.insertPayment(p);
      const [p0, p1, p2] = ps as [Payment, Payment, Payment];
      await expect(db.insertPayment(p0)).rejects.toBeInstanceOf(ConflictError);
      expect(await db.getPayment(p1.id)).toEqual(p1);
      expect(await db.findPaymentByProviderId("test", p2.providerRef as string)).toEqual(p2);
      expect(await db.findPaymentByProviderId("other", p2.providerRef as string)).toBeNull();
      expect((await db.listPayments(u, { limit: 2 })).map((p) => p.id)).toEqual([p2.id, p1.id]);
      expect(
        (await db.listPayments(u, { limit: 5, before: { createdAt: p1.createdAt, id: p1.id } })).map((p) => p.id),
      ).toEqual([p0.id]);
      const paid = { ...p0, status: "paid" as const, providerPaymentId: `pay-${u}`, version: 2 };
      expect(await db.updatePayment(paid)).toBe(true);
      expect(await db.updatePayment({ ...paid, status: "failed" })).toBe(false);
      expect(await db.getPayment(p0.id)).toEqual(paid);
      expect(await db.findPaymentByProviderId("test", `pay-${u}`)).toEqual(paid);
    });

    it("refuses a unit of work whose payment moved since it was read (compare-and-set on version) with ConflictError, and writes nothing of it", async () => {
      const u = user();
      const { credits } = services();
      await credits.addCredits(u, 10);
      const p = payment(u);
      await db.insertPayment(p);
      // Another writer moves the payment after this unit of work read it at `p.version`.
      const paid = { ...p, status: "paid" as const, version: p.version + 1 };
      expect(await db.updatePayment(paid)).toBe(true);
      await expect(
        db.transaction(u, async (tx) => {
          const work = new AccountWork(u, await tx.load(), new Date(T0), randomUUID);
          work.add(
            5,
            { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
            {},
          );
          const changes: Changes = {
            ...work.changes(),
            rows: { [BILLING]: { paymentUpdates: [{ ...p, status: "failed", version: p.version + 1 }] } },
          };
          await tx.save(changes);
        }),
      ).rejects.toBeInstanceOf(ConflictError);
      expect(await db.getPayment(p.id)).toEqual(paid);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(10);
    });
  });

  describe("promos and payments: concurrency", () => {
    it("100 users claiming a 10-use code at once: exactly 10 grants", async () => {
      const { db, promos, credits } = services();
      const c = code();
      await promos.createPromo({ code: c.toLowerCase(), credits: 25, maxUses: 10 });
      const users = Array.from({ length: 100 }, user);
      const results = await Promise.allSettled(users.map((u) => promos.claimPromo(u, c)));
      const ok = results.filter((r) => r.status === "fulfilled");
      expect(ok).toHaveLength(10);
      for (const r of results) {
        if (r.status === "rejected")
          expect(r.reason).toMatchObject({ code: "PROMO_NOT_ELIGIBLE", reason: "exhausted" });
      }
      expect((await db.getPromo(c))?.uses).toBe(10);
      let grants = 0;
      for (const u of users) {
        const gs = (await db.listGrants(u)).filter((g) => g.source === "promo" && g.sourceRef === c);
        grants += gs.length;
        expect(await db.countPromoClaims(c, u)).toBe(gs.length);
      }
      expect(grants).toBe(10);
      const winner = (ok[0] as PromiseFulfilledResult<{ claim: { userId: string } }>).value.claim.userId;
      expect(await credits.getUserCreditsInfo(winner)).toMatchObject({ balance: 25 });
      expect((await credits.audit(winner)).ok).toBe(true);
    });

    it("one user claiming a once-per-user code 20 times at once: one grant", async () => {
      const { db, promos, credits } = services();
      const c = code();
      await promos.createPromo({ code: c, credits: 7 });
      const u = user();
      const results = await Promise.allSettled(Array.from({ length: 20 }, () => promos.claimPromo(u, c)));
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      for (const r of results) if (r.status === "rejected") expect(r.reason).toBeInstanceOf(PromoNotEligibleError);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 7 });
      expect(await db.countPromoClaims(c, u)).toBe(1);
      expect((await db.getPromo(c))?.uses).toBe(1);
    });

    it("createPaymentLink with one key from two services at once (two processes): one checkout; a stale claim is taken over once", async () => {
      const u = user();
      let now = T0;
      const clock = () => new Date(now);
      const calls: string[] = [];
      let hang = false;
      const provider: PaymentProvider = {
        ...unsignedTestProvider,
        async createCheckout(r) {
          calls.push(r.idempotencyKey ?? "");
          // A caller that never hears back: its process died between the claim and the answer.
          if (hang) return new Promise<never>(() => undefined);
          await new Promise((resolve) => setTimeout(resolve, 20));
          return unsignedTestProvider.createCheckout(r);
        },
      };
      const a = new PaymentService({ db, clock, providers: [provider] });
      const b = new PaymentService({ db, clock, providers: [provider] });
      const input = (key: string) => ({ amount: 500, currency: "EUR", provider: "test", idempotencyKey: key });
      const all = await Promise.all(
        Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).createPaymentLink(u, input("k1"))),
      );
      expect(calls).toHaveLength(1);
      for (const p of all) expect(p).toEqual(all[0]);
      expect(all[0]).toMatchObject({ status: "created", checkoutUrl: expect.any(String) });
      expect(await db.getPayment(all[0]!.id)).toEqual(all[0]);

      hang = true;
      // The run is meant to hang (or crash) here: the test only counts the provider's calls.
      a.createPaymentLink(u, input("k2")).catch(() => undefined);
      for (let i = 0; i < 200 && calls.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 5));
      expect(calls).toHaveLength(2);
      hang = false;
      now += 60_000;
      const retries = await Promise.all(
        Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).createPaymentLink(u, input("k2"))),
      );
      expect(calls).toHaveLength(3);
      expect(calls[2]).toBe(calls[1]);
      for (const p of retries) expect(p).toEqual(retries[0]);
      expect(retries[0]).toMatchObject({ status: "created", checkoutUrl: expect.any(String) });
      expect(await db.getPayment(retries[0]!.id)).toEqual(retries[0]);
    });

    it("createPaymentLink retried with its key after the checkout failed to open: one provider call for concurrent retries; a checkout a crashed attempt opened is found, not doubled", async () => {
      const u = user();
      let now = T0;
      const clock = () => new Date(now);
      // The provider's checkouts by our payment id (as Razorpay keeps links by reference_id).
      const opened = new Map<string, string>();
      let calls = 0;
      let failures = 0;
      let crash = false;
      const provider: PaymentProvider = {
        ...unsignedTestProvider,
        async createCheckout(r) {
          calls++;
          await new Promise((resolve) => setTimeout(resolve, 20));
          if (failures > 0) {
            failures--;
            throw new PaymentProviderError("HTTP 503");
          }
          if (opened.has(r.paymentId)) throw new PaymentProviderError("reference in use");
          const ref = `ref_${r.paymentId}_${calls}`;
          opened.set(r.paymentId, ref);
          // The caller's process dies after the provider opened the checkout.
          if (crash) return new Promise<never>(() => undefined);
          return { providerRef: ref, url: `https://pay.test/${ref}` };
        },
        async findCheckout(r) {
          const ref = opened.get(r.paymentId);
          return ref === undefined ? null : { providerRef: ref, url: `https://pay.test/${ref}` };
        },
      };
      const a = new PaymentService({ db, clock, providers: [provider] });
      const b = new PaymentService({ db, clock, providers: [provider] });
      const input = (key: string) => ({ amount: 500, currency: "EUR", provider: "test", idempotencyKey: key });

      failures = 1;
      await expect(a.createPaymentLink(u, input("k1"))).rejects.toBeInstanceOf(PaymentProviderError);
      const [failed] = await db.listPayments(u, { limit: 10 });
      expect(failed).toMatchObject({ status: "failed", checkoutUrl: null, providerRef: null });
      calls = 0;
      const retries = await Promise.all(
        Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).createPaymentLink(u, input("k1"))),
      );
      expect(calls).toBe(1);
      for (const p of retries) expect(p).toEqual(retries[0]);
      expect(retries[0]).toMatchObject({ id: failed!.id, status: "created", providerRef: opened.get(failed!.id) });
      expect(await db.getPayment(failed!.id)).toEqual(retries[0]);

      crash = true;
      // The run is meant to hang (or crash) here: the test only counts the provider's calls.
      void a.createPaymentLink(u, input("k2")).catch(() => undefined);
      for (let i = 0; i < 200 && opened.size < 2; i++) await new Promise((resolve) => setTimeout(resolve, 5));
      expect(opened.size).toBe(2);
      crash = false;
      now += 60_000;
      calls = 0;
      const taken = await Promise.all(
        Array.from({ length: 4 }, (_, i) => (i % 2 ? a : b).createPaymentLink(u, input("k2"))),
      );
      expect(calls).toBe(0);
      for (const p of taken) expect(p).toEqual(taken[0]);
      expect(taken[0]).toMatchObject({ status: "created", providerRef: opened.get(taken[0]!.id) });
      expect(await db.getPayment(taken[0]!.id)).toEqual(taken[0]);
      expect(await db.listPayments(u, { limit: 10 })).toHaveLength(2);
    });

    it("status events racing a paid event: the payment ends paid, credited once", async () => {
      const { db, payments, credits } = services();
      const u = user();
      const p = await payments.createPaymentLink(u, { amount: 300, currency: "EUR", provider: "test" });
      const kinds = ["authorized", "failed", "expired", "paid"] as const;
      const bodies = kinds.map((kind) =>
        testEvent(p, { kind, providerPaymentId: kind === "paid" ? `pi_${p.id}` : null }),
      );
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) => payments.handleWebhook("test", bodies[i % 4] as string, {})),
      );
      expect(results.filter((r) => r.outcome === "credited")).toHaveLength(1);
      expect(await db.getPayment(p.id)).toMatchObject({ status: "paid", providerPaymentId: `pi_${p.id}` });
      // Late status events after the payment was credited change nothing.
      for (const b of bodies.slice(0, 3))
        expect((await payments.handleWebhook("test", b, {})).outcome).toBe("unchanged");
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 300 });
    });

    it("a paid event delivered 20 times at once credits once; a refund after half was spent reverses the rest", async () => {
      const { db, payments, credits } = services();
      const u = user();
      const p = await payments.createPaymentLink(u, { amount: 1000, currency: "usd", provider: "test" });
      const paid = testEvent(p, { kind: "paid", providerPaymentId: `pay_${p.id}` });
      const results = await Promise.all(Array.from({ length: 20 }, () => payments.handleWebhook("test", paid, {})));
      expect(results.filter((r) => r.outcome === "credited")).toHaveLength(1);
      expect(results.filter((r) => r.outcome === "duplicate")).toHaveLength(19);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 1000 });
      const stored = (await db.getPayment(p.id)) as Payment;
      expect(stored).toMatchObject({ status: "paid", providerPaymentId: `pay_${p.id}` });
      const grant = await db.getGrant(stored.grantId as string);
      expect(grant).toMatchObject({ source: "payment", sourceRef: `pay_${p.id}`, amount: 1000 });

      await credits.deductCredits(u, 500);
      const refund = testEvent(p, {
        kind: "refund",
        refundedTotal: 1000,
        providerIds: [`pay_${p.id}`],
        paymentId: null,
      });
      const again = await Promise.all(Array.from({ length: 5 }, () => payments.handleWebhook("test", refund, {})));
      expect(again.filter((r) => r.outcome === "reversed")).toHaveLength(1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: -500, debt: 500 });
      expect(await db.getPayment(p.id)).toMatchObject({
        status: "refunded",
        creditsReversed: 1000,
        refundedAmount: 1000,
      });
      const journal = await db.listJournal(u, { order: "asc", limit: 10 });
      expect(journal.map((e) => [e.type, e.amount, e.balanceAfter, e.debtAfter])).toEqual([
        ["add", 1000, 1000, 0],
        ["deduct", 500, 500, 0],
        ["void", 500, 0, 0],
        ["deduct", 500, -500, 500],
      ]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("a take-back is what the payments module records: a caller's deduction, capture or void with a refund's metadata stays spend", async () => {
      const { payments, credits } = services();
      const u = user();
      // A caller's entries that carry what a take-back's metadata and description carry.
      const lookalike = {
        description: "Lost dispute of payment p-1 (test)",
        metadata: { paymentId: "p-1", provider: "test", refundedAmount: 100 },
      };
      const added = await credits.addCredits(u, 100, { costBasis: { perCredit: "2", currency: "USD" } });
      const charge = await credits.deductCredits(u, 10, lookalike);
      const hold = await credits.reserveCredits(u, 5);
      const capture = await credits.commitReservedCredits(hold.id, lookalike);
      const gift = await credits.addCredits(u, 3);
      const voided = await credits.voidGrant(gift.grants[0]!.grantId, lookalike);
      for (const e of [charge, capture, voided]) expect(e.takeBack ?? null).toBeNull();
      // The payments module's refund takes credits back, recorded as such.
      const p = await payments.createPaymentLink(u, { amount: 50, currency: "usd", provider: "test" });
      await payments.handleWebhook("test", testEvent(p, { kind: "paid", providerPaymentId: `pay_${p.id}` }), {});
      const refund = testEvent(p, { kind: "refund", refundedTotal: 50, providerIds: [`pay_${p.id}`], paymentId: null });
      expect((await payments.handleWebhook("test", refund, {})).outcome).toBe("reversed");
      const journal = await credits.getCreditHistory(u, { limit: 100 });
      const takeBacks = journal.items.filter((e) => e.takeBack != null);
      expect(takeBacks.map((e) => [e.type, e.amount, e.takeBack])).toEqual([["void", 50, "refund"]]);
      // A take-back is no charge: it cannot be given back.
      await expect(credits.reverseCharge(u, takeBacks[0]!.id, { reason: "no" })).rejects.toBeInstanceOf(
        RuleViolationError,
      );
      const usage = await credits.getUsage({
        account: u,
        from: new Date(T0 - 3_600_000),
        to: new Date(T0 + 3_600_000),
        interval: null,
      });
      expect(usage.rows.map((r) => [r.kind, r.credits, r.requests])).toEqual([
        ["spend", 15, 2],
        ["refund", 50, 0],
      ]);
      // Revenue recognizes the caller's spend; the look-alike charge can be given back.
      const revenue = await credits.getRevenue({
        account: u,
        from: new Date(T0 - 3_600_000),
        to: new Date(T0 + 3_600_000),
        interval: null,
      });
      // (The look-alikes' 15 credits at 2 cents; the refund took the payment's 50 unused credits.)
      expect(revenue.rows.map((r) => [r.currency, r.paid, r.recognized, r.refunds])).toEqual([["USD", 250, 30, 50]]);
      const back = await credits.reverseCharge(u, charge.id, { reason: "a failed request" });
      expect(back.amount).toBe(10);
      expect(added.takeBack ?? null).toBeNull();
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("a grant's payment is what the payments module records: a caller's addition naming a payment in its metadata changes no revenue figure of that payment", async () => {
      const { payments, credits } = services();
      const u = user();
      const p = await payments.createPaymentLink(u, { amount: 1000, currency: "usd", provider: "test" });
      await payments.handleWebhook("test", testEvent(p, { kind: "paid", providerPaymentId: `pay_${p.id}` }), {});
      // A caller's addition that names the payment, as the payments module's addition does in its metadata.
      const lookalike = await credits.addCredits(u, 10, {
        metadata: { paymentId: p.id, provider: "test" },
        costBasis: { perCredit: "1", currency: "USD" },
      });
      expect(lookalike.paymentId ?? null).toBeNull();
      await credits.deductCredits(u, 500);
      const refund = testEvent(p, {
        kind: "refund",
        refundedTotal: 1000,
        providerIds: [`pay_${p.id}`],
        paymentId: null,
      });
      expect((await payments.handleWebhook("test", refund, {})).outcome).toBe("reversed");
      const journal = (await credits.getCreditHistory(u, { limit: 100 })).items.reverse();
      expect(journal.map((e) => [e.type, e.amount, e.paymentId ?? null])).toEqual([
        ["add", 1000, p.id],
        ["add", 10, null],
        ["deduct", 500, null],
        ["void", 500, p.id],
        ["deduct", 500, p.id],
      ]);
      const revenue = await credits.getRevenue({
        account: u,
        from: new Date(T0 - 3_600_000),
        to: new Date(T0 + 3_600_000),
        interval: null,
      });
      // The refund takes back the payment's 500 unused credits (refunds) and 500 more: the caller's
      // 10 (recognized at their basis) and 490 of debt; the payment's revenue for those 500 is
      // reversed (refunds +500, recognized −500 of the 500 its spent credits were recognized for).
      expect(revenue.rows.map((r) => [r.currency, r.paid, r.recognized, r.refunds, r.deferredEnd])).toEqual([
        ["USD", 1010, 10, 1000, 0],
        [null, 0, 0, 0, 0],
      ]);
      expect((await credits.audit(u)).ok).toBe(true);
    });
  });
}

/**
 * Promo codes over two managers on one store (with the core's `runManagersContract`, in the
 * `managers` part): a promo refusal is decided on the store's current promo, not on a copy the other
 * manager has outdated since (docs/testing.md#several-managers).
 */
export function runPromoManagersContract(getDb: () => DbManager, getPeer: () => DbManager): void {
  const user = () => `mm-${randomUUID()}`;
  const manager = (db: DbManager, clock: { now: number }) => ({
    ...managerServices(db, clock),
    promos: new PromoService({ db, clock: () => new Date(clock.now) }),
  });
  const pair = () => {
    const clock = { now: T0 };
    return { a: manager(getDb(), clock), b: manager(getPeer(), clock) };
  };

  describe("promos over two managers on one store", () => {
    it("claimPromo on A: a promo B reactivated is claimed", async () => {
      const { a, b } = pair();
      const u = user();
      const code = `MM${randomUUID().replace(/-/g, "").slice(0, 12).toUpperCase()}`;
      await a.promos.createPromo({ code, credits: 7 });
      await a.credits.addCredits(u, 1);
      await a.credits.deductCredits(u, 1);
      await a.promos.setPromoActive(code, false);
      await expect(a.promos.claimPromo(u, code)).rejects.toMatchObject({ name: "PromoNotEligibleError" });
      await b.promos.setPromoActive(code, true);
      await a.promos.claimPromo(u, code);
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(7);
    });
  });
}
