import { ConflictError, IdempotencyConflictError, ValidationError } from "../errors.js";
import type { CostBasis } from "../models/cost-basis.js";
import type { GrantScope } from "../models/limits.js";
import {
  allowanceKey,
  allowanceUnit,
  type Plan,
  type Subscription,
  type SubscriptionIntent,
} from "../models/subscriptions.js";
import type { AccountWork, EntryMeta } from "./account-work.js";
import { fingerprint } from "./hash.js";
import { allocationExpiry, fractionLeft, periodAt, periodIndexAt } from "./periods.js";
import { basesOfPrice } from "./cost-basis.js";
import { expiriesIn, rolloverAmount, rolloverCarry, type PeriodEndExpiry } from "./rollover.js";

/**
 * The subscription rules of docs/subscriptions.md, once, as pure functions of the subscription,
 * the plans involved and the clock (`now`). Each transition — subscribe, renew, change plan (each
 * mode), cancel, resume — returns the next state of the subscription, carrying in its `intent`
 * the account work the change owes: what to allocate, roll over, prorate, expire, and the events
 * to write. The subscription service reads and writes (guarded by `version`), and carries the
 * intent out with `applyIntent` in one keyed unit of work; nothing here does I/O.
 *
 * Preconditions a transition checks are typed errors: `ConflictError` (already on the plan, an
 * inactive plan) and `ValidationError` (a mode that does not apply).
 */

/** A period: `[start, end)`. */
interface PeriodBounds {
  start: Date;
  end: Date;
}

/** The allocation of an intent, when not null. */
export type Allocation = NonNullable<SubscriptionIntent["allocate"]>;
/** The proration of an intent, when not null. */
export type Proration = NonNullable<SubscriptionIntent["prorate"]>;
type LifecycleEvent = NonNullable<SubscriptionIntent["events"]>[number];

// ---------------------------------------------------------------------------------------------
// Amounts.

/** What a period is on of each allowance (`Subscription.periodAllowances`). */
export type PeriodAllowance = NonNullable<Subscription["periodAllowances"]>[number];

/** Which allowance: its scope and unit, each only when it has one (as stored). */
function which(a: { scope?: GrantScope | null | undefined; unit?: string | null | undefined }): {
  scope?: GrantScope;
  unit?: string;
} {
  const unit = allowanceUnit(a);
  return { ...(a.scope == null ? {} : { scope: a.scope }), ...(unit === null ? {} : { unit }) };
}

/** A plan's allowances as a period's (`Subscription.periodAllowances`): scope, unit and credits. */
export function planAllowances(plan: Pick<Plan, "allowances">): PeriodAllowance[] {
  return (plan.allowances ?? []).map((a) => ({ ...which(a), credits: a.credits }));
}

/** A plan's price, where revenue needs one (docs/revenue.md, "Subscriptions"): absent on plans built without it. */
type Priced = Partial<Pick<Plan, "price" | "currency">>;

/**
 * A period's allocation (docs/subscriptions.md, "Allocation"): the plan's `creditsPerPeriod` and
 * each of its allowances ("Allowances"), expiring `validityDays` after the period's start or at
 * its end. None for a pay-as-you-go plan (0 credits, no allowances), nor when it would be born
 * expired (a period caught up late: nobody could use it). A plan with a price sells them for it:
 * `price`, the cost basis of their grants (docs/revenue.md, "Subscriptions").
 */
export function allocation(
  plan: Pick<Plan, "creditsPerPeriod" | "validityDays" | "allowances"> & Priced,
  period: PeriodBounds,
  now: Date,
): Allocation | null {
  const allowances = (plan.allowances ?? []).map((a) => ({ ...which(a), amount: a.credits }));
  if (plan.creditsPerPeriod === 0 && allowances.length === 0) return null;
  const expiresAt = allocationExpiry(period, plan.validityDays);
  if (expiresAt.getTime() <= now.getTime()) return null;
  const price = plan.price ?? 0;
  return {
    amount: plan.creditsPerPeriod,
    expiresAt: expiresAt.getTime(),
    ...(allowances.length === 0 ? {} : { allowances }),
    ...(price > 0 && plan.currency !== undefined ? { price: { amount: price, currency: plan.currency } } : {}),
  };
}

/** What an allocation gave each allowance, as a period's allowances (none: `[]`). */
function allocatedAllowances(a: Allocation | null): PeriodAllowance[] {
  return (a?.allowances ?? []).map((x) => ({ ...which(x), credits: x.amount }));
}

