import { own } from "./own.js";
import type {
  Account,
  AlertMark,
  AlertState,
  AlertStateName,
  AlertStatus,
  AlertThreshold,
  Grant,
  JournalEntry,
  LimitCycle,
} from "../models/index.js";
import { DEFAULT_UNIT } from "../models/common.js";
import { cycleWindow } from "./limits.js";
import { isOpenGrant } from "./order.js";
import { type DrawnOut, drawnOutOf, isAllowanceKey } from "./allowance.js";
import { availableOf, inScope } from "./scope.js";
import { groupValue, isNegated, placedAt, usageEntryTypes, usageKind, usageParts } from "./usage.js";
import { nextWindowStart, windowStart } from "./windows.js";

/**
 * Alert thresholds as pure functions over one account (docs/notifications.md, "Alerts"): each
 * threshold is `ok` or `in_alarm`, the line on the alarm side; a move into alarm is one
 * `alert_triggered`, the moves out of one change are one `alert_resolved`. Called inside the unit
 * of work that moves the value, so the marks on the account and the events commit together.
 */

const DAY_MS = 86_400_000;

/** A spend naming no feature nor spender: what `available` is for. */
const NO_SPEND = { spender: null, feature: null } as const;

/**
 * The credit unit threshold `t` watches (docs/units.md): null, the default unit, when it names none
 * (or names the default one). The built-in `low_credits` and `credits_exhausted` watch the default unit.
 */
export function unitOfThreshold(t: AlertThreshold): string | null {
  return t.unit === undefined || t.unit === DEFAULT_UNIT ? null : t.unit;
}

/** A `period_spend` threshold. */
export type PeriodSpend = Extract<AlertThreshold, { kind: "period_spend" }>;

/** A window `[start, end)`, ms since the epoch. */
export interface SpendWindow {
  start: number;
  end: number;
}

/**
 * What an evaluation is given besides the account, read beside its unit of work
 * (src/core/services/alert-reads.ts) where `needsCycle` and `countsStarting` say so.
 */
export interface AlertInputs {
  /**
   * The account's subscription cycle, read in this unit of work (null: no active subscription);
   * undefined: not read, the one stored on the account holds.
   */
  cycle?: LimitCycle | null | undefined;
  /**
   * For the `period_spend` thresholds whose count starts now (`countsStarting`), by id: the spend
   * captured in their current window before this change, from the journal.
   */
  spentBefore?: ReadonlyMap<string, number> | undefined;
}

/** An alert event to record: its type, payload and dedupe key (the caller makes the outbox row). */
export interface AlertEvent {
  type: "alert_triggered" | "alert_resolved";
  payload: Record<string, unknown>;
  dedupeKey: string;
}

/**
 * The stored mark of threshold `id`: an own property of `marks` only. An id is the caller's text
 * and may be a name `Object.prototype` has (`__proto__`, `constructor`, `toString`): a plain
 * `marks[id]` would read the prototype's member (docs/customer-state.md, "Alerts").
 */
export function markOf(marks: Readonly<Record<string, AlertMark>> | undefined, id: string): AlertMark | undefined {
  return marks !== undefined && Object.hasOwn(marks, id) ? marks[id] : undefined;
}

/**
 * Sets threshold `id`'s mark as an own property, whatever the id (`marks[id] = mark` with an id of
 * `__proto__` would replace the object's prototype and store nothing).
 */
function setMark(marks: Record<string, AlertMark>, id: string, mark: AlertMark): void {
  Object.defineProperty(marks, id, { value: mark, writable: true, enumerable: true, configurable: true });
}

/** The thresholds that apply to `account`: its own, else the service's `defaults`. */
export function thresholdsOf(
  account: Account,
  defaults: readonly AlertThreshold[] | undefined,
): readonly AlertThreshold[] {
  return account.alert?.thresholds ?? defaults ?? [];
}

