// The subscription rules on their own (src/core/domain/subscriptions.ts, rollover.ts): each transition
// is a pure function of the subscription, the plans and the clock, so every branch of
// docs/subscriptions.md is pinned here without a store. The contract suite
// (src/core/testing/subscriptions.ts) checks the same rules end to end on every backend.
// Every instant is fixed (the clock is an argument): nothing here depends on today's date.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { AccountWork } from "../src/core/domain/account-work.js";
import { rolloverAmount, rolloverCarry } from "../src/core/domain/rollover.js";
import {
  ExpiryMoved,
  abandon,
  allocation,
  applyIntent,
  cancel,
  cancelMode,
  changeMode,
  changePlan,
  checkRollover,
  endAtPeriodEnd,
  endWithoutPlan,
  intent,
  intentDone,
  intentGrantIds,
  periodsSkipped,
  prorate,
  proration,
  renew,
  renews,
  repeatsRequest,
  requireActivePlan,
  resume,
  rolloverFields,
  subscribe,
} from "../src/core/domain/subscriptions.js";
import { ConflictError, ValidationError } from "../src/core/errors.js";
import type { Grant, Plan, Subscription } from "../src/core/models/index.js";
import { samples } from "./fixtures/samples.js";

const DAY = 86_400_000;
const T = (iso: string) => new Date(iso);
const at = (d: Date, days: number) => new Date(d.getTime() + days * DAY);
// February 2024: a 29-day monthly period (a leap year), from the anchor's time of day.
const FEB = T("2024-02-01T00:00:00.000Z");
const MAR = T("2024-03-01T00:00:00.000Z");

const plan = (over: Partial<Plan> = {}): Plan => ({
  ...samples.plans,
  id: "basic",
  creditsPerPeriod: 1000,
  billingPeriod: "monthly",
  validityDays: null,
  rollover: "none",
  rolloverCap: null,
  allowances: [],
  isActive: true,
  ...over,
});
const BASIC = plan();
const PRO = plan({ id: "pro", creditsPerPeriod: 3000 });

/** An active subscription to `p` from `FEB`, its first period's work done (grants g-a, g-b). */
function active(p: Plan = BASIC, over: Partial<Subscription> = {}): Subscription {
  const s = subscribe("s-1", "u-1", p, { startAt: FEB }, FEB);
  return { ...intentDone(s, s.intent as NonNullable<Subscription["intent"]>, ["g-a", "g-b"]), version: 2, ...over };
}

describe("allocation: a period's credits", () => {
  const period = { start: FEB, end: MAR };
  it.each([
    ["the plan's credits, expiring at the period's end", BASIC, FEB, { amount: 1000, expiresAt: MAR.getTime() }],
    [
      "validityDays after the period's start",
      plan({ validityDays: 7 }),
      FEB,
      { amount: 1000, expiresAt: at(FEB, 7).getTime() },
    ],
    ["none for pay-as-you-go (0 credits)", plan({ creditsPerPeriod: 0 }), FEB, null],
    ["none when it would be born expired (at its expiry)", BASIC, MAR, null],
    ["none when its validity is over (a period caught up late)", plan({ validityDays: 7 }), at(FEB, 7), null],
    [
      "still one a millisecond before its expiry",
      BASIC,
      new Date(MAR.getTime() - 1),
      { amount: 1000, expiresAt: MAR.getTime() },
    ],
  ])("%s", (_, p, now, expected) => {
    expect(allocation(p, period, now)).toEqual(expected);
  });
});

describe("prorate: trunc((new − old) × fraction of the period left)", () => {
  // Feb 2024 has 29 days: 10 days in, 19/29 of it is left.
  const period = { start: FEB, end: MAR };
  const delta = (from: number, to: number, now: Date, p = period) =>
    proration(from, plan({ creditsPerPeriod: to }), p, now).delta;
  it.each([
    ["upgrade at the period's start: the whole difference", 1000, 3000, FEB, 2000],
    ["downgrade at the period's start: the whole difference", 3000, 1000, FEB, -2000],
    ["before the period's start: as at its start", 1000, 3000, at(FEB, -3), 2000],
    ["upgrade at the period's end: nothing", 1000, 3000, MAR, 0],
    ["after the period's end: nothing", 3000, 1000, at(MAR, 1), 0],
    ["upgrade 10 of 29 days in: 2000 × 19/29 = 1310.3… → 1310", 1000, 3000, at(FEB, 10), 1310],
    ["downgrade 10 of 29 days in: −1310.3… → −1310 (toward zero)", 3000, 1000, at(FEB, 10), -1310],
    ["the same credits: nothing", 1000, 1000, at(FEB, 10), 0],
    ["from pay-as-you-go (0), 14 of 29 days in: 1001 × 15/29 = 517.7… → 517", 0, 1001, at(FEB, 14), 517],
  ])("%s", (_, from, to, now, expected) => {
    expect(delta(from, to, now)).toBe(expected);
  });

  it("a zero-length period has nothing left to prorate (never a division by zero)", () => {
    expect(delta(1000, 3000, FEB, { start: FEB, end: FEB })).toBe(0);
    expect(Object.is(prorate(3000, 1000, 0), -0)).toBe(false);
  });

  it("an upgrade whose grant would be born expired (the new plan's validity is over) adds nothing; a downgrade still removes", () => {
    const short = { validityDays: 5 };
    expect(proration(1000, plan({ creditsPerPeriod: 3000, ...short }), period, at(FEB, 10))).toEqual({
      delta: 0,
      expiresAt: at(FEB, 5).getTime(),
    });
    expect(proration(3000, plan({ creditsPerPeriod: 1000, ...short }), period, at(FEB, 10))).toEqual({
      delta: -1310,
      expiresAt: at(FEB, 5).getTime(),
    });
    expect(proration(1000, plan({ creditsPerPeriod: 3000, validityDays: 20 }), period, at(FEB, 10))).toEqual({
      delta: 1310,
      expiresAt: at(FEB, 20).getTime(),
    });
  });

  it("never grants or removes more than the plan difference, has its sign, and shrinks as the period runs out", () => {
    const credits = fc.integer({ min: 0, max: 1e12 });
    fc.assert(
      fc.property(
        credits,
        credits,
        fc.integer({ min: 0, max: 400 * DAY }),
        fc.integer({ min: -DAY, max: 401 * DAY }),
        fc.nat(DAY),
        (from, to, length, offset, step) => {
          const p = { start: FEB, end: new Date(FEB.getTime() + length) };
          const d1 = delta(from, to, new Date(FEB.getTime() + offset), p);
          const d2 = delta(from, to, new Date(FEB.getTime() + offset + step), p);
          expect(Number.isSafeInteger(d1)).toBe(true);
          expect(Math.abs(d1)).toBeLessThanOrEqual(Math.abs(to - from));
          expect(d1 === 0 || Math.sign(d1) === Math.sign(to - from)).toBe(true);
          expect(Math.abs(d2)).toBeLessThanOrEqual(Math.abs(d1));
          if (length > 0) expect(delta(from, to, FEB, p)).toBe(to - from);
          expect(delta(from, to, p.end, p)).toBe(0);
        },
      ),
    );
  });
});

