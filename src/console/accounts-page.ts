import { notice, type Ctx, type PageResult } from "./context.js";
import { amount, html, query, raw, relative, when } from "./html.js";
import { table } from "./table.js";
import { PAGE, accountLink, ledgerTable, pager } from "./page-parts.js";

// The console's first page (docs/console.md): accounts, searched by user id, and the recent
// system and error events of the ledger.

export async function accountsPage(ctx: Ctx): Promise<PageResult> {
  const db = ctx.manager.db;
  const q = (ctx.url.searchParams.get("q") ?? "").trim();
  const after = ctx.url.searchParams.get("after");
  const ids: string[] = [];
  if (q !== "" && after === null && (await db.getAccount(q)) !== null) ids.push(q);
  let next: string | null = null;
  if (db.listAccountIds !== undefined) {
    const page = await db.listAccountIds(after ?? (q === "" ? null : q), PAGE + 1);
    for (const id of page) {
      if (q !== "" && !id.startsWith(q)) break;
      if (ids.length < PAGE && !ids.includes(id)) ids.push(id);
    }
    const last = ids[ids.length - 1];
    if (page.length > PAGE && last !== undefined && (q === "" || (page[PAGE] ?? "").startsWith(q)))
      next = query({ q, after: last });
  }
  const accounts = await Promise.all(ids.map((id) => db.getAccount(id)));
  const recent = await db.listLedgerEntries({ limit: 15 });
  const body = html`<h1>Accounts</h1>
    ${notice(ctx)}
    <form class="box" method="get" action="${ctx.base}/" role="search">
      <label>User id (or its beginning)<input name="q" value="${q}" autocomplete="off" /></label
      ><button type="submit">Search</button>
    </form>
    ${
      db.listAccountIds === undefined
        ? html`<p class="muted">This store cannot list accounts: search by exact user id.</p>`
        : raw("")
    }
    ${table({
      caption: "Accounts",
      columns: [
        "User",
        { label: "Balance", num: true },
        { label: "Reserved", num: true },
        { label: "Debt", num: true },
        { label: "Last activity", short: true },
      ],
      rows: accounts.map((a, i) =>
        a === null
          ? [accountLink(ctx, ids[i] as string), { cell: "no account row", colspan: 4, cls: "muted" }]
          : [
              accountLink(ctx, a.userId),
              amount(a.balance),
              amount(a.reserved),
              amount(a.debt),
              html`${when(a.updatedAt)} <span class="muted">(${relative(a.updatedAt, ctx.now)})</span>`,
            ],
      ),
      empty: "No account found.",
    })}
    ${pager(ctx, "/", { q: q === "" ? undefined : q }, next)}
    <h2 id="events">Recent system events and errors</h2>
    <p class="muted">
      What the service logged besides the accounts' journals: job rounds (also on the
      <a href="${ctx.base}/jobs">Jobs</a> page), console actions, errors. What happened to an account — its grants,
      spends, holds — is in its journal: open the account.
    </p>
    ${ledgerTable(ctx, recent, "No system event or error logged yet.")}`;
  return { title: "Accounts", body };
}
