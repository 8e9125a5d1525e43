// A streamed LLM-style route: server-sent events shaped like OpenAI's chat completions, the last
// chunk carrying `usage`. With `llm`, the metering reads the stream as it passes and bills the
// usage it reported, priced by the manager's price book, when the stream ends (docs/llm-metering.md).
// A real route would forward to the provider and return its body as it arrives.
import { creditMetering } from "credit-management/http";
import { credits, identify } from "../../../lib/credits";

function completion(): Response {
  const words = ["Credits", " are", " counted", " per", " token."];
  const chunk = (data: unknown) => new TextEncoder().encode(`data: ${JSON.stringify(data)}\n\n`);
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const word = words.shift();
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (word !== undefined) {
        controller.enqueue(chunk({ model: "tiny-1", choices: [{ index: 0, delta: { content: word } }] }));
        return;
      }
      // The final chunk, as with stream_options: { include_usage: true }: 20 in, 5 out.
      controller.enqueue(chunk({ model: "tiny-1", choices: [], usage: { prompt_tokens: 20, completion_tokens: 5 } }));
      controller.enqueue(new TextEncoder().encode("data: [DONE]\n\n"));
      controller.close();
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}

export async function POST(request: Request): Promise<Response> {
  const manager = await credits();
  return creditMetering({
    credits: manager.credits,
    authenticate: identify,
    defaultEstimate: 200, // held while the stream runs
    llm: { provider: "openai" },
    // Headers are sent before the stream ends: the charge arrives here (and in the journal).
    onSettled: (o) => console.log(`[meter] ${o.userId} /api/chat: held ${o.estimate}, ${o.outcome} ${o.charged}`),
  })(completion)(request);
}
