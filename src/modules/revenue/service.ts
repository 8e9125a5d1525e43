import type { DbManager } from "../../core/db/types.js";
import {
  periodClosesOf,
  revenueSummaryOf,
  type PeriodCloseStore,
  type RevenueCheckpoint,
  type RevenueDayRow,
  type RevenueSave,
  type RevenueSummaryStore,
} from "./store.js";
import {
  checkRevenueCells,
  RevenueAccumulator,
  emptyRevenueState,
  grantGroups,
  type GrantGroups,
  parseRevenueState,
  revenueProblems,
  revenueStateText,
  bookingOf,
  type CloseCut,
  type Key,
} from "./rules.js";
import { nextWindowStart, usageBoundaries, windowStart } from "../../core/domain/windows.js";
import { ConfigurationError, ValidationError } from "../../core/errors.js";
import { ClosePeriodInput, type PeriodClose } from "./model.js";
import { parse, type JournalEntry } from "../../core/models/index.js";
import {
  DEFAULT_REVENUE_ROWS,
  MAX_REVENUE_CELLS,
  MAX_REVENUE_RANGE_DAYS,
  MAX_REVENUE_WINDOWS,
  RevenueQuery,
  type RevenueDimension,
  type RevenueReport,
  type RevenueRow,
} from "./model.js";
import type { UsageInterval } from "../../core/models/usage.js";
import { breather } from "../../util/breather.js";
import { journalAfter, journalPages } from "../../core/services/history.js";
import type { AuditCheck } from "../../core/services/audit-check.js";
import { pacedSort } from "../../util/paced-sort.js";

/** Accounts one page lists. */
const PAGE = 1000;
const DAY = 86_400_000;

/** How `getRevenue` reads (tests and benchmarks compare the two). */
export interface RevenueReadOptions {
  /**
   * `"replay"`: every account's journal from its first entry, even where the store keeps a
   * summary; `"auto"` (default): the store's summary where it has one and the windows start at UTC
   * midnights (docs/revenue.md, "How it is computed").
   */
  path?: "auto" | "replay";
  /** The instant the report is read at, in ms (default: `Date.now()`): no window after the one holding it. */
  now?: number;
  /** Most windows × groups (default `MAX_REVENUE_CELLS`; tests). */
  maxCells?: number;
}

/**
 * The end of a revenue query's range (docs/revenue.md, "How large a report can be"): no window
 * starts after `now`. `to`, or the end of the window holding `now` when `to` is later, so the last
 * window keeps its calendar bounds (its figures are those so far); without an interval the one
 * window holds `now` and ends at `to`. `from` when the range starts after `now` (nothing to report).
 */
function revenueEnd(from: number, to: number, now: number, interval: UsageInterval | null, timeZone: string): number {
  if (from > now) return from;
  if (interval === null) return to;
  return Math.min(to, nextWindowStart(windowStart(now, interval, timeZone), interval, timeZone));
}

/**
 * `credits.getRevenue(query)` (docs/revenue.md): every account's journal (or `account`'s) read
 * from its first entry, in pages, and rolled forward by `RevenueAccumulator`. Reads every entry of
 * the accounts, before `from` too (deferred at `from` is what the history before it left). Bounded
 * (docs/revenue.md, "How large a report can be"): `to` no later than the end of the window holding
 * now, windows counted before they are built, windows × groups refused past `MAX_REVENUE_CELLS`,
 * rows past `limit` left off; the event loop runs between pages and rows.
 */
