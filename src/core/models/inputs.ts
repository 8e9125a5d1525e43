import * as z from "zod";
import {
  Amount,
  DateInput,
  FeatureName,
  IdempotencyKey,
  Metadata,
  NonNegativeAmount,
  Priority,
  ShortText,
  UserId,
} from "./common.js";
import { EntryType, GrantSource } from "./entities.js";
import { GrantScope, SpendFields, SpenderId } from "./limits.js";
import { PlanId } from "./subscriptions.js";
import { CostBasisInput } from "./cost-basis.js";
import { text } from "./text.js";

/** Options every mutation accepts. */
export const MutationOptions = z.strictObject({
  description: ShortText.optional(),
  /** Same key + same arguments → the first result, nothing changed. Unique per user. */
  idempotencyKey: IdempotencyKey.optional(),
  /** Ties entries of one business operation together across services. */
  correlationId: text(255).min(1).optional(),
  metadata: Metadata.optional(),
});
export type MutationOptions = z.input<typeof MutationOptions>;

export const AddCreditsOptions = MutationOptions.extend({
  /** When unspent credits of this grant expire; omitted or null: never. */
  expiresAt: DateInput.nullable().optional(),
  /** Lower numbers are drawn first. Default 0. */
  priority: Priority.optional(),
  source: GrantSource.optional(),
  /** External reference (payment id, promo code, subscription period, …). */
  sourceRef: text(255).min(1).optional(),
  /**
   * The spends the grant may pay for (docs/teams-and-limits.md, "Scoped credits"): `features`, the
   * spend's feature must be one of them; `spenders`, its spender. Omitted: any spend.
   */
  scope: GrantScope.optional(),
  /**
   * What each credit was sold for (docs/revenue.md): `{ perCredit, currency }`, `perCredit` in the
   * smallest currency unit as a decimal or fraction string. Omitted: none (free credits: no revenue).
   */
  costBasis: CostBasisInput.optional(),
});
export type AddCreditsOptions = z.input<typeof AddCreditsOptions>;

/**
 * Trial credits (`createCreditManager({ trial })`, `new CreditService({ trial })`): granted once,
 * in the unit of work that first creates a user's account — never to an account that already
 * existed, whatever its balance.
 */
export const TrialCredits = z.strictObject({
  amount: Amount,
  /** Days until unspent trial credits expire; omitted: never. */
  expiresInDays: z.number().int({ error: "expiresInDays must be a whole number" }).min(1).max(36_500).optional(),
  /** Lower numbers are drawn first. Default 0. */
  priority: Priority.optional(),
  description: ShortText.optional(),
  metadata: Metadata.optional(),
});
export type TrialCredits = z.input<typeof TrialCredits>;

/**
 * Per-feature rules (docs/trial-and-checks.md): the least `available` balance with which a feature
 * is allowed; `enabled: false` turns it off for every account; `plans`, on only for an account
 * whose active subscription is on one of them.
 */
export const FeatureRules = z.record(
  FeatureName,
  z.strictObject({
    minAvailable: NonNegativeAmount,
    /** False: the feature is off (`check()` answers reason "feature_off"). Default true. */
    enabled: z.boolean().optional(),
    /** The plans that grant the feature: without an active subscription on one of them it is off. Omitted: any account. */
    plans: z.array(PlanId).min(1).max(100).optional(),
  }),
);
export type FeatureRules = z.input<typeof FeatureRules>;

/**
 * `credits.getUserCreditsInfo(userId, options)`: the spend to answer for (docs/teams-and-limits.md,
 * "Scoped credits"). Omitted: a spend naming neither.
 */
export const CreditsInfoOptions = z.strictObject({
  /** The spender asking; scoped grants listing spenders pay only theirs. */
  spender: SpenderId.optional(),
  /** The feature; scoped grants listing features pay only theirs. */
  feature: FeatureName.optional(),
});
export type CreditsInfoOptions = z.input<typeof CreditsInfoOptions>;