describe("prorated changes compose", () => {
  it("a change and its undo at the same instant cancel out: what one grants, the other removes", () => {
    const credits = fc.integer({ min: 0, max: 1e9 });
    fc.assert(
      fc.property(credits, credits, fc.integer({ min: 0, max: 29 * DAY }), (a, b, offset) => {
        const now = new Date(FEB.getTime() + offset);
        const period = { start: FEB, end: MAR };
        const there = proration(a, plan({ creditsPerPeriod: b }), period, now).delta;
        const back = proration(b, plan({ creditsPerPeriod: a }), period, now).delta;
        expect(there + back).toBe(0);
      }),
    );
  });
});

describe("rollover: the carry a renewal owes and the amount it moves", () => {
  const s = active(BASIC, { periodGrantIds: ["g-a", "g-b"] });
  const next = { end: T("2024-04-01T00:00:00.000Z") };
  const carry = (p: Partial<Plan> | null, over: Partial<Subscription> = {}) =>
    rolloverCarry({ ...s, ...over }, p === null ? null : plan(p), next);
  it.each([
    ['"none": nothing', { rollover: "none" as const }, {}, null],
    ['"all": the period\'s grants, no cap', { rollover: "all" as const }, {}, { limit: null }],
    ["capped: up to the cap", { rollover: "cap" as const, rolloverCap: 500 }, {}, { limit: 500 }],
    ["capped without a cap: nothing can move", { rollover: "cap" as const, rolloverCap: null }, {}, { limit: 0 }],
    [
      'after a period-end change with credits "expire": nothing',
      { rollover: "all" as const },
      { pendingCredits: "expire" as const },
      null,
    ],
    ["a period without grants of its own: nothing", { rollover: "all" as const }, { periodGrantIds: [] }, null],
  ])("%s", (_, p, over, expected) => {
    const c = carry(p, over);
    if (expected === null) expect(c).toBeNull();
    else
      expect(c).toEqual({
        grantIds: ["g-a", "g-b"],
        periodEnd: MAR.getTime(),
        expiresAt: next.end.getTime(),
        ...expected,
      });
  });

  it("a plan that no longer exists carries nothing", () => {
    expect(carry(null)).toBeNull();
  });

  it.each([
    ["under the cap: all of it", 300, 500, 300],
    ["over the cap: the cap", 800, 500, 500],
    ["a cap of 0: nothing", 800, 0, 0],
    ["no cap: all of it", 800, null, 800],
    ["nothing unspent: nothing", 0, 500, 0],
  ])("amount %s", (_, unspent, limit, expected) => {
    expect(rolloverAmount(unspent, { limit, expiresAt: next.end.getTime() }, MAR)).toBe(expected);
  });

  it("a rollover grant that would be born expired (a period caught up late) moves nothing; one that never expires moves", () => {
    expect(rolloverAmount(800, { limit: null, expiresAt: MAR.getTime() }, MAR)).toBe(0);
    expect(rolloverAmount(800, { limit: null, expiresAt: MAR.getTime() + 1 }, MAR)).toBe(800);
    expect(rolloverAmount(800, { limit: 100, expiresAt: null }, MAR)).toBe(100);
  });

  it("moves at most what was unspent and at most the cap, never less than zero", () => {
    const amount = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
    fc.assert(
      fc.property(amount, fc.option(amount), (unspent, limit) => {
        const moved = rolloverAmount(unspent, { limit, expiresAt: null }, MAR);
        expect(moved).toBeGreaterThanOrEqual(0);
        expect(moved).toBeLessThanOrEqual(unspent);
        if (limit !== null) expect(moved).toBeLessThanOrEqual(limit);
        expect(moved === unspent || moved === limit).toBe(true);
      }),
    );
  });

  it("plan fields: none, all, a cap; a capped plan without a cap is a ValidationError", () => {
    expect(rolloverFields("none")).toEqual({ rollover: "none", rolloverCap: null });
    expect(rolloverFields("all")).toEqual({ rollover: "all", rolloverCap: null });
    expect(rolloverFields({ cap: 5 })).toEqual({ rollover: "cap", rolloverCap: 5 });
    expect(() => checkRollover({ rollover: "cap", rolloverCap: null })).toThrow(ValidationError);
    expect(() => checkRollover({ rollover: "cap", rolloverCap: 0 })).not.toThrow();
  });
});

