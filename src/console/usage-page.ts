import type { Account, JournalEntry } from "../core/models/index.js";
import type { UsageDimension, UsageQuery, UsageReport, UsageRow } from "../core/models/usage.js";
import { sumUsage } from "../modules/usage/service.js";
import { accountCloseCuts } from "../modules/revenue/service.js";
import type { CloseCut } from "../modules/revenue/rules.js";
import { usageCsv } from "../modules/usage/csv.js";
import { csvHeaders } from "../util/csv.js";
import type { Ctx, PageResult } from "./context.js";
import { amount, enc, html, inUnit, query, raw, when, type Html } from "./html.js";
import { shortId, table } from "./table.js";
import { chartBox, chartData } from "./usage-chart.js";
import { cards, dayField, dayParam, refusedCsv, refusedReport } from "./page-parts.js";

const isoDay = (d: Date) => d.toISOString().slice(0, 10);

/** The dimensions the usage page splits its chart by (docs/console.md, "Usage"). */
const DIMENSIONS = ["model", "feature", "spender"] as const;
type Dimension = (typeof DIMENSIONS)[number];
const LABELS: Record<Dimension, string> = { model: "Model", feature: "Feature", spender: "Spender" };
/** Rows the page's table shows at most (the CSV has them all, up to the query's cap). */
const TABLE_ROWS = 500;
/** The fleet's top accounts the page lists. */
const TOP = 20;

/** The page's query from its form: account (none: the fleet), days from and to (UTC), the split. */
function params(ctx: Ctx) {
  const sp = ctx.url.searchParams;
  const today = new Date(Date.UTC(ctx.now.getUTCFullYear(), ctx.now.getUTCMonth(), ctx.now.getUTCDate()));
  // A day that is not YYYY-MM-DD is left for the default, and the page says so.
  const errors: string[] = [];
  const day = (name: "from" | "to", label: string, fallback: Date): Date => {
    const d = dayParam(sp.get(name));
    if (d === null)
      errors.push(`${label}: "${sp.get(name) ?? ""}" is not a day (YYYY-MM-DD): ${isoDay(fallback)} is shown.`);
    return d ?? fallback;
  };
  const from = day("from", "From", new Date(today.getTime() - 29 * 86_400_000));
  // "To" is the last day shown (inclusive on the form): the query ends the next midnight.
  const last = day("to", "To", today);
  const to = new Date(Math.max(last.getTime(), from.getTime()) + 86_400_000);
  const by = (DIMENSIONS as readonly string[]).includes(sp.get("by") ?? "") ? (sp.get("by") as Dimension) : "model";
  const account = (sp.get("account") ?? sp.get("user") ?? "").trim();
  return { from, last, to, by, account, errors };
}

/** `null` as the console shows a dimension the usage did not name. */
const group = (v: unknown, dimension: string): Html | string =>
  v === null || v === undefined ? html`<span class="muted">(no ${dimension})</span>` : String(v);

/**
 * The usage page (docs/console.md, "Usage"): `credits.getUsage()` of one account or of the whole
 * store, by day, split by model, feature or spender — a stacked chart, the rows under it, a CSV
 * download, and (for the fleet) the top accounts of the range.
 */