/** `credits.check(userId, options)`. */
export const CheckOptions = z.strictObject({
  /** A feature: its rule in `features` applies (none: it is paid from the pool, `minAvailable` 1). */
  feature: FeatureName.optional(),
  /** Credits the caller is about to spend; required as well. */
  amount: Amount.optional(),
  /** Who is about to spend: the spend limits for them (and for `feature`) are checked too. */
  spender: SpenderId.optional(),
});
export type CheckOptions = z.input<typeof CheckOptions>;

/** A deduction's options: a mutation's, and who spends on what (docs/teams-and-limits.md). */
export const DeductOptions = MutationOptions.extend({
  ...SpendFields,
  /**
   * When the usage happened, when it is recorded later (docs/usage.md, "Late usage"): usage
   * reports and spend limits place it then, while the journal records it now. At most the
   * manager's `lateUsageWindowDays` (default 35) before now, never later than now.
   */
  occurredAt: DateInput.optional(),
});
export type DeductOptions = z.input<typeof DeductOptions>;

/** Longest hold TTL accepted: 30 days, in seconds. */
export const MAX_TTL_SECONDS = 30 * 24 * 3600;

export const ReserveOptions = MutationOptions.extend({
  ...SpendFields,
  /** Seconds until the hold lapses and its credits return. Default: the manager's option (900). */
  ttlSeconds: z.number().int().min(1).max(MAX_TTL_SECONDS).optional(),
  reason: ShortText.optional(),
  /**
   * A hold for what is there (docs/concepts.md, "Holds"): it holds `amount`, or what this spender
   * and feature may spend now when that is less, down to `minimum` (at most `amount`); below it
   * the hold is refused as a plain one is. The reservation's `amount` says what it holds.
   */
  minimum: Amount.optional(),
});
export type ReserveOptions = z.input<typeof ReserveOptions>;

/**
 * The `userId` of a mutation by hold or grant id: the owner, when the caller knows it. The store
 * then routes the operation by it (one shard of a store distributed by user, docs/scaling-out.md)
 * instead of looking the owner up, and another user's hold or grant is not found
 * (`NotFoundError`, nothing changed).
 */
const OwnerOption = { userId: UserId.optional() };

export const CommitOptions = MutationOptions.extend({
  /** Credits to capture; default the full hold. Less returns the rest; more takes the excess as usage. */
  amount: NonNegativeAmount.optional(),
  /** The hold's owner, when known: the commit is routed by it; another user's hold is not found. */
  ...OwnerOption,
});
export type CommitOptions = z.input<typeof CommitOptions>;

export const ReleaseOptions = MutationOptions.extend({
  /** The hold's owner, when known: the release is routed by it; another user's hold is not found. */
  ...OwnerOption,
});
export type ReleaseOptions = z.input<typeof ReleaseOptions>;

/**
 * `reverseCharge`'s options (docs/concepts.md, "Giving a charge back"): how much of the charge to
 * give back (default: all that is left of it), why (required: the entry's description), and the
 * usual key, correlation id and metadata.
 */
export const ReverseChargeOptions = z.strictObject({
  /** Credits to give back; at most what is left of the charge. Omitted: all that is left. */
  amount: Amount.optional(),
  /** Why it is given back (the `reverse` entry's description): not empty. */
  reason: ShortText.refine((s) => s.trim() !== "", { error: "reason must not be empty" }),
  /** Same key + same arguments → the first `reverse` entry, nothing changed. Unique per user. */
  idempotencyKey: IdempotencyKey.optional(),
  correlationId: MutationOptions.shape.correlationId,
  /** Kept on the entry beside the charge's own metadata (the charge's keys win: usage groups by them). */
  metadata: Metadata.optional(),
});
export type ReverseChargeOptions = z.input<typeof ReverseChargeOptions>;

export const VoidGrantOptions = MutationOptions.extend({
  /** The grant's owner, when known: the void is routed by it; another user's grant is not found. */
  ...OwnerOption,
});
export type VoidGrantOptions = z.input<typeof VoidGrantOptions>;

