import type { UsageCatchUp } from "../../core/domain/usage.js";
import { rollupCatchUpBatchSql, rollupCatchUpOneSql, rollupCatchUpSql, rollupNames } from "../../schema/rollup.js";
import type { PostgresDbManager } from "./index.js";

/**
 * The catch-ups of PostgreSQL's daily usage rollup (docs/usage.md, "The daily rollup" and "Keeping
 * the rollup caught up"; statements in src/schema/rollup.ts): a reader's (a report across
 * accounts, the audit, archival), which brings the cursors to the journal's head, and the worker's
 * round, bounded. Both move each account's cursor by a compare-and-set, so that every entry is
 * counted once whoever runs at the same time.
 */

/** What the catch-ups need of `PostgresDbManager`. */
type RollupRunner = Pick<PostgresDbManager, "read" | "readWithoutJit" | "sql">;

/** Entries one statement of the round adds at most, for a batch of accounts or a piece of one account's. */
export const ROUND_BATCH_ENTRIES = 20_000;
/** Accounts one statement of the round (or one listing on Citus) takes at most. */
const ROUND_ACCOUNTS = 1000;
/**
 * Passes of a reader's catch-up at most. A pass runs again only when another catch-up moved a
 * cursor it meant to move (the other may be the round, which stops at its bound): each such pass
 * follows someone else's progress, so a few are the most it takes; this many would mean a fault.
 */
const MAX_PASSES = 100;

/**
 * A reader's catch-up: every account's entries past its cursor (or `userId`'s), up to its seq at
 * the pass, added to the rollup; answers the accounts caught up. A pass that lost a compare-and-set
 * (another catch-up moved that cursor first, maybe only part of the way: the worker's round goes in
 * pieces) runs again, so that when it returns each cursor is at least the account's seq of its
 * start — what the report, the audit and archival rely on. On Citus, one account a statement
 * (each routed to the worker that holds it).
 */
export async function catchUpRollup(db: RollupRunner, userId?: string): Promise<number> {
  const journal = db.sql.tables.journal.qualified;
  const accounts = db.sql.tables.accounts.qualified;
  let n = 0;
  for (let pass = 1; pass <= MAX_PASSES; pass++) {
    if (userId === undefined && !db.sql.distributed) {
      const text = rollupCatchUpSql(journal, accounts, db.sql.naming);
      const [row] = await db.readWithoutJit("catchUpUsageRollup", text, [], true);
      const moved = Number(row?.n ?? 0);
      n += moved;
      if (Number(row?.stale ?? 0) === moved) return n;
      continue;
    }
    const stale = await staleAccounts(db, userId ?? null, null, null);
    let lost = 0;
    for (const r of stale) {
      const moved = await catchUpOne(db, r.userId, r.fromSeq, r.head);
      n += moved;
      if (moved === 0) lost++;
    }
    if (lost === 0) return n;
  }
  throw new Error(
    `[credit-management] [postgres] the usage rollup's catch-up lost its compare-and-set ${MAX_PASSES} times in a row`,
  );
}

/**
 * The worker's usage round (docs/usage.md, "Keeping the rollup caught up"): the accounts behind
 * their cursor in user id order, their new entries added to the rollup in statements of at most
 * `batchEntries` (an account with more in pieces), until about `maxEntries` are added or none is
 * left. An account whose compare-and-set it loses was caught up by someone else (a report, another
 * worker): their entries are in the rollup either way, counted once.
 */
export async function rollupRound(
  db: RollupRunner,
  options: { maxEntries: number; batchEntries?: number },
): Promise<UsageCatchUp> {
  const batch = Math.max(1, options.batchEntries ?? ROUND_BATCH_ENTRIES);
  const done: UsageCatchUp = { accounts: 0, entries: 0, more: false };
  if (db.sql.distributed) return roundOneByOne(db, options.maxEntries, batch, done);
  const journal = db.sql.tables.journal.qualified;
  const accounts = db.sql.tables.accounts.qualified;
  let after: string | null = null;
  for (;;) {
    const left = options.maxEntries - done.entries;
    if (left <= 0) return { ...done, more: true };
    const text = rollupCatchUpBatchSql(journal, accounts, db.sql.naming, after !== null);
    const rows = await db.readWithoutJit(
      "catchUpUsageRollup",
      text,
      [after, ROUND_ACCOUNTS, Math.min(batch, left)],
      true,
    );
    if (rows.length === 0) return done;
    for (const r of rows) {
      if (r.moved !== true) continue;
      done.accounts++;
      done.entries += Number(r.entries);
    }
    // The next statement starts after the last account, or at it when its rest is left.
    const last = rows[rows.length - 1]!;
    if (last.clipped !== true) after = String(last.user_id);
    else if (rows.length > 1) after = String(rows[rows.length - 2]!.user_id);
  }
}

/** The round on Citus: a statement per account (or piece of one), each routed to its worker. */
async function roundOneByOne(
  db: RollupRunner,
  maxEntries: number,
  batch: number,
  done: UsageCatchUp,
): Promise<UsageCatchUp> {
  let after: string | null = null;
  for (;;) {
    const stale = await staleAccounts(db, null, after, ROUND_ACCOUNTS);
    for (const r of stale) {
      for (let from = r.fromSeq; from < r.head;) {
        const left = maxEntries - done.entries;
        if (left <= 0) return { ...done, more: true };
        const to = Math.min(r.head, from + Math.min(batch, left));
        // Lost: another catch-up moved the cursor first (and adds the rest).
        if ((await catchUpOne(db, r.userId, from, to)) === 0) break;
        done.accounts++;
        done.entries += to - from;
        from = to;
      }
    }
    if (stale.length < ROUND_ACCOUNTS) return done;
    after = stale[stale.length - 1]!.userId;
  }
}

interface StaleAccount {
  userId: string;
  fromSeq: number;
  head: number;
}

/** The accounts whose seq is past their rollup cursor (`userId`'s only; after `after`; at most `limit`), in user id order. */
async function staleAccounts(
  db: RollupRunner,
  userId: string | null,
  after: string | null,
  limit: number | null,
): Promise<StaleAccount[]> {
  const state = rollupNames(db.sql.naming).state;
  const params: unknown[] = [];
  const where = ["a.seq > coalesce(s.through_seq, 0)"];
  if (userId !== null) where.push(`a.user_id = $${params.push(userId)}`);
  if (after !== null) where.push(`a.user_id > $${params.push(after)}`);
  const rows = await db.read(
    "catchUpUsageRollup",
    `SELECT a.user_id, coalesce(s.through_seq, 0) AS from_seq, a.seq AS to_seq FROM ${db.sql.tables.accounts.qualified} a ` +
      `LEFT JOIN ${state} s ON s.user_id = a.user_id WHERE ${where.join(" AND ")} ORDER BY a.user_id` +
      (limit === null ? "" : ` LIMIT $${params.push(limit)}`),
    params,
  );
  return rows.map((r) => ({ userId: String(r.user_id), fromSeq: Number(r.from_seq), head: Number(r.to_seq) }));
}

/** One account's entries `from < seq <= to` into the rollup, its cursor moved from `from` to `to`: 1, or 0 when the compare-and-set lost. */
async function catchUpOne(db: RollupRunner, userId: string, from: number, to: number): Promise<number> {
  const rows = await db.read(
    "catchUpUsageRollup",
    rollupCatchUpOneSql(db.sql.tables.journal.qualified, db.sql.naming),
    [userId, from, to],
  );
  return Number(rows[0]?.n ?? 0);
}
