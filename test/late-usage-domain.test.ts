// The pure rules of late usage and of the figures derived after reversals (docs/usage.md, "Late
// usage" and "Corrections"; docs/teams-and-limits.md; docs/revenue.md, decision 9).
import { describe, expect, it } from "vitest";
import { lateOccurredAt } from "../src/core/domain/late-usage.js";
import { calendarWindow, countSpend, giveBackSpend } from "../src/core/domain/limits.js";
import { RevenueAccumulator } from "../src/modules/revenue/rules.js";
import { reversalMetadata, usageParts } from "../src/core/domain/usage.js";
import { LateUsageError } from "../src/core/errors.js";
import type { JournalEntry, SpendLimit } from "../src/core/models/index.js";

const DAY = 86_400_000;
const HOUR = 3_600_000;
const now = new Date(Math.floor(Date.now() / DAY) * DAY + 12 * HOUR);

let seq = 0;
function entry(e: Partial<JournalEntry> & Pick<JournalEntry, "type" | "amount">): JournalEntry {
  return {
    id: `e${++seq}`,
    userId: "u",
    seq,
    balanceAfter: 0,
    reservedAfter: 0,
    debtAfter: 0,
    grants: [],
    reservationId: null,
    idempotencyKey: null,
    fingerprint: null,
    correlationId: null,
    description: null,
    metadata: null,
    spender: null,
    feature: null,
    createdAt: now,
    prevHash: null,
    hash: "",
    ...e,
  };
}

describe("the late-usage window", () => {
  it("takes an occurredAt within the window, treats now and a minute ahead as on time, refuses the rest", () => {
    const ago = (ms: number) => new Date(now.getTime() - ms);
    expect(lateOccurredAt(ago(3 * DAY), now, 35)?.getTime()).toBe(now.getTime() - 3 * DAY);
    expect(lateOccurredAt(ago(35 * DAY), now, 35)?.getTime()).toBe(now.getTime() - 35 * DAY);
    expect(lateOccurredAt(now, now, 35)).toBeUndefined();
    expect(lateOccurredAt(ago(-30_000), now, 35)).toBeUndefined();
    expect(() => lateOccurredAt(ago(35 * DAY + 1), now, 35)).toThrow(LateUsageError);
    expect(() => lateOccurredAt(ago(-2 * 60_000), now, 35)).toThrow(/in the future/);
    expect(() => lateOccurredAt(ago(1), now, 0)).toThrow(/more than 0 days ago/);
    try {
      lateOccurredAt(ago(40 * DAY), now, 35);
    } catch (error) {
      expect(error).toMatchObject({ code: "RULE_VIOLATION", status: 422, issues: [{ path: "occurredAt" }] });
      expect((error as LateUsageError).earliest.getTime()).toBe(now.getTime() - 35 * DAY);
    }
  });
});

describe("a reversal's usage", () => {
  // A lease window's settle: three parts, and 10 credits and 1 request its parts do not account for.
  const window = entry({
    type: "commit_reserved",
    amount: 100,
    reservationId: "h1",
    feature: "chat",
    spender: "k",
    metadata: {
      team: "red",
      leaseWindow: {
        requests: 7,
        parts: [
          { feature: "chat", spender: "a", model: "m1", credits: 45, requests: 3, inputTokens: 300 },
          { feature: "img", spender: "b", model: "m2", credits: 30, requests: 2, inputTokens: 200 },
          { feature: null, spender: null, model: null, credits: 15, requests: 1, inputTokens: 0 },
        ],
      },
    },
  });
  const byPart = (entries: JournalEntry[]) => {
    const sums = new Map<string, number[]>();
    for (const e of entries)
      for (const p of usageParts(e)) {
        const k = JSON.stringify([p.feature ?? e.feature, p.spender ?? e.spender, p.model]);
        const s = sums.get(k) ?? [0, 0, 0];
        sums.set(k, [s[0]! + p.credits, s[1]! + p.requests, s[2]! + p.inputTokens]);
      }
    return [...sums].filter(([, s]) => s.some((x) => x !== 0)).sort();
  };

  it("partial reversals scale the charge's parts, add up to them exactly, and take requests and tokens out with the last", () => {
    const reversals: JournalEntry[] = [];
    let before = 0;
    for (const amount of [33, 1, 1, 65]) {
      const metadata = reversalMetadata(window, amount, before, { ticket: "T-1", team: "blue" });
      reversals.push(entry({ type: "reverse", amount, metadata, feature: "chat", spender: "k" }));
      before += amount;
      // Each reversal's parts add up to what it gives back; the charge's own keys win over the caller's.
      expect(usageParts(reversals.at(-1)!).reduce((s, p) => s + p.credits, 0)).toBe(-amount);
      expect(metadata).toMatchObject({ ticket: "T-1", team: "red" });
      expect(metadata.leaseWindow).toBeUndefined();
    }
    // Before the last: credits only.
    expect(byPart([window, ...reversals.slice(0, 3)]).map(([k, [, requests]]) => [k, requests])).toEqual(
      byPart([window]).map(([k, [, requests]]) => [k, requests]),
    );
    // All of it: nothing is left in any part.
    expect(byPart([window, ...reversals])).toEqual([]);
  });

  it("a charge split by its LLM usages nets by model; a plain deduction nets whole", () => {
    const call = entry({
      type: "commit_reserved",
      amount: 9,
      reservationId: "h2",
      metadata: {
        usages: [
          { model: "large", amount: 6, inputTokens: 6 },
          { model: "small", amount: 5 },
        ],
      },
    });
    const all = entry({ type: "reverse", amount: 9, metadata: reversalMetadata(call, 9, 0) });
    expect(byPart([call, all])).toEqual([]);
    const plain = entry({ type: "deduct", amount: 5, feature: "f" });
    const half = entry({ type: "reverse", amount: 2, feature: "f", metadata: reversalMetadata(plain, 2, 0) });
    expect(usageParts(half).map((p) => [p.kind, p.feature, p.model, p.credits, p.requests])).toEqual([
      ["spend", "f", null, -2, 0],
    ]);
  });
});

