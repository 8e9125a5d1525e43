/**
 * The node middleware's per-request shortcuts (docs/metering.md) decide as the long way does: a path as sent under the prefix is metered without working out its other readings
 * when there are no skip paths, and the charged credits' header is written in lower case.
 */
import { createServer, request as httpRequest, type ServerResponse } from "node:http";
import { describe, expect, it } from "vitest";
import { createCreditManager } from "../../src/index.js";
import { creditMeteringMiddleware } from "../../src/http/index.js";
import { pathMatcher } from "../../src/modules/metering/routes-paths.js";
import { listen } from "./servers.js";

describe("a metered path without skip paths", () => {
  // A skip path that matches nothing: the same meaning as none, but every reading is worked out.
  const never = /(?!)/;
  const paths = [
    "/api",
    "/api/",
    "/api/ping",
    "/API/Ping",
    "/Api/x/../y",
    "/api/%2e%2e/admin",
    "/api//x",
    "/api\\x",
    "/apix",
    "/ap",
    "/%61pi/ping",
    "/x/../api/ping",
    "//api/ping",
    "/a%70i",
    "/other",
    "/",
    "",
    "/api/é",
    "/ÀPI/x",
    "http://h/api/x",
    "/api?x=1",
  ];
  for (const pathPrefix of ["/api", "/API/", "/", "/ap%69", "/é"])
    it(`is decided as with every reading worked out (prefix ${pathPrefix})`, () => {
      const fast = pathMatcher({ pathPrefix });
      const full = pathMatcher({ pathPrefix, skipPaths: [never] });
      for (const path of paths)
        for (const router of [0, 1, 2, 3]) {
          expect([path, router, fast.applies(path, router)]).toEqual([path, router, full.applies(path, router)]);
        }
    });
});

describe("the charged credits' header on node", () => {
  it("is written in lower case, the default name and one set by the options", async () => {
    const manager = await createCreditManager();
    await manager.credits.addCredits("u", 100);
    const lease = manager.credits.leases({ size: 50 });
    const authenticate = () => ({ userId: "u" });
    const body = (res: ServerResponse) => res.end("{}");
    const leased = creditMeteringMiddleware({
      credits: manager.credits,
      pathPrefix: "/l",
      price: 3,
      lease,
      authenticate,
    });
    const named = creditMeteringMiddleware({
      credits: manager.credits,
      pathPrefix: "/n",
      price: 2,
      deductedHeader: "X-Charged",
      authenticate,
    });
    const server = await listen(
      createServer((req, res) => (req.url?.startsWith("/l") ? leased : named)(req, res, () => body(res))),
    );
    const raw = (path: string) =>
      new Promise<string[]>((resolve, reject) => {
        httpRequest(server.url + path, (res) => {
          res.resume();
          res.on("end", () => resolve(res.rawHeaders));
        })
          .on("error", reject)
          .end();
      });
    try {
      await lease.charge("u", 1); // opens the user's block, so the next charge is served from it
      const l = await raw("/l/x");
      expect(l[l.indexOf("x-credits-deducted") + 1]).toBe("3");
      expect(l).not.toContain("X-Credits-Deducted");
      const n = await raw("/n/x");
      expect(n[n.indexOf("x-charged") + 1]).toBe("2");
      expect(n).not.toContain("X-Charged");
      await lease.close();
      expect((await manager.credits.getUserCreditsInfo("u")).balance).toBe(100 - 1 - 3 - 2);
    } finally {
      await server.close();
      await manager.close();
    }
  });
});

