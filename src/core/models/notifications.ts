import * as z from "zod/mini";
import { EntityId, Metadata, NonNegativeAmount, UserId } from "./common.js";
import { AlertMark, AlertThresholds } from "./alerts.js";
import { LimitCycle } from "./limits.js";

/** The domain event types of the journal, recorded with `domainEvents` on (docs/events.md). @public */
export const DomainEventType = z.enum([
  "credits_added",
  "credits_adjusted",
  "credits_deducted",
  "credits_refunded",
  "credits_voided",
  "credits_expired",
  "hold_placed",
  "hold_settled",
  // A charge given back (docs/events.md).
  "credits_reversed",
]);
/** The domain event types of the journal, recorded with `domainEvents` on (docs/events.md). @public */
export type DomainEventType = z.infer<typeof DomainEventType>;

/** A notification type of the core's own (docs/notifications.md). @public */
export type CoreNotificationType =
  | "low_credits"
  | "credits_exhausted"
  | "balance_restored"
  | "expiring_credits"
  | "transaction_error"
  | "reservation_expired"
  | "subscription_renewed"
  | "subscription_allocation"
  | "subscription_cancelled"
  | "subscription_ended"
  | "feature_status_changed"
  // The domain event types (`DomainEventType`).
  | "credits_added"
  | "credits_adjusted"
  | "credits_deducted"
  | "credits_refunded"
  | "credits_voided"
  | "credits_expired"
  | "hold_placed"
  | "hold_settled"
  | "credits_reversed"
  | "limit_warning"
  | "limit_reached"
  | "alert_triggered"
  | "alert_resolved";
/** The core's notification types, each of `CoreNotificationType` (the package's own list: not exported by an entry). */
export const CORE_NOTIFICATION_TYPES = [
  "low_credits",
  "credits_exhausted",
  "balance_restored",
  "expiring_credits",
  "transaction_error",
  "reservation_expired",
  "subscription_renewed",
  "subscription_allocation",
  "subscription_cancelled",
  "subscription_ended",
  // A feature's allowed state flipped (docs/trial-and-checks.md), and the domain
  // events (docs/events.md), recorded when `domainEvents` is on.
  "feature_status_changed",
  ...DomainEventType.options,
  // A spend limit's 80 % and 100 % (docs/teams-and-limits.md, "Limit notifications").
  "limit_warning",
  "limit_reached",
  // An alert threshold went into alarm, and the thresholds a change brought back (docs/notifications.md, "Alerts").
  "alert_triggered",
  "alert_resolved",
] as const satisfies readonly CoreNotificationType[];
// Every `CoreNotificationType` is in the list: does not compile when one is missing.
type _Listed<T extends (typeof CORE_NOTIFICATION_TYPES)[number]> = T;
type _EveryCoreNotificationTypeListed = _Listed<CoreNotificationType>;

/**
 * What a notification is about (docs/notifications.md): one of the core's types, or one a module
 * registers (`notificationTypes` of its `CreditModule`, docs/modules.md). The model checks the
 * shape (lower-case letters, digits and `_`); a manager refuses a type no module of it registers.
 * @public
 */
export const NotificationType = z.string().check(z.regex(/^[a-z][a-z0-9_]{0,63}$/));
/** One of the core's notification types, or one a module registers. @public */
export type NotificationType = CoreNotificationType | (string & {});

/** Where `available` stood against the low-credits threshold at the account's last change. @public */
export const AlertLevel = z.enum(["ok", "low", "exhausted"]);
/** Where `available` stood against the low-credits threshold at the account's last change. @public */
export type AlertLevel = z.infer<typeof AlertLevel>;

/**
 * A low-credits threshold: absolute credits, a percentage of the user's last allocation (latest
 * addition), or both (the higher of the two applies). Neither: only exhaustion is reported.
 * @public
 */
export const ThresholdSpec = z.strictObject({
  /** Credits: `low_credits` when available falls below this. */
  lowCredits: z.optional(NonNegativeAmount),
  /** Percent (0–100) of the latest addition's amount. */
  lowCreditsPercent: z.optional(z.number().check(z.minimum(0), z.maximum(100))),
});
/**
 * A low-credits threshold: absolute credits, a percentage of the user's last allocation (latest
 * addition), or both (the higher of the two applies). Neither: only exhaustion is reported.
 * @public
 */
