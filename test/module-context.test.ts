// The module context (docs/modules.md, "The module's context"): a module written here against the
// package's public entries only (the built package, as a user's app imports it) holds, commits,
// charges within the overdraft limit and runs a unit of work of its own, as the package's metering,
// leases and customer state do through the same seam.
import { describe, expect, it } from "vitest";
import * as z from "zod/mini";
import { createCreditManager, InsufficientCreditsError } from "credit-management";
import { accountColumn, moduleNotification } from "credit-management/core";
import type { CreditModule, EntryMeta, ModuleContext, UnitWork } from "credit-management/core";

/** The module's own input, validated once by its own model before any call on the context. */
const Call = z.object({ userId: z.string().check(z.minLength(1)), estimate: z.int().check(z.positive()) });

/** A pay-per-call module: a hold per call, the usage committed after it (usage delivered: capped, never refused). */
function calls() {
  let ctx: ModuleContext | undefined;
  const core = () => {
    if (ctx === undefined) throw new Error("calls: give the module to a manager first");
    return ctx;
  };
  const module: CreditModule = { id: "calls", init: (c) => void (ctx = c) };
  return {
    module,
    core,
    /** Holds `estimate`, then commits `used` of it — more than held within the overdraft limit. */
    async call(input: { userId: string; estimate: number }, used: number) {
      const { userId, estimate } = z.parse(Call, input);
      const hold = await core().hold(userId, estimate, { reason: "api call", ttlSeconds: 60 }, true);
      return core().commitHold(userId, hold.id, { amount: used, description: "api call" }, true);
    },
    /** A keyed deduction in a unit of work of the module's own: a repeated key answers with the first entry. */
    fee(userId: string, amount: number, key: string) {
      const c = core();
      // The entry's fields, its key's fingerprint among them (a repeat with other arguments is a conflict).
      const meta: EntryMeta = { idempotencyKey: key, fingerprint: `fee:${amount}`, description: "monthly fee" };
      return c.runUnitOfWork(
        userId,
        meta,
        (work: UnitWork) => work.deduct(amount, meta, { allowDebt: false, overdraftLimit: c.overdraftLimit }),
        async (entry) => entry,
        { operation: "chargeFee" },
      );
    },
  };
}

describe("a module over the module context, from the public entries only", () => {
  it("holds and commits past the hold within the overdraft limit, the rest a recorded shortfall", async () => {
    const c = calls();
    const m = await createCreditManager({ modules: [c.module], overdraftLimit: 5 });
    try {
      await m.credits.addCredits("u", 20);
      // The hold's 10 are captured, the excess of 2 taken as usage.
      const within = await c.call({ userId: "u", estimate: 10 }, 12);
      expect(within).toMatchObject({ type: "commit_reserved", amount: 10 });
      expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 8, reserved: 0 });
      // 8 left and 5 of overdraft: a call that used 20 is charged 13, its shortfall 7 recorded.
      const capped = await c.call({ userId: "u", estimate: 5 }, 20);
      expect(capped).toMatchObject({ shortfall: 7, metadata: { requested: 20 } });
      expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: -5, debt: 5 });
      // The module's input is its own model's to refuse: nothing is held.
      await expect(c.call({ userId: "", estimate: 1 }, 1)).rejects.toThrow();
      expect((await m.credits.audit("u")).ok).toBe(true);
    } finally {
      await m.close();
    }
  });

  it("charges after service up to the limit, and refuses a plain deduction past it", async () => {
    const c = calls();
    const m = await createCreditManager({ modules: [c.module] });
    try {
      await m.credits.addCredits("v", 4);
      const entry = await c.core().chargeUpToLimit("v", 10, { description: "late usage" });
      expect(entry?.amount).toBe(4);
      // Nothing left to charge: the request served still has its entry, of 0 credits, all of it the shortfall.
      expect(await c.core().chargeUpToLimit("v", 3, {})).toMatchObject({
        type: "deduct",
        amount: 0,
        shortfall: 3,
        metadata: { requested: 3 },
      });
      await expect(c.core().deduct("v", 1, {})).rejects.toBeInstanceOf(InsufficientCreditsError);
      expect(c.core().overdraftLimit).toBe(0);
      expect(await m.credits.getUserCreditsInfo("v")).toMatchObject({ balance: 0 });
    } finally {
      await m.close();
    }
  });

  it("runs a keyed unit of work of its own once, and reads the options and the clock", async () => {
    const now = new Date("2030-01-02T03:04:05.000Z");
    const c = calls();
    const m = await createCreditManager({
      modules: [c.module],
      clock: () => now,
      features: { images: { minAvailable: 0, unit: "gpu" } },
    });
    try {
      await m.credits.addCredits("w", 50);
      const first = await c.fee("w", 30, "fee-1");
      const again = await c.fee("w", 30, "fee-1");
      expect(again.id).toBe(first.id);
      expect(await m.credits.getUserCreditsInfo("w")).toMatchObject({ balance: 20 });
      await expect(c.fee("w", 30, "fee-2")).rejects.toBeInstanceOf(InsufficientCreditsError);
      expect(await m.credits.getUserCreditsInfo("w")).toMatchObject({ balance: 20 });
      const ctx = c.core();
      expect(ctx.realClock).toBe(false);
      expect(ctx.clock().getTime()).toBe(now.getTime());
      expect(m.credits.now().getTime()).toBe(now.getTime());
      expect(ctx.unitOf("images", undefined)).toBe("gpu");
      expect(ctx.unitOf(undefined, "credits")).toBeUndefined();
      expect(() => ctx.unitOf("images", "tokens")).toThrow(/paid in gpu/);
      expect(ctx.features.images?.unit).toBe("gpu");
    } finally {
      await m.close();
    }
  });

  it("changes its own column on the account alone, with its outbox rows, and nothing when it says so", async () => {
    let ctx: ModuleContext | undefined;
    const plan = accountColumn("supportPlan", z.object({ tier: z.string() }));
    const module: CreditModule<{ tier: string }> = {
      id: "support",
      accountColumn: plan,
      notificationTypes: ["support_plan_changed"],
      init: (c) => void (ctx = c),
    };
    const m = await createCreditManager({ modules: [module] });
    try {
      if (ctx === undefined) throw new Error("the module was not initialised");
      const c = ctx;
      await m.credits.addCredits("x", 7);
      const set = (tier: string) =>
        c.changeColumn("x", plan, (before, now) =>
          before?.tier === tier
            ? null
            : { value: { tier }, notifications: [moduleNotification("x", "support_plan_changed", { tier }, now)] },
        );
      expect(await set("gold")).toEqual({ tier: "gold" });
      // The same tier again: null, nothing written, the stored value answered.
      expect(await set("gold")).toEqual({ tier: "gold" });
      const account = await m.db.getAccount("x");
      expect(account === null ? null : plan.get(account)).toEqual({ tier: "gold" });
      const rows = await m.db.listNotifications("x", { limit: 10 });
      expect(rows.filter((n) => n.type === "support_plan_changed").map((n) => n.payload)).toEqual([{ tier: "gold" }]);
      // The credits are the core's: untouched, no journal entry, the chain intact.
      expect(await m.credits.getUserCreditsInfo("x")).toMatchObject({ balance: 7 });
      expect((await m.credits.journalHead("x"))?.seq).toBe(1);
      expect((await m.credits.audit("x")).ok).toBe(true);
    } finally {
      await m.close();
    }
  });
});
