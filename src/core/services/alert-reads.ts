/**
 * What an alert evaluation reads beside its unit of work (docs/customer-state.md, "Alerts"), where
 * the rules of src/core/domain/alerts.ts ask for it: the account's subscription cycle, for the
 * `subscription_period` thresholds, and the spend already captured in the current window of each
 * `period_spend` threshold whose count starts now (set by `setAlerts`, applied for the first time,
 * or its subscription cycle moved). Most units of work read nothing here: their thresholds all
 * have a mark and the cycle is stored.
 *
 * A window's spend is recounted outside the unit of work, never under the account's lock: the unit
 * that needs it throws `RecountNeeded` (nothing written), `recountSpend` asks the store's own usage
 * aggregation once for every window (`DbManager.usage`, docs/usage.md: the store sums it, off the
 * event loop on SQLite), up to the account's seq then, and the unit runs again with it, adding the
 * few entries written since.
 */
import type { DbManager } from "../db/types.js";
import type { SubscriptionStore } from "../db/types-subscriptions.js";
import {
  countsStarting,
  needsCycle,
  SPEND_ENTRY_TYPES,
  spendOfEntry,
  spendWindow,
  spentIn,
  type AlertInputs,
  type PeriodSpend,
} from "../domain/alerts.js";
import { CLOCK_SKEW_MS } from "../domain/late-usage.js";
import { UsageAccumulator, type UsageBucket, type UsageScan } from "../domain/usage.js";
import type { Account, AlertThreshold, JournalEntry, LimitCycle } from "../models/index.js";
import { journalPages } from "./history.js";

/** Journal entries read a page at a time. */
const PAGE = 200;

/**
 * The spend of `period_spend` windows counted beside the unit of work (`recountSpend`): each
 * threshold's window start and the spend captured in it by the account's entries up to `seq`.
 */
export interface SpendRecount {
  seq: number;
  windows: ReadonlyMap<string, { start: number; spent: number }>;
}

/**
 * Thrown inside a unit of work (which then writes nothing) when a `period_spend` threshold's count
 * starts and no recount made beside it covers its window: the caller recounts (`recountSpend`)
 * outside the unit of work, then runs it again (`withRecounts`).
 */
export class RecountNeeded extends Error {
  constructor(
    readonly thresholds: readonly PeriodSpend[],
    readonly cycle: LimitCycle | null,
    readonly at: number,
  ) {
    super("[credit-management] a period_spend window must be counted beside the unit of work");
    this.name = "RecountNeeded";
  }
}

/** Times a unit of work runs again for a recount before it counts in the unit itself. */
export const RECOUNTS = 3;

/**
 * Runs `attempt` (a unit of work that evaluates alerts), recounting beside it each time it throws
 * `RecountNeeded`; its last try (`inline`) counts what is still missing inside the unit itself, so
 * that an account whose windows keep moving under the recount (a window ending at that instant)
 * is still evaluated.
 */
export async function withRecounts<T>(
  db: DbManager,
  userId: string,
  attempt: (recount: SpendRecount | undefined, inline: boolean) => Promise<T>,
): Promise<T> {
  let recount: SpendRecount | undefined;
  for (let i = 0; ; i++) {
    try {
      return await attempt(recount, i === RECOUNTS);
    } catch (error) {
      if (!(error instanceof RecountNeeded) || i === RECOUNTS) throw error;
      recount = await recountSpend(db, userId, error.thresholds, error.cycle, error.at);
    }
  }
}

/** Buckets a usage scan may answer: every window and group of a recount (never cut). */
const ALL_BUCKETS = 2 ** 31 - 2;

/**
 * The spend captured in each of `thresholds`' windows at `at` (cycle: the subscription's), by the
 * account's entries up to its seq now: one usage scan of the store for every window
 * (`DbManager.usage`, by the rules of usage: `spend` credits, by each part's spender and feature),
 * or for a store without one, its journal summed here by the same rules. Made outside any unit of
 * work: the account stays free meanwhile.
 */
