import type { Account, CostBasis, Grant, GrantScope, GrantSource, JournalEntry, Reservation } from "../models/index.js";

/**
 * The fields of the journal entries a unit of work records (`ModuleContext.runUnitOfWork`): the
 * caller's idempotency key and its fingerprint, correlation id, description and metadata, and who
 * spends on what. Each operation of `UnitWork` takes one.
 * @beta
 */
export interface EntryMeta {
  /** The entry's description. */
  description?: string | undefined;
  /** The call's idempotency key: a repeat is answered by the unit of work's `replay`. */
  idempotencyKey?: string | undefined;
  /** What the key was first used with: the same key with another fingerprint is an `IdempotencyConflictError`. */
  fingerprint?: string | undefined;
  /** Ties the entry to the caller's request. */
  correlationId?: string | undefined;
  /** The entry's metadata (covered by its hash). */
  metadata?: Record<string, unknown> | undefined;
  /** Who spends (docs/teams-and-limits.md): recorded on the entry; limits for them apply. */
  spender?: string | undefined;
  /** What is spent on (docs/teams-and-limits.md): recorded on the entry; limits for it apply. */
  feature?: string | undefined;
  /** When the usage happened, where that is not now (a late entry; a reversal: its charge's time). */
  occurredAt?: Date | undefined;
  /** A `reverse` entry's charge (docs/corrections.md). */
  reverses?: string | undefined;
  /**
   * What a take-back entry takes credits back for (`JournalEntry.takeBack`): set by the module that
   * takes them back (payments), never from a caller's options.
   */
  takeBack?: JournalEntry["takeBack"] | undefined;
  /**
   * The payment the entry adds credits for or takes them back from (`JournalEntry.paymentId`): set
   * by the payments module, never from a caller's options or metadata.
   */
  paymentId?: string | undefined;
  /**
   * The unit a deduction, hold or addition acts in (docs/units.md); undefined, null or the default
   * unit's name: the default unit. A commit, release, reversal or void acts in its hold's, charge's
   * or grant's unit whatever this says.
   */
  unit?: string | null | undefined;
}

/**
 * The grant an addition (`UnitWork.add`) makes: when it expires, its burn-down priority, where it
 * came from (a grant source the core or a module registered) and what it is for.
 * @beta
 */
export interface NewGrant {
  /** When its credits expire; null: never. */
  expiresAt: Date | null;
  /** Burn-down order (docs/concepts.md): a lower number is spent first, before the expiry is read. */
  priority: number;
  /** Where the credits came from (`ModuleRegistry.grantSources`). */
  source: GrantSource;
  /** The source's own reference (a promo code, a payment id); null: none. */
  sourceRef: string | null;
  /** The grant's description. */
  description: string | null;
  /** The grant's metadata. */
  metadata: Record<string, unknown> | null;
  /** The spends it may pay for (docs/teams-and-limits.md, "Scoped credits"); null or absent: any. */
  scope?: GrantScope | null;
  /** What each credit was sold for (docs/revenue.md); null or absent: none (free, or unknown). */
  costBasis?: CostBasis | null;
  /** When it starts (docs/units.md, "Grants that start later"); null, absent, now or past: at once. */
  effectiveAt?: Date | null;
}

/**
 * One account inside a unit of work (`ModuleContext.runUnitOfWork`): the account as this unit of
 * work leaves it, and the core's operations on it (docs/concepts.md). Each operation checks the
 * rules the public method of the same name checks — available credits, spend limits, scopes, the
 * overdraft limit — and records its journal entries; nothing is written until the unit of work
 * saves, and nothing at all when `body` throws. Amounts are in credits of the unit the operation
 * acts in (docs/units.md). Only the core makes one.
 * @beta
 */
export interface UnitWork {
  /** The account's id. */
  readonly userId: string;
  /** The unit of work's time (its clock's, read once). */
  readonly now: Date;
  /** True when the store held no account: saving creates it. */
  readonly isNew: boolean;
  /** True once an operation recorded an entry or changed a grant or hold. */
  readonly changed: boolean;
  /**
   * The account as this unit of work leaves it: a copy of the loaded one. A module changes only
   * its own column on it (`AccountColumn.set`); the core keeps the rest.
   */
  readonly account: Account;
  /** The account's open grants (remaining above 0, not closed), as this unit of work leaves them. */
  openGrants(): Grant[];
  /** A grant this unit of work loaded or made; undefined when it is not part of the work (see `include`). */
  getGrant(id: string): Grant | undefined;
  /** A hold this unit of work loaded or made; undefined when it is not part of the work. */
  getHold(id: string): Reservation | undefined;
  /** Makes grants read separately (`DbTransaction.getGrants`: closed or fully held ones) part of the work. */
  include(grants: readonly Grant[]): void;
  /** Makes `unit` (null or undefined: the default unit) the one `availableFor` reads (docs/units.md). */
  useUnit(unit: string | null | undefined): void;
  /** Credits a spend may use now: available credits less scoped grants outside its scope. */
  availableFor(spend: { spender: string | null; feature: string | null; unit?: string | null | undefined }): number;
  /** Adds `amount` credits as one grant (an `add` entry; a later grant: docs/units.md). */
  add(amount: number, grant: NewGrant, meta: EntryMeta): JournalEntry;
  /**
   * Deducts `amount` (a `deduct` entry): refused (`InsufficientCreditsError`) past what is
   * available, or with `allowDebt` past the overdraft limit (null: unlimited). `limits`: refuse a
   * spend past a spend limit (`enforce`, the default without `allowDebt`), count it all the same
   * (`force`, the default with it), or leave the limits (`skip`).
   */
  deduct(
    amount: number,
    meta: EntryMeta,
    options: { allowDebt: boolean; overdraftLimit: number | null; limits?: "enforce" | "force" | "skip" },
  ): JournalEntry;
  /**
   * Charges usage already delivered: as much of `requested` as the overdraft limit allows, the rest
   * recorded as the entry's `shortfall` (an entry of 0 credits when the limit allows nothing).
   */
  deductUpToLimit(requested: number, meta: EntryMeta, overdraftLimit: number | null): JournalEntry;
  /**
   * Places a hold of `requested` credits for `ttlSeconds` (a `reserve` entry); with `minimum`, of
   * as much as there is room for, refused below `minimum`.
   */
  reserve(
    requested: number,
    ttlSeconds: number,
    reason: string | null,
    meta: EntryMeta,
    minimum?: number,
  ): { reservation: Reservation; entry: JournalEntry };
  /**
   * Captures `requested` on an active `hold` of this account (`getHold`): the hold's credits always,
   * beyond them what the overdraft limit allows, the rest recorded as the entry's `shortfall`.
   */
  commitUpToLimit(hold: Reservation, requested: number, meta: EntryMeta, overdraftLimit: number | null): JournalEntry;
  /**
   * Returns an active hold's credits to their grants (`released`, or `expired`). Resolves to the
   * entry and the credits that came back to grants already expired (and so expired with them).
   */
  releaseHold(
    hold: Reservation,
    status: "released" | "expired",
    meta: EntryMeta,
  ): { entry: JournalEntry; expired: number };
  /** Voids what is left of a grant (a refund, a dispute; a `void` entry). Its held credits are voided when they come back. */
  voidGrant(grant: Grant, meta: EntryMeta): JournalEntry;
}
