/**
 * Contract tests of auto top-up (part of the promos and payments part of `runDbManagerContract`):
 * the rule kept on the account, the top-up asked for in the unit of work of the spend that crosses
 * its threshold — once, also when many spends cross at once — and, with a scripted provider, each
 * charge credited exactly once, declines and required actions settled, on the store under test.
 * docs/promos-and-payments.md, "Auto top-up".
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "../../core/testing/runner.js";
import type { DbManager } from "../../core/db/types.js";
import { ValidationError } from "../../core/errors.js";
import { PaymentProviderError } from "./errors.js";
import type { Notification } from "../../core/models/index.js";
import type { OffSessionChargeRequest, OffSessionChargeResult, PaymentProvider } from "./provider.js";
import { CreditService } from "../../credit-service.js";
import { PaymentService } from "./service-payments.js";
import { testEvent, unsignedTestProvider } from "./contract.js";
import { lazy } from "../../core/testing/support.js";

/** One scripted answer of `scriptedChargeProvider`: a result, or an error to throw. */
export type ScriptedCharge = OffSessionChargeResult | Error;

/**
 * A provider (name "test") that answers off-session charges from a script, one answer a call (the
 * last repeats), keyed like a real provider: a call with an idempotency key that already succeeded
 * answers that success again. `calls` records every request. Webhooks: the body is the
 * `PaymentEvent` as JSON (as `unsignedTestProvider`).
 */
export function scriptedChargeProvider(script: ScriptedCharge[]): PaymentProvider & {
  calls: OffSessionChargeRequest[];
  script: ScriptedCharge[];
} {
  const done = new Map<string, OffSessionChargeResult>();
  const p = {
    ...unsignedTestProvider,
    calls: [] as OffSessionChargeRequest[],
    script,
    async chargeSaved(r: OffSessionChargeRequest): Promise<OffSessionChargeResult> {
      p.calls.push(r);
      const first = done.get(r.idempotencyKey);
      if (first !== undefined) return first;
      const next = (p.script.length > 1 ? p.script.shift() : p.script[0]) as ScriptedCharge;
      if (next instanceof Error) throw next;
      if (next.status === "succeeded") done.set(r.idempotencyKey, next);
      return next;
    },
  };
  return p;
}

const ok = (id = `pi_${randomUUID()}`): OffSessionChargeResult => ({ status: "succeeded", providerPaymentId: id });
const declined = (code: string): OffSessionChargeResult => ({
  status: "declined",
  providerPaymentId: `pi_${randomUUID()}`,
  code,
  message: `Your card was declined (${code}).`,
});

