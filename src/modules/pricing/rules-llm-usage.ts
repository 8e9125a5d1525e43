/**
 * Reading the token usage an LLM API reports in its response (docs/llm-metering.md, "Usage read
 * from the response"): OpenAI-compatible chat completions (`usage.prompt_tokens`,
 * `completion_tokens`, `prompt_tokens_details.cached_tokens`; in a stream, the final chunk's
 * `usage`), OpenAI's Responses API (`usage.input_tokens` with `input_tokens_details`; in a stream,
 * `response.usage` of `response.completed`, which ends it), and Anthropic Messages (`usage.input_tokens`, `output_tokens`, `cache_read_input_tokens`; in a stream,
 * `message_start` and `message_delta`). Streams are read as they pass, line by line: nothing but the
 * current line is kept.
 */

/** The usage of one response, in the terms `recordUsage` prices. */
export interface LlmUsage {
  shape: "openai" | "anthropic";
  /** The model the response names (e.g. a dated id), if it names one. */
  model: string | undefined;
  /** Input tokens not read from a cache (Anthropic: `input_tokens` + `cache_creation_input_tokens`). */
  inputTokens: number;
  outputTokens: number;
  /** Input tokens read from a prompt cache. */
  cachedTokens: number;
}

/** Why a response's own usage cannot be billed. */
export type UsageProblem = "absent" | "malformed" | "cut";

export type UsageReading =
  | { ok: true; usage: LlmUsage }
  | {
      ok: false;
      problem: UsageProblem;
      /** What the response showed before it ended (`missingUsage: "counted"`), with its model. */
      counted: LlmUsage;
      /** What was wrong, for the entry and the logs. */
      detail?: string;
    };

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** A count that may be absent (0); undefined when present but not a count. */
const optionalCount = (v: unknown): number | undefined =>
  v === undefined || v === null ? 0 : isCount(v) ? v : undefined;

type Parsed = { usage: LlmUsage } | { malformed: string };

/**
 * The usage object of a response or stream event, read by its keys: `prompt_tokens` (chat
 * completions), `input_tokens` with `input_tokens_details` (OpenAI Responses: cached tokens are part
 * of the input), or `input_tokens`/`output_tokens` (Anthropic: cache reads and writes are counted
 * apart from the input). Null when it is none of these.
 */
export function parseUsageObject(usage: unknown, model: string | undefined): Parsed | null {
  if (!isObject(usage)) return null;
  if ("prompt_tokens" in usage || "completion_tokens" in usage) {
    const input = usage.prompt_tokens;
    const output = usage.completion_tokens;
    const details = usage.prompt_tokens_details;
    const cached = isObject(details)
      ? optionalCount(details.cached_tokens)
      : details === undefined || details === null
        ? 0
        : undefined;
    if (!isCount(input) || !isCount(output) || cached === undefined || cached > input) {
      return {
        malformed:
          "usage.prompt_tokens, completion_tokens and prompt_tokens_details.cached_tokens must be counts (cached ≤ prompt)",
      };
    }
    return {
      usage: { shape: "openai", model, inputTokens: input - cached, outputTokens: output, cachedTokens: cached },
    };
  }
  if ("input_tokens" in usage || "output_tokens" in usage) {
    const input = usage.input_tokens;
    const output = usage.output_tokens;
    if ("input_tokens_details" in usage) {
      const details = usage.input_tokens_details;
      const cached = isObject(details) ? optionalCount(details.cached_tokens) : details === null ? 0 : undefined;
      if (!isCount(input) || !isCount(output) || cached === undefined || cached > input) {
        return {
          malformed:
            "usage.input_tokens, output_tokens and input_tokens_details.cached_tokens must be counts (cached ≤ input)",
        };
      }
      return {
        usage: { shape: "openai", model, inputTokens: input - cached, outputTokens: output, cachedTokens: cached },
      };
    }
    const read = optionalCount(usage.cache_read_input_tokens);
    const written = optionalCount(usage.cache_creation_input_tokens);
    if (
      !isCount(input) ||
      !isCount(output) ||
      read === undefined ||
      written === undefined ||
      input + written > Number.MAX_SAFE_INTEGER
    ) {
      return { malformed: "usage.input_tokens, output_tokens and cache_*_input_tokens must be counts" };
    }
    return {
      usage: { shape: "anthropic", model, inputTokens: input + written, outputTokens: output, cachedTokens: read },
    };
  }
  return { malformed: "usage has neither prompt_tokens/completion_tokens nor input_tokens/output_tokens" };
}

