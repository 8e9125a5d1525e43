/**
 * Which request paths the metering middlewares meter: a security boundary. Routers disagree on what
 * a path means (case, `%xx`, dot segments, `\\`, repeated and trailing slashes), so a path is metered
 * when any reading of it is under the prefix and not skipped (docs/metering.md, "Which paths are
 * metered"). Shared by the Fetch middleware, the node middleware and the Fastify plugin.
 */

import { ConfigurationError } from "../../core/errors.js";

/** The path options of the metering middlewares (see `MeteringOptionsBase`). */
export interface PathOptions {
  pathPrefix?: string | undefined;
  skipPaths?: (string | RegExp)[] | undefined;
  caseSensitive?: boolean | undefined;
  ignoreTrailingSlash?: boolean | undefined;
}

/** What a router ignores when it matches a path to a route (bits of `routerFor`'s answer). */
export const ANY_CASE = 1;
export const ANY_SLASH = 2;

/**
 * The path matcher of one middleware: validates the path options (throws a ConfigurationError) and returns
 * `applies(path, router)` (is this path metered?) and `routerFor(request)` (what the router behind
 * ignores for it).
 */
export function pathMatcher(o: PathOptions) {
  // The prefix in the form paths are compared in: decoded, `/`-led, lower case, no trailing `/`.
  const prefix = foldCase(normalisePath(o.pathPrefix ?? "/")).replace(/\/+$/, "");
  const prefixSlash = `${prefix}/`;
  const skip = o.skipPaths ?? [];
  if (!Array.isArray(skip) || skip.some((s) => typeof s !== "string" && !(s instanceof RegExp))) {
    throw new ConfigurationError("[credit-management] [metering] `skipPaths` must be an array of strings and RegExps.");
  }
  if (o.caseSensitive !== undefined && typeof o.caseSensitive !== "boolean") {
    throw new ConfigurationError("[credit-management] [metering] `caseSensitive` must be a boolean.");
  }
  if (o.ignoreTrailingSlash !== undefined && typeof o.ignoreTrailingSlash !== "boolean") {
    throw new ConfigurationError("[credit-management] [metering] `ignoreTrailingSlash` must be a boolean.");
  }

  /** Any path under the prefix, compared case-folded. */
  const underPrefix = (path: string): boolean => {
    if (prefix === "") return true;
    const folded = foldCase(path);
    return folded === prefix || folded.startsWith(prefixSlash);
  };
  /**
   * Whether one reading of a path is a skip path. `router`: what the router behind ignores
   * (`ANY_CASE`, `ANY_SLASH`). Ignoring case, a string matches in any ASCII case, a RegExp the path
   * as given or lower-cased; only ASCII letters fold: Express (path-to-regexp's `i` flag) folds at
   * least those, so this never skips more than it routes. Ignoring a trailing slash, the path is
   * also tried without its one trailing `/`.
   */
  const skipped = (path: string, router: number): boolean => {
    if (skipped1(path, (router & ANY_CASE) !== 0)) return true;
    return (
      (router & ANY_SLASH) !== 0 &&
      path.length > 1 &&
      path.endsWith("/") &&
      skipped1(path.slice(0, -1), (router & ANY_CASE) !== 0)
    );
  };
  const skipped1 = (path: string, anyCase: boolean): boolean => {
    let lower: string | undefined;
    for (let i = 0; i < skip.length; i++) {
      const s = skip[i] as string | RegExp;
      if (typeof s === "string") {
        if (s === path) return true;
        if (anyCase && asciiLower(s) === (lower ??= asciiLower(path))) return true;
      } else {
        s.lastIndex = 0; // a `g` or `y` RegExp keeps state between tests
        if (s.test(path)) return true;
        if (anyCase) {
          lower ??= asciiLower(path);
          s.lastIndex = 0;
          if (lower !== path && s.test(lower)) return true;
        }
      }
    }
    return false;
  };
  /**
   * Whether a request path is metered. Routers disagree on what a path means (Express ignores
   * case, Hono decodes `%xx`, Fetch hosts resolve dot segments, ...), so a path is metered when any
   * reading of it is under the prefix (ignoring case) and not skipped: an odd spelling can be
   * over-metered, never slip through, and a skip holds only when every reading is skipped. A plain
   * path (the common case) is the only reading of itself. `router`: what the router ignores.
   */
  const applies = (path: string, router: number): boolean => {
    if (isPlainPath(path)) return underPrefix(path) && !skipped(path, router);
    for (const p of readingsOf(path)) if (underPrefix(p) && !skipped(p, router)) return true;
    return false;
  };
  /**
   * What the router behind ignores for this request (see `caseSensitive`, `ignoreTrailingSlash`):
   * the options, else an Express app's settings (Express puts its app on the request; it ignores
   * case and a trailing slash unless the app says otherwise), else nothing.
   */
  const routerFor = (req: unknown): number => {
    if (skip.length === 0) return 0;
    const app = (req as { app?: { enabled?: unknown } } | null)?.app;
    const enabled = typeof app?.enabled === "function" ? (app.enabled as (name: string) => boolean).bind(app) : null;
    const anyCase =
      o.caseSensitive !== undefined ? !o.caseSensitive : enabled !== null && !enabled("case sensitive routing");
    const anySlash =
      o.ignoreTrailingSlash !== undefined ? o.ignoreTrailingSlash : enabled !== null && !enabled("strict routing");
    return (anyCase ? ANY_CASE : 0) | (anySlash ? ANY_SLASH : 0);
  };

  return { applies, routerFor };
}

