/** The same AI-style app written for each host, metered by this library's middleware. */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import express from "express";
import Fastify, { type FastifyInstance } from "fastify";
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import {
  creditMetering,
  creditMeteringMiddleware,
  fastifyCreditMetering,
  toNodeHandler,
  type CreditMeteringMiddlewareOptions,
  type CreditMeteringOptions,
} from "../../src/http/index.js";
import { recordUsage } from "../../src/index.js";
import { listen, serveHono, type Running } from "./servers.js";

/**
 * Routes (all under /api unless said):
 * - POST /api/chat: records 42 (model m-1), answers JSON
 * - POST /api/json-usage: records nothing, answers `{ usage: { total_tokens: 17 } }`
 * - GET /api/health (skipped), GET /public (outside the prefix)
 * - POST /api/fail: throws; POST /api/unavailable: answers 503
 * - GET /api/stream: server-sent events, 3 events, records 10 with each
 * - GET /api/slow: records 5 and answers once the test calls `slowRoute.finish()` (clients abort it first)
 * - POST /api/burst: records 60 after 30 ms
 */
/**
 * GET /api/slow's handler waits until the test calls `finish()` — its client has left by then — and
 * then records 5 and answers: a test of a handler that ends late says when it ends, instead of
 * sleeping past a fixed delay. `finish()` resolves once the handler has recorded (or, on node:http,
 * seen its response destroyed), and makes the next request wait again.
 */
export const slowRoute = (() => {
  let open = (): void => undefined;
  let opened = new Promise<void>((resolve) => (open = resolve));
  let ended = (): void => undefined;
  let done = new Promise<void>((resolve) => (ended = resolve));
  return {
    wait: () => opened,
    ended: () => ended(),
    async finish(): Promise<void> {
      open();
      await done;
      opened = new Promise<void>((resolve) => (open = resolve));
      done = new Promise<void>((resolve) => (ended = resolve));
    },
  };
})();

export interface MeteredHost {
  name: string;
  /** Whether a JSON response carries X-Credits-Deducted on this host. */
  headerOnJson: boolean;
  start(
    options: Omit<CreditMeteringOptions, "authenticate"> & {
      authenticate: (userId: string | undefined) => { userId: string } | null;
    },
  ): Promise<Running>;
}

const enc = new TextEncoder();
const userOf = (value: string | string[] | null | undefined) => {
  const v = Array.isArray(value) ? value[0] : value;
  return v ? v.replace(/^Bearer /, "") : undefined;
};

