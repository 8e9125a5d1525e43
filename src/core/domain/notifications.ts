import { randomBytes } from "node:crypto";
import type {
  Account,
  AlertLevel,
  AlertState,
  AlertStatus,
  JournalEntry,
  AlertThreshold,
  Grant,
  Notification,
  NotificationType,
  Reservation,
} from "../models/index.js";
import { EVENT_VERSIONS } from "../models/event-versions.js";
import { type LimitCrossing, describeLimit } from "./limits.js";
import { builtInStates, evaluateThresholds, thresholdStates, type AlertInputs } from "./alerts.js";
import { availableOf } from "./scope.js";

/**
 * The notification rules of docs/notifications.md, as pure functions over one account: which events a change
 * causes. Called inside the unit of work that makes the change, so the alert state on the account
 * and the outbox rows commit (or roll back) with it, and concurrent changes around a threshold
 * produce exactly one event per crossing.
 */

/** A service's (or a user's) low-credits threshold. @public */
export interface Thresholds {
  /** Credits. */
  lowCredits?: number | null | undefined;
  /** Percent of the latest addition. */
  lowCreditsPercent?: number | null | undefined;
  /** The alert thresholds of every account that has none of its own (docs/notifications.md, "Alerts"). */
  alerts?: readonly AlertThreshold[] | undefined;
}

/** The threshold in credits: the higher of the absolute one and the percentage of `lastAllocation`. */
export function thresholdOf(spec: Thresholds, lastAllocation: number): number {
  const absolute = spec.lowCredits ?? 0;
  const percent = spec.lowCreditsPercent == null ? 0 : Math.floor((lastAllocation * spec.lowCreditsPercent) / 100);
  return Math.max(absolute, percent);
}

/**
 * The account's low-credits threshold now (its override, else the service's), in credits: the
 * line of the built-in `low_credits` alert (`alertStates`).
 */
export function lowCreditsLine(account: Account | null, service: Thresholds): number {
  const alert = account?.alert ?? null;
  return thresholdOf(alert?.override ?? service, alert?.lastAllocation ?? 0);
}

/**
 * `exhausted` at zero or below, `low` at or below the threshold (the line is on the alarm side),
 * else `ok` (docs/notifications.md).
 */
export function levelOf(available: number, threshold: number): AlertLevel {
  if (available <= 0) return "exhausted";
  return available <= threshold ? "low" : "ok";
}

/**
 * The events of a move from `previous` to `next`. None from or to `null` (the first evaluation of an
 * account with history only records its level; an account with no history has none, and its
 * first change is read from `ok`: `evaluateAlert`). Falling past the threshold and zero at once gives
 * `low_credits` then `credits_exhausted`; climbing from zero to under the threshold gives nothing
 * (still low); back to `ok` gives `balance_restored`.
 */
export function crossings(previous: AlertLevel | null, next: AlertLevel | null, threshold: number): NotificationType[] {
  if (previous === null || next === null || previous === next) return [];
  if (next === "ok") return ["balance_restored"];
  if (next === "low") return previous === "ok" ? ["low_credits"] : [];
  return previous === "ok" && threshold > 0 ? ["low_credits", "credits_exhausted"] : ["credits_exhausted"];
}

/**
 * An event a unit of work records with its change (subscription events, …): `AccountWork.recordEvent`
 * keeps it on the unit of work, and the service writes it to the outbox in the same transaction.
 */
export interface WorkEvent {
  type: NotificationType;
  payload: Record<string, unknown>;
  /** Unique per user where set (a second one is refused by the store, failing the unit of work). */
  dedupeKey: string | null;
}

/** The events a unit of work recorded (`AccountWork.events`), as outbox rows (none: nothing recorded). */
export function eventNotifications(events: readonly WorkEvent[], userId: string, now: Date): readonly Notification[] {
  return events.map((e) => newNotification(userId, e.type, e.payload, now, e.dedupeKey));
}

/** What an evaluation of an account's alerts records, and whether it moved the account's alert state. */
export interface AlertOutcome {
  notifications: readonly Notification[];
  /** True when `account.alert` was replaced (a level, threshold or mark moved): the account must be saved. */
  moved: boolean;
}