export async function getRevenue(
  db: DbManager,
  query: RevenueQuery,
  options: RevenueReadOptions = {},
): Promise<RevenueReport> {
  const q = parse(RevenueQuery, query, "query");
  const refuse = (path: string, message: string) =>
    new ValidationError(`Invalid query.${path}: ${message}`, [{ path, message }]);
  const from = q.from.getTime();
  if (q.to.getTime() <= from) throw refuse("to", "must be after from");
  const groupBy = q.groupBy ?? [];
  if (new Set(groupBy).size !== groupBy.length) throw refuse("groupBy", "names a dimension twice");
  const timeZone = q.timeZone ?? "UTC";
  const limit = q.limit ?? DEFAULT_REVENUE_ROWS;
  const to = revenueEnd(from, q.to.getTime(), options.now ?? Date.now(), q.interval, timeZone);
  // The range starts after now: nothing to report.
  if (to <= from) return { rows: [], truncated: false, timeZone };
  if (q.interval === null && to - from > MAX_REVENUE_RANGE_DAYS * DAY)
    throw refuse("to", `a range without an interval is at most ${MAX_REVENUE_RANGE_DAYS} days`);
  const boundaries = usageBoundaries(from, to, q.interval, timeZone, MAX_REVENUE_WINDOWS);
  if (boundaries === null)
    throw refuse("to", `the range spans more than ${MAX_REVENUE_WINDOWS} windows of a ${q.interval}: shorten it`);
  const sum = new RevenueAccumulator(boundaries, groupBy, options.maxCells ?? MAX_REVENUE_CELLS);
  const pause = breather();
  // The closed periods (docs/revenue.md, "Closing a month"), read before the journal: a close
  // recorded later leaves the entries this report reads on the sides of their marks.
  const closes = periodClosesOf(db);
  const closed = (await closes?.listCloses()) ?? [];
  const one = async (userId: string, cuts: readonly CloseCut[]) => {
    const groups = groupBy.includes("source") || groupBy.includes("plan") ? await groupsOf(db, userId) : undefined;
    // Page by page, each from the state the last left, with a pause between.
    let state = emptyRevenueState();
    for await (const page of journalPages(db, userId)) {
      state = sum.addAccount(userId, page, groups, state, cuts);
      await pause();
    }
  };
  const summary = revenueSummaryOf(db);
  if (summary !== undefined && options.path !== "replay" && summaryAnswers(groupBy, boundaries)) {
    await catchUp(summary, q.account ?? null, closes);
    const read = await summary.readRevenue({ account: q.account ?? null, boundaries, groupBy });
    await addSummary(sum, read, boundaries.length, pause);
  } else if (q.account !== undefined) await one(q.account, await closeCuts(closes, closed, [q.account]));
  else await eachAccountCut(db, closes, closed, "a revenue query must name an account", one);
  const rows: RevenueRow[] = [];
  // Put in order between pauses too: a book of many accounts grouped by account has as many groups.
  const sorted = await pacedSort(sum.groupKeys(), sum.compareGroups, pause);
  for (const row of sum.orderedRows(sorted)) {
    if (rows.length === limit) return { rows, truncated: true, timeZone };
    rows.push(row);
    await pause();
  }
  return { rows, truncated: false, timeZone };
}

/**
 * The closed periods `closed` as revenue books entries by them (`bookingOf`; docs/revenue.md,
 * "Closing a month"), with the marks of the accounts `userIds` (null: every account's).
 */
export async function closeCuts(
  closes: PeriodCloseStore | undefined,
  closed: readonly PeriodClose[],
  userIds: readonly string[] | null,
): Promise<CloseCut[]> {
  if (closes === undefined || closed.length === 0) return [];
  const byThrough = new Map<number, Map<string, number>>(closed.map((c) => [c.through.getTime(), new Map()]));
  if (userIds === null || userIds.length > 0)
    for (const m of await closes.marks(userIds)) byThrough.get(m.through.getTime())?.set(m.userId, m.seq);
  return [...byThrough].sort((a, b) => a[0] - b[0]).map(([through, marks]) => ({ through, marks }));
}

/**
 * Every closed period of `db` with the marks of account `userId` (`closeCuts`): none when the store
 * has no closes (one read of the closes, and one of the account's marks when there are some).
 */
export async function accountCloseCuts(db: DbManager, userId: string): Promise<CloseCut[]> {
  const closes = periodClosesOf(db);
  return closeCuts(closes, (await closes?.listCloses()) ?? [], [userId]);
}

/**
 * Runs `each` on every account of `db`, a page of accounts at a time, with the page's cuts
 * (`closeCuts`): how a report over every account reads them. `needs` ends the error of a store that
 * cannot list its accounts.
 */
export async function eachAccountCut(
  db: DbManager,
  closes: PeriodCloseStore | undefined,
  closed: readonly PeriodClose[],
  needs: string,
  each: (userId: string, cuts: readonly CloseCut[]) => Promise<void>,
): Promise<void> {
  if (db.listAccountIds === undefined)
    throw new ConfigurationError(
      `[credit-management] the ${db.name} store cannot list its accounts (DbManager.listAccountIds): ${needs}`,
    );
  let after: string | null = null;
  for (;;) {
    const ids = await db.listAccountIds(after, PAGE);
    const cuts = await closeCuts(closes, closed, ids);
    for (const id of ids) await each(id, cuts);
    if (ids.length < PAGE) break;
    after = ids[ids.length - 1]!;
  }
}