export function autoTopUpContract(getDb: () => DbManager): void {
  const db = lazy(getDb);
  const user = () => `u-${randomUUID()}`;
  const rule = { below: 100, amount: 500, provider: "test", customer: "cus_1", paymentMethod: "pm_1", currency: "usd" };
  const services = (script: ScriptedCharge[] = [ok()]) => {
    const provider = scriptedChargeProvider(script);
    const credits = new CreditService({ db });
    const payments = new PaymentService({ db, credits, providers: [provider] });
    return { db, provider, credits, payments };
  };
  const rows = async (db: DbManager, u: string, type?: Notification["type"]) =>
    (await db.listNotifications(u, { limit: 100 })).filter((n) => type === undefined || n.type === type);
  const available = async (credits: CreditService, u: string) => (await credits.getUserCreditsInfo(u)).available;

  describe("auto top-up: the rule and the trigger", () => {
    it("keeps the rule on the account: set, get, disable; bad input changes nothing", async () => {
      const { payments } = services();
      const u = user();
      expect(await payments.getAutoTopUp(u)).toBeNull();
      expect(await payments.disableAutoTopUp(u)).toBeNull();
      await expect(payments.setAutoTopUp(u, { ...rule, amount: undefined })).rejects.toBeInstanceOf(ValidationError);
      await expect(payments.setAutoTopUp(u, { ...rule, provider: "nope" })).rejects.toBeInstanceOf(ValidationError);
      const noCharges = new PaymentService({ db, providers: [{ ...unsignedTestProvider, name: "plain" }] });
      await expect(noCharges.setAutoTopUp(u, { ...rule, provider: "plain" })).rejects.toBeInstanceOf(ValidationError);
      expect(await payments.getAutoTopUp(u)).toBeNull();
      const set = await payments.setAutoTopUp(u, rule);
      expect(set).toMatchObject({ enabled: true, pending: null, rule: { below: 100, amount: 500, currency: "USD" } });
      expect(await payments.getAutoTopUp(u)).toEqual(set);
      expect(await payments.disableAutoTopUp(u)).toMatchObject({ enabled: false, disabledReason: "disabled" });
      expect(await payments.getAutoTopUp(u)).toMatchObject({ enabled: false });
    });

    it("a rule on an account that never existed creates it empty (no entry); its first credits and spend arm it", async () => {
      const { db, credits, payments } = services();
      const u = user();
      await payments.setAutoTopUp(u, rule);
      expect(await db.getAccount(u)).toMatchObject({ balance: 0, seq: 0 });
      expect((await credits.getCreditHistory(u)).items).toHaveLength(0);
      expect(await payments.getAutoTopUp(u)).toMatchObject({ enabled: true, pending: null });
      await credits.addCredits(u, 300);
      await credits.deductCredits(u, 250); // 50: crosses
      expect(await rows(db, u, "auto_top_up_requested")).toHaveLength(1);
    });

    it("the spend that crosses `below` asks for one top-up, in its unit of work; later spends do not", async () => {
      const { db, credits, payments } = services();
      const u = user();
      await credits.addCredits(u, 300);
      await payments.setAutoTopUp(u, rule);
      await credits.deductCredits(u, 150); // 150: above
      expect(await rows(db, u, "auto_top_up_requested")).toHaveLength(0);
      const crossing = await credits.deductCredits(u, 60); // 90: crosses
      const asked = await rows(db, u, "auto_top_up_requested");
      expect(asked).toHaveLength(1);
      const s = await payments.getAutoTopUp(u);
      expect(s?.pending).toMatchObject({ available: 90 });
      expect(asked[0]?.payload).toMatchObject({ attemptId: s?.pending?.id, available: 90, seq: crossing.seq });
      await credits.deductCredits(u, 50); // 40: still below, one in flight
      await credits.addCredits(u, 200); // 240
      await credits.deductCredits(u, 200); // 40: crosses again, still one in flight
      expect(await rows(db, u, "auto_top_up_requested")).toHaveLength(1);
    });

    it("nothing while disabled; nothing without a rule", async () => {
      const { db, credits, payments } = services();
      const u = user();
      await credits.addCredits(u, 300);
      await payments.setAutoTopUp(u, rule);
      await payments.disableAutoTopUp(u);
      await credits.deductCredits(u, 250);
      expect(await rows(db, u, "auto_top_up_requested")).toHaveLength(0);
      const v = user();
      await credits.addCredits(v, 300);
      await credits.deductCredits(v, 250);
      expect(await payments.getAutoTopUp(v)).toBeNull();
    });

    it("50 spends crossing at once: one top-up asked for", async () => {
      const { db, credits, payments } = services();
      const u = user();
      await credits.addCredits(u, 150);
      await payments.setAutoTopUp(u, rule);
      const spends = await Promise.allSettled(Array.from({ length: 50 }, () => credits.deductCredits(u, 3)));
      expect(spends.filter((r) => r.status === "fulfilled")).toHaveLength(50);
      expect(await rows(db, u, "auto_top_up_requested")).toHaveLength(1);
      expect((await payments.getAutoTopUp(u))?.pending).not.toBeNull();
    });
  });

  describe("auto top-up: charged once, credited only when paid", () => {
    const crossed = async (script: ScriptedCharge[], over: Record<string, unknown> = {}) => {
      const s = services(script);
      const u = user();
      await s.credits.addCredits(u, 150);
      await s.payments.setAutoTopUp(u, { ...rule, ...over });
      await s.credits.deductCredits(u, 100); // 50
      const attempt = (await s.payments.getAutoTopUp(u))?.pending?.id as string;
      return { ...s, u, attempt };
    };

    it("succeeded: credited once; the webhook replayed 20 times and a second run credit nothing more", async () => {
      const { db, provider, credits, payments, u, attempt } = await crossed([ok("pi_ok")]);
      expect(await payments.processAutoTopUp(u)).toEqual({ outcome: "credited", attemptId: attempt });
      expect(await available(credits, u)).toBe(550);
      expect(provider.calls.map((c) => [c.idempotencyKey, c.paymentId, c.amount, c.currency])).toEqual([
        [attempt, attempt, 500, "USD"],
      ]);
      const payment = await payments.getPayment(u, attempt);
      expect(payment).toMatchObject({ status: "paid", providerPaymentId: "pi_ok", credits: 500 });
      const body = testEvent(payment, { kind: "paid", providerPaymentId: "pi_ok" });
      for (let i = 0; i < 20; i++) {
        expect((await payments.handleWebhook("test", body, {})).outcome).toBe("duplicate");
      }
      expect(await payments.processAutoTopUp(u)).toEqual({ outcome: "none", attemptId: null });
      expect(await available(credits, u)).toBe(550);
      expect(await payments.getAutoTopUp(u)).toMatchObject({ pending: null, failures: 0, monthCount: 1 });
      expect(await rows(db, u, "auto_top_up_failed")).toHaveLength(0);
    });

    it("the webhook before the synchronous answer: credited once, the attempt settled", async () => {
      const { provider, credits, payments, u, attempt } = await crossed([ok("pi_early")]);
      const charge = provider.chargeSaved?.bind(provider) as NonNullable<PaymentProvider["chargeSaved"]>;
      provider.chargeSaved = async (r) => {
        const answer = await charge(r);
        const p = await payments.getPayment(u, attempt);
        await payments.handleWebhook("test", testEvent(p, { kind: "paid", providerPaymentId: "pi_early" }), {});
        return answer;
      };
      expect((await payments.processAutoTopUp(u)).outcome).toBe("credited");
      expect(await available(credits, u)).toBe(550);
      expect(await payments.getAutoTopUp(u)).toMatchObject({ pending: null });
    });

    it("a transient error leaves it in flight; the retry uses the same key and credits once", async () => {
      const { provider, credits, payments, u, attempt } = await crossed([
        new PaymentProviderError("HTTP 500", { status: 500, retryable: true }),
        ok(),
      ]);
      await expect(payments.processAutoTopUp(u)).rejects.toBeInstanceOf(PaymentProviderError);
      expect((await payments.getAutoTopUp(u))?.pending?.id).toBe(attempt);
      expect(await available(credits, u)).toBe(50);
      expect((await payments.processAutoTopUp(u)).outcome).toBe("credited");
      expect(provider.calls.map((c) => c.idempotencyKey)).toEqual([attempt, attempt]);
      expect(await available(credits, u)).toBe(550);
    });

    it("two workers on one attempt at once: charged under one key, credited once", async () => {
      const { provider, credits, payments, u, attempt } = await crossed([ok()]);
      const results = await Promise.all([payments.processAutoTopUp(u), payments.processAutoTopUp(u)]);
      expect(results.some((r) => r.outcome === "credited")).toBe(true);
      expect(new Set(provider.calls.map((c) => c.idempotencyKey))).toEqual(new Set([attempt]));
      expect(await available(credits, u)).toBe(550);
    });

    it("declines: recorded with the provider's code, auto_top_up_failed; disabled after maxFailures in a row", async () => {
      const { db, credits, payments, u, attempt } = await crossed(
        [declined("insufficient_funds"), declined("card_declined")],
        { maxFailures: 2 },
      );
      expect(await payments.processAutoTopUp(u)).toEqual({
        outcome: "declined",
        attemptId: attempt,
        code: "insufficient_funds",
        disabled: false,
      });
      expect(await payments.getPayment(u, attempt)).toMatchObject({
        status: "failed",
        metadata: { autoTopUp: true },
      });
      expect((await rows(db, u, "auto_top_up_failed"))[0]?.payload).toMatchObject({
        attemptId: attempt,
        code: "insufficient_funds",
        failures: 1,
      });
      expect(await available(credits, u)).toBe(50);
      // Not asked again until a spend crosses again.
      await credits.addCredits(u, 100); // 150
      await credits.deductCredits(u, 100); // 50: crosses
      const second = await payments.processAutoTopUp(u);
      expect(second).toMatchObject({ outcome: "declined", code: "card_declined", disabled: true });
      expect(await payments.getAutoTopUp(u)).toMatchObject({
        enabled: false,
        disabledReason: "max_failures",
        failures: 2,
        pending: null,
      });
      expect(await rows(db, u, "auto_top_up_disabled")).toHaveLength(1);
      await credits.addCredits(u, 100);
      await credits.deductCredits(u, 100);
      expect(await rows(db, u, "auto_top_up_requested")).toHaveLength(2);
      expect(await available(credits, u)).toBe(50);
    });

    it("requires_action: auto_top_up_action_required; the customer's confirmation (webhook) credits it", async () => {
      const { db, credits, payments, u, attempt } = await crossed([
        { status: "requires_action", providerPaymentId: "pi_3ds", code: "authentication_required", nextAction: null },
      ]);
      expect(await payments.processAutoTopUp(u)).toMatchObject({ outcome: "action_required" });
      expect((await rows(db, u, "auto_top_up_action_required"))[0]?.payload).toMatchObject({
        attemptId: attempt,
        providerPaymentId: "pi_3ds",
        code: "authentication_required",
      });
      // Still counted in the month (docs/promos-and-payments.md, "How it works"): the customer may
      // complete it, unlike a decline.
      expect(await payments.getAutoTopUp(u)).toMatchObject({ pending: null, failures: 0, monthCount: 1 });
      expect(await available(credits, u)).toBe(50);
      const p = await payments.getPayment(u, attempt);
      expect(
        (await payments.handleWebhook("test", testEvent(p, { kind: "paid", providerPaymentId: "pi_3ds" }), {})).outcome,
      ).toBe("credited");
      expect(await available(credits, u)).toBe(550);
    });

    it("the monthly cap: no top-up asked for once maxPerMonth were", async () => {
      const { db, credits, payments, u } = await crossed([ok()], { maxPerMonth: 1 });
      expect((await payments.processAutoTopUp(u)).outcome).toBe("credited"); // 550
      await credits.deductCredits(u, 500); // 50: crosses, cap spent
      expect(await rows(db, u, "auto_top_up_requested")).toHaveLength(1);
      expect(await available(credits, u)).toBe(50);
    });

    it("toBalance: charges what brings available back to it", async () => {
      const { provider, credits, payments, u } = await crossed([ok()], { amount: undefined, toBalance: 1000 });
      expect((await payments.processAutoTopUp(u)).outcome).toBe("credited");
      expect(provider.calls[0]?.amount).toBe(950);
      expect(await available(credits, u)).toBe(1000);
    });
  });
}
