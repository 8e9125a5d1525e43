import * as z from "zod/mini";
import {
  Amount,
  DateInput,
  FeatureName,
  IdempotencyKey,
  CallerMetadata,
  NonNegativeAmount,
  Priority,
  ShortText,
  UnitName,
  UserId,
} from "./common.js";
import { EntryType, GrantSource, JournalKeyId } from "./entities.js";
import { GrantScope, SpendFields, SpenderId } from "./limits.js";
import { PlanId } from "./subscriptions.js";
import { CostBasisInput } from "./cost-basis.js";
import { text } from "./text.js";

/** Options every mutation accepts. @public */
export const MutationOptions = z.strictObject({
  description: z.optional(ShortText),
  /** Same key + same arguments → the first result, nothing changed. Unique per user. */
  idempotencyKey: z.optional(IdempotencyKey),
  /** Ties entries of one business operation together across services. */
  correlationId: z.optional(text(255).check(z.minLength(1))),
  metadata: z.optional(CallerMetadata),
});
/** Options every mutation accepts. @public */
export type MutationOptions = z.input<typeof MutationOptions>;

/** Options of `credits.addCredits()`: a mutation's, and the grant's expiry, priority, source, reference, scope and cost basis. @public */
export const AddCreditsOptions = z.extend(MutationOptions, {
  /** When unspent credits of this grant expire; omitted or null: never. */
  expiresAt: z.optional(z.nullable(DateInput)),
  /**
   * When the grant starts (docs/units.md, "Grants that start later"): until then its credits are
   * upcoming, in no balance. Omitted, null, now or past: at once. `expiresAt` must be after it.
   */
  effectiveAt: z.optional(z.nullable(DateInput)),
  /** Lower numbers are drawn first. Default 0. */
  priority: z.optional(Priority),
  source: z.optional(GrantSource),
  /** External reference (payment id, promo code, subscription period, …). */
  sourceRef: z.optional(text(255).check(z.minLength(1))),
  /**
   * The spends the grant may pay for (docs/teams-and-limits.md, "Scoped credits"): `features`, the
   * spend's feature must be one of them; `spenders`, its spender. Omitted: any spend.
   */
  scope: z.optional(GrantScope),
  /**
   * What each credit was sold for (docs/revenue.md): `{ perCredit, currency }`, `perCredit` in the
   * smallest currency unit as a decimal or fraction string. Omitted: none (free credits: no revenue).
   */
  costBasis: z.optional(CostBasisInput),
  /** The unit the credits are in (docs/units.md). Omitted: the default unit. */
  unit: z.optional(UnitName),
});
/** Options of `credits.addCredits()`: a mutation's, and the grant's expiry, priority, source, reference, scope and cost basis. @public */
export type AddCreditsOptions = z.input<typeof AddCreditsOptions>;

/**
 * Trial credits (`createCreditManager({ trial })`, `new CreditService({ trial })`): granted once,
 * in the unit of work that first creates a user's account — never to an account that already
 * existed, whatever its balance.
 * @public
 */
export const TrialCredits = z.strictObject({
  amount: Amount,
  /** The unit they are granted in (docs/units.md); omitted: the default unit. */
  unit: z.optional(UnitName),
  /** Days until unspent trial credits expire; omitted: never. */
  expiresInDays: z.optional(
    z.number().check(z.int({ error: "expiresInDays must be a whole number" }), z.minimum(1), z.maximum(36_500)),
  ),
  /** Lower numbers are drawn first. Default 0. */
  priority: z.optional(Priority),
  description: z.optional(ShortText),
  metadata: z.optional(CallerMetadata),
});
/**
 * Trial credits (`createCreditManager({ trial })`, `new CreditService({ trial })`): granted once,
 * in the unit of work that first creates a user's account — never to an account that already
 * existed, whatever its balance.
 * @public
 */
export type TrialCredits = z.input<typeof TrialCredits>;

