import { describe, expect, it } from "vitest";
import { ConfigurationError, InMemoryCache, ValidationError, createCreditManager } from "../src/index.js";
import { CreditService } from "../src/credit-service.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";

const features = { export: { minAvailable: 100 }, chat: { minAvailable: 1 }, free: { minAvailable: 0 } };

describe("credits.check()", () => {
  it("answers allowed/available/required/reason from the feature's minimum and the amount", async () => {
    const m = await createCreditManager({ features });
    await m.credits.addCredits("u", 50);
    expect(await m.credits.check("u")).toEqual({ allowed: true, available: 50, required: 1, reason: "ok" });
    expect(await m.credits.check("u", { feature: "export" })).toEqual({
      allowed: false,
      available: 50,
      required: 100,
      reason: "insufficient_credits",
    });
    expect(await m.credits.check("u", { feature: "chat", amount: 60 })).toMatchObject({ allowed: false, required: 60 });
    expect(await m.credits.check("u", { feature: "chat", amount: 50 })).toMatchObject({ allowed: true, required: 50 });
    expect(await m.credits.check("nobody", { feature: "free" })).toMatchObject({
      allowed: true,
      available: 0,
      required: 0,
    });
    expect(await m.credits.check("nobody")).toMatchObject({ allowed: false, reason: "insufficient_credits" });
    await m.close();
  });

  it("counts holds: available, not balance", async () => {
    const m = await createCreditManager({ features });
    await m.credits.addCredits("u", 120);
    await m.credits.reserveCredits("u", 30);
    expect(await m.credits.check("u", { feature: "export" })).toMatchObject({ allowed: false, available: 90 });
    await m.close();
  });

  it("with a cache, allows from it, confirms a denial in the store, never stale after the account's own writes", async () => {
    const cache = new InMemoryCache();
    const m = await createCreditManager({ features, cache });
    await m.credits.addCredits("u", 100);
    expect(await m.credits.check("u", { feature: "export" })).toMatchObject({ allowed: true, available: 100 });
    // The account is read with `getAccountCredits` where the store has it, else `getAccount`.
    const reads = m.db.getAccount.bind(m.db);
    const creditReads = m.db.getAccountCredits?.bind(m.db);
    let storeReads = 0;
    m.db.getAccount = (id) => {
      storeReads++;
      return reads(id);
    };
    if (creditReads !== undefined)
      m.db.getAccountCredits = (id) => {
        storeReads++;
        return creditReads(id);
      };
    // An allowed answer comes from the cache: no store read.
    expect(await m.credits.check("u", { feature: "export" })).toMatchObject({ allowed: true });
    expect(storeReads).toBe(0);
    await m.credits.deductCredits("u", 1);
    // A denial is confirmed on the store's current state (another process may have added credits;
    // docs/storage.md, "Caches").
    expect(await m.credits.check("u", { feature: "export" })).toMatchObject({ allowed: false, available: 99 });
    storeReads = 0;
    expect(await m.credits.check("u", { feature: "export" })).toMatchObject({ allowed: false, available: 99 });
    expect(storeReads).toBeGreaterThan(0);
    await m.credits.addCredits("u", 1);
    expect(await m.credits.check("u", { feature: "export" })).toMatchObject({ allowed: true, available: 100 });
    await m.close();
  });

  it("a feature with no rule is paid from the pool; a bad feature or amount is a ValidationError; bad rules a configuration error", async () => {
    const m = await createCreditManager({ features });
    expect(await m.credits.check("u", { feature: "nope" })).toMatchObject({
      allowed: false,
      reason: "insufficient_credits",
      required: 1,
    });
    await m.credits.addCredits("u", 1);
    expect(await m.credits.check("u", { feature: "nope" })).toMatchObject({ allowed: true, reason: "ok" });
    await expect(m.credits.check("u", { feature: "no spaces" })).rejects.toBeInstanceOf(ValidationError);
    await expect(m.credits.check("u", { amount: 0 })).rejects.toBeInstanceOf(ValidationError);
    await m.close();
    for (const bad of [{ minAvailable: -1 }, { minAvailable: 1, plans: [] }, { minAvailable: 1, enabled: "no" }])
      expect(() => new CreditService({ db: new InMemoryDbManager(), features: { x: bad as never } })).toThrow(
        ConfigurationError,
      );
  });

  it("a rule turns a feature off (reason feature_off), before credits and limits are looked at", async () => {
    const m = await createCreditManager({
      features: { off: { minAvailable: 0, enabled: false }, pro: { minAvailable: 1, plans: ["pro"] } },
    });
    await m.credits.addCredits("u", 50);
    expect(await m.credits.check("u", { feature: "off" })).toMatchObject({
      allowed: false,
      reason: "feature_off",
      available: 50,
    });
    expect(await m.credits.check("u", { feature: "pro", amount: 5 })).toMatchObject({
      allowed: false,
      reason: "feature_off",
      required: 5,
    });
    await m.subscriptions.createPlan({ id: "pro", name: "Pro", creditsPerPeriod: 10, billingPeriod: "monthly" });
    await m.subscriptions.subscribe("u", "pro");
    expect(await m.credits.check("u", { feature: "pro", amount: 5 })).toMatchObject({ allowed: true, reason: "ok" });
    const state = await m.credits.getCustomerState("u");
    expect(state.features.map((f) => [f.feature, f.reason])).toEqual([
      ["off", "feature_off"],
      ["pro", "ok"],
    ]);
    await m.close();
  });

  it("a feature turned off never flips: no feature_status_changed for it", async () => {
    const m = await createCreditManager({
      notifications: {},
      features: { off: { minAvailable: 1, enabled: false }, on: { minAvailable: 1 } },
    });
    await m.credits.addCredits("u", 5);
    const flips = (await m.notifications.list("u")).filter((n) => n.type === "feature_status_changed");
    expect(flips.map((n) => (n.payload as { feature: string }).feature)).toEqual(["on"]);
    await m.close();
  });
});
