/**
 * Spend limits per period, as pure functions (docs/teams-and-limits.md).
 *
 * A limit caps what the spends it applies to may take in one window: a calendar window in UTC
 * (day; week from Monday; month; year; or `every` n of them counted from 1970-01-01, weeks from
 * Monday 1969-12-29), or the account's subscription period. A limit applies to a spend when its
 * spender is unset or the spend's, its feature unset or the spend's, and its credit unit the
 * spend's (docs/units.md: no limit adds two units; a limit naming none counts the default unit); a
 * spend must fit every limit that applies (the tightest one is the one reported).
 *
 * The limits live on the account with what each has counted in its current window (`used`,
 * `windowStart`), so the unit of work that debits checks and counts them without another read,
 * and a concurrent spend conflicts on the account like any other. A window that has ended counts
 * as 0: nothing needs to reset it.
 */

import { SpendLimitError, ValidationError } from "../errors.js";
import { DEFAULT_UNIT } from "../models/common.js";
import {
  type LimitAlert,
  type LimitCycle,
  type LimitPeriod,
  type LimitUnit,
  type SpendLimit,
  type SpendLimitInput,
  type SpendLimitStatus,
  EVERY_UNIT,
  MAX_LIMITS,
  limitKey,
} from "../models/limits.js";
import type { Reservation } from "../models/index.js";
import { periodContaining } from "./periods.js";

const DAY_MS = 86_400_000;
const WEEK_MS = 7 * DAY_MS;
/** Monday 1969-12-29T00:00Z: weeks are counted from it. */
const FIRST_MONDAY_MS = -3 * DAY_MS;

/** Who spends and on what; null: not named. */
export interface Spend {
  spender: string | null;
  feature: string | null;
  /** The credit unit spent (docs/units.md); absent or null: the default unit. */
  unit?: string | null | undefined;
}

/** A window `[start, end)`, ms since the epoch. */
export interface LimitWindow {
  start: number;
  end: number;
}

/** The calendar window of `period` (UTC) that contains `at` (ms since the epoch). */
export function calendarWindow(period: LimitPeriod, at: number): LimitWindow {
  const unit: LimitUnit = typeof period === "string" ? period : period.unit;
  const n = typeof period === "string" ? 1 : period.every;
  if (!Number.isFinite(at))
    throw new ValidationError("Invalid date", [{ path: "at", message: "must be a valid date" }]);
  switch (unit) {
    case "day": {
      const start = Math.floor(Math.floor(at / DAY_MS) / n) * n * DAY_MS;
      return { start, end: start + n * DAY_MS };
    }
    case "week": {
      const start = FIRST_MONDAY_MS + Math.floor(Math.floor((at - FIRST_MONDAY_MS) / WEEK_MS) / n) * n * WEEK_MS;
      return { start, end: start + n * WEEK_MS };
    }
    case "month": {
      const d = new Date(at);
      const months = (d.getUTCFullYear() - 1970) * 12 + d.getUTCMonth();
      const first = Math.floor(months / n) * n;
      return { start: monthStart(first), end: monthStart(first + n) };
    }
    case "year": {
      const years = new Date(at).getUTCFullYear() - 1970;
      const first = Math.floor(years / n) * n;
      return { start: monthStart(first * 12), end: monthStart((first + n) * 12) };
    }
  }
}

/** 00:00Z on the first day of month number `months` counted from January 1970. */
function monthStart(months: number): number {
  const d = new Date(0);
  // Not Date.UTC: it would read years 0–99 as 1900–1999.
  d.setUTCFullYear(1970 + Math.floor(months / 12), ((months % 12) + 12) % 12, 1);
  return d.getTime();
}

/** The subscription period of `cycle` that contains `at` (see ./periods.ts: month ends clamp, the anchor's time of day kept). */
export function cycleWindow(cycle: LimitCycle, at: number): LimitWindow {
  const p = periodContaining(new Date(cycle.anchorAt), cycle.billingPeriod, new Date(at));
  return { start: p.start.getTime(), end: p.end.getTime() };
}

