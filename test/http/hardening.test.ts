/** Client input that must be a 4xx (never a 500), and clients that leave early (never a hang). */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from "node:http";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager } from "../../src/index.js";
import {
  createCreditHandler,
  toNodeHandler,
  type CreditHandler,
  type Identity,
  type RouteDefinition,
} from "../../src/http/index.js";
import { hosts, listen, waitFor, type Running } from "./servers.js";

const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token.startsWith("admin:") ? { userId: token, admin: true } : { userId: token };
};
const ADMIN = "admin:ops";

describe("HTTP hardening: bad client input is a 4xx", () => {
  let m: CreditManager;
  let handler: CreditHandler;
  const errors: unknown[] = [];
  let ran = 0;
  const noBody: RouteDefinition = {
    method: "POST",
    base: "user",
    path: "/ping",
    access: "user",
    operationId: "ping",
    summary: "declares no body",
    handle: () => ({ ran: ++ran }),
  };

  beforeAll(async () => {
    m = await createCreditManager();
    handler = createCreditHandler(m, {
      authenticate,
      selfServiceSubscriptions: "all",
      routes: [noBody],
      onError: (e) => errors.push(e),
    });
  });
  afterAll(async () => m.close());

  const call = async (
    method: string,
    path: string,
    who: string | null,
    body?: unknown,
    headers: Record<string, string> = {},
  ) => {
    const h: Record<string, string> = { ...(who ? { authorization: `Bearer ${who}` } : {}), ...headers };
    // A JSON client types every mutation, body or not (csrfProtection refuses untyped ones).
    if ((body !== undefined || (method !== "GET" && method !== "HEAD")) && h["content-type"] === undefined)
      h["content-type"] = "application/json";
    const res = await handler(
      new Request(`http://localhost${path}`, {
        method,
        headers: h,
        body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      }),
    );
    const text = await res.text();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- error bodies are checked field by field
    return { status: res.status, json: (text === "" ? null : JSON.parse(text)) as any };
  };

  it("query keys named like Object.prototype's members are unknown keys (400), not a 500", async () => {
    await call("POST", "/admin/credits/users/alice/add", ADMIN, { amount: 10 });
    const paths = [
      "/credits/history",
      "/credits/grants",
      "/credits/expiring",
      "/credits/payments/history",
      "/admin/credits/promos",
    ];
    for (const path of paths) {
      for (const key of ["constructor", "__proto__", "toString", "hasOwnProperty", "valueOf", "isPrototypeOf"]) {
        const r = await call("GET", `${path}?${key}=1`, path.startsWith("/admin") ? ADMIN : "alice");
        expect({ path, key, status: r.status, code: r.json.error?.code }).toEqual({
          path,
          key,
          status: 400,
          code: "VALIDATION_ERROR",
        });
        expect(r.json.error.message).toContain(key);
      }
    }
    // The known keys still parse (numbers, booleans, arrays).
    const history = await call("GET", "/credits/history?limit=1&types=add", "alice");
    expect(history.status).toBe(200);
    expect(history.json.items).toHaveLength(1);
    expect((await call("GET", "/credits/grants?includeInactive=true", "alice")).status).toBe(200);
    expect(errors).toEqual([]);
  });

  /** @see issue 24, item 7: `?userId=bob` on a route that takes no query answered the caller's own data. */
  it("every route refuses a query key it does not take (400 naming it), before it acts", async () => {
    await call("POST", "/admin/credits/users/alice/add", ADMIN, { amount: 10 });
    const before = (await call("GET", "/credits/balance", "alice")).json;
    expect(handler.routes.length).toBeGreaterThan(30);
    for (const route of handler.routes) {
      const path = route.fullPath.replace(/:(\w+)/g, "x");
      const who = route.access === "admin" ? ADMIN : route.access === "user" ? "alice" : null;
      const r = await call(route.method, `${path}?userId=bob`, who, route.method === "GET" ? undefined : {});
      // The unknown key is named (beside any field the route requires and did not get).
      expect({
        route: `${route.method} ${route.fullPath}`,
        status: r.status,
        code: r.json?.error?.code,
        error: JSON.stringify(r.json?.error),
      }).toMatchObject({
        status: 400,
        code: "VALIDATION_ERROR",
        error: expect.stringContaining("userId"),
      });
    }
    expect((await call("GET", "/credits/balance", "alice")).json).toEqual(before);
    expect(errors).toEqual([]);
  });

  it("deep or __proto__ metadata in a body is a 400 naming the path, not a 500, and changes nothing", async () => {
    await call("POST", "/admin/credits/users/meta/add", ADMIN, { amount: 10 });
    const before = (await call("GET", "/credits/balance", "meta")).json;
    // 2,000 levels of JSON parse fine but would overflow the stack of the metadata schema (a RangeError).
    const deep = `{"amount":1,"metadata":${'{"x":'.repeat(2000)}1${"}".repeat(2000)}}`;
    const bodies: [string, string | object, RegExp][] = [
      ["/credits/reservations", deep, /metadata(\.x){32}: .*32 levels/],
      ["/admin/credits/users/meta/deduct", deep, /32 levels/],
      [
        "/admin/credits/users/meta/add",
        '{"amount":1,"metadata":{"__proto__":{"x":1},"y":2}}',
        /metadata\.__proto__: .*"__proto__"/,
      ],
    ];
    for (const [path, body, message] of bodies) {
      const r = await call("POST", path, path.startsWith("/admin") ? ADMIN : "meta", body);
      expect({ path, status: r.status, code: r.json.error?.code }).toEqual({
        path,
        status: 400,
        code: "VALIDATION_ERROR",
      });
      expect(r.json.error.message).toMatch(message);
    }
    expect((await call("GET", "/credits/balance", "meta")).json).toEqual(before);
    expect(errors).toEqual([]);
  });

  it("a webhook provider name no provider can have is a 404 like an unknown one, not a 500", async () => {
    for (const name of ["Stripe", "stripe.v2", "x".repeat(65), "a%20b", "%E2%9C%93"]) {
      const r = await call("POST", `/webhooks/${name}`, null, "{}");
      expect({ name, status: r.status, code: r.json.error?.code }).toEqual({ name, status: 404, code: "NOT_FOUND" });
    }
    expect((await call("POST", "/webhooks/paypal", null, "{}")).status).toBe(404);
    expect(errors).toEqual([]);
  });

  it("mutations that declare no body take none: JSON only (415), the empty object only (400), before they run", async () => {
    await call("POST", "/admin/credits/plans", ADMIN, {
      id: "basic",
      name: "Basic",
      creditsPerPeriod: 100,
      billingPeriod: "monthly",
    });
    await call("POST", "/admin/credits/plans", ADMIN, {
      id: "gone",
      name: "Gone",
      creditsPerPeriod: 1,
      billingPeriod: "monthly",
    });
    expect((await call("POST", "/credits/subscription", "bob", { planId: "basic" })).status).toBe(201);
    expect((await call("POST", "/credits/subscription/cancel", "bob", {})).status).toBe(200);

    // A cross-site "simple" form POST (text/plain) and other media types: 415, nothing done.
    const plain = await call("POST", "/credits/subscription/resume", "bob", "planId=basic", {
      "content-type": "text/plain",
    });
    expect([plain.status, plain.json.error.code]).toEqual([415, "UNSUPPORTED_MEDIA_TYPE"]);
    const form = await call("POST", "/credits/subscription/resume", "bob", "a=1", {
      "content-type": "application/x-www-form-urlencoded",
    });
    expect(form.status).toBe(415);
    const xml = await call("POST", "/admin/credits/plans/gone/deactivate", ADMIN, "<xml/>", {
      "content-type": "application/xml",
    });
    expect(xml.status).toBe(415);
    // Fields where none are taken: 400 naming them; not JSON: 400.
    const fields = await call("POST", "/credits/subscription/resume", "bob", { evil: true, planId: "pro" });
    expect([fields.status, fields.json.error.code]).toEqual([400, "VALIDATION_ERROR"]);
    expect(fields.json.error.message).toContain("evil");
    expect((await call("DELETE", "/admin/credits/plans/gone", ADMIN, { unknown: 1 })).status).toBe(400);
    expect((await call("POST", "/admin/credits/plans/gone/deactivate", ADMIN, "[]")).status).toBe(400);
    expect((await call("POST", "/admin/credits/plans/gone/deactivate", ADMIN, "{not json")).status).toBe(400);
    // None of those ran.
    expect((await m.subscriptions.getUserSubscription("bob"))?.cancelAtPeriodEnd).toBe(true);
    expect((await m.subscriptions.getPlan("gone")).isActive).toBe(true);
    expect((await call("POST", "/credits/ping", "bob", "x", { "content-type": "text/plain" })).status).toBe(415);
    expect((await call("POST", "/credits/ping", "bob", { x: 1 })).status).toBe(400);
    expect(ran).toBe(0);

    // No body, or `{}`, is what they take.
    const resumed = await call("POST", "/credits/subscription/resume", "bob");
    expect(resumed.status).toBe(200);
    expect(resumed.json.cancelAtPeriodEnd).toBe(false);
    expect((await call("POST", "/admin/credits/plans/gone/deactivate", ADMIN, {})).json.isActive).toBe(false);
    expect((await call("DELETE", "/admin/credits/plans/gone", ADMIN)).status).toBe(204);
    expect((await call("POST", "/credits/ping", "bob", {})).json).toEqual({ ran: 1 });
    // Access is checked first: 401 stays 401 whatever the body.
    expect((await call("POST", "/credits/ping", null, "x", { "content-type": "text/plain" })).status).toBe(401);
    expect(errors).toEqual([]);
  });
});

