// The module seam (docs/modules.md, "Writing a module"): a module written here, against the package's
// public entries, registers its error code, notification type, grant source and account column, and
// the core accepts them, and refuses what no module registered.
import { describe, expect, it } from "vitest";
import * as z from "zod/mini";
import { ConfigurationError, createCreditManager, CreditError, ValidationError } from "../src/index.js";
import {
  accountColumn,
  createCreditManager as createCoreManager,
  notificationsPart,
  type CreditModule,
  type ModuleContext,
} from "../src/core/index.js";
import type { Notification } from "../src/models-public.js";

/** A referral module's own error. */
class ReferralError extends CreditError<"REFERRAL_LIMIT"> {
  constructor(message: string) {
    super("REFERRAL_LIMIT", 409, message);
  }
}

/** A referral module: its grants carry `source: "referral"`, counted in its column on the account. */
function referrals() {
  const seen: { ctx?: ModuleContext } = {};
  const count = accountColumn("referrals", z.object({ rewarded: z.int() }));
  const module: CreditModule<{ rewarded: number }> = {
    id: "referrals",
    errorCodes: ["REFERRAL_LIMIT"],
    notificationTypes: ["referral_rewarded"],
    grantSources: ["referral"],
    accountColumn: count,
    unitHook: ({ changes, now }) => {
      const rewards = changes.entries.filter((e) => e.type === "add" && e.source === "referral");
      if (rewards.length === 0) return [];
      const rewarded = (count.get(changes.account)?.rewarded ?? 0) + rewards.length;
      count.set(changes.account, { rewarded });
      const row: Notification = {
        id: crypto.randomUUID(),
        userId: changes.account.userId,
        type: "referral_rewarded",
        payload: { rewarded },
        version: 1,
        dedupeKey: null,
        status: "pending",
        attempts: 0,
        nextAttemptAt: now,
        claimedUntil: null,
        claimToken: null,
        lastError: null,
        createdAt: now,
        settledAt: null,
      };
      return [row];
    },
    init(ctx) {
      seen.ctx = ctx;
    },
  };
  return { module, count, seen };
}

