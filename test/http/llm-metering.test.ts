import { createServer } from "node:http";
import { Readable } from "node:stream";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import express from "express";
import Fastify from "fastify";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createCreditManager, type CreditManager, type MeterOutcome } from "../../src/index.js";
import { type PriceBookInput, type RecordedUsage } from "../../src/models-public.js";
import {
  creditMetering,
  creditMeteringMiddleware,
  fastifyCreditMetering,
  type LlmMeteringOptions,
} from "../../src/http/index.js";
import { ANTHROPIC_MODEL, OPENAI_MODEL, startUpstream } from "./llm-upstream.js";
import { listen, serveHono, type Running } from "./servers.js";

const BOOK: PriceBookInput = {
  version: "test-book-1",
  models: [
    {
      model: "gpt-4o-mini",
      input: { credits: 1, per: 10 },
      output: { credits: 4, per: 10 },
      cachedInput: { credits: 1, per: 20 },
    },
    {
      model: "claude-sonnet-4-5",
      input: { credits: 3, per: 10 },
      output: { credits: 3, per: 2 },
      cachedInput: { credits: 3, per: 100 },
    },
  ],
};
/** OpenAI: 1,000 uncached input × 1/10 + 200 cached × 1/20 + 300 output × 4/10 = 100 + 10 + 120. */
const OPENAI_CHARGE = 230;
/** Anthropic: 1,000 input × 3/10 + 500 cache reads × 3/100 + 250 output × 3/2 = 300 + 15 + 375. */
const ANTHROPIC_CHARGE = 690;
const ESTIMATE = 1000;
const START = 100_000;

type HostName = "fetch" | "node" | "express" | "fastify";
const HOSTS: HostName[] = ["fetch", "node", "express", "fastify"];

let upstream: Running;
beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => upstream.close());

/**
 * An OpenAI-compatible proxy on each host: `/api/<upstream path>` is forwarded to the stand-in
 * upstream and its answer passed through as it arrives, metered with the `llm` option.
 */
