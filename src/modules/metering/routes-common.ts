import type { IncomingMessage } from "node:http";
import { ConfigurationError, ValidationError } from "../../core/errors.js";
import { FeatureName, SpenderId, UserId, parse } from "../../models-entry.js";
import type { CreditService } from "../../credit-service.js";
import type { MeterOptions } from "../../models-entry.js";
import { isMeterLease, type MeterOutcome, type MeterSession } from "./service.js";
import type { CreditLeases } from "../leases/service.js";
import { recordOf } from "../pricing/service.js";
import { usageOfText, type LlmUsage, type ResponseUsageReader, type UsageReading } from "../pricing/rules-llm-usage.js";
import type { RecordedUsage } from "../../models-entry.js";
import { errorBody, errorResponse, json, type Identity } from "../../http/router.js";
import { meteringOf } from "./module.js";
import { pathMatcher } from "./routes-paths.js";
import { fixedPrice, PricedRequest, reportTo, settleFailed, type MeterSpend } from "./routes-fixed-price.js";

/** Options shared by `creditMetering` (Fetch) and `creditMeteringMiddleware` (node:http, Express). @public */
export interface MeteringOptionsBase<Req> {
  /** `manager.credits`. */
  credits: Pick<CreditService, "openMeter"> &
    Partial<Pick<CreditService, "deductCreditsAfterService" | "getUserCreditsInfo" | "getLimits">>;
  /**
   * Fixed-price metering (docs/metering.md, "Fixed-price endpoints"): every metered request costs
   * this many credits (or what the function answers for the request, a non-negative integer), taken
   * by one deduction after the handler succeeded (status < 400, response not aborted) — no hold,
   * and never on a failed or aborted request. Before the handler runs the account must have
   * `available >= price`, else 402 and the handler does not run. The estimate options are not
   * read; `recordUsage()` is not available below (there is no metered call).
   */
  price?: number | ((request: Req) => number | Promise<number>);
  /**
   * Metering through credit leases (`manager.credits.leases(...)`, docs/metering.md, "Leases").
   * With `price`: a request the user's block covers is checked and charged in memory, settled with
   * its window; otherwise the check reads the account and the charge takes the lease's exact path
   * (an after-service deduction when that refuses); a request with an `Idempotency-Key` is charged
   * exactly. Without `price` (estimate, then usage): the estimate is held inside the user's block
   * in memory and the usage charged from it; when the block does not cover the estimate, the
   * request places a hold in the store as without a lease (and the block is opened or rolled for
   * the next ones); usage beyond what the block still covers is an after-service deduction.
   * The routes use only what metering needs of it (`MeterLease`, ./service.ts).
   */
  lease?: CreditLeases;
  /**
   * Who spends (docs/teams-and-limits.md, docs/metering.md "Spenders and features"): a spender id,
   * or a function of the request answering one (or undefined: none). Default: the identity's
   * `spender` (`authenticate` may return one). The hold, its commit, a leased charge and an
   * after-service charge name it, so its spend limits apply (refused: 429 `SPEND_LIMIT_EXCEEDED`
   * with `Retry-After`) and the scoped grants it may use pay.
   */
  spender?: string | ((request: Req) => string | undefined);
  /** What the request spends on (a feature name), or a function of the request answering one (undefined: none). */
  feature?: string | ((request: Req) => string | undefined);
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
  /**
   * Header with the client's estimate, in credits. Default `X-Estimated-Credits`, with the
   * deprecated `X-Estimated-Tokens` read when it is absent (docs/metering.md). Set, only this
   * header is read.
   */
  estimateHeader?: string;
  /** Estimate when the header is absent. Default 100. */
  defaultEstimate?: number;
  /** Largest hold one request may place; larger estimates are capped. Default 100,000. */
  maxEstimate?: number;
  /**
   * Holds what is there (docs/metering.md, "A hold for what is there"): a request whose estimate
   * is more than the user may spend now (for its spender and feature, within their limits) holds
   * what they may spend, down to this many credits (a smaller estimate is held whole); below it the
   * request is refused (402, or 429 for a limit) and the handler does not run. The handler reads
   * what is held from `currentMeter().estimate` (and Express's `res.locals.creditEstimate`), e.g.
   * to cap an LLM call's output. Default: none (the estimate is held whole, or refused).
   */
  minEstimate?: number;
  /** Hold TTL in seconds (long enough for the slowest stream). Default: the manager's default. */
  ttlSeconds?: number;
  /**
   * Dotted key of the usage in a JSON response, e.g. `usage.total_tokens` (OpenAI style), used
   * when the handler recorded no usage. Without it and without recorded usage, the hold is released.
   */
  usageKey?: string;
  /** Response header with the credits charged. Default `X-Credits-Deducted`. Written in lower case (`x-credits-deducted`). */
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

/** The `llm` option of the metering middlewares (docs/llm-metering.md). @public */
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

/** Options of `creditMetering()` (Fetch handlers). @public */
export type CreditMeteringOptions = MeteringOptionsBase<Request>;
/** Options of `creditMeteringMiddleware()` (node:http and Express). @public */
export type CreditMeteringMiddlewareOptions = MeteringOptionsBase<IncomingMessage>;

/** What a node middleware leaves on `res.locals` (Express) for the handler and later middleware. @public */
export interface MeteringLocals {
  /** The hold of this request. */
  creditReservationId: string;
  /** The credits held for the request. */
  creditEstimate: number;
  /** Credits charged, once settled. */
  creditsDeducted?: number;
}

/** @internal What every metering middleware shares (Fetch, node, the Fastify plugin). */
export function common<Req>(o: MeteringOptionsBase<Req>) {
  if (!o || typeof o.credits?.openMeter !== "function") {
    throw new ConfigurationError("[credit-management] [metering] `credits` (manager.credits) is required.");
  }
  if (o.authenticate === undefined && o.trustUserIdHeader !== true) {
    throw new ConfigurationError(
      "[credit-management] [metering] an `authenticate` hook (or `trustUserIdHeader: true`) is required.",
    );
  }
  const { applies, routerFor } = pathMatcher(o);
  const defaultEstimate = o.defaultEstimate ?? 100;
  const maxEstimate = o.maxEstimate ?? 100_000;
  if (!Number.isSafeInteger(defaultEstimate) || defaultEstimate < 1)
    throw new ConfigurationError("defaultEstimate must be a positive integer");
  if (!Number.isSafeInteger(maxEstimate) || maxEstimate < 1)
    throw new ConfigurationError("maxEstimate must be a positive integer");
  const minEstimate = o.minEstimate;
  if (minEstimate !== undefined && (!Number.isSafeInteger(minEstimate) || minEstimate < 1))
    throw new ConfigurationError("minEstimate must be a positive integer");
  /** The estimate headers, in the order they are read: the first one present is the estimate. */
  const headers = o.estimateHeader !== undefined ? [o.estimateHeader] : ["X-Estimated-Credits", "X-Estimated-Tokens"];
  // In lower case, as Fetch's Headers and Fastify write every name: node's setHeader then keys it
  // as given instead of lower-casing a copy per response (header names are case-insensitive).
  const deductedHeader = o.deductedHeader === undefined ? "x-credits-deducted" : o.deductedHeader.toLowerCase();
  const usagePath = o.usageKey ? o.usageKey.split(".") : null;
  const llm = llmOptions(o.llm);

  /**
   * The estimate from the first estimate header present (a positive integer), else the default;
   * capped. `headerOf` reads a request header by its lower-case name.
   */
  const estimate = (headerOf: (lowerCaseName: string) => string | null | undefined): number => {
    for (const name of headers) {
      const value = headerOf(name.toLowerCase());
      if (value === null || value === undefined || value === "") continue;
      if (!/^\d{1,16}$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
        throw new ValidationError(`Invalid ${name}: must be a positive integer`, [
          { path: name.toLowerCase(), message: "must be a positive integer" },
        ]);
      }
      return Math.min(Number(value), maxEstimate);
    }
    return Math.min(defaultEstimate, maxEstimate);
  };

  /** Whether the charge of a response depends on its body: `llm`, or a `usageKey` and no usage the handler recorded. */
  const readsBody = (session: MeterSession): boolean =>
    llm !== null || (usagePath !== null && session.usages.length === 0);

  /**
   * The usage a whole body says (the `usageKey` of a JSON body), when the charge reads it: with a
   * `usageKey` and no usage the handler recorded. `type`: the body's content type; unknown (a node
   * response after `writeHead(status, headers)`), a body that starts with `{` is tried as JSON.
   */
  const usageOfBody = (session: MeterSession, body: string | null, type: string | null | undefined) => {
    if (usagePath === null || session.usages.length > 0 || body === null) return undefined;
    if (type === undefined ? !body.trimStart().startsWith("{") : !isJsonType(type)) return undefined;
    let v: unknown;
    try {
      v = JSON.parse(body);
    } catch {
      return undefined;
    }
    for (const k of usagePath) v = v !== null && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined;
    return typeof v === "number" && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  };

  /** The payer: what `authenticate` found, else (when trusted) the `X-User-Id` header, else null. */
  const identityOf = (found: Identity | null | undefined, headerValue: string | null | undefined): Identity | null => {
    if (found) {
      const identity: Identity = {
        userId: parse(UserId, found.userId, "identity.userId"),
        admin: found.admin === true,
      };
      if (found.spender !== undefined) identity.spender = parse(SpenderId, found.spender, "identity.spender");
      return identity;
    }
    if (o.trustUserIdHeader && headerValue) return { userId: parse(UserId, headerValue, "X-User-Id") };
    return null;
  };

  if (o.spender !== undefined && typeof o.spender !== "function") parse(SpenderId, o.spender, "spender");
  if (o.feature !== undefined && typeof o.feature !== "function") parse(FeatureName, o.feature, "feature");
  /** Who spends on what for `req` (the `spender` and `feature` options, the identity's spender); a 400 when a function answers an invalid name. */
  const spendOf = (req: Req, identity: Identity): MeterSpend => {
    const out: MeterSpend = {};
    const spender = typeof o.spender === "function" ? o.spender(req) : (o.spender ?? identity.spender);
    const feature = typeof o.feature === "function" ? o.feature(req) : o.feature;
    if (spender !== undefined) out.spender = parse(SpenderId, spender, "spender");
    if (feature !== undefined) out.feature = parse(FeatureName, feature, "feature");
    return out;
  };

  /** The options of the hold: only the keys that are set. */
  const ttlSeconds = o.ttlSeconds;
  const meterOptions = (estimate: number, reason: string, spend?: MeterSpend): MeterOptions => {
    const out: MeterOptions = { estimate, reason };
    if (minEstimate !== undefined) out.minimum = Math.min(minEstimate, estimate);
    if (ttlSeconds !== undefined) out.ttlSeconds = ttlSeconds;
    if (spend?.spender !== undefined) out.spender = spend.spender;
    if (spend?.feature !== undefined) out.feature = spend.feature;
    return out;
  };

  /**
   * Reports a settled session once: `onSettled`, and the charge on `res.locals` (Express) when
   * there are locals. A failing callback changes nothing.
   */
  const reported = new WeakSet<MeterSession>();
  const report = (req: Req, session: MeterSession, outcome: MeterOutcome, locals?: Partial<MeteringLocals>): void => {
    if (reported.has(session)) return;
    reported.add(session);
    reportTo(o.onSettled, req, outcome, locals);
  };
  /**
   * Settles (or joins the settlement already under way) and reports it once; null if it failed
   * (reported by `settleFailed`: the session returned its hold, or it lapses at its TTL).
   */
  const settle = (req: Req, session: MeterSession, p: Promise<MeterOutcome>, locals?: Partial<MeteringLocals>) =>
    p.then(
      (outcome) => {
        report(req, session, outcome, locals);
        return outcome;
      },
      (error: unknown) => {
        if (reported.has(session)) return null;
        reported.add(session);
        const failed = { userId: session.userId, reservationId: session.reservationId, estimate: session.estimate };
        settleFailed(logger, error, { ...failed, usages: [...session.usages] }, o.onSettled, req, locals);
        return null;
      },
    );

  /** A usage the middleware found (or fell back to) for the response, as priced. */
  const recorded = (
    session: MeterSession,
    usage: LlmUsage,
    source: "response" | "counted",
    problem?: string,
  ): RecordedUsage => {
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
      // Tokens without a model cannot be priced: the estimate below is charged for them.
      if (counted.model !== undefined || nothing) {
        try {
          if (counted.model !== undefined) session.recordPriced(recorded(session, counted, "counted", problem));
          else session.recordPriced({ amount: 0, source: "counted", problem });
          return session.commit();
        } catch {
          // the book cannot price what was counted: charge the estimate, never nothing
        }
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
        const problem =
          code === "UNKNOWN_MODEL" ? "unknown-model" : code === "CONFIGURATION_ERROR" ? "no-price-book" : "unpriced";
        return fallback(session, problem, reading.usage);
      }
      session.recordPriced(usage);
      return session.commit();
    }
    if (status >= 400 && reading.problem !== "cut") return session.release("no-usage");
    return fallback(session, reading.problem, reading.counted);
  };

