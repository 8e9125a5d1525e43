import * as z from "zod/mini";
import { windowStart } from "../core/domain/windows.js";
import { ValidationError } from "../core/errors.js";
import {
  MAX_USAGE_ROWS,
  UsageDimension,
  UsageInterval,
  UnitName,
  UsageKind,
  UsageQuery,
  UserId,
  type UsageReport,
  type UsageRow,
} from "../core/models/index.js";
import { usageCsv } from "../modules/usage/csv.js";
import { csvHeaders } from "../util/csv.js";
import { HttpError, type RouteContext, type RouteDefinition } from "./router.js";
import { adminRoute, target, userRoute } from "./route-helpers.js";
import { textResponse } from "./text-response.js";

/**
 * The usage query as a query string (docs/usage.md, "Over HTTP"): `from` and `to` as ISO 8601
 * (default: this month so far), `interval` `hour|day|week|month|none` (default `day`), `groupBy`
 * and `kinds` comma-separated.
 */
export const UsageParams = z.strictObject({
  /** Inclusive start, ISO 8601. Default: the start of this month in `timeZone`. */
  from: z.optional(z.iso.datetime({ offset: true })),
  /** Exclusive end, ISO 8601. Default: now. */
  to: z.optional(z.iso.datetime({ offset: true })),
  /** Calendar windows; `none`: one window for the whole range. Default `day`. */
  interval: z.optional(z.union([UsageInterval, z.literal("none")])),
  /** Dimensions each row is split by (comma-separated or repeated), at most 4. */
  groupBy: z.optional(z.array(UsageDimension).check(z.maxLength(4))),
  /** IANA time zone of the windows. Default `UTC`. */
  timeZone: z.optional(z.string().check(z.maxLength(64))),
  /** Only these kinds (comma-separated): spend, refund, clawback. Default all. */
  kinds: z.optional(z.array(UsageKind).check(z.minLength(1))),
  /** `start` (default) or `credits`: most credits first. */
  orderBy: z.optional(z.enum(["start", "credits"])),
  /** Most rows, 1–100,000. Default 10,000. */
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_USAGE_ROWS))),
});
/** The fleet-wide query: the same, and optionally one account. */
export const FleetUsageParams = z.extend(UsageParams, { account: z.optional(UserId) });

const Row = z
  .catchall(
    z.object({
      start: z.iso.datetime(),
      end: z.iso.datetime(),
      kind: UsageKind,
      /** The unit of the row's entries (docs/units.md); absent: the default unit. */
      unit: z.optional(UnitName),
      credits: z.number().check(z.int()),
      requests: z.number().check(z.int()),
      inputTokens: z.number().check(z.int()),
      outputTokens: z.number().check(z.int()),
      cachedTokens: z.number().check(z.int()),
      /** Credits of the requests served and not paid (docs/metering.md, "Served and not paid"). */
      shortfall: z.number().check(z.int()),
      /**
       * Only on a catch-up row: usage recorded after a period close with a time in its closed
       * period, reported in the first open window (docs/usage.md, "Closed months"); the `through`
       * of the close whose closed period held its time.
       */
      catchUpThrough: z.optional(z.iso.datetime()),
    }),
    z.nullable(z.string()),
  )
  .check(
    z.describe("A window, the grouped dimensions' values (account, feature, spender, model, reason, metadata.<key>)"),
  );
export const UsageReportSchema = z.object({
  rows: z.array(Row),
  truncated: z.boolean(),
  timeZone: z.string(),
});

type Params = z.infer<typeof FleetUsageParams>;

/**
 * The range of a usage or revenue query string (docs/usage.md and docs/revenue.md, "Over HTTP"):
 * `from` absent is the start of this month in the query's time zone, `to` absent is now, so a query
 * without either reads this month so far. A zone the library refuses is left for it to name.
 */
export function rangeOf(p: { from?: string | undefined; to?: string | undefined; timeZone?: string | undefined }): {
  from: Date | string;
  to: Date | string;
} {
  const now = Date.now();
  let from: Date | string | undefined = p.from;
  if (from === undefined) {
    const zone = UsageQuery.shape.timeZone.safeParse(p.timeZone);
    from = new Date(windowStart(now, "month", zone.success ? (p.timeZone ?? "UTC") : "UTC"));
  }
  return { from, to: p.to ?? new Date(now) };
}

const queryOf = (p: Params, account: string | undefined): UsageQuery => ({
  ...(account === undefined ? {} : { account }),
  ...rangeOf(p),
  interval: p.interval === undefined ? "day" : p.interval === "none" ? null : p.interval,
  ...(p.groupBy === undefined ? {} : { groupBy: p.groupBy }),
  ...(p.timeZone === undefined ? {} : { timeZone: p.timeZone }),
  ...(p.kinds === undefined ? {} : { kinds: p.kinds }),
  ...(p.orderBy === undefined ? {} : { orderBy: p.orderBy }),
  ...(p.limit === undefined ? {} : { limit: p.limit }),
});

/**
 * One spender's usage of an account, for a customer token that names a spender (docs/usage.md, "For
 * your customers"): the query split by spender as well, the other spenders' rows dropped (one row
 * per window, kind and group is left: no merging needed), the requested limit applied after.
 */
