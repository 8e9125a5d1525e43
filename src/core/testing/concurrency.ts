import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import { InsufficientCreditsError } from "../errors.js";
import { scopedConcurrencyCase } from "./scoped.js";
import { accountWithClock, lazy, type PartOptions } from "./support.js";

/** Concurrent callers on one account: no double spend, one effect per idempotency key. @beta */
export function runConcurrencyContract(
  getDb: () => DbManager,
  options: PartOptions & { raceSize?: number } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const race = options.raceSize ?? 1000;
  const user = () => `u-${randomUUID()}`;
  const db = lazy(getDb);
  describe("concurrency", () => {
    it(`${race} concurrent deductCredits(u, 1) on a balance of ${race / 2}: exactly ${race / 2} succeed`, async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, race / 2);
      const results = await Promise.allSettled(Array.from({ length: race }, () => credits.deductCredits(u, 1)));
      const ok = results.filter((r) => r.status === "fulfilled").length;
      const refused = results.filter(
        (r) => r.status === "rejected" && r.reason instanceof InsufficientCreditsError,
      ).length;
      expect(ok).toBe(race / 2);
      expect(refused).toBe(race / 2);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0, available: 0 });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it(`${race} concurrent reserveCredits(u, 1) on ${race / 2}: exactly ${race / 2} holds`, async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, race / 2);
      const results = await Promise.allSettled(Array.from({ length: race }, () => credits.reserveCredits(u, 1)));
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(race / 2);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({
        balance: race / 2,
        reserved: race / 2,
        available: 0,
      });
      expect(await db.listReservations(u, { status: "active" })).toHaveLength(race / 2);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("concurrent spends of two spenders under a spender limit and an account limit never pass either (docs/teams-and-limits.md)", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 1000);
      // n callers, half of them alice's: the account's limit 40 % of n, alice's a quarter (80 and 50 of 200).
      const n = Math.min(race, 200);
      const [accountLimit, aliceLimit] = [Math.floor((n * 2) / 5), Math.floor(n / 4)];
      await credits.setLimits(u, [
        { amount: accountLimit, period: "month" },
        { spender: "alice", amount: aliceLimit, period: "month" },
      ]);
      const results = await Promise.allSettled(
        Array.from({ length: n }, (_, i) => {
          const spender = i % 2 === 0 ? "alice" : "bob";
          return i % 4 < 2
            ? credits.deductCredits(u, 1, { spender })
            : credits.reserveCredits(u, 1, { spender }).then((h) => credits.commitReservedCredits(h.id));
        }),
      );
      const ok = (spender: string) =>
        results.filter((r, i) => r.status === "fulfilled" && (i % 2 === 0 ? "alice" : "bob") === spender).length;
      for (const r of results)
        if (r.status === "rejected") expect((r.reason as { code?: string }).code).toBe("SPEND_LIMIT_EXCEEDED");
      expect(ok("alice")).toBeLessThanOrEqual(aliceLimit);
      expect(ok("alice") + ok("bob")).toBe(accountLimit);
      const limits = await credits.getLimits(u);
      expect(limits.map((l) => l.used)).toEqual([accountLimit, ok("alice")]);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 1000 - accountLimit, reserved: 0 });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    scopedConcurrencyCase(db, race);

    it("one idempotency key sent 50 times at once has one effect", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 100);
      const results = await Promise.all(
        Array.from({ length: 50 }, () => credits.deductCredits(u, 7, { idempotencyKey: "once" })),
      );
      expect(new Set(results.map((e) => e.id)).size).toBe(1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 93 });
      const adds = await Promise.all(
        Array.from({ length: 50 }, () => credits.addCredits(u, 5, { idempotencyKey: "once-add" })),
      );
      expect(new Set(adds.map((e) => e.id)).size).toBe(1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 98 });
      expect((await credits.audit(u)).ok).toBe(true);
    });
  });
}