/**
 * Whether a store's revenue summary answers a report (docs/revenue.md, "How it is computed"): its
 * windows start at UTC midnights, and it is not grouped by unit (the summary keeps no unit: such a
 * report reads the journal).
 */
function summaryAnswers(groupBy: readonly RevenueDimension[], boundaries: readonly number[]): boolean {
  return !groupBy.includes("unit") && boundaries.every((b) => b % DAY === 0);
}

/** The source and plan of each of `userId`'s grants, by id. */
async function groupsOf(db: DbManager, userId: string): Promise<Map<string, GrantGroups>> {
  const grants = await db.listGrants(userId, { includeInactive: true });
  return new Map(grants.map((g) => [g.id, grantGroups(g)]));
}

/** Entries one catch-up statement reads and saves, for a batch of accounts or a piece of one account's. */
const BATCH_ENTRIES = 20_000;

/** What a catch-up of the revenue summary did (`catchUpRevenue`). */
export interface RevenueCatchUp {
  /** Accounts whose checkpoint it moved (an account caught up in several pieces counts once a piece). */
  accounts: number;
  /** Journal entries it read and folded into the summary. */
  entries: number;
  /** It stopped at its `maxEntries`: entries are left for the next. */
  more: boolean;
}

/**
 * The worker's revenue round (docs/revenue.md, "Keeping the summary caught up"): adds to the
 * store's revenue summary the entries written since it last read them, at most about `maxEntries`
 * of them (whole statements of up to 20,000), so a later report has nothing (or little) left to
 * add. Nothing to do on a store without a summary.
 */
export async function catchUpRevenue(
  db: DbManager,
  options: {
    maxEntries?: number;
    /** One account only (archival catches an account up before it removes its entries). */
    userId?: string;
    /** Tests: entries a statement reads and saves. */ batchEntries?: number;
  } = {},
): Promise<RevenueCatchUp> {
  const summary = revenueSummaryOf(db);
  if (summary === undefined) return { accounts: 0, entries: 0, more: false };
  return catchUp(summary, options.userId ?? null, periodClosesOf(db), options.maxEntries, options.batchEntries);
}

/**
 * Adds to the store's revenue summary every entry written since it last read them (docs/revenue.md,
 * "How it is computed"), or about `budget` of them: for a batch of accounts at a time, their new
 * entries in one read, the domain's roll-forward from each account's saved state by UTC day and
 * every group, and one save; an account with more than a batch's entries in pieces of a batch, each
 * saved from the state the last left. Each entry is booked with the closed periods (`bookingOf`;
 * docs/revenue.md, "Closing a month"); when a close is recorded meanwhile the summary refuses the
 * saves booked without it, and the catch-up runs again with it.
 */
async function catchUp(
  summary: RevenueSummaryStore,
  account: string | null,
  closes: PeriodCloseStore | undefined,
  budget = Number.POSITIVE_INFINITY,
  batchEntries = BATCH_ENTRIES,
): Promise<RevenueCatchUp> {
  const latestOf = (closed: readonly PeriodClose[]) => closed[closed.length - 1]?.through.getTime() ?? null;
  for (;;) {
    const closed = (await closes?.listCloses()) ?? [];
    const done = await catchUpWith(summary, account, { closes, closed }, budget, batchEntries);
    if (latestOf((await closes?.listCloses()) ?? []) === latestOf(closed)) return done;
  }
}

/** The closes a catch-up books with: the store's, and those it listed. */
interface Closed {
  closes: PeriodCloseStore | undefined;
  closed: readonly PeriodClose[];
}

