/**
 * A stand-in LLM upstream on loopback that answers like the real APIs: OpenAI-compatible chat
 * completions, OpenAI Responses and Anthropic Messages, as JSON or as server-sent events written
 * chunk by chunk. The real endpoints (`POST /v1/chat/completions`, `/v1/responses`, `/v1/messages`)
 * speak the wire formats the official `openai` and `@anthropic-ai/sdk` clients read.
 */
import { createServer, type ServerResponse } from "node:http";
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

/** A Responses API response object, `usage` as given (null while in progress). */
const responseObject = (model: string, status: string, usage: unknown, text: string) => ({
  id: "resp_1",
  object: "response",
  created_at: 1,
  status,
  model,
  output:
    status === "completed"
      ? [
          {
            id: "msg_1",
            type: "message",
            status: "completed",
            role: "assistant",
            content: [{ type: "output_text", text, annotations: [] }],
          },
        ]
      : [],
  parallel_tool_calls: true,
  tool_choice: "auto",
  tools: [],
  usage,
});

export const RESPONSES_USAGE = {
  input_tokens: 1200,
  input_tokens_details: { cached_tokens: 200 },
  output_tokens: 300,
  output_tokens_details: { reasoning_tokens: 0 },
  total_tokens: 1500,
};

/** The events of a streamed Responses answer, as the API sends them: no `[DONE]` after `response.completed`. */
export function responsesEvents(model: string): string[] {
  let seq = 0;
  const ev = (type: string, data: Record<string, unknown>) =>
    `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...data })}\n\n`;
  const text = WORDS.join("");
  const item = { id: "msg_1", type: "message", status: "in_progress", role: "assistant", content: [] };
  const part = { type: "output_text", text: "", annotations: [] };
  const at = { item_id: "msg_1", output_index: 0, content_index: 0 };
  return [
    ev("response.created", { response: responseObject(model, "in_progress", null, "") }),
    ev("response.in_progress", { response: responseObject(model, "in_progress", null, "") }),
    ev("response.output_item.added", { output_index: 0, item }),
    ev("response.content_part.added", { ...at, part }),
    ...WORDS.map((w) => ev("response.output_text.delta", { ...at, delta: w, logprobs: [] })),
    ev("response.output_text.done", { ...at, text, logprobs: [] }),
    ev("response.content_part.done", { ...at, part: { ...part, text } }),
    ev("response.output_item.done", {
      output_index: 0,
      item: { ...item, status: "completed", content: [{ ...part, text }] },
    }),
    ev("response.completed", { response: responseObject(model, "completed", RESPONSES_USAGE, text) }),
  ];
}

/** A chat completions stream as the API sends it: an opening `{ role, content: "" }` chunk, the content, a finish chunk with an empty delta, the usage chunk when asked for, `[DONE]`. */
export function chatEvents(model: string, includeUsage: boolean): string[] {
  const chunk = (delta: Record<string, unknown>, finish: string | null, usage?: unknown) =>
    `data: ${JSON.stringify({
      id: "chatcmpl-1",
      object: "chat.completion.chunk",
      created: 1,
      model,
      choices: usage ? [] : [{ index: 0, delta, finish_reason: finish }],
      ...(includeUsage ? { usage: usage ?? null } : {}),
    })}\n\n`;
  return [
    chunk({ role: "assistant", content: "" }, null),
    ...WORDS.map((w) => chunk({ content: w }, null)),
    chunk({}, "stop"),
    ...(includeUsage ? [chunk({}, null, OPENAI_USAGE)] : []),
    "data: [DONE]\n\n",
  ];
}

/**
 * The real endpoints. `X-Upstream-Cut: n` writes the first `n` events of a stream and then destroys
 * the connection, as an upstream that fails mid-stream. A model named `gpt-4o-mini` is answered as
 * its dated snapshot (as the API does); any other name is echoed.
 */
async function answerApi(
  path: string,
  body: Record<string, unknown>,
  cut: number | null,
  delay: number,
  res: ServerResponse,
) {
  const asked = typeof body.model === "string" ? body.model : "";
  const model = asked === "gpt-4o-mini" || asked === "" ? OPENAI_MODEL : asked;
  const text = WORDS.join("");
  let events: string[];
  if (path === "/v1/chat/completions") {
    if (body.stream !== true) {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify({ ...bodies.openai, model }));
    }
    const options = body.stream_options as { include_usage?: boolean } | undefined;
    events = chatEvents(model, options?.include_usage === true);
  } else if (path === "/v1/responses") {
    if (body.stream !== true) {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify(responseObject(model, "completed", RESPONSES_USAGE, text)));
    }
    events = responsesEvents(model);
  } else if (path === "/v1/messages") {
    if (body.stream !== true) {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify(bodies.anthropic));
    }
    events = streams.anthropic;
  } else {
    res.writeHead(404, { "content-type": "application/json" });
    return res.end(JSON.stringify({ error: { message: "no such route" } }));
  }
  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  for (const event of events.slice(0, cut ?? events.length)) {
    res.write(event);
    await sleep(delay);
  }
  if (cut !== null) res.destroy();
  else res.end();
}

/**
 * Paths: `/v1/…` are the real endpoints (`answerApi`); `/json/<body>` answers a body of `bodies`; `/sse/<stream>` writes a stream of `streams`,
 * a chunk every `delay` ms; `/cut/<stream>` writes the first `n` chunks (query `n`, default 3) and
 * then destroys the connection, as an upstream that fails mid-stream.
 */
export async function startUpstream(delay = 2): Promise<Running> {
  return listen(
    createServer(async (req, res) => {
      const url = new URL(req.url ?? "/", "http://upstream");
      if (url.pathname.startsWith("/v1/")) {
        let raw = "";
        for await (const chunk of req) raw += String(chunk);
        const cut = req.headers["x-upstream-cut"];
        await answerApi(url.pathname, raw === "" ? {} : JSON.parse(raw), cut ? Number(cut) : null, delay, res);
        return;
      }
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
