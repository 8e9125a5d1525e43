import type { DbManager } from "../../core/db/types.js";
import type { JournalEntry } from "../../core/models/index.js";
import {
  closedBuckets,
  placedAt,
  UsageAccumulator,
  usageEntryTypes,
  usageRows,
  type ReportBucket,
  type UsageBucket,
  type UsageScan,
} from "../../core/domain/usage.js";
import { usageBoundaries, windowIndex } from "../../core/domain/windows.js";
import { bookingOf, type CloseCut } from "../revenue/rules.js";
import { closeCuts, eachAccountCut } from "../revenue/service.js";
import { periodClosesOf } from "../revenue/store.js";
import { ConfigurationError, ValidationError } from "../../core/errors.js";
import { parse } from "../../core/models/index.js";
import { journalPages } from "../../core/services/history.js";
import {
  MAX_USAGE_RANGE_DAYS,
  MAX_USAGE_WINDOWS,
  UsageKind,
  UsageQuery,
  type UsageReport,
} from "../../core/models/usage.js";

/** Rows a usage query answers when it names no `limit`. */
export const DEFAULT_USAGE_ROWS = 10_000;

/** Validates a usage query and works out its windows (`ValidationError` for a bad or too large one). */
export function usageScan(query: UsageQuery): UsageScan {
  const q = parse(UsageQuery, query, "query");
  const refuse = (path: string, message: string) =>
    new ValidationError(`Invalid query.${path}: ${message}`, [{ path, message }]);
  const from = q.from.getTime();
  const to = q.to.getTime();
  if (to <= from) throw refuse("to", "must be after from");
  const groupBy = q.groupBy ?? [];
  if (new Set(groupBy).size !== groupBy.length) throw refuse("groupBy", "names a dimension twice");
  if (q.interval === null && to - from > MAX_USAGE_RANGE_DAYS * 86_400_000)
    throw refuse("to", `a range without an interval is at most ${MAX_USAGE_RANGE_DAYS} days`);
  const timeZone = q.timeZone ?? "UTC";
  const boundaries = usageBoundaries(from, to, q.interval, timeZone, MAX_USAGE_WINDOWS);
  if (boundaries === null)
    throw refuse("to", `the range spans more than ${MAX_USAGE_WINDOWS} windows of a ${q.interval}: shorten it`);
  return {
    account: q.account ?? null,
    from: q.from,
    to: q.to,
    interval: q.interval,
    timeZone,
    groupBy,
    kinds: q.kinds === undefined ? UsageKind.options : [...new Set(q.kinds)],
    orderBy: q.orderBy ?? "start",
    limit: q.limit ?? DEFAULT_USAGE_ROWS,
    boundaries,
  };
}

/**
 * `credits.getUsage(query)` (docs/usage.md): the store's own aggregation (`DbManager.usage`), or —
 * for a store without one — one account's journal read page by page and summed here; then, where a
 * period close has a `through` at or after the range's start, the usage it moves (`closeChanges`:
 * docs/usage.md, "Closed months").
 */
export async function getUsage(db: DbManager, query: UsageQuery): Promise<UsageReport> {
  const scan = usageScan(query);
  let buckets: ReportBucket[];
  // The closes, read before the journal: a close recorded later leaves the entries this report
  // reads on the sides of their marks.
  const closes = await closesOver(db, scan);
  if (closes === null) buckets = await storeBuckets(db, scan);
  else {
    // The moved entries read around the store's aggregation, again until they are the same: an
    // entry recorded meanwhile is then in neither or both (no closed window shows it at its time).
    let changes = await closeChanges(db, scan, closes);
    for (let tries = 1; ; tries++) {
      // Uncut: an ordinary bucket past the limit may lose what a close moves out of it.
      const all = await storeBuckets(db, { ...scan, limit: UNCUT });
      const again = await closeChanges(db, scan, closes);
      if (again.seen === changes.seen || tries === CLOSE_TRIES) {
        buckets = closedBuckets(all, again.buckets, scan);
        break;
      }
      changes = again;
    }
  }
  const { rows, truncated } = usageRows(buckets, scan);
  return { rows, truncated, timeZone: scan.timeZone };
}

/**
 * The `limit` of a store's `usage()` scan that is to answer every bucket (`limit + 1` the largest
 * 32-bit integer: a store may pass it on as a driver's batch size).
 */
const UNCUT = 2 ** 31 - 2;
/** Reads of the moved entries, at most, around a report's aggregation (`getUsage`). */
const CLOSE_TRIES = 3;

/** The store's buckets of `scan`: its own aggregation, or one account's journal summed here. */
async function storeBuckets(db: DbManager, scan: UsageScan): Promise<UsageBucket[]> {
  if (db.usage !== undefined) return db.usage(scan);
  if (scan.account === null) {
    throw new ConfigurationError(
      `[credit-management] the ${db.name} store has no usage aggregation (DbManager.usage): a usage query must name an account`,
    );
  }
  const sum = new UsageAccumulator(scan);
  for await (const page of journalPages(db, scan.account)) {
    for (const e of page) sum.add(scan.account, e);
  }
  return sum.result();
}

