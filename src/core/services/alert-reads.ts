/**
 * What an alert evaluation reads beside its unit of work (docs/customer-state.md, "Alerts"), where
 * the rules of src/core/domain/alerts.ts ask for it: the account's subscription cycle, for the
 * `subscription_period` thresholds, and the spend already captured in the current window of each
 * `period_spend` threshold whose count starts now (set by `setAlerts`, applied for the first time,
 * or its subscription cycle moved). Most units of work read nothing here: their thresholds all
 * have a mark and the cycle is stored.
 */
import type { DbManager } from "../db/types.js";
import type { SubscriptionStore } from "../db/types-subscriptions.js";
import { countsStarting, needsCycle, SPEND_ENTRY_TYPES, spentIn, type AlertInputs } from "../domain/alerts.js";
import type { Account, AlertThreshold, JournalEntry, LimitCycle } from "../models/index.js";

/** Journal entries read a page at a time. */
const PAGE = 200;

/**
 * The inputs of the evaluation of `account` (the unit of work's copy, after its change) at `now`.
 * `loadedSeq`: the seq the unit of work loaded (the journal is read up to it: the change's own
 * entries are counted by the evaluation). `cycle`: the subscription's, when the unit of work knows
 * it (a subscription period's). `recount`: the thresholds were just set, every `period_spend` one
 * counts its window again.
 */
export async function alertInputs(
  db: DbManager,
  account: Account,
  loadedSeq: number,
  defaults: readonly AlertThreshold[] | undefined,
  now: Date,
  options: { cycle?: LimitCycle | null | undefined; recount?: boolean } = {},
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
  const entries = await entriesSince(db, account.userId, loadedSeq, starting.from);
  inputs.spentBefore = spentIn(
    starting.thresholds,
    entries,
    at,
    cycle !== undefined ? cycle : (account.alert?.cycle ?? null),
  );
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
 * The account's spend entries up to `seq`, newest first, back to the first one recorded before
 * `from` (ms): one window of one account. An entry counts in a window by its `occurredAt`, never
 * after its `createdAt`, and the entries of an account are recorded in seq order, so none older
 * can count. Entries up to the seq the unit of work loaded are written and never change: reading
 * them beside it is safe (as `reverseCharge` does, src/core/services/reversals.ts).
 */
async function entriesSince(db: DbManager, userId: string, seq: number, from: number): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  let before = seq + 1;
  for (;;) {
    const page = await db.listJournal(userId, {
      order: "desc",
      beforeSeq: before,
      limit: PAGE,
      types: SPEND_ENTRY_TYPES,
    });
    for (const e of page) {
      if (e.createdAt.getTime() < from) return out;
      out.push(e);
    }
    const last = page[page.length - 1];
    if (page.length < PAGE || last === undefined) return out;
    before = last.seq;
  }
}
