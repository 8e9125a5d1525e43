/**
 * `credit-management/ai` with the AI SDK's own mock models (`ai/test`): generateText, streamText
 * (finished, aborted mid-stream, finished without usage, failed), tools over several steps, the
 * run cap, the SDK's retries, idempotent runs and embeddings. Every charge is checked against the
 * usage priced by hand, every call leaves no hold open, and every refusal happens before the
 * provider is called.
 */
import type { LanguageModelV4StreamPart, LanguageModelV4Usage } from "@ai-sdk/provider";
import {
  APICallError,
  embed,
  embedMany,
  generateText,
  stepCountIs,
  streamText,
  tool,
  wrapEmbeddingModel,
  wrapLanguageModel,
} from "ai";
import { MockEmbeddingModelV4, MockLanguageModelV4 } from "ai/test";
import { afterEach, describe, expect, it } from "vitest";
import * as z from "zod";
import {
  ConfigurationError,
  createCreditManager,
  InsufficientCreditsError,
  SpendLimitError,
  UnknownModelError,
  ValidationError,
  type CreditManager,
} from "../../src/index.js";
import { type JournalEntry } from "../../src/models-public.js";
import {
  creditErrorOf,
  creditMiddleware,
  estimatePromptTokens,
  RunBudgetExceededError,
  type AiCallOutcome,
  type CreditMiddlewareOptions,
} from "../../src/ai/index.js";

/** 1 credit per 10 input tokens, 4 per 10 output tokens, 1 per 20 cached tokens. */
const BOOK = {
  version: "ai-book-1",
  models: [
    {
      model: "gpt-4o-mini",
      provider: "openai",
      input: { credits: 1, per: 10 },
      output: { credits: 4, per: 10 },
      cachedInput: { credits: 1, per: 20 },
    },
    { model: "claude-sonnet-4-5", input: { credits: 3, per: 10 }, output: { credits: 3, per: 2 } },
    { model: "text-embedding-3-small", input: { credits: 1, per: 50 }, output: { credits: 0 } },
  ],
};
/** gpt-4o-mini by hand: uncached input × 1/10 + cached × 1/20 + output × 4/10, rounded up once. */
const gpt = (input: number, cached: number, output: number) => Math.ceil((input * 2 + cached + output * 8) / 20);
/** claude-sonnet-4-5 by hand: input × 3/10 + output × 3/2 (cache reads at the input rate). */
const claude = (input: number, output: number) => Math.ceil((input * 3 + output * 15) / 10);

const usage = (input: number, cached: number, output: number, reasoning = 0): LanguageModelV4Usage => ({
  inputTokens: { total: input, noCache: input - cached, cacheRead: cached, cacheWrite: undefined },
  outputTokens: { total: output, text: output - reasoning, reasoning },
});
const NO_USAGE: LanguageModelV4Usage = {
  inputTokens: { total: undefined, noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
  outputTokens: { total: undefined, text: undefined, reasoning: undefined },
};
/** The SDK waits what `retry-after-ms` says before a retry (else 2 s, then 4 s). */
const FAST_RETRY = { "retry-after-ms": "1" };
const STOP = { unified: "stop" as const, raw: "stop" };

const answer = (text: string, u: LanguageModelV4Usage, modelId?: string) => ({
  content: [{ type: "text" as const, text }],
  finishReason: STOP,
  usage: u,
  warnings: [],
  ...(modelId === undefined ? {} : { response: { modelId } }),
});

const managers: CreditManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
});
async function setup(credits = 100_000): Promise<CreditManager> {
  const m = await createCreditManager({ pricing: BOOK });
  managers.push(m);
  await m.credits.addCredits("u", credits);
  return m;
}
const history = async (m: CreditManager): Promise<JournalEntry[]> =>
  (await m.credits.getCreditHistory("u", { limit: 200 })).items.slice().reverse();
const charged = async (m: CreditManager, start = 100_000) => start - (await m.credits.getUserCreditsInfo("u")).balance;
/** No hold left open: nothing reserved. */
const noHold = async (m: CreditManager) => expect((await m.credits.getUserCreditsInfo("u")).reserved).toBe(0);