/** The window of `limit` that contains `at`. */
export function windowOf(limit: SpendLimit, at: number): LimitWindow {
  if (limit.period !== null) return calendarWindow(limit.period, at);
  if (limit.cycle !== null) return cycleWindow(limit.cycle, at);
  // A subscription limit whose subscription ended: one window for all time (nothing resets it).
  return ALL_TIME;
}

const ALL_TIME: LimitWindow = { start: 0, end: 8.64e15 };

/**
 * True when `limit` applies to `spend`: its spender unset or the spend's, and so for its feature;
 * and in the spend's credit unit (null or absent on either: the default unit).
 */
export function applies(
  limit: Pick<SpendLimit, "spender" | "feature"> & { unit?: string | null | undefined },
  spend: Spend,
): boolean {
  return (
    (limit.spender === null || limit.spender === spend.spender) &&
    (limit.feature === null || limit.feature === spend.feature) &&
    (limit.unit === EVERY_UNIT || (limit.unit ?? null) === (spend.unit ?? null))
  );
}

/** A limit that applies to a spend, with its window now and what is left in it. */
export interface LimitHeadroom {
  limit: SpendLimit;
  used: number;
  left: number;
  window: LimitWindow;
}

/**
 * The tightest of `limits` that apply to `spend` at `at`: the one with the least left (the first of
 * equals). Null when none applies.
 */
export function tightestLimit(limits: readonly SpendLimit[], spend: Spend, at: number): LimitHeadroom | null {
  let best: LimitHeadroom | null = null;
  for (const limit of limits) {
    if (!applies(limit, spend)) continue;
    const h = headroomOf(limit, at);
    if (best === null || h.left < best.left) best = h;
  }
  return best;
}

/** What `limit` has left in its window of `at`. */
function headroomOf(limit: SpendLimit, at: number): LimitHeadroom {
  const window = windowOf(limit, at);
  const used = limit.windowStart === window.start ? limit.used : 0;
  return { limit, used, left: Math.max(0, limit.amount - used), window };
}

/**
 * The room `limits` leave a spend at `at` (docs/teams-and-limits.md, "Leases"): the least left
 * under the limits that apply to it, and the earliest end of their windows (ms). Null when none
 * applies. A lease's block is sized within `left` and serves until `until`, so its charges count
 * in the window they fall in.
 */
export function limitRoom(
  limits: readonly SpendLimit[],
  spend: Spend,
  at: number,
): { left: number; until: number } | null {
  let left = Infinity;
  let until = Infinity;
  for (const limit of limits) {
    if (!applies(limit, spend)) continue;
    const h = headroomOf(limit, at);
    left = Math.min(left, h.left);
    until = Math.min(until, h.window.end);
  }
  return left === Infinity ? null : { left, until };
}

/**
 * When, by the manager's clock (ms), a limit refusal or a list of limit statuses was made: a
 * `SpendLimitError` from `limitError`, an array from `limitStatuses`. The HTTP layer's
 * `Retry-After` counts from it to `resetsAt` (docs/teams-and-limits.md, "Over HTTP"), so a manager
 * with its own `clock` (docs/api.md) gets a hint on that clock, not on the host's.
 */
export const clockTimes = new WeakMap<object, number>();

