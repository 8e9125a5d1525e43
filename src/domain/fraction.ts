/** Exact fractions of bigints, as prices (./pricing.ts) and cost bases (./revenue.ts) are computed. */

export const gcd = (a: bigint, b: bigint): bigint => {
  while (b !== 0n) [a, b] = [b, a % b];
  return a;
};

/** `n / d` in lowest terms. */
export function reduced(n: bigint, d: bigint): { n: bigint; d: bigint } {
  const g = gcd(n, d);
  return g > 1n ? { n: n / g, d: d / g } : { n, d };
}
