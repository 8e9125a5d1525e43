/**
 * Giving a charge back (part of `runDbManagerContract`, also `runReversalsContract`;
 * docs/concepts.md, "Giving a charge back"): a reversal returns credits to the grants the charge drew
 * from, in its proportions, its debt first, never beyond the charge — across concurrent callers and
 * two managers over one store — and is stored and read back as written.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "../core/testing/runner.js";
import type { DbManager } from "../core/db/types.js";
import { IdempotencyConflictError, NotFoundError, RuleViolationError } from "../core/errors.js";
import type { Grant, JournalEntry } from "../core/models/index.js";
import { CreditService } from "../credit-service.js";
import { DAY, HOUR, lazy, T0, type PartOptions } from "../core/testing/support.js";

/** A new account `u` (named by `user`) and a service over `db` whose clock the test moves. */
function accountWithClock(db: DbManager, user: () => string) {
  const clock = { now: T0 };
  const credits = new CreditService({ db, clock: () => new Date(clock.now), overdraftLimit: "unlimited" });
  return { u: user(), credits, clock };
}

/**
 * `getDb`: an initialised store; `getPeer` (optional): a second manager over the same store, for the
 * race of two managers (without it, two services over `getDb`).
 * @beta
 */
export function runReversalsContract(
  getDb: () => DbManager,
  options: PartOptions & { getPeer?: () => DbManager } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  const user = () => `rv-${randomUUID()}`;
  const clean = async (credits: CreditService, u: string) =>
    expect((await credits.audit(u, { from: "genesis" })).problems).toEqual([]);

  describe("reversals", () => {
    it("gives a deduction back to the grants it drew from, in its proportions, in parts and then the rest; the grants keep expiry, priority, scope and cost basis", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const soon = await credits.addCredits(u, 60, { expiresAt: new Date(T0 + 30 * DAY) });
      const paid = await credits.addCredits(u, 30, { costBasis: { perCredit: "2", currency: "EUR" } });
      const last = await credits.addCredits(u, 100, { priority: 9 });
      const before = await credits.getGrants(u);
      clock.now += HOUR;
      const charge = await credits.deductCredits(u, 110, { feature: "images", metadata: { job: "j-1" } });
      const drawn = Object.fromEntries(charge.grants.map((p) => [p.grantId, p.amount]));
      expect(drawn).toEqual({
        [soon.grants[0]!.grantId]: 60,
        [paid.grants[0]!.grantId]: 30,
        [last.grants[0]!.grantId]: 20,
      });
      clock.now += HOUR;
      const first = await credits.reverseCharge(u, charge.id, { amount: 37, reason: "job failed in part" });
      expect(first).toMatchObject({
        type: "reverse",
        amount: 37,
        reverses: charge.id,
        occurredAt: charge.createdAt,
        description: "job failed in part",
        feature: "images",
        balanceAfter: 80 + 37,
        debtAfter: 0,
      });
      // 37 of 110 shared 60:30:20 is 20.18 + 10.09 + 6.73: each rounded down, and the credit that
      // leaves to the largest remainder (0.73).
      expect(first.grants).toEqual([
        { grantId: soon.grants[0]!.grantId, amount: 20, kind: "returned" },
        { grantId: paid.grants[0]!.grantId, amount: 10, kind: "returned" },
        { grantId: last.grants[0]!.grantId, amount: 7, kind: "returned" },
      ]);
      expect(first.metadata).toMatchObject({ job: "j-1" });
      const rest = await credits.reverseCharge(u, charge.id, { reason: "the rest" });
      expect(rest.amount).toBe(73);
      // Every grant has exactly what the charge drew back, and nothing else of it changed.
      const after = await credits.getGrants(u);
      expect(after).toEqual(before);
      const read = await credits.getReversals(u, charge.id);
      expect(read).toEqual({ charge, reversals: [first, rest], reversed: 110, remaining: 0 });
      // Stored and read back as written (the journal's own page).
      const [newest] = (await credits.getCreditHistory(u, { limit: 1 })).items;
      expect(newest).toEqual(rest);
      // The journal replays clean (the revenue roll-forward of a reversal is the revenue part's).
      const replayed = (await credits.audit(u, { from: "genesis" })).problems;
      expect(replayed.filter((p) => !p.startsWith("revenue roll-forward"))).toEqual([]);
    });

    it("shares a partial give-back among the grants by largest remainder, equal remainders in the charge's order", async () => {
      const { u, credits } = accountWithClock(db, user);
      const one = (await credits.addCredits(u, 1)).grants[0]!.grantId;
      const nine = (await credits.addCredits(u, 9)).grants[0]!.grantId;
      const charge = await credits.deductCredits(u, 10);
      // 2 of 10 drawn 1:9 is 0.2 + 1.8: rounded down 0 + 1, the credit left to the larger remainder.
      const first = await credits.reverseCharge(u, charge.id, { amount: 2, reason: "part" });
      expect(first.grants).toEqual([{ grantId: nine, amount: 2, kind: "returned" }]);
      // 4 of what is left (1 and 7) is 0.5 + 3.5: equal remainders, the first in the charge's order.
      const second = await credits.reverseCharge(u, charge.id, { amount: 4, reason: "part" });
      expect(second.grants).toEqual([
        { grantId: one, amount: 1, kind: "returned" },
        { grantId: nine, amount: 3, kind: "returned" },
      ]);
      const rest = await credits.reverseCharge(u, charge.id, { reason: "rest" });
      expect(rest.grants).toEqual([{ grantId: nine, amount: 4, kind: "returned" }]);
      await clean(credits, u);
    });

    it("gives back debt an addition paid since to the addition's grant, with its expiry and cost basis; revenue reverses what the debt was recognized for", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const first = (await credits.addCredits(u, 50)).grants[0]!.grantId;
      const charge = await credits.deductCreditsAfterService(u, 80);
      expect(charge.debtAfter).toBe(30);
      clock.now += HOUR;
      const expiresAt = new Date(clock.now + 7 * DAY);
      const payment = await credits.addCredits(u, 100, {
        source: "payment",
        expiresAt,
        costBasis: { perCredit: "1", currency: "USD" },
      });
      const paying = payment.grants[0]!.grantId;
      expect(payment.grants).toEqual([{ grantId: paying, amount: 70 }]); // 30 paid the debt
      clock.now += HOUR;
      const r = await credits.reverseCharge(u, charge.id, { reason: "outage" });
      expect(r).toMatchObject({ amount: 80, balanceAfter: 150, debtAfter: 0 });
      expect(r.grants).toEqual([
        { grantId: first, amount: 50, kind: "returned" },
        { grantId: paying, amount: 30, kind: "debt_returned" },
      ]);
      const grants = await credits.getGrants(u, { includeInactive: true });
      expect(grants.some((g) => g.source === "adjustment")).toBe(false);
      expect(grants.find((g) => g.id === paying)).toMatchObject({
        remaining: 100,
        expiresAt,
        costBasis: { perCredit: "1", currency: "USD" },
      });
      const q = { account: u, from: new Date(T0 - DAY), to: new Date(clock.now + DAY), interval: null };
      const usd = () => credits.getRevenue(q).then((rep) => rep.rows.filter((row) => row.currency === "USD"));
      // Recognized 30 when the payment paid the debt, −30 when the charge was given back.
      expect(await usd()).toMatchObject([{ paid: 100, recognized: 0, breakage: 0, deferredEnd: 100 }]);
      await clean(credits, u);
      // The 30 expire with the payment's credits: breakage at its basis, none outlives it.
      clock.now += 8 * DAY;
      await credits.addCredits(u, 1);
      expect((await credits.getGrants(u, { includeInactive: true })).find((g) => g.id === paying)).toMatchObject({
        remaining: 0,
        expiredAmount: 100,
      });
      const later = { ...q, to: new Date(clock.now + DAY) };
      const rows = (await credits.getRevenue(later)).rows.filter((row) => row.currency === "USD");
      expect(rows).toMatchObject([{ paid: 100, recognized: 0, breakage: 100, deferredEnd: 0 }]);
      await clean(credits, u);
    });

    it("gives back debt that a grant's start paid in the reversal's own unit of work to that grant: it expires with it", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const charge = await credits.deductCreditsAfterService(u, 40);
      await credits.reverseCharge(u, charge.id, { amount: 10, reason: "part" });
      const startsAt = T0 + DAY;
      const expiresAt = new Date(T0 + 10 * DAY);
      const later = await credits.addCredits(u, 100, {
        effectiveAt: new Date(startsAt),
        expiresAt,
        costBasis: { perCredit: "1", currency: "USD" },
      });
      const paying = later.grants[0]!.grantId;
      clock.now = startsAt + HOUR;
      // The first call after the start: its unit of work starts the grant (paying the 30 owed), then gives back.
      const rest = await credits.reverseCharge(u, charge.id, { reason: "the rest" });
      expect(rest).toMatchObject({ amount: 30, balanceAfter: 100, debtAfter: 0 });
      expect(rest.grants).toEqual([{ grantId: paying, amount: 30, kind: "debt_returned" }]);
      const grants = await credits.getGrants(u, { includeInactive: true });
      expect(grants.some((g) => g.source === "adjustment")).toBe(false);
      expect(grants.find((g) => g.id === paying)).toMatchObject({ remaining: 100, expiresAt });
      await clean(credits, u);
      clock.now = expiresAt.getTime() + HOUR;
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0, debt: 0 });
      const q = { account: u, from: new Date(T0 - DAY), to: new Date(clock.now + DAY), interval: null };
      const rows = (await credits.getRevenue(q)).rows.filter((row) => row.currency === "USD");
      expect(rows).toMatchObject([{ paid: 100, recognized: 0, breakage: 100, deferredEnd: 0 }]);
      await clean(credits, u);
    });

    it("gives back debt that a lapsed hold paid in the reversal's own unit of work to the held grant", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const expiresAt = new Date(T0 + 10 * DAY);
      const held = (await credits.addCredits(u, 40, { expiresAt })).grants[0]!.grantId;
      await credits.reserveCredits(u, 40, { ttlSeconds: 60 });
      const charge = await credits.deductCreditsAfterService(u, 40); // no unheld credits: all debt
      expect(charge.debtAfter).toBe(40);
      clock.now += HOUR;
      // The first call after the hold lapsed: its unit of work releases it (the 40 pay the debt), then gives back.
      const r = await credits.reverseCharge(u, charge.id, { reason: "all" });
      expect(r).toMatchObject({ amount: 40, balanceAfter: 40, debtAfter: 0 });
      expect(r.grants).toEqual([{ grantId: held, amount: 40, kind: "debt_returned" }]);
      const grants = await credits.getGrants(u, { includeInactive: true });
      expect(grants.some((g) => g.source === "adjustment")).toBe(false);
      await clean(credits, u);
      clock.now = expiresAt.getTime() + HOUR;
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0, debt: 0 });
      await clean(credits, u);
    });

    it("gives back paid debt to every grant that paid it, the latest payment first, in parts and then the rest", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const held = (await credits.addCredits(u, 20)).grants[0]!.grantId;
      const hold = await credits.reserveCredits(u, 20);
      const charge = await credits.deductCreditsAfterService(u, 50); // no unheld credits: all debt
      expect(charge.debtAfter).toBe(50);
      await credits.releaseReservedCredits(hold.id); // the held 20 pay 20 of the debt
      const expiresAt = new Date(clock.now + 7 * DAY);
      const paying = (await credits.addCredits(u, 100, { expiresAt })).grants[0]!.grantId; // pays 30
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(70);
      const part = await credits.reverseCharge(u, charge.id, { amount: 20, reason: "part" });
      expect(part.grants).toEqual([{ grantId: paying, amount: 20, kind: "debt_returned" }]);
      const rest = await credits.reverseCharge(u, charge.id, { reason: "rest" });
      expect(rest.grants).toEqual([
        { grantId: paying, amount: 10, kind: "debt_returned" },
        { grantId: held, amount: 20, kind: "debt_returned" },
      ]);
      const grants = await credits.getGrants(u);
      expect(grants.map((g) => [g.id, g.remaining])).toEqual([
        [paying, 100],
        [held, 20],
      ]);
      expect(await credits.getReversals(u, charge.id)).toMatchObject({ reversed: 50, remaining: 0 });
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(120);
      await clean(credits, u);
    });

    it("cancels the part of a charge's debt still owed and gives back only what was paid", async () => {
      const { u, credits } = accountWithClock(db, user);
      const held = (await credits.addCredits(u, 20)).grants[0]!.grantId;
      const hold = await credits.reserveCredits(u, 20);
      const charge = await credits.deductCreditsAfterService(u, 50);
      await credits.releaseReservedCredits(hold.id); // pays 20 of the 50: 30 still owed
      const r = await credits.reverseCharge(u, charge.id, { reason: "all" });
      expect(r).toMatchObject({ amount: 50, debtAfter: 0, balanceAfter: 20 });
      expect(r.grants).toEqual([{ grantId: held, amount: 20, kind: "debt_returned" }]);
      await clean(credits, u);
    });

    it("gives paid debt back already expired when the paying grant has expired since", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const first = (await credits.addCredits(u, 50)).grants[0]!.grantId;
      const charge = await credits.deductCreditsAfterService(u, 80);
      const paying = (
        await credits.addCredits(u, 100, {
          expiresAt: new Date(clock.now + 7 * DAY),
          costBasis: { perCredit: "1", currency: "USD" },
        })
      ).grants[0]!.grantId;
      clock.now += 8 * DAY; // the paying grant's 70 expire
      const r = await credits.reverseCharge(u, charge.id, { amount: 50, reason: "part" });
      // The charge's debt first (30, paid by the expired grant: removed again at once), then 20 to `first`.
      expect(r.grants).toEqual([
        { grantId: first, amount: 20, kind: "returned" },
        { grantId: paying, amount: 30, kind: "debt_returned" },
      ]);
      const [removed] = (await credits.getCreditHistory(u, { limit: 1 })).items;
      expect(removed).toMatchObject({ type: "expire", amount: 30, grants: [{ grantId: paying, amount: 30 }] });
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(20);
      const grant = (await credits.getGrants(u, { includeInactive: true })).find((g) => g.id === paying);
      expect(grant).toMatchObject({ remaining: 0, expiredAmount: 100, closedReason: "expired" });
      const q = { account: u, from: new Date(T0 - DAY), to: new Date(clock.now + DAY), interval: null };
      const rows = (await credits.getRevenue(q)).rows.filter((row) => row.currency === "USD");
      expect(rows).toMatchObject([{ paid: 100, recognized: 0, breakage: 100, deferredEnd: 0 }]);
      await clean(credits, u);
    });

    it("gives back debt paid by an addition that formed no grant as a grant of its own that never expires", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 50, { expiresAt: new Date(T0 + 10 * DAY) });
      const charge = await credits.deductCreditsAfterService(u, 80);
      expect(charge.debtAfter).toBe(30);
      const first = await credits.reverseCharge(u, charge.id, { amount: 20, reason: "debt first" });
      expect(first).toMatchObject({ amount: 20, grants: [], debtAfter: 10, balanceAfter: -10 });
      // An addition pays the 10 of debt left with all its credits: it forms no grant.
      expect((await credits.addCredits(u, 10)).grants).toEqual([]);
      const rest = await credits.reverseCharge(u, charge.id, { reason: "the rest" });
      expect(rest).toMatchObject({ amount: 60, debtAfter: 0, balanceAfter: 60 });
      const made = (await credits.getGrants(u)).find((g) => g.source === "adjustment") as Grant;
      expect(made).toMatchObject({
        amount: 10,
        remaining: 10,
        expiresAt: null,
        scope: null,
        costBasis: null,
        metadata: { reverses: charge.id },
      });
      expect(rest.grants.find((p) => p.grantId === made.id)).toEqual({ grantId: made.id, amount: 10 });
      await clean(credits, u);
    });

    it("returns a grant's share already expired or voided when the grant has been since: removed again at once, never a grant that outlives it", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const short = await credits.addCredits(u, 40, { expiresAt: new Date(T0 + HOUR) });
      const voided = await credits.addCredits(u, 40);
      const open = await credits.addCredits(u, 40);
      const charge = await credits.deductCredits(u, 120);
      await credits.voidGrant(voided.grants[0]!.grantId, { description: "refund" });
      clock.now += 2 * HOUR; // `short` is past its expiry (closed by the reversal's settlement)
      const r = await credits.reverseCharge(u, charge.id, { amount: 30, reason: "give back" });
      expect(r.balanceAfter).toBe(30);
      const history = (await credits.getCreditHistory(u, { limit: 3 })).items;
      // The reversal, then what reached closed grants removed again (newest first).
      expect(history.map((e) => e.type)).toEqual(["void", "expire", "reverse"]);
      // Given back as of the charge's time, they left again when their grant closed: the expiry at
      // the grant's expiresAt, the void when it was voided (docs/concepts.md, "Two times on every entry").
      expect(history.map((e) => e.occurredAt?.getTime())).toEqual([T0, T0 + HOUR, T0]);
      const byGrant = await credits.getGrants(u, { includeInactive: true });
      const get = (e: JournalEntry) => byGrant.find((g) => g.id === e.grants[0]!.grantId) as Grant;
      expect(get(short)).toMatchObject({ remaining: 0, expiredAmount: 10, closedReason: "expired" });
      expect(get(voided)).toMatchObject({ remaining: 0, closedReason: "voided" });
      expect(get(open)).toMatchObject({ remaining: 10, closedAt: null });
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(10);
      await clean(credits, u);
    });

    it("an audit from a checkpoint accepts credits given back to grants closed before it, and still checks what came back went out again", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const voided = await credits.addCredits(u, 40);
      const short = await credits.addCredits(u, 50, { expiresAt: new Date(T0 + HOUR), priority: 1 });
      const charge = await credits.deductCredits(u, 60); // 40 from `voided`, then 20 from `short`
      await credits.voidGrant(voided.grants[0]!.grantId, { description: "refund" });
      clock.now += 2 * HOUR;
      await credits.addCredits(u, 10); // settles first: `short` expires its 30 left
      const cp = (await credits.checkpoint(u)) as JournalEntry;
      const r = await credits.reverseCharge(u, charge.id, { amount: 30, reason: "give back" });
      expect(r.balanceAfter).toBe(40);
      const byGrant = await credits.getGrants(u, { includeInactive: true });
      const get = (e: JournalEntry) => byGrant.find((g) => g.id === e.grants[0]!.grantId) as Grant;
      // 20 back to `voided` and 10 to `short`, each removed again at once; `short` expired 30 + 10.
      expect(get(short)).toMatchObject({ remaining: 0, expiredAmount: 40, closedReason: "expired" });
      expect(get(voided)).toMatchObject({ remaining: 0, expiredAmount: 0, closedReason: "voided" });
      const fromCheckpoint = await credits.audit(u);
      expect(fromCheckpoint).toMatchObject({ from: "checkpoint", fromSeq: cp.seq, problems: [] });
      await clean(credits, u);
    });

    it("gives back what a capture took (not what it returned) and an over-capture's excess by its own entry", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 100);
      const under = await credits.reserveCredits(u, 50);
      const captured = await credits.commitReservedCredits(under.id, { amount: 30 });
      await expect(credits.reverseCharge(u, captured.id, { amount: 31, reason: "too much" })).rejects.toBeInstanceOf(
        RuleViolationError,
      );
      expect((await credits.reverseCharge(u, captured.id, { reason: "all" })).amount).toBe(30);
      const over = await credits.reserveCredits(u, 20);
      const whole = await credits.commitReservedCredits(over.id, { amount: 35 });
      const [excess] = (await credits.getCreditHistory(u, { limit: 1 })).items;
      expect(excess).toMatchObject({ type: "deduct", reservationId: over.id, amount: 15 });
      expect((await credits.reverseCharge(u, whole.id, { reason: "hold" })).amount).toBe(20);
      expect((await credits.reverseCharge(u, (excess as JournalEntry).id, { reason: "excess" })).amount).toBe(15);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(100);
      await clean(credits, u);
    });

    it("refuses what is not a charge, more than is left, and an entry of another account, changing nothing", async () => {
      const { u, credits } = accountWithClock(db, user);
      const add = await credits.addCredits(u, 100);
      const hold = await credits.reserveCredits(u, 10);
      const release = await credits.releaseReservedCredits(hold.id);
      // (A payment's take-back is no charge either: the payments contract checks it, with a refund.)
      const charge = await credits.deductCredits(u, 20);
      const reversal = await credits.reverseCharge(u, charge.id, { amount: 5, reason: "part" });
      const seq = (await credits.getCreditHistory(u, { limit: 1 })).items[0]!.seq;
      for (const e of [add, release, reversal])
        await expect(credits.reverseCharge(u, e.id, { reason: "no" })).rejects.toBeInstanceOf(RuleViolationError);
      const tooMuch = credits.reverseCharge(u, charge.id, { amount: 16, reason: "too much" });
      await expect(tooMuch).rejects.toThrow(
        /Cannot give back 16 credits of entry .*: 15 of its 20 are left to give back/,
      );
      await expect(tooMuch).rejects.toBeInstanceOf(RuleViolationError);
      await expect(credits.reverseCharge(user(), charge.id, { reason: "other account" })).rejects.toBeInstanceOf(
        NotFoundError,
      );
      await expect(credits.reverseCharge(u, randomUUID(), { reason: "unknown" })).rejects.toBeInstanceOf(NotFoundError);
      await expect(credits.getReversals(user(), charge.id)).rejects.toBeInstanceOf(NotFoundError);
      expect((await credits.getCreditHistory(u, { limit: 1 })).items[0]!.seq).toBe(seq);
      await clean(credits, u);
    });

    it("answers a retry with the first reversal, and the same key with other arguments is an IdempotencyConflictError", async () => {
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 100);
      const charge = await credits.deductCredits(u, 40);
      const first = await credits.reverseCharge(u, charge.id, { amount: 10, reason: "r", idempotencyKey: "rv-1" });
      expect(await credits.reverseCharge(u, charge.id, { amount: 10, reason: "r", idempotencyKey: "rv-1" })).toEqual(
        first,
      );
      await expect(
        credits.reverseCharge(u, charge.id, { amount: 11, reason: "r", idempotencyKey: "rv-1" }),
      ).rejects.toBeInstanceOf(IdempotencyConflictError);
      expect((await credits.getReversals(u, charge.id)).reversed).toBe(10);
    });

    it("concurrent reversals of one charge, through two managers, never give back more than it charged", async () => {
      const clock = { now: T0 };
      const now = () => new Date(clock.now);
      const a = new CreditService({ db: getDb(), clock: now, overdraftLimit: "unlimited" });
      const b = new CreditService({ db: options.getPeer?.() ?? getDb(), clock: now, overdraftLimit: "unlimited" });
      const u = user();
      await a.addCredits(u, 30);
      await a.addCredits(u, 20, { priority: 3 });
      const charge = await a.deductCreditsAfterService(u, 58);
      const tries = await Promise.allSettled(
        Array.from({ length: 16 }, (_, i) =>
          (i % 2 === 0 ? a : b).reverseCharge(u, charge.id, { amount: 5, reason: "race" }),
        ),
      );
      const done = tries.filter((t) => t.status === "fulfilled");
      const refused = tries.filter((t) => t.status === "rejected");
      expect(done).toHaveLength(11);
      for (const t of refused) expect((t as PromiseRejectedResult).reason).toBeInstanceOf(RuleViolationError);
      expect(await b.getReversals(u, charge.id)).toMatchObject({ reversed: 55, remaining: 3 });
      expect((await a.getUserCreditsInfo(u)).balance).toBe(50 - 58 + 55);
      await clean(a, u);
    });
  });
}
