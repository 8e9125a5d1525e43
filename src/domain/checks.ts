import type { LimitHeadroom } from "./limits.js";
/** What `credits.check()` answers. */
export interface CheckResult {
  allowed: boolean;
  /** The account's available credits (balance − reserved; may be negative with debt). */
  available: number;
  /** What `available` must at least be: the feature's minimum and the amount, whichever is more. */
  required: number;
  /** "ok" when allowed; otherwise why not ("limit": a spend limit, docs/teams-and-limits.md). */
  reason: "ok" | "insufficient_credits" | "limit";
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
 * same side of its minimum records nothing. Features in name order.
 */
export function featureFlips(
  before: number,
  after: number,
  rules: Readonly<Record<string, { minAvailable: number }>>,
): FeatureFlip[] {
  if (before === after) return [];
  const flips: FeatureFlip[] = [];
  for (const feature of Object.keys(rules).sort()) {
    const min = rules[feature]!.minAvailable;
    const was = before >= min;
    const is = after >= min;
    if (was !== is) flips.push({ feature, allowed: is, minAvailable: min });
  }
  return flips;
}
