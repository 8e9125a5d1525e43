import * as z from "zod/mini";
import type { CreditManager } from "../manager.js";
import {
  ConfigurationError,
  CreditError,
  OutcomeUnknownError,
  SpendLimitError,
  ValidationError,
} from "../core/errors.js";
import type { CreditErrorCode } from "../errors.js";
import { clockTimes } from "../core/domain/limits.js";
import { textResponse } from "./text-response.js";
import { IdempotencyKey, parse, SpenderId, UserId as IdentityUserId } from "../core/models/index.js";
import { claimsCustomerAudience, type CustomerGrant } from "../modules/customer-tokens/service.js";
import type { TokenBuckets } from "./rate-limit.js";

/** Who is calling, as the host's `authenticate` hook says. @public */
export interface Identity {
  /** The caller's own account. */
  userId: string;
  /** Admins may call admin routes and act on any account. */
  admin?: boolean;
  /**
   * Set for a customer token (`credits.customerToken`, docs/usage.md "For your customers"): only
   * the routes marked `customer` answer it (the account's balance, grants and usage); `spender`
   * narrows the usage to that spender's.
   */
  customer?: { spender?: string };
  /**
   * Who spends (docs/teams-and-limits.md, "Over HTTP"): a member or an API key of the account. The
   * caller's spends on the user routes are recorded under it and its limits apply; it cannot name
   * another spender. Omitted: its spends name none. 1–255 printable characters.
   */
  spender?: string;
}

/** The host's identity hook: the caller, or null (→ 401). @public */
export type Authenticate = (request: Request) => Identity | null | undefined | Promise<Identity | null | undefined>;

/** A route's HTTP method. @public */
export type HttpMethod = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

/** What a route handler gets. @public */
export interface RouteContext {
  /** The request. */
  request: Request;
  /** The request's URL. */
  url: URL;
  /** Decoded path parameters (`:id` → `params.id`). */
  params: Record<string, string>;
  /** The caller; null only on public routes. */
  identity: Identity | null;
  /** The manager the handler serves. */
  manager: CreditManager;
  /** The `Idempotency-Key` header or the body's `idempotencyKey` (they must agree). */
  idempotencyKey: string | undefined;
  /** The request body's raw bytes, read once (webhook signatures need them untouched). */
  rawBody(): Promise<Uint8Array>;
  /** The JSON body validated by the route's `body` schema ({} when empty). */
  body<T = unknown>(): Promise<T>;
  /** The query string validated by the route's `query` schema. */
  query<T = unknown>(): T;
}

/**
 * One route of the handler. Route groups (credits here; plans, subscriptions, promos, payments
 * later) are arrays of these: the router matches them, checks access, validates body and query
 * with their zod schemas, and the OpenAPI document is rendered from the same definitions.
 * @public
 */
export interface RouteDefinition {
  /** The route's HTTP method. */
  method: HttpMethod;
  /**
   * Under which base path: `user` (default `/credits`), `admin` (default `/admin/credits`), or
   * `root` (no base: the path as given, e.g. the providers' `/webhooks/:provider`).
   */
  base: "user" | "admin" | "root";
  /** Path below the base, with `:param` segments, e.g. `/reservations/:id/commit`. */
  path: string;
  /** `public`: anyone; `user`: any authenticated caller; `admin`: callers marked admin. */
  access: "public" | "user" | "admin";
  /**
   * A read route a customer token may call (a `user` GET route: balance, grants, usage). Every
   * other route refuses a customer token with 403 (docs/usage.md, "For your customers").
   */
  customer?: boolean;
  /**
   * The tokens a customer token's request to this route takes from its account's rate limit
   * (docs/usage.md, "For your customers"): default 1; a report, whose cost grows with the
   * account's entries, more.
   */
  rateCost?: number;
  /** The route's operation id in the OpenAPI document. */
  operationId: string;
  /** The route's summary in the OpenAPI document. */
  summary: string;
  /** The route's description in the OpenAPI document. */
  description?: string;
  /** The route's tags in the OpenAPI document. */
  tags?: string[];
  /**
   * JSON body schema (validated; 400 with field issues). A POST, PUT, PATCH or DELETE route without
   * one takes no body: an empty one, or the JSON `{}` (415 for another media type, 400 for any
   * field), unless it sets `rawBody`. Unless the route is public or the handler's `csrfProtection`
   * is off, such a request must be typed `application/json` even when its body is empty (415).
   */
  body?: z.core.$ZodType;
  /**
   * The route reads the request body itself through `ctx.rawBody()` (a webhook checking a signature
   * over the bytes): without a `body` schema, the router then leaves the body alone. Unless the
   * route is public, `csrfProtection` still refuses (415) a mutation with no Content-Type,
   * `text/plain` or a form type; check the type you expect yourself.
   */
  rawBody?: boolean;
  /** Query schema, a zod object whose values are parsed from strings (validated; 400). */
  query?: z.core.$ZodObject;
  /** Whether the operation takes an `Idempotency-Key` header. */
  idempotent?: boolean;
  /**
   * The media type of a route that answers with its own `Response` rather than JSON (`text/csv`),
   * for the OpenAPI document.
   */
  responseType?: string;
  /** Success status (default 200) and response schema, for the OpenAPI document. */
  status?: number;
  /** The route's answer in the OpenAPI document. */
  response?: z.core.$ZodType;
  /** Error statuses this route can answer besides 400/401/500, for the OpenAPI document. */
  errors?: number[];
  /** Returns a Response, or a value sent as JSON with `status`. */
  handle(ctx: RouteContext): Promise<unknown> | unknown;
}

