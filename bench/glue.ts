/**
 * The node:http metering middleware's own cost per request, in process: real `IncomingMessage` and
 * `ServerResponse` objects with no socket (the response is written to its buffer), driven in a loop
 * — no syscalls, no load generator, no other process. bench/http.ts measures the same paths over
 * loopback, where a request's syscalls dominate and another process's load moves every figure;
 * this one moves far less between runs, so it is where a change to the glue shows.
 *   tsx bench/glue.ts          (also run by `npm run bench`)
 * Rows (ns per request, the least of many interleaved chunks: the cost with the least disturbance):
 * - the bare handler (`setHeader` + `end`), the baseline;
 * - `creditMeteringMiddleware` with `price: 0`: the glue alone (path match, `authenticate`, the
 *   payer's id validated, the `Idempotency-Key` read, the end intercepted, a `close` listener, the
 *   `X-Credits-Deducted` header) — no charge;
 * - fixed price through a lease, the user's block covering it: the glue, the price set aside in the
 *   block at the check and charged from it at the end (bench/http.ts's leased row, in process).
 * BENCH_GLUE_REQUESTS sets the requests per row (default 400,000).
 */
import { IncomingMessage, ServerResponse } from "node:http";
import { Socket } from "node:net";
import { fileURLToPath } from "node:url";
import type { BenchRow } from "./lib.js";
import { core, http } from "./pkg.js";

const USERS = 100;
const REQUESTS = Number(process.env.BENCH_GLUE_REQUESTS ?? 400_000);
const CHUNK = 4000;
const body = '{"ok":true,"usage":{"total_tokens":3}}';

export async function run(): Promise<BenchRow[]> {
  const manager = await core.createCreditManager();
  for (let i = 0; i < USERS; i++) await manager.credits.addCredits(`user-${i}`, 1e12);
  const lease = manager.credits.leases({ size: 1_000_000, settleEveryMs: 1000, ttlSeconds: 60 });
  const authenticate = (req: IncomingMessage) => ({ userId: (req.headers.authorization ?? "").slice(7) });
  const free = http.creditMeteringMiddleware({ credits: manager.credits, pathPrefix: "/api", price: 0, authenticate });
  const leased = http.creditMeteringMiddleware({
    credits: manager.credits,
    pathPrefix: "/api",
    price: 3,
    lease,
    authenticate,
  });
  // Every user's block open before the loops (a charge opens it), so each leased request is covered.
  for (let i = 0; i < USERS; i++) await lease.charge(`user-${i}`, 3, { reason: "open" });
  await lease.flush();

  const auths = Array.from({ length: USERS }, (_, i) => `Bearer user-${i}`);
  const socket = new Socket();
  const request = (i: number, url: string): [IncomingMessage, ServerResponse] => {
    const req = new IncomingMessage(socket);
    req.url = url;
    req.method = "GET";
    req.headers = { host: "bench", authorization: auths[i % USERS] as string };
    return [req, new ServerResponse(req)];
  };
  const plain = (res: ServerResponse) => {
    res.setHeader("content-type", "application/json");
    res.end(body);
  };
  type Middleware = typeof free;
  /** ns per request of `n` requests through `mw` (or the bare handler), checking each was answered as expected. */
  const loop = (n: number, mw: Middleware | null, charged: string): number => {
    const start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      if (mw === null) {
        const [, res] = request(i, "/ping");
        plain(res);
        continue;
      }
      const [req, res] = request(i, "/api/ping");
      mw(req, res, () => plain(res));
      if (res.getHeader("x-credits-deducted") !== charged)
        throw new Error(`bench/glue: request ${i} was not charged ${charged} at once`);
    }
    return Number(process.hrtime.bigint() - start) / n;
  };
  const cases = [
    { key: "bare", mw: null, charged: "" },
    { key: "free", mw: free, charged: "0" },
    { key: "leased", mw: leased, charged: "3" },
  ] as const;
  for (let w = 0; w < 5; w++) for (const c of cases) loop(CHUNK, c.mw, c.charged); // warm-up (JIT)
  const least = { bare: Infinity, free: Infinity, leased: Infinity };
  for (let r = 0; r < REQUESTS / CHUNK; r++) {
    for (const c of cases) least[c.key] = Math.min(least[c.key], loop(CHUNK, c.mw, c.charged));
    await new Promise((resolve) => setImmediate(resolve)); // the lease's timers and the GC get their turn
  }
  await lease.close();
  await manager.close();

  const glue = least.free - least.bare;
  const leasedGlue = least.leased - least.bare;
  const row = (scenario: string, ns: number, note: string): BenchRow => ({
    backend: "memory",
    scenario,
    // One "operation" is one request: ops/s = 1e9 / ns.
    opsPerSec: 1e9 / ns,
    note,
  });
  return [
    row(
      "in process: bare node:http handler, no socket (ns/request)",
      least.bare,
      `${least.bare.toFixed(0)} ns a request`,
    ),
    row(
      "in process: creditMeteringMiddleware, price 0 (the glue alone)",
      least.free,
      `${least.free.toFixed(0)} ns a request; the glue ${glue.toFixed(0)} ns`,
    ),
    row(
      "in process: creditMeteringMiddleware, fixed price through a lease",
      least.leased,
      `${least.leased.toFixed(0)} ns a request; glue + set aside + charge ${leasedGlue.toFixed(0)} ns, ` +
        `of which the lease ${(least.leased - least.free).toFixed(0)} ns`,
    ),
  ];
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { printTable } = await import("./lib.js");
  const rows = await run();
  printTable(rows);
  console.log(JSON.stringify(rows));
}