export type ThresholdSpec = z.infer<typeof ThresholdSpec>;

/**
 * The account's alert state, stored on the account and changed only inside its unit of work, so
 * concurrent operations around a threshold produce one event per crossing.
 * @public
 */
export const AlertState = z.object({
  /** Null: not evaluated yet (a threshold set on an account with no history). */
  level: z.nullable(AlertLevel),
  /** The threshold (credits) `level` was computed for. */
  threshold: NonNegativeAmount,
  /** Amount of the latest addition (base of percentage thresholds). */
  lastAllocation: NonNegativeAmount,
  /** This user's own threshold; null: the service's. */
  override: z.nullable(
    z.object({ lowCredits: z.nullable(NonNegativeAmount), lowCreditsPercent: z.nullable(z.number()) }),
  ),
  /** This account's own alert thresholds (they replace the service's); null or absent: the service's. */
  thresholds: z.optional(z.nullable(AlertThresholds)),
  /** Each alert threshold's state, by id; absent: none evaluated yet. */
  marks: z.optional(z.record(z.string(), AlertMark)),
  /** Alert events recorded for the account so far: the number in each one's dedupe key (never reused). */
  recorded: z.optional(NonNegativeAmount),
  /**
   * The subscription cycle its `subscription_period` thresholds count in, as last read (when one
   * of them first applied, `setAlerts`, or a subscription period's unit of work); null: no active
   * subscription; absent: not read.
   */
  cycle: z.optional(z.nullable(LimitCycle)),
});
/**
 * The account's alert state, stored on the account and changed only inside its unit of work, so
 * concurrent operations around a threshold produce one event per crossing.
 * @public
 */
export type AlertState = z.infer<typeof AlertState>;

/** The version of an event type's payload schema (docs/events.md): 1, 2, … */
export const EventVersion = z.number().check(z.int(), z.minimum(1), z.maximum(32_767));
export type EventVersion = z.infer<typeof EventVersion>;

/** Where an outbox row is: waiting, delivered, or given up on. @public */
export const NotificationStatus = z.enum(["pending", "sent", "failed"]);
/** Where an outbox row is: waiting, delivered, or given up on. @public */
export type NotificationStatus = z.infer<typeof NotificationStatus>;

/**
 * An outbox row: written in the same transaction as the change that caused it, delivered by a
 * dispatcher to the `NotificationQueue` at least once, in order per user.
 * @public
 */
export const Notification = z.object({
  /** Stable message id (time-ordered): consumers drop duplicates by it. */
  id: EntityId,
  userId: UserId,
  type: NotificationType,
  /**
   * The version of `payload`'s schema for this `type` (docs/events.md, "Versions"): published as
   * the envelope's `version`, so a version 2 of an event is new rows, not a new table layout.
   * A row without one reads as 1.
   */
  version: EventVersion,
  status: NotificationStatus,
  /** What the event says (amounts, threshold, grant or reservation ids, …). */
  payload: Metadata,
  /** Unique per user where set: a second event with the same key is not stored. */
  dedupeKey: z.nullable(z.string().check(z.maxLength(255))),
  /** Delivery attempts made so far. */
  attempts: NonNegativeAmount,
  /** Not delivered before this time (backoff). */
  nextAttemptAt: z.date(),
  /** A dispatcher's claim on the row lasts until then. */
  claimedUntil: z.nullable(z.date()),
  /** Token of the dispatcher holding the claim. */
  claimToken: z.nullable(z.string()),
  lastError: z.nullable(z.string()),
  createdAt: z.date(),
  /** When it was delivered (sent) or given up (failed). */
  settledAt: z.nullable(z.date()),
});
/**
 * An outbox row: written in the same transaction as the change that caused it, delivered by a
 * dispatcher to the `NotificationQueue` at least once, in order per user.
 * @public
 */
export type Notification = z.infer<typeof Notification>;
