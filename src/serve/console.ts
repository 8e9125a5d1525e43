import type { CreditManager } from "../manager.js";
import { crossSite, readCookie, SECURITY_HEADERS } from "../console/security.js";
import type { Authenticator } from "./auth.js";
import type { ServeSettings } from "./settings.js";

/**
 * The operator console inside `serve` (docs/service.md, "The console"): `createConsoleHandler`
 * under `prefix`, for admins only. A credential comes as `Authorization: Bearer …` or, from a
 * browser, in an HttpOnly cookie set by the console's login form; each request is checked by
 * serve's own authenticator (rate limit included). A user's credential is refused: a user must
 * never see other accounts.
 */
export type ConsoleApp = (request: Request, ip: string) => Promise<Response>;

/** The cookie holding the credential the operator typed into the login form. */
export const KEY_COOKIE = "cm_console_key";
/** How long the browser keeps it: 12 hours. */
const KEY_COOKIE_MAX_AGE = 43_200;
const MAX_LOGIN_FORM = 16_384;

export async function consoleApp(
  manager: CreditManager,
  s: ServeSettings,
  auth: Authenticator,
  prefix: string,
  onError: (error: unknown, request: Request) => void,
): Promise<ConsoleApp> {
  const { createConsoleHandler } = await import("../console/handler.js");
  const trustProxy = s.CREDIT_TRUST_PROXY === "true";
  // Who each request is, found before the handler runs (a 429 must reach the client, not a 500 page).
  const admins = new WeakMap<Request, string>();

  /** Asks the authenticator about a bearer token, however it came. */
  const identify = (request: Request, token: string, ip: string) => {
    const headers = new Headers({ authorization: `Bearer ${token}` });
    return auth.authenticate(new Request(request.url, { headers }), ip);
  };
  const credential = (request: Request): string | undefined => {
    const header = request.headers.get("authorization");
    const m = header === null ? null : /^Bearer (.+)$/i.exec(header.trim());
    if (m !== null) return m[1];
    const cookie = readCookie(request, KEY_COOKIE);
    if (cookie === undefined || cookie === "") return undefined;
    try {
      return decodeURIComponent(cookie);
    } catch {
      return undefined;
    }
  };
  const handler = createConsoleHandler(manager, {
    basePath: prefix,
    ...(s.CREDIT_CONSOLE_SECRET === undefined ? {} : { csrfSecret: s.CREDIT_CONSOLE_SECRET }),
    title: "Credits console",
    onError,
    authorize: (request) => {
      const actor = admins.get(request);
      return actor === undefined ? "deny" : { role: "admin", actor };
    },
  });
  const secure = (request: Request) =>
    new URL(request.url).protocol === "https:" ||
    (trustProxy && request.headers.get("x-forwarded-proto")?.split(",").pop()?.trim() === "https");
  const cookie = (request: Request, value: string, maxAge: number) =>
    `${KEY_COOKIE}=${value}; Path=${prefix}; Max-Age=${maxAge}; HttpOnly; SameSite=Strict${secure(request) ? "; Secure" : ""}`;
  const login = `${prefix}/login`;
  const logout = `${prefix}/logout`;

  return async (request, ip) => {
    const path = new URL(request.url).pathname;
    const method = request.method.toUpperCase();
    if (path === login || path === logout) {
      if (method === "GET" || method === "HEAD")
        return path === login ? loginPage(prefix, 200, null) : logoutPage(prefix);
      if (method !== "POST") return text(405, "Method not allowed.", { allow: "GET, HEAD, POST" });
      if (crossSite(request, new URL(request.url))) return text(403, "Cross-site request refused.");
      if (path === logout) return redirect(login, cookie(request, "", 0));
      if (!(request.headers.get("content-type") ?? "").startsWith("application/x-www-form-urlencoded"))
        return text(415, "A form is expected.");
      if (Number(request.headers.get("content-length") ?? "0") > MAX_LOGIN_FORM) return text(413, "Form too large.");
      const body = await request.text();
      if (body.length > MAX_LOGIN_FORM) return text(413, "Form too large.");
      const token = new URLSearchParams(body).get("key")?.trim() ?? "";
      if (!/^[!-~]{1,4000}$/.test(token)) return loginPage(prefix, 401, "Enter an admin API key or JWT.");
      const identity = await identify(request, token, ip);
      if (identity === null) return loginPage(prefix, 401, "This key or token is not valid.");
      if (identity.admin !== true) return loginPage(prefix, 403, "Only an admin credential opens the console.");
      return redirect(`${prefix}/`, cookie(request, encodeURIComponent(token), KEY_COOKIE_MAX_AGE));
    }
    if (path.startsWith(`${prefix}/assets/`)) return handler(request); // the style sheet and scripts: public
    const fromHeader = request.headers.get("authorization") !== null;
    const token = credential(request);
    const identity = token === undefined ? null : await identify(request, token, ip);
    if (identity === null || identity.admin !== true) {
      // A cookie that no longer opens the console (revoked, expired, a user's) is dropped.
      const drop = token !== undefined && !fromHeader ? cookie(request, "", 0) : undefined;
      // A browser is sent to the form; anything else gets 401, a user's credential 403.
      if (!fromHeader && (method === "GET" || method === "HEAD")) return redirect(login, drop);
      return identity === null
        ? text(401, "Authentication required: an admin API key or JWT.", { "www-authenticate": "Bearer" })
        : text(403, "Only an admin credential opens the console.");
    }
    admins.set(request, identity.userId);
    return handler(request);
  };
}

function text(status: number, body: string, headers: Record<string, string> = {}): Response {
  return new Response(body, {
    status,
    headers: { "content-type": "text/plain; charset=utf-8", ...SECURITY_HEADERS, ...headers },
  });
}

function redirect(location: string, setCookie?: string): Response {
  const headers: Record<string, string> = { location, ...SECURITY_HEADERS };
  if (setCookie !== undefined) headers["set-cookie"] = setCookie;
  return new Response(null, { status: 303, headers });
}

const escape = (v: string) =>
  v.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] as string);

function shell(prefix: string, status: number, title: string, body: string): Response {
  const html =
    `<!doctype html><html lang="en"><head><meta charset="utf-8" />` +
    `<meta name="viewport" content="width=device-width, initial-scale=1" /><link rel="icon" href="data:," />` +
    `<title>${title} · Credits console</title><link rel="stylesheet" href="${prefix}/assets/console.css" /></head>` +
    `<body><main id="main">${body}</main></body></html>`;
  return new Response(html, {
    status,
    headers: { "content-type": "text/html; charset=utf-8", ...SECURITY_HEADERS },
  });
}

function loginPage(prefix: string, status: number, error: string | null): Response {
  return shell(
    prefix,
    status,
    "Sign in",
    `<h1>Credits console</h1>` +
      (error === null ? "" : `<p class="error" role="alert">${escape(error)}</p>`) +
      `<form method="post" action="${prefix}/login">` +
      `<label>Admin API key or JWT <input name="key" type="password" autocomplete="off" required autofocus /></label>` +
      `<button type="submit">Sign in</button></form>`,
  );
}

function logoutPage(prefix: string): Response {
  return shell(
    prefix,
    200,
    "Sign out",
    `<h1>Sign out</h1><form method="post" action="${prefix}/logout"><button type="submit">Sign out</button></form>`,
  );
}
