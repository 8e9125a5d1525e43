import type { NotificationStore } from "./types-notifications.js";
import type {
  Account,
  EntryType,
  Grant,
  JournalEntry,
  LedgerEntry,
  LedgerEventType,
  Reservation,
} from "../models/index.js";
import type { Changes, LoadedState } from "../domain/state.js";
import type { UsageBucket, UsageCatchUp, UsageRollupRow, UsageScan } from "../domain/usage.js";
import type { SubscriptionStore } from "./types-subscriptions.js";
import type { ModuleStorePart } from "./module-part.js";
import type { ArchivePartitionsInput, ArchivePartitionsReport, EnsurePartitionsReport } from "./types-partitions.js";

/**
 * The storage contract. Adapters hold no business rules: every rule lives once in `src/core/domain`
 * and the services call it inside a unit of work. An adapter only has to
 *
 *  1. run `transaction(userId, fn)` atomically and isolated per account (and retry `fn` on a
 *     write conflict, so `fn` must have no side effects outside the transaction object);
 *  2. hand `fn` the account's state with `load()` and persist the computed changes with `save()`;
 *  3. answer the read and scan queries below with indexed lookups (never "load every user").
 *
 * `credit-management/testing` holds the contract suite that proves an adapter does this.
 * Objects returned by an adapter belong to the caller; objects passed to `save` are not mutated
 * afterwards by the library.
 * @beta
 */
export interface DbManager extends AccountStore, JournalStore, NotificationStore, SubscriptionStore {
  /** Short name for logs and errors ("memory", "mongodb", "postgres"). */
  readonly name: string;
  /** What the backend can do; the contract suite reads these flags. */
  readonly capabilities: DbCapabilities;
  /** Creates collections/tables and indexes. Idempotent. */
  init(): Promise<void>;
  /** Releases resources the adapter created (not a client/pool handed to it). Idempotent. */
  close(): Promise<void>;
  /**
   * Optional: one cheap round trip that proves the store answers, with the schema version it is
   * at (null for a store without one). `manager.health()` times it; without it, it reads an
   * account instead (docs/observability.md).
   */
  ping?(): Promise<{ schemaVersion: number | null }>;
  /**
   * Optional: counts across every account for health and metrics (docs/observability.md): active
   * holds, the outbox's pending and failed rows. Without it they are reported as unknown (null).
   */
  stats?(): Promise<StoreStats>;
  /**
   * Optional: binds a module's store part to this store, once per module id, and answers the
   * module's reads on it (`BoundStorePart.reads`); undefined when the part has no side for this
   * store's dialect (docs/writing-a-store.md, "A module's part"). Every bundled store has it.
   *
   * @beta
   */
  usePart?<Reads extends object>(part: ModuleStorePart<Reads>): Reads | undefined;
  /**
   * Optional: runs `fn` with this store as one snapshot shows it, at least the account `userId`:
   * every read of that account `fn` makes through the store it is given sees the same committed
   * state, whatever commits meanwhile (PostgreSQL: a read-only transaction at REPEATABLE READ; the
   * in-memory store: the account's units of work wait). `audit()` reads an account's journal, row,
   * grants, holds and usage rollup through it (docs/operations.md, "Auditing"); without it, the
   * audit reads them again while a unit of work on the account committed between its first and
   * last read (docs/writing-a-store.md, "Optional methods").
   */
  readSnapshot?<T>(userId: string, fn: (db: DbManager) => Promise<T>): Promise<T>;
}

/**
 * The accounts part of the storage contract: units of work and the reads of accounts, grants and
 * holds. `defineStore` (`credit-management/store`) can run the units of work itself from a
 * backend's `begin` (see `UnitOfWorkPart`).
 * @beta
 */
