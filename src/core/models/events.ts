import * as z from "zod/mini";
import { AlertLevel, NotificationType } from "./notifications.js";
import { GrantPortion, GrantSource } from "./entities.js";
import { LimitPeriod, SpenderId } from "./limits.js";
import { isoDateTime } from "./text.js";

/**
 * Domain events (docs/events.md): what the journal records, as versioned messages. Each outbox row
 * is published as an envelope `{ type, version, id, userId, occurredAt, payload }`; `payload`'s
 * shape is fixed per `type` and `version`. A later release may add fields to a payload (consumers
 * ignore what they do not know) without a new version; a field removed or changing meaning gets a
 * new version, documented beside the old one.
 */

/** Every type a journal entry's event has: the state after it and who asked for it. */
const EntryFields = {
  /** The journal entry this event reports (docs/concepts.md). */
  entryId: z.string(),
  /** The entry's position in the user's journal (1, 2, …). */
  seq: z.number().check(z.int()),
  /** Credits the entry moved (always positive; its type says which way). */
  amount: z.number().check(z.int()),
  balanceAfter: z.number().check(z.int()),
  reservedAfter: z.number().check(z.int()),
  debtAfter: z.number().check(z.int()),
  /** `balanceAfter − reservedAfter`. */
  availableAfter: z.number().check(z.int()),
  /** The grants the entry drew from, created, held, returned or removed. */
  grants: z.array(GrantPortion),
  /**
   * The unit the entry's amount and figures are in (docs/units.md); absent: the default unit.
   */
  unit: z.optional(z.string()),
  idempotencyKey: z.nullable(z.string()),
  correlationId: z.nullable(z.string()),
  description: z.nullable(z.string()),
  metadata: z.nullable(z.record(z.string(), z.unknown())),
};

/** `credits_added` (any source but `adjustment`) and `credits_adjusted` (source `adjustment`), version 1. @public */
export const CreditsAddedPayload = z.object({
  ...EntryFields,
  /** Where the credits came from: `payment`, `trial`, `promo`, `subscription`, `manual`, … */
  source: GrantSource,
  sourceRef: z.nullable(z.string()),
  /** The grant created (null when the whole addition paid debt). */
  grantId: z.nullable(z.string()),
  /** ISO-8601, or null: never. */
  expiresAt: z.nullable(z.string()),
  /** Part of `amount` that paid debt first. */
  debtPaid: z.number().check(z.int()),
  /**
   * ISO-8601: the grant starts then (docs/units.md, "Grants that start later"). On its addition's
   * event the balance is unchanged; its start has an event of its own, with `started` true.
   */
  effectiveAt: z.optional(z.nullable(z.string())),
  /** True on the event of a grant's start: its credits joined the balance then, `debtPaid` of them paying debt. */
  started: z.optional(z.boolean()),
});
/** `credits_added` (any source but `adjustment`) and `credits_adjusted` (source `adjustment`), version 1. @public */
export type CreditsAddedPayload = z.infer<typeof CreditsAddedPayload>;

/** `credits_deducted`, version 1: usage charged (directly, or by a meter, with `reservationId`). @public */
export const CreditsDeductedPayload = z.object({ ...EntryFields, reservationId: z.nullable(z.string()) });
/** `credits_deducted`, version 1: usage charged (directly, or by a meter, with `reservationId`). @public */
export type CreditsDeductedPayload = z.infer<typeof CreditsDeductedPayload>;

/**
 * `credits_refunded`, version 1: credits taken back because a payment was refunded or a dispute lost
 * (the payment service's entries; `via` says whether the grant's rest was voided or credits deducted).
 * @public
 */
export const CreditsRefundedPayload = z.object({
  ...EntryFields,
  via: z.enum(["void", "deduct"]),
  paymentId: z.nullable(z.string()),
  /** The payment's refunded total (currency units) this take-back answers; a lost dispute: the payment's amount. */
  refundedAmount: z.nullable(z.number()),
});
/**
 * `credits_refunded`, version 1: credits taken back because a payment was refunded or a dispute lost
 * (the payment service's entries; `via` says whether the grant's rest was voided or credits deducted).
 * @public
 */
export type CreditsRefundedPayload = z.infer<typeof CreditsRefundedPayload>;

/**
 * `credits_reversed`, version 1: part or all of a charge given back (`reverseCharge`, docs/concepts.md,
 * "The journal"). `grants` lists the credits returned to each grant the charge drew from (a portion
 * with `kind: "debt_paid"` went to pay the account's debt instead); what `amount` has beyond them
 * lowered the debt the charge had made. Credits returned to a grant that has expired or been voided
 * since are removed again at once, by a `credits_expired` or `credits_voided` that follows.
 * @public
 */