/** The line of a threshold: `atOrBelow` or `atOrAbove`. */
export function lineOf(t: AlertThreshold): number {
  return t.kind === "available" || t.kind === "left_percent" ? t.atOrBelow : t.atOrAbove;
}

/**
 * The window `[start, end)` of a `period_spend` threshold holding `at` (ms): its calendar window in
 * its time zone, or the period of the account's subscription `cycle` (null without one: the
 * threshold has no window and counts nothing).
 */
export function spendWindow(t: PeriodSpend, at: number, cycle: LimitCycle | null): SpendWindow | null {
  if (t.window === "subscription_period") return cycle === null ? null : cycleWindow(cycle, at);
  const tz = t.timeZone ?? "UTC";
  const start = windowStart(at, t.window, tz);
  return { start, end: nextWindowStart(start, t.window, tz) };
}

/** The subscription cycle an evaluation of `account` uses: the one read now, else the stored one. */
function cycleOf(account: Account, inputs: AlertInputs): LimitCycle | null {
  return inputs.cycle !== undefined ? inputs.cycle : (account.alert?.cycle ?? null);
}

/** Whether two cycles are the same (none and not read are the same: no period). */
function sameCycle(a: LimitCycle | null | undefined, b: LimitCycle | null | undefined): boolean {
  if (a == null || b == null) return a == null && b == null;
  return a.anchorAt === b.anchorAt && a.billingPeriod === b.billingPeriod;
}

/**
 * Whether an evaluation of `account` needs its subscription's cycle read (docs/customer-state.md,
 * "Alerts"): a `subscription_period` threshold applies and the cycle was never read, or one of
 * them applies for the first time (no mark), or the thresholds were just set (`recount`).
 */
export function needsCycle(
  account: Account,
  defaults: readonly AlertThreshold[] | undefined,
  recount: boolean,
): boolean {
  const periods = thresholdsOf(account, defaults).filter(
    (t) => t.kind === "period_spend" && t.window === "subscription_period",
  );
  if (periods.length === 0) return false;
  const marks = account.alert?.marks;
  return recount || account.alert?.cycle === undefined || periods.some((t) => markOf(marks, t.id) === undefined);
}

/**
 * The `period_spend` thresholds of `account` whose count starts in this evaluation, so the spend
 * already captured in their current window must be read from the journal (docs/customer-state.md,
 * "Alerts"): each one without a mark (it applies for the first time), every one when `recount`
 * (the thresholds were just set), and the `subscription_period` ones when `cycle` (read now) is not
 * the stored one. With `from`, the earliest start of their windows at `at`: the journal is read back
 * to it. Null: none.
 */
export function countsStarting(
  account: Account,
  defaults: readonly AlertThreshold[] | undefined,
  at: number,
  inputs: AlertInputs,
  recount: boolean,
): { thresholds: PeriodSpend[]; from: number } | null {
  const marks = account.alert?.marks;
  const cycle = cycleOf(account, inputs);
  // A cycle read now that is not the stored one (a subscription started, changed its cycle or ended).
  const moved = inputs.cycle !== undefined && !sameCycle(inputs.cycle, account.alert?.cycle);
  const thresholds: PeriodSpend[] = [];
  let from = Infinity;
  for (const t of thresholdsOf(account, defaults)) {
    if (t.kind !== "period_spend") continue;
    if (!recount && markOf(marks, t.id) !== undefined && !(moved && t.window === "subscription_period")) continue;
    const window = spendWindow(t, at, cycle);
    if (window === null) continue;
    thresholds.push(t);
    from = Math.min(from, window.start);
  }
  return thresholds.length === 0 ? null : { thresholds, from };
}

/**
 * Captured spend in each of `thresholds`' current windows at `at` (by id) among `entries`: the
 * account's journal back to their earliest window start (`countsStarting`), counted by
 * `spendOfEntry` as the evaluation counts a change's entries.
 */