async function startProxy(
  host: HostName,
  manager: CreditManager,
  llm: LlmMeteringOptions | true,
  outcomes: MeterOutcome[],
  base = upstream.url,
): Promise<Running> {
  const options = {
    credits: manager.credits,
    authenticate: () => ({ userId: "u" }),
    pathPrefix: "/api",
    defaultEstimate: ESTIMATE,
    llm,
    onSettled: (o: MeterOutcome) => void outcomes.push(o),
  };
  const target = (url: string) => base + url.replace(/^\/api/, "");
  if (host === "fetch") {
    return serveHono(
      creditMetering(options)(async (request) => {
        const u = new URL(request.url);
        const r = await fetch(target(u.pathname + u.search), { signal: request.signal });
        return new Response(r.body, {
          status: r.status,
          headers: { "content-type": r.headers.get("content-type") ?? "" },
        });
      }),
    );
  }
  if (host === "node") {
    const middleware = creditMeteringMiddleware(options);
    return listen(
      createServer((req, res) =>
        middleware(req, res, async () => {
          const r = await fetch(target(req.url ?? "/"));
          // writeHead with the headers: the middleware cannot read the type back, and sniffs the body
          res.writeHead(r.status, { "content-type": r.headers.get("content-type") ?? "" });
          try {
            for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) res.write(chunk);
            res.end();
          } catch (error) {
            res.destroy(error as Error);
          }
        }),
      ),
    );
  }
  if (host === "express") {
    const app = express();
    app.use(creditMeteringMiddleware(options));
    app.use("/api", async (req, res) => {
      const r = await fetch(target(req.url));
      res.status(r.status).type(r.headers.get("content-type") ?? "application/octet-stream"); // readable: res.type sets the header
      try {
        for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) res.write(chunk);
        res.end();
      } catch (error) {
        res.destroy(error as Error);
      }
    });
    return listen(createServer(app));
  }
  const app = Fastify();
  await app.register(fastifyCreditMetering({ ...options, onSettled: (o) => void outcomes.push(o) }));
  app.all("/api/*", async (request, reply) => {
    const r = await fetch(target(request.url));
    reply.code(r.status).type(r.headers.get("content-type") ?? "application/octet-stream");
    return reply.send(Readable.fromWeb(r.body as unknown as NodeReadableStream));
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const address = app.server.address() as { port: number };
  return { url: `http://127.0.0.1:${address.port}`, close: async () => void (await app.close()) };
}

const settled = async (outcomes: MeterOutcome[], n = 1): Promise<MeterOutcome> => {
  for (let i = 0; i < 400 && outcomes.length < n; i++) await new Promise((r) => setTimeout(r, 5));
  expect(outcomes).toHaveLength(n);
  return outcomes[n - 1] as MeterOutcome;
};

describe.each(HOSTS)("LLM usage read from the response (%s)", (host) => {
  let manager: CreditManager;
  let proxy: Running | undefined;
  let outcomes: MeterOutcome[];
  beforeEach(async () => {
    manager = await createCreditManager({ pricing: BOOK });
    await manager.credits.addCredits("u", START);
    outcomes = [];
  });
  afterEach(async () => {
    await proxy?.close();
    proxy = undefined;
    await manager.close();
  });

  const run = async (path: string, llm: LlmMeteringOptions | true = true) => {
    proxy = await startProxy(host, manager, llm, outcomes);
    const res = await fetch(`${proxy.url}/api${path}`, { method: "POST" });
    const text = await res.text().catch(() => null);
    const outcome = await settled(outcomes);
    const balance = (await manager.credits.getUserCreditsInfo("u")).balance;
    expect((await manager.credits.audit("u")).ok).toBe(true);
    return { res, text, outcome, balance, usage: outcome.usages[0] as RecordedUsage | undefined };
  };

  it("bills an OpenAI chat completion (JSON) by its usage, cached tokens at the cached rate", async () => {
    const { outcome, balance, usage, text } = await run("/json/openai");
    expect(JSON.parse(text as string).usage.prompt_tokens).toBe(1200); // passed through untouched
    expect(outcome.charged).toBe(OPENAI_CHARGE);
    expect(balance).toBe(START - OPENAI_CHARGE);
    expect(usage).toMatchObject({
      model: OPENAI_MODEL,
      inputTokens: 1000,
      cachedTokens: 200,
      outputTokens: 300,
      priced: "gpt-4o-mini",
      priceBook: "test-book-1",
      source: "response",
    });
    // The commit entry keeps the counts, the model and the book's version.
    expect((outcome.entry?.metadata?.usages as unknown as RecordedUsage[])[0]).toMatchObject({
      model: OPENAI_MODEL,
      inputTokens: 1000,
      outputTokens: 300,
      priceBook: "test-book-1",
    });
  });

  it("bills an OpenAI stream by the usage of its final chunk (stream_options.include_usage)", async () => {
    const { outcome, balance, usage, text } = await run("/sse/openai");
    expect(text).toContain("data: [DONE]");
    expect(text?.match(/"content"/g)).toHaveLength(5);
    expect(outcome.charged).toBe(OPENAI_CHARGE);
    expect(balance).toBe(START - OPENAI_CHARGE);
    expect(usage).toMatchObject({
      model: OPENAI_MODEL,
      inputTokens: 1000,
      cachedTokens: 200,
      outputTokens: 300,
      source: "response",
    });
  });

  it("bills an Anthropic message (JSON) by its usage, cache reads at the cached rate", async () => {
    const { outcome, usage } = await run("/json/anthropic");
    expect(outcome.charged).toBe(ANTHROPIC_CHARGE);
    expect(usage).toMatchObject({
      model: ANTHROPIC_MODEL,
      inputTokens: 1000,
      cachedTokens: 500,
      outputTokens: 250,
      priced: "claude-sonnet-4-5",
    });
  });

  it("bills an Anthropic stream from message_start and the last message_delta", async () => {
    const { outcome, balance, usage, text } = await run("/sse/anthropic");
    expect(text).toContain("event: message_stop");
    expect(outcome.charged).toBe(ANTHROPIC_CHARGE);
    expect(balance).toBe(START - ANTHROPIC_CHARGE);
    expect(usage).toMatchObject({ inputTokens: 1000, cachedTokens: 500, outputTokens: 250, source: "response" });
  });

  it("charges the estimate for a stream without usage (no include_usage), and says why", async () => {
    const { outcome, usage } = await run("/sse/openaiNoUsage");
    expect(outcome.charged).toBe(ESTIMATE);
    expect(usage).toEqual({ amount: ESTIMATE, model: OPENAI_MODEL, source: "estimate", problem: "absent" });
  });

  it("a stream the upstream cut before its usage: the estimate by default", async () => {
    const { outcome, usage } = await run("/cut/anthropic?n=4");
    expect(outcome.outcome).toBe("committed");
    expect(outcome.charged).toBe(ESTIMATE);
    expect(usage).toMatchObject({ amount: ESTIMATE, source: "estimate", problem: "cut" });
    expect((outcome.entry?.metadata?.usages as unknown as RecordedUsage[])[0]).toMatchObject({
      source: "estimate",
      problem: "cut",
    });
  });

  it("a cut stream with missingUsage: 'counted' is charged the tokens seen so far", async () => {
    // message_start's 1,000 input and 500 cache reads, and 2 content deltas: 300 + 15 + 2 × 3/2
    const { outcome, usage } = await run("/cut/anthropic?n=4", { missingUsage: "counted" });
    expect(outcome.charged).toBe(318);
    expect(usage).toMatchObject({
      inputTokens: 1000,
      cachedTokens: 500,
      outputTokens: 2,
      source: "counted",
      problem: "cut",
    });
    outcomes.length = 0;
    await proxy?.close();
    // OpenAI-shaped: 3 content chunks, the prompt unknown: 3 × 4/10 = 1.2 → 2
    const openai = await run("/cut/openai?n=3", { missingUsage: "counted" });
    expect(openai.outcome.charged).toBe(2);
    expect(openai.usage).toMatchObject({ inputTokens: 0, outputTokens: 3, source: "counted", problem: "cut" });
  });

  it("a cut stream with missingUsage: 'none' is released, and the release says why", async () => {
    const { outcome, balance } = await run("/cut/anthropic?n=4", { missingUsage: "none" });
    expect(outcome).toMatchObject({ outcome: "released", charged: 0, releaseReason: "usage-cut" });
    expect(balance).toBe(START);
    const release = (await manager.credits.getCreditHistory("u", { types: ["release_reserved"], limit: 1 })).items[0];
    expect(release?.metadata?.releaseReason).toBe("usage-cut");
  });

  it("a malformed usage object is never free: the estimate, marked malformed", async () => {
    const { outcome, usage } = await run("/json/malformed");
    expect(outcome.charged).toBe(ESTIMATE);
    expect(usage).toMatchObject({ source: "estimate", problem: "malformed" });
  });

  it("a model the book does not price: the estimate, marked unknown-model", async () => {
    const { outcome, usage } = await run("/json/unknownModel");
    expect(outcome.charged).toBe(ESTIMATE);
    expect(usage).toMatchObject({ source: "estimate", problem: "unknown-model", model: "mystery-9" });
  });

  it("an upstream refusal (4xx) without usage is released", async () => {
    const { res, outcome, balance } = await run("/json/nothing-here");
    expect(res.status).toBe(404);
    expect(outcome).toMatchObject({ outcome: "released", charged: 0 });
    expect(balance).toBe(START);
  });
});

describe.each(["fetch", "node"] as const)("streams pass through as they are produced (%s)", (host) => {
  let slow: Running;
  let manager: CreditManager;
  let proxy: Running;
  const outcomes: MeterOutcome[] = [];
  beforeAll(async () => {
    slow = await startUpstream(40);
    manager = await createCreditManager({ pricing: BOOK });
    await manager.credits.addCredits("u", START);
    proxy = await startProxy(host, manager, { missingUsage: "counted" }, outcomes, slow.url);
  });
  afterAll(async () => {
    await proxy.close();
    await slow.close();
    await manager.close();
  });

  it("the first chunk reaches the client long before the stream ends, and the end is billed", async () => {
    outcomes.length = 0;
    const t0 = performance.now();
    const res = await fetch(`${proxy.url}/api/sse/anthropic`, { method: "POST" });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    const tFirst = performance.now() - t0;
    expect(new TextDecoder().decode(first.value)).toContain("message_start");
    while (!(await reader.read()).done);
    const tEnd = performance.now() - t0;
    // 11 chunks 40 ms apart: the first arrives ~400 ms before the end
    expect(tEnd - tFirst).toBeGreaterThan(250);
    expect((await settled(outcomes)).charged).toBe(ANTHROPIC_CHARGE);
  });

  it("a client that leaves mid-stream: charged as a cut stream (counted), not released", async () => {
    outcomes.length = 0;
    const controller = new AbortController();
    const res = await fetch(`${proxy.url}/api/sse/anthropic`, { method: "POST", signal: controller.signal });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let seen = "";
    while (!seen.includes("content_block_delta")) seen += new TextDecoder().decode((await reader.read()).value);
    controller.abort();
    const outcome = await settled(outcomes);
    const usage = outcome.usages[0] as RecordedUsage;
    expect(usage).toMatchObject({ source: "counted", problem: "cut", inputTokens: 1000, cachedTokens: 500 });
    expect(usage.outputTokens).toBeGreaterThanOrEqual(1);
    expect(usage.outputTokens).toBeLessThan(250);
    expect(outcome.charged).toBe(300 + 15 + Math.ceil(((usage.outputTokens as number) * 3) / 2));
    expect((await manager.credits.audit("u")).ok).toBe(true);
  });
});

describe("node: a JSON answer ended at once", () => {
  it("is billed from its body, with X-Credits-Deducted set", async () => {
    const manager = await createCreditManager({ pricing: BOOK });
    await manager.credits.addCredits("u", START);
    const middleware = creditMeteringMiddleware({
      credits: manager.credits,
      authenticate: () => ({ userId: "u" }),
      defaultEstimate: ESTIMATE,
      llm: { provider: "openai" },
    });
    const server = await listen(
      createServer((req, res) =>
        middleware(req, res, () => {
          res.setHeader("content-type", "application/json");
          res.end(JSON.stringify({ model: OPENAI_MODEL, usage: { prompt_tokens: 10, completion_tokens: 20 } }));
        }),
      ),
    );
    const res = await fetch(`${server.url}/v1/chat/completions`, { method: "POST" });
    await res.text();
    // 10 × 1/10 + 20 × 4/10 = 9
    expect(res.headers.get("x-credits-deducted")).toBe("9");
    const commit = (await manager.credits.getCreditHistory("u", { types: ["commit_reserved"], limit: 1 })).items[0];
    expect((commit?.metadata?.usages as unknown as RecordedUsage[])[0]).toMatchObject({
      provider: "openai",
      inputTokens: 10,
      outputTokens: 20,
    });
    await server.close();
    await manager.close();
  });
});

describe("the llm option", () => {
  it("is checked when the middleware is built", async () => {
    const manager = await createCreditManager({ pricing: BOOK });
    const base = { credits: manager.credits, authenticate: () => ({ userId: "u" }) };
    expect(() => creditMetering({ ...base, llm: { missingUsage: "free" as never } })).toThrow(/missingUsage/);
    expect(() => creditMeteringMiddleware({ ...base, llm: { provider: "" } })).toThrow(/provider/);
    expect(() => creditMetering({ ...base, llm: { typo: 1 } as never })).toThrow(/unknown `llm` option "typo"/);
    expect(() => creditMetering({ ...base, llm: "yes" as never })).toThrow(
      expect.objectContaining({
        name: "ConfigurationError",
        message: expect.stringContaining("`llm` must be a boolean"),
      }),
    );
    await manager.close();
  });

  it("usage the handler records itself is charged instead of the response's", async () => {
    const manager = await createCreditManager({ pricing: BOOK });
    await manager.credits.addCredits("u", START);
    const { recordUsage } = await import("../../src/index.js");
    const metered = creditMetering({
      credits: manager.credits,
      authenticate: () => ({ userId: "u" }),
      defaultEstimate: ESTIMATE,
      llm: true,
    })(async () => {
      recordUsage({ model: "gpt-4o-mini", inputTokens: 10, outputTokens: 10 }); // 1 + 4 = 5
      return Response.json({ model: OPENAI_MODEL, usage: { prompt_tokens: 1000, completion_tokens: 1000 } });
    });
    const res = await metered(new Request("http://h/api/chat", { method: "POST" }));
    expect(res.headers.get("x-credits-deducted")).toBe("5");
    expect((await manager.credits.getUserCreditsInfo("u")).balance).toBe(START - 5);
    await manager.close();
  });
});