/** A model stream we feed by hand: `push` parts, `end()`; it records whether the consumer cancelled. */
function handStream() {
  let controller!: ReadableStreamDefaultController<LanguageModelV4StreamPart>;
  const state = { cancelled: false };
  const stream = new ReadableStream<LanguageModelV4StreamPart>({
    start(c) {
      controller = c;
    },
    cancel() {
      state.cancelled = true;
    },
  });
  return {
    stream,
    state,
    push: (...parts: LanguageModelV4StreamPart[]) => parts.forEach((p) => controller.enqueue(p)),
    end: () => controller.close(),
  };
}
const textParts = (words: string[]): LanguageModelV4StreamPart[] => [
  { type: "stream-start", warnings: [] },
  { type: "text-start", id: "t" },
  ...words.map((delta) => ({ type: "text-delta" as const, id: "t", delta })),
  { type: "text-end", id: "t" },
];
const PROMPT = "How are credits counted?";
const promptTokens = estimatePromptTokens({ prompt: [{ role: "user", content: [{ type: "text", text: PROMPT }] }] });

describe("creditMiddleware: generateText", () => {
  it("holds from the prompt and maxOutputTokens, commits the usage priced by the model's entry", async () => {
    const m = await setup();
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: answer("Per token.", usage(1_200, 200, 300, 40), "gpt-4o-mini-2024-07-18"),
    });
    const settled: AiCallOutcome[] = [];
    const credits = creditMiddleware({
      manager: m,
      userId: "u",
      spender: "alice",
      feature: "chat",
      metadata: { conversation: "c-1" },
      onSettled: (o) => settled.push(o),
    });
    const result = await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      maxOutputTokens: 1_000,
    });
    expect(result.text).toBe("Per token.");
    const cost = gpt(1_000, 200, 300);
    expect(await charged(m)).toBe(cost);
    expect(credits.charged).toBe(cost);
    expect(credits.held).toBe(0);
    await noHold(m);
    const entries = await history(m);
    expect(entries.map((e) => e.type)).toEqual(["add", "reserve", "commit_reserved"]);
    // The hold: the prompt's estimate and the 1,000 output tokens asked for, priced by the book.
    expect(entries[1]?.amount).toBe(gpt(promptTokens, 0, 1_000));
    const commit = entries[2] as JournalEntry;
    expect(commit).toMatchObject({ spender: "alice", feature: "chat" });
    expect(commit.metadata).toMatchObject({
      conversation: "c-1",
      model: "gpt-4o-mini",
      provider: "openai",
      usages: [
        {
          amount: cost,
          model: "gpt-4o-mini-2024-07-18",
          provider: "openai",
          inputTokens: 1_000,
          cachedTokens: 200,
          outputTokens: 300,
          metadata: { reasoningTokens: 40 },
          priceBook: "ai-book-1",
          priced: "gpt-4o-mini",
          source: "response",
        },
      ],
    });
    expect(settled).toMatchObject([{ kind: "generate", outcome: "committed", charged: cost, call: 1 }]);
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("refuses before the provider is called: too few credits, a spend limit, an unknown model", async () => {
    const m = await setup(10);
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: answer("x", usage(1, 0, 1)),
    });
    const poor = creditMiddleware({ manager: m, userId: "u" });
    const e1 = await generateText({ model: wrapLanguageModel({ model, middleware: poor }), prompt: PROMPT }).catch(
      (e: unknown) => e,
    );
    expect(creditErrorOf(e1)).toBeInstanceOf(InsufficientCreditsError);

    await m.credits.addCredits("u", 100_000);
    await m.credits.setLimits("u", [{ spender: "bob", amount: 100, period: "day" }]);
    const limited = creditMiddleware({ manager: m, userId: "u", spender: "bob" });
    const e2 = await generateText({ model: wrapLanguageModel({ model, middleware: limited }), prompt: PROMPT }).catch(
      (e: unknown) => e,
    );
    expect(creditErrorOf(e2)).toBeInstanceOf(SpendLimitError);

    const unknown = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-9",
      doGenerate: answer("x", usage(1, 0, 1)),
    });
    const e3 = await generateText({
      model: wrapLanguageModel({ model: unknown, middleware: creditMiddleware({ manager: m, userId: "u" }) }),
      prompt: PROMPT,
    }).catch((e: unknown) => e);
    expect(creditErrorOf(e3)).toBeInstanceOf(UnknownModelError);

    expect(model.doGenerateCalls).toHaveLength(0);
    expect(unknown.doGenerateCalls).toHaveLength(0);
    expect((await history(m)).filter((e) => e.type === "reserve")).toHaveLength(0);
  });

  it("a provider error releases the hold; the SDK's retries hold again each time, and the answer is charged once", async () => {
    const m = await setup();
    let calls = 0;
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: async () => {
        calls++;
        if (calls < 3)
          throw new APICallError({
            message: "overloaded",
            url: "http://x",
            requestBodyValues: {},
            statusCode: 529,
            isRetryable: true,
            responseHeaders: FAST_RETRY,
          });
        return answer("ok", usage(100, 0, 10));
      },
    });
    const credits = creditMiddleware({ manager: m, userId: "u", idempotencyKey: "req-1" });
    const result = await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      maxRetries: 2,
    });
    expect(result.text).toBe("ok");
    expect(calls).toBe(3);
    expect(await charged(m)).toBe(gpt(100, 0, 10));
    const types = (await history(m)).map((e) => e.type);
    expect(types).toEqual([
      "add",
      "reserve",
      "release_reserved",
      "reserve",
      "release_reserved",
      "reserve",
      "commit_reserved",
    ]);
    expect(credits.outcomes.map((o) => [o.outcome, o.call])).toEqual([
      ["released", 1],
      ["released", 1],
      ["committed", 1],
    ]);
    await noHold(m);

    // All attempts failed: every hold released, the error is the provider's.
    const failing = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: async () => {
        throw new APICallError({
          message: "down",
          url: "http://x",
          requestBodyValues: {},
          statusCode: 500,
          isRetryable: true,
          responseHeaders: FAST_RETRY,
        });
      },
    });
    const before = await charged(m);
    await expect(
      generateText({
        model: wrapLanguageModel({ model: failing, middleware: creditMiddleware({ manager: m, userId: "u" }) }),
        prompt: PROMPT,
        maxRetries: 1,
      }),
    ).rejects.toThrow();
    expect(await charged(m)).toBe(before);
    await noHold(m);
  });

  it("tools over several steps: each model call is metered; the run's calls add up", async () => {
    const m = await setup();
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: [
        {
          content: [
            { type: "tool-call", toolCallId: "call-1", toolName: "balance", input: JSON.stringify({ user: "u" }) },
          ],
          finishReason: { unified: "tool-calls", raw: "tool_calls" },
          usage: usage(400, 0, 30),
          warnings: [],
        },
        answer("You have credits.", usage(480, 400, 12)),
      ],
    });
    const credits = creditMiddleware({ manager: m, userId: "u", feature: "agent" });
    const result = await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      tools: { balance: tool({ inputSchema: z.object({ user: z.string() }), execute: async () => ({ balance: 42 }) }) },
      stopWhen: stepCountIs(3),
    });
    expect(result.text).toBe("You have credits.");
    expect(result.steps).toHaveLength(2);
    const cost = gpt(400, 0, 30) + gpt(80, 400, 12);
    expect(await charged(m)).toBe(cost);
    expect(credits.outcomes.map((o) => o.call)).toEqual([1, 2]);
    const commits = (await history(m)).filter((e) => e.type === "commit_reserved");
    expect(commits.map((e) => e.feature)).toEqual(["agent", "agent"]);
    // The second call's hold counted the tool call and its result in the prompt.
    const holds = (await history(m)).filter((e) => e.type === "reserve").map((e) => e.amount);
    expect(holds[1]).toBeGreaterThan(holds[0] as number);
    await noHold(m);
  });

  it("maxRunCredits caps the run: a call's output is lowered to what is left, then a call that cannot fit is refused", async () => {
    const m = await setup();
    // A provider that keeps to maxOutputTokens (as the real ones do): 200 tokens, or fewer if asked.
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: async ({ maxOutputTokens }) =>
        answer("ok", usage(promptTokens, 0, Math.min(200, maxOutputTokens ?? 200))),
    });
    const credits = creditMiddleware({ manager: m, userId: "u", maxRunCredits: 200 });
    const wrapped = wrapLanguageModel({ model, middleware: credits });
    await generateText({ model: wrapped, prompt: PROMPT, maxOutputTokens: 4_000 });
    // 4,000 output tokens would hold 1,600+: lowered to the most that fits in 200 credits.
    const asked = model.doGenerateCalls[0]?.maxOutputTokens as number;
    expect(asked).toBeLessThan(4_000);
    expect(gpt(promptTokens, 0, asked)).toBeLessThanOrEqual(200);
    expect(gpt(promptTokens, 0, asked + 1)).toBeGreaterThan(200);
    expect(credits.charged).toBe(gpt(promptTokens, 0, 200));
    let refused: unknown;
    for (let i = 0; i < 20 && refused === undefined; i++)
      refused = await generateText({ model: wrapped, prompt: PROMPT, maxOutputTokens: 4_000 }).then(
        () => undefined,
        (e: unknown) => e,
      );
    const error = creditErrorOf(refused);
    expect(error).toBeInstanceOf(RunBudgetExceededError);
    const calls = model.doGenerateCalls.length;
    expect(error?.details).toMatchObject({ maxRunCredits: 200, charged: credits.charged, held: 0 });
    expect(credits.charged).toBeLessThanOrEqual(200);
    expect(credits.charged).toBeGreaterThan(200 - gpt(promptTokens, 0, 1));
    expect(await charged(m)).toBe(credits.charged);
    // Refused before the provider: no call was made for it.
    expect(credits.outcomes).toHaveLength(calls);
    await noHold(m);
  });

  it("maxRunCredits is passed by at most the last call's input under-estimate, priced; the next call is refused", async () => {
    // The provider reports far more input than the prompt's length suggests (a system prompt it
    // adds, an image): 640 tokens for a prompt estimated at a few.
    for (const [cap, input] of [
      [294, 640],
      [200, 5_000],
      [1_000, 640],
    ] as const) {
      const m = await setup();
      const model = new MockLanguageModelV4({
        provider: "openai.chat",
        modelId: "gpt-4o-mini",
        doGenerate: async ({ maxOutputTokens }) => answer("ok", usage(input, 0, Math.min(200, maxOutputTokens ?? 200))),
      });
      const credits = creditMiddleware({ manager: m, userId: "u", maxRunCredits: cap });
      const wrapped = wrapLanguageModel({ model, middleware: credits });
      let refused: unknown;
      for (let i = 0; i < 50 && refused === undefined; i++)
        refused = await generateText({ model: wrapped, prompt: PROMPT, maxOutputTokens: 4_000 }).then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(creditErrorOf(refused)).toBeInstanceOf(RunBudgetExceededError);
      // The stated bound: the input above the estimate, at the input rate (1/10), rounded up.
      const bound = Math.ceil((input - promptTokens) / 10);
      expect(credits.charged).toBeGreaterThan(cap); // the last call did pass the cap…
      expect(credits.charged).toBeLessThanOrEqual(cap + bound); // …by no more than that
      expect(await charged(m)).toBe(credits.charged);
      // Every call but the last was charged within the cap; the last one opened within it.
      const last = credits.outcomes[credits.outcomes.length - 1] as AiCallOutcome;
      expect(credits.charged - last.charged + last.estimate).toBeLessThanOrEqual(cap);
      expect(last.charged - last.estimate).toBeLessThanOrEqual(bound);
      await noHold(m);
    }
  });

  it("strictRunCap: the run never passes maxRunCredits; usage beyond what the run had left is not charged", async () => {
    for (const [cap, input] of [
      [294, 640],
      [200, 5_000],
      [1_000, 640],
    ] as const) {
      const m = await setup();
      const model = new MockLanguageModelV4({
        provider: "openai.chat",
        modelId: "gpt-4o-mini",
        doGenerate: async ({ maxOutputTokens }) => answer("ok", usage(input, 0, Math.min(200, maxOutputTokens ?? 200))),
      });
      const credits = creditMiddleware({ manager: m, userId: "u", maxRunCredits: cap, strictRunCap: true });
      const wrapped = wrapLanguageModel({ model, middleware: credits });
      let refused: unknown;
      for (let i = 0; i < 50 && refused === undefined; i++)
        refused = await generateText({ model: wrapped, prompt: PROMPT, maxOutputTokens: 4_000 }).then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(creditErrorOf(refused)).toBeInstanceOf(RunBudgetExceededError);
      expect(credits.charged).toBeLessThanOrEqual(cap);
      expect(await charged(m)).toBe(credits.charged);
      // Each call held what the run had left, and was charged its usage up to that.
      let before = 0;
      for (const o of credits.outcomes) {
        expect(o.estimate).toBe(cap - before);
        const priced = o.usages[0]?.amount as number;
        expect(o.charged).toBe(Math.min(priced, cap - before));
        expect(o.uncharged).toBe(priced > cap - before ? priced - (cap - before) : undefined);
        before += o.charged;
      }
      // The call that reached the cap says what it left uncharged, in its outcome and its entry.
      const last = credits.outcomes[credits.outcomes.length - 1] as AiCallOutcome;
      expect(last.uncharged).toBeGreaterThan(0);
      expect(last.entry?.amount).toBe(last.charged);
      expect(last.entry?.metadata).toMatchObject({ usages: [{ metadata: { uncharged: last.uncharged } }] });
      await noHold(m);
    }
  });

  it("strictRunCap: the same under streamText; a call the account cannot hold the worst case for is refused before the provider", async () => {
    const m = await setup(250);
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doStream: async () => ({
        stream: new ReadableStream({
          start(c) {
            for (const p of textParts(["a", "b"])) c.enqueue(p);
            c.enqueue({ type: "finish", finishReason: STOP, usage: usage(3_000, 0, 100) });
            c.close();
          },
        }),
      }),
    });
    const credits = creditMiddleware({ manager: m, userId: "u", maxRunCredits: 200, strictRunCap: true });
    const result = streamText({ model: wrapLanguageModel({ model, middleware: credits }), prompt: PROMPT });
    await result.text;
    await credits.settled();
    // gpt(3000, 0, 100) = 340 priced; the run had 200: charged 200, 140 uncharged.
    expect(credits.outcomes).toMatchObject([{ outcome: "committed", estimate: 200, charged: 200, uncharged: 140 }]);
    expect(await charged(m, 250)).toBe(200);
    // 50 credits left in the account, a fresh run capped at 200: its worst case cannot be held.
    const poorer = creditMiddleware({ manager: m, userId: "u", maxRunCredits: 200, strictRunCap: true });
    const refused = await generateText({
      model: wrapLanguageModel({ model, middleware: poorer }),
      prompt: PROMPT,
      maxOutputTokens: 10,
    }).catch((e: unknown) => e);
    expect(creditErrorOf(refused)).toBeInstanceOf(InsufficientCreditsError);
    expect(model.doStreamCalls).toHaveLength(1);
    expect(model.doGenerateCalls).toHaveLength(0);
    await noHold(m);
  });

  it("strictRunCap: a second call in flight is refused while the first holds what the run has left", async () => {
    const m = await setup();
    let finish!: () => void;
    const gate = new Promise<void>((resolve) => (finish = resolve));
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: async () => {
        await gate;
        return answer("ok", usage(100, 0, 10));
      },
    });
    const credits = creditMiddleware({ manager: m, userId: "u", maxRunCredits: 500, strictRunCap: true });
    const wrapped = wrapLanguageModel({ model, middleware: credits });
    const first = generateText({ model: wrapped, prompt: PROMPT, maxOutputTokens: 10 });
    while (credits.held === 0) await new Promise((r) => setTimeout(r, 1));
    expect(credits.held).toBe(500);
    const second = await generateText({ model: wrapped, prompt: PROMPT, maxOutputTokens: 10 }).catch((e: unknown) => e);
    expect(creditErrorOf(second)).toBeInstanceOf(RunBudgetExceededError);
    finish();
    await first;
    expect(credits.charged).toBe(gpt(100, 0, 10));
    expect(model.doGenerateCalls).toHaveLength(1);
    await noHold(m);
  });

  it("the same idempotency key charges a retried run once", async () => {
    const m = await setup();
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: answer("ok", usage(100, 0, 50)),
    });
    for (let i = 0; i < 3; i++) {
      const credits = creditMiddleware({ manager: m, userId: "u", idempotencyKey: "chat-42" });
      await generateText({ model: wrapLanguageModel({ model, middleware: credits }), prompt: PROMPT });
      expect(credits.outcomes[0]).toMatchObject({ outcome: "committed", charged: gpt(100, 0, 50) });
    }
    expect(model.doGenerateCalls).toHaveLength(3);
    expect(await charged(m)).toBe(gpt(100, 0, 50));
    expect((await history(m)).filter((e) => e.type === "commit_reserved")).toHaveLength(1);
    await noHold(m);
  });

  it("a keyed run whose first attempt failed and was retried by the SDK, then retried whole, is charged once", async () => {
    const m = await setup();
    let calls = 0;
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: async () => {
        if (++calls === 1)
          throw new APICallError({
            message: "overloaded",
            url: "http://x",
            requestBodyValues: {},
            statusCode: 529,
            isRetryable: true,
            responseHeaders: FAST_RETRY,
          });
        return answer("ok", usage(100, 0, 50));
      },
    });
    // The SDK's retry keeps the call's number (1): its hold is the key's second attempt.
    const first = creditMiddleware({ manager: m, userId: "u", idempotencyKey: "chat-7" });
    await generateText({ model: wrapLanguageModel({ model, middleware: first }), prompt: PROMPT });
    expect(first.outcomes.map((o) => [o.outcome, o.call])).toEqual([
      ["released", 1],
      ["committed", 1],
    ]);
    // The app retries the whole request with the same key: the call is found charged.
    const again = creditMiddleware({ manager: m, userId: "u", idempotencyKey: "chat-7" });
    await generateText({ model: wrapLanguageModel({ model, middleware: again }), prompt: PROMPT });
    expect(again.outcomes).toMatchObject([{ outcome: "committed", call: 1, charged: gpt(100, 0, 50) }]);
    expect(await charged(m)).toBe(gpt(100, 0, 50));
    await noHold(m);
  });

  it("a generate answer without usage totals is charged as counted (its content parts as output)", async () => {
    const m = await setup();
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: answer("ok", NO_USAGE),
    });
    const credits = creditMiddleware({ manager: m, userId: "u" });
    await generateText({ model: wrapLanguageModel({ model, middleware: credits }), prompt: PROMPT });
    expect(credits.outcomes[0]?.usages[0]).toMatchObject({ source: "counted", problem: "absent", outputTokens: 1 });
    expect(await charged(m)).toBe(gpt(promptTokens, 0, 1));
    await noHold(m);
  });

  it("usage above the hold is charged in full; the commit and the excess name the call's model, spender and feature", async () => {
    const m = await setup();
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doGenerate: answer("ok", usage(50_000, 0, 100)),
    });
    const credits = creditMiddleware({ manager: m, userId: "u", spender: "alice", feature: "chat" });
    await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      maxOutputTokens: 100,
    });
    const cost = gpt(50_000, 0, 100);
    expect(credits.outcomes[0]?.estimate).toBeLessThan(cost);
    expect(await charged(m)).toBe(cost);
    const after = (await history(m)).filter((x) => x.type !== "add" && x.type !== "reserve");
    expect(after.map((e) => [e.type, e.amount])).toEqual([
      ["commit_reserved", credits.outcomes[0]?.estimate],
      ["deduct", cost - (credits.outcomes[0]?.estimate as number)],
    ]);
    for (const e of after) {
      expect(e.metadata).toMatchObject({ model: "gpt-4o-mini", provider: "openai" });
      expect(e).toMatchObject({ spender: "alice", feature: "chat" });
    }
    await noHold(m);
  });
});

