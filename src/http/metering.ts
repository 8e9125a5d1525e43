import type { IncomingMessage, ServerResponse } from "node:http";
import { ValidationError } from "../errors.js";
import { UserId, parse } from "../models/index.js";
import type { CreditService } from "../services/credit-service.js";
import type { MeterOptions } from "../models/index.js";
import type { MeterOutcome, MeterSession } from "../services/metering.js";
import { recordOf } from "../services/pricing-service.js";
import { ResponseUsageReader, usageOfText, type LlmUsage, type UsageReading } from "../domain/llm-usage.js";
import type { RecordedUsage } from "../models/index.js";
import { textResponse } from "./node.js";
import { errorBody, errorResponse, json, type Identity } from "./router.js";
import { isPromiseLike } from "../util/promise.js";

/** Options shared by `creditMetering` (Fetch) and `creditMeteringMiddleware` (node:http, Express). */
export interface MeteringOptionsBase<Req> {
  /** `manager.credits`. */
  credits: Pick<CreditService, "openMeter">;
  /** Who pays: `{ userId }` or null (→ 401). */
  authenticate?: (request: Req) => Identity | null | undefined | Promise<Identity | null | undefined>;
  /** Read the payer from a client-sent `X-User-Id` when `authenticate` finds nobody. Default false. */
  trustUserIdHeader?: boolean;
  /**
   * Only paths under this prefix are metered. Default `/`. Compared without case, and against the
   * percent-decoded, slash-collapsed and dot-resolved readings of the path too (docs/metering.md, "Which
   * paths are metered").
   */
  pathPrefix?: string;
  /**
   * Paths never metered, e.g. `/api/health`: exact strings, or RegExps tested as given. A request
   * is skipped only when every reading of its path (as sent, percent-decoded, dot-resolved, ...) is
   * skipped, so `/api/health/../chat` or `/api/%68ealth` stay metered. Letter case follows
   * `caseSensitive`.
   */
  skipPaths?: (string | RegExp)[];
  /**
   * Whether the router behind tells paths apart by letter case; only `skipPaths` depend on it (the
   * prefix is always compared without case). `false`: a skip string matches in any ASCII case and
   * a RegExp is tried on the lower-cased path too, so `/API/health` is skipped like `/api/health`.
   * Only say `false` when every route behind is matched without case: on a case-sensitive router
   * `/api/HEALTH` may reach another route (`/api/:model`), which would then run unmetered.
   * Default: `creditMeteringMiddleware` follows an Express app's "case sensitive routing" setting
   * (`req.app`; off by default, so Express skips case-insensitively) and is `true` on anything
   * else (node:http, Fastify); `creditMetering` is `true` (Hono, Next.js, Bun route by case). Set
   * `true` when routes behind Express sit in an `express.Router({ caseSensitive: true })`.
   */
  caseSensitive?: boolean;
  /**
   * Whether the router behind routes `/api/health/` like `/api/health`; only `skipPaths` depend on
   * it. `true`: a skip path also matches with one trailing `/`. Default: `creditMeteringMiddleware`
   * follows an Express app's "strict routing" setting (off by default, so Express routes both
   * alike) and is `false` on anything else (node:http; set `true` for Fastify's
   * `ignoreTrailingSlash`); `creditMetering` is `false` (Hono is strict by default).
   */
  ignoreTrailingSlash?: boolean;
  /** Header with the client's estimate. Default `X-Estimated-Tokens`. */
  estimateHeader?: string;
  /** Estimate when the header is absent. Default 100. */
  defaultEstimate?: number;
  /** Largest hold one request may place; larger estimates are capped. Default 100,000. */
  maxEstimate?: number;
  /** Hold TTL in seconds (long enough for the slowest stream). Default: the manager's default. */
  ttlSeconds?: number;
  /**
   * Dotted key of the usage in a JSON response, e.g. `usage.total_tokens` (OpenAI style), used
   * when the handler recorded no usage. Without it and without recorded usage, the hold is released.
   */
  usageKey?: string;
  /** Response header with the credits charged. Default `X-Credits-Deducted`. */
  deductedHeader?: string;
  /**
   * Bill LLM responses by the usage they report (docs/llm-metering.md): OpenAI-compatible and
   * Anthropic Messages bodies, streamed (SSE) or not, priced through the manager's price book.
   * `true` for the defaults. Usage the handler records itself takes precedence.
   */
  llm?: boolean | LlmMeteringOptions;
  /** Every settled request: what was held, charged or released. Where headers cannot carry it, read it here. */
  onSettled?: (outcome: MeterOutcome, request: Req) => void;
}

