import type { UsageInterval } from "../models/usage.js";

/*
 * Calendar windows in a time zone (docs/usage.md, "The query"): where an hour, day, week or month
 * starts in a zone, daylight saving time included, and the boundaries of a report's windows. The
 * usage report, revenue, spend limits and alerts all cut time with these.
 */

const formats = new Map<string, Intl.DateTimeFormat>();
function format(tz: string): Intl.DateTimeFormat {
  let f = formats.get(tz);
  if (f === undefined) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    formats.set(tz, f);
  }
  return f;
}

/** Wall-clock fields of instant `ms` in zone `tz` (month 1–12). */
export function wallClock(
  ms: number,
  tz: string,
): { year: number; month: number; day: number; hour: number; minute: number; second: number } {
  if (tz === "UTC") {
    // UTC's wall clock is the instant's own fields: no Intl (a tenth of a microsecond, not several).
    const d = new Date(ms);
    return {
      year: d.getUTCFullYear(),
      month: d.getUTCMonth() + 1,
      day: d.getUTCDate(),
      hour: d.getUTCHours(),
      minute: d.getUTCMinutes(),
      second: d.getUTCSeconds(),
    };
  }
  const out = { year: 0, month: 0, day: 0, hour: 0, minute: 0, second: 0 };
  for (const p of format(tz).formatToParts(new Date(ms))) {
    if (p.type in out) out[p.type as keyof typeof out] = Number(p.value);
  }
  if (out.year <= 0) out.year = 1 - out.year; // (years before 1 are outside DateInput's range)
  return out;
}

/** The zone's offset from UTC at instant `ms`, in ms (wall clock minus UTC). */
function offsetAt(ms: number, tz: string): number {
  const w = wallClock(ms, tz);
  const wall = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
  return wall - (ms - (((ms % 1000) + 1000) % 1000));
}

/**
 * The first instant whose wall clock in `tz` is at or after midnight starting the given date
 * (month 1–12; day may overflow, Date.UTC normalizes it). When midnight does not exist (a DST gap
 * at midnight), the day starts when the gap ends.
 */
export function startOfDay(year: number, month: number, day: number, tz: string): number {
  const wall = Date.UTC(year, month - 1, day);
  if (tz === "UTC") return wall;
  // The offsets a day before and after: midnight is at `wall` minus one of them (a zone changes
  // its offset at most once around a date). Both fit when midnight happens twice: the first.
  const before = wall - offsetAt(wall - 86_400_000, tz);
  const after = wall - offsetAt(wall + 86_400_000, tz);
  const isMidnight = (t: number) => {
    const w = wallClock(t, tz);
    return Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second) === wall;
  };
  const fits = [before, after].filter(isMidnight);
  if (fits.length > 0) return Math.min(...fits);
  // Midnight falls in a gap: the date begins when the clocks jump, at midnight by the old offset.
  return before;
}

/** The start of the window of `interval` in `tz` holding instant `ms`. */
export function windowStart(ms: number, interval: UsageInterval, tz: string): number {
  const w = wallClock(ms, tz);
  switch (interval) {
    case "hour":
      // The hour on the wall clock: an hour repeated when clocks go back is two windows.
      return ms - (w.minute * 60 + w.second) * 1000 - (((ms % 1000) + 1000) % 1000);
    case "day":
      return startOfDay(w.year, w.month, w.day, tz);
    case "week": {
      // ISO weeks: Monday.
      const dow = new Date(Date.UTC(w.year, w.month - 1, w.day)).getUTCDay();
      return startOfDay(w.year, w.month, w.day - ((dow + 6) % 7), tz);
    }
    case "month":
      return startOfDay(w.year, w.month, 1, tz);
  }
}

/** The start of the window after the one that starts at `start`. */
export function nextWindowStart(start: number, interval: UsageInterval, tz: string): number {
  if (interval === "hour") {
    // Past the hour, then back to the wall clock's hour (zones with half-hour shifts).
    const next = windowStart(start + 3_600_000, "hour", tz);
    return next > start ? next : start + 3_600_000;
  }
  const w = wallClock(start, tz);
  // From a start that is midnight (or a gap's end on that date): the next date's start.
  if (interval === "day") return startOfDay(w.year, w.month, w.day + 1, tz);
  if (interval === "week") return startOfDay(w.year, w.month, w.day + 7, tz);
  return startOfDay(w.year, w.month + 1, 1, tz);
}

/**
 * The longest a window of each interval can be, in ms. An hour window is at most an hour (see
 * `nextWindowStart`); a day, week or month in a zone is its wall-clock length plus the zone's
 * offset change inside it, and the time zone database's offsets all lie within 32 hours of each
 * other (local mean times from −15:56 to +15:13).
 */
const LONGEST_WINDOW: Record<UsageInterval, number> = {
  hour: 3_600_000,
  day: (24 + 32) * 3_600_000,
  week: (7 * 24 + 32) * 3_600_000,
  month: (31 * 24 + 32) * 3_600_000,
};

/**
 * The boundaries of a query's windows: `from`, each calendar boundary of `interval` in `tz`
 * strictly between `from` and `to`, and `to`; null when there would be more than `max` windows.
 * A range longer than `max` of the interval's longest window is refused before any window is
 * worked out (docs/usage.md, "The query"): a refused query costs nothing.
 */
export function usageBoundaries(
  from: number,
  to: number,
  interval: UsageInterval | null,
  tz: string,
  max: number,
): number[] | null {
  const out = [from];
  if (interval !== null) {
    if (to - from > max * LONGEST_WINDOW[interval]) return null;
    let b = nextWindowStart(windowStart(from, interval, tz), interval, tz);
    while (b < to) {
      if (out.length >= max) return null;
      out.push(b);
      b = nextWindowStart(b, interval, tz);
    }
  }
  out.push(to);
  return out;
}

/** The index of the window holding `ms` (a binary search of the boundaries), or -1 outside them. */
export function windowIndex(boundaries: readonly number[], ms: number): number {
  if (ms < boundaries[0]! || ms >= boundaries[boundaries.length - 1]!) return -1;
  let lo = 0;
  let hi = boundaries.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (boundaries[mid]! <= ms) lo = mid;
    else hi = mid;
  }
  return lo;
}