export function spentIn(
  thresholds: readonly PeriodSpend[],
  entries: readonly JournalEntry[],
  at: number,
  cycle: LimitCycle | null,
): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of thresholds) {
    const window = spendWindow(t, at, cycle);
    let spent = 0;
    if (window !== null) for (const e of entries) spent += spendOfEntry(t, e, window);
    out.set(t.id, Math.max(0, spent));
  }
  return out;
}

/** The entry types that may be spend by the rules of usage: what a read of an account's earlier spend asks the journal for. */
export const SPEND_ENTRY_TYPES = usageEntryTypes();

/**
 * Captured spend an entry adds to a `period_spend` threshold's window: its `spend` by the rules of
 * usage (docs/usage.md; `usageParts`, as every store's usage report and the recount beside the
 * unit of work sum it), so a deduction or a captured hold adds its amount, a reversal takes what
 * it gives back, a payment's take-back is no spend; only the parts of the threshold's spender and
 * feature (where set: a part's own, else the entry's), placed in the window by `occurredAt` (else
 * `createdAt`).
 */
export function spendOfEntry(t: PeriodSpend, e: JournalEntry, window: SpendWindow): number {
  // Only the spends in the threshold's unit (docs/units.md).
  if (e.amount === 0 || (e.unit ?? null) !== unitOfThreshold(t) || usageKind(e) !== "spend") return 0;
  const at = placedAt(e);
  if (at < window.start || at >= window.end) return 0;
  // A kind's parts add up to its credits: without a spender or feature, the entry's own.
  if (t.spender === undefined && t.feature === undefined) return isNegated(e) ? -e.amount : e.amount;
  let spent = 0;
  for (const p of usageParts(e)) {
    if (p.kind !== "spend") continue;
    if (t.spender !== undefined && groupValue("spender", e.userId, e, p) !== t.spender) continue;
    if (t.feature !== undefined && groupValue("feature", e.userId, e, p) !== t.feature) continue;
    spent += p.credits;
  }
  return spent;
}

/** What one scope of grants (the unscoped pool, or one scope) holds: given, left. */
interface ScopeFigures {
  scope: Grant["scope"];
  granted: number;
  remaining: number;
}

/**
 * The figures the `left_percent` and `expiring` thresholds of one evaluation read, computed once
 * per evaluation whatever the number of thresholds (docs/benchmarks.md, "Alerts"): one pass over
 * the open grants, the first time a threshold asks, giving what each scope of grants was given and
 * holds, and what expires within each `expiring` threshold's days (each grant counted once, in the
 * shortest window holding it). An account whose soonest expiry (`nextExpiryAt`) is beyond a
 * threshold's days has nothing expiring within them: no grant is read for it.
 */
class Figures {
  private scopes: ScopeFigures[] | undefined;
  /** What expires within each of `windows` (the running total, shortest window first). */
  private upTo: number[] | undefined;
  private readonly percents = new Map<string | null, { granted: number; left: number }>();
  /** What each scope's grants drawn out in its current allowance were given (./allowance.ts). */
  private drawn: DrawnOut[] | undefined;

  constructor(
    private readonly account: Account,
    private readonly grants: () => readonly Grant[],
    private readonly now: number,
    /** The distinct `expiring` thresholds' windows, in ms, shortest first. */
    private readonly windows: readonly number[],
    /** The credit unit whose figures and grants it reads (null: the default unit, docs/units.md). */
    private readonly unit: string | null = null,
  ) {}

  /** The balance, reserved and debt of its unit. */
  private own(): { balance: number; reserved: number; debt: number } {
    if (this.unit === null) return this.account;
    return own(this.account.units, this.unit) ?? { balance: 0, reserved: 0, debt: 0 };
  }

