import { randomUUID } from "node:crypto";
import { handleStopSignals, reopenLedgerOnHup, workerManagerParts } from "./process-signals.js";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { Server as NetServer } from "node:net";
import { pino, type DestinationStream, type Logger as Pino } from "pino";
import * as z from "zod/mini";
import { createCreditHandler, type CreditHandler } from "../http/handler.js";
import { rootRoute } from "../http/route-helpers.js";
import { sendAnswer, toRequest, sendResponse, writeAnswer } from "../http/node.js";
import { nodeRequest } from "../http/node-request.js";
import { serveWebhooks } from "../modules/webhooks/serve.js";
import {
  ANSWER,
  errorAnswer,
  HttpError,
  JsonAnswer,
  jsonAnswer,
  type Answering,
  type RouteDefinition,
} from "../http/router.js";
import { createCreditManager, type CreditManager } from "../manager.js";
import { createWorker, type CreditWorker } from "../worker/index.js";
import { openWorkerResources, type WorkerResources } from "./worker-resources.js";
import { workerOptions, workerSettings, type WorkerSettings } from "./worker-settings.js";
import { claimsCustomerAudience } from "../modules/customer-tokens/service.js";
import { createAuthenticator, type Authenticator } from "./auth.js";
import { consoleApp, type ConsoleApp } from "./console.js";
import { CUSTOMER_PREFIX, customerPage } from "./customer-page.js";
import { MissingDriverError, openStores } from "./store.js";
import { ServeStartError, type Env, type ServeSettings } from "./settings.js";
import type { KeyStore } from "./keys.js";
import { warnOnFailure } from "../core/logger.js";
import { customerTokensOn } from "../credit-service.js";
import { UsageError } from "../util/usage-error.js";
import { journalKeysOf } from "./journal-keys-env.js";
import { serveTestClock, type ServeTestClock } from "./test-clock.js";

/**
 * `credit-management serve` (docs/service.md): the credit API (`createCreditHandler`) behind API
 * keys and JWTs, `/health/live`, `/health/ready`, Prometheus `/metrics`, and with `--worker` the
 * worker's rounds, in one node:http server.
 */
export interface ServeIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

/**
 * Where the operator console is mounted (docs/service.md, "The console"): with `CREDIT_CONSOLE=1`
 * requests under this prefix go to `createConsoleHandler`, behind the same admin authentication.
 */
export const CONSOLE_PREFIX = "/console";

/** The optional peers that turn /metrics on (docs/service.md, "Run it"). */
export const METRICS_PACKAGES =
  "@opentelemetry/api @opentelemetry/sdk-metrics @opentelemetry/resources @opentelemetry/exporter-prometheus";

/** What /metrics needs: the Prometheus exporter and a counter of requests (optional peers). */
interface Metrics {
  handle(req: IncomingMessage, res: ServerResponse): void;
  request(method: string, route: string, status: number, seconds: number): void;
  shutdown(): Promise<void>;
}

/**
 * The resource's attributes of serve's metrics (docs/service.md, "Metrics"), as the OpenTelemetry
 * SDK's environment says: OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME over its `service.name`;
 * `credit-management` when neither names the service.
 */
function resourceAttributes(s: Pick<ServeSettings, "OTEL_SERVICE_NAME" | "OTEL_RESOURCE_ATTRIBUTES">) {
  return {
    "service.name": "credit-management",
    ...s.OTEL_RESOURCE_ATTRIBUTES,
    ...(s.OTEL_SERVICE_NAME === undefined ? {} : { "service.name": s.OTEL_SERVICE_NAME }),
  };
}

