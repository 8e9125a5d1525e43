import type { DbManager } from "../../core/db/types.js";
import { revenueStorePart } from "./store-part.js";
import type { EntryType, JournalEntry } from "../../core/models/index.js";
import type { PeriodClose, PeriodCloseMark, RevenueDimension } from "./model.js";
import type { GrantGroups } from "./rules.js";

/**
 * Where an account's revenue summary stands (docs/revenue.md, "How it is computed"): its entries
 * up to `throughSeq` are in the summary, and `state` is the roll-forward after them
 * (`revenueStateText` of src/modules/revenue/rules.ts; null before the first).
 * @beta
 */
export interface RevenueCheckpoint {
  userId: string;
  throughSeq: number;
  /** The account's last journal seq when listed (`staleRevenue`; the entries to add are after `throughSeq` up to it). */
  seq?: number;
  state: string | null;
}

/** Figures of one account, UTC day and group, as the summary keeps them (minor units; credits for `unbilled`). @beta */
export interface RevenueDayRow {
  /** Ms at the day's UTC midnight. */
  day: number;
  currency: string | null;
  source: string | null;
  plan: string | null;
  feature: string | null;
  spender: string | null;
  paid: number;
  recognized: number;
  breakage: number;
  refunds: number;
  unbilled: number;
  /** Catch-up figures (docs/revenue.md, "Closing a month"): the `through` (ms) of their close; null: ordinary. */
  catchUp: number | null;
}

/** What one account's catch-up adds to the summary (`RevenueSummaryStore.saveRevenue`). @beta */
export interface RevenueSave {
  /** The account's `throughSeq` the save starts from: saved only if the summary's is still this. */
  fromSeq: number;
  /** Where the account stands after the save. */
  checkpoint: RevenueCheckpoint;
  days: readonly RevenueDayRow[];
  /** The change of deferred per currency, source and plan over the entries added (minor units). */
  deferred: readonly { currency: string; source: string | null; plan: string | null; delta: number }[];
  /**
   * The `through` (ms) of the latest period close the days were booked with (null: none;
   * docs/revenue.md, "Closing a month"): saved only while it is still the latest.
   */
  latestClose: number | null;
}

/** What the summary keeps of one account (`RevenueSummaryStore.revenueSummaryOf`), for the audit. @beta */
export interface RevenueSummaryOfAccount {
  checkpoint: RevenueCheckpoint;
  /** Its days by currency, source, feature and spender. */
  split: RevenueDayRow[];
  /** Its days by currency, source and plan (`feature`, `spender` null). */
  days: RevenueDayRow[];
  deferred: { currency: string; source: string | null; plan: string | null; deferred: number }[];
}

/** Figures summed by window and by the query's groups (absent groups are null). @beta */
export interface RevenueBucketRow {
  /** Index of the window (`boundaries[w]` to `boundaries[w + 1]`); `boundaries.length - 1`: after the last. */
  window: number;
  currency: string | null;
  account: string | null;
  source: string | null;
  plan: string | null;
  feature: string | null;
  spender: string | null;
  paid: number;
  recognized: number;
  breakage: number;
  refunds: number;
  unbilled: number;
  /** Catch-up figures: the `through` (ms) of their close; null: ordinary. */
  catchUp: number | null;
}

/** Deferred now (after every entry in the summary), by currency and the query's account, source and plan groups. @beta */
export interface RevenueDeferredRow {
  currency: string;
  account: string | null;
  source: string | null;
  plan: string | null;
  deferred: number;
}

/**
 * Optional: a store that keeps revenue per account and UTC day (PostgreSQL, docs/revenue.md "How
 * it is computed"). The summary is read-side: `credits.getRevenue` adds an account's new journal
 * entries to it before it reads (the domain's roll-forward, `RevenueAccumulator`), so writes of
 * the journal pay nothing for it. Each entry is on the UTC day it is booked at (`placedAt` of
 * src/core/domain/usage.ts), in whatever order the entries come: a day's figures and the
 * deferred value only add up.
 * @beta
 */
