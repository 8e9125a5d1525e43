/**
 * A stand-in LLM upstream on loopback that answers like the real APIs: OpenAI-compatible chat
 * completions and Anthropic Messages, as JSON or as server-sent events written chunk by chunk.
 */
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { listen, type Running } from "./servers.js";

export const OPENAI_MODEL = "gpt-4o-mini-2024-07-18";
export const ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929";

const openaiChunk = (delta: Record<string, unknown>, usage: unknown = null) =>
  `data: ${JSON.stringify({ id: "chatcmpl-1", object: "chat.completion.chunk", created: 1, model: OPENAI_MODEL, choices: usage ? [] : [{ index: 0, delta, finish_reason: null }], usage })}\n\n`;

const anthropicEvent = (type: string, data: Record<string, unknown>) =>
  `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;

export const OPENAI_USAGE = {
  prompt_tokens: 1200,
  completion_tokens: 300,
  total_tokens: 1500,
  prompt_tokens_details: { cached_tokens: 200 },
};
export const ANTHROPIC_USAGE = {
  input_tokens: 1000,
  cache_read_input_tokens: 500,
  cache_creation_input_tokens: 0,
  output_tokens: 250,
};

const WORDS = ["Credits", " are", " counted", " per", " token."];

/** The SSE chunks of each stream, in order (each written on its own). */
export const streams = {
  openai: [...WORDS.map((w) => openaiChunk({ content: w })), openaiChunk({}, OPENAI_USAGE), "data: [DONE]\n\n"],
  /** Without `stream_options.include_usage`: no usage chunk. */
  openaiNoUsage: [...WORDS.map((w) => openaiChunk({ content: w }).replace(',"usage":null', "")), "data: [DONE]\n\n"],
  anthropic: [
    anthropicEvent("message_start", {
      message: {
        id: "msg_1",
        type: "message",
        role: "assistant",
        model: ANTHROPIC_MODEL,
        content: [],
        usage: { ...ANTHROPIC_USAGE, output_tokens: 1 },
      },
    }),
    anthropicEvent("content_block_start", { index: 0, content_block: { type: "text", text: "" } }),
    ...WORDS.map((w) => anthropicEvent("content_block_delta", { index: 0, delta: { type: "text_delta", text: w } })),
    anthropicEvent("content_block_stop", { index: 0 }),
    'event: ping\ndata: {"type": "ping"}\n\n',
    anthropicEvent("message_delta", { delta: { stop_reason: "end_turn" }, usage: { output_tokens: 250 } }),
    anthropicEvent("message_stop", {}),
  ],
};

export const bodies = {
  openai: {
    id: "chatcmpl-1",
    object: "chat.completion",
    model: OPENAI_MODEL,
    choices: [{ index: 0, message: { role: "assistant", content: "Hi" } }],
    usage: OPENAI_USAGE,
  },
  anthropic: {
    id: "msg_1",
    type: "message",
    role: "assistant",
    model: ANTHROPIC_MODEL,
    content: [{ type: "text", text: "Hi" }],
    usage: ANTHROPIC_USAGE,
  },
  malformed: {
    id: "chatcmpl-2",
    object: "chat.completion",
    model: OPENAI_MODEL,
    choices: [],
    usage: { prompt_tokens: "many", completion_tokens: -1 },
  },
  noUsage: { id: "chatcmpl-3", object: "chat.completion", model: OPENAI_MODEL, choices: [] },
  unknownModel: { id: "chatcmpl-4", object: "chat.completion", model: "mystery-9", choices: [], usage: OPENAI_USAGE },
};

/**
 * Paths: `/json/<body>` answers a body of `bodies`; `/sse/<stream>` writes a stream of `streams`,
 * a chunk every `delay` ms; `/cut/<stream>` writes the first `n` chunks (query `n`, default 3) and
 * then destroys the connection, as an upstream that fails mid-stream.
 */
export async function startUpstream(delay = 2): Promise<Running> {
  return listen(
    createServer(async (req, res) => {
      const url = new URL(req.url ?? "/", "http://upstream");
      const [, kind, name] = url.pathname.split("/");
      if (kind === "json" && name && name in bodies) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(bodies[name as keyof typeof bodies]));
        return;
      }
      const chunks = name && name in streams ? streams[name as keyof typeof streams] : undefined;
      if ((kind === "sse" || kind === "cut") && chunks) {
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
        const n = kind === "cut" ? Number(url.searchParams.get("n") ?? 3) : chunks.length;
        for (const chunk of chunks.slice(0, n)) {
          res.write(chunk);
          await sleep(delay);
        }
        if (kind === "cut") res.destroy();
        else res.end();
        return;
      }
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: "no such route" } }));
    }),
  );
}
