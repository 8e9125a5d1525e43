import * as z from "zod/mini";
import { DateInput, UserId } from "./common.js";
import { TimeZone } from "./time-zone.js";

/** The calendar windows a usage query groups by (docs/usage.md); null: one window for the whole range. @public */
export const UsageInterval = z.enum(["hour", "day", "week", "month"]);
/** The calendar windows a usage query groups by (docs/usage.md); null: one window for the whole range. @public */
export type UsageInterval = z.infer<typeof UsageInterval>;

/**
 * What a usage row is (docs/usage.md, "What counts"): `spend` — deductions, captured holds,
 * after-service charges, lease windows; `refund` and `clawback` — credits a payment's refund or lost
 * dispute took back. Kept apart, never netted into spend.
 * @public
 */
export const UsageKind = z.enum(["spend", "refund", "clawback"]);
/**
 * What a usage row is (docs/usage.md, "What counts"): `spend` — deductions, captured holds,
 * after-service charges, lease windows; `refund` and `clawback` — credits a payment's refund or lost
 * dispute took back. Kept apart, never netted into spend.
 * @public
 */
export type UsageKind = z.infer<typeof UsageKind>;

/** A metadata key a usage query may group by: `metadata.<key>`, the key a plain name. */
const MetadataDimension = z.pipe(
  z.string().check(
    z.regex(/^metadata\.[A-Za-z0-9_-]{1,64}$/, {
      error: "must be account, feature, spender, model, reason or metadata.<key> (key: letters, digits, _ and -)",
    }),
  ),
  z.transform((s) => s as `metadata.${string}`),
);

/** A dimension a usage query groups by. @public */
export const UsageDimension = z.union([
  z.enum(["account", "feature", "spender", "model", "reason"]),
  MetadataDimension,
]);
/**
 * What a usage report groups by: the account, the feature, the spender, the model, the reason, or a metadata
 * key. @public
 */
export type UsageDimension = "account" | "feature" | "spender" | "model" | "reason" | `metadata.${string}`;

/** Most rows a usage query answers with. */
export const MAX_USAGE_ROWS = 100_000;
/** Most calendar windows a usage query's range may span (e.g. hours: about 83 days). */
export const MAX_USAGE_WINDOWS = 2_000;
/** Longest range of a usage query without an interval (`interval: null`), in days. */
export const MAX_USAGE_RANGE_DAYS = 3_700;

// In a file of its own: the core's alerts take it without the usage query's schemas.
export { TimeZone };

/**
 * `credits.getUsage(query)` (docs/usage.md): usage summed by calendar window and dimension, over one
 * account (`account`) or the whole store (no `account`).
 * @public
 */
export const UsageQuery = z.strictObject({
  /** One account's usage; absent: every account's (fleet-wide; e.g. top accounts with `orderBy`). */
  account: z.optional(UserId),
  /** Inclusive start of the range. */
  from: DateInput,
  /** Exclusive end of the range (after `from`). */
  to: DateInput,
  /** Calendar windows in `timeZone`; null: one window, `from` to `to`. */
  interval: z.nullable(UsageInterval),
  /** Dimensions each row is split by, at most 4, each once. Default: none (one row per window). */
  groupBy: z.optional(z.array(UsageDimension).check(z.maxLength(4))),
  /** IANA time zone the windows are calendar windows of (DST-correct). Default "UTC". */
  timeZone: z.optional(TimeZone),
  /**
   * Only these kinds of usage. Default: all three. Every row is of one kind (`kind`): refunds and
   * clawbacks are never netted into spend.
   */
  kinds: z.optional(z.array(UsageKind).check(z.minLength(1))),
  /**
   * Row order: `start` (default: by window, then by the groups' values) or `credits` (most credits
   * first, then by window and groups): `orderBy: "credits", limit: 100` answers "top 100".
   */
  orderBy: z.optional(z.enum(["start", "credits"])),
  /** Most rows answered, 1–100,000; default 10,000. The query says `truncated` when it cut rows. */
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_USAGE_ROWS))),
});
/**
 * `credits.getUsage(query)` (docs/usage.md): usage summed by calendar window and dimension, over one
 * account (`account`) or the whole store (no `account`).
 * @public
 */
export type UsageQuery = z.input<typeof UsageQuery>;

/**
 * One row of a usage report: a window (`start` inclusive, `end` exclusive — a calendar window in
 * the query's zone, clipped to the query's range) and the values of the dimensions grouped by (a
 * dimension the usage did not name is null), with what was spent in it.
 * @public
 */
export interface UsageRow {
  /** The start of the row's window. */
  start: Date;
  /** The end of the row's window. */
  end: Date;
  /** The account, when grouped by account. */
  account?: string;
  /** The feature, when grouped by feature. */
  feature?: string | null;
  /** The spender, when grouped by spender. */
  spender?: string | null;
  /** The model, when grouped by model. */
  model?: string | null;
  /** The reason, when grouped by reason. */
  reason?: string | null;
  /** Always there: rows of different kinds are never added together. */
  kind: UsageKind;
  /**
   * The unit of the entries summed (docs/units.md): each unit has rows of its own, never added to
   * another's. Absent: the default unit.
   */
  unit?: string;
  /** Credits: spent for `spend`, taken back for `refund` and `clawback` (never negative). */
  credits: number;
  /** Requests: one per deduction or captured hold, a lease window's count; 0 for refunds and clawbacks. */
  requests: number;
  /** Input tokens billed at the input rate (LLM usage, docs/llm-metering.md); 0 when none. */
  inputTokens: number;
  /** Output tokens (LLM usage); 0 when none. */
  outputTokens: number;
  /** Input tokens read from a prompt cache (LLM usage); 0 when none. */
  cachedTokens: number;
  /**
   * Credits of `requests` served and not paid: what the overdraft limit left uncharged of a metered
   * request or call (docs/metering.md, "Served and not paid"), not in `credits`; 0 when none.
   */
  shortfall: number;
  /**
   * Only on a catch-up row (docs/usage.md, "Closed months"): usage recorded after a period close
   * (`credits.closePeriod`) with a time before its `through`, reported in the first open window
   * instead of the closed one; the `through` of the close whose closed period held its time (as
   * `RevenueRow.catchUpThrough`). Absent: ordinary usage, at its time.
   */
  catchUpThrough?: Date;
  /** `metadata.<key>` groups: the entry's value as text (null when absent or not a string/number/boolean). */
  [metadata: `metadata.${string}`]: string | null;
}

/** What `credits.getUsage()` answers. @public */
export interface UsageReport {
  /** The report's rows. */
  rows: UsageRow[];
  /** True when `limit` cut rows off (the rest is not in `rows`). */
  truncated: boolean;
  /** The zone the windows are in. */
  timeZone: string;
}