describe("creditMiddleware: streamText", () => {
  it("commits at the finish part, before the finish reaches the app", async () => {
    const m = await setup();
    const model = new MockLanguageModelV4({
      provider: "anthropic.messages",
      modelId: "claude-sonnet-4-5",
      doStream: {
        stream: new ReadableStream({
          start(c) {
            for (const p of textParts(["Per", " token."])) c.enqueue(p);
            c.enqueue({ type: "finish", finishReason: STOP, usage: usage(1_000, 0, 250) });
            c.close();
          },
        }),
      },
    });
    const credits = creditMiddleware({ manager: m, userId: "u" });
    let atFinish = -1;
    const result = streamText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      onFinish: () => {
        atFinish = credits.charged;
      },
    });
    expect(await result.text).toBe("Per token.");
    expect(atFinish).toBe(claude(1_000, 250));
    expect(await charged(m)).toBe(claude(1_000, 250));
    await noHold(m);
  });

  it("a refusal arrives in onError; result.text rejects; the provider is never called", async () => {
    const m = await setup(5);
    const model = new MockLanguageModelV4({ provider: "openai.chat", modelId: "gpt-4o-mini" });
    const errors: unknown[] = [];
    const result = streamText({
      model: wrapLanguageModel({ model, middleware: creditMiddleware({ manager: m, userId: "u" }) }),
      prompt: PROMPT,
      onError: ({ error }) => {
        errors.push(error);
      },
    });
    const rejected = await result.text.then(undefined, (e: unknown) => e);
    expect((rejected as Error).name).toBe("AI_NoOutputGeneratedError");
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(InsufficientCreditsError);
    expect(creditErrorOf(rejected) ?? creditErrorOf(errors[0])).toBeInstanceOf(InsufficientCreditsError);
    expect(model.doStreamCalls).toHaveLength(0);
  });

  it("aborted mid-stream (no usage, as OpenAI): charges the prompt's estimate and one token per delta delivered", async () => {
    const m = await setup();
    const s = handStream();
    const model = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doStream: { stream: s.stream },
    });
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const abort = new AbortController();
    const result = streamText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      abortSignal: abort.signal,
      onAbort: () => undefined,
    });
    s.push(...textParts(["a", "b", "c"]).slice(0, 5)); // stream-start, text-start, 3 deltas
    const seen: string[] = [];
    for await (const t of result.textStream) {
      seen.push(t);
      if (seen.length === 3) abort.abort();
    }
    await credits.settled();
    expect(credits.outcomes).toHaveLength(1);
    expect(credits.outcomes[0]?.usages[0]).toMatchObject({
      source: "counted",
      problem: "aborted",
      inputTokens: promptTokens,
      outputTokens: 3,
    });
    expect(await charged(m)).toBe(gpt(promptTokens, 0, 3));
    await noHold(m);
  });

  it("aborted mid-stream after Anthropic's message_start: its input counts, the deltas as output", async () => {
    const m = await setup();
    const s = handStream();
    const model = new MockLanguageModelV4({
      provider: "anthropic.messages",
      modelId: "claude-sonnet-4-5",
      doStream: { stream: s.stream },
    });
    const credits = creditMiddleware({ manager: m, userId: "u" });
    const abort = new AbortController();
    const result = streamText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      abortSignal: abort.signal,
    });
    s.push(
      { type: "stream-start", warnings: [] },
      {
        type: "custom",
        kind: "anthropic.message_start",
        providerMetadata: {
          anthropic: {
            usage: {
              input_tokens: 900,
              cache_read_input_tokens: 0,
              cache_creation_input_tokens: 100,
              output_tokens: 1,
            },
          },
        },
      },
      ...textParts(["a", "b"]).slice(1, 4),
    );
    let n = 0;
    for await (const _ of result.textStream) if (++n === 2) abort.abort();
    await credits.settled();
    expect(await charged(m)).toBe(claude(1_000, 2));
    await noHold(m);
  });

  it("a finish part without usage totals is charged as counted; missingUsage none releases", async () => {
    for (const rule of ["counted", "none", "estimate"] as const) {
      const m = await setup();
      const model = new MockLanguageModelV4({
        provider: "openai.chat",
        modelId: "gpt-4o-mini",
        doStream: {
          stream: new ReadableStream({
            start(c) {
              for (const p of textParts(["x", "y"])) c.enqueue(p);
              c.enqueue({ type: "finish", finishReason: STOP, usage: NO_USAGE });
              c.close();
            },
          }),
        },
      });
      const credits = creditMiddleware({ manager: m, userId: "u", missingUsage: rule });
      await streamText({ model: wrapLanguageModel({ model, middleware: credits }), prompt: PROMPT }).text;
      await credits.settled();
      const estimate = credits.outcomes[0]?.estimate as number;
      expect(await charged(m)).toBe(rule === "counted" ? gpt(promptTokens, 0, 2) : rule === "none" ? 0 : estimate);
      await noHold(m);
    }
  });

  it("a provider error before the stream releases the hold; an error part mid-stream charges what was delivered", async () => {
    const m = await setup();
    const failing = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doStream: async () => {
        throw new APICallError({
          message: "bad",
          url: "http://x",
          requestBodyValues: {},
          statusCode: 400,
          isRetryable: false,
        });
      },
    });
    const errors: unknown[] = [];
    await streamText({
      model: wrapLanguageModel({ model: failing, middleware: creditMiddleware({ manager: m, userId: "u" }) }),
      prompt: PROMPT,
      onError: ({ error }) => void errors.push(error),
    }).text.then(undefined, () => undefined);
    expect(errors).toHaveLength(1);
    expect(await charged(m)).toBe(0);
    await noHold(m);

    const broken = new MockLanguageModelV4({
      provider: "openai.chat",
      modelId: "gpt-4o-mini",
      doStream: {
        stream: new ReadableStream({
          start(c) {
            for (const p of textParts(["x", "y", "z"])) c.enqueue(p);
            c.enqueue({ type: "error", error: new Error("upstream reset") });
            c.close();
          },
        }),
      },
    });
    const credits = creditMiddleware({ manager: m, userId: "u" });
    await streamText({
      model: wrapLanguageModel({ model: broken, middleware: credits }),
      prompt: PROMPT,
      onError: () => undefined,
    }).text.then(undefined, () => undefined);
    await credits.settled();
    expect(credits.outcomes[0]?.usages[0]).toMatchObject({ source: "counted", problem: "cut", outputTokens: 3 });
    expect(await charged(m)).toBe(gpt(promptTokens, 0, 3));
    await noHold(m);
  });
});