/** `catchUp` with the closes `closed`, read once. */
async function catchUpWith(
  summary: RevenueSummaryStore,
  account: string | null,
  closed: Closed,
  budget: number,
  batchEntries: number,
): Promise<RevenueCatchUp> {
  const done: RevenueCatchUp = { accounts: 0, entries: 0, more: false };
  let after: string | null = null;
  for (;;) {
    const stale = await summary.staleRevenue(account, after, PAGE);
    let batch: RevenueCheckpoint[] = [];
    let pending = 0;
    const flush = async () => {
      if (batch.length > 0) done.accounts += await catchUpBatch(summary, batch, closed);
      batch = [];
      pending = 0;
    };
    for (const listed of stale) {
      const left = budget - done.entries;
      if (left <= 0) {
        done.more = true;
        break;
      }
      const end = listed.seq ?? listed.throughSeq;
      const n = Math.min(end - listed.throughSeq, left);
      if (n < end - listed.throughSeq) done.more = true;
      const c = { ...listed, seq: listed.throughSeq + n };
      done.entries += n;
      if (n > batchEntries) {
        await flush();
        done.accounts += await catchUpPieces(summary, c, batchEntries, closed);
        continue;
      }
      if (pending + n > batchEntries) await flush();
      batch.push(c);
      pending += n;
    }
    await flush();
    if (done.more || stale.length < PAGE) return done;
    after = stale[stale.length - 1]!.userId;
  }
}

/** One account's entries after `c.throughSeq` up to `c.seq`, in pieces of a batch; answers the pieces saved. */
async function catchUpPieces(
  summary: RevenueSummaryStore,
  c: RevenueCheckpoint,
  size: number,
  closed: Closed,
): Promise<number> {
  const end = c.seq ?? c.throughSeq;
  let at = c;
  let saved = 0;
  const cuts = await closeCuts(closed.closes, closed.closed, [c.userId]);
  while (at.throughSeq < end) {
    const piece = { ...at, seq: Math.min(end, at.throughSeq + size) };
    const entries = await summary.revenueEntries([piece]);
    if (entries.length === 0) break;
    const save = summarize(piece, entries, await summary.grantGroups(paidGrantsOf(entries)), cuts);
    // Another report moved the checkpoint first (it adds the rest).
    if ((await summary.saveRevenue([save])) === 0) break;
    saved++;
    at = save.checkpoint;
  }
  return saved;
}

const paidGrantsOf = (entries: readonly JournalEntry[]) =>
  entries.flatMap((e) => (e.type === "add" && e.costBasis != null ? e.grants.map((g) => g.grantId) : []));

/** The new entries of the accounts of `batch` (each up to its `seq`), in one read and one save; answers the accounts saved. */
async function catchUpBatch(
  summary: RevenueSummaryStore,
  batch: readonly RevenueCheckpoint[],
  closed: Closed,
): Promise<number> {
  const cuts = await closeCuts(
    closed.closes,
    closed.closed,
    batch.map((c) => c.userId),
  );
  const entries = await summary.revenueEntries(batch);
  const byUser = new Map<string, JournalEntry[]>();
  for (const e of entries) {
    let mine = byUser.get(e.userId);
    if (mine === undefined) byUser.set(e.userId, (mine = []));
    mine.push(e);
  }
  const groups = await summary.grantGroups(paidGrantsOf(entries));
  const saves: RevenueSave[] = [];
  for (const c of batch) {
    const mine = byUser.get(c.userId);
    if (mine !== undefined && mine.length > 0) saves.push(summarize(c, mine, groups, cuts));
  }
  // Fewer saved than sent: another report added those accounts' entries first; the summary has them either way.
  return summary.saveRevenue(saves);
}

/**
 * What the summary gains from `entries`, the entries after checkpoint `c` (docs/revenue.md, "How
 * it is computed"): each entry's figures on the UTC day it is booked at (with the closed periods
 * `cuts`: `bookingOf`), whatever their order.
 */
