// The rules of usage reports (docs/usage.md): calendar windows in a time zone, which entries are
// usage and of which kind, the split by model, and the query's validation. Dates are worked out
// from the current year (no date that will pass).
import { describe, expect, it, vi } from "vitest";
import { usageParts } from "../src/core/domain/usage.js";
import { nextWindowStart, startOfDay, usageBoundaries, wallClock, windowStart } from "../src/core/domain/windows.js";
import { createCreditManager, ValidationError } from "../src/index.js";
import { type JournalEntry } from "../src/models-public.js";

const H = 3_600_000;
const Y = new Date().getUTCFullYear() + 1;

/** The last Sunday of `month` (1–12) of `year`, as a day of the month. */
function lastSunday(year: number, month: number): number {
  const last = new Date(Date.UTC(year, month, 0));
  return last.getUTCDate() - last.getUTCDay();
}

/** Lengths in hours of the windows between `from` and `to`. */
function lengths(from: number, to: number, interval: "hour" | "day" | "week" | "month", tz: string): number[] {
  const b = usageBoundaries(from, to, interval, tz, 10_000)!;
  return b.slice(1).map((x, i) => (x - b[i]!) / H);
}

describe("usage windows", () => {
  it("days in UTC are 24 hours; months end on their last day, February 29 in a leap year", () => {
    expect(lengths(Date.UTC(Y, 0, 1), Date.UTC(Y, 0, 8), "day", "UTC")).toEqual([24, 24, 24, 24, 24, 24, 24]);
    const leap = Y + ((4 - (Y % 4)) % 4); // the next leap year from Y (a multiple of 4 within 2100)
    const months = usageBoundaries(Date.UTC(leap, 0, 1), Date.UTC(leap + 1, 0, 1), "month", "UTC", 100)!;
    expect(months).toHaveLength(13);
    expect(new Date(months[2]! - 1).getUTCDate()).toBe(29);
    const plain = usageBoundaries(Date.UTC(leap + 1, 0, 1), Date.UTC(leap + 1, 3, 1), "month", "UTC", 100)!;
    expect(new Date(plain[2]! - 1).getUTCDate()).toBe(28);
    // January 31 → February; December → January of the next year.
    expect(new Date(nextWindowStart(Date.UTC(Y, 0, 1), "month", "UTC")).toISOString()).toBe(
      new Date(Date.UTC(Y, 1, 1)).toISOString(),
    );
    expect(nextWindowStart(Date.UTC(Y, 11, 1), "month", "UTC")).toBe(Date.UTC(Y + 1, 0, 1));
  });

  it("Europe/Berlin: the day the clocks go forward is 23 hours, the day they go back 25; hours stay hours", () => {
    const spring = lastSunday(Y, 3);
    const autumn = lastSunday(Y, 10);
    const tz = "Europe/Berlin";
    const days = lengths(startOfDay(Y, 3, spring - 1, tz), startOfDay(Y, 3, spring + 2, tz), "day", tz);
    expect(days).toEqual([24, 23, 24]);
    const fall = lengths(startOfDay(Y, 10, autumn - 1, tz), startOfDay(Y, 10, autumn + 2, tz), "day", tz);
    expect(fall).toEqual([24, 25, 24]);
    // The autumn day has 25 hour windows: 02:00–03:00 happens twice.
    const hours = lengths(startOfDay(Y, 10, autumn, tz), startOfDay(Y, 10, autumn + 1, tz), "hour", tz);
    expect(hours).toHaveLength(25);
    expect(hours.every((h) => h === 1)).toBe(true);
    // Midnight is midnight on the wall clock, before and after the change.
    const b = usageBoundaries(startOfDay(Y, 10, autumn - 1, tz), startOfDay(Y, 10, autumn + 2, tz), "day", tz, 10)!;
    for (const x of b) expect(wallClock(x, tz)).toMatchObject({ hour: 0, minute: 0 });
    // The month holding the spring change is 1 hour short of its days × 24.
    const march = lengths(startOfDay(Y, 3, 1, tz), startOfDay(Y, 4, 1, tz), "month", tz);
    expect(march).toEqual([31 * 24 - 1]);
  });

  it("America/Santiago: a day whose midnight falls in the gap starts when the clocks jump", () => {
    const tz = "America/Santiago";
    // Chile moves its clocks at midnight (local) in September: find that day in Y.
    let gapDay = -1;
    for (let d = 1; d <= 30 && gapDay < 0; d++) {
      const len = (startOfDay(Y, 9, d + 1, tz) - startOfDay(Y, 9, d, tz)) / H;
      if (len === 23) gapDay = d;
    }
    expect(gapDay).toBeGreaterThan(0);
    const start = startOfDay(Y, 9, gapDay + 1, tz);
    expect(wallClock(start, tz)).toMatchObject({ day: gapDay + 1, hour: 0, minute: 0 });
    // Every day start is on its date, at the earliest existing time.
    for (let d = 1; d <= 30; d++) expect(wallClock(startOfDay(Y, 9, d, tz), tz).day).toBe(d);
  });

  it("weeks start on Monday; windows cut to the range; the window of an instant", () => {
    const b = usageBoundaries(Date.UTC(Y, 0, 1, 12), Date.UTC(Y, 1, 1), "week", "UTC", 100)!;
    expect(b[0]).toBe(Date.UTC(Y, 0, 1, 12));
    for (const x of b.slice(1, -1)) expect(new Date(x).getUTCDay()).toBe(1);
    expect(b[b.length - 1]).toBe(Date.UTC(Y, 1, 1));
    expect(windowStart(Date.UTC(Y, 4, 17, 13, 45), "hour", "Asia/Kolkata")).toBe(Date.UTC(Y, 4, 17, 13, 30));
    expect(windowStart(Date.UTC(Y, 4, 17, 20), "day", "Asia/Kolkata")).toBe(Date.UTC(Y, 4, 17, 18, 30));
  });

  it("refuses more than the allowed windows", () => {
    expect(usageBoundaries(0, 3000 * H, "hour", "UTC", 2000)).toBeNull();
    expect(usageBoundaries(0, 1999 * H, "hour", "UTC", 2000)).toHaveLength(2000);
  });

  it("refuses a range too long for the windows by arithmetic, before working out a window", () => {
    // A request refused this way must cost nothing: no wall clock is read through Intl.
    const parts = vi.spyOn(Intl.DateTimeFormat.prototype, "formatToParts");
    try {
      const from = Date.UTC(1800, 0, 1);
      const to = Date.UTC(Y, 0, 1);
      for (const interval of ["hour", "day", "week", "month"] as const)
        for (const tz of ["Europe/Berlin", "Pacific/Kiritimati", "UTC"])
          expect(usageBoundaries(from, to, interval, tz, 2000), `${interval} ${tz}`).toBeNull();
      expect(parts).not.toHaveBeenCalled();
    } finally {
      parts.mockRestore();
    }
    // Just within the bound it still counts: 2,000 months fit, 2,001 do not.
    const start = Date.UTC(Y - 170, 0, 1);
    expect(usageBoundaries(start, Date.UTC(Y - 170, 2000, 1), "month", "UTC", 2000)).toHaveLength(2001);
    expect(usageBoundaries(start, Date.UTC(Y - 170, 2001, 1), "month", "UTC", 2000)).toBeNull();
  });

  it("works out UTC windows without Intl, the same as Etc/UTC's through it", () => {
    const parts = vi.spyOn(Intl.DateTimeFormat.prototype, "formatToParts");
    let fast: (number[] | null)[];
    try {
      fast = cases().map(([from, to, interval]) => usageBoundaries(from, to, interval, "UTC", 2000));
      expect(parts).not.toHaveBeenCalled();
    } finally {
      parts.mockRestore();
    }
    expect(fast).toEqual(cases().map(([from, to, interval]) => usageBoundaries(from, to, interval, "Etc/UTC", 2000)));
    expect(fast.every((b) => b !== null && b.length > 2)).toBe(true);

    function cases(): [number, number, "hour" | "day" | "week" | "month"][] {
      const at = Date.UTC(Y, 1, 27, 13, 45, 12, 345); // across a leap day when Y is a leap year
      return [
        [at, at + 50 * H, "hour"],
        [at, at + 5 * 365 * 24 * H, "week"],
        [at, at + 1_000 * 24 * H, "day"],
        [at - 7 * 365 * 24 * H, at, "month"],
        [Date.UTC(Y, 0, 1), Date.UTC(Y + 3, 0, 1), "month"],
      ];
    }
  });
});

