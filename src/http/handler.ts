import type { CreditManager } from "../manager.js";
import { ConfigurationError } from "../core/errors.js";
import { paymentRoutes, promoRoutes } from "../modules/billing/routes.js";
import { creditRoutes } from "./credit-routes.js";
import { autoTopUpRoutes, type SelfServiceAutoTopUp } from "../modules/billing/routes-auto-top-up.js";
import { revenueRoutes } from "../modules/revenue/routes.js";
import { usageRoutes } from "./usage-routes.js";
import { limitRoutes } from "./limit-routes.js";
import { customerStateRoutes } from "./customer-state-routes.js";
import { subscriptionRoutes, type SelfServiceSubscriptions } from "./subscription-routes.js";
import { buildOpenApi, type OpenApiOptions } from "./openapi.js";
import { rootRoute } from "./route-helpers.js";
import { TokenBuckets } from "./rate-limit.js";
import { ANSWER, createRouter, fullPathOf, json, type Authenticate, type RouteDefinition } from "./router.js";
import { customerTokensOn } from "../credit-service.js";

/**
 * Options of `createCreditHandler()`: who the caller is, the base paths, the self-service routes and extra
 * routes (docs/http.md). @public
 */
export interface CreditHandlerOptions {
  /** Base of the caller's own routes. Default `/credits`. */
  basePath?: string;
  /** Base of the admin routes. Default `/admin/credits`. */
  adminBasePath?: string;
  /**
   * Who is calling: `{ userId, admin? }` or null (→ 401). Read your session, API key or JWT here.
   * Required unless `trustUserIdHeader` is true.
   */
  authenticate?: Authenticate;
  /**
   * Take the caller's id from a client-sent `X-User-Id` header when `authenticate` finds nobody.
   * Only behind a gateway that sets that header itself and strips it from clients: anyone who can
   * reach the handler could otherwise act as anyone. Never grants admin. Default false.
   */
  trustUserIdHeader?: boolean;
  /** Largest request body accepted, in bytes (413 beyond). Default 65,536. */
  maxBodyBytes?: number;
  /**
   * Refuse requests a browser may send cross-site with the victim's cookies without asking first.
   * Default true: a POST, PUT, PATCH or DELETE on a route that needs identity must carry
   * `Content-Type: application/json` (or a `+json` type) even when its body is empty or optional —
   * commit, release, resume, cancel, deactivate, delete — else 415 `UNSUPPORTED_MEDIA_TYPE`, before
   * the route runs (a `rawBody` route may take another type, but not none, `text/plain` or a form
   * type). Public routes (the webhooks) are not affected. Set false only when no browser holds
   * credentials for these routes (bearer tokens, no cookies) and clients send body-less mutations
   * without a type.
   */
  csrfProtection?: boolean;
  /**
   * Which plans callers may subscribe to or change to themselves (admins: any active plan, under
   * the admin base path). `"free"` (default): plans with price 0 only, as the library takes no
   * payment for plans; `"all"`: any active plan (your billing gates it); `"none"`: admins only.
   * Cancelling is always allowed on one's own subscription; resuming follows this rule.
   */
  selfServiceSubscriptions?: SelfServiceSubscriptions;
  /**
   * What callers may do with their own auto top-up rule (admins: any account's, under the admin
   * base path). `"none"` (default): read it; `"limits"`: change the amounts and disable it, never
   * the card charged; `"all"`: set the whole rule, the saved payment method included — only when
   * your authentication ties the provider's customer to the caller. docs/http.md, "Auto top-up".
   */
  selfServiceAutoTopUp?: SelfServiceAutoTopUp;
  /**
   * Your own routes, matched beside the built-in ones (credits, limits, plans and subscriptions,
   * promos, payments and webhooks are always there: a route with the method and path of another is a
   * `ConfigurationError`).
   */
  routes?: RouteDefinition[];
  /**
   * Where the payment providers' webhooks are received: `<webhookBasePath>/<provider>`. Default
   * `/webhooks`; `false`: no webhook routes. Only the providers that can check a signature (a
   * webhook secret is configured) are answered: through `toNodeHandler` with `next`, any other
   * path under it (`/webhooks/github`) goes on to the host's routes.
   */
  webhookBasePath?: string | false;
  /** Fields of the OpenAPI document (`GET <basePath>/openapi.json`). */
  openapi?: OpenApiOptions;
  /**
   * Liveness and readiness routes for probes (docs/observability.md): `GET <path>/live` answers 200
   * while the process serves requests; `GET <path>/ready` answers `manager.health()`'s report,
   * with 503 when the store is `down` (200 when `ok` or `degraded`). Off by default. `true` or
   * `{}`: admins only, like the admin routes; `{ public: true }`: anyone, without `authenticate`
   * (only where the network keeps strangers out: the report names the store and its errors).
   * `path` defaults to `/health`; `timeoutMs` is each check's time-out (default 2,000).
   */
  health?: boolean | { path?: string; public?: boolean; timeoutMs?: number };
  /**
   * The rate limit of customer tokens (docs/usage.md, "For your customers"): a token bucket per
   * account, `burst` requests at once, refilled at `perMinute` requests a minute, shared by every
   * customer token of the account and counted on the routes a customer token may call only (a
   * refused one too), a usage report as 5 requests. Past it: 429 `RATE_LIMITED` with `Retry-After`. Default `{ burst: 60,
   * perMinute: 60 }`; `false`: none (a gateway in front limits). Other callers are not limited.
   */
  customerRateLimit?: { burst?: number; perMinute?: number } | false;
  /** Called with unexpected errors (answered as a bare 500) and 5xx credit errors: log them. */
  onError?: (error: unknown, request: Request) => void;
}

