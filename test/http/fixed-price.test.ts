import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { Readable } from "node:stream";
import express from "express";
import Fastify from "fastify";
import diagnostics_channel from "node:diagnostics_channel";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import {
  createCreditManager,
  DIAGNOSTICS_CHANNELS,
  InMemoryDbManager,
  StorageError,
  type CreditManager,
  type MeterOutcome,
} from "../../src/index.js";
import { creditMetering, creditMeteringMiddleware, fastifyCreditMetering } from "../../src/http/index.js";
import { listen, waitFor, type Running } from "./servers.js";

/**
 * Fixed-price metering (the `price` option, docs/metering.md "Fixed-price endpoints"): one
 * deduction per request that succeeded, no hold; never a charge for a failed or aborted request;
 * 402 without running the handler when the account cannot pay.
 */

/** What every host's handler did, by path: to tell whether it ran. */
const ran: string[] = [];

type Route = { status: number; body?: string; delay?: number; parts?: boolean };
const routes: Record<string, Route> = {
  "/api/ok": { status: 200, body: '{"ok":true}' },
  "/api/usage": { status: 200, body: '{"usage":{"n":7}}' },
  "/api/big": { status: 200, body: '{"usage":{"n":500}}' },
  "/api/bad": { status: 400, body: '{"error":"bad"}' },
  "/api/fail": { status: 503, body: "{}" },
  "/api/slow": { status: 200, body: "{}", delay: 400 },
  "/api/stream": { status: 200, body: "data: 1\n\n", parts: true },
  "/api/free/health": { status: 200, body: "{}" },
};

async function nodeRoute(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? "/").split("?")[0] as string;
  ran.push(path);
  if (path === "/api/throws") throw new Error("handler failed");
  // Ended within the middleware's next(), before the handler's first await: in parts, or destroyed.
  if (path === "/api/parts-now") {
    res.setHeader("content-type", "text/event-stream");
    res.write("data: 1\n\n");
    res.end("data: 2\n\n");
    return;
  }
  if (path === "/api/destroy-now") return void res.destroy();
  const r = routes[path] ?? { status: 404, body: "{}" };
  if (r.delay) await sleep(r.delay);
  if (res.destroyed) return;
  res.statusCode = r.status;
  if (r.parts) {
    res.setHeader("content-type", "text/event-stream");
    res.write(r.body);
    await sleep(5);
    res.end(r.body);
    return;
  }
  res.setHeader("content-type", "application/json");
  res.end(r.body);
}

async function fetchRoute(request: Request): Promise<Response> {
  const path = new URL(request.url).pathname;
  ran.push(path);
  if (path === "/api/throws") throw new Error("handler failed");
  const r = routes[path] ?? { status: 404, body: "{}" };
  if (r.delay) await sleep(r.delay);
  if (r.parts) {
    const chunks = [r.body as string, r.body as string];
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const next = chunks.shift();
        if (next === undefined) return controller.close();
        await sleep(5);
        controller.enqueue(new TextEncoder().encode(next));
      },
    });
    return new Response(body, { status: r.status, headers: { "content-type": "text/event-stream" } });
  }
  return new Response(r.body, { status: r.status, headers: { "content-type": "application/json" } });
}

type Options = Parameters<typeof creditMeteringMiddleware>[0];