/** A framework-free Fetch app. */
async function fetchApp(request: Request): Promise<Response> {
  const path = new URL(request.url).pathname;
  switch (path) {
    case "/api/chat":
      await sleep(1);
      recordUsage({ amount: 42, model: "m-1", provider: "acme" });
      return Response.json({ reply: "hello" });
    case "/api/json-usage":
      return Response.json({ reply: "hi", usage: { total_tokens: 17 } });
    case "/api/health":
    case "/public":
      return Response.json({ ok: true });
    case "/api/fail":
      throw new Error("model crashed");
    case "/api/unavailable":
      return Response.json({ error: "upstream down" }, { status: 503 });
    case "/api/stream":
      return new Response(
        new ReadableStream({
          async start(controller) {
            for (let i = 0; i < 3; i++) {
              await sleep(10);
              recordUsage({ amount: 10, model: "m-stream" });
              controller.enqueue(enc.encode(`data: ${i}\n\n`));
            }
            controller.close();
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    case "/api/slow":
      await slowRoute.wait();
      recordUsage({ amount: 5 });
      slowRoute.ended();
      return Response.json({ late: true });
    case "/api/slow-stream": {
      let stop = false;
      return new Response(
        new ReadableStream({
          async start(controller) {
            for (let i = 0; i < 20 && !stop; i++) {
              recordUsage({ amount: 1 });
              controller.enqueue(enc.encode(`data: ${i}\n\n`));
              await sleep(100);
            }
            if (!stop) controller.close();
          },
          cancel() {
            stop = true;
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    }
    case "/api/burst":
      await sleep(30);
      recordUsage({ amount: 60 });
      return Response.json({ ok: true });
    default:
      return new Response("not found", { status: 404 });
  }
}

function honoApp(): Hono {
  const app = new Hono();
  app.post("/api/chat", async (c) => {
    await sleep(1);
    recordUsage({ amount: 42, model: "m-1", provider: "acme" });
    return c.json({ reply: "hello" });
  });
  app.post("/api/json-usage", (c) => c.json({ reply: "hi", usage: { total_tokens: 17 } }));
  app.get("/api/health", (c) => c.json({ ok: true }));
  app.get("/public", (c) => c.json({ ok: true }));
  app.post("/api/fail", () => {
    throw new Error("model crashed");
  });
  app.post("/api/unavailable", (c) => c.json({ error: "upstream down" }, 503));
  app.get("/api/stream", (c) =>
    streamSSE(c, async (stream) => {
      for (let i = 0; i < 3; i++) {
        await sleep(10);
        recordUsage({ amount: 10, model: "m-stream" });
        await stream.writeSSE({ data: String(i) });
      }
    }),
  );
  app.get("/api/slow-stream", (c) =>
    streamSSE(c, async (stream) => {
      for (let i = 0; i < 20 && !stream.aborted; i++) {
        recordUsage({ amount: 1 });
        await stream.writeSSE({ data: String(i) });
        await sleep(100);
      }
    }),
  );
  app.get("/api/slow", async (c) => {
    await slowRoute.wait();
    recordUsage({ amount: 5 });
    slowRoute.ended();
    return c.json({ late: true });
  });
  app.post("/api/burst", async (c) => {
    await sleep(30);
    recordUsage({ amount: 60 });
    return c.json({ ok: true });
  });
  return app;
}

/** Plain node routes (node:http and Express share them). */
async function nodeRoute(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? "/").split("?")[0];
  const send = (status: number, body: unknown) => {
    res.statusCode = status;
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify(body));
  };
  switch (path) {
    case "/api/chat":
      await sleep(1);
      recordUsage({ amount: 42, model: "m-1", provider: "acme" });
      return send(200, { reply: "hello" });
    case "/api/json-usage":
      return send(200, { reply: "hi", usage: { total_tokens: 17 } });
    case "/api/health":
    case "/public":
      return send(200, { ok: true });
    case "/api/fail":
      throw new Error("model crashed");
    case "/api/unavailable":
      return send(503, { error: "upstream down" });
    case "/api/stream":
      res.setHeader("content-type", "text/event-stream");
      res.flushHeaders();
      for (let i = 0; i < 3; i++) {
        await sleep(10);
        recordUsage({ amount: 10, model: "m-stream" });
        res.write(`data: ${i}\n\n`);
      }
      res.end();
      return;
    case "/api/slow-stream":
      res.setHeader("content-type", "text/event-stream");
      res.flushHeaders();
      for (let i = 0; i < 20 && !res.destroyed; i++) {
        recordUsage({ amount: 1 });
        res.write(`data: ${i}\n\n`);
        await sleep(100);
      }
      if (!res.destroyed) res.end();
      return;
    case "/api/slow":
      await slowRoute.wait();
      slowRoute.ended();
      if (res.destroyed) return;
      recordUsage({ amount: 5 });
      return send(200, { late: true });
    case "/api/burst":
      await sleep(30);
      recordUsage({ amount: 60 });
      return send(200, { ok: true });
    default:
      return send(404, {});
  }
}

const middlewareOptions = (o: Parameters<MeteredHost["start"]>[0]): CreditMeteringMiddlewareOptions => ({
  ...o,
  onSettled: o.onSettled as CreditMeteringMiddlewareOptions["onSettled"],
  spender: o.spender as CreditMeteringMiddlewareOptions["spender"],
  feature: o.feature as CreditMeteringMiddlewareOptions["feature"],
  price: o.price as CreditMeteringMiddlewareOptions["price"],
  authenticate: (req) => o.authenticate(userOf(req.headers.authorization)),
});
const fetchOptions = (o: Parameters<MeteredHost["start"]>[0]): CreditMeteringOptions => ({
  ...o,
  authenticate: (request) => o.authenticate(userOf(request.headers.get("authorization"))),
});

/** The app's routes on a Fastify instance (metered by whatever the host registered), listening on loopback. */
async function serveFastify(app: FastifyInstance): Promise<Running> {
  app.post("/api/chat", async () => {
    await sleep(1);
    recordUsage({ amount: 42, model: "m-1", provider: "acme" });
    return { reply: "hello" };
  });
  app.post("/api/json-usage", async () => ({ reply: "hi", usage: { total_tokens: 17 } }));
  app.get("/api/health", async () => ({ ok: true }));
  app.get("/public", async () => ({ ok: true }));
  app.post("/api/fail", async () => {
    throw new Error("model crashed");
  });
  app.post("/api/unavailable", async (_req, reply) => reply.code(503).send({ error: "upstream down" }));
  app.get("/api/stream", (_req, reply) => {
    reply.hijack();
    void nodeRoute(Object.assign(reply.raw.req, { url: "/api/stream" }), reply.raw);
  });
  app.get("/api/slow-stream", (_req, reply) => {
    reply.hijack();
    void nodeRoute(Object.assign(reply.raw.req, { url: "/api/slow-stream" }), reply.raw);
  });
  app.get("/api/slow", async () => {
    await slowRoute.wait();
    recordUsage({ amount: 5 });
    slowRoute.ended();
    return { late: true };
  });
  app.post("/api/burst", async () => {
    await sleep(30);
    recordUsage({ amount: 60 });
    return { ok: true };
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const { port } = app.server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, close: async () => void (await app.close()) };
}

export const meteredHosts: MeteredHost[] = [
  {
    name: "node:http + toNodeHandler(creditMetering(fetch app))",
    headerOnJson: true,
    start: (o) => listen(createServer(toNodeHandler(creditMetering(fetchOptions(o))(fetchApp)))),
  },
  {
    name: "hono + creditMetering(app.fetch)",
    headerOnJson: true,
    start: (o) => serveHono(creditMetering(fetchOptions(o))(honoApp().fetch)),
  },
  {
    name: "node:http + creditMeteringMiddleware",
    headerOnJson: true,
    start: (o) => {
      const meter = creditMeteringMiddleware(middlewareOptions(o));
      return listen(
        createServer((req, res) =>
          meter(req, res, (error) => {
            if (error) return void res.writeHead(500).end();
            nodeRoute(req, res).catch(() => {
              res.statusCode = 500;
              res.end("{}");
            });
          }),
        ),
      );
    },
  },
  {
    name: "express + creditMeteringMiddleware",
    headerOnJson: true,
    start: (o) => {
      const app = express();
      app.use(creditMeteringMiddleware(middlewareOptions(o)));
      app.all("/{*any}", (req, res, next) => {
        nodeRoute(req, res).catch(next);
      });
      return listen(createServer(app));
    },
  },
  {
    name: "fastify + creditMeteringMiddleware (onRequest hook)",
    headerOnJson: false,
    start: async (o) => {
      const app = Fastify();
      const meter = creditMeteringMiddleware(middlewareOptions(o));
      app.addHook("onRequest", (request, reply, done) => meter(request.raw, reply.raw, done));
      return serveFastify(app);
    },
  },
  {
    /** @see issue 24, item 11: Fastify's own plugin, inside its lifecycle (no hijack for JSON routes). */
    name: "fastify + fastifyCreditMetering (plugin)",
    headerOnJson: true,
    start: async (o) => {
      const app = Fastify();
      const base = middlewareOptions(o);
      await app.register(
        fastifyCreditMetering({
          ...base,
          authenticate: (request) => o.authenticate(userOf(request.headers.authorization)),
        } as Parameters<typeof fastifyCreditMetering>[0]),
      );
      return serveFastify(app);
    },
  },
];
