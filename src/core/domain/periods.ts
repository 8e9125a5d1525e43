/**
 * Billing-period arithmetic, in UTC, as pure functions.
 *
 * Every period is computed from the subscription's **anchor** (the instant its billing cycle
 * started), never by adding to the previous period's end, so short months do not make the cycle
 * drift: a monthly cycle anchored on Jan 31 runs Jan 31 → Feb 28 (Feb 29 in a leap year) → Mar 31
 * → Apr 30 → May 31; a yearly cycle anchored on Feb 29 runs to Feb 28 in common years and back to
 * Feb 29 in leap years. The time of day of the anchor is kept. Daily and weekly periods are exact
 * multiples of 24 h (UTC has no daylight-saving shifts).
 *
 * The calendar is the proleptic Gregorian one over the whole range a JavaScript `Date` holds
 * (−271821-04-20 … +275760-09-13, ±8.64e15 ms), years 0–99 included: dates are built with
 * `setUTCFullYear`, never `Date.UTC(y, …)`, which reads years 0–99 as 1900–1999. A period that
 * would start or end outside that range, an invalid date or a non-integer index is a
 * `ValidationError` (nothing is computed, so a caller changes nothing), never a raw `RangeError`.
 */

import { ValidationError } from "../errors.js";

export type BillingPeriod = "daily" | "weekly" | "monthly" | "yearly";

const DAY_MS = 86_400_000;

/** The largest distance from the epoch, either way, a JavaScript `Date` can hold (ms). */
export const MAX_TIME_MS = 8.64e15;
/** The earliest and the latest instants periods can be computed for (the `Date` range). */
export const MIN_DATE = new Date(-MAX_TIME_MS);
export const MAX_DATE = new Date(MAX_TIME_MS);

const DAYS: readonly number[] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** Leap year of the proleptic Gregorian calendar (year 0 = 1 BC is one). */
export function isLeapYear(year: number): boolean {
  return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
}

/** Days in `month` (0–11; others roll into the neighbouring years) of `year`, UTC. */
export function daysInMonth(year: number, month: number): number {
  const y = year + Math.floor(month / 12);
  const m = ((month % 12) + 12) % 12;
  return m === 1 && isLeapYear(y) ? 29 : (DAYS[m] as number);
}

/** `anchor` plus `n` calendar months, the day clamped to the target month's length. */
export function addMonths(anchor: Date, n: number): Date {
  validDate(anchor, "anchor");
  whole(n, "n");
  const y = anchor.getUTCFullYear();
  const m = anchor.getUTCMonth() + n;
  const year = y + Math.floor(m / 12);
  const month = ((m % 12) + 12) % 12;
  const day = Math.min(anchor.getUTCDate(), daysInMonth(year, month));
  // Not Date.UTC: it would read years 0–99 as 1900–1999.
  const d = new Date(0);
  d.setUTCFullYear(year, month, day);
  d.setUTCHours(anchor.getUTCHours(), anchor.getUTCMinutes(), anchor.getUTCSeconds(), anchor.getUTCMilliseconds());
  return inRange(d.getTime(), "anchor", () => `${anchor.toISOString()} plus ${n} month(s)`);
}

/** Start of period number `index` (0 = the one starting at the anchor). */
export function periodStart(anchor: Date, billingPeriod: BillingPeriod, index: number): Date {
  validDate(anchor, "anchor");
  whole(index, "index");
  const what = () => `period ${index} of a ${billingPeriod} cycle anchored at ${anchor.toISOString()}`;
  switch (billingPeriod) {
    case "daily":
      return inRange(anchor.getTime() + index * DAY_MS, "anchor", what);
    case "weekly":
      return inRange(anchor.getTime() + index * 7 * DAY_MS, "anchor", what);
    case "monthly":
    case "yearly": {
      const months = billingPeriod === "monthly" ? index : index * 12;
      try {
        return addMonths(anchor, months);
      } catch (error) {
        throw error instanceof ValidationError ? outOfRange("anchor", what()) : error;
      }
    }
    default:
      throw unknownPeriod(billingPeriod);
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
  validDate(anchor, "anchor");
  validDate(at, "at");
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
    default:
      throw unknownPeriod(billingPeriod);
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
  if (validityDays === null) return period.end;
  return inRange(
    period.start.getTime() + validityDays * DAY_MS,
    "validityDays",
    () => `${validityDays} day(s) after ${period.start.toISOString()}`,
  );
}

// ---------------------------------------------------------------------------------------------

function validDate(d: Date, path: string): void {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) {
    throw new ValidationError(`Invalid ${path}: must be a valid date`, [{ path, message: "must be a valid date" }]);
  }
}

function whole(n: number, path: string): void {
  if (!Number.isSafeInteger(n)) {
    throw new ValidationError(`Invalid ${path}: ${String(n)} is not an integer`, [
      { path, message: "must be a safe integer" },
    ]);
  }
}

/** `ms` as a Date, or a ValidationError naming `what()` when no Date can hold it (NaN included). */
function inRange(ms: number, path: string, what: () => string): Date {
  if (!(Math.abs(ms) <= MAX_TIME_MS)) throw outOfRange(path, what());
  return new Date(ms);
}

function outOfRange(path: string, what: string): ValidationError {
  return new ValidationError(
    `Invalid date: ${what} falls outside the dates a JavaScript Date can hold (${MIN_DATE.toISOString()} … ${MAX_DATE.toISOString()})`,
    [{ path, message: "the resulting date is outside the JavaScript Date range" }],
  );
}

function unknownPeriod(billingPeriod: never): ValidationError {
  return new ValidationError(`Invalid billingPeriod: ${String(billingPeriod)}`, [
    { path: "billingPeriod", message: "must be daily, weekly, monthly or yearly" },
  ]);
}
