import type { Grant, JournalEntry, Subscription } from "../../src/core/models/index.js";
import type { CreditModel } from "../../src/core/testing/model.js";
import { expireGrantNow, findGrant } from "./model.js";

/**
 * The simulation's model of subscriptions, written from docs/subscriptions.md without the
 * library's code: daily plans (exact days from the cycle's anchor), allocations that expire at the
 * period's end, and a renewal's rollover of what the ended period's grants had unspent and unheld at
 * its end, up to the ending plan's cap. Every write of a subscription the store took is checked against it
 * (a completion, a renewal or ending at the period's end, or the transition the request asked for),
 * and the account work a transition owes (its intent's key) must be carried out once, with the
 * amounts the model expects.
 */

export const DAY = 86_400_000;

export const PLANS: Readonly<Record<string, number>> = { basic: 100, pro: 300, max: 200 };

/** Each plan's rollover (docs/subscriptions.md, "Rollover"): none, capped, all. */
export const ROLLOVER: Readonly<Record<string, "none" | "all" | { cap: number }>> = {
  basic: "none",
  pro: { cap: 120 },
  max: "all",
};

export interface ModelSub {
  id: string;
  userId: string;
  planId: string;
  pendingPlanId: string | null;
  status: "active" | "canceled" | "expired";
  cancelAtPeriodEnd: boolean;
  autoRenew: boolean;
  anchor: number;
  index: number;
  /** What the period is on: its allocation, or the plan of a prorated change since. */
  periodCredits: number;
  /** The period's grants (allocation, proration), as the model knows them. */
  periodGrants: string[];
}

export interface OwedWork {
  subscriptionId: string;
  userId: string;
  /** Subscription grants the work adds: [amount, expiresAt]. */
  grants: Array<[number, number]>;
  /** Grants it expires now (a change or cancel with credits "expire"). */
  expire: string[];
  /** Credits a prorated downgrade removes, at most, from the period's unspent, unheld credits. */
  remove: number;
  /** The added grants replace the period's grants (a new period), else join them. */
  replace: boolean;
  /**
   * A renewal's rollover: what the ended period's grants (`grants`, those expiring at `periodEnd`)
   * had unspent and unheld at that end, up to `cap` (null: all), as a grant expiring at `expiresAt`,
   * added before the allocation.
   */
  carry: { grants: string[]; periodEnd: number; cap: number | null; expiresAt: number } | null;
  done: boolean;
}

/** The kind of request a subscription write may be made for. */
export type SubRequest =
  | { kind: "subscribe"; user: string; plan: string }
  | { kind: "cancelEnd"; user: string }
  | { kind: "cancelNow"; user: string; credits: "keep" | "expire" }
  | { kind: "resume"; user: string }
  | { kind: "changeEnd"; user: string; plan: string }
  | { kind: "changeNow"; user: string; plan: string; credits: "keep" | "expire" | "prorate" };

export const periodStart = (s: ModelSub): number => s.anchor + s.index * DAY;
export const periodEnd = (s: ModelSub): number => s.anchor + (s.index + 1) * DAY;

export class SubscriptionsModel {
  readonly subs = new Map<string, ModelSub>();
  readonly owed = new Map<string, OwedWork>();
  /** Renewals that carried a rollover grant, as the model owed it. */
  rollovers = 0;

  constructor(private readonly fail: (what: string) => never) {}

  /** The user's subscription the model counts as active (its status; the period may have ended). */
  activeOf(userId: string): ModelSub | undefined {
    for (const s of this.subs.values()) if (s.userId === userId && s.status === "active") return s;
    return undefined;
  }

  /** True when the user's period has ended and the next one is due (it renews). */
  renewalDue(userId: string, now: number): boolean {
    const s = this.activeOf(userId);
    return s !== undefined && periodEnd(s) <= now && s.autoRenew && !s.cancelAtPeriodEnd;
  }