/** The refusal of a spend of `requested` that does not fit `h`, made at `at` (the manager's clock, ms). */
export function limitError(
  h: LimitHeadroom,
  requested: number,
  what = "spend",
  at?: number,
  spendUnit: string | null = null,
): SpendLimitError {
  const l = h.limit;
  const who = [l.spender === null ? null : `spender ${l.spender}`, l.feature === null ? null : `feature ${l.feature}`]
    .filter((x) => x !== null)
    .join(", ");
  const resetsAt = new Date(h.window.end).toISOString();
  // A limit in every unit names the spend's unit.
  const unit = l.unit === EVERY_UNIT ? spendUnit : (l.unit ?? null);
  const details = { requested, limit: describeLimit(l), used: h.used, remaining: h.left, resetsAt };
  const error = new SpendLimitError(
    `Cannot ${what} ${requested} ${unit ?? DEFAULT_UNIT}: the spend limit of ${l.amount} per ${describePeriod(l)}${who === "" ? "" : ` for ${who}`} has ${h.left} left until ${resetsAt}.`,
    // Names its unit when not the default one, as InsufficientCreditsError does (docs/units.md).
    unit === null ? details : { ...details, unit },
  );
  if (at !== undefined) clockTimes.set(error, at);
  return error;
}

/** A limit as error details, events and `getLimits` show it: `unit` only when not the default one. */
export function describeLimit(
  l: SpendLimit,
): Pick<SpendLimitStatus, "spender" | "feature" | "unit" | "amount" | "period" | "resetsWith"> {
  const described: Pick<SpendLimitStatus, "spender" | "feature" | "unit" | "amount" | "period" | "resetsWith"> = {
    spender: l.spender,
    feature: l.feature,
    amount: l.amount,
    period: l.period,
    resetsWith: l.period === null ? "subscription" : null,
  };
  if (l.unit != null) described.unit = l.unit;
  return described;
}

function describePeriod(l: SpendLimit): string {
  const p = l.period;
  if (p === null) return "subscription period";
  return typeof p === "string" ? p : p.every === 1 ? p.unit : `${p.every} ${p.unit}s`;
}

/**
 * A threshold of a limit a spend took it to, 80 % (`warning`) or 100 % (`reached`) of its amount,
 * not sent before in the window (docs/teams-and-limits.md, "Limit notifications").
 */
export interface LimitCrossing {
  /** The limit as it was before the spend. */
  limit: SpendLimit;
  level: LimitAlert;
  /** What its window counted after the spend. */
  used: number;
  /** The window (ms since the epoch). */
  windowStart: number;
  resetsAt: number;
}

/** What counting a spend did to the limits that apply to it. */
export interface Counted {
  /** The account's limits after the spend (a new array; the given one is not changed). */
  limits: SpendLimit[];
  /** Limits this spend took past 80 % of their amount (from below), and past 100 %. */
  crossed: LimitCrossing[];
  /** True when the spend passed a limit (only a forced count can). */
  over: boolean;
}

/**
 * Counts a spend of `amount` at `at` against every limit that applies to `spend`. Refused with a
 * `SpendLimitError` (naming the tightest limit) when it does not fit one of them, unless `force`
 * (usage already delivered, docs/concepts.md "Overdraft and debt"): then it is counted all the
 * same and `over` says it passed a limit.
 *
 * Late usage (docs/teams-and-limits.md, "Late usage and reversals"): `at` is when it happened and
 * `now` when it is recorded. It counts in the window of `at` when that window is still the current
 * one (`now`'s), and is checked there as any spend; a window that has ended keeps no count, so a
 * spend of an ended window is counted against no limit of that period.
 */