/** A Fetch-API handler: `(request) => Promise<Response>`, with what `toNodeHandler` needs. @public */
export interface CreditHandler {
  /** Answers a request of the credit API. */
  (request: Request): Promise<Response>;
  /** The base paths it answers under (`toNodeHandler` passes other paths to `next`). */
  readonly basePaths: readonly string[];
  /** The routes, with their full paths. */
  readonly routes: readonly (RouteDefinition & { fullPath: string })[];
  /** The OpenAPI 3.1 document it serves at `<basePath>/openapi.json`. */
  openapi(): Record<string, unknown>;
}

const WEBHOOK_OPERATION = "paymentWebhook";

/** The probe routes of the `health` option (none unless asked for). */
function healthRoutes(option: CreditHandlerOptions["health"]): RouteDefinition[] {
  if (option === undefined || option === false) return [];
  const o = option === true ? {} : option;
  if (typeof o !== "object" || o === null)
    throw new ConfigurationError(
      "[credit-management] [http] `health` must be true, false or `{ path?, public?, timeoutMs? }`.",
    );
  const path = (o.path ?? "/health").replace(/\/+$/, "");
  if (!/^\/[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*$/.test(path)) {
    throw new ConfigurationError('[credit-management] [http] `health.path` must be a path such as "/health".');
  }
  if (o.public !== undefined && typeof o.public !== "boolean")
    throw new ConfigurationError("[credit-management] [http] `health.public` must be true or false.");
  const timeoutMs = o.timeoutMs;
  if (timeoutMs !== undefined && !(Number.isInteger(timeoutMs) && timeoutMs >= 1 && timeoutMs <= 60_000)) {
    throw new ConfigurationError(
      "[credit-management] [http] `health.timeoutMs` must be a whole number of ms from 1 to 60,000.",
    );
  }
  const access = o.public === true ? "public" : "admin";
  const noStore = { "cache-control": "no-store" };
  return [
    rootRoute("GET", `${path}/live`, access, {
      operationId: "healthLive",
      summary: "Liveness: the process answers",
      tags: ["health"],
      handle: () => json(200, { status: "ok" }, noStore),
    }),
    rootRoute("GET", `${path}/ready`, access, {
      operationId: "healthReady",
      summary: "Readiness: the health report (503 when the store is down)",
      tags: ["health"],
      errors: [503],
      handle: async ({ manager }) => {
        const report = await manager.health(timeoutMs === undefined ? {} : { timeoutMs });
        return json(report.status === "down" ? 503 : 200, report, noStore);
      },
    }),
  ];
}

/** Most requests a minute (and at once) `customerRateLimit` takes. */
const MAX_RATE = 1_000_000;

/** The buckets of `customerRateLimit`, on the manager's clock (the one customer tokens expire by). */
function customerRateLimit(
  manager: CreditManager,
  option: CreditHandlerOptions["customerRateLimit"],
): TokenBuckets | undefined {
  if (option === false) return undefined;
  const o = option ?? {};
  if (typeof o !== "object" || o === null)
    throw new ConfigurationError(
      "[credit-management] [http] `customerRateLimit` must be `{ burst?, perMinute? }` or false.",
    );
  const burst = o.burst ?? 60;
  const perMinute = o.perMinute ?? 60;
  for (const [name, v] of [
    ["burst", burst],
    ["perMinute", perMinute],
  ] as const) {
    if (!(Number.isInteger(v) && v >= 1 && v <= MAX_RATE))
      throw new ConfigurationError(
        `[credit-management] [http] \`customerRateLimit.${name}\` must be a whole number from 1 to 1,000,000.`,
      );
  }
  const credits = (manager as Partial<CreditManager>).credits;
  if (credits === undefined || !customerTokensOn(credits)) return undefined;
  return new TokenBuckets(burst, perMinute, () => credits.now().getTime());
}

/**
 * What the routes use of the manager beyond the core's (`credit-management/core`'s
 * `createCreditManager` builds none of it: docs/modules.md): its services and credit methods.
 */
const MODULE_PARTS = {
  credits: ["getCustomerState", "listCustomerStates", "getUsage", "getRevenue"],
  subscriptions: ["getUserSubscription", "listPlans"],
  promos: ["claimPromo", "listPromos"],
  payments: ["createPaymentLink", "getPayment", "webhookProviders"],
} as const;

/**
 * Refuses a manager the routes cannot serve (from JavaScript, the core's manager passes for one),
 * naming what it lacks: else those routes would answer a bare 500 on each request.
 */
function checkManager(manager: unknown, health: boolean): void {
  const m = (typeof manager === "object" && manager !== null ? manager : {}) as Record<string, unknown>;
  const missing: string[] = [];
  for (const [service, methods] of Object.entries(MODULE_PARTS)) {
    const part = m[service] as Record<string, unknown> | null | undefined;
    if (typeof part !== "object" || part === null) missing.push(`${service}`);
    else for (const method of methods) if (typeof part[method] !== "function") missing.push(`${service}.${method}`);
  }
  if (health && typeof m.health !== "function") missing.push("health");
  if (missing.length > 0) {
    throw new ConfigurationError(
      `[credit-management] [http] createCreditHandler needs the manager of "credit-management" (createCreditManager with every module: docs/modules.md); this one lacks ${missing.join(", ")}.`,
    );
  }
}

/**
 * The credit API as a Fetch-standard handler (Hono, Next.js route handlers, Bun, Deno; node:http,
 * Express and Fastify through `toNodeHandler`). Callers act on their own account under `basePath`;
 * admins on any account under `adminBasePath`. See docs/http.md.
 * @public
 */
export function createCreditHandler(manager: CreditManager, options: CreditHandlerOptions = {}): CreditHandler {
  checkManager(manager, options.health !== undefined);
  const o = {
    basePath: options.basePath ?? "/credits",
    adminBasePath: options.adminBasePath ?? "/admin/credits",
    authenticate: options.authenticate,
    trustUserIdHeader: options.trustUserIdHeader === true,
    maxBodyBytes: options.maxBodyBytes ?? 65_536,
    onError: options.onError,
    csrfProtection: options.csrfProtection ?? true,
    // Customer tokens are read when the manager signs them (docs/usage.md, "For your customers").
    customerTokens: customerTokensOn((manager as Partial<CreditManager>).credits)
      ? (token: string) => manager.credits.verifyCustomerToken(token)
      : undefined,
    customerRateLimit: customerRateLimit(manager, options.customerRateLimit),
  };
  if (typeof o.csrfProtection !== "boolean") {
    throw new ConfigurationError("[credit-management] [http] `csrfProtection` must be true or false.");
  }
  if (o.authenticate === undefined && !o.trustUserIdHeader) {
    throw new ConfigurationError(
      "[credit-management] [http] createCreditHandler needs an `authenticate` hook (or `trustUserIdHeader: true` behind a gateway that sets X-User-Id).",
    );
  }
  if (o.authenticate !== undefined && typeof o.authenticate !== "function") {
    throw new ConfigurationError("[credit-management] [http] `authenticate` must be a function.");
  }
  let document: Record<string, unknown> | null = null;
  const openapiRoute: RouteDefinition = {
    method: "GET",
    base: "user",
    path: "/openapi.json",
    access: "public",
    operationId: "getOpenApi",
    summary: "This OpenAPI 3.1 document",
    tags: ["meta"],
    handle: () => json(200, openapi(), { "cache-control": "public, max-age=300" }),
  };
  const selfService = options.selfServiceSubscriptions ?? "free";
  if (!["free", "all", "none"].includes(selfService)) {
    throw new ConfigurationError(
      '[credit-management] [http] `selfServiceSubscriptions` must be "free", "all" or "none".',
    );
  }
  const planRoutes = subscriptionRoutes(selfService);
  const selfTopUp = options.selfServiceAutoTopUp ?? "none";
  if (!["none", "limits", "all"].includes(selfTopUp)) {
    throw new ConfigurationError(
      '[credit-management] [http] `selfServiceAutoTopUp` must be "none", "limits" or "all".',
    );
  }
  const topUpRoutes = autoTopUpRoutes(selfTopUp);
  const webhookBase = options.webhookBasePath ?? "/webhooks";
  if (webhookBase !== false && (typeof webhookBase !== "string" || !/^\/[A-Za-z0-9._~/-]*$/.test(webhookBase))) {
    throw new ConfigurationError(
      '[credit-management] [http] `webhookBasePath` must be a path such as "/webhooks", or false.',
    );
  }
  const webhookRoot = webhookBase === false ? null : webhookBase.replace(/\/+$/, "");
  const payRoutes = paymentRoutes.flatMap((def) =>
    def.operationId !== WEBHOOK_OPERATION
      ? [def]
      : webhookRoot === null
        ? []
        : [{ ...def, path: `${webhookRoot}/:provider` }],
  );
  const builtIn = [
    ...creditRoutes,
    ...limitRoutes,
    ...customerStateRoutes,
    ...usageRoutes,
    ...revenueRoutes,
    ...planRoutes,
    ...promoRoutes,
    ...payRoutes,
    ...topUpRoutes,
  ];
  const ids = new Set(builtIn.map((def) => def.operationId));
  for (const def of options.routes ?? []) {
    if (ids.has(def.operationId)) {
      throw new ConfigurationError(
        `[credit-management] [http] the route "${def.operationId}" is built in: credit, plan, subscription, promo and payment routes are always served; pass only your own in \`routes\`.`,
      );
    }
  }
  const all = [...builtIn, ...(options.routes ?? []), ...healthRoutes(options.health), openapiRoute];
  const router = createRouter(manager, all, o);
  // The webhook paths of the providers that receive webhooks, not the whole folder: a host's own
  // `/webhooks/github` after this handler is reached through `next`.
  const webhookBases =
    webhookRoot === null ? [] : manager.payments.webhookProviders().map((name) => `${webhookRoot}/${name}`);
  const routerRoot = webhookRoot === null ? null : `/${webhookRoot.split("/")[1] ?? ""}`;
  const basePaths = [
    ...router.bases.filter((b) => b !== routerRoot || b === o.basePath || b === o.adminBasePath),
    ...webhookBases,
  ];
  const routes = all.map((def) => ({ ...def, fullPath: fullPathOf(def, o) }));
  function openapi() {
    document ??= buildOpenApi(routes, options.openapi);
    return document;
  }
  const handler = ((request: Request) => router.handle(request)) as CreditHandler;
  Object.defineProperties(handler, {
    basePaths: { value: basePaths },
    routes: { value: routes },
    openapi: { value: openapi },
    // For the node glue (`toNodeHandler`, `serve`): the answer before it is a Response.
    [ANSWER]: { value: router.answer },
  });
  return handler;
}