export const CreditsReversedPayload = z.object({
  ...EntryFields,
  /** The id of the charge's journal entry. */
  reverses: z.string(),
  /** ISO-8601: when the charge's usage happened (its `occurredAt`, else when it was recorded). */
  chargedAt: z.string(),
  spender: z.nullable(z.string()),
  feature: z.nullable(z.string()),
});
/**
 * `credits_reversed`, version 1: part or all of a charge given back (`reverseCharge`, docs/concepts.md,
 * "The journal"). `grants` lists the credits returned to each grant the charge drew from (a portion
 * with `kind: "debt_paid"` went to pay the account's debt instead); what `amount` has beyond them
 * lowered the debt the charge had made. Credits returned to a grant that has expired or been voided
 * since are removed again at once, by a `credits_expired` or `credits_voided` that follows.
 * @public
 */
export type CreditsReversedPayload = z.infer<typeof CreditsReversedPayload>;

/** `credits_voided` (what was left of a grant removed) and `credits_expired`, version 1. @public */
export const CreditsRemovedPayload = z.object({ ...EntryFields, reservationId: z.nullable(z.string()) });
/** `credits_voided` (what was left of a grant removed) and `credits_expired`, version 1. @public */
export type CreditsRemovedPayload = z.infer<typeof CreditsRemovedPayload>;

/** `hold_placed`, version 1. @public */
export const HoldPlacedPayload = z.object({
  ...EntryFields,
  reservationId: z.string(),
  /** ISO-8601 time the hold lapses unless committed or released. */
  expiresAt: z.string(),
  reason: z.nullable(z.string()),
});
/** `hold_placed`, version 1. @public */
export type HoldPlacedPayload = z.infer<typeof HoldPlacedPayload>;

/**
 * `hold_settled`, version 1: a hold committed (captured), released, or lapsed; one per hold. The
 * entry fields are the settling entry's (`commit_reserved` or `release_reserved`); an under-commit's
 * return of the unused part is in the same entry (its `grants` with a `kind`) and in
 * `returnedAmount`. A commit beyond the hold also records a `credits_deducted`
 * with the hold's `reservationId` for the excess.
 * @public
 */
export const HoldSettledPayload = z.object({
  ...EntryFields,
  reservationId: z.string(),
  outcome: z.enum(["committed", "released", "expired"]),
  /** Credits the hold had. */
  heldAmount: z.number().check(z.int()),
  /** Credits the commit captured (0 unless committed). */
  capturedAmount: z.number().check(z.int()),
  /** Credits that went back to the grants (`heldAmount − capturedAmount`). */
  returnedAmount: z.number().check(z.int()),
});
/**
 * `hold_settled`, version 1: a hold committed (captured), released, or lapsed; one per hold. The
 * entry fields are the settling entry's (`commit_reserved` or `release_reserved`); an under-commit's
 * return of the unused part is in the same entry (its `grants` with a `kind`) and in
 * `returnedAmount`. A commit beyond the hold also records a `credits_deducted`
 * with the hold's `reservationId` for the excess.
 * @public
 */
export type HoldSettledPayload = z.infer<typeof HoldSettledPayload>;

/** `low_credits`, `credits_exhausted`, `balance_restored`, version 1 (docs/notifications.md). @public */
export const LevelChangedPayload = z.object({
  available: z.number().check(z.int()),
  threshold: z.number().check(z.int()),
  level: AlertLevel,
  previousLevel: z.nullable(AlertLevel),
  balance: z.number().check(z.int()),
  reserved: z.number().check(z.int()),
  seq: z.number().check(z.int()),
});
/** `low_credits`, `credits_exhausted`, `balance_restored`, version 1 (docs/notifications.md). @public */
export type LevelChangedPayload = z.infer<typeof LevelChangedPayload>;

/** `feature_status_changed`, version 1 (docs/trial-and-checks.md). @public */
export const FeatureStatusChangedPayload = z.object({
  feature: z.string(),
  allowed: z.boolean(),
  minAvailable: z.number().check(z.int()),
  available: z.number().check(z.int()),
  previousAvailable: z.number().check(z.int()),
});
/** `feature_status_changed`, version 1 (docs/trial-and-checks.md). @public */
export type FeatureStatusChangedPayload = z.infer<typeof FeatureStatusChangedPayload>;

/**
 * `limit_warning` (80 %) and `limit_reached` (100 %), version 1: a spend (or a hold) took a spend
 * limit's window to the threshold, once per limit, window and threshold (docs/teams-and-limits.md,
 * "Limit notifications"). The account is the envelope's `userId`.
 * @public
 */
export const LimitCrossedPayload = z.object({
  /** The limit, as `getLimits` names it. */
  limit: z.object({
    spender: z.nullable(SpenderId),
    feature: z.nullable(z.string()),
    /** The credit unit it counts, when not the default one (docs/units.md). */
    unit: z.optional(z.string()),
    amount: z.number().check(z.int()),
    /** Null when it follows the subscription (`resetsWith`). */
    period: z.nullable(LimitPeriod),
    resetsWith: z.nullable(z.literal("subscription")),
  }),
  /** 0.8 (`limit_warning`) or 1 (`limit_reached`): the share of `amount` reached. */
  threshold: z.union([z.literal(0.8), z.literal(1)]),
  /** Credits the window counted after the spend (spent and held). */
  used: z.number().check(z.int()),
  /** `amount − used`, never below 0. */
  remaining: z.number().check(z.int()),
  /** ISO-8601 start of the window. */
  windowStart: z.string(),
  /** ISO-8601 end of the window: the count starts again from 0 then, and both thresholds re-arm. */
  resetsAt: z.string(),
  /** The account's journal position after the change that crossed. */
  seq: z.number().check(z.int()),
});
/**
 * `limit_warning` (80 %) and `limit_reached` (100 %), version 1: a spend (or a hold) took a spend
 * limit's window to the threshold, once per limit, window and threshold (docs/teams-and-limits.md,
 * "Limit notifications"). The account is the envelope's `userId`.
 * @public
 */