/**
 * The prorated difference of a plan change (docs/subscriptions.md, "Changing plans"):
 * `trunc((to − from) × fractionLeft)`, toward zero, so it never exceeds the plan difference in
 * either direction. `fractionLeft` is the share of the period still ahead, in [0, 1].
 */
export function prorate(from: number, to: number, fractionLeft: number): number {
  return Math.trunc((to - from) * fractionLeft) + 0; // + 0: never -0
}

/**
 * What a change to `plan` now owes the current period, prorated against what the period is on
 * (`periodCredits`: its allocation, or the plan of an earlier prorated change): `delta` > 0 is a
 * grant expiring like the new plan's allocation for this period; < 0 removes up to that much from
 * the period's unspent, unheld credits. An upgrade whose grant would be born expired (the new
 * plan's `validityDays` already over) adds nothing; a downgrade still removes.
 */
export function proration(
  periodCredits: number,
  plan: Pick<Plan, "creditsPerPeriod" | "validityDays" | "allowances"> & Priced,
  period: PeriodBounds,
  now: Date,
  periodAllowances: readonly PeriodAllowance[] = [],
  periodPrice: Priced | null = null,
): Proration {
  const fraction = fractionLeft(period.start, period.end, now);
  const expiresAt = allocationExpiry(period, plan.validityDays).getTime();
  const open = expiresAt > now.getTime();
  const delta = prorate(periodCredits, plan.creditsPerPeriod, fraction);
  // Each allowance on its own, by scope and unit (docs/subscriptions.md, "Allowances"): one the
  // period is on and the new plan lacks prorates to 0; one the new plan adds prorates from 0.
  const byKey = new Map<string, { of: ReturnType<typeof which>; from: number; to: number }>();
  for (const a of periodAllowances) byKey.set(allowanceKey(a), { of: which(a), from: a.credits, to: 0 });
  for (const a of plan.allowances ?? []) {
    const k = allowanceKey(a);
    byKey.set(k, { of: which(a), from: byKey.get(k)?.from ?? 0, to: a.credits });
  }
  const allowances = [...byKey.values()].flatMap(({ of, from, to }) => {
    const d = prorate(from, to, fraction);
    const kept = open ? d : Math.min(d, 0);
    return kept === 0 ? [] : [{ ...of, delta: kept }];
  });
  const kept = open ? delta : Math.min(delta, 0);
  const price = proratedPrice(periodPrice, plan, fraction);
  const added = Math.max(kept, 0) + allowances.reduce((s, a) => s + Math.max(a.delta, 0), 0);
  return {
    delta: kept,
    expiresAt,
    ...(allowances.length === 0 ? {} : { allowances }),
    ...(price !== null && added > 0 ? { price } : {}),
  };
}

/**
 * What the credits a prorated change adds were sold for (docs/revenue.md, "Subscriptions"): the
 * price difference of the two plans over the part of the period left, `trunc((new − old) ×
 * fractionLeft)` as credits are prorated; null (free credits) when it is not above 0 or the plans
 * are priced in different currencies (an old plan without a price counts as 0).
 */
function proratedPrice(from: Priced | null, to: Priced, fraction: number): { amount: number; currency: string } | null {
  const toPrice = to.price ?? 0;
  if (toPrice <= 0 || to.currency === undefined) return null;
  const fromPrice = from?.price ?? 0;
  if (fromPrice > 0 && from?.currency !== to.currency) return null;
  const amount = prorate(fromPrice, toPrice, fraction);
  return amount > 0 ? { amount, currency: to.currency } : null;
}

// ---------------------------------------------------------------------------------------------
// Transitions.

/** What `subscribe` asks for (its options, parsed). */
export interface SubscribeRequestInput {
  autoRenew?: boolean | undefined;
  startAt?: Date | undefined;
  idempotencyKey?: string | undefined;
  metadata?: Subscription["metadata"] | undefined;
}

/** A plan's rollover fields from its input: `"none"`, `"all"` or `{ cap }` (docs/subscriptions.md, "Plans"). */
export function rolloverFields(r: "none" | "all" | { cap: number }): Pick<Plan, "rollover" | "rolloverCap"> {
  return typeof r === "string" ? { rollover: r, rolloverCap: null } : { rollover: "cap", rolloverCap: r.cap };
}

/** A plan whose rollover is capped needs its cap (an update that sets "cap" alone): else `ValidationError`. */
export function checkRollover(plan: Pick<Plan, "rollover" | "rolloverCap">): void {
  if (plan.rollover === "cap" && plan.rolloverCap === null)
    throw invalid("patch.rollover", "a capped rollover needs a cap");
}

/** A plan that is not active cannot be chosen (subscribe, changePlan): `ConflictError`. */
export function requireActivePlan(plan: Plan): Plan {
  if (!plan.isActive) throw new ConflictError(`Plan ${plan.id} is not active.`, { planId: plan.id });
  return plan;
}

