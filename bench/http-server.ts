/**
 * The server side of `bench/http.ts`, in its own process so the load generator does not share its
 * event loop: a trivial JSON endpoint with and without metering, on node middleware (bare node:http
 * and an Express app) and on the Fetch wrapper. Prints `{"port": n}` when listening; exits when stdin closes.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import express from "express";
import { mainThreadCpu } from "./lib.js";
import { core, http } from "./pkg.js";

const { createCreditManager, recordUsage } = core;
const { createCreditHandler, creditMetering, creditMeteringMiddleware, toNodeHandler } = http;

const USERS = Number(process.argv[2] ?? 100);
const manager = await createCreditManager();
for (let i = 0; i < USERS; i++) await manager.credits.addCredits(`user-${i}`, 1e12);

const userOf = (auth: string | null | undefined) => (auth ? { userId: auth.slice(7) } : null);
const common = { credits: manager.credits, defaultEstimate: 10, ttlSeconds: 60 } as const;

const body = '{"ok":true,"usage":{"total_tokens":3}}';
const BUSY_US = Number(process.env.BENCH_BUSY_US ?? 10);
const spin = (us: number) => {
  const end = performance.now() + us / 1000;
  while (performance.now() < end);
};
/** The node middleware (bare node:http and Express) for requests under `pathPrefix`. */
const nodeMetering = (pathPrefix: string) =>
  creditMeteringMiddleware({ ...common, pathPrefix, authenticate: (req) => userOf(req.headers.authorization) });
const nodeMeter = nodeMetering("/n/api");
// Fixed-price metering (`price`): one deduction per request that succeeded, no hold.
const fixedMeter = creditMeteringMiddleware({
  credits: manager.credits,
  pathPrefix: "/p/api",
  price: 3,
  authenticate: (req) => userOf(req.headers.authorization),
});

// Fixed-price metering through credit leases (docs/metering.md, "Leases"): a covered request is
// checked and charged in memory, settled with its window (one entry per user per second).
const lease = manager.credits.leases({ size: 1_000_000, settleEveryMs: 1000, ttlSeconds: 60 });
const leaseMeter = creditMeteringMiddleware({
  credits: manager.credits,
  pathPrefix: "/l/api",
  price: 3,
  lease,
  authenticate: (req) => userOf(req.headers.authorization),
});

/**
 * `GET /meter-cost`: the server's CPU (`process.cpuUsage()`, all its threads) per in-process
 * `credits.meter()` (hold 10, record 3) in µs, measured here after the load rounds in a loop of
 * sequential calls — the core's share of a metered request measured alone, hot. (The `/k/ping`
 * route measures the same work under the HTTP load.)
 */
async function meterCost(): Promise<number> {
  const n = 20_000;
  const before = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    await manager.credits.meter(
      `user-${i % USERS}`,
      { estimate: 10, reason: "GET /n/api/ping" },
      () => void recordUsage({ amount: 3 }),
    );
  }
  const used = process.cpuUsage(before);
  return (used.user + used.system) / n;
}
const fetchApp = async (request: Request): Promise<Response> => {
  if (new URL(request.url).pathname.startsWith("/f/api")) recordUsage({ amount: 3 });
  return new Response(body, { headers: { "content-type": "application/json" } });
};
const fetchNode = toNodeHandler(
  creditMetering({ ...common, pathPrefix: "/f/api", authenticate: (r) => userOf(r.headers.get("authorization")) })(
    fetchApp,
  ),
);

// `/c/credits/...`: the credit API itself (createCreditHandler) on node:http, e.g. GET balance.
const creditApi = toNodeHandler(
  createCreditHandler(manager, {
    basePath: "/c/credits",
    adminBasePath: "/c/admin/credits",
    authenticate: (r) => userOf(r.headers.get("authorization")),
  }),
);