/** The routes on Fastify: a stream is a `Readable` of two parts, a throw becomes Fastify's 500. */
async function fastifyApp(o: Options): Promise<Running> {
  // Closed connections and all: Fastify's close() otherwise waits on a connection whose client aborted.
  const app = Fastify({ forceCloseConnections: true });
  await app.register(
    fastifyCreditMetering({
      ...o,
      authenticate: (request) => ({ userId: String(request.headers["x-payer"] ?? "") }),
      onSettled: o.onSettled as unknown as Parameters<typeof fastifyCreditMetering>[0]["onSettled"],
    } as Parameters<typeof fastifyCreditMetering>[0]),
  );
  app.all("/*", async (request, reply) => {
    const path = request.url.split("?")[0] as string;
    ran.push(path);
    if (path === "/api/throws") throw new Error("handler failed");
    const r = routes[path] ?? { status: 404, body: "{}" };
    if (r.delay) await sleep(r.delay);
    reply.code(r.status);
    if (r.parts) {
      const body = r.body as string;
      reply.header("content-type", "text/event-stream");
      return reply.send(
        Readable.from(
          (async function* () {
            yield body;
            await sleep(5);
            yield body;
          })(),
        ),
      );
    }
    reply.header("content-type", "application/json");
    return reply.send(r.body);
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const address = app.server.address() as { port: number };
  return { url: `http://127.0.0.1:${address.port}`, close: () => app.close() };
}
const hosts: { name: string; start: (o: Options) => Promise<Running> }[] = [
  {
    name: "node:http + creditMeteringMiddleware",
    start: (o) => {
      const meter = creditMeteringMiddleware(o);
      return listen(
        createServer((req, res) =>
          meter(req, res, () => {
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
    start: (o) => {
      const app = express();
      app.use(creditMeteringMiddleware(o));
      app.all("/{*any}", (req, res, next) => {
        nodeRoute(req, res).catch(next);
      });
      return listen(createServer(app));
    },
  },
  {
    name: "node:http + creditMetering (Fetch)",
    start: (o) => {
      const fetchOptions: Parameters<typeof creditMetering>[0] = {
        ...o,
        authenticate: (request: Request) => ({ userId: request.headers.get("x-payer") ?? "" }),
        price: o.price as number,
        onSettled: o.onSettled as unknown as Parameters<typeof creditMetering>[0]["onSettled"],
        spender: o.spender as unknown as Parameters<typeof creditMetering>[0]["spender"],
        feature: o.feature as unknown as Parameters<typeof creditMetering>[0]["feature"],
      };
      const app = creditMetering(fetchOptions)(fetchRoute);
      return listen(
        createServer(async (req, res) => {
          const controller = new AbortController();
          res.on("close", () => {
            if (!res.writableFinished) controller.abort();
          });
          const request = new Request(`http://localhost${req.url}`, {
            method: req.method,
            headers: req.headers as Record<string, string>,
            signal: controller.signal,
          });
          let response: Response;
          try {
            response = await app(request);
          } catch {
            res.statusCode = 500;
            return void res.end("{}");
          }
          res.statusCode = response.status;
          response.headers.forEach((v, k) => res.setHeader(k, v));
          if (response.body === null) return void res.end();
          const reader = response.body.getReader();
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            if (res.destroyed) return void (await reader.cancel());
            res.write(value);
          }
          res.end();
        }),
      );
    },
  },
  { name: "fastify + fastifyCreditMetering (plugin)", start: fastifyApp },
];

describe.each(hosts.map((h) => [h.name, h] as const))("fixed-price metering on %s", (_name, host) => {
  let m: CreditManager;
  let server: Running;
  const outcomes: MeterOutcome[] = [];
  const user = () => `fixed-${Math.random().toString(36).slice(2)}`;

  beforeAll(async () => {
    m = await createCreditManager();
    server = await host.start({
      credits: m.credits,
      authenticate: (req) => ({ userId: String(req.headers["x-payer"] ?? "") }),
      pathPrefix: "/api",
      skipPaths: ["/api/free/health"],
      price: 7,
      onSettled: (o) => outcomes.push(o),
    });
  });
  afterAll(async () => {
    await server.close();
    await m.close();
  });
  beforeEach(() => {
    outcomes.length = 0;
    ran.length = 0;
  });

  const call = (path: string, u: string, headers: Record<string, string> = {}, signal?: AbortSignal) =>
    fetch(server.url + path, { method: "POST", headers: { "x-payer": u, ...headers }, signal });
  const entries = async (u: string) => (await m.credits.getCreditHistory(u)).items.map((e) => [e.type, e.amount]);

  it("charges a request that succeeded exactly once, with one deduction and no hold", async () => {
    const u = user();
    await m.credits.addCredits(u, 100);
    const res = await call("/api/ok", u);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
    expect(res.headers.get("x-credits-deducted")).toBe("7");
    const o = await waitFor(() => outcomes[0]);
    expect(o).toMatchObject({ userId: u, outcome: "committed", charged: 7, fixedPrice: true, reservationId: "" });
    expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 93, reserved: 0 });
    expect(await entries(u)).toEqual([
      ["deduct", 7],
      ["add", 100],
    ]);
    expect(ran).toEqual(["/api/ok"]);
    expect((await m.credits.audit(u)).ok).toBe(true);
  });

  it("every request served leaves an entry: past the overdraft limit (0), one of 0 credits with its shortfall, counted by usage and revenue", async () => {
    const u = user();
    await m.credits.addCredits(u, 7);
    const from = new Date(Date.now() - 60_000);
    // Ten requests at once on credits for one: each passes the check, each is served.
    const statuses = await Promise.all(Array.from({ length: 10 }, () => call("/api/slow", u).then((r) => r.status)));
    expect(statuses).toEqual(Array.from({ length: 10 }, () => 200));
    await waitFor(() => outcomes[9]);
    expect(outcomes.map((o) => o.shortfall ?? 0).sort((a, b) => a - b)).toEqual([
      0,
      ...Array.from({ length: 9 }, () => 7),
    ]);
    const history = (await m.credits.getCreditHistory(u, { types: ["deduct"] })).items;
    expect(history.map((e) => [e.amount, e.shortfall ?? 0]).sort()).toEqual([
      [0, 7],
      [0, 7],
      [0, 7],
      [0, 7],
      [0, 7],
      [0, 7],
      [0, 7],
      [0, 7],
      [0, 7],
      [7, 0],
    ]);
    const to = new Date(Date.now() + 60_000);
    const usage = await m.credits.getUsage({ account: u, from, to, interval: null });
    expect(usage.rows.map((r) => [r.kind, r.credits, r.requests, r.shortfall])).toEqual([["spend", 7, 10, 63]]);
    const revenue = await m.credits.getRevenue({ account: u, from, to, interval: null });
    expect(revenue.rows.map((r) => [r.currency, r.unbilledCredits])).toEqual([[null, 63]]);
    expect((await m.credits.audit(u)).ok).toBe(true);
  });

  it("a retry with the same Idempotency-Key runs again but is charged once", async () => {
    const u = user();
    await m.credits.addCredits(u, 100);
    for (let i = 0; i < 2; i++) expect((await call("/api/ok", u, { "idempotency-key": "req-1" })).status).toBe(200);
    await waitFor(() => outcomes[1]);
    expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 93 });
    expect(ran).toEqual(["/api/ok", "/api/ok"]);
    expect((await call("/api/ok", u, { "idempotency-key": "k".repeat(300) })).status).toBe(400);
    expect(ran).toHaveLength(2);
  });

  it("never charges a failed request: 4xx, 5xx, or a handler that throws", async () => {
    const u = user();
    await m.credits.addCredits(u, 100);
    expect((await call("/api/bad", u)).status).toBe(400);
    const down = await call("/api/fail", u);
    expect(down.status).toBe(503);
    expect(down.headers.get("x-credits-deducted")).toBe("0");
    expect((await call("/api/throws", u)).status).toBe(500);
    await waitFor(() => (outcomes.length >= 2 ? outcomes : undefined));
    expect(outcomes.every((o) => o.charged === 0)).toBe(true);
    expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, reserved: 0 });
    expect(ran).toEqual(["/api/bad", "/api/fail", "/api/throws"]);
  });

  it("never charges a request whose client left before it finished", async () => {
    const u = user();
    await m.credits.addCredits(u, 100);
    const controller = new AbortController();
    const pending = call("/api/slow", u, {}, controller.signal).catch((e: unknown) => e);
    await waitFor(() => (ran.includes("/api/slow") ? true : undefined));
    controller.abort();
    await pending;
    await sleep(600); // the handler ends after its 400 ms
    expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100, reserved: 0 });
    expect(await entries(u)).toEqual([["add", 100]]);
  });

  it("answers 402 without running the handler when the account cannot pay the price", async () => {
    const u = user();
    await m.credits.addCredits(u, 6);
    const res = await call("/api/ok", u);
    expect(res.status).toBe(402);
    expect(await res.json()).toMatchObject({ error: { code: "INSUFFICIENT_CREDITS" } });
    expect(ran).toEqual([]);
    expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 6 });
  });

  it("charges a response written in parts (a stream) once it ended", async () => {
    const u = user();
    await m.credits.addCredits(u, 100);
    const res = await call("/api/stream", u);
    expect(await res.text()).toBe("data: 1\n\ndata: 1\n\n");
    await waitFor(() => outcomes[0]);
    expect(outcomes[0]).toMatchObject({ charged: 7 });
    expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 93 });
  });

  it("leaves paths it does not meter alone", async () => {
    const u = user();
    expect((await call("/api/free/health", u)).status).toBe(200);
    expect(ran).toEqual(["/api/free/health"]);
  });
});