  /**
   * What the grants behind the pool (null) or `feature` were granted in their current allowance
   * (the usable ones, and those drawn out since their scope last had nothing left: ./allowance.ts),
   * and what they hold less the debt.
   */
  behind(feature: string | null): { granted: number; left: number } {
    const known = this.percents.get(feature);
    if (known !== undefined) return known;
    this.scan();
    let granted = 0;
    let held = 0;
    const spend = { spender: null, feature };
    for (const s of this.scopes as ScopeFigures[]) {
      if (!inScope(s.scope, spend)) continue;
      granted += s.granted;
      held += s.remaining;
    }
    for (const d of (this.drawn ??= drawnOutOf(this.account)))
      if (d.unit === this.unit && inScope(d.scope, spend)) granted += d.amount;
    const out = { granted, left: held - this.own().debt };
    this.percents.set(feature, out);
    return out;
  }

  /**
   * The account's `available` (`availableOf`, ./scope.ts): `balance − reserved`, less the unheld
   * credits of its scoped grants (read only for an account given one).
   */
  available(): number {
    const f = this.own();
    const unheld = f.balance - f.reserved;
    if (this.account.scoped !== true) return unheld;
    this.scan();
    let scoped = 0;
    for (const s of this.scopes as ScopeFigures[]) if (!inScope(s.scope, NO_SPEND)) scoped += s.remaining;
    return unheld - scoped;
  }

  /** What is left of the open grants expiring after now and within `days` days. */
  expiringWithin(days: number): number {
    const next = this.account.nextExpiryAt;
    const until = this.now + days * DAY_MS;
    if (next === null || next.getTime() > until) return 0;
    this.scan();
    return (this.upTo as number[])[this.windows.indexOf(days * DAY_MS)] ?? 0;
  }