export type LimitCrossedPayload = z.infer<typeof LimitCrossedPayload>;

/** What an alert event says of one threshold (docs/notifications.md, "Alerts"). */
const AlertAbout = {
  /** The threshold's id. */
  thresholdId: z.string(),
  kind: z.enum(["available", "left_percent", "period_spend", "expiring"]),
  /** The credit unit it watches, when not the default one (docs/units.md). */
  unit: z.optional(z.string()),
  /** The threshold's value after the change (credits; percent for `left_percent`). */
  value: z.nullable(z.number()),
  /** The line (`atOrBelow` or `atOrAbove`): a value on it is in alarm. */
  line: z.number(),
  /** How many times this threshold has gone into alarm, this time included. */
  crossing: z.number().check(z.int()),
};

/**
 * `alert_triggered`, version 1: one alert threshold moved into alarm (once per move; none while it
 * stays there). `period_spend` thresholds add their window.
 * @public
 */
export const AlertTriggeredPayload = z.object({
  ...AlertAbout,
  /** ISO-8601 start and end of a `period_spend` threshold's window. */
  windowStart: z.optional(z.string()),
  resetsAt: z.optional(z.string()),
  /** The account's journal position after the change. */
  seq: z.number().check(z.int()),
});
/**
 * `alert_triggered`, version 1: one alert threshold moved into alarm (once per move; none while it
 * stays there). `period_spend` thresholds add their window.
 * @public
 */
export type AlertTriggeredPayload = z.infer<typeof AlertTriggeredPayload>;

/** `alert_resolved`, version 1: the thresholds one change (or evaluation) brought back out of alarm. @public */
export const AlertResolvedPayload = z.object({
  resolved: z.array(z.object(AlertAbout)).check(z.minLength(1)),
  seq: z.number().check(z.int()),
});
/** `alert_resolved`, version 1: the thresholds one change (or evaluation) brought back out of alarm. @public */
export type AlertResolvedPayload = z.infer<typeof AlertResolvedPayload>;

const envelope = <T extends NotificationType, P extends z.core.$ZodType>(type: T, payload: P) =>
  z.object({
    type: z.literal(type),
    /** The version of `payload`'s schema. */
    version: z.literal(1),
    /** The outbox row's id: the same on every redelivery (consumers drop ids they have seen). */
    id: z.string().check(z.minLength(1)),
    userId: z.string().check(z.minLength(1)),
    /** ISO-8601 time of the unit of work that recorded it. */
    occurredAt: isoDateTime(),
    payload,
  });

/** Any published domain event, by `type` (version 1 of each). @public */
export const DomainEvent = z.discriminatedUnion("type", [
  envelope("credits_added", CreditsAddedPayload),
  envelope("credits_adjusted", CreditsAddedPayload),
  envelope("credits_deducted", CreditsDeductedPayload),
  envelope("credits_refunded", CreditsRefundedPayload),
  envelope("credits_voided", CreditsRemovedPayload),
  envelope("credits_expired", CreditsRemovedPayload),
  envelope("hold_placed", HoldPlacedPayload),
  envelope("hold_settled", HoldSettledPayload),
  envelope("credits_reversed", CreditsReversedPayload),
  envelope("low_credits", LevelChangedPayload),
  envelope("credits_exhausted", LevelChangedPayload),
  envelope("balance_restored", LevelChangedPayload),
  envelope("feature_status_changed", FeatureStatusChangedPayload),
  envelope("limit_warning", LimitCrossedPayload),
  envelope("limit_reached", LimitCrossedPayload),
  envelope("alert_triggered", AlertTriggeredPayload),
  envelope("alert_resolved", AlertResolvedPayload),
]);
/** Any published domain event, by `type` (version 1 of each). @public */
export type DomainEvent = z.infer<typeof DomainEvent>;

/** The envelope of any outbox row (the other notification types' payloads are free-form objects). @public */
export const EventEnvelope = z.object({
  type: NotificationType,
  version: z.number().check(z.int(), z.minimum(1)),
  id: z.string().check(z.minLength(1)),
  userId: z.string().check(z.minLength(1)),
  occurredAt: isoDateTime(),
  payload: z.record(z.string(), z.unknown()),
});
/** The envelope of any outbox row (the other notification types' payloads are free-form objects). @public */
export type EventEnvelope = z.infer<typeof EventEnvelope>;

// The versions, in a file of their own: the core's notifications read them without these schemas.
export { EVENT_VERSIONS } from "./event-versions.js";
