/**
 * The customer's state in one read (docs/customer-state.md, "The state in one read"): what an
 * account may do now, from one snapshot of the store — its balance, each feature's figures and
 * decision (the rule `check()` decides with: src/domain/checks.ts), its spend limits, its
 * subscription and its alerts — and the same for many accounts, page by page.
 */
import type { DbManager } from "../db/types.js";
import type { SubscriptionStore } from "../db/types-subscriptions.js";
import { isPeriodGrant } from "../domain/account-work.js";
import { decideFeature, type CheckReason, type FeatureRule } from "../domain/checks.js";
import { limitStatuses, tightestLimit } from "../domain/limits.js";
import { compareGrants } from "../domain/order.js";
import { inScope, outOfScope } from "../domain/scope.js";
import { ConfigurationError } from "../errors.js";
import type {
  Account,
  AlertLevel,
  Grant,
  GrantScope,
  GrantSource,
  Plan,
  SpendLimitStatus,
  Subscription,
  SubscriptionStatus,
} from "../models/index.js";
import type { CreditCore } from "./credit-core.js";

/** What `credits.getCustomerState(userId)` answers (docs/customer-state.md). */
export interface CustomerState {
  userId: string;
  /** The account's journal position the state was read at (0: no account yet). */
  seq: number;
  /** When it was read (the manager's clock). */
  readAt: Date;
  balance: number;
  reserved: number;
  /**
   * What a spend naming no feature nor spender may use, as `getUserCreditsInfo` answers it: the
   * unheld credits of the unscoped grants less the debt (negative with debt).
   */
  available: number;
  debt: number;
  /** Every feature the account's plan, scoped grants, spend limits and `features` rules name, by name. */
  features: FeatureState[];
  /** Each spend limit: its window now, what it counted and when it resets. */
  limits: SpendLimitStatus[];
  /** The active subscription and its period; null without one. */
  subscription: SubscriptionState | null;
  /** The state of each alert of the account (docs/customer-state.md, "Alerts"). */
  alerts: CustomerAlert[];
}

/** One feature of a `CustomerState`: its decision and the figures behind it. */
export interface FeatureState {
  feature: string;
  /** What `check(userId, { feature })` answers now. */
  allowed: boolean;
  reason: CheckReason;
  /** What `left` must at least be: the rule's `minAvailable` (1 without a rule). */
  required: number;
  /** What the open grants behind it (its scoped grants, then the pool) were given. */
  granted: number;
  /** What has been drawn from them: spent, or held now. */
  used: number;
  /** What they hold for a spend on it now, less the debt (may be negative). */
  left: number;
  /** When its allowance (a subscription period's grants behind it) or its tightest limit renews; null: never. */
  resetsAt: Date | null;
  /** The tightest spend limit on it (a spend naming this feature and no spender); null: none. */
  limit: FeatureLimit | null;
  /** Its rule in `features`; null: none (paid from the pool, allowed with 1 credit). */
  rule: { minAvailable: number; enabled: boolean; plans: string[] | null } | null;
  /** The grants behind `granted` and `left`, in the order a spend on it draws them. */
  grants: StateGrant[];
}

/** The tightest spend limit on a feature. */
export interface FeatureLimit {
  amount: number;
  used: number;
  remaining: number;
  resetsAt: Date;
}

/** A grant behind a feature's figures. `description`, `metadata` and `sourceRef` are the operator's notes. */
export interface StateGrant {
  id: string;
  source: GrantSource;
  /** What it was given. */
  amount: number;
  /** What it holds now (neither spent nor held). */
  left: number;
  expiresAt: Date | null;
  /** Null: any spend (the pool). */
  scope: GrantScope | null;
  description: string | null;
  metadata: Grant["metadata"];
  sourceRef: string | null;
}

/** The active subscription of a `CustomerState`. */
export interface SubscriptionState {
  id: string;
  planId: string;
  /** The plan's name; null when the plan is gone. */
  planName: string | null;
  status: SubscriptionStatus;
  currentPeriodStart: Date;
  currentPeriodEnd: Date;
  /** Whether a next period starts at `currentPeriodEnd`. */
  renews: boolean;
  cancelAtPeriodEnd: boolean;
  pendingPlanId: string | null;
}

/** One alert of a `CustomerState`: today the account's low-credits level (docs/notifications.md). */
export interface CustomerAlert {
  kind: "low_credits";
  /** Null: not evaluated yet. */
  level: AlertLevel | null;
  /** The threshold, in credits, the level was computed for. */
  threshold: number;
}