// Express: the same endpoint as a route (`res.json`), metered by the same middleware mounted with
// `app.use` — what a trivial endpoint costs in the framework most of our users meter with.
const app = express();
app.use(nodeMetering("/e/api"));
const expressReply: unknown = JSON.parse(body);
app.get("/e/ping", (_req, res) => void res.json(expressReply));
app.get("/e/api/ping", (_req, res) => {
  recordUsage({ amount: 3 });
  res.json(expressReply);
});

function plain(res: ServerResponse): void {
  res.setHeader("content-type", "application/json");
  res.end(body);
}
/** `/.../upstream`: the handler first awaits 2 ms, like a call to a model provider. */
const respond = (url: string, res: ServerResponse) =>
  url.endsWith("/upstream") ? void setTimeout(plain, 2, res) : plain(res);
const userOfReq = (req: IncomingMessage) => (req.headers.authorization ?? "Bearer user-0").slice(7);

/**
 * `/k/ping`: the metered request's core work done by hand in an unmetered handler — the same
 * `credits.meter()` (hold 10, record 3) the middleware places, then the same response. Its server
 * CPU less the unmetered endpoint's is what `meter()` costs under this HTTP load; a metered
 * endpoint's CPU less this one's is the middleware's glue.
 */
function meteredByHand(req: IncomingMessage, res: ServerResponse): void {
  manager.credits
    .meter(userOfReq(req), { estimate: 10, reason: "GET /n/api/ping", ttlSeconds: 60 }, () => {
      recordUsage({ amount: 3 });
    })
    .then(
      () => plain(res),
      () => ((res.statusCode = 500), res.end()),
    );
}

/** `/kp/ping`: fixed-price metering's core work by hand: the balance check, then one deduction of 3 after the handler. */
function fixedByHand(req: IncomingMessage, res: ServerResponse): void {
  const userId = userOfReq(req);
  manager.credits
    .getUserCreditsInfo(userId)
    .then((info) => {
      if (info.available < 3) throw new Error("no credits");
      res.setHeader("content-type", "application/json");
      return manager.credits.deductCreditsAfterService(userId, 3, { description: "GET /p/api/ping" });
    })
    .then(
      (entry) => {
        res.setHeader("X-Credits-Deducted", String(entry.amount));
        res.end(body);
      },
      () => ((res.statusCode = 500), res.end()),
    );
}

const server = createServer((req, res) => {
  const url = req.url ?? "/";
  if (url === "/meter-cost") return void meterCost().then((us) => res.end(JSON.stringify({ us })));
  // The server's CPU so far, in µs: all its threads (`process.cpuUsage()`) and the main thread's (/proc, Linux).
  if (url === "/cpu") {
    const { user, system } = process.cpuUsage();
    return void res.end(JSON.stringify({ cpu: user + system, main: mainThreadCpu() }));
  }
  if (url.startsWith("/f/")) return void fetchNode(req, res);
  if (url.startsWith("/c/")) return void creditApi(req, res);
  if (url.startsWith("/e/")) return void app(req, res);
  if (url.startsWith("/k/")) return meteredByHand(req, res);
  if (url.startsWith("/kp/")) return fixedByHand(req, res);
  // "/busy": the handler first spins BUSY_US µs of CPU (calibration: what that much work per request costs the throughput).
  if (url.endsWith("/busy")) spin(BUSY_US);
  if (url.startsWith("/p/api")) return fixedMeter(req, res, () => respond(url, res));
  if (url.startsWith("/l/api")) return leaseMeter(req, res, () => respond(url, res));
  if (url.startsWith("/n/api")) {
    return nodeMeter(req, res, () => {
      recordUsage({ amount: 3 });
      respond(url, res);
    });
  }
  respond(url, res);
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ port: (server.address() as AddressInfo).port }));
});
process.stdin.on("end", () => {
  server.close();
  void lease
    .close()
    .then(() => manager.close())
    .then(() => process.exit(0));
});
process.stdin.resume();