/**
 * Re-evaluates `account.alert` after a change (`entries` are the change's journal entries) and
 * returns the crossing events. Updates `account` (the unit of work's private copy) in place only
 * when the level, threshold or last allocation moved.
 */
function evaluateAlert(
  account: Account,
  entries: readonly JournalEntry[],
  grants: () => readonly Grant[],
  service: Thresholds,
  now: Date,
): AlertOutcome {
  const prev = account.alert;
  let lastAllocation = prev === null ? 0 : prev.lastAllocation;
  for (const e of entries) if (e.type === "add") lastAllocation = e.amount;
  const override = prev === null ? null : prev.override;
  const threshold = thresholdOf(override ?? service, lastAllocation);
  const available = availableOf(account, grants, now);
  // An account with no history (never funded) has no level: its first change is evaluated from
  // `ok`, like any other change (docs/notifications.md), so its first top-up is never called a
  // restoration and a first top-up under the line is `low_credits`. An account with history but no
  // level (changed while notifications were off) only records one: turning them on never floods.
  const level = account.seq === 0 ? null : levelOf(available, threshold);
  const fresh = account.seq - entries.length === 0;
  const before = prev === null || prev.level === null ? (fresh ? "ok" : null) : prev.level;
  if (prev !== null && prev.level === level && prev.threshold === threshold && prev.lastAllocation === lastAllocation) {
    return { notifications: [], moved: false };
  }
  account.alert = { ...prev, level, threshold, lastAllocation, override };
  const types = crossings(before, level, threshold);
  const payload = {
    available,
    threshold,
    level,
    previousLevel: before,
    balance: account.balance,
    reserved: account.reserved,
    seq: account.seq,
  };
  return {
    notifications: types.map((type) => newNotification(account.userId, type, { ...payload }, now, null)),
    moved: true,
  };
}

/**
 * Every alert of a change, in order: the low-credits level's crossing (`evaluateAlert`), then the
 * alert thresholds' (`evaluateThresholds`, ./alerts.ts), one mechanism on the account's `alert`
 * (docs/notifications.md, "Alerts"). `grants`: the account's open grants as the change leaves them;
 * `inputs`: what was read beside the unit of work for them (src/core/services/alert-reads.ts). Says
 * whether the account's alert state moved (a unit of work that writes nothing else saves it then).
 */
export function alertNotifications(
  account: Account,
  entries: readonly JournalEntry[],
  grants: () => readonly Grant[],
  service: Thresholds,
  now: Date,
  inputs: AlertInputs = {},
): AlertOutcome {
  const level = evaluateAlert(account, entries, grants, service, now);
  const t = evaluateThresholds(account, entries, grants, service.alerts, now, inputs);
  const moved = level.moved || t.moved;
  if (t.events.length === 0) return { notifications: level.notifications, moved };
  return {
    notifications: [
      ...level.notifications,
      ...t.events.map((e) => newNotification(account.userId, e.type, e.payload, now, e.dedupeKey)),
    ],
    moved,
  };
}

/**
 * Each alert of `account` with its state (docs/customer-state.md, "Alerts"), as the service that
 * keeps them sees it: `kept`, its thresholds while it records notification events, undefined when
 * it records none. While they are recorded: the built-in low-credits ones first (`low_credits` at
 * or below the account's low-credits line when it is above 0, `credits_exhausted` at or below 0),
 * then the account's own thresholds, else the service's (`thresholdStates`, ./alerts.ts). While
 * none are: the account's own thresholds only, as stored (nothing evaluates them, and no level is
 * kept). What `notifications.getAlerts` answers and the customer state's `alerts`.
 * @public
 */
export function alertStates(
  account: Account | null,
  grants: readonly Grant[],
  kept: Thresholds | undefined,
  now: Date,
): AlertStatus[] {
  if (kept === undefined) return thresholdStates(account, grants, undefined, now);
  return [
    ...builtInStates(account, lowCreditsLine(account, kept), grants, now),
    ...thresholdStates(account, grants, kept.alerts, now),
  ];
}