describe.each(Object.keys(hosts))("HTTP hardening: cross-site requests are refused (csrfProtection) on %s", (host) => {
  let m: CreditManager;
  let server: Running;
  let optOut: Running;
  let ran = 0;
  /** A user route that reads its own bytes (an upload, say), and a public one. */
  const rawUser: RouteDefinition = {
    method: "POST",
    base: "user",
    path: "/upload",
    access: "user",
    operationId: "upload",
    summary: "reads its own bytes",
    rawBody: true,
    handle: async (ctx) => ({ ran: ++ran, bytes: (await ctx.rawBody()).byteLength }),
  };
  const rawPublic: RouteDefinition = { ...rawUser, path: "/beacon", access: "public", operationId: "beacon" };
  let reservation: string;
  let grant: string;
  /** A deduction: what the reverse route names. */
  let charge: string;

  beforeAll(async () => {
    m = await createCreditManager();
    const routes = [rawUser, rawPublic];
    server = await hosts[host]!(createCreditHandler(m, { authenticate, selfServiceSubscriptions: "all", routes }));
    optOut = await hosts[host]!(
      createCreditHandler(m, { authenticate, selfServiceSubscriptions: "all", routes, csrfProtection: false }),
    );
    await m.subscriptions.createPlan({ id: "basic", name: "Basic", creditsPerPeriod: 100, billingPeriod: "monthly" });
    await m.subscriptions.createPlan({ id: "other", name: "Other", creditsPerPeriod: 5, billingPeriod: "monthly" });
    await m.subscriptions.subscribe("bob", "basic");
    await m.subscriptions.cancel("bob", { atPeriodEnd: true });
    await m.promos.createPromo({ code: "WELCOME", credits: 5 });
    grant = (await m.credits.addCredits("bob", 1000)).grants[0]!.grantId;
    reservation = (await m.credits.reserveCredits("bob", 10)).id;
    charge = (await m.credits.deductCredits("bob", 5)).id;
  });
  afterAll(async () => {
    await server.close();
    await optOut.close();
    await m.close();
  });

  /** A request as a browser's cross-site form or `fetch(no-cors)` would send it: no preflight. */
  const send = async (base: string, method: string, path: string, type: string | null, body: string, who = "bob") => {
    const headers: Record<string, string> = { authorization: `Bearer ${who}` };
    if (type !== null) headers["content-type"] = type;
    // Bytes, not a string: fetch would add `text/plain` to a string body by itself.
    const res = await fetch(base + path, {
      method,
      headers,
      body: method === "GET" ? undefined : new TextEncoder().encode(body),
    });
    const text = await res.text();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- error bodies are checked field by field
    return { status: res.status, json: (text === "" ? null : JSON.parse(text)) as any };
  };
  /** What the requests could have changed. */
  const state = async () => ({
    bob: await m.credits.getUserCreditsInfo("bob"),
    history: (await m.credits.getCreditHistory("bob", { limit: 100 })).items.length,
    reservation: (await m.credits.getReservation(reservation)).status,
    subscription: await m.subscriptions.getUserSubscription("bob"),
    plans: await m.subscriptions.listPlans({ includeInactive: true }),
    promos: (await m.promos.listPromos()).items,
    ran,
  });
  const paramsOf: Record<string, () => string> = {
    id: () => reservation,
    userId: () => "bob",
    grantId: () => grant,
    planId: () => "other",
    code: () => "WELCOME",
    entryId: () => charge,
  };
  const VARIANTS: [string | null, string][] = [
    [null, ""], // an empty POST (a body-less form, fetch without a body)
    [null, "{}"], // JSON text without a type (fetch no-cors with a Blob)
    ["text/plain", ""],
    ["text/plain;charset=UTF-8", "{}"],
    ["application/x-www-form-urlencoded", ""],
    ["multipart/form-data; boundary=x", ""],
  ];

  it("every mutation that needs identity refuses an untyped, text/plain or form request with 415, before it runs", async () => {
    const handler = createCreditHandler(m, { authenticate, routes: [rawUser, rawPublic] });
    const mutations = handler.routes.filter((r) => r.method !== "GET" && r.access !== "public" && r.rawBody !== true);
    expect(mutations.length).toBeGreaterThanOrEqual(23); // credits 7, billing 4, plans and subscriptions 12
    const before = await state();
    for (const r of mutations) {
      const path = r.fullPath.replace(/:(\w+)/g, (_, name: string) => (paramsOf[name] as () => string)());
      const who = r.access === "admin" ? ADMIN : "bob";
      for (const [type, body] of VARIANTS) {
        const res = await send(server.url, r.method, path, type, body, who);
        expect({ route: `${r.method} ${r.fullPath}`, type, body, status: res.status, error: res.json?.error }).toEqual({
          route: `${r.method} ${r.fullPath}`,
          type,
          body,
          status: 415,
          error: {
            code: "UNSUPPORTED_MEDIA_TYPE",
            message:
              "Send POST, PUT, PATCH and DELETE requests with Content-Type: application/json, also when the body is empty.",
            details: { contentType: "application/json" },
          },
        });
      }
    }
    expect(await state()).toEqual(before);
  });

  it("the same requests typed application/json with an empty body go through", async () => {
    const json = "application/json";
    expect((await send(server.url, "POST", `/credits/reservations/${reservation}/commit`, json, "")).status).toBe(200);
    const r2 = (await m.credits.reserveCredits("bob", 5)).id;
    expect(
      (await send(server.url, "POST", `/credits/reservations/${r2}/release`, "application/json; charset=utf-8", ""))
        .json.reservation.status,
    ).toBe("released");
    expect((await send(server.url, "POST", "/credits/subscription/resume", json, "")).json.cancelAtPeriodEnd).toBe(
      false,
    );
    expect(
      (await send(server.url, "POST", "/credits/subscription/cancel", "application/merge-patch+json", "")).json
        .cancelAtPeriodEnd,
    ).toBe(true);
    expect(
      (await send(server.url, "POST", "/admin/credits/plans/other/deactivate", json, "", ADMIN)).json.isActive,
    ).toBe(false);
    expect((await send(server.url, "DELETE", "/admin/credits/plans/other", json, "", ADMIN)).status).toBe(204);
    reservation = (await m.credits.reserveCredits("bob", 10)).id;
  });

  it("a rawBody route needing identity takes its own types but not none, text/plain or a form; public routes are not affected", async () => {
    for (const [type, body] of VARIANTS) {
      const res = await send(server.url, "POST", "/credits/upload", type, body);
      expect({ type, status: res.status, code: res.json?.error?.code }).toEqual({
        type,
        status: 415,
        code: "UNSUPPORTED_MEDIA_TYPE",
      });
    }
    expect(ran).toBe(0);
    expect((await send(server.url, "POST", "/credits/upload", "application/octet-stream", "abc")).json).toEqual({
      ran: 1,
      bytes: 3,
    });
    // A public route (the webhooks) has no caller's credentials to abuse.
    expect((await send(server.url, "POST", "/credits/beacon", "text/plain", "abcd", "")).json).toEqual({
      ran: 2,
      bytes: 4,
    });
    expect((await send(server.url, "POST", "/credits/beacon", null, "", "")).status).toBe(200);
    // Identity is still checked first: 401 stays 401.
    const anon = await fetch(`${server.url}/credits/reservations/${reservation}/release`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
    });
    expect(anon.status).toBe(401);
  });

  it("csrfProtection: false takes untyped and empty text/plain mutations as before", async () => {
    const r = (await m.credits.reserveCredits("bob", 3)).id;
    expect((await send(optOut.url, "POST", `/credits/reservations/${r}/release`, null, "")).status).toBe(200);
    const hold = await send(optOut.url, "POST", "/credits/reservations", null, JSON.stringify({ amount: 4 }));
    expect([hold.status, hold.json.amount]).toEqual([201, 4]);
    expect(
      (await send(optOut.url, "POST", `/credits/reservations/${hold.json.id}/release`, "text/plain", "")).status,
    ).toBe(200);
    // A body in another media type is still not JSON.
    expect(
      (await send(optOut.url, "POST", "/credits/reservations", "text/plain", JSON.stringify({ amount: 4 }))).status,
    ).toBe(415);
    expect(() => createCreditHandler(m, { authenticate, csrfProtection: "yes" as unknown as boolean })).toThrow(
      /csrfProtection/,
    );
  });
});

