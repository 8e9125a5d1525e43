import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  calendarWindow,
  countSpend,
  cycleWindow,
  limitStatuses,
  replaceLimits,
  tightestLimit,
  trueUpHold,
  withLimit,
  withoutLimit,
} from "../src/core/domain/limits.js";
import { inScope, outOfScope, spendOrder } from "../src/core/domain/scope.js";
import { SpendLimitError, ValidationError } from "../src/core/errors.js";
import type { Grant } from "../src/core/models/index.js";
import { GrantScope, SetLimitsInput, SpendLimitInput } from "../src/core/models/limits.js";
import type { SpendLimit } from "../src/core/models/limits.js";

// Pure window arithmetic: the instants are inputs, not dates that must stay in the future.
const t = (s: string) => new Date(s).getTime();
const iso = (ms: number) => new Date(ms).toISOString();
const win = (w: { start: number; end: number }) => [iso(w.start), iso(w.end)];

describe("calendar windows (UTC)", () => {
  it("day, week (Monday to Monday), month and year", () => {
    expect(win(calendarWindow("day", t("2024-03-10T23:59:59.999Z")))).toEqual([
      "2024-03-10T00:00:00.000Z",
      "2024-03-11T00:00:00.000Z",
    ]);
    // 2024-03-10 is a Sunday: its week started on Monday the 4th.
    expect(win(calendarWindow("week", t("2024-03-10T12:00:00Z")))).toEqual([
      "2024-03-04T00:00:00.000Z",
      "2024-03-11T00:00:00.000Z",
    ]);
    expect(win(calendarWindow("week", t("2024-03-11T00:00:00Z")))[0]).toBe("2024-03-11T00:00:00.000Z");
    expect(win(calendarWindow("month", t("2024-12-31T23:00:00Z")))).toEqual([
      "2024-12-01T00:00:00.000Z",
      "2025-01-01T00:00:00.000Z",
    ]);
    expect(win(calendarWindow("year", t("2024-06-01T00:00:00Z")))).toEqual([
      "2024-01-01T00:00:00.000Z",
      "2025-01-01T00:00:00.000Z",
    ]);
  });

  it("month ends and leap years: February has 29 days in 2024, 28 in 2023 and 2100, 29 in 2000", () => {
    const feb = (y: number) => {
      const w = calendarWindow("month", t(`${y}-02-15T00:00:00Z`));
      return (w.end - w.start) / 86_400_000;
    };
    expect([feb(2023), feb(2024), feb(2100), feb(2000)]).toEqual([28, 29, 28, 29]);
    expect(win(calendarWindow("month", t("2024-02-29T12:00:00Z")))).toEqual([
      "2024-02-01T00:00:00.000Z",
      "2024-03-01T00:00:00.000Z",
    ]);
    const leap = calendarWindow("year", t("2024-02-29T00:00:00Z"));
    expect((leap.end - leap.start) / 86_400_000).toBe(366);
  });

  it("every n units, counted from 1970 (weeks from Monday 1969-12-29)", () => {
    expect(win(calendarWindow({ every: 3, unit: "month" }, t("2024-05-20T00:00:00Z")))).toEqual([
      "2024-04-01T00:00:00.000Z",
      "2024-07-01T00:00:00.000Z",
    ]);
    expect(win(calendarWindow({ every: 2, unit: "week" }, t("1969-12-29T00:00:00Z")))).toEqual([
      "1969-12-29T00:00:00.000Z",
      "1970-01-12T00:00:00.000Z",
    ]);
    expect(win(calendarWindow({ every: 10, unit: "year" }, t("2024-01-01T00:00:00Z")))[0]).toBe(
      "2020-01-01T00:00:00.000Z",
    );
  });

  it("property: every window contains its instant, starts at 00:00Z and follows the previous one", () => {
    const periods = fc.oneof(
      fc.constantFrom("day", "week", "month", "year" as const),
      fc.record({
        every: fc.integer({ min: 1, max: 13 }),
        unit: fc.constantFrom("day", "week", "month", "year" as const),
      }),
    );
    fc.assert(
      fc.property(periods, fc.integer({ min: -5e12, max: 5e12 }), (period, at) => {
        const w = calendarWindow(period, at);
        expect(w.start).toBeLessThanOrEqual(at);
        expect(w.end).toBeGreaterThan(at);
        expect(w.start % 86_400_000 === 0).toBe(true);
        // Contiguous: the window that contains the end starts there, and the one before ends at the start.
        expect(calendarWindow(period, w.end).start).toBe(w.end);
        expect(calendarWindow(period, w.start - 1).end).toBe(w.start);
      }),
    );
  });

  it("the subscription-period option follows the cycle's anchor (Jan 31 → Feb 29 in a leap year)", () => {
    const cycle = { anchorAt: t("2024-01-31T10:00:00Z"), billingPeriod: "monthly" as const };
    expect(win(cycleWindow(cycle, t("2024-02-15T00:00:00Z")))).toEqual([
      "2024-01-31T10:00:00.000Z",
      "2024-02-29T10:00:00.000Z",
    ]);
    expect(win(cycleWindow(cycle, t("2024-03-01T00:00:00Z")))).toEqual([
      "2024-02-29T10:00:00.000Z",
      "2024-03-31T10:00:00.000Z",
    ]);
  });
});