describe("spend limits after late usage and reversals", () => {
  const limit = (period: "day" | "month", amount: number, used: number, at: number): SpendLimit => ({
    spender: null,
    feature: null,
    amount,
    period,
    cycle: null,
    since: 0,
    used,
    windowStart: calendarWindow(period, at).start,
    alerted: used >= amount ? "reached" : null,
  });
  const spend = { spender: null, feature: null };
  const t = now.getTime();

  it("a late spend counts in the window it happened in while that window is current", () => {
    const limits = [limit("day", 50, 10, t), limit("month", 1000, 10, t)];
    const yesterday = countSpend(limits, spend, 20, t - DAY, { now: t });
    // (The day of yesterday has ended; whether the month has too depends on today's date.)
    expect(yesterday.limits[0]).toBe(limits[0]);
    const sameMonth = new Date(t - DAY).getUTCMonth() === now.getUTCMonth();
    expect(yesterday.limits[1]!.used).toBe(sameMonth ? 30 : 10);
    const anHourAgo = countSpend(limits, spend, 20, t - HOUR, { now: t });
    expect(anHourAgo.limits.map((l) => l.used)).toEqual([30, 30]);
    expect(() => countSpend(limits, spend, 41, t - HOUR, { now: t })).toThrow(/spend limit of 50 per day/);
  });

  it("a reversal gives the spend back to its window while it is current; a reached limit is re-armed", () => {
    const limits = [limit("day", 50, 50, t)];
    const back = giveBackSpend(limits, spend, 20, { seq: 1, at: t - HOUR }, t);
    expect(back[0]).toMatchObject({ used: 30, alerted: null });
    expect(giveBackSpend(limits, spend, 5, { seq: 1, at: t - HOUR }, t)[0]).toMatchObject({
      used: 45,
      alerted: "warning",
    });
    // A charge of an ended window: nothing to give back to.
    expect(giveBackSpend(limits, spend, 20, { seq: 1, at: t - 2 * DAY }, t)[0]).toBe(limits[0]);
    // Never below 0; a limit for another feature is left alone.
    expect(giveBackSpend(limits, spend, 500, { seq: 1, at: t }, t)[0]!.used).toBe(0);
    expect(giveBackSpend(limits, { spender: null, feature: "x" }, 5, { seq: 1, at: t }, t)[0]!.used).toBe(45);

    // A limit set after the charge was recorded (since >= its seq) never counted it: nothing back.
    const later = [{ ...limit("day", 50, 50, t), since: 7 }];
    expect(giveBackSpend(later, spend, 20, { seq: 7, at: t - HOUR }, t)[0]).toBe(later[0]);
    expect(giveBackSpend(later, spend, 20, { seq: 8, at: t - HOUR }, t)[0]!.used).toBe(30);
  });
});

describe("revenue after a reversal", () => {
  it("is booked at its charge's time, however late it is written: recognized negative at the grant's basis, deferred again, debt it pays off unbilled no more", () => {
    const d0 = now.getTime() - 2 * DAY;
    const boundaries = [d0, d0 + DAY, d0 + 2 * DAY, d0 + 3 * DAY];
    const at = (day: number) => new Date(d0 + day * DAY + HOUR);
    const journal = [
      entry({
        type: "add",
        amount: 10,
        grants: [{ grantId: "g", amount: 10 }],
        costBasis: { perCredit: "1999/3000", currency: "USD" },
        createdAt: at(0),
      }),
      // 12 used: 10 from the grant, 2 of debt.
      entry({ type: "deduct", amount: 12, grants: [{ grantId: "g", amount: 10 }], feature: "f", createdAt: at(0) }),
      // 5 given back two days later: 2 off the debt, 3 to the grant.
      entry({
        type: "reverse",
        amount: 5,
        grants: [{ grantId: "g", amount: 3 }],
        feature: "f",
        occurredAt: at(0),
        createdAt: at(2),
      }),
    ];
    const sum = new RevenueAccumulator(boundaries, ["feature"]);
    sum.addAccount("u", journal);
    const rows = sum
      .rows()
      .map((r) => [
        (r.start.getTime() - d0) / DAY,
        r.currency,
        r.feature,
        r.paid,
        r.recognized,
        r.deferredEnd,
        r.unbilledCredits,
      ]);
    // 10 credits at 1999/3000 are worth 7; the last 3 used (positions 7–10) are worth 7 − 5 = 2.
    expect(rows.map((r) => JSON.stringify(r)).sort()).toEqual(
      [
        [0, "USD", null, 7, 0, 2, 0],
        [0, "USD", "f", 0, 5, 0, 0],
        [0, null, "f", 0, 0, 0, 0],
        [1, "USD", null, 0, 0, 2, 0],
        [2, "USD", null, 0, 0, 2, 0],
      ]
        .filter((r) => r.slice(3).some((x) => x !== 0))
        .map((r) => JSON.stringify(r))
        .sort(),
    );
  });
});