export function countSpend(
  limits: readonly SpendLimit[],
  spend: Spend,
  amount: number,
  at: number,
  options: { force?: boolean | undefined; what?: string | undefined; now?: number | undefined } = {},
): Counted {
  if (options.now !== undefined && options.now !== at) {
    const live = limits.filter((l) => windowOf(l, at).start === windowOf(l, options.now as number).start);
    if (live.length !== limits.length) {
      // Count the limits whose window of `at` is still current; the others stay as they are.
      const counted = countSpend(live, spend, amount, at, { force: options.force, what: options.what });
      let j = 0;
      const out = limits.map((l) => (live.includes(l) ? (counted.limits[j++] as SpendLimit) : l));
      return { ...counted, limits: out };
    }
  }
  let over = false;
  const crossed: LimitCrossing[] = [];
  const out = limits.map((limit): SpendLimit => {
    if (amount === 0 || !applies(limit, spend)) return limit;
    const window = windowOf(limit, at);
    const inWindow = limit.windowStart === window.start;
    const before = inWindow ? limit.used : 0;
    const after = before + amount;
    // (Past the limit is more than what is left, `max(0, amount - before)`: refused unless forced.)
    if (after > limit.amount) over = true;
    // Edges (docs/teams-and-limits.md, "Limit notifications"): each threshold the spend takes the
    // window to that was not sent in it yet; both, in that order, when one spend passes both. What
    // was sent stays sent for the window, even when a released hold brings `used` back below.
    const sent = inWindow ? alertedOf(limit) : 0;
    const reaches = alertLevel(after, limit.amount);
    if (reaches > sent) {
      const c = { limit, used: after, windowStart: window.start, resetsAt: window.end };
      if (sent < 1) crossed.push({ ...c, level: "warning" });
      if (reaches === 2) crossed.push({ ...c, level: "reached" });
    }
    return {
      ...limit,
      used: after,
      windowStart: window.start,
      alerted: ALERTS[Math.max(reaches, sent)] as LimitAlert | null,
    };
  });
  if (over && options.force !== true) {
    // The tightest limit that applies names the refusal (the rare path: read again).
    throw limitError(tightestLimit(limits, spend, at) as LimitHeadroom, amount, options.what, at, spend.unit ?? null);
  }
  return { limits: out, crossed, over };
}

/** A limit's thresholds by index: 0 none, 1 `warning` (80 %), 2 `reached` (100 %). */
const ALERTS: readonly (LimitAlert | null)[] = [null, "warning", "reached"];

/**
 * The thresholds `used` is at for a limit of `amount`: 0 below 80 %, 1 from 80 %, 2 from 100 %. A
 * limit of 0 has none (every spend it applies to is refused; a forced one is not a crossing).
 */
export function alertLevel(used: number, amount: number): 0 | 1 | 2 {
  if (amount <= 0) return 0;
  return used >= amount ? 2 : used * 5 >= amount * 4 ? 1 : 0;
}

/**
 * The highest threshold sent in the limit's window `windowStart` (0, 1, 2; see `alertLevel`). A
 * limit without `alerted`: the thresholds its count is past count as sent.
 */
export function alertedOf(limit: SpendLimit): 0 | 1 | 2 {
  const a = limit.alerted;
  if (a === undefined) return alertLevel(limit.used, limit.amount);
  return a === null ? 0 : a === "warning" ? 1 : 2;
}

/**
 * Trues up a hold's count at its commit or release: the hold counted `held` when it was placed at
 * `placedAt`; `spent` of it was spent (0 on a release). What was not spent is taken off the limits
 * whose window is still the one the hold counted in (an ended window is left as it was); spending
 * more than was held counts the excess in the current window, even past a limit (the usage was
 * delivered).
 */
export function trueUpHold(
  limits: readonly SpendLimit[],
  spend: Spend,
  held: number,
  spent: number,
  placedAt: number,
  at: number,
): Counted {
  if (spent > held) return countSpend(limits, spend, spent - held, at, { force: true });
  const back = held - spent;
  const out = limits.map((limit) => {
    if (back === 0 || !applies(limit, spend)) return limit;
    const then = windowOf(limit, placedAt).start;
    if (limit.windowStart !== then || windowOf(limit, at).start !== then) return limit;
    return { ...limit, used: Math.max(0, limit.used - back) };
  });
  return { limits: out, crossed: [], over: false };
}