const modelOf = (body: Record<string, unknown>): string | undefined => {
  const m = body.model ?? (isObject(body.response) ? body.response.model : undefined);
  return typeof m === "string" && m.length > 0 && m.length <= 200 ? m : undefined;
};

const nothing = (model: string | undefined): LlmUsage => ({
  shape: "openai",
  model,
  inputTokens: 0,
  outputTokens: 0,
  cachedTokens: 0,
});

/** The usage of a whole (unstreamed) JSON response body, already parsed. */
export function usageOfJson(body: unknown): UsageReading {
  if (!isObject(body))
    return { ok: false, problem: "absent", counted: nothing(undefined), detail: "the body is not a JSON object" };
  const model = modelOf(body);
  const usage = body.usage ?? (isObject(body.response) ? body.response.usage : undefined);
  if (usage === undefined || usage === null)
    return { ok: false, problem: "absent", counted: nothing(model), detail: "the response has no usage" };
  const parsed = parseUsageObject(usage, model);
  if (parsed === null)
    return { ok: false, problem: "malformed", counted: nothing(model), detail: "usage is not an object" };
  if ("malformed" in parsed)
    return { ok: false, problem: "malformed", counted: nothing(model), detail: parsed.malformed };
  return { ok: true, usage: parsed.usage };
}

/** The usage of a whole response body as text: JSON, or a whole event stream. */
export function usageOfText(text: string, contentType: string | null | undefined): UsageReading {
  const reader = new ResponseUsageReader(contentType);
  reader.pushText(text);
  return reader.end();
}

/**
 * Whether a stream event carries generated content — what `missingUsage: "counted"` counts as one
 * output token (docs/llm-metering.md): a non-empty `content`, `refusal` or tool-call `arguments` in
 * an OpenAI chat chunk's delta; a non-empty `text`, `thinking` or `partial_json` in an Anthropic
 * `content_block_delta`; a non-empty string `delta` in an OpenAI Responses `response.*.delta` event.
 * An opening chunk (`{ role, content: "" }`), a finish chunk with an empty `delta`, a block start,
 * and the Responses API's `*.done` and `response.completed` summaries (which repeat the text) carry
 * none. Read from the event's text, without parsing it (most chunks are content).
 */
function carriesContent(data: string, responsesType: string | undefined): boolean {
  return CONTENT.test(data) && (responsesType === undefined || responsesType.endsWith(".delta"));
}
/** A key whose value is a non-empty string of generated content. */
const CONTENT = /"(?:content|refusal|arguments|text|thinking|partial_json|delta)"\s*:\s*"(?:[^"\\]|\\.)/;
/** The type of an OpenAI Responses stream event. */
const RESPONSES_TYPE = /"type"\s*:\s*"(response\.[\w.]+)"/;
/** The OpenAI Responses events that end a stream, with the final response and its usage. */
const RESPONSES_END = new Set(["response.completed", "response.incomplete", "response.failed"]);

/** Longest line (or JSON body) kept while reading; longer ones are skipped (never billed as free: see `end`). */
const MAX_LINE = 1 << 20;
const MAX_JSON = 16 << 20;

/**
 * Reads the usage of a response as its bytes pass (`push`), without holding the body: an event
 * stream (SSE) line by line, keeping only the current line; a JSON body whole (up to 16 MiB). The
 * kind comes from the content type, else from the first byte (`{` is JSON).
 */