async function startMetrics(logger: Pino, s: ServeSettings): Promise<Metrics | null> {
  try {
    const [{ PrometheusExporter }, { MeterProvider }, { defaultResource, resourceFromAttributes }, otel] =
      await Promise.all([
        import("@opentelemetry/exporter-prometheus"),
        import("@opentelemetry/sdk-metrics"),
        import("@opentelemetry/resources"),
        import("../otel/index.js"),
      ]);
    const exporter = new PrometheusExporter({ preventServerStart: true });
    const resource = defaultResource().merge(resourceFromAttributes(resourceAttributes(s)));
    const provider = new MeterProvider({ readers: [exporter], resource });
    const { instrumentCreditManagement } = otel;
    const instrumentation = instrumentCreditManagement({ meterProvider: provider, traces: false });
    const meter = provider.getMeter("credit-management-serve");
    const duration = meter.createHistogram("http.server.request.duration", {
      description: "Time to answer a request",
      unit: "s",
      advice: { explicitBucketBoundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] },
    });
    const requests = meter.createCounter("http.server.requests", { description: "Requests answered" });
    return {
      handle: (req, res) => exporter.getMetricsRequestHandler(req, res),
      request(method, route, status, seconds) {
        const attributes = { "http.request.method": method, "http.route": route, "http.response.status_code": status };
        requests.add(1, attributes);
        duration.record(seconds, attributes);
      },
      async shutdown() {
        instrumentation.shutdown();
        await provider.shutdown();
      },
    };
  } catch (error) {
    // The reason's message only: Bun's module-not-found error holds circular references that
    // the logger cannot serialize (the line said "[unable to serialize, circular reference]").
    logger.warn(
      { reason: error instanceof Error ? error.message : String(error) },
      `/metrics is off: npm install ${METRICS_PACKAGES}`,
    );
    return null;
  }
}

/** serve's log destination: pino's `DestinationStream` that can be flushed. */
export interface LogDestination extends DestinationStream {
  /** Writes what is held, now (synchronously when `write` is, as process.stdout to a file or pipe is). */
  flush(): void;
}

/** pino's line of a warning or worse: level 40 and up, the first field pino writes. */
const URGENT = /^\{"level":(?:[4-9]\d|\d{3,})[,}]/;

/**
 * The destination of serve's log lines (docs/service.md, "Logs"): with `flushMs` > 0, info and
 * lower lines wait in memory up to `flushMs` ms (or until 64 KiB wait) and go out in one `write`,
 * instead of one write a line (a system call each, and a wake-up of whatever reads stdout). A
 * warning or error goes out at once, with the lines held before it, in order. The caller flushes at
 * stop and on exit; a hard crash (SIGKILL, out of memory) loses at most `flushMs` of lines.
 * `flushMs` 0: each line written at once.
 */