export async function recountSpend(
  db: DbManager,
  userId: string,
  thresholds: readonly PeriodSpend[],
  cycle: LimitCycle | null,
  at: number,
): Promise<SpendRecount> {
  const account = await db.getAccount(userId);
  const seq = account?.seq ?? 0;
  const spans = new Map<string, { start: number; end: number }>();
  for (const t of thresholds) {
    const w = spendWindow(t, at, cycle);
    if (w !== null) spans.set(t.id, w);
  }
  const windows = new Map<string, { start: number; spent: number }>();
  for (const [id, w] of spans) windows.set(id, { start: w.start, spent: 0 });
  if (seq === 0 || spans.size === 0) return { seq, windows };
  if (account?.units != null && Object.keys(account.units).length > 0) {
    // Usage adds every unit up (docs/units.md): an account holding another unit than the default
    // one has each window counted from its journal, in the threshold's unit (`spendOfEntry`).
    const from = Math.min(...[...spans.values()].map((w) => w.start));
    const counted = spentIn(thresholds, await entriesSince(db, userId, seq, from), at, cycle);
    for (const [id, w] of spans) windows.set(id, { start: w.start, spent: counted.get(id) ?? 0 });
    return { seq, windows };
  }
  const boundaries = [...new Set([...spans.values()].flatMap((w) => [w.start, w.end]))].sort((a, b) => a - b);
  const groupBy: ("spender" | "feature")[] = [];
  if (thresholds.some((t) => t.spender !== undefined)) groupBy.push("spender");
  if (thresholds.some((t) => t.feature !== undefined)) groupBy.push("feature");
  const scan: UsageScan = {
    account: userId,
    from: new Date(boundaries[0]!),
    to: new Date(boundaries[boundaries.length - 1]!),
    interval: null,
    timeZone: "UTC",
    groupBy,
    kinds: ["spend"],
    orderBy: "start",
    limit: ALL_BUCKETS,
    boundaries,
    throughSeq: seq,
  };
  let buckets: UsageBucket[];
  if (db.usage !== undefined) buckets = await db.usage(scan);
  else {
    const sum = new UsageAccumulator(scan);
    for await (const page of journalPages(db, userId)) {
      for (const e of page) sum.add(userId, e);
      if (page.length > 0 && page[page.length - 1]!.seq >= seq) break;
    }
    buckets = sum.result();
  }
  for (const t of thresholds) {
    const w = spans.get(t.id);
    if (w === undefined) continue;
    let spent = 0;
    for (const b of buckets) {
      if (boundaries[b.window]! < w.start || boundaries[b.window + 1]! > w.end) continue;
      if (b.unit != null) continue; // alerts watch the default unit (docs/units.md)
      if (t.spender !== undefined && b.groups.spender !== t.spender) continue;
      if (t.feature !== undefined && b.groups.feature !== t.feature) continue;
      spent += b.credits;
    }
    windows.set(t.id, { start: w.start, spent });
  }
  return { seq, windows };
}

/**
 * The inputs of the evaluation of `account` (the unit of work's copy, after its change) at `now`.
 * `loadedSeq`: the seq the unit of work loaded (the journal is read up to it: the change's own
 * entries are counted by the evaluation). `cycle`: the subscription's, when the unit of work knows
 * it (a subscription period's). `recount`: the thresholds were just set, every `period_spend` one
 * counts its window again. `counted`: a recount made beside the unit of work (`recountSpend`); a
 * window it does not cover throws `RecountNeeded`, or with `inline` is counted here from the journal.
 */