export interface AccountStore {
  /**
   * Runs `fn` as one atomic unit of work on `userId`'s account: no other unit of work on the same
   * account interleaves with it, and either everything `fn` saved is committed or nothing is.
   * On a write conflict the adapter retries `fn` from the start.
   */
  transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T>;
  /**
   * Optional: whether `entry`, the first journal entry of a unit of work on `userId` whose commit
   * was sent and whose answer was lost (`OutcomeUnknownError`), is committed. The answer must be
   * final: given only once no commit that could still write the entry is in progress (waited
   * for, or made to fail), from a state the store will not roll back (docs/concepts.md, "Certain
   * and uncertain errors"; docs/writing-a-store.md, "Optional methods"). Throws while it cannot
   * tell yet (the caller asks again for up to `outcomeWaitMs`); answers `null` when it can never
   * tell (the call then throws `OutcomeUnknownError` at once). Without it the unit-of-work runner
   * reads the entry in a unit of work on the account, which is as certain as that unit's wait for
   * a commit in progress.
   */
  entryCommitted?(userId: string, entry: JournalEntry): Promise<boolean | null>;

  /** The account; null when the user has none. */
  getAccount(userId: string): Promise<Account | null>;
  /**
   * Optional: the account and, when it has been given a scoped grant (`account.scoped`), its open
   * grants, read at one snapshot (in one round trip where the store can) — what
   * `getUserCreditsInfo` and `check` read (docs/teams-and-limits.md, "Scoped credits"). An account
   * never given a scoped grant should cost what `getAccount` costs. Without it the services read
   * `getAccount`, then a scoped account's state again in a unit of work (docs/writing-a-store.md,
   * "Optional methods").
   */
  getAccountCredits?(userId: string): Promise<AccountCredits>;
  /**
   * A grant by id. `userId`, when the caller knows the owner: the lookup is keyed by it (on a store
   * distributed by user, one shard instead of all; docs/scaling-out.md), and another user's grant
   * is not found.
   */
  getGrant(grantId: string, userId?: string): Promise<Grant | null>;
  /** A hold by id; `userId` as for `getGrant`. */
  getReservation(reservationId: string, userId?: string): Promise<Reservation | null>;
  /**
   * Optional: the user whose hold `reservationId` is, null when there is none — what a commit or
   * release by id reads before its unit of work, without reading the whole hold. Without it the
   * services read `getReservation`.
   */
  reservationOwner?(reservationId: string): Promise<string | null>;
  /** A user's grants, oldest first; closed and spent ones only when asked. */
  listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]>;
  /** A user's reservations, oldest first, optionally of one status. */
  listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]>;
  /**
   * Optional: the ids of accounts (users with at least one journal entry or account row), in
   * ascending code-unit order, after `after` (exclusive; null from the start), at most `limit`.
   * `credit-management audit --all` pages through the store with it.
   */
  listAccountIds?(after: string | null, limit: number): Promise<string[]>;
  /** Open grants (remaining > 0, not closed) with expiresAt <= asOf, by expiresAt then id. */
  findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]>;
  /** Active reservations with expiresAt <= asOf, by expiresAt then id. */
  findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]>;
}

/** What `AccountStore.getAccountCredits` answers. @beta */
export interface AccountCredits {
  /** null before the account's first entry. */
  account: Account | null;
  /** With `account.scoped`: its open grants (remaining > 0, not closed; any order). Else null. */
  grants: Grant[] | null;
}

