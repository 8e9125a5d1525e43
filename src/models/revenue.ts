import * as z from "zod";
import { DateInput, UserId } from "./common.js";
import { TimeZone, UsageInterval } from "./usage.js";

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
  .int({ error: "must be a whole number of the smallest currency unit" })
  .min(0, { error: "must not be negative" })
  .max(MAX_SALE, { error: `must be at most ${MAX_SALE} (10^13) of the smallest currency unit` });

/**
 * What one credit cost, in the smallest currency unit (docs/revenue.md, "The cost basis"): a
 * decimal (`"2"`, `"0.5"`, `"0.0125"`, at most 12 decimals) or an exact fraction (`"1999/3000"`:
 * 1,999 cents for 3,000 credits), never a float. Text, so it is kept and hashed exactly as written.
 */
export const PerCredit = z
  .string()
  .max(40)
  .regex(/^(?:\d{1,16}(?:\.\d{1,12})?|\d{1,16}\/\d{1,16})$/, {
    error: 'perCredit must be a decimal ("0.5") or a fraction of whole numbers ("1999/3000")',
  })
  .refine(
    (s) => {
      const [n, d] = s.split("/");
      if (Number(n!.split(".")[0]) > MAX) return false;
      return d === undefined || (Number(d) > 0 && Number(d) <= MAX && Number(n) <= MAX);
    },
    { error: "perCredit's numbers must be safe integers and a fraction's denominator at least 1" },
  );

/**
 * A grant's cost basis as stored (docs/revenue.md): what each of its credits was sold for (`perCredit`, smallest unit of `currency`, an upper-case ISO-4217 code). Set when the
 * grant is written and never changed; covered by the hash of the journal entry that created it.
 */
export const CostBasis = z.object({
  perCredit: PerCredit,
  currency: z.string().regex(/^[A-Z]{3}$/, { error: "currency must be an upper-case ISO-4217 code" }),
});
export type CostBasis = z.infer<typeof CostBasis>;

/** A cost basis as callers give it (`addCredits({ costBasis })`): the currency in either case. */
export const CostBasisInput = z.strictObject({
  perCredit: PerCredit,
  currency: z
    .string()
    .regex(/^[A-Za-z]{3}$/, { error: "currency must be a 3-letter ISO-4217 code" })
    .transform((s) => s.toUpperCase()),
});
export type CostBasisInput = z.input<typeof CostBasisInput>;

/** A dimension a revenue report is split by (docs/revenue.md, "The report"); currency always is. */
export const RevenueDimension = z.enum(["account", "source", "plan", "feature", "spender"]);
export type RevenueDimension = z.infer<typeof RevenueDimension>;

/** Most calendar windows a revenue query may span. */
export const MAX_REVENUE_WINDOWS = 2_000;
/** Longest range of a revenue query without an interval, in days. */
export const MAX_REVENUE_RANGE_DAYS = 3_700;
/** Most rows a revenue query answers (its `limit`). */
export const MAX_REVENUE_ROWS = 100_000;
/** Rows a revenue query answers when it names no `limit`. */
export const DEFAULT_REVENUE_ROWS = 10_000;
/**
 * Most cells a revenue report may hold: its windows times its groups (each currency and value of
 * the `groupBy` dimensions met). Past it the query is refused (`ValidationError`) as soon as the
 * report meets the group that passes it, before it builds any row (docs/revenue.md, "How large a
 * report can be").
 */
export const MAX_REVENUE_CELLS = 1_000_000;

/**
 * `credits.getRevenue(query)` (docs/revenue.md): recognized, deferred and breakage by calendar
 * window, from the journal, over one account (`account`) or every account.
 */
export const RevenueQuery = z.strictObject({
  /** One account; absent: every account (the whole book). */
  account: UserId.optional(),
  /** Inclusive start of the range. */
  from: DateInput,
  /**
   * Exclusive end of the range (after `from`). No future windows: a `to` past the end of the
   * window that holds now (the day that holds now, without an interval) reads to that end.
   */
  to: DateInput,
  /** Calendar windows in `timeZone`; null: one window, `from` to `to`. */
  interval: UsageInterval.nullable(),
  /** IANA time zone of the windows (DST-correct). Default "UTC". */
  timeZone: TimeZone.optional(),
  /** Dimensions each row is split by besides currency, each once. Default: none. */
  groupBy: z.array(RevenueDimension).max(5).optional(),
  /**
   * Most rows answered, 1–100,000; default 10,000. The rows kept are the first in the report's
   * order (by window, then currency, then the `groupBy` values); `truncated` says rows were left off.
   */
  limit: z.number().int().min(1).max(MAX_REVENUE_ROWS).optional(),
});
export type RevenueQuery = z.input<typeof RevenueQuery>;

/**
 * One row of a revenue report (docs/revenue.md, "The report"): a window, a currency (null: the row
 * of unbilled usage, which has none) and the groups, with its figures in the currency's smallest
 * unit. Per row: `deferredStart + paid − recognized − breakage − refunds = deferredEnd`.
 */
export interface RevenueRow {
  start: Date;
  end: Date;
  /** Always there; null only on rows that carry nothing but `unbilledCredits`. */
  currency: string | null;
  account?: string;
  /** The source of the grant the figures are of (`payment`, `subscription`, …); null: debt. */
  source?: string | null;
  /** The plan whose subscription sold the credits the figures are of; null: credits from no plan (top-ups, invoices, debt). */
  plan?: string | null;
  /** The spend's feature (recognized and unbilled only; other figures are under null). */
  feature?: string | null;
  spender?: string | null;
  /** Paid credits not yet used at `start`, at their basis. */
  deferredStart: number;
  /** Credits sold in the window: the value of additions with a cost basis (debt they paid included). */
  paid: number;
  /** Credits used in the window at the basis of the grant that paid (debt paid counts when paid); refunds of used credits negative. */
  recognized: number;
  /** Paid credits expired or voided unused in the window. */
  breakage: number;
  /** What refunds and lost disputes took back in the window: unused credits, and the revenue of used ones reversed. */
  refunds: number;
  /** Paid credits not yet used at `end`, at their basis. */
  deferredEnd: number;
  /** Credits of usage past the balance (debt) in the window: no basis yet; recognized when a paid addition pays it. */
  unbilledCredits: number;
}

/** What `credits.getRevenue()` answers. */
export interface RevenueReport {
  /** By window start, then currency (null last), then the `groupBy` values in its order (null last). */
  rows: RevenueRow[];
  /** True when `limit` left rows off: the report's later rows (in the order of `rows`) are not in it. */
  truncated: boolean;
  /** The zone the windows are in. */
  timeZone: string;
}