export async function alertInputs(
  db: DbManager,
  account: Account,
  loadedSeq: number,
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
  options: {
    cycle?: LimitCycle | null | undefined;
    recount?: boolean;
    counted?: SpendRecount | undefined;
    inline?: boolean;
  } = {},
): Promise<AlertInputs> {
  // An account never changed is evaluated by nothing (evaluateThresholds).
  if (account.seq === 0) return {};
  const recount = options.recount ?? false;
  let cycle = options.cycle;
  if (cycle === undefined && needsCycle(account, defaults, recount))
    cycle = await subscriptionCycle(db, account.userId);
  const inputs: AlertInputs = { cycle };
  // Nothing was recorded before this change: no spend to read.
  if (loadedSeq === 0) return inputs;
  const at = now.getTime();
  const starting = countsStarting(account, defaults, at, inputs, recount);
  if (starting === null) return inputs;
  const windowCycle = cycle !== undefined ? cycle : (account.alert?.cycle ?? null);
  const counted = options.counted;
  const spent = new Map<string, number>();
  const missing: PeriodSpend[] = [];
  for (const t of starting.thresholds) {
    const c = counted?.windows.get(t.id);
    const w = spendWindow(t, at, windowCycle);
    if (counted !== undefined && c !== undefined && w !== null && c.start === w.start && counted.seq <= loadedSeq)
      spent.set(t.id, c.spent);
    else missing.push(t);
  }
  if (missing.length > 0 && options.inline !== true) throw new RecountNeeded(missing, windowCycle, at);
  if (missing.length > 0) {
    const from = Math.min(...missing.map((t) => spendWindow(t, at, windowCycle)!.start));
    const entries = await entriesSince(db, account.userId, loadedSeq, from);
    for (const [id, n] of spentIn(missing, entries, at, windowCycle)) spent.set(id, n);
  }
  if (counted !== undefined && counted.seq < loadedSeq && spent.size > missing.length) {
    // The entries written since the recount, counted as a change's are.
    const since = await entriesAfter(db, account.userId, counted.seq, loadedSeq);
    for (const t of starting.thresholds) {
      const w = spendWindow(t, at, windowCycle);
      if (missing.includes(t) || w === null) continue;
      let n = spent.get(t.id) ?? 0;
      for (const e of since) n += spendOfEntry(t, e, w);
      spent.set(t.id, n);
    }
  }
  for (const [id, n] of spent) spent.set(id, Math.max(0, n));
  inputs.spentBefore = spent;
  return inputs;
}
/** The cycle of the account's active subscription; null without one (or a store without subscriptions). */
async function subscriptionCycle(db: DbManager, userId: string): Promise<LimitCycle | null> {
  if (db.capabilities.parts?.subscriptions === false) return null;
  const store = db as Partial<SubscriptionStore>;
  const s = store.getActiveSubscription === undefined ? null : await store.getActiveSubscription(userId);
  return s === null ? null : { anchorAt: s.anchorAt.getTime(), billingPeriod: s.billingPeriod };
}

/**
 * The account's spend entries up to `seq`, newest first, back to the first one recorded more than
 * `CLOCK_SKEW_MS` before `from` (ms): one window of one account, and the entries around its start
 * (the caller counts each by the window). An entry counts in a window by its `occurredAt`, never
 * after its `createdAt`. The entries of an account are recorded in seq order, but each is dated by
 * the clock of the process that wrote it: a process whose clock runs behind another's writes a
 * later entry with an earlier date, so the walk goes on past `from` by the clocks' skew the library
 * accepts (docs/customer-state.md, "The guarantees"). Entries up to the seq the unit of work loaded are
 * written and never change: reading them beside it is safe (as `reverseCharge` does,
 * src/core/services/reversals.ts).
 */
async function entriesSince(db: DbManager, userId: string, seq: number, from: number): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  const stop = from - CLOCK_SKEW_MS;
  let before = seq + 1;
  for (;;) {
    const page = await db.listJournal(userId, {
      order: "desc",
      beforeSeq: before,
      limit: PAGE,
      types: SPEND_ENTRY_TYPES,
    });
    for (const e of page) {
      if (e.createdAt.getTime() < stop) return out;
      out.push(e);
    }
    const last = page[page.length - 1];
    if (page.length < PAGE || last === undefined) return out;
    before = last.seq;
  }
}

/** The account's spend entries with `after < seq <= upTo`, oldest first. */
async function entriesAfter(db: DbManager, userId: string, after: number, upTo: number): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  for (let from = after; from < upTo;) {
    const page = await db.listJournal(userId, { order: "asc", afterSeq: from, limit: PAGE, types: SPEND_ENTRY_TYPES });
    for (const e of page) if (e.seq <= upTo) out.push(e);
    const last = page[page.length - 1];
    if (page.length < PAGE || last === undefined) return out;
    from = last.seq;
  }
  return out;
}
