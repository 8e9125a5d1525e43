import type { Logger } from "../logger.js";
import { CacheAside } from "../cache/aside.js";
import type { Cache } from "../cache/index.js";
import type { DbManager } from "../db/types.js";
import * as rules from "../domain/subscriptions.js";
import { ConfigurationError, ConflictError, IdempotencyConflictError, NotFoundError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import { UserId } from "../models/common.js";
import { parse } from "../models/parse.js";
import {
  CancelOptions,
  ChangePlanOptions,
  CreatePlanInput,
  ListPlansOptions,
  PlanId,
  ResumeOptions,
  SubscribeOptions,
  UpdatePlanInput,
  type Plan,
  type Subscription,
} from "../models/subscriptions.js";
import type { CoreCreditService } from "./credit-service.js";
import { creditCore } from "./credit-service.js";
import { SubscriptionPeriods } from "./subscription-periods.js";
import { copy } from "./history.js";
import { newId } from "../util/uuid.js";

/**
 * Options of `new SubscriptionService()`: the store, the credit service, the ledger, the clock and the
 * logger. @public
 */
export interface SubscriptionServiceOptions {
  /** The store. */
  db: DbManager;
  /**
   * The credit service whose units of work allocate, roll over and expire credits, built with
   * `subscriptions: true`.
   */
  credits: CoreCreditService;
  /** The audit ledger; omit for none. */
  ledger?: LedgerLogger;
  /** Caches `getPlan` and `listPlans`; invalidated on every plan write. */
  cache?: Cache;
  /** Default: the credit service's clock. */
  clock?: () => Date;
  /** Where warnings and errors are logged. Default: none. */
  logger?: Logger;
  /** TTL of cached plans, in seconds. Default 300. */
  cacheTtlSeconds?: number;
}

/** What `advance` did to one subscription (the renewal job sums these). @public */
export interface AdvanceResult {
  /** The subscription as it is after the advance. */
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
 * @public
 */
export class SubscriptionService {
  /** The store this service reads and writes. */
  readonly db: DbManager;
  /** Brings subscriptions up to a time (shared with the credit service's units of work). */
  private readonly periods: SubscriptionPeriods;
  /** The plan cache, when there is one. */
  private readonly cache: CacheAside | undefined;
  private readonly clock: () => Date;

  /** A subscription service over `options.db`; `createCreditManager` builds one. */
  constructor(options: SubscriptionServiceOptions) {
    this.db = options.db;
    this.cache = options.cache && new CacheAside(options.cache, options.cacheTtlSeconds ?? 300, options.logger);
    const core = creditCore(options.credits);
    // Periods start on time only when the credit service brings them (docs/subscriptions.md).
    if (!core.bringsPeriods) {
      throw new ConfigurationError(
        "[credit-management] SubscriptionService: build its CreditService with `subscriptions: true` (createCreditManager does), so a due period is brought before an operation",
      );
    }
    this.clock = options.clock ?? core.clock;
    this.periods = new SubscriptionPeriods({ db: this.db, core, ledger: options.ledger, clock: this.clock });
  }

  // ---------------------------------------------------------------------------------------------
  // Plans.

  /** Creates a plan. `rollover`: "none" (default), "all" or `{ cap }`. */
  async createPlan(input: CreatePlanInput): Promise<Plan> {
    const i = parse(CreatePlanInput, input, "plan");
    const now = this.clock();
    const plan: Plan = {
      id: i.id ?? newId(),
      name: i.name,
      description: i.description ?? null,
      creditsPerPeriod: i.creditsPerPeriod,
      price: i.price ?? 0,
      currency: (i.currency ?? "USD").toUpperCase(),
      billingPeriod: i.billingPeriod,
      validityDays: i.validityDays ?? null,
      ...rules.rolloverFields(i.rollover ?? "none"),
      allowances: i.allowances ?? [],
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
      if (rollover !== undefined) Object.assign(next, rules.rolloverFields(rollover));
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
      // Put back as it was; a failure to is said in the answer rather than lost.
      const restored =
        !before.isActive ||
        (await this.writePlan(id, (plan) => ({ ...plan, isActive: true })).then(
          () => true,
          () => false,
        ));
      throw new ConflictError(
        `Plan ${id} has subscribers: it cannot be deleted (deactivate it instead).` +
          (restored ? "" : " Reactivating it failed: it was left inactive."),
        restored ? { planId: id } : { planId: id, leftInactive: true },
      );
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
    return this.readPlans(
      key,
      async () => (await this.db.listPlans({ includeInactive: o.includeInactive === true })).map(withAllowances),
      (hit) => hit.map(revivePlan),
    );
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
      if (o.idempotencyKey !== undefined && existing.idempotencyKey === o.idempotencyKey)
        return this.repeat(existing, pid, o, now);
      throw alreadySubscribed(existing);
    }
    const s = rules.subscribe(newId(), user, await this.requirePlan(pid), o, now);
    try {
      await this.db.insertSubscription(s);
    } catch (error) {
      if (!(error instanceof ConflictError)) throw error;
      const winner = await this.db.getActiveSubscription(user);
      if (winner === null) throw error;
      if (o.idempotencyKey !== undefined && winner.idempotencyKey === o.idempotencyKey)
        return this.repeat(winner, pid, o, now);
      throw alreadySubscribed(winner);
    }
    // The plan may have been deactivated (and be on its way to deletion) since it was read.
    const check = await this.db.getPlan(pid);
    if (check === null || !check.isActive) {
      // Retried until it lands: another worker may have completed the first period's work meanwhile.
      await this.periods.tryWrite(s, (x) => rules.abandon(x, now), now, true);
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
    const { idempotencyKey, ...o } = parse(ChangePlanOptions, options, "options");
    const mode = rules.changeMode(o);
    const print = idempotencyKey === undefined ? "" : rules.changePrint("changePlan", { planId: pid, ...o });
    const replayed = await this.replayedChange(user, idempotencyKey, print);
    if (replayed !== null) return replayed;
    const plan = rules.requireActivePlan(await this.requirePlan(pid));
    return this.transition(user, idempotencyKey, print, async (s, now) => {
      // Subscriptions stored before `periodCredits` (`periodAllowances`) existed prorate against
      // their plan's current figures.
      // The old plan's price is what a prorated change's price is the difference from (docs/revenue.md).
      const old = await this.db.getPlan(s.planId);
      const periodCredits = s.periodCredits ?? old?.creditsPerPeriod ?? 0;
      const periodAllowances = s.periodAllowances ?? (old === null ? [] : rules.planAllowances(old));
      return rules.changePlan(s, plan, mode, now, periodCredits, periodAllowances, old);
    });
  }

  /**
   * Cancels. `atPeriodEnd` (default true): the subscription runs to its period's end, then ends
   * without renewing (`resume` undoes it until then). `atPeriodEnd: false`: it ends now; its
   * period's credits stay until they expire (`credits: "keep"`, default) or expire now ("expire").
   */
  async cancel(userId: string, options: CancelOptions = {}): Promise<Subscription> {
    const user = parse(UserId, userId, "userId");
    const { idempotencyKey, ...o } = parse(CancelOptions, options, "options");
    const mode = rules.cancelMode(o);
    const print = idempotencyKey === undefined ? "" : rules.changePrint("cancel", o);
    const replayed = await this.replayedChange(user, idempotencyKey, print);
    if (replayed !== null) return replayed;
    return this.transition(user, idempotencyKey, print, (x, now) => rules.cancel(x, mode, now));
  }

  /**
   * Undoes a cancellation at period end (and turns renewal on). With an `idempotencyKey`, a retry
   * returns the subscription and changes nothing, as for `cancel` and `changePlan`.
   */
  async resume(userId: string, options: ResumeOptions = {}): Promise<Subscription> {
    const user = parse(UserId, userId, "userId");
    const { idempotencyKey } = parse(ResumeOptions, options, "options");
    const print = idempotencyKey === undefined ? "" : rules.changePrint("resume", {});
    const replayed = await this.replayedChange(user, idempotencyKey, print);
    if (replayed !== null) return replayed;
    return this.transition(user, idempotencyKey, print, (x) => rules.resume(x));
  }

  /**
   * A keyed `cancel`, `resume` or `changePlan` that repeats an earlier call's key: the subscription
   * that call changed (brought up to date while active), nothing changed again; null when the key
   * is new. Other arguments with the key are an `IdempotencyConflictError`.
   */
  private async replayedChange(user: string, key: string | undefined, print: string): Promise<Subscription | null> {
    if (key === undefined) return null;
    const first = rules.changedWithKey(await this.db.listSubscriptions(user), key, print);
    if (first === null) return null;
    if (first.status !== "active") return copy(first);
    return copy((await this.advance(first, this.clock())).subscription);
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
    return this.periods.advance(subscription, asOf);
  }

  /**
   * A change of the user's active subscription that is saved or refused, never lost: reads it
   * (brought up to date), lets `decide` check the preconditions and return the changed subscription
   * (null: nothing to change), and writes that guarded by the version read. When another writer got
   * there first, it reads again and decides again on what that writer saved.
   */
  private async transition(
    user: string,
    key: string | undefined,
    print: string,
    decide: (s: Subscription, now: Date) => Subscription | null | Promise<Subscription | null>,
  ): Promise<Subscription> {
    for (let race = 0; race <= MAX_RACES; race++) {
      const now = this.clock();
      const s = await this.current(user, now);
      // A call with this key that won a race with this one: its result is the answer.
      if (key !== undefined && rules.changedWithKey([s], key, print) !== null) return copy(s);
      const decided = await decide(s, now);
      // A keyed change is recorded even when it changes nothing else, so its retry is a replay.
      const next = key === undefined ? decided : rules.withChangeKey(decided ?? s, key, print);
      if (next === null) return copy(s);
      const { value, won } = await this.periods.tryWrite(s, () => next, now, false);
      if (won) return copy((await this.advance(value, now)).subscription);
    }
    throw new ConflictError(`The subscription of user ${user} kept changing; try again.`, { userId: user });
  }

  /** The user's active subscription, brought up to date; `NotFoundError` when there is none. */
  private async current(user: string, now: Date): Promise<Subscription> {
    const s = await this.db.getActiveSubscription(user);
    if (s === null) throw new NotFoundError(`User ${user} has no active subscription.`, { userId: user });
    const { subscription } = await this.advance(s, now);
    if (subscription.status !== "active")
      throw new NotFoundError(`User ${user} has no active subscription.`, { userId: user });
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
  private async repeat(
    first: Subscription,
    planId: string,
    o: SubscribeOptions & { startAt?: Date },
    now: Date,
  ): Promise<Subscription> {
    if (!rules.repeatsRequest(first, planId, o)) throw new IdempotencyConflictError(first.idempotencyKey ?? "");
    if (first.status !== "active") return copy(first);
    return copy((await this.advance(first, now)).subscription);
  }

  private async requirePlan(id: string): Promise<Plan> {
    const plan = await this.db.getPlan(id);
    if (plan === null) throw new NotFoundError(`Plan ${id} not found.`, { planId: id });
    return withAllowances(plan);
  }

  private async writePlan(id: string, change: (plan: Plan) => Plan): Promise<Plan> {
    for (let race = 0; race <= MAX_RACES; race++) {
      const plan = await this.requirePlan(id);
      const next: Plan = {
        ...change(plan),
        id,
        version: plan.version + 1,
        createdAt: plan.createdAt,
        updatedAt: this.clock(),
      };
      rules.checkRollover(next);
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

function alreadySubscribed(s: Subscription): ConflictError {
  return new ConflictError(`User ${s.userId} already has an active subscription (use changePlan).`, {
    userId: s.userId,
    subscriptionId: s.id,
  });
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Plans from a cache that serialises (Redis) come back with string dates. */
function revivePlan(p: Plan): Plan {
  return { ...p, createdAt: new Date(p.createdAt), updatedAt: new Date(p.updatedAt) };
}

/** A plan as the service returns it: plans stored before allowances existed have none (`[]`). */
function withAllowances(p: Plan): Plan {
  return { ...p, allowances: p.allowances ?? [] };
}
