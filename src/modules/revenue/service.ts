import type { DbManager } from "../../core/db/types.js";
import {
  revenueSummaryOf,
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
  bookedAt,
  type Key,
} from "./rules.js";
import { nextWindowStart, usageBoundaries, windowStart } from "../../core/domain/windows.js";
import { ConfigurationError, ValidationError } from "../../core/errors.js";
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
  const one = async (userId: string) => {
    const groups = groupBy.includes("source") || groupBy.includes("plan") ? await groupsOf(db, userId) : undefined;
    // Page by page, each from the state the last left, with a pause between.
    let state = emptyRevenueState();
    for await (const page of journalPages(db, userId)) {
      state = sum.addAccount(userId, page, groups, state);
      await pause();
    }
  };
  const summary = revenueSummaryOf(db);
  if (summary !== undefined && options.path !== "replay" && summaryAnswers(groupBy, boundaries)) {
    await catchUp(summary, q.account ?? null);
    const read = await summary.readRevenue({ account: q.account ?? null, boundaries, groupBy });
    await addSummary(sum, read, boundaries.length, pause);
  } else if (q.account !== undefined) await one(q.account);
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
  return catchUp(summary, options.userId ?? null, options.maxEntries, options.batchEntries);
}

/**
 * Adds to the store's revenue summary every entry written since it last read them (docs/revenue.md,
 * "How it is computed"), or about `budget` of them: for a batch of accounts at a time, their new
 * entries in one read, the domain's roll-forward from each account's saved state by UTC day and
 * every group, and one save; an account with more than a batch's entries in pieces of a batch, each
 * saved from the state the last left.
 */
async function catchUp(
  summary: RevenueSummaryStore,
  account: string | null,
  budget = Number.POSITIVE_INFINITY,
  batchEntries = BATCH_ENTRIES,
): Promise<RevenueCatchUp> {
  const done: RevenueCatchUp = { accounts: 0, entries: 0, more: false };
  let after: string | null = null;
  for (;;) {
    const stale = await summary.staleRevenue(account, after, PAGE);
    let batch: RevenueCheckpoint[] = [];
    let pending = 0;
    const flush = async () => {
      if (batch.length > 0) done.accounts += await catchUpBatch(summary, batch);
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
        done.accounts += await catchUpPieces(summary, c, batchEntries);
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
async function catchUpPieces(summary: RevenueSummaryStore, c: RevenueCheckpoint, size: number): Promise<number> {
  const end = c.seq ?? c.throughSeq;
  let at = c;
  let saved = 0;
  while (at.throughSeq < end) {
    const piece = { ...at, seq: Math.min(end, at.throughSeq + size) };
    const entries = await summary.revenueEntries([piece]);
    if (entries.length === 0) break;
    const save = summarize(piece, entries, await summary.grantGroups(paidGrantsOf(entries)));
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
async function catchUpBatch(summary: RevenueSummaryStore, batch: readonly RevenueCheckpoint[]): Promise<number> {
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
    if (mine !== undefined && mine.length > 0) saves.push(summarize(c, mine, groups));
  }
  // Fewer saved than sent: another report added those accounts' entries first; the summary has them either way.
  return summary.saveRevenue(saves);
}

/**
 * What the summary gains from `entries`, the entries after checkpoint `c` (docs/revenue.md, "How
 * it is computed"): each entry's figures on the UTC day it is booked at, whatever their order.
 */
function summarize(
  c: RevenueCheckpoint,
  entries: readonly JournalEntry[],
  groups: ReadonlyMap<string, GrantGroups>,
): RevenueSave {
  let minDay = Number.POSITIVE_INFINITY;
  let maxDay = Number.NEGATIVE_INFINITY;
  for (const e of entries) {
    const day = Math.floor(bookedAt(e) / DAY) * DAY;
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
    });
    if (key.currency === null) continue;
    const id = JSON.stringify([key.currency, key.source, key.plan]);
    const d = deferred.get(id) ?? { currency: key.currency, source: key.source, plan: key.plan, delta: 0 };
    d.delta += sums.paid - sums.recognized - sums.breakage - sums.refunds;
    deferred.set(id, d);
  }
  return { fromSeq: c.throughSeq, checkpoint, days: rows, deferred: [...deferred.values()] };
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
  const keyOf = (r: Groups, e?: { feature: string | null; spender: string | null }): Key => ({
    currency: r.currency,
    account: r.account ?? "",
    source: r.source,
    plan: r.plan,
    feature: e?.feature ?? null,
    spender: e?.spender ?? null,
    unit: null,
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
  );
  if (canonicalState(saved.checkpoint.state) !== canonicalState(replay.checkpoint.state))
    say(`its saved roll-forward state after entry ${through} is not the journal's`);
  const figures = ["paid", "recognized", "breakage", "refunds", "unbilled"] as const;
  const compare = (what: string, kept: readonly RevenueDayRow[], rolled: readonly RevenueDayRow[], fine: boolean) => {
    const keyOf = (r: RevenueDayRow) =>
      [dayText(r.day), r.currency ?? "(no currency)", r.source ?? "(no source)"]
        .concat(r.plan === null ? [] : [`plan ${r.plan}`])
        .concat(fine ? [r.feature ?? "(no feature)", r.spender ?? "(no spender)"] : [])
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
 * The revenue module's check in `audit()` (docs/revenue.md, "Audit"): cost bases and the revenue
 * roll-forward of the journal read, then the store's revenue summary against it.
 */
export const revenueAudit: AuditCheck = async (db, user, { entries, grants, reservations }) => [
  ...revenueProblems(user, entries, { grants, reservations }),
  ...(await revenueSummaryProblems(db, user, entries)),
];