/** The `llm` option of the metering middlewares (docs/llm-metering.md). */
export interface LlmMeteringOptions {
  /** The provider the usage is recorded under (it selects price-book entries that name one), e.g. "openai". */
  provider?: string;
  /**
   * What a successful (2xx) response is charged when its own usage cannot be billed — a stream cut
   * before its usage arrived (the client left, the upstream failed), a response without usage, a
   * malformed usage object, a model the book does not price:
   * - `"estimate"` (default): the hold's estimate;
   * - `"counted"`: the tokens seen so far (Anthropic: `message_start`'s input and the output so far;
   *   OpenAI-shaped streams: one output token per content chunk, input unknown), priced by the book;
   * - `"none"`: nothing — the hold is released (`releaseReason: "usage-<problem>"`).
   * The usage recorded says which (`source: "estimate" | "counted"`, `problem`).
   */
  missingUsage?: "estimate" | "counted" | "none";
}

export type CreditMeteringOptions = MeteringOptionsBase<Request>;
export type CreditMeteringMiddlewareOptions = MeteringOptionsBase<IncomingMessage>;

/** What a node middleware leaves on `res.locals` (Express) for the handler and later middleware. */
export interface MeteringLocals {
  /** The hold of this request. */
  creditReservationId: string;
  creditEstimate: number;
  /** Credits charged, once settled. */
  creditsDeducted?: number;
}

