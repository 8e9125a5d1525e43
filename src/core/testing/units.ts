/**
 * Balances in several units (part of `runDbManagerContract`, also `runUnitsContract`;
 * docs/units.md): every grant, deduction, hold, commit, release, reversal, expiry and debt acts in
 * one unit, and no operation converts one unit into another. An account that never names a unit
 * sees one default unit. Two managers racing spends in two units of one account never take a unit
 * below what it has. A spend limit or an alert threshold counts the unit it names (none: the
 * default unit).
 */
import { notificationsPart } from "../parts.js";
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import {
  ConflictError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  ReservationExpiredError,
  ReservationNotActiveError,
  SpendLimitError,
  ValidationError,
} from "../errors.js";
import type { AlertThreshold, Notification, Reservation } from "../models/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { NotificationService } from "../services/notification-service.js";
import { CreditModel, type ModelHold } from "./model.js";
import { commandsArbitrary, type runAgainstModel } from "./properties.js";
import { DAY, HOUR, T0, lazy, type PartOptions } from "./support.js";

/**
 * `getDb`: an initialised store; `getPeer` (optional): a second manager over the same store, for the
 * race of two managers (without it, two services over `getDb`).
 *
 * @beta
 */
export function runUnitsContract(
  getDb: () => DbManager,
  options: PartOptions & { getPeer?: () => DbManager; runs?: number } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  const peer = lazy(() => options.getPeer?.() ?? getDb());
  const user = () => `un-${randomUUID()}`;
  /** A service on a clock the test moves, with an overdraft limit per unit. */
  const service = (store: DbManager = db, clock = { now: T0 }) => {
    const credits = new CoreCreditService({
      db: store,
      clock: () => new Date(clock.now),
      overdraftLimit: 10,
      overdraftLimits: { images: 3, gpu_seconds: "unlimited" },
      features: { render: { minAvailable: 2, unit: "images" }, chat: { minAvailable: 1 } },
    });
    return { credits, clock, u: user() };
  };
  const clean = async (credits: CoreCreditService, u: string) => {
    expect((await credits.audit(u, { from: "genesis" })).problems).toEqual([]);
    expect((await credits.audit(u)).problems).toEqual([]);
  };
  /** The stored figures of `unit` (the default unit: the account's own). */
  const figures = async (u: string, unit?: string) => {
    const account = await db.getAccount(u);
    if (account === null) return null;
    if (unit === undefined) return { balance: account.balance, reserved: account.reserved, debt: account.debt };
    return (
      (Object.hasOwn(account.units ?? {}, unit) ? account.units?.[unit] : undefined) ?? {
        balance: 0,
        reserved: 0,
        debt: 0,
      }
    );
  };

  describe("units", () => {
    it("a name Object.prototype has is a name like any other: a unit, a feature, a spender, a scope and a limit's", async () => {
      const names = Object.getOwnPropertyNames(Object.prototype);
      // Units: the names the unit pattern takes ("constructor") hold credits like any unit; the others are refused by it.
      const { credits, u } = service();
      const taken: string[] = [];
      for (const name of names) {
        const refused = await credits.deductCredits(u, 1, { unit: name }).catch((e: unknown) => e);
        if (refused instanceof ValidationError) continue;
        expect(refused).toBeInstanceOf(InsufficientCreditsError);
        taken.push(name);
        await credits.addCredits(u, 10, { unit: name });
        expect(await credits.deductCredits(u, 3, { unit: name })).toMatchObject({
          unit: name,
          balanceAfter: 7,
          debtAfter: 0,
        });
        const hold = await credits.reserveCredits(u, 2, { unit: name });
        await credits.commitReservedCredits(hold.id, { amount: 1 });
        expect(await credits.getUserCreditsInfo(u, { unit: name })).toMatchObject({
          unit: name,
          balance: 6,
          reserved: 0,
          available: 6,
          debt: 0,
        });
        expect(await credits.check(u, { unit: name, amount: 6 })).toMatchObject({ allowed: true });
        expect(await credits.check(u, { unit: name, amount: 7 })).toMatchObject({ allowed: false });
        expect(await figures(u, name)).toEqual({ balance: 6, reserved: 0, debt: 0 });
      }
      expect(taken).toEqual(["constructor"]);
      expect(await figures(u)).toEqual({ balance: 0, reserved: 0, debt: 0 });
      await clean(credits, u);

      // Features, spenders, scopes and limits: every name.
      for (const name of names) {
        const v = user();
        await credits.addCredits(v, 10);
        await credits.addCredits(v, 5, { scope: { features: [name], spenders: [name] } });
        expect((await credits.getUserCreditsInfo(v, { spender: name, feature: name })).available).toBe(15);
        expect((await credits.getUserCreditsInfo(v)).available).toBe(10);
        await credits.deductCredits(v, 12, { spender: name, feature: name });
        expect(await credits.getUserCreditsInfo(v)).toMatchObject({ balance: 3, available: 3 });
        await credits.setLimits(v, [{ spender: name, feature: name, amount: 1, period: "day" }]);
        expect(await credits.getLimits(v)).toMatchObject([{ spender: name, feature: name, used: 0, amount: 1 }]);
        await expect(credits.deductCredits(v, 2, { spender: name, feature: name })).rejects.toBeInstanceOf(
          SpendLimitError,
        );
        await credits.deductCredits(v, 1, { spender: name, feature: name });
        expect(await credits.getLimits(v)).toMatchObject([{ spender: name, used: 1, remaining: 0 }]);
        await credits.removeLimit(v, { spender: name, feature: name });
        expect(await credits.getLimits(v)).toEqual([]);
        await clean(credits, v);
      }
    });

    it("keeps each unit's balance apart; the default unit's figures are the account's own", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      const images = await credits.addCredits(u, 50, { unit: "images" });
      expect(images).toMatchObject({ unit: "images", amount: 50, balanceAfter: 50, reservedAfter: 0, debtAfter: 0 });
      const grant = await db.getGrant(images.grants[0]!.grantId);
      expect(grant?.unit).toBe("images");
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, available: 100 });
      expect(await figures(u, "images")).toEqual({ balance: 50, reserved: 0, debt: 0 });
      const spent = await credits.deductCredits(u, 20, { unit: "images" });
      expect(spent).toMatchObject({ unit: "images", balanceAfter: 30, grants: [{ grantId: grant?.id, amount: 20 }] });
      // Naming the default unit is not naming another one.
      const named = await credits.deductCredits(u, 5, { unit: "credits" });
      expect(named.unit ?? null).toBe(null);
      expect(named.balanceAfter).toBe(95);
      expect(await figures(u)).toEqual({ balance: 95, reserved: 0, debt: 0 });
      const report = await credits.audit(u, { from: "genesis" });
      expect(report.units).toEqual({ images: { balance: 30, reserved: 0, debt: 0, available: 30 } });
      await clean(credits, u);
    });

    it("refuses a spend in a unit with too little, whatever another unit has, naming the unit", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 1000);
      await credits.addCredits(u, 2, { unit: "images" });
      const before = await credits.getCreditHistory(u, { limit: 10 });
      const refused = await credits.deductCredits(u, 3, { unit: "images" }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(InsufficientCreditsError);
      expect((refused as InsufficientCreditsError).message.includes("3 images")).toBe(true);
      expect((refused as InsufficientCreditsError).details).toMatchObject({
        unit: "images",
        requested: 3,
        available: 2,
      });
      await expect(credits.reserveCredits(u, 3, { unit: "images" })).rejects.toBeInstanceOf(InsufficientCreditsError);
      // Nothing changed.
      expect((await credits.getCreditHistory(u, { limit: 10 })).items.map((e) => e.id)).toEqual(
        before.items.map((e) => e.id),
      );
      expect(await figures(u, "images")).toEqual({ balance: 2, reserved: 0, debt: 0 });
      // A unit with nothing at all is refused too; the default unit is untouched.
      await expect(credits.deductCredits(u, 1, { unit: "gpu_seconds" })).rejects.toBeInstanceOf(
        InsufficientCreditsError,
      );
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 1000 });
      await clean(credits, u);
    });

    it("draws only the unit's grants, in the burn-down order", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      const late = await credits.addCredits(u, 10, { unit: "images", priority: 1, expiresAt: new Date(T0 + 30 * DAY) });
      const soon = await credits.addCredits(u, 10, { unit: "images", priority: 1, expiresAt: new Date(T0 + 2 * DAY) });
      const first = await credits.addCredits(u, 10, { unit: "images" });
      const spent = await credits.deductCredits(u, 25, { unit: "images" });
      expect(spent.grants).toEqual([
        { grantId: first.grants[0]!.grantId, amount: 10 },
        { grantId: soon.grants[0]!.grantId, amount: 10 },
        { grantId: late.grants[0]!.grantId, amount: 5 },
      ]);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100 });
      await clean(credits, u);
    });

    it("holds, commits, over-commits and releases in the hold's own unit", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 20, { unit: "images" });
      const hold = await credits.reserveCredits(u, 8, { unit: "images" });
      expect(hold.unit).toBe("images");
      expect(await figures(u, "images")).toEqual({ balance: 20, reserved: 8, debt: 0 });
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, reserved: 0 });
      const commit = await credits.commitReservedCredits(hold.id, { amount: 5 });
      expect(commit).toMatchObject({ unit: "images", amount: 5, balanceAfter: 15, reservedAfter: 0 });
      // An over-commit takes its excess in the hold's unit, within that unit's overdraft limit (3).
      const second = await credits.reserveCredits(u, 15, { unit: "images" });
      await expect(credits.commitReservedCredits(second.id, { amount: 19 })).rejects.toBeInstanceOf(
        InsufficientCreditsError,
      );
      await credits.commitReservedCredits(second.id, { amount: 18 });
      expect(await figures(u, "images")).toEqual({ balance: -3, reserved: 0, debt: 3 });
      const third = await credits.reserveCredits(u, 40);
      const release = await credits.releaseReservedCredits(third.id);
      expect(release.unit ?? null).toBe(null);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, reserved: 0, debt: 0 });
      await clean(credits, u);
    });

    it("keeps debt per unit: each unit's overdraft limit, paid only by that unit's additions", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 2, { unit: "images" });
      // images: limit 3.
      await expect(credits.deductCreditsAfterService(u, 6, { unit: "images" })).rejects.toBeInstanceOf(
        InsufficientCreditsError,
      );
      await credits.deductCreditsAfterService(u, 5, { unit: "images" });
      expect(await figures(u, "images")).toEqual({ balance: -3, reserved: 0, debt: 3 });
      // The default unit's addition pays none of it.
      const credited = await credits.addCredits(u, 50);
      expect(credited.grants).toEqual([{ grantId: expect.any(String), amount: 50 }]);
      expect(await figures(u, "images")).toMatchObject({ debt: 3 });
      // The images addition pays it first.
      const paid = await credits.addCredits(u, 10, { unit: "images" });
      expect(paid).toMatchObject({ debtAfter: 0, balanceAfter: 7, grants: [{ amount: 7 }] });
      // An unlimited unit, and the default unit's own limit (10).
      await credits.deductCreditsAfterService(u, 1_000_000, { unit: "gpu_seconds" });
      expect(await figures(u, "gpu_seconds")).toMatchObject({ debt: 1_000_000 });
      await expect(credits.deductCreditsAfterService(u, 61)).rejects.toBeInstanceOf(InsufficientCreditsError);
      await credits.deductCreditsAfterService(u, 60);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: -10, debt: 10 });
      // A unit no option names has no overdraft.
      await expect(credits.deductCreditsAfterService(u, 1, { unit: "seats" })).rejects.toBeInstanceOf(
        InsufficientCreditsError,
      );
      await clean(credits, u);
    });

    it("expires each unit's grants in that unit, one entry per unit", async () => {
      const { credits, clock, u } = service();
      await credits.addCredits(u, 10, { expiresAt: new Date(T0 + HOUR) });
      await credits.addCredits(u, 7, { unit: "images", expiresAt: new Date(T0 + HOUR) });
      await credits.addCredits(u, 4, { unit: "images" });
      const hold = await credits.reserveCredits(u, 5, { unit: "images", ttlSeconds: 3 * 3600 });
      clock.now = T0 + 2 * HOUR;
      await credits.expireCredits(u);
      const expired = (await credits.getCreditHistory(u, { limit: 20, types: ["expire"] })).items;
      expect(expired.map((e) => `${e.unit ?? "(default)"} ${e.amount}`).sort()).toEqual(["(default) 10", "images 2"]);
      expect(await figures(u)).toEqual({ balance: 0, reserved: 0, debt: 0 });
      expect(await figures(u, "images")).toEqual({ balance: 9, reserved: 5, debt: 0 });
      // The hold lapses later: what it returns to the expired grant expires in its unit.
      clock.now = T0 + 4 * HOUR;
      await credits.expireCredits(u);
      expect((await credits.getReservation(hold.id))?.status).toBe("expired");
      expect(await figures(u, "images")).toEqual({ balance: 4, reserved: 0, debt: 0 });
      await clean(credits, u);
    });

    it("gives a charge back in its unit", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      const grant = await credits.addCredits(u, 10, { unit: "images" });
      const charge = await credits.deductCreditsAfterService(u, 12, { unit: "images" });
      expect(await figures(u, "images")).toMatchObject({ debt: 2 });
      const back = await credits.reverseCharge(u, charge.id, { amount: 5, reason: "bad output" });
      expect(back).toMatchObject({ unit: "images", amount: 5 });
      expect(await figures(u, "images")).toEqual({ balance: 3, reserved: 0, debt: 0 });
      expect((await db.getGrant(grant.grants[0]!.grantId))?.remaining).toBe(3);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, debt: 0 });
      await clean(credits, u);
    });

    it("keeps scoped grants per unit", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100, { scope: { features: ["chat"] } });
      const images = await credits.addCredits(u, 5, { unit: "images", scope: { features: ["chat"] } });
      await credits.addCredits(u, 5, { unit: "images" });
      const spent = await credits.deductCredits(u, 7, { unit: "images", feature: "chat" });
      expect(spent.grants[0]).toEqual({ grantId: images.grants[0]!.grantId, amount: 5 });
      expect(spent.grants.reduce((s, g) => s + g.amount, 0)).toBe(7);
      // Without the feature, only the unit's unscoped grant pays: 3 left, as its figures and check() say.
      const chatOnly = await credits.addCredits(u, 6, { unit: "images", scope: { features: ["chat"] } });
      expect(await credits.getUserCreditsInfo(u, { unit: "images" })).toMatchObject({ balance: 9, available: 3 });
      expect((await credits.getUserCreditsInfo(u)).units?.images).toMatchObject({ balance: 9, available: 3 });
      expect(await credits.getUserCreditsInfo(u, { unit: "images", feature: "chat" })).toMatchObject({ available: 9 });
      expect(await credits.check(u, { unit: "images", amount: 4 })).toMatchObject({ allowed: false });
      await credits.voidGrant(chatOnly.grants[0]!.grantId);
      await expect(credits.deductCredits(u, 4, { unit: "images" })).rejects.toBeInstanceOf(InsufficientCreditsError);
      await credits.deductCredits(u, 3, { unit: "images" });
      await clean(credits, u);
    });

    it("covers the unit with an idempotency key's arguments: the same key in another unit is a conflict", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 100, { unit: "images" });
      const first = await credits.deductCredits(u, 5, { idempotencyKey: "k-1" });
      // The default unit, named or not, is one unit.
      expect((await credits.deductCredits(u, 5, { idempotencyKey: "k-1", unit: "credits" })).id).toBe(first.id);
      await expect(credits.deductCredits(u, 5, { idempotencyKey: "k-1", unit: "images" })).rejects.toBeInstanceOf(
        IdempotencyConflictError,
      );
      const hold = await credits.reserveCredits(u, 5, { idempotencyKey: "k-2", unit: "images" });
      expect((await credits.reserveCredits(u, 5, { idempotencyKey: "k-2", unit: "images" })).id).toBe(hold.id);
      await expect(credits.reserveCredits(u, 5, { idempotencyKey: "k-2" })).rejects.toBeInstanceOf(
        IdempotencyConflictError,
      );
      expect(await figures(u, "images")).toEqual({ balance: 100, reserved: 5, debt: 0 });
      await clean(credits, u);
    });

    it("answers each unit's figures beside the default unit's, and in a unit when asked", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 30, { unit: "images" });
      await credits.reserveCredits(u, 4, { unit: "images" });
      await credits.deductCreditsAfterService(u, 2, { unit: "gpu_seconds" });
      expect(await credits.getUserCreditsInfo(u)).toEqual({
        userId: u,
        balance: 100,
        reserved: 0,
        available: 100,
        debt: 0,
        units: {
          images: { balance: 30, reserved: 4, available: 26, debt: 0 },
          gpu_seconds: { balance: -2, reserved: 0, available: -2, debt: 2 },
        },
      });
      expect(await credits.getUserCreditsInfo(u, { unit: "images" })).toEqual({
        userId: u,
        unit: "images",
        balance: 30,
        reserved: 4,
        available: 26,
        debt: 0,
      });
      expect(await credits.getUserCreditsInfo(u, { unit: "seats" })).toMatchObject({ unit: "seats", balance: 0 });
      expect(await credits.check(u, { unit: "images", amount: 26 })).toMatchObject({ allowed: true });
      expect(await credits.check(u, { unit: "images", amount: 27 })).toMatchObject({
        allowed: false,
        reason: "insufficient_credits",
      });
    });

    it("spends, holds and checks a feature in the unit its rule names; naming another unit is a ValidationError", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 3, { unit: "images" });
      const spent = await credits.deductCredits(u, 1, { feature: "render" });
      expect(spent).toMatchObject({ unit: "images", feature: "render", balanceAfter: 2 });
      expect(await credits.getUserCreditsInfo(u, { feature: "render" })).toMatchObject({
        unit: "images",
        available: 2,
      });
      expect(await credits.check(u, { feature: "render" })).toMatchObject({ allowed: true });
      const hold = await credits.reserveCredits(u, 1, { feature: "render", unit: "images" });
      expect(hold.unit).toBe("images");
      // 1 image left: below the rule's minimum of 2, whatever the default unit has.
      expect(await credits.check(u, { feature: "render" })).toMatchObject({ allowed: false });
      await expect(credits.deductCredits(u, 1, { feature: "render", unit: "credits" })).rejects.toBeInstanceOf(
        ValidationError,
      );
      await expect(credits.check(u, { feature: "render", unit: "gpu_seconds" })).rejects.toBeInstanceOf(
        ValidationError,
      );
      // A feature whose rule names no unit is spent in the unit the call names.
      expect((await credits.deductCredits(u, 1, { feature: "chat", unit: "images" })).unit).toBe("images");
      expect((await credits.deductCredits(u, 1, { feature: "chat" })).unit ?? null).toBe(null);
      await clean(credits, u);
    });

    it("refuses a unit that is no short identifier, changing nothing", async () => {
      const { credits, u } = service();
      for (const unit of ["", "Images", "9lives", "a b", "x".repeat(33), "émoji"]) {
        await expect(credits.addCredits(u, 5, { unit })).rejects.toBeInstanceOf(ValidationError);
        await expect(credits.deductCredits(u, 5, { unit })).rejects.toBeInstanceOf(ValidationError);
      }
      expect(await db.getAccount(u)).toBe(null);
    });

    it('disables a spender in every unit with a limit of 0 in unit "*": spends, holds and checks refused in each unit', async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 5, { unit: "images" });
      await credits.addCredits(u, 5, { unit: "gpu_seconds" });
      // Only with amount 0: no limit adds two units together.
      await expect(
        credits.setLimit(u, { spender: "gone", unit: "*", amount: 1, period: "year" }),
      ).rejects.toBeInstanceOf(ValidationError);
      await credits.setLimits(u, [{ spender: "gone", unit: "*", amount: 0, period: "year" }]);
      expect(await credits.getLimits(u)).toMatchObject([{ spender: "gone", unit: "*", amount: 0, remaining: 0 }]);
      const before = await credits.getCreditHistory(u, { limit: 100 });
      for (const unit of [undefined, "images", "gpu_seconds"]) {
        const spent = await credits.deductCredits(u, 1, { spender: "gone", unit }).catch((e: unknown) => e);
        expect(spent).toBeInstanceOf(SpendLimitError);
        if (unit !== undefined) expect((spent as SpendLimitError).details).toMatchObject({ unit });
        await expect(credits.reserveCredits(u, 1, { spender: "gone", unit })).rejects.toBeInstanceOf(SpendLimitError);
        await expect(credits.reserveCredits(u, 5, { spender: "gone", unit, minimum: 1 })).rejects.toBeInstanceOf(
          SpendLimitError,
        );
        expect(await credits.check(u, { spender: "gone", unit, amount: 1 })).toMatchObject({
          allowed: false,
          reason: "limit",
        });
        // Another spender, and the account's own spends, are not touched.
        await credits.deductCredits(u, 1, { spender: "stays", unit });
      }
      await expect(credits.deductCredits(u, 1, { spender: "gone", feature: "render" })).rejects.toBeInstanceOf(
        SpendLimitError,
      );
      expect((await credits.getCreditHistory(u, { limit: 100 })).items.length).toBe(before.items.length + 3);
      // Removed with the same unit, the spender spends again.
      await credits.removeLimit(u, { spender: "gone", unit: "*" });
      expect(await credits.getLimits(u)).toEqual([]);
      await credits.deductCredits(u, 1, { spender: "gone", unit: "images" });
      await clean(credits, u);
    });

    it("counts a spend limit in its own unit: a limit per unit, refusals naming the unit, the feature's unit", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 20, { unit: "images" });
      await credits.setLimit(u, { amount: 50, period: "day" });
      // Same spender, feature and window, another unit: a second limit, not the first changed.
      const set = await credits.setLimit(u, { amount: 5, period: "day", unit: "images" });
      expect(set.map((l) => [l.unit ?? null, l.amount])).toEqual([
        [null, 50],
        ["images", 5],
      ]);
      await credits.deductCredits(u, 40);
      await credits.deductCredits(u, 3, { unit: "images" });
      const hold = await credits.reserveCredits(u, 2, { feature: "render" }); // images, by its rule
      expect((await credits.getLimits(u)).map((l) => [l.unit ?? null, l.used, l.remaining])).toEqual([
        [null, 40, 10],
        ["images", 5, 0],
      ]);
      const before = await figures(u, "images");
      const refused = await credits.deductCredits(u, 1, { unit: "images" }).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(SpendLimitError);
      expect((refused as SpendLimitError).message).toMatch(/^Cannot spend 1 images: the spend limit of 5 per day/);
      expect((refused as SpendLimitError).details).toMatchObject({
        unit: "images",
        requested: 1,
        remaining: 0,
        limit: { unit: "images", amount: 5 },
      });
      expect(await figures(u, "images")).toEqual(before);
      expect(await credits.check(u, { unit: "images", amount: 1 })).toMatchObject({ allowed: false });
      // The default unit's limit still has 10 left: an image spend took none of it.
      expect(await credits.check(u, { amount: 10 })).toMatchObject({ allowed: true });
      await credits.deductCredits(u, 10);
      // A release gives the hold's count back in its unit; a commit counts what it spent there.
      await credits.releaseReservedCredits(hold.id);
      const second = await credits.reserveCredits(u, 2, { unit: "images" });
      await credits.commitReservedCredits(second.id, { amount: 1 });
      expect((await credits.getLimits(u)).map((l) => [l.unit ?? null, l.used])).toEqual([
        [null, 50],
        ["images", 4],
      ]);
      // A limit on a feature is in the unit of its rule; naming another unit is a ValidationError,
      // and so are two limits that are one once the feature's unit is read.
      await expect(
        credits.setLimits(u, [
          { feature: "render", amount: 1, period: "day" },
          { feature: "render", amount: 2, period: "day", unit: "images" },
        ]),
      ).rejects.toBeInstanceOf(ValidationError);
      await expect(
        credits.setLimit(u, { feature: "render", amount: 1, period: "day", unit: "credits" }),
      ).rejects.toBeInstanceOf(ValidationError);
      const withFeature = await credits.setLimit(u, { feature: "render", amount: 1, period: "week" });
      expect(withFeature[2]).toMatchObject({ feature: "render", unit: "images" });
      // removeLimit takes the unit: the images limit goes, the default unit's stays.
      const left = await credits.removeLimit(u, { period: "day", unit: "images" });
      expect(left.map((l) => [l.feature, l.unit ?? null, l.amount])).toEqual([
        [null, null, 50],
        ["render", "images", 1],
      ]);
      await clean(credits, u);
    });

    it("watches an alert threshold's own unit: available, spend, percent left; events name the unit", async () => {
      // reason: alert events are outbox rows; a store without the outbox part keeps none
      if (db.capabilities.parts?.outbox === false) return;
      const clock = { now: T0 };
      const now = () => new Date(clock.now);
      const thresholds: AlertThreshold[] = [
        { id: "low", kind: "available", atOrBelow: 5 },
        { id: "img_low", kind: "available", atOrBelow: 5, unit: "images" },
        { id: "img_day", kind: "period_spend", atOrAbove: 10, window: "day", unit: "images" },
        { id: "img_left", kind: "left_percent", atOrBelow: 50, unit: "images" },
      ];
      const credits = new CoreCreditService({
        db,
        clock: now,
        notifications: notificationsPart({ alerts: thresholds }),
      });
      const notifications = new NotificationService({ db, clock: now, alerts: thresholds });
      const u = user();
      /** The `alert_triggered` events of thresholds in images. */
      const alertRows = async (): Promise<Notification[]> =>
        (await notifications.list(u, { limit: 100 })).filter(
          (r) => r.type === "alert_triggered" && r.payload.unit === "images",
        );
      await credits.addCredits(u, 20, { unit: "images" });
      await credits.addCredits(u, 100);
      await credits.deductCredits(u, 50);
      await credits.deductCredits(u, 8, { unit: "images" }); // 12 left, 8 spent, 60 % left
      expect(await alertRows()).toEqual([]);
      await credits.deductCredits(u, 3, { unit: "images" }); // 9 left, 11 spent, 45 % left
      await credits.deductCredits(u, 4, { unit: "images" }); // 5 left: on the line
      expect((await alertRows()).map((r) => [r.payload.thresholdId, r.payload.unit, r.payload.value])).toEqual([
        ["img_day", "images", 11],
        ["img_left", "images", 45],
        ["img_low", "images", 5],
      ]);
      await credits.deductCredits(u, 46); // the default unit: 4 left
      const low = (await notifications.list(u, { limit: 100 })).findLast(
        (r) => r.type === "alert_triggered" && r.payload.thresholdId === "low",
      );
      expect(low?.payload).toMatchObject({ value: 4 });
      expect(low !== undefined && "unit" in low.payload).toBe(false);
      const states = await notifications.getAlerts(u);
      expect(states.filter((s) => s.source !== "builtIn").map((s) => [s.threshold.id, s.value])).toEqual([
        ["low", 4],
        ["img_low", 5],
        ["img_day", 15],
        ["img_left", 25],
      ]);
      // The built-in low-credits thresholds watch the default unit.
      expect(states.find((s) => s.threshold.id === "credits_exhausted")?.value).toBe(4);

      // A spend threshold set later counts its window's earlier spends in its unit only.
      const v = user();
      await credits.addCredits(v, 100);
      await credits.addCredits(v, 20, { unit: "images" });
      await credits.deductCredits(v, 30);
      await credits.deductCredits(v, 7, { unit: "images" });
      await notifications.setAlerts(v, [
        { id: "credits_day", kind: "period_spend", atOrAbove: 31, window: "day" },
        { id: "images_day", kind: "period_spend", atOrAbove: 7, window: "day", unit: "images" },
      ]);
      expect((await notifications.getAlerts(v)).filter((s) => s.source === "account")).toMatchObject([
        { threshold: { id: "credits_day" }, state: "ok", value: 30 },
        { threshold: { id: "images_day" }, state: "in_alarm", value: 7 },
      ]);

      // What a unit's grants were given counts its grants drawn to their last credit, in it alone.
      const w = user();
      await credits.addCredits(w, 100);
      await credits.addCredits(w, 10, { unit: "images" });
      await credits.addCredits(w, 10, { unit: "images" });
      await credits.deductCredits(w, 10, { unit: "images" }); // one grant drawn out: 10 of 20 left
      await notifications.setAlerts(w, [
        { id: "credits_pct", kind: "left_percent", atOrBelow: 99 },
        { id: "images_pct", kind: "left_percent", atOrBelow: 50, unit: "images" },
      ]);
      expect((await notifications.getAlerts(w)).filter((s) => s.source === "account")).toMatchObject([
        { threshold: { id: "credits_pct" }, state: "ok", value: 100 },
        { threshold: { id: "images_pct" }, state: "in_alarm", value: 50 },
      ]);
      await clean(credits, u);
      await clean(credits, w);
    });

    it("audits from a checkpoint that records every unit", async () => {
      const { credits, u } = service();
      await credits.addCredits(u, 30);
      await credits.addCredits(u, 20, { unit: "images" });
      await credits.reserveCredits(u, 4, { unit: "images" });
      await credits.deductCreditsAfterService(u, 5, { unit: "gpu_seconds" });
      expect(await credits.checkpoint(u)).not.toBe(null);
      await credits.deductCredits(u, 6, { unit: "images" });
      const report = await credits.audit(u);
      expect(report).toMatchObject({ ok: true, from: "checkpoint" });
      expect(report.units).toEqual({
        images: { balance: 14, reserved: 4, debt: 0, available: 10 },
        gpu_seconds: { balance: -5, reserved: 0, debt: 5, available: -5 },
      });
      await clean(credits, u);
    });

    it("never takes a unit below what it has when two managers race spends in two units", async () => {
      const a = service(db);
      const b = service(peer);
      const u = a.u;
      await a.credits.addCredits(u, 20);
      await a.credits.addCredits(u, 10, { unit: "images" });
      const tries = Array.from({ length: 40 }, (_, i) => {
        const credits = i % 2 === 0 ? a.credits : b.credits;
        const unit = i % 4 < 2 ? "images" : undefined;
        return credits.deductCredits(u, 1, unit === undefined ? {} : { unit }).then(
          () => unit ?? "credits",
          (e: unknown) => {
            if (!(e instanceof InsufficientCreditsError)) throw e;
            return "refused";
          },
        );
      });
      const outcomes = await Promise.all(tries);
      expect(outcomes.filter((o) => o === "images").length).toBe(10);
      expect(outcomes.filter((o) => o === "credits").length).toBe(20);
      expect(await figures(u, "images")).toEqual({ balance: 0, reserved: 0, debt: 0 });
      expect(await figures(u)).toEqual({ balance: 0, reserved: 0, debt: 0 });
      await clean(a.credits, u);
    });

    const runs = options.runs ?? 20;
    it(`random sequences in three units keep every invariant per unit and match a model per unit (${runs} runs)`, async () => {
      await fc.assert(
        fc.asyncProperty(
          commandsArbitrary({ min: 1, max: 30 }),
          fc.array(fc.constantFrom(...UNITS), { minLength: 30, maxLength: 30 }),
          async (commands, units) => runUnitsAgainstModels(db, peer, commands, units),
        ),
        { numRuns: runs },
      );
    });
  });
}