export class ResponseUsageReader {
  private kind: "json" | "sse" | "unknown";
  /** Streams: holds the start of a character split between chunks. */
  private readonly decoder = new TextDecoder();
  /** The last text ended with `\r`: a `\n` that starts the next one ends no other line. */
  private afterCR = false;
  private line = "";
  private overlong = false;
  private json = "";
  private tooLarge = false;
  private data = "";
  private model: string | undefined;
  private shape: LlmUsage["shape"] | undefined;
  /** OpenAI: the final chunk's usage. Anthropic: message_start's usage, then each message_delta's. */
  private final: LlmUsage | undefined;
  private anthropicInput: LlmUsage | undefined;
  /** message_start's usage as sent: message_delta's cumulative counts are laid over it. */
  private startUsage: Record<string, unknown> | undefined;
  private malformed: string | undefined;
  /** Content events seen (an output token each, for `counted` when no usage arrived). */
  private deltas = 0;
  /** `[DONE]` or `message_stop` seen: the stream ended as the API ends it. */
  private done = false;

  constructor(contentType: string | null | undefined) {
    const t = (contentType ?? "").toLowerCase();
    this.kind = t.includes("text/event-stream")
      ? "sse"
      : /^application\/([\w.+-]*\+)?json\b/.test(t)
        ? "json"
        : "unknown";
  }

  push(chunk: Uint8Array | string): void {
    if (typeof chunk === "string") return this.pushText(chunk);
    this.pushText(this.decoder.decode(chunk, { stream: true }));
  }

  pushText(text: string): void {
    if (text.length === 0) return;
    if (this.kind === "unknown") {
      const first = text.trimStart()[0];
      if (first === undefined) return;
      this.kind = first === "{" ? "json" : "sse";
    }
    if (this.kind === "json") {
      if (this.tooLarge) return;
      if (this.json.length + text.length > MAX_JSON) {
        this.tooLarge = true;
        this.json = "";
      } else this.json += text;
      return;
    }
    let start = 0;
    if (this.afterCR && text.charCodeAt(0) === 10) start = 1; // the \n of a \r\n split between chunks
    this.afterCR = text.charCodeAt(text.length - 1) === 13;
    for (let i = start; i < text.length; i++) {
      const ch = text.charCodeAt(i);
      if (ch !== 10 && ch !== 13) continue;
      this.addToLine(text, start, i);
      this.endLine();
      // \r\n is one line end
      if (ch === 13 && text.charCodeAt(i + 1) === 10) i++;
      start = i + 1;
    }
    this.addToLine(text, start, text.length);
  }

  private addToLine(text: string, from: number, to: number): void {
    if (from >= to || this.overlong) return;
    if (this.line.length + (to - from) > MAX_LINE) {
      this.overlong = true;
      this.line = "";
    } else this.line += text.slice(from, to);
  }

