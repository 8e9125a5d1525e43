import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import { CacheAside } from "../cache/aside.js";
import type { Cache } from "../cache/index.js";
import type { DbManager, DbTransaction } from "../db/types.js";
import type { AccountWork, EntryMeta } from "../domain/account-work.js";
import { fingerprint } from "../domain/hash.js";
import { recordEvent } from "../domain/notifications.js";
import { allocationExpiry, fractionLeft, periodAt, periodIndexAt } from "../domain/periods.js";
import { expiriesIn, liveAt, unspentAtEnd, type PeriodEndExpiry } from "../domain/rollover.js";
import { ConflictError, IdempotencyConflictError, NotFoundError, ValidationError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import {
  CancelOptions,
  ChangePlanOptions,
  CreatePlanInput,
  ListPlansOptions,
  PlanId,
  SubscribeOptions,
  UpdatePlanInput,
  UserId,
  parse,
  type Grant,
  type JournalEntry,
  type Plan,
  type Reservation,
  type Subscription,
  type SubscriptionIntent,
} from "../models/index.js";
import { systemKey } from "../domain/keys.js";
import type { CreditService } from "./credit-service.js";

export interface SubscriptionServiceOptions {
  db: DbManager;
  /** The credit service whose units of work allocate, roll over and expire credits. */
  credits: CreditService;
  ledger?: LedgerLogger;
  /** Caches `getPlan` and `listPlans`; invalidated on every plan write. */
  cache?: Cache;
  /** Default: the credit service's clock. */
  clock?: () => Date;
  logger?: Logger;
  /** TTL of cached plans, in seconds. Default 300. */
  cacheTtlSeconds?: number;
}

/** What `advance` did to one subscription (the renewal job sums these). */
export interface AdvanceResult {
  subscription: Subscription;
  /** Account work completed (allocations, rollovers, prorations, expiries). */
  intentsCompleted: number;
  /** Periods moved to. */
  renewed: number;
  /** Periods that ended before anyone renewed them: closed without allocation. */
  periodsSkipped: number;
  /** 1 when the subscription ended (cancelled at period end, or not auto-renewing). */
  ended: number;
}

const planKey = (id: string) => `plans:${id}`;
/** Stores may keep the objects they return (the in-memory one does): callers get their own copy. */
const copy = <T>(o: T): T => structuredClone(o);
const PLAN_LIST_KEYS = ["plans:list:active", "plans:list:all"];
const MAX_RACES = 50;

/**
 * Plans and subscriptions (docs/subscriptions.md). Every change of a subscription is a guarded write (its
 * `version`), and the account work the change owes (allocation, rollover, expiry, proration) is
 * written into the subscription as an `intent` by that same write, then carried out by one
 * unit of work on the account keyed `sub:<id>:<periodStart>` — by the caller, another worker or
 * the renewal job, whoever gets there first — and cleared by a second guarded write. A crash
 * between the two leaves the intent for the next one; a second worker replays the key and changes
 * nothing. See docs/subscriptions.md.
 */
export class SubscriptionService {
  readonly db: DbManager;
  private readonly credits: CreditService;
  private readonly ledger: LedgerLogger | undefined;
  /** The plan cache, when there is one. */
  private readonly cache: CacheAside | undefined;
  private readonly clock: () => Date;
  private readonly logger: Logger | undefined;

  constructor(options: SubscriptionServiceOptions) {
    this.db = options.db;
    this.credits = options.credits;
    this.ledger = options.ledger;
    this.cache = options.cache && new CacheAside(options.cache, options.cacheTtlSeconds ?? 300, options.logger);
    this.clock = options.clock ?? (() => options.credits.now());
    this.logger = options.logger;
    // A credit operation or read that finds a period ended brings the next one at once, as the
    // renewal job would: a subscriber never sees 0 credits between the period's end and the job.
    this.credits.bringPeriodsWith((userId) => this.activeAt(userId, this.clock()));
  }

  // ---------------------------------------------------------------------------------------------
  // Plans.

  /** Creates a plan. `rollover`: "none" (default), "all" or `{ cap }`. */
  async createPlan(input: CreatePlanInput): Promise<Plan> {
    const i = parse(CreatePlanInput, input, "plan");
    const now = this.clock();
    const plan: Plan = {
      id: i.id ?? randomUUID(),
      name: i.name,
      description: i.description ?? null,
      creditsPerPeriod: i.creditsPerPeriod,
      price: i.price ?? 0,
      currency: (i.currency ?? "USD").toUpperCase(),
      billingPeriod: i.billingPeriod,
      validityDays: i.validityDays ?? null,
      ...rolloverFields(i.rollover ?? "none"),
      isActive: i.isActive ?? true,
      metadata: i.metadata ?? null,
      version: 1,
      createdAt: now,
      updatedAt: now,
    };
    await this.db.insertPlan(plan);
    await this.invalidatePlan(plan.id);
    return copy(plan);
  }

  /** Changes a plan's fields. Running subscriptions see the change from their next period on. */
  async updatePlan(planId: string, patch: UpdatePlanInput): Promise<Plan> {
    const id = parse(PlanId, planId, "planId");
    const p = parse(UpdatePlanInput, patch, "patch");
    return this.writePlan(id, (plan) => {
      const { rollover, currency, description, validityDays, metadata, ...rest } = p;
      const next: Plan = { ...plan, ...stripUndefined(rest) };
      if (rollover !== undefined) Object.assign(next, rolloverFields(rollover));
      if (currency !== undefined) next.currency = currency.toUpperCase();
      if (description !== undefined) next.description = description;
      if (validityDays !== undefined) next.validityDays = validityDays;
      if (metadata !== undefined) next.metadata = metadata;
      return next;
    });
  }

  /** Stops new subscriptions to the plan; subscribers keep renewing on it. */
  async deactivatePlan(planId: string): Promise<Plan> {
    const id = parse(PlanId, planId, "planId");
    return this.writePlan(id, (plan) => ({ ...plan, isActive: false }));
  }

  /**
   * Deletes a plan nobody is subscribed to (as plan or pending plan); else `ConflictError`.
   * It first deactivates the plan, then looks for subscribers: a `subscribe` racing with it either
   * is seen or sees the plan inactive and backs out.
   */
  async deletePlan(planId: string): Promise<void> {
    const id = parse(PlanId, planId, "planId");
    const before = await this.requirePlan(id);
    const inactive = before.isActive ? await this.writePlan(id, (plan) => ({ ...plan, isActive: false })) : before;
    if (await this.db.planHasSubscribers(id)) {
      if (before.isActive) await this.writePlan(id, (plan) => ({ ...plan, isActive: true })).catch(() => undefined);
      throw new ConflictError(`Plan ${id} has subscribers: it cannot be deleted (deactivate it instead).`, { planId: id });
    }
    if (!(await this.db.deletePlan(id, inactive.version))) {
      throw new ConflictError(`Plan ${id} changed while it was being deleted; try again.`, { planId: id });
    }
    await this.invalidatePlan(id);
  }

  /** A plan by id (cached). `NotFoundError` when there is none. */
  async getPlan(planId: string): Promise<Plan> {
    const id = parse(PlanId, planId, "planId");
    return this.readPlans(planKey(id), () => this.requirePlan(id), revivePlan);
  }

  /** Active plans by id; inactive ones too with `includeInactive` (cached). */
  async listPlans(options: ListPlansOptions = {}): Promise<Plan[]> {
    const o = parse(ListPlansOptions, options, "options");
    const key = o.includeInactive ? "plans:list:all" : "plans:list:active";
    return this.readPlans(key, () => this.db.listPlans({ includeInactive: o.includeInactive === true }), (hit) => hit.map(revivePlan));
  }

  // ---------------------------------------------------------------------------------------------
  // Subscriptions.

  /**
   * Subscribes a user (one active subscription per user: a second is a `ConflictError`) and
   * allocates the first period's credits. A call that repeats an earlier one's `idempotencyKey`
   * returns the subscription that call created (even if it has ended since), and changes nothing;
   * with arguments that subscription contradicts, it is an `IdempotencyConflictError`.
   */
  async subscribe(userId: string, planId: string, options: SubscribeOptions = {}): Promise<Subscription> {
    const user = parse(UserId, userId, "userId");
    const pid = parse(PlanId, planId, "planId");
    const o = parse(SubscribeOptions, options, "options");
    const now = this.clock();
    if (o.idempotencyKey !== undefined) {
      // Any of the user's subscriptions, active or not: a retry after a cancel must not subscribe again.
      const first = (await this.db.listSubscriptions(user)).find((x) => x.idempotencyKey === o.idempotencyKey);
      if (first !== undefined) return this.repeat(first, pid, o, now);
    }
    // One whose period ended (cancelled at period end, not renewing) ends first, as a read would see it.
    const existing = await this.activeAt(user, now);
    if (existing !== null) {
      // A call with this key that committed after the lookup above is the first call, not another
      // subscriber: its result is the answer (overlapping retries of one checkout webhook).
      if (o.idempotencyKey !== undefined && existing.idempotencyKey === o.idempotencyKey) return this.repeat(existing, pid, o, now);
      throw alreadySubscribed(existing);
    }
    const plan = await this.requirePlan(pid);
    if (!plan.isActive) throw new ConflictError(`Plan ${pid} is not active.`, { planId: pid });
    const anchor = o.startAt ?? now;
    const period = periodAt(anchor, plan.billingPeriod, periodIndexAt(anchor, plan.billingPeriod, now));
    const id = randomUUID();
    const first = allocation(plan, period, now);
    const s: Subscription = {
      id,
      userId: user,
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
      request: { planId: plan.id, autoRenew: o.autoRenew ?? true, startAt: o.startAt?.getTime() ?? null },
    };
    try {
      await this.db.insertSubscription(s);
    } catch (error) {
      if (!(error instanceof ConflictError)) throw error;
      const winner = await this.db.getActiveSubscription(user);
      if (winner === null) throw error;
      if (o.idempotencyKey !== undefined && winner.idempotencyKey === o.idempotencyKey) return this.repeat(winner, pid, o, now);
      throw alreadySubscribed(winner);
    }
    // The plan may have been deactivated (and be on its way to deletion) since it was read.
    const check = await this.db.getPlan(pid);
    if (check === null || !check.isActive) {
      // Retried until it lands: another worker may have completed the first period's work meanwhile.
      await this.tryWrite(s, (x) => x.status !== "active"
        ? x
        : { ...x, status: "canceled", intent: null, nextRunAt: null, canceledAt: now, endedAt: now }, now, true);
      throw new ConflictError(`Plan ${pid} was deactivated while subscribing.`, { planId: pid });
    }
    return copy((await this.advance(s, now)).subscription);
  }

  /** The user's active subscription (brought up to date first), or null. */
  async getUserSubscription(userId: string): Promise<Subscription | null> {
    const user = parse(UserId, userId, "userId");
    const s = await this.activeAt(user, this.clock());
    return s === null ? null : copy(s);
  }

  /** Every subscription the user had, oldest first. */
  async listUserSubscriptions(userId: string): Promise<Subscription[]> {
    return copy(await this.db.listSubscriptions(parse(UserId, userId, "userId")));
  }

  /**
   * Moves the user's subscription to another plan (docs/subscriptions.md, "Changing plans", has the rules):
   * `when: "now"` (default) with `credits: "prorate"` (default; same billing period only), "keep"
   * or "expire"; `when: "period_end"` with `credits: "keep"` (default) or "expire".
   */
  async changePlan(userId: string, planId: string, options: ChangePlanOptions = {}): Promise<Subscription> {
    const user = parse(UserId, userId, "userId");
    const pid = parse(PlanId, planId, "planId");
    const o = parse(ChangePlanOptions, options, "options");
    const when = o.when ?? "now";
    const credits = o.credits ?? (when === "now" ? "prorate" : "keep");
    if (when === "period_end" && credits === "prorate") {
      throw invalid("options.credits", 'credits "prorate" applies to changes made now; use "keep" or "expire" with period_end');
    }
    const plan = await this.requirePlan(pid);
    if (!plan.isActive) throw new ConflictError(`Plan ${pid} is not active.`, { planId: pid });
    return this.transition(user, async (s, now) => {
      if (s.planId === pid && when === "now") throw new ConflictError(`User ${user} is already on plan ${pid}.`, { planId: pid });
      if (when === "now" && credits === "prorate" && plan.billingPeriod !== s.billingPeriod) {
        throw invalid("options.credits", `prorating needs the same billing period (${s.billingPeriod} → ${plan.billingPeriod}); use "keep" or "expire"`);
      }
      if (when === "period_end") return { ...s, pendingPlanId: pid, pendingCredits: credits as "keep" | "expire" };
      // Up to date, the subscription owes work only for a period that has not started yet: that
      // work (its allocation, the events riding on it) was not done, so it is rebuilt, not dropped.
      const pending = s.intent;
      const key = `sub:${s.id}:${s.currentPeriodStart.toISOString()}:change${s.version}`;
      if (credits === "prorate") {
        const period = { start: s.currentPeriodStart, end: s.currentPeriodEnd };
        const changed = { ...s, planId: pid, pendingPlanId: null, pendingCredits: null };
        if (pending !== null) {
          // Nothing of the period was allocated or used: it gets the new plan's allocation in full.
          const { key: _old, ...rest } = pending;
          const allocate = allocation(plan, period, now);
          return { ...changed, intent: intent(key, { ...rest, allocate, prorate: null }), periodCredits: allocate?.amount ?? 0 };
        }
        // Prorated against what this period is on (its allocation, or the plan of an earlier
        // prorated change), not the old plan's current figure: an operator's updatePlan applies
        // from the next period on. Subscriptions stored before `periodCredits` existed fall back to it.
        const current = s.periodCredits ?? (await this.db.getPlan(s.planId))?.creditsPerPeriod ?? 0;
        const delta = Math.trunc(((plan.creditsPerPeriod - current) * fractionLeft(period.start, period.end, now)));
        const expiresAt = allocationExpiry(period, plan.validityDays);
        return {
          ...changed,
          periodCredits: plan.creditsPerPeriod,
          intent: intent(key, {
            prorate: { delta: expiresAt.getTime() > now.getTime() ? delta : Math.min(delta, 0), expiresAt: expiresAt.getTime() },
            keepPeriodGrants: true,
          }),
          nextRunAt: now,
        };
      }
      // A new cycle starts now: the unstarted period (if any) is replaced, its events are kept.
      const period = periodAt(now, plan.billingPeriod, 0);
      const allocate = allocation(plan, period, now);
      return {
        ...s,
        planId: pid,
        billingPeriod: plan.billingPeriod,
        anchorAt: now,
        periodIndex: 0,
        currentPeriodStart: period.start,
        currentPeriodEnd: period.end,
        pendingPlanId: null,
        pendingCredits: null,
        intent: intent(`sub:${s.id}:${period.start.toISOString()}:change${s.version}`, {
          allocate,
          expireGrantIds: credits === "expire" ? s.periodGrantIds : [],
          events: pending?.events,
        }),
        nextRunAt: now,
        periodCredits: allocate?.amount ?? 0,
      };
    });
  }

  /**
   * Cancels. `atPeriodEnd` (default true): the subscription runs to its period's end, then ends
   * without renewing (`resume` undoes it until then). `atPeriodEnd: false`: it ends now; its
   * period's credits stay until they expire (`credits: "keep"`, default) or expire now ("expire").
   */
  async cancel(userId: string, options: CancelOptions = {}): Promise<Subscription> {
    const user = parse(UserId, userId, "userId");
    const o = parse(CancelOptions, options, "options");
    const atPeriodEnd = o.atPeriodEnd ?? true;
    if (atPeriodEnd && o.credits === "expire") {
      throw invalid("options.credits", 'credits "expire" applies to an immediate cancel (atPeriodEnd: false)');
    }
    return this.transition(user, (x, now) => {
      if (atPeriodEnd) {
        // Cancelling at period end again changes nothing (and tells nobody twice).
        if (x.cancelAtPeriodEnd) return null;
        const cancelled = lifecycleEvent(x, "subscription_cancelled", now, { atPeriodEnd: true });
        return {
          ...x,
          cancelAtPeriodEnd: true,
          canceledAt: now,
          // The event rides on account work: its own, or the work still owed (a period not started yet).
          intent:
            x.intent === null
              ? intent(`sub:${x.id}:${x.currentPeriodStart.toISOString()}:cancel${x.version}`, { keepPeriodGrants: true, events: [cancelled] })
              : { ...x.intent, events: [...(x.intent.events ?? []), cancelled] },
          nextRunAt: x.intent === null ? now : x.nextRunAt,
        };
      }
      return {
        ...x,
        status: "canceled",
        canceledAt: now,
        endedAt: now,
        pendingPlanId: null,
        pendingCredits: null,
        intent: intent(`sub:${x.id}:${x.currentPeriodStart.toISOString()}:cancel${x.version}`, {
          expireGrantIds: o.credits === "expire" ? x.periodGrantIds : [],
          keepPeriodGrants: o.credits !== "expire",
          events: [
            // Events still owed by an unstarted period's work (an earlier cancel) are not dropped.
            ...(x.intent?.events ?? []),
            lifecycleEvent(x, "subscription_cancelled", now, { atPeriodEnd: false }),
            lifecycleEvent(x, "subscription_ended", now, { status: "canceled", reason: "cancelled" }),
          ],
        }),
        nextRunAt: now,
      };
    });
  }

  /** Undoes a cancellation at period end (and turns renewal on). */
  async resume(userId: string): Promise<Subscription> {
    const user = parse(UserId, userId, "userId");
    return this.transition(user, (x) =>
      !x.cancelAtPeriodEnd && x.autoRenew ? null : { ...x, cancelAtPeriodEnd: false, autoRenew: true, canceledAt: null },
    );
  }

  /**
   * Brings one subscription up to `now`: completes the account work it owes, then renews (or ends)
   * every period that has ended, one guarded step at a time. Safe to call from several workers at
   * once. Used by the renewal job and `allocateSubscriptionCredits`.
   *
   * A `now` before the clock (a job run with a past `asOf`) brings it up to the clock instead: the
   * account work happens now and cannot be backdated, so moving to a period that has already ended
   * would allocate credits born expired (and roll them over), and leave a result that depends on
   * how the job was run. Periods that ended meanwhile are skipped, as in any late catch-up.
   */
  async advance(subscription: Subscription, asOf: Date = this.clock()): Promise<AdvanceResult> {
    const clock = this.clock();
    const now = asOf.getTime() < clock.getTime() ? clock : asOf;
    const result: AdvanceResult = { subscription, intentsCompleted: 0, renewed: 0, periodsSkipped: 0, ended: 0 };
    let s = subscription;
    for (let step = 0; ; step++) {
      if (step > 10_000) throw new Error(`subscription ${s.id} did not settle`);
      if (s.intent !== null) {
        // Work for a period that has not started yet waits for its start.
        if (s.status === "active" && s.currentPeriodStart.getTime() > now.getTime()) break;
        const done = await this.complete(s, now);
        if (done.completed) result.intentsCompleted++;
        s = done.subscription;
        continue;
      }
      if (s.status !== "active" || s.currentPeriodEnd.getTime() > now.getTime()) break;
      const { value: next, won } = await this.renew(s, now);
      if (!won) {
        s = next; // another worker moved it first: look again
        continue;
      }
      if (next.status === "active") {
        result.renewed++;
        const base = next.anchorAt.getTime() === s.anchorAt.getTime() ? s.periodIndex + 1 : 0;
        result.periodsSkipped += next.periodIndex - base;
      } else {
        result.ended++;
      }
      s = next;
    }
    result.subscription = s;
    return result;
  }

  // ---------------------------------------------------------------------------------------------

  /** The period end: end the subscription, or move to the period containing `now` and owe its work. */
  private async renew(s: Subscription, now: Date): Promise<{ value: Subscription; won: boolean }> {
    if (s.cancelAtPeriodEnd || !s.autoRenew) {
      return this.tryWrite(s, (x) => ended(x, x.cancelAtPeriodEnd ? "canceled" : "expired", x.cancelAtPeriodEnd ? "cancelled" : "not_renewed", now), now, false);
    }
    const plan = await this.db.getPlan(s.pendingPlanId ?? s.planId);
    if (plan === null) {
      await this.ledger?.logError("subscription ended: its plan no longer exists", { subscriptionId: s.id, planId: s.planId }, { userId: s.userId });
      return this.tryWrite(s, (x) => ended(x, "expired", "plan_missing", now), now, false);
    }
    const endingPlan = s.pendingPlanId === null ? plan : await this.db.getPlan(s.planId);
    // A new billing period starts a new cycle at the old period's end; else the cycle goes on.
    const sameCycle = plan.billingPeriod === s.billingPeriod;
    const anchor = sameCycle ? s.anchorAt : s.currentPeriodEnd;
    const index = Math.max(sameCycle ? s.periodIndex + 1 : 0, periodIndexAt(anchor, plan.billingPeriod, now));
    const period = periodAt(anchor, plan.billingPeriod, index);
    const policy = endingPlan?.rollover ?? "none";
    const carry =
      policy === "none" || s.pendingCredits === "expire" || s.periodGrantIds.length === 0
        ? null
        : {
            grantIds: s.periodGrantIds,
            periodEnd: s.currentPeriodEnd.getTime(),
            limit: policy === "all" ? null : (endingPlan?.rolloverCap ?? 0),
            expiresAt: period.end.getTime(),
          };
    const allocate = allocation(plan, period, now);
    return this.tryWrite(s, (x) => ({
      ...x,
      planId: plan.id,
      billingPeriod: plan.billingPeriod,
      anchorAt: anchor,
      periodIndex: index,
      currentPeriodStart: period.start,
      currentPeriodEnd: period.end,
      pendingPlanId: null,
      pendingCredits: null,
      intent: intent(`sub:${x.id}:${period.start.toISOString()}`, { allocate, carry }),
      nextRunAt: now,
      periodCredits: allocate?.amount ?? 0,
    }), now, false);
  }

  /**
   * Carries out the subscription's intent in one unit of work on the account, keyed by the
   * intent's key (a second run replays it), then clears it with a guarded write.
   */
  private async complete(s: Subscription, now: Date): Promise<{ subscription: Subscription; completed: boolean }> {
    const it = s.intent as SubscriptionIntent;
    const meta: EntryMeta = {
      idempotencyKey: systemKey(it.key),
      // Events are not part of it: they may join work already owed (see cancel).
      fingerprint: fingerprint("subscriptionPeriod", { ...it, events: undefined }),
      correlationId: it.key,
      description: `subscription ${s.id}`,
    };
    let outcome: { created: string[] } | { replayed: JournalEntry } | undefined;
    for (let race = 0; outcome === undefined; race++) {
      // What the period's grants had unspent when they expired, as far as committed work shows it
      // (read outside the unit of work, which checks that nothing changed it since).
      const expiry = it.carry === null ? null : await this.periodEndExpiry(s.userId, it.carry);
      try {
        outcome = await this.credits.runUnitOfWork<{ created: string[] } | { replayed: JournalEntry }>(
          s.userId,
          meta,
          async (work, tx) => ({ created: await this.applyIntent(work, tx, s, it, meta, expiry) }),
          async (first) => ({ replayed: first }),
          { settle: true, operation: "subscriptionPeriod" },
        );
      } catch (error) {
        if (!(error instanceof ExpiryMoved)) throw error;
        if (race >= MAX_RACES) throw new ConflictError(`The credits of subscription ${s.id} kept changing; try again.`, { subscriptionId: s.id });
      }
    }
    // Read outside the unit of work: a store with a connection pool must not be asked for a second
    // connection while the unit of work holds one.
    const newGrants = "created" in outcome ? outcome.created : await this.grantsOf(s.userId, outcome.replayed, it.key);
    let completed = false;
    for (let race = 0; ; race++) {
      const current = race === 0 ? s : await this.db.getSubscription(s.id);
      if (current === null || current.intent?.key !== it.key) return { subscription: current ?? s, completed };
      const next: Subscription = {
        ...current,
        intent: null,
        periodGrantIds: it.keepPeriodGrants ? [...current.periodGrantIds, ...newGrants] : newGrants,
        nextRunAt: current.status === "active" ? current.currentPeriodEnd : null,
        version: current.version + 1,
        updatedAt: now,
      };
      if (await this.db.updateSubscription(next, current.version)) {
        completed = true;
        return { subscription: next, completed };
      }
      if (race > MAX_RACES) throw new ConflictError(`Subscription ${s.id} kept changing; try again.`, { subscriptionId: s.id });
    }
  }

  /**
   * For each of the carried grants that expire at the period's end: how much it has expired in all
   * (`expired`), and how much of that it had unspent and unheld at the period's end (`atExpiry`):
   * what its closing `expire` entry took, plus what holds that had lapsed by then returned later.
   * The rest is credits held at the period's end by a hold still live then, which expired when it
   * returned them (`expire` entries with that `reservationId`, see `AccountWork`). Reads the user's
   * `expire` entries newest first, only as far back as each grant's closing entry.
   */
  private async periodEndExpiry(userId: string, carry: NonNullable<SubscriptionIntent["carry"]>): Promise<PeriodEndExpiry> {
    const out: PeriodEndExpiry = new Map();
    const open = new Map<string, { expired: number; seen: number; held: number }>();
    for (const id of carry.grantIds) {
      const g = await this.db.getGrant(id);
      if (g === null || g.userId !== userId || g.expiresAt?.getTime() !== carry.periodEnd) continue;
      const expired = g.expiredAmount ?? 0;
      if (g.closedAt === null || expired === 0) out.set(id, { expired, atExpiry: expired });
      else open.set(id, { expired, seen: 0, held: 0 });
    }
    const holds = new Map<string, Reservation | null>();
    const heldAtEnd = async (reservationId: string): Promise<boolean> => {
      if (!holds.has(reservationId)) holds.set(reservationId, await this.db.getReservation(reservationId));
      return liveAt(holds.get(reservationId) ?? null, carry.periodEnd);
    };
    const PAGE = 200;
    let beforeSeq: number | undefined;
    while (open.size > 0) {
      const page = await this.db.listJournal(userId, { order: "desc", types: ["expire"], limit: PAGE, ...(beforeSeq === undefined ? {} : { beforeSeq }) });
      for (const e of page) {
        for (const p of e.grants) {
          const x = open.get(p.grantId);
          if (x === undefined) continue;
          x.seen += p.amount;
          if (e.reservationId !== null && (await heldAtEnd(e.reservationId))) x.held += p.amount;
          // Its closing entry (or all it expired) reached: every later return has been seen.
          if (e.reservationId === null || x.seen >= x.expired) {
            out.set(p.grantId, { expired: x.expired, atExpiry: unspentAtEnd(x) });
            open.delete(p.grantId);
          }
        }
      }
      if (page.length < PAGE) break;
      beforeSeq = (page[page.length - 1] as JournalEntry).seq;
    }
    // Not reached (a journal written before returns were told apart): the best estimate.
    for (const [id, x] of open) out.set(id, { expired: x.expired, atExpiry: unspentAtEnd(x) });
    return out;
  }

  /** The account side of an intent. Always leaves at least one entry: the key's record. */
  private async applyIntent(
    work: AccountWork,
    tx: DbTransaction,
    s: Subscription,
    it: SubscriptionIntent,
    meta: EntryMeta,
    expiry: PeriodEndExpiry | null,
  ): Promise<string[]> {
    const start = work.entries.length;
    // The first entry of this work carries the idempotency key; the rest the correlation id.
    const m = (description: string): EntryMeta =>
      work.entries.length === start ? { ...meta, description } : { correlationId: meta.correlationId, description };
    const load = async (ids: readonly string[]): Promise<Grant[]> => {
      const missing = ids.filter((id) => work.getGrant(id) === undefined);
      if (missing.length > 0) work.include(await tx.getGrants(missing));
      return ids.map((id) => work.getGrant(id)).filter((g): g is Grant => g !== undefined);
    };
    const created: string[] = [];
    let creditsAdded = 0;
    const add = (amount: number, expiresAt: number | null, source: "subscription" | "rollover", description: string) => {
      const e = work.add(amount, {
        expiresAt: expiresAt === null ? null : new Date(expiresAt),
        priority: 0,
        source,
        sourceRef: it.key.slice(0, 255),
        description,
        metadata: { subscriptionId: s.id },
      }, m(description));
      for (const p of e.grants) created.push(p.grantId);
      creditsAdded += amount;
    };

    if (it.expireGrantIds.length > 0) {
      await load(it.expireGrantIds);
      work.expireGrants(it.expireGrantIds, m("subscription credits expired by a plan change or cancellation"));
    }
    if (it.carry !== null) {
      const grants = await load(it.carry.grantIds);
      // What these grants had unspent at the period's end, whoever expired them and whenever. Not
      // what was held then: those credits expire when their hold returns them, before or after
      // this runs (the amount must not depend on when the job runs).
      const eligible = grants.filter((g) => g.expiresAt !== null && g.expiresAt.getTime() === it.carry?.periodEnd);
      const stillOpen = eligible.filter((g) => g.closedAt === null).map((g) => g.id);
      if (stillOpen.length > 0) work.expireGrants(stillOpen, m("subscription period ended"));
      let unspent = 0;
      for (const g of eligible) {
        // Expiries in this unit of work (its settlement, the line above): the closing one, returns.
        const here = expiriesIn(work.entries, g.id, it.carry.periodEnd, (id) => work.getHold(id));
        const seen = expiry?.get(g.id) ?? { expired: 0, atExpiry: 0 };
        // Someone expired or returned credits of it since it was read: read again.
        if (((work.getGrant(g.id) ?? g).expiredAmount ?? 0) !== seen.expired + here.expired) throw new ExpiryMoved();
        unspent += seen.atExpiry + here.expired - here.held;
      }
      const moved = it.carry.limit === null ? unspent : Math.min(unspent, it.carry.limit);
      if (moved > 0 && (it.carry.expiresAt === null || it.carry.expiresAt > work.now.getTime())) {
        add(moved, it.carry.expiresAt, "rollover", `rollover of ${moved} unspent credits`);
      }
    }
    if (it.prorate !== null && it.prorate.delta > 0) {
      add(it.prorate.delta, it.prorate.expiresAt, "subscription", "prorated plan change");
    } else if (it.prorate !== null && it.prorate.delta < 0) {
      await load(s.periodGrantIds);
      work.removeFromGrants(s.periodGrantIds, -it.prorate.delta, m("prorated plan change"));
    }
    if (it.allocate !== null && it.allocate.amount > 0) {
      add(it.allocate.amount, it.allocate.expiresAt, "subscription", "subscription period credits");
    }
    // The outbox events go with the work, in the same transaction (when notifications are on).
    const accountWork = it.allocate !== null || it.carry !== null || it.prorate !== null || it.expireGrantIds.length > 0;
    if (accountWork) recordEvent(work, {
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
    for (const e of it.events ?? []) recordEvent(work, { type: e.type, payload: e.payload, dedupeKey: e.dedupeKey });
    if (work.entries.length === start) {
      // Nothing moved (a pay-as-you-go period, nothing to roll over): record the period anyway, so
      // the key proves it was handled and a late second run cannot act on it.
      const what = accountWork ? "subscription period (no credits)" : `subscription ${(it.events ?? []).map((e) => e.type.slice(13)).join(", ") || "change"}`;
      work.add(0, { expiresAt: null, priority: 0, source: "subscription", sourceRef: null, description: null, metadata: null }, m(what));
    }
    return created;
  }

  /** The grants a completed intent created, from its journal entries (committed, immutable). */
  private async grantsOf(userId: string, first: JournalEntry, key: string): Promise<string[]> {
    const entries = await this.db.listJournal(userId, { order: "asc", afterSeq: first.seq - 1, limit: 20 });
    const ids: string[] = [];
    for (const e of entries) {
      if (e.type === "add" && (e.idempotencyKey === key || e.correlationId === key)) for (const p of e.grants) ids.push(p.grantId);
    }
    return ids;
  }

  /**
   * A change of the user's active subscription that is saved or refused, never lost: reads it
   * (brought up to date), lets `decide` check the preconditions and return the changed subscription
   * (null: nothing to change), and writes that guarded by the version read. When another writer got
   * there first, it reads again and decides again on what that writer saved.
   */
  private async transition(
    user: string,
    decide: (s: Subscription, now: Date) => Subscription | null | Promise<Subscription | null>,
  ): Promise<Subscription> {
    for (let race = 0; race <= MAX_RACES; race++) {
      const now = this.clock();
      const s = await this.current(user, now);
      const next = await decide(s, now);
      if (next === null) return copy(s);
      const { value, won } = await this.tryWrite(s, () => next, now, false);
      if (won) return copy((await this.advance(value, now)).subscription);
    }
    throw new ConflictError(`The subscription of user ${user} kept changing; try again.`, { userId: user });
  }

  /**
   * Applies `change` to the subscription if its stored version is still the one read. On a lost
   * race: `retry` re-reads and applies it again; else returns what the other worker wrote.
   */
  private async tryWrite(
    s: Subscription,
    change: (s: Subscription) => Subscription,
    now: Date,
    retry: boolean,
  ): Promise<{ value: Subscription; won: boolean }> {
    let current: Subscription | null = s;
    for (let race = 0; race <= MAX_RACES; race++) {
      if (current === null) throw new NotFoundError(`Subscription ${s.id} not found.`, { subscriptionId: s.id });
      const next: Subscription = { ...change(current), version: current.version + 1, updatedAt: now };
      if (await this.db.updateSubscription(next, current.version)) return { value: next, won: true };
      current = await this.db.getSubscription(s.id);
      if (!retry && current !== null) return { value: current, won: false };
    }
    throw new ConflictError(`Subscription ${s.id} kept changing; try again.`, { subscriptionId: s.id });
  }

  /** The user's active subscription, brought up to date; `NotFoundError` when there is none. */
  private async current(user: string, now: Date): Promise<Subscription> {
    const s = await this.db.getActiveSubscription(user);
    if (s === null) throw new NotFoundError(`User ${user} has no active subscription.`, { userId: user });
    const { subscription } = await this.advance(s, now);
    if (subscription.status !== "active") throw new NotFoundError(`User ${user} has no active subscription.`, { userId: user });
    return subscription;
  }

  /** The user's active subscription, advanced when it is due (its period ended, or work is owed); null when none is active. */
  private async activeAt(user: string, now: Date): Promise<Subscription | null> {
    const s = await this.db.getActiveSubscription(user);
    if (s === null) return null;
    if (s.nextRunAt === null || s.nextRunAt.getTime() > now.getTime()) return s;
    const { subscription } = await this.advance(s, now);
    return subscription.status === "active" ? subscription : null;
  }

  /**
   * A `subscribe` that repeats the idempotency key `first` was created with: `first` (brought up to
   * date while active), or `IdempotencyConflictError` when its arguments contradict those of the
   * call that created it (`first.request`): plan, `autoRenew`, `startAt` (omitted: any), metadata.
   * What happened to the subscription since (a plan change, `resume`, a new cycle) does not matter.
   */
  private async repeat(first: Subscription, planId: string, o: SubscribeOptions & { startAt?: Date }, now: Date): Promise<Subscription> {
    // Subscriptions stored before `request` existed: compared with what they record now.
    const asked = first.request ?? { planId: first.planId, autoRenew: first.autoRenew, startAt: first.anchorAt.getTime() };
    const same =
      asked.planId === planId &&
      asked.autoRenew === (o.autoRenew ?? true) &&
      // No startAt started the cycle at the call's own time (`createdAt`).
      (o.startAt === undefined || o.startAt.getTime() === (asked.startAt ?? first.createdAt.getTime())) &&
      fingerprint("metadata", o.metadata ?? null) === fingerprint("metadata", first.metadata);
    if (!same) throw new IdempotencyConflictError(first.idempotencyKey ?? "");
    if (first.status !== "active") return copy(first);
    return copy((await this.advance(first, now)).subscription);
  }

  private async requirePlan(id: string): Promise<Plan> {
    const plan = await this.db.getPlan(id);
    if (plan === null) throw new NotFoundError(`Plan ${id} not found.`, { planId: id });
    return plan;
  }

  private async writePlan(id: string, change: (plan: Plan) => Plan): Promise<Plan> {
    for (let race = 0; race <= MAX_RACES; race++) {
      const plan = await this.requirePlan(id);
      const next: Plan = { ...change(plan), id, version: plan.version + 1, createdAt: plan.createdAt, updatedAt: this.clock() };
      if (next.rollover === "cap" && next.rolloverCap === null) throw invalid("patch.rollover", "a capped rollover needs a cap");
      if (await this.db.updatePlan(next, plan.version)) {
        await this.invalidatePlan(id);
        return next;
      }
    }
    throw new ConflictError(`Plan ${id} kept changing; try again.`, { planId: id });
  }

  /**
   * A plan or a list of plans: from the cache (`revive`d: a cache that serialises, like Redis,
   * returns string dates), else from the store through it (see `CacheAside.readThrough`). The
   * caller always gets a copy of its own: changing it changes nothing cached.
   */
  private async readPlans<T>(key: string, read: () => Promise<T>, revive: (hit: T) => T): Promise<T> {
    const cache = this.cache;
    if (cache === undefined) return copy(await read());
    const hit = await cache.get<T>(key);
    if (hit !== undefined) return revive(copy(hit));
    return copy(await cache.readThrough(key, read, copy));
  }

  /** After a plan write: its cached reads are dropped (and fills of reads in flight skipped). */
  private async invalidatePlan(id: string): Promise<void> {
    const cache = this.cache;
    if (cache !== undefined) await Promise.all([planKey(id), ...PLAN_LIST_KEYS].map((key) => cache.invalidate(key)));
  }
}

/** The expiry of a carried grant changed between its read and the unit of work: read again. */
class ExpiryMoved extends Error {
  constructor() {
    super("subscription credits changed while the rollover was computed");
  }
}

function rolloverFields(r: "none" | "all" | { cap: number }): Pick<Plan, "rollover" | "rolloverCap"> {
  return typeof r === "string" ? { rollover: r, rolloverCap: null } : { rollover: "cap", rolloverCap: r.cap };
}

function intent(key: string, parts: Partial<Omit<SubscriptionIntent, "key">>): SubscriptionIntent {
  return {
    key,
    allocate: parts.allocate ?? null,
    carry: parts.carry ?? null,
    expireGrantIds: parts.expireGrantIds ?? [],
    prorate: parts.prorate ?? null,
    keepPeriodGrants: parts.keepPeriodGrants ?? false,
    ...(parts.events === undefined || parts.events.length === 0 ? {} : { events: parts.events }),
  };
}

type LifecycleEvent = NonNullable<SubscriptionIntent["events"]>[number];

/** A `subscription_cancelled` or `subscription_ended` event of `s`, unique per user by its key. */
function lifecycleEvent(s: Subscription, type: LifecycleEvent["type"], at: Date, extra: Record<string, unknown>): LifecycleEvent {
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
function ended(x: Subscription, status: "canceled" | "expired", reason: string, now: Date): Subscription {
  return {
    ...x,
    status,
    endedAt: x.currentPeriodEnd,
    pendingPlanId: null,
    pendingCredits: null,
    intent: intent(`sub:${x.id}:${x.currentPeriodStart.toISOString()}:end`, {
      keepPeriodGrants: true,
      events: [lifecycleEvent(x, "subscription_ended", x.currentPeriodEnd, { status, reason })],
    }),
    nextRunAt: now,
  };
}

/** A period's allocation, or null when its credits could no longer be used (a period caught up late). */
function allocation(plan: Plan, period: { start: Date; end: Date }, now: Date): SubscriptionIntent["allocate"] {
  if (plan.creditsPerPeriod === 0) return null;
  const expiresAt = allocationExpiry(period, plan.validityDays);
  if (expiresAt.getTime() <= now.getTime()) return null;
  return { amount: plan.creditsPerPeriod, expiresAt: expiresAt.getTime() };
}

function alreadySubscribed(s: Subscription): ConflictError {
  return new ConflictError(`User ${s.userId} already has an active subscription (use changePlan).`, {
    userId: s.userId,
    subscriptionId: s.id,
  });
}

function invalid(path: string, message: string): ValidationError {
  return new ValidationError(`Invalid ${path}: ${message}`, [{ path, message }]);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Plans from a cache that serialises (Redis) come back with string dates. */
function revivePlan(p: Plan): Plan {
  return { ...p, createdAt: new Date(p.createdAt), updatedAt: new Date(p.updatedAt) };
}
