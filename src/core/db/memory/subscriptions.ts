import { ConflictError } from "../../errors.js";
import type { Plan, Subscription } from "../../models/index.js";
import type { SubscriptionCursor, SubscriptionStore } from "../types-subscriptions.js";
import { DueTimes } from "./due-times.js";

const copy = <T>(o: T): T => structuredClone(o);

/**
 * Plans and subscriptions in process memory. Every write checks and applies synchronously, so
 * nothing interleaves between a guard and its write. It keeps copies of the rows handed to it and
 * hands out copies (as the promo store does): a caller that changed a row it wrote or read would
 * otherwise change the store.
 */
export class MemorySubscriptionStore implements SubscriptionStore {
  private readonly plans = new Map<string, Plan>();
  private readonly subs = new Map<string, Subscription>();
  /** userId → id of the active subscription */
  private readonly active = new Map<string, string>();
  /** userId → ids, oldest first */
  private readonly byUser = new Map<string, string[]>();
  /** Subscriptions with a next run, by its time. */
  private readonly due = new DueTimes();

  async insertPlan(plan: Plan): Promise<void> {
    if (this.plans.has(plan.id)) throw new ConflictError(`Plan ${plan.id} already exists.`, { planId: plan.id });
    this.plans.set(plan.id, copy(plan));
  }

  async getPlan(planId: string): Promise<Plan | null> {
    const p = this.plans.get(planId);
    return p === undefined ? null : copy(p);
  }

  async listPlans(options: { includeInactive: boolean }): Promise<Plan[]> {
    return [...this.plans.values()]
      .filter((p) => options.includeInactive || p.isActive)
      .sort((a, b) => (a.id < b.id ? -1 : 1))
      .map(copy);
  }

  async updatePlan(plan: Plan, expectedVersion: number): Promise<boolean> {
    const current = this.plans.get(plan.id);
    if (current === undefined || current.version !== expectedVersion) return false;
    this.plans.set(plan.id, copy(plan));
    return true;
  }

  async deletePlan(planId: string, expectedVersion: number): Promise<boolean> {
    const current = this.plans.get(planId);
    if (current === undefined || current.version !== expectedVersion) return false;
    this.plans.delete(planId);
    return true;
  }

  /** A scan: only deleting a plan asks. */
  async planHasSubscribers(planId: string): Promise<boolean> {
    for (const s of this.subs.values())
      if (s.status === "active" && (s.planId === planId || s.pendingPlanId === planId)) return true;
    return false;
  }

  async insertSubscription(s: Subscription): Promise<void> {
    if (this.subs.has(s.id)) throw new ConflictError(`Subscription ${s.id} already exists.`);
    if (s.status === "active" && this.active.has(s.userId)) {
      throw new ConflictError(`User ${s.userId} already has an active subscription.`, { userId: s.userId });
    }
    this.put(s);
    const list = this.byUser.get(s.userId) ?? [];
    list.push(s.id);
    this.byUser.set(s.userId, list);
  }

  async getSubscription(id: string, userId?: string): Promise<Subscription | null> {
    const s = this.subs.get(id);
    return s === undefined || (userId !== undefined && s.userId !== userId) ? null : copy(s);
  }

  async getActiveSubscription(userId: string): Promise<Subscription | null> {
    const id = this.active.get(userId);
    return id === undefined ? null : copy(this.subs.get(id) as Subscription);
  }

  async listSubscriptions(userId: string): Promise<Subscription[]> {
    return (this.byUser.get(userId) ?? []).map((id) => copy(this.subs.get(id) as Subscription));
  }

  async updateSubscription(s: Subscription, expectedVersion: number): Promise<boolean> {
    const current = this.subs.get(s.id);
    if (current === undefined || current.version !== expectedVersion) return false;
    if (s.status === "active" && current.status !== "active" && this.active.has(s.userId)) {
      throw new ConflictError(`User ${s.userId} already has an active subscription.`, { userId: s.userId });
    }
    if (current.status === "active" && s.status !== "active") this.active.delete(current.userId);
    this.put(s);
    return true;
  }

  async findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<Subscription[]> {
    const ids = this.due.scan(asOf.getTime(), limit, after && { time: after.nextRunAt.getTime(), id: after.id });
    return ids.map((id) => copy(this.subs.get(id) as Subscription));
  }

  private put(row: Subscription): void {
    const s = copy(row);
    this.subs.set(s.id, s);
    if (s.status === "active") this.active.set(s.userId, s.id);
    if (s.nextRunAt !== null) this.due.set(s.id, s.nextRunAt.getTime());
    else this.due.delete(s.id);
  }
}
