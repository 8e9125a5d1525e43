import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  addMonths,
  allocationExpiry,
  daysInMonth,
  fractionLeft,
  periodAt,
  periodContaining,
  periodIndexAt,
  periodStart,
  type BillingPeriod,
} from "../src/core/domain/periods.js";
import { ValidationError, createCreditManager } from "../src/index.js";
import { deep } from "./fixtures/depth.js";

const d = (s: string) => new Date(s);
const iso = (x: Date) => x.toISOString();
const starts = (anchor: string, p: BillingPeriod, n: number) =>
  Array.from({ length: n }, (_, i) => iso(periodAt(d(anchor), p, i).start).slice(0, 10));

describe("periods", () => {
  it("monthly from Jan 31: Feb 28 (29 in leap years), Mar 31, Apr 30 — anchored, no drift", () => {
    expect(starts("2025-01-31T10:00:00Z", "monthly", 6)).toEqual([
      "2025-01-31",
      "2025-02-28",
      "2025-03-31",
      "2025-04-30",
      "2025-05-31",
      "2025-06-30",
    ]);
    expect(starts("2024-01-31T00:00:00Z", "monthly", 3)).toEqual(["2024-01-31", "2024-02-29", "2024-03-31"]);
    // The time of day of the anchor is kept.
    expect(iso(periodAt(d("2025-01-31T10:20:30.400Z"), "monthly", 1).start)).toBe("2025-02-28T10:20:30.400Z");
  });

  it("monthly from the 30th and 29th clamp only in February", () => {
    expect(starts("2025-01-30T00:00:00Z", "monthly", 3)).toEqual(["2025-01-30", "2025-02-28", "2025-03-30"]);
    expect(starts("2023-12-29T00:00:00Z", "monthly", 4)).toEqual([
      "2023-12-29",
      "2024-01-29",
      "2024-02-29",
      "2024-03-29",
    ]);
  });

  it("monthly across a year end", () => {
    expect(starts("2025-11-30T00:00:00Z", "monthly", 4)).toEqual([
      "2025-11-30",
      "2025-12-30",
      "2026-01-30",
      "2026-02-28",
    ]);
    expect(iso(addMonths(d("2025-12-31T00:00:00Z"), -10))).toBe("2025-02-28T00:00:00.000Z");
  });

  it("yearly from Feb 29: Feb 28 in common years, back to Feb 29 in leap years", () => {
    expect(starts("2024-02-29T12:00:00Z", "yearly", 5)).toEqual([
      "2024-02-29",
      "2025-02-28",
      "2026-02-28",
      "2027-02-28",
      "2028-02-29",
    ]);
    // 2100 is not a leap year.
    expect(iso(periodAt(d("2096-02-29T00:00:00Z"), "yearly", 4).start).slice(0, 10)).toBe("2100-02-28");
  });

  it("daily and weekly are exact multiples of 24 h in UTC (no DST)", () => {
    expect(starts("2025-03-29T00:00:00Z", "daily", 3)).toEqual(["2025-03-29", "2025-03-30", "2025-03-31"]);
    expect(starts("2025-12-29T00:00:00Z", "weekly", 3)).toEqual(["2025-12-29", "2026-01-05", "2026-01-12"]);
    const p = periodAt(d("2025-03-30T00:30:00Z"), "daily", 0);
    expect(p.end.getTime() - p.start.getTime()).toBe(86_400_000);
  });

  it("finds the period containing an instant; ends are exclusive", () => {
    const a = d("2025-01-31T00:00:00Z");
    expect(periodIndexAt(a, "monthly", d("2025-02-27T23:59:59.999Z"))).toBe(0);
    expect(periodIndexAt(a, "monthly", d("2025-02-28T00:00:00Z"))).toBe(1);
    expect(periodIndexAt(a, "monthly", d("2025-03-30T23:00:00Z"))).toBe(1);
    expect(periodIndexAt(a, "monthly", d("2025-03-31T00:00:00Z"))).toBe(2);
    expect(periodIndexAt(a, "monthly", d("2024-01-01T00:00:00Z"))).toBe(0);
    expect(iso(periodContaining(a, "yearly", d("2030-06-01T00:00:00Z")).start)).toBe("2030-01-31T00:00:00.000Z");
  });

  it("prorates by the fraction of the period left, and expires allocations by validityDays or at the end", () => {
    const start = d("2025-01-01T00:00:00Z");
    const end = d("2025-01-11T00:00:00Z");
    expect(fractionLeft(start, end, d("2025-01-03T12:00:00Z"))).toBe(0.75);
    expect(fractionLeft(start, end, d("2026-01-01T00:00:00Z"))).toBe(0);
    expect(fractionLeft(start, end, d("2024-01-01T00:00:00Z"))).toBe(1);
    expect(iso(allocationExpiry({ start, end }, null))).toBe(iso(end));
    expect(iso(allocationExpiry({ start, end }, 3))).toBe("2025-01-04T00:00:00.000Z");
  });

  it("property: periods are contiguous, never overlap, start on the anchor and contain what they claim", () => {
    const anchor = fc.date({
      min: new Date("1990-01-01T00:00:00Z"),
      max: new Date("2200-01-01T00:00:00Z"),
      noInvalidDate: true,
    });
    const period = fc.constantFrom<BillingPeriod>("daily", "weekly", "monthly", "yearly");
    fc.assert(
      fc.property(
        anchor,
        period,
        fc.integer({ min: 0, max: 400 }),
        fc.integer({ min: 0, max: 2_000_000_000 }),
        (a, p, i, offsetSec) => {
          const cur = periodAt(a, p, i);
          const next = periodAt(a, p, i + 1);
          expect(cur.start.getTime()).toBeLessThan(cur.end.getTime());
          expect(cur.end.getTime()).toBe(next.start.getTime());
          expect(periodAt(a, p, 0).start.getTime()).toBe(a.getTime());
          // Anchored: the day of month is the anchor's unless the month is too short.
          if (p === "monthly" || p === "yearly") {
            const day = cur.start.getUTCDate();
            expect(
              day === a.getUTCDate() ||
                day === new Date(Date.UTC(cur.start.getUTCFullYear(), cur.start.getUTCMonth() + 1, 0)).getUTCDate(),
            ).toBe(true);
            expect(cur.start.getUTCHours()).toBe(a.getUTCHours());
          }
          const at = new Date(a.getTime() + offsetSec * 1000);
          const c = periodContaining(a, p, at);
          expect(c.start.getTime()).toBeLessThanOrEqual(at.getTime());
          expect(at.getTime()).toBeLessThan(c.end.getTime());
        },
      ),
      { numRuns: deep(2000) },
    );
  });
});

