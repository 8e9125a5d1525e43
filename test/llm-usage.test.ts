import { describe, expect, it } from "vitest";
import { ResponseUsageReader, usageOfJson, usageOfText } from "../src/modules/pricing/rules-llm-usage.js";
import { bodies, chatEvents, OPENAI_MODEL, responsesEvents, streams } from "./http/llm-upstream.js";

const enc = new TextEncoder();

/** Feeds `text` to a reader in pieces cut at `cuts` (byte offsets), then ends it. */
const readInPieces = (text: string, cuts: number[], type: string | null = "text/event-stream") => {
  const bytes = enc.encode(text);
  const reader = new ResponseUsageReader(type);
  let from = 0;
  for (const at of [...cuts, bytes.length]) {
    reader.push(bytes.subarray(from, at));
    from = at;
  }
  return reader.end();
};

describe("reading an LLM response's usage", () => {
  it("reads both stream shapes whatever the chunk boundaries (bytes of one character split too)", () => {
    const openai = streams.openai.join("").replace("Credits", "Crédits ✓");
    const anthropic = streams.anthropic.join("").replaceAll("\n", "\r\n");
    for (const [text, want] of [
      [openai, { shape: "openai", inputTokens: 1000, cachedTokens: 200, outputTokens: 300 }],
      [anthropic, { shape: "anthropic", inputTokens: 1000, cachedTokens: 500, outputTokens: 250 }],
    ] as const) {
      const length = enc.encode(text).length;
      for (let at = 1; at < length; at += 7) {
        expect(readInPieces(text, [at, Math.min(length, at + 3)])).toMatchObject({ ok: true, usage: want });
      }
      // byte by byte
      expect(
        readInPieces(
          text,
          Array.from({ length: length - 1 }, (_, i) => i + 1),
        ),
      ).toMatchObject({ ok: true, usage: want });
    }
  });

  it("sniffs the kind when the content type is unknown", () => {
    expect(readInPieces(streams.anthropic.join(""), [10], null)).toMatchObject({
      ok: true,
      usage: { outputTokens: 250 },
    });
    expect(readInPieces(JSON.stringify(bodies.openai), [5], null)).toMatchObject({
      ok: true,
      usage: { inputTokens: 1000 },
    });
  });

  it("reads OpenAI's Responses API usage (cached tokens are part of input_tokens there)", () => {
    const body = {
      object: "response",
      model: "gpt-4.1",
      usage: { input_tokens: 50, input_tokens_details: { cached_tokens: 20 }, output_tokens: 7, total_tokens: 57 },
    };
    expect(usageOfJson(body)).toEqual({
      ok: true,
      usage: { shape: "openai", model: "gpt-4.1", inputTokens: 30, cachedTokens: 20, outputTokens: 7 },
    });
    // Anthropic cache writes are billed as input
    expect(
      usageOfJson({ model: "c", usage: { input_tokens: 5, cache_creation_input_tokens: 100, output_tokens: 1 } }),
    ).toMatchObject({ ok: true, usage: { inputTokens: 105, cachedTokens: 0 } });
  });

  it("reads a streamed Responses answer at response.completed, which ends it (no [DONE])", () => {
    const events = responsesEvents(OPENAI_MODEL);
    const whole = usageOfText(events.join(""), "text/event-stream");
    expect(whole).toMatchObject({
      ok: true,
      usage: { shape: "openai", model: OPENAI_MODEL, inputTokens: 1000, cachedTokens: 200, outputTokens: 300 },
    });
    // The usage arrived, then the client left: billed by it.
    const reader = new ResponseUsageReader("text/event-stream");
    reader.pushText(events.join(""));
    expect(reader.cut()).toMatchObject({ ok: true });
    // Cut before response.completed: counted from the text deltas only (not the .done summaries).
    const cut = new ResponseUsageReader("text/event-stream");
    cut.pushText(events.slice(0, -1).join(""));
    expect(cut.cut()).toMatchObject({ ok: false, problem: "cut", counted: { outputTokens: 5 } });
  });

  it('counts only chunks that carry content: not the opening { role, content: "" } nor an empty finish delta', () => {
    const events = chatEvents(OPENAI_MODEL, false); // opening, 5 content, finish, [DONE]
    expect(usageOfText(events.join(""), "text/event-stream")).toMatchObject({
      ok: false,
      problem: "absent",
      counted: { outputTokens: 5 },
    });
    const reader = new ResponseUsageReader("text/event-stream");
    reader.pushText(events.slice(0, 4).join("")); // opening + 3 content chunks
    expect(reader.cut()).toMatchObject({ problem: "cut", counted: { outputTokens: 3 } });
    // Tool-call arguments are content; spaces after the colons (as some servers send) change nothing.
    const spaced = [
      'data: {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n',
      'data: {"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\\"a"}}]}}]}\n\n',
      'data: {"model": "m", "choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n',
      'data: {"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
    ];
    const r2 = new ResponseUsageReader("text/event-stream");
    r2.pushText(spaced.join(""));
    expect(r2.cut()).toMatchObject({ counted: { outputTokens: 2 } });
  });

  it("tells absent, malformed and cut apart", () => {
    expect(usageOfJson(bodies.noUsage)).toMatchObject({ ok: false, problem: "absent" });
    expect(usageOfJson(bodies.malformed)).toMatchObject({ ok: false, problem: "malformed" });
    for (const usage of [
      { prompt_tokens: 1.5, completion_tokens: 1 },
      { prompt_tokens: 10, completion_tokens: 1, prompt_tokens_details: { cached_tokens: 11 } }, // more cached than prompt
      { input_tokens: 1, output_tokens: Number.MAX_SAFE_INTEGER + 2 },
      { total_tokens: 5 },
      "12",
    ]) {
      expect(usageOfJson({ model: "m", usage })).toMatchObject({ ok: false, problem: "malformed" });
    }
    expect(usageOfText("not json", "application/json")).toMatchObject({ ok: false, problem: "absent" });
    expect(usageOfText(streams.openaiNoUsage.join(""), "text/event-stream")).toMatchObject({
      ok: false,
      problem: "absent",
      counted: { outputTokens: 5 },
    });
    const cut = new ResponseUsageReader("text/event-stream");
    for (const chunk of streams.anthropic.slice(0, 4)) cut.push(enc.encode(chunk));
    expect(cut.cut()).toMatchObject({
      ok: false,
      problem: "cut",
      counted: { model: "claude-sonnet-4-5-20250929", inputTokens: 1000, cachedTokens: 500, outputTokens: 2 },
    });
    // The usage arrived before the cut: it is billed as reported.
    const late = new ResponseUsageReader("text/event-stream");
    for (const chunk of streams.openai.slice(0, -1)) late.push(enc.encode(chunk));
    expect(late.cut()).toMatchObject({ ok: true, usage: { outputTokens: 300 } });
  });

  it("keeps only the current line of a stream: a line over 1 MiB is skipped, never billed as free", () => {
    const piece = "x".repeat(64 * 1024);
    const reader = new ResponseUsageReader("text/event-stream");
    reader.push(enc.encode("data: "));
    for (let i = 0; i < 32; i++) reader.push(enc.encode(piece)); // 2 MiB on one line: skipped
    reader.push(enc.encode("\n\n"));
    for (const chunk of streams.openai) reader.push(enc.encode(chunk));
    expect(reader.end()).toMatchObject({ ok: true, usage: { outputTokens: 300 } }); // the usage came after it
    // The usage chunk itself too long: malformed (charged as missingUsage says), not absent.
    const padded = streams.openai.map((c) =>
      c.includes('"prompt_tokens"') ? c.replace('"usage":{', `"pad":"${"y".repeat(1 << 20)}","usage":{`) : c,
    );
    expect(usageOfText(padded.join(""), "text/event-stream")).toMatchObject({ ok: false, problem: "malformed" });
  });
});