  /** The index of the shortest of `windows` holding an expiry at `at` (ms; binary search). */
  private windowOf(at: number): number {
    let lo = 0;
    let hi = this.windows.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.now + (this.windows[mid] as number) < at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The one pass over the open grants. */
  private scan(): void {
    if (this.scopes !== undefined) return;
    const groups = new Map<string, ScopeFigures>();
    const within = new Array<number>(this.windows.length).fill(0);
    const now = this.now;
    const horizon = now + (this.windows[this.windows.length - 1] ?? -1);
    for (const g of this.grants()) {
      // An upcoming grant is not granted until it starts (docs/units.md, "Grants that start later");
      // only its unit's grants count.
      if (!isOpenGrant(g) || g.upcoming === true || (g.unit ?? null) !== this.unit) continue;
      const at = g.expiresAt?.getTime() ?? null;
      if (at !== null && at > now && at <= horizon) {
        const i = this.windowOf(at);
        within[i] = (within[i] ?? 0) + g.remaining;
      }
      // Usable: not past its expiry (a grant an unsettled read still lists).
      if (at !== null && at <= now) continue;
      const key = g.scope == null ? "" : JSON.stringify([g.scope.features ?? null, g.scope.spenders ?? null]);
      const group = groups.get(key);
      if (group === undefined) groups.set(key, { scope: g.scope, granted: g.amount, remaining: g.remaining });
      else {
        group.granted += g.amount;
        group.remaining += g.remaining;
      }
    }
    this.scopes = [...groups.values()];
    let total = 0;
    this.upTo = within.map((n) => (total += n));
  }
}

/** The figures of one evaluation of `list` on `account` at `now`, by credit unit (`Figures`, one per unit read). */
function figuresOf(
  account: Account,
  grants: () => readonly Grant[],
  now: number,
  list: readonly AlertThreshold[],
): (unit: string | null) => Figures {
  const windows = new Map<string | null, Set<number>>();
  for (const t of list) {
    if (t.kind !== "expiring") continue;
    const u = unitOfThreshold(t);
    let set = windows.get(u);
    if (set === undefined) windows.set(u, (set = new Set()));
    set.add(t.withinDays * DAY_MS);
  }
  let memo: readonly Grant[] | undefined;
  const all = () => (memo ??= grants());
  const byUnit = new Map<string | null, Figures>();
  return (unit) => {
    let f = byUnit.get(unit);
    if (f === undefined) {
      const w = [...(windows.get(unit) ?? [])].sort((a, b) => a - b);
      byUnit.set(unit, (f = new Figures(account, all, now, w, unit)));
    }
    return f;
  };
}

/** A threshold's value and whether it is on the alarm side; the window and its count for `period_spend`. */
interface Reading {
  value: number | null;
  alarm: boolean;
  windowStart?: number | null;
  spent?: number;
}

/**
 * `left_percent`'s value: what is left behind the pool (or `feature`) as a percentage of what its
 * grants were granted in their current allowance, the grants drawn to their last credit since their
 * scope last had nothing left included (docs/customer-state.md, "What was granted"): the customer
 * state's figures (`figuresBehind`, ./scope.ts), summed per scope of grants (`Figures`); 0 when
 * nothing is granted behind it (nothing is left). The exact share, not rounded; compared in whole
 * numbers: left × 100 <= atOrBelow × granted, the line included.
 */
function leftPercent(t: Extract<AlertThreshold, { kind: "left_percent" }>, figures: Figures): Reading {
  const f = figures.behind(t.feature ?? null);
  if (f.granted <= 0) return { value: 0, alarm: true };
  return { value: (f.left * 100) / f.granted, alarm: f.left * 100 <= t.atOrBelow * f.granted };
}

/** Reads threshold `t` on `account` at `now` (`entries`: the change's journal entries, counted once). */
function read(
  t: AlertThreshold,
  account: Account,
  mark: AlertMark | undefined,
  entries: readonly JournalEntry[],
  figuresIn: (unit: string | null) => Figures,
  now: number,
  inputs: AlertInputs,
): Reading {
  const figures = figuresIn(unitOfThreshold(t));
  switch (t.kind) {
    case "available": {
      const available = figures.available();
      return { value: available, alarm: available <= t.atOrBelow };
    }
    case "left_percent":
      return leftPercent(t, figures);
    case "period_spend": {
      const window = spendWindow(t, now, cycleOf(account, inputs));
      // No subscription to count in: no value, never in alarm.
      if (window === null) return { value: null, alarm: false, windowStart: null, spent: 0 };
      let spent = inputs.spentBefore?.get(t.id) ?? (mark?.windowStart === window.start ? (mark.spent ?? 0) : 0);
      for (const e of entries) spent += spendOfEntry(t, e, window);
      spent = Math.max(0, spent);
      return { value: spent, alarm: spent >= t.atOrAbove, windowStart: window.start, spent };
    }
    case "expiring": {
      const left = figures.expiringWithin(t.withinDays);
      return { value: left, alarm: left >= t.atOrAbove };
    }
  }
}

/** What `evaluateThresholds` records: the events of each move, and whether the account's marks moved. */
export interface ThresholdsOutcome {
  events: AlertEvent[];
  /** True when the account's `alert` was replaced (a mark, or the stored cycle, moved): it must be saved. */
  moved: boolean;
}

/**
 * Evaluates the alert thresholds of `account` (the unit of work's copy, updated in place) after a
 * change with `entries`, its open `grants` as the change leaves them (read only for `expiring` and
 * `left_percent`), with what was read beside the unit of work (`inputs`): the events of each move.
 * An account never changed (seq 0) is evaluated by none: its thresholds wait for its first change.
 * A threshold without a mark starts `ok`, so one set on an account already past its line fires at
 * once. The account's `alert` is replaced only when a mark (or the stored cycle) moved.
 */
export function evaluateThresholds(
  account: Account,
  entries: readonly JournalEntry[],
  grants: () => readonly Grant[],
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
  inputs: AlertInputs = {},
): ThresholdsOutcome {
  if (account.seq === 0) return { events: [], moved: false };
  const list = thresholdsOf(account, defaults);
  const before: Readonly<Record<string, AlertMark>> = account.alert?.marks ?? {};
  if (list.length === 0 && Object.keys(before).length === 0) return { events: [], moved: false };
  const at = now.getTime();
  const marks: Record<string, AlertMark> = {};
  const events: AlertEvent[] = [];
  const resolved: Record<string, unknown>[] = [];
  // What the scopes of grants were granted (./allowance.ts) is kept among the marks as it is.
  for (const [key, mark] of Object.entries(before)) if (isAllowanceKey(key)) marks[key] = mark;
  let recorded = account.alert?.recorded ?? 0;
  const cycle = cycleOf(account, inputs);
  const figures = figuresOf(account, grants, at, list);
  for (const t of list) {
    const mark = markOf(before, t.id);
    const r = read(t, account, mark, entries, figures, at, inputs);
    const was: AlertStateName = mark?.state ?? "ok";
    const state: AlertStateName = r.alarm ? "in_alarm" : "ok";
    const crossings = (mark?.crossings ?? 0) + (was === "ok" && state === "in_alarm" ? 1 : 0);
    const next: AlertMark = { state, crossings };
    if (t.kind === "period_spend") {
      next.windowStart = r.windowStart ?? null;
      next.spent = r.spent ?? 0;
    }
    setMark(marks, t.id, next);
    const unit = unitOfThreshold(t);
    const about = {
      thresholdId: t.id,
      kind: t.kind,
      // A threshold in another unit than the default one names it (docs/units.md).
      ...(unit === null ? {} : { unit }),
      value: r.value,
      line: lineOf(t),
      crossing: crossings,
    };
    if (was === "ok" && state === "in_alarm") {
      // The key's number counts the account's alert events, so it is never reused (a threshold
      // removed and set again under the same id starts its crossings again).
      recorded++;
      events.push({
        type: "alert_triggered",
        payload: { ...about, ...windowOf(t, at, cycle), seq: account.seq },
        dedupeKey: `alert_triggered:${t.id}:${recorded}`,
      });
    } else if (was === "in_alarm" && state === "ok") {
      resolved.push(about);
    }
  }
  if (resolved.length > 0) {
    // One event for the change, listing each threshold it brought back.
    recorded++;
    events.push({
      type: "alert_resolved",
      payload: { resolved, seq: account.seq },
      dedupeKey: `alert_resolved:${recorded}`,
    });
  }
  // The cycle read now is kept while a threshold counts in it (a later one reads it again).
  const keepCycle =
    inputs.cycle !== undefined &&
    list.some((t) => t.kind === "period_spend" && t.window === "subscription_period") &&
    !(account.alert?.cycle !== undefined && sameCycle(account.alert.cycle, inputs.cycle));
  const moved = keepCycle || !sameMarks(before, marks);
  if (moved) {
    const prev: AlertState = account.alert ?? { level: null, threshold: 0, lastAllocation: 0, override: null };
    account.alert = { ...prev, marks, recorded, ...(keepCycle ? { cycle: inputs.cycle ?? null } : {}) };
  }
  return { events, moved };
}

/**
 * True when a `period_spend` threshold of `account` is in alarm for a window that has ended by
 * `now`: the account has a resolution due that no change has recorded yet (the worker's scan).
 */
export function hasEndedSpendWindow(
  account: Account,
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
): boolean {
  const marks = account.alert?.marks;
  if (marks === undefined) return false;
  const cycle = account.alert?.cycle ?? null;
  return thresholdsOf(account, defaults).some((t) => {
    const mark = markOf(marks, t.id);
    if (t.kind !== "period_spend" || mark?.state !== "in_alarm") return false;
    return (mark.windowStart ?? null) !== (spendWindow(t, now.getTime(), cycle)?.start ?? null);
  });
}

/**
 * How far ahead the worker's scan of grants by expiry looks for `expiring` thresholds, in days: the
 * longest of the `defaults`, at least 31 (docs/customer-state.md, "Alerts").
 */
export function expiringScanDays(defaults: readonly AlertThreshold[] | undefined): number {
  return Math.max(31, ...(defaults ?? []).map((t) => (t.kind === "expiring" ? t.withinDays : 0)));
}

/**
 * True when one of `account`'s own `expiring` thresholds looks further ahead than the scan of grants
 * (`scanDays`), is `ok`, and the account may have a grant within its days (`nextExpiryAt`, a lower
 * bound of its soonest expiry): time alone may have brought it into alarm where the scan of grants
 * did not look (the worker's scan of accounts evaluates it).
 */
export function expiresBeyondScan(
  account: Account,
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
  scanDays: number,
): boolean {
  const next = account.nextExpiryAt;
  if (next === null || account.seq === 0) return false;
  const marks = account.alert?.marks;
  return thresholdsOf(account, defaults).some(
    (t) =>
      t.kind === "expiring" &&
      t.withinDays > scanDays &&
      markOf(marks, t.id)?.state !== "in_alarm" &&
      next.getTime() <= now.getTime() + t.withinDays * DAY_MS,
  );
}

/** `windowStart` and `resetsAt` (ISO) of a `period_spend` threshold with a window; nothing for the others. */
function windowOf(t: AlertThreshold, at: number, cycle: LimitCycle | null): Record<string, string> {
  if (t.kind !== "period_spend") return {};
  const w = spendWindow(t, at, cycle);
  if (w === null) return {};
  return { windowStart: new Date(w.start).toISOString(), resetsAt: new Date(w.end).toISOString() };
}

function sameMarks(a: Record<string, AlertMark>, b: Record<string, AlertMark>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    const x = markOf(a, k);
    const y = markOf(b, k);
    if (x === undefined || y === undefined) return false;
    if (x.state !== y.state || x.crossings !== y.crossings) return false;
    if ((x.windowStart ?? null) !== (y.windowStart ?? null) || (x.spent ?? null) !== (y.spent ?? null)) return false;
  }
  return true;
}