describe("subscribe", () => {
  it("starts now: the period containing now, owing its allocation", () => {
    const now = T("2024-05-10T12:00:00.000Z");
    const s = subscribe("s-9", "u-9", BASIC, { idempotencyKey: "checkout-1" }, now);
    expect(s).toMatchObject({
      status: "active",
      anchorAt: now,
      periodIndex: 0,
      currentPeriodStart: now,
      currentPeriodEnd: T("2024-06-10T12:00:00.000Z"),
      nextRunAt: now,
      periodCredits: 1000,
      autoRenew: true,
      idempotencyKey: "checkout-1",
      request: { planId: "basic", autoRenew: true, startAt: null },
    });
    expect(s.intent).toEqual(
      intent("sub:s-9:2024-05-10T12:00:00.000Z", {
        allocate: { amount: 1000, expiresAt: s.currentPeriodEnd.getTime() },
      }),
    );
  });

  it("a past startAt backdates the cycle: only the current period is allocated", () => {
    const s = subscribe("s-9", "u-9", BASIC, { startAt: T("2024-01-31T00:00:00.000Z") }, T("2024-03-20T00:00:00.000Z"));
    // Jan 31 → Feb 29 (leap year) → Mar 31: Mar 20 lies in the second period.
    expect([s.periodIndex, s.currentPeriodStart.toISOString(), s.currentPeriodEnd.toISOString()]).toEqual([
      1,
      "2024-02-29T00:00:00.000Z",
      "2024-03-31T00:00:00.000Z",
    ]);
    expect(s.intent?.allocate).toEqual({ amount: 1000, expiresAt: T("2024-03-31T00:00:00.000Z").getTime() });
  });

  it("a future startAt waits for its start; pay-as-you-go owes no allocation", () => {
    const s = subscribe("s-9", "u-9", plan({ creditsPerPeriod: 0 }), { startAt: MAR, autoRenew: false }, FEB);
    expect([s.nextRunAt, s.currentPeriodStart, s.intent?.allocate, s.periodCredits, s.autoRenew]).toEqual([
      MAR,
      MAR,
      null,
      0,
      false,
    ]);
  });

  it("an inactive plan cannot be chosen", () => {
    expect(() => subscribe("s-9", "u-9", plan({ isActive: false }), {}, FEB)).toThrow(ConflictError);
    expect(() => requireActivePlan(plan({ isActive: false }))).toThrow(ConflictError);
  });

  it("a retry repeats the call that created the subscription: plan, autoRenew, startAt (omitted: any), metadata", () => {
    const first = subscribe("s-9", "u-9", BASIC, { startAt: FEB, metadata: { a: 1 }, idempotencyKey: "k" }, FEB);
    const moved = { ...first, planId: "pro" }; // a plan change since does not matter
    expect(repeatsRequest(moved, "basic", { metadata: { a: 1 } })).toBe(true);
    expect(repeatsRequest(moved, "basic", { startAt: FEB, metadata: { a: 1 } })).toBe(true);
    expect(repeatsRequest(moved, "pro", { metadata: { a: 1 } })).toBe(false);
    expect(repeatsRequest(moved, "basic", { startAt: MAR, metadata: { a: 1 } })).toBe(false);
    expect(repeatsRequest(moved, "basic", { autoRenew: false, metadata: { a: 1 } })).toBe(false);
    expect(repeatsRequest(moved, "basic", { metadata: { a: 2 } })).toBe(false);
    // Stored before `request` existed: compared with what the subscription records.
    expect(repeatsRequest({ ...first, request: null }, "basic", { startAt: FEB, metadata: { a: 1 } })).toBe(true);
  });

  it("abandoned (its plan deactivated meanwhile): cancelled at once, owing nothing; an ended one stays", () => {
    const s = subscribe("s-9", "u-9", BASIC, {}, FEB);
    expect(abandon(s, FEB)).toMatchObject({
      status: "canceled",
      intent: null,
      nextRunAt: null,
      canceledAt: FEB,
      endedAt: FEB,
    });
    const gone = { ...s, status: "expired" as const };
    expect(abandon(gone, FEB)).toBe(gone);
  });
});