  private endLine(): void {
    const line = this.line;
    const overlong = this.overlong;
    this.line = "";
    this.overlong = false;
    if (overlong) {
      this.malformed ??= "a stream line longer than 1 MiB was skipped";
      return;
    }
    if (line === "") return this.dispatch();
    if (line.startsWith("data:")) {
      const value = line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5);
      this.data = this.data === "" ? value : `${this.data}\n${value}`;
    }
    // `event:`, `id:`, `retry:` and comments: the data says what each event is
  }

  /** One event's data: a JSON chunk, or `[DONE]`. */
  private dispatch(): void {
    const data = this.data;
    this.data = "";
    if (data === "") return;
    if (data === "[DONE]") {
      this.done = true;
      return;
    }
    // Only chunks that may carry usage, a model or an end are parsed; content chunks are counted.
    const hasUsage = data.includes('"usage"') && !data.includes('"usage":null');
    const responsesType = data.includes('"response.') ? RESPONSES_TYPE.exec(data)?.[1] : undefined;
    if (carriesContent(data, responsesType)) this.deltas++;
    if (responsesType !== undefined && RESPONSES_END.has(responsesType)) this.done = true;
    if (!hasUsage && this.model !== undefined && !data.includes('"message_stop"')) return;
    let event: unknown;
    try {
      event = JSON.parse(data);
    } catch {
      if (hasUsage) this.malformed ??= "an event with usage is not JSON";
      return;
    }
    if (!isObject(event)) return;
    const type = event.type;
    if (type === "message_start" && isObject(event.message)) {
      this.shape = "anthropic";
      this.model ??= modelOf(event.message);
      const parsed = parseUsageObject(event.message.usage, this.model);
      if (parsed !== null && "usage" in parsed) {
        this.anthropicInput = parsed.usage;
        this.startUsage = event.message.usage as Record<string, unknown>;
      } else if (parsed !== null) this.malformed ??= parsed.malformed;
      return;
    }
    if (type === "message_stop") {
      this.done = true;
      return;
    }
    if (type === "message_delta") {
      this.shape = "anthropic";
      if (!isObject(event.usage)) return;
      // message_delta's counts are cumulative; those it leaves out are message_start's.
      return this.latest(parseUsageObject({ input_tokens: 0, ...this.startUsage, ...event.usage }, this.model));
    }
    this.model ??= modelOf(event);
    // OpenAI Responses: the usage is the final response's (`response.usage` of `response.completed`,
    // or of `response.incomplete` / `response.failed`), and that event ends the stream (no `[DONE]`).
    const terminal = typeof type === "string" && RESPONSES_END.has(type);
    const usage = terminal && isObject(event.response) ? event.response.usage : event.usage;
    if (usage === undefined || usage === null) return;
    this.shape = "openai";
    this.latest(parseUsageObject(usage, this.model));
  }

  /** The stream's latest usage (a later one replaces it): its counts, or why they are not counts. */
  private latest(parsed: Parsed | null): void {
    if (parsed !== null && "usage" in parsed) {
      this.final = parsed.usage;
      this.malformed = undefined;
    } else if (parsed !== null) this.malformed = parsed.malformed;
  }

  /** What was seen so far, for a response that ended without its usage. */
  private counted(): LlmUsage {
    const start = this.anthropicInput;
    if (start !== undefined) return { ...start, outputTokens: Math.max(start.outputTokens, this.deltas) };
    return {
      shape: this.shape ?? "openai",
      model: this.model,
      inputTokens: 0,
      outputTokens: this.deltas,
      cachedTokens: 0,
    };
  }

  /** The body ended as sent. */
  end(): UsageReading {
    this.pushText(this.decoder.decode());
    if (this.kind === "json") {
      if (this.tooLarge)
        return {
          ok: false,
          problem: "malformed",
          counted: nothing(undefined),
          detail: "the JSON body is larger than 16 MiB",
        };
      let body: unknown;
      try {
        body = JSON.parse(this.json);
      } catch {
        return { ok: false, problem: "absent", counted: nothing(undefined), detail: "the body is not JSON" };
      }
      return usageOfJson(body);
    }
    if (this.line !== "" || this.overlong) this.endLine();
    this.dispatch();
    return this.reading(this.done ? "absent" : "cut");
  }

  /** The body was cut (the client left, the upstream failed): the usage, if it arrived before. */
  cut(): UsageReading {
    return this.reading("cut");
  }

  private reading(missing: UsageProblem): UsageReading {
    if (this.final !== undefined && this.malformed === undefined)
      return { ok: true, usage: { ...this.final, model: this.final.model ?? this.model } };
    if (this.malformed !== undefined)
      return { ok: false, problem: "malformed", counted: this.counted(), detail: this.malformed };
    const detail =
      missing === "cut"
        ? "the stream ended before its usage"
        : "the stream reported no usage (OpenAI: set stream_options.include_usage)";
    return { ok: false, problem: missing, counted: this.counted(), detail };
  }
}
