import { MAX_REVENUE_ROWS, type RevenueQuery, type RevenueReport, type RevenueRow } from "./model.js";
import { revenueCsvStream } from "./csv.js";
import { csvHeaders } from "../../util/csv.js";
import type { Ctx, PageResult } from "../../console/context.js";
import { amount, html, minorDigits, money, query, raw } from "../../console/html.js";
import { cards, monthField, refusedCsv, refusedReport } from "../../console/page-parts.js";
import { shortId, table } from "../../console/table.js";
import { chartBox } from "../../console/usage-chart.js";

/** Months the page shows when none are asked for: this one and the 11 before it. */
const DEFAULT_MONTHS = 12;
/** Most months one view spans (the CSV of the range has the same cap). */
const MAX_MONTHS = 120;
/** Currencies drawn as charts (the table has them all). */
const CHARTED = 4;

/** `YYYY-MM` → the UTC instant its month starts; null when it is not one. */
function monthStart(value: string | null): number | null {
  const m = value === null ? null : /^(\d{4})-(0[1-9]|1[0-2])$/.exec(value);
  return m === null ? null : Date.UTC(Number(m[1]), Number(m[2]) - 1, 1);
}

const monthText = (t: number | Date) => new Date(t).toISOString().slice(0, 7);
const addMonths = (t: number, n: number) => {
  const d = new Date(t);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + n, 1);
};

/** The page's query from its form: the account (none: the whole book) and the months, UTC. */
function params(ctx: Ctx) {
  const sp = ctx.url.searchParams;
  const thisMonth = Date.UTC(ctx.now.getUTCFullYear(), ctx.now.getUTCMonth(), 1);
  // A month that is not YYYY-MM is left for the default range, and the page says so.
  const errors: string[] = [];
  const month = (name: "from" | "to", label: string): number | null => {
    const value = (sp.get(name) ?? "").trim();
    const t = monthStart(value === "" ? null : value);
    if (t === null && value !== "") errors.push(`${label}: "${value}" is not a month (YYYY-MM): the default is shown.`);
    return t;
  };
  const last = month("to", "To") ?? thisMonth;
  let first = month("from", "From") ?? addMonths(last, 1 - DEFAULT_MONTHS);
  if (first > last) first = last;
  if (addMonths(first, MAX_MONTHS) <= last) first = addMonths(last, 1 - MAX_MONTHS);
  const account = (sp.get("account") ?? "").trim();
  const q: RevenueQuery = {
    ...(account === "" ? {} : { account }),
    from: new Date(first),
    to: new Date(addMonths(last, 1)),
    interval: "month",
  };
  return { first, last, account, q, errors };
}

/** A close's `through`: its day when at midnight UTC, else the instant. */
const closeText = (d: Date): string =>
  d.getTime() % 86_400_000 === 0 ? d.toISOString().slice(0, 10) : d.toISOString();

/** Each month of the range: its figures for `currency`, summed over the report's rows. */
function byMonth(rows: readonly RevenueRow[], currency: string, months: readonly number[]) {
  const at = new Map(months.map((t, i) => [t, i]));
  const zero = () => months.map(() => 0);
  const sums = { deferredEnd: zero(), recognized: zero(), breakage: zero(), paid: zero(), refunds: zero() };
  for (const r of rows) {
    if (r.currency !== currency) continue;
    const i = at.get(r.start.getTime());
    if (i === undefined) continue;
    for (const k of Object.keys(sums) as (keyof typeof sums)[]) sums[k][i] = (sums[k][i] ?? 0) + r[k];
  }
  return sums;
}

/**
 * The revenue page (docs/console.md, "Revenue"; docs/revenue.md): `credits.getRevenue()` of the
 * whole book or one account by calendar month (UTC) — per currency, the deferred balance at each
 * month's end and the revenue recognized and breakage of each month as charts, the totals of the
 * range, every figure in a table, and a CSV download.
 */