/** The journal part: a user's entries by seq, and the system ledger. @beta */
export interface JournalStore {
  /** A page of a user's journal, by seq (see `JournalQuery`). */
  listJournal(userId: string, query: JournalQuery): Promise<JournalEntry[]>;
  /**
   * Optional: removes the user's journal entries with seq < `beforeSeq` — after `archiveJournal`
   * has written them to an archive, up to a checkpoint entry that stays (docs/operations.md,
   * "Checkpoints and archival"). Resolves to the entries removed. Stores without it cannot archive.
   */
  deleteJournalBefore?(userId: string, beforeSeq: number): Promise<number>;
  /**
   * Optional: usage summed by window, kind and the groups of `scan` (docs/usage.md), aggregated
   * by the store itself — the rules of `src/core/domain/usage.ts` (`usageParts`, `groupValue`),
   * entries with createdAt in [boundaries[0], boundaries[last]), windows by `windowIndex`, with
   * `scan.throughSeq` only the account's entries up to that seq — in `orderBuckets`' order, at
   * most `scan.limit + 1` buckets. Without it, `credits.getUsage()`
   * sums one account's pages of `listJournal` and refuses a fleet-wide query.
   */
  usage?(scan: UsageScan): Promise<UsageBucket[]>;
  /**
   * Optional: the daily usage rollup's rows of one account (PostgreSQL, docs/usage.md, "The daily
   * rollup"), oldest day first; null or absent when the store keeps none. `audit()` compares them
   * with the journal.
   */
  usageRollup?(userId: string): Promise<UsageRollupRow[] | null>;
  /**
   * Optional: the worker's usage round (docs/usage.md, "Keeping the rollup caught up"): adds to the
   * store's daily usage rollup the journal's entries past each account's cursor, at most about
   * `maxEntries` of them, at most `batchEntries` (default 20,000) a statement, with the same
   * compare-and-set on the cursor as a report's catch-up. Absent where the store keeps no rollup
   * (only PostgreSQL keeps one).
   */
  catchUpUsage?(options: { maxEntries: number; batchEntries?: number }): Promise<UsageCatchUp>;
  /** Appends an audit-ledger event. */
  insertLedgerEntry(entry: LedgerEntry): Promise<void>;
  /** System and error events, newest first. Transaction events are the journal. */
  listLedgerEntries(query: LedgerQuery): Promise<LedgerEntry[]>;
  /**
   * Optional: forgets the idempotency keys of at most `limit` journal entries created before
   * `before` whose key is still remembered, and answers how many it forgot (fewer than `limit`:
   * none is left). A forgotten key no longer answers a retry — a unit of work asking for it finds
   * nothing, and the key can be used again — but the entry keeps it (its hash covers it: the audit
   * still verifies). Keys the library made itself (`SYSTEM_KEY_PREFIX`, `cm:`: payments credited,
   * refunds, subscription periods) are never forgotten: they guard against redelivered webhooks and
   * re-run jobs, and there is one per payment or period, not per request. Run by
   * `expiration.forgetIdempotencyKeys` (docs/running-for-years.md); a store without it keeps every
   * key for ever.
   */
  forgetIdempotencyKeys?(before: Date, limit: number): Promise<number>;
  /**
   * Optional (PostgreSQL with `partitions`): detaches the time partitions of the journal and the
   * ledger table older than `input.before` and archives them (`credits.archivePartitions`,
   * docs/running-for-years.md, "Partitioning on PostgreSQL").
   */
  archivePartitions?(input: ArchivePartitionsInput): Promise<ArchivePartitionsReport>;
  /** Optional (PostgreSQL with `partitions`): creates the time partitions ahead (the worker's jobs round). */
  ensurePartitions?(now?: Date): Promise<EnsurePartitionsReport>;
}

/** What `DbManager.stats()` counts, across every account. @beta */
export interface StoreStats {
  /** Holds with status `active`. */
  activeHolds: number;
  /** Credits those holds earmark. */
  heldCredits: number;
  /** Outbox rows waiting for delivery. */
  outboxPending: number;
  /** Outbox rows that failed for good (until purged). */
  outboxFailed: number;
  /** `createdAt` of the oldest pending outbox row; null when none is pending. */
  oldestPendingAt: Date | null;
}

/** What a store supports: whether its units of work are transactions, and which optional parts it has. @beta */
export interface DbCapabilities {
  /** Several processes may share the store (false for in-memory). */
  readonly multiProcess: boolean;
  /**
   * The optional parts the store has (absent: all of them). A store built with `defineStore`
   * without a part answers its methods with `ConfigurationError`, and the contract suite skips
   * that part's tests: a new backend goes green part by part.
   */
  readonly parts?: Readonly<Record<OptionalPart, boolean>>;
}

/** The parts of the contract a store may leave out while it is being written. @beta */
export type OptionalPart = "subscriptions" | "outbox";

/** Position in a scan ordered by (expiresAt, id): resume strictly after it. @beta */
export interface ScanCursor {
  /** The expiry of the last row of the previous batch. */
  expiresAt: Date;
  /** The id of the last row of the previous batch. */
  id: string;
}