/**
 * A new subscription of `userId` to `plan` (id `id`), whose cycle starts at `startAt` (default
 * now; in the past it backdates the cycle, in the future the first period waits for its start).
 * It owes its current period's allocation.
 */
export function subscribe(id: string, userId: string, plan: Plan, o: SubscribeRequestInput, now: Date): Subscription {
  requireActivePlan(plan);
  const anchor = o.startAt ?? now;
  const period = periodAt(anchor, plan.billingPeriod, periodIndexAt(anchor, plan.billingPeriod, now));
  const first = allocation(plan, period, now);
  return {
    id,
    userId,
    planId: plan.id,
    status: "active",
    billingPeriod: plan.billingPeriod,
    anchorAt: anchor,
    periodIndex: period.index,
    currentPeriodStart: period.start,
    currentPeriodEnd: period.end,
    autoRenew: o.autoRenew ?? true,
    cancelAtPeriodEnd: false,
    pendingPlanId: null,
    pendingCredits: null,
    periodGrantIds: [],
    intent: intent(`sub:${id}:${period.start.toISOString()}`, { allocate: first }),
    nextRunAt: period.start.getTime() > now.getTime() ? period.start : now,
    version: 1,
    idempotencyKey: o.idempotencyKey ?? null,
    metadata: o.metadata ?? null,
    createdAt: now,
    updatedAt: now,
    canceledAt: null,
    endedAt: null,
    periodCredits: first?.amount ?? 0,
    periodAllowances: allocatedAllowances(first),
    request: { planId: plan.id, autoRenew: o.autoRenew ?? true, startAt: o.startAt?.getTime() ?? null },
  };
}

/**
 * True when a `subscribe` with `first`'s idempotency key repeats the call that created `first`
 * (`first.request`): same plan, `autoRenew`, `startAt` (omitted: any) and metadata. What happened
 * to the subscription since (a plan change, `resume`, a new cycle) does not matter.
 */
export function repeatsRequest(first: Subscription, planId: string, o: SubscribeRequestInput): boolean {
  // Subscriptions stored before `request` existed: compared with what they record now.
  const asked = first.request ?? {
    planId: first.planId,
    autoRenew: first.autoRenew,
    startAt: first.anchorAt.getTime(),
  };
  return (
    asked.planId === planId &&
    asked.autoRenew === (o.autoRenew ?? true) &&
    // No startAt started the cycle at the call's own time (`createdAt`).
    (o.startAt === undefined || o.startAt.getTime() === (asked.startAt ?? first.createdAt.getTime())) &&
    fingerprint("metadata", o.metadata ?? null) === fingerprint("metadata", first.metadata)
  );
}

/** A subscription whose plan was deactivated while it was being created: cancelled at once, owing nothing. */
export function abandon(s: Subscription, now: Date): Subscription {
  return s.status !== "active"
    ? s
    : { ...s, status: "canceled", intent: null, nextRunAt: null, canceledAt: now, endedAt: now };
}

/** How a plan change is made (`changePlan`'s options, defaults applied). */
export interface ChangeMode {
  when: "now" | "period_end";
  credits: "keep" | "expire" | "prorate";
}

/**
 * `changePlan`'s options with their defaults: `when` "now"; `credits` "prorate" now, "keep" at
 * period end, where "prorate" is a `ValidationError` (there is no period left to prorate).
 */
export function changeMode(o: {
  when?: ChangeMode["when"] | undefined;
  credits?: ChangeMode["credits"] | undefined;
}): ChangeMode {
  const when = o.when ?? "now";
  const credits = o.credits ?? (when === "now" ? "prorate" : "keep");
  if (when === "period_end" && credits === "prorate") {
    throw invalid(
      "options.credits",
      'credits "prorate" applies to changes made now; use "keep" or "expire" with period_end',
    );
  }
  return { when, credits };
}

/**
 * A plan change of `s` (up to date at `now`) to `plan`, by the table of docs/subscriptions.md,
 * "Changing plans". `periodCredits` is what the current period is on (`s.periodCredits`, or for a
 * subscription stored before that field existed, its plan's current `creditsPerPeriod`).
 *  - at period end: records the pending plan; the renewal switches (`renew`);
 *  - now, prorate (same billing period only): same period, the new plan, the prorated difference
 *    (`proration`) — or, before the first period started, that period's full new allocation;
 *  - now, keep / expire: a new cycle from now on the new plan, with its allocation (the old
 *    period's credits expire now with "expire"). An unstarted period is replaced; its events stay.
 */