describe("a module outside src/ through CreditModule", () => {
  for (const [name, create] of [
    ["the root's createCreditManager", createCreditManager],
    [
      "credit-management/core's createCreditManager",
      (o: { modules?: CreditModule[] } = {}) =>
        createCoreManager({ ...o, parts: { notifications: notificationsPart() } }),
    ],
  ] as const) {
    it(`${name}: registers its error code, notification type, grant source and account column`, async () => {
      const { module, count, seen } = referrals();
      const manager = await create({ modules: [module] });
      try {
        // init gave the module the core's context, with what every module registered.
        const registry = seen.ctx?.registry;
        expect(registry?.errorCodes.has("REFERRAL_LIMIT")).toBe(true);
        expect(registry?.notificationTypes.has("referral_rewarded")).toBe(true);
        expect(registry?.grantSources.has("referral")).toBe(true);
        expect(registry?.grantSources.has("manual")).toBe(true);
        expect(seen.ctx?.db).toBe(manager.db);

        await manager.credits.addCredits("u", 10, { source: "referral", sourceRef: "friend-1" });
        await manager.credits.addCredits("u", 5, { source: "manual" });
        await manager.credits.addCredits("u", 10, { source: "referral", sourceRef: "friend-2" });
        const account = await manager.db.getAccount("u");
        expect(account === null ? null : count.get(account)).toEqual({ rewarded: 2 });
        const rows = await manager.db.listNotifications("u", { limit: 100 });
        expect(
          rows
            .filter((r) => r.type === "referral_rewarded")
            .map((r) => r.payload.rewarded)
            .sort(),
        ).toEqual([1, 2]);
        expect((await manager.db.listGrants("u")).map((g) => g.source).sort()).toEqual([
          "manual",
          "referral",
          "referral",
        ]);

        // Its error is a CreditError with its own code.
        const error = new ReferralError("Three referrals at most.");
        expect(error).toBeInstanceOf(CreditError);
        expect(error.toJSON()).toEqual({ code: "REFERRAL_LIMIT", message: "Three referrals at most." });

        // Its notification type is accepted by the dispatcher, an unregistered one is not.
        manager.notifications.setHandler("referral_rewarded", async () => undefined);
        expect(() => manager.notifications.setHandler("nobody_registered_this", null)).toThrow(ValidationError);
        await expect(manager.notifications.emit("u", { type: "nobody_registered_this" })).rejects.toBeInstanceOf(
          ValidationError,
        );
      } finally {
        await manager.close();
      }
    });

    it(`${name}: refuses a grant source no module registered, changing nothing`, async () => {
      const manager = await create({ modules: [referrals().module] });
      try {
        await manager.credits.addCredits("u", 10);
        const refused = manager.credits.addCredits("u", 10, { source: "bonus_points" });
        await expect(refused).rejects.toBeInstanceOf(ValidationError);
        await expect(refused).rejects.toMatchObject({ issues: [{ path: "options.source" }] });
        expect(await manager.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 10 });
      } finally {
        await manager.close();
      }
      // Without the module, its source is refused too.
      const bare = await create();
      try {
        await expect(bare.credits.addCredits("u", 10, { source: "referral" })).rejects.toBeInstanceOf(ValidationError);
      } finally {
        await bare.close();
      }
    });
  }

  it("the core's own types list no module: promo and payment are the billing module's, on the root's manager only", async () => {
    const core = await createCoreManager({ parts: { notifications: notificationsPart() } });
    const full = await createCreditManager();
    try {
      await expect(core.credits.addCredits("u", 10, { source: "promo" })).rejects.toBeInstanceOf(ValidationError);
      await expect(full.credits.addCredits("u", 10, { source: "promo" })).resolves.toMatchObject({ type: "add" });
      expect(() => core.notifications.setHandler("auto_top_up_requested", null)).toThrow(ValidationError);
      expect(() => full.notifications.setHandler("auto_top_up_requested", null)).not.toThrow();
    } finally {
      await core.close();
      await full.close();
    }
  });

  it("refuses two modules that register one value, or a malformed one, with a ConfigurationError", async () => {
    const twice: CreditModule = { id: "other", grantSources: ["referral"] };
    await expect(createCreditManager({ modules: [referrals().module, twice] })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    const sameId: CreditModule = { id: "referrals" };
    await expect(createCreditManager({ modules: [referrals().module, sameId] })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    await expect(createCreditManager({ modules: [{ id: "bad", errorCodes: ["lower"] }] })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    // A module may not take a code or source the core (or the package's billing module) has.
    await expect(createCreditManager({ modules: [{ id: "bad", grantSources: ["manual"] }] })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    await expect(createCreditManager({ modules: [{ id: "bad", grantSources: ["promo"] }] })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    expect(() => accountColumn("balance", z.number())).toThrow(ConfigurationError);
  });
});

describe("a module's store part creates its own tables (docs/writing-a-store.md, \"A module's part\")", () => {
  /** A module whose memory side counts the `migrate` calls the store's `init()` makes. */
  const counted = (id: string) => {
    const calls = { migrate: 0 };
    const module: CreditModule = {
      id,
      store: { module: id, memory: () => ({ reads: {}, migrate: () => void calls.migrate++ }) },
    };
    return { module, calls };
  };

  it("createCreditManager binds the part before init(), which runs its migrate; each init() runs it again", async () => {
    const { module, calls } = counted("tables");
    const m = await createCreditManager({ modules: [module] });
    expect(calls.migrate).toBe(1);
    await m.db.init();
    expect(calls.migrate).toBe(2);
    await m.close();
    const skipped = counted("skipped");
    const n = await createCreditManager({ modules: [skipped.module], init: false });
    expect(skipped.calls.migrate).toBe(0);
    await n.close();
  });

  it("a malformed module is refused before any part's migrate runs", async () => {
    const good = counted("good");
    const bad = { ...counted("Bad Id").module };
    await expect(createCreditManager({ modules: [good.module, bad] })).rejects.toBeInstanceOf(ConfigurationError);
    expect(good.calls.migrate).toBe(0);
  });
});
