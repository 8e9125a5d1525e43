/** Edge cases of the metering middleware: odd spellings of a metered path, clients that leave early. */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from "node:http";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import express from "express";
import { Hono } from "hono";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager, type MeterOutcome } from "../../src/index.js";
import { creditMetering, creditMeteringMiddleware, recordUsage } from "../../src/http/index.js";
import { listen, serveHono, waitFor, type Running } from "./servers.js";

/** Sends `METHOD target` exactly as written (no URL normalisation by the client); the status. */
function rawStatus(url: string, method: string, target: string, headers: Record<string, string> = {}): Promise<number> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      const lines = Object.entries({ host: "x", "content-length": "0", connection: "close", ...headers }).map(([k, v]) => `${k}: ${v}`);
      socket.write(`${method} ${target} HTTP/1.1\r\n${lines.join("\r\n")}\r\n\r\n`);
    });
    let data = "";
    socket.on("data", (b: Buffer) => (data += b.toString("latin1")));
    socket.on("error", reject);
    socket.on("end", () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0)));
  });
}

const options = (m: CreditManager, outcomes: MeterOutcome[]) => ({
  credits: m.credits,
  pathPrefix: "/api",
  skipPaths: ["/api/health", /^\/api\/public\//],
  usageKey: "usage.total_tokens",
  onSettled: (o: MeterOutcome) => void outcomes.push(o),
});
const bearer = (v: string | null | undefined) => (v ? { userId: v.replace(/^Bearer /, "") } : null);

describe("metering matches the prefix on every reading of the path", () => {
  let m: CreditManager;
  const outcomes: MeterOutcome[] = [];
  const servers: Running[] = [];
  let expressUrl: string;
  let honoUrl: string;
  let nodeUrl: string;
  /** Paid handler runs, by host. */
  const paid = { express: 0, hono: 0, node: 0 };

  beforeAll(async () => {
    m = await createCreditManager();
    // Express, as in the README: case-insensitive routing, absolute-form targets routed by their path.
    const app = express();
    app.use(creditMeteringMiddleware({ ...options(m, outcomes), authenticate: (req) => bearer(req.headers.authorization) }));
    app.get("/api/health", (_req, res) => void res.json({ ok: true }));
    app.post("/api/chat", (_req, res) => {
      paid.express++;
      res.json({ usage: { total_tokens: 7 } });
    });
    servers.push(await listen(createServer(app)));
    expressUrl = (servers[0] as Running).url;
    // Hono behind creditMetering: Hono decodes %xx before routing.
    const hono = new Hono();
    hono.get("/api/health", (c) => c.json({ ok: true }));
    hono.post("/api/chat", (c) => {
      paid.hono++;
      return c.json({ usage: { total_tokens: 7 } });
    });
    servers.push(await serveHono(creditMetering({ ...options(m, outcomes), authenticate: (r) => bearer(r.headers.get("authorization")) })(hono.fetch)));
    honoUrl = (servers[1] as Running).url;
    // node:http with a router on the WHATWG reading of the path (what a Fetch app behind toNodeHandler sees).
    const meter = creditMeteringMiddleware({ ...options(m, outcomes), authenticate: (req) => bearer(req.headers.authorization) });
    const route = (req: IncomingMessage, res: ServerResponse) => {
      const path = new URL(req.url ?? "/", "http://h").pathname;
      if (path === "/api/chat") paid.node++;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(path === "/api/chat" ? { usage: { total_tokens: 7 } } : { ok: true }));
    };
    servers.push(await listen(createServer((req, res) => meter(req, res, () => route(req, res)))));
    nodeUrl = (servers[2] as Running).url;
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
    await m.close();
  });
  beforeEach(() => {
    outcomes.length = 0;
    paid.express = paid.hono = paid.node = 0;
  });

  it.each(["/API/chat", "/Api/Chat", "http://evil.example/api/chat", "HTTP://evil.example/API/chat"])(
    "Express: %s reaches the paid route only metered (401 without credentials, charged with them)",
    async (target) => {
      expect(await rawStatus(expressUrl, "POST", target)).toBe(401);
      expect(paid.express).toBe(0);
      await m.credits.addCredits("ex", 100);
      expect(await rawStatus(expressUrl, "POST", target, { authorization: "Bearer ex" })).toBe(200);
      expect(paid.express).toBe(1);
      const o = await waitFor(() => outcomes[0]);
      expect(o).toMatchObject({ userId: "ex", outcome: "committed", charged: 7 });
    },
  );

  it.each(["/%61pi/chat", "/%61%70%69/chat", "/a%70i/chat"])("Hono: %s (decoded before routing) is metered", async (target) => {
    expect(await rawStatus(honoUrl, "POST", target)).toBe(401);
    expect(paid.hono).toBe(0);
    await m.credits.addCredits("ho", 100);
    expect(await rawStatus(honoUrl, "POST", target, { authorization: "Bearer ho" })).toBe(200);
    expect(paid.hono).toBe(1);
    expect(await waitFor(() => outcomes[0])).toMatchObject({ userId: "ho", outcome: "committed", charged: 7 });
  });

  it("errs on the side of metering: spellings Hono does not route to /api/chat are metered too", async () => {
    for (const target of ["/%41PI/chat", "/api%2Fchat", "/%2561pi/chat"]) {
      expect(await rawStatus(honoUrl, "POST", target)).toBe(401);
    }
  });

  it.each(["/x/../api/chat", "/x/%2e%2e/api/chat", "/api/public/../chat", "/api/public/%2E%2E/chat", "/x/..\\api/chat", "//api/chat"])(
    "node:http: %s, which a WHATWG-parsing app routes to /api/chat, is metered",
    async (target) => {
      expect(await rawStatus(nodeUrl, "POST", target)).toBe(401);
      expect(paid.node).toBe(0);
    },
  );

  it("still leaves skipped paths and paths outside the prefix alone (in the same spelling)", async () => {
    for (const url of [expressUrl, nodeUrl]) {
      expect(await rawStatus(url, "GET", "/api/health")).toBe(200);
      expect(await rawStatus(url, "GET", "/api/health?x=1")).toBe(200);
      expect(await rawStatus(url, "GET", "/api/public/file")).not.toBe(401);
      expect(await rawStatus(url, "GET", "/apiary")).not.toBe(401);
      expect(await rawStatus(url, "GET", "/public/api/chat")).not.toBe(401);
    }
    expect(await rawStatus(honoUrl, "GET", "/api/health")).toBe(200);
    expect(outcomes).toHaveLength(0);
  });

  it("a skip path is exact: another spelling of it is metered rather than skipped", async () => {
    expect(await rawStatus(expressUrl, "GET", "/API/health")).toBe(401);
    expect(await rawStatus(honoUrl, "GET", "/api/%68ealth")).toBe(401);
  });

  it("normalises pathPrefix itself (case, trailing slash, missing leading slash)", async () => {
    const handler = () => Response.json({ ok: true });
    for (const pathPrefix of ["/API/", "api", "/%61pi"]) {
      const metered = creditMetering({ credits: m.credits, authenticate: () => null, pathPrefix })(handler);
      expect((await metered(new Request("http://h/api/chat"))).status).toBe(401);
      expect((await metered(new Request("http://h/apiary"))).status).toBe(200);
    }
  });
});