export function changePlan(
  s: Subscription,
  plan: Plan,
  mode: ChangeMode,
  now: Date,
  periodCredits: number,
  periodAllowances: readonly PeriodAllowance[] = [],
  periodPrice: Priced | null = null,
): Subscription {
  const { when, credits } = mode;
  if (s.planId === plan.id && when === "now")
    throw new ConflictError(`User ${s.userId} is already on plan ${plan.id}.`, { planId: plan.id });
  if (when === "now" && credits === "prorate" && plan.billingPeriod !== s.billingPeriod) {
    throw invalid(
      "options.credits",
      `prorating needs the same billing period (${s.billingPeriod} → ${plan.billingPeriod}); use "keep" or "expire"`,
    );
  }
  if (when === "period_end") return { ...s, pendingPlanId: plan.id, pendingCredits: credits as "keep" | "expire" };
  // Up to date, the subscription owes work only for a period that has not started yet: that
  // work (its allocation, the events riding on it) was not done, so it is rebuilt, not dropped.
  const pending = s.intent;
  const key = `sub:${s.id}:${s.currentPeriodStart.toISOString()}:change${s.version}`;
  if (credits === "prorate") {
    const period = { start: s.currentPeriodStart, end: s.currentPeriodEnd };
    const changed = { ...s, planId: plan.id, pendingPlanId: null, pendingCredits: null };
    if (pending !== null) {
      // Nothing of the period was allocated or used: it gets the new plan's allocation in full.
      const { key: _old, ...rest } = pending;
      const allocate = allocation(plan, period, now);
      return {
        ...changed,
        intent: intent(key, { ...rest, allocate, prorate: null }),
        periodCredits: allocate?.amount ?? 0,
        periodAllowances: allocatedAllowances(allocate),
      };
    }
    // Prorated against what this period is on, not the old plan's current figure: an operator's
    // updatePlan applies from the next period on.
    return {
      ...changed,
      periodCredits: plan.creditsPerPeriod,
      periodAllowances: planAllowances(plan),
      intent: intent(key, {
        prorate: proration(periodCredits, plan, period, now, periodAllowances, periodPrice),
        keepPeriodGrants: true,
      }),
      nextRunAt: now,
    };
  }
  // A new cycle starts now: the unstarted period (if any) is replaced, its events are kept.
  const period = { ...periodAt(now, plan.billingPeriod, 0), anchor: now };
  return onPeriod(s, plan, period, now, `:change${s.version}`, {
    expireGrantIds: credits === "expire" ? s.periodGrantIds : [],
    events: pending?.events,
  });
}

/** How a cancel is made (`cancel`'s options, defaults applied). */
export interface CancelMode {
  atPeriodEnd: boolean;
  credits: "keep" | "expire";
}

/** `cancel`'s options with their defaults; `credits: "expire"` at period end is a `ValidationError`. */
export function cancelMode(o: {
  atPeriodEnd?: boolean | undefined;
  credits?: CancelMode["credits"] | undefined;
}): CancelMode {
  const atPeriodEnd = o.atPeriodEnd ?? true;
  if (atPeriodEnd && o.credits === "expire") {
    throw invalid("options.credits", 'credits "expire" applies to an immediate cancel (atPeriodEnd: false)');
  }
  return { atPeriodEnd, credits: o.credits ?? "keep" };
}

/**
 * A cancel of `s` (docs/subscriptions.md, "Cancel"), or null when there is nothing to change (a
 * second cancel at period end). At period end: `cancelAtPeriodEnd`, and a `subscription_cancelled`
 * event riding on account work — its own, or the work still owed (a period not started yet). Now:
 * `canceled`, its period's credits kept or expired now, with `subscription_cancelled` and
 * `subscription_ended` (and any events an unstarted period's work still owed).
 */
export function cancel(s: Subscription, mode: CancelMode, now: Date): Subscription | null {
  if (mode.atPeriodEnd) {
    // Cancelling at period end again changes nothing (and tells nobody twice).
    if (s.cancelAtPeriodEnd) return null;
    const cancelled = lifecycleEvent(s, "subscription_cancelled", now, { atPeriodEnd: true });
    return {
      ...s,
      cancelAtPeriodEnd: true,
      canceledAt: now,
      intent:
        s.intent === null
          ? intent(`sub:${s.id}:${s.currentPeriodStart.toISOString()}:cancel${s.version}`, {
              keepPeriodGrants: true,
              events: [cancelled],
            })
          : { ...s.intent, events: [...(s.intent.events ?? []), cancelled] },
      nextRunAt: s.intent === null ? now : s.nextRunAt,
    };
  }
  const expire = mode.credits === "expire";
  return {
    ...s,
    status: "canceled",
    canceledAt: now,
    endedAt: now,
    pendingPlanId: null,
    pendingCredits: null,
    intent: intent(`sub:${s.id}:${s.currentPeriodStart.toISOString()}:cancel${s.version}`, {
      expireGrantIds: expire ? s.periodGrantIds : [],
      keepPeriodGrants: !expire,
      events: [
        // Events still owed by an unstarted period's work (an earlier cancel) are not dropped.
        ...(s.intent?.events ?? []),
        lifecycleEvent(s, "subscription_cancelled", now, { atPeriodEnd: false }),
        lifecycleEvent(s, "subscription_ended", now, { status: "canceled", reason: "cancelled" }),
      ],
    }),
    nextRunAt: now,
  };
}