describe("changePlan, each mode", () => {
  const mid = at(FEB, 10);

  it("modes: now + prorate by default, keep at period end; prorate at period end is a ValidationError", () => {
    expect(changeMode({})).toEqual({ when: "now", credits: "prorate" });
    expect(changeMode({ when: "period_end" })).toEqual({ when: "period_end", credits: "keep" });
    expect(changeMode({ credits: "expire" })).toEqual({ when: "now", credits: "expire" });
    expect(() => changeMode({ when: "period_end", credits: "prorate" })).toThrow(ValidationError);
  });

  it("the plan it is on, now, is a ConflictError; at period end it is recorded", () => {
    const s = active();
    expect(() => changePlan(s, BASIC, { when: "now", credits: "keep" }, mid, 1000)).toThrow(ConflictError);
    expect(changePlan(s, BASIC, { when: "period_end", credits: "keep" }, mid, 1000).pendingPlanId).toBe("basic");
  });

  it("period_end: only the pending plan and credits change now", () => {
    const s = active();
    expect(changePlan(s, PRO, { when: "period_end", credits: "expire" }, mid, 1000)).toEqual({
      ...s,
      pendingPlanId: "pro",
      pendingCredits: "expire",
    });
  });

  it("now + prorate: same period, new plan, the prorated difference against what the period is on", () => {
    const s = active();
    const next = changePlan(s, PRO, { when: "now", credits: "prorate" }, mid, 1000);
    expect(next).toMatchObject({
      planId: "pro",
      currentPeriodStart: FEB,
      currentPeriodEnd: MAR,
      periodCredits: 3000,
      nextRunAt: mid,
      periodGrantIds: ["g-a", "g-b"],
    });
    expect(next.intent).toEqual(
      intent(`sub:s-1:${FEB.toISOString()}:change2`, {
        prorate: { delta: 1310, expiresAt: MAR.getTime() },
        keepPeriodGrants: true,
      }),
    );
    // What the period is on, not the old plan's current figure (an updatePlan since applies next period).
    expect(changePlan(s, PRO, { when: "now", credits: "prorate" }, mid, 2000).intent?.prorate?.delta).toBe(655);
  });

  it("now + prorate across billing periods is a ValidationError", () => {
    expect(() =>
      changePlan(
        active(),
        plan({ id: "weekly", billingPeriod: "weekly" }),
        { when: "now", credits: "prorate" },
        mid,
        1000,
      ),
    ).toThrow(ValidationError);
  });

  it("now + prorate before the first period started: that period gets the new plan's allocation in full, its events kept", () => {
    const s = subscribe("s-1", "u-1", BASIC, { startAt: MAR }, FEB);
    const cancelled = cancel(s, { atPeriodEnd: true, credits: "keep" }, FEB) as Subscription;
    const next = changePlan(cancelled, PRO, { when: "now", credits: "prorate" }, FEB, 1000);
    expect(next.intent).toMatchObject({
      allocate: { amount: 3000, expiresAt: T("2024-04-01T00:00:00.000Z").getTime() },
      prorate: null,
    });
    expect(next.intent?.events?.map((e) => e.type)).toEqual(["subscription_cancelled"]);
    expect([next.periodCredits, next.nextRunAt]).toEqual([3000, MAR]);
  });

  it.each([
    ["keep", []],
    ["expire", ["g-a", "g-b"]],
  ] as const)("now + %s: a new cycle from now on the new plan, with its allocation", (credits, expired) => {
    const next = changePlan(
      active(),
      plan({ id: "weekly", billingPeriod: "weekly", creditsPerPeriod: 70 }),
      { when: "now", credits },
      mid,
      1000,
    );
    expect(next).toMatchObject({
      planId: "weekly",
      billingPeriod: "weekly",
      anchorAt: mid,
      periodIndex: 0,
      currentPeriodStart: mid,
      currentPeriodEnd: at(mid, 7),
      periodCredits: 70,
    });
    expect(next.intent).toEqual(
      intent(`sub:s-1:${mid.toISOString()}:change2`, {
        allocate: { amount: 70, expiresAt: at(mid, 7).getTime() },
        expireGrantIds: [...expired],
      }),
    );
  });
});

describe("cancel and resume", () => {
  const mid = at(FEB, 10);

  it("modes: at period end by default; expire applies to an immediate cancel only", () => {
    expect(cancelMode({})).toEqual({ atPeriodEnd: true, credits: "keep" });
    expect(cancelMode({ atPeriodEnd: false, credits: "expire" })).toEqual({ atPeriodEnd: false, credits: "expire" });
    expect(() => cancelMode({ credits: "expire" })).toThrow(ValidationError);
  });

  it("at period end: flagged, with one subscription_cancelled event on its own work; a second cancel changes nothing", () => {
    const next = cancel(active(), { atPeriodEnd: true, credits: "keep" }, mid) as Subscription;
    expect(next).toMatchObject({ status: "active", cancelAtPeriodEnd: true, canceledAt: mid, nextRunAt: mid });
    expect(next.intent).toMatchObject({
      key: `sub:s-1:${FEB.toISOString()}:cancel2`,
      keepPeriodGrants: true,
      allocate: null,
    });
    expect(next.intent?.events).toEqual([
      expect.objectContaining({ type: "subscription_cancelled", dedupeKey: "sub:s-1:cancelled:2" }),
    ]);
    expect(cancel(next, { atPeriodEnd: true, credits: "keep" }, mid)).toBeNull();
  });

  it("at period end of a period not started yet: the event rides on the work that period owes", () => {
    const s = subscribe("s-1", "u-1", BASIC, { startAt: MAR }, FEB);
    const next = cancel(s, { atPeriodEnd: true, credits: "keep" }, FEB) as Subscription;
    expect(next.intent?.allocate).toEqual(s.intent?.allocate);
    expect(next.intent?.events?.map((e) => e.type)).toEqual(["subscription_cancelled"]);
    expect(next.nextRunAt).toEqual(MAR);
  });

  it.each([
    ["keep", [], true],
    ["expire", ["g-a", "g-b"], false],
  ] as const)(
    "now, credits %s: ended, with subscription_cancelled and subscription_ended",
    (credits, expired, keep) => {
      const next = cancel(active(), { atPeriodEnd: false, credits }, mid) as Subscription;
      expect(next).toMatchObject({
        status: "canceled",
        canceledAt: mid,
        endedAt: mid,
        nextRunAt: mid,
        pendingPlanId: null,
      });
      expect(next.intent).toMatchObject({ expireGrantIds: [...expired], keepPeriodGrants: keep });
      expect(next.intent?.events?.map((e) => [e.type, e.dedupeKey])).toEqual([
        ["subscription_cancelled", "sub:s-1:cancelled:2"],
        ["subscription_ended", "sub:s-1:ended"],
      ]);
    },
  );

  it("resume undoes a cancel at period end and turns renewal on; with nothing to undo, nothing changes", () => {
    const cancelled = cancel(active(), { atPeriodEnd: true, credits: "keep" }, mid) as Subscription;
    expect(resume(cancelled)).toMatchObject({ cancelAtPeriodEnd: false, autoRenew: true, canceledAt: null });
    expect(resume(active(BASIC, { autoRenew: false }))).toMatchObject({ autoRenew: true });
    expect(resume(active())).toBeNull();
  });
});