function summarize(
  c: RevenueCheckpoint,
  entries: readonly JournalEntry[],
  groups: ReadonlyMap<string, GrantGroups>,
  cuts: readonly CloseCut[],
): RevenueSave {
  let minDay = Number.POSITIVE_INFINITY;
  let maxDay = Number.NEGATIVE_INFINITY;
  for (const e of entries) {
    const day = Math.floor(bookingOf(e, cuts).at / DAY) * DAY;
    minDay = Math.min(minDay, day);
    maxDay = Math.max(maxDay, day);
  }
  const throughSeq = entries[entries.length - 1]!.seq;
  const checkpoint = { userId: c.userId, throughSeq, state: null as string | null };
  const days: number[] = [];
  for (let d = minDay; d <= maxDay + DAY; d += DAY) days.push(d);
  const acc = new RevenueAccumulator(days, ["account", "source", "plan", "feature", "spender"]);
  const state = acc.addAccount(
    c.userId,
    entries,
    groups,
    c.state === null ? emptyRevenueState() : parseRevenueState(c.state),
    cuts,
  );
  checkpoint.state = revenueStateText(state);
  const rows: RevenueDayRow[] = [];
  const deferred = new Map<string, { currency: string; source: string | null; plan: string | null; delta: number }>();
  for (const { key, window, sums } of acc.figures()) {
    rows.push({
      day: days[window]!,
      currency: key.currency,
      source: key.source,
      plan: key.plan,
      feature: key.feature,
      spender: key.spender,
      paid: sums.paid,
      recognized: sums.recognized,
      breakage: sums.breakage,
      refunds: sums.refunds,
      unbilled: sums.unbilledCredits,
      catchUp: key.catchUp,
    });
    if (key.currency === null) continue;
    const id = JSON.stringify([key.currency, key.source, key.plan]);
    const d = deferred.get(id) ?? { currency: key.currency, source: key.source, plan: key.plan, delta: 0 };
    d.delta += sums.paid - sums.recognized - sums.breakage - sums.refunds;
    deferred.set(id, d);
  }
  const latestClose = cuts[cuts.length - 1]?.through ?? null;
  return { fromSeq: c.throughSeq, checkpoint, days: rows, deferred: [...deferred.values()], latestClose };
}

/**
 * The summary's figures and deferred values into `sum`: a window's figures are its days'; deferred
 * at `boundaries[i]` is deferred now less what the days from it on changed (docs/revenue.md, "How
 * it is computed").
 */
async function addSummary(
  sum: RevenueAccumulator,
  read: Awaited<ReturnType<RevenueSummaryStore["readRevenue"]>>,
  points: number,
  pause: () => Promise<void> | void,
): Promise<void> {
  const windows = points - 1;
  type Groups = { currency: string | null; account: string | null; source: string | null; plan: string | null };
  const keyOf = (r: Groups, e?: { feature: string | null; spender: string | null; catchUp: number | null }): Key => ({
    currency: r.currency,
    account: r.account ?? "",
    source: r.source,
    plan: r.plan,
    feature: e?.feature ?? null,
    spender: e?.spender ?? null,
    unit: null,
    // Deferred is the ordinary rows' (docs/revenue.md, "Closing a month").
    catchUp: e?.catchUp ?? null,
  });
  const deferredId = (r: Groups) => JSON.stringify([r.currency, r.account, r.source, r.plan]);
  /** Per deferred group: the change of deferred in each window (index `windows`: after the last). */
  const change = new Map<string, { key: Key; now: number; by: number[] }>();
  const group = (r: Groups) => {
    const id = deferredId(r);
    let g = change.get(id);
    if (g === undefined) {
      checkRevenueCells(change.size + 1, windows, sum.maxCells);
      g = { key: keyOf(r), now: 0, by: new Array<number>(points).fill(0) };
      change.set(id, g);
    }
    return g;
  };
  for (const r of read.buckets) {
    await pause();
    if (r.window < windows)
      sum.addFigures(keyOf(r, r), r.window, {
        paid: r.paid,
        recognized: r.recognized,
        breakage: r.breakage,
        refunds: r.refunds,
        unbilledCredits: r.unbilled,
      });
    if (r.currency !== null) group(r).by[r.window]! += r.paid - r.recognized - r.breakage - r.refunds;
  }
  for (const d of read.deferred) group(d).now += d.deferred;
  for (const { key, now, by } of change.values()) {
    await pause();
    let v = now;
    for (let i = windows; i >= 0; i--) {
      v -= by[i]!;
      sum.addDeferred(key, i, v);
    }
  }
}

/**
 * The audit of an account's revenue summary (docs/revenue.md, "Audit"): what the store keeps of
 * `userId` — its days by every group, its deferred values, its checkpoint and saved roll-forward
 * state — against the journal's own roll-forward of the same entries (the first up to the
 * checkpoint), row by row. Reads the account's journal from its first entry (`entries` when they
 * start there). Not checked: an account the summary has not read yet, or whose first entries are
 * archived (the summary keeps figures of entries no longer in the journal).
 */
