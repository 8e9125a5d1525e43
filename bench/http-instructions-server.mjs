/**
 * The server of bench/http-instructions.ts (plain JavaScript, so no loader thread and no transform
 * runs in it): one node:http server on a checkout's built package (`<root>/dist/`), an in-memory
 * manager with USERS funded users, a lease whose blocks are open before the count, and five routes:
 * - `/n/ping`: unmetered — the handler alone (a JSON body and its content type);
 * - `/h/ping`: hand-mounted — the same manager and lease call written by hand, as a user would
 *   without our middleware: read the caller from `Authorization`, `await lease.charge(user, 3, {
 *   reason })`, then the handler's answer with `X-Credits-Deducted` (402 when the charge is refused);
 * - `/l/api/ping`: metered through the lease — `creditMeteringMiddleware({ price: 3, lease })`
 *   around the same handler: the check before it runs (the price set aside in the user's block),
 *   the charge from the block when it ended well, `X-Credits-Deducted`;
 * - `/p/api/ping`: fixed price without a lease (the exact path: the account read before the
 *   handler, one deduction after it);
 * - `/u/api/ping`: estimate, then usage, through the lease (`recordUsage({ amount: 3 })` in the
 *   handler, the estimate of 10 held in the block).
 *   node bench/http-instructions-server.mjs <root> [users]
 * Prints `{"port":n}` once listening and every block is open; exits when stdin closes.
 *   node bench/http-instructions-server.mjs <root> <users> <route> <ops>
 * (a case of the instruction guard, bench/instructions.ts): the same server, then `ops` GET requests
 * of one route (`n`, `h`, `l`, `p` or `u`: the first letter of its path) made by this process
 * itself, one at a time over one keep-alive connection, a user each in turn; then it exits. The
 * client's instructions are counted with the server's: the same on every route.
 */
import { Agent, createServer, request } from "node:http";
import { join, resolve } from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";

const root = resolve(process.argv[2] ?? ".");
const USERS = Number(process.argv[3] ?? 100);
const load = (p) => import(pathToFileURL(join(root, "dist", p)).href);
const { createCreditManager, recordUsage } = await load("index.js");
const { creditMeteringMiddleware } = await load("http/index.js");

const manager = await createCreditManager();
for (let i = 0; i < USERS; i++) await manager.credits.addCredits(`user-${i}`, 1e12);
// A 10-minute window: no settle during the count (bench/http-instructions.ts says what one costs).
const lease = manager.credits.leases({ size: 1_000_000, settleEveryMs: 600_000, ttlSeconds: 3600 });
// Every user's block open before the count (a charge opens it), so each leased request is covered.
for (let i = 0; i < USERS; i++) await lease.charge(`user-${i}`, 3, { reason: "open" });

const body = '{"ok":true,"usage":{"total_tokens":3}}';
const userOf = (auth) => (auth ? { userId: auth.slice(7) } : null);
const authenticate = (req) => userOf(req.headers.authorization);

function plain(res) {
  res.setHeader("content-type", "application/json");
  res.end(body);
}

/** `/h/ping`: the lease's charge mounted by hand. */
async function byHand(req, res) {
  const auth = req.headers.authorization;
  if (!auth) {
    res.statusCode = 401;
    return res.end();
  }
  let charged;
  try {
    charged = await lease.charge(auth.slice(7), 3, { reason: "GET /h/ping" });
  } catch {
    res.statusCode = 402;
    return res.end();
  }
  res.setHeader("X-Credits-Deducted", String(charged.amount));
  plain(res);
}

const leased = creditMeteringMiddleware({
  credits: manager.credits,
  pathPrefix: "/l/api",
  price: 3,
  lease,
  authenticate,
});
const exact = creditMeteringMiddleware({ credits: manager.credits, pathPrefix: "/p/api", price: 3, authenticate });
const usage = creditMeteringMiddleware({
  credits: manager.credits,
  pathPrefix: "/u/api",
  defaultEstimate: 10,
  lease,
  authenticate,
});
const recorded = (res) => {
  recordUsage({ amount: 3 });
  plain(res);
};

const server = createServer((req, res) => {
  const url = req.url;
  if (url === "/n/ping") return plain(res);
  if (url === "/h/ping") return void byHand(req, res);
  if (url === "/l/api/ping") return leased(req, res, () => plain(res));
  if (url === "/p/api/ping") return exact(req, res, () => plain(res));
  if (url === "/u/api/ping") return usage(req, res, () => recorded(res));
  res.statusCode = 404;
  res.end();
});
server.keepAliveTimeout = 60_000;
const shutDown = () => {
  server.close();
  server.closeAllConnections();
  void lease
    .close()
    .then(() => manager.close())
    .then(() => process.exit(0));
};
const [route, opsArg] = process.argv.slice(4);
if (route === undefined) {
  server.listen(0, "127.0.0.1", () => process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`));
  process.stdin.on("end", shutDown);
  process.stdin.resume();
} else {
  const path = { n: "/n/ping", h: "/h/ping", l: "/l/api/ping", p: "/p/api/ping", u: "/u/api/ping" }[route];
  if (path === undefined) throw new Error(`unknown route ${route}: n, h, l, p, u`);
  await new Promise((listening) => server.listen(0, "127.0.0.1", listening));
  const { port } = server.address();
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const get = (user) =>
    new Promise((done, fail) => {
      const req = request(
        { port, host: "127.0.0.1", path, agent, headers: { authorization: `Bearer ${user}` } },
        (res) => {
          if (res.statusCode !== 200) fail(new Error(`${path}: ${res.statusCode}`));
          res.resume();
          res.on("end", done);
        },
      );
      req.on("error", fail);
      req.end();
    });
  const ops = Number(opsArg);
  for (let i = 0; i < ops; i++) await get(`user-${i % USERS}`);
  agent.destroy();
  shutDown();
}