const limit = (over: Partial<SpendLimit>): SpendLimit => ({
  spender: null,
  feature: null,
  amount: 100,
  period: "month",
  cycle: null,
  since: 0,
  used: 0,
  windowStart: null,
  ...over,
});
const none = { spender: null, feature: null };
const alice = { spender: "alice", feature: null };
const aliceImages = { spender: "alice", feature: "images" };
const now = t("2024-05-20T12:00:00Z");

describe("spend limits", () => {
  it("the tightest applicable limit wins; others' spenders and features do not apply", () => {
    const limits = [
      limit({ amount: 1000 }),
      limit({ spender: "alice", amount: 300 }),
      limit({ spender: "bob", amount: 5 }),
      limit({ feature: "images", amount: 50, period: "day" }),
    ];
    expect(tightestLimit(limits, alice, now)?.left).toBe(300);
    expect(tightestLimit(limits, aliceImages, now)?.left).toBe(50);
    expect(tightestLimit(limits, none, now)?.left).toBe(1000);
    expect(tightestLimit([limit({ spender: "bob" })], alice, now)).toBeNull();
  });

  it("a spend that does not fit is refused with the limit and its reset time; one that fits is counted on every applicable limit", () => {
    const limits = [limit({ amount: 1000 }), limit({ spender: "alice", amount: 300 })];
    const first = countSpend(limits, alice, 250, now);
    expect(first.limits.map((l) => l.used)).toEqual([250, 250]);
    expect(limits.map((l) => l.used)).toEqual([0, 0]); // the given list is not changed
    let error: unknown;
    try {
      countSpend(first.limits, alice, 51, now);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(SpendLimitError);
    expect((error as SpendLimitError).code).toBe("SPEND_LIMIT_EXCEEDED");
    expect((error as SpendLimitError).details).toMatchObject({
      requested: 51,
      used: 250,
      remaining: 50,
      resetsAt: "2024-06-01T00:00:00.000Z",
      limit: { spender: "alice", amount: 300, period: "month" },
    });
    // Bob is under the account's limit only.
    expect(countSpend(first.limits, { spender: "bob", feature: null }, 700, now).limits.map((l) => l.used)).toEqual([
      950, 250,
    ]);
  });

  it("a window that ended counts as 0: the next month starts again", () => {
    const spent = countSpend([limit({ amount: 100 })], none, 100, now).limits;
    expect(() => countSpend(spent, none, 1, now)).toThrow(SpendLimitError);
    const june = t("2024-06-01T00:00:00Z");
    const next = countSpend(spent, none, 100, june).limits;
    expect(next[0]).toMatchObject({ used: 100, windowStart: june });
  });

  it("a limit of 0 refuses every spend it applies to (a disabled spender)", () => {
    const limits = [limit({ spender: "mallory", amount: 0 })];
    expect(() => countSpend(limits, { spender: "mallory", feature: null }, 1, now)).toThrow(SpendLimitError);
    expect(countSpend(limits, alice, 1, now).limits).toEqual(limits);
  });

  it("a forced count (usage already delivered) passes the limit and says so", () => {
    const out = countSpend([limit({ amount: 100, used: 90, windowStart: t("2024-05-01T00:00:00Z") })], none, 30, now, {
      force: true,
    });
    expect(out.over).toBe(true);
    expect(out.limits[0]?.used).toBe(120);
    expect(out.crossed.map((c) => c.level)).toEqual(["reached"]);
  });

  it("crossing 80 % and 100 % is edge-triggered", () => {
    let limits = [limit({ amount: 100 })];
    const levels: string[] = [];
    for (const amount of [50, 29, 1, 10, 10, 0]) {
      const out = countSpend(limits, none, amount, now);
      levels.push(out.crossed.map((c) => c.level).join() || "-");
      limits = out.limits;
    }
    expect(levels).toEqual(["-", "-", "warning", "-", "reached", "-"]);
  });

  it("limit notifications: each threshold once per window; a released hold does not re-arm it; a new window does", () => {
    const levels = (out: { crossed: readonly { level: string }[] }) => out.crossed.map((c) => c.level).join() || "-";
    const placed = t("2024-05-20T11:00:00Z");
    // A hold of 85 takes the limit past 80 %: sent once, with the window it counted in.
    const held = countSpend([limit({ amount: 100, alerted: null })], alice, 85, placed);
    expect(levels(held)).toBe("warning");
    expect(held.crossed[0]).toMatchObject({
      used: 85,
      windowStart: t("2024-05-01T00:00:00Z"),
      resetsAt: t("2024-06-01T00:00:00Z"),
    });
    expect(held.limits[0]?.alerted).toBe("warning");
    // Released: the count goes back to 0, the threshold stays sent for the window (no flapping).
    const released = trueUpHold(held.limits, alice, 85, 0, placed, now);
    expect(released.limits[0]).toMatchObject({ used: 0, alerted: "warning" });
    const again = countSpend(released.limits, alice, 90, now);
    expect(levels(again)).toBe("-");
    // 100 % was not sent yet: the spend that reaches it sends it, once.
    const full = countSpend(again.limits, alice, 10, now);
    expect(levels(full)).toBe("reached");
    expect(levels(countSpend(trueUpHold(full.limits, alice, 10, 0, now, now).limits, alice, 10, now))).toBe("-");
    // The next window re-arms both; one spend past both sends both, in order.
    const june = t("2024-06-02T00:00:00Z");
    expect(levels(countSpend(full.limits, alice, 100, june))).toBe("warning,reached");
  });

  it("limit notifications: a limit whose amount changes mid-window re-arms the thresholds its count is below", () => {
    const set = replaceLimits(null, [{ spender: "alice", amount: 100, period: "month" }], null, 0);
    expect(set[0]?.alerted).toBeNull();
    const spent = countSpend(set, alice, 90, now).limits;
    expect(spent[0]?.alerted).toBe("warning");
    // The same amount again: nothing re-armed.
    const same = replaceLimits(spent, [{ spender: "alice", amount: 100, period: "month" }], null, 0);
    expect(same[0]?.alerted).toBe("warning");
    expect(countSpend(same, alice, 1, now).crossed).toEqual([]);
    // Raised to 200: 91 is below 80 % of it, so 80 % is sent again when a spend reaches 160.
    const raised = replaceLimits(same, [{ spender: "alice", amount: 200, period: "month" }], null, 0);
    expect(raised[0]?.alerted).toBeNull();
    expect(countSpend(raised, alice, 68, now).crossed).toEqual([]);
    expect(countSpend(raised, alice, 70, now).crossed.map((c) => c.level)).toEqual(["warning"]);
    // Lowered to 95 with 90 counted: 80 % stays sent, 100 % is sent by the spend that reaches it.
    const lowered = replaceLimits(spent, [{ spender: "alice", amount: 95, period: "month" }], null, 0);
    expect(lowered[0]?.alerted).toBe("warning");
    expect(countSpend(lowered, alice, 5, now).crossed.map((c) => c.level)).toEqual(["reached"]);
  });

  it("limit notifications: a limit stored before schema version 11 (no alerted) counts the thresholds its count is past as sent", () => {
    const stored = limit({ amount: 100, used: 85, windowStart: t("2024-05-01T00:00:00Z") });
    expect(stored.alerted).toBeUndefined();
    const out = countSpend([stored], none, 10, now);
    expect(out.crossed).toEqual([]);
    expect(out.limits[0]?.alerted).toBe("warning");
    expect(countSpend(out.limits, none, 5, now).crossed.map((c) => c.level)).toEqual(["reached"]);
  });

  it("limit notifications, property: whatever the spends and releases in one window, each threshold is sent exactly once if the count ever reached it, else never", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 500 }),
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 200 })), { maxLength: 30 }),
        (amount, steps) => {
          let limits = [limit({ amount, alerted: null })];
          const sent: string[] = [];
          let most = 0;
          for (const [release, n] of steps) {
            const used = limits[0]?.used ?? 0;
            const out = release
              ? trueUpHold(limits, none, Math.min(n, used), 0, now, now)
              : countSpend(limits, none, n, now, { force: true });
            for (const c of out.crossed) {
              sent.push(c.level);
              expect(c.used * 5 >= amount * 4).toBe(true);
              if (c.level === "reached") expect(c.used >= amount).toBe(true);
            }
            limits = out.limits;
            most = Math.max(most, limits[0]?.used ?? 0);
          }
          // Each threshold exactly once when the window's count ever reached it, never otherwise; 80 % first.
          const expected = [most * 5 >= amount * 4 ? "warning" : null, most >= amount ? "reached" : null];
          expect(sent).toEqual(expected.filter((l) => l !== null));
        },
      ),
    );
  });

  it("holds are trued up at commit: the unspent part goes back while the window is the same; an excess counts even past the limit", () => {
    const placed = t("2024-05-20T11:00:00Z");
    const held = countSpend([limit({ amount: 100 })], alice, 60, placed).limits;
    expect(trueUpHold(held, alice, 60, 20, placed, now).limits[0]?.used).toBe(20);
    expect(trueUpHold(held, alice, 60, 0, placed, now).limits[0]?.used).toBe(0);
    const over = trueUpHold(held, alice, 60, 130, placed, now);
    expect(over.limits[0]?.used).toBe(130);
    expect(over.over).toBe(true);
    // Committed after the month ended: the hold counted in May and May stays as it was.
    const june = t("2024-06-02T00:00:00Z");
    expect(trueUpHold(held, alice, 60, 10, placed, june).limits[0]).toEqual(held[0]);
  });

  it("a limit changed mid-window keeps what the window counted", () => {
    const spent = countSpend(
      replaceLimits(null, [{ spender: "alice", amount: 100, period: "month" }], null, 0),
      alice,
      80,
      now,
    );
    const lowered = replaceLimits(spent.limits, [{ spender: "alice", amount: 50, period: "month" }], null, 0);
    expect(lowered[0]).toMatchObject({ amount: 50, used: 80 });
    expect(tightestLimit(lowered, alice, now)?.left).toBe(0);
    const raised = replaceLimits(
      lowered,
      [{ spender: "alice", amount: 200, period: { every: 1, unit: "month" } }],
      null,
      0,
    );
    expect(tightestLimit(raised, alice, now)?.left).toBe(120);
    // Another window is another limit: it starts from 0.
    const daily = replaceLimits(raised, [{ spender: "alice", amount: 200, period: "day" }], null, 0);
    expect(daily[0]?.used).toBe(0);
  });

  it("setLimit changes the limit with its key in place (keeping its count) or adds it; the others stay as they were", () => {
    const two = replaceLimits(
      null,
      [
        { spender: "alice", amount: 100, period: "month" },
        { feature: "images", amount: 40, period: "day" },
      ],
      null,
      0,
    );
    const spent = countSpend(two, { spender: "alice", feature: "images" }, 30, now).limits;
    const raised = withLimit(spent, { spender: "alice", amount: 150, period: { every: 1, unit: "month" } }, null, 0);
    expect(raised).toHaveLength(2);
    expect(raised[0]).toMatchObject({ spender: "alice", amount: 150, used: 30 }); // in place, count kept
    expect(raised[1]).toBe(spent[1]); // untouched: the same object
    const added = withLimit(raised, { spender: "alice", amount: 10, period: "day" }, null, 0); // another window
    expect(added.map((l) => [l.spender, l.feature, l.amount, l.used])).toEqual([
      ["alice", null, 150, 30],
      [null, "images", 40, 30],
      ["alice", null, 10, 0],
    ]);
    expect(spent).toHaveLength(2); // the input list is not changed
    const full = replaceLimits(
      null,
      Array.from({ length: 100 }, (_, i) => ({ spender: `m${i}`, amount: 1, period: "day" as const })),
      null,
      0,
    );
    expect(() => withLimit(full, { spender: "one-more", amount: 1, period: "day" }, null, 0)).toThrow(ValidationError);
    expect(withLimit(full, { spender: "m7", amount: 2, period: "day" }, null, 0)[7]?.amount).toBe(2); // a change still fits
  });

  it("a subscription limit needs a cycle; a moved cycle starts a new window", () => {
    expect(() => replaceLimits(null, [{ amount: 5, resetsWith: "subscription" }], null, 0)).toThrow(ValidationError);
    const cycle = { anchorAt: t("2024-05-10T00:00:00Z"), billingPeriod: "monthly" as const };
    const set = replaceLimits(null, [{ amount: 5, resetsWith: "subscription" }], cycle, 0);
    const spent = countSpend(set, none, 5, now).limits;
    expect(spent[0]?.windowStart).toBe(t("2024-05-10T00:00:00Z"));
    expect(replaceLimits(spent, [{ amount: 5, resetsWith: "subscription" }], cycle, 0)[0]?.used).toBe(5);
    const moved = { anchorAt: t("2024-05-20T00:00:00Z"), billingPeriod: "monthly" as const };
    expect(replaceLimits(spent, [{ amount: 5, resetsWith: "subscription" }], moved, 0)[0]?.used).toBe(0);
    // What it counts from: kept with the same cycle, from the new seq once the cycle moved.
    expect(replaceLimits(spent, [{ amount: 5, resetsWith: "subscription" }], cycle, 9)[0]?.since).toBe(0);
    expect(replaceLimits(spent, [{ amount: 5, resetsWith: "subscription" }], moved, 9)[0]?.since).toBe(9);
  });

  it("removeLimit removes exactly the spender and feature given (and the window, when given)", () => {
    const limits = replaceLimits(
      null,
      [
        { amount: 1000, period: "month" },
        { spender: "alice", amount: 100, period: "month" },
        { spender: "alice", amount: 10, period: "day" },
        { spender: "alice", feature: "images", amount: 5, period: "day" },
      ],
      null,
      0,
    );
    expect(withoutLimit(limits, { spender: "alice" }).map((l) => l.amount)).toEqual([1000, 5]);
    expect(withoutLimit(limits, { spender: "alice", period: "day" }).map((l) => l.amount)).toEqual([1000, 100, 5]);
    expect(withoutLimit(limits, {}).map((l) => l.amount)).toEqual([100, 10, 5]);
  });

  it("limitStatuses reports the window now and what is left", () => {
    const spent = countSpend([limit({ spender: "alice", amount: 100 })], alice, 30, now).limits;
    expect(limitStatuses(spent, now)[0]).toMatchObject({
      used: 30,
      remaining: 70,
      resetsWith: null,
      windowStart: new Date("2024-05-01T00:00:00Z"),
      resetsAt: new Date("2024-06-01T00:00:00Z"),
    });
    expect(limitStatuses(spent, t("2024-06-01T00:00:00Z"))[0]?.used).toBe(0);
  });

  it("the models refuse a limit without a window, a duplicate key and a negative amount", () => {
    expect(SpendLimitInput.safeParse({ amount: 5 }).success).toBe(false);
    expect(SpendLimitInput.safeParse({ amount: 5, period: "month", resetsWith: "subscription" }).success).toBe(false);
    expect(SpendLimitInput.safeParse({ amount: -1, period: "month" }).success).toBe(false);
    expect(SpendLimitInput.safeParse({ amount: 5, period: { every: 0, unit: "day" } }).success).toBe(false);
    expect(
      SetLimitsInput.safeParse([
        { spender: "a", amount: 5, period: "month" },
        { spender: "a", amount: 6, period: { every: 1, unit: "month" } },
      ]).success,
    ).toBe(false);
    expect(
      SetLimitsInput.safeParse([
        { spender: "a", amount: 5, period: "month" },
        { amount: 6, period: "month" },
      ]).success,
    ).toBe(true);
    expect(GrantScope.safeParse({}).success).toBe(false);
  });
});

