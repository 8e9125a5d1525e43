import { type LedgerEntry, type Notification } from "../core/models/index.js";
import { notice, type Ctx, type PageResult } from "./context.js";
import { amount, html, query, raw, relative, when, type Html } from "./html.js";
import { shortId, table } from "./table.js";
import { PAGE, accountLink, actionForm, cards, dateParam, ledgerTable, pager } from "./page-parts.js";

// The console's outbox and jobs pages (docs/console.md): notifications and worker rounds.

export function notificationTable(ctx: Ctx, rows: readonly Notification[]): Html {
  return table({
    columns: [
      { label: "Id", short: true },
      "User",
      { label: "Type", short: true },
      { label: "Status", short: true },
      { label: "Attempts", num: true },
      { label: "Next attempt", short: true },
      "Last error",
      { label: "Action", short: true, quiet: true },
    ],
    rows: rows.map((n) => [
      { cell: shortId(n.id), cls: "mono" },
      accountLink(ctx, n.userId),
      n.type,
      n.status,
      n.attempts,
      n.status === "pending" ? when(n.nextAttemptAt) : "—",
      n.lastError ?? "",
      n.status === "failed" ? actionForm(ctx, "retry", "Retry", { user: n.userId, notification: n.id }) : "",
    ]),
    none: "No notification.",
  });
}

export async function outboxPage(ctx: Ctx): Promise<PageResult> {
  const { db } = ctx.manager;
  const user = ctx.url.searchParams.get("user") ?? "";
  const statusParam = ctx.url.searchParams.get("status");
  const status =
    statusParam === "pending" || statusParam === "failed" || statusParam === "sent" ? statusParam : undefined;
  const stats = db.stats === undefined ? null : await db.stats();
  const rows =
    user === "" ? [] : await db.listNotifications(user, { limit: 100, ...(status === undefined ? {} : { status }) });
  // Across users, a page at a time, when the store can (DbManager.listOutbox).
  let global: Html = html`<p class="muted">Enter a user id to list its notifications (oldest first).</p>`;
  if (user === "" && db.listOutbox !== undefined && db.capabilities.parts?.outbox !== false) {
    const view = status === "pending" ? "pending" : "failed";
    const at = dateParam(ctx.url.searchParams.get("at"));
    const id = ctx.url.searchParams.get("id");
    const page = await db.listOutbox({
      status: view,
      limit: PAGE + 1,
      ...(at !== undefined && id !== null ? { after: { at, id } } : {}),
    });
    const shown = page.slice(0, PAGE);
    const last = shown[shown.length - 1];
    const lastAt = last === undefined ? null : view === "pending" ? last.nextAttemptAt : last.settledAt;
    const next =
      page.length > PAGE && lastAt !== null ? query({ status: view, at: lastAt.toISOString(), id: last?.id }) : null;
    global = html`<nav class="pager" aria-label="Outbox views">
        <a href="${ctx.base}/outbox?status=failed" ${view === "failed" ? raw(' aria-current="page"') : ""}
          >Failed, newest first</a
        ><a href="${ctx.base}/outbox?status=pending" ${view === "pending" ? raw(' aria-current="page"') : ""}
          >Pending, by next attempt</a
        >
      </nav>
      <h2>${view === "failed" ? "Failed notifications" : "Pending notifications"}</h2>
      ${notificationTable(ctx, shown)}${pager(ctx, "/outbox", { status: view }, next)}`;
  }
  const body = html`<h1>Outbox</h1>
    ${notice(ctx)}
    ${
      stats === null
        ? html`<p class="muted">This store does not count the outbox.</p>`
        : cards([
            { label: "Pending", value: amount(stats.outboxPending) },
            { label: "Failed", value: amount(stats.outboxFailed) },
            {
              label: "Oldest pending",
              value: stats.oldestPendingAt === null ? "—" : relative(stats.oldestPendingAt, ctx.now),
            },
          ])
    }
    <form class="box" method="get" action="${ctx.base}/outbox" role="search">
      <label>User id<input name="user" value="${user}" /></label
      ><label
        >Status<select name="status">
          <option value="">any</option>
          ${["pending", "failed", "sent"].map(
            (s) => html`<option value="${s}" ${s === status ? raw(" selected") : ""}>${s}</option>`,
          )}
        </select></label
      ><button type="submit">Show</button>
    </form>
    ${user === "" ? global : notificationTable(ctx, rows)}`;
  return { title: "Outbox", body };
}

export async function jobsPage(ctx: Ctx): Promise<PageResult> {
  const rows = (await ctx.manager.db.listLedgerEntries({ eventType: "system", limit: 200 })).filter((e) =>
    e.message.startsWith("job "),
  );
  const latest = new Map<string, LedgerEntry>();
  for (const r of rows) if (!latest.has(r.message)) latest.set(r.message, r);
  const body = html`<h1>Jobs</h1>
    <p class="muted">
      The rounds the workers recorded (credit-management worker, <code>expiration.runAll</code> with a ledger).
    </p>
    <h2>Last round of each job</h2>
    ${ledgerTable(ctx, [...latest.values()])}
    <h2>Recent rounds</h2>
    ${ledgerTable(ctx, rows.slice(0, 50))}`;
  return { title: "Jobs", body };
}
