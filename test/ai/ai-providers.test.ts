/**
 * `credit-management/ai` through the real providers, `@ai-sdk/openai` and `@ai-sdk/anthropic`,
 * pointed at a fake OpenAI-/Anthropic-compatible server on 127.0.0.1 that speaks their wire formats
 * (test/http/llm-upstream.ts): JSON and streamed answers, tools over two steps, aborts mid-stream,
 * provider errors, embeddings. The journal equals the usage priced by hand, no hold stays open, and
 * a refusal reaches the server with no request.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { embedMany, generateText, stepCountIs, streamText, tool, wrapEmbeddingModel, wrapLanguageModel } from "ai";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import * as z from "zod";
import { createCreditManager, InsufficientCreditsError, SpendLimitError, type CreditManager } from "../../src/index.js";
import { creditErrorOf, creditMiddleware, estimatePromptTokens } from "../../src/ai/index.js";
import {
  ANTHROPIC_MODEL,
  ANTHROPIC_USAGE,
  chatEvents,
  OPENAI_MODEL,
  OPENAI_USAGE,
  streams,
} from "../http/llm-upstream.js";
import { listen, type Running } from "../http/servers.js";

const BOOK = {
  version: "ai-providers-1",
  models: [
    {
      model: "gpt-4o-mini",
      provider: "openai",
      input: { credits: 1, per: 10 },
      output: { credits: 4, per: 10 },
      cachedInput: { credits: 1, per: 20 },
    },
    {
      model: "claude-sonnet-4-5",
      provider: "anthropic",
      input: { credits: 3, per: 10 },
      output: { credits: 3, per: 2 },
      cachedInput: { credits: 3, per: 100 },
    },
    { model: "text-embedding-3-small", input: { credits: 1, per: 50 }, output: { credits: 0 } },
  ],
};
/** OPENAI_USAGE (1,200 prompt of which 200 cached, 300 completion) at the gpt-4o-mini rates. */
const OPENAI_CHARGE = Math.ceil(1_000 / 10 + 200 / 20 + (300 * 4) / 10); // 230
/** ANTHROPIC_USAGE (1,000 input, 500 cache reads, 250 output) at the claude rates. */
const ANTHROPIC_CHARGE = Math.ceil((1_000 * 3) / 10 + (500 * 3) / 100 + (250 * 3) / 2); // 690
const START = 1_000_000;
const PROMPT = "How are credits counted?";
const promptTokens = estimatePromptTokens({ prompt: [{ role: "user", content: [{ type: "text", text: PROMPT }] }] });

type Handler = (body: Record<string, unknown>, res: ServerResponse) => void | Promise<void>;
/** Answers queued per path, first in first out; each request is counted. */
const queue = new Map<string, Handler[]>();
const requests: { path: string; body: Record<string, unknown> }[] = [];
const next = (path: string, ...handlers: Handler[]) => queue.set(path, [...(queue.get(path) ?? []), ...handlers]);
const json =
  (body: unknown, status = 200): Handler =>
  (_, res) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
/** An SSE answer: each event written on its own; `hang` keeps the connection open after them (until the client leaves). */
const sse =
  (events: string[], hang = false): Handler =>
  async (_, res) => {
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    for (const e of events) {
      res.write(e);
      await new Promise((r) => setTimeout(r, 2));
    }
    if (!hang) res.end();
  };

let server: Running;
beforeAll(async () => {
  server = await listen(
    createServer(async (req: IncomingMessage, res: ServerResponse) => {
      let raw = "";
      for await (const chunk of req) raw += String(chunk);
      const path = new URL(req.url ?? "/", "http://x").pathname;
      const body = raw === "" ? {} : (JSON.parse(raw) as Record<string, unknown>);
      requests.push({ path, body });
      const handler = queue.get(path)?.shift();
      if (handler === undefined) {
        res.writeHead(500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: `nothing queued for ${path}` } }));
        return;
      }
      await handler(body, res);
    }),
  );
});
afterAll(() => server.close());

const managers: CreditManager[] = [];
afterEach(async () => {
  queue.clear();
  requests.length = 0;
  for (const m of managers.splice(0)) await m.close();
});
async function setup(credits = START): Promise<CreditManager> {
  const m = await createCreditManager({ pricing: BOOK });
  managers.push(m);
  if (credits > 0) await m.credits.addCredits("u", credits);
  return m;
}
const spent = async (m: CreditManager) => START - (await m.credits.getUserCreditsInfo("u")).balance;
const noHold = async (m: CreditManager) => expect((await m.credits.getUserCreditsInfo("u")).reserved).toBe(0);

const openai = () => createOpenAI({ baseURL: `${server.url}/v1`, apiKey: "test-key" });
const anthropic = () => createAnthropic({ baseURL: `${server.url}/v1`, apiKey: "test-key" });

