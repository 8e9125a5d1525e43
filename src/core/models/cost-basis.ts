import * as z from "zod/mini";

/** Largest numerator, denominator or whole part of a cost basis: a safe integer. */
const MAX = Number.MAX_SAFE_INTEGER;

/**
 * Most one sale may be worth, in the smallest unit of its currency (docs/revenue.md, "Figures are
 * exact"): a payment's amount, a plan's price, the credits of an addition at their cost basis.
 * 10¹³ ($100 billion in cents), so that the report's sums of hundreds of the largest sales stay
 * exact JavaScript numbers (below 2⁵³).
 */
export const MAX_SALE = 10 ** 13;

/** A sum of money in the smallest unit of its currency, 0 to `MAX_SALE`. */
export const Money = z
  .number({ error: "must be a number" })
  .check(
    z.int({ error: "must be a whole number of the smallest currency unit" }),
    z.minimum(0, { error: "must not be negative" }),
    z.maximum(MAX_SALE, { error: `must be at most ${MAX_SALE} (10^13) of the smallest currency unit` }),
  );

/**
 * What one credit cost, in the smallest currency unit (docs/revenue.md, "The cost basis"): a
 * decimal (`"2"`, `"0.5"`, `"0.0125"`, at most 12 decimals) or an exact fraction (`"1999/3000"`:
 * 1,999 cents for 3,000 credits), never a float. Text, so it is kept and hashed exactly as written.
 */
export const PerCredit = z.string().check(
  z.maxLength(40),
  z.regex(/^(?:\d{1,16}(?:\.\d{1,12})?|\d{1,16}\/\d{1,16})$/, {
    error: 'perCredit must be a decimal ("0.5") or a fraction of whole numbers ("1999/3000")',
  }),
  z.refine(
    (s) => {
      const [n, d] = s.split("/");
      if (Number(n!.split(".")[0]) > MAX) return false;
      return d === undefined || (Number(d) > 0 && Number(d) <= MAX && Number(n) <= MAX);
    },
    { error: "perCredit's numbers must be safe integers and a fraction's denominator at least 1" },
  ),
);

/**
 * A grant's cost basis as stored (docs/revenue.md): what each of its credits was sold for (`perCredit`, smallest unit of `currency`, an upper-case ISO-4217 code). Set when the
 * grant is written and never changed; covered by the hash of the journal entry that created it.
 * @public
 */
export const CostBasis = z.object({
  perCredit: PerCredit,
  currency: z.string().check(z.regex(/^[A-Z]{3}$/, { error: "currency must be an upper-case ISO-4217 code" })),
});
/**
 * A grant's cost basis as stored (docs/revenue.md): what each of its credits was sold for (`perCredit`, smallest unit of `currency`, an upper-case ISO-4217 code). Set when the
 * grant is written and never changed; covered by the hash of the journal entry that created it.
 * @public
 */
export type CostBasis = z.infer<typeof CostBasis>;

/** A cost basis as callers give it (`addCredits({ costBasis })`): the currency in either case. @public */
export const CostBasisInput = z.strictObject({
  perCredit: PerCredit,
  currency: z.pipe(
    z.string().check(z.regex(/^[A-Za-z]{3}$/, { error: "currency must be a 3-letter ISO-4217 code" })),
    z.transform((s) => s.toUpperCase()),
  ),
});
/** A cost basis as callers give it (`addCredits({ costBasis })`): the currency in either case. @public */
export type CostBasisInput = z.input<typeof CostBasisInput>;