  /**
   * Settles a response whose whole body is at hand, before its headers go out: `body` is its text
   * (null: none, or not read because the charge does not depend on it), `type` its content type.
   * `llm`: billed from the usage the body reports; else status >= 500 releases, and anything else
   * commits the recorded usage (or the `usageKey` of a JSON body).
   */
  const settleBody = (
    session: MeterSession,
    status: number,
    body: string | null,
    type: string | null | undefined,
  ): Promise<MeterOutcome> => {
    if (llm !== null) return settleReading(session, body === null ? NO_BODY : usageOfText(body, type), status);
    if (status >= 500) return session.release("error");
    return session.commit(usageOfBody(session, body, type));
  };

  /**
   * Settles a response when it is done, its headers gone (a stream, a body written in parts, a
   * client that went away): `finished`, written to its end; `reading`, the usage of its body read
   * as it passed (`llm`); `pending`, the usage its body said (`usageKey`). An LLM response is
   * billed from its reading (a cut one as `missingUsage` says); one that did not finish is
   * released; status >= 500 releases; anything else commits.
   */
  const settleEnd = (
    session: MeterSession,
    finished: boolean,
    status: number,
    reading: ResponseUsageReader | null,
    pending?: number,
  ): Promise<MeterOutcome> => {
    if (llm !== null && reading !== null)
      return settleReading(session, finished ? reading.end() : reading.cut(), status);
    if (!finished) return session.release("aborted");
    if (llm !== null) return settleReading(session, NO_BODY, status);
    return status >= 500 ? session.release("error") : session.commit(pending);
  };

