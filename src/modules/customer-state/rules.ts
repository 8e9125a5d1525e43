/**
 * The customer's state, as pure functions (docs/customer-state.md, "The state in one read"): from an
 * account and its open grants read at one snapshot, its subscription and plan, and the feature
 * rules, what the account may do now — each feature decided by the rule `check()` decides with
 * (./checks.ts), with the figures and grants behind it — its limits and its alerts.
 */
import { own } from "../../core/domain/own.js";
import type {
  Account,
  AlertStatus,
  Grant,
  GrantScope,
  GrantSource,
  Plan,
  SpendLimitStatus,
  Subscription,
  SubscriptionStatus,
} from "../../core/models/index.js";
import { isPeriodGrant } from "../../core/domain/account-work.js";
import { decideFeature, type CheckReason, type FeatureRule } from "../../core/domain/checks.js";
import { limitStatuses, tightestLimit } from "../../core/domain/limits.js";
import { DEFAULT_UNIT } from "../../core/models/common.js";
import { compareGrants, isUpcoming, startOf } from "../../core/domain/order.js";
import { drawnOutOf } from "../../core/domain/allowance.js";
import { availableOf, figuresBehind } from "../../core/domain/scope.js";

/** What `credits.getCustomerState(userId)` answers (docs/customer-state.md). @public */
export interface CustomerState {
  /** The account. */
  userId: string;
  /** The account's journal position the state was read at (0: no account yet). */
  seq: number;
  /** When it was read (the manager's clock). */
  readAt: Date;
  /** Posted credits: the grants' unspent credits, held ones included, less the debt. */
  balance: number;
  /** Credits held by active holds. */
  reserved: number;
  /**
   * What a spend naming no feature nor spender may use, as `getUserCreditsInfo` answers it: the
   * unheld credits of the unscoped grants less the debt (negative with debt).
   */
  available: number;
  /** Overdraft no grant covers, paid first by the next addition. */
  debt: number;
  /**
   * Every unit the account holds but the default one, by name, with its own figures, as
   * `getUserCreditsInfo` answers them (docs/units.md); absent while it holds only the default unit.
   * The figures above are the default unit's: nothing adds two units.
   */
  units?: Record<string, { balance: number; reserved: number; available: number; debt: number }>;
  /** Every feature the account's plan, scoped grants, spend limits and `features` rules name, by name. */
  features: FeatureState[];
  /** Each spend limit: its window now, what it counted and when it resets. */
  limits: SpendLimitStatus[];
  /** The active subscription and its period; null without one. */
  subscription: SubscriptionState | null;
  /** The state of each alert of the account (docs/customer-state.md, "Alerts"). */
  alerts: AlertStatus[];
  /**
   * Grants added to start later that have not started (docs/units.md, "Grants that start later"),
   * by start: in no figure above until then.
   */
  upcoming: StateGrant[];
}