describe("fixed-price options", () => {
  it("a price function prices each request; a bad answer is a 500 and the handler does not run", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("p", 100);
    const app = creditMetering({
      credits: m.credits,
      trustUserIdHeader: true,
      price: (request) =>
        request.headers.get("x-size") === "big" ? 10 : request.headers.get("x-size") === "odd" ? 1.5 : 2,
    })(fetchRoute);
    const go = (size: string) =>
      app(new Request("http://x/api/ok", { method: "POST", headers: { "x-user-id": "p", "x-size": size } }));
    expect((await go("big")).headers.get("x-credits-deducted")).toBe("10");
    expect((await go("small")).headers.get("x-credits-deducted")).toBe("2");
    ran.length = 0;
    expect((await go("odd")).status).toBe(500);
    expect(ran).toEqual([]);
    expect(await m.credits.getUserCreditsInfo("p")).toMatchObject({ balance: 88 });
    await m.close();
  });

  it("reports a charge that failed: the manager's logger, the metering channel and onSettled with the error", async () => {
    const errors: unknown[][] = [];
    const logger = { error: (...a: unknown[]) => errors.push(a), warn: () => {}, info: () => {}, debug: () => {} };
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db, logger });
    await m.credits.addCredits("p", 100);
    await m.credits.getUserCreditsInfo("p"); // read before the store goes down: the check passes
    const down = new StorageError("the store is down");
    const spy = vi.spyOn(db, "transaction").mockRejectedValue(down);
    const outcomes: MeterOutcome[] = [];
    const messages: unknown[] = [];
    const listen = (message: unknown) => messages.push(message);
    diagnostics_channel.subscribe(DIAGNOSTICS_CHANNELS.metering, listen);
    try {
      const app = creditMetering({
        credits: m.credits,
        trustUserIdHeader: true,
        price: 7,
        onSettled: (o) => outcomes.push(o),
      })(fetchRoute);
      const res = await app(new Request("http://x/api/ok", { method: "POST", headers: { "x-user-id": "p" } }));
      expect(res.status).toBe(200);
      expect(res.headers.get("x-credits-deducted")).toBeNull();
      expect(spy).toHaveBeenCalledTimes(1);
      expect(outcomes).toEqual([
        {
          userId: "p",
          reservationId: "",
          estimate: 7,
          outcome: "released",
          charged: 0,
          releaseReason: "settle-failed",
          usages: [],
          entry: null,
          fixedPrice: true,
          error: down,
        },
      ]);
      expect(errors).toHaveLength(1);
      expect(errors[0]?.[0]).toMatchObject({ err: down, userId: "p", estimate: 7 });
      expect(messages).toEqual([
        expect.objectContaining({ userId: "p", outcome: "released", charged: 0, released: 0, reason: "settle-failed" }),
      ]);
      spy.mockRestore();
      expect(await m.credits.getUserCreditsInfo("p")).toMatchObject({ balance: 100 });
    } finally {
      diagnostics_channel.unsubscribe(DIAGNOSTICS_CHANNELS.metering, listen);
      await m.close();
    }
  });

  it("refuses a malformed price, on every host", async () => {
    const m = await createCreditManager();
    const badPrice = expect.objectContaining({
      name: "ConfigurationError",
      message: expect.stringContaining("`price` must be a non-negative integer or a function"),
    });
    expect(() => creditMeteringMiddleware({ credits: m.credits, trustUserIdHeader: true, price: -1 })).toThrow(
      badPrice,
    );
    expect(() => creditMeteringMiddleware({ credits: m.credits, trustUserIdHeader: true, price: 0.5 })).toThrow(
      badPrice,
    );
    expect(() =>
      creditMeteringMiddleware({
        credits: { openMeter: m.credits.openMeter.bind(m.credits) },
        trustUserIdHeader: true,
        price: 1,
      }),
    ).toThrow(/manager.credits/);
    expect(() => fastifyCreditMetering({ credits: m.credits, trustUserIdHeader: true, price: -1 })).toThrow(badPrice);
    expect(() => creditMetering({ credits: m.credits, trustUserIdHeader: true, price: 2.5 })).toThrow(badPrice);
    await m.close();
  });
});