export async function revenueSummaryProblems(
  db: DbManager,
  userId: string,
  entries: readonly JournalEntry[],
): Promise<string[]> {
  const summary = revenueSummaryOf(db);
  if (summary === undefined) return [];
  const saved = await summary.revenueSummaryOf(userId);
  if (saved === null) return [];
  const through = saved.checkpoint.throughSeq;
  // Entries the audit read, unless they start later or end before the summary's checkpoint (a
  // report or the worker's round caught up since).
  const reaches = entries[0]?.seq === 1 && entries[entries.length - 1]!.seq >= through;
  const journal = reaches ? entries : await journalAfter(db, userId);
  if (journal.length > 0 && journal[0]!.seq !== 1) return [];
  const mine = journal.filter((e) => e.seq <= through);
  const problems: string[] = [];
  const say = (what: string) => problems.push(`revenue summary of ${userId}: ${what}`);
  if (mine.length === 0 || mine[mine.length - 1]!.seq !== through) {
    say(`it has read the journal through entry ${through}, which the journal does not have`);
    return problems;
  }
  const replay = summarize(
    { userId, throughSeq: 0, state: null, seq: through },
    mine,
    await summary.grantGroups(paidGrantsOf(mine)),
    await accountCloseCuts(db, userId),
  );
  if (canonicalState(saved.checkpoint.state) !== canonicalState(replay.checkpoint.state))
    say(`its saved roll-forward state after entry ${through} is not the journal's`);
  const figures = ["paid", "recognized", "breakage", "refunds", "unbilled"] as const;
  const compare = (what: string, kept: readonly RevenueDayRow[], rolled: readonly RevenueDayRow[], fine: boolean) => {
    const keyOf = (r: RevenueDayRow) =>
      [dayText(r.day), r.currency ?? "(no currency)", r.source ?? "(no source)"]
        .concat(r.plan === null ? [] : [`plan ${r.plan}`])
        .concat(fine ? [r.feature ?? "(no feature)", r.spender ?? "(no spender)"] : [])
        .concat(r.catchUp === null ? [] : [`catch-up of the close through ${new Date(r.catchUp).toISOString()}`])
        .join(", ");
    const sums = (rows: readonly RevenueDayRow[]) => {
      const m = new Map<string, number[]>();
      for (const r of rows) {
        const k = keyOf(r);
        const v = m.get(k) ?? figures.map(() => 0);
        figures.forEach((f, i) => (v[i]! += r[f]));
        m.set(k, v);
      }
      return m;
    };
    const a = sums(kept);
    const b = sums(rolled);
    let told = 0;
    for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
      const x = a.get(k) ?? figures.map(() => 0);
      const y = b.get(k) ?? figures.map(() => 0);
      figures.forEach((f, i) => {
        if (x[i] !== y[i] && told++ < 5) say(`${what}, ${k}: ${f} ${x[i]} in the summary, ${y[i]} in the journal`);
      });
    }
  };
  compare("day by feature and spender", saved.split, replay.days, true);
  compare("day", saved.days, replay.days, false);
  const deferred = (rows: readonly { currency: string; source: string | null; plan: string | null; v: number }[]) => {
    const m = new Map<string, number>();
    for (const r of rows) {
      const key = `${r.currency}, ${r.source ?? "(no source)"}${r.plan === null ? "" : `, plan ${r.plan}`}`;
      m.set(key, (m.get(key) ?? 0) + r.v);
    }
    return m;
  };
  const keptDeferred = deferred(saved.deferred.map((d) => ({ ...d, v: d.deferred })));
  const rolledDeferred = deferred(replay.deferred.map((d) => ({ ...d, v: d.delta })));
  for (const k of [...new Set([...keptDeferred.keys(), ...rolledDeferred.keys()])].sort()) {
    const x = keptDeferred.get(k) ?? 0;
    const y = rolledDeferred.get(k) ?? 0;
    if (x !== y) say(`deferred in ${k}: ${x} in the summary, ${y} in the journal`);
  }
  return problems;
}

const dayText = (ms: number | null) => (ms === null ? "none" : new Date(ms).toISOString().slice(0, 10));

/** A saved state's text with its lots, payments and holds in id order (the order of a Map's insertions is not part of it). */
function canonicalState(text: string | null): string | null {
  if (text === null) return null;
  const raw = JSON.parse(text) as Record<string, [string, ...unknown[]][]>;
  const byId = (xs: [string, ...unknown[]][]) => [...xs].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return JSON.stringify(
    Object.fromEntries(
      Object.keys(raw)
        .sort()
        .map((k) => [k, byId(raw[k]!)]),
    ),
  );
}

