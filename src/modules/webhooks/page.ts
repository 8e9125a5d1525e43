import type { Notification } from "../../core/models/index.js";
import type { WebhookEndpointRecord } from "./store.js";
import { errorPage, notice, type Ctx, type PageResult } from "../../console/context.js";
import { amount, enc, html, query, raw, when, type Html } from "../../console/html.js";
import { accountLink, actionForm, facts } from "../../console/page-parts.js";
import { shortId, table } from "../../console/table.js";

/**
 * The console's webhooks pages (docs/console.md, "Webhooks"), shown when the handler is given the
 * endpoint store (`webhooks` option; `serve` with `CREDIT_WEBHOOKS=on` gives its own): the
 * endpoints without their secrets, and an endpoint's last deliveries — the failed and pending ones
 * across accounts from the outbox, every one of an account — with a retry of the failed ones
 * through `retryFailedWebhooks`, as `credit-management webhooks retry` and the admin route do.
 */

/** Outbox rows of the newest failed (and the pending) read when listing an endpoint's deliveries across accounts. */
export const SCAN_ROWS = 1000;
/** Deliveries shown per table. */
const SHOWN = 50;

/** A delivery row's payload, as `webhookQueue` writes it. */
interface DeliveryPayload {
  webhook?: { endpointId?: string; userId?: string };
  event?: { id?: string; type?: string };
}

const payloadOf = (n: Notification) => n.payload as unknown as DeliveryPayload;

/**
 * The receiver's answer to the last attempt, as the delivery row records it: a 2xx for a sent row
 * (the queue settles a row `sent` on a 2xx only; the exact code is not stored), the status in the
 * last error ("answered 503: …") otherwise, or "—" when there was no answer (refused, time-out).
 */
export function receiverStatus(n: Notification): string {
  if (n.status === "sent") return "2xx";
  const m = n.lastError === null ? null : /answered (\d{3})/.exec(n.lastError);
  return m === null ? "—" : (m[1] as string);
}

function endpointState(e: WebhookEndpointRecord): string {
  if (e.enabled) return "enabled";
  return e.disabledReason === null ? "disabled" : `disabled (${e.disabledReason})`;
}

function filterText(e: WebhookEndpointRecord): string {
  return e.types === null || e.types.length === 0 ? "all events" : e.types.join(", ");
}

export async function webhooksPage(ctx: Ctx): Promise<PageResult> {
  const store = ctx.webhooks;
  if (store === undefined) return errorPage(404, "Not found");
  const endpoints = await store.list();
  const body = html`<h1>Webhooks</h1>
    ${notice(ctx)}
    <p class="muted">
      The endpoints events are POSTed to, signed as Standard Webhooks. Their secrets are never shown: add, change,
      rotate and test them with <code>credit-management webhooks</code> or <code>/admin/webhooks</code>.
    </p>
    ${table({
      caption: "Webhook endpoints",
      columns: [
        { label: "Id", short: true },
        "URL",
        { label: "State", short: true },
        "Events",
        "Description",
        { label: "Created", short: true },
      ],
      rows: endpoints.map((e) => [
        html`<a href="${ctx.base}/webhooks/${enc(e.id)}">${shortId(e.id)}</a>`,
        html`<code>${e.url}</code>${e.development ? html` <span class="muted">(development)</span>` : ""}`,
        endpointState(e),
        filterText(e),
        e.description ?? "",
        when(new Date(e.createdAt)),
      ]),
      none: "No webhook endpoint.",
    })}`;
  return { title: "Webhooks", body };
}

function deliveryTable(ctx: Ctx, endpointId: string, rows: readonly Notification[], none: string): Html {
  return table({
    columns: [
      { label: "Created", short: true },
      "Account",
      "Event",
      { label: "Status", short: true },
      { label: "Attempts", num: true },
      { label: "Receiver's status", short: true },
      { label: "Next attempt", short: true },
      "Last error",
      { label: "Action", short: true, quiet: true },
    ],
    rows: rows.map((n) => {
      const p = payloadOf(n);
      const user = p.webhook?.userId ?? "";
      const eventId = p.event?.id ?? "";
      return [
        when(n.createdAt),
        accountLink(ctx, user === "" ? null : user),
        html`${n.type}<br /><span class="mono">${shortId(eventId)}</span>`,
        n.status,
        n.attempts,
        receiverStatus(n),
        n.status === "pending" ? when(n.nextAttemptAt) : "—",
        n.lastError ?? "",
        n.status === "failed" && user !== "" && eventId !== ""
          ? actionForm(ctx, "webhook-retry", "Retry", { endpoint: endpointId, user, event: eventId })
          : "",
      ];
    }),
    none,
  });
}

