// Grants that start later (docs/units.md) through the whole manager: revenue, domain events and the
// customer's state. The store-level rules are the contract suite's `laterGrants` part.
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";

const HOUR = 3_600_000;

describe("grants that start later, through the manager", () => {
  it("revenue: paid when added, recognized as spent; the debt its start pays is recognized at the start", async () => {
    const t0 = Date.now();
    let now = t0;
    const m = await createCreditManager({ clock: () => new Date(now), overdraftLimit: "unlimited" });
    try {
      await m.credits.deductCreditsAfterService("acme", 100);
      await m.credits.addCredits("acme", 1000, {
        effectiveAt: new Date(t0 + 2 * HOUR),
        costBasis: { perCredit: "1", currency: "usd" },
      });
      const report = async (to: number) =>
        (await m.credits.getRevenue({ account: "acme", from: new Date(t0 - HOUR), to: new Date(to), interval: null }))
          .rows[0];
      // Before its start: all of it paid, none recognized, all deferred.
      now = t0 + HOUR;
      expect(await report(t0 + HOUR)).toMatchObject({ paid: 1000, recognized: 0, deferredEnd: 1000 });
      // At its start 100 pay the debt (recognized then); 300 more are spent.
      now = t0 + 3 * HOUR;
      await m.credits.deductCredits("acme", 300);
      expect(await report(t0 + 4 * HOUR)).toMatchObject({ paid: 1000, recognized: 400, deferredEnd: 600 });
      expect((await m.credits.audit("acme", { from: "genesis" })).problems).toEqual([]);
    } finally {
      await m.close();
    }
  });

  it("events: the addition names its start, the start has its own credits_added with started and debtPaid", async () => {
    const t0 = Date.now();
    let now = t0;
    const m = await createCreditManager({
      clock: () => new Date(now),
      overdraftLimit: "unlimited",
      domainEvents: true,
      notifications: {},
    });
    try {
      await m.credits.deductCreditsAfterService("u1", 30);
      const startsAt = new Date(t0 + HOUR);
      await m.credits.addCredits("u1", 50, { effectiveAt: startsAt });
      now = t0 + 2 * HOUR;
      expect(await m.credits.getUserCreditsInfo("u1")).toMatchObject({ balance: 20, debt: 0 });
      const added = (await m.notifications.list("u1")).filter((n) => n.type === "credits_added").map((n) => n.payload);
      expect(added).toEqual([
        expect.objectContaining({ amount: 50, balanceAfter: -30, debtPaid: 0, effectiveAt: startsAt.toISOString() }),
        expect.objectContaining({ amount: 50, balanceAfter: 20, debtPaid: 30, started: true, source: "manual" }),
      ]);
    } finally {
      await m.close();
    }
  });

  it("the customer's state lists an upcoming grant apart from every figure until its start", async () => {
    const t0 = Date.now();
    let now = t0;
    const m = await createCreditManager({ clock: () => new Date(now) });
    try {
      await m.credits.addCredits("u2", 10);
      const later = await m.credits.addCredits("u2", 90, { effectiveAt: new Date(t0 + HOUR) });
      const before = await m.credits.getCustomerState("u2");
      expect(before).toMatchObject({ balance: 10, available: 10 });
      expect(before.upcoming.map((g) => [g.id, g.amount, g.effectiveAt?.getTime()])).toEqual([
        [later.grants[0]?.grantId, 90, t0 + HOUR],
      ]);
      now = t0 + HOUR;
      const after = await m.credits.getCustomerState("u2");
      expect(after).toMatchObject({ balance: 100, available: 100, upcoming: [] });
    } finally {
      await m.close();
    }
  });
});

describe("revenue with units (docs/revenue.md, decision 4)", () => {
  it("money from a grant of any unit is recognized at its basis; unbilledCredits counts the default unit only", async () => {
    const t0 = Date.now();
    const m = await createCreditManager({ overdraftLimit: "unlimited", overdraftLimits: { images: "unlimited" } });
    try {
      await m.credits.addCredits("acme", 10, { unit: "images", costBasis: { perCredit: "20", currency: "usd" } });
      await m.credits.deductCredits("acme", 4, { unit: "images" });
      await m.credits.deductCreditsAfterService("acme", 9, { unit: "images" }); // 6 paid, 3 of debt in images
      await m.credits.deductCreditsAfterService("acme", 5); // 5 of debt in credits
      const { rows } = await m.credits.getRevenue({
        account: "acme",
        from: new Date(t0 - 3_600_000),
        to: new Date(t0 + 3_600_000),
        interval: null,
      });
      expect(rows.map((r) => [r.currency, r.paid, r.recognized, r.deferredEnd, r.unbilledCredits])).toEqual([
        ["USD", 200, 200, 0, 0],
        [null, 0, 0, 0, 5],
      ]);
    } finally {
      await m.close();
    }
  });
});
