import { createHmac, randomBytes } from "node:crypto";
import { LRUCache } from "lru-cache";
import type { JWTPayload } from "jose";
import type { CreditManager } from "../manager.js";
import { crossSite, readCookie, SECURITY_HEADERS } from "../console/security.js";
import type { Authenticator } from "./auth.js";
import { keyIdOf } from "./keys.js";
import type { ServeSettings } from "./settings.js";
import type { WebhookEndpointStore } from "../modules/webhooks/store.js";

/**
 * The operator console inside `serve` (docs/service.md, "The console"): `createConsoleHandler`
 * under `prefix`, for admins only. A credential comes as `Authorization: Bearer …`, checked by
 * serve's own authenticator (rate limit included), or, from a browser, as a console session: the
 * login form takes an admin key or JWT once and sets a cookie holding a signed session token,
 * never the credential itself (docs/console.md, "In the service"). A user's credential is refused:
 * a user must never see other accounts.
 */
export type ConsoleApp = (request: Request, ip: string) => Promise<Response>;

/** The cookie holding the console session (a signed token, useless on the API). */
export const SESSION_COOKIE = "cm_console_session";
/** How long a console session lasts: 8 hours (never longer than the JWT it was made from). */
export const SESSION_TTL_MS = 8 * 3_600_000;
const MAX_LOGIN_FORM = 16_384;
/** The audience of session tokens: a console session, nothing else. */
const AUDIENCE = "credit-management:console-session";

export interface ConsoleAppOptions {
  /** The webhook endpoints (`CREDIT_WEBHOOKS=on`): the console's Webhooks page. */
  webhooks?: WebhookEndpointStore;
  /** The clock (tests). */
  now?: () => number;
  /** A session's lifetime in ms. Default `SESSION_TTL_MS`. */
  sessionTtlMs?: number;
}

/** What a session token says. */
interface Session {
  /** The actor: `admin:<key id>` or the JWT's user id. */
  sub: string;
  /** The session's own id (sign-out revokes it). */
  jti: string;
  /** The admin key it was made from, when it was one (revoking the key ends it). */
  key?: string;
  exp: number;
}