/** Undoes a cancel at period end and turns renewal on; null when there is nothing to undo. */
export function resume(s: Subscription): Subscription | null {
  return !s.cancelAtPeriodEnd && s.autoRenew
    ? null
    : { ...s, cancelAtPeriodEnd: false, autoRenew: true, canceledAt: null };
}

/** True when `s` renews at its period's end (it was not cancelled at period end, and auto-renews). */
export function renews(s: Pick<Subscription, "cancelAtPeriodEnd" | "autoRenew">): boolean {
  return !s.cancelAtPeriodEnd && s.autoRenew;
}

/**
 * The period end of a subscription that does not renew (`renews` is false): `canceled` when it
 * was cancelled at period end, else `expired`. It ends at its period's end and owes its
 * `subscription_ended` event.
 */
export function endAtPeriodEnd(s: Subscription, now: Date): Subscription {
  return ended(s, s.cancelAtPeriodEnd ? "canceled" : "expired", s.cancelAtPeriodEnd ? "cancelled" : "not_renewed", now);
}

/** The period end of a subscription whose next plan no longer exists: it ends as `expired`. */
export function endWithoutPlan(s: Subscription, now: Date): Subscription {
  return ended(s, "expired", "plan_missing", now);
}

/**
 * The renewal of `s` at its period's end onto `plan` (the pending plan, else its own), with the
 * rollover of `endingPlan` (docs/subscriptions.md, "Rollover"). It moves to the period that
 * contains `now` — periods that ended before anyone renewed them are skipped, never allocated —
 * and owes that period's allocation and the rollover. A new billing period starts a new cycle at
 * the old period's end; else the cycle goes on.
 */
export function renew(s: Subscription, plan: Plan, endingPlan: Plan | null, now: Date): Subscription {
  const sameCycle = plan.billingPeriod === s.billingPeriod;
  const anchor = sameCycle ? s.anchorAt : s.currentPeriodEnd;
  const index = Math.max(sameCycle ? s.periodIndex + 1 : 0, periodIndexAt(anchor, plan.billingPeriod, now));
  const period = { ...periodAt(anchor, plan.billingPeriod, index), anchor };
  // Its work is due at the period's start, and dated there however late it runs (docs/concepts.md,
  // "Two times on every entry").
  return onPeriod(s, plan, period, now, "", {
    carry: rolloverCarry(s, endingPlan, period),
    dueAt: period.start.getTime(),
  });
}

/**
 * `s` moved onto `plan` and a new period of it (of the cycle from `period.anchor`), owing now that
 * period's allocation and `owed`, under the period's key followed by `keySuffix`.
 */
function onPeriod(
  s: Subscription,
  plan: Plan,
  period: { anchor: Date; index: number; start: Date; end: Date },
  now: Date,
  keySuffix: string,
  owed: Partial<Omit<SubscriptionIntent, "key" | "allocate">>,
): Subscription {
  const allocate = allocation(plan, period, now);
  return {
    ...s,
    planId: plan.id,
    billingPeriod: plan.billingPeriod,
    anchorAt: period.anchor,
    periodIndex: period.index,
    currentPeriodStart: period.start,
    currentPeriodEnd: period.end,
    pendingPlanId: null,
    pendingCredits: null,
    intent: intent(`sub:${s.id}:${period.start.toISOString()}${keySuffix}`, { ...owed, allocate }),
    nextRunAt: now,
    periodCredits: allocate?.amount ?? 0,
    periodAllowances: allocatedAllowances(allocate),
  };
}

/** Periods a renewal from `before` to `after` (active) skipped: ended before anyone renewed them. */
export function periodsSkipped(
  before: Pick<Subscription, "anchorAt" | "periodIndex">,
  after: Pick<Subscription, "anchorAt" | "periodIndex">,
): number {
  const base = after.anchorAt.getTime() === before.anchorAt.getTime() ? before.periodIndex + 1 : 0;
  return after.periodIndex - base;
}

