import { describe, expect, it } from "vitest";
import { ConfigurationError, CreditService, InMemoryDbManager, PaymentService, PromoService } from "../src/index.js";
import { CoreCreditService } from "../src/core/services/credit-service.js";
import { testEvent, unsignedTestProvider } from "../src/modules/billing/contract.js";

/**
 * A `PromoService` or `PaymentService` wired by hand runs its units of work through a
 * `CreditService`: the one passed as `credits`, or one it builds — with the `alerts` thresholds it
 * is given, so its changes record notification events like every other change of the account.
 */

const T0 = Date.parse("2030-01-01T00:00:00.000Z");
const clock = () => new Date(T0);
const types = async (db: InMemoryDbManager, userId: string) =>
  (await db.listNotifications(userId, { limit: 100 })).map((n) => n.type);

describe("hand-wired promo and payment services: alerts", () => {
  it("a PromoService given `alerts` records the balance_restored its claim causes", async () => {
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, clock, alerts: { lowCredits: 10 } });
    const promos = new PromoService({ db, clock, alerts: { lowCredits: 10 } });
    await credits.addCredits("u", 20);
    await credits.deductCredits("u", 15);
    expect(await types(db, "u")).toEqual(["low_credits"]);
    await promos.createPromo({ code: "BACK", credits: 50 });
    await promos.claimPromo("u", "back");
    expect(await types(db, "u")).toEqual(["low_credits", "balance_restored"]);
    const [, restored] = await db.listNotifications("u", { limit: 100 });
    expect(restored?.payload).toMatchObject({ available: 55, threshold: 10, level: "ok", previousLevel: "low" });
  });

  it("a PaymentService given `alerts` records the low_credits a refund causes", async () => {
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, clock, alerts: { lowCredits: 100 } });
    const payments = new PaymentService({ db, clock, providers: [unsignedTestProvider], alerts: { lowCredits: 100 } });
    // 100 is on the line, which is on the alarm side (docs/notifications.md): the account's first
    // change is evaluated from ok, so it is low at once, and the payment restores it.
    await credits.addCredits("u", 100);
    const p = await payments.createPaymentLink("u", { amount: 1000, currency: "EUR", provider: "test" });
    await payments.handleWebhook("test", testEvent(p, { kind: "paid", providerPaymentId: "pay_1" }), {});
    await credits.deductCredits("u", 50);
    expect(await types(db, "u")).toEqual(["low_credits", "balance_restored"]);
    const refund = testEvent(p, { kind: "refund", refundedTotal: 1000, providerPaymentId: "pay_1" });
    expect((await payments.handleWebhook("test", refund, {})).outcome).toBe("reversed");
    expect(await credits.getUserCreditsInfo("u")).toMatchObject({ available: 50 });
    expect(await types(db, "u")).toEqual(["low_credits", "balance_restored", "low_credits"]);
  });

  it("`alerts` beside `credits`, or malformed, is a ConfigurationError", () => {
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db });
    for (const make of [
      (o: object) => new PromoService({ db, ...o }),
      (o: object) => new PaymentService({ db, ...o }),
    ]) {
      expect(() => make({ credits, alerts: { lowCredits: 10 } })).toThrow(ConfigurationError);
      expect(() => make({ credits, alerts: {} })).toThrow(/give `alerts` to the CreditService passed as `credits`/);
      expect(() => make({ alerts: { lowCredits: -1 } })).toThrow(ConfigurationError);
      expect(() => make({ alerts: { lowCredit: 5 } })).toThrow(ConfigurationError);
      expect(() => make({ alerts: { lowCreditsPercent: 101 } })).toThrow(ConfigurationError);
      // Valid: nulls read as "none", as CreditService reads them; and the `credits` given alone.
      expect(() => make({ alerts: { lowCredits: null, lowCreditsPercent: 5 } })).not.toThrow();
      expect(() => make({ credits })).not.toThrow();
    }
  });

  it("`credits` that is not a CreditService (the core's alone carries no billing module) is a ConfigurationError", async () => {
    const db = new InMemoryDbManager();
    const core = new CoreCreditService({ db });
    for (const make of [
      (o: object) => new PromoService({ db, ...o }),
      (o: object) => new PaymentService({ db, ...o }),
    ]) {
      expect(() => make({ credits: core })).toThrow(/`credits` must be a CreditService/);
      expect(() => make({ credits: {} })).toThrow(ConfigurationError);
    }
    // Nothing was changed: no account was made.
    expect(await db.getAccount("u")).toBeNull();
  });

  it("without `credits` or `alerts`: nothing is recorded, and a warning says so once an account's alerts are kept elsewhere", async () => {
    const db = new InMemoryDbManager();
    const warnings: string[] = [];
    const logger = { warn: (_o: unknown, msg?: string) => warnings.push(String(msg)), info: () => undefined } as never;
    const credits = new CreditService({ db, clock, alerts: { lowCredits: 10 } });
    const promos = new PromoService({ db, clock, logger });
    await promos.createPromo({ code: "ONE", credits: 5, maxUsesPerUser: 3 });
    await promos.claimPromo("fresh", "one"); // no alert state on the account: nothing to say
    expect(warnings).toEqual([]);
    await credits.addCredits("u", 20);
    await credits.deductCredits("u", 15);
    await promos.claimPromo("u", "one");
    await promos.claimPromo("u", "one");
    expect(await types(db, "u")).toEqual(["low_credits"]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/PromoService records no notification events.*pass the same `credits`, or `alerts`/);
  });
});