describe("renewal at the period's end", () => {
  it("the cycle goes on: the next period, its allocation and the rollover of the ending plan", () => {
    const s = active(BASIC, { nextRunAt: MAR });
    const next = renew(s, BASIC, plan({ rollover: "cap", rolloverCap: 200 }), MAR);
    expect(next).toMatchObject({
      periodIndex: 1,
      currentPeriodStart: MAR,
      currentPeriodEnd: T("2024-04-01T00:00:00.000Z"),
      nextRunAt: MAR,
      periodCredits: 1000,
    });
    expect(next.intent).toEqual(
      intent(`sub:s-1:${MAR.toISOString()}`, {
        allocate: { amount: 1000, expiresAt: T("2024-04-01T00:00:00.000Z").getTime() },
        carry: {
          grantIds: ["g-a", "g-b"],
          periodEnd: MAR.getTime(),
          limit: 200,
          expiresAt: T("2024-04-01T00:00:00.000Z").getTime(),
        },
        // Due at the period's start: its entries are dated there however late the job runs.
        dueAt: MAR.getTime(),
      }),
    );
    expect(periodsSkipped(s, next)).toBe(0);
  });

  it("three months late: straight to the period containing now; the periods between are skipped, never allocated", () => {
    const s = active();
    const now = T("2024-05-15T00:00:00.000Z");
    const next = renew(s, BASIC, BASIC, now);
    expect([next.periodIndex, next.currentPeriodStart.toISOString()]).toEqual([3, "2024-05-01T00:00:00.000Z"]);
    expect(periodsSkipped(s, next)).toBe(2);
  });

  it("however late, moves to the period that contains now, after the one that ended, skipping none it could allocate", () => {
    const periods = fc.constantFrom("daily", "weekly", "monthly", "yearly") as fc.Arbitrary<Plan["billingPeriod"]>;
    fc.assert(
      fc.property(periods, fc.integer({ min: 0, max: 3 * 366 * DAY }), (billingPeriod, late) => {
        const p = plan({ billingPeriod });
        const s = subscribe("s-1", "u-1", p, { startAt: FEB }, FEB);
        const now = new Date(s.currentPeriodEnd.getTime() + late);
        const next = renew(s, p, p, now);
        expect(next.currentPeriodStart.getTime()).toBeLessThanOrEqual(now.getTime());
        expect(next.currentPeriodEnd.getTime()).toBeGreaterThan(now.getTime());
        expect(next.periodIndex).toBeGreaterThan(s.periodIndex);
        expect(periodsSkipped(s, next)).toBe(next.periodIndex - 1);
        // The period it moved to is allocated in full: it has not ended.
        expect(next.intent?.allocate?.amount).toBe(1000);
      }),
    );
  });

  it("onto a pending plan of another billing period: a new cycle from the old period's end", () => {
    const s = active(BASIC, { pendingPlanId: "weekly", pendingCredits: "expire" });
    const weekly = plan({ id: "weekly", billingPeriod: "weekly", creditsPerPeriod: 70, rollover: "all" });
    const next = renew(s, weekly, BASIC, at(MAR, 8));
    expect(next).toMatchObject({
      planId: "weekly",
      anchorAt: MAR,
      periodIndex: 1,
      currentPeriodStart: at(MAR, 7),
      pendingPlanId: null,
      pendingCredits: null,
    });
    expect(next.intent?.carry).toBeNull(); // credits "expire" at that switch
    expect(periodsSkipped(s, next)).toBe(1);
  });

  it("a subscription that does not renew ends at its period's end, owing subscription_ended", () => {
    const cancelled = active(BASIC, { cancelAtPeriodEnd: true });
    const lapsing = active(BASIC, { autoRenew: false });
    expect([renews(cancelled), renews(lapsing), renews(active())]).toEqual([false, false, true]);
    for (const [s, status, reason] of [
      [cancelled, "canceled", "cancelled"],
      [lapsing, "expired", "not_renewed"],
    ] as const) {
      const next = endAtPeriodEnd(s, at(MAR, 2));
      expect(next).toMatchObject({ status, endedAt: MAR, nextRunAt: at(MAR, 2) });
      expect(next.intent?.events).toEqual([
        expect.objectContaining({
          type: "subscription_ended",
          dedupeKey: "sub:s-1:ended",
          payload: expect.objectContaining({ status, reason }),
        }),
      ]);
    }
    expect(endWithoutPlan(active(), MAR).intent?.events?.[0]?.payload).toMatchObject({
      status: "expired",
      reason: "plan_missing",
    });
  });

  it("once its work is done: the period's grants, due again at the period's end (never once ended)", () => {
    const s = active(BASIC, { periodGrantIds: ["g-a"] });
    expect(intentDone(s, intent("k", { keepPeriodGrants: true }), ["g-c"])).toMatchObject({
      intent: null,
      periodGrantIds: ["g-a", "g-c"],
      nextRunAt: MAR,
    });
    expect(intentDone({ ...s, status: "canceled" }, intent("k", {}), ["g-c"])).toMatchObject({
      periodGrantIds: ["g-c"],
      nextRunAt: null,
    });
  });
});

