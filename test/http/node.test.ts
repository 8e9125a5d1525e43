import { createServer } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditHandler } from "../../src/http/handler.js";
import { HttpError, type RouteDefinition } from "../../src/http/router.js";
import { sendResponse, toNodeHandler } from "../../src/http/node.js";
import { textResponse } from "../../src/http/text-response.js";
import { createCreditManager, type CreditManager } from "../../src/manager.js";
import { listen, type Running } from "./servers.js";

describe("sendResponse of a Response built from text (textResponse)", () => {
  let server: Running;
  beforeAll(async () => {
    server = await listen(
      createServer((req, res) => {
        const response = textResponse('{"ok":true,"n":"é"}', {
          status: 201,
          headers: { "content-type": "application/json", "x-a": "1" },
        });
        void sendResponse(res, response, req.method === "HEAD");
      }),
    );
  });
  afterAll(async () => server.close());

  it("writes the status, headers and the text in one end, with its byte length", async () => {
    const res = await fetch(server.url);
    expect(res.status).toBe(201);
    expect(res.headers.get("x-a")).toBe("1");
    expect(res.headers.get("content-length")).toBe(String(Buffer.byteLength('{"ok":true,"n":"é"}')));
    expect(res.headers.get("transfer-encoding")).toBeNull();
    expect(await res.json()).toEqual({ ok: true, n: "é" });
  });

  it("sends no body to HEAD", async () => {
    const res = await fetch(server.url, { method: "HEAD" });
    expect(res.status).toBe(201);
    expect(await res.text()).toBe("");
  });
});

// A route of the host's that refuses with headers of its own, one in another case than the default's.
const limited: RouteDefinition = {
  method: "GET",
  base: "user",
  path: "/limited",
  access: "user",
  operationId: "limited",
  summary: "always 429",
  handle: () => {
    throw new HttpError(429, "RATE_LIMITED", "Slow down.", undefined, {
      "Retry-After": "3",
      "Cache-Control": "private",
    });
  },
};

describe("the credit API's JSON answers on node (toNodeHandler)", () => {
  let server: Running;
  let manager: CreditManager;
  let handler: ReturnType<typeof createCreditHandler>;
  beforeAll(async () => {
    manager = await createCreditManager();
    await manager.credits.addCredits("reader", 42);
    handler = createCreditHandler(manager, {
      authenticate: (request) =>
        request.headers.get("x-user") ? { userId: request.headers.get("x-user") as string } : null,
      routes: [limited],
    });
    const node = toNodeHandler(handler);
    server = await listen(createServer((req, res) => void node(req, res)));
  });
  afterAll(async () => {
    await server.close();
    await manager.close();
  });

  it("go out in one write with their byte length, answers and errors alike", async () => {
    const ok = await fetch(`${server.url}/credits/balance`, { headers: { "x-user": "reader" } });
    const text = await ok.text();
    expect(ok.status).toBe(200);
    expect(JSON.parse(text)).toMatchObject({ balance: 42, available: 42 });
    expect(ok.headers.get("content-length")).toBe(String(Buffer.byteLength(text)));
    expect(ok.headers.get("transfer-encoding")).toBeNull();
    expect(ok.headers.get("content-type")).toBe("application/json; charset=utf-8");

    const refused = await fetch(`${server.url}/credits/balance`);
    const body = await refused.text();
    expect(refused.status).toBe(401);
    expect(JSON.parse(body)).toMatchObject({ error: { code: "UNAUTHORIZED" } });
    expect(refused.headers.get("content-length")).toBe(String(Buffer.byteLength(body)));
  });

  it("stay ordinary Responses for Fetch hosts: the body reads once, as JSON", async () => {
    const response = await handler(new Request("http://x/credits/balance", { headers: { "x-user": "reader" } }));
    expect(await response.json()).toMatchObject({ balance: 42 });
    expect(response.bodyUsed).toBe(true);
  });

  // What the transport adds on node, and the length a Fetch Response does not carry as a header.
  const transport = new Set(["date", "connection", "keep-alive", "content-length", "transfer-encoding"]);
  const headersOf = (r: Response) => [...r.headers].filter(([name]) => !transport.has(name));

  const cases: [string, string, RequestInit][] = [
    ["an answer", "/credits/balance", { headers: { "x-user": "reader" } }],
    ["HEAD", "/credits/balance", { method: "HEAD", headers: { "x-user": "reader" } }],
    ["401", "/credits/balance", {}],
    ["404", "/credits/nowhere", { headers: { "x-user": "reader" } }],
    ["405 with Allow", "/credits/balance", { method: "DELETE", headers: { "x-user": "reader" } }],
    ["400, a bad query", "/credits/history?limit=zero", { headers: { "x-user": "reader" } }],
    ["a route's own headers", "/credits/limited", { headers: { "x-user": "reader" } }],
    ["a route's Response (the OpenAPI document)", "/credits/openapi.json", {}],
  ];
  it.each(cases)("%s: the same status, headers and body", async (_name, path, init) => {
    const viaNode = await fetch(`${server.url}${path}`, init);
    const viaFetch = await handler(new Request(`http://x${path}`, init));
    expect(viaNode.status).toBe(viaFetch.status);
    expect(headersOf(viaNode)).toEqual(headersOf(viaFetch));
    const text = await viaNode.text();
    expect(text).toBe(init.method === "HEAD" ? "" : await viaFetch.text());
    if (init.method !== "HEAD") expect(viaNode.headers.get("content-length")).toBe(String(Buffer.byteLength(text)));
  });

  it("a header given in another case replaces the default rather than repeating it", async () => {
    const res = await fetch(`${server.url}/credits/limited`, { headers: { "x-user": "reader" } });
    expect(res.status).toBe(429);
    expect(res.headers.get("cache-control")).toBe("private");
    expect(res.headers.get("retry-after")).toBe("3");
    const viaFetch = await handler(new Request("http://x/credits/limited", { headers: { "x-user": "reader" } }));
    expect(viaFetch.headers.get("cache-control")).toBe("private");
  });
});