export const HistoryQuery = z.strictObject({
  /** Page size, 1–1000, default 50. */
  limit: z.number().int().min(1).max(1000).optional(),
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor: z
    .string()
    .regex(/^[0-9]{1,16}$/, { error: "cursor is not one this library returned" })
    .refine((c) => Number.isSafeInteger(Number(c)), { error: "cursor is not one this library returned" })
    .optional(),
  types: z.array(EntryType).min(1).optional(),
  /** Inclusive lower bound of createdAt. */
  from: DateInput.optional(),
  /** Exclusive upper bound of createdAt. */
  to: DateInput.optional(),
  /**
   * Only the entries recorded under this spender (docs/teams-and-limits.md). A filtered page may
   * hold fewer than `limit` entries while `nextCursor` is set: follow it until it is null.
   */
  spender: SpenderId.optional(),
  /** Only the entries recorded for this feature (as `spender`). */
  feature: FeatureName.optional(),
});
export type HistoryQuery = z.input<typeof HistoryQuery>;

/** Days ahead to look for expiring credits: 0–3650. */
export const ExpiringDays = z.number().min(0).max(3650);
export const GrantsQuery = z.strictObject({
  /** Closed and spent grants too. Default false. */
  includeInactive: z.boolean().optional(),
});
export type GrantsQuery = z.input<typeof GrantsQuery>;
export const AsOf = DateInput.optional();

/** `ledger.getEntries(query)`: system and error events, newest first. */
export const LedgerEntriesQuery = z
  .strictObject({
    eventType: z.enum(["error", "system"]).optional(),
    userId: UserId.optional(),
    /** createdAt < before (paging: the last entry's createdAt). */
    before: DateInput.optional(),
    /** With `before`: the last entry's id, so entries of the same millisecond are not skipped. */
    beforeId: z.string().min(1).max(128).optional(),
    limit: z.number().int({ error: "limit must be an integer" }).min(1).max(1000).optional(),
  })
  .refine((q) => q.beforeId === undefined || q.before !== undefined, {
    error: "beforeId needs before (the entry's createdAt)",
    path: ["beforeId"],
  });
export type LedgerEntriesQuery = z.input<typeof LedgerEntriesQuery>;

/** `checkpointEvery`: a checkpoint entry each time an account's journal passes a multiple of this many entries. */
export const CheckpointEvery = z.number().int().min(2).max(1_000_000_000);

/**
 * `outcomeWaitMs`: how long a unit of work whose commit was sent but not answered asks the store
 * whether it was applied before it reports `OutcomeUnknownError` (docs/concepts.md).
 */
export const OutcomeWaitMs = z.number().int().min(0).max(600_000);

/** `audit(userId, options)` (docs/operations.md, "Checkpoints and archival"). */
export const AuditOptions = z.strictObject({
  /**
   * "checkpoint" (default): replay from the account's latest checkpoint entry, trusting the state it
   * records; "genesis": from the first entry, checking every checkpoint's state on the way.
   */
  from: z.enum(["checkpoint", "genesis"]).optional(),
});
export type AuditOptions = z.input<typeof AuditOptions>;

/** `checkpoint(userId, options)`. */
export const CheckpointOptions = z.strictObject({
  /** Write none unless at least this many entries follow the latest checkpoint (or the start). Default 1. */
  minEntries: z.number().int().min(1).max(1_000_000_000).optional(),
});
export type CheckpointOptions = z.input<typeof CheckpointOptions>;

/**
 * How many days back usage may be recorded with `occurredAt` (docs/usage.md, "Late usage"): 0 (no
 * late usage) to 366. Default 35, as Stripe's meters accept.
 */
export const LateUsageWindowDays = z.number().int().min(0).max(366);
/** The default late-usage window, in days. */
export const DEFAULT_LATE_USAGE_WINDOW_DAYS = 35;