/** A manager, a lease (blocks of 100, one window of 30 s) and `host` metering through it, its outcomes collected. */
async function leasedServer(host: (typeof hosts)[number], metering: Partial<Options>) {
  const m = await createCreditManager();
  const lease = m.credits.leases({ size: 100, settleEveryMs: 30_000, exactBelow: 1 });
  const outcomes: MeterOutcome[] = [];
  const server = await host.start({
    credits: m.credits,
    authenticate: (req) => ({ userId: String(req.headers["x-payer"] ?? "") }),
    pathPrefix: "/api",
    lease,
    onSettled: (o) => outcomes.push(o),
    ...metering,
  });
  return { m, lease, outcomes, server };
}

describe.each(hosts.map((h) => [h.name, h] as const))("fixed-price metering through a lease on %s", (_name, host) => {
  it("charges covered requests from the block in memory, none for a failed one, and settles them in one window", async () => {
    const { m, lease, outcomes, server } = await leasedServer(host, { price: 7 });
    try {
      await m.credits.addCredits("lessee", 1000);
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`${server.url}/api/ok`, { headers: { "x-payer": "lessee" } });
        expect(res.status).toBe(200);
        await res.text();
      }
      const bad = await fetch(`${server.url}/api/bad`, { headers: { "x-payer": "lessee" } });
      expect(bad.status).toBe(400);
      await bad.text();
      await waitFor(() => (outcomes.length === 6 ? true : undefined));
      expect(outcomes.filter((o) => o.charged === 7)).toHaveLength(5);
      // Held, not yet journaled: the window settles at flush.
      expect((await m.credits.getUserCreditsInfo("lessee")).reserved).toBeGreaterThan(0);
      await lease.close();
      expect(await m.credits.getUserCreditsInfo("lessee")).toMatchObject({ balance: 1000 - 35, reserved: 0 });
      const settle = (await m.credits.getCreditHistory("lessee")).items.find((e) => e.metadata?.leaseWindow);
      expect(settle?.metadata?.leaseWindow).toMatchObject({ requests: 5, total: 35 });
      // A user who cannot pay is still refused before the handler runs.
      const broke = await fetch(`${server.url}/api/ok`, { headers: { "x-payer": "nobody" } });
      expect(broke.status).toBe(402);
      await broke.text();
    } finally {
      await server.close();
      await m.close();
    }
  });
});

