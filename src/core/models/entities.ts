import * as z from "zod/mini";
import { AlertState } from "./notifications.js";
import { GrantScope, SpendLimit, SpenderId } from "./limits.js";
import { CostBasis } from "./cost-basis.js";
import {
  EntityId,
  FeatureName,
  Metadata,
  NonNegativeAmount,
  Priority,
  SignedAmount,
  UnitName,
  UserId,
} from "./common.js";

/** A grant source of the core's own. @public */
export type CoreGrantSource = "manual" | "subscription" | "rollover" | "trial" | "refund" | "adjustment" | "other";
/** The core's grant sources, each of `CoreGrantSource` (the package's own list: not exported by an entry). */
export const CORE_GRANT_SOURCES = [
  "manual",
  "subscription",
  "rollover",
  "trial",
  "refund",
  "adjustment",
  "other",
] as const satisfies readonly CoreGrantSource[];
// Every `CoreGrantSource` is in the list: does not compile when one is missing.
type _Listed<T extends (typeof CORE_GRANT_SOURCES)[number]> = T;
type _EveryCoreGrantSourceListed = _Listed<CoreGrantSource>;
/**
 * Where a grant's credits came from: one of the core's sources, or one a module registers
 * (`grantSources` of its `CreditModule`, docs/modules.md). The model checks the shape; a manager
 * refuses a source no module of it registers (`ValidationError`).
 * @public
 */
export const GrantSource = z.string().check(z.regex(/^[a-z][a-z0-9_]{0,63}$/));
/** One of the core's grant sources, or one a module registers. @public */
export type GrantSource = CoreGrantSource | (string & {});

/** Journal entry types: one per kind of change to balance or reserved. @public */
export const EntryType = z.enum([
  "add",
  "deduct",
  "expire",
  "void",
  "reserve",
  "commit_reserved",
  "release_reserved",
  /** Changes nothing: records the account's state so an audit can start there (docs/operations.md). */
  "checkpoint",
  /** Changes no credits: the account's spend limits were set; its metadata lists them (docs/teams-and-limits.md). */
  "limits",
  /**
   * Gives back part or all of a charge (`reverses` names it): its credits return to the grants the
   * charge drew from, in the charge's proportions (docs/concepts.md, "The journal").
   */
  "reverse",
  /**
   * A grant added to start later reached its start (docs/units.md, "Grants that start later"):
   * its credits join the balance, paying debt first (`kind: "debt_paid"` portions).
   */
  "start",
]);
/** Journal entry types: one per kind of change to balance or reserved. @public */
export type EntryType = z.infer<typeof EntryType>;

/**
 * The id of a key of the journal's hash chain (docs/concepts.md, "A keyed chain"): letters, digits,
 * `.`, `_` and `-`, 1 to 64 characters. Stored in each entry the key signs; the key is not.
 */
export const JournalKeyId = z
  .string()
  .check(z.regex(/^[A-Za-z0-9._-]{1,64}$/, { error: "a key id is 1 to 64 letters, digits, '.', '_' or '-'" }));

/**
 * One unit's figures on an account (docs/units.md): as `balance`, `reserved` and `debt` are the
 * default unit's.
 *
 * @beta
 */
export const UnitFigures = z.object({
  balance: SignedAmount,
  reserved: NonNegativeAmount,
  debt: NonNegativeAmount,
});
/**
 * One unit's figures on an account: balance, reserved and debt (the `UnitFigures` model).
 *
 * @beta
 */
export type UnitFigures = z.infer<typeof UnitFigures>;

/** One account per user, created on first use. `available = balance - reserved`. @public */
export const Account = z.object({
  userId: UserId,
  /** Posted credits: Σ grant.remaining + Σ active holds − debt. */
  balance: SignedAmount,
  /** Sum of active holds. */
  reserved: NonNegativeAmount,
  /** Overdraft not covered by any grant; paid first by the next addition. */
  debt: NonNegativeAmount,
  /** Number of journal entries; increases by one with each. */
  seq: NonNegativeAmount,
  /** Hash of the latest journal entry (null before the first). */
  lastHash: z.nullable(z.string()),
  /**
   * The key id of the latest journal entry (its `keyId`, docs/concepts.md, "A keyed chain"); null
   * or absent: that entry is not keyed, or there is none. A manager without journal keys refuses to
   * write after a keyed entry, so that an account's chain never goes back to plain hashes.
   */
  lastKeyId: z.optional(z.nullable(JournalKeyId)),
  /** A lower bound of the soonest grant or hold expiry, or null: lets reads skip settling. */
  nextExpiryAt: z.nullable(z.date()),
  /** Low-credits alert state (null until the first change this version made). See docs/notifications.md. */
  alert: z.nullable(AlertState),
  /**
   * Spend limits and what each counted in its window (docs/teams-and-limits.md); null or absent
   * when the account has none. Kept with the account so a spend checks them without another read.
   */
  limits: z.optional(z.nullable(z.array(SpendLimit))),
  /**
   * True once the account has been given a scoped grant (docs/teams-and-limits.md, "Scoped
   * credits"): its spends then sort its open grants by scope. Null or absent: never, and a
   * spend takes its grants in plain burn-down order without reading their scopes.
   */
  scoped: z.optional(z.nullable(z.boolean())),
  /**
   * The figures of every unit but the default one, by unit name (docs/units.md); null or absent:
   * the account holds only the default unit, whose figures are `balance`, `reserved` and `debt`.
   */
  units: z.optional(z.nullable(z.record(UnitName, UnitFigures))),
  createdAt: z.date(),
  updatedAt: z.date(),
});
/** One account per user, created on first use. `available = balance - reserved`. @public */
export type Account = z.infer<typeof Account>;