export async function usagePage(ctx: Ctx): Promise<PageResult> {
  const p = params(ctx);
  const form = html`<form class="box" method="get" action="${ctx.base}/usage" role="search">
      <label>Account (empty: every account)<input name="account" value="${p.account}" /></label
      >${dayField("From (UTC)", "from", isoDay(p.from))}${dayField("To (UTC, included)", "to", isoDay(p.last))}<label
        >Split by<select name="by">
          ${DIMENSIONS.map(
            (d) => html`<option value="${d}" ${d === p.by ? raw("selected") : raw("")}>${LABELS[d]}</option>`,
          )}
        </select></label
      ><button type="submit">Show</button>
    </form>
    ${p.errors.map((e) => html`<p class="error" role="alert">${e}</p>`)}`;
  let report: UsageReport;
  let top: UsageReport | null = null;
  try {
    report = await ctx.manager.credits.getUsage({
      ...(p.account === "" ? {} : { account: p.account }),
      from: p.from,
      to: p.to,
      interval: "day",
      groupBy: [p.by],
    });
    if (p.account === "")
      top = await ctx.manager.credits.getUsage({
        from: p.from,
        to: p.to,
        interval: null,
        groupBy: ["account"],
        kinds: ["spend"],
        orderBy: "credits",
        limit: TOP,
      });
  } catch (error) {
    // A store without its own aggregation reads one account at a time (docs/usage.md).
    const ask = "This store sums usage one account at a time: enter an account.";
    return refusedReport(error, "Usage", form, p.account === "", ask);
  }
  const who = p.account === "" ? "every account" : p.account;
  // The cards and the chart count the default unit; the table names any other unit (docs/units.md).
  const own = report.rows.filter((r) => r.unit === undefined);
  const spend = own.filter((r) => r.kind === "spend");
  const total = spend.reduce((s, r) => s + r.credits, 0);
  const requests = spend.reduce((s, r) => s + r.requests, 0);
  const back = own.filter((r) => r.kind !== "spend").reduce((s, r) => s + r.credits, 0);
  const rows = [...report.rows].sort((a, b) => b.start.getTime() - a.start.getTime() || b.credits - a.credits);
  const csv = `${ctx.base}/usage.csv${query({ account: p.account, from: isoDay(p.from), to: isoDay(p.last), by: p.by })}`;
  const body = html`<h1>Usage</h1>
    ${form}
    ${cards([
      { label: "Credits spent", value: amount(total), id: "usage-total" },
      { label: "Requests", value: amount(requests) },
      { label: "Refunded and clawed back", value: amount(back) },
    ])}
    <h2>By day and ${p.by} (UTC), ${who}</h2>
    ${chartBox("usage-chart", `Credits spent per day by ${p.by}, ${who}`, chartData(own, p.by, "UTC", p))}
    <p><a href="${csv}" download="usage.csv">Download CSV</a></p>
    ${table({
      id: "usage-table",
      caption: `Usage by day and ${p.by}`,
      columns: [
        { label: "Day", short: true },
        LABELS[p.by],
        { label: "Kind", short: true },
        { label: "Requests", num: true },
        { label: "Input tokens", num: true },
        { label: "Output tokens", num: true },
        { label: "Credits", num: true },
      ],
      rows: rows
        .slice(0, TABLE_ROWS)
        .map((r) => [
          html`<span class="pair">${isoDay(r.start)}</span>`,
          group(r[p.by], p.by),
          kindOf(r),
          amount(r.requests),
          amount(r.inputTokens),
          amount(r.outputTokens),
          inUnit(r.credits, r.unit),
        ]),
      empty: "No usage in this range.",
    })}
    ${
      rows.length > TABLE_ROWS || report.truncated
        ? html`<p class="muted">The newest ${TABLE_ROWS} rows are shown: the CSV has the rest.</p>`
        : raw("")
    }
    ${
      top === null
        ? raw("")
        : html`<h2>Top accounts</h2>
            ${table({
              id: "top-accounts",
              caption: "Accounts that spent most in this range",
              columns: ["Account", { label: "Requests", num: true }, { label: "Credits", num: true }],
              rows: top.rows.map((r) => [
                html`<a
                    href="${ctx.base}/usage${query({ account: r.account, from: isoDay(p.from), to: isoDay(p.last), by: p.by })}"
                    >${shortId(r.account as string, "user")}</a
                  >${r.catchUpThrough === undefined ? "" : ` (${catchUpNote(r.catchUpThrough)})`}`,
                amount(r.requests),
                inUnit(r.credits, r.unit),
              ]),
              empty: "No usage in this range.",
            })}`
    }`;
  return { title: "Usage", body };
}

/**
 * What a catch-up row says of its close (docs/usage.md, "Closed months"): usage recorded after the
 * month closed through `through` with a time before it, shown in the first open day.
 */
const catchUpNote = (through: Date): string =>
  `catch-up: recorded after the close through ${through.getTime() % 86_400_000 === 0 ? isoDay(through) : through.toISOString()}`;

/** A row's kind, and for a catch-up row which close it catches up. */
const kindOf = (r: UsageRow): string =>
  r.catchUpThrough === undefined ? r.kind : `${r.kind}, ${catchUpNote(r.catchUpThrough)}`;

/** The usage page's rows as CSV (RFC 4180, formulas made inert: docs/usage.md). */
export async function usageCsvPage(ctx: Ctx): Promise<PageResult> {
  const p = params(ctx);
  const groupBy: UsageDimension[] = p.account === "" ? ["account", p.by] : [p.by];
  try {
    const report = await ctx.manager.credits.getUsage({
      ...(p.account === "" ? {} : { account: p.account }),
      from: p.from,
      to: p.to,
      interval: "day",
      groupBy,
      limit: 100_000,
    });
    return new Response(usageCsv(report, groupBy), { headers: csvHeaders("usage.csv") });
  } catch (error) {
    return refusedCsv(error);
  }
}

