/**
 * `creditMiddleware({ minOutputTokens })` (docs/llm-metering.md, "A hold for what is there"): a call
 * whose estimate is more than the account may spend holds what it may spend, down to the prompt and
 * `minOutputTokens`, and the provider is asked for no more output than the hold pays for.
 */
import type { LanguageModelV4StreamPart, LanguageModelV4Usage } from "@ai-sdk/provider";
import { generateText, streamText, wrapLanguageModel } from "ai";
import { MockLanguageModelV4 } from "ai/test";
import { afterEach, describe, expect, it } from "vitest";
import {
  ConfigurationError,
  createCreditManager,
  InsufficientCreditsError,
  type CreditManager,
} from "../../src/index.js";
import { creditErrorOf, creditMiddleware, estimatePromptTokens } from "../../src/ai/index.js";

/** 1 credit per 10 input tokens, 4 per 10 output tokens. */
const BOOK = {
  version: "capped-book-1",
  models: [
    { model: "gpt-4o-mini", provider: "openai", input: { credits: 1, per: 10 }, output: { credits: 4, per: 10 } },
  ],
};
/** gpt-4o-mini by hand: input × 1/10 + output × 4/10, rounded up once. */
const gpt = (input: number, output: number) => Math.ceil((input + output * 4) / 10);

const usage = (input: number, output: number): LanguageModelV4Usage => ({
  inputTokens: { total: input, noCache: input, cacheRead: 0, cacheWrite: undefined },
  outputTokens: { total: output, text: output, reasoning: 0 },
});
const STOP = { unified: "stop" as const, raw: "stop" };
const PROMPT = "How are credits counted?";
const promptTokens = estimatePromptTokens({ prompt: [{ role: "user", content: [{ type: "text", text: PROMPT }] }] });

const managers: CreditManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
});
async function setup(credits: number): Promise<CreditManager> {
  const m = await createCreditManager({ pricing: BOOK });
  managers.push(m);
  await m.credits.addCredits("u", credits);
  return m;
}

/** A provider that keeps to `maxOutputTokens` (as the real ones do): 2,000 output tokens, or fewer if asked. */
const keeping = () =>
  new MockLanguageModelV4({
    provider: "openai.chat",
    modelId: "gpt-4o-mini",
    doGenerate: async ({ maxOutputTokens }) => ({
      content: [{ type: "text", text: "ok" }],
      finishReason: STOP,
      usage: usage(promptTokens, Math.min(2_000, maxOutputTokens ?? 2_000)),
      warnings: [],
    }),
    doStream: async ({ maxOutputTokens }) => ({
      stream: new ReadableStream<LanguageModelV4StreamPart>({
        start(c) {
          c.enqueue({ type: "stream-start", warnings: [] });
          c.enqueue({ type: "text-start", id: "t" });
          c.enqueue({ type: "text-delta", id: "t", delta: "ok" });
          c.enqueue({ type: "text-end", id: "t" });
          const output = Math.min(2_000, maxOutputTokens ?? 2_000);
          c.enqueue({ type: "finish", finishReason: STOP, usage: usage(promptTokens, output) });
          c.close();
        },
      }),
    }),
  });

/** The most output tokens `credits` pay for after the prompt, by hand. */
const mostOutput = (credits: number) => {
  let o = 0;
  while (gpt(promptTokens, o + 1) <= credits) o++;
  return o;
};

describe("creditMiddleware: minOutputTokens", () => {
  it("holds what the account has and asks the provider for no more output than that pays for", async () => {
    const m = await setup(300);
    const model = keeping();
    const credits = creditMiddleware({ manager: m, userId: "u", minOutputTokens: 50 });
    await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      maxOutputTokens: 4_000,
    });
    const asked = model.doGenerateCalls[0]?.maxOutputTokens;
    expect(asked).toBe(mostOutput(300));
    expect(credits.outcomes).toMatchObject([
      { outcome: "committed", estimate: 300, charged: gpt(promptTokens, asked as number), maxOutputTokens: asked },
    ]);
    const reserve = (await m.credits.getCreditHistory("u", { limit: 5 })).items.find((e) => e.type === "reserve");
    expect(reserve).toMatchObject({ amount: 300, metadata: { requested: gpt(promptTokens, 4_000) } });
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ reserved: 0, balance: 300 - credits.charged });
    expect(credits.held).toBe(0);
  });

  it("leaves a call it can hold whole as it is", async () => {
    const m = await setup(100_000);
    const model = keeping();
    const credits = creditMiddleware({ manager: m, userId: "u", minOutputTokens: 50 });
    await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      maxOutputTokens: 1_000,
    });
    expect(model.doGenerateCalls[0]?.maxOutputTokens).toBe(1_000);
    expect(credits.outcomes[0]?.estimate).toBe(gpt(promptTokens, 1_000));
    expect(credits.outcomes[0]?.maxOutputTokens).toBe(undefined);
  });

  it("caps a streamed call the same way, within the feature's spend limit", async () => {
    const m = await setup(100_000);
    await m.credits.setLimit("u", { feature: "chat", amount: 120, period: "day" });
    const model = keeping();
    const credits = creditMiddleware({ manager: m, userId: "u", feature: "chat", minOutputTokens: 10 });
    const result = streamText({ model: wrapLanguageModel({ model, middleware: credits }), prompt: PROMPT });
    await result.text;
    await credits.settled();
    // No maxOutputTokens given: held for the default 4,096, capped at the limit's 120.
    expect(model.doStreamCalls[0]?.maxOutputTokens).toBe(mostOutput(120));
    expect(credits.outcomes).toMatchObject([{ outcome: "committed", estimate: 120, maxOutputTokens: mostOutput(120) }]);
    expect((await m.credits.getLimits("u"))[0]?.used).toBe(credits.charged);
  });

  it("refuses a call the account cannot hold the prompt and minOutputTokens for, before the provider", async () => {
    const least = gpt(promptTokens, 50);
    const m = await setup(least - 1);
    const model = keeping();
    const credits = creditMiddleware({ manager: m, userId: "u", minOutputTokens: 50 });
    const error = await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      maxOutputTokens: 4_000,
      maxRetries: 0,
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(creditErrorOf(error)).toBeInstanceOf(InsufficientCreditsError);
    expect(creditErrorOf(error)?.details).toMatchObject({ requested: least });
    expect(model.doGenerateCalls).toHaveLength(0);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: least - 1, reserved: 0 });
    // Exactly the least it needs: held, and asked for (at least) minOutputTokens.
    await m.credits.addCredits("u", 1);
    await generateText({
      model: wrapLanguageModel({ model, middleware: credits }),
      prompt: PROMPT,
      maxOutputTokens: 4_000,
    });
    expect(model.doGenerateCalls[0]?.maxOutputTokens).toBeGreaterThanOrEqual(50);
    expect(credits.outcomes[0]?.estimate).toBe(least);
  });

  it("is the program's setup: a minOutputTokens that is not a positive whole number is a ConfigurationError", async () => {
    const m = await setup(10);
    for (const minOutputTokens of [0, -3, 1.5])
      expect(() => creditMiddleware({ manager: m, userId: "u", minOutputTokens })).toThrow(ConfigurationError);
  });
});