  const logger = meteringOf(o.credits)?.logger;
  const lease = o.lease;
  if (lease !== undefined && !isMeterLease(lease))
    throw new ConfigurationError("[credit-management] [metering] `lease` must come from manager.credits.leases().");
  const fixed = fixedPrice(o, lease, logger);
  /** The session of a metered request: from the user's lease block when it covers the estimate, else a hold in the store. */
  const openMeter = (userId: string, options: MeterOptions): Promise<MeterSession> => {
    const leased = lease?.openMeter(userId, options) ?? null;
    return leased !== null ? Promise.resolve(leased) : o.credits.openMeter(userId, options);
  };

  /**
   * A metered handler threw (docs/metering.md, "When the handler throws"): logged once, to the
   * manager's logger at `error`; then the answer the request gets instead (500 for an unexpected
   * error, a credit error's own status: docs/http.md), saying nothing of the cause.
   */
  const handlerFailed = (error: unknown, method: string | undefined, path: string): Response => {
    try {
      logger?.error(
        { err: error, method, path },
        "credit-management: a metered handler threw; answered for it, nothing charged",
      );
    } catch {
      // the host's logger failing must not change the answer
    }
    const answer = errorResponse(error);
    answer.headers.set(deductedHeader, "0");
    return answer;
  };

