/**
 * Late usage and the figures after reversals on any store (the `lateUsage` part of
 * `runDbManagerContract`, also `runLateUsageContract`; docs/usage.md, "Late usage" and
 * "Corrections"): a deduction recorded with `occurredAt` is appended to the journal now and
 * placed then by the usage report and the spend limits, within the late-usage window; a reversal
 * nets its charge out of the usage report in the charge's window and dimensions, gives the spend
 * back to the charge's limit window, and is booked by the revenue report at the charge's time too.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "../core/testing/runner.js";
import type { DbManager } from "../core/db/types.js";
import { LateUsageError, SpendLimitError } from "../core/errors.js";
import { CreditService } from "../credit-service.js";
import { DAY, HOUR, lazy, type PartOptions } from "../core/testing/support.js";

/** Late usage, and usage, limits and revenue after reversals. @beta */
export function runLateUsageContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  describe("late usage and reversals", () => {
    // Three years before now, away from the other parts' accounts and times; a UTC midnight.
    const base = Math.floor((Date.now() - 3 * 365 * DAY) / DAY) * DAY;
    const run = randomUUID().slice(0, 8);
    let n = 0;
    const setup = (start: number, lateUsageWindowDays?: number) => {
      const clock = { now: start };
      const credits = new CreditService({ db, clock: () => new Date(clock.now), lateUsageWindowDays });
      return { credits, clock, user: `late-${run}-${++n}` };
    };
    const daily = async (credits: CreditService, user: string, from: number, to: number) =>
      (
        await credits.getUsage({
          account: user,
          from: new Date(from),
          to: new Date(to),
          interval: "day",
          groupBy: ["feature"],
        })
      ).rows.map((r) => [(r.start.getTime() - from) / DAY, r.feature, r.credits, r.requests]);

    it("a deduction with occurredAt is appended now and counted in the window it happened in", async () => {
      const { credits, clock, user } = setup(base + 10 * DAY + 12 * HOUR);
      await credits.addCredits(user, 1_000);
      await credits.deductCredits(user, 7, { feature: "chat" });
      const occurredAt = new Date(base + 3 * DAY + 5 * HOUR);
      const late = await credits.deductCreditsAfterService(user, 30, { feature: "chat", occurredAt });
      const iso = await credits.deductCredits(user, 4, {
        feature: "img",
        occurredAt: new Date(base + 9 * DAY).toISOString(),
      });
      expect(late.occurredAt?.getTime()).toBe(occurredAt.getTime());
      expect(late.createdAt.getTime()).toBe(clock.now);
      expect(iso.occurredAt?.getTime()).toBe(base + 9 * DAY);
      // The journal stays in order: the late entries come after the on-time one.
      const seqs = (await credits.getCreditHistory(user, { types: ["deduct"] })).items.map((e) => e.seq);
      expect(seqs).toEqual([4, 3, 2]);
      // Read back from the store, occurredAt is kept; an on-time entry has none.
      const [stored] = await db.listJournal(user, { order: "asc", afterSeq: 2, limit: 1 });
      expect(stored?.occurredAt?.getTime()).toBe(occurredAt.getTime());
      const [onTime] = await db.listJournal(user, { order: "asc", afterSeq: 1, limit: 1 });
      expect(onTime?.occurredAt ?? null).toBeNull();
      expect(await daily(credits, user, base, base + 11 * DAY)).toEqual([
        [3, "chat", 30, 1],
        [9, "img", 4, 1],
        [10, "chat", 7, 1],
      ]);
      expect((await credits.audit(user)).problems).toEqual([]);
      // A report of the late day alone finds it (every store finds entries by when they happened).
      expect(await daily(credits, user, base + 3 * DAY, base + 4 * DAY)).toEqual([[0, "chat", 30, 1]]);
    });

    it("refuses occurredAt outside the window or in the future, and changes nothing", async () => {
      const { credits, clock, user } = setup(base + 100 * DAY, 10);
      await credits.addCredits(user, 100);
      const tooOld = credits.deductCredits(user, 5, { occurredAt: new Date(clock.now - 10 * DAY - 1) });
      await expect(tooOld).rejects.toBeInstanceOf(LateUsageError);
      await expect(tooOld).rejects.toMatchObject({ code: "RULE_VIOLATION", status: 422 });
      await expect(
        credits.deductCreditsAfterService(user, 5, { occurredAt: new Date(clock.now + HOUR) }),
      ).rejects.toBeInstanceOf(LateUsageError);
      await expect(credits.deductCredits(user, 5, { occurredAt: "yesterday" })).rejects.toMatchObject({
        code: "VALIDATION_ERROR",
      });
      expect((await credits.getUserCreditsInfo(user)).balance).toBe(100);
      // At the window's edge it is taken; a few seconds ahead (clocks disagree) is on time: no occurredAt.
      const edge = await credits.deductCredits(user, 1, { occurredAt: new Date(clock.now - 10 * DAY) });
      expect(edge.occurredAt?.getTime()).toBe(clock.now - 10 * DAY);
      const ahead = await credits.deductCredits(user, 1, { occurredAt: new Date(clock.now + 5_000) });
      expect(ahead.occurredAt ?? null).toBeNull();
      // Window 0: no late usage at all.
      const strict = setup(base + 100 * DAY, 0);
      await strict.credits.addCredits(strict.user, 10);
      await expect(
        strict.credits.deductCredits(strict.user, 1, { occurredAt: new Date(strict.clock.now - 1_000) }),
      ).rejects.toBeInstanceOf(LateUsageError);
    });

    it("an idempotency key covers occurredAt: the same call replays, another time conflicts", async () => {
      const { credits, clock, user } = setup(base + 200 * DAY);
      await credits.addCredits(user, 100);
      const occurredAt = new Date(clock.now - 2 * DAY);
      const a = await credits.deductCredits(user, 5, { occurredAt, idempotencyKey: "k" });
      const b = await credits.deductCredits(user, 5, { occurredAt: occurredAt.toISOString(), idempotencyKey: "k" });
      expect(b.id).toBe(a.id);
      await expect(
        credits.deductCredits(user, 5, { occurredAt: new Date(clock.now - DAY), idempotencyKey: "k" }),
      ).rejects.toMatchObject({ code: "IDEMPOTENCY_CONFLICT" });
    });

    it("spend limits count late usage in its window while that window is current, and none of an ended one", async () => {
      // The 20th of a month at noon.
      const month = new Date(base + 400 * DAY);
      const start = Date.UTC(month.getUTCFullYear(), month.getUTCMonth(), 20, 12);
      const { credits, clock, user } = setup(start);
      await credits.addCredits(user, 1_000);
      await credits.setLimits(user, [
        { amount: 50, period: "day" },
        { amount: 100, period: "month" },
      ]);
      // Yesterday's usage: the day limit of yesterday has ended; the month limit counts it.
      await credits.deductCredits(user, 40, { occurredAt: new Date(clock.now - DAY) });
      const limits = await credits.getLimits(user);
      expect(limits.map((l) => [l.period, l.used])).toEqual([
        ["day", 0],
        ["month", 40],
      ]);
      // Today's usage an hour late: checked and counted like any spend of today.
      await credits.deductCredits(user, 45, { occurredAt: new Date(clock.now - HOUR) });
      await expect(credits.deductCredits(user, 10, { occurredAt: new Date(clock.now - HOUR) })).rejects.toBeInstanceOf(
        SpendLimitError,
      );
      // Last month's usage: counted against neither.
      await credits.deductCredits(user, 30, { occurredAt: new Date(start - 25 * DAY) });
      expect((await credits.getLimits(user)).map((l) => [l.period, l.used])).toEqual([
        ["day", 45],
        ["month", 85],
      ]);
    });

    it("a reversal gives nothing back to a limit set after its charge, nor to one removed and set again since", async () => {
      // A Wednesday at noon: the day and the week both hold the whole test.
      const wednesday = base + 600 * DAY + 12 * HOUR;
      const { credits, clock, user } = setup(wednesday - ((new Date(wednesday).getUTCDay() + 4) % 7) * DAY);
      await credits.addCredits(user, 1_000);
      const before = await credits.deductCredits(user, 100, { spender: "s3" });
      clock.now += HOUR;
      await credits.setLimits(user, [
        { spender: "s3", amount: 100, period: "day" },
        { spender: "s3", amount: 150, period: "week" },
      ]);
      await credits.deductCredits(user, 60, { spender: "s3" });
      clock.now += HOUR;
      await credits.reverseCharge(user, before.id, { amount: 30, reason: "partly failed" });
      await credits.reverseCharge(user, before.id, { reason: "failed" });
      const used = async () => (await credits.getLimits(user)).map((l) => [l.period, l.used]);
      expect(await used()).toEqual([
        ["day", 60],
        ["week", 60],
      ]);
      await expect(credits.deductCredits(user, 100, { spender: "s3" })).rejects.toBeInstanceOf(SpendLimitError);
      // A charge the limits counted gives back to them; a limit removed and set again counts afresh.
      const counted = await credits.deductCredits(user, 40, { spender: "s3" });
      await credits.removeLimit(user, { spender: "s3", period: "week" });
      await credits.setLimit(user, { spender: "s3", amount: 150, period: "week" });
      await credits.reverseCharge(user, counted.id, { amount: 25, reason: "partly failed" });
      expect(await used()).toEqual([
        ["day", 75],
        ["week", 0],
      ]);
      expect((await credits.audit(user)).problems).toEqual([]);
    });

    it("a limit set while holds are in flight counts those placed in its window, so their release or commit trues it up exactly", async () => {
      const wednesday = base + 600 * DAY + 12 * HOUR;
      const { credits, clock, user } = setup(wednesday);
      await credits.addCredits(user, 1_000);
      const hold = (amount: number, spender: string) =>
        credits.reserveCredits(user, amount, { spender, ttlSeconds: 7_200 });
      const released = await hold(100, "s3");
      const committed = await hold(80, "s3");
      const other = await hold(50, "s4");
      clock.now += HOUR;
      await credits.setLimit(user, { spender: "s3", amount: 250, period: "day" });
      const used = async () => (await credits.getLimits(user)).map((l) => l.used);
      expect(await used()).toEqual([180]); // spent or held: s3's two holds, not s4's
      await expect(credits.deductCredits(user, 71, { spender: "s3" })).rejects.toBeInstanceOf(SpendLimitError);
      await credits.deductCredits(user, 60, { spender: "s3" });
      await credits.releaseReservedCredits(released.id);
      await credits.commitReservedCredits(committed.id, { amount: 50 });
      await credits.releaseReservedCredits(other.id);
      expect(await used()).toEqual([110]); // 60 spent and 50 captured: what the day spent under it
      await expect(credits.deductCredits(user, 141, { spender: "s3" })).rejects.toBeInstanceOf(SpendLimitError);
      expect((await credits.deductCredits(user, 140, { spender: "s3" })).amount).toBe(140);
      expect((await credits.audit(user)).problems).toEqual([]);
    });

    it("after reversals, usage nets out in the charge's window and dimensions, limits get the spend back, revenue books it on the charge's day too", async () => {
      const { credits, clock, user } = setup(base + 500 * DAY + 10 * HOUR);
      await credits.addCredits(user, 1_000, { costBasis: { perCredit: "2", currency: "USD" } });
      await credits.setLimits(user, [{ amount: 100, period: "day", feature: "chat" }]);
      const charge = await credits.deductCredits(user, 100, {
        feature: "chat",
        spender: "k1",
        metadata: { team: "red" },
      });
      await expect(credits.deductCredits(user, 1, { feature: "chat" })).rejects.toBeInstanceOf(SpendLimitError);
      const day0 = Math.floor(clock.now / DAY) * DAY;
      // The same day: 30 given back, the limit is no longer reached.
      clock.now += HOUR;
      const r1 = await credits.reverseCharge(user, charge.id, { amount: 30, reason: "job failed" });
      expect(r1.occurredAt?.getTime()).toBe(charge.createdAt.getTime());
      expect((await credits.getLimits(user))[0]?.used).toBe(70);
      await credits.deductCredits(user, 20, { feature: "chat" });
      // Two days later: the rest given back; the report nets it on the charge's day, under its
      // feature, spender and team — the request too, once the whole charge is given back.
      clock.now += 2 * DAY;
      await credits.reverseCharge(user, charge.id, { reason: "double-reported" });
      const q = { account: user, from: new Date(day0), to: new Date(day0 + 3 * DAY), interval: "day" as const };
      const rows = (await credits.getUsage({ ...q, groupBy: ["feature", "spender", "metadata.team"] })).rows;
      expect(
        rows.map((r) => [
          (r.start.getTime() - day0) / DAY,
          r.feature,
          r.spender,
          r["metadata.team"],
          r.credits,
          r.requests,
        ]),
      ).toEqual([
        [0, "chat", null, null, 20, 1],
        [0, "chat", "k1", "red", 0, 0],
      ]);
      // Revenue: recognized 240 on the charge's day, less 60 and 140 given back, booked at the
      // charge's time too (docs/revenue.md, "Corrections and late usage"). Deferred follows.
      const revenue = await credits.getRevenue({ ...q, account: user });
      expect(revenue.rows.map((r) => [(r.start.getTime() - day0) / DAY, r.paid, r.recognized, r.deferredEnd])).toEqual([
        [0, 2_000, 40, 1_960],
        [1, 0, 0, 1_960],
        [2, 0, 0, 1_960],
      ]);
      expect((await credits.audit(user)).problems).toEqual([]);
    });
  });
}