describe("fixed price through a lease on node", () => {
  /** A manager on a clock the test moves, a lease (blocks serve 30 s), a metered node server. */
  async function setUp() {
    let now = Date.now();
    const manager = await createCreditManager({ clock: () => new Date(now) });
    const lease = manager.credits.leases({ size: 50, settleEveryMs: 30_000, ttlSeconds: 60 });
    const outcomes: { charged: number; leased: boolean; entry: boolean }[] = [];
    const metered = creditMeteringMiddleware({
      credits: manager.credits,
      pathPrefix: "/api",
      price: 3,
      lease,
      authenticate: (req) => {
        const userId = String(req.headers["x-payer"] ?? "");
        const spender = req.headers["x-spender"];
        return typeof spender === "string" ? { userId, spender } : { userId };
      },
      onSettled: (o) => outcomes.push({ charged: o.charged, leased: o.leased === true, entry: o.entry !== null }),
    });
    const handler = (path: string | undefined, res: ServerResponse) => {
      if (path === "/api/late-sync") now += 31_000; // the block stops serving, in the turn of its set-aside
      if (path === "/api/late") {
        now += 31_000; // the block stops serving, and the response ends in a later turn
        setImmediate(() => res.end("{}"));
        return;
      }
      res.end("{}");
    };
    const server = await listen(createServer((req, res) => metered(req, res, () => handler(req.url, res))));
    const call = (path: string, payer: string, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; deducted: string | undefined; body: string }>((resolve, reject) => {
        httpRequest(server.url + path, { headers: { "x-payer": payer, ...headers } }, (res) => {
          let body = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (body += d));
          res.on("end", () =>
            resolve({
              status: res.statusCode ?? 0,
              deducted: res.headers["x-credits-deducted"] as string | undefined,
              body,
            }),
          );
        })
          .on("error", reject)
          .end();
      });
    const windows = async (userId: string) =>
      (await manager.credits.getCreditHistory(userId)).items
        .map((e) => e.metadata?.leaseWindow as { window: number; requests: number; total: number } | undefined)
        .filter((w) => w !== undefined)
        .sort((a, b) => a.window - b.window);
    return { manager, lease, outcomes, server, call, windows };
  }

  it("answers as the long way: a payer's id that is not valid, a key, a spender, no block, no credits", async () => {
    const { manager, lease, outcomes, server, call } = await setUp();
    try {
      await manager.credits.addCredits("u", 1000);
      const first = await call("/api/x", "u"); // no block yet: checked on the store, the charge opens it
      expect([first.status, first.deducted]).toEqual([200, "3"]);
      await lease.charge("u", 1); // the block is open by now (waits for it if not)
      expect(lease.covers("u", 3)).toBe(true);
      const fast = await call("/api/x", "u");
      expect([fast.status, fast.deducted, fast.body]).toEqual([200, "3", "{}"]);
      expect(outcomes.at(-1)).toEqual({ charged: 3, leased: true, entry: false });
      // A keyed request is charged exactly, never from the block.
      const keyed = await call("/api/x", "u", { "idempotency-key": "k-1" });
      expect([keyed.status, keyed.deducted]).toEqual([200, "3"]);
      expect(outcomes.at(-1)).toEqual({ charged: 3, leased: false, entry: true });
      const again = await call("/api/x", "u", { "idempotency-key": "k-1" }); // the same key: charged once
      expect([again.status, again.deducted]).toEqual([200, "3"]);
      const badKey = await call("/api/x", "u", { "idempotency-key": "x".repeat(300) });
      expect(badKey.status).toBe(400);
      // A spender the identity names is validated as on the long way.
      const badSpender = await call("/api/x", "u", { "x-spender": "s".repeat(1000) });
      expect(badSpender.status).toBe(400);
      const spender = await call("/api/x", "u", { "x-spender": "team-a" });
      expect([spender.status, spender.deducted]).toEqual([200, "3"]);
      // An id that is not valid has no block: refused with the long way's 400.
      const long = await call("/api/x", "u".repeat(257));
      expect(long.status).toBe(400);
      expect(JSON.parse(long.body)).toMatchObject({ error: { code: "VALIDATION_ERROR" } });
      expect((await call("/api/x", "")).status).toBe(400); // an empty id: not valid either
      // No credits, no block: 402, the handler not run.
      const broke = await call("/api/x", "broke");
      expect([broke.status, broke.deducted]).toEqual([402, undefined]);
      await lease.close();
      // 3 (first) + 1 (by hand) + 3 (fast) + 3 (keyed, once) + 3 (spender)
      expect((await manager.credits.getUserCreditsInfo("u")).balance).toBe(1000 - 13);
    } finally {
      await server.close();
      await manager.close();
    }
  });

  it("respects the block's TTL: a response ended after the block stopped serving is not charged from it", async () => {
    const { manager, lease, server, call, windows } = await setUp();
    try {
      await manager.credits.addCredits("t", 1000);
      await lease.charge("t", 1); // opens the block
      expect(lease.covers("t", 3)).toBe(true);
      // The block stops serving 30 s after it opened: a response ended after the clock passed that,
      // in the turn of its set-aside or a later one, is not served from it (the lease rolls a new
      // block for the charge).
      expect((await call("/api/late-sync", "t")).deducted).toBe("3");
      expect((await call("/api/late", "t")).deducted).toBe("3");
      await lease.close();
      const settled = (await windows("t")).filter((w) => w.total > 0);
      expect(settled[0]).toMatchObject({ requests: 1, total: 1 }); // the first block: only the charge by hand
      const later = settled.slice(1);
      expect(later.reduce((n, w) => n + w.requests, 0)).toBe(2);
      expect(later.reduce((n, w) => n + w.total, 0)).toBe(6);
      expect((await manager.credits.getUserCreditsInfo("t")).balance).toBe(1000 - 7);
    } finally {
      await server.close();
      await manager.close();
    }
  });
});