describe("applyIntent: the account side of an intent", () => {
  let ids = 0;
  const newId = () => `n-${++ids}`;
  const grant = (id: string, remaining: number, expiresAt: Date, over: Partial<Grant> = {}): Grant => ({
    ...samples.grants,
    unit: null,
    id,
    userId: "u-1",
    amount: remaining,
    remaining,
    expiresAt,
    priority: 0,
    createdAt: FEB,
    expiredAmount: 0,
    closedAt: null,
    closedReason: null,
    scope: null,
    ...over,
  });
  const work = (grants: Grant[], now: Date) =>
    new AccountWork(
      "u-1",
      {
        account: {
          ...samples.accounts,
          units: null,
          userId: "u-1",
          balance: grants.reduce((n, g) => n + g.remaining, 0),
          reserved: 0,
          debt: 0,
          seq: 0,
          lastHash: null,
          lastKeyId: null,
          nextExpiryAt: null,
          alert: null,
        },
        grants,
        reservations: [],
        idempotent: null,
      },
      now,
      newId,
    );
  const meta = { idempotencyKey: "cm:sub:k", correlationId: "sub:k" };

  it("allocates, keys the first entry and records subscription_allocation", () => {
    const s = subscribe("s-1", "u-1", BASIC, { startAt: FEB }, FEB);
    const w = work([], FEB);
    const created = applyIntent(w, s, s.intent as NonNullable<Subscription["intent"]>, meta, null);
    expect(created).toHaveLength(1);
    expect(w.entries.map((e) => [e.type, e.amount, e.idempotencyKey])).toEqual([["add", 1000, "cm:sub:k"]]);
    expect(w.events).toEqual([
      expect.objectContaining({ type: "subscription_allocation", payload: expect.objectContaining({ credits: 1000 }) }),
    ]);
  });

  it("rolls over what the period's grants had unspent at its end, capped, then allocates", () => {
    const s = active(BASIC, { periodGrantIds: ["g-a", "g-b"] });
    const next = renew(s, BASIC, plan({ rollover: "cap", rolloverCap: 250 }), MAR);
    const it = next.intent as NonNullable<Subscription["intent"]>;
    expect(intentGrantIds(next, it)).toEqual(["g-a", "g-b"]);
    const w = work([grant("g-a", 200, MAR), grant("g-b", 100, MAR), grant("g-other", 50, at(MAR, 1))], MAR);
    const created = applyIntent(w, next, it, meta, null);
    expect(w.entries.map((e) => [e.type, e.amount])).toEqual([
      ["expire", 300],
      ["add", 250],
      ["add", 1000],
    ]);
    expect(created).toHaveLength(2);
    expect(w.entries.slice(1).map((e) => e.idempotencyKey)).toEqual([null, null]); // only the first entry carries the key
  });

  it("a carried grant expired by someone else since it was read: ExpiryMoved (read again)", () => {
    const s = active(BASIC, { periodGrantIds: ["g-a"] });
    const next = renew(s, BASIC, plan({ rollover: "all" }), MAR);
    const closed = grant("g-a", 0, MAR, { expiredAmount: 200, closedAt: MAR, closedReason: "expired" });
    const w = work([], MAR);
    w.include([closed]);
    expect(() => applyIntent(w, next, next.intent as NonNullable<Subscription["intent"]>, meta, null)).toThrow(
      ExpiryMoved,
    );
    // With what committed work showed (200 expired, all unspent at the end), it moves 200.
    const w2 = work([], MAR);
    w2.include([closed]);
    applyIntent(
      w2,
      next,
      next.intent as NonNullable<Subscription["intent"]>,
      meta,
      new Map([["g-a", { expired: 200, atExpiry: 200 }]]),
    );
    expect(w2.entries.map((e) => [e.type, e.amount])).toEqual([
      ["add", 200],
      ["add", 1000],
    ]);
  });

  it("a prorated downgrade removes from the period's unspent credits, never more than they have", () => {
    const s = active(PRO, { periodGrantIds: ["g-a"] });
    const next = changePlan(s, BASIC, { when: "now", credits: "prorate" }, FEB, 3000);
    const it = next.intent as NonNullable<Subscription["intent"]>;
    expect(it.prorate?.delta).toBe(-2000);
    expect(intentGrantIds(next, it)).toEqual(["g-a"]);
    const w = work([grant("g-a", 1500, MAR)], FEB);
    applyIntent(w, next, it, meta, null);
    expect(w.entries.map((e) => [e.type, e.amount])).toEqual([["void", 1500]]);
    expect(w.account.balance).toBe(0);
  });

  it("nothing to move still leaves the key's record: an add of 0, with the intent's events", () => {
    const s = cancel(active(), { atPeriodEnd: true, credits: "keep" }, at(FEB, 3)) as Subscription;
    const w = work([], at(FEB, 3));
    expect(applyIntent(w, s, s.intent as NonNullable<Subscription["intent"]>, meta, null)).toEqual([]);
    expect(w.entries.map((e) => [e.type, e.amount, e.description])).toEqual([["add", 0, "subscription cancelled"]]);
    expect(w.events.map((e) => e.type)).toEqual(["subscription_cancelled"]);
  });
});

