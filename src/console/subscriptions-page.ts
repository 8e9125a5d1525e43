import { type Plan, type Subscription } from "../core/models/index.js";
import { type Ctx, type PageResult } from "./context.js";
import { amount, html, money, query, raw, when, type Html } from "./html.js";
import { shortId, table } from "./table.js";
import { PAGE, accountLink, dateParam, pager, scopeText } from "./page-parts.js";

// The console's subscriptions page (docs/console.md): plans and scheduled subscriptions.

/** A plan's allowances in words (docs/subscriptions.md, "Allowances"): credits per period, scope, rollover. */
function allowancesText(p: Plan): Html {
  const list = p.allowances ?? [];
  if (list.length === 0) return html`<span class="muted">none</span>`;
  return html`${list.map((a, i) => {
    const roll =
      a.rollover === undefined ? "" : typeof a.rollover === "string" ? a.rollover : `cap ${amount(a.rollover.cap)}`;
    return html`${i > 0 ? raw("<br>") : ""}${amount(a.credits)} for
    ${scopeText(a)}${roll === "" ? "" : html` (rollover ${roll})`}`;
  })}`;
}

export function subscriptionTable(ctx: Ctx, subs: readonly Subscription[]): Html {
  return table({
    columns: [
      { label: "Subscription", short: true },
      "User",
      "Plan",
      { label: "Status", short: true },
      { label: "Period", short: true },
      { label: "Next run", short: true },
    ],
    rows: subs.map((s) => [
      { cell: shortId(s.id), cls: "mono" },
      accountLink(ctx, s.userId),
      s.planId,
      `${s.status}${s.cancelAtPeriodEnd ? " (cancels at period end)" : ""}`,
      html`${when(s.currentPeriodStart)} – ${when(s.currentPeriodEnd)}`,
      when(s.nextRunAt),
    ]),
    none: "No subscription.",
  });
}

/**
 * Far enough ahead that every scheduled subscription is due by it (the scan is by nextRunAt), and
 * still a four-digit year: SQLite compares times as ISO text, where "+275760-…" sorts first.
 */
const END_OF_TIME = new Date("9999-12-31T23:59:59.999Z");

export async function subscriptionsPage(ctx: Ctx): Promise<PageResult> {
  const { db } = ctx.manager;
  const user = ctx.url.searchParams.get("user") ?? "";
  const at = dateParam(ctx.url.searchParams.get("at"));
  const id = ctx.url.searchParams.get("id");
  const plans = await db.listPlans({ includeInactive: true });
  let subs: Subscription[];
  let next: string | null = null;
  if (user !== "") subs = await db.listSubscriptions(user);
  else {
    const page = await db.findDueSubscriptions(
      END_OF_TIME,
      PAGE + 1,
      at !== undefined && id !== null ? { nextRunAt: at, id } : undefined,
    );
    subs = page.slice(0, PAGE);
    const last = subs[subs.length - 1];
    if (page.length > PAGE && last?.nextRunAt) next = query({ at: last.nextRunAt.toISOString(), id: last.id });
  }
  const body = html`<h1>Subscriptions and plans</h1>
    <h2>Plans</h2>
    ${table({
      columns: [
        "Plan",
        "Name",
        { label: "Credits / period", num: true },
        { label: "Price", num: true },
        { label: "Period", short: true },
        { label: "Rollover", short: true },
        "Allowances",
        { label: "Active", short: true },
      ],
      rows: plans.map((p) => [
        { cell: p.id, cls: "mono" },
        p.name,
        amount(p.creditsPerPeriod),
        money(p.price, p.currency),
        p.billingPeriod,
        p.rollover === "cap" ? `cap ${amount(p.rolloverCap ?? 0)}` : p.rollover,
        allowancesText(p),
        p.isActive ? "yes" : "no",
      ]),
      empty: "No plan.",
    })}
    <h2>${user === "" ? "Scheduled subscriptions, by next run" : html`Subscriptions of ${user}`}</h2>
    <form class="box" method="get" action="${ctx.base}/subscriptions" role="search">
      <label>User id<input name="user" value="${user}" /></label><button type="submit">Show</button>
    </form>
    ${subscriptionTable(ctx, subs)}${user === "" ? pager(ctx, "/subscriptions", {}, next) : raw("")}`;
  return { title: "Subscriptions", body };
}
