/**
 * Two managers over one store (part of `runDbManagerContract` when it is given `createPeer`, also
 * `runManagersContract`): every decision that writes nothing — a refusal, a `check()` denial, a
 * promo or subscription refusal, a job that finds nothing to do — is taken on the store's current
 * state, not on a copy the other manager has outdated since (docs/testing.md#several-managers).
 * Each manager keeps its own caches; A warms its copy of an account, B changes the account, then A
 * decides.
 */
import { notificationsPart } from "../parts.js";
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import type { TestApi } from "./runner.js";
import { InMemoryCache } from "../cache/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { managerServices, T0 } from "./support.js";
import { saveAccountOnly } from "../services/unit-of-work.js";

/** One manager's services over `db`, on a clock shared with the other manager. */
function manager(db: DbManager, clock: { now: number }) {
  return managerServices(db, clock);
}

/**
 * `getDb` and `getPeer`: two initialised managers over one store, each with its own caches (two
 * pools on one PostgreSQL schema, two clients on one MongoDB database, two connections on one
 * SQLite file).
 */
export function runManagersContract(
  getDb: () => DbManager,
  getPeer: () => DbManager,
  options: { test?: TestApi } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const user = () => `mm-${randomUUID()}`;
  const pair = () => {
    const clock = { now: T0 };
    return { clock, a: manager(getDb(), clock), b: manager(getPeer(), clock) };
  };

  describe("two managers over one store", () => {
    it("deductCredits: A refuses nothing B's credits cover", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 10);
      await a.credits.deductCredits(u, 5); // A now holds a copy: balance 5
      await b.credits.addCredits(u, 100); // the store: 105
      await a.credits.deductCredits(u, 50);
      expect((await a.credits.getUserCreditsInfo(u)).balance).toBe(55);
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(55);
      expect((await a.credits.audit(u)).ok).toBe(true);
    });

    it("reserveCredits: A places a hold B's credits cover", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 10);
      await a.credits.deductCredits(u, 5);
      await b.credits.addCredits(u, 100);
      const hold = await a.credits.reserveCredits(u, 50);
      expect(hold.status).toBe("active");
      expect((await b.credits.getUserCreditsInfo(u)).available).toBe(55);
    });

    it("a refusal stays a refusal when B spent the credits A saw", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 100);
      await a.credits.deductCredits(u, 1);
      await b.credits.deductCredits(u, 90); // the store: 9
      await expect(a.credits.deductCredits(u, 50)).rejects.toMatchObject({ name: "InsufficientCreditsError" });
      await a.credits.deductCredits(u, 9);
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(0);
    });

    it("check(): A allows what B's credits cover, with and without a balance cache of its own", async () => {
      const { a, b, clock } = pair();
      const cached = new CoreCreditService({
        db: getDb(),
        clock: () => new Date(clock.now),
        cache: new InMemoryCache(),
      });
      const u = user();
      await a.credits.addCredits(u, 10);
      await a.credits.deductCredits(u, 5);
      expect((await a.credits.check(u, { amount: 50 })).allowed).toBe(false);
      expect((await cached.check(u, { amount: 50 })).allowed).toBe(false); // cached: available 5
      await b.credits.addCredits(u, 100);
      expect((await a.credits.check(u, { amount: 50 })).allowed).toBe(true);
      expect((await cached.check(u, { amount: 50 })).allowed).toBe(true);
    });

    it("releaseExpiredHolds on A releases a hold B placed, past its TTL", async () => {
      const { a, b, clock } = pair();
      const u = user();
      await a.credits.addCredits(u, 100);
      await a.credits.deductCredits(u, 1); // A's copy: no hold
      const hold = await b.credits.reserveCredits(u, 10, { ttlSeconds: 60 });
      clock.now += 120_000;
      await a.expiration.releaseExpiredHolds();
      expect((await b.credits.getReservation(hold.id)).status).not.toBe("active");
      expect((await b.credits.getUserCreditsInfo(u)).available).toBe(99);
      expect((await a.credits.audit(u)).ok).toBe(true);
    });

    it("expireDueGrants on A expires a grant B added", async () => {
      const { a, b, clock } = pair();
      const u = user();
      await a.credits.addCredits(u, 10);
      await a.credits.deductCredits(u, 1); // A's copy: one grant
      await b.credits.addCredits(u, 20, { expiresAt: new Date(clock.now + 60_000) });
      clock.now += 120_000;
      await a.expiration.expireDueGrants();
      const grants = await b.credits.getGrants(u);
      expect(grants.map((g) => g.remaining).reduce((x, y) => x + y, 0)).toBe(9);
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(9);
      expect((await a.credits.audit(u)).ok).toBe(true);
    });

    it("a settle that writes nothing on A sees the expiry B's grant is due for", async () => {
      const { a, b, clock } = pair();
      const u = user();
      await a.credits.addCredits(u, 10);
      await a.credits.deductCredits(u, 1);
      await b.credits.addCredits(u, 20, { expiresAt: new Date(clock.now + 60_000) });
      clock.now += 120_000;
      expect(await a.credits.expireCredits(u)).toBe(20);
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(9);
    });

    it("subscribe on A: a plan B reactivated is subscribed to", async () => {
      const { a, b } = pair();
      const u = user();
      const plan = await a.subscriptions.createPlan({ name: "MM", creditsPerPeriod: 5, billingPeriod: "daily" });
      await a.subscriptions.deactivatePlan(plan.id);
      await expect(a.subscriptions.subscribe(u, plan.id)).rejects.toBeInstanceOf(Error);
      await b.subscriptions.updatePlan(plan.id, { isActive: true });
      const sub = await a.subscriptions.subscribe(u, plan.id);
      expect(sub.planId).toBe(plan.id);
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(5);
    });

    it("an idempotent replay on A answers B's entry", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 100);
      await a.credits.deductCredits(u, 1);
      const first = await b.credits.deductCredits(u, 10, { idempotencyKey: "mm-1" });
      const again = await a.credits.deductCredits(u, 10, { idempotencyKey: "mm-1" });
      expect(again.id).toBe(first.id);
      expect((await a.credits.getUserCreditsInfo(u)).balance).toBe(89);
    });

    it("spend limits: A and B spending at once never pass one; A refuses and check()s on what B counted (docs/teams-and-limits.md)", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 1000);
      await b.credits.setLimits(u, [
        { amount: 60, period: "month" },
        { spender: "alice", amount: 25, period: "day" },
      ]);
      // Each manager spends for both spenders, deductions and holds committed, all at once.
      const calls = Array.from({ length: 80 }, (_, i) => {
        const m = i % 2 === 0 ? a : b;
        const spender = i % 4 < 2 ? "alice" : "bob";
        return i % 8 < 4
          ? m.credits.deductCredits(u, 1, { spender })
          : m.credits.reserveCredits(u, 1, { spender }).then((h) => m.credits.commitReservedCredits(h.id));
      });
      const results = await Promise.allSettled(calls);
      for (const r of results)
        if (r.status === "rejected") expect((r.reason as { code?: string }).code).toBe("SPEND_LIMIT_EXCEEDED");
      const done = (spender: string) =>
        results.filter((r, i) => r.status === "fulfilled" && (i % 4 < 2 ? "alice" : "bob") === spender).length;
      expect(done("alice")).toBeLessThanOrEqual(25);
      expect(done("alice") + done("bob")).toBe(60);
      expect((await a.credits.getLimits(u)).map((l) => l.used)).toEqual([60, done("alice")]);
      // A decides on the store's count, not on a copy of the account it read before.
      await expect(a.credits.deductCredits(u, 1, { spender: "bob" })).rejects.toMatchObject({
        code: "SPEND_LIMIT_EXCEEDED",
      });
      expect(await a.credits.check(u, { spender: "bob", amount: 1 })).toMatchObject({
        allowed: false,
        reason: "limit",
      });
      expect((await b.credits.getUserCreditsInfo(u)).balance).toBe(940);
      expect((await a.credits.audit(u)).ok).toBe(true);
    });

    it("limit notifications: A and B spending at once past 80 % of a limit record exactly one limit_warning (docs/teams-and-limits.md)", async () => {
      const clock = { now: T0 };
      const now = () => new Date(clock.now);
      // With the outbox on (alerts): each manager writes its rows in the spend's unit of work.
      const a = new CoreCreditService({ db: getDb(), clock: now, notifications: notificationsPart() });
      const b = new CoreCreditService({ db: getPeer(), clock: now, notifications: notificationsPart() });
      const u = user();
      await a.addCredits(u, 1000);
      await b.setLimits(u, [{ spender: "alice", amount: 100, period: "month" }]);
      await a.deductCredits(u, 70, { spender: "alice" });
      await b.getUserCreditsInfo(u); // B holds a copy of the account at 70
      // 20 spends of 1 at once, half on each manager, holds and deductions: 80 % is passed once.
      const results = await Promise.allSettled(
        Array.from({ length: 20 }, (_, i) => {
          const m = i % 2 === 0 ? a : b;
          return i % 4 < 2
            ? m.deductCredits(u, 1, { spender: "alice" })
            : m.reserveCredits(u, 1, { spender: "alice" }).then((h) => m.commitReservedCredits(h.id));
        }),
      );
      expect(results.filter((r) => r.status === "rejected")).toEqual([]);
      const rows = (await getPeer().listNotifications(u, { limit: 100 })).filter((r) => r.type.startsWith("limit_"));
      expect(rows.map((r) => r.type)).toEqual(["limit_warning"]);
      expect(rows[0]?.payload).toMatchObject({ threshold: 0.8, used: 80, limit: { spender: "alice", amount: 100 } });
      expect((await a.getLimits(u))[0]?.used).toBe(90);
      expect((await b.audit(u)).ok).toBe(true);
    });

    it("setLimit: A and B each changing a different limit at once both keep their change, and a changed limit keeps its window's count (docs/teams-and-limits.md)", async () => {
      const { a, b } = pair();
      const u = user();
      await a.credits.addCredits(u, 1000);
      await a.credits.setLimits(u, [{ spender: "alice", amount: 100, period: "month" }]);
      await a.credits.deductCredits(u, 30, { spender: "alice" });
      await b.credits.getLimits(u); // B holds a copy of the account with one limit
      // Ten changes at once from both managers, each to its own spender's limit; alice's raised.
      await Promise.all([
        a.credits.setLimit(u, { spender: "alice", amount: 150, period: "month" }),
        ...Array.from({ length: 9 }, (_, i) =>
          (i % 2 === 0 ? b : a).credits.setLimit(u, { spender: `m${i}`, amount: 10 + i, period: "day" }),
        ),
      ]);
      const limits = await b.credits.getLimits(u);
      expect(limits.map((l) => [l.spender, l.amount]).sort()).toEqual(
        [["alice", 150], ...Array.from({ length: 9 }, (_, i) => [`m${i}`, 10 + i])].sort(),
      );
      expect(limits.find((l) => l.spender === "alice")?.used).toBe(30); // the window's count kept
      await expect(a.credits.deductCredits(u, 121, { spender: "alice" })).rejects.toMatchObject({
        code: "SPEND_LIMIT_EXCEEDED",
      });
      expect((await a.credits.deductCredits(u, 120, { spender: "alice" })).amount).toBe(120);
      expect((await a.credits.audit(u)).ok).toBe(true);
    });

    it("a change to the account alone (no journal entry: an auto top-up settled, a threshold set) that B commits while A's unit of work is between its load and its save is never written back by A", async () => {
      const { a, clock } = pair();
      const u = user();
      await a.credits.addCredits(u, 100);
      await a.credits.setLimits(u, [{ spender: "alice", amount: 100, period: "month" }]);
      // A loads the account, then waits; B removes the limits in a save that keeps the seq.
      let loaded!: () => void;
      const atLoad = new Promise<void>((resolve) => (loaded = resolve));
      let proceed!: () => void;
      const released = new Promise<void>((resolve) => (proceed = resolve));
      const first = getDb().transaction(u, async (tx) => {
        const { account } = await tx.load();
        loaded();
        await released;
        if (account === null) throw new Error("the account is there");
        await tx.save({
          account: { ...account, updatedAt: new Date(clock.now + 1) },
          previousSeq: account.seq,
          insertGrants: [],
          updateGrants: [],
          insertReservations: [],
          updateReservations: [],
          entries: [],
          notifications: [],
        });
      });
      await atLoad;
      const second = saveAccountOnly(
        getPeer(),
        u,
        () => new Date(clock.now),
        (account) => {
          account.limits = null;
          return [];
        },
      );
      // A store that locks the account makes B wait for A: A goes on once B is done or has waited.
      await Promise.race([second, new Promise((resolve) => setTimeout(resolve, 300))]);
      proceed();
      await Promise.all([first, second]);
      expect(await a.credits.getLimits(u)).toEqual([]);
    });
  });
}