/** @internal What every metering middleware shares (Fetch, node, the Fastify plugin). */
export function common<Req>(o: MeteringOptionsBase<Req>) {
  if (!o || typeof o.credits?.openMeter !== "function") {
    throw new TypeError("[credit-management] [metering] `credits` (manager.credits) is required.");
  }
  if (o.authenticate === undefined && o.trustUserIdHeader !== true) {
    throw new TypeError("[credit-management] [metering] an `authenticate` hook (or `trustUserIdHeader: true`) is required.");
  }
  // The prefix in the form paths are compared in: decoded, `/`-led, lower case, no trailing `/`.
  const prefix = foldCase(normalisePath(o.pathPrefix ?? "/")).replace(/\/+$/, "");
  const prefixSlash = `${prefix}/`;
  const skip = o.skipPaths ?? [];
  if (!Array.isArray(skip) || skip.some((s) => typeof s !== "string" && !(s instanceof RegExp))) {
    throw new TypeError("[credit-management] [metering] `skipPaths` must be an array of strings and RegExps.");
  }
  if (o.caseSensitive !== undefined && typeof o.caseSensitive !== "boolean") {
    throw new TypeError("[credit-management] [metering] `caseSensitive` must be a boolean.");
  }
  if (o.ignoreTrailingSlash !== undefined && typeof o.ignoreTrailingSlash !== "boolean") {
    throw new TypeError("[credit-management] [metering] `ignoreTrailingSlash` must be a boolean.");
  }
  const defaultEstimate = o.defaultEstimate ?? 100;
  const maxEstimate = o.maxEstimate ?? 100_000;
  if (!Number.isSafeInteger(defaultEstimate) || defaultEstimate < 1) throw new TypeError("defaultEstimate must be a positive integer");
  if (!Number.isSafeInteger(maxEstimate) || maxEstimate < 1) throw new TypeError("maxEstimate must be a positive integer");
  const header = (o.estimateHeader ?? "x-estimated-tokens").toLowerCase();
  const deductedHeader = o.deductedHeader ?? "X-Credits-Deducted";
  const usagePath = o.usageKey ? o.usageKey.split(".") : null;
  const llm = llmOptions(o.llm);

  /** A plain path under the prefix, ASCII letters compared without case (no allocation). */
  const plainUnderPrefix = (path: string): boolean =>
    prefix === "" ||
    (startsWithAsciiFolded(path, prefix) && (path.length === prefix.length || path.charCodeAt(prefix.length) === 47 /* / */));
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
    return (router & ANY_SLASH) !== 0 && path.length > 1 && path.endsWith("/") && skipped1(path.slice(0, -1), (router & ANY_CASE) !== 0);
  };
  const skipped1 = (path: string, anyCase: boolean): boolean => {
    let lower: string | undefined;
    for (let i = 0; i < skip.length; i++) {
      const s = skip[i] as string | RegExp;
      if (typeof s === "string") {
        if (s === path || (anyCase && equalsAsciiFolded(s, path))) return true;
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
    if (isPlainPath(path)) return plainUnderPrefix(path) && !skipped(path, router);
    for (const p of readingsOf(path)) if (underPrefix(p) && !skipped(p, router)) return true;
    return false;
  };
  /**
   * What the router behind ignores for this request (see `caseSensitive`, `ignoreTrailingSlash`):
   * the options, else an Express app's settings (Express puts its app on the request; it ignores
   * case and a trailing slash unless the app says otherwise), else nothing.
   */
  const routerFor = (req: Req): number => {
    if (skip.length === 0) return 0;
    const app = (req as { app?: { enabled?: unknown } } | null)?.app;
    const enabled = typeof app?.enabled === "function" ? (app.enabled as (name: string) => boolean).bind(app) : null;
    const anyCase = o.caseSensitive !== undefined ? !o.caseSensitive : enabled !== null && !enabled("case sensitive routing");
    const anySlash = o.ignoreTrailingSlash !== undefined ? o.ignoreTrailingSlash : enabled !== null && !enabled("strict routing");
    return (anyCase ? ANY_CASE : 0) | (anySlash ? ANY_SLASH : 0);
  };

  /** The estimate from the header (a positive integer), else the default; capped. */
  const estimate = (value: string | null | undefined): number => {
    if (value === null || value === undefined || value === "") return Math.min(defaultEstimate, maxEstimate);
    if (!/^\d{1,16}$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
      throw new ValidationError(`Invalid ${o.estimateHeader ?? "X-Estimated-Tokens"}: must be a positive integer`, [
        { path: header, message: "must be a positive integer" },
      ]);
    }
    return Math.min(Number(value), maxEstimate);
  };

  const usageFrom = (text: string): number | undefined => {
    if (usagePath === null) return undefined;
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      return undefined;
    }
    for (const k of usagePath) v = v !== null && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
    return typeof v === "number" && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  };

  /** The payer: what `authenticate` found, else (when trusted) the `X-User-Id` header, else null. */
  const identityOf = (found: Identity | null | undefined, headerValue: string | null | undefined): Identity | null => {
    if (found) return { userId: parse(UserId, found.userId, "identity.userId"), admin: found.admin === true };
    if (o.trustUserIdHeader && headerValue) return { userId: parse(UserId, headerValue, "X-User-Id") };
    return null;
  };

  /** The options of the hold: only the keys that are set. */
  const ttlSeconds = o.ttlSeconds;
  const meterOptions = (estimate: number, method: string | undefined, path: string): MeterOptions => {
    const reason = `${method ?? "GET"} ${path}`;
    const out: MeterOptions = { estimate, reason: reason.length > 1000 ? reason.slice(0, 1000) : reason };
    if (ttlSeconds !== undefined) out.ttlSeconds = ttlSeconds;
    return out;
  };

  /** The `usageKey` of a node response's last chunk, when it is the whole body and JSON. */
  const usageOfBody = (res: ServerResponse, chunk: unknown): number | undefined => {
    if (typeof chunk !== "string" && !Buffer.isBuffer(chunk)) return undefined;
    const body = chunk.toString();
    const type = res.getHeader("content-type");
    // After writeHead(status, headers) the type may not be readable: then try the body as JSON.
    const isJson = type === undefined ? body.trimStart().startsWith("{") : isJsonType(String(type));
    return isJson ? usageFrom(body) : undefined;
  };

  /**
   * Reports a settled session once: `onSettled`, and the charge on `res.locals` (Express) when
   * there are locals. A failing callback changes nothing.
   */
  const reported = new WeakSet<MeterSession>();
  const report = (req: Req, session: MeterSession, outcome: MeterOutcome, locals?: Partial<MeteringLocals>): void => {
    if (reported.has(session)) return;
    reported.add(session);
    if (locals) locals.creditsDeducted = outcome.charged;
    try {
      o.onSettled?.(outcome, req);
    } catch {
      // a failing callback must not change the response
    }
  };
  /** Settles (or joins the settlement already under way) and reports it once; null if it failed. */
  const settle = (req: Req, session: MeterSession, p: Promise<MeterOutcome>, locals?: Partial<MeteringLocals>) =>
    p.then(
      (outcome) => {
        report(req, session, outcome, locals);
        return outcome;
      },
      () => null,
    );

  /** A usage the middleware found (or fell back to) for the response, as priced. */
  const recorded = (session: MeterSession, usage: LlmUsage, source: "response" | "counted", problem?: string): RecordedUsage => {
    const tokens: Parameters<typeof recordOf>[0] = {
      model: usage.model as string,
      inputTokens: usage.inputTokens,
      outputTokens: usage.outputTokens,
    };
    if (usage.cachedTokens > 0) tokens.cachedTokens = usage.cachedTokens;
    if (llm?.provider !== undefined) tokens.provider = llm.provider;
    const r = recordOf(tokens, session.priceBook);
    r.source = source;
    if (problem !== undefined) r.problem = problem;
    return r;
  };

  /** A 2xx response whose own usage cannot be billed: charged as `missingUsage` says. */
  const fallback = (session: MeterSession, problem: string, counted: LlmUsage | null): Promise<MeterOutcome> => {
    const how = llm?.missingUsage ?? "estimate";
    if (how === "none") return session.release(`usage-${problem}`);
    if (how === "counted" && counted !== null) {
      const nothing = counted.inputTokens === 0 && counted.outputTokens === 0 && counted.cachedTokens === 0;
      try {
        if (counted.model !== undefined) session.recordPriced(recorded(session, counted, "counted", problem));
        else if (nothing) session.recordPriced({ amount: 0, source: "counted", problem });
        else throw new Error("tokens without a model cannot be priced");
        return session.commit();
      } catch {
        // the book cannot price what was counted: charge the estimate, never nothing
      }
    }
    const usage: RecordedUsage = { amount: session.estimate, source: "estimate", problem };
    if (counted?.model !== undefined) usage.model = counted.model;
    if (llm?.provider !== undefined) usage.provider = llm.provider;
    session.recordPriced(usage);
    return session.commit();
  };

  /**
   * Settles an LLM response from what it reported (`llm` option): usage the handler recorded
   * itself first; status >= 500 releases; the response's usage priced by the book; a 4xx without
   * usage releases (the API refused the call); any other response without billable usage follows
   * `missingUsage`.
   */
  const settleReading = (session: MeterSession, reading: UsageReading, status: number): Promise<MeterOutcome> => {
    if (session.settled || session.usages.length > 0) return session.commit();
    if (status >= 500) return session.release("error");
    if (reading.ok) {
      if (reading.usage.model === undefined) return fallback(session, "no-model", null);
      let usage: RecordedUsage;
      try {
        usage = recorded(session, reading.usage, "response");
      } catch (error) {
        const code = (error as { code?: string }).code;
        const problem = code === "UNKNOWN_MODEL" ? "unknown-model" : code === "CONFIGURATION_ERROR" ? "no-price-book" : "unpriced";
        return fallback(session, problem, reading.usage);
      }
      session.recordPriced(usage);
      return session.commit();
    }
    if (status >= 400 && reading.problem !== "cut") return session.release("no-usage");
    return fallback(session, reading.problem, reading.counted);
  };

  return {
    llm,
    settleReading,
    applies,
    routerFor,
    estimate,
    usageFrom,
    usageOfBody,
    usagePath,
    identityOf,
    meterOptions,
    report,
    settle,
    deductedHeader,
    estimateHeaderName: header,
    credits: o.credits,
  };
}