describe.each(hosts.map((h) => [h.name, h] as const))(
  "a fixed price set aside in a lease block on %s",
  (_name, host) => {
    it("holds the price of a request in flight inside the block from its check to its charge; a failed or aborted one gives it back", async () => {
      const { m, lease, outcomes, server } = await leasedServer(host, { price: 7 });
      const call = (path: string, signal?: AbortSignal) =>
        fetch(`${server.url}${path}`, { headers: { "x-payer": "lessee" }, ...(signal ? { signal } : {}) });
      try {
        await m.credits.addCredits("lessee", 1000);
        await (await call("/api/ok")).text(); // opens the block (and is charged from it)
        await waitFor(() => (lease.covers("lessee", 7) ? true : undefined));
        const block = (await m.credits.getUserCreditsInfo("lessee")).reserved;
        /** What the block has free now: the largest charge it covers. */
        const free = () => {
          let n = block;
          while (n > 0 && !lease.covers("lessee", n)) n--;
          return n;
        };
        expect(free()).toBe(block - 7);
        const mark = ran.length;
        const slow = [call("/api/slow"), call("/api/slow"), call("/api/slow")];
        await waitFor(() => (ran.slice(mark).filter((p) => p === "/api/slow").length === 3 ? true : undefined));
        // Three handlers running: their prices are set aside, not free for other charges.
        expect(free()).toBe(block - 7 - 21);
        for (const res of await Promise.all(slow)) {
          expect(res.headers.get("x-credits-deducted")).toBe("7");
          await res.text();
        }
        await waitFor(() => (outcomes.length === 4 ? true : undefined));
        expect(outcomes.slice(1).every((o) => o.leased === true && o.charged === 7 && o.entry === null)).toBe(true);
        expect(free()).toBe(block - 28);
        // A failed request: its price goes back.
        await (await call("/api/bad")).text();
        await waitFor(() => (outcomes.length === 5 ? true : undefined));
        expect(outcomes[4]).toMatchObject({ outcome: "released", charged: 0, releaseReason: "error" });
        expect(free()).toBe(block - 28);
        // An aborted one, set aside while it ran: given back when its client left.
        const gone = new AbortController();
        const at = ran.length;
        const aborted = call("/api/slow", gone.signal).catch(() => null);
        await waitFor(() => (ran.slice(at).includes("/api/slow") ? true : undefined));
        expect(free()).toBe(block - 35);
        gone.abort();
        await aborted;
        await waitFor(() => (free() === block - 28 ? true : undefined));
        await sleep(450); // the handler's own end, after its client left, charges nothing
        expect(free()).toBe(block - 28);
        await lease.close();
        expect(await m.credits.getUserCreditsInfo("lessee")).toMatchObject({ balance: 1000 - 28, reserved: 0 });
        expect((await m.credits.audit("lessee")).ok).toBe(true);
      } finally {
        await server.close();
        await m.close();
      }
    });

    it("charges a request still running when its lease closes (a shutdown) exactly, once", async () => {
      const { m, lease, outcomes, server } = await leasedServer(host, { price: 7 });
      try {
        await m.credits.addCredits("lessee", 1000);
        await (await fetch(`${server.url}/api/ok`, { headers: { "x-payer": "lessee" } })).text();
        await waitFor(() => (lease.covers("lessee", 7) ? true : undefined));
        const mark = ran.length;
        const slow = fetch(`${server.url}/api/slow`, { headers: { "x-payer": "lessee" } });
        await waitFor(() => (ran.slice(mark).includes("/api/slow") ? true : undefined));
        await lease.close(); // while the handler runs: its block is settled and returned
        const res = await slow;
        expect(res.headers.get("x-credits-deducted")).toBe("7");
        await res.text();
        await waitFor(() => (outcomes.length === 2 ? true : undefined));
        expect(outcomes[1]).toMatchObject({ outcome: "committed", charged: 7 });
        expect(outcomes[1]?.entry?.amount).toBe(7);
        expect(outcomes[1]?.leased).toBeUndefined();
        expect(await m.credits.getUserCreditsInfo("lessee")).toMatchObject({ balance: 1000 - 14, reserved: 0 });
        expect((await m.credits.audit("lessee")).ok).toBe(true);
      } finally {
        await server.close();
        await m.close();
      }
    });
  },
);