  private owe(
    s: Subscription,
    grants: Array<[number, number]>,
    more: { expire?: string[]; remove?: number; replace?: boolean; carry?: OwedWork["carry"] } = {},
  ): void {
    const key = s.intent?.key;
    if (key === undefined) this.fail(`subscription ${s.id} owes account work but records no intent`);
    if (this.owed.has(key)) this.fail(`two transitions of subscription ${s.id} owe work under one key ${key}`);
    this.owed.set(key, {
      subscriptionId: s.id,
      userId: s.userId,
      grants,
      expire: more.expire ?? [],
      remove: more.remove ?? 0,
      replace: more.replace ?? false,
      carry: more.carry ?? null,
      done: false,
    });
  }

  /** The allocation of the period the model is in, if it can still be used at `now`. */
  private allocation(m: ModelSub, now: number): Array<[number, number]> {
    const end = periodEnd(m);
    const credits = PLANS[m.planId] ?? this.fail(`unknown plan ${m.planId}`);
    return end > now ? [[credits, end]] : [];
  }

  /** An insertSubscription the store took, made by `request`. */
  inserted(s: Subscription, request: SubRequest | undefined, now: number): void {
    const where = `subscription ${s.id} inserted`;
    if (request?.kind !== "subscribe" || request.user !== s.userId)
      this.fail(`${where} by a request that is no subscribe of its user`);
    const active = this.activeOf(s.userId);
    if (active !== undefined) this.fail(`${where} while ${active.id} is active (one active subscription per user)`);
    const m: ModelSub = {
      id: s.id,
      userId: s.userId,
      planId: request.plan,
      pendingPlanId: null,
      status: "active",
      cancelAtPeriodEnd: false,
      autoRenew: true,
      anchor: now,
      index: 0,
      periodCredits: PLANS[request.plan] ?? 0,
      periodGrants: [],
    };
    this.subs.set(s.id, m);
    this.compare(m, s, where);
    this.owe(s, this.allocation(m, now), { replace: true });
  }

