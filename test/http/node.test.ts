import { createServer } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { sendResponse, textResponse } from "../../src/http/node.js";
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