const chatCompletion = (message: Record<string, unknown>, finish = "stop", usage: unknown = OPENAI_USAGE) => ({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1,
  model: OPENAI_MODEL,
  choices: [{ index: 0, message: { role: "assistant", ...message }, finish_reason: finish }],
  usage,
});
const anthropicMessage = {
  id: "msg_1",
  type: "message",
  role: "assistant",
  model: ANTHROPIC_MODEL,
  content: [{ type: "text", text: "Per token." }],
  stop_reason: "end_turn",
  usage: ANTHROPIC_USAGE,
};

describe("through @ai-sdk/openai (chat completions)", () => {
  it("generateText and streamText: the journal is the usage priced by hand", async () => {
    const m = await setup();
    next("/v1/chat/completions", json(chatCompletion({ content: "Per token." })), sse(chatEvents(OPENAI_MODEL, true)));
    const credits = creditMiddleware({ manager: m, userId: "u", feature: "chat" });
    const model = wrapLanguageModel({ model: openai().chat("gpt-4o-mini"), middleware: credits });
    expect((await generateText({ model, prompt: PROMPT })).text).toBe("Per token.");
    expect(await streamText({ model, prompt: PROMPT }).text).toBe("Credits are counted per token.");
    // The SDK asked for the stream's usage chunk.
    expect(requests[1]?.body.stream_options).toEqual({ include_usage: true });
    expect(await spent(m)).toBe(2 * OPENAI_CHARGE);
    expect(credits.outcomes.map((o) => [o.kind, o.charged, o.model, o.provider])).toEqual([
      ["generate", OPENAI_CHARGE, OPENAI_MODEL, "openai"],
      ["stream", OPENAI_CHARGE, OPENAI_MODEL, "openai"],
    ]);
    await noHold(m);
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("tools over two steps: two calls, each charged its own usage", async () => {
    const m = await setup();
    const first = { prompt_tokens: 400, completion_tokens: 20, total_tokens: 420 };
    next(
      "/v1/chat/completions",
      json(
        chatCompletion(
          {
            content: null,
            tool_calls: [{ id: "call_1", type: "function", function: { name: "balance", arguments: '{"user":"u"}' } }],
          },
          "tool_calls",
          first,
        ),
      ),
      json(chatCompletion({ content: "You have 42." })),
    );
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const result = await generateText({
      model: wrapLanguageModel({ model: openai().chat("gpt-4o-mini"), middleware: credits }),
      prompt: PROMPT,
      tools: { balance: tool({ inputSchema: z.object({ user: z.string() }), execute: async () => ({ balance: 42 }) }) },
      stopWhen: stepCountIs(3),
    });
    expect(result.text).toBe("You have 42.");
    expect(await spent(m)).toBe(Math.ceil(400 / 10 + (20 * 4) / 10) + OPENAI_CHARGE);
    expect(credits.outcomes).toHaveLength(2);
    await noHold(m);
  });

  it("aborted mid-stream (OpenAI reports no usage): the prompt's estimate and the deltas delivered", async () => {
    const m = await setup();
    // The opening chunk and three words, then the server stalls.
    next("/v1/chat/completions", sse(chatEvents(OPENAI_MODEL, true).slice(0, 4), true));
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const abort = new AbortController();
    const result = streamText({
      model: wrapLanguageModel({ model: openai().chat("gpt-4o-mini"), middleware: credits }),
      prompt: PROMPT,
      abortSignal: abort.signal,
    });
    let words = 0;
    for await (const _ of result.textStream) if (++words === 3) abort.abort();
    await credits.settled();
    expect(credits.outcomes[0]?.usages[0]).toMatchObject({
      source: "counted",
      problem: "aborted",
      inputTokens: promptTokens,
      outputTokens: 3,
    });
    expect(await spent(m)).toBe(Math.ceil(promptTokens / 10 + (3 * 4) / 10));
    await noHold(m);
  });

  it("provider errors release every hold (the SDK's retries included); a refusal sends no request", async () => {
    const m = await setup();
    const overloaded: Handler = (_, res) => {
      res.writeHead(503, { "content-type": "application/json", "retry-after-ms": "1" });
      res.end(JSON.stringify({ error: { message: "overloaded", type: "server_error" } }));
    };
    next("/v1/chat/completions", overloaded, overloaded);
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const model = wrapLanguageModel({ model: openai().chat("gpt-4o-mini"), middleware: credits });
    await expect(generateText({ model, prompt: PROMPT, maxRetries: 1 })).rejects.toThrow();
    expect(requests).toHaveLength(2);
    expect(credits.outcomes.map((o) => o.outcome)).toEqual(["released", "released"]);
    // Streamed: the error comes before the stream.
    next("/v1/chat/completions", json({ error: { message: "bad request", type: "invalid_request_error" } }, 400));
    const errors: unknown[] = [];
    await streamText({ model, prompt: PROMPT, onError: ({ error }) => void errors.push(error) }).text.then(
      undefined,
      () => undefined,
    );
    expect(errors).toHaveLength(1);
    expect(await spent(m)).toBe(0);
    await noHold(m);

    // A spend limit says no: nothing reaches the server.
    requests.length = 0;
    await m.credits.setLimits("u", [{ spender: "bob", amount: 10, period: "day" }]);
    const limited = creditMiddleware({ manager: m, userId: "u", spender: "bob" });
    const refusal: unknown[] = [];
    const r = streamText({
      model: wrapLanguageModel({ model: openai().chat("gpt-4o-mini"), middleware: limited }),
      prompt: PROMPT,
      onError: ({ error }) => void refusal.push(error),
    });
    await r.text.then(undefined, () => undefined);
    expect(creditErrorOf(refusal[0])).toBeInstanceOf(SpendLimitError);
    expect(requests).toHaveLength(0);
  });

  it("embedMany charges the tokens the API reported", async () => {
    const m = await setup();
    next(
      "/v1/embeddings",
      json({
        object: "list",
        data: [0, 1].map((index) => ({ object: "embedding", index, embedding: [0.1, 0.2, 0.3] })),
        model: "text-embedding-3-small",
        usage: { prompt_tokens: 260, total_tokens: 260 },
      }),
    );
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const { embeddings } = await embedMany({
      model: wrapEmbeddingModel({ model: openai().embedding("text-embedding-3-small"), middleware: credits.embedding }),
      values: ["one", "two"],
    });
    expect(embeddings).toHaveLength(2);
    expect(await spent(m)).toBe(Math.ceil(260 / 50));
    await noHold(m);
  });
});

describe("through @ai-sdk/anthropic", () => {
  it("generateText and streamText: the journal is the usage priced by hand", async () => {
    const m = await setup();
    next("/v1/messages", json(anthropicMessage), sse(streams.anthropic));
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const model = wrapLanguageModel({ model: anthropic()("claude-sonnet-4-5"), middleware: credits });
    expect((await generateText({ model, prompt: PROMPT })).text).toBe("Per token.");
    expect(await streamText({ model, prompt: PROMPT }).text).toBe("Credits are counted per token.");
    expect(await spent(m)).toBe(2 * ANTHROPIC_CHARGE);
    expect(credits.outcomes.map((o) => [o.model, o.provider])).toEqual([
      [ANTHROPIC_MODEL, "anthropic"],
      [ANTHROPIC_MODEL, "anthropic"],
    ]);
    await noHold(m);
  });

  it("aborted mid-stream: the input message_start reported, the deltas delivered as output", async () => {
    const m = await setup();
    // message_start, the block's start and three words, then the server stalls.
    next("/v1/messages", sse(streams.anthropic.slice(0, 5), true));
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const abort = new AbortController();
    const result = streamText({
      model: wrapLanguageModel({ model: anthropic()("claude-sonnet-4-5"), middleware: credits }),
      prompt: PROMPT,
      abortSignal: abort.signal,
    });
    let words = 0;
    for await (const _ of result.textStream) if (++words === 3) abort.abort();
    await credits.settled();
    expect(credits.outcomes[0]?.usages[0]).toMatchObject({
      source: "counted",
      inputTokens: 1_000,
      cachedTokens: 500,
      outputTokens: 3,
    });
    expect(await spent(m)).toBe(Math.ceil((1_000 * 3) / 10 + (500 * 3) / 100 + (3 * 3) / 2));
    await noHold(m);
  });

  it("a stream cut by the server after message_start: charged the same way", async () => {
    const m = await setup();
    next("/v1/messages", async (_, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const e of streams.anthropic.slice(0, 4)) res.write(e);
      await new Promise((r) => setTimeout(r, 20));
      res.destroy();
    });
    const credits = creditMiddleware({ manager: m, userId: "u" });
    await streamText({
      model: wrapLanguageModel({ model: anthropic()("claude-sonnet-4-5"), middleware: credits }),
      prompt: PROMPT,
      onError: () => undefined,
    }).text.then(undefined, () => undefined);
    await credits.settled();
    expect(credits.outcomes[0]?.usages[0]).toMatchObject({
      source: "counted",
      inputTokens: 1_000,
      cachedTokens: 500,
      outputTokens: 2,
    });
    await noHold(m);
  });

  it("too few credits: refused before any request", async () => {
    const m = await setup(0);
    const errors: unknown[] = [];
    await streamText({
      model: wrapLanguageModel({
        model: anthropic()("claude-sonnet-4-5"),
        middleware: creditMiddleware({ manager: m, userId: "u" }),
      }),
      prompt: PROMPT,
      onError: ({ error }) => void errors.push(error),
    }).text.then(undefined, () => undefined);
    expect(errors[0]).toBeInstanceOf(InsufficientCreditsError);
    expect(requests).toHaveLength(0);
  });
});
