import { randomBytes } from "node:crypto";
import { ConfigurationError } from "../core/errors.js";
import type { CreditManager } from "../manager.js";
import { actionError, isAction, runAction } from "./actions.js";
import { ASSETS, assetResponse } from "./assets.js";
import { errorPage, layout, type ConsoleAccess, type ConsoleRole, type Ctx, type PageResult } from "./context.js";
import { accountPage, holdPage } from "./account-page.js";
import { accountsPage } from "./accounts-page.js";
import { jobsPage, outboxPage } from "./outbox-page.js";
import { paymentsPage, promosPage } from "../modules/billing/page-payments.js";
import { subscriptionsPage } from "./subscriptions-page.js";
import { webhookPage, webhooksPage } from "../modules/webhooks/page.js";
import type { WebhookEndpointStore } from "../modules/webhooks/store.js";
import { revenueCsvPage, revenuePage } from "../modules/revenue/page.js";
import { usageCsvPage, usagePage } from "./usage-page.js";
import { checkSigned, crossSite, CSRF_COOKIE, newToken, readCookie, SECURITY_HEADERS } from "./security.js";

export type { ConsoleAccess, ConsoleRole } from "./context.js";

/**
 * Options of `createConsoleHandler()`: the manager, who may see it, and the webhook endpoints
 * (docs/console.md). @public
 */
export interface ConsoleHandlerOptions {
  /**
   * Required: who may see the console, per request — `{ role: "viewer" | "admin", actor }` or
   * `"deny"` (403). Read your session or SSO here. Viewers see every page; only admins get the
   * actions, and `actor` is written into the journal entry of each action they take.
   */
  authorize: (request: Request) => ConsoleAccess | Promise<ConsoleAccess>;
  /** Where it is mounted. Default `/console`. */
  basePath?: string;
  /**
   * Key that signs the forms' CSRF tokens (at least 32 bytes). Default: random per process — give
   * every process behind one load balancer the same key, or a form rendered by one is refused by another.
   */
  csrfSecret?: string | Uint8Array;
  /** The name in the header and the titles. Default "Credits console". */
  title?: string;
  /**
   * The webhook endpoints (`credit-management/webhooks`: the store `credit-management webhooks`
   * and `serve` keep them in, e.g. `sqliteEndpointStore`). Given, the console gets a Webhooks page:
   * the endpoints without their secrets, their last deliveries, and a retry of a failed one
   * (docs/console.md, "Webhooks"). The handler reads it, never closes it.
   */
  webhooks?: WebhookEndpointStore;
  /** Called with unexpected errors (answered with a bare 500 page): log them. */
  onError?: (error: unknown, request: Request) => void;
}

/** A Fetch handler: `(request) => Promise<Response>`; `toNodeHandler` mounts it on node:http, Express, Fastify. @public */
export interface ConsoleHandler {
  /** Answers a request of the console. */
  (request: Request): Promise<Response>;
  /** The base path it answers under (through `toNodeHandler` with `next`, other paths go on). */
  readonly basePaths: readonly string[];
}

type Route = (ctx: Ctx, ...params: string[]) => Promise<PageResult>;
const PAGES: [RegExp, Route][] = [
  [/^\/?$/, accountsPage],
  [/^\/accounts\/([^/]+)$/, accountPage],
  [/^\/accounts\/([^/]+)\/holds\/([^/]+)$/, holdPage],
  [/^\/subscriptions$/, subscriptionsPage],
  [/^\/payments$/, paymentsPage],
  [/^\/promos$/, promosPage],
  [/^\/outbox$/, outboxPage],
  [/^\/jobs$/, jobsPage],
  [/^\/usage$/, usagePage],
  [/^\/webhooks$/, webhooksPage],
  [/^\/webhooks\/([^/]+)$/, webhookPage],
  [/^\/usage\.csv$/, usageCsvPage],
  [/^\/revenue$/, revenuePage],
  [/^\/revenue\.csv$/, revenueCsvPage],
];

function page(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/html; charset=utf-8", ...SECURITY_HEADERS, ...headers },
  });
}

function plain(status: number, text: string): Response {
  return new Response(text, { status, headers: { "content-type": "text/plain; charset=utf-8", ...SECURITY_HEADERS } });
}

/** The largest action form accepted, in bytes. */
const MAX_FORM = 16_384;

/**
 * The operator's console as a Fetch handler (docs/console.md): server-rendered pages, no script
 * but its own two files, every action behind a confirmation, a CSRF token and the admin role.
 * @public
 */
