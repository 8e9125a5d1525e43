// A chat route on the Vercel AI SDK: `streamText` through `creditMiddleware` (docs/llm-metering.md,
// "The AI SDK"). Each model call is held before the provider is called and charged what the
// provider reported when its stream finishes; a caller without the credits gets a 402 before any
// token is spent. The model is a stand-in so the example runs without a key or a network: put
// `openai("gpt-4o-mini")` from `@ai-sdk/openai` in its place.
import { simulateReadableStream, streamText, wrapLanguageModel } from "ai";
import { MockLanguageModelV4 } from "ai/test";
import { creditErrorOf, creditMiddleware } from "credit-management/ai";
import { credits, identify } from "../../../../lib/credits";

/** Answers five words, then a finish part with its usage: 20 tokens in, 5 out. */
function standIn(): MockLanguageModelV4 {
  const words = ["Credits", " are", " counted", " per", " token."];
  return new MockLanguageModelV4({
    provider: "openai.chat",
    modelId: "tiny-1",
    doStream: async () => ({
      stream: simulateReadableStream({
        chunkDelayInMs: 5,
        chunks: [
          { type: "stream-start" as const, warnings: [] },
          { type: "text-start" as const, id: "t" },
          ...words.map((delta) => ({ type: "text-delta" as const, id: "t", delta })),
          { type: "text-end" as const, id: "t" },
          {
            type: "finish" as const,
            finishReason: { unified: "stop" as const, raw: "stop" },
            usage: {
              inputTokens: { total: 20, noCache: 20, cacheRead: 0, cacheWrite: undefined },
              outputTokens: { total: 5, text: 5, reasoning: 0 },
            },
          },
        ],
      }),
    }),
  });
}

export async function POST(request: Request): Promise<Response> {
  const identity = identify(request);
  if (identity === null) return Response.json({ error: { code: "UNAUTHORIZED" } }, { status: 401 });
  const manager = await credits();
  // One middleware per request: who pays, for what, and the most this request may spend.
  const middleware = creditMiddleware({
    manager,
    userId: identity.userId,
    feature: "chat",
    maxRunCredits: 1_000,
    onSettled: (o) => console.log(`[ai] ${o.userId} /api/ai/chat: held ${o.estimate}, ${o.outcome} ${o.charged}`),
  });
  let refused: Response | null = null;
  const result = streamText({
    model: wrapLanguageModel({ model: standIn(), middleware }),
    prompt: "How are credits counted?",
    maxOutputTokens: 50,
    abortSignal: request.signal, // the client left: the stream is cut and charged what it delivered
    onError: ({ error }) => {
      // A refusal never throws inside streamText: it arrives here.
      const e = creditErrorOf(error);
      if (e !== undefined) refused = Response.json({ error: e.toJSON() }, { status: e.status });
    },
  });
  // The refusal comes before the first token: read the first part to know which answer to send.
  const reader = result.textStream.getReader();
  const first = await reader.read();
  if (refused !== null) return refused;
  return new Response(
    new ReadableStream<string>({
      start(controller) {
        if (!first.done) controller.enqueue(first.value);
      },
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      cancel: (reason) => reader.cancel(reason),
    }).pipeThrough(new TextEncoderStream()),
    { headers: { "content-type": "text/plain; charset=utf-8" } },
  );
}
