/**
 * Grants that start later (part of `runDbManagerContract`, also `runLaterGrantsContract`;
 * docs/units.md, "Grants that start later"): a grant added with `effectiveAt` ahead is upcoming —
 * in no balance, drawn by nothing, paying no debt — until its start, when the next operation or read
 * of the account starts it as an addition made then: it pays debt first and its age in the burn-down
 * order counts from its start. Two managers over one store start it once.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import { InsufficientCreditsError, ValidationError } from "../errors.js";
import { CoreCreditService } from "../services/credit-service.js";
import { HOUR, T0, lazy, type PartOptions } from "./support.js";

/**
 * `getDb`: an initialised store; `getPeer` (optional): a second manager over the same store (without
 * it, a second service over `getDb`).
 *
 * @beta
 */
export function runLaterGrantsContract(
  getDb: () => DbManager,
  options: PartOptions & { getPeer?: () => DbManager } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  const user = () => `lg-${randomUUID()}`;
  /** Two services on one clock the test moves: over the store, and over the peer manager. */
  const services = (overdraftLimit: number | "unlimited" = 0) => {
    const clock = { now: T0 };
    const now = () => new Date(clock.now);
    const credits = new CoreCreditService({ db, clock: now, overdraftLimit });
    const peer = new CoreCreditService({ db: options.getPeer?.() ?? db, clock: now, overdraftLimit });
    return { credits, peer, clock };
  };
  const clean = async (credits: CoreCreditService, u: string) => {
    expect((await credits.audit(u, { from: "genesis" })).problems).toEqual([]);
    expect((await credits.audit(u)).problems).toEqual([]);
  };
  const types = async (credits: CoreCreditService, u: string) =>
    (await credits.getCreditHistory(u, { limit: 100 })).items.map((e) => e.type).reverse();

  describe("grants that start later", () => {
    it("an upcoming grant is in no balance, drawn by nothing, and listed as upcoming with its start", async () => {
      const u = user();
      const { credits } = services();
      await credits.addCredits(u, 10);
      const startsAt = new Date(T0 + 2 * HOUR);
      const entry = await credits.addCredits(u, 100, { effectiveAt: startsAt, expiresAt: new Date(T0 + 48 * HOUR) });
      expect(entry).toMatchObject({ type: "add", amount: 100, balanceAfter: 10, debtAfter: 0 });
      expect(entry.effectiveAt?.getTime()).toBe(startsAt.getTime());
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 10, available: 10 });
      await expect(credits.deductCredits(u, 11)).rejects.toBeInstanceOf(InsufficientCreditsError);
      await expect(credits.reserveCredits(u, 11)).rejects.toBeInstanceOf(InsufficientCreditsError);
      const grants = await credits.getGrants(u);
      const later = grants.find((g) => g.id === entry.grants[0]?.grantId);
      expect(later).toMatchObject({ amount: 100, remaining: 100, upcoming: true });
      expect(later?.effectiveAt?.getTime()).toBe(startsAt.getTime());
      expect((await credits.getExpiringCredits(u, 30)).total).toBe(0);
      await credits.deductCredits(u, 10);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0 });
      await clean(credits, u);
    });

    it("at its start the next read sees it, with no job run: one start entry, then it is drawn as any grant", async () => {
      const u = user();
      const { credits, peer, clock } = services();
      const entry = await credits.addCredits(u, 50, { effectiveAt: new Date(T0 + HOUR) });
      clock.now = T0 + HOUR;
      // Read through the other manager: the read settles the start.
      expect(await peer.getUserCreditsInfo(u)).toMatchObject({ balance: 50, available: 50, debt: 0 });
      const grant = (await credits.getGrants(u)).find((g) => g.id === entry.grants[0]?.grantId);
      expect(grant?.upcoming ?? false).toBe(false);
      await Promise.all([credits.deductCredits(u, 20), peer.deductCredits(u, 20)]);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 10 });
      expect(await types(credits, u)).toEqual(["add", "start", "deduct", "deduct"]);
      await clean(credits, u);
    });

    it("its start pays the debt first, and the journal says how much", async () => {
      const u = user();
      const { credits, clock } = services("unlimited");
      await credits.deductCreditsAfterService(u, 30);
      await credits.addCredits(u, 100, { effectiveAt: new Date(T0 + HOUR) });
      // Upcoming: it pays nothing yet.
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: -30, debt: 30 });
      clock.now = T0 + HOUR + 1;
      await credits.deductCredits(u, 5);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 65, debt: 0 });
      const start = (await credits.getCreditHistory(u, { types: ["start"] })).items[0];
      expect(start).toMatchObject({ type: "start", amount: 100, balanceAfter: 70, debtAfter: 0 });
      expect(start?.grants.find((p) => p.kind === "debt_paid")?.amount).toBe(30);
      expect(start?.grants.find((p) => p.kind === undefined)?.amount).toBe(70);
      await clean(credits, u);
    });

    it("its age in the burn-down order counts from its start", async () => {
      const u = user();
      const { credits, clock } = services();
      const late = await credits.addCredits(u, 10, { effectiveAt: new Date(T0 + 2 * HOUR) });
      clock.now = T0 + HOUR;
      const plain = await credits.addCredits(u, 10);
      clock.now = T0 + 3 * HOUR;
      const spent = await credits.deductCredits(u, 4);
      // Created first, started last: the plain grant is the older one.
      expect(spent.grants).toEqual([{ grantId: plain.grants[0]?.grantId, amount: 4 }]);
      const order = (await credits.getGrants(u)).map((g) => g.id);
      expect(order).toEqual([plain.grants[0]?.grantId, late.grants[0]?.grantId]);
      await clean(credits, u);
    });

    it("a start now or past is an ordinary grant; an expiry not after the start is refused, nothing changed", async () => {
      const u = user();
      const { credits } = services();
      const now = await credits.addCredits(u, 5, { effectiveAt: new Date(T0 - HOUR) });
      expect(now).toMatchObject({ balanceAfter: 5 });
      expect(now.effectiveAt ?? null).toBeNull();
      expect((await credits.getGrants(u))[0]?.upcoming ?? false).toBe(false);
      for (const expiresAt of [new Date(T0 + HOUR), new Date(T0 + 30 * 60_000)])
        await expect(credits.addCredits(u, 5, { effectiveAt: new Date(T0 + HOUR), expiresAt })).rejects.toBeInstanceOf(
          ValidationError,
        );
      expect(await types(credits, u)).toEqual(["add"]);
      await clean(credits, u);
    });

    it("started and expired while nobody looked: the start pays debt, the rest expires, in that order", async () => {
      const u = user();
      const { credits, clock } = services("unlimited");
      await credits.deductCreditsAfterService(u, 15);
      await credits.addCredits(u, 40, { effectiveAt: new Date(T0 + HOUR), expiresAt: new Date(T0 + 2 * HOUR) });
      clock.now = T0 + 5 * HOUR;
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0, debt: 0 });
      expect(await types(credits, u)).toEqual(["deduct", "add", "start", "expire"]);
      await clean(credits, u);
    });

    it("settled late, each start, expiry and lapse is dated at its own due instant, in that order (docs/concepts.md)", async () => {
      const u = user();
      const { credits, clock } = services("unlimited");
      const at = (h: number) => new Date(T0 + h * HOUR);
      // Grant A (10, expiring at +2 h), 8 of it held until +0.5 h; a charge of 5 takes A's other 2
      // and owes 3; grant C (40) starts at +1 h and expires at +3 h. Nobody looks for a month.
      await credits.addCredits(u, 10, { expiresAt: at(2) });
      await credits.reserveCredits(u, 8, { ttlSeconds: HOUR / 2000 });
      await credits.deductCreditsAfterService(u, 5);
      await credits.addCredits(u, 40, { effectiveAt: at(1), expiresAt: at(3) });
      clock.now = T0 + 30 * 24 * HOUR;
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 0, debt: 0, reserved: 0 });
      const settled = (await credits.getCreditHistory(u, { limit: 100 })).items.reverse().slice(4);
      expect(settled.map((e) => [e.type, e.amount, e.occurredAt?.toISOString(), e.createdAt.getTime()])).toEqual([
        // At +0.5 h the hold's 8 go back to A, still open then: 3 pay the debt, 5 stay on A.
        ["release_reserved", 8, at(0.5).toISOString(), clock.now],
        // At +1 h C starts with no debt left to pay.
        ["start", 40, at(1).toISOString(), clock.now],
        // One entry per instant: A's 5 at +2 h, C's 40 at +3 h.
        ["expire", 5, at(2).toISOString(), clock.now],
        ["expire", 40, at(3).toISOString(), clock.now],
      ]);
      await clean(credits, u);
    });

    it("an expiry settled at its instant carries no second time; one settled later is dated at its grant's expiresAt", async () => {
      const u = user();
      const { credits, clock } = services();
      const early = new Date(T0 + HOUR);
      await credits.addCredits(u, 10, { expiresAt: early });
      await credits.addCredits(u, 5, { expiresAt: new Date(T0 + 2 * HOUR) });
      clock.now = T0 + 2 * HOUR;
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(0);
      const expiries = (await credits.getCreditHistory(u, { limit: 100 })).items.filter((e) => e.type === "expire");
      expect(expiries.map((e) => [e.amount, e.occurredAt?.toISOString() ?? null]).reverse()).toEqual([
        [10, early.toISOString()],
        [5, null],
      ]);
      await clean(credits, u);
    });

    it("the history's from and to place an entry when its money moved: an expiry settled a day late is in its own day", async () => {
      const u = user();
      const { credits, clock } = services();
      const due = new Date(T0 + HOUR);
      await credits.addCredits(u, 10, { expiresAt: due });
      clock.now = T0 + 25 * HOUR; // settled a day late, by this read
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(0);
      const between = async (from: number, to: number) =>
        (await credits.getCreditHistory(u, { from: new Date(from), to: new Date(to), limit: 100 })).items.map(
          (e) => e.type,
        );
      expect(await between(T0, T0 + 2 * HOUR)).toEqual(["expire", "add"]);
      expect(await between(T0 + 2 * HOUR, T0 + 26 * HOUR)).toEqual([]);
      expect(await between(due.getTime(), due.getTime() + 1)).toEqual(["expire"]);
      expect(await between(T0, due.getTime())).toEqual(["add"]);
      await clean(credits, u);
    });

    it("voiding an upcoming grant leaves the balance as it was; a checkpoint records it as upcoming", async () => {
      const u = user();
      const { credits, clock } = services();
      await credits.addCredits(u, 7);
      const a = await credits.addCredits(u, 20, { effectiveAt: new Date(T0 + HOUR) });
      await credits.addCredits(u, 30, { effectiveAt: new Date(T0 + HOUR) });
      await credits.checkpoint(u);
      await credits.voidGrant(a.grants[0]?.grantId as string);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 7 });
      await clean(credits, u);
      clock.now = T0 + HOUR;
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 37 });
      await clean(credits, u);
    });
  });
}
