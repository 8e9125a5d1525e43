/**
 * Holds for what is there (part of `runDbManagerContract`, also `runCappedHoldContract`;
 * docs/concepts.md, "Holds"): `reserveCredits(userId, amount, { minimum })` holds `amount`, or what
 * the spender and feature may spend now when that is less — scoped grants first, then the pool,
 * within every spend limit that applies — and is refused below `minimum` with nothing changed. Two
 * managers racing such holds over one store never hold more than there is.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import { IdempotencyConflictError, InsufficientCreditsError, SpendLimitError, ValidationError } from "../errors.js";
import type { Reservation } from "../models/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { expectNoOutOfScopeDraw } from "./scoped.js";
import { accountWithClock, lazy, T0, type PartOptions } from "./support.js";

/**
 * `getDb`: an initialised store; `getPeer` (optional): a second manager over the same store, for the
 * race of two managers (without it, two services over `getDb`).
 * @beta
 */
export function runCappedHoldContract(
  getDb: () => DbManager,
  options: PartOptions & { getPeer?: () => DbManager } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  const user = () => `ch-${randomUUID()}`;
  const clean = async (credits: CoreCreditService, u: string) =>
    expect((await credits.audit(u, { from: "genesis" })).problems).toEqual([]);
  /** What a refused hold must leave as it was: the account's figures, its limits and its journal. */
  const snapshot = async (credits: CoreCreditService, u: string) => ({
    info: await credits.getUserCreditsInfo(u),
    limits: await credits.getLimits(u),
    journal: (await credits.getCreditHistory(u, { limit: 100 })).items.map((e) => e.id),
  });
  const reserveEntry = async (credits: CoreCreditService, hold: Reservation) => {
    const items = (await credits.getCreditHistory(hold.userId, { limit: 100 })).items;
    return items.find((e) => e.type === "reserve" && e.reservationId === hold.id);
  };

  describe("holds for what is there", () => {
    it("holds the whole amount when there is enough, as a plain hold would", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 100);
      const hold = await credits.reserveCredits(u, 60, { minimum: 10, reason: "chat" });
      expect(hold).toMatchObject({ userId: u, amount: 60, status: "active", reason: "chat" });
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, reserved: 60, available: 40 });
      // Nothing was cut: the entry records no `requested`.
      expect((await reserveEntry(credits, hold))?.metadata?.requested).toBe(undefined);
      await clean(credits, u);
    });

    it("caps the hold at what is available, records what was asked for, and commits like any hold", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 100);
      await credits.reserveCredits(u, 40);
      const hold = await credits.reserveCredits(u, 200, { minimum: 10, metadata: { call: "c-1" } });
      expect(hold.amount).toBe(60);
      expect(hold.metadata).toEqual({ call: "c-1" });
      expect(await credits.getReservation(hold.id)).toMatchObject({ amount: 60, status: "active" });
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ reserved: 100, available: 0 });
      const entry = await reserveEntry(credits, hold);
      expect(entry).toMatchObject({ amount: 60, metadata: { call: "c-1", requested: 200 } });
      const commit = await credits.commitReservedCredits(hold.id, { amount: 45 });
      expect(commit.amount).toBe(45);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 55, reserved: 40, available: 15 });
      await clean(credits, u);
    });

    it("caps a feature's hold at its scoped grants and the pool, drawing the scoped grant first", async () => {
      const { u, credits } = accountWithClock(db, user);
      const pool = await credits.addCredits(u, 50);
      const images = await credits.addCredits(u, 30, { scope: { features: ["images"] } });
      await credits.addCredits(u, 40, { scope: { features: ["video"] } });
      const hold = await credits.reserveCredits(u, 500, { minimum: 1, feature: "images" });
      // 30 of the images grant and the pool's 50; never the video grant.
      expect(hold.amount).toBe(80);
      expect(hold.allocations).toEqual([
        { grantId: images.grants[0]!.grantId, amount: 30 },
        { grantId: pool.grants[0]!.grantId, amount: 50 },
      ]);
      // A spend naming no feature finds nothing left: the video grant is not its to use.
      await expect(credits.reserveCredits(u, 10, { minimum: 1 })).rejects.toBeInstanceOf(InsufficientCreditsError);
      const video = await credits.reserveCredits(u, 100, { minimum: 5, feature: "video" });
      expect(video.amount).toBe(40);
      expect((await expectNoOutOfScopeDraw(db, u)).length).toBe(2);
      await clean(credits, u);
    });

    it("caps the hold at what the spender's limit has left, and the limit counts what it holds", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 1_000);
      await credits.setLimit(u, { spender: "alice", amount: 100, period: "day" });
      await credits.deductCredits(u, 30, { spender: "alice" });
      const alice = await credits.reserveCredits(u, 500, { minimum: 1, spender: "alice" });
      expect(alice.amount).toBe(70);
      expect((await credits.getLimits(u))[0]).toMatchObject({ spender: "alice", used: 100, remaining: 0 });
      // Another spender is under no limit: capped only by what is available.
      const bob = await credits.reserveCredits(u, 2_000, { minimum: 1, spender: "bob" });
      expect(bob.amount).toBe(1_000 - 30 - 70);
      // The limit is spent: even a minimum of 1 is refused by it.
      await credits.releaseReservedCredits(bob.id);
      await expect(credits.reserveCredits(u, 5, { minimum: 1, spender: "alice" })).rejects.toBeInstanceOf(
        SpendLimitError,
      );
      // Released, the hold gives its count back, and the next capped hold gets it.
      await credits.releaseReservedCredits(alice.id);
      expect((await credits.reserveCredits(u, 500, { minimum: 1, spender: "alice" })).amount).toBe(70);
      await clean(credits, u);
    });

    it("is refused below its minimum with the usual errors, and nothing changes", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 50);
      await credits.setLimit(u, { feature: "chat", amount: 20, period: "day" });
      const before = await snapshot(credits, u);
      const short = await credits.reserveCredits(u, 100, { minimum: 60 }).catch((e: unknown) => e);
      expect(short).toBeInstanceOf(InsufficientCreditsError);
      expect((short as InsufficientCreditsError).details).toMatchObject({ requested: 60, available: 50 });
      // Enough credits, too little under the limit for the feature: the limit's refusal.
      const limited = await credits.reserveCredits(u, 40, { minimum: 30, feature: "chat" }).catch((e: unknown) => e);
      expect(limited).toBeInstanceOf(SpendLimitError);
      expect((limited as SpendLimitError).details).toMatchObject({ requested: 30, remaining: 20 });
      // Bad input: a minimum above the amount, or below 1.
      await expect(credits.reserveCredits(u, 10, { minimum: 11 })).rejects.toBeInstanceOf(ValidationError);
      await expect(credits.reserveCredits(u, 10, { minimum: 0 })).rejects.toBeInstanceOf(ValidationError);
      await expect(credits.reserveCredits(u, 10, { minimum: 2.5 })).rejects.toBeInstanceOf(ValidationError);
      expect(await snapshot(credits, u)).toEqual(before);
      await clean(credits, u);
    });

    it("holds exactly the minimum when that is all there is, and is refused one credit short of it", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 50);
      const exact = await credits.reserveCredits(u, 80, { minimum: 50 });
      expect(exact.amount).toBe(50);
      await credits.releaseReservedCredits(exact.id);
      await credits.deductCredits(u, 1);
      const before = await snapshot(credits, u);
      await expect(credits.reserveCredits(u, 80, { minimum: 50 })).rejects.toBeInstanceOf(InsufficientCreditsError);
      expect(await snapshot(credits, u)).toEqual(before);
      // A minimum equal to the amount is a plain hold.
      expect((await credits.reserveCredits(u, 49, { minimum: 49 })).amount).toBe(49);
      await clean(credits, u);
    });

    it("answers a retry under the same key with the same hold, however the account moved", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 100);
      const first = await credits.reserveCredits(u, 300, { minimum: 10, idempotencyKey: "cap-1" });
      expect(first.amount).toBe(100);
      await credits.addCredits(u, 500);
      const again = await credits.reserveCredits(u, 300, { minimum: 10, idempotencyKey: "cap-1" });
      expect(again).toEqual(first);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ reserved: 100, available: 500 });
      const holds = (await credits.getCreditHistory(u, { limit: 100 })).items.filter((e) => e.type === "reserve");
      expect(holds).toHaveLength(1);
      // Another minimum under the key is another call.
      await expect(credits.reserveCredits(u, 300, { minimum: 20, idempotencyKey: "cap-1" })).rejects.toBeInstanceOf(
        IdempotencyConflictError,
      );
      await clean(credits, u);
    });

    it("two managers racing capped holds never hold more than there is, nor more than a limit has left", async () => {
      const clock = { now: T0 };
      const now = () => new Date(clock.now);
      const a = new CoreCreditService({ db: getDb(), clock: now });
      const b = new CoreCreditService({ db: options.getPeer?.() ?? getDb(), clock: now });
      const u = user();
      await a.addCredits(u, 1_000);
      await a.addCredits(u, 200, { scope: { features: ["images"] } });
      await a.setLimit(u, { feature: "images", amount: 260, period: "day" });
      const race = async (feature: string | undefined) =>
        Promise.allSettled(
          Array.from({ length: 16 }, (_, i) =>
            (i % 2 === 0 ? a : b).reserveCredits(
              u,
              150,
              feature === undefined ? { minimum: 1 } : { minimum: 1, feature },
            ),
          ),
        );
      const held = (tries: PromiseSettledResult<Reservation>[]) => {
        let sum = 0;
        for (const t of tries) {
          if (t.status === "fulfilled") {
            expect(t.value.amount).toBeGreaterThanOrEqual(1);
            expect(t.value.amount).toBeLessThanOrEqual(150);
            sum += t.value.amount;
          } else {
            const e: unknown = t.reason;
            expect(e instanceof InsufficientCreditsError || e instanceof SpendLimitError, String(e)).toBe(true);
          }
        }
        return sum;
      };
      // The feature's holds: within its limit of 260 (its scoped grant first, then the pool).
      const images = held(await race("images"));
      expect(images).toBe(260);
      // Then holds naming no feature: the pool's 1,000 less the 60 the images holds took of it.
      const plain = held(await race(undefined));
      expect(plain).toBe(1_000 - 60);
      expect(await b.getUserCreditsInfo(u)).toMatchObject({ balance: 1_200, reserved: 1_200, available: 0 });
      expect((await a.getLimits(u))[0]).toMatchObject({ used: 260, remaining: 0 });
      expect((await expectNoOutOfScopeDraw(db, u)).length).toBeGreaterThanOrEqual(2);
      await clean(a, u);
    });
  });
}