const grant = (id: string, over: Partial<Grant> & { scope?: GrantScope }): Grant & { scope?: GrantScope } => ({
  id,
  userId: "u",
  amount: 10,
  remaining: 10,
  expiresAt: null,
  priority: 0,
  source: "manual",
  sourceRef: null,
  description: null,
  metadata: null,
  createdAt: new Date(now - 1000),
  expiredAmount: 0,
  closedAt: null,
  closedReason: null,
  ...over,
});

describe("scoped burn-down", () => {
  it("a scope matches only the features and spenders it names", () => {
    expect(inScope(null, none)).toBe(true);
    expect(inScope({ features: ["images"] }, aliceImages)).toBe(true);
    expect(inScope({ features: ["images"] }, alice)).toBe(false);
    expect(inScope({ spenders: ["bob"] }, aliceImages)).toBe(false);
    expect(inScope({ features: ["images"], spenders: ["alice"] }, aliceImages)).toBe(true);
    expect(inScope({ features: ["images"], spenders: ["alice"] }, { spender: "bob", feature: "images" })).toBe(false);
  });

  it("matching scoped grants first (priority, expiry, age), then unscoped; out-of-scope grants never", () => {
    const at = new Date(now);
    const grants = [
      grant("pool-urgent", { priority: 0, expiresAt: new Date(now + 1000) }),
      grant("img-late", { scope: { features: ["images"] }, expiresAt: new Date(now + 9000) }),
      grant("img-soon", { scope: { features: ["images"] }, expiresAt: new Date(now + 5000) }),
      grant("img-low", { scope: { features: ["images"] }, priority: 5 }),
      grant("text-only", { scope: { features: ["text"] }, priority: 0 }),
      grant("bob-only", { scope: { spenders: ["bob"] } }),
      grant("pool", { priority: 1 }),
      grant("img-expired", { scope: { features: ["images"] }, expiresAt: new Date(now - 1) }),
    ];
    expect(spendOrder(grants, aliceImages, at).map((g) => g.id)).toEqual([
      "img-soon",
      "img-late",
      "img-low",
      "pool-urgent",
      "pool",
    ]);
    expect(spendOrder(grants, alice, at).map((g) => g.id)).toEqual(["pool-urgent", "pool"]);
    expect(spendOrder(grants, { spender: "bob", feature: null }, at).map((g) => g.id)).toEqual([
      "bob-only",
      "pool-urgent",
      "pool",
    ]);
    // What the spend may not use: the usable scoped grants outside its scope.
    expect(outOfScope(grants, aliceImages, at)).toBe(20);
  });
});
