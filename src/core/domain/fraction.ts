/**
 * Exact fractions of bigints, as prices (src/modules/pricing/rules.ts), cost bases (./cost-basis.ts),
 * reversals (./reversal.ts) and usage shares (./usage.ts) are computed.
 */

export const gcd = (a: bigint, b: bigint): bigint => {
  while (b !== 0n) [a, b] = [b, a % b];
  return a;
};

/** `n / d` in lowest terms. */
export function reduced(n: bigint, d: bigint): { n: bigint; d: bigint } {
  const g = gcd(n, d);
  return g > 1n ? { n: n / g, d: d / g } : { n, d };
}

/**
 * `x` split over `weights` in proportion to them (`total`: their sum), by largest remainder: each
 * exact share rounded down, then what that leaves given one each to the largest remainders, equal
 * remainders in the order of `weights`. The shares add up to `x` exactly and stay as close to
 * proportional as whole numbers can; with `0 <= x <= total` and weights >= 0, no share is above its
 * weight. Exact in bigint whatever the amounts. The rule of docs/corrections.md ("Which charges,
 * and where the credits go") and docs/usage.md ("Corrections").
 */
export function largestRemainder(weights: readonly number[], x: number, total: number): number[] {
  if (total === 0) return weights.map(() => 0);
  const t = BigInt(total);
  const X = BigInt(x);
  const shares = weights.map((w, i) => {
    const n = X * BigInt(w);
    let q = n / t;
    let r = n % t;
    if (r < 0n) {
      q -= 1n;
      r += t;
    }
    return { i, q, r };
  });
  let left = X - shares.reduce((s, p) => s + p.q, 0n);
  const order = shares.slice().sort((a, b) => (a.r === b.r ? a.i - b.i : a.r > b.r ? -1 : 1));
  for (const s of order) {
    if (left <= 0n) break;
    s.q += 1n;
    left -= 1n;
  }
  return shares.map((s) => Number(s.q));
}