/** The `llm` option with its defaults, or null when it is off. */
function llmOptions(o: boolean | LlmMeteringOptions | undefined): LlmMeteringOptions | null {
  if (o === undefined || o === false) return null;
  if (o === true) return {};
  if (typeof o !== "object" || o === null) throw new TypeError("[credit-management] [metering] `llm` must be a boolean or { provider?, missingUsage? }.");
  for (const k of Object.keys(o)) {
    if (k !== "provider" && k !== "missingUsage") throw new TypeError(`[credit-management] [metering] unknown \`llm\` option "${k}".`);
  }
  if (o.missingUsage !== undefined && !["estimate", "counted", "none"].includes(o.missingUsage)) {
    throw new TypeError('[credit-management] [metering] `llm.missingUsage` must be "estimate", "counted" or "none".');
  }
  if (o.provider !== undefined && (typeof o.provider !== "string" || o.provider.length === 0 || o.provider.length > 200)) {
    throw new TypeError("[credit-management] [metering] `llm.provider` must be a non-empty string.");
  }
  return o;
}

/** A response with nothing to read (no body). */
const NO_BODY: UsageReading = { ok: false, problem: "absent", counted: { shape: "openai", model: undefined, inputTokens: 0, outputTokens: 0, cachedTokens: 0 } };

/** What a router ignores when it matches a path to a route (bits of `routerFor`'s answer). */
const ANY_CASE = 1;
const ANY_SLASH = 2;

/**
 * True when a path has one reading only: `/`-led printable ASCII without `%`, `\`, `#`, `//` or a
 * segment starting with `.`. No allocation: this is the per-request fast path.
 */
