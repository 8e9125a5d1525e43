import * as z from "zod/mini";
import { FeatureName, NonNegativeAmount, SignedAmount, UnitName } from "./common.js";
import { SpenderId } from "./limits.js";
import { TimeZone } from "./time-zone.js";

/**
 * Alert thresholds (docs/notifications.md, "Alerts"): each threshold of an account is `ok` or
 * `in_alarm`; the line belongs to the alarm side, and a move either way records one event.
 */

/** A threshold's name, unique among an account's thresholds (letters, digits, `_ : -`). */
export const AlertId = z.string().check(
  z.minLength(1),
  z.maxLength(64),
  z.regex(/^[A-Za-z0-9_:-]+$/, {
    error: "alert id may contain letters, digits and _ : - only (no dots: it is a key of a stored document)",
  }),
);
export type AlertId = z.infer<typeof AlertId>;

/** An id `alerts` and `setAlerts` take: any `AlertId` but the built-in thresholds' ids. */
const UserAlertId = AlertId.check(
  z.refine((id) => id !== "low_credits" && id !== "credits_exhausted", {
    error: "low_credits and credits_exhausted are the built-in thresholds' ids (lowCredits, setThreshold)",
  }),
);

/**
 * The window a `period_spend` threshold counts in: a calendar `day`, `week` or `month`, or the
 * account's current `subscription_period`.
 * @public
 */
export const AlertWindow = z.enum(["day", "week", "month", "subscription_period"]);
/**
 * The window a `period_spend` threshold counts in: a calendar `day`, `week` or `month`, or the
 * account's current `subscription_period`.
 * @public
 */
export type AlertWindow = z.infer<typeof AlertWindow>;

/**
 * The credit unit a threshold watches (docs/units.md): its figures, grants and spends only; omitted:
 * the default unit.
 */
const WatchedUnit = z.optional(UnitName);

/**
 * The account's `available` at or below `atOrBelow` (may be negative: overdraft): what a spend naming no
 * feature may use, `balance − reserved` less the unheld credits of scoped grants (docs/customer-state.md).
 */
export const AvailableAlert = z.strictObject({
  id: UserAlertId,
  kind: z.literal("available"),
  atOrBelow: SignedAmount,
  unit: WatchedUnit,
});

/**
 * What is left at or below `atOrBelow` percent of what was granted: the figures of the grants behind
 * the pool, or behind `feature` where set (its scoped grants and the pool), as the customer state
 * reports them; what was granted counts the grants spent to their last credit since their scope
 * last had nothing left (docs/customer-state.md, "What was granted").
 */
export const LeftPercentAlert = z.strictObject({
  id: UserAlertId,
  kind: z.literal("left_percent"),
  atOrBelow: z.number().check(z.minimum(0), z.maximum(100)),
  feature: z.optional(FeatureName),
  unit: WatchedUnit,
});

/**
 * Captured spend (deductions and committed holds, less reversals) in the current window at or above
 * `atOrAbove`: the calendar `day`, `week` or `month` in `timeZone` (default UTC), or the account's
 * current `subscription_period` (no time zone); only the spends of `spender` and of `feature`
 * where set.
 */
export const PeriodSpendAlert = z.strictObject({
  id: UserAlertId,
  kind: z.literal("period_spend"),
  atOrAbove: NonNegativeAmount,
  window: AlertWindow,
  timeZone: z.optional(TimeZone),
  spender: z.optional(SpenderId),
  feature: z.optional(FeatureName),
  unit: WatchedUnit,
});

/** What is left of the grants expiring within `withinDays` days, at or above `atOrAbove`. */
export const ExpiringAlert = z.strictObject({
  id: UserAlertId,
  kind: z.literal("expiring"),
  withinDays: z.number().check(z.minimum(0), z.maximum(3650)),
  atOrAbove: NonNegativeAmount,
  unit: WatchedUnit,
});

/** One alert threshold. @public */
export const AlertThreshold = z
  .discriminatedUnion("kind", [AvailableAlert, LeftPercentAlert, PeriodSpendAlert, ExpiringAlert])
  .check(
    z.refine((t) => t.kind !== "period_spend" || t.window !== "subscription_period" || t.timeZone === undefined, {
      error: "timeZone is for the day, week and month windows (a subscription period is the same instant everywhere)",
      path: ["timeZone"],
    }),
  );
/** One alert threshold. @public */
export type AlertThreshold = z.infer<typeof AlertThreshold>;

/** The most thresholds one account (or the defaults) may have. */
export const MAX_ALERTS = 32;

/** A list of thresholds with distinct ids. */
export const AlertThresholds = z.array(AlertThreshold).check(
  z.maxLength(MAX_ALERTS),
  z.refine((list) => new Set(list.map((t) => t.id)).size === list.length, { error: "alert ids must be distinct" }),
);

/** Where a threshold stands. @public */
export const AlertStateName = z.enum(["ok", "in_alarm"]);
/** Where a threshold stands. @public */
export type AlertStateName = z.infer<typeof AlertStateName>;

/**
 * What the account keeps of one threshold: its state, how many times it went into alarm
 * (`crossings`: the events' dedupe keys), and for `period_spend` what its window counted. A key
 * starting with `~` (no alert id has one) is a scope of grants' allowance (docs/customer-state.md,
 * "What was granted"): `spent` and `allowance` alone mean something there.
 * @public
 */
export const AlertMark = z.object({
  state: AlertStateName,
  crossings: NonNegativeAmount,
  /** `period_spend`: the start of the window `spent` counts (ms since the epoch); else absent. */
  windowStart: z.optional(z.nullable(z.number().check(z.int()))),
  /**
   * `period_spend`: captured spend counted in that window. A scope's allowance: what its grants
   * drawn to their last credit in its current allowance were given.
   */
  spent: z.optional(z.nullable(z.number().check(z.int()))),
  /**
   * A scope's allowance: which allowance `spent` counts the grants of, named by the account's `seq`
   * after the unit of work that drew out the first of them; a grant drawn out records it
   * (`Grant.drawnOutIn`). Null or absent: 0. Absent on a threshold's mark.
   */
  allowance: z.optional(z.nullable(NonNegativeAmount)),
});
/**
 * What the account keeps of one threshold: its state, how many times it went into alarm
 * (`crossings`: the events' dedupe keys), and for `period_spend` what its window counted.
 * @public
 */
export type AlertMark = z.infer<typeof AlertMark>;

/** One threshold as `getAlerts` (and `alertStates`) reports it. @public */
export interface AlertStatus {
  /** The threshold. */
  threshold: AlertThreshold;
  /** Whether the alert is ok or in alarm. */
  state: AlertStateName;
  /**
   * The threshold's value now (credits, or percent for `left_percent`); null: none (an account
   * never changed, or a `subscription_period` spend without an active subscription).
   */
  value: number | null;
  /** The line compared with (`atOrBelow` or `atOrAbove`). */
  line: number;
  /** Times it went into alarm; null for the built-in ones (their events are the level's). */
  crossings: number | null;
  /**
   * Where it comes from: `builtIn`, the low-credits level's thresholds (`low_credits` at or below
   * the low-credits threshold, `credits_exhausted` at or below 0); `default`, the service's
   * `alerts`; `account`, the account's own (`setAlerts`).
   */
  source: "builtIn" | "default" | "account";
}

/** The ids of the built-in thresholds: not available to `alerts` and `setAlerts`. */
export const BUILT_IN_ALERT_IDS: readonly string[] = ["low_credits", "credits_exhausted"];
