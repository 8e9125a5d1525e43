import type { Plan, Subscription } from "../models/index.js";
import type { SubscriptionCursor, SubscriptionStore } from "./types-subscriptions.js";

/**
 * The plan and subscription part of a `DbManager`, forwarded to the store's own
 * `SubscriptionStore` (one per backend: `src/db/<backend>/subscriptions.ts`). Every built-in
 * adapter extends it, so the forwarding is written once.
 */
export abstract class SubscriptionStoreDelegate implements SubscriptionStore {
  /** The backend's plan and subscription store. */
  protected abstract readonly subscriptionStore: SubscriptionStore;

  insertPlan(plan: Plan): Promise<void> {
    return this.subscriptionStore.insertPlan(plan);
  }
  getPlan(planId: string): Promise<Plan | null> {
    return this.subscriptionStore.getPlan(planId);
  }
  listPlans(options: { includeInactive: boolean }): Promise<Plan[]> {
    return this.subscriptionStore.listPlans(options);
  }
  updatePlan(plan: Plan, expectedVersion: number): Promise<boolean> {
    return this.subscriptionStore.updatePlan(plan, expectedVersion);
  }
  deletePlan(planId: string, expectedVersion: number): Promise<boolean> {
    return this.subscriptionStore.deletePlan(planId, expectedVersion);
  }
  planHasSubscribers(planId: string): Promise<boolean> {
    return this.subscriptionStore.planHasSubscribers(planId);
  }
  insertSubscription(subscription: Subscription): Promise<void> {
    return this.subscriptionStore.insertSubscription(subscription);
  }
  getSubscription(subscriptionId: string): Promise<Subscription | null> {
    return this.subscriptionStore.getSubscription(subscriptionId);
  }
  getActiveSubscription(userId: string): Promise<Subscription | null> {
    return this.subscriptionStore.getActiveSubscription(userId);
  }
  listSubscriptions(userId: string): Promise<Subscription[]> {
    return this.subscriptionStore.listSubscriptions(userId);
  }
  updateSubscription(subscription: Subscription, expectedVersion: number): Promise<boolean> {
    return this.subscriptionStore.updateSubscription(subscription, expectedVersion);
  }
  findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<Subscription[]> {
    return this.subscriptionStore.findDueSubscriptions(asOf, limit, after);
  }
}