describe("allowances: scoped credits a plan allocates every period (docs/subscriptions.md, Allowances)", () => {
  const IMAGES = { features: ["images"] };
  const VIDEO = { features: ["video"] };
  const withImages = plan({ id: "img", creditsPerPeriod: 1000, allowances: [{ scope: IMAGES, credits: 290 }] });
  let ids = 0;
  const newId = () => `a-${++ids}`;
  const grant = (id: string, remaining: number, expiresAt: Date, scope: Grant["scope"] = null): Grant => ({
    ...samples.grants,
    unit: null,
    id,
    userId: "u-1",
    amount: remaining,
    remaining,
    expiresAt,
    priority: 0,
    createdAt: FEB,
    expiredAmount: 0,
    closedAt: null,
    closedReason: null,
    scope,
  });
  const work = (grants: Grant[], now: Date) =>
    new AccountWork(
      "u-1",
      {
        account: {
          ...samples.accounts,
          units: null,
          userId: "u-1",
          balance: grants.reduce((n, g) => n + g.remaining, 0),
          reserved: 0,
          debt: 0,
          seq: 0,
          lastHash: null,
          lastKeyId: null,
          nextExpiryAt: null,
          alert: null,
          scoped: grants.some((g) => g.scope !== null),
        },
        grants,
        reservations: [],
        idempotent: null,
      },
      now,
      newId,
    );
  const meta = { idempotencyKey: "cm:sub:k", correlationId: "sub:k" };
  const created = (w: AccountWork) =>
    w.entries
      .filter((e) => e.type === "add" && e.amount > 0)
      .map((e) => [e.amount, w.getGrant(e.grants[0]?.grantId ?? "")?.scope ?? null]);

  it("each period allocates every allowance as a scoped grant beside the general credits, expiring with them", () => {
    const p = plan({
      validityDays: 7,
      allowances: [
        { scope: IMAGES, credits: 100 },
        { scope: VIDEO, credits: 5 },
      ],
    });
    expect(allocation(p, { start: FEB, end: MAR }, FEB)).toEqual({
      amount: 1000,
      expiresAt: at(FEB, 7).getTime(),
      allowances: [
        { scope: IMAGES, amount: 100 },
        { scope: VIDEO, amount: 5 },
      ],
    });
    // A plan with allowances only (no general credits) still allocates them; born expired: nothing.
    const only = plan({ creditsPerPeriod: 0, allowances: [{ scope: IMAGES, credits: 100 }] });
    expect(allocation(only, { start: FEB, end: MAR }, FEB)?.allowances).toEqual([{ scope: IMAGES, amount: 100 }]);
    expect(allocation(only, { start: FEB, end: MAR }, MAR)).toBeNull();

    const s = subscribe("s-1", "u-1", withImages, { startAt: FEB }, FEB);
    expect(s.periodAllowances).toEqual([{ scope: IMAGES, credits: 290 }]);
    const w = work([], FEB);
    const ids2 = applyIntent(w, s, s.intent as NonNullable<Subscription["intent"]>, meta, null);
    expect(ids2).toHaveLength(2);
    expect(created(w)).toEqual([
      [1000, null],
      [290, IMAGES],
    ]);
    // An images spend draws the allowance first; a chat spend never touches it.
    expect(w.availableFor({ spender: null, feature: "images" })).toBe(1290);
    expect(w.availableFor({ spender: null, feature: "chat" })).toBe(1000);
  });

  it("a renewal rolls each allowance over on its own: the plan's policy, or the allowance's own, into a grant of its scope", () => {
    const p = plan({
      rollover: "cap",
      rolloverCap: 400,
      allowances: [
        { scope: IMAGES, credits: 290 },
        { scope: VIDEO, credits: 50, rollover: "none" },
      ],
    });
    const s = active(p, { periodGrantIds: ["g", "g-img", "g-vid"] });
    const next = renew(s, p, p, MAR);
    expect(next.intent?.carry).toEqual({
      grantIds: ["g", "g-img", "g-vid"],
      periodEnd: MAR.getTime(),
      limit: 400,
      expiresAt: T("2024-04-01T00:00:00.000Z").getTime(),
      // The plan's cap for images (its policy inherited), none for video (its own).
      allowances: [{ scope: IMAGES, limit: 400 }],
    });
    const w = work([grant("g", 700, MAR), grant("g-img", 250, MAR, IMAGES), grant("g-vid", 30, MAR, VIDEO)], MAR);
    applyIntent(w, next, next.intent as NonNullable<Subscription["intent"]>, meta, null);
    // The grants that roll are closed here (700 + 250); video's, which does not roll, expires by the job.
    expect(w.entries[0]).toMatchObject({ type: "expire", amount: 950 });
    expect(created(w)).toEqual([
      [400, null], // general: 700 unspent, capped at 400
      [250, IMAGES], // images: all 250 (under the cap), still images-only
      [1000, null],
      [290, IMAGES],
      [50, VIDEO],
    ]);
    // General "none" with an allowance that rolls: only the allowance moves.
    const q = plan({ rollover: "none", allowances: [{ scope: IMAGES, credits: 290, rollover: { cap: 100 } }] });
    const carry = renew(active(q, { periodGrantIds: ["g", "g-img"] }), q, q, MAR).intent?.carry;
    expect(carry).toMatchObject({ limit: 0, allowances: [{ scope: IMAGES, limit: 100 }] });
    const w2 = work([grant("g", 700, MAR), grant("g-img", 250, MAR, IMAGES)], MAR);
    const n2 = renew(active(q, { periodGrantIds: ["g", "g-img"] }), q, q, MAR);
    applyIntent(w2, n2, n2.intent as NonNullable<Subscription["intent"]>, meta, null);
    expect(created(w2)).toEqual([
      [100, IMAGES],
      [1000, null],
      [290, IMAGES],
    ]);
    // Nothing rolls anywhere: no carry at all, as before allowances.
    const none = plan({ allowances: [{ scope: IMAGES, credits: 1 }] });
    expect(rolloverCarry(active(none), none, { end: at(MAR, 31) })).toBeNull();
  });

  it("a general rollover never takes an allowance's credits, nor an allowance another's", () => {
    const p = plan({ rollover: "all", allowances: [{ scope: VIDEO, credits: 10, rollover: "all" }] });
    const s = active(p, { periodGrantIds: ["g", "g-img", "g-vid"] });
    const next = renew(s, p, p, MAR);
    // g-img: an images grant of an allowance the plan no longer has (updatePlan since): not carried.
    const w = work([grant("g", 5, MAR), grant("g-img", 250, MAR, IMAGES), grant("g-vid", 7, MAR, VIDEO)], MAR);
    applyIntent(w, next, next.intent as NonNullable<Subscription["intent"]>, meta, null);
    expect(created(w).slice(0, 2)).toEqual([
      [5, null],
      [7, VIDEO],
    ]);
    expect(w.getGrant("g-img")?.closedAt).toBeNull(); // left to the expiry job
  });

  it("a prorated change prorates each allowance: up, down, added and removed ones, by scope", () => {
    const from = plan({
      id: "a",
      allowances: [
        { scope: IMAGES, credits: 290 },
        { scope: VIDEO, credits: 29 },
      ],
    });
    const to = plan({ id: "b", allowances: [{ scope: { features: ["images"] }, credits: 580 }] });
    const s = active(from, { periodGrantIds: ["g", "g-img", "g-vid"] });
    const tenIn = at(FEB, 10); // 19 of 29 days left
    const next = changePlan(s, to, { when: "now", credits: "prorate" }, tenIn, 1000, s.periodAllowances ?? []);
    expect(next.periodAllowances).toEqual([{ scope: IMAGES, credits: 580 }]);
    expect(next.intent?.prorate).toEqual({
      delta: 0,
      expiresAt: MAR.getTime(),
      allowances: [
        { scope: IMAGES, delta: 190 }, // 290 × 19/29
        { scope: VIDEO, delta: -19 }, // −29 × 19/29
      ],
    });
    const w = work([grant("g", 1000, MAR), grant("g-img", 200, MAR, IMAGES), grant("g-vid", 25, MAR, VIDEO)], tenIn);
    applyIntent(w, next, next.intent as NonNullable<Subscription["intent"]>, meta, null);
    expect(w.entries.map((e) => [e.type, e.amount])).toEqual([
      ["add", 190],
      ["void", 19],
    ]);
    expect(w.getGrant("g-vid")?.remaining).toBe(6);
    expect(w.getGrant("g")?.remaining).toBe(1000); // the general credits untouched
    // A general downgrade removes from the unscoped grants only.
    const down = changePlan(
      active(withImages, { periodGrantIds: ["g", "g-img"] }),
      plan({ id: "small", creditsPerPeriod: 0, allowances: [{ scope: IMAGES, credits: 290 }] }),
      { when: "now", credits: "prorate" },
      FEB,
      1000,
      [{ scope: IMAGES, credits: 290 }],
    );
    expect(down.intent?.prorate).toEqual({ delta: -1000, expiresAt: MAR.getTime() });
    const w2 = work([grant("g", 600, MAR), grant("g-img", 290, MAR, IMAGES)], FEB);
    applyIntent(w2, down, down.intent as NonNullable<Subscription["intent"]>, meta, null);
    expect(w2.getGrant("g")?.remaining).toBe(0);
    expect(w2.getGrant("g-img")?.remaining).toBe(290);
  });

  it("month ends: a subscription from January 31 allocates each allowance on every clamped period start", () => {
    const JAN31 = T("2025-01-31T00:00:00.000Z");
    const p = plan({ creditsPerPeriod: 0, allowances: [{ scope: IMAGES, credits: 28 }] });
    let s = subscribe("s-1", "u-1", p, { startAt: JAN31 }, JAN31);
    s = intentDone(s, s.intent as NonNullable<Subscription["intent"]>, ["g-1"]);
    const starts: string[] = [];
    for (let i = 0; i < 3; i++) {
      s = renew(s, p, p, s.currentPeriodEnd);
      expect(s.intent?.allocate).toEqual({
        amount: 0,
        expiresAt: s.currentPeriodEnd.getTime(),
        allowances: [{ scope: IMAGES, amount: 28 }],
      });
      starts.push(s.currentPeriodStart.toISOString().slice(0, 10));
      s = intentDone(s, s.intent as NonNullable<Subscription["intent"]>, [`g-${i + 2}`]);
    }
    expect(starts).toEqual(["2025-02-28", "2025-03-31", "2025-04-30"]);
    // Prorated from the last day of a 28-day February: 1 day of 28 left of the new allowance.
    const feb = {
      ...active(p),
      currentPeriodStart: T("2025-02-28T00:00:00.000Z"),
      currentPeriodEnd: T("2025-03-31T00:00:00.000Z"),
    };
    const more = plan({ id: "more", creditsPerPeriod: 0, allowances: [{ scope: IMAGES, credits: 59 }] });
    const c = changePlan(feb, more, { when: "now", credits: "prorate" }, T("2025-03-30T00:00:00.000Z"), 0, [
      { scope: IMAGES, credits: 28 },
    ]);
    expect(c.intent?.prorate?.allowances).toEqual([{ scope: IMAGES, delta: 1 }]); // 31 × 1/31
  });

  it("cancel with expire voids the allowances' grants with the rest of the period's", () => {
    const s = active(withImages, { periodGrantIds: ["g", "g-img"] });
    const c = cancel(s, { atPeriodEnd: false, credits: "expire" }, at(FEB, 3)) as Subscription;
    expect(c.intent?.expireGrantIds).toEqual(["g", "g-img"]);
    const w = work([grant("g", 600, MAR), grant("g-img", 290, MAR, IMAGES)], at(FEB, 3));
    applyIntent(w, c, c.intent as NonNullable<Subscription["intent"]>, meta, null);
    expect(w.entries[0]).toMatchObject({ type: "expire", amount: 890 });
  });
});