/**
 * The account's marks of the closed periods (docs/revenue.md, "Closing a month") against its
 * journal: a mark is at most the account's last seq, and the entry it names is in the journal
 * read (unless the journal read starts after it: a checkpoint, or entries archived).
 */
export async function periodCloseProblems(
  db: DbManager,
  userId: string,
  entries: readonly JournalEntry[],
): Promise<string[]> {
  const closes = periodClosesOf(db);
  if (closes === undefined) return [];
  const closed = new Set((await closes.listCloses()).map((c) => c.through.getTime()));
  const marks = (await closes.marks([userId])).filter((m) => closed.has(m.through.getTime()));
  if (marks.length === 0) return [];
  const seq = (await db.getAccount(userId))?.seq ?? 0;
  const first = entries[0]?.seq ?? Number.POSITIVE_INFINITY;
  const seqs = new Set(entries.map((e) => e.seq));
  const problems: string[] = [];
  for (const m of marks) {
    const at = `the close through ${m.through.toISOString()} marked ${userId} at entry ${m.seq}`;
    if (m.seq > seq) problems.push(`${at}, after the account's last (${seq})`);
    else if (m.seq >= first && m.seq > 0 && !seqs.has(m.seq)) problems.push(`${at}, which the journal does not have`);
  }
  return problems;
}

/**
 * The revenue module's check in `audit()` (docs/revenue.md, "Audit"): cost bases and the revenue
 * roll-forward of the journal read, the store's revenue summary against it, and the account's
 * marks of the closed periods.
 */
export const revenueAudit: AuditCheck = async (db, user, { entries, grants, reservations }) => [
  ...revenueProblems(user, entries, { grants, reservations }),
  ...(await revenueSummaryProblems(db, user, entries)),
  ...(await periodCloseProblems(db, user, entries)),
];

/** Every account's journal seq now, page by page (for a store that marks a close from outside: the in-memory one). */
async function* accountSeqs(db: DbManager): AsyncGenerator<{ userId: string; seq: number }> {
  if (db.listAccountIds === undefined)
    throw new ConfigurationError(
      `[credit-management] the ${db.name} store cannot list its accounts (DbManager.listAccountIds): it cannot close a period`,
    );
  let after: string | null = null;
  for (;;) {
    const ids = await db.listAccountIds(after, PAGE);
    for (const userId of ids) yield { userId, seq: (await db.getAccount(userId))?.seq ?? 0 };
    if (ids.length < PAGE) return;
    after = ids[ids.length - 1]!;
  }
}

/** The store's closed periods, or a `ConfigurationError` where it keeps none. */
function closesOf(db: DbManager): PeriodCloseStore {
  const closes = periodClosesOf(db);
  if (closes === undefined)
    throw new ConfigurationError(
      `[credit-management] the ${db.name} store keeps no closed periods (the revenue module's store part: docs/revenue.md, "Closing a month")`,
    );
  return closes;
}

/**
 * `credits.closePeriod(through)` (docs/revenue.md, "Closing a month"): records a close through
 * `through` — every account's journal seq now (its mark), then the close — after which a revenue
 * report of any window ending at or before `through` reads the same forever, and what is recorded
 * later with a time before `through` is booked at `through` as catch-up. `through` must not be
 * after `now` and must be after the latest close's (`ValidationError`; of two racing closes, the
 * second is a `ConflictError`).
 */
export async function closePeriod(db: DbManager, through: Date | string, now: number): Promise<PeriodClose> {
  const input = parse(ClosePeriodInput, { through }, "input");
  const refuse = (message: string) =>
    new ValidationError(`Invalid input.through: ${message}`, [{ path: "through", message }]);
  if (input.through.getTime() > now) throw refuse("must not be in the future");
  const closes = closesOf(db);
  const closed = await closes.listCloses();
  const latest = closed[closed.length - 1];
  if (latest !== undefined && input.through.getTime() <= latest.through.getTime())
    throw refuse(`must be after the latest close's through, ${latest.through.toISOString()}`);
  return closes.recordClose(input.through, new Date(now), () => accountSeqs(db));
}

/** `credits.listPeriodCloses()` (docs/revenue.md, "Closing a month"): every close, by `through` ascending. */
export function listPeriodCloses(db: DbManager): Promise<PeriodClose[]> {
  return closesOf(db).listCloses();
}