export async function revenuePage(ctx: Ctx): Promise<PageResult> {
  const p = params(ctx);
  const form = html`<form class="box" method="get" action="${ctx.base}/revenue" role="search">
      <label>Account (empty: every account)<input name="account" value="${p.account}" /></label
      >${monthField("From month (UTC)", "from", monthText(p.first))}${monthField(
        "To month (UTC, included)",
        "to",
        monthText(p.last),
      )}<button type="submit">Show</button>
    </form>
    ${p.errors.map((e) => html`<p class="error" role="alert">${e}</p>`)}`;
  let report: RevenueReport;
  try {
    report = await ctx.manager.credits.getRevenue(p.q);
  } catch (error) {
    const ask = "This store cannot list its accounts: enter an account.";
    return refusedReport(error, "Revenue", form, p.account === "", ask);
  }
  const who = p.account === "" ? "every account" : p.account;
  const months: number[] = [];
  for (let t = p.first; t <= p.last; t = addMonths(t, 1)) months.push(t);
  const currencies = [...new Set(report.rows.map((r) => r.currency).filter((c): c is string => c !== null))].sort();
  const unbilled = report.rows.reduce((s, r) => s + r.unbilledCredits, 0);
  const axis = {
    timeZone: "Etc/UTC",
    locale: "en-US",
    unit: "month" as const,
    from: p.first / 1000,
    to: addMonths(p.last, 1) / 1000,
  };
  const x = months.map((t) => t / 1000);
  // The range's last month may be this one: its end is still to come.
  const current = p.last === Date.UTC(ctx.now.getUTCFullYear(), ctx.now.getUTCMonth(), 1);
  const deferredLabel = current ? "Deferred now" : `Deferred at ${monthText(p.last)}'s end`;
  const sections = currencies.map((currency, n) => {
    const m = byMonth(report.rows, currency, months);
    const total = (k: keyof typeof m) => m[k].reduce((a, b) => a + b, 0);
    // Drawn in the currency's smallest unit, as reported; the axis and legend write it as money.
    const digits = minorDigits(currency);
    const inMoney = digits === null ? {} : { money: { currency, digits } };
    return html`<section class="currency" id="revenue-${currency}">
      <h2>${currency}</h2>
      ${cards([
        { label: deferredLabel, value: money(m.deferredEnd.at(-1) ?? 0, currency) },
        { label: "Sold (paid)", value: money(total("paid"), currency) },
        { label: "Recognized", value: money(total("recognized"), currency) },
        { label: "Breakage", value: money(total("breakage"), currency) },
        { label: "Refunds", value: money(total("refunds"), currency) },
      ])}
      <p class="muted">From ${monthText(p.first)} to ${monthText(p.last)} (UTC), ${who}.</p>
      ${
        n < CHARTED
          ? html`<h3>Deferred revenue at each month's end</h3>
              ${chartBox(`deferred-${currency}`, `Deferred revenue in ${currency} at the end of each month, ${who}`, {
                ...axis,
                ...inMoney,
                x,
                // A balance: without a month pointed at, the legend reads the last one's.
                rest: "last",
                series: [{ label: `deferred (${currency})`, values: m.deferredEnd }],
              })}
              <h3>Revenue of each month: recognized and breakage</h3>
              ${chartBox(`recognized-${currency}`, `Revenue in ${currency} recognized and breakage per month, ${who}`, {
                ...axis,
                ...inMoney,
                x,
                series: [
                  { label: `recognized (${currency})`, values: m.recognized },
                  { label: `breakage (${currency})`, values: m.breakage },
                ],
              })}`
          : html`<p class="muted">Charts are drawn for the first ${CHARTED} currencies: see the table.</p>`
      }
    </section>`;
  });
  const csv = `${ctx.base}/revenue.csv${query({ account: p.account, from: monthText(p.first), to: monthText(p.last) })}`;
  const rows = [...report.rows].sort(
    (a, b) => b.start.getTime() - a.start.getTime() || (a.currency ?? "~").localeCompare(b.currency ?? "~"),
  );
  const body = html`<h1>Revenue</h1>
    ${form}
    <p class="muted">
      Deferred revenue (paid credits not used yet, at what they were sold for), revenue recognized as credits are used,
      and breakage (paid credits that expired unused), by month in UTC, from the journal
      (<code>credits.getRevenue()</code>), each figure in the month its money moved. Free credits are never revenue. A
      row with a close's date is catch-up: recorded after that month was closed, with a time inside it.
    </p>
    ${currencies.length === 0 ? html`<p class="muted">No paid credits in this range.</p>` : sections}
    ${
      report.truncated
        ? html`<p class="error" role="alert">
            The range has more than ${report.rows.length} rows: these figures are of its first ones only. Choose fewer
            months, or one account.
          </p>`
        : raw("")
    }
    ${
      unbilled > 0
        ? html`<p>
            Usage on credit (debt) in this range: <strong>${amount(unbilled)}</strong> credits, not billed yet.
          </p>`
        : raw("")
    }
    <h2>By month</h2>
    <p>
      <a href="${csv}" download="revenue.csv">Download CSV</a>
      <span class="muted"
        >(by account; money in the currency's smallest unit, as <code>paidMinor</code>: cents for USD)</span
      >
    </p>
    ${table({
      id: "revenue-table",
      caption: "Revenue by month and currency",
      columns: [
        { label: "Month", short: true },
        { label: "Currency", short: true },
        // Catch-up rows (docs/revenue.md, "Closing a month"): the close whose closed period held their figures.
        { label: "Catch-up of close", short: true },
        { label: "Deferred at start", num: true },
        { label: "Paid", num: true },
        { label: "Recognized", num: true },
        { label: "Breakage", num: true },
        { label: "Refunds", num: true },
        { label: "Deferred at end", num: true },
        { label: "Unbilled credits", num: true },
      ],
      rows: rows.map((r) => {
        const cash = (v: number) => (r.currency === null ? html`<span class="muted">—</span>` : money(v, r.currency));
        return [
          monthText(r.start),
          r.currency ?? html`<span class="muted">(credits)</span>`,
          r.catchUpThrough === null ? html`<span class="muted">—</span>` : closeText(r.catchUpThrough),
          cash(r.deferredStart),
          cash(r.paid),
          cash(r.recognized),
          cash(r.breakage),
          cash(r.refunds),
          cash(r.deferredEnd),
          amount(r.unbilledCredits),
        ];
      }),
      empty: "No paid credits and no usage on credit in this range.",
    })}
    ${
      p.account === ""
        ? raw("")
        : html`<p>
            <a href="${ctx.base}/accounts/${encodeURIComponent(p.account)}">Account ${shortId(p.account, "user")}</a>
          </p>`
    }`;
  return { title: "Revenue", body };
}

/** The revenue page's range as CSV, by month and account (RFC 4180, formulas made inert: docs/revenue.md). */
export async function revenueCsvPage(ctx: Ctx): Promise<PageResult> {
  const p = params(ctx);
  const groupBy = p.account === "" ? (["account"] as const) : ([] as const);
  try {
    const report = await ctx.manager.credits.getRevenue({ ...p.q, groupBy: [...groupBy], limit: MAX_REVENUE_ROWS });
    return new Response(revenueCsvStream(report, groupBy), {
      headers: { ...csvHeaders("revenue.csv"), ...(report.truncated ? { "x-revenue-truncated": "true" } : {}) },
    });
  } catch (error) {
    return refusedCsv(error);
  }
}
