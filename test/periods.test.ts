import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  addMonths,
  allocationExpiry,
  fractionLeft,
  periodAt,
  periodContaining,
  periodIndexAt,
  type BillingPeriod,
} from "../src/domain/periods.js";

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
    expect(starts("2023-12-29T00:00:00Z", "monthly", 4)).toEqual(["2023-12-29", "2024-01-29", "2024-02-29", "2024-03-29"]);
  });

  it("monthly across a year end", () => {
    expect(starts("2025-11-30T00:00:00Z", "monthly", 4)).toEqual(["2025-11-30", "2025-12-30", "2026-01-30", "2026-02-28"]);
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
    const anchor = fc.date({ min: new Date("1990-01-01T00:00:00Z"), max: new Date("2200-01-01T00:00:00Z"), noInvalidDate: true });
    const period = fc.constantFrom<BillingPeriod>("daily", "weekly", "monthly", "yearly");
    fc.assert(
      fc.property(anchor, period, fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: 2_000_000_000 }), (a, p, i, offsetSec) => {
        const cur = periodAt(a, p, i);
        const next = periodAt(a, p, i + 1);
        expect(cur.start.getTime()).toBeLessThan(cur.end.getTime());
        expect(cur.end.getTime()).toBe(next.start.getTime());
        expect(periodAt(a, p, 0).start.getTime()).toBe(a.getTime());
        // Anchored: the day of month is the anchor's unless the month is too short.
        if (p === "monthly" || p === "yearly") {
          const day = cur.start.getUTCDate();
          expect(day === a.getUTCDate() || day === new Date(Date.UTC(cur.start.getUTCFullYear(), cur.start.getUTCMonth() + 1, 0)).getUTCDate()).toBe(true);
          expect(cur.start.getUTCHours()).toBe(a.getUTCHours());
        }
        const at = new Date(a.getTime() + offsetSec * 1000);
        const c = periodContaining(a, p, at);
        expect(c.start.getTime()).toBeLessThanOrEqual(at.getTime());
        expect(at.getTime()).toBeLessThan(c.end.getTime());
      }),
      { numRuns: 2000 },
    );
  });
});