/** ISO text of a date, including years 0–99 and beyond 9999 (toISOString does both right). */
const ymd = (x: Date) => iso(x).replace(/T.*/, "");
/** Days in a month by the Gregorian rule alone (no Date involved): the reference. */
const refDays = (y: number, m: number) =>
  m === 1
    ? y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0)
      ? 29
      : 28
    : [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m]!;
const DAY = 86_400_000;
/** The last and first instants a JavaScript Date holds. */
const MAX_DATE = new Date(8.64e15);
const MIN_DATE = new Date(-8.64e15);

describe("periods in years 0–99 (not 1900–1999)", () => {
  it("monthly and yearly periods stay in the anchor's century", () => {
    expect(starts("0050-01-31T00:00:00Z", "monthly", 4)).toEqual([
      "0050-01-31",
      "0050-02-28",
      "0050-03-31",
      "0050-04-30",
    ]);
    expect(iso(periodAt(d("0050-01-31T06:07:08.009Z"), "monthly", 0).end)).toBe("0050-02-28T06:07:08.009Z");
    // Year 0 (1 BC) is a leap year; 100 is not; 1900 is not: each by its own rule.
    expect(starts("0000-01-31T00:00:00Z", "monthly", 2)).toEqual(["0000-01-31", "0000-02-29"]);
    expect(starts("0096-02-29T12:00:00Z", "yearly", 9)).toEqual([
      "0096-02-29",
      "0097-02-28",
      "0098-02-28",
      "0099-02-28",
      "0100-02-28",
      "0101-02-28",
      "0102-02-28",
      "0103-02-28",
      "0104-02-29",
    ]);
    expect(starts("0099-12-15T00:00:00Z", "monthly", 2)).toEqual(["0099-12-15", "0100-01-15"]);
    expect(iso(addMonths(d("0001-03-31T00:00:00Z"), -2))).toBe("0001-01-31T00:00:00.000Z");
    expect(iso(addMonths(d("0001-01-31T00:00:00Z"), -11))).toBe("0000-02-29T00:00:00.000Z");
    expect([
      daysInMonth(0, 1),
      daysInMonth(4, 1),
      daysInMonth(100, 1),
      daysInMonth(1900, 1),
      daysInMonth(2000, 1),
    ]).toEqual([29, 29, 28, 28, 29]);
    expect(daysInMonth(99, 12)).toBe(31); // month 12 of 99 is January of 100
  });

  it("finds the period containing an instant in years 0–99", () => {
    const a = d("0050-01-31T00:00:00Z");
    expect(periodIndexAt(a, "monthly", d("0050-03-15T00:00:00Z"))).toBe(1);
    expect(periodIndexAt(a, "monthly", d("0050-03-31T00:00:00Z"))).toBe(2);
    expect(periodIndexAt(a, "yearly", d("0051-06-01T00:00:00Z"))).toBe(1);
    const c = periodContaining(a, "monthly", d("0050-02-28T00:00:00Z"));
    expect([ymd(c.start), ymd(c.end)]).toEqual(["0050-02-28", "0050-03-31"]);
  });

  it("property: over the whole calendar (negative years to beyond 9999), months are anchored and contiguous", () => {
    const anchor = fc.date({
      min: new Date("-010000-01-01T00:00:00Z"),
      max: new Date("+020000-01-01T00:00:00Z"),
      noInvalidDate: true,
    });
    const period = fc.constantFrom<BillingPeriod>("monthly", "yearly");
    fc.assert(
      fc.property(anchor, period, fc.integer({ min: -300, max: 300 }), (a, p, i) => {
        const cur = periodAt(a, p, i);
        expect(cur.end.getTime()).toBe(periodAt(a, p, i + 1).start.getTime());
        expect(cur.start.getTime()).toBeLessThan(cur.end.getTime());
        const months = a.getUTCFullYear() * 12 + a.getUTCMonth() + (p === "monthly" ? i : i * 12);
        const y = Math.floor(months / 12);
        const m = months - y * 12;
        expect([cur.start.getUTCFullYear(), cur.start.getUTCMonth()]).toEqual([y, m]);
        expect(cur.start.getUTCDate()).toBe(Math.min(a.getUTCDate(), refDays(y, m)));
        expect(Math.abs(cur.start.getTime() - a.getTime()) % DAY).toBe(0); // the anchor's time of day
        if (i >= 0) expect(periodIndexAt(a, p, cur.start)).toBe(i);
      }),
      { numRuns: deep(3000) },
    );
  });
});

