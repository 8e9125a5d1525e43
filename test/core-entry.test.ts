// credit-management/core (docs/modules.md): the core's own manager, without the modules, over the
// same store as the full manager.
import { describe, expect, it } from "vitest";
import {
  createCreditManager as createCoreManager,
  CoreInMemoryDbManager,
  expirationPart,
  notificationsPart,
  subscriptionsPart,
} from "../src/core/index.js";
import { InMemoryNotificationQueue } from "../src/core/queue/index.js";
import { CoreCreditService } from "../src/index.js";
import type { UnitHook } from "../src/core/services/unit-of-work.js";
import { newNotification } from "../src/core/domain/notifications.js";
import { ConfigurationError, createCreditManager, CreditService, InMemoryDbManager } from "../src/index.js";

describe("credit-management/core", () => {
  it("builds the core's services and none of the modules'", async () => {
    const manager = await createCoreManager();
    try {
      expect(manager.credits).toBeInstanceOf(CoreCreditService);
      expect(manager.credits).not.toBeInstanceOf(CreditService);
      for (const method of ["getUsage", "getRevenue", "getCustomerState", "meter", "leases", "customerToken"])
        expect(method in manager.credits, method).toBe(false);
      // Without parts: the ledger alone.
      expect(Object.keys(manager).sort()).toEqual(["close", "credits", "db", "ledger"]);
      // Its default store holds the core's rows only; the full manager's adds the billing module's part.
      expect(manager.db).toBeInstanceOf(CoreInMemoryDbManager);
      expect(manager.db).not.toBeInstanceOf(InMemoryDbManager);
      expect("insertPromo" in manager.db).toBe(false);
      const full = await createCreditManager();
      expect(full.db).toBeInstanceOf(InMemoryDbManager);
      await full.close();
      await manager.credits.addCredits("u", 100);
      const hold = await manager.credits.reserveCredits("u", 30);
      await manager.credits.commitReservedCredits(hold.id, { amount: 12 });
      expect(await manager.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 88, reserved: 0 });
      expect((await manager.credits.audit("u")).ok).toBe(true);
    } finally {
      await manager.close();
    }
  });

  it("refuses the modules' options with a ConfigurationError", async () => {
    await expect(createCoreManager({ customerTokens: { secret: "x".repeat(40) } } as never)).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    await expect(createCoreManager({ pricing: {} } as never)).rejects.toBeInstanceOf(ConfigurationError);
  });

  it("writes the store as the full manager does: what one writes, the other reads and audits", async () => {
    const db = new InMemoryDbManager();
    const core = await createCoreManager({ db });
    const full = await createCreditManager({ db, init: false });
    await core.credits.addCredits("shared", 50, { costBasis: { perCredit: "0.01", currency: "USD" } });
    await full.credits.deductCredits("shared", 20, { feature: "chat" });
    await core.credits.deductCredits("shared", 5);
    expect(await core.credits.getUserCreditsInfo("shared")).toMatchObject({ balance: 25 });
    expect((await full.credits.getCustomerState("shared")).balance).toBe(25);
    // The full manager's audit adds the revenue module's check; both find the account clean.
    expect((await core.credits.audit("shared")).problems).toEqual([]);
    expect((await full.credits.audit("shared")).problems).toEqual([]);
    await core.close();
  });

  it("audit(): the core replays the journal; CreditService also runs the revenue module's check", async () => {
    const db = new InMemoryDbManager();
    await db.init();
    await new CoreCreditService({ db }).addCredits("t", 10, { costBasis: { perCredit: "0.5", currency: "USD" } });
    // A store whose grants lost their cost basis: the replay cannot see it, the revenue check can.
    const tampered = new Proxy(db, {
      get(target, key) {
        if (key !== "listGrants") return Reflect.get(target, key, target);
        return async (...args: Parameters<typeof db.listGrants>) =>
          (await target.listGrants(...args)).map((g) => ({ ...g, costBasis: null }));
      },
    });
    expect((await new CoreCreditService({ db: tampered }).audit("t")).problems).toEqual([]);
    const full = await new CreditService({ db: tampered }).audit("t");
    expect(full.ok).toBe(false);
    expect(full.problems.join("\n")).toMatch(/stored cost basis none is not its entry 1's 0.5 USD/);
  });

  it("unitHooks: a module's rows are saved in the unit of work that decides them, and only on a write", async () => {
    const db = new InMemoryDbManager();
    await db.init();
    const seen: { before: number | null; after: number }[] = [];
    const hook: UnitHook = ({ loaded, now, changes }) => {
      seen.push({ before: loaded?.balance ?? null, after: changes.account.balance });
      const crossed = (loaded?.balance ?? 0) >= 10 && changes.account.balance < 10;
      return crossed ? [newNotification(changes.account.userId, "low_credits", { below: 10 }, now, null)] : [];
    };
    const credits = new CoreCreditService({ db, unitHooks: [hook] });
    await credits.addCredits("h", 12);
    await credits.deductCredits("h", 1);
    await credits.deductCredits("h", 2); // 11 → 9: crosses
    await credits.getUserCreditsInfo("h"); // a read writes nothing: no hook
    expect(seen).toEqual([
      { before: null, after: 12 },
      { before: 12, after: 11 },
      { before: 11, after: 9 },
    ]);
    const rows = await db.listNotifications("h", { limit: 10 });
    expect(rows.map((r) => r.type)).toEqual(["low_credits"]);
  });

  describe("parts", () => {
    const DAY = 86_400_000;

    it("builds the service of each part given, under its name, and only those", async () => {
      const queue = new InMemoryNotificationQueue();
      const manager = await createCoreManager({
        parts: {
          subscriptions: subscriptionsPart(),
          notifications: notificationsPart({ queue, lowCredits: 10 }),
          expiration: expirationPart({ idempotency: { retention: "24h" } }),
        },
      });
      try {
        expect(Object.keys(manager).sort()).toEqual([
          "close",
          "credits",
          "db",
          "expiration",
          "ledger",
          "notifications",
          "subscriptions",
        ]);
        await manager.subscriptions.createPlan({
          id: "pro",
          name: "Pro",
          creditsPerPeriod: 20,
          billingPeriod: "monthly",
        });
        await manager.subscriptions.subscribe("p", "pro");
        expect(await manager.credits.getUserCreditsInfo("p")).toMatchObject({ balance: 20 });
        // The notifications part records in the unit of work of the change: 20 → 5 crosses 10.
        await manager.credits.deductCredits("p", 15);
        const rows = await manager.db.listNotifications("p", { limit: 20 });
        expect(rows.map((r) => r.type)).toContain("low_credits");
        await manager.notifications.dispatchPending();
        expect(queue.messages.map((m) => m.type)).toContain("low_credits");
        // The jobs carry the notifications part's reminders and delivery, and the keys' retention.
        const run = await manager.expiration.runAll();
        expect(run.sendExpiringReminders).not.toBeNull();
        expect(run.dispatchPending).not.toBeNull();
        expect(run.forgetIdempotencyKeys).not.toBeNull();
      } finally {
        await manager.close();
      }
      const one = await createCoreManager({
        parts: { subscriptions: subscriptionsPart(), expiration: expirationPart() },
      });
      expect(Object.keys(one).sort()).toEqual(["close", "credits", "db", "expiration", "ledger", "subscriptions"]);
      // Without the notifications part the jobs record and deliver nothing; keys are kept for ever.
      const run = await one.expiration.runAll();
      expect(run.sendExpiringReminders).toBeNull();
      expect(run.dispatchPending).toBeNull();
      expect(run.forgetIdempotencyKeys).toBeNull();
      await one.close();
    });

    it("records nothing in the outbox without the notifications part", async () => {
      const db = new CoreInMemoryDbManager();
      const manager = await createCoreManager({ db });
      await manager.credits.addCredits("q", 5);
      await expect(manager.credits.deductCredits("q", 50)).rejects.toMatchObject({ code: "INSUFFICIENT_CREDITS" });
      await manager.credits.deductCredits("q", 5);
      expect(await db.listNotifications("q", { limit: 10 })).toEqual([]);
      await manager.close();
    });

    it("the jobs renew a subscription that another manager on the store made, without the subscriptions part", async () => {
      const db = new InMemoryDbManager();
      let now = Date.now();
      const clock = () => new Date(now);
      const full = await createCreditManager({ db, clock });
      await full.subscriptions.createPlan({ id: "day", name: "Daily", creditsPerPeriod: 7, billingPeriod: "daily" });
      await full.subscriptions.subscribe("r", "day");
      const core = await createCoreManager({ db, clock, init: false, parts: { expiration: expirationPart() } });
      now += 2 * DAY + 1000;
      const report = await core.expiration.renewDueSubscriptions();
      expect(report.renewed).toBeGreaterThan(0);
      expect((await core.credits.audit("r")).problems).toEqual([]);
      await core.close();
      await full.close();
    });

    it("refuses a part that its factory did not make, an unknown part and bad part options", async () => {
      await expect(createCoreManager({ parts: { subscriptions: { part: "subscriptions" } } })).rejects.toBeInstanceOf(
        ConfigurationError,
      );
      await expect(
        createCoreManager({ parts: { notifications: subscriptionsPart() } } as never),
      ).rejects.toBeInstanceOf(ConfigurationError);
      await expect(createCoreManager({ parts: { jobs: expirationPart() } } as never)).rejects.toBeInstanceOf(
        ConfigurationError,
      );
      expect(() => notificationsPart({ maxAttempts: 0 })).toThrow(ConfigurationError);
      expect(() => notificationsPart({ alerts: [{ id: "x", kind: "nope", atOrBelow: 1 }] } as never)).toThrow(
        ConfigurationError,
      );
      expect(() => expirationPart({ idempotency: { retention: "1s" } })).toThrow(ConfigurationError);
      // The core manager takes notification settings only through the part.
      await expect(createCoreManager({ queue: new InMemoryNotificationQueue() } as never)).rejects.toBeInstanceOf(
        ConfigurationError,
      );
    });

    it("a CreditService takes alerts and domainEvents, or a notifications part, not both", () => {
      const db = new InMemoryDbManager();
      expect(() => new CreditService({ db, alerts: {}, notifications: notificationsPart() })).toThrow(
        ConfigurationError,
      );
      expect(() => new CoreCreditService({ db, notifications: { part: "notifications" } as never })).toThrow(
        ConfigurationError,
      );
    });
  });
});