/**
 * `current` once the account work of `it` is done and created `newGrants`: no intent; the
 * period's grants are the new ones (plus the current ones when `keepPeriodGrants`); due again at
 * its period's end while active, never once ended.
 */
export function intentDone(current: Subscription, it: SubscriptionIntent, newGrants: readonly string[]): Subscription {
  return {
    ...current,
    intent: null,
    periodGrantIds: it.keepPeriodGrants ? [...current.periodGrantIds, ...newGrants] : [...newGrants],
    nextRunAt: current.status === "active" ? current.currentPeriodEnd : null,
  };
}

// ---------------------------------------------------------------------------------------------
// The account side of an intent.

/**
 * The grants `applyIntent` reads: those it expires, those whose unspent rest it rolls over, and
 * the period's grants a prorated downgrade removes credits from. The service includes them in the
 * unit of work (`AccountWork.include`) before calling it.
 */
export function intentGrantIds(s: Pick<Subscription, "periodGrantIds">, it: SubscriptionIntent): string[] {
  const ids = [...it.expireGrantIds];
  if (it.carry !== null) ids.push(...it.carry.grantIds);
  // A decrease (general or of an allowance) removes from the period's grants, chosen by scope.
  if (it.prorate !== null && (it.prorate.delta < 0 || (it.prorate.allowances ?? []).some((a) => a.delta < 0)))
    ids.push(...s.periodGrantIds);
  return [...new Set(ids)];
}

/** The expiry of a carried grant changed between its read and the unit of work: read again. */
export class ExpiryMoved extends Error {
  constructor() {
    super("subscription credits changed while the rollover was computed");
  }
}

/**
 * Carries out intent `it` of `s` on the account (the grants of `intentGrantIds` included): the
 * expiries, the rollover (what the carried grants had unspent and unheld at the period's end, by
 * `expiry` — read from committed work — and this work's own expiries), the proration and the
 * allocation; records `subscription_allocation` and the intent's lifecycle events on the work.
 * Always leaves at least one entry, the key's record (an `add` of 0 when nothing moved). The first
 * entry carries `meta` (its idempotency key), the rest its correlation id and time. Returns the ids of the
 * grants it created. Throws `ExpiryMoved` when a carried grant's expiries differ from `expiry`.
 */
