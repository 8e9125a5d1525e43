import type { Collection, IndexDescription } from "mongodb";
import { ConflictError } from "../../core/errors.js";
import { Plan, Subscription, type Plan as PlanT, type Subscription as SubscriptionT } from "../../core/models/index.js";
import type { SubscriptionCursor, SubscriptionStore } from "../../core/db/types-subscriptions.js";
import { fromDoc, kind, toDoc, type StoredDoc } from "./documents.js";
import { guard, writeOne } from "./errors.js";
import { ONE_BATCH } from "./collections.js";

const PLAN = kind<PlanT>("id", Plan.shape);
const SUBSCRIPTION = kind<SubscriptionT>("id", Subscription.shape);

/** The indexes plans and subscriptions need (created by `MongoDbManager.init()`). */
export const SUBSCRIPTION_INDEXES: { plans: IndexDescription[]; subscriptions: IndexDescription[] } = {
  plans: [],
  subscriptions: [
    // One active subscription per user.
    { key: { userId: 1 }, name: "user_active", unique: true, partialFilterExpression: { _live: true } },
    // listSubscriptions(): a user's subscriptions, oldest first.
    { key: { userId: 1, createdAt: 1, _id: 1 }, name: "user_created" },
    // findDueSubscriptions(): by (nextRunAt, _id), only those with a next run.
    { key: { nextRunAt: 1, _id: 1 }, name: "due", partialFilterExpression: { nextRunAt: { $type: "date" } } },
    // planHasSubscribers().
    { key: { planId: 1 }, name: "plan_live", partialFilterExpression: { _live: true } },
    { key: { pendingPlanId: 1 }, name: "pending_plan_live", partialFilterExpression: { _live: true } },
  ],
};

/** The refusal of the "one active subscription per user" index. */
const alreadySubscribed = (s: SubscriptionT) => (error: unknown) =>
  new ConflictError(`User ${s.userId} already has an active subscription.`, { userId: s.userId }, error);

const subDoc = (s: SubscriptionT) => toDoc(SUBSCRIPTION, s, { _live: s.status === "active" });

/**
 * Plans and subscriptions on MongoDB: single-document writes guarded by `version` (the filter is
 * the guard), and a partial unique index for "one active subscription per user".
 */
export class MongoSubscriptionStore implements SubscriptionStore {
  constructor(
    private readonly plans: Collection<StoredDoc>,
    private readonly subs: Collection<StoredDoc>,
  ) {}

  async insertPlan(plan: PlanT): Promise<void> {
    await writeOne(
      "insertPlan",
      () => this.plans.insertOne(toDoc(PLAN, plan)),
      (error) => new ConflictError(`Plan ${plan.id} already exists.`, { planId: plan.id }, error),
    );
  }

  async getPlan(planId: string): Promise<PlanT | null> {
    const doc = await guard("getPlan", () => this.plans.findOne({ _id: planId }));
    return doc === null ? null : fromDoc(PLAN, doc);
  }

  async listPlans(options: { includeInactive: boolean }): Promise<PlanT[]> {
    const docs = await guard("listPlans", () =>
      this.plans
        .find(options.includeInactive ? {} : { isActive: true }, ONE_BATCH)
        .sort({ _id: 1 })
        .toArray(),
    );
    return docs.map((d) => fromDoc(PLAN, d));
  }

  async updatePlan(plan: PlanT, expectedVersion: number): Promise<boolean> {
    const res = await writeOne("updatePlan", () =>
      this.plans.replaceOne({ _id: plan.id, version: expectedVersion }, toDoc(PLAN, plan)),
    );
    return res.matchedCount === 1;
  }

  async deletePlan(planId: string, expectedVersion: number): Promise<boolean> {
    const res = await writeOne("deletePlan", () => this.plans.deleteOne({ _id: planId, version: expectedVersion }));
    return res.deletedCount === 1;
  }

  async planHasSubscribers(planId: string): Promise<boolean> {
    const doc = await guard("planHasSubscribers", () =>
      this.subs.findOne({ _live: true, $or: [{ planId }, { pendingPlanId: planId }] }, { projection: { _id: 1 } }),
    );
    return doc !== null;
  }

  async insertSubscription(s: SubscriptionT): Promise<void> {
    await writeOne("insertSubscription", () => this.subs.insertOne(subDoc(s)), alreadySubscribed(s));
  }

  async getSubscription(id: string, userId?: string): Promise<SubscriptionT | null> {
    const doc = await guard("getSubscription", () =>
      this.subs.findOne(userId === undefined ? { _id: id } : { userId, _id: id }),
    );
    return doc === null ? null : fromDoc(SUBSCRIPTION, doc);
  }

  async getActiveSubscription(userId: string): Promise<SubscriptionT | null> {
    const doc = await guard("getActiveSubscription", () => this.subs.findOne({ userId, _live: true }));
    return doc === null ? null : fromDoc(SUBSCRIPTION, doc);
  }

  async listSubscriptions(userId: string): Promise<SubscriptionT[]> {
    const docs = await guard("listSubscriptions", () =>
      this.subs.find({ userId }, ONE_BATCH).sort({ createdAt: 1, _id: 1 }).toArray(),
    );
    return docs.map((d) => fromDoc(SUBSCRIPTION, d));
  }

  async updateSubscription(s: SubscriptionT, expectedVersion: number): Promise<boolean> {
    const res = await writeOne(
      "updateSubscription",
      // Keyed by the owner too (docs/scaling-out.md): a subscription never changes user.
      () => this.subs.replaceOne({ _id: s.id, userId: s.userId, version: expectedVersion }, subDoc(s)),
      alreadySubscribed(s),
    );
    return res.matchedCount === 1;
  }

  async findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<SubscriptionT[]> {
    if (limit <= 0) return [];
    const range =
      after === undefined
        ? { nextRunAt: { $type: "date" as const, $lte: asOf } }
        : {
            nextRunAt: { $type: "date" as const, $lte: asOf },
            $or: [{ nextRunAt: { $gt: after.nextRunAt } }, { nextRunAt: after.nextRunAt, _id: { $gt: after.id } }],
          };
    const docs = await guard("findDueSubscriptions", () =>
      this.subs
        .find(range, { batchSize: Math.min(limit, 10_000) })
        .sort({ nextRunAt: 1, _id: 1 })
        .limit(limit)
        .toArray(),
    );
    return docs.map((d) => fromDoc(SUBSCRIPTION, d));
  }
}