  /** An updateSubscription the store took (compare-and-set won), made while running `request`. */
  updated(s: Subscription, request: SubRequest | undefined, now: number): void {
    const m = this.subs.get(s.id) ?? this.fail(`update of subscription ${s.id} the model never saw inserted`);
    const where = `update of subscription ${s.id} (v${s.version}) during ${JSON.stringify(request ?? null)}`;
    const end = periodEnd(m);
    const newIntent = s.intent !== null && !this.owed.has(s.intent.key);
    if (m.status !== "active") {
      // Only the work it owes is completed after it ended.
      if (s.status !== m.status) this.fail(`${where}: an ended subscription changed status to ${s.status}`);
      this.compare(m, s, where);
      return;
    }
    if (s.status !== "active") {
      if (end <= now && (m.cancelAtPeriodEnd || !m.autoRenew)) {
        m.status = m.cancelAtPeriodEnd ? "canceled" : "expired";
      } else if (request?.kind === "cancelNow") {
        m.status = "canceled";
        m.pendingPlanId = null;
        this.compare(m, s, where);
        if (newIntent) this.owe(s, [], { expire: request.credits === "expire" ? m.periodGrants : [] });
        return;
      } else {
        this.fail(`${where}: ended (${s.status}) although the model has it active to ${new Date(end).toISOString()}`);
      }
      m.pendingPlanId = null;
      this.compare(m, s, where);
      if (newIntent) this.owe(s, []);
      return;
    }
    const start = s.currentPeriodStart.getTime();
    const asked =
      request?.kind === "changeNow" &&
      request.user === m.userId &&
      s.planId === request.plan &&
      m.planId !== request.plan;
    if (asked && request.credits === "prorate" && s.anchorAt.getTime() === m.anchor && start === periodStart(m)) {
      // Prorated: the period keeps its dates; the difference for the time left, truncated.
      const credits = PLANS[request.plan] ?? 0;
      const delta = Math.trunc(
        (credits - m.periodCredits) * Math.min(1, Math.max(0, (end - now) / (end - periodStart(m)))),
      );
      m.planId = request.plan;
      m.pendingPlanId = null;
      m.periodCredits = credits;
      this.compare(m, s, where);
      if (!newIntent) this.fail(`${where}: a prorated change owes no account work`);
      this.owe(s, delta > 0 && end > now ? [[delta, end]] : [], { remove: Math.max(0, -delta) });
      return;
    }
    // A change now (keep, expire) starts a new cycle at now (which may be the old cycle's anchor too).
    const changedNow = asked && request.credits !== "prorate" && s.anchorAt.getTime() === now;
    if (start !== periodStart(m) || changedNow) {
      if (s.anchorAt.getTime() === m.anchor && !changedNow) {
        // A renewal: only at the period's end, to the period containing now, on the pending plan.
        if (end > now) this.fail(`${where}: renewed before its period's end ${new Date(end).toISOString()}`);
        if (m.cancelAtPeriodEnd || !m.autoRenew) this.fail(`${where}: renewed although it was to end`);
        // The ending plan's rollover of the ended period's grants.
        const rollover = ROLLOVER[m.planId] ?? "none";
        const ended = { grants: m.periodGrants, periodEnd: periodEnd(m) };
        m.planId = m.pendingPlanId ?? m.planId;
        m.pendingPlanId = null;
        m.index = Math.max(m.index + 1, Math.floor((now - m.anchor) / DAY));
        m.periodCredits = PLANS[m.planId] ?? 0;
        this.compare(m, s, where);
        if (!newIntent) this.fail(`${where}: a new period owes no allocation`);
        const carry =
          rollover === "none"
            ? null
            : { ...ended, cap: rollover === "all" ? null : rollover.cap, expiresAt: periodEnd(m) };
        this.owe(s, this.allocation(m, now), { replace: true, carry });
        return;
      }
      if (!changedNow)
        this.fail(
          `${where}: its period moved to ${s.currentPeriodStart.toISOString()} without a renewal or a plan change`,
        );
      const old = m.periodGrants;
      m.planId = request.plan;
      m.pendingPlanId = null;
      m.anchor = now;
      m.index = 0;
      m.periodCredits = PLANS[m.planId] ?? 0;
      this.compare(m, s, where);
      if (!newIntent) this.fail(`${where}: a new period owes no allocation`);
      this.owe(s, this.allocation(m, now), { replace: true, expire: request.credits === "expire" ? old : [] });
      return;
    }
    if (s.pendingPlanId !== m.pendingPlanId) {
      if (request?.kind !== "changeEnd" || request.plan !== s.pendingPlanId)
        this.fail(`${where}: pendingPlanId ${String(s.pendingPlanId)} not asked for`);
      m.pendingPlanId = request.plan;
    }
    if (s.cancelAtPeriodEnd !== m.cancelAtPeriodEnd || s.autoRenew !== m.autoRenew) {
      if (s.cancelAtPeriodEnd && request?.kind === "cancelEnd") m.cancelAtPeriodEnd = true;
      else if (!s.cancelAtPeriodEnd && request?.kind === "resume") {
        m.cancelAtPeriodEnd = false;
        m.autoRenew = true;
      } else this.fail(`${where}: cancelAtPeriodEnd ${s.cancelAtPeriodEnd} not asked for`);
    }
    this.compare(m, s, where);
    if (newIntent) this.owe(s, []);
  }

  private compare(m: ModelSub, s: Subscription, where: string): void {
    const want = {
      userId: m.userId,
      planId: m.planId,
      pendingPlanId: m.pendingPlanId,
      status: m.status,
      cancelAtPeriodEnd: m.cancelAtPeriodEnd,
      autoRenew: m.autoRenew,
      anchorAt: m.anchor,
      currentPeriodStart: periodStart(m),
      currentPeriodEnd: periodEnd(m),
    };
    const got = {
      userId: s.userId,
      planId: s.planId,
      pendingPlanId: s.pendingPlanId,
      status: s.status,
      cancelAtPeriodEnd: s.cancelAtPeriodEnd,
      autoRenew: s.autoRenew,
      anchorAt: s.anchorAt.getTime(),
      currentPeriodStart: s.currentPeriodStart.getTime(),
      currentPeriodEnd: s.currentPeriodEnd.getTime(),
    };
    if (JSON.stringify(want) !== JSON.stringify(got))
      this.fail(`${where}: stored ${JSON.stringify(got)}, the model ${JSON.stringify(want)}`);
  }

