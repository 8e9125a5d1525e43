import * as z from "zod/mini";
import { DateInput, NonNegativeAmount, UserId } from "../../core/models/common.js";
import { TimeZone, UsageInterval } from "../../core/models/usage.js";
/** A dimension a revenue report is split by (docs/revenue.md, "The report"); currency always is. @public */
export const RevenueDimension = z.enum(["account", "source", "plan", "feature", "spender", "unit"]);
/** A dimension a revenue report is split by (docs/revenue.md, "The report"); currency always is. @public */
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
 * @public
 */
export const RevenueQuery = z.strictObject({
  /** One account; absent: every account (the whole book). */
  account: z.optional(UserId),
  /** Inclusive start of the range. */
  from: DateInput,
  /**
   * Exclusive end of the range (after `from`). No future windows: a `to` past the end of the
   * window that holds now (the day that holds now, without an interval) reads to that end.
   */
  to: DateInput,
  /** Calendar windows in `timeZone`; null: one window, `from` to `to`. */
  interval: z.nullable(UsageInterval),
  /** IANA time zone of the windows (DST-correct). Default "UTC". */
  timeZone: z.optional(TimeZone),
  /** Dimensions each row is split by besides currency, each once. Default: none. */
  groupBy: z.optional(z.array(RevenueDimension).check(z.maxLength(6))),
  /**
   * Most rows answered, 1–100,000; default 10,000. The rows kept are the first in the report's
   * order (by window, then currency, then the `groupBy` values); `truncated` says rows were left off.
   */
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_REVENUE_ROWS))),
});
/**
 * `credits.getRevenue(query)` (docs/revenue.md): recognized, deferred and breakage by calendar
 * window, from the journal, over one account (`account`) or every account.
 * @public
 */
export type RevenueQuery = z.input<typeof RevenueQuery>;

/**
 * One row of a revenue report (docs/revenue.md, "The report"): a window, a currency (null: the row
 * of unbilled usage, which has none) and the groups, with its figures in the currency's smallest
 * unit. Per window and group, over its ordinary row and its catch-up rows (`catchUpThrough`):
 * `deferredStart + paid − recognized − breakage − refunds = deferredEnd`.
 * @public
 */
export interface RevenueRow {
  /** The start of the row's window. */
  start: Date;
  /** The end of the row's window. */
  end: Date;
  /** Always there; null only on rows that carry nothing but `unbilledCredits`. */
  currency: string | null;
  /** The account, when grouped by account. */
  account?: string;
  /** The source of the grant the figures are of (`payment`, `subscription`, …); null: debt. */
  source?: string | null;
  /** The plan whose subscription sold the credits the figures are of; null: credits from no plan (top-ups, invoices, debt). */
  plan?: string | null;
  /** The spend's feature (recognized and unbilled only; other figures are under null). */
  feature?: string | null;
  /** The spender, when grouped by spender. */
  spender?: string | null;
  /**
   * On a catch-up row (docs/revenue.md, "Closing a month"): the `through` of the close whose closed
   * period held the figures' original time — entries recorded after that close with a time before
   * its `through`, booked in the first open window instead. Null on ordinary rows, which carry the
   * deferred values (the window's roll-forward balances over its ordinary and catch-up rows).
   */
  catchUpThrough: Date | null;
  /**
   * The unit (docs/units.md) the row's credits are in, by name (`credits`: the default unit), when
   * grouped by unit: money figures of the grants of that unit, `unbilledCredits` in that unit.
   */
  unit?: string;
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
  /**
   * Credits of usage past the balance (debt) in the window: no basis yet; recognized when a paid
   * addition pays it, and usage served past the overdraft limit and never charged (its `shortfall`,
   * docs/metering.md). The default unit's only (docs/units.md), unless grouped by `unit`: then each
   * unit's row has that unit's, in that unit.
   */
  unbilledCredits: number;
}

/** What `credits.getRevenue()` answers. @public */
export interface RevenueReport {
  /** By window start, then currency (null last), then the `groupBy` values in its order (null last). */
  rows: RevenueRow[];
  /** True when `limit` left rows off: the report's later rows (in the order of `rows`) are not in it. */
  truncated: boolean;
  /** The zone the windows are in. */
  timeZone: string;
}

/**
 * A closed period of the revenue reports (docs/revenue.md, "Closing a month"): reports of windows
 * that end at or before `through` read the same forever; what is recorded later with a time
 * before `through` is booked at `through`, as catch-up. The close records each account's journal
 * seq at that moment (its mark): the entries after it are the ones recorded later.
 * @beta
 */
export const PeriodClose = z.object({
  /** The end (exclusive) of the closed period. */
  through: z.date(),
  /** When the close was recorded. */
  closedAt: z.date(),
  /** How many accounts it marked (one row each). */
  accounts: NonNegativeAmount,
});
/** A closed period of the revenue reports (docs/revenue.md, "Closing a month"). @beta */
export type PeriodClose = z.infer<typeof PeriodClose>;

/** An account's journal seq when a period was closed (docs/revenue.md, "Closing a month"). @beta */
export const PeriodCloseMark = z.object({
  /** The close's `through`. */
  through: z.date(),
  userId: UserId,
  /** The account's last journal seq at the close: its entries after it were recorded later. */
  seq: NonNegativeAmount,
});
/** An account's journal seq when a period was closed (docs/revenue.md, "Closing a month"). @beta */
export type PeriodCloseMark = z.infer<typeof PeriodCloseMark>;

/**
 * `credits.closePeriod({ through })` (docs/revenue.md, "Closing a month"): `through` must not be
 * in the future and must be after the latest close.
 * @beta
 */
export const ClosePeriodInput = z.strictObject({
  /** The end (exclusive) of the period to close. */
  through: DateInput,
});
/** `credits.closePeriod({ through })` (docs/revenue.md, "Closing a month"). @beta */
export type ClosePeriodInput = z.input<typeof ClosePeriodInput>;