  /**
   * How a metered request starts, the same on every adapter: who pays (401 without a payer), who
   * spends on what, then at a fixed price (`price`) the cost and the check, else the estimate's
   * hold. Any error is the answer instead (400, 402, 429, 5xx). `header` reads a request header by
   * its lower-case name; `left` says whether the client went away: asked before the check (then
   * nothing is checked or set aside) and after it (what was set aside goes back, a hold is
   * released), answering null — nobody is left to answer. `locals`: Express's `res.locals`.
   */
  const begin = async (
    req: Req,
    method: string | undefined,
    path: string,
    header: (lowerCaseName: string) => string | null | undefined,
    left: () => boolean,
    locals?: Partial<MeteringLocals>,
  ): Promise<Begun<Req> | null> => {
    let begun: Begun<Req>;
    try {
      const found = o.authenticate ? await o.authenticate(req) : null;
      const identity = identityOf(found, found ? undefined : header("x-user-id")); // the header only when no one was found
      if (identity === null) return { answer: json(401, errorBody("UNAUTHORIZED", "Authentication required.")) };
      const spend = spendOf(req, identity);
      if (fixed !== null) {
        const key = fixed.keyOf(header("idempotency-key"));
        const cost = await fixed.costOf(req);
        if (left()) return null;
        begun = { priced: await fixed.open(req, identity.userId, cost, key, reasonOf(method, path), locals, spend) };
      } else {
        const options = meterOptions(estimate(header), reasonOf(method, path), spend);
        begun = { session: await openMeter(identity.userId, options) };
      }
    } catch (error) {
      return { answer: errorResponse(error) };
    }
    if (!left()) return begun;
    // The client left while it was authenticated, checked or held: nothing runs, nothing is charged.
    if ("priced" in begun) begun.priced.drop();
    else await settle(req, begun.session, begun.session.release("aborted"), locals);
    return null;
  };

