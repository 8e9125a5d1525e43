/**
 * docs/llm-metering.md tried as a user would: the official `openai` and `@anthropic-ai/sdk` clients
 * call the documented proxy (the `llm` option) on Fetch (Hono), Express and Fastify, which forwards
 * to a stand-in upstream speaking the real wire formats (test/http/llm-upstream.ts). Every kind of
 * answer the page lists — chat completions, Responses and Anthropic messages, as JSON and streamed —
 * and every row of its `missingUsage` table.
 */
import { createServer } from "node:http";
import { Readable } from "node:stream";
import type { ReadableStream as NodeReadableStream } from "node:stream/web";
import Anthropic from "@anthropic-ai/sdk";
import express from "express";
import Fastify from "fastify";
import OpenAI from "openai";
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
  version: "clients-book-1",
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
    // The documented fine-tune entry (docs/llm-metering.md, "The price book").
    { model: "ft:gpt-4o-mini:", prefix: true, input: { credits: 3, per: 10 }, output: { credits: 6, per: 5 } },
  ],
};
/** OpenAI (chat and Responses): 1,000 uncached × 1/10 + 200 cached × 1/20 + 300 output × 4/10. */
const OPENAI_CHARGE = 230;
/** Anthropic: 1,000 input × 3/10 + 500 cache reads × 3/100 + 250 output × 3/2. */
const ANTHROPIC_CHARGE = 690;
/** The fine-tune entry: 1,200 input (cached at the input rate) × 3/10 + 300 output × 6/5. */
const FINE_TUNE_CHARGE = 720;
const FINE_TUNE = "ft:gpt-4o-mini-2024-07-18:acme::9xYz12";
const ESTIMATE = 1000;
const START = 100_000;

type HostName = "fetch" | "express" | "fastify";
const HOSTS: HostName[] = ["fetch", "express", "fastify"];

let upstream: Running;
beforeAll(async () => {
  upstream = await startUpstream(1);
});
afterAll(async () => upstream.close());

/** The request headers the proxy passes on (the stand-in's `X-Upstream-Cut`). */
const forwarded = (get: (name: string) => string | undefined | null): Record<string, string> => {
  const cut = get("x-upstream-cut");
  return { "content-type": "application/json", ...(cut ? { "x-upstream-cut": cut } : {}) };
};