  /**
   * A unit of work carrying out the work owed under `key`, applied to the account's model `m`
   * (already settled): the grants it expires, what a prorated downgrade removes (up to what is
   * asked, from the period's unspent credits, never below zero), and the credits its `add` entries
   * add (the part paying debt included), which must be the ones owed.
   */
  carry(key: string, m: CreditModel, entries: readonly JournalEntry[], inserted: readonly Grant[]): void {
    const w = this.owed.get(key) ?? this.fail(`account work under ${key} that no subscription owes`);
    if (w.done) this.fail(`account work under ${key} carried out twice`);
    w.done = true;
    const sub =
      this.subs.get(w.subscriptionId) ?? this.fail(`account work of unknown subscription ${w.subscriptionId}`);
    for (const id of w.expire) {
      const g = findGrant(m, id);
      if (g !== undefined) expireGrantNow(m, g);
    }
    // (Voids carrying a reservationId are settlement: a lapsed hold returning credits to a voided grant.)
    const voids = entries.filter((e) => e.type === "void" && e.reservationId === null);
    const voided = voids.reduce((n, e) => n + e.amount, 0);
    const unspent = sub.periodGrants.reduce((n, id) => {
      const g = findGrant(m, id);
      return n + (g === undefined || g.closed !== null ? 0 : g.remaining);
    }, 0);
    if (voided !== Math.min(w.remove, unspent)) {
      this.fail(
        `account work under ${key} removed ${voided}; the model removes ${Math.min(w.remove, unspent)} (asked ${w.remove}, the period has ${unspent} unspent)`,
      );
    }
    for (const e of voids) {
      for (const part of e.grants) {
        const g = findGrant(m, part.grantId);
        if (g === undefined || !sub.periodGrants.includes(g.id) || g.closed !== null || g.remaining < part.amount) {
          this.fail(
            `account work under ${key} removed ${part.amount} from grant ${part.grantId}, not the period's unspent credits`,
          );
        }
        g.remaining -= part.amount;
        m.balance -= part.amount;
      }
    }
    const carried = this.rollover(w, m);
    const owed = [...carried, ...w.grants];
    const adds = entries.filter((e) => e.type === "add" && e.amount > 0);
    const got = adds.map((e) => {
      const g = inserted.find((x) => x.id === e.grants[0]?.grantId);
      return [e.amount, g === undefined ? null : (g.expiresAt?.getTime() ?? null)];
    });
    const want = owed.map(([amount, expiresAt], i) => [amount, got[i]?.[1] === null ? null : expiresAt]);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      this.fail(
        `account work under ${key} added [amount, expiry] ${JSON.stringify(got)}, the model owes ${JSON.stringify(owed)}`,
      );
    }
    this.rollovers += carried.length;
    const added: string[] = [];
    adds.forEach((e, i) => {
      const id = e.grants[0]?.grantId ?? null;
      m.add(id, e.amount, (owed[i] as [number, number])[1], 0);
      if (id !== null) added.push(id);
    });
    sub.periodGrants = w.replace ? added : [...sub.periodGrants, ...added];
  }
  /**
   * The rollover grant a renewal owes (none, or [amount, expiresAt]): what the ended period's grants
   * expiring at its end had unspent and unheld then (`expiredAtExpiry`, set when the model expired
   * them; one still open expires now, in this unit of work), up to the cap; nothing when the grant
   * would be born expired.
   */
  private rollover(w: OwedWork, m: CreditModel): Array<[number, number]> {
    const carry = w.carry;
    if (carry === null) return [];
    let unspent = 0;
    for (const id of carry.grants) {
      const g = findGrant(m, id);
      if (g === undefined || g.expiresAt !== carry.periodEnd) continue;
      if (g.closed === null) expireGrantNow(m, g);
      unspent += g.expiredAtExpiry ?? 0;
    }
    const moved = carry.cap === null ? unspent : Math.min(unspent, carry.cap);
    return moved > 0 && carry.expiresAt > m.now ? [[moved, carry.expiresAt]] : [];
  }
}
