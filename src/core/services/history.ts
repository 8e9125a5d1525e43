import type { DbManager } from "../db/types.js";
import type { Grant, JournalEntry } from "../models/index.js";
import type * as z from "zod/mini";
import type { HistoryQuery } from "../models/index.js";

/** What `getExpiringCredits` returns. @public */
export interface ExpiringCredits {
  /** The account. */
  userId: string;
  /** Credits that expire within the window (unspent, unheld). */
  total: number;
  /** The grants behind them, soonest expiry first. */
  grants: Grant[];
}

/** A page of journal entries, newest first. @public */
export interface HistoryPage {
  /** The entries of this page, newest first. */
  items: JournalEntry[];
  /** Pass as `cursor` for the next (older) page; null on the last page. */
  nextCursor: string | null;
}

/** Stores may keep the objects they return (the in-memory one does): callers get their own copy. */
export const copy = <T>(o: T): T => structuredClone(o);

/** Entries one filtered `getCreditHistory` call reads at most (docs/teams-and-limits.md). */
const HISTORY_SCAN = 5_000;

/**
 * `CreditService.getCreditHistory` of a validated user and query: the journal, newest first. With
 * `spender` or `feature` the store's pages are filtered here (any store, no index of its own): one
 * call reads at most `HISTORY_SCAN` entries, so a page may hold fewer than `limit` with
 * `nextCursor` still set.
 */
export async function creditHistory(
  db: DbManager,
  user: string,
  q: z.output<typeof HistoryQuery>,
): Promise<HistoryPage> {
  const limit = q.limit ?? 50;
  const page = (beforeSeq: number | undefined, size: number) =>
    db.listJournal(user, { order: "desc", beforeSeq, limit: size, types: q.types, from: q.from, to: q.to });
  const before = q.cursor === undefined ? undefined : Number(q.cursor);
  if (q.spender === undefined && q.feature === undefined) {
    const rows = await page(before, limit + 1);
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? String(last.seq) : null };
  }
  const items: JournalEntry[] = [];
  let cursor = before;
  for (let scanned = 0; scanned < HISTORY_SCAN;) {
    const size = Math.min(HISTORY_SCAN - scanned, Math.max(4 * limit, 200));
    const rows = await page(cursor, size);
    for (const e of rows) {
      cursor = e.seq;
      if (!spentBy(e, q.spender, q.feature)) continue;
      if (items.length === limit) return { items, nextCursor: String(items[limit - 1]!.seq) };
      items.push(e);
    }
    if (rows.length < size) return { items, nextCursor: null };
    scanned += rows.length;
  }
  // Scanned as much as one call may: the caller goes on from the last entry read.
  return { items, nextCursor: cursor === undefined ? null : String(cursor) };
}

/** `CoreCreditService.getExpiringCredits`: unspent, unheld credits of `user` expiring within `days` of `now`. */
export async function expiringCredits(
  db: DbManager,
  user: string,
  days: number,
  now: number,
): Promise<ExpiringCredits> {
  const until = now + days * 86_400_000;
  const grants = (await db.listGrants(user))
    // An upcoming grant's credits are in no balance until it starts (docs/units.md, "Grants that start later").
    .filter((g) => g.remaining > 0 && g.closedAt === null && g.expiresAt !== null && g.upcoming !== true)
    .filter((g) => (g.expiresAt as Date).getTime() > now && (g.expiresAt as Date).getTime() <= until)
    .sort((a, b) => (a.expiresAt as Date).getTime() - (b.expiresAt as Date).getTime());
  return { userId: user, total: grants.reduce((s, g) => s + g.remaining, 0), grants: grants.map(copy) };
}

/** `user`'s journal entries after seq `after`, oldest first, a page at a time. */
export async function* journalPages(
  db: Pick<DbManager, "listJournal">,
  user: string,
  after = 0,
): AsyncGenerator<JournalEntry[]> {
  for (;;) {
    const page = await db.listJournal(user, { order: "asc", afterSeq: after, limit: JOURNAL_PAGE });
    yield page;
    if (page.length < JOURNAL_PAGE) return;
    after = page[page.length - 1]!.seq;
  }
}

/** `user`'s journal entries after seq `after`, oldest first. */
export async function journalAfter(db: DbManager, user: string, after = 0): Promise<JournalEntry[]> {
  const entries: JournalEntry[] = [];
  for await (const page of journalPages(db, user, after)) entries.push(...page);
  return entries;
}

/** Journal entries one page of `journalPages` reads. */
const JOURNAL_PAGE = 1000;

/** True when `e` was recorded under `spender` and for `feature` (each: when asked). */
function spentBy(e: JournalEntry, spender: string | undefined, feature: string | undefined): boolean {
  return (spender === undefined || e.spender === spender) && (feature === undefined || e.feature === feature);
}