/** The documented proxy on each host: `/api/v1/…` forwarded to the upstream, its answer passed through as it arrives. */
async function startProxy(
  host: HostName,
  manager: CreditManager,
  llm: LlmMeteringOptions | true,
  outcomes: MeterOutcome[],
): Promise<Running> {
  const options = {
    credits: manager.credits,
    authenticate: () => ({ userId: "u" }),
    pathPrefix: "/api",
    defaultEstimate: ESTIMATE,
    llm,
    onSettled: (o: MeterOutcome) => void outcomes.push(o),
  };
  const target = (path: string) => upstream.url + path.replace(/^\/api/, "");
  if (host === "fetch") {
    return serveHono(
      creditMetering(options)(async (request) => {
        const r = await fetch(target(new URL(request.url).pathname), {
          method: "POST",
          headers: forwarded((n) => request.headers.get(n)),
          body: await request.text(),
          signal: request.signal,
        });
        return new Response(r.body, {
          status: r.status,
          headers: { "content-type": r.headers.get("content-type") ?? "" },
        });
      }),
    );
  }
  if (host === "express") {
    const app = express();
    app.use(creditMeteringMiddleware(options));
    app.use(express.text({ type: "*/*" }));
    app.use("/api", async (req, res) => {
      const r = await fetch(target(req.url), {
        method: "POST",
        headers: forwarded((n) => req.get(n)),
        body: req.body as string,
      });
      res.status(r.status).type(r.headers.get("content-type") ?? "application/octet-stream");
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
  await app.register(fastifyCreditMetering(options));
  app.post("/api/*", async (request, reply) => {
    const r = await fetch(target(request.url), {
      method: "POST",
      headers: forwarded((n) => request.headers[n] as string | undefined),
      body: JSON.stringify(request.body),
    });
    reply.code(r.status).type(r.headers.get("content-type") ?? "application/octet-stream");
    return reply.send(Readable.fromWeb(r.body as unknown as NodeReadableStream));
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const address = app.server.address() as { port: number };
  return { url: `http://127.0.0.1:${address.port}`, close: async () => void (await app.close()) };
}

describe.each(HOSTS)("LLM metering with the official clients (%s)", (host) => {
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

  /** The proxy with `llm`, and both clients pointed at it (`cut`: the upstream fails after that many events). */
  const clients = async (llm: LlmMeteringOptions | true = true, cut?: number) => {
    proxy = await startProxy(host, manager, llm, outcomes);
    const defaultHeaders = cut === undefined ? {} : { "x-upstream-cut": String(cut) };
    return {
      openai: new OpenAI({ apiKey: "sk-test", baseURL: `${proxy.url}/api/v1`, maxRetries: 0, defaultHeaders }),
      anthropic: new Anthropic({ apiKey: "sk-ant-test", baseURL: `${proxy.url}/api`, maxRetries: 0, defaultHeaders }),
    };
  };
  /** The one settled call: its outcome and first usage, the balance, and a clean audit. */
  const settled = async () => {
    for (let i = 0; i < 400 && outcomes.length < 1; i++) await new Promise((r) => setTimeout(r, 5));
    expect(outcomes).toHaveLength(1);
    const outcome = outcomes[0] as MeterOutcome;
    expect((await manager.credits.audit("u")).ok).toBe(true);
    const balance = (await manager.credits.getUserCreditsInfo("u")).balance;
    return { outcome, usage: outcome.usages[0] as RecordedUsage | undefined, balance };
  };
  const messages = [{ role: "user" as const, content: "How are credits counted?" }];
  /** Reads a stream to its end, or to the error that cut it; the text it delivered. */
  const drain = async <T>(stream: AsyncIterable<T>, text: (event: T) => string | undefined): Promise<string> => {
    let out = "";
    try {
      for await (const event of stream) out += text(event) ?? "";
    } catch {
      // the upstream cut the stream: the client sees an error, the bill is what the table says
    }
    return out;
  };

  it("chat completion (JSON): its usage, cached tokens at the cached rate", async () => {
    const { openai } = await clients();
    const answer = await openai.chat.completions.create({ model: "gpt-4o-mini", messages });
    expect(answer.usage?.prompt_tokens).toBe(1200);
    const { outcome, usage, balance } = await settled();
    expect(outcome).toMatchObject({ outcome: "committed", charged: OPENAI_CHARGE });
    expect(balance).toBe(START - OPENAI_CHARGE);
    expect(usage).toMatchObject({ model: OPENAI_MODEL, inputTokens: 1000, cachedTokens: 200, outputTokens: 300 });
    expect(usage?.source).toBe("response");
  });

  it("chat completion stream with include_usage: the final chunk's usage", async () => {
    const { openai } = await clients();
    const stream = await openai.chat.completions.create({
      model: "gpt-4o-mini",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(await drain(stream, (c) => c.choices[0]?.delta.content ?? undefined)).toBe("Credits are counted per token.");
    const { outcome, usage } = await settled();
    expect(outcome.charged).toBe(OPENAI_CHARGE);
    expect(usage).toMatchObject({ source: "response", outputTokens: 300 });
  });

  it("Responses API (JSON): response.usage with input_tokens_details", async () => {
    const { openai } = await clients();
    const answer = await openai.responses.create({ model: "gpt-4o-mini", input: "How are credits counted?" });
    expect(answer.output_text).toBe("Credits are counted per token.");
    const { outcome, usage } = await settled();
    expect(outcome.charged).toBe(OPENAI_CHARGE);
    expect(usage).toMatchObject({ source: "response", inputTokens: 1000, cachedTokens: 200, outputTokens: 300 });
  });

  it("Responses API stream (responses.create({ stream: true })): response.completed's usage, not the estimate", async () => {
    const { openai } = await clients();
    const stream = await openai.responses.create({ model: "gpt-4o-mini", input: "hi", stream: true });
    const types: string[] = [];
    const text = await drain(stream, (e) => {
      types.push(e.type);
      return e.type === "response.output_text.delta" ? e.delta : undefined;
    });
    expect(text).toBe("Credits are counted per token.");
    expect(types.at(-1)).toBe("response.completed"); // and no [DONE] after it
    const { outcome, usage, balance } = await settled();
    expect(outcome).toMatchObject({ outcome: "committed", charged: OPENAI_CHARGE });
    expect(balance).toBe(START - OPENAI_CHARGE);
    expect(usage).toMatchObject({ model: OPENAI_MODEL, source: "response", inputTokens: 1000, cachedTokens: 200 });
    expect(usage?.problem).toBeUndefined();
  });

  it("Responses API stream (responses.stream()): the same bill", async () => {
    const { openai } = await clients();
    const final = await openai.responses.stream({ model: "gpt-4o-mini", input: "hi" }).finalResponse();
    expect(final.output_text).toBe("Credits are counted per token.");
    const { outcome, usage } = await settled();
    expect(outcome.charged).toBe(OPENAI_CHARGE);
    expect(usage).toMatchObject({ source: "response", outputTokens: 300 });
  });

  it("Anthropic message (JSON): usage with cache reads at the cached rate", async () => {
    const { anthropic } = await clients();
    const answer = await anthropic.messages.create({ model: "claude-sonnet-4-5", max_tokens: 512, messages });
    expect(answer.usage.input_tokens).toBe(1000);
    const { outcome, usage } = await settled();
    expect(outcome.charged).toBe(ANTHROPIC_CHARGE);
    expect(usage).toMatchObject({ model: ANTHROPIC_MODEL, source: "response", inputTokens: 1000, cachedTokens: 500 });
  });

  it("Anthropic stream (messages.stream()): message_start and the last message_delta", async () => {
    const { anthropic } = await clients();
    const final = await anthropic.messages
      .stream({ model: "claude-sonnet-4-5", max_tokens: 512, messages })
      .finalMessage();
    expect(final.usage.output_tokens).toBe(250);
    const { outcome, usage } = await settled();
    expect(outcome.charged).toBe(ANTHROPIC_CHARGE);
    expect(usage).toMatchObject({ source: "response", outputTokens: 250 });
  });

  it("a fine-tune id (the dated snapshot's) is priced by the documented `ft:gpt-4o-mini:` entry", async () => {
    const { openai } = await clients();
    const answer = await openai.chat.completions.create({ model: FINE_TUNE, messages });
    expect(answer.model).toBe(FINE_TUNE);
    const { outcome, usage } = await settled();
    expect(outcome.charged).toBe(FINE_TUNE_CHARGE);
    expect(usage).toMatchObject({ model: FINE_TUNE, priced: "ft:gpt-4o-mini:", source: "response" });
  });

  // The `missingUsage` table, row by row, on a chat stream the upstream cuts after its opening
  // chunk and 3 content chunks (4 events).
  it('missingUsage "estimate" (default): the hold\'s estimate, source estimate, problem cut', async () => {
    const { openai } = await clients(true, 4);
    const stream = await openai.chat.completions.create({
      model: "gpt-4o-mini",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(await drain(stream, (c) => c.choices[0]?.delta.content ?? undefined)).toBe("Credits are counted");
    const { outcome, usage } = await settled();
    expect(outcome.charged).toBe(ESTIMATE);
    expect(usage).toMatchObject({ amount: ESTIMATE, source: "estimate", problem: "cut", model: OPENAI_MODEL });
  });

  it('missingUsage "counted": one output token per chunk that carries content (not the opening chunk)', async () => {
    const { openai } = await clients({ missingUsage: "counted" }, 4);
    const stream = await openai.chat.completions.create({
      model: "gpt-4o-mini",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    await drain(stream, (c) => c.choices[0]?.delta.content ?? undefined);
    const { outcome, usage } = await settled();
    expect(usage).toMatchObject({ inputTokens: 0, outputTokens: 3, source: "counted", problem: "cut" });
    expect(outcome.charged).toBe(2); // 3 × 4/10, rounded up
  });

  it('missingUsage "counted" on a whole stream without usage: the finish chunk (empty delta) is not content', async () => {
    const { openai } = await clients({ missingUsage: "counted" });
    const stream = await openai.chat.completions.create({ model: "gpt-4o-mini", messages, stream: true });
    await drain(stream, (c) => c.choices[0]?.delta.content ?? undefined);
    const { usage } = await settled();
    expect(usage).toMatchObject({ outputTokens: 5, source: "counted", problem: "absent" });
  });

  it('missingUsage "counted" on a cut Responses stream: only the text deltas count', async () => {
    const { openai } = await clients({ missingUsage: "counted" }, 6);
    await drain(await openai.responses.create({ model: "gpt-4o-mini", input: "hi", stream: true }), () => undefined);
    const { usage } = await settled();
    expect(usage).toMatchObject({ outputTokens: 2, source: "counted", problem: "cut" });
  });

  it('missingUsage "none": the hold is released, the release says why', async () => {
    const { anthropic } = await clients({ missingUsage: "none" }, 4);
    await drain(
      await anthropic.messages.create({ model: "claude-sonnet-4-5", max_tokens: 512, messages, stream: true }),
      () => undefined,
    );
    const { outcome, balance } = await settled();
    expect(outcome).toMatchObject({ outcome: "released", charged: 0, releaseReason: "usage-cut" });
    expect(balance).toBe(START);
  });
});
