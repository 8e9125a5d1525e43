// credit-management/core (docs/modules.md): the core's own manager, without the modules, over the
// same store as the full manager.
import { describe, expect, it } from "vitest";
import { createCreditManager as createCoreManager, CoreInMemoryDbManager } from "../src/core/index.js";
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
      expect(Object.keys(manager).sort()).toEqual([
        "close",
        "credits",
        "db",
        "expiration",
        "ledger",
        "notifications",
        "subscriptions",
      ]);
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
});