/**
 * Per-feature rules (docs/trial-and-checks.md): the least `available` balance with which a feature
 * is allowed; `enabled: false` turns it off for every account; `plans`, on only for an account
 * whose active subscription is on one of them.
 * @public
 */
export const FeatureRules = z.record(
  FeatureName,
  z.strictObject({
    minAvailable: NonNegativeAmount,
    /** False: the feature is off (`check()` answers reason "feature_off"). Default true. */
    enabled: z.optional(z.boolean()),
    /** The plans that grant the feature: without an active subscription on one of them it is off. Omitted: any account. */
    plans: z.optional(z.array(PlanId).check(z.minLength(1), z.maxLength(100))),
    /**
     * The unit the feature is paid in (docs/units.md, "Features in a unit"): a spend, hold or
     * `check()` naming the feature acts in it without naming it; naming another unit is a
     * `ValidationError`. Omitted: the unit the call names (default: the default unit).
     */
    unit: z.optional(UnitName),
  }),
);
/**
 * Per-feature rules (docs/trial-and-checks.md): the least `available` balance with which a feature
 * is allowed; `enabled: false` turns it off for every account; `plans`, on only for an account
 * whose active subscription is on one of them.
 * @public
 */
export type FeatureRules = z.input<typeof FeatureRules>;

/**
 * `credits.getUserCreditsInfo(userId, options)`: the spend to answer for (docs/teams-and-limits.md,
 * "Scoped credits"). Omitted: a spend naming neither.
 * @public
 */
export const CreditsInfoOptions = z.strictObject({
  /**
   * The unit to answer in (docs/units.md): `balance`, `reserved`, `available` and `debt` are then
   * that unit's. Omitted: the default unit (or the unit `feature`'s rule names).
   */
  unit: z.optional(UnitName),
  /** The spender asking; scoped grants listing spenders pay only theirs. */
  spender: z.optional(SpenderId),
  /** The feature; scoped grants listing features pay only theirs. */
  feature: z.optional(FeatureName),
});
/**
 * `credits.getUserCreditsInfo(userId, options)`: the spend to answer for (docs/teams-and-limits.md,
 * "Scoped credits"). Omitted: a spend naming neither.
 * @public
 */
export type CreditsInfoOptions = z.input<typeof CreditsInfoOptions>;

/** `credits.check(userId, options)`. @public */
export const CheckOptions = z.strictObject({
  /** A feature: its rule in `features` applies (none: it is paid from the pool, `minAvailable` 1). */
  feature: z.optional(FeatureName),
  /** Credits the caller is about to spend; required as well. */
  amount: z.optional(Amount),
  /** Who is about to spend: the spend limits for them (and for `feature`) are checked too. */
  spender: z.optional(SpenderId),
  /**
   * The unit to check (docs/units.md): its `available` is compared. Omitted: the unit `feature`'s
   * rule names, else the default unit. The spend limits in that unit are checked.
   */
  unit: z.optional(UnitName),
});
/** `credits.check(userId, options)`. @public */
export type CheckOptions = z.input<typeof CheckOptions>;

/** A deduction's options: a mutation's, and who spends on what (docs/teams-and-limits.md). @public */
export const DeductOptions = z.extend(MutationOptions, {
  ...SpendFields,
  /**
   * When the usage happened, when it is recorded later (docs/usage.md, "Late usage"): usage
   * reports and spend limits place it then, while the journal records it now. At most the
   * manager's `lateUsageWindowDays` (default 35) before now, never later than now.
   */
  occurredAt: z.optional(DateInput),
  /** The unit to deduct in (docs/units.md): only its grants pay. Omitted: the default unit. */
  unit: z.optional(UnitName),
});
/** A deduction's options: a mutation's, and who spends on what (docs/teams-and-limits.md). @public */
export type DeductOptions = z.input<typeof DeductOptions>;

/** Longest hold TTL accepted: 30 days, in seconds. */
export const MAX_TTL_SECONDS = 30 * 24 * 3600;