/** A page of `listCustomerStates`. */
export interface CustomerStatePage {
  items: CustomerState[];
  /** Pass as `cursor` for the next page; null at the end. */
  nextCursor: string | null;
}

/**
 * The alerts of an account as read (docs/customer-state.md, "Alerts"): its low-credits level, as
 * `account.alert` keeps it. The one place the state view reads alerts from.
 */
export function alertsOf(account: Account | null): CustomerAlert[] {
  const alert = account?.alert;
  if (alert == null) return [];
  return [{ kind: "low_credits", level: alert.level, threshold: alert.threshold }];
}

/** The plan id of `userId`'s active subscription, or null (none, or a store without subscriptions). */
export async function activePlanId(db: DbManager, userId: string): Promise<string | null> {
  return (await activeSubscription(db, userId))?.planId ?? null;
}

async function activeSubscription(db: DbManager, userId: string): Promise<Subscription | null> {
  if (db.capabilities.parts?.subscriptions === false) return null;
  const store = db as Partial<SubscriptionStore>;
  return store.getActiveSubscription === undefined ? null : store.getActiveSubscription(userId);
}

/** The account and its open grants at one snapshot. */
interface Snapshot {
  account: Account | null;
  grants: readonly Grant[];
}

/** Accounts read at once by `listCustomerStates` (each its own unit of work). */
const PARALLEL = 8;

/** `CreditService.getCustomerState` and `listCustomerStates`. */
export class CustomerStates {
  constructor(private readonly core: CreditCore) {}

  /** One account's state. */
  async get(userId: string): Promise<CustomerState> {
    return this.read(userId, new Map());
  }

  /** A page of accounts' states. */
  async list(query: { cursor?: string | undefined; limit?: number | undefined; userIds?: string[] | undefined }) {
    const limit = query.limit ?? 100;
    const after = query.cursor ?? null;
    let ids: string[];
    if (query.userIds !== undefined) {
      const asked = [...new Set(query.userIds)].sort(byCodeUnit);
      ids = asked.filter((id) => after === null || id > after).slice(0, limit + 1);
    } else {
      const db = this.core.db;
      if (db.listAccountIds === undefined)
        throw new ConfigurationError(
          `[credit-management] the ${db.name} store cannot list its accounts (DbManager.listAccountIds): pass userIds`,
        );
      ids = await db.listAccountIds(after, limit + 1);
    }
    const more = ids.length > limit;
    const page = more ? ids.slice(0, limit) : ids;
    const plans = new Map<string, Promise<Plan | null>>();
    const items: CustomerState[] = new Array<CustomerState>(page.length);
    let next = 0;
    const worker = async () => {
      while (next < page.length) {
        const i = next++;
        items[i] = await this.read(page[i] as string, plans);
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, page.length) }, worker));
    return { items, nextCursor: more ? (page[page.length - 1] as string) : null };
  }

  /** The state of `userId`: the account's snapshot, then its subscription (and plan, read once per call in `plans`). */
  private async read(userId: string, plans: Map<string, Promise<Plan | null>>): Promise<CustomerState> {
    const core = this.core;
    const snapshot = await this.snapshot(userId);
    const subscription = await activeSubscription(core.db, userId);
    let plan: Plan | null = null;
    if (subscription !== null) {
      let read = plans.get(subscription.planId);
      if (read === undefined) {
        read = core.db.getPlan(subscription.planId);
        plans.set(subscription.planId, read);
      }
      plan = await read;
    }
    return stateOf(userId, snapshot, subscription, plan, core.features, core.clock());
  }

  /**
   * The account and its open grants in one unit of work that writes nothing (one snapshot of the
   * store, never the cache); when an expiry is due, the unit of work that settles it answers with
   * what it left, as `getUserCreditsInfo`'s read does (src/services/balance-reads.ts).
   */
  private async snapshot(userId: string): Promise<Snapshot> {
    const core = this.core;
    const loaded = await core.db.transaction(userId, async (tx) => {
      const state = await tx.load();
      return { account: state.account === null ? null : { ...state.account }, grants: [...state.grants] };
    });
    const next = loaded.account?.nextExpiryAt;
    if (next == null || next.getTime() > core.clock().getTime()) return loaded;
    return core.units.mutate("settle", userId, {}, (work) =>
      work.isNew && !work.changed
        ? { account: null, grants: [] }
        : { account: { ...work.account }, grants: work.openGrants() },
    );
  }
}

