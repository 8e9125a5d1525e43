/** Edge cases of the metering middleware: odd spellings of a metered path, clients that leave early. */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from "node:http";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import express from "express";
import { Hono } from "hono";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createCreditManager, recordUsage, type CreditManager, type MeterOutcome } from "../../src/index.js";
import { creditMetering, creditMeteringMiddleware } from "../../src/http/index.js";
import { listen, serveHono, waitFor, type Running } from "./servers.js";

/** Sends `METHOD target` exactly as written (no URL normalisation by the client); the status. */
function rawStatus(url: string, method: string, target: string, headers: Record<string, string> = {}): Promise<number> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname, () => {
      const lines = Object.entries({ host: "x", "content-length": "0", connection: "close", ...headers }).map(
        ([k, v]) => `${k}: ${v}`,
      );
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
    app.use(
      creditMeteringMiddleware({ ...options(m, outcomes), authenticate: (req) => bearer(req.headers.authorization) }),
    );
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
    servers.push(
      await serveHono(
        creditMetering({ ...options(m, outcomes), authenticate: (r) => bearer(r.headers.get("authorization")) })(
          hono.fetch,
        ),
      ),
    );
    honoUrl = (servers[1] as Running).url;
    // node:http with a router on the WHATWG reading of the path (what a Fetch app behind toNodeHandler sees).
    const meter = creditMeteringMiddleware({
      ...options(m, outcomes),
      authenticate: (req) => bearer(req.headers.authorization),
    });
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

  it.each(["/%61pi/chat", "/%61%70%69/chat", "/a%70i/chat"])(
    "Hono: %s (decoded before routing) is metered",
    async (target) => {
      expect(await rawStatus(honoUrl, "POST", target)).toBe(401);
      expect(paid.hono).toBe(0);
      await m.credits.addCredits("ho", 100);
      expect(await rawStatus(honoUrl, "POST", target, { authorization: "Bearer ho" })).toBe(200);
      expect(paid.hono).toBe(1);
      expect(await waitFor(() => outcomes[0])).toMatchObject({ userId: "ho", outcome: "committed", charged: 7 });
    },
  );

  it("errs on the side of metering: spellings Hono does not route to /api/chat are metered too", async () => {
    for (const target of ["/%41PI/chat", "/api%2Fchat", "/%2561pi/chat"]) {
      expect(await rawStatus(honoUrl, "POST", target)).toBe(401);
    }
  });

  it.each([
    "/x/../api/chat",
    "/x/%2e%2e/api/chat",
    "/api/public/../chat",
    "/api/public/%2E%2E/chat",
    "/x/..\\api/chat",
    "//api/chat",
  ])("node:http: %s, which a WHATWG-parsing app routes to /api/chat, is metered", async (target) => {
    expect(await rawStatus(nodeUrl, "POST", target)).toBe(401);
    expect(paid.node).toBe(0);
  });

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

  it("a skip path matches in the router's case only; another spelling of it is metered rather than skipped", async () => {
    // Express routes without case: /API/health is its /api/health route, skipped.
    expect(await rawStatus(expressUrl, "GET", "/API/health")).toBe(200);
    // Express does not decode before routing; Hono does, but the skip must hold for every reading.
    expect(await rawStatus(expressUrl, "GET", "/api/%68ealth")).toBe(401);
    expect(await rawStatus(honoUrl, "GET", "/api/%68ealth")).toBe(401);
    // node:http here routes by case: /API/health is not its /api/health.
    expect(await rawStatus(nodeUrl, "GET", "/API/health")).toBe(401);
    expect(outcomes).toHaveLength(0);
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

describe("skip paths follow the router's case, and hold only when every reading is skipped", () => {
  let m: CreditManager;
  const outcomes: MeterOutcome[] = [];
  const servers: Record<string, Running> = {};
  /** Paid handler runs, by server. */
  const paid: Record<string, number> = {};
  const url = (name: string) => (servers[name] as Running).url;

  /** Express with the health, public and paid (`/api/:model`) routes; `caseSensitive`, `strict`: its app settings. */
  async function expressApp(name: string, caseSensitiveRouting: boolean, strictRouting = false) {
    const app = express();
    if (caseSensitiveRouting) app.set("case sensitive routing", true);
    if (strictRouting) app.set("strict routing", true);
    app.use(
      creditMeteringMiddleware({ ...options(m, outcomes), authenticate: (req) => bearer(req.headers.authorization) }),
    );
    app.get("/api/health", (_req, res) => void res.json({ ok: true }));
    app.get("/api/public/:file", (_req, res) => void res.json({ file: true }));
    app.all("/api/:model", (_req, res) => {
      paid[name] = (paid[name] ?? 0) + 1;
      res.json({ usage: { total_tokens: 7 } });
    });
    servers[name] = await listen(createServer(app));
  }

  /** node:http with its own router (lower-casing the path first when `fold`). */
  async function nodeApp(
    name: string,
    fold: boolean,
    extra: { caseSensitive?: boolean; ignoreTrailingSlash?: boolean } = {},
  ) {
    const meter = creditMeteringMiddleware({
      ...options(m, outcomes),
      ...extra,
      authenticate: (req) => bearer(req.headers.authorization),
    });
    const route = (req: IncomingMessage, res: ServerResponse) => {
      const raw = new URL(req.url ?? "/", "http://h").pathname;
      const cased = fold ? raw.toLowerCase() : raw;
      // A router told to ignore one trailing slash (as Fastify's ignoreTrailingSlash does).
      const path =
        extra.ignoreTrailingSlash === true && cased.length > 1 && cased.endsWith("/") ? cased.slice(0, -1) : cased;
      const free = path === "/api/health" || path.startsWith("/api/public/");
      if (!free) paid[name] = (paid[name] ?? 0) + 1;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(free ? { ok: true } : { usage: { total_tokens: 7 } }));
    };
    servers[name] = await listen(createServer((req, res) => meter(req, res, () => route(req, res))));
  }

  /** Hono behind creditMetering; `fold`: a getPath that lower-cases (a case-insensitive Hono). */
  async function honoApp(name: string, fold: boolean, extra: { caseSensitive?: boolean } = {}) {
    const hono = fold ? new Hono({ getPath: (req) => decodeURI(new URL(req.url).pathname).toLowerCase() }) : new Hono();
    hono.get("/api/health", (c) => c.json({ ok: true }));
    hono.get("/api/public/:file", (c) => c.json({ file: true }));
    hono.all("/api/:model", (c) => {
      paid[name] = (paid[name] ?? 0) + 1;
      return c.json({ usage: { total_tokens: 7 } });
    });
    const metered = creditMetering({
      ...options(m, outcomes),
      ...extra,
      authenticate: (r) => bearer(r.headers.get("authorization")),
    });
    servers[name] = await serveHono(metered(hono.fetch));
  }

  beforeAll(async () => {
    m = await createCreditManager();
    await expressApp("express", false);
    await expressApp("expressByCase", true);
    await expressApp("expressStrict", false, true);
    await nodeApp("nodeSlash", false, { ignoreTrailingSlash: true });
    await nodeApp("node", false);
    await nodeApp("nodeFolding", true, { caseSensitive: false });
    await honoApp("hono", false);
    await honoApp("honoFolding", true, { caseSensitive: false });
  });
  afterAll(async () => {
    for (const s of Object.values(servers)) await s.close();
    await m.close();
  });
  beforeEach(() => {
    outcomes.length = 0;
    for (const k of Object.keys(paid)) delete paid[k];
  });

  /** Without credentials: 401 from the meter, the paid route not run. With them: run and charged. */
  async function expectMetered(name: string, method: string, target: string, reachesPaid: boolean) {
    expect({ name, target, status: await rawStatus(url(name), method, target) }).toEqual({ name, target, status: 401 });
    expect(paid[name]).toBeUndefined();
    if (!reachesPaid) return;
    const user = `${name}-${target}`;
    await m.credits.addCredits(user, 100);
    expect(await rawStatus(url(name), method, target, { authorization: `Bearer ${user}` })).toBe(200);
    expect(paid[name]).toBe(1);
    expect(await waitFor(() => outcomes.find((o) => o.userId === user))).toMatchObject({
      outcome: "committed",
      charged: 7,
    });
    delete paid[name];
  }

  it.each(["/API/health", "/Api/Health", "/API/PUBLIC/file", "http://evil.example/API/health", "/API/health?x=1"])(
    "Express (routes without case by default): %s is a skip path in another case: not metered",
    async (target) => {
      expect(await rawStatus(url("express"), "GET", target)).toBe(200);
      expect(outcomes).toHaveLength(0);
      expect(paid.express).toBeUndefined();
    },
  );

  it.each([
    ["/api/%68ealth", true], // Express routes it to /api/:model (it does not decode before routing)
    ["/API/HEALTHZ", true],
    ["/api/health.json", true],
    ["/API/health/../chat", false],
    ["/api/health/%2e%2e/chat", false],
    ["/API/PUBLIC/../chat", false],
    ["/API/public/%2E%2E/chat", false],
    ["/api//health", false],
  ] as const)("Express: %s is not every reading a skip path: metered", async (target, reachesPaid) => {
    await expectMetered("express", "POST", target, reachesPaid);
  });

  it("Express with case sensitive routing: /api/HEALTH reaches /api/:model, so it is metered and charged", async () => {
    await expectMetered("expressByCase", "GET", "/api/HEALTH", true);
    await expectMetered("expressByCase", "GET", "/API/health", false);
    expect(await rawStatus(url("expressByCase"), "GET", "/api/health")).toBe(200);
  });

  it("Express (routes /api/health/ like /api/health by default): a skip path with a trailing slash is skipped", async () => {
    for (const target of ["/api/health/", "/API/health/", "/api/public/file/"]) {
      expect({ target, status: await rawStatus(url("express"), "GET", target) }).toEqual({ target, status: 200 });
    }
    expect(outcomes).toHaveLength(0);
    expect(paid.express).toBeUndefined();
    // One slash only, and only at the end: these are other paths, metered.
    await expectMetered("express", "GET", "/api/health//", false);
    await expectMetered("express", "POST", "/api/healthz/", true);
  });

  it("Express with strict routing, node:http and Hono (by default): /api/health/ is another path, metered", async () => {
    await expectMetered("expressStrict", "GET", "/api/health/", false);
    expect(await rawStatus(url("expressStrict"), "GET", "/api/health")).toBe(200);
    await expectMetered("node", "GET", "/api/health/", true); // this router sends it to the paid route
    await expectMetered("hono", "GET", "/api/health/", false);
  });

  it("node:http with ignoreTrailingSlash: true (a router that ignores it): the skip path with a slash is skipped", async () => {
    expect(await rawStatus(url("nodeSlash"), "GET", "/api/health/")).toBe(200);
    expect(outcomes).toHaveLength(0);
    expect(paid.nodeSlash).toBeUndefined();
    await expectMetered("nodeSlash", "GET", "/api/healthz/", true);
  });

  it("node:http (no Express): skip paths match by case unless caseSensitive: false", async () => {
    await expectMetered("node", "GET", "/API/health", true); // this router sends /API/health to the paid route
    expect(await rawStatus(url("node"), "GET", "/api/health")).toBe(200);
    outcomes.length = 0;
    // A router that folds case, declared with caseSensitive: false.
    expect(await rawStatus(url("nodeFolding"), "GET", "/API/Health")).toBe(200);
    expect(await rawStatus(url("nodeFolding"), "GET", "/API/PUBLIC/x")).toBe(200);
    expect(outcomes).toHaveLength(0);
    await expectMetered("nodeFolding", "POST", "/API/health/../chat", true);
    await expectMetered("nodeFolding", "POST", "/API/PUBLIC/%2e%2e/chat", true);
    await expectMetered("nodeFolding", "POST", "/api/HEALTHZ", true);
  });

  it("Hono (routes by case): /api/HEALTH reaches /api/:model, so it is metered and charged", async () => {
    await expectMetered("hono", "GET", "/api/HEALTH", true);
    await expectMetered("hono", "GET", "/API/public/x", false);
    expect(await rawStatus(url("hono"), "GET", "/api/health")).toBe(200);
    expect(await rawStatus(url("hono"), "GET", "/api/public/x")).toBe(200);
  });

  it("Hono folding case, with caseSensitive: false: the skip path in any case is skipped, other routes stay metered", async () => {
    expect(await rawStatus(url("honoFolding"), "GET", "/API/Health")).toBe(200);
    expect(await rawStatus(url("honoFolding"), "GET", "/Api/Public/x")).toBe(200);
    expect(outcomes).toHaveLength(0);
    await expectMetered("honoFolding", "POST", "/API/health/../chat", true);
    await expectMetered("honoFolding", "POST", "/api/HEALTH/%2e%2e/chat", true);
    await expectMetered("honoFolding", "GET", "/API/HEALTHZ", true);
    // Decoded it would be the health route; as sent it is not a skip path: metered (never under-metered).
    await expectMetered("honoFolding", "GET", "/API/%68EALTH", false);
  });

  it("a RegExp skip path with the g flag skips every time", async () => {
    const metered = creditMetering({ credits: m.credits, authenticate: () => null, skipPaths: [/^\/api\/health$/g] })(
      () => Response.json({ ok: true }),
    );
    for (let i = 0; i < 3; i++) expect((await metered(new Request("http://h/api/health"))).status).toBe(200);
    expect((await metered(new Request("http://h/api/chat"))).status).toBe(401);
  });

  it("skipPaths and caseSensitive are checked when the metering is made", () => {
    const base = { credits: m.credits, authenticate: () => null };
    expect(() => creditMeteringMiddleware({ ...base, caseSensitive: "no" as unknown as boolean })).toThrow(
      expect.objectContaining({
        name: "ConfigurationError",
        message: expect.stringContaining("`caseSensitive` must be a boolean"),
      }),
    );
    expect(() => creditMeteringMiddleware({ ...base, ignoreTrailingSlash: 1 as unknown as boolean })).toThrow(
      expect.objectContaining({
        name: "ConfigurationError",
        message: expect.stringContaining("`ignoreTrailingSlash` must be a boolean"),
      }),
    );
    expect(() => creditMetering({ ...base, skipPaths: [42 as unknown as string] })).toThrow(/skipPaths/);
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
      expect(outcomes).toEqual([
        expect.objectContaining({ userId: user, outcome: "released", releaseReason: "aborted", charged: 0 }),
      ]);
      expect(await m.credits.getUserCreditsInfo(user)).toMatchObject({ balance: 1000, reserved: 0 });
      expect((await m.credits.getCreditHistory(user, { limit: 2 })).items.map((e) => e.type)).toEqual([
        "release_reserved",
        "reserve",
      ]);
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
      const req = httpRequest({
        host: "127.0.0.1",
        port: Number(port),
        path: "/api/stream",
        headers: { authorization: `Bearer ${user}` },
      });
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

describe("creditMetering (Fetch): the JSON body is read only when the charge depends on it", () => {
  it("recorded usage: the handler's own Response goes out, body unread, with the header; a usage key with nothing recorded reads it", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("f", 1_000);
    let made: Response | undefined;
    const handler = async (request: Request) => {
      if (request.headers.get("x-record") === "yes") recordUsage({ amount: 3 });
      made = Response.json({ usage: { total_tokens: 5 } });
      return made;
    };
    const metered = creditMetering({ credits: m.credits, trustUserIdHeader: true, usageKey: "usage.total_tokens" })(
      handler,
    );
    const call = (record: string) =>
      metered(new Request("http://x/api/chat", { method: "POST", headers: { "x-user-id": "f", "x-record": record } }));

    const recorded = await call("yes");
    expect(recorded).toBe(made); // not a copy
    expect(recorded.bodyUsed).toBe(false);
    expect(recorded.headers.get("x-credits-deducted")).toBe("3");
    expect(await recorded.json()).toEqual({ usage: { total_tokens: 5 } });

    const fromBody = await call("no");
    expect(fromBody.headers.get("x-credits-deducted")).toBe("5"); // the usage key, read from the body
    expect(await fromBody.json()).toEqual({ usage: { total_tokens: 5 } });
    expect(await m.credits.getUserCreditsInfo("f")).toMatchObject({ balance: 992, reserved: 0 });
    expect((await m.credits.audit("f")).ok).toBe(true);
    await m.close();
  });
});