/** Options of `credits.reserveCredits()`: a mutation's, who spends on what, the hold's time to live and a capped hold's minimum. @public */
export const ReserveOptions = z.extend(MutationOptions, {
  ...SpendFields,
  /** Seconds until the hold lapses and its credits return. Default: the manager's option (900). */
  ttlSeconds: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_TTL_SECONDS))),
  reason: z.optional(ShortText),
  /**
   * A hold for what is there (docs/concepts.md, "Holds"): it holds `amount`, or what this spender
   * and feature may spend now when that is less, down to `minimum` (at most `amount`); below it
   * the hold is refused as a plain one is. The reservation's `amount` says what it holds.
   */
  minimum: z.optional(Amount),
  /** The unit to hold (docs/units.md): only its grants pay; the commit captures in it. Omitted: the default unit. */
  unit: z.optional(UnitName),
});
/** Options of `credits.reserveCredits()`: a mutation's, who spends on what, the hold's time to live and a capped hold's minimum. @public */
export type ReserveOptions = z.input<typeof ReserveOptions>;

/**
 * The `userId` of a mutation by hold or grant id: the owner, when the caller knows it. The store
 * then routes the operation by it (one shard of a store distributed by user, docs/scaling-out.md)
 * instead of looking the owner up, and another user's hold or grant is not found
 * (`NotFoundError`, nothing changed).
 */
const OwnerOption = { userId: z.optional(UserId) };

/** Options of `credits.commitReservedCredits()`: how much of the hold is captured. @public */
export const CommitOptions = z.extend(MutationOptions, {
  /** Credits to capture; default the full hold. Less returns the rest; more takes the excess as usage. */
  amount: z.optional(NonNegativeAmount),
  /** The hold's owner, when known: the commit is routed by it; another user's hold is not found. */
  ...OwnerOption,
});
/** Options of `credits.commitReservedCredits()`: how much of the hold is captured. @public */
export type CommitOptions = z.input<typeof CommitOptions>;

/** Options of `credits.releaseReservedCredits()`. @public */
export const ReleaseOptions = z.extend(MutationOptions, {
  /** The hold's owner, when known: the release is routed by it; another user's hold is not found. */
  ...OwnerOption,
});
/** Options of `credits.releaseReservedCredits()`. @public */
export type ReleaseOptions = z.input<typeof ReleaseOptions>;

/**
 * `reverseCharge`'s options (docs/concepts.md, "Giving a charge back"): how much of the charge to
 * give back (default: all that is left of it), why (required: the entry's description), and the
 * usual key, correlation id and metadata.
 * @public
 */
export const ReverseChargeOptions = z.strictObject({
  /** Credits to give back; at most what is left of the charge. Omitted: all that is left. */
  amount: z.optional(Amount),
  /** Why it is given back (the `reverse` entry's description): not empty. */
  reason: ShortText.check(z.refine((s) => s.trim() !== "", { error: "reason must not be empty" })),
  /** Same key + same arguments → the first `reverse` entry, nothing changed. Unique per user. */
  idempotencyKey: z.optional(IdempotencyKey),
  correlationId: MutationOptions.shape.correlationId,
  /** Kept on the entry beside the charge's own metadata (the charge's keys win: usage groups by them). */
  metadata: z.optional(CallerMetadata),
});
/**
 * `reverseCharge`'s options (docs/concepts.md, "Giving a charge back"): how much of the charge to
 * give back (default: all that is left of it), why (required: the entry's description), and the
 * usual key, correlation id and metadata.
 * @public
 */
export type ReverseChargeOptions = z.input<typeof ReverseChargeOptions>;

/** Options of `credits.voidGrant()`. @public */
export const VoidGrantOptions = z.extend(MutationOptions, {
  /** The grant's owner, when known: the void is routed by it; another user's grant is not found. */
  ...OwnerOption,
});
/** Options of `credits.voidGrant()`. @public */
export type VoidGrantOptions = z.input<typeof VoidGrantOptions>;

