import type { DbManager } from "../../core/db/types.js";
import type { JournalEntry } from "../../core/models/index.js";
import { UsageAccumulator, usageRows, type UsageScan } from "../../core/domain/usage.js";
import { usageBoundaries } from "../../core/domain/windows.js";
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
 * for a store without one — one account's journal read page by page and summed here.
 */
export async function getUsage(db: DbManager, query: UsageQuery): Promise<UsageReport> {
  const scan = usageScan(query);
  let buckets;
  if (db.usage !== undefined) buckets = await db.usage(scan);
  else {
    if (scan.account === null) {
      throw new ConfigurationError(
        `[credit-management] the ${db.name} store has no usage aggregation (DbManager.usage): a usage query must name an account`,
      );
    }
    const sum = new UsageAccumulator(scan);
    for await (const page of journalPages(db, scan.account)) {
      for (const e of page) sum.add(scan.account, e);
    }
    buckets = sum.result();
  }
  const { rows, truncated } = usageRows(buckets, scan);
  return { rows, truncated, timeZone: scan.timeZone };
}

/**
 * The usage of `entries` of one account that `query` asks for, summed here by the rules of
 * `src/core/domain/usage.ts` — the journal path of `getUsage` over entries the caller already read (the
 * console's account page sums its newest entries: docs/console.md). `query.account` must be the
 * entries' account; entries outside the query's range are not counted.
 */
export function sumUsage(query: UsageQuery & { account: string }, entries: Iterable<JournalEntry>): UsageReport {
  const scan = usageScan(query);
  const sum = new UsageAccumulator(scan);
  for (const e of entries) sum.add(query.account, e);
  const { rows, truncated } = usageRows(sum.result(), scan);
  return { rows, truncated, timeZone: scan.timeZone };
}
