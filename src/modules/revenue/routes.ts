import * as z from "zod/mini";
import {
  ClosePeriodInput,
  MAX_REVENUE_ROWS,
  PeriodClose,
  RevenueDimension,
  UserId,
  type RevenueQuery,
  type RevenueReport,
} from "../../models-entry.js";
import { revenueCsvStream } from "./csv.js";
import { csvHeaders } from "../../util/csv.js";
import { type RouteContext, type RouteDefinition } from "../../http/router.js";
import { adminRoute } from "../../http/route-helpers.js";
import { rangeOf, UsageParams } from "../../http/usage-routes.js";

/**
 * The revenue query as a query string (docs/revenue.md, "Where finance reads it"): `from` and `to`
 * as ISO 8601 (default: this month so far), `interval` `hour|day|week|month|none` (default `month`), `groupBy` comma-separated,
 * `timeZone`, `account` for one account (absent: the whole book) and `limit`.
 */
export const RevenueParams = z.extend(z.pick(UsageParams, { from: true, to: true, interval: true, timeZone: true }), {
  /** Dimensions each row is split by besides currency (comma-separated or repeated), each once. */
  groupBy: z.optional(z.array(RevenueDimension).check(z.maxLength(6))),
  /** One account; absent: every account. */
  account: z.optional(UserId),
  /** Most rows, 1–100,000. Default 10,000: the first in the report's order. */
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_REVENUE_ROWS))),
});

const money = z.number().check(z.int());
const Row = z
  .catchall(
    z.object({
      start: z.iso.datetime(),
      end: z.iso.datetime(),
      currency: z.nullable(z.string()).check(z.describe("ISO 4217; null on the rows of unbilled usage")),
      catchUpThrough: z
        .nullable(z.iso.datetime())
        .check(
          z.describe(
            "On a catch-up row: the `through` of the close whose closed period held its figures' time (recorded after that close); null on ordinary rows",
          ),
        ),
      deferredStart: money.check(
        z.describe("Paid credits not yet used at `start`, at their basis (smallest currency unit)"),
      ),
      paid: money.check(z.describe("Credits sold in the window: additions with a cost basis")),
      recognized: money.check(
        z.describe("Credits used at the basis of the grant that paid; refunds of used credits negative"),
      ),
      breakage: money.check(z.describe("Paid credits expired or voided unused")),
      refunds: money.check(z.describe("What refunds and lost disputes took back")),
      deferredEnd: money.check(z.describe("Paid credits not yet used at `end`, at their basis")),
      unbilledCredits: z
        .number()
        .check(
          z.int(),
          z.describe(
            "Credits of usage past the balance (debt) and served past the overdraft limit: no basis; the default unit's, or grouped by unit the row's unit's",
          ),
        ),
    }),
    z.nullable(z.string()),
  )
  .check(
    z.describe(
      "A window, a currency, the grouped dimensions' values (account, source, plan, feature, spender, unit) and the figures",
    ),
  );
export const RevenueReportSchema = z.object({
  rows: z
    .array(Row)
    .check(z.describe("By window start, then currency (null last), then the groupBy values in order (null last)")),
  truncated: z.boolean().check(z.describe("`limit` left rows off: the later rows in that order")),
  timeZone: z.string(),
});

type Params = z.infer<typeof RevenueParams>;

/** The library's query from the route's (the interval's default is the month: a month-end report). */
export function revenueQueryOf(p: Params): RevenueQuery {
  return {
    ...(p.account === undefined ? {} : { account: p.account }),
    ...rangeOf(p),
    interval: p.interval === undefined ? "month" : p.interval === "none" ? null : p.interval,
    ...(p.groupBy === undefined ? {} : { groupBy: p.groupBy }),
    ...(p.timeZone === undefined ? {} : { timeZone: p.timeZone }),
    ...(p.limit === undefined ? {} : { limit: p.limit }),
  };
}

async function report(ctx: RouteContext): Promise<{ r: RevenueReport; q: RevenueQuery }> {
  const q = revenueQueryOf(ctx.query<Params>());
  return { r: await ctx.manager.credits.getRevenue(q), q };
}

const tags = ["revenue"];
const NOTE =
  "Deferred revenue at each window's bounds, paid, recognized, breakage and refunds per currency in its smallest unit, and unbilled usage in credits (`credits.getRevenue`, docs/revenue.md). Per window and group, over its ordinary row and its catch-up rows (`catchUpThrough`, docs/revenue.md \"Closing a month\"): deferredStart + paid − recognized − breakage − refunds = deferredEnd. No window after the one that holds now (a later `to` reads to that window's end). At most `limit` rows (default 10,000, at most 100,000), the first by window, currency and groups; `truncated` says rows were left off. A range past its caps (2,000 windows; 3,700 days without an interval; 1,000,000 windows × groups) is a 400.";

/** The revenue routes (docs/revenue.md, "Where finance reads it"): admins only. */
export const revenueRoutes: RouteDefinition[] = [
  adminRoute("GET", "/revenue", {
    operationId: "adminGetRevenue",
    summary: "Revenue of every account (or `account`'s) by calendar window: deferred, recognized, breakage",
    description: NOTE,
    tags,
    query: RevenueParams,
    response: RevenueReportSchema,
    handle: async (ctx) => (await report(ctx)).r,
  }),
  adminRoute("GET", "/revenue.csv", {
    operationId: "adminGetRevenueCsv",
    summary: "The revenue report as CSV",
    description:
      "RFC 4180 (CRLF records, a header line), streamed: start, end, currency, the grouped dimensions, catchUpThrough (empty on ordinary rows), deferredStartMinor, paidMinor, recognizedMinor, breakageMinor, refundsMinor, deferredEndMinor (the smallest currency unit), unbilledCredits. Text that begins with = + - @, a tab or a CR is prefixed with ' (spreadsheet injection). The JSON route's bounds; `X-Revenue-Truncated: true` when `limit` left rows off.",
    tags,
    query: RevenueParams,
    responseType: "text/csv",
    handle: async (ctx) => {
      const { r, q } = await report(ctx);
      return new Response(revenueCsvStream(r, q.groupBy ?? []), {
        status: 200,
        headers: { ...csvHeaders("revenue.csv"), ...(r.truncated ? { "x-revenue-truncated": "true" } : {}) },
      });
    },
  }),
  adminRoute("POST", "/revenue/closes", {
    operationId: "adminClosePeriod",
    summary: "Closes the revenue reports through `through`",
    description:
      "`credits.closePeriod` (docs/revenue.md, \"Closing a month\"): records every account's journal seq now and the close; revenue reports of windows ending at or before `through` then read the same forever, and what is recorded later with a time before `through` is booked at `through` on catch-up rows. `through` must not be in the future and must be after the latest close's (400); of two closes racing, one is recorded (409).",
    tags,
    body: ClosePeriodInput,
    status: 201,
    response: PeriodClose,
    errors: [409],
    handle: async (ctx) => ctx.manager.credits.closePeriod((await ctx.body<{ through: Date }>()).through),
  }),
  adminRoute("GET", "/revenue/closes", {
    operationId: "adminListPeriodCloses",
    summary: "The closed periods of the revenue reports, by `through` ascending",
    description: '`credits.listPeriodCloses` (docs/revenue.md, "Closing a month").',
    tags,
    response: z.object({ closes: z.array(PeriodClose) }),
    handle: async (ctx) => ({ closes: await ctx.manager.credits.listPeriodCloses() }),
  }),
];
