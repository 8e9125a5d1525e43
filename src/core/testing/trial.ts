import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import { ConfigurationError, InsufficientCreditsError } from "../errors.js";
import type { TrialCredits } from "../models/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { DAY, T0, type PartOptions } from "./support.js";

/**
 * Trial credits (`trial` option): granted once, in the unit of work that first creates the
 * account — also when callers (or two services over the same store, as two processes) race to
 * create it — and never to an account that existed before.
 * @beta
 */
export function runTrialContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  describe("trial credits", () => {
    const user = () => `u-${randomUUID()}`;
    const service = (trial: TrialCredits = { amount: 100, expiresInDays: 14 }) =>
      new CoreCreditService({ db: getDb(), clock: () => new Date(T0), trial });
    const trialEntries = async (u: string) =>
      (await getDb().listJournal(u, { order: "asc", limit: 100 })).filter((e) => e.idempotencyKey === `cm:trial:${u}`);

    it("the first unit of work grants the trial (source trial, expiry from the clock) before its own change, once", async () => {
      const u = user();
      const credits = service();
      await credits.addCredits(u, 5);
      await credits.deductCredits(u, 3);
      await credits.addCredits(u, 1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 103 });
      const entries = await trialEntries(u);
      expect(entries).toHaveLength(1);
      expect(entries[0]).toMatchObject({ type: "add", amount: 100, seq: 1 });
      const grants = (await getDb().listGrants(u)).filter((g) => g.source === "trial");
      expect(grants).toHaveLength(1);
      expect(grants[0]!.expiresAt?.getTime()).toBe(T0 + 14 * DAY);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("a first deduction can spend the trial; a refused first operation creates nothing, the next one grants it", async () => {
      const u = user();
      const credits = service();
      await expect(credits.deductCredits(u, 101)).rejects.toBeInstanceOf(InsufficientCreditsError);
      expect(await getDb().getAccount(u)).toBeNull();
      await credits.deductCredits(u, 40);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 60 });
      expect(await trialEntries(u)).toHaveLength(1);
    });

    it("an account that existed before trial credits were configured never gets them, even at balance zero", async () => {
      const u = user();
      const before = new CoreCreditService({ db: getDb(), clock: () => new Date(T0) });
      await before.addCredits(u, 2);
      await before.deductCredits(u, 2);
      const credits = service();
      await credits.addCredits(u, 1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 1 });
      expect(await trialEntries(u)).toHaveLength(0);
    });

    it("50 concurrent first operations, from two services over the store: exactly one trial grant", async () => {
      const u = user();
      const a = service();
      const b = service();
      await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 === 0 ? a : b).addCredits(u, 1)));
      expect(await a.getUserCreditsInfo(u)).toMatchObject({ balance: 150 });
      expect(await trialEntries(u)).toHaveLength(1);
      expect((await a.audit(u)).ok).toBe(true);
    });

    it("concurrent first deductions draw on one trial: exactly amount of them succeed", async () => {
      const u = user();
      const credits = service({ amount: 10, expiresInDays: 1 });
      const results = await Promise.allSettled(Array.from({ length: 20 }, () => credits.deductCredits(u, 1)));
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(10);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0 });
      expect(await trialEntries(u)).toHaveLength(1);
    });

    it("a trial naming a unit is granted in it: a first spend in that unit draws it, the default unit gets nothing", async () => {
      const u = user();
      const credits = service({ amount: 5, expiresInDays: 7, unit: "images" });
      await credits.deductCredits(u, 2, { unit: "images" });
      expect(await credits.getUserCreditsInfo(u, { unit: "images" })).toMatchObject({ balance: 3 });
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0 });
      await expect(credits.deductCredits(u, 1)).rejects.toBeInstanceOf(InsufficientCreditsError);
      expect(await trialEntries(u)).toMatchObject([{ type: "add", amount: 5, unit: "images" }]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("an invalid trial option is a ConfigurationError", () => {
      expect(() => new CoreCreditService({ db: getDb(), trial: { amount: 0 } })).toThrow(ConfigurationError);
      expect(() => new CoreCreditService({ db: getDb(), trial: { amount: 5, unit: "Images" } })).toThrow(
        ConfigurationError,
      );
      expect(() => new CoreCreditService({ db: getDb(), trial: { amount: 5, expiresInDays: 0.5 } })).toThrow(
        ConfigurationError,
      );
    });
  });
}
