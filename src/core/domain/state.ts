import type { Account, Grant, JournalEntry, Notification, Reservation } from "../models/index.js";

/**
 * What a unit of work reads and what it writes, in the domain's terms: an `AccountWork` is built
 * from a `LoadedState` and yields `Changes`. The storage contract (`DbTransaction.load` / `save`,
 * re-exported by `src/core/db/types.ts` and `credit-management/store`) is written in these types, so
 * the rules in `src/core/domain` never import from the storage layer (docs/writing-a-store.md).
 */

/** The locked account's state. @beta */
export interface LoadedState {
  /** null before the account's first entry. */
  account: Account | null;
  /**
   * Open grants: remaining > 0 and not closed (any order, unless `grantsInOrder`). The store may
   * hand its own list: the unit of work only reads it, and is done with it before `save`.
   */
  grants: readonly Grant[];
  /**
   * True when `grants` are in burn-down order (`compareGrants`): a deduction then reads only the
   * grants it draws from, so its cost does not grow with the account's open grants.
   */
  grantsInOrder?: boolean;
  /** Active reservations (any order). */
  reservations: readonly Reservation[];
  /** The entry carrying the requested idempotency key, or null. */
  idempotent: JournalEntry | null;
}

/**
 * One module's rows saved with a unit of work, each list under the module's own name (the billing
 * module's `promoClaims` and `paymentUpdates`): the store's part of the module writes them
 * (docs/writing-a-store.md, "A module's part").
 *
 * @beta
 */
export type ModuleRowLists = { readonly [list: string]: readonly unknown[] | undefined };

/**
 * Rows modules save with a unit of work, atomically with the account's changes (ARCHITECTURE.md,
 * "Seams"), keyed by module id: the unit of work hands them to the store's `save` on
 * `Changes.rows`, and reads none of them.
 *
 * @beta
 */
export type ModuleRows = { readonly [module: string]: ModuleRowLists | undefined };

/** Everything one unit of work changes, written at once by `save`. @beta */
export interface Changes {
  /** The account after the change. */
  account: Account;
  /**
   * The account's seq when it was loaded; null when it did not exist (insert). Not a version on its
   * own: a change to the account alone (an auto top-up settled, a threshold set) keeps it, so an
   * adapter that does not hold the account locked from load to save guards on the row as loaded
   * (a version column, xmin, every column), not on this alone (docs/writing-a-store.md).
   */
  previousSeq: number | null;
  /** The lists below are only read. */
  insertGrants: readonly Grant[];
  /** Grants whose state changed. */
  updateGrants: readonly Grant[];
  /** Holds placed. */
  insertReservations: readonly Reservation[];
  /** Holds whose state changed. */
  updateReservations: readonly Reservation[];
  /** New journal entries, in seq order. Unique (userId, seq) and (userId, idempotencyKey). */
  entries: readonly JournalEntry[];
  /** Outbox rows caused by this change, committed with it (ids unique; no dedupeKey clash expected). */
  notifications?: readonly Notification[];
  /** Rows of modules, by module id, saved in the same transaction by each module's store part. */
  rows?: ModuleRows;
}
