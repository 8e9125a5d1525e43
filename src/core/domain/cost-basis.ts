/**
 * A grant's cost basis (docs/revenue.md, "The cost basis"): what one credit was sold for, as an
 * exact rate, the value of credits at it, and a sale's worth. The ledger records it on grants; the
 * revenue module reports from it. Pure functions: no I/O.
 */
import type { CostBasis } from "../models/index.js";
import { ValidationError } from "../errors.js";
import { gcd } from "./fraction.js";

/** A cost basis as an exact fraction of bigints: `num / den` minor units per credit (`den` > 0). */
export interface Rate {
  num: bigint;
  den: bigint;
}

/** `perCredit` text (a decimal or a fraction, validated by the model) as an exact fraction. */
export function rateOf(perCredit: string): Rate {
  const slash = perCredit.indexOf("/");
  if (slash >= 0) return { num: BigInt(perCredit.slice(0, slash)), den: BigInt(perCredit.slice(slash + 1)) };
  const dot = perCredit.indexOf(".");
  if (dot < 0) return { num: BigInt(perCredit), den: 1n };
  const decimals = perCredit.length - dot - 1;
  return { num: BigInt(perCredit.slice(0, dot) + perCredit.slice(dot + 1)), den: 10n ** BigInt(decimals) };
}

/**
 * The cost basis of `credits` credits bought for `amount` (smallest unit of `currency`): the exact
 * fraction `amount/credits`, reduced (`"1999/3000"`, `"1/2"`), or a whole number when it divides.
 * What payment top-ups and auto top-ups record (docs/revenue.md, "The cost basis").
 */
export function basisOfPrice(amount: number, credits: number, currency: string): CostBasis {
  const a = BigInt(amount);
  const c = BigInt(credits);
  const g = gcd(a, c) || 1n;
  const num = a / g;
  const den = c / g;
  return { perCredit: den === 1n ? `${num}` : `${num}/${den}`, currency: currency.toUpperCase() };
}

/**
 * The cost bases of several grants sold together for `amount` (a subscription period's price for
 * its general credits and its allowances, docs/revenue.md, "Subscriptions"): the price is split
 * over the grants' `credits` cumulatively, half up — grant `i` is worth
 * `round(amount × (c₁ + … + cᵢ) / N) − round(amount × (c₁ + … + cᵢ₋₁) / N)` — and each grant's
 * basis is its share over its credits, exact. So the grants, used whole, add up to `amount`
 * exactly. Grants of 0 credits get none (null).
 */
export function basesOfPrice(amount: number, credits: readonly number[], currency: string): (CostBasis | null)[] {
  const total = credits.reduce((s, c) => s + c, 0);
  if (total <= 0) return credits.map(() => null);
  const rate: Rate = { num: BigInt(amount), den: BigInt(total) };
  let position = 0;
  return credits.map((c) => {
    if (c <= 0) return null;
    const share = valueAt(rate, position + c) - valueAt(rate, position);
    position += c;
    return basisOfPrice(share, c, currency);
  });
}

/**
 * The value, in whole minor units, of the first `position` credits of an addition at `rate`:
 * `position × rate` rounded half up (commercial rounding). The value of credits `a` to `b` of an
 * addition is `valueAt(b) − valueAt(a)`: rounded cumulatively, so an addition's credits, however
 * they are used, expired or refunded, and in whatever windows, add up to exactly `valueAt(amount)`
 * — for a top-up, exactly what was paid (docs/revenue.md, "Rounding").
 */
export function valueAt(rate: Rate, position: number): number {
  if (position <= 0 || rate.num === 0n) return 0;
  const p = BigInt(position);
  return Number((2n * p * rate.num + rate.den) / (2n * rate.den));
}

/**
 * Whether `credits` credits at `perCredit` are worth more than `max` minor units (the bound on one
 * sale, docs/revenue.md "Figures are exact"), exactly whatever their size: `valueAt` works in
 * bigint, and its rounding to a number never takes a value above `max` (a safe integer) down to it.
 */
export function worthMoreThan(credits: number, perCredit: string, max: number): boolean {
  return valueAt(rateOf(perCredit), credits) > max;
}

/**
 * Refuses an addition whose credits at their cost basis are worth more than `max` minor units (one
 * sale's bound, docs/revenue.md "Figures are exact"), so every report figure stays exact.
 */
export function checkSaleWorth(credits: number, basis: CostBasis | undefined, max: number): void {
  if (basis === undefined || !worthMoreThan(credits, basis.perCredit, max)) return;
  throw new ValidationError(
    `Invalid options.costBasis: ${credits} credits at ${basis.perCredit} are worth more than ${max} (10^13) of the smallest currency unit`,
    [{ path: "costBasis", message: `amount × perCredit must be at most ${max}` }],
  );
}

/** What a grant's stored basis must be: the basis of the entry that created it (docs/revenue.md, "Audit"). */
export function sameBasis(a: CostBasis | null | undefined, b: CostBasis | null | undefined): boolean {
  if (a == null || b == null) return (a ?? null) === (b ?? null);
  return a.perCredit === b.perCredit && a.currency === b.currency;
}
