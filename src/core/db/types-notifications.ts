import type { Notification, NotificationType } from "../models/index.js";

/**
 * The outbox part of the storage contract (`DbManager` extends it).
 *
 * Rows are written two ways: inside a unit of work, as `Changes.notifications` (committed or
 * rolled back with the change that caused them), or on their own with `insertNotifications` (for
 * events that change no account: reminders, refusals, subscription events). Dispatchers then
 * `claimNotifications` and `completeNotification` them.
 * @beta
 */
export interface NotificationStore {
  /**
   * Stores rows outside a unit of work. A row whose `(userId, dedupeKey)` is already stored is
   * skipped (not an error). Resolves to the rows stored.
   */
  insertNotifications(rows: readonly Notification[]): Promise<number>;
  /**
   * Atomically claims up to `limit` pending rows with `nextAttemptAt <= now` that are not claimed
   * (or whose claim lapsed), **only the oldest pending row (by id) of each user**, so a user's
   * events are delivered one after another in id order. Claimed rows get `claimedUntil = now +
   * leaseMs` and `claimToken = token`; two dispatchers never hold the same row at once.
   * With `types`: only rows of those types, each due row whatever older rows of its user wait
   * (`NotificationService.handlePending`, the worker's auto top-ups: docs/promos-and-payments.md).
   */
  claimNotifications(query: ClaimQuery): Promise<Notification[]>;
  /**
   * Settles a claimed row: `sent`/`failed`, or back to `pending` with a later `nextAttemptAt`.
   * Guarded by `token`: resolves to false (and changes nothing) when the claim was lost.
   * `userId`, the row's owner when the caller has the row: the update is keyed by it too
   * (docs/scaling-out.md).
   */
  completeNotification(id: string, token: string, update: NotificationUpdate, userId?: string): Promise<boolean>;
  /**
   * Deletes up to `limit` settled rows (`sent` or `failed`) with `settledAt < before`, oldest
   * first (indexed). Resolves to the rows deleted. A deleted row's dedupe key is free again.
   */
  purgeNotifications(before: Date, limit: number): Promise<number>;
  /** A user's rows by id (oldest first), optionally of one status. */
  listNotifications(userId: string, query: { status?: Notification["status"]; limit: number }): Promise<Notification[]>;
  /**
   * Optional: the outbox across users, a page at a time — pending rows by `(nextAttemptAt, id)`,
   * oldest first, or failed rows by `(settledAt, id)`, newest first — strictly after `after`, at
   * most `limit`. Read through the indexes the dispatcher and the purge use (pending rows that are
   * due; settled rows by settlement time). The console's outbox page lists with it (docs/console.md).
   */
  listOutbox?(query: OutboxQuery): Promise<Notification[]>;
}

/** A page of `listOutbox`: `after` is the last row of the previous page (its `nextAttemptAt` or `settledAt`, and id). @beta */
export interface OutboxQuery {
  /** Rows of this status only. */
  status: "pending" | "failed";
  /** The most rows read. */
  limit: number;
  /** Rows after this cursor. */
  after?: { at: Date; id: string };
}

/** Which outbox rows `claimNotifications` claims. @beta */
export interface ClaimQuery {
  /** Rows due by this instant. */
  now: Date;
  /** The most rows claimed. */
  limit: number;
  /** How long the claim lasts, in milliseconds. */
  leaseMs: number;
  /** The claim's token: a later update of a row must carry it. */
  token: string;
  /**
   * Only rows of these types, oldest due first, without the one-row-per-user rule (the rows are
   * handled, not delivered in order). A store that ignores it returns rows of other types, which
   * `handlePending` releases unhandled. Omitted: every type, a user's oldest row only.
   */
  types?: readonly NotificationType[];
}

/** A delivery attempt's outcome, written on the row. @beta */
export interface NotificationUpdate {
  /** The row's new status. */
  status: Notification["status"];
  /** Attempts made so far. */
  attempts: number;
  /** For `pending`: when to try again. */
  nextAttemptAt: Date;
  /** The last attempt's error; null after a success. */
  lastError: string | null;
  /** Set for `sent` and `failed`. */
  settledAt: Date | null;
}

/** The fields of a row that `completeNotification` sets: the update's, and the claim cleared. */
export function completedFields(u: NotificationUpdate) {
  return {
    status: u.status,
    attempts: u.attempts,
    nextAttemptAt: u.nextAttemptAt,
    lastError: u.lastError,
    settledAt: u.settledAt,
    claimedUntil: null,
    claimToken: null,
  };
}