  /** Whether a request of `path` is metered (`pathPrefix`, `skipPaths`, as the router behind reads paths). */
  const meters = (path: string, req: Req): boolean => applies(path, routerFor(req));

  /** A request whose handler failed is settled without a charge (unless it is settled already). */
  const notCharged = (req: Req, settled: MeterSession | PricedRequest<Req>, locals?: Partial<MeteringLocals>) => {
    if (!(settled instanceof PricedRequest)) return settle(req, settled, settled.release("error"), locals);
    if (!settled.done) settled.notCharged("error");
    return null;
  };

  return {
    llm,
    begin,
    handlerFailed,
    notCharged,
    settleBody,
    settleEnd,
    usageOfBody,
    readsBody,
    meters,
    settle,
    deductedHeader,
  };
}

/** How a metered request started (`begin`): an answer instead of the handler, or it runs at a fixed price, or with a hold. */
export type Begun<Req> = { answer: Response } | { priced: PricedRequest<Req> } | { session: MeterSession };

/** The `llm` option with its defaults, or null when it is off. */
function llmOptions(o: boolean | LlmMeteringOptions | undefined): LlmMeteringOptions | null {
  if (o === undefined || o === false) return null;
  if (o === true) return {};
  if (typeof o !== "object" || o === null)
    throw new ConfigurationError(
      "[credit-management] [metering] `llm` must be a boolean or { provider?, missingUsage? }.",
    );
  for (const k of Object.keys(o)) {
    if (k !== "provider" && k !== "missingUsage")
      throw new ConfigurationError(`[credit-management] [metering] unknown \`llm\` option "${k}".`);
  }
  if (o.missingUsage !== undefined && !["estimate", "counted", "none"].includes(o.missingUsage)) {
    throw new ConfigurationError(
      '[credit-management] [metering] `llm.missingUsage` must be "estimate", "counted" or "none".',
    );
  }
  if (
    o.provider !== undefined &&
    (typeof o.provider !== "string" || o.provider.length === 0 || o.provider.length > 200)
  ) {
    throw new ConfigurationError("[credit-management] [metering] `llm.provider` must be a non-empty string.");
  }
  return o;
}

/** A node or Fastify request's header by its lower-case name (the first, when repeated). */
export function headerOf(req: { headers: IncomingMessage["headers"] }, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** The journal's reason of a metered request: `METHOD path`, at most 1,000 characters. */
function reasonOf(method: string | undefined, path: string): string {
  const reason = `${method ?? "GET"} ${path}`;
  return reason.length > 1000 ? reason.slice(0, 1000) : reason;
}

/** A response with nothing to read (no body). */
export const NO_BODY: UsageReading = {
  ok: false,
  problem: "absent",
  counted: { shape: "openai", model: undefined, inputTokens: 0, outputTokens: 0, cachedTokens: 0 },
};

export const isJsonType = (type: string | null | undefined) =>
  !!type && /^application\/([\w.+-]*\+)?json\b/i.test(type);