/**
 * Each alert threshold of `account` (its own, else `defaults`) with its stored state and its value
 * at `now` (`grants`: the account's open grants, for `expiring` and `left_percent`). A
 * `period_spend` value counts the stored window only while it is the current one. The built-in
 * low-credits ones are `builtInStates`; `alertStates` (./notifications.ts) lists both.
 */
export function thresholdStates(
  account: Account | null,
  grants: readonly Grant[],
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
): AlertStatus[] {
  if (account === null) {
    return (defaults ?? []).map((t): AlertStatus => ({
      threshold: t,
      state: "ok",
      value: null,
      line: lineOf(t),
      crossings: 0,
      source: "default",
    }));
  }
  const own = account.alert?.thresholds;
  const marks = account.alert?.marks;
  const list = thresholdsOf(account, defaults);
  const figures = figuresOf(account, () => grants, now.getTime(), list);
  return list.map((t): AlertStatus => {
    const mark = markOf(marks, t.id);
    const r = read(t, account, mark, [], figures, now.getTime(), {});
    return {
      threshold: t,
      state: mark?.state ?? "ok",
      value: account.seq === 0 ? null : r.value,
      line: lineOf(t),
      crossings: mark?.crossings ?? 0,
      source: own == null ? "default" : "account",
    };
  });
}

/**
 * The low-credits level as the thresholds it is (docs/notifications.md): `low_credits` at or below
 * `line` (listed when `line` is above 0) and `credits_exhausted` at or below 0, in alarm as the
 * account's stored level says.
 */
export function builtInStates(
  account: Account | null,
  line: number,
  grants: readonly Grant[],
  now: Date,
): AlertStatus[] {
  const level = account?.alert?.level ?? null;
  const value = account === null || account.seq === 0 ? null : availableOf(account, () => grants, now);
  const status = (id: string, atOrBelow: number, alarm: boolean): AlertStatus => ({
    threshold: { id, kind: "available", atOrBelow },
    state: alarm ? "in_alarm" : "ok",
    value,
    line: atOrBelow,
    crossings: null,
    source: "builtIn",
  });
  const exhausted = status("credits_exhausted", 0, level === "exhausted");
  return line > 0 ? [status("low_credits", line, level === "low" || level === "exhausted"), exhausted] : [exhausted];
}