const byCodeUnit = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The state of an account read as `snapshot`, with its active `subscription` on `plan`, at `now`. */
export function stateOf(
  userId: string,
  snapshot: Snapshot,
  subscription: Subscription | null,
  plan: Plan | null,
  rules: Readonly<Record<string, FeatureRule>>,
  now: Date,
): CustomerState {
  const account = snapshot.account;
  const at = now.getTime();
  const grants = snapshot.grants
    .filter((g) => g.closedAt === null && (g.expiresAt === null || g.expiresAt.getTime() > at))
    .sort(compareGrants);
  const limits = account?.limits ?? [];
  const debt = account?.debt ?? 0;
  const renews =
    subscription !== null &&
    subscription.status === "active" &&
    subscription.autoRenew &&
    !subscription.cancelAtPeriodEnd;
  const planId = subscription?.planId ?? null;

  const names = new Set(Object.keys(rules));
  for (const a of plan?.allowances ?? []) for (const f of a.scope.features ?? []) names.add(f);
  for (const g of grants) for (const f of g.scope?.features ?? []) names.add(f);
  for (const l of limits) if (l.feature !== null) names.add(l.feature);

  const features = [...names].sort(byCodeUnit).map((feature): FeatureState => {
    const spend = { spender: null, feature };
    // Its scoped grants first, then the pool: the order a spend on it draws them (docs/teams-and-limits.md).
    const behind = grants.filter((g) => g.scope != null && inScope(g.scope, spend));
    for (const g of grants) if (g.scope == null) behind.push(g);
    let granted = 0;
    let held = 0;
    for (const g of behind) {
      granted += g.amount;
      held += g.remaining;
    }
    const left = held - debt;
    const rule = rules[feature];
    const tight = tightestLimit(limits, spend, at);
    const decision = decideFeature(left, rule, planId, undefined, () => tight);
    const limitEnds = tight === null ? null : tight.window.end;
    const allowanceEnds =
      renews && behind.some(isPeriodGrant) ? (subscription as Subscription).currentPeriodEnd.getTime() : null;
    const ends = [limitEnds, allowanceEnds].filter((t): t is number => t !== null);
    return {
      feature,
      allowed: decision.allowed,
      reason: decision.reason,
      required: decision.required,
      granted,
      used: granted - held,
      left,
      resetsAt: ends.length === 0 ? null : new Date(Math.min(...ends)),
      limit:
        tight === null
          ? null
          : {
              amount: tight.limit.amount,
              used: tight.used,
              remaining: tight.left,
              resetsAt: new Date(tight.window.end),
            },
      rule:
        rule === undefined
          ? null
          : {
              minAvailable: rule.minAvailable,
              enabled: rule.enabled !== false,
              plans: rule.plans ? [...rule.plans] : null,
            },
      grants: behind.map(stateGrant),
    };
  });

  return {
    userId,
    seq: account?.seq ?? 0,
    readAt: now,
    balance: account?.balance ?? 0,
    reserved: account?.reserved ?? 0,
    available:
      account === null
        ? 0
        : account.balance - account.reserved - outOfScope(grants, { spender: null, feature: null }, now),
    debt,
    features,
    limits: limitStatuses(limits, at),
    subscription:
      subscription === null
        ? null
        : {
            id: subscription.id,
            planId: subscription.planId,
            planName: plan?.name ?? null,
            status: subscription.status,
            currentPeriodStart: subscription.currentPeriodStart,
            currentPeriodEnd: subscription.currentPeriodEnd,
            renews,
            cancelAtPeriodEnd: subscription.cancelAtPeriodEnd,
            pendingPlanId: subscription.pendingPlanId,
          },
    alerts: alertsOf(account),
  };
}

function stateGrant(g: Grant): StateGrant {
  const scope = g.scope ?? null;
  return {
    id: g.id,
    source: g.source,
    amount: g.amount,
    left: g.remaining,
    expiresAt: g.expiresAt,
    scope:
      scope === null
        ? null
        : {
            ...(scope.features === undefined ? {} : { features: [...scope.features] }),
            ...(scope.spenders === undefined ? {} : { spenders: [...scope.spenders] }),
          },
    description: g.description,
    metadata: g.metadata === null ? null : { ...g.metadata },
    sourceRef: g.sourceRef,
  };
}
