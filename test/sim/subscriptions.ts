import type { Grant, JournalEntry, Subscription } from "../../src/models/index.js";

/**
 * The simulation's model of subscriptions, written from docs/subscriptions.md without the
 * library's code: daily plans (exact days from the cycle's anchor), no rollover, allocations that
 * expire at the period's end. Every write of a subscription the store took is checked against it
 * (a completion, a renewal or ending at the period's end, or the transition the request asked for),
 * and the account work a transition owes (its intent's key) must be carried out once, with the
 * amounts the model expects.
 */

export const DAY = 86_400_000;

export const PLANS: Readonly<Record<string, number>> = { basic: 100, pro: 300 };

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
  /** Keys of account work owed and not yet seen committed. */
}

export interface OwedWork {
  subscriptionId: string;
  userId: string;
  /** Subscription grants the work adds: [amount, expiresAt]. */
  grants: Array<[number, number]>;
  done: boolean;
}

/** The kind of request a subscription write may be made for. */
export type SubRequest =
  | { kind: "subscribe"; user: string; plan: string }
  | { kind: "cancelEnd"; user: string }
  | { kind: "cancelNow"; user: string }
  | { kind: "resume"; user: string }
  | { kind: "changeEnd"; user: string; plan: string }
  | { kind: "changeNow"; user: string; plan: string };

export const periodStart = (s: ModelSub): number => s.anchor + s.index * DAY;
export const periodEnd = (s: ModelSub): number => s.anchor + (s.index + 1) * DAY;

export class SubscriptionsModel {
  readonly subs = new Map<string, ModelSub>();
  readonly owed = new Map<string, OwedWork>();

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

  private owe(s: Subscription, grants: Array<[number, number]>): void {
    const key = s.intent?.key;
    if (key === undefined) this.fail(`subscription ${s.id} owes account work but records no intent`);
    if (this.owed.has(key)) this.fail(`two transitions of subscription ${s.id} owe work under one key ${key}`);
    this.owed.set(key, { subscriptionId: s.id, userId: s.userId, grants, done: false });
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
    if (request?.kind !== "subscribe" || request.user !== s.userId) this.fail(`${where} by a request that is no subscribe of its user`);
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
    };
    this.subs.set(s.id, m);
    this.compare(m, s, where);
    this.owe(s, this.allocation(m, now));
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
      } else {
        this.fail(`${where}: ended (${s.status}) although the model has it active to ${new Date(end).toISOString()}`);
      }
      m.pendingPlanId = null;
      this.compare(m, s, where);
      if (newIntent) this.owe(s, []);
      return;
    }
    const start = s.currentPeriodStart.getTime();
    // A change now starts a new cycle at now (which may be the old cycle's anchor too).
    const changedNow = request?.kind === "changeNow" && request.user === m.userId && s.planId === request.plan && m.planId !== request.plan && s.anchorAt.getTime() === now;
    if (start !== periodStart(m) || changedNow) {
      if (s.anchorAt.getTime() === m.anchor && !changedNow) {
        // A renewal: only at the period's end, to the period containing now, on the pending plan.
        if (end > now) this.fail(`${where}: renewed before its period's end ${new Date(end).toISOString()}`);
        if (m.cancelAtPeriodEnd || !m.autoRenew) this.fail(`${where}: renewed although it was to end`);
        m.planId = m.pendingPlanId ?? m.planId;
        m.pendingPlanId = null;
        m.index = Math.max(m.index + 1, Math.floor((now - m.anchor) / DAY));
      } else if (changedNow) {
        m.planId = request.plan;
        m.pendingPlanId = null;
        m.anchor = now;
        m.index = 0;
      } else {
        this.fail(`${where}: its period moved to ${s.currentPeriodStart.toISOString()} without a renewal or a plan change`);
      }
      this.compare(m, s, where);
      if (!newIntent) this.fail(`${where}: a new period owes no allocation`);
      this.owe(s, this.allocation(m, now));
      return;
    }
    if (s.pendingPlanId !== m.pendingPlanId) {
      if (request?.kind !== "changeEnd" || request.plan !== s.pendingPlanId) this.fail(`${where}: pendingPlanId ${String(s.pendingPlanId)} not asked for`);
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
    if (JSON.stringify(want) !== JSON.stringify(got)) this.fail(`${where}: stored ${JSON.stringify(got)}, the model ${JSON.stringify(want)}`);
  }

  /**
   * A unit of work carrying out the work owed under `key`: the credits its `add` entries add (the
   * part paying debt included) must be the ones owed. Returns them as [grantId | null, amount,
   * expiresAt] for the account model (no grant when debt took all of it).
   */
  carriedOut(key: string, entries: readonly JournalEntry[], inserted: readonly Grant[]): Array<[string | null, number, number]> {
    const w = this.owed.get(key) ?? this.fail(`account work under ${key} that no subscription owes`);
    if (w.done) this.fail(`account work under ${key} carried out twice`);
    w.done = true;
    const adds = entries.filter((e) => e.type === "add" && e.amount > 0);
    const got = adds.map((e) => {
      const g = inserted.find((x) => x.id === e.grants[0]?.grantId);
      return [e.amount, g === undefined ? null : (g.expiresAt?.getTime() ?? null)];
    });
    const want = w.grants.map(([amount, expiresAt], i) => [amount, got[i]?.[1] === null ? null : expiresAt]);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      this.fail(`account work under ${key} added [amount, expiry] ${JSON.stringify(got)}, the model owes ${JSON.stringify(w.grants)}`);
    }
    return adds.map((e, i) => [e.grants[0]?.grantId ?? null, e.amount, (w.grants[i] as [number, number])[1]]);
  }
}