const entry = (e: Partial<JournalEntry>): JournalEntry => ({
  id: "e",
  userId: "u",
  seq: 1,
  type: "deduct",
  amount: 10,
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
  createdAt: new Date(),
  prevHash: null,
  hash: "h",
  ...e,
});

describe("what counts as usage", () => {
  it("spend: deductions, captures (1 request each), an excess charged after a capture (0 requests)", () => {
    expect(usageParts(entry({ type: "deduct" }))).toMatchObject([{ kind: "spend", credits: 10, requests: 1 }]);
    expect(usageParts(entry({ type: "commit_reserved", amount: 7 }))).toMatchObject([{ credits: 7, requests: 1 }]);
    expect(usageParts(entry({ type: "deduct", amount: 3, reservationId: "h" }))).toMatchObject([
      { kind: "spend", credits: 3, requests: 0 },
    ]);
    for (const type of ["add", "expire", "void", "reserve", "release_reserved", "checkpoint", "limits"] as const)
      expect(usageParts(entry({ type }))).toEqual([]);
  });

  it("a payment's take-back is a refund, a lost dispute's a clawback: never spend", () => {
    const metadata = { paymentId: "p1", provider: "stripe", refundedAmount: 500 };
    const refund = { takeBack: "refund" as const, metadata, description: "Refund of payment p1 (stripe)" };
    expect(usageParts(entry(refund))).toMatchObject([{ kind: "refund", credits: 10, requests: 0 }]);
    expect(usageParts(entry({ ...refund, type: "void" }))).toMatchObject([{ kind: "refund" }]);
    expect(usageParts(entry({ takeBack: "clawback", metadata }))).toMatchObject([{ kind: "clawback", credits: 10 }]);
  });

  it("what an entry is comes from its takeBack, which the library sets: a caller's metadata or description is spend", () => {
    const metadata = { paymentId: "p1", provider: "stripe", refundedAmount: 500 };
    expect(usageParts(entry({ metadata, description: "Refund of payment p1 (stripe)" }))).toMatchObject([
      { kind: "spend", credits: 10, requests: 1 },
    ]);
    expect(usageParts(entry({ metadata, description: "Lost dispute of payment p1 (stripe)" }))).toMatchObject([
      { kind: "spend", credits: 10 },
    ]);
    expect(usageParts(entry({ type: "void", metadata }))).toEqual([]);
  });

  it("splits by the recorded LLM usages; what they do not account for has no model", () => {
    const usages = [
      { amount: 6, model: "a", inputTokens: 100, outputTokens: 10, cachedTokens: 0 },
      { amount: 3, model: "b", inputTokens: 5, outputTokens: 1, cachedTokens: 2 },
    ];
    expect(usageParts(entry({ type: "commit_reserved", amount: 9, metadata: { usages } }))).toEqual([
      {
        kind: "spend",
        model: "a",
        credits: 6,
        requests: 1,
        inputTokens: 100,
        outputTokens: 10,
        cachedTokens: 0,
        shortfall: 0,
      },
      {
        kind: "spend",
        model: "b",
        credits: 3,
        requests: 0,
        inputTokens: 5,
        outputTokens: 1,
        cachedTokens: 2,
        shortfall: 0,
      },
    ]);
    const cut = usageParts(entry({ type: "commit_reserved", amount: 7, metadata: { usages } }));
    expect(cut.map((p) => [p.model, p.credits])).toEqual([
      ["a", 6],
      ["b", 3],
      [null, -2],
    ]);
    expect(cut.reduce((s, p) => s + p.credits, 0)).toBe(7);
  });

  it("a lease window counts its requests, and splits by its parts", () => {
    const leaseWindow = { lease: "l", window: 3, requests: 40, total: 90 };
    expect(usageParts(entry({ type: "commit_reserved", amount: 90, metadata: { leaseWindow } }))).toMatchObject([
      { credits: 90, requests: 40 },
    ]);
    const parts: NonNullable<JournalEntry["metadata"]>[] = [
      { model: "a", feature: "chat", spender: null, credits: 60, requests: 30, inputTokens: 1, outputTokens: 2 },
      { other: true, model: null, feature: null, spender: null, credits: 30, requests: 10 },
    ];
    const split = usageParts(
      entry({ type: "commit_reserved", amount: 90, metadata: { leaseWindow: { ...leaseWindow, parts } } }),
    );
    expect(split.map((p) => [p.model, p.feature, p.credits, p.requests])).toEqual([
      ["a", "chat", 60, 30],
      [null, null, 30, 10],
    ]);
  });
});

describe("getUsage validation", () => {
  it("refuses a bad query with a ValidationError and reads nothing", async () => {
    const m = await createCreditManager();
    const now = Date.now();
    const bad = [
      { from: new Date(now), to: new Date(now), interval: "day" },
      { from: new Date(now), to: new Date(now + 3000 * H), interval: "hour" },
      { from: new Date(now), to: new Date(now + H), interval: "day", timeZone: "Mars/Olympus" },
      { from: new Date(now), to: new Date(now + H), interval: "day", groupBy: ["model", "model"] },
      { from: new Date(now), to: new Date(now + H), interval: "day", groupBy: ["metadata."] },
      { from: new Date(now), to: new Date(now + H), interval: "fortnight" },
      { from: new Date(now), to: new Date(now + H), interval: null, limit: 0 },
      { from: new Date(now), to: new Date(now + 4000 * 24 * H), interval: null },
    ];
    for (const q of bad) {
      await expect(m.credits.getUsage(q as never), JSON.stringify(q)).rejects.toBeInstanceOf(ValidationError);
    }
  });
});