describe.each(hosts.map((h) => [h.name, h] as const))(
  "estimate-and-usage metering through a lease on %s",
  (_name, host) => {
    it("holds the estimate inside the block, charges the usage from it, returns a failed call's estimate", async () => {
      const { m, lease, outcomes, server } = await leasedServer(host, { defaultEstimate: 20, usageKey: "usage.n" });
      const call = async (path: string) => {
        const res = await fetch(`${server.url}${path}`, { headers: { "x-payer": "metered" } });
        await res.text();
        return res;
      };
      try {
        await m.credits.addCredits("metered", 1000);
        // No block yet: a hold in the store, as without a lease; the block opens meanwhile.
        expect((await call("/api/usage")).headers.get("x-credits-deducted")).toBe("7");
        await waitFor(() => (outcomes.length === 1 ? true : undefined));
        expect(outcomes[0]).toMatchObject({ charged: 7, outcome: "committed" });
        expect(outcomes[0]?.leased).toBeUndefined();
        await waitFor(() => (lease.covers("metered", 20) ? true : undefined));
        const entries = (await m.credits.getCreditHistory("metered")).items.length;
        for (let i = 0; i < 5; i++) expect((await call("/api/usage")).headers.get("x-credits-deducted")).toBe("7");
        expect((await call("/api/fail")).status).toBe(503);
        await waitFor(() => (outcomes.length === 7 ? true : undefined));
        expect(outcomes.slice(1, 6).every((o) => o.leased === true && o.charged === 7 && o.entry === null)).toBe(true);
        expect(outcomes[6]).toMatchObject({ leased: true, outcome: "released", charged: 0 });
        // Served in memory: nothing journaled for them yet.
        expect((await m.credits.getCreditHistory("metered")).items).toHaveLength(entries);
        // The failed call's estimate went back to the block: all of it is free again but the 35 used.
        const block = (await m.credits.getUserCreditsInfo("metered")).reserved;
        expect(lease.covers("metered", block - 35)).toBe(true);
        expect(lease.covers("metered", block - 34)).toBe(false);
        // Usage beyond what the block covers: delivered, so an after-service deduction of its own.
        expect((await call("/api/big")).headers.get("x-credits-deducted")).toBe("500");
        await waitFor(() => (outcomes.length === 8 ? true : undefined));
        expect(outcomes[7]).toMatchObject({ charged: 500, chargedAfterService: true });
        expect(outcomes[7]?.entry?.amount).toBe(500);
        await lease.close();
        expect(await m.credits.getUserCreditsInfo("metered")).toMatchObject({ balance: 1000 - 542, reserved: 0 });
        const settle = (await m.credits.getCreditHistory("metered")).items.find((e) => e.metadata?.leaseWindow);
        expect(settle?.metadata?.leaseWindow).toMatchObject({ requests: 5, total: 35 });
        expect((await m.credits.audit("metered")).ok).toBe(true);
      } finally {
        await server.close();
        await m.close();
      }
    });
  },
);