describe("HTTP hardening: toNodeHandler", () => {
  /** Sends raw bytes and returns the raw answer (for requests fetch would not send). */
  const rawRequest = (url: string, text: string) =>
    new Promise<string>((resolve, reject) => {
      const { port, hostname } = new URL(url);
      const s = connect(Number(port), hostname, () => s.write(text));
      let buf = "";
      s.on("data", (d) => (buf += String(d)));
      s.on("error", reject);
      s.on("close", () => resolve(buf));
    });

  it("a malformed Host header is a 400 with the error body, with or without next", async () => {
    const m = await createCreditManager();
    const node = toNodeHandler(createCreditHandler(m, { authenticate }));
    const passed: unknown[] = [];
    const plain = await listen(createServer((req, res) => void node(req, res)));
    const withNext = await listen(createServer((req, res) => void node(req, res, (e) => passed.push(e ?? "next"))));
    try {
      for (const server of [plain, withNext]) {
        for (const host of ["[", "a b", "exa mple.com:80"]) {
          const answer = await rawRequest(
            server.url,
            `GET /credits/openapi.json HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`,
          );
          expect(answer.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request");
          const body = JSON.parse(/\{.*\}/s.exec(answer)?.[0] ?? "null") as { error: { code: string } };
          expect(body.error.code).toBe("VALIDATION_ERROR");
        }
        const ok = await rawRequest(
          server.url,
          "GET /credits/openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        expect(ok.split("\r\n")[0]).toBe("HTTP/1.1 200 OK");
      }
      expect(passed).toEqual([]);
    } finally {
      await plain.close();
      await withNext.close();
      await m.close();
    }
  });

  /** A server whose handler answers after `delay` with an endless body; reports when toNodeHandler settles. */
  async function endless(delay: number) {
    const state = { pulls: 0, cancelled: false, settled: false };
    const node = toNodeHandler(async () => {
      await sleep(delay);
      return new Response(
        new ReadableStream<Uint8Array>({
          async pull(c) {
            state.pulls++;
            c.enqueue(new TextEncoder().encode("data: x\n\n"));
            await sleep(5);
          },
          cancel() {
            state.cancelled = true;
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    });
    const server = await listen(
      createServer(
        (req: IncomingMessage, res: ServerResponse) => void node(req, res).then(() => (state.settled = true)),
      ),
    );
    return { state, server };
  }

  it("a client gone before the response started: the body is cancelled and the handler settles", async () => {
    const { state, server } = await endless(150);
    try {
      const { port } = new URL(server.url);
      const req = httpRequest({ host: "127.0.0.1", port: Number(port), path: "/" });
      req.on("error", () => undefined);
      req.end();
      await sleep(50);
      req.destroy(); // before the handler has its Response
      await waitFor(() => (state.settled && state.cancelled) || undefined, 2000);
      expect(state).toMatchObject({ settled: true, cancelled: true });
      expect(state.pulls).toBeLessThanOrEqual(2);
    } finally {
      await server.close();
    }
  });

  it("a client gone mid-stream: the body is cancelled and the handler settles", async () => {
    const { state, server } = await endless(0);
    try {
      const controller = new AbortController();
      const res = await fetch(server.url, { signal: controller.signal });
      const reader = res.body!.getReader();
      await reader.read();
      controller.abort();
      await waitFor(() => (state.settled && state.cancelled) || undefined, 2000);
      expect(state).toMatchObject({ settled: true, cancelled: true });
    } finally {
      await server.close();
    }
  });
});
