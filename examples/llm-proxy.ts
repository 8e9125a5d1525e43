/**
 * An OpenAI-compatible proxy billed per model through a price book:   npx tsx examples/llm-proxy.ts
 *
 * POST /v1/chat/completions is forwarded to an upstream (UPSTREAM_URL, with OPENAI_API_KEY; for
 * instance https://api.openai.com) and its answer — JSON, or server-sent events passed on chunk by
 * chunk — goes back to the client untouched. creditMetering({ llm }) holds an estimate first, reads
 * the usage the upstream reported (for a stream, its final chunk: the proxy asks for it with
 * `stream_options.include_usage`) and charges it at the book's rates for the model that answered.
 * A model the book does not price is refused before anything is forwarded.
 * Identity: `Authorization: Bearer <userId>` (a stand-in for your API keys).
 *
 * With no PORT set it starts a stand-in upstream on loopback that answers like the real API, sends a
 * JSON request, a streamed one and one for an unknown model, prints what each cost, and exits.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { serve } from "@hono/node-server";
import { createCreditManager } from "credit-management";
import type { PriceBookInput } from "credit-management/models";
import { creditMetering, type Identity } from "credit-management/http";

// 1 credit = $0.000001. gpt-4o-mini: $0.15 per 1M input tokens = 3 credits per 20 tokens, …
const book: PriceBookInput = {
  version: "2026-11-01",
  models: [
    {
      model: "gpt-4o-mini",
      input: { credits: 3, per: 20 },
      output: { credits: 3, per: 5 },
      cachedInput: { credits: 3, per: 40 },
    },
    { model: "gpt-4o", input: { credits: 5, per: 2 }, output: { credits: 10 }, cachedInput: { credits: 5, per: 4 } },
  ],
  currencies: { USD: { credits: 1_000_000 } },
};

const manager = await createCreditManager({ pricing: book });
await manager.credits.addCredits("user-1", 100_000, { description: "$0.10 of usage" });

const identify = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  return token ? { userId: token } : null;
};

/** Forwards a chat completion to the upstream; its body comes back as it arrives. */
async function proxy(upstream: string, request: Request): Promise<Response> {
  if (new URL(request.url).pathname !== "/v1/chat/completions" || request.method !== "POST") {
    return Response.json({ error: { message: "not found" } }, { status: 404 });
  }
  const body = (await request.json()) as {
    model?: unknown;
    stream?: boolean;
    stream_options?: Record<string, unknown>;
  };
  if (typeof body.model !== "string" || !manager.pricing.hasPrice(body.model)) {
    // Refused before forwarding (a 4xx without usage: the hold is released, nothing is charged).
    return Response.json(
      { error: { code: "UNKNOWN_MODEL", message: `model ${String(body.model)} is not offered` } },
      { status: 422 },
    );
  }
  if (body.stream) body.stream_options = { ...body.stream_options, include_usage: true }; // so the stream reports its usage
  const answer = await fetch(`${upstream}/v1/chat/completions`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(process.env.OPENAI_API_KEY ? { authorization: `Bearer ${process.env.OPENAI_API_KEY}` } : {}),
    },
    body: JSON.stringify(body),
    signal: request.signal, // a client that leaves cancels the upstream call
  });
  return new Response(answer.body, {
    status: answer.status,
    headers: { "content-type": answer.headers.get("content-type") ?? "application/json" },
  });
}

/** A stand-in for the upstream on loopback: answers like OpenAI's chat completions, streamed or not. */
async function standInUpstream(): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    let raw = "";
    req.on("data", (chunk: Buffer) => (raw += chunk.toString()));
    req.on("end", async () => {
      const { model, stream, stream_options } = JSON.parse(raw) as {
        model: string;
        stream?: boolean;
        stream_options?: { include_usage?: boolean };
      };
      const served = model === "gpt-4o-mini" ? "gpt-4o-mini-2024-07-18" : model; // the dated id, as the real API answers
      const usage = {
        prompt_tokens: 1200,
        completion_tokens: 350,
        total_tokens: 1550,
        prompt_tokens_details: { cached_tokens: 1024 },
      };
      const words = ["Credits", " are", " counted", " per", " token."];
      if (!stream) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(
          JSON.stringify({
            id: "chatcmpl-1",
            object: "chat.completion",
            model: served,
            choices: [{ index: 0, message: { role: "assistant", content: words.join("") }, finish_reason: "stop" }],
            usage,
          }),
        );
        return;
      }
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      const chunk = (choices: unknown[], u: unknown) =>
        `data: ${JSON.stringify({ id: "chatcmpl-2", object: "chat.completion.chunk", model: served, choices, ...(stream_options?.include_usage ? { usage: u } : {}) })}\n\n`;
      for (const w of words) {
        res.write(chunk([{ index: 0, delta: { content: w }, finish_reason: null }], null));
        await new Promise((r) => setTimeout(r, 10));
      }
      if (stream_options?.include_usage) res.write(chunk([], usage));
      res.end("data: [DONE]\n\n");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

const standIn = process.env.UPSTREAM_URL ? null : await standInUpstream();
const upstream = process.env.UPSTREAM_URL ?? (standIn as { url: string }).url;

const metered = creditMetering({
  credits: manager.credits,
  authenticate: identify,
  pathPrefix: "/v1",
  defaultEstimate: 2_000, // held while the call runs; the usage reported is what is charged
  maxEstimate: 50_000,
  ttlSeconds: 300,
  llm: { provider: "openai", missingUsage: "estimate" },
  onSettled: (o) => {
    const u = o.usages[0];
    const how = u
      ? `${u.model}: ${u.inputTokens ?? "?"} in, ${u.cachedTokens ?? 0} cached, ${u.outputTokens ?? "?"} out, book ${u.priceBook ?? "-"}`
      : "nothing used";
    console.log(`  [meter] ${o.userId}: held ${o.estimate}, ${o.outcome} ${o.charged} (${how})`);
  },
})((request) => proxy(upstream, request));

const server = serve({ fetch: metered, port: Number(process.env.PORT ?? 0), hostname: "127.0.0.1" }, async (info) => {
  const base = `http://127.0.0.1:${info.port}`;
  console.log(`listening on ${base}/v1/chat/completions (upstream ${upstream})`);
  if (process.env.PORT) return;
  const ask = (model: string, stream: boolean) =>
    fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: "Bearer user-1", "content-type": "application/json" },
      body: JSON.stringify({ model, stream, messages: [{ role: "user", content: "How are credits counted?" }] }),
    });

  const json = await ask("gpt-4o-mini", false);
  const answer = (await json.json()) as { choices: { message: { content: string } }[] };
  console.log(
    `JSON: ${json.status} "${answer.choices[0]?.message.content}" X-Credits-Deducted: ${json.headers.get("x-credits-deducted")}`,
  );

  const streamed = await ask("gpt-4o-mini", true);
  let events = 0;
  for await (const part of streamed.body as unknown as AsyncIterable<Uint8Array>)
    events += Buffer.from(part).toString().split("data:").length - 1;
  console.log(`stream: ${streamed.status}, ${events} events passed through`);

  const unknown = await ask("mystery-model", false);
  console.log(`mystery-model: ${unknown.status} ${((await unknown.json()) as { error: { code: string } }).error.code}`);

  await new Promise((r) => setTimeout(r, 20)); // the stream's commit lands as it ends
  console.log("balance:", (await manager.credits.getUserCreditsInfo("user-1")).balance);
  console.log("audit:", (await manager.credits.audit("user-1")).ok ? "ok" : "FAILED");
  server.close();
  standIn?.server.close();
  await manager.close();
});