/** Which of an account's journal entries `listJournal` reads. @beta */
export interface JournalQuery {
  /** "desc": newest first, below `beforeSeq`; "asc": oldest first, above `afterSeq`. */
  order: "asc" | "desc";
  /** Entries with a sequence below it (with `desc`). */
  beforeSeq?: number;
  /** Entries with a sequence above it (with `asc`). */
  afterSeq?: number;
  /** The most entries read. */
  limit: number;
  /** Entries of these types only. */
  types?: readonly EntryType[];
  /**
   * Entries whose money moved at or after `from`: `occurredAt ?? createdAt >= from`
   * (docs/concepts.md, "Two times on every entry"; `occurredAt` is never after `createdAt`, so a
   * store may also bound `createdAt >= from`).
   */
  from?: Date;
  /** Entries whose money moved before `to`: `occurredAt ?? createdAt < to`. */
  to?: Date;
}

/** Which audit-ledger events `listLedgerEntries` reads. @beta */
export interface LedgerQuery {
  /** Events of this kind only. */
  eventType?: Exclude<LedgerEventType, "transaction">;
  /** Events of this account only. */
  userId?: string;
  /** createdAt < before (for paging). */
  before?: Date;
  /**
   * With `before`: the id of the last entry of the previous page (whose createdAt is `before`):
   * entries of that same instant that come after it in the store's order are included too, so
   * paging skips nothing. Each store orders by createdAt, newest first, then by its own stable
   * tie-break (insertion order within a process).
   */
  beforeId?: string;
  /** The most events read. */
  limit: number;
}

/** A journal entry with the entries that reverse it (`DbTransaction.getCharge`). @beta */
export interface ChargeRecord {
  /** The charge's journal entry. */
  entry: JournalEntry;
  /** The `reverse` entries whose `reverses` is `entry.id`, in seq order. */
  reversals: JournalEntry[];
}

/** What a unit of work asks to read along with the locked account. @beta */
export interface LoadRequest {
  /** Also return the journal entry that carries this idempotency key, if any. */
  idempotencyKey?: string;
}

/** `Changes` and `LoadedState` are the domain's (src/core/domain/state.ts): re-exported for adapters. */
export type { Changes, LoadedState } from "../domain/state.js";

/** One unit of work on an account, as a store runs it: the state it loaded, and the changes to write. @beta */
export interface DbTransaction {
  /** The account of the unit of work. */
  readonly userId: string;
  /**
   * Reads the account (locking it where the backend locks) with its open grants and active holds.
   * A store that has the state at hand (in memory) may return it directly instead of a promise:
   * the runner awaits only what is a promise.
   */
  load(request?: LoadRequest): Promise<LoadedState> | LoadedState;
  /** Reads grants of this account by id, whatever their state. */
  getGrants(grantIds: readonly string[]): Promise<Grant[]>;
  /** Reads a reservation of this account by id, whatever its state. */
  getReservation(reservationId: string): Promise<Reservation | null>;
  /**
   * Reads the journal entry `entryId` of this account with the `reverse` entries that give it back
   * (those whose `reverses` is `entryId`, in seq order), as of this unit of work: what
   * `reverseCharge` checks a new reversal against (docs/concepts.md, "Giving a charge back"). Null
   * when the account has no entry of that id (another account's entry is not found). A store whose
   * units of work are isolated per account answers from the same snapshot as `load`, or from a later
   * one its save still guards (a reversal saved meanwhile moves the account's seq). Optional: without
   * it, `reverseCharge` and `getReversals` are a `ConfigurationError` (every bundled store has it).
   */
  getCharge?(entryId: string): Promise<ChargeRecord | null>;
  /**
   * Persists the changes. Called at most once per attempt. Throws `ConflictError` when the
   * account moved since `load` (the adapter then retries the unit of work), or
   * `IdempotencyConflictError`-worthy unique violations as `ConflictError` too.
   */
  save(changes: Changes): Promise<void> | void;
  /**
   * Optional: the reads of the module `module` inside this unit of work (its bound part's
   * `transaction`), or undefined when the store has no part of that module.
   *
   * @beta
   */
  part?(module: string): object | undefined;
}