/**
 * The newest journal entries the account page reads for its balance chart, its usage by day and
 * its spend per spender (docs/console.md): one indexed range of the journal by seq, whatever its
 * size — a store's usage query over a date range reads every entry of the range, and an account
 * may have hundreds of thousands in a month. The usage page sums the whole range.
 */
export const RECENT_ENTRIES = 2_000;

/** What the account page read of the journal for its chart and usage sections. */
export interface RecentEntries {
  /** The account's newest `RECENT_ENTRIES` entries (or all it has), oldest first. */
  entries: JournalEntry[];
  /**
   * When the newest entry not read was created (entries are appended in time order): a section
   * whose range starts after it summed every entry of its range; null: every entry was read.
   */
  olderAt: Date | null;
  /** The store's period closes with the account's marks: what they moved is summed where getUsage books it. */
  cuts: readonly CloseCut[];
}

/** The newest `RECENT_ENTRIES` entries of `account` and the one before them (one read by seq: bounded on every store), and the closes. */
export async function recentEntries(ctx: Ctx, account: Account): Promise<RecentEntries> {
  const after = Math.max(0, account.seq - RECENT_ENTRIES - 1);
  const [read, cuts] = await Promise.all([
    ctx.manager.db.listJournal(account.userId, {
      order: "asc",
      afterSeq: after,
      limit: RECENT_ENTRIES + 1,
    }),
    accountCloseCuts(ctx.manager.db, account.userId),
  ]);
  const older = read.length > RECENT_ENTRIES ? read.shift() : undefined;
  return { entries: read, olderAt: older?.createdAt ?? null, cuts };
}

/**
 * The usage of `recent` that `query` asks for (summed by `sumUsage`, the rules of getUsage), and
 * when the sums start if older entries of the query's range were not read (null: all were).
 */
export function recentUsage(
  recent: RecentEntries,
  query: UsageQuery & { account: string; from: Date },
): { report: UsageReport; partialSince: Date | null } {
  const report = sumUsage(query, recent.entries, recent.cuts);
  const partial = recent.olderAt !== null && recent.olderAt >= query.from;
  return { report, partialSince: partial ? (recent.entries[0]?.createdAt ?? recent.olderAt) : null };
}

/** The note under a section summed from the newest entries only (`recentUsage`'s `partialSince`). */
export function partialNote(ctx: Ctx, userId: string, since: Date | null): Html {
  if (since === null) return raw("");
  return html`<p class="muted partial">
    Summed over the newest ${amount(RECENT_ENTRIES)} journal entries, since ${when(since)}: the
    <a href="${ctx.base}/usage?account=${enc(userId)}">usage page</a> sums the whole range.
  </p>`;
}

/** The first day of the account page's usage by day: 29 days before today (UTC). */
export function accountUsageFrom(now: Date): Date {
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  return new Date(today - 29 * 86_400_000);
}

/**
 * The account page's usage section: the last 30 days by day and model, from the newest entries
 * (`recentEntries`), and a link to the usage page.
 */
export function accountUsage(ctx: Ctx, userId: string, recent: RecentEntries): Html {
  const from = accountUsageFrom(ctx.now);
  const to = new Date(from.getTime() + 30 * 86_400_000);
  const { report, partialSince } = recentUsage(recent, {
    account: userId,
    from,
    to,
    interval: "day",
    groupBy: ["model"],
    kinds: ["spend"],
  });
  // The default unit's spend: another unit's is on the usage page (docs/units.md).
  const own = report.rows.filter((r) => r.unit === undefined);
  const total = own.reduce((s, r) => s + r.credits, 0);
  return html`<h2>Usage by day, last 30 days (UTC)</h2>
    ${
      own.length === 0
        ? html`<p class="muted">No usage in the last 30 days.</p>`
        : chartBox(
            "account-usage-chart",
            `Credits spent per day by model, last 30 days: ${amount(total)}`,
            chartData(own, "model", "UTC", { from, to }),
          )
    }
    ${partialNote(ctx, userId, partialSince)}
    <p>
      <a href="${ctx.base}/usage?account=${enc(userId)}">Usage of this account</a> (by model, feature or spender; CSV)
    </p>`;
}
