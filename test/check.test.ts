import { describe, expect, it } from "vitest";
import { ConfigurationError, InMemoryCache, ValidationError, createCreditManager } from "../src/index.js";
import { CreditService } from "../src/services/credit-service.js";
import { InMemoryDbManager } from "../src/db/memory/index.js";

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

  it("an unknown feature or a bad amount is a ValidationError; bad rules a configuration error", async () => {
    const m = await createCreditManager({ features });
    await expect(m.credits.check("u", { feature: "nope" })).rejects.toBeInstanceOf(ValidationError);
    await expect(m.credits.check("u", { amount: 0 })).rejects.toBeInstanceOf(ValidationError);
    await m.close();
    expect(() => new CreditService({ db: new InMemoryDbManager(), features: { x: { minAvailable: -1 } } })).toThrow(
      ConfigurationError,
    );
  });
});
