import type { Plan, Subscription } from "../models/index.js";

/** Position in a scan of subscriptions ordered by (nextRunAt, id): resume strictly after it. @beta */
export interface SubscriptionCursor {
  /** The next run of the last subscription of the previous batch. */
  nextRunAt: Date;
  /** The id of the last subscription of the previous batch. */
  id: string;
}

/**
 * What a store keeps for plans and subscriptions (part of `DbManager`). Rules live in
 * `SubscriptionService`; the store only answers indexed reads and makes guarded writes:
 *
 * - `updatePlan`, `deletePlan` and `updateSubscription` write only if the stored `version` is still
 *   `expectedVersion` (compare-and-set) and say whether they did, so two workers that race on one
 *   transition apply it once;
 * - `insertSubscription` refuses (ConflictError) a second `active` subscription of one user (a
 *   unique index where the backend has them) and a duplicate id.
 *
 * Objects returned belong to the caller; objects passed in are not mutated afterwards.
 * @beta
 */
export interface SubscriptionStore {
  /** ConflictError when a plan with this id exists. */
  insertPlan(plan: Plan): Promise<void>;
  /** The plan; null when there is none. */
  getPlan(planId: string): Promise<Plan | null>;
  /** Plans by id; inactive ones only when asked. */
  listPlans(options: { includeInactive: boolean }): Promise<Plan[]>;
  /** Replaces the plan if its stored version is `expectedVersion`; false otherwise. */
  updatePlan(plan: Plan, expectedVersion: number): Promise<boolean>;
  /** Deletes the plan if its stored version is `expectedVersion`; false otherwise. */
  deletePlan(planId: string, expectedVersion: number): Promise<boolean>;
  /** True when an active subscription has this plan as `planId` or `pendingPlanId`. */
  planHasSubscribers(planId: string): Promise<boolean>;

  /** ConflictError when the user already has an active subscription (or the id exists). */
  insertSubscription(subscription: Subscription): Promise<void>;
  /** `userId`, when the caller knows the owner: the lookup is keyed by it (docs/scaling-out.md). */
  getSubscription(subscriptionId: string, userId?: string): Promise<Subscription | null>;
  /** The user's active subscription, if any. */
  getActiveSubscription(userId: string): Promise<Subscription | null>;
  /** Every subscription of the user, oldest first. */
  listSubscriptions(userId: string): Promise<Subscription[]>;
  /** Replaces the subscription if its stored version is `expectedVersion`; false otherwise. */
  updateSubscription(subscription: Subscription, expectedVersion: number): Promise<boolean>;
  /** Subscriptions with nextRunAt <= asOf (whatever their status), by (nextRunAt, id). */
  findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<Subscription[]>;
}