describe.each(hosts.slice(0, 2).map((h) => [h.name, h] as const))(
  "a fixed-price response ended in the handler's own turn on %s",
  (_name, host) => {
    it("is charged once when written in parts, and not at all when destroyed, from a lease block or exactly", async () => {
      for (const leased of [true, false]) {
        const { m, lease, outcomes, server } = await leasedServer(host, {
          price: 7,
          ...(leased ? {} : { lease: undefined }),
        });
        const call = (path: string) => fetch(`${server.url}${path}`, { headers: { "x-payer": "lessee" } });
        try {
          await m.credits.addCredits("lessee", 1000);
          await (await call("/api/ok")).text(); // opens the block when leased
          await waitFor(() => (outcomes.length === 1 ? true : undefined));
          if (leased) await waitFor(() => (lease.covers("lessee", 7) ? true : undefined));
          const reserved = (await m.credits.getUserCreditsInfo("lessee")).reserved;
          /** What the block has free now: the largest charge it covers. */
          const free = () => {
            let n = reserved;
            while (n > 0 && !lease.covers("lessee", n)) n--;
            return n;
          };
          const before = free();

          const parts = await call("/api/parts-now");
          expect(await parts.text()).toBe("data: 1\n\ndata: 2\n\n");
          await waitFor(() => (outcomes.length === 2 ? true : undefined));
          expect(outcomes[1]).toMatchObject({ outcome: "committed", charged: 7 });
          expect(outcomes[1]?.leased).toBe(leased ? true : undefined);
          if (leased) expect(free()).toBe(before - 7);

          expect(await call("/api/destroy-now").catch(() => "cut")).toBe("cut");
          await waitFor(() => (outcomes.length === 3 ? true : undefined));
          expect(outcomes[2]).toMatchObject({ outcome: "released", charged: 0, releaseReason: "aborted" });
          if (leased) expect(free()).toBe(before - 7); // the destroyed one's price went back to the block

          await lease.close();
          expect(await m.credits.getUserCreditsInfo("lessee")).toMatchObject({ balance: 1000 - 14, reserved: 0 });
          expect((await m.credits.audit("lessee")).ok).toBe(true);
          expect(outcomes).toHaveLength(3); // nothing charged twice, at close or later
        } finally {
          await server.close();
          await m.close();
        }
      }
    });
  },
);