/** The account's alert state with a new per-user override (level recomputed). */
export function withOverride(
  account: Account,
  override: AlertState["override"],
  service: Thresholds,
  now: Date,
  grants: () => readonly Grant[],
): readonly Notification[] {
  const prev = account.alert;
  const lastAllocation = prev === null ? 0 : prev.lastAllocation;
  // A threshold set on an account with history but no level yet is read from `ok`: one already
  // past its line fires at once (docs/notifications.md).
  const level = prev !== null ? prev.level : account.seq === 0 ? null : "ok";
  account.alert = { ...prev, level, threshold: prev === null ? 0 : prev.threshold, lastAllocation, override };
  return evaluateAlert(account, [], grants, service, now).notifications;
}

/**
 * `limit_warning` and `limit_reached` for the thresholds of spend limits a change took its account
 * to (`AccountWork.limitsCrossed`, in order), each once per limit, window and threshold: the rule is
 * `countSpend`'s (./limits.ts, docs/teams-and-limits.md "Limit notifications"). `seq`: the
 * account's after the change.
 */
export function limitNotifications(
  userId: string,
  crossed: readonly LimitCrossing[] | undefined,
  seq: number,
  now: Date,
): readonly Notification[] {
  return (crossed ?? []).map((c) =>
    newNotification(
      userId,
      c.level === "warning" ? "limit_warning" : "limit_reached",
      {
        limit: describeLimit(c.limit),
        threshold: c.level === "warning" ? 0.8 : 1,
        used: c.used,
        remaining: Math.max(0, c.limit.amount - c.used),
        windowStart: new Date(c.windowStart).toISOString(),
        resetsAt: new Date(c.resetsAt).toISOString(),
        seq,
      },
      now,
      null,
    ),
  );
}

/** `reservation_expired` for every hold this change expired. */
export function expiredHoldNotifications(updated: readonly Reservation[], now: Date): readonly Notification[] {
  return updated
    .filter((r) => r.status === "expired")
    .map((r) =>
      newNotification(
        r.userId,
        "reservation_expired",
        { reservationId: r.id, amount: r.amount, expiresAt: r.expiresAt.toISOString(), reason: r.reason },
        now,
        `reservation_expired:${r.id}`,
      ),
    );
}

/** A pending outbox row, due at once, at the type's current payload version unless told another. */
export function newNotification(
  userId: string,
  type: NotificationType,
  payload: Record<string, unknown>,
  now: Date,
  dedupeKey: string | null,
  version: number = EVENT_VERSIONS[type] ?? 1,
): Notification {
  return {
    id: notificationId(now),
    userId,
    type,
    version,
    status: "pending",
    payload: payload as Notification["payload"],
    dedupeKey,
    attempts: 0,
    nextAttemptAt: now,
    claimedUntil: null,
    claimToken: null,
    lastError: null,
    createdAt: now,
    settledAt: null,
  };
}

let lastMs = 0;
let counter = 0;
// Made on first use, not at import: Cloudflare Workers refuse random values in a module's global
// scope (docs/runtimes.md).
let processTag: string | undefined;

/**
 * A time-ordered id: 9 base-36 digits of milliseconds, a 5-digit per-process counter, this
 * process's tag and 4 random bytes. Strictly increasing within a process (even when the clock
 * steps back), so a user's events sort in the order they were made; the stable message id.
 */
export function notificationId(now: Date): string {
  let ms = now.getTime();
  if (ms <= lastMs) {
    ms = lastMs;
    counter++;
    if (counter >= 36 ** 5) {
      ms = ++lastMs;
      counter = 0;
    }
  } else {
    counter = 0;
  }
  lastMs = ms;
  processTag ??= randomBytes(3).toString("hex");
  return `${ms.toString(36).padStart(9, "0")}${counter.toString(36).padStart(5, "0")}-${processTag}${randomBytes(4).toString("hex")}`;
}

/**
 * Delay before attempt `attempts + 1`, in ms: `baseMs · 2^(attempts − 1)`, capped at `maxMs`, with
 * up to 20% jitter so dispatchers do not retry in lockstep.
 */
export function backoffDelay(attempts: number, baseMs: number, maxMs: number, random: number = Math.random()): number {
  const raw = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(raw * (0.8 + 0.2 * random));
}