export function logDestination(write: (text: string) => void, flushMs: number): LogDestination {
  if (flushMs <= 0) return { write, flush() {} };
  let held: string[] = [];
  let size = 0;
  let timer: NodeJS.Timeout | null = null;
  const flush = () => {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    if (held.length === 0) return;
    const text = held.length === 1 ? (held[0] as string) : held.join("");
    held = [];
    size = 0;
    write(text);
  };
  return {
    write(line: string) {
      held.push(line);
      size += line.length;
      if (size >= 65_536 || URGENT.test(line)) flush();
      else if (timer === null) {
        timer = setTimeout(flush, flushMs);
        timer.unref();
      }
    },
    flush,
  };
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The request target without its query string. */
function pathOf(url: string | undefined): string {
  if (url === undefined) return "/";
  const q = url.indexOf("?");
  return q < 0 ? url : url.slice(0, q);
}

/** The client's IP: the socket's, or with CREDIT_TRUST_PROXY the last X-Forwarded-For hop. */
function clientIp(req: IncomingMessage, trustProxy: boolean): string {
  if (trustProxy) {
    const fwd = req.headers["x-forwarded-for"];
    const last = (Array.isArray(fwd) ? fwd.join(",") : (fwd ?? "")).split(",").pop()?.trim();
    if (last) return last;
  }
  return req.socket.remoteAddress ?? "unknown";
}

export interface ServeApp {
  /** The node:http request listener. */
  listener(req: IncomingMessage, res: ServerResponse): void;
  handler: CreditHandler;
  /** Requests being answered now. */
  inFlight(): number;
  /** From now on every response says `Connection: close`. */
  draining(): void;
}

/** The request listener of `serve` over a manager (exported for the benchmark and tests). */
export function serveApp(
  manager: CreditManager,
  s: ServeSettings,
  auth: Authenticator,
  logger: Pino,
  metrics: Metrics | null,
  consoleRoutes: ConsoleApp | null = null,
  /** Admin routes of serve's own: the webhook endpoints' (CREDIT_WEBHOOKS=on), the test clock's (CREDIT_TEST_CLOCK). */
  adminRoutes: RouteDefinition[] | null = null,
): ServeApp {
  // The client IP of each request being answered, for the authenticate hook (which gets the Fetch
  // Request only). A Map emptied as each answer ends: at most the requests in flight, where a
  // WeakMap kept an entry per request until the next GC, and paid V8's ephemeron barrier on every
  // set and its ephemeron marking at every major GC.
  const ips = new Map<Request, string>();
  const metricsOn = metrics !== null && s.CREDIT_METRICS !== "off";
  // Asked for (CREDIT_METRICS not "off") but the exporter's packages are not installed: /metrics
  // says so (503) instead of answering "No route" (docs/service.md, "Run it").
  const metricsMissing = metrics === null && s.CREDIT_METRICS !== "off";
  const handler = createCreditHandler(manager, {
    authenticate: (request) => auth.authenticate(request, ips.get(request) ?? "unknown"),
    maxBodyBytes: s.CREDIT_MAX_BODY_BYTES,
    customerRateLimit:
      s.CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE === 0
        ? false
        : { burst: s.CREDIT_CUSTOMER_RATE_LIMIT_BURST, perMinute: s.CREDIT_CUSTOMER_RATE_LIMIT_PER_MINUTE },
    // serve's own routes, in the OpenAPI document beside the credit API's (answered below), and the
    // webhook and test clock admin routes (CREDIT_WEBHOOKS=on, CREDIT_TEST_CLOCK), answered by the handler.
    routes: [...ownRoutes(metricsOn ? s.CREDIT_METRICS : "off"), ...(adminRoutes ?? [])],
    openapi: {
      info: { title: "credit-management service" },
      // Relative: the document is served by the service it describes, wherever it is reached.
      servers: [{ url: "/", description: "this service (the origin the document was fetched from)" }],
      securitySchemes: {
        bearer: {
          type: "http",
          scheme: "bearer",
          description: "An API key (cmk_…, `credit-management keys create`) or a JWT",
        },
      },
    },
    onError: (error, request) => logger.error({ err: error, path: new URL(request.url).pathname }, "request failed"),
  });
  // The handler's answers before they are Responses: its JSON goes out with no Response built.
  const answerOf = (handler as CreditHandler & Required<Answering>)[ANSWER];
  const cors = s.CREDIT_CORS_ORIGINS === undefined ? null : new Set(s.CREDIT_CORS_ORIGINS);
  const trustProxy = s.CREDIT_TRUST_PROXY === "true";
  // The customer usage page, with customer tokens on (docs/usage.md, "For your customers").
  const customerOn = s.CREDIT_CUSTOMER_TOKEN_SECRET !== undefined;
  let inFlight = 0;
  let draining = false;

  /** Whether the request carries a valid customer token (checked as one only: docs/usage.md, "For your customers"). */
  const customerToken = async (request: Request): Promise<boolean> => {
    if (!customerTokensOn(manager.credits)) return false;
    const m = /^Bearer ([!-~]{1,8192})$/i.exec(request.headers.get("authorization")?.trim() ?? "");
    if (m === null || !claimsCustomerAudience(m[1] as string)) return false;
    return (await manager.credits.verifyCustomerToken(m[1] as string)) !== null;
  };

  const isAdmin = async (request: Request, ip: string) => {
    const identity = await auth.authenticate(request, ip);
    // A customer token is a known caller without the right, as on every route but its own: 403
    // (docs/service.md, "Customer tokens and the customer page").
    if (identity === null && (await customerToken(request)))
      throw new HttpError(
        403,
        "FORBIDDEN",
        "Admin only: a customer token reads its own account's balance, grants and usage.",
      );
    if (identity === null) throw new HttpError(401, "UNAUTHORIZED", "Authentication required.");
    if (identity.admin !== true) throw new HttpError(403, "FORBIDDEN", "Admin only.");
  };

  const answer = async (req: IncomingMessage, res: ServerResponse, ip: string, path: string): Promise<string> => {
    const method = req.method ?? "GET";
    const own = path === "/health/live" || path === "/health/ready" || (path === "/metrics" && metricsOn);
    if (own) readOnly(method, path);
    if (path === "/health/live") {
      writeAnswer(res, jsonAnswer(200, { status: "ok" }, { "cache-control": "no-store" }));
      return path;
    }
    if (path === "/health/ready") {
      writeAnswer(res, await readiness(manager));
      return path;
    }
    if (path === "/metrics" && metricsOn) {
      if (s.CREDIT_METRICS === "admin") await isAdmin(toRequest(req, res), ip);
      metrics.handle(req, res);
      return path;
    }
    if (path === "/metrics" && metricsMissing) {
      throw new HttpError(
        503,
        "METRICS_OFF",
        `Metrics are off: the OpenTelemetry packages are not installed. npm install ${METRICS_PACKAGES} turns them on.`,
        undefined,
        { "cache-control": "no-store" },
      );
    }
    if (customerOn && (path === CUSTOMER_PREFIX || path.startsWith(`${CUSTOMER_PREFIX}/`))) {
      readOnly(method, path);
      if (draining) res.setHeader("connection", "close");
      await sendResponse(res, customerPage(path, s.CREDIT_CUSTOMER_FRAME_ANCESTORS), method === "HEAD");
      return CUSTOMER_PREFIX;
    }
    if (path === CONSOLE_PREFIX || path.startsWith(`${CONSOLE_PREFIX}/`)) {
      if (consoleRoutes === null) throw new HttpError(404, "NOT_FOUND", `No route for ${method} ${path}.`);
      const response = await consoleRoutes(toRequest(req, res), ip);
      if (draining) res.setHeader("connection", "close");
      await sendResponse(res, response, method === "HEAD");
      return CONSOLE_PREFIX;
    }
    // A stand-in Request: the credit API reads the body straight from `req` (src/http/node-request.ts).
    const request = nodeRequest(req, res);
    // A mutation with no body and no type is an empty JSON body (docs/service.md, "Clients in other
    // languages"). The handler's CSRF rule asks for the type because a browser sends such a request
    // cross-site with the user's cookies; serve reads bearer credentials only, never cookies.
    if (emptyUntyped(req)) request.headers.set("content-type", "application/json");
    ips.set(request, ip);
    let out: Response | JsonAnswer;
    try {
      out = await answerOf(request);
    } finally {
      ips.delete(request);
    }
    if (draining) res.setHeader("connection", "close");
    if (cors !== null) corsHeaders(req, out, cors);
    await sendAnswer(res, out, method === "HEAD");
    return underApi(path) ? "api" : "other";
  };
  /** Whether a path is the credit API's (a route group of its own in the metrics). */
  const apiBases = handler.basePaths.filter((b) => b !== "/health" && b !== "/metrics");
  const underApi = (path: string) => apiBases.some((b) => path === b || path.startsWith(`${b}/`));

  const listener = (req: IncomingMessage, res: ServerResponse) => {
    const started = performance.now();
    inFlight++;
    const given = req.headers["x-request-id"];
    const id = typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
    res.setHeader("x-request-id", id);
    if (draining) res.setHeader("connection", "close");
    const ip = clientIp(req, trustProxy);
    const path = pathOf(req.url);
    const origin = req.headers.origin;
    const preflight = req.method === "OPTIONS" && cors !== null;
    const done = (route: string) => {
      inFlight--;
      const ms = performance.now() - started;
      metrics?.request(req.method ?? "", route, res.statusCode, ms / 1000);
      // No headers, no query string, no body: nothing secret goes to the log.
      logger.info(
        {
          reqId: id,
          method: req.method,
          path,
          status: res.statusCode,
          durationMs: Math.round(ms * 10) / 10,
          ip,
        },
        "request",
      );
    };
    if (preflight) {
      if (typeof origin === "string" && cors.has(origin)) {
        res.writeHead(204, {
          "access-control-allow-origin": origin,
          "access-control-allow-methods": "GET, POST, PUT, PATCH, DELETE",
          "access-control-allow-headers": "authorization, content-type, idempotency-key, x-request-id",
          "access-control-max-age": "600",
          vary: "origin",
        });
      } else res.writeHead(403);
      res.end();
      done("preflight");
      return;
    }
    answer(req, res, ip, path).then(
      // The route group: "api", serve's own routes by name, "other" (a path of no route: scanners
      // must not add a series each).
      (route) => done(route),
      async (error: unknown) => {
        if (!(error instanceof HttpError)) logger.error({ err: error, reqId: id }, "request failed");
        if (!res.headersSent) writeAnswer(res, errorAnswer(error));
        else res.destroy();
        done("error");
      },
    );
  };
  return {
    listener,
    handler,
    inFlight: () => inFlight,
    draining() {
      draining = true;
    },
  };
}

/** 405 for a method that does not read: serve's probes, metrics and customer page answer GET and HEAD. */
function readOnly(method: string, path: string): void {
  if (method !== "GET" && method !== "HEAD")
    throw new HttpError(405, "METHOD_NOT_ALLOWED", `${method} is not allowed on ${path}.`, undefined, {
      allow: "GET, HEAD",
    });
}

/** A POST, PUT, PATCH or DELETE that has no body (none declared, none sent) and no Content-Type. */
function emptyUntyped(req: IncomingMessage): boolean {
  const m = req.method;
  if (m !== "POST" && m !== "PUT" && m !== "PATCH" && m !== "DELETE") return false;
  const h = req.headers;
  return (
    h["content-type"] === undefined &&
    h["transfer-encoding"] === undefined &&
    (h["content-length"] === undefined || h["content-length"] === "0")
  );
}

const NO_STORE = { "cache-control": "no-store" };

/** `/health/ready`: the status only (the report names the store and its errors: `GET /admin/health`). */
async function readiness(manager: CreditManager): Promise<JsonAnswer> {
  // A health check that itself fails is the answer "not ready"; its reasons are at GET /admin/health.
  const report = await manager.health({ timeoutMs: 2000 }).catch(() => ({ status: "down" as const }));
  return jsonAnswer(report.status === "down" ? 503 : 200, { status: report.status }, NO_STORE);
}

/**
 * serve's own routes as route definitions, for the OpenAPI document (docs/service.md): the
 * listener answers these paths itself before the handler; the definitions answer the same.
 */
function ownRoutes(metrics: ServeSettings["CREDIT_METRICS"]): RouteDefinition[] {
  const routes: RouteDefinition[] = [
    rootRoute("GET", "/health/live", "public", {
      operationId: "healthLive",
      summary: "Liveness: 200 while the process answers",
      tags: ["health"],
      response: z.object({ status: z.literal("ok") }),
      handle: () => jsonAnswer(200, { status: "ok" }, NO_STORE).toResponse(),
    }),
    rootRoute("GET", "/health/ready", "public", {
      operationId: "healthReady",
      summary: "Readiness: the store's status only; 503 when it is down",
      tags: ["health"],
      response: z.object({ status: z.enum(["ok", "degraded", "down"]) }),
      errors: [503],
      handle: async ({ manager }) => (await readiness(manager)).toResponse(),
    }),
  ];
  if (metrics !== "off") {
    routes.push(
      rootRoute("GET", "/metrics", metrics === "public" ? "public" : "admin", {
        operationId: "metrics",
        summary: "Prometheus metrics",
        description:
          "The Prometheus text exposition format (`text/plain; version=0.0.4`): the library's OpenTelemetry metrics and the service's request counts and durations.",
        tags: ["health"],
        handle: () => {
          throw new HttpError(404, "NOT_FOUND", "No route for GET /metrics.");
        },
      }),
    );
  }
  return routes;
}

function corsHeaders(req: IncomingMessage, out: Response | JsonAnswer, allowed: Set<string>) {
  const origin = req.headers.origin;
  if (typeof origin !== "string" || !allowed.has(origin)) return;
  if (out instanceof JsonAnswer) {
    const h = out.headers;
    h["access-control-allow-origin"] = origin;
    h["access-control-expose-headers"] = "x-request-id";
    h.vary = h.vary === undefined ? "origin" : `${h.vary}, origin`;
    return;
  }
  out.headers.set("access-control-allow-origin", origin);
  out.headers.set("access-control-expose-headers", "x-request-id");
  out.headers.append("vary", "origin");
}

/** The manager's `customerTokens` from serve's settings (docs/service.md, "Customer tokens"). */
export function customerTokenOptions(s: ServeSettings): { customerTokens?: { secret: string[] } } {
  if (s.CREDIT_CUSTOMER_TOKEN_SECRET === undefined) return {};
  const secret = [s.CREDIT_CUSTOMER_TOKEN_SECRET];
  if (s.CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET !== undefined) secret.push(s.CREDIT_CUSTOMER_TOKEN_PREVIOUS_SECRET);
  return { customerTokens: { secret } };
}

/** How long idle keep-alive connections stay open after SIGTERM, in ms (see `runServe`). */
const IDLE_GRACE_MS = 1000;

/** Why the port could not be listened on, in words (docs/service.md, "Exit codes"). */
function listenFailure(error: unknown, host: string, port: number): string {
  const code = (error as { code?: string }).code;
  const where = `${host}:${port}`;
  if (code === "EADDRINUSE")
    return `port ${port} is in use on ${host} (EADDRINUSE): stop the process that listens there, or choose another port with --port or CREDIT_PORT`;
  if (code === "EACCES")
    return `not allowed to listen on ${where} (EACCES): ports below 1024 need privileges; choose another with --port or CREDIT_PORT`;
  if (code === "EADDRNOTAVAIL")
    return `cannot listen on ${where} (EADDRNOTAVAIL): ${host} is not an address of this machine; set --host or CREDIT_HOST`;
  return `cannot listen on ${where}: ${(error as Error).message}`;
}

/**
 * Runs the service until SIGTERM/SIGINT. Resolves to the exit code: 0 stopped cleanly; 1 the
 * shutdown time-out cut requests in flight. Throws `ServeStartError` when it cannot start (the
 * store, the port: exit 1), `MissingDriverError` without better-sqlite3 (exit 3), `UsageError`
 * for a bad worker setting (with --worker, exit 2): the CLI prints each on stderr, the same way
 * (docs/service.md, "Exit codes").
 */
export async function runServe(s: ServeSettings, io: ServeIo, env: Env): Promise<number> {
  const destination = logDestination((text) => io.stdout(text), s.CREDIT_LOG_FLUSH_MS);
  // Lines still held when the process ends (process.exit, an uncaught error) are written then.
  const flushOnExit = () => destination.flush();
  process.on("exit", flushOnExit);
  const logger = pino(
    { name: "credit-management-serve", level: s.CREDIT_LOG_LEVEL, redact: ["req.headers.authorization"] },
    destination,
  );
  // Worker settings first: a bad one stops the start before anything connects.
  let ws: WorkerSettings | undefined;
  if (s.worker) {
    try {
      ws = workerSettings({ "log-level": s.CREDIT_LOG_LEVEL }, env);
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
  }
  let stopping: ((signal: string) => void) | null = null;
  let signalled: string | null = null;
  let manager: CreditManager | undefined;
  const stopHandlers = handleStopSignals(logger, "second signal: exiting now", (signal) => {
    signalled = signal;
    stopping?.(signal);
  });
  // SIGHUP reopens the worker's ledger file (log rotation), as for `credit-management worker`.
  const hupHandler = reopenLedgerOnHup(ws?.ledgerFile, logger, () => manager);

  let keys: KeyStore | undefined;
  let webhooks: Awaited<ReturnType<typeof serveWebhooks>> | undefined;
  let resources: WorkerResources | undefined;
  let metrics: Metrics | null = null;
  let testClock: ServeTestClock | undefined;
  // The journal's keys, read before anything opens (bad JSON: a usage error).
  const journalKeys = journalKeysOf(env as Record<string, string | undefined>);
  let started = false;
  try {
    let where: string;
    try {
      const stores = await openStores(s.store);
      keys = stores.keys;
      where = stores.where;
      const metricsOn = s.CREDIT_METRICS !== "off";
      metrics = metricsOn ? await startMetrics(logger, s) : null;
      // With --worker, the manager the worker's settings make (docs/service.md, "Configure it"):
      // its Redis stream and cache, ledger file, idempotency retention and thresholds, as
      // `credit-management worker` builds it.
      if (ws !== undefined) resources = await openWorkerResources(ws, logger);
      if (env.CREDIT_WEBHOOKS === "on")
        webhooks = await serveWebhooks(stores.db, s.store, env, logger, resources?.queue);
      // CREDIT_TEST_CLOCK: the manager's time stands still until an admin moves it, and each move
      // runs what falls due on the way, with --worker's options (docs/service.md, "A test clock in staging").
      if (s.CREDIT_TEST_CLOCK !== undefined) {
        const start = s.CREDIT_TEST_CLOCK === "now" ? new Date() : new Date(s.CREDIT_TEST_CLOCK);
        testClock = serveTestClock(start, logger, ws === undefined ? undefined : workerOptions(ws, logger));
      }
      manager = await createCreditManager({
        db: stores.db,
        ...(testClock === undefined ? {} : { clock: testClock.clock.now }),
        logger,
        overdraftLimit: s.CREDIT_OVERDRAFT_LIMIT,
        // The journal's keys (docs/concepts.md, "A keyed chain"): what the service writes is signed.
        ...(journalKeys === undefined ? {} : { journalKeys }),
        // The application's payment settings (docs/service.md, "Configure it"): the credits a
        // payment buys, and what the --worker rounds charge and credit for an auto top-up.
        payments: s.payments,
        ...customerTokenOptions(s),
        ...workerManagerParts(resources, webhooks),
      });
      testClock?.clock.attach(manager);
      await keys.init();
    } catch (error) {
      if (error instanceof MissingDriverError)
        throw new MissingDriverError(`serve could not start: ${error.message}`, { cause: error });
      throw new ServeStartError(
        `serve could not start: the ${s.store.kind} store could not be opened: ${(error as Error).message ?? String(error)}`,
        { cause: error },
      );
    }
    const auth = await createAuthenticator(s, keys, s.CREDIT_KEY_CACHE_MS);
    const onConsoleError = (error: unknown, request: Request) =>
      logger.error({ err: error, path: new URL(request.url).pathname }, "console request failed");
    const routes = s.CREDIT_CONSOLE
      ? await consoleApp(manager, s, auth, CONSOLE_PREFIX, onConsoleError, {
          ...(webhooks === undefined ? {} : { webhooks: webhooks.store }),
        })
      : null;
    const adminRoutes = [...(webhooks?.routes ?? []), ...(testClock?.routes ?? [])];
    const app = serveApp(manager, s, auth, logger, metrics, routes, adminRoutes.length > 0 ? adminRoutes : null);
    const server = createServer(
      {
        requestTimeout: s.CREDIT_REQUEST_TIMEOUT_MS,
        headersTimeout: s.CREDIT_HEADERS_TIMEOUT_MS ?? Math.min(10_000, s.CREDIT_REQUEST_TIMEOUT_MS),
        // Node checks both time-outs every `connectionsCheckingInterval` (30 s by default): a client
        // that never ended its headers held its socket 30 s or more, not the 10 s docs/service.md
        // states. Every second, it is closed within a second of its time-out.
        connectionsCheckingInterval: 1_000,
      },
      app.listener,
    );
    // A connection past the cap is closed at once (docs/service.md, "Configure it").
    server.maxConnections = s.CREDIT_MAX_CONNECTIONS;
    // Longer than the idle time-out of common load balancers (60 s): they close first, never mid-request.
    server.keepAliveTimeout = 65_000;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(s.CREDIT_PORT, s.CREDIT_HOST, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } catch (error) {
      throw new ServeStartError(`serve could not start: ${listenFailure(error, s.CREDIT_HOST, s.CREDIT_PORT)}`, {
        cause: error,
      });
    }
    started = true;
    const address = server.address();
    const port = typeof address === "object" && address !== null ? address.port : s.CREDIT_PORT;
    // The worker's rounds (createWorker): auto top-ups waiting that nothing here can charge are
    // said once at start (docs/promos-and-payments.md).
    const rounds: CreditWorker | null = ws === undefined ? null : createWorker(manager, workerOptions(ws, logger));
    rounds?.start();
    if (testClock !== undefined) testClock.rounds = rounds;
    if (testClock !== undefined)
      logger.warn(
        { testClock: testClock.clock.now().toISOString() },
        "TIME IS SIMULATED: CREDIT_TEST_CLOCK is set; the service's clock stands still until POST /admin/test-clock/advance moves it (tests and staging only)",
      );
    logger.info(
      {
        port,
        host: s.CREDIT_HOST,
        store: s.store.kind,
        where,
        worker: rounds !== null,
        console: routes === null ? null : CONSOLE_PREFIX,
        customerPage: s.CREDIT_CUSTOMER_TOKEN_SECRET === undefined ? null : CUSTOMER_PREFIX,
        testClock: testClock === undefined ? null : testClock.clock.now().toISOString(),
        openapi: "/credits/openapi.json",
      },
      "serving",
    );
    destination.flush(); // the start is news at once
    const signal = await new Promise<string>((resolve) => {
      stopping = resolve;
      if (signalled !== null) resolve(signalled);
    });
    logger.info({ signal, inFlight: app.inFlight() }, "stopping: no new connections, finishing requests in flight");
    destination.flush();
    const cut = await drain(server, app, s.CREDIT_SHUTDOWN_TIMEOUT_MS);
    if (testClock !== undefined) testClock.rounds = null; // an advance cut by the drain restarts none
    await rounds?.stop();
    await manager.close();
    await keys.close();
    await metrics?.shutdown();
    if (cut > 0) {
      logger.error(
        { cut, shutdownTimeoutMs: s.CREDIT_SHUTDOWN_TIMEOUT_MS },
        "stopped: the shutdown time-out cut requests in flight (exit 1)",
      );
      return 1;
    }
    logger.info("stopped");
    return 0;
  } finally {
    stopHandlers();
    if (!started) {
      await keys?.close().catch(warnOnFailure(logger, "closing the API key store"));
      await metrics?.shutdown().catch(warnOnFailure(logger, "shutting the metrics down"));
    }
    if (manager !== undefined) await manager.close().catch(warnOnFailure(logger, "closing the credit manager"));
    await webhooks?.close().catch(warnOnFailure(logger, "closing the webhook queue"));
    await resources?.close();
    hupHandler();
    destination.flush();
    process.off("exit", flushOnExit);
  }
}

/**
 * Stops `server` gracefully (docs/service.md, "Stop it"): no new connections; every answer from
 * now on says `Connection: close` (requests in flight, and requests that arrive on open keep-alive
 * connections, are answered, then their connection closes); connections idle at the signal stay
 * open `IDLE_GRACE_MS`, so a request a client is sending on one right then is answered rather than
 * cut, then are closed. After `timeoutMs` whatever is still open is cut. Resolves to the number of
 * requests cut (0: every request was answered).
 */
async function drain(server: Server, app: ServeApp, timeoutMs: number): Promise<number> {
  app.draining();
  // Bun's node:http server is no net.Server inside (it has none of its internals, and net.Server's
  // close called on it throws `this._emitCloseIfDrained is not a function`): there its own close,
  // which also closes the connections idle at the signal at once (docs/runtimes.md, "Bun").
  const netServer = typeof (server as { _emitCloseIfDrained?: unknown })._emitCloseIfDrained === "function";
  const closed = new Promise<void>((resolve) => {
    // net.Server's close: stop listening and wait for the connections to end. http.Server's own
    // close would also destroy the idle keep-alive connections at once, where a client may be
    // sending a request that moment: it would see a reset instead of an answer.
    if (netServer) NetServer.prototype.close.call(server, () => resolve());
    else server.close(() => resolve());
  });
  // After the grace, a connection idle then (or later: one whose answer began before the signal,
  // without `Connection: close`) is closed.
  let sweep: NodeJS.Timeout | undefined;
  const idle = setTimeout(
    () => {
      server.closeIdleConnections();
      sweep = setInterval(() => server.closeIdleConnections(), 250);
    },
    Math.min(IDLE_GRACE_MS, timeoutMs),
  );
  let cut = 0;
  const timeout = setTimeout(() => {
    cut = app.inFlight();
    server.closeAllConnections();
  }, timeoutMs);
  await closed;
  clearTimeout(idle);
  clearInterval(sweep);
  clearTimeout(timeout);
  // http.Server's close, now that nothing is open: it stops the server's request time-out checks.
  if (netServer) server.close();
  return cut;
}