/** One feature of a `CustomerState`: its decision and the figures behind it. @public */
export interface FeatureState {
  /** The feature's name. */
  feature: string;
  /**
   * The unit its figures are in: the unit its rule names (docs/units.md, "Features in a unit");
   * absent: the default unit.
   */
  unit?: string;
  /** What `check(userId, { feature })` answers now. */
  allowed: boolean;
  /** Why not (docs/customer-state.md, "Why not"); "ok" when allowed. */
  reason: CheckReason;
  /** What `left` must at least be: the rule's `minAvailable` (1 without a rule). */
  required: number;
  /**
   * What the grants behind it (its scoped grants, then the pool) were granted in their current
   * allowance: the open ones, and those spent to their last credit since their scope last had
   * nothing left (docs/customer-state.md, "What was granted").
   */
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

/** The tightest spend limit on a feature. @public */
export interface FeatureLimit {
  /** Credits the limit allows per window. */
  amount: number;
  /** Credits counted in the current window. */
  used: number;
  /** `amount - used`, never below 0. */
  remaining: number;
  /** When the window ends. */
  resetsAt: Date;
}

/** A grant behind a feature's figures. `description`, `metadata` and `sourceRef` are the operator's notes. @public */
export interface StateGrant {
  /** The grant's id. */
  id: string;
  /** Its unit (docs/units.md); absent: the default unit. */
  unit?: string;
  /** Where its credits came from. */
  source: GrantSource;
  /** What it was given. */
  amount: number;
  /** What it holds now (neither spent nor held). */
  left: number;
  /** When its unspent credits expire; null: never. */
  expiresAt: Date | null;
  /** Null: any spend (the pool). */
  scope: GrantScope | null;
  /** The operator's description of it (left out over HTTP for anyone but an admin). */
  description: string | null;
  /** The operator's metadata (left out over HTTP for anyone but an admin). */
  metadata: Grant["metadata"];
  /** The operator's reference (left out over HTTP for anyone but an admin). */
  sourceRef: string | null;
  /** When it starts, for a grant added to start later (docs/units.md); null: when it was created. */
  effectiveAt: Date | null;
}

/** The active subscription of a `CustomerState`. @public */
export interface SubscriptionState {
  /** The subscription's id. */
  id: string;
  /** Its plan. */
  planId: string;
  /** The plan's name; null when the plan is gone. */
  planName: string | null;
  /** "active" (the state shows the active subscription only). */
  status: SubscriptionStatus;
  /** When the current period started. */
  currentPeriodStart: Date;
  /** When it ends (and the next starts, when it renews). */
  currentPeriodEnd: Date;
  /** Whether a next period starts at `currentPeriodEnd`. */
  renews: boolean;
  /** It ends at `currentPeriodEnd`. */
  cancelAtPeriodEnd: boolean;
  /** The plan the next period switches to; null: none. */
  pendingPlanId: string | null;
}

/** A page of `listCustomerStates`. @public */
export interface CustomerStatePage {
  /** The accounts' states, in id order. */
  items: CustomerState[];
  /** Pass as `cursor` for the next page; null at the end. */
  nextCursor: string | null;
}

export /** The account and its open grants at one snapshot. */
interface AccountSnapshot {
  account: Account | null;
  grants: readonly Grant[];
}

export const byCodeUnit = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The state of an account read as `snapshot`, with its active `subscription` on `plan`, at `now`. */
export function stateOf(
  userId: string,
  snapshot: AccountSnapshot,
  subscription: Subscription | null,
  plan: Plan | null,
  rules: Readonly<Record<string, FeatureRule>>,
  now: Date,
  /** Each alert threshold with its state (`alertStates`, ./alerts.ts). */
  alerts: AlertStatus[],
): CustomerState {
  const account = snapshot.account;
  const at = now.getTime();
  const grants = snapshot.grants
    .filter((g) => g.closedAt === null && (g.expiresAt === null || g.expiresAt.getTime() > at))
    .sort(compareGrants);
  // Not started: listed on their own, in no feature's figures (docs/units.md, "Grants that start later").
  const upcoming = grants
    .filter(isUpcoming)
    .sort((a, b) => startOf(a).getTime() - startOf(b).getTime() || compareGrants(a, b));
  const limits = account?.limits ?? [];
  const debt = account?.debt ?? 0;
  const renews =
    subscription !== null &&
    subscription.status === "active" &&
    subscription.autoRenew &&
    !subscription.cancelAtPeriodEnd;
  const planId = subscription?.planId ?? null;

  const names = new Set(Object.keys(rules));
  for (const a of plan?.allowances ?? []) for (const f of a.scope?.features ?? []) names.add(f);
  for (const g of grants) for (const f of g.scope?.features ?? []) names.add(f);
  // What each scope's grants drawn out in its current allowance were given (docs/customer-state.md, "What was granted").
  // (The default unit's: the customer state's figures are in it, docs/units.md.)
  const drawn = drawnOutOf(account).filter((d) => d.unit === null);
  for (const d of drawn) for (const f of d.scope?.features ?? []) names.add(f);
  for (const l of limits) if (l.feature !== null) names.add(l.feature);

  // Each unit's started grants, apart: a feature's figures read its own unit's only (docs/units.md).
  const started = grants.filter((g) => !isUpcoming(g));
  const inUnit = (unit: string | null) => started.filter((g) => (g.unit ?? null) === unit);
  const defaultGrants = account?.units == null ? started : inUnit(null);

  const features = [...names].sort(byCodeUnit).map((feature): FeatureState => {
    const spend = { spender: null, feature };
    const rule = own(rules, feature);
    const unit = rule?.unit === undefined || rule.unit === DEFAULT_UNIT ? null : rule.unit;
    // Its scoped grants first, then the pool: the order a spend on it draws them (docs/teams-and-limits.md).
    // In another unit: that unit's grants and debt (docs/units.md).
    const {
      grants: behind,
      granted,
      used,
      left,
    } = unit === null
      ? figuresBehind(defaultGrants, spend, debt, now, drawn)
      : figuresBehind(inUnit(unit), spend, own(account?.units, unit)?.debt ?? 0, now);
    // The limits in the unit a spend on it acts in: its rule's (docs/units.md, "Features in a unit").
    const tight = tightestLimit(limits, { ...spend, unit }, at);
    const decision = decideFeature(left, rule, planId, undefined, () => tight);
    const limitEnds = tight === null ? null : tight.window.end;
    const allowanceEnds =
      renews && behind.some(isPeriodGrant) ? (subscription as Subscription).currentPeriodEnd.getTime() : null;
    const ends = [limitEnds, allowanceEnds].filter((t): t is number => t !== null);
    return {
      feature,
      ...(unit === null ? {} : { unit }),
      allowed: decision.allowed,
      reason: decision.reason,
      required: decision.required,
      granted,
      used,
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
    available: account === null ? 0 : availableOf(account, () => grants, now),
    debt,
    ...unitsOf(account),
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
    alerts,
    upcoming: upcoming.map(stateGrant),
  };
}

/** `{ units }`: every unit but the default one with its figures, as `getUserCreditsInfo` answers them; `{}` when none. */
function unitsOf(account: Account | null): Pick<CustomerState, "units"> {
  const units = account?.units;
  if (units == null || Object.keys(units).length === 0) return {};
  const out: NonNullable<CustomerState["units"]> = {};
  for (const [unit, f] of Object.entries(units).sort(([a], [b]) => byCodeUnit(a, b)))
    out[unit] = { balance: f.balance, reserved: f.reserved, available: f.balance - f.reserved, debt: f.debt };
  return { units: out };
}

function stateGrant(g: Grant): StateGrant {
  const scope = g.scope ?? null;
  return {
    id: g.id,
    ...(g.unit == null ? {} : { unit: g.unit }),
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
    effectiveAt: g.effectiveAt ?? null,
  };
}
