/** What `credits.check()` answers. */
export interface CheckResult {
  allowed: boolean;
  /** The account's available credits (balance − reserved; may be negative with debt). */
  available: number;
  /** What `available` must at least be: the feature's minimum and the amount, whichever is more. */
  required: number;
  /** "ok" when allowed; otherwise why not. */
  reason: "ok" | "insufficient_credits";
}

/**
 * The "allowed?" rule, once: allowed when `available >= required`, where `required` is the larger
 * of the feature's `minAvailable` (1 without a feature: "has credits") and the amount asked for.
 */
export function decideCheck(available: number, minAvailable: number | undefined, amount: number | undefined): CheckResult {
  const required = Math.max(minAvailable ?? 1, amount ?? 0);
  const allowed = available >= required;
  return { allowed, available, required, reason: allowed ? "ok" : "insufficient_credits" };
}