/** A page of `credits.getHistory()`: size, cursor, entry types and a time range. @public */
export const HistoryQuery = z.strictObject({
  /** Page size, 1–1000, default 50. */
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor: z.optional(
    z.string().check(
      z.regex(/^[0-9]{1,16}$/, { error: "cursor is not one this library returned" }),
      z.refine((c) => Number.isSafeInteger(Number(c)), { error: "cursor is not one this library returned" }),
    ),
  ),
  types: z.optional(z.array(EntryType).check(z.minLength(1))),
  /**
   * Inclusive lower bound of when an entry's money moved: its `occurredAt`, else its `createdAt`
   * (docs/concepts.md, "Two times on every entry").
   */
  from: z.optional(DateInput),
  /** Exclusive upper bound of when an entry's money moved (as `from`). */
  to: z.optional(DateInput),
  /**
   * Only the entries recorded under this spender (docs/teams-and-limits.md). A filtered page may
   * hold fewer than `limit` entries while `nextCursor` is set: follow it until it is null.
   */
  spender: z.optional(SpenderId),
  /** Only the entries recorded for this feature (as `spender`). */
  feature: z.optional(FeatureName),
});
/** A page of `credits.getHistory()`: size, cursor, entry types and a time range. @public */
export type HistoryQuery = z.input<typeof HistoryQuery>;

/** Days ahead to look for expiring credits: 0–3650. */
export const ExpiringDays = z.number().check(z.minimum(0), z.maximum(3650));
/** Options of `credits.getGrants()`. @public */
export const GrantsQuery = z.strictObject({
  /** Closed and spent grants too. Default false. */
  includeInactive: z.optional(z.boolean()),
});
/** Options of `credits.getGrants()`. @public */
export type GrantsQuery = z.input<typeof GrantsQuery>;
export const AsOf = z.optional(DateInput);

/** `ledger.getEntries(query)`: system and error events, newest first. @public */
export const LedgerEntriesQuery = z
  .strictObject({
    eventType: z.optional(z.enum(["error", "system"])),
    userId: z.optional(UserId),
    /** createdAt < before (paging: the last entry's createdAt). */
    before: z.optional(DateInput),
    /** With `before`: the last entry's id, so entries of the same millisecond are not skipped. */
    beforeId: z.optional(z.string().check(z.minLength(1), z.maxLength(128))),
    limit: z.optional(z.number().check(z.int({ error: "limit must be an integer" }), z.minimum(1), z.maximum(1000))),
  })
  .check(
    z.refine((q) => q.beforeId === undefined || q.before !== undefined, {
      error: "beforeId needs before (the entry's createdAt)",
      path: ["beforeId"],
    }),
  );
/** `ledger.getEntries(query)`: system and error events, newest first. @public */
export type LedgerEntriesQuery = z.input<typeof LedgerEntriesQuery>;

/**
 * `overdraftLimit`: how far `available` may go below zero through usage already delivered
 * (docs/concepts.md, "Overdraft and debt"), in credits, or `"unlimited"`, written out. Default 0.
 * @public
 */
export const OverdraftLimit = z.union([
  z.number().check(z.int(), z.minimum(0), z.maximum(Number.MAX_SAFE_INTEGER)),
  z.literal("unlimited"),
]);
/** The `overdraftLimit` option: a number of credits (default 0) or `"unlimited"` (the `OverdraftLimit` model). @public */
export type OverdraftLimit = z.input<typeof OverdraftLimit>;

/**
 * `overdraftLimits` (docs/units.md, "Debt per unit"): the overdraft limit of each unit by name, in
 * that unit, or `"unlimited"`. A unit not listed has none (0), but for the default unit, whose limit
 * is `overdraftLimit` unless the map names it.
 *
 * @beta
 */
export const OverdraftLimits = z.record(UnitName, OverdraftLimit);
/**
 * The `overdraftLimits` option: an overdraft limit per unit (the `OverdraftLimits` model).
 *
 * @beta
 */
export type OverdraftLimits = z.input<typeof OverdraftLimits>;

/** `checkpointEvery`: a checkpoint entry each time an account's journal passes a multiple of this many entries. */
export const CheckpointEvery = z.number().check(z.int(), z.minimum(2), z.maximum(1_000_000_000));