export function applyIntent(
  work: AccountWork,
  s: Subscription,
  it: SubscriptionIntent,
  meta: EntryMeta,
  expiry: PeriodEndExpiry | null,
): string[] {
  const start = work.entries.length;
  const m = (description: string): EntryMeta =>
    work.entries.length === start
      ? { ...meta, description }
      : { correlationId: meta.correlationId, occurredAt: meta.occurredAt, description };
  const loaded = (ids: readonly string[]) => ids.map((id) => work.getGrant(id)).filter((g) => g !== undefined);
  const created: string[] = [];
  let creditsAdded = 0;
  const add = (
    amount: number,
    expiresAt: number | null,
    source: "subscription" | "rollover",
    description: string,
    of: { scope?: GrantScope | undefined; unit?: string | undefined } = {},
    costBasis: CostBasis | null = null,
  ) => {
    const scope = of.scope ?? null;
    // The plan whose period (or change) this is: revenue is grouped by it (docs/revenue.md, "The
    // report"). On the entry too, for the credits that pay debt and make no grant.
    const plan = { subscriptionId: s.id, planId: s.planId };
    const entryMeta = m(description);
    const e = work.add(
      amount,
      {
        expiresAt: expiresAt === null ? null : new Date(expiresAt),
        priority: 0,
        source,
        sourceRef: it.key.slice(0, 255),
        description,
        metadata: plan,
        // An allowance's grant (docs/subscriptions.md, "Allowances"); unscoped ones as before.
        ...(scope === null ? {} : { scope }),
        // What the credits were sold for (docs/revenue.md, "Subscriptions"); rollovers are free.
        ...(costBasis === null ? {} : { costBasis }),
      },
      // An allowance in another unit is granted in it (docs/units.md); the rest in the default unit.
      { ...entryMeta, metadata: { ...entryMeta.metadata, ...plan }, unit: of.unit ?? null },
    );
    for (const p of e.grants) created.push(p.grantId);
    // The event's `credits` count the default unit: no figure adds two units (docs/units.md).
    if (of.unit === undefined) creditsAdded += amount;
  };

  if (it.expireGrantIds.length > 0)
    work.expireGrants(it.expireGrantIds, m("subscription credits expired by a plan change or cancellation"));
  /** The allowance key of a loaded grant (its scope and unit): "" for the general credits. */
  const keyOf = (id: string) => {
    const g = work.getGrant(id);
    return g === undefined ? "" : allowanceKey(g);
  };
  if (it.carry !== null) {
    const carry = it.carry;
    // The buckets that roll over: the general grants, and each allowance's (by scope and unit).
    const buckets = new Map<string, { of: ReturnType<typeof which> | null; limit: number | null; unspent: number }>();
    buckets.set("", { of: null, limit: carry.limit, unspent: 0 });
    for (const a of carry.allowances ?? []) buckets.set(allowanceKey(a), { of: which(a), limit: a.limit, unspent: 0 });
    // What these grants had unspent at the period's end, whoever expired them and whenever. Not
    // what was held then: those credits expire when their hold returns them, before or after
    // this runs (the amount must not depend on when the job runs).
    const eligible = loaded(carry.grantIds).filter(
      (g) => g.expiresAt !== null && g.expiresAt.getTime() === carry.periodEnd && buckets.has(keyOf(g.id)),
    );
    const stillOpen = eligible.filter((g) => g.closedAt === null).map((g) => g.id);
    if (stillOpen.length > 0) work.expireGrants(stillOpen, m("subscription period ended"));
    for (const g of eligible) {
      // Expiries in this unit of work (its settlement, the line above): the closing one, returns.
      const here = expiriesIn(work.entries, g.id, carry.periodEnd, (id) => work.getHold(id));
      const seen = expiry?.get(g.id) ?? { expired: 0, atExpiry: 0 };
      // Someone expired or returned credits of it since it was read: read again.
      if (((work.getGrant(g.id) ?? g).expiredAmount ?? 0) !== seen.expired + here.expired) throw new ExpiryMoved();
      const bucket = buckets.get(keyOf(g.id));
      if (bucket !== undefined) bucket.unspent += seen.atExpiry + here.expired - here.held;
    }
    for (const b of buckets.values()) {
      const moved = rolloverAmount(b.unspent, { limit: b.limit, expiresAt: carry.expiresAt }, work.now);
      if (moved > 0)
        add(
          moved,
          carry.expiresAt,
          "rollover",
          b.of === null ? `rollover of ${moved} unspent credits` : `rollover of ${moved} unspent allowance credits`,
          b.of ?? {},
        );
    }
  }
  if (it.prorate !== null) {
    // The general part, then each allowance's, on the period's grants of its scope and unit.
    const parts = [{ delta: it.prorate.delta }, ...(it.prorate.allowances ?? [])];
    const bases = pricedBases(
      it.prorate.price,
      parts.map((x) => Math.max(x.delta, 0)),
    );
    for (const [i, part] of parts.entries()) {
      const delta = part.delta;
      if (delta > 0)
        add(delta, it.prorate.expiresAt, "subscription", "prorated plan change", which(part), bases[i] ?? null);
      else if (delta < 0) {
        const k = allowanceKey(part);
        const ids = s.periodGrantIds.filter((id) => keyOf(id) === k);
        work.removeFromGrants(ids, -delta, m("prorated plan change"));
      }
    }
  }
  if (it.allocate !== null) {
    const allowances = it.allocate.allowances ?? [];
    const bases = pricedBases(it.allocate.price, [it.allocate.amount, ...allowances.map((a) => a.amount)]);
    if (it.allocate.amount > 0)
      add(
        it.allocate.amount,
        it.allocate.expiresAt,
        "subscription",
        "subscription period credits",
        {},
        bases[0] ?? null,
      );
    for (const [i, a] of allowances.entries())
      if (a.amount > 0)
        add(
          a.amount,
          it.allocate.expiresAt,
          "subscription",
          "subscription allowance credits",
          which(a),
          bases[i + 1] ?? null,
        );
  }
  // The outbox events go with the work, in the same transaction (when notifications are on).
  const accountWork = it.allocate !== null || it.carry !== null || it.prorate !== null || it.expireGrantIds.length > 0;
  if (accountWork)
    work.recordEvent({
      type: "subscription_allocation",
      payload: {
        subscriptionId: s.id,
        planId: s.planId,
        periodStart: s.currentPeriodStart.toISOString(),
        periodEnd: s.currentPeriodEnd.toISOString(),
        credits: creditsAdded,
        key: it.key,
      },
      dedupeKey: it.key.slice(0, 255),
    });
  for (const e of it.events ?? []) work.recordEvent({ type: e.type, payload: e.payload, dedupeKey: e.dedupeKey });
  if (work.entries.length === start) {
    // Nothing moved (a pay-as-you-go period, nothing to roll over): record the period anyway, so
    // the key proves it was handled and a late second run cannot act on it.
    const what = accountWork
      ? "subscription period (no credits)"
      : `subscription ${(it.events ?? []).map((e) => e.type.slice(13)).join(", ") || "change"}`;
    work.add(
      0,
      { expiresAt: null, priority: 0, source: "subscription", sourceRef: null, description: null, metadata: null },
      m(what),
    );
  }
  return created;
}