async function spenderUsage(ctx: RouteContext, q: UsageQuery, spender: string): Promise<UsageReport> {
  const groupBy = q.groupBy ?? [];
  const asked = groupBy.includes("spender");
  if (!asked && groupBy.length >= 4) {
    throw new ValidationError("Invalid query.groupBy: a spender's token groups by at most 3 other dimensions", [
      { path: "groupBy", message: "at most 3 dimensions with a spender's token" },
    ]);
  }
  const limit = q.limit ?? 10_000;
  const report = await ctx.manager.credits.getUsage({
    ...q,
    groupBy: asked ? groupBy : [...groupBy, "spender"],
    limit: MAX_USAGE_ROWS,
  });
  const rows: UsageRow[] = [];
  for (const r of report.rows) {
    if (r.spender !== spender) continue;
    if (!asked) delete r.spender;
    rows.push(r);
  }
  return {
    rows: rows.slice(0, limit),
    truncated: report.truncated || rows.length > limit,
    timeZone: report.timeZone,
  };
}

/** The report a route answers: the caller's (as its token allows), a user's, or the fleet's. */
async function report(ctx: RouteContext, who: "self" | "user" | "fleet"): Promise<{ r: UsageReport; q: UsageQuery }> {
  const p = ctx.query<Params>();
  if (who === "self") {
    const identity = ctx.identity as NonNullable<RouteContext["identity"]>;
    const q = queryOf(p, identity.userId);
    // `reason` and `metadata.<key>` read the journal's descriptions and metadata, the operator's
    // notes (a refund's `refundedBy`, the console's actor): admins only (docs/service.md, "What each
    // role sees").
    if (identity.admin !== true && (q.groupBy ?? []).some((d) => d === "reason" || d.startsWith("metadata.")))
      throw new HttpError(
        403,
        "FORBIDDEN",
        "Grouping by reason or metadata reads the operator's notes: admins only (group by feature, spender or model).",
      );
    // A customer token naming a spender, or a member's credentials bound to one, read that
    // spender's usage only (docs/teams-and-limits.md, "Over HTTP").
    const spender = identity.customer?.spender ?? (identity.admin === true ? undefined : identity.spender);
    return {
      r: spender === undefined ? await ctx.manager.credits.getUsage(q) : await spenderUsage(ctx, q, spender),
      q,
    };
  }
  const q = queryOf(p, who === "user" ? target(ctx) : p.account);
  return { r: await ctx.manager.credits.getUsage(q), q };
}

const json = (who: "self" | "user" | "fleet") => async (ctx: RouteContext) => (await report(ctx, who)).r;
const csv = (who: "self" | "user" | "fleet") => async (ctx: RouteContext) => {
  const { r, q } = await report(ctx, who);
  return textResponse(usageCsv(r, (q.groupBy ?? []) as UsageDimension[]), {
    status: 200,
    headers: { ...csvHeaders("usage.csv"), ...(r.truncated ? { "x-usage-truncated": "true" } : {}) },
  });
};

const tags = ["usage"];
/**
 * What a customer token's report takes from its account's rate limit: as much as this many
 * balance reads (docs/usage.md, "For your customers").
 */
const REPORT_RATE_COST = 5;
const CSV_NOTE =
  "RFC 4180 (CRLF records, a header line): start, end, the grouped dimensions, kind, unit (when a row is in another unit than the default one), credits, requests, inputTokens, outputTokens, cachedTokens, shortfall, catchUpThrough (when a row is catch-up usage of a closed month; empty on the others). Text that begins with = + - @, a tab or a CR is prefixed with ' (spreadsheet injection). `X-Usage-Truncated: true` when `limit` cut rows.";

/** The usage routes (docs/usage.md, "Over HTTP"). */
export const usageRoutes: RouteDefinition[] = [
  userRoute("GET", "/usage", {
    customer: true,
    rateCost: REPORT_RATE_COST,
    operationId: "getUsage",
    summary: "The caller's usage by calendar window and dimension (`credits.getUsage`)",
    description:
      "With a customer token that names a spender, that spender's usage only. Grouping by reason or metadata is for admins (403). A range past its caps (2,000 windows; 3,700 days without an interval) is a 400.",
    tags,
    query: UsageParams,
    response: UsageReportSchema,
    errors: [403],
    handle: json("self"),
  }),
  userRoute("GET", "/usage.csv", {
    customer: true,
    rateCost: REPORT_RATE_COST,
    operationId: "getUsageCsv",
    summary: "The caller's usage as CSV",
    description: CSV_NOTE,
    tags,
    query: UsageParams,
    responseType: "text/csv",
    errors: [403],
    handle: csv("self"),
  }),
  adminRoute("GET", "/users/:userId/usage", {
    operationId: "adminGetUsage",
    summary: "A user's usage by calendar window and dimension",
    tags,
    query: UsageParams,
    response: UsageReportSchema,
    handle: json("user"),
  }),
  adminRoute("GET", "/users/:userId/usage.csv", {
    operationId: "adminGetUsageCsv",
    summary: "A user's usage as CSV",
    description: CSV_NOTE,
    tags,
    query: UsageParams,
    responseType: "text/csv",
    handle: csv("user"),
  }),
  adminRoute("GET", "/usage", {
    operationId: "adminGetFleetUsage",
    summary:
      "Every account's usage (or `account`'s); `groupBy=account&orderBy=credits&limit=100`: the top 100 accounts",
    tags,
    query: FleetUsageParams,
    response: UsageReportSchema,
    handle: json("fleet"),
  }),
  adminRoute("GET", "/usage.csv", {
    operationId: "adminGetFleetUsageCsv",
    summary: "Every account's usage as CSV",
    description: CSV_NOTE,
    tags,
    query: FleetUsageParams,
    responseType: "text/csv",
    handle: csv("fleet"),
  }),
];
