import type { LimitHeadroom } from "./limits.js";

/**
 * Why `check()` and `getCustomerState()` answer not allowed, in the order checked
 * (docs/trial-and-checks.md): `feature_off`, the feature's rule turns it off (`enabled: false`, or
 * `plans` without an active subscription on one of them); `insufficient_credits`, `available` is
 * below what is required; `limit`, a spend limit has less left than the spend. "ok" when allowed.
 * @public
 */
export type CheckReason = "ok" | "feature_off" | "insufficient_credits" | "limit";

/** A feature's rule in `features` (docs/trial-and-checks.md). @public */
export interface FeatureRule {
  /** The least `available` with which the feature is allowed. */
  minAvailable: number;
  /** False: off for every account. Default true. */
  enabled?: boolean | undefined;
  /** The plans that grant it: without an active subscription on one of them it is off. */
  plans?: readonly string[] | undefined;
  /** The unit the feature is paid in (docs/units.md, "Features in a unit"); absent: the unit the call names. */
  unit?: string | undefined;
}

/**
 * Whether `rule` turns its feature off for an account whose active subscription is on `planId`
 * (null: none): `enabled: false`, or `plans` that do not list it. A feature with no rule is on.
 */
export function featureOff(rule: FeatureRule | undefined, planId: string | null): boolean {
  if (rule === undefined) return false;
  if (rule.enabled === false) return true;
  return rule.plans !== undefined && (planId === null || !rule.plans.includes(planId));
}
/** What `credits.check()` answers. @public */
export interface CheckResult {
  /** Whether the feature may be used now. */
  allowed: boolean;
  /** The account's available credits (balance − reserved; may be negative with debt). */
  available: number;
  /** What `available` must at least be: the feature's minimum and the amount, whichever is more. */
  required: number;
  /** "ok" when allowed; otherwise why not, the first of `CheckReason`'s in the order checked. */
  reason: CheckReason;
  /** With reason "limit": when the tightest limit's window ends. */
  resetsAt?: Date;
  /** With reason "limit": what that limit has left in its window. */
  limitRemaining?: number;
}

/**
 * An allowed `decision` refused when the tightest applicable limit `tight` has less than `amount`
 * left (docs/teams-and-limits.md).
 */
export function decideLimit(decision: CheckResult, tight: LimitHeadroom | null, amount: number): CheckResult {
  if (tight === null || tight.left >= amount) return decision;
  return {
    ...decision,
    allowed: false,
    reason: "limit",
    resetsAt: new Date(tight.window.end),
    limitRemaining: tight.left,
  };
}

/**
 * `check()`'s answer for a feature, in the order of `CheckReason`: off by its rule, else
 * `decideCheck`, then the tightest limit `tight` (docs/trial-and-checks.md). `getCustomerState`
 * answers each feature with it too.
 */
export function decideFeature(
  available: number,
  rule: FeatureRule | undefined,
  planId: string | null,
  amount: number | undefined,
  tight: () => LimitHeadroom | null,
): CheckResult {
  const decision = decideCheck(available, rule?.minAvailable, amount);
  if (featureOff(rule, planId)) return { ...decision, allowed: false, reason: "feature_off" };
  if (!decision.allowed) return decision;
  return decideLimit(decision, tight(), amount ?? 1);
}

/**
 * The "allowed?" rule, once: allowed when `available >= required`, where `required` is the larger
 * of the feature's `minAvailable` (1 without a feature: "has credits") and the amount asked for.
 */
export function decideCheck(
  available: number,
  minAvailable: number | undefined,
  amount: number | undefined,
): CheckResult {
  const required = Math.max(minAvailable ?? 1, amount ?? 0);
  const allowed = available >= required;
  return { allowed, available, required, reason: allowed ? "ok" : "insufficient_credits" };
}

/** One feature whose allowed state a change of `available` flipped. */
export interface FeatureFlip {
  feature: string;
  allowed: boolean;
  minAvailable: number;
}

/**
 * The features whose allowed state (`available >= minAvailable`) differs between `before` and
 * `after`: edge-triggered, like the balance alert levels — a change that leaves a feature on the
 * same side of its minimum records nothing. A feature its rule turns off for everyone
 * (`enabled: false`) never flips (docs/trial-and-checks.md). Features in name order.
 */
export function featureFlips(
  before: number,
  after: number,
  rules: Readonly<Record<string, { minAvailable: number; enabled?: boolean | undefined }>>,
): FeatureFlip[] {
  if (before === after) return [];
  const flips: FeatureFlip[] = [];
  for (const feature of Object.keys(rules).sort()) {
    if (rules[feature]!.enabled === false) continue;
    const min = rules[feature]!.minAvailable;
    const was = before >= min;
    const is = after >= min;
    if (was !== is) flips.push({ feature, allowed: is, minAvailable: min });
  }
  return flips;
}
