/**
 * What the core writes and answers, as schemas for its readers: the journal's entries, the audit
 * ledger's events and `getUserCreditsInfo`'s answer (the HTTP API's documents, the stores' table
 * definitions, consumers of `credit-management/models`). The core builds these values and never
 * parses them, so they live apart from the schemas it validates with, and stay out of a bundle of
 * `credit-management/core` (docs/benchmarks.md, "Bundle size").
 */
import * as z from "zod/mini";
import { GrantScope, SpenderId } from "./limits.js";
import { CostBasis } from "./cost-basis.js";
import {
  Amount,
  EntityId,
  FeatureName,
  IdempotencyKey,
  Metadata,
  NonNegativeAmount,
  SignedAmount,
  UnitName,
  UserId,
} from "./common.js";
import { EntryType, GrantPortion, GrantSource, JournalKeyId } from "./entities.js";

/**
 * What a take-back entry takes credits back for (docs/promos-and-payments.md, "Refunds and
 * disputes"): a refunded payment (`refund`) or a lost dispute (`clawback`). Set only by the library
 * (the payments module, when it takes a payment's credits back), never from a caller's input.
 * @public
 */
export const TakeBack = z.enum(["refund", "clawback"]);
/** What a take-back entry takes credits back for: `"refund"` or `"clawback"` (the `TakeBack` model). @public */
export type TakeBack = z.infer<typeof TakeBack>;

/** A journal entry's hash version (`JournalEntry.hashVersion`): 1 or 2. */
export const HashVersion = z.number().check(z.int(), z.minimum(1), z.maximum(2));

/**
 * One change of balance or reserved (the Python `credit_management` package's `Transaction`, docs/migrating-from-python.md). Append-only and hash-chained:
 * `hash = sha256(prevHash ‖ canonical entry)`.
 * @public
 */
export const JournalEntry = z.object({
  id: EntityId,
  userId: UserId,
  seq: NonNegativeAmount,
  type: EntryType,
  amount: NonNegativeAmount,
  balanceAfter: SignedAmount,
  reservedAfter: NonNegativeAmount,
  debtAfter: NonNegativeAmount,
  /** Per-grant amounts this entry drew, created, held, returned or removed (docs/concepts.md). */
  grants: z.array(GrantPortion),
  reservationId: z.nullable(EntityId),
  idempotencyKey: z.nullable(IdempotencyKey),
  /** Digest of the request that carried the idempotency key (detects reuse with other arguments). */
  fingerprint: z.nullable(z.string()),
  correlationId: z.nullable(z.string()),
  description: z.nullable(z.string()),
  metadata: z.nullable(Metadata),
  /**
   * Who spent and on what (docs/teams-and-limits.md); null or absent when the spend named none.
   * Covered by the hash when set.
   */
  spender: z.optional(z.nullable(SpenderId)),
  feature: z.optional(z.nullable(FeatureName)),
  /**
   * An `add` entry's cost basis (docs/revenue.md): what each credit it added was
   * sold for, the debt it paid included. Null or absent: none. Covered by the hash when set.
   */
  costBasis: z.optional(z.nullable(CostBasis)),
  /**
   * An `add` entry's source: the `source` of the grant it adds, recorded on the entry too because an
   * addition that only pays debt creates no grant (docs/revenue.md, "The report"). Null or absent on
   * every other entry. Covered by the hash when set.
   */
  source: z.optional(z.nullable(GrantSource)),
  /**
   * A `reverse` entry's charge: the id of the entry it gives back (docs/concepts.md). Null or
   * absent on every other entry. Covered by the hash when set.
   */
  reverses: z.optional(z.nullable(EntityId)),
  /**
   * When the entry's money moved, where that is not `createdAt` (docs/concepts.md, "Two times on
   * every entry"): a late usage entry's time; on a `reverse` entry its charge's (the charge's
   * `occurredAt`, else its `createdAt`); on what the library settles late for time, its due instant
   * (an expiry's `expiresAt`, a start's `effectiveAt`, a lapsed hold's `expiresAt`, a renewal's
   * period start). Usage, spend limits and alerts place the entry there. Null or absent: at
   * `createdAt`. Covered by the hash when set.
   */
  occurredAt: z.optional(z.nullable(z.date())),
  createdAt: z.date(),
  prevHash: z.nullable(z.string()),
  hash: z.string(),
  /**
   * A take-back's reason (`TakeBack`): set by the library on the deductions and voids that take a
   * refunded payment's or a lost dispute's credits back; null or absent on every other entry, whatever
   * its metadata or description say. Usage reports, revenue and `reverseCharge` read it. Covered by
   * the hash when set (entries of hash version 2).
   */
  takeBack: z.optional(z.nullable(TakeBack)),
  /**
   * The payment an entry adds credits for or takes them back from (docs/revenue.md, "Payments"): set
   * by the payments module on the addition that credits a paid payment and on the take-backs of its
   * refunds and lost disputes; null or absent on every other entry, whatever its metadata says.
   * Revenue ties a payment's refunds to its grant by it. Covered by the hash when set (entries of
   * hash version 2).
   */
  paymentId: z.optional(z.nullable(EntityId)),
  /**
   * Credits of usage served and not paid (docs/metering.md, "Served and not paid"): set by the
   * library on a `deduct` or `commit_reserved` that charged usage already delivered for less than
   * it cost because the overdraft limit allowed no more (possibly an entry of 0 credits); null or
   * absent on every other entry, whatever its metadata says. Usage reports (their `shortfall`) and
   * revenue (`unbilledCredits`) read it. Covered by the hash when set (entries of hash version 2).
   */
  shortfall: z.optional(z.nullable(Amount)),
  /**
   * What the hash covers (docs/concepts.md, "The journal"): 2 on every entry written since schema
   * version 2; null or absent (version 1) on the entries written before, whose hash leaves out the
   * fields version 2 added.
   */
  hashVersion: z.optional(z.nullable(HashVersion)),
  /**
   * The key whose HMAC-SHA256 the entry's hash is (docs/concepts.md, "A keyed chain"); null or
   * absent: plain SHA-256. Covered by the hash when set.
   */
  keyId: z.optional(z.nullable(JournalKeyId)),
  /**
   * An `add` entry's scope: the `scope` of the grant it adds (docs/teams-and-limits.md, "Scoped
   * credits"); null or absent on every other entry. Covered by the hash when set (hash version 2),
   * and `audit()` checks the stored grant's scope against it.
   */
  scope: z.optional(z.nullable(GrantScope)),
  /**
   * An `add` entry's start, for a grant added to start later (docs/units.md, "Grants that start
   * later"): its credits join the balance at the `start` entry written then. Null or absent on every
   * other entry. Covered by the hash when set (hash version 2).
   */
  effectiveAt: z.optional(z.nullable(z.date())),
  /**
   * The unit the entry acts in (docs/units.md): its amount, portions and `balanceAfter`,
   * `reservedAfter` and `debtAfter` are in it. Null or absent: the default unit. Covered by the hash
   * when set (hash version 2).
   */
  unit: z.optional(z.nullable(UnitName)),
});
/**
 * One change of balance or reserved (the Python `credit_management` package's `Transaction`, docs/migrating-from-python.md). Append-only and hash-chained:
 * `hash = sha256(prevHash ‖ canonical entry)`.
 * @public
 */