/**
 * Gives a reversed spend back to the limits that counted it (docs/teams-and-limits.md, "Late usage
 * and reversals"): `amount` credits of a charge of `spend` — its entry's `seq`, and `at` when it was
 * made (its `occurredAt`, else `createdAt`; ms) — come off each limit that applies to it, was set
 * before the charge was recorded (`since < seq`), and still counts the charge's window: the window
 * holding `at` is the one it tracks and is the current one at `now`. Any other
 * limit is left as it was: one set after the charge never counted it, and a window that has ended
 * has nothing left to spend in it. A limit reached is no longer reached when the count falls below
 * its amount, and a threshold the count falls back below is armed again: the next spend that
 * reaches it sends it again.
 */
export function giveBackSpend(
  limits: readonly SpendLimit[],
  spend: Spend,
  amount: number,
  charge: { seq: number; at: number },
  now: number,
): SpendLimit[] {
  return limits.map((limit) => {
    if (amount <= 0 || !applies(limit, spend) || limit.since >= charge.seq) return limit;
    const then = windowOf(limit, charge.at).start;
    if (limit.windowStart !== then || windowOf(limit, now).start !== then) return limit;
    const used = Math.max(0, limit.used - amount);
    const alerted = ALERTS[Math.min(alertedOf(limit), alertLevel(used, limit.amount))] as LimitAlert | null;
    return { ...limit, used, alerted };
  });
}

/**
 * The account's limits after `setLimits(inputs)`: the list replaced, each limit keeping what it
 * counted in its window (and `since`) when one with the same key (spender, feature, window) was
 * there before — so a limit changed mid-window (its amount raised or lowered) still counts what was
 * spent in it. A new limit counts the spends recorded after `seq`, the account's seq now, and the
 * holds in flight (`held`: the account's active holds, at `now`) that it applies to and that were
 * placed in its current window — a limit counts what is spent or held, so their commit or release
 * trues it up as for a hold placed under it (docs/teams-and-limits.md, "Holds"). `cycle`: the
 * account's subscription cycle, required by a `resetsWith: "subscription"` limit.
 */
export function replaceLimits(
  existing: readonly SpendLimit[] | null,
  inputs: readonly SpendLimitInput[],
  cycle: LimitCycle | null,
  seq: number,
  held: InFlight = NONE_IN_FLIGHT,
): SpendLimit[] {
  const before = new Map((existing ?? []).map((l) => [keyOf(l), l]));
  return inputs.map((input, i) => {
    const period = input.period === undefined ? null : normalizePeriod(input.period);
    if (period === null && cycle === null) {
      throw new ValidationError('A limit with resetsWith: "subscription" needs an active subscription', [
        { path: `${i}.resetsWith`, message: "the account has no active subscription" },
      ]);
    }
    const unit = input.unit === undefined || input.unit === DEFAULT_UNIT ? null : input.unit;
    const limit: SpendLimit = {
      spender: input.spender ?? null,
      feature: input.feature ?? null,
      ...(unit === null ? {} : { unit }),
      amount: input.amount,
      period,
      cycle: period === null ? cycle : null,
      since: seq,
      used: 0,
      windowStart: null,
      alerted: null,
    };
    countHeld(limit, held);
    const old = before.get(keyOf(limit));
    if (old !== undefined) {
      limit.since = old.since;
      limit.used = old.used;
      limit.windowStart = old.windowStart;
      // Its thresholds stay sent while its amount is the same. A new amount re-arms those the
      // window's count is below under it: a later spend that reaches them sends them again. (A
      // threshold not sent yet is sent by the next spend past it, as always: docs/teams-and-limits.md,
      // "Limit notifications".)
      limit.alerted =
        old.amount === limit.amount && old.alerted !== undefined
          ? old.alerted
          : (ALERTS[Math.min(alertedOf(old), alertLevel(old.used, limit.amount))] as LimitAlert | null);
      // A subscription limit whose cycle moved starts a new window.
      if (
        period === null &&
        (old.cycle?.anchorAt !== cycle?.anchorAt || old.cycle?.billingPeriod !== cycle?.billingPeriod)
      ) {
        limit.since = seq;
        limit.used = 0;
        limit.windowStart = null;
        limit.alerted = null;
        countHeld(limit, held);
      }
    }
    return limit;
  });
}

