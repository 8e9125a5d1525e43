import { type Payment } from "../../models-entry.js";
import { notice, type Ctx, type PageResult } from "../../console/context.js";
import { amount, html, money, query, raw, when, type Html } from "../../console/html.js";
import { shortId, table } from "../../console/table.js";
import { PAGE, accountLink, actionForm, dateParam, pager } from "../../console/page-parts.js";
import { billingStore } from "./store.js";

// The console's payments and promo codes pages (docs/console.md).

export function paymentTable(ctx: Ctx, payments: readonly Payment[]): Html {
  return table({
    columns: [
      { label: "Payment", short: true },
      "User",
      { label: "Provider", short: true },
      { label: "Amount", num: true },
      { label: "Credits", num: true },
      { label: "Status", short: true },
      { label: "Refunded", num: true },
      { label: "Created", short: true },
      { label: "Action", short: true, quiet: true },
    ],
    rows: payments.map((p) => ({
      id: `pay-${p.id}`,
      cells: [
        { cell: shortId(p.id), cls: "mono" },
        accountLink(ctx, p.userId),
        p.provider,
        money(p.amount, p.currency),
        amount(p.credits),
        p.status.replace("_", " "),
        p.refundedAmount === 0 ? html`<span class="muted">—</span>` : money(p.refundedAmount, p.currency),
        when(p.createdAt),
        p.status === "paid" || p.status === "partially_refunded"
          ? actionForm(ctx, "refund", "Refund", { user: p.userId, payment: p.id })
          : "",
      ],
    })),
    none: "No payment.",
  });
}

export async function paymentsPage(ctx: Ctx): Promise<PageResult> {
  const user = ctx.url.searchParams.get("user") ?? "";
  const at = dateParam(ctx.url.searchParams.get("at"));
  const id = ctx.url.searchParams.get("id");
  let listing = html`<p class="muted">Payments are listed per account: enter a user id.</p>`;
  let next: string | null = null;
  if (user !== "") {
    const page = await billingStore(ctx.manager.db).listPayments(user, {
      limit: PAGE + 1,
      ...(at !== undefined && id !== null ? { before: { createdAt: at, id } } : {}),
    });
    const rows = page.slice(0, PAGE);
    const last = rows[rows.length - 1];
    if (page.length > PAGE && last !== undefined) next = query({ user, at: last.createdAt.toISOString(), id: last.id });
    listing = html`${paymentTable(ctx, rows)}${pager(ctx, "/payments", { user }, next)}`;
  }
  const body = html`<h1>Payments and refunds</h1>
    ${notice(ctx)}
    <form class="box" method="get" action="${ctx.base}/payments" role="search">
      <label>User id<input name="user" value="${user}" /></label><button type="submit">Show</button>
    </form>
    ${listing}`;
  return { title: "Payments", body };
}

export async function promosPage(ctx: Ctx): Promise<PageResult> {
  const db = billingStore(ctx.manager.db);
  const user = ctx.url.searchParams.get("user") ?? "";
  const at = dateParam(ctx.url.searchParams.get("at"));
  const code = ctx.url.searchParams.get("code");
  const page = await db.listPromos({
    limit: PAGE + 1,
    ...(at !== undefined && code !== null ? { before: { createdAt: at, code } } : {}),
  });
  const promos = page.slice(0, PAGE);
  const last = promos[promos.length - 1];
  const next =
    page.length > PAGE && last !== undefined ? query({ at: last.createdAt.toISOString(), code: last.code }) : null;
  const claims = user === "" ? [] : await db.listPromoClaims(user);
  const body = html`<h1>Promo codes</h1>
    ${table({
      columns: [
        "Code",
        { label: "Credits", num: true },
        { label: "Claims", num: true },
        { label: "Valid", short: true },
        { label: "Active", short: true },
        "Description",
      ],
      rows: promos.map((p) => [
        { cell: p.code, cls: "mono" },
        amount(p.credits),
        html`<span class="pair">${amount(p.uses)}${p.maxUses === null ? "" : ` / ${amount(p.maxUses)}`}</span>`,
        html`${when(p.validFrom)} – ${when(p.validUntil)}`,
        p.isActive ? "yes" : "no",
        p.description ?? "",
      ]),
      empty: "No promo code.",
    })}
    ${pager(ctx, "/promos", {}, next)}
    <h2>Claims of an account</h2>
    <form class="box" method="get" action="${ctx.base}/promos" role="search">
      <label>User id<input name="user" value="${user}" /></label><button type="submit">Show</button>
    </form>
    ${
      user === ""
        ? raw("")
        : claims.length === 0
          ? html`<p class="muted">No claim by ${user}.</p>`
          : table({
              columns: [
                "Code",
                "User",
                { label: "Credits", num: true },
                { label: "Claim #", num: true },
                { label: "When", short: true },
              ],
              rows: claims.map((c) => [
                { cell: c.code, cls: "mono" },
                accountLink(ctx, c.userId),
                amount(c.credits),
                c.claimNumber,
                when(c.createdAt),
              ]),
            })
    }`;
  return { title: "Promos", body };
}