export function createConsoleHandler(manager: CreditManager, options: ConsoleHandlerOptions): ConsoleHandler {
  if (typeof options?.authorize !== "function")
    throw new ConfigurationError(
      "[credit-management] [console] `authorize` is required: the console gives no access by default.",
    );
  const base = (options.basePath ?? "/console").replace(/\/+$/, "");
  if (base !== "" && !/^(\/[A-Za-z0-9._~-]+)+$/.test(base))
    throw new ConfigurationError('[credit-management] [console] `basePath` must be a path such as "/console".');
  const secret =
    options.csrfSecret === undefined
      ? randomBytes(32)
      : typeof options.csrfSecret === "string"
        ? Buffer.from(options.csrfSecret, "utf8")
        : options.csrfSecret;
  if (secret.length < 32)
    throw new ConfigurationError("[credit-management] [console] `csrfSecret` must be at least 32 bytes.");
  const title = options.title ?? "Credits console";

  const handler = async (request: Request): Promise<Response> => {
    let url: URL;
    try {
      url = new URL(request.url);
    } catch {
      return plain(400, "Bad request.");
    }
    if (url.pathname !== base && !url.pathname.startsWith(`${base}/`)) return plain(404, "Not found.");
    const rest = url.pathname.slice(base.length);
    const method = request.method.toUpperCase();
    try {
      if (rest.startsWith("/assets/") && (method === "GET" || method === "HEAD")) {
        const asset = ASSETS.get(rest.slice("/assets/".length));
        if (asset === undefined) return plain(404, "Not found.");
        return assetResponse(asset, method === "HEAD");
      }
      const access = await options.authorize(request);
      if (access === "deny" || access === null || typeof access !== "object")
        return page(403, "<!doctype html><title>Forbidden</title><h1>Forbidden</h1>");
      const role: ConsoleRole = access.role === "admin" ? "admin" : "viewer";
      const actor = String(access.actor ?? "unknown");
      let csrf = readCookie(request, CSRF_COOKIE);
      const headers: Record<string, string> = {};
      if (csrf === undefined || !/^[A-Za-z0-9_-]{32}$/.test(csrf)) {
        csrf = newToken();
        const secure = url.protocol === "https:" ? "; Secure" : "";
        headers["set-cookie"] =
          `${CSRF_COOKIE}=${csrf}; Path=${base === "" ? "/" : base}; HttpOnly; SameSite=Strict${secure}`;
      }
      const ctx: Ctx = {
        manager,
        request,
        url,
        base,
        role,
        actor,
        now: new Date(),
        csrf,
        secret,
        title,
        ...(options.webhooks === undefined ? {} : { webhooks: options.webhooks }),
      };
      const refused = (e: ReturnType<typeof errorPage>) => page(e.status, layout(ctx, e.title, e.body), headers);
      let result: PageResult | null = null;
      if (method === "POST" && rest.startsWith("/actions/")) {
        const name = rest.slice("/actions/".length);
        if (!isAction(name)) return plain(404, "Not found.");
        if (role !== "admin") return refused(errorPage(403, "Forbidden", "Only an admin may do this."));
        if (crossSite(request, url)) return plain(403, "Cross-site request refused.");
        const type = request.headers.get("content-type") ?? "";
        if (!type.startsWith("application/x-www-form-urlencoded")) return plain(415, "A form is expected.");
        const length = Number(request.headers.get("content-length") ?? "0");
        if (length > MAX_FORM) return plain(413, "Form too large.");
        const text = await request.text();
        if (text.length > MAX_FORM) return plain(413, "Form too large.");
        const form = new URLSearchParams(text);
        if (!checkSigned(secret, readCookie(request, CSRF_COOKIE), actor, form.get("_csrf")))
          return refused(
            errorPage(403, "Refused", "The form's CSRF token is missing or wrong: reload the page and try again."),
          );
        const data = new FormData();
        for (const [k, v] of form) data.append(k, v);
        try {
          result = await runAction(ctx, name, data);
        } catch (error) {
          result = actionError(error);
          if (result === null) throw error;
        }
      } else if (method === "GET" || method === "HEAD") {
        for (const [pattern, route] of PAGES) {
          const m = pattern.exec(rest);
          if (m === null) continue;
          let params: string[];
          try {
            params = m.slice(1).map((p) => decodeURIComponent(p));
          } catch {
            return plain(400, "Bad request.");
          }
          result = await route(ctx, ...params);
          break;
        }
        if (result === null) return refused(errorPage(404, "Not found"));
      } else {
        return plain(405, "Method not allowed.");
      }
      if (result instanceof Response) {
        for (const [k, v] of Object.entries(headers)) result.headers.set(k, v);
        return result;
      }
      return page(result.status ?? 200, method === "HEAD" ? "" : layout(ctx, result.title, result.body), headers);
    } catch (error) {
      options.onError?.(error, request);
      return page(500, "<!doctype html><title>Error</title><h1>Internal error</h1>");
    }
  };
  return Object.assign(handler, { basePaths: [base === "" ? "/" : base] as const });
}
