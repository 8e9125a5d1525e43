/**
 * Revenue of plans over the store (part of `runDbManagerContract`'s subscriptions part): how the
 * revenue report books what subscriptions and additions that pay debt bring (docs/revenue.md).
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "../../core/testing/runner.js";
import type { DbManager } from "../../core/db/types.js";
import { DAY, lazy, managerServices } from "../../core/testing/support.js";
import { getRevenue } from "./service.js";

export function runPlanRevenueContract(getDb: () => DbManager): void {
  const db = lazy(getDb);
  const user = () => `sub-${randomUUID()}`;
  const planId = () => `plan-${randomUUID().slice(0, 12)}`;
  // Jan 31 at noon, in a year far from the other tests' data.
  const T = Date.UTC(2031, 0, 31, 12);

  describe("plans and subscriptions: revenue", () => {
    it("books an addition that only pays debt on its source and plan rows (docs/revenue.md)", async () => {
      const { credits, subscriptions, clock } = managerServices(db, T + 9000 * DAY, { overdraftLimit: "unlimited" });
      const id = planId();
      await subscriptions.createPlan({
        id,
        name: "Small",
        creditsPerPeriod: 50,
        billingPeriod: "monthly",
        price: 100,
        currency: "usd",
      });
      const [manual, subscriber] = [user(), user()];
      await credits.deductCreditsAfterService(manual, 100);
      await credits.addCredits(manual, 40, { source: "manual", costBasis: { perCredit: "1", currency: "USD" } });
      await credits.deductCreditsAfterService(subscriber, 300);
      await subscriptions.subscribe(subscriber, id);
      const window = { from: new Date(clock.now - DAY), to: new Date(clock.now + DAY), interval: null };
      const rows = async (account: string, by: "source" | "plan") =>
        (await getRevenue(db, { ...window, account, groupBy: [by] }, { now: clock.now })).rows.map((r) => [
          r.currency,
          r[by],
          r.paid,
          r.recognized,
          r.unbilledCredits,
          r.deferredEnd,
        ]);
      expect(await rows(manual, "source")).toEqual([
        ["USD", "manual", 40, 40, 0, 0],
        [null, null, 0, 0, 100, 0],
      ]);
      expect(await rows(subscriber, "plan")).toEqual([
        ["USD", id, 100, 100, 0, 0],
        [null, null, 0, 0, 300, 0],
      ]);
      expect(await rows(subscriber, "source")).toEqual([
        ["USD", "subscription", 100, 100, 0, 0],
        [null, null, 0, 0, 300, 0],
      ]);
    });
  });
}