/**
 * True when a path has one reading only: `/`-led printable ASCII without `%`, `\`, `#`, `//` or a
 * segment starting with `.`. No allocation: this is the per-request fast path.
 */
export function isPlainPath(path: string): boolean {
  if (path.charCodeAt(0) !== 47 /* / */) return false;
  let prev = 47;
  for (let i = 1; i < path.length; i++) {
    const ch = path.charCodeAt(i);
    if (ch <= 32 || ch >= 127 || ch === 37 /* % */ || ch === 92 /* \ */ || ch === 35 /* # */) return false;
    if (prev === 47 && (ch === 47 || ch === 46) /* . */) return false;
    prev = ch;
  }
  return true;
}

/** ASCII letters lower-cased (nothing else changes). */
function asciiLower(s: string): string {
  return /[A-Z]/.test(s) ? s.replace(/[A-Z]+/g, (m) => m.toLowerCase()) : s;
}

/** Case folded for comparison (`ſ`, `K` and the like fold to their ASCII letter too). */
export const foldCase = (s: string): string => s.toUpperCase().toLowerCase();

/** `%xx` decoded (valid sequences only; invalid UTF-8 byte by byte), repeatedly for `%25xx`. */
export function percentDecode(path: string): string {
  for (let round = 0; round < 4 && path.includes("%"); round++) {
    const next = path.replace(/(?:%[0-9a-fA-F]{2})+/g, (run) => {
      try {
        return decodeURIComponent(run);
      } catch {
        return run.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
      }
    });
    if (next === path) break;
    path = next;
  }
  return path;
}

/** Decoded, `\` as `/`, `/`-led, repeated slashes collapsed. */
export function normalisePath(path: string): string {
  const p = percentDecode(path)
    .replace(/\\/g, "/")
    .replace(/\/{2,}/g, "/");
  return p.startsWith("/") ? p : `/${p}`;
}

/** `.` and `..` segments resolved (after decoding, so `%2e%2e` counts). */
export function resolveDots(path: string): string {
  const out: string[] = [];
  const segments = path.split("/");
  for (let i = 1; i < segments.length; i++) {
    const seg = segments[i] as string;
    const last = i === segments.length - 1;
    if (seg === "..") {
      out.pop();
      if (last) out.push("");
    } else if (seg === ".") {
      if (last) out.push("");
    } else out.push(seg);
  }
  return `/${out.join("/")}`;
}

/**
 * The readings of a path that is not plain: as sent (Express routes on that, ignoring case; an
 * absolute-form target `http://host/p` by its path), as a Fetch host sees it (WHATWG URL: dot
 * segments and `\` resolved), decoded with slashes collapsed (Hono and others decode before
 * routing), and that with its dot segments resolved.
 */
export function readingsOf(path: string): string[] {
  const out: string[] = [];
  const add = (p: string) => {
    if (!out.includes(p)) out.push(p);
  };
  const addAll = (p: string) => {
    add(p);
    try {
      const pathname = new URL(p.startsWith("/") ? p : `/${p}`, "http://h").pathname;
      add(pathname);
      add(normalisePath(pathname));
    } catch {
      // not parseable as a path: the other readings still apply
    }
    const decoded = normalisePath(p);
    add(decoded);
    add(resolveDots(decoded));
  };
  addAll(path);
  if (!path.startsWith("/")) {
    try {
      addAll(new URL(path).pathname);
    } catch {
      // not an absolute URL
    }
  }
  return out;
}

/** The path of a `Request`'s URL. */
export const pathnameOf = (url: string): string => new URL(url).pathname;

/** The path of a node request's target (Express: `originalUrl`), without its query. */
export function nodePathOf(req: { url?: string | undefined; originalUrl?: string }): string {
  return targetPathOf(req.originalUrl ?? req.url ?? "/");
}

/** The path of a request target, without its query. */
export function targetPathOf(target: string): string {
  const q = target.indexOf("?");
  return q === -1 ? target : target.slice(0, q);
}