describe("a client that leaves before the hold is placed", () => {
  let m: CreditManager;
  const outcomes: MeterOutcome[] = [];
  beforeAll(async () => {
    m = await createCreditManager();
  });
  afterAll(async () => {
    await m.close();
  });
  beforeEach(async () => {
    outcomes.length = 0;
  });

  describe.each([
    ["during authenticate", "auth"],
    ["while the hold is placed", "hold"],
  ] as const)("creditMetering (Fetch): aborted %s", (_label, when) => {
    it("releases the hold at once, does not run the handler, and answers 499", async () => {
      const user = `fetch-${when}`;
      await m.credits.addCredits(user, 1000);
      const controller = new AbortController();
      let ran = 0;
      const metered = creditMetering({
        credits: {
          openMeter: (userId, o) => {
            if (when === "hold") controller.abort();
            return m.credits.openMeter(userId, o);
          },
        },
        authenticate: async () => {
          await sleep(1);
          if (when === "auth") controller.abort();
          return { userId: user };
        },
        onSettled: (o) => void outcomes.push(o),
      })(() => {
        ran++;
        recordUsage({ amount: 40 });
        return Response.json({ ok: true });
      });
      const res = await metered(new Request("http://h/api/chat", { method: "POST", signal: controller.signal }));
      expect(res.status).toBe(499);
      expect(res.headers.get("x-credits-deducted")).toBe("0");
      expect(ran).toBe(0);
      expect(outcomes).toEqual([expect.objectContaining({ userId: user, outcome: "released", releaseReason: "aborted", charged: 0 })]);
      expect(await m.credits.getUserCreditsInfo(user)).toMatchObject({ balance: 1000, reserved: 0 });
      expect((await m.credits.getCreditHistory(user, { limit: 2 })).items.map((e) => e.type)).toEqual(["release_reserved", "reserve"]);
    });
  });

  describe.each(["node:http", "express"] as const)("creditMeteringMiddleware on %s", (kind) => {
    let server: Running;
    let ran = 0;
    const user = `node-${kind}`;
    beforeAll(async () => {
      const meter = creditMeteringMiddleware({
        credits: m.credits,
        ttlSeconds: 3600,
        authenticate: async (req) => {
          await sleep(150); // e.g. token introspection; the client leaves meanwhile
          return bearer(req.headers.authorization);
        },
        onSettled: (o) => void outcomes.push(o),
      });
      const handler = (_req: IncomingMessage, res: ServerResponse) => {
        ran++;
        res.setHeader("content-type", "text/event-stream");
        recordUsage({ amount: 5 });
        if (!res.destroyed) res.end("data: 0\n\n");
      };
      if (kind === "express") {
        const app = express();
        app.use(meter);
        app.all("/{*any}", handler);
        server = await listen(createServer(app));
      } else server = await listen(createServer((req, res) => meter(req, res, () => handler(req, res))));
    });
    afterAll(async () => {
      await server.close();
    });
    afterEach(() => {
      ran = 0;
    });

    it("a client that disconnects while authenticate is pending: released at once, next() never called", async () => {
      await m.credits.addCredits(user, 1000);
      const { port } = new URL(server.url);
      const req = httpRequest({ host: "127.0.0.1", port: Number(port), path: "/api/stream", headers: { authorization: `Bearer ${user}` } });
      req.on("error", () => undefined);
      req.end();
      await sleep(50);
      req.destroy();
      const o = await waitFor(() => outcomes[0], 3000);
      expect(o).toMatchObject({ userId: user, outcome: "released", releaseReason: "aborted", charged: 0 });
      await sleep(100);
      expect(ran).toBe(0);
      expect(outcomes).toHaveLength(1);
      expect(await m.credits.getUserCreditsInfo(user)).toMatchObject({ balance: 1000, reserved: 0 });
    });

    it("a client that stays is metered as before", async () => {
      const res = await fetch(`${server.url}/api/stream`, { headers: { authorization: `Bearer ${user}` } });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("data: 0\n\n");
      expect(await waitFor(() => outcomes[0])).toMatchObject({ userId: user, outcome: "committed", charged: 5 });
      expect(ran).toBe(1);
    });
  });
});
