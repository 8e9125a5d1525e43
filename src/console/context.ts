import type { CreditManager } from "../manager.js";
import type { WebhookEndpointStore } from "../modules/webhooks/store.js";
import { html, raw, type Html } from "./html.js";
import { signToken } from "./security.js";

/** What a console user may do: `viewer` reads, `admin` also acts (docs/console.md). @public */
export type ConsoleRole = "viewer" | "admin";

/** What `authorize` answers for a request: who it is and what they may do, or "deny". @public */
export type ConsoleAccess = { role: ConsoleRole; actor: string } | "deny";

/** What a page or action is handed. */
export interface Ctx {
  manager: CreditManager;
  request: Request;
  url: URL;
  /** The base path, without a trailing slash ("" when mounted at the root). */
  base: string;
  role: ConsoleRole;
  actor: string;
  now: Date;
  /** The CSRF token of this browser (its cookie), and the signature forms carry. */
  csrf: string;
  secret: Uint8Array;
  title: string;
  /** The webhook endpoints, when the handler was given them (the Webhooks pages). */
  webhooks?: WebhookEndpointStore;
}

/** A page's answer: HTML inside the layout, or a ready Response. */
export type PageResult = { title: string; body: Html; status?: number } | Response;

export function csrfField(ctx: Ctx): Html {
  return html`<input type="hidden" name="_csrf" value="${signToken(ctx.secret, ctx.csrf, ctx.actor)}" />`;
}

/** A form's hidden inputs: the CSRF field, then `fields` in order (`_key` among them). */
export function hiddenFields(ctx: Ctx, fields: Record<string, string>): Html {
  return html`${csrfField(ctx)}${Object.entries(fields).map(
    ([name, value]) => html`<input type="hidden" name="${name}" value="${value}" />`,
  )}`;
}

/** A refusal or a missing page: its title as the heading, and `text`, when given, as the error. */
export function errorPage(status: number, title: string, text?: string): { status: number; title: string; body: Html } {
  return {
    status,
    title,
    body: html`<h1>${title}</h1>
      ${text === undefined ? "" : html`<p class="error" role="alert">${text}</p>`}`,
  };
}

const NAV: [string, string][] = [
  ["/", "Accounts"],
  ["/subscriptions", "Subscriptions"],
  ["/payments", "Payments"],
  ["/promos", "Promos"],
  ["/outbox", "Outbox"],
  ["/jobs", "Jobs"],
  ["/usage", "Usage"],
  ["/revenue", "Revenue"],
];

export function layout(ctx: Ctx, title: string, body: Html): string {
  const b = ctx.base;
  return `<!doctype html>${
    html`<html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <link rel="icon" href="data:," />
        <title>${title} · ${ctx.title}</title>
        <link rel="stylesheet" href="${b}/assets/uplot.css" />
        <link rel="stylesheet" href="${b}/assets/console.css" />
      </head>
      <body>
        <a class="skip" href="#main">Skip to content</a>
        <header>
          <a class="brand" href="${b}/">${ctx.title}</a>
          <nav aria-label="Sections">
            ${[...NAV, ...(ctx.webhooks === undefined ? [] : [["/webhooks", "Webhooks"] as const])].map(
              ([path, label]) => html`<a href="${b}${path}">${label}</a>`,
            )}
          </nav>
          <span class="who">${ctx.actor} (${ctx.role})</span>
        </header>
        <main id="main">${body}</main>
        <script src="${b}/assets/uplot.js"></script>
        <script src="${b}/assets/console.js"></script>
        <script src="${b}/assets/usage.js"></script>
      </body>
    </html>`.text
  }`;
}

/** The fixed notices an action's redirect may name (`?notice=`): never text from the query. */
export const NOTICES: Record<string, string> = {
  granted: "Credits granted.",
  voided: "Grant voided.",
  released: "Hold released.",
  refunded: "Refund recorded.",
  reversed: "Charge given back.",
  retried: "Notification queued again.",
  "webhook-retried": "Delivery queued again: the worker sends it with the same webhook-id.",
  audited: "Audit run: see its verdict below.",
  duplicate: "Already done (the same form was sent before): nothing changed.",
};

export function notice(ctx: Ctx): Html {
  const n = ctx.url.searchParams.get("notice");
  const text = n === null ? undefined : NOTICES[n];
  return text === undefined ? raw("") : html`<p class="notice" role="status">${text}</p>`;
}