describe("periods at the ends of the Date range", () => {
  it("a period that would end past the last Date is a ValidationError, never a RangeError", () => {
    const lastDay = new Date(MAX_DATE.getTime() - DAY);
    for (const p of ["monthly", "yearly", "weekly"] as const) {
      expect(() => periodAt(lastDay, p, 0)).toThrow(ValidationError);
      expect(() => periodAt(lastDay, p, 0)).toThrow(/outside the dates a JavaScript Date can hold/);
    }
    // The last whole day is still a period: it ends exactly at the last instant.
    expect(periodAt(lastDay, "daily", 0).end.getTime()).toBe(MAX_DATE.getTime());
    expect(() => periodAt(lastDay, "daily", 1)).toThrow(ValidationError);
    expect(() => periodAt(new Date(MIN_DATE.getTime() + DAY), "monthly", -1)).toThrow(ValidationError);
    expect(() => periodStart(d("2031-01-01T00:00:00Z"), "daily", 2 ** 53)).toThrow(ValidationError);
    expect(() => addMonths(d("2031-01-01T00:00:00Z"), 3_300_000)).toThrow(ValidationError);
    expect(() => allocationExpiry({ start: lastDay, end: MAX_DATE }, 2)).toThrow(ValidationError);
    // The period containing an instant whose period has no representable end.
    expect(() => periodIndexAt(d("2031-01-15T00:00:00Z"), "monthly", new Date(MAX_DATE.getTime() - 2 * DAY))).toThrow(
      ValidationError,
    );
    // Invalid input is refused the same way.
    expect(() => periodAt(new Date(Number.NaN), "monthly", 0)).toThrow(ValidationError);
    expect(() => periodAt(d("2031-01-01T00:00:00Z"), "monthly", 1.5)).toThrow(ValidationError);
    expect(() => periodAt(d("2031-01-01T00:00:00Z"), "hourly" as BillingPeriod, 0)).toThrow(ValidationError);
  });

  it("subscribe with a startAt near the end of the Date range is a ValidationError and changes nothing", async () => {
    const m = await createCreditManager({ clock: () => new Date("2031-01-10T12:00:00Z") });
    await m.subscriptions.createPlan({ id: "y", name: "Y", creditsPerPeriod: 100, billingPeriod: "yearly" });
    const startAt = new Date(MAX_DATE.getTime() - DAY);
    const error = await m.subscriptions.subscribe("z", "y", { startAt }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect(error).toMatchObject({ code: "VALIDATION_ERROR", status: 400 });
    expect(await m.subscriptions.listUserSubscriptions("z")).toEqual([]);
    expect(await m.credits.getUserCreditsInfo("z")).toMatchObject({ balance: 0, reserved: 0 });
    // A far but representable start works.
    const s = await m.subscriptions.subscribe("w", "y", { startAt: "9999-12-31T00:00:00Z" });
    expect(iso(s.currentPeriodEnd)).toBe("+010000-12-31T00:00:00.000Z");
    await m.close();
  });
});