/** The account's active holds and the time a limit is set at (`replaceLimits`). */
export interface InFlight {
  holds: readonly Reservation[];
  now: number;
}

const NONE_IN_FLIGHT: InFlight = { holds: [], now: 0 };

/** Counts into a limit starting its count the active holds it applies to, placed in its current window. */
function countHeld(limit: SpendLimit, { holds, now }: InFlight): void {
  if (holds.length === 0) return;
  const window = windowOf(limit, now).start;
  let used = 0;
  for (const h of holds) {
    if (
      h.status !== "active" ||
      !applies(limit, { spender: h.spender ?? null, feature: h.feature ?? null, unit: h.unit })
    )
      continue;
    if (windowOf(limit, h.createdAt.getTime()).start === window) used += h.amount;
  }
  if (used === 0) return;
  // Its thresholds are not sent: the next spend past one sends it ("Limit notifications").
  limit.used = used;
  limit.windowStart = window;
}

/**
 * The account's limits after `setLimit(input)`: the limit with the input's key (spender, feature,
 * window) changed in place, keeping what its window counted as `replaceLimits` does, or added at
 * the end, counting the spends after `seq`; every other limit exactly as it was. More than `MAX_LIMITS`: a `ValidationError`.
 */
export function withLimit(
  existing: readonly SpendLimit[] | null,
  input: SpendLimitInput,
  cycle: LimitCycle | null,
  seq: number,
  held: InFlight = NONE_IN_FLIGHT,
): SpendLimit[] {
  const list = existing ?? [];
  const limit = replaceLimits(list, [input], cycle, seq, held)[0] as SpendLimit;
  const key = keyOf(limit);
  const at = list.findIndex((l) => keyOf(l) === key);
  if (at !== -1) {
    const out = list.slice();
    out[at] = limit;
    return out;
  }
  if (list.length >= MAX_LIMITS) {
    throw new ValidationError(`An account may hold at most ${MAX_LIMITS} limits`, [
      { path: "", message: `the account already has ${list.length} limits` },
    ]);
  }
  return [...list, limit];
}

/** `{ every: 1, unit }` is `unit`. */
function normalizePeriod(p: LimitPeriod): LimitPeriod {
  return typeof p === "string" || p.every !== 1 ? p : p.unit;
}

function keyOf(l: SpendLimit): string {
  return limitKey(describeLimit(l));
}

/** The limits `removeLimit(which)` leaves: all but those with exactly this spender, feature and unit (and window, when given). */
export function withoutLimit(
  existing: readonly SpendLimit[],
  which: {
    spender?: string | undefined;
    feature?: string | undefined;
    unit?: string | undefined;
    period?: LimitPeriod | undefined;
    resetsWith?: string | undefined;
  },
): SpendLimit[] {
  const windowGiven = which.period !== undefined || which.resetsWith !== undefined;
  const key = windowGiven
    ? limitKey({ ...which, period: which.period === undefined ? null : normalizePeriod(which.period) })
    : null;
  const unit = which.unit === undefined || which.unit === DEFAULT_UNIT ? null : which.unit;
  return existing.filter((l) => {
    if (l.spender !== (which.spender ?? null) || l.feature !== (which.feature ?? null) || (l.unit ?? null) !== unit)
      return true;
    return key !== null && keyOf(l) !== key;
  });
}

/** Each limit as `getLimits` reports it at `at`. */
export function limitStatuses(limits: readonly SpendLimit[], at: number): SpendLimitStatus[] {
  const statuses = limits.map((l): SpendLimitStatus => {
    const { used, left, window } = headroomOf(l, at);
    return {
      ...describeLimit(l),
      used,
      remaining: left,
      windowStart: new Date(window.start),
      resetsAt: new Date(window.end),
    };
  });
  clockTimes.set(statuses, at);
  return statuses;
}
