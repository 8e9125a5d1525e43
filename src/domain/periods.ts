/**
 * Billing-period arithmetic, in UTC, as pure functions.
 *
 * Every period is computed from the subscription's **anchor** (the instant its billing cycle
 * started), never by adding to the previous period's end, so short months do not make the cycle
 * drift: a monthly cycle anchored on Jan 31 runs Jan 31 → Feb 28 (Feb 29 in a leap year) → Mar 31
 * → Apr 30 → May 31; a yearly cycle anchored on Feb 29 runs to Feb 28 in common years and back to
 * Feb 29 in leap years. The time of day of the anchor is kept. Daily and weekly periods are exact
 * multiples of 24 h (UTC has no daylight-saving shifts).
 */

export type BillingPeriod = "daily" | "weekly" | "monthly" | "yearly";

const DAY_MS = 86_400_000;

/** Days in `month` (0–11) of `year`, UTC. */
export function daysInMonth(year: number, month: number): number {
  return new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
}

/** `anchor` plus `n` calendar months, the day clamped to the target month's length. */
export function addMonths(anchor: Date, n: number): Date {
  const y = anchor.getUTCFullYear();
  const m = anchor.getUTCMonth() + n;
  const year = y + Math.floor(m / 12);
  const month = ((m % 12) + 12) % 12;
  const day = Math.min(anchor.getUTCDate(), daysInMonth(year, month));
  return new Date(
    Date.UTC(
      year,
      month,
      day,
      anchor.getUTCHours(),
      anchor.getUTCMinutes(),
      anchor.getUTCSeconds(),
      anchor.getUTCMilliseconds(),
    ),
  );
}

/** Start of period number `index` (0 = the one starting at the anchor). */
export function periodStart(anchor: Date, billingPeriod: BillingPeriod, index: number): Date {
  switch (billingPeriod) {
    case "daily":
      return new Date(anchor.getTime() + index * DAY_MS);
    case "weekly":
      return new Date(anchor.getTime() + index * 7 * DAY_MS);
    case "monthly":
      return addMonths(anchor, index);
    case "yearly":
      return addMonths(anchor, index * 12);
  }
}

export interface Period {
  index: number;
  start: Date;
  /** Exclusive: the next period's start. */
  end: Date;
}

/** Period number `index`: `[start, end)`. */
export function periodAt(anchor: Date, billingPeriod: BillingPeriod, index: number): Period {
  return {
    index,
    start: periodStart(anchor, billingPeriod, index),
    end: periodStart(anchor, billingPeriod, index + 1),
  };
}

/**
 * The index of the period that contains `at` (`start <= at < end`); 0 for instants before the
 * anchor (a subscription that has not started yet is in its first period).
 */
export function periodIndexAt(anchor: Date, billingPeriod: BillingPeriod, at: Date): number {
  const t = at.getTime();
  const a = anchor.getTime();
  if (t < a) return 0;
  let guess: number;
  switch (billingPeriod) {
    case "daily":
      return Math.floor((t - a) / DAY_MS);
    case "weekly":
      return Math.floor((t - a) / (7 * DAY_MS));
    case "monthly":
      guess = (at.getUTCFullYear() - anchor.getUTCFullYear()) * 12 + (at.getUTCMonth() - anchor.getUTCMonth());
      break;
    case "yearly":
      guess = at.getUTCFullYear() - anchor.getUTCFullYear();
      break;
  }
  // The calendar guess is off by at most one either way; step to the exact period.
  let i = Math.max(0, guess);
  while (i > 0 && periodStart(anchor, billingPeriod, i).getTime() > t) i--;
  while (periodStart(anchor, billingPeriod, i + 1).getTime() <= t) i++;
  return i;
}

/** The period that contains `at`. */
export function periodContaining(anchor: Date, billingPeriod: BillingPeriod, at: Date): Period {
  return periodAt(anchor, billingPeriod, periodIndexAt(anchor, billingPeriod, at));
}

/**
 * Fraction of `[start, end)` still ahead at `at`, in [0, 1]: what a prorated plan change scales
 * the credit difference by.
 */
export function fractionLeft(start: Date, end: Date, at: Date): number {
  const total = end.getTime() - start.getTime();
  if (total <= 0) return 0;
  const left = end.getTime() - at.getTime();
  return Math.min(1, Math.max(0, left / total));
}

/**
 * When a period's allocation expires: `validityDays` after the period's start when the plan sets
 * it, else at the period's end.
 */
export function allocationExpiry(period: { start: Date; end: Date }, validityDays: number | null): Date {
  return validityDays === null ? period.end : new Date(period.start.getTime() + validityDays * DAY_MS);
}