/**
 * `outcomeWaitMs`: how long a unit of work whose commit was sent but not answered asks the store
 * whether it was applied before it reports `OutcomeUnknownError` (docs/concepts.md).
 */
export const OutcomeWaitMs = z.number().check(z.int(), z.minimum(0), z.maximum(600_000));

/** A key of the journal's chain: at least 32 bytes (a string: its UTF-8 bytes). */
const JournalKeySecret = z.union([
  z
    .string()
    .check(z.refine((v) => new TextEncoder().encode(v).length >= 32, { error: "a journal key is at least 32 bytes" })),
  z.custom<Uint8Array>((v) => v instanceof Uint8Array && v.length >= 32, {
    error: "a journal key is a string or a Uint8Array of at least 32 bytes",
  }),
]);

/**
 * `journalKeys` (docs/concepts.md, "A keyed chain"): the keys of the journal's hash chain by id,
 * kept outside the database, and the id new entries are signed with (HMAC-SHA256). Keep every
 * key an entry names: `audit()` needs it.
 * @public
 */
export const JournalKeysOptions = z
  .strictObject({
    /** The key new entries are signed with: one of `keys`. */
    current: JournalKeyId,
    /** Every key by id: the current one and those older entries name. */
    keys: z.record(JournalKeyId, JournalKeySecret),
  })
  .check(
    z.refine((o) => Object.prototype.hasOwnProperty.call(o.keys, o.current), {
      error: "current must be the id of one of keys",
    }),
  );
/** The `journalKeys` option: the chain's keys by id and the one new entries are signed with (the `JournalKeysOptions` model). @public */
export type JournalKeysOptions = z.input<typeof JournalKeysOptions>;

/**
 * A chain head kept outside the database (docs/concepts.md, "A keyed chain"): what
 * `journalHead(userId)` answered, for `audit(userId, { head })`.
 * @public
 */
export const JournalHead = z.strictObject({
  userId: z.string(),
  seq: z.number().check(z.int(), z.minimum(1), z.maximum(Number.MAX_SAFE_INTEGER)),
  hash: z.string().check(z.regex(/^[0-9a-f]{64}$/, { error: "a hash is 64 lowercase hex digits" })),
});
/** A chain head to keep outside the database: `{ userId, seq, hash }` (the `JournalHead` model). @public */
export type JournalHead = z.infer<typeof JournalHead>;

/** `audit(userId, options)` (docs/operations.md, "Checkpoints and archival"). @public */
export const AuditOptions = z.strictObject({
  /**
   * "checkpoint" (default): replay from the account's latest checkpoint entry, trusting the state it
   * records; "genesis": from the first entry, checking every checkpoint's state on the way.
   */
  from: z.optional(z.enum(["checkpoint", "genesis"])),
  /**
   * A chain head kept outside the database (`journalHead`): the journal must still reach its `seq`
   * with its `hash` there. The replay starts at the latest checkpoint at or before it.
   */
  head: z.optional(JournalHead),
});
/** `audit(userId, options)` (docs/operations.md, "Checkpoints and archival"). @public */
export type AuditOptions = z.input<typeof AuditOptions>;

/** `checkpoint(userId, options)`. @public */
export const CheckpointOptions = z.strictObject({
  /** Write none unless at least this many entries follow the latest checkpoint (or the start). Default 1. */
  minEntries: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1_000_000_000))),
});
/** `checkpoint(userId, options)`. @public */
export type CheckpointOptions = z.input<typeof CheckpointOptions>;

/**
 * How many days back usage may be recorded with `occurredAt` (docs/usage.md, "Late usage"): 0 (no
 * late usage) to 366. Default 35, as Stripe's meters accept.
 */
export const LateUsageWindowDays = z.number().check(z.int(), z.minimum(0), z.maximum(366));
/** The default late-usage window, in days. */
export const DEFAULT_LATE_USAGE_WINDOW_DAYS = 35;