export type JournalEntry = z.infer<typeof JournalEntry>;

/** The kind of an audit-ledger event: a transaction (a journal entry), an error or a system event. @public */
export const LedgerEventType = z.enum(["transaction", "error", "system"]);
/** The kind of an audit-ledger event: a transaction (a journal entry), an error or a system event. @public */
export type LedgerEventType = z.infer<typeof LedgerEventType>;

/** An audit-ledger event. Transaction events are the journal entries themselves (docs/concepts.md). @public */
export const LedgerEntry = z.object({
  id: EntityId,
  eventType: LedgerEventType,
  userId: z.nullable(UserId),
  correlationId: z.nullable(z.string()),
  message: z.string(),
  details: z.record(z.string(), z.unknown()),
  createdAt: z.date(),
});
/** An audit-ledger event. Transaction events are the journal entries themselves (docs/concepts.md). @public */
export type LedgerEntry = z.infer<typeof LedgerEntry>;

/** What `getUserCreditsInfo` returns. @public */
export const CreditsInfo = z.object({
  userId: UserId,
  /**
   * The unit the figures below are in (docs/units.md), when the call named one other than the
   * default unit (or its feature's rule did); absent: the default unit.
   */
  unit: z.optional(UnitName),
  balance: SignedAmount,
  reserved: NonNegativeAmount,
  /**
   * Credits the spend asked about may use now (without `spender` and `feature`: a spend naming
   * neither, which only unscoped grants pay): its grants' unheld credits less the debt.
   */
  available: SignedAmount,
  debt: NonNegativeAmount,
  /**
   * The unheld credits of the account's scoped grants, one total per scope, sorted by scope
   * (docs/teams-and-limits.md, "Scoped credits"); empty when the account has none. `balance`
   * counts them too.
   */
  scoped: z.optional(
    z.array(
      z.object({
        features: z.nullable(z.array(FeatureName)),
        spenders: z.nullable(z.array(SpenderId)),
        remaining: NonNegativeAmount,
      }),
    ),
  ),
  /**
   * Every unit the account holds but the default one, by name, with its figures (docs/units.md);
   * absent when it holds only the default unit. Nothing adds two units together.
   */
  units: z.optional(
    z.record(
      UnitName,
      z.object({
        balance: SignedAmount,
        reserved: NonNegativeAmount,
        available: SignedAmount,
        debt: NonNegativeAmount,
      }),
    ),
  ),
});
/** What `getUserCreditsInfo` returns. @public */
export type CreditsInfo = z.infer<typeof CreditsInfo>;