/**
 * The cost basis of each of the grants an intent adds (`credits`, in order; 0: none added): the
 * intent's price split over them (`basesOfPrice`), none without a price (docs/revenue.md,
 * "Subscriptions").
 */
function pricedBases(
  price: { amount: number; currency: string } | undefined,
  credits: readonly number[],
): (CostBasis | null)[] {
  return price === undefined ? credits.map(() => null) : basesOfPrice(price.amount, credits, price.currency);
}

// ---------------------------------------------------------------------------------------------

/** An intent with the given parts (the rest: nothing owed). */
export function intent(key: string, parts: Partial<Omit<SubscriptionIntent, "key">>): SubscriptionIntent {
  return {
    key,
    allocate: parts.allocate ?? null,
    carry: parts.carry ?? null,
    expireGrantIds: parts.expireGrantIds ?? [],
    prorate: parts.prorate ?? null,
    keepPeriodGrants: parts.keepPeriodGrants ?? false,
    ...(parts.dueAt === undefined ? {} : { dueAt: parts.dueAt }),
    ...(parts.events === undefined || parts.events.length === 0 ? {} : { events: parts.events }),
  };
}

/** A `subscription_cancelled` or `subscription_ended` event of `s`, unique per user by its key. */
function lifecycleEvent(
  s: Subscription,
  type: LifecycleEvent["type"],
  at: Date,
  extra: Record<string, unknown>,
): LifecycleEvent {
  return {
    type,
    payload: {
      subscriptionId: s.id,
      planId: s.planId,
      periodStart: s.currentPeriodStart.toISOString(),
      periodEnd: s.currentPeriodEnd.toISOString(),
      at: at.toISOString(),
      ...extra,
    },
    // ended: once per subscription; cancelled: once per cancel (a resumed one may be cancelled again).
    dedupeKey: type === "subscription_ended" ? `sub:${s.id}:ended` : `sub:${s.id}:cancelled:${s.version}`,
  };
}

/** The period end of a subscription that does not renew: it ends, and owes its `subscription_ended` event. */
function ended(s: Subscription, status: "canceled" | "expired", reason: string, now: Date): Subscription {
  return {
    ...s,
    status,
    endedAt: s.currentPeriodEnd,
    pendingPlanId: null,
    pendingCredits: null,
    intent: intent(`sub:${s.id}:${s.currentPeriodStart.toISOString()}:end`, {
      keepPeriodGrants: true,
      events: [lifecycleEvent(s, "subscription_ended", s.currentPeriodEnd, { status, reason })],
    }),
    nextRunAt: now,
  };
}

function invalid(path: string, message: string): ValidationError {
  return new ValidationError(`Invalid ${path}: ${message}`, [{ path, message }]);
}

/** How many keys of `cancel`, `resume` and `changePlan` calls a subscription keeps (`changeKeys`). */
export const MAX_CHANGE_KEYS = 100;

/** The fingerprint of a keyed `cancel`, `resume` or `changePlan`: the operation and its arguments. */
export function changePrint(operation: "cancel" | "resume" | "changePlan", args: Record<string, unknown>): string {
  return fingerprint(`subscription.${operation}`, args);
}

/**
 * The subscription an earlier keyed change with `key` changed, among the user's; null when no call
 * used it. The same key with other arguments (`print`), or a `subscribe` call's key, is an
 * `IdempotencyConflictError` (docs/subscriptions.md, "Idempotency").
 */
export function changedWithKey(
  subscriptions: readonly Subscription[],
  key: string,
  print: string,
): Subscription | null {
  for (const s of subscriptions) {
    if (s.idempotencyKey === key) throw new IdempotencyConflictError(key);
    const found = s.changeKeys?.find((k) => k.key === key);
    if (found === undefined) continue;
    if (found.fingerprint !== print) throw new IdempotencyConflictError(key);
    return s;
  }
  return null;
}

/** `s` with a keyed change's key recorded (the latest `MAX_CHANGE_KEYS` kept). */
export function withChangeKey(s: Subscription, key: string, print: string): Subscription {
  return { ...s, changeKeys: [...(s.changeKeys ?? []), { key, fingerprint: print }].slice(-MAX_CHANGE_KEYS) };
}