describe("creditMiddleware: embeddings", () => {
  it("embed and embedMany charge the tokens the provider reported", async () => {
    const m = await setup();
    const model = new MockEmbeddingModelV4({
      provider: "openai.embedding",
      modelId: "text-embedding-3-small",
      maxEmbeddingsPerCall: 10,
      doEmbed: async ({ values }) => ({
        embeddings: values.map(() => [0.1, 0.2]),
        usage: { tokens: 120 * values.length },
        warnings: [],
      }),
    });
    const credits = creditMiddleware({ manager: m, userId: "u", feature: "search" });
    const wrapped = wrapEmbeddingModel({ model, middleware: credits.embedding });
    await embed({ model: wrapped, value: "one" });
    await embedMany({ model: wrapped, values: ["two", "three", "four"] });
    expect(await charged(m)).toBe(Math.ceil(120 / 50) + Math.ceil(360 / 50));
    expect(credits.outcomes.map((o) => o.kind)).toEqual(["embed", "embed"]);
    await noHold(m);

    const refused = await embed({
      model: wrapEmbeddingModel({ model, middleware: creditMiddleware({ manager: m, userId: "nobody" }).embedding }),
      value: "x",
    }).catch((e: unknown) => e);
    expect(creditErrorOf(refused)).toBeInstanceOf(InsufficientCreditsError);
    expect(model.doEmbedCalls).toHaveLength(2);
  });
});

