import type { DbManager } from "../db/types.js";
import { RevenueAccumulator } from "../domain/revenue.js";
import { usageBoundaries } from "../domain/usage.js";
import { ConfigurationError, ValidationError } from "../errors.js";
import { parse, type JournalEntry } from "../models/index.js";
import { MAX_REVENUE_RANGE_DAYS, MAX_REVENUE_WINDOWS, RevenueQuery, type RevenueReport } from "../models/revenue.js";

/** Journal entries and account ids one page reads. */
const PAGE = 1000;

/**
 * `credits.getRevenue(query)` (docs/revenue.md): every account's journal (or `account`'s) read
 * from its first entry, in pages, and rolled forward by `RevenueAccumulator`. Reads every entry of
 * the accounts, before `from` too (deferred at `from` is what the history before it left).
 */
export async function getRevenue(db: DbManager, query: RevenueQuery): Promise<RevenueReport> {
  const q = parse(RevenueQuery, query, "query");
  const refuse = (path: string, message: string) =>
    new ValidationError(`Invalid query.${path}: ${message}`, [{ path, message }]);
  const from = q.from.getTime();
  const to = q.to.getTime();
  if (to <= from) throw refuse("to", "must be after from");
  const groupBy = q.groupBy ?? [];
  if (new Set(groupBy).size !== groupBy.length) throw refuse("groupBy", "names a dimension twice");
  if (q.interval === null && to - from > MAX_REVENUE_RANGE_DAYS * 86_400_000)
    throw refuse("to", `a range without an interval is at most ${MAX_REVENUE_RANGE_DAYS} days`);
  const timeZone = q.timeZone ?? "UTC";
  const boundaries = usageBoundaries(from, to, q.interval, timeZone, MAX_REVENUE_WINDOWS);
  if (boundaries === null)
    throw refuse("to", `the range spans more than ${MAX_REVENUE_WINDOWS} windows of a ${q.interval}: shorten it`);
  const sum = new RevenueAccumulator(boundaries, groupBy);
  const one = async (userId: string) => {
    const entries: JournalEntry[] = [];
    let after = 0;
    for (;;) {
      const page = await db.listJournal(userId, { order: "asc", afterSeq: after, limit: PAGE });
      for (const e of page) entries.push(e);
      if (page.length < PAGE) break;
      after = page[page.length - 1]!.seq;
    }
    let sources: Map<string, string> | undefined;
    if (groupBy.includes("source")) {
      const grants = await db.listGrants(userId, { includeInactive: true });
      sources = new Map(grants.map((g) => [g.id, g.source]));
    }
    sum.addAccount(userId, entries, sources);
  };
  if (q.account !== undefined) await one(q.account);
  else {
    if (db.listAccountIds === undefined)
      throw new ConfigurationError(
        `[credit-management] the ${db.name} store cannot list its accounts (DbManager.listAccountIds): a revenue query must name an account`,
      );
    let after: string | null = null;
    for (;;) {
      const ids = await db.listAccountIds(after, PAGE);
      for (const id of ids) await one(id);
      if (ids.length < PAGE) break;
      after = ids[ids.length - 1]!;
    }
  }
  return { rows: sum.rows(), timeZone };
}
