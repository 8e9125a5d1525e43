import type {
  Account,
  AlertMark,
  AlertState,
  AlertStateName,
  AlertStatus,
  AlertThreshold,
  Grant,
  JournalEntry,
} from "../models/index.js";
import { isOpenGrant } from "./order.js";
import { nextWindowStart, windowStart } from "./usage.js";

/**
 * Alert thresholds as pure functions over one account (docs/notifications.md, "Alerts"): each
 * threshold is `ok` or `in_alarm`, the line on the alarm side; a move into alarm is one
 * `alert_triggered`, the moves out of one change are one `alert_resolved`. Called inside the unit
 * of work that moves the value, so the marks on the account and the events commit together.
 */

const DAY_MS = 86_400_000;

/** An alert event to record: its type, payload and dedupe key (the caller makes the outbox row). */
export interface AlertEvent {
  type: "alert_triggered" | "alert_resolved";
  payload: Record<string, unknown>;
  dedupeKey: string;
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

/** The calendar window `[start, end)` of a `period_spend` threshold holding `at` (ms). */
export function spendWindow(
  t: Extract<AlertThreshold, { kind: "period_spend" }>,
  at: number,
): { start: number; end: number } {
  const tz = t.timeZone ?? "UTC";
  const start = windowStart(at, t.window, tz);
  return { start, end: nextWindowStart(start, t.window, tz) };
}

/**
 * Captured spend an entry adds to a `period_spend` threshold's window starting at `start`: a
 * deduction or a committed hold adds its amount, a reversal takes its amount back; only entries
 * of the threshold's spender and feature (where set), placed in that window by `occurredAt`
 * (else `createdAt`).
 */
export function spendOfEntry(
  t: Extract<AlertThreshold, { kind: "period_spend" }>,
  e: JournalEntry,
  window: { start: number; end: number },
): number {
  const sign = e.type === "deduct" || e.type === "commit_reserved" ? 1 : e.type === "reverse" ? -1 : 0;
  if (sign === 0 || e.amount === 0) return 0;
  if (t.spender !== undefined && e.spender !== t.spender) return 0;
  if (t.feature !== undefined && e.feature !== t.feature) return 0;
  const at = (e.occurredAt ?? e.createdAt).getTime();
  if (at < window.start || at >= window.end) return 0;
  return sign * e.amount;
}

/** What is left of the open grants expiring after `now` and within `days` days (holds are not grants' remaining). */
export function expiringWithin(grants: readonly Grant[], days: number, now: number): number {
  const until = now + days * DAY_MS;
  let total = 0;
  for (const g of grants) {
    if (!isOpenGrant(g) || g.expiresAt === null) continue;
    const at = g.expiresAt.getTime();
    if (at > now && at <= until) total += g.remaining;
  }
  return total;
}

/** A threshold's value and whether it is on the alarm side; `spent` and `windowStart` for `period_spend`. */
interface Reading {
  value: number | null;
  alarm: boolean;
  windowStart?: number;
  spent?: number;
}

/** Reads threshold `t` on `account` at `now` (`entries`: the change's journal entries, counted once). */
function read(
  t: AlertThreshold,
  account: Account,
  mark: AlertMark | undefined,
  entries: readonly JournalEntry[],
  grants: () => readonly Grant[],
  now: number,
): Reading {
  const available = account.balance - account.reserved;
  switch (t.kind) {
    case "available":
      return { value: available, alarm: available <= t.atOrBelow };
    case "left_percent": {
      const granted = account.alert?.lastAllocation ?? 0;
      if (granted <= 0) return { value: null, alarm: false };
      // Compared in whole numbers: available / granted <= atOrBelow / 100, the line included.
      return { value: (available * 100) / granted, alarm: available * 100 <= t.atOrBelow * granted };
    }
    case "period_spend": {
      const window = spendWindow(t, now);
      let spent = mark?.windowStart === window.start ? (mark.spent ?? 0) : 0;
      for (const e of entries) spent += spendOfEntry(t, e, window);
      spent = Math.max(0, spent);
      return { value: spent, alarm: spent >= t.atOrAbove, windowStart: window.start, spent };
    }
    case "expiring": {
      const left = expiringWithin(grants(), t.withinDays, now);
      return { value: left, alarm: left >= t.atOrAbove };
    }
  }
}

/**
 * Evaluates the alert thresholds of `account` (the unit of work's copy, updated in place) after a
 * change with `entries`, its open `grants` as the change leaves them (read only for `expiring`):
 * the events of each move.
 * An account never changed (seq 0) is evaluated by none: its thresholds wait for its first change.
 * A threshold without a mark starts `ok`, so one set on an account already past its line fires at
 * once. The account's `alert` is replaced only when a mark moved.
 */
export function evaluateThresholds(
  account: Account,
  entries: readonly JournalEntry[],
  grants: () => readonly Grant[],
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
): AlertEvent[] {
  if (account.seq === 0) return [];
  const list = thresholdsOf(account, defaults);
  const before = account.alert?.marks ?? {};
  if (list.length === 0 && Object.keys(before).length === 0) return [];
  const at = now.getTime();
  const marks: Record<string, AlertMark> = {};
  const events: AlertEvent[] = [];
  const resolved: Record<string, unknown>[] = [];
  let recorded = account.alert?.recorded ?? 0;
  for (const t of list) {
    const mark = before[t.id];
    const r = read(t, account, mark, entries, grants, at);
    const was: AlertStateName = mark?.state ?? "ok";
    const state: AlertStateName = r.alarm ? "in_alarm" : "ok";
    const crossings = (mark?.crossings ?? 0) + (was === "ok" && state === "in_alarm" ? 1 : 0);
    const next: AlertMark = { state, crossings };
    if (t.kind === "period_spend") {
      next.windowStart = r.windowStart ?? null;
      next.spent = r.spent ?? 0;
    }
    marks[t.id] = next;
    const about = { thresholdId: t.id, kind: t.kind, value: r.value, line: lineOf(t), crossing: crossings };
    if (was === "ok" && state === "in_alarm") {
      // The key's number counts the account's alert events, so it is never reused (a threshold
      // removed and set again under the same id starts its crossings again).
      recorded++;
      events.push({
        type: "alert_triggered",
        payload: { ...about, ...windowOf(t, at), seq: account.seq },
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
  if (!sameMarks(before, marks)) {
    const prev: AlertState = account.alert ?? { level: null, threshold: 0, lastAllocation: 0, override: null };
    account.alert = { ...prev, marks, recorded };
  }
  return events;
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
  return thresholdsOf(account, defaults).some((t) => {
    const mark = marks[t.id];
    if (t.kind !== "period_spend" || mark?.state !== "in_alarm") return false;
    return mark.windowStart !== spendWindow(t, now.getTime()).start;
  });
}

/** `windowStart` and `resetsAt` (ISO) of a `period_spend` threshold; nothing for the others. */
function windowOf(t: AlertThreshold, at: number): Record<string, string> {
  if (t.kind !== "period_spend") return {};
  const w = spendWindow(t, at);
  return { windowStart: new Date(w.start).toISOString(), resetsAt: new Date(w.end).toISOString() };
}

function sameMarks(a: Record<string, AlertMark>, b: Record<string, AlertMark>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    const x = a[k];
    const y = b[k];
    if (x === undefined || y === undefined) return false;
    if (x.state !== y.state || x.crossings !== y.crossings) return false;
    if ((x.windowStart ?? null) !== (y.windowStart ?? null) || (x.spent ?? null) !== (y.spent ?? null)) return false;
  }
  return true;
}

/**
 * Each alert threshold of `account` with its stored state and its value at `now` (`grants`: the
 * account's open grants, for `expiring`): what `getAlerts` answers, and what a view of the
 * customer shows. With `lowCreditsLine` (`lowCreditsLine()` of ./notifications.ts), the built-in
 * low-credits thresholds come first. A `period_spend` value counts the stored window only while it
 * is the current one.
 */
export function alertStates(
  account: Account | null,
  grants: readonly Grant[],
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
  lowCreditsLine?: number,
): AlertStatus[] {
  const builtIn = lowCreditsLine === undefined ? [] : builtInStates(account, lowCreditsLine);
  if (account === null) {
    return [
      ...builtIn,
      ...(defaults ?? []).map((t): AlertStatus => ({
        threshold: t,
        state: "ok",
        value: null,
        line: lineOf(t),
        crossings: 0,
        source: "default",
      })),
    ];
  }
  const own = account.alert?.thresholds;
  const marks = account.alert?.marks ?? {};
  return [
    ...builtIn,
    ...thresholdsOf(account, defaults).map((t): AlertStatus => {
      const mark = marks[t.id];
      const r = read(t, account, mark, [], () => grants, now.getTime());
      return {
        threshold: t,
        state: mark?.state ?? "ok",
        value: account.seq === 0 ? null : r.value,
        line: lineOf(t),
        crossings: mark?.crossings ?? 0,
        source: own == null ? "default" : "account",
      };
    }),
  ];
}

/**
 * The low-credits level as the thresholds it is (docs/notifications.md): `low_credits` at or below
 * `line` (listed when `line` is above 0) and `credits_exhausted` at or below 0, in alarm as the
 * account's stored level says.
 */
function builtInStates(account: Account | null, line: number): AlertStatus[] {
  const level = account?.alert?.level ?? null;
  const value = account === null || account.seq === 0 ? null : account.balance - account.reserved;
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