describe("creditMiddleware: options", () => {
  it("a bad value of the request's input is a ValidationError", async () => {
    const m = await setup();
    const refused = (o: Omit<CreditMiddlewareOptions, "manager">, message: RegExp) => {
      expect(() => creditMiddleware({ manager: m, ...o })).toThrow(ValidationError);
      expect(() => creditMiddleware({ manager: m, ...o })).toThrow(message);
    };
    refused({ userId: "" }, /userId/);
    refused({ userId: "u", maxRunCredits: -1 }, /amount/);
    refused({ userId: "u", idempotencyKey: "k".repeat(201) }, /200/);
    refused({ userId: "u", spender: "" }, /spender/);
  });

  it("a bad setup option, an unknown one or a missing manager is a ConfigurationError", async () => {
    const m = await setup();
    const refused = (o: unknown, message: RegExp) => {
      expect(() => creditMiddleware(o as CreditMiddlewareOptions)).toThrow(ConfigurationError);
      expect(() => creditMiddleware(o as CreditMiddlewareOptions)).toThrow(message);
    };
    refused({ manager: m, userId: "u", strictRunCap: true }, /strictRunCap needs maxRunCredits/);
    refused({ manager: m, userId: "u", missingUsage: "all" }, /missingUsage/);
    refused({ manager: m, userId: "u", ttlSeconds: 0 }, /ttlSeconds/);
    refused({ manager: m, userId: "u", onSettled: "log" }, /onSettled/);
    refused({ manager: m, userId: "u", budget: 5 }, /budget/);
    refused({ userId: "u" }, /manager/);
    refused(null, /options/);
    // A setup mistake is reported before the request's input is read.
    refused({ manager: m, userId: "", provider: "" }, /provider/);
  });
});