/** An error answered with its own status and a `{ error: { code, message, details? } }` body. @public */
export class HttpError extends CreditError<CreditErrorCode> {
  /** An error answered with `status` and a JSON body of `code` and `message`. */
  constructor(
    status: number,
    code: CreditErrorCode,
    message: string,
    details?: Record<string, unknown>,
    /** Headers of the answer (`Retry-After`, …). */
    readonly headers?: Record<string, string>,
  ) {
    super(code, status, message, details === undefined ? undefined : { details });
  }
}

const JSON_HEADERS = { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" };

/**
 * @internal A JSON answer before it is a `Response`: status, headers (lower-case names) and the text
 * (null for a 204). The router's own answers (a route's value, an error) are built as this; the
 * Fetch handler makes each a `Response`, while on node (`toNodeHandler`, `serve`) it is written as
 * it is, in one `res.end` with a `Content-Length` and no `Response` built (docs/benchmarks.md,
 * "HTTP metering", the credit API).
 */
export class JsonAnswer {
  constructor(
    readonly status: number,
    /** Its own object: a host may add a header before it is written (serve's CORS headers). */
    readonly headers: Record<string, string>,
    readonly text: string | null,
  ) {}

  /** The answer as a Fetch `Response` (one that `sendResponse` still writes in one `res.end`). */
  toResponse(): Response {
    const init = { status: this.status, headers: this.headers };
    return this.text === null ? new Response(null, init) : textResponse(this.text, init);
  }
}

/**
 * @internal Where `createCreditHandler` keeps its answer before it is a `Response`
 * (`(request) => Promise<Response | JsonAnswer>`): the node glue calls it instead of the handler.
 */
export const ANSWER: unique symbol = Symbol("credit-management.answer");

/**
 * @internal A request's own way to its body, without a web stream (the stand-in of
 * src/http/node-request.ts): `(limit) => Promise<bytes>`, or null to read `request.body`.
 */
export const RAW_BODY: unique symbol = Symbol("credit-management.rawBody");

/** A handler that may offer its answers before they are `Response`s (see `ANSWER`). */
export type Answering = { [ANSWER]?: (request: Request) => Promise<Response | JsonAnswer> };

/** @internal A JSON answer of `status` with `body` (none for 204) and the JSON headers plus `headers`. */
export function jsonAnswer(status: number, body: unknown, headers?: Record<string, string>): JsonAnswer {
  const all: Record<string, string> = { ...JSON_HEADERS };
  // Lower-case names, so a header given in another case replaces the default rather than repeats it.
  if (headers !== undefined) for (const name of Object.keys(headers)) all[name.toLowerCase()] = headers[name] as string;
  return new JsonAnswer(status, all, status === 204 ? null : JSON.stringify(body));
}

/**
 * A JSON answer as a `Response`. Built with `textResponse`, so on node (`toNodeHandler`) it goes out
 * in one write with a `Content-Length` rather than streamed back through its body.
 * @public
 */
export function json(status: number, body: unknown, headers?: Record<string, string>): Response {
  return jsonAnswer(status, body, headers).toResponse();
}

export function errorBody(code: string, message: string, details?: Record<string, unknown>) {
  return { error: details === undefined ? { code, message } : { code, message, details } };
}

/**
 * Maps an error to its response: `HttpError` and `CreditError` by their own status; anything else
 * is a 500 that says nothing about its cause (the host's `onError` gets the error). 5xx messages
 * are generic too: store or configuration trouble is the operator's business, not the caller's.
 */
export function errorResponse(error: unknown): Response {
  return errorAnswer(error).toResponse();
}

/** @internal `errorResponse` before it is a `Response` (see `JsonAnswer`). */
export function errorAnswer(error: unknown): JsonAnswer {
  if (error instanceof HttpError)
    return jsonAnswer(error.status, errorBody(error.code, error.message, error.details), error.headers);
  if (error instanceof CreditError) {
    // The caller must learn that its change may be applied, and by what to find out (its own ids
    // and key): docs/http.md, "Errors".
    if (error instanceof OutcomeUnknownError)
      return jsonAnswer(
        error.status,
        errorBody(
          error.code,
          "The store lost the connection after the change was sent: it may or may not be applied. Retry with the same Idempotency-Key to learn the outcome (it applies once), or look for details.entryIds in the account's history.",
          error.details,
        ),
      );
    if (error.status >= 500)
      return jsonAnswer(error.status, errorBody(error.code, "The credit store is unavailable or misconfigured."));
    if (error instanceof SpendLimitError) {
      // When the limit's window resets, as a retry hint (docs/teams-and-limits.md, "Over HTTP").
      const retry = retryAfter(error.details?.resetsAt, clockTimes.get(error));
      if (retry !== null)
        return jsonAnswer(error.status, errorBody(error.code, error.message, error.details), { "Retry-After": retry });
    }
    return jsonAnswer(error.status, errorBody(error.code, error.message, error.details));
  }
  return jsonAnswer(500, errorBody("INTERNAL_ERROR", "Internal error."));
}

/**
 * Whole seconds from `now` until `resetsAt` (ISO), at least 1; null when it is not a date. `now`:
 * when the manager refused, by its clock (`clockTimes`), so a manager with its own `clock` gives
 * a hint on it; the host's clock for a refusal made elsewhere.
 */
function retryAfter(resetsAt: unknown, now = Date.now()): string | null {
  const at = typeof resetsAt === "string" ? Date.parse(resetsAt) : NaN;
  if (!Number.isFinite(at)) return null;
  return String(Math.max(1, Math.ceil((at - now) / 1000)));
}

interface Compiled {
  def: RouteDefinition;
  segments: string[];
  fullPath: string;
}

export interface RouterOptions {
  basePath: string;
  adminBasePath: string;
  authenticate: Authenticate | undefined;
  trustUserIdHeader: boolean;
  maxBodyBytes: number;
  onError: ((error: unknown, request: Request) => void) | undefined;
  /**
   * Checks a customer token (`credits.verifyCustomerToken`); unset: customer tokens are off and a
   * token claiming to be one goes to `authenticate` like any other.
   */
  customerTokens?: ((token: string) => Promise<CustomerGrant | null>) | undefined;
  /**
   * The customer tokens' rate limit, a bucket per account (docs/usage.md, "For your customers"):
   * each request a customer token makes to a route it may call takes a token; unset: no limit.
   */
  customerRateLimit?: TokenBuckets | undefined;
  /**
   * Refuse (415) mutations on routes that need identity unless they are typed as JSON, even with
   * an empty body (a `rawBody` route: any type but none, `text/plain` and the form types). Default
   * true in `createCreditHandler`.
   */
  csrfProtection?: boolean;
}

const normalize = (p: string) => {
  const s = `/${p}`.replace(/\/+/g, "/").replace(/\/$/, "");
  return s === "" ? "/" : s;
};

export const fullPathOf = (def: RouteDefinition, o: Pick<RouterOptions, "basePath" | "adminBasePath">) =>
  normalize(`${def.base === "admin" ? o.adminBasePath : def.base === "root" ? "" : o.basePath}/${def.path}`);

/** Matches requests against the route table, checks access, and turns errors into responses. */
export function createRouter(manager: CreditManager, routes: readonly RouteDefinition[], options: RouterOptions) {
  const compiled: Compiled[] = routes.map((def) => {
    const fullPath = fullPathOf(def, options);
    return { def, fullPath, segments: fullPath.split("/").slice(1) };
  });
  const seen = new Set<string>();
  for (const c of compiled) {
    const key = `${c.def.method} ${c.segments.map((s) => (s.startsWith(":") ? ":" : s)).join("/")}`;
    if (seen.has(key))
      throw new ConfigurationError(`[credit-management] [http] two routes for ${c.def.method} ${c.fullPath}`);
    seen.add(key);
  }
  // Root routes add their first segment (`/webhooks`), so a node adapter passes those requests on.
  const rootBases = compiled.filter((c) => c.def.base === "root").map((c) => `/${c.segments[0] ?? ""}`);
  const bases = [...new Set([normalize(options.basePath), normalize(options.adminBasePath), ...rootBases])];

  const match = (method: string, parts: string[]) => {
    let pathMatched = false;
    const allow = new Set<string>();
    for (const c of compiled) {
      if (c.segments.length !== parts.length) continue;
      const params: Record<string, string> = {};
      let ok = true;
      for (let i = 0; i < parts.length; i++) {
        const seg = c.segments[i] as string;
        const part = parts[i] as string;
        if (seg.startsWith(":")) {
          if (part === "") {
            ok = false;
            break;
          }
          params[seg.slice(1)] = part;
        } else if (seg !== part) {
          ok = false;
          break;
        }
      }
      if (!ok) continue;
      pathMatched = true;
      allow.add(c.def.method);
      if (c.def.method === method) return { route: c, params, allow };
    }
    return { route: null, params: {}, allow: pathMatched ? allow : null };
  };

  async function identify(request: Request): Promise<Identity | null> {
    if (options.customerTokens !== undefined) {
      const m = /^Bearer ([!-~]{1,8192})$/i.exec(request.headers.get("authorization")?.trim() ?? "");
      // A token that says it is a customer token is checked as one only: one that fails is refused,
      // never handed to `authenticate` (docs/usage.md, "For your customers").
      if (m !== null && claimsCustomerAudience(m[1] as string)) {
        const grant = await options.customerTokens(m[1] as string);
        if (grant === null) return null;
        return {
          userId: grant.account,
          admin: false,
          customer: grant.spender === undefined ? {} : { spender: grant.spender },
        };
      }
    }
    const found = options.authenticate ? await options.authenticate(request) : null;
    if (found) {
      const identity: Identity = {
        userId: parse(IdentityUserId, found.userId, "identity.userId"),
        admin: found.customer === undefined && found.admin === true,
      };
      if (found.customer !== undefined) identity.customer = found.customer;
      if (found.spender !== undefined && found.spender !== null)
        identity.spender = parse(SpenderId, found.spender, "identity.spender");
      return identity;
    }
    if (options.trustUserIdHeader) {
      const header = request.headers.get("x-user-id");
      if (header !== null && header !== "") return { userId: parse(IdentityUserId, header, "X-User-Id"), admin: false };
    }
    return null;
  }

  /** The answer to `request` as a `Response` (the Fetch handler). */
  async function handle(request: Request): Promise<Response> {
    const out = await answer(request);
    return out instanceof JsonAnswer ? out.toResponse() : out;
  }

  /** The answer to `request`: a route's own `Response`, or a `JsonAnswer` (a value, an error). */
  async function answer(request: Request): Promise<Response | JsonAnswer> {
    let url: URL;
    try {
      url = new URL(request.url);
    } catch {
      return jsonAnswer(400, errorBody("VALIDATION_ERROR", "Invalid request URL."));
    }
    const path = normalize(url.pathname);
    try {
      let parts: string[];
      try {
        parts = path.split("/").slice(1).map(decodeURIComponent);
      } catch {
        throw new HttpError(400, "VALIDATION_ERROR", "The path is not valid percent-encoding.");
      }
      const method = request.method.toUpperCase() === "HEAD" ? "GET" : request.method.toUpperCase();
      const { route, params, allow } = match(method, parts);
      if (route === null) {
        if (allow !== null) {
          throw new HttpError(405, "METHOD_NOT_ALLOWED", `${method} is not allowed on ${path}.`, undefined, {
            allow: [...allow].join(", "),
          });
        }
        throw new HttpError(404, "NOT_FOUND", `No route for ${method} ${path}.`);
      }
      const def = route.def;
      let identity: Identity | null = null;
      if (def.access !== "public") {
        identity = await identify(request);
        if (identity === null) throw new HttpError(401, "UNAUTHORIZED", "Authentication required.");
        if (def.access === "admin" && !identity.admin) throw new HttpError(403, "FORBIDDEN", "Admin only.");
        if (identity.customer !== undefined && def.customer !== true)
          throw new HttpError(403, "FORBIDDEN", "A customer token reads its account's balance, grants and usage only.");
        if (identity.customer !== undefined && options.customerRateLimit !== undefined) {
          // Per account, not per token: a host issues a fresh token each time it shows the page.
          const wait = options.customerRateLimit.tryTake(identity.userId, def.rateCost ?? 1);
          if (wait > 0) {
            throw new HttpError(
              429,
              "RATE_LIMITED",
              "Too many requests with this account's customer tokens: try again later.",
              { retryAfterSeconds: wait },
              { "retry-after": String(wait) },
            );
          }
        }
      }
      // A browser sends a POST cross-site, with the victim's cookies, without asking the server
      // first when it has no Content-Type or a "simple" one (text/plain, a form); a JSON type needs
      // a CORS preflight. So a mutation that acts on the caller's account must be typed, even when
      // its body is empty or optional (commit, release, resume). PUT/PATCH/DELETE too: a host's
      // method override (`?_method=DELETE`) can turn a form POST into one.
      if (options.csrfProtection !== false && def.access !== "public" && isMutation(method)) {
        refuseCrossSiteForm(def, request.headers.get("content-type"));
      }
      const ctx = context(request, url, params, identity, def, method);
      const headerKey = request.headers.get("idempotency-key");
      if (headerKey !== null) ctx.idempotencyKey = parse(IdempotencyKey, headerKey, "Idempotency-Key");
      // A mutation that declares no body takes none: refused before it runs (a text/plain POST is a
      // form a browser sends cross-site without asking), not silently ignored.
      if (takesNoBody(def, method)) await ctx.body();
      // Every route checks its query string, one that takes none too: `?userId=bob` on a route that
      // acts on the caller must be refused, not ignored.
      ctx.query();
      const result = await def.handle(ctx);
      return result instanceof Response ? result : jsonAnswer(def.status ?? 200, result);
    } catch (error) {
      if (!(error instanceof HttpError) && !(error instanceof CreditError && error.status < 500)) {
        try {
          options.onError?.(error, request);
        } catch {
          // the host's logger failing must not change the answer
        }
      }
      return errorAnswer(error);
    }
  }

  function context(
    request: Request,
    url: URL,
    params: Record<string, string>,
    identity: Identity | null,
    def: RouteDefinition,
    method: string,
  ): RouteContext {
    let raw: Promise<Uint8Array> | null = null;
    let parsedQuery: unknown;
    let parsedBody: Promise<unknown> | null = null;
    const ctx: RouteContext = {
      request,
      url,
      params,
      identity,
      manager,
      idempotencyKey: undefined,
      rawBody() {
        raw ??= readBody(request, options.maxBodyBytes);
        return raw;
      },
      body<T>() {
        parsedBody ??= (async () => {
          const bytes = await ctx.rawBody();
          let value: unknown = {};
          if (bytes.byteLength > 0) {
            const type = request.headers.get("content-type") ?? "";
            if (type !== "" && !JSON_TYPE.test(type)) {
              throw new HttpError(415, "UNSUPPORTED_MEDIA_TYPE", "Send the body as application/json.");
            }
            try {
              value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
            } catch {
              throw new ValidationError("Invalid body: not valid JSON", [{ path: "", message: "not valid JSON" }]);
            }
          }
          const schema = def.body ?? (takesNoBody(def, method) ? NoBody : undefined);
          const out = schema ? parse(schema as Parser, value, "body") : value;
          if (out !== null && typeof out === "object" && "idempotencyKey" in out) {
            const k = (out as { idempotencyKey?: string }).idempotencyKey;
            if (k !== undefined && ctx.idempotencyKey !== undefined && k !== ctx.idempotencyKey) {
              throw new ValidationError("Invalid body.idempotencyKey: differs from the Idempotency-Key header", [
                { path: "idempotencyKey", message: "differs from the Idempotency-Key header" },
              ]);
            }
            if (k !== undefined) ctx.idempotencyKey = k;
          }
          return out;
        })();
        return parsedBody as Promise<T>;
      },
      query<T>() {
        const schema = def.query ?? NoQuery;
        parsedQuery ??= parse(schema as Parser, queryObject(url.searchParams, schema), "query");
        return parsedQuery as T;
      },
    };
    return ctx;
  }

  return { handle, answer, bases, routes: compiled.map((c) => ({ ...c.def, fullPath: c.fullPath })) };
}

const isMutation = (method: string) =>
  method === "POST" || method === "PUT" || method === "PATCH" || method === "DELETE";

const JSON_TYPE = /^application\/([\w.+-]*\+)?json\b/i;

/** The media types (and none) a browser sends cross-site without a CORS preflight. */
const SIMPLE_TYPE = /^\s*(text\/plain|application\/x-www-form-urlencoded|multipart\/form-data)\s*(;|$)/i;

/**
 * 415 for a mutation a browser could have sent cross-site without a preflight: the route's body is
 * JSON, so its type must say so (an empty body too); a `rawBody` route takes its own types, but
 * not none nor a "simple" one.
 */
function refuseCrossSiteForm(def: RouteDefinition, type: string | null): void {
  if (def.rawBody === true && def.body === undefined) {
    if (type !== null && type.trim() !== "" && !SIMPLE_TYPE.test(type)) return;
    throw new HttpError(
      415,
      "UNSUPPORTED_MEDIA_TYPE",
      "Send this request with a Content-Type header that is not text/plain or a form type.",
      {
        contentType: "not text/plain, application/x-www-form-urlencoded or multipart/form-data",
      },
    );
  }
  if (type !== null && JSON_TYPE.test(type)) return;
  throw new HttpError(
    415,
    "UNSUPPORTED_MEDIA_TYPE",
    "Send POST, PUT, PATCH and DELETE requests with Content-Type: application/json, also when the body is empty.",
    { contentType: "application/json" },
  );
}

/** A route's schema as `parse` takes it: zod's and zod/mini's schemas both have `safeParse`. */
type Parser = z.core.$ZodType & { safeParse(value: unknown): z.core.util.SafeParseResult<unknown> };

/** What a mutation without a `body` schema accepts: nothing, or `{}`. */
const NoBody = z.strictObject({});
const NoQuery = z.strictObject({});

const takesNoBody = (def: RouteDefinition, method: string) =>
  def.body === undefined && def.rawBody !== true && isMutation(method);

/** Reads the body up to `limit` bytes (413 beyond). */
async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const direct = (request as Request & { [RAW_BODY]?: (limit: number) => Promise<Uint8Array> | null })[RAW_BODY]?.(
    limit,
  );
  if (direct != null) return direct;
  if (request.body === null) return new Uint8Array(0);
  const declared = Number(request.headers.get("content-length") ?? "NaN");
  if (declared > limit) throw tooLarge(limit);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      // Cancelling a stream that already failed or closed rejects: nothing is left to read either way.
      await reader.cancel().catch(() => undefined);
      throw tooLarge(limit);
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

/** @internal The 413 of a body past `limit` bytes. */
export const tooLarge = (limit: number) =>
  new HttpError(413, "PAYLOAD_TOO_LARGE", `The body is larger than ${limit} bytes.`, { limit });

/**
 * Turns a query string into the object a query schema expects: repeated or comma-separated values
 * for array fields, numbers and booleans where the schema wants them (anything else stays a string
 * for zod to refuse with a field-level message).
 */
function queryObject(params: URLSearchParams, schema: z.core.$ZodObject): Record<string, unknown> {
  // No prototype: `?__proto__=x` is a key like any other (refused as unknown), not a setter.
  const out = Object.create(null) as Record<string, unknown>;
  const shape = schema._zod.def.shape as Record<string, z.core.$ZodType>;
  for (const key of new Set(params.keys())) {
    const all = params.getAll(key);
    // Own fields only: `?constructor=1` or `?toString=1` must not find Object.prototype's.
    const kind = baseType(Object.hasOwn(shape, key) ? shape[key] : undefined);
    if (kind === "array") out[key] = all.flatMap((v) => v.split(",")).filter((v) => v !== "");
    else {
      const v = all[all.length - 1] as string;
      if (kind === "number" && /^-?\d+(\.\d+)?$/.test(v)) out[key] = Number(v);
      else if (kind === "boolean" && (v === "true" || v === "false")) out[key] = v === "true";
      else out[key] = v;
    }
  }
  return out;
}

function baseType(schema: z.core.$ZodType | undefined): string | undefined {
  let s = schema as { _zod: { def: { type: string; innerType?: unknown } } } | undefined;
  while (s && (s._zod.def.type === "optional" || s._zod.def.type === "nullable" || s._zod.def.type === "default")) {
    s = s._zod.def.innerType as typeof s;
  }
  return s?._zod.def.type;
}