/** A lot of credits. Every addition creates one; draws follow the burn-down order. @public */
export const Grant = z.object({
  id: EntityId,
  userId: UserId,
  /** Credits the grant was created with. */
  amount: NonNegativeAmount,
  /** Credits neither spent, held, expired nor voided. */
  remaining: NonNegativeAmount,
  expiresAt: z.nullable(z.date()),
  priority: Priority,
  source: GrantSource,
  sourceRef: z.nullable(z.string().check(z.maxLength(255))),
  description: z.nullable(z.string()),
  metadata: z.nullable(Metadata),
  createdAt: z.date(),
  /**
   * Credits this grant lost to expiry: what was unspent when it expired, plus credits returned to
   * it afterwards (a hold's; a reversal's, which may give back debt its addition paid, so this can
   * pass `amount`). 0 while open. Rollover reads it, so it does not matter who expired the grant.
   */
  expiredAmount: NonNegativeAmount,
  /** Set when the grant expired or was voided: credits returned to it later go at once. */
  closedAt: z.nullable(z.date()),
  closedReason: z.nullable(z.enum(["expired", "voided"])),
  /**
   * The spends this grant may pay for (docs/teams-and-limits.md, "Scoped credits"); null or
   * absent: any spend. Never changes.
   */
  scope: z.optional(z.nullable(GrantScope)),
  /**
   * What each credit was sold for (docs/revenue.md); null or absent: unknown or free (no
   * revenue). Never changes; the `add` entry that created the grant carries the same.
   */
  costBasis: z.optional(z.nullable(CostBasis)),
  /**
   * When a grant added to start later starts (docs/units.md, "Grants that start later"); null or
   * absent: when it was created. Its age in the burn-down order counts from it. Never changes.
   */
  effectiveAt: z.optional(z.nullable(z.date())),
  /**
   * True while the grant has not started: its credits are in no balance and nothing draws them.
   * Null, false or absent: started.
   */
  upcoming: z.optional(z.nullable(z.boolean())),
  /** The unit of its credits (docs/units.md); null or absent: the default unit. Never changes. */
  unit: z.optional(z.nullable(UnitName)),
  /**
   * Which allowance of its scope (docs/customer-state.md, "What was granted") counted it when it
   * was drawn to its last credit (spent, or held): the `allowance` its scope's mark named then. Kept
   * after it closes; cleared when credits come back to it while it is open. Null or absent: not
   * drawn out, or drawn out where none was kept (in a store version 1 wrote), counted by no allowance.
   */
  drawnOutIn: z.optional(z.nullable(NonNegativeAmount)),
});
/** A lot of credits. Every addition creates one; draws follow the burn-down order. @public */
export type Grant = z.infer<typeof Grant>;

/**
 * What a portion of a `commit_reserved` or `reverse` entry did with its credits (docs/concepts.md,
 * "The journal" and "Giving a charge back"): absent, they were spent (or, on a reversal, made a
 * grant); `returned`, they went back to their grant; `debt_paid`, they paid debt; `debt_returned`
 * (a reversal only), they had paid the debt the charge made and went back to the grant that paid
 * it. Only a partial capture and a reversal write it; every other portion has none.
 * @public
 */
export const PortionKind = z.enum(["returned", "debt_paid", "debt_returned"]);
/**
 * What a portion of a `commit_reserved` or `reverse` entry did with its credits (docs/concepts.md,
 * "The journal" and "Giving a charge back"): absent, they were spent (or, on a reversal, made a
 * grant); `returned`, they went back to their grant; `debt_paid`, they paid debt; `debt_returned`
 * (a reversal only), they had paid the debt the charge made and went back to the grant that paid
 * it. Only a partial capture and a reversal write it; every other portion has none.
 * @public
 */
export type PortionKind = z.infer<typeof PortionKind>;

/** Part of an amount drawn from, or returned to, one grant. @public */
export const GrantPortion = z.object({ grantId: EntityId, amount: NonNegativeAmount, kind: z.optional(PortionKind) });
/** Part of an amount drawn from, or returned to, one grant. @public */
export type GrantPortion = z.infer<typeof GrantPortion>;

/** Where a hold is: active, or settled by a commit, a release or its expiry. @public */
export const ReservationStatus = z.enum(["active", "committed", "released", "expired"]);
/** Where a hold is: active, or settled by a commit, a release or its expiry. @public */
export type ReservationStatus = z.infer<typeof ReservationStatus>;

/** A hold: credits earmarked from grants until committed, released or expired. @public */
export const Reservation = z.object({
  id: EntityId,
  userId: UserId,
  amount: NonNegativeAmount,
  status: ReservationStatus,
  /** The grants the held credits came from, in burn-down order. */
  allocations: z.array(GrantPortion),
  expiresAt: z.date(),
  reason: z.nullable(z.string()),
  metadata: z.nullable(Metadata),
  createdAt: z.date(),
  settledAt: z.nullable(z.date()),
  /** Credits captured by the commit (null until committed). */
  committedAmount: z.nullable(NonNegativeAmount),
  /** Who placed the hold and for what (docs/teams-and-limits.md); its commit is recorded under them. Absent: not named. */
  spender: z.optional(z.nullable(SpenderId)),
  feature: z.optional(z.nullable(FeatureName)),
  /** The unit it holds (docs/units.md); null or absent: the default unit. Its commit captures in it. */
  unit: z.optional(z.nullable(UnitName)),
});
/** A hold: credits earmarked from grants until committed, released or expired. @public */
export type Reservation = z.infer<typeof Reservation>;