function isPlainPath(path: string): boolean {
  if (path.charCodeAt(0) !== 47 /* / */) return false;
  let prev = 47;
  for (let i = 1; i < path.length; i++) {
    const ch = path.charCodeAt(i);
    if (ch <= 32 || ch >= 127 || ch === 37 /* % */ || ch === 92 /* \ */ || ch === 35 /* # */) return false;
    if (prev === 47 && (ch === 47 || ch === 46 /* . */)) return false;
    prev = ch;
  }
  return true;
}

/** `path` starts with `lower` (lower-case ASCII), ASCII letters compared without case. */
function startsWithAsciiFolded(path: string, lower: string): boolean {
  if (path.length < lower.length) return false;
  for (let i = 0; i < lower.length; i++) {
    let ch = path.charCodeAt(i);
    if (ch >= 65 && ch <= 90) ch |= 32;
    if (ch !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/** ASCII letters lower-cased (nothing else changes). */
function asciiLower(s: string): string {
  return /[A-Z]/.test(s) ? s.replace(/[A-Z]+/g, (m) => m.toLowerCase()) : s;
}

/** `a` and `b` are equal with ASCII letters compared without case (no allocation). */
function equalsAsciiFolded(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 65 && x <= 90) x |= 32;
    if (y >= 65 && y <= 90) y |= 32;
    if (x !== y || x < 97 || x > 122) return false;
  }
  return true;
}

/** Case folded for comparison (`ſ`, `K` and the like fold to their ASCII letter too). */
const foldCase = (s: string): string => s.toUpperCase().toLowerCase();

/** `%xx` decoded (valid sequences only; invalid UTF-8 byte by byte), repeatedly for `%25xx`. */
function percentDecode(path: string): string {
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
function normalisePath(path: string): string {
  const p = percentDecode(path).replace(/\\/g, "/").replace(/\/{2,}/g, "/");
  return p.startsWith("/") ? p : `/${p}`;
}

/** `.` and `..` segments resolved (after decoding, so `%2e%2e` counts). */
function resolveDots(path: string): string {
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
function readingsOf(path: string): string[] {
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

const isJsonType = (type: string | null | undefined) => !!type && /^application\/([\w.+-]*\+)?json\b/i.test(type);

/**
 * Metering for Fetch-style apps (Hono, Next.js, Bun, Deno, `createCreditHandler` hosts): wraps a
 * `(request) => Promise<Response>`. For each metered request it holds the estimate, runs the
 * handler inside the usage context (`recordUsage()` works anywhere below it), and then:
 * - a thrown handler or a status >= 500 releases the hold (a throw is rethrown);
 * - a JSON response is read whole; the recorded usage (else the `usageKey` of the body) is
 *   committed and `X-Credits-Deducted` is set;
 * - any other body (server-sent events, streams) is passed through as it is produced and the
 *   recorded usage is committed when it ends, before the client sees its end (headers are gone by
 *   then: read the figure in `onSettled`); a client that goes away (the body is cancelled, or
 *   `request.signal` aborts) releases the hold; one already gone when the hold is placed gets a
 *   499 and the handler does not run.
 * 401 without identity, 402 when the hold cannot be placed, 400 for a malformed estimate header.
 */
export function creditMetering(options: CreditMeteringOptions) {
  const c = common(options);
  const estimateHeader = c.estimateHeaderName;
  return (handler: (request: Request) => Response | Promise<Response>) =>
    async (request: Request): Promise<Response> => {
      const path = pathnameOf(request.url);
      if (!c.applies(path, c.routerFor(request))) return handler(request);
      let session: MeterSession;
      try {
        let found = options.authenticate ? options.authenticate(request) : null;
        if (isPromiseLike(found)) found = await found;
        const identity = c.identityOf(found as Identity | null | undefined, request.headers.get("x-user-id"));
        if (identity === null) return json(401, errorBody("UNAUTHORIZED", "Authentication required."));
        const estimate = c.estimate(request.headers.get(estimateHeader));
        session = await c.credits.openMeter(identity.userId, c.meterOptions(estimate, request.method, path));
      } catch (error) {
        return errorResponse(error);
      }
      const release = (reason: string) => c.settle(request, session, session.release(reason));
      if (request.signal.aborted) {
        // The client left while it was authenticated or the hold placed: nobody to answer.
        await release("aborted");
        return json(499, errorBody("CLIENT_CLOSED_REQUEST", "The client closed the request."), { [c.deductedHeader]: "0" });
      }
      // LLM responses (`llm`): the usage is read from the body as it passes; a stream cut before
      // its usage arrived is charged as `missingUsage` says, not released.
      let reading: ResponseUsageReader | null = null;
      let status = 200;
      const cut = () => c.settle(request, session, reading === null ? session.release("aborted") : c.settleReading(session, reading.cut(), status));
      const onAbort = () => void cut();
      request.signal.addEventListener("abort", onAbort, { once: true });

      let response: Response;
      try {
        response = await session.run(handler, request);
      } catch (error) {
        await release("error");
        throw error;
      }
      if (session.settled) return response; // the client left while the handler ran
      if (response.status >= 500) {
        await release("error");
        return withHeader(response, response.body, c.deductedHeader, 0);
      }
      if (isJsonType(response.headers.get("content-type")) || response.body === null) {
        let text: string | null = null;
        try {
          text = response.body === null ? null : await session.run(textOf, response);
        } catch (error) {
          await release("error");
          throw error;
        }
        let settling: Promise<MeterOutcome>;
        if (c.llm !== null) {
          settling = c.settleReading(session, text === null ? NO_BODY : usageOfText(text, response.headers.get("content-type")), response.status);
        } else settling = session.commit(session.usages.length === 0 && text !== null ? c.usageFrom(text) : undefined);
        const outcome = await c.settle(request, session, settling);
        request.signal.removeEventListener("abort", onAbort);
        return withHeader(response, text, c.deductedHeader, outcome?.charged ?? 0);
      }
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      status = response.status;
      if (c.llm !== null) reading = new ResponseUsageReader(response.headers.get("content-type"));
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          try {
            const { done, value } = await session.run(() => reader.read());
            if (done) {
              request.signal.removeEventListener("abort", onAbort);
              await c.settle(request, session, reading === null ? session.commit() : c.settleReading(session, reading.end(), status));
              controller.close();
            } else {
              controller.enqueue(value);
              reading?.push(value); // after the chunk is on its way: reading never delays it
            }
          } catch (error) {
            // The upstream failed mid-stream: released, or (LLM) charged as a cut stream.
            if (reading === null) await release("error");
            else await cut();
            controller.error(error);
          }
        },
        async cancel(reason) {
          await cut();
          await reader.cancel(reason).catch(() => undefined);
        },
      });
      return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
    };
}

const textOf = (response: Response) => response.text();

/**
 * The path of a `Request`'s URL without building a `URL`: `request.url` is already parsed and
 * serialised (dot segments resolved, percent-encoding normalised), so its path is the text between
 * the authority and `?`/`#`. Anything unexpected goes through `URL`.
 */
function pathnameOf(url: string): string {
  const scheme = url.startsWith("https://") ? 8 : url.startsWith("http://") ? 7 : -1;
  if (scheme === -1) return new URL(url).pathname;
  const start = url.indexOf("/", scheme);
  if (start === -1) return "/";
  let end = url.length;
  for (let i = start; i < end; i++) {
    const ch = url.charCodeAt(i);
    if (ch === 63 /* ? */ || ch === 35 /* # */) end = i;
  }
  return url.slice(start, end);
}

function withHeader(response: Response, body: ConstructorParameters<typeof Response>[0], name: string, charged: number): Response {
  let headers = response.headers;
  try {
    // A Response the handler built has mutable headers: no copy. One from fetch() is immutable.
    headers.set(name, String(charged));
  } catch {
    headers = new Headers(response.headers);
    headers.set(name, String(charged));
  }
  const init = { status: response.status, statusText: response.statusText, headers };
  if (typeof body !== "string") return new Response(body, init);
  headers.delete("content-length");
  return textResponse(body, init);
}

type Next = (error?: Error) => void;
type Common = ReturnType<typeof common<IncomingMessage>>;
type End = (this: ServerResponse, chunk?: unknown, encoding?: unknown, cb?: unknown) => ServerResponse;
type Write = (this: ServerResponse, ...args: unknown[]) => boolean;

/** Where a metered ServerResponse keeps its request's state (one object per request, no closures). */
const METERED = Symbol("credit-management.metered");
type MeteredResponse = ServerResponse & { [METERED]?: NodeMetered };

/** One metered node request: its session, the response's own `write`/`end`, what `end` deferred. */
class NodeMetered {
  /** Written in parts (`res.write`): the headers are out before the end. */
  parts = false;
  /** Usage read from the body of an end that could not wait (committed when the response closes). */
  pending: number | undefined = undefined;
  /** `llm`: the usage of the body, read as it is written. */
  reading: ResponseUsageReader | null = null;
  private endChunk: unknown;
  private endEncoding: unknown;
  private endCallback: unknown;

  constructor(
    readonly c: Common,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly session: MeterSession,
    readonly locals: Partial<MeteringLocals> | undefined,
    readonly write: Write,
    readonly end: End,
  ) {}

  /** Settles and reports once (`onSettled`, `res.locals`); a failed settlement reports nothing. */
  settle(p: Promise<MeterOutcome>): Promise<MeterOutcome | null> {
    return this.c.settle(this.req, this.session, p, this.locals);
  }

  /** `llm`: reads a written chunk for its usage (after it was handed to the socket). */
  read(chunk: unknown, encoding: unknown): void {
    if (chunk === undefined || chunk === null || typeof chunk === "function") return;
    const res = this.res;
    this.reading ??= new ResponseUsageReader(typeHeader(res));
    if (typeof chunk === "string") {
      if (typeof encoding === "string" && encoding !== "utf8" && encoding !== "utf-8") this.reading.push(Buffer.from(chunk, encoding as BufferEncoding));
      else this.reading.push(chunk);
    } else if (chunk instanceof Uint8Array) this.reading.push(chunk);
  }

  /** `res.end(body)` before the headers went out: settle first, then end with the header set. */
  endAfterSettling(p: Promise<MeterOutcome>, chunk: unknown, encoding: unknown, cb: unknown): void {
    this.endChunk = chunk;
    this.endEncoding = encoding;
    this.endCallback = cb;
    p.then(
      (outcome) => {
        this.c.report(this.req, this.session, outcome, this.locals);
        this.finishEnd(outcome.charged);
      },
      () => this.finishEnd(null),
    );
  }

  private finishEnd(charged: number | null): void {
    const res = this.res;
    if (charged !== null && !res.headersSent) res.setHeader(this.c.deductedHeader, String(charged));
    this.end.call(res, this.endChunk, this.endEncoding, this.endCallback);
    this.endChunk = this.endEncoding = this.endCallback = undefined;
  }
}

function meteredWrite(this: MeteredResponse, chunk?: unknown, encoding?: unknown): boolean {
  const m = this[METERED] as NodeMetered;
  m.parts = true;
  // eslint-disable-next-line prefer-rest-params
  const ok = m.write.apply(this, arguments as unknown as unknown[]);
  if (m.c.llm !== null && !m.session.settled) m.read(chunk, encoding);
  return ok;
}

function meteredEnd(this: MeteredResponse, chunk?: unknown, encoding?: unknown, cb?: unknown): ServerResponse {
  const m = this[METERED] as NodeMetered;
  const session = m.session;
  // eslint-disable-next-line prefer-rest-params
  if (session.settled) return m.end.apply(this, arguments as unknown as Parameters<End>);
  if (m.c.llm !== null) {
    if (m.parts || this.headersSent) {
      m.read(chunk, encoding);
      // eslint-disable-next-line prefer-rest-params
      return m.end.apply(this, arguments as unknown as Parameters<End>); // settled when the response closes
    }
    // The whole body in one end: its usage now, the header set.
    m.read(chunk, encoding);
    const reading = m.reading === null ? NO_BODY : m.reading.end();
    m.reading = null;
    m.endAfterSettling(m.c.settleReading(session, reading, this.statusCode), chunk, encoding, cb);
    return this;
  }
  // The usage of the body: only with a `usageKey` and when the handler recorded none.
  const amount = m.c.usagePath !== null && session.usages.length === 0 && !m.parts ? m.c.usageOfBody(this, chunk) : undefined;
  if (m.parts || this.headersSent) {
    m.pending = amount; // committed when the response closes; the header is gone already
    // eslint-disable-next-line prefer-rest-params
    return m.end.apply(this, arguments as unknown as Parameters<End>);
  }
  m.endAfterSettling(this.statusCode >= 500 ? session.release("error") : session.commit(amount), chunk, encoding, cb);
  return this;
}

/** The response is done (finished, or its client went away): settle whatever is not settled yet. */
function onMeteredClose(this: MeteredResponse): void {
  const m = this[METERED];
  if (m === undefined || m.session.settled) return;
  const session = m.session;
  if (m.c.llm !== null && m.reading !== null) {
    // An LLM response that was written: billed from its usage, or as a cut stream.
    void m.settle(m.c.settleReading(session, this.writableFinished ? m.reading.end() : m.reading.cut(), this.statusCode));
  } else if (!this.writableFinished) void m.settle(session.release("aborted"));
  else if (m.c.llm !== null) void m.settle(m.c.settleReading(session, NO_BODY, this.statusCode));
  else void m.settle(this.statusCode >= 500 ? session.release("error") : session.commit(m.pending));
}

/** The content type a node response set, if it is readable (after `writeHead(status, headers)` it may not be). */
function typeHeader(res: ServerResponse): string | undefined {
  const type = res.getHeader("content-type");
  return type === undefined ? undefined : String(type);
}

/** Writes a Fetch `Response` built by the error helpers (401, 400, 402, 5xx) to a node response. */
function reply(res: ServerResponse, response: Response): void {
  res.statusCode = response.status;
  for (const [k, v] of response.headers) res.setHeader(k, v);
  void response.text().then((text) => res.end(text));
}

/**
 * Metering for node:http and Express (and anything that hands over `req, res, next`): holds the
 * estimate, calls `next()` inside the usage context, and settles when the response ends:
 * - `res.end(body)` with headers not yet sent (Express `res.json()`/`res.send()`, node `res.end()`):
 *   the end waits for the commit, so `X-Credits-Deducted` is set; usage is the recorded usage, else
 *   the `usageKey` of a JSON body;
 * - a response written in parts (`res.write`, SSE, `res.writeHead` first, Fastify): headers are out
 *   already, so the commit happens when the response is done and the figure goes to `onSettled` and
 *   `res.locals.creditsDeducted` (Express);
 * - status >= 500 releases; so does a client that disconnects before the response finished (one
 *   already gone when the hold is placed: released at once, `next()` is not called).
 * 401 without identity, 402 when the hold cannot be placed, 400 for a malformed estimate header.
 */
export function creditMeteringMiddleware(options: CreditMeteringMiddlewareOptions) {
  const c = common(options);
  const estimateHeader = c.estimateHeaderName;

  /** The hold is placed: intercept the end of the response and run the rest of the chain. */
  const start = (req: IncomingMessage, res: MeteredResponse, next: Next, session: MeterSession): void => {
    try {
      const locals = (res as { locals?: Partial<MeteringLocals> }).locals;
      if (res.destroyed || res.writableEnded) {
        // The client left (or the response ended) while it was authenticated or the hold placed:
        // "close" has fired already, so release now and run nothing.
        void c.settle(req, session, session.release("aborted"), locals);
        return;
      }
      if (locals) {
        locals.creditReservationId = session.reservationId;
        locals.creditEstimate = session.estimate;
      }
      res[METERED] = new NodeMetered(c, req, res, session, locals, res.write as unknown as Write, res.end as unknown as End);
      res.write = meteredWrite as unknown as typeof res.write;
      res.end = meteredEnd as unknown as typeof res.end;
      res.on("close", onMeteredClose);
      session.run(next);
    } catch (error) {
      next(error instanceof Error ? error : new Error(String(error)));
    }
  };

  /** Who pays and how much to hold; then place the hold. */
  const proceed = (req: IncomingMessage, res: ServerResponse, next: Next, path: string, found: Identity | null | undefined): void => {
    let userId: string;
    let estimate: number;
    try {
      const identity = c.identityOf(found, headerOf(req, "x-user-id"));
      if (identity === null) return reply(res, json(401, errorBody("UNAUTHORIZED", "Authentication required.")));
      userId = identity.userId;
      estimate = c.estimate(headerOf(req, estimateHeader));
    } catch (error) {
      return reply(res, errorResponse(error));
    }
    c.credits.openMeter(userId, c.meterOptions(estimate, req.method, path)).then(
      (session) => start(req, res, next, session),
      (error: unknown) => reply(res, errorResponse(error)),
    );
  };

  return (req: IncomingMessage, res: ServerResponse, next: Next): void => {
    const target = (req as { originalUrl?: string }).originalUrl ?? req.url ?? "/";
    const q = target.indexOf("?");
    const path = q === -1 ? target : target.slice(0, q);
    if (!c.applies(path, c.routerFor(req))) {
      next();
      return;
    }
    let found: ReturnType<NonNullable<typeof options.authenticate>> | null;
    try {
      found = options.authenticate ? options.authenticate(req) : null;
    } catch (error) {
      return reply(res, errorResponse(error));
    }
    if (isPromiseLike(found)) {
      (found as PromiseLike<Identity | null | undefined>).then(
        (identity) => proceed(req, res, next, path, identity),
        (error: unknown) => reply(res, errorResponse(error)),
      );
    } else proceed(req, res, next, path, found as Identity | null | undefined);
  };
}

/** A request header by its lower-case name. */
function headerOf(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