/** The closes a report reads (`closesOver`): their `through`s, and the store they are read from. */
interface ReportCloses {
  store: NonNullable<ReturnType<typeof periodClosesOf>>;
  closed: Awaited<ReturnType<NonNullable<ReturnType<typeof periodClosesOf>>["listCloses"]>>;
}

/**
 * The store's period closes (docs/revenue.md, "Closing a month") when one may move usage in or out
 * of `scan`'s range: one whose `through` is at or after its start. Null: none (no close, or every
 * close before the range: what it moved lies before the range too).
 */
async function closesOver(db: DbManager, scan: UsageScan): Promise<ReportCloses | null> {
  const store = periodClosesOf(db);
  if (store === undefined) return null;
  const closed = await store.listCloses();
  const from = scan.boundaries[0]!;
  if (!closed.some((c) => c.through.getTime() >= from)) return null;
  return { store, closed };
}

/**
 * What closes move in `scan` (docs/usage.md, "Closed months"), as changes to the store's buckets:
 * each entry recorded after a close (its seq past the account's mark at the close, or its account
 * without one) with a time before the close's `through` (`bookingOf`, as revenue books it) out of
 * the window of its time and into the window of the `through` it is booked at, as catch-up of the
 * first close that moved it. Only entries after the account's mark at the first close at or after
 * the range's start are read (one moved by an earlier close lies before the range, at its time and
 * where it was booked), and of those only the usage ones with a time before the range's end and the
 * latest close's `through`: across accounts in one read per page where the store can
 * (`PeriodCloseStore.movedEntries`), else account by account. `seen`: the entries moved, by
 * account and seq (a second read compares).
 */
async function closeChanges(
  db: DbManager,
  scan: UsageScan,
  closes: ReportCloses,
): Promise<{ buckets: ReportBucket[]; seen: string }> {
  const sum = new UsageAccumulator(scan);
  const from = scan.boundaries[0]!;
  const to = scan.boundaries[scan.boundaries.length - 1]!;
  const latest = closes.closed[closes.closed.length - 1]!.through.getTime();
  const before = new Date(Math.min(to, latest));
  const types = usageEntryTypes();
  const seen: string[] = [];
  const { store, closed } = closes;
  // `closesOver` found one.
  const first = closed.find((c) => c.through.getTime() >= from)!;
  const move = (e: JournalEntry, cuts: readonly CloseCut[]) => {
    const { at, catchUp } = bookingOf(e, cuts);
    if (catchUp === null) return;
    if (scan.throughSeq !== undefined && e.seq > scan.throughSeq) return;
    seen.push(`${e.userId}\u0000${e.seq}`);
    sum.addAt(e.userId, e, windowIndex(scan.boundaries, placedAt(e)), -1, null);
    sum.addAt(e.userId, e, windowIndex(scan.boundaries, at), 1, catchUp);
  };
  const one = async (userId: string, cuts: readonly CloseCut[]) => {
    let after = cuts.find((c) => c.through >= from)?.marks.get(userId) ?? 0;
    for (;;) {
      const page = await db.listJournal(userId, {
        order: "asc",
        afterSeq: after,
        limit: JOURNAL_PAGE,
        types,
        to: before,
      });
      for (const e of page) move(e, cuts);
      if (page.length < JOURNAL_PAGE) return;
      after = page[page.length - 1]!.seq;
    }
  };
  if (scan.account !== null) await one(scan.account, await closeCuts(store, closed, [scan.account]));
  else if (store.movedEntries !== undefined) {
    // Every account's at once, by user id and seq; the marks of the accounts of each page.
    let after: { userId: string; seq: number } | null = null;
    for (;;) {
      const page = await store.movedEntries({ through: first.through, types, before, after, limit: JOURNAL_PAGE });
      const cuts = await closeCuts(store, closed, [...new Set(page.map((e) => e.userId))]);
      for (const e of page) move(e, cuts);
      if (page.length < JOURNAL_PAGE) break;
      const last = page[page.length - 1]!;
      after = { userId: last.userId, seq: last.seq };
    }
  } else await eachAccountCut(db, store, closed, "with a period close, a usage query must name an account", one);
  return { buckets: sum.all(), seen: seen.join("\u0001") };
}

/** Journal entries one read of `closeChanges` asks for (of one account, or of every account). */
const JOURNAL_PAGE = 1000;

/**
 * The usage of `entries` of one account that `query` asks for, summed here by the rules of
 * `src/core/domain/usage.ts` — the journal path of `getUsage` over entries the caller already read (the
 * console's account page sums its newest entries: docs/console.md). `query.account` must be the
 * entries' account; entries outside the query's range are not counted. With the account's closes
 * (`accountCloseCuts` of the revenue module), an entry a close moved is counted where `getUsage`
 * books it: at the close's `through`, on a catch-up row (docs/usage.md, "Closed months").
 */
export function sumUsage(
  query: UsageQuery & { account: string },
  entries: Iterable<JournalEntry>,
  cuts: readonly CloseCut[] = [],
): UsageReport {
  const scan = usageScan(query);
  const sum = new UsageAccumulator(scan);
  for (const e of entries) {
    const { at, catchUp } = bookingOf(e, cuts);
    sum.addAt(query.account, e, windowIndex(scan.boundaries, at), 1, catchUp);
  }
  const { rows, truncated } = usageRows(sum.result(), scan);
  return { rows, truncated, timeZone: scan.timeZone };
}