/** The units of the property test: the default one and two others. */
const UNITS = ["credits", "images", "gpu_seconds"] as const;

/**
 * Runs `commands` (the property contract's), the i-th in `units[i]`, on a fresh account through two
 * services (one over `db`, one over `peer`, in turn), and on one `CreditModel` per unit, which knows
 * nothing of units: each unit must behave as an account of its own. Throws on the first disagreement.
 */
async function runUnitsAgainstModels(
  db: DbManager,
  peer: DbManager,
  commands: Parameters<typeof runAgainstModel>[1],
  units: readonly (typeof UNITS)[number][],
): Promise<void> {
  const u = `unit-prop-${randomUUID()}`;
  const clock = { now: T0 };
  const unlimited = {
    overdraftLimit: "unlimited" as const,
    overdraftLimits: { images: "unlimited" as const, gpu_seconds: "unlimited" as const },
  };
  const services = [db, peer].map(
    (store) => new CoreCreditService({ db: store, clock: () => new Date(clock.now), ...unlimited }),
  );
  const models = new Map(UNITS.map((unit) => [unit, new CreditModel(clock.now)]));
  const holds: Array<{ real: Reservation; model: ModelHold; unit: string }> = [];
  const grants: Array<{ id: string; unit: string }> = [];
  const settleAll = () => {
    for (const m of models.values()) {
      m.now = clock.now;
      m.settle();
    }
  };
  const expectOutcome = async (allowed: boolean, run: () => Promise<unknown>, what: string) => {
    try {
      await run();
      if (!allowed) throw new Error(`${what}: the service accepted what the model refuses`);
    } catch (error) {
      if (allowed) throw new Error(`${what}: the model accepts but the service threw: ${String(error)}`);
      if (!(error instanceof InsufficientCreditsError)) throw error;
    }
  };
  for (const [step, c] of commands.entries()) {
    const unit = units[step % units.length] ?? "credits";
    const m = models.get(unit) as CreditModel;
    const credits = services[step % 2] as CoreCreditService;
    const what = `step ${step} ${JSON.stringify(c)} in ${unit}`;
    settleAll();
    switch (c.op) {
      case "tick":
        clock.now += c.seconds * 1000;
        continue;
      case "add": {
        const expiresAt = c.expiresInSec === null ? null : new Date(clock.now + c.expiresInSec * 1000);
        const e = await credits.addCredits(u, c.amount, { expiresAt, priority: c.priority, unit });
        const gid = e.grants[0]?.grantId ?? null;
        if (gid !== null) grants.push({ id: gid, unit });
        m.add(gid, c.amount, expiresAt?.getTime() ?? null, c.priority);
        break;
      }
      case "deduct":
      case "after": {
        const allowed = m.deduct(c.amount, c.op === "after");
        await expectOutcome(
          allowed,
          () =>
            c.op === "after"
              ? credits.deductCreditsAfterService(u, c.amount, { unit })
              : credits.deductCredits(u, c.amount, { unit }),
          what,
        );
        break;
      }
      case "reserve": {
        let real: Reservation | null = null;
        await expectOutcome(
          m.available >= c.amount,
          async () => (real = await credits.reserveCredits(u, c.amount, { ttlSeconds: c.ttlSec, unit })),
          what,
        );
        if (real !== null) {
          const r: Reservation = real;
          m.reserve(r.id, c.amount, c.ttlSec * 1000);
          holds.push({ real: r, model: m.holds[m.holds.length - 1] as ModelHold, unit });
        }
        break;
      }
      case "commit":
      case "release": {
        if (holds.length === 0) continue;
        const h = holds[c.hold % holds.length] as (typeof holds)[number];
        const hm = models.get(h.unit as (typeof UNITS)[number]) as CreditModel;
        const run =
          c.op === "commit"
            ? () => credits.commitReservedCredits(h.real.id, c.amount === null ? {} : { amount: c.amount })
            : () => credits.releaseReservedCredits(h.real.id);
        if (h.model.status === "active") {
          await run();
          if (c.op === "commit") hm.commit(h.model, c.amount ?? h.real.amount);
          else hm.release(h.model);
        } else {
          const expected = h.model.status === "expired" ? ReservationExpiredError : ReservationNotActiveError;
          await expect(run(), what).rejects.toBeInstanceOf(expected);
        }
        break;
      }
      case "void": {
        if (grants.length === 0) continue;
        const g = grants[c.grant % grants.length] as (typeof grants)[number];
        const gm = models.get(g.unit as (typeof UNITS)[number]) as CreditModel;
        const mg = gm.grants.find((x) => x.id === g.id);
        if (mg === undefined) continue;
        if (mg.closed !== null) await expect(credits.voidGrant(g.id), what).rejects.toBeInstanceOf(ConflictError);
        else {
          await credits.voidGrant(g.id);
          gm.voidGrant(mg);
        }
        break;
      }
      case "expire":
        await credits.expireCredits(u);
        break;
    }
    settleAll();
    // Each unit's figures are its model's; the service answers them settled.
    const info = await credits.getUserCreditsInfo(u);
    for (const [name, model] of models) {
      const got =
        name === "credits"
          ? info
          : ((Object.hasOwn(info.units ?? {}, name) ? info.units?.[name] : undefined) ?? {
              balance: 0,
              reserved: 0,
              debt: 0,
            });
      const want = { balance: model.balance, reserved: model.reserved, debt: model.debt };
      const seen = { balance: got.balance, reserved: got.reserved, debt: got.debt };
      if (JSON.stringify(seen) !== JSON.stringify(want))
        throw new Error(`${what}: ${name} is ${JSON.stringify(seen)}, its model ${JSON.stringify(want)}`);
    }
  }
  // The journal replays per unit, and every open grant is where its unit's model has it (a read
  // settles what the last tick made due first).
  settleAll();
  await (services[0] as CoreCreditService).getUserCreditsInfo(u);
  const report = await (services[0] as CoreCreditService).audit(u, { from: "genesis" });
  if (!report.ok) throw new Error(`audit: ${report.problems.join("; ")}`);
  const stored = await db.listGrants(u);
  for (const g of stored) {
    const model = models.get((g.unit ?? "credits") as (typeof UNITS)[number]) as CreditModel;
    const mg = model.grants.find((x) => x.id === g.id);
    if (mg === undefined || mg.remaining !== g.remaining)
      throw new Error(
        `grant ${g.id} (${g.unit ?? "credits"}): ${g.remaining} left, its model ${String(mg?.remaining)}`,
      );
  }
}