export interface RevenueSummaryStore {
  /**
   * Checkpoints of accounts with journal entries after them, by user id: `account`'s only, or a
   * page of every account's after `after` (exclusive), at most `limit`.
   */
  staleRevenue(account: string | null, after: string | null, limit: number): Promise<RevenueCheckpoint[]>;
  /**
   * The journal entries after each checkpoint's `throughSeq`, by user id then seq (one read for a
   * batch of accounts).
   */
  revenueEntries(checkpoints: readonly RevenueCheckpoint[]): Promise<JournalEntry[]>;
  /** The source and plan of each grant of `grantIds` (by id, `grantGroups` of src/modules/revenue/rules.ts), for the summary's groups. */
  grantGroups(grantIds: readonly string[]): Promise<Map<string, GrantGroups>>;
  /**
   * Adds each account's `days` to the summary and moves its checkpoint from `fromSeq` to
   * `checkpoint`, all at once — each account only if its checkpoint is still at `fromSeq`
   * (another report may have added the same entries first: then nothing of that account changes),
   * and none if a period close later than the saves' `latestClose` was recorded (or is being
   * recorded) meanwhile: the entries are booked again with it. `deferred`: the change of deferred
   * per currency and source over the entries added. Answers how many accounts were saved.
   */
  saveRevenue(saves: readonly RevenueSave[]): Promise<number>;
  /** Everything the summary keeps of `account`; null when it has not read the account's journal yet. */
  revenueSummaryOf(account: string): Promise<RevenueSummaryOfAccount | null>;
  /**
   * The summary's figures from `boundaries[0]` on (days at UTC midnights), by window and
   * `groupBy`; and deferred now by currency and the account and source groups.
   */
  readRevenue(query: RevenueReadQuery): Promise<{
    buckets: RevenueBucketRow[];
    deferred: RevenueDeferredRow[];
  }>;
}

/** What `readRevenue` reads: one account or all (null), the windows' boundaries, the grouping. @beta */
export interface RevenueReadQuery {
  account: string | null;
  boundaries: readonly number[];
  groupBy: readonly RevenueDimension[];
}

/**
 * The closed periods of revenue reports as a store keeps them (docs/revenue.md, "Closing a month"):
 * table `period_closes` (one row per close) and `period_close_marks` (one row per account and close).
 * @beta
 */
export interface PeriodCloseStore {
  /**
   * Records a close through `through`: every account's mark (its journal seq now), then the close
   * row, so that a reader sees a close only with all its marks. Refuses, with `ConflictError`, a
   * `through` not after the latest close's (of two racing closes, one is recorded). `accounts`:
   * every account's seq, for a store that cannot read them itself in the close's transaction (the
   * in-memory one); the others read their accounts table.
   */
  recordClose(
    through: Date,
    closedAt: Date,
    accounts: () => AsyncIterable<{ userId: string; seq: number }>,
  ): Promise<PeriodClose>;
  /** Every close, by `through` ascending. */
  listCloses(): Promise<PeriodClose[]>;
  /** The marks of the accounts `userIds` (null: every account's), of every close. */
  marks(userIds: readonly string[] | null): Promise<PeriodCloseMark[]>;
  /**
   * Optional: the journal entries of every account recorded after the close through
   * `query.through` (seq past the account's mark at it, or any seq of an account it has no mark
   * of) of `query.types` whose money moved before `query.before`, by user id then seq, after
   * `query.after`, at most `query.limit`: one read for many accounts (a fleet-wide usage report
   * over a closed month, docs/usage.md "Closed months"). Absent, the report reads each account's
   * journal (`DbManager.listJournal`).
   */
  movedEntries?(query: MovedEntriesQuery): Promise<JournalEntry[]>;
}

/** What `PeriodCloseStore.movedEntries` reads. @beta */
export interface MovedEntriesQuery {
  /** The close (its `through`) whose marks the entries are after. */
  through: Date;
  /** Entries of these types only. */
  types: readonly EntryType[];
  /** Entries whose money moved before it: `occurredAt ?? createdAt < before`. */
  before: Date;
  /** The last entry of the previous page: entries after it by user id then seq; null: from the first account. */
  after: { userId: string; seq: number } | null;
  /** The most entries answered. */
  limit: number;
}

/**
 * The revenue module's reads on a store (`revenueStorePart`): its closed periods, and its summary
 * where the store keeps one. (Only methods that answer promises besides `summary`: a store may wrap
 * each method of a part's reads as an async function.)
 */
export interface RevenueSummaryReads extends PeriodCloseStore {
  /** The summary, or undefined where the store keeps none (on Citus); absent on stores that keep none. */
  summary?(): RevenueSummaryStore | undefined;
}

/**
 * `db`'s revenue summary, when its store keeps one: revenue kept per account and UTC day, for
 * `credits.getRevenue` (docs/revenue.md, "How it is computed"), from the revenue module's store
 * part (bound on first use). Optional: without it, reports replay the journal.
 */
export const revenueSummaryOf = (db: DbManager): RevenueSummaryStore | undefined =>
  db.usePart?.(revenueStorePart)?.summary?.();

/**
 * `db`'s closed periods of revenue reports (docs/revenue.md, "Closing a month"), from the revenue
 * module's store part; undefined on a store without a side of it (a store written elsewhere).
 */
export const periodClosesOf = (db: DbManager): PeriodCloseStore | undefined => db.usePart?.(revenueStorePart);