export async function consoleApp(
  manager: CreditManager,
  s: ServeSettings,
  auth: Authenticator,
  prefix: string,
  onError: (error: unknown, request: Request) => void,
  options: ConsoleAppOptions = {},
): Promise<ConsoleApp> {
  const { createConsoleHandler } = await import("../console/handler.js");
  const jose = await import("jose");
  const now = options.now ?? Date.now;
  const ttl = options.sessionTtlMs ?? SESSION_TTL_MS;
  // Sessions are signed with a key of their own, derived from CREDIT_CONSOLE_SECRET (the same on
  // every replica) or random per process; never the CSRF key itself, never a credential.
  const sessionKey = createHmac("sha256", s.CREDIT_CONSOLE_SECRET ?? randomBytes(32))
    .update("credit-management console session")
    .digest();
  // Sessions signed out, until they would have expired anyway (this process's memory).
  const signedOut = new LRUCache<string, true>({ max: 100_000, ttl, ttlAutopurge: false });
  const trustProxy = s.CREDIT_TRUST_PROXY === "true";
  // Who each request is, found before the handler runs (a 429 must reach the client, not a 500 page).
  const admins = new WeakMap<Request, string>();

  /** Asks the authenticator about a bearer token, however it came. */
  const identify = (request: Request, token: string, ip: string) => {
    const headers = new Headers({ authorization: `Bearer ${token}` });
    return auth.authenticate(new Request(request.url, { headers }), ip);
  };
  const bearer = (request: Request): string | undefined => {
    const header = request.headers.get("authorization");
    const m = header === null ? null : /^Bearer (.+)$/i.exec(header.trim());
    return m === null ? undefined : m[1];
  };
  /** A new session for an admin who signed in with `token`; its cookie value and lifetime in seconds. */
  const openSession = async (actor: string, token: string) => {
    const at = now();
    let exp = Math.floor((at + ttl) / 1000);
    const keyId = keyIdOf(token);
    // A session never outlives the JWT it was made from.
    if (keyId === null) exp = Math.min(exp, jose.decodeJwt(token).exp ?? exp);
    const claims: Record<string, string> = keyId === null ? {} : { key: keyId };
    const jwt = await new jose.SignJWT(claims)
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(actor)
      .setAudience(AUDIENCE)
      .setJti(randomBytes(16).toString("base64url"))
      .setIssuedAt(Math.floor(at / 1000))
      .setExpirationTime(exp)
      .sign(sessionKey);
    return { jwt, maxAge: Math.max(0, exp - Math.floor(at / 1000)) };
  };
  /** The session a cookie holds, if it is well signed, not expired, not signed out, its key not revoked. */
  const readSession = async (value: string): Promise<Session | null> => {
    let claims: JWTPayload;
    try {
      claims = (
        await jose.jwtVerify(value, sessionKey, {
          algorithms: ["HS256"],
          audience: AUDIENCE,
          currentDate: new Date(now()),
          requiredClaims: ["sub", "jti", "exp"],
        })
      ).payload;
    } catch {
      return null;
    }
    // jose checked `sub`, `jti` and `exp` (requiredClaims); `key` is ours, signed with them.
    const session = claims as Session;
    if (signedOut.has(session.jti)) return null;
    if (session.key !== undefined && !(await auth.adminKeyLive(session.key))) return null;
    return session;
  };
  const handler = createConsoleHandler(manager, {
    basePath: prefix,
    ...(s.CREDIT_CONSOLE_SECRET === undefined ? {} : { csrfSecret: s.CREDIT_CONSOLE_SECRET }),
    title: "Credits console",
    onError,
    ...(options.webhooks === undefined ? {} : { webhooks: options.webhooks }),
    authorize: (request) => {
      const actor = admins.get(request);
      return actor === undefined ? "deny" : { role: "admin", actor };
    },
  });
  const secure = (request: Request) =>
    new URL(request.url).protocol === "https:" ||
    (trustProxy && request.headers.get("x-forwarded-proto")?.split(",").pop()?.trim() === "https");
  const cookie = (request: Request, value: string, maxAge: number) =>
    `${SESSION_COOKIE}=${value}; Path=${prefix}; Max-Age=${maxAge}; HttpOnly; SameSite=Strict${secure(request) ? "; Secure" : ""}`;
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
      if (path === logout) {
        // Ends the session for good, not only in this browser: a copy of the cookie stops working too.
        const value = readCookie(request, SESSION_COOKIE);
        const session = value === undefined || value === "" ? null : await readSession(value);
        if (session !== null) signedOut.set(session.jti, true, { ttl: Math.max(1, session.exp * 1000 - now()) });
        return redirect(login, cookie(request, "", 0));
      }
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
      const session = await openSession(identity.userId, token);
      return redirect(`${prefix}/`, cookie(request, session.jwt, session.maxAge));
    }
    if (path.startsWith(`${prefix}/assets/`)) return handler(request); // the style sheet and scripts: public
    const fromHeader = request.headers.get("authorization") !== null;
    const token = bearer(request);
    let identity: { userId: string; admin?: boolean } | null = null;
    let value: string | undefined;
    if (fromHeader) identity = token === undefined ? null : await identify(request, token, ip);
    else {
      value = readCookie(request, SESSION_COOKIE);
      const session = value === undefined || value === "" ? null : await readSession(value);
      identity = session === null ? null : { userId: session.sub, admin: true };
    }
    if (identity === null || identity.admin !== true) {
      // A cookie that no longer opens the console (expired, signed out, its key revoked) is dropped.
      const drop = value !== undefined && value !== "" ? cookie(request, "", 0) : undefined;
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
      `<form class="login" method="post" action="${prefix}/login">` +
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
