import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * CSRF protection, a signed double submit (docs/console.md, "Security"): the browser holds a
 * random token in an HttpOnly, SameSite=Strict cookie; every form carries HMAC(secret, token +
 * actor). An action needs both, matching, for the same actor — a cross-site form can neither read
 * the cookie nor forge the signature. Cross-site requests (`Sec-Fetch-Site: cross-site`, or an
 * `Origin` of another host) are refused before that.
 */
export const CSRF_COOKIE = "cm_console_csrf";

export function newToken(): string {
  return randomBytes(24).toString("base64url");
}

export function signToken(secret: Uint8Array, token: string, actor: string): string {
  return createHmac("sha256", secret).update(`${token}\n${actor}`).digest("base64url");
}

export function checkSigned(secret: Uint8Array, token: string | undefined, actor: string, signed: unknown): boolean {
  if (token === undefined || token.length < 16 || typeof signed !== "string") return false;
  const want = Buffer.from(signToken(secret, token, actor));
  const got = Buffer.from(signed);
  return want.length === got.length && timingSafeEqual(want, got);
}

export function readCookie(request: Request, name: string): string | undefined {
  const header = request.headers.get("cookie");
  if (header === null) return undefined;
  for (const part of header.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/** The request comes from a page of another site (or names another origin). */
export function crossSite(request: Request, url: URL): boolean {
  const site = request.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") return true;
  const origin = request.headers.get("origin");
  if (origin === null) return false;
  if (origin === "null") return true;
  // By host only: behind a proxy that ends TLS the request's own URL says http while the page was https.
  try {
    return new URL(origin).host !== url.host;
  } catch {
    return true;
  }
}

/** The console's Content-Security-Policy: its own scripts and styles only, no inline code. */
export const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

export const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": CSP,
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  "x-frame-options": "DENY",
  "cross-origin-opener-policy": "same-origin",
  "cache-control": "no-store",
};