/** The newest `SHOWN` rows of `status` across accounts belonging to the endpoint, among the first `SCAN_ROWS` outbox rows. */
async function acrossAccounts(ctx: Ctx, endpointId: string, status: "failed" | "pending"): Promise<Notification[]> {
  const { db } = ctx.manager;
  if (db.listOutbox === undefined || db.capabilities.parts?.outbox === false) return [];
  const prefix = `webhook:${endpointId}:`;
  const found: Notification[] = [];
  let after: { at: Date; id: string } | undefined;
  for (let read = 0; read < SCAN_ROWS && found.length < SHOWN;) {
    const page = await db.listOutbox({ status, limit: 200, ...(after === undefined ? {} : { after }) });
    read += page.length;
    for (const n of page) if (n.userId.startsWith(prefix) && found.length < SHOWN) found.push(n);
    const last = page[page.length - 1];
    const at = last === undefined ? null : status === "pending" ? last.nextAttemptAt : last.settledAt;
    if (page.length < 200 || last === undefined || at === null) break;
    after = { at, id: last.id };
  }
  return found;
}

export async function webhookPage(ctx: Ctx, id: string): Promise<PageResult> {
  const store = ctx.webhooks;
  const e = store === undefined ? null : await store.get(id);
  if (e === null) return errorPage(404, "Not found");
  const { deliveryUserId } = await import("./queue.js");
  const user = (ctx.url.searchParams.get("user") ?? "").trim();
  const canList = ctx.manager.db.listOutbox !== undefined && ctx.manager.db.capabilities.parts?.outbox !== false;
  const [failed, pending, ofUser] = await Promise.all([
    acrossAccounts(ctx, e.id, "failed"),
    acrossAccounts(ctx, e.id, "pending"),
    user === ""
      ? Promise.resolve([] as Notification[])
      : ctx.manager.db.listNotifications(deliveryUserId(e.id, user), { limit: 1000 }),
  ]);
  const body = html`<h1>Webhook endpoint <span class="mono">${e.id}</span></h1>
    ${notice(ctx)}
    ${facts([
      ["URL", html`<code>${e.url}</code>${e.development ? " (development: http allowed)" : ""}`],
      ["State", endpointState(e)],
      ["Events", filterText(e)],
      ["Description", e.description ?? "—"],
      ["Secrets", `${e.secrets.length} (not shown)`],
    ])}
    ${
      e.enabled
        ? raw("")
        : html`<p class="error" role="alert">
            This endpoint is disabled: a retried delivery fails at once until it is enabled again (<code
              >credit-management webhooks enable ${e.id}</code
            >).
          </p>`
    }
    <form class="box" method="get" action="${ctx.base}/webhooks/${enc(e.id)}" role="search">
      <label>Account (user id)<input name="user" value="${user}" autocomplete="off" /></label
      ><button type="submit">Show its deliveries</button>
    </form>
    ${
      user === ""
        ? raw("")
        : html`<h2>Deliveries of this account (the newest last)</h2>
            ${deliveryTable(ctx, e.id, ofUser.slice(-SHOWN), "No delivery of this account to this endpoint.")}`
    }
    ${
      canList
        ? html`<h2>Failed deliveries, newest first</h2>
            ${deliveryTable(ctx, e.id, failed, "No failed delivery among the newest failed outbox rows.")}
            <h2>Pending deliveries, by next attempt</h2>
            ${deliveryTable(ctx, e.id, pending, "No pending delivery.")}
            <p class="muted">
              Across accounts: the newest ${SHOWN} of the first ${amount(SCAN_ROWS)} failed or pending outbox rows.
              Delivered ones are listed per account.
            </p>`
        : html`<p class="muted">This store cannot list the outbox across accounts: enter an account.</p>`
    }
    <p><a href="${ctx.base}/webhooks${query({})}">All endpoints</a></p>`;
  return { title: `Webhook ${e.id}`, body };
}
