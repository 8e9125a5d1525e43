/**
 * `credit-management/ai`: credits for the Vercel AI SDK (`ai` 7, provider specification v4). A
 * middleware made per request for `wrapLanguageModel` (and `wrapEmbeddingModel`) that holds credits
 * before each model call, priced through the manager's price book, and charges what the provider
 * reported after it (docs/llm-metering.md, "The AI SDK"). Only types come from `@ai-sdk/provider`:
 * nothing of the SDK is loaded at run time.
 */
import type {
  EmbeddingModelV4,
  EmbeddingModelV4CallOptions,
  EmbeddingModelV4Middleware,
  EmbeddingModelV4Result,
  LanguageModelV4,
  LanguageModelV4CallOptions,
  LanguageModelV4GenerateResult,
  LanguageModelV4Middleware,
  LanguageModelV4StreamPart,
  LanguageModelV4StreamResult,
  LanguageModelV4Usage,
} from "@ai-sdk/provider";
import { ConfigurationError, CreditError } from "../core/errors.js";
import { RunBudgetExceededError } from "../modules/pricing/errors.js";
import { parse, type MeterOptions, type RecordedUsage } from "../models-entry.js";
import type { CreditManager } from "../manager.js";
import type { MeterOutcome, MeterSession } from "../modules/metering/service.js";
import { recordOf } from "../modules/pricing/service.js";
import * as z from "zod/mini";
import { parseConfig } from "../core/models/parse.js";
import { AiMeteringOptions, AiRunInput, AiRunSetup, STRICT_CAP_NEEDS_CAP } from "./options.js";

export { RunBudgetExceededError } from "../modules/pricing/errors.js";
export { AiMeteringOptions };

/** Output tokens a call that sets no `maxOutputTokens` is held for, unless `defaultMaxOutputTokens` says otherwise. @beta */
export const DEFAULT_MAX_OUTPUT_TOKENS = 4_096;
/** Tokens a file or image part of a prompt is held for (its size in tokens is not known before the call). @beta */
export const FILE_PART_TOKENS = 1_000;

/** What `creditMiddleware()` takes. @beta */
export interface CreditMiddlewareOptions extends AiMeteringOptions {
  /** The manager (or anything with its `credits` and `pricing`): the price book prices every call. */
  manager: Pick<CreditManager, "credits" | "pricing">;
  /** Called once each model call is settled (committed or released). */
  onSettled?: (outcome: AiCallOutcome) => void;
}

/** One model call of a run, settled. @beta */
export interface AiCallOutcome extends MeterOutcome {
  /** `generate` / `stream` (a language model call) or `embed`. */
  kind: "generate" | "stream" | "embed";
  /** The model the provider said answered (else the one called) and the provider's name in the price book. */
  model: string;
  /** The model's provider. */
  provider: string;
  /** The call's number in the run (its idempotency key is `<key>:<call>`). */
  call: number;
  /**
   * `strictRunCap` only: credits the call's usage was priced at beyond its hold (what the run had
   * left), not charged so that the run stays within `maxRunCredits`. Absent when everything was charged.
   */
  uncharged?: number;
  /**
   * `minOutputTokens` only: the call held less than its estimate (what the account could spend), and
   * its `maxOutputTokens` was lowered to this, the most output its hold pays for. Absent otherwise.
   */
  maxOutputTokens?: number;
}

/** The middleware `creditMiddleware()` returns: give it to `wrapLanguageModel`; `embedding` to `wrapEmbeddingModel`. @beta */
export interface CreditMiddleware extends LanguageModelV4Middleware {
  /** The same run's middleware for embedding models (`embed`, `embedMany`). */
  readonly embedding: EmbeddingModelV4Middleware;
  /** Credits charged to the run so far (settled calls). */
  readonly charged: number;
  /** Credits held by the run's calls in flight. */
  readonly held: number;
  /** The run's settled calls, in the order they settled. */
  readonly outcomes: readonly AiCallOutcome[];
  /** Resolves once every call started so far is settled (a stream cut by an abort settles as it is cancelled). */
  settled(): Promise<void>;
}

type Options = ReturnType<typeof AiMeteringOptions.parse>;
type Kind = AiCallOutcome["kind"];
type Manager = CreditMiddlewareOptions["manager"];

/** `AiRunSetup` with the manager and `onSettled`: what the program gives the middleware, checked as configuration. */
const Setup = z.extend(AiRunSetup, {
  manager: z.custom<Manager>(
    (m) =>
      typeof m === "object" &&
      m !== null &&
      typeof (m as Partial<Manager>).credits?.openMeter === "function" &&
      typeof (m as Partial<Manager>).pricing?.price === "function",
    { error: "must be a credit manager (its credits and pricing)" },
  ),
  onSettled: z.optional(
    z.custom<NonNullable<CreditMiddlewareOptions["onSettled"]>>((f) => typeof f === "function", {
      error: "must be a function",
    }),
  ),
});

/**
 * A middleware for one request (one run of `generateText`/`streamText`, with all its steps and
 * retries): every model call through it is held before the provider is called and charged from the
 * usage it reported, for `userId` (with `spender`, `feature` and `metadata` on every entry).
 * Refusals — too few credits, a spend limit, a model the price book does not price, the run's
 * `maxRunCredits` — are typed `CreditError`s thrown before the provider is called.
 *
 * ```ts
 * const credits = creditMiddleware({ manager, userId, feature: "chat", maxRunCredits: 50_000 });
 * const result = streamText({ model: wrapLanguageModel({ model: openai("gpt-4o-mini"), middleware: credits }), prompt });
 * ```
 * @beta
 */
export function creditMiddleware(options: CreditMiddlewareOptions): CreditMiddleware {
  if (typeof options !== "object" || options === null)
    throw new ConfigurationError("[credit-management] creditMiddleware: Invalid options: must be an object");
  // What the request gives is its input; the rest is the program's setup (docs/llm-metering.md, "The AI SDK").
  const given: Record<string, unknown> = {};
  const fixed: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(options))
    (Object.hasOwn(AiRunInput.shape, key) ? given : fixed)[key] = value;
  const { manager, onSettled, ...setup } = parseConfig(Setup, fixed, "options", "creditMiddleware");
  const input = parse(AiRunInput, given, "options");
  if (setup.strictRunCap === true && input.maxRunCredits === undefined)
    throw new ConfigurationError(
      `[credit-management] creditMiddleware: Invalid options.strictRunCap: ${STRICT_CAP_NEEDS_CAP}`,
    );
  const run = new Run(manager, { ...input, ...setup }, onSettled);
  const embedding: EmbeddingModelV4Middleware = {
    specificationVersion: "v4",
    wrapEmbed: ({ doEmbed, params, model }) => run.embed(doEmbed, params, model),
  };
  return {
    specificationVersion: "v4",
    transformParams: async ({ params, model }) => run.fit(params, model),
    wrapGenerate: ({ doGenerate, params, model }) => run.generate(doGenerate, params, model),
    wrapStream: ({ doStream, params, model }) => run.stream(doStream, params, model),
    embedding,
    get charged() {
      return run.charged;
    },
    get held() {
      return run.held;
    },
    get outcomes() {
      return run.outcomes;
    },
    settled: () => run.settled(),
  };
}

/**
 * The `CreditError` behind an error the AI SDK reports — a refusal arrives in `streamText`'s
 * `onError` as it was thrown, and `await result.text` rejects with a `NoOutputGeneratedError`
 * whose `cause` chain (or a `RetryError`'s `errors`) holds it — or undefined.
 * @beta
 */
export function creditErrorOf(error: unknown): CreditError | undefined {
  const seen = new Set<unknown>();
  const queue: unknown[] = [error];
  while (queue.length > 0) {
    const e = queue.shift();
    if (e === null || typeof e !== "object" || seen.has(e)) continue;
    seen.add(e);
    if (e instanceof CreditError) return e;
    const o = e as { cause?: unknown; errors?: unknown; error?: unknown; lastError?: unknown };
    queue.push(o.cause, o.error, o.lastError);
    if (Array.isArray(o.errors)) queue.push(...(o.errors as unknown[]));
  }
  return undefined;
}

/** The provider's name in the price book: `openai.chat` → `openai`. */
const providerName = (provider: string) => provider.split(".")[0] || provider;

/** Tokens of text, estimated: 4 characters a token, rounded up (the rule of thumb of OpenAI's tokenizers for English). */
const tokensOf = (chars: number) => Math.ceil(chars / 4);

/** Characters of a JSON value (tool inputs and outputs, tool schemas). */
function jsonLength(value: unknown): number {
  try {
    return JSON.stringify(value)?.length ?? 0;
  } catch {
    return 0;
  }
}

/**
 * The prompt's input tokens, estimated to size the hold: its text and tool calls/results at 4
 * characters a token, 4 tokens a message, `FILE_PART_TOKENS` a file, and the tools' definitions.
 * @beta
 */
export function estimatePromptTokens(params: Pick<LanguageModelV4CallOptions, "prompt" | "tools">): number {
  let chars = 0;
  let tokens = 0;
  for (const message of params.prompt ?? []) {
    tokens += 4;
    const content = (message as { content: unknown }).content;
    if (typeof content === "string") {
      chars += content.length;
      continue;
    }
    if (!Array.isArray(content)) continue;
    for (const part of content as { type: string; text?: string; input?: unknown; output?: unknown }[]) {
      if (part.type === "text" || part.type === "reasoning") chars += part.text?.length ?? 0;
      else if (part.type === "file" || part.type === "image") tokens += FILE_PART_TOKENS;
      else if (part.type === "tool-call") chars += jsonLength(part.input);
      else if (part.type === "tool-result") chars += jsonLength(part.output);
      else chars += jsonLength(part);
    }
  }
  for (const tool of params.tools ?? []) chars += jsonLength(tool);
  return tokens + tokensOf(chars);
}

/** Token counts the provider reported, in the price book's terms; null when its totals are not all known. */
interface Counts {
  inputTokens: number;
  cachedTokens: number;
  outputTokens: number;
  reasoningTokens?: number;
  cacheWriteTokens?: number;
}

const count = (n: unknown): n is number => typeof n === "number" && Number.isSafeInteger(n) && n >= 0;

/** The input side of a usage: `inputTokens` billed at the input rate (cache writes included), `cachedTokens` the cache reads. */
function inputOf(u: LanguageModelV4Usage["inputTokens"] | undefined): { input: number; cached: number } | null {
  if (u === undefined || u === null) return null;
  const cached = u.cacheRead ?? 0;
  let total = u.total;
  if (total === undefined && count(u.noCache)) total = u.noCache + cached + (u.cacheWrite ?? 0);
  if (!count(total) || !count(cached) || cached > total) return null;
  return { input: total - cached, cached };
}

/** The output side: the total (reasoning included), else text + reasoning. */
function outputOf(u: LanguageModelV4Usage["outputTokens"] | undefined): number | null {
  if (u === undefined || u === null) return null;
  if (count(u.total)) return u.total;
  if (u.total === undefined && (count(u.text) || count(u.reasoning))) return (u.text ?? 0) + (u.reasoning ?? 0);
  return null;
}

function countsOf(usage: LanguageModelV4Usage | undefined): Counts | null {
  const input = inputOf(usage?.inputTokens);
  const output = outputOf(usage?.outputTokens);
  if (input === null || output === null) return null;
  const c: Counts = { inputTokens: input.input, cachedTokens: input.cached, outputTokens: output };
  if (count(usage?.outputTokens.reasoning) && usage.outputTokens.reasoning > 0)
    c.reasoningTokens = usage.outputTokens.reasoning;
  if (count(usage?.inputTokens.cacheWrite) && usage.inputTokens.cacheWrite > 0)
    c.cacheWriteTokens = usage.inputTokens.cacheWrite;
  return c;
}

/** The run: its calls' numbers, what it was charged and holds, and how each call is settled. */
class Run {
  charged = 0;
  held = 0;
  readonly outcomes: AiCallOutcome[] = [];
  private next = 1;
  /** Numbers of calls that were released: the next call takes the lowest (so a retry reuses its number). */
  private readonly free: number[] = [];
  private readonly pending = new Set<Promise<unknown>>();

  constructor(
    readonly manager: CreditMiddlewareOptions["manager"],
    readonly options: Options,
    private readonly onSettled: ((outcome: AiCallOutcome) => void) | undefined,
  ) {}

  settled(): Promise<void> {
    return Promise.all([...this.pending]).then(() => undefined);
  }

  /** What the run may still hold (Infinity without `maxRunCredits`). */
  private get remaining(): number {
    const max = this.options.maxRunCredits;
    return max === undefined ? Infinity : Math.max(max - this.charged - this.held, 0);
  }

  private price(model: string, provider: string, inputTokens: number, outputTokens: number): number {
    return this.manager.pricing.price({ model, provider, inputTokens, outputTokens }).amount;
  }

  /**
   * `transformParams`: with `maxRunCredits`, a call whose output would not fit what the run has
   * left gets the most output tokens that fit (its own `maxOutputTokens` lowered, never raised).
   */
  fit(params: LanguageModelV4CallOptions, model: LanguageModelV4): LanguageModelV4CallOptions {
    if (this.options.maxRunCredits === undefined) return params;
    const modelId = model.modelId;
    const provider = this.options.provider ?? providerName(model.provider);
    const prompt = estimatePromptTokens(params);
    const wanted = params.maxOutputTokens ?? this.options.defaultMaxOutputTokens ?? DEFAULT_MAX_OUTPUT_TOKENS;
    const left = this.remaining;
    if (this.price(modelId, provider, prompt, wanted) <= left) return params;
    const most = this.mostOutput(modelId, provider, prompt, wanted, left);
    return most > 0 ? { ...params, maxOutputTokens: most } : params; // 0: the call is refused when it opens
  }

  /** The most output tokens, up to `wanted`, that `credits` pay for after the prompt (the price grows with the output): a binary search. */
  private mostOutput(modelId: string, provider: string, prompt: number, wanted: number, credits: number): number {
    let lo = 0;
    let hi = wanted;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (this.price(modelId, provider, prompt, mid) <= credits) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Places the call's hold (or refuses it) before the provider is called. */
  async open(
    kind: Kind,
    model: { modelId: string; provider: string },
    promptTokens: number,
    outputTokens: number,
  ): Promise<Call> {
    const o = this.options;
    const modelId = model.modelId;
    const provider = o.provider ?? providerName(model.provider);
    // An unknown model is an UnknownModelError here: refused before any token is spent.
    const priced = Math.max(this.price(modelId, provider, promptTokens, outputTokens), 1);
    const left = this.remaining;
    if (priced > left) {
      throw new RunBudgetExceededError({
        requested: priced,
        maxRunCredits: o.maxRunCredits as number,
        charged: this.charged,
        held: this.held,
        remaining: left,
      });
    }
    // A strict cap holds the call's worst case under the cap: everything the run has left, which
    // is also the most the call will be charged (docs/llm-metering.md, "The run's cap").
    const estimate = o.strictRunCap === true ? left : priced;
    const n = this.free.length > 0 ? this.takeFree() : this.next++;
    this.held += estimate;
    const meter: MeterOptions = {
      estimate,
      reason: `ai-sdk ${kind}`,
      metadata: { ...o.metadata, model: modelId, provider },
    };
    // A hold for what is there (docs/llm-metering.md): down to the prompt and `minOutputTokens`.
    if (o.minOutputTokens !== undefined && kind !== "embed") {
      const least = this.price(modelId, provider, promptTokens, Math.min(o.minOutputTokens, outputTokens));
      meter.minimum = Math.min(Math.max(least, 1), estimate);
    }
    if (o.spender !== undefined) meter.spender = o.spender;
    if (o.feature !== undefined) meter.feature = o.feature;
    if (o.idempotencyKey !== undefined) meter.idempotencyKey = `${o.idempotencyKey}:${n}`;
    if (o.correlationId !== undefined) meter.correlationId = o.correlationId;
    if (o.ttlSeconds !== undefined) meter.ttlSeconds = o.ttlSeconds;
    let session: MeterSession;
    try {
      session = await this.manager.credits.openMeter(o.userId, meter);
    } catch (error) {
      this.held -= estimate;
      this.giveBack(n);
      throw error;
    }
    // What it holds: the estimate, or less with `minOutputTokens`.
    const held = session.estimate;
    this.held += held - estimate;
    const call = new Call(this, session, kind, n, modelId, provider, promptTokens, Math.min(priced, held));
    // A hold below the call's price pays for less output: the most it pays for, after the prompt.
    if (held < priced) call.maxOutputTokens = this.mostOutput(modelId, provider, promptTokens, outputTokens, held);
    return call;
  }

  private takeFree(): number {
    this.free.sort((a, b) => a - b);
    return this.free.shift() as number;
  }

  giveBack(n: number): void {
    this.free.push(n);
  }

  /** A call is settled: its hold leaves `held`, its charge joins `charged`. */
  done(call: Call, outcome: MeterOutcome): AiCallOutcome {
    this.held -= call.session.estimate;
    if (outcome.outcome === "committed") this.charged += outcome.charged;
    else this.giveBack(call.n);
    const o: AiCallOutcome = { ...outcome, kind: call.kind, model: call.model, provider: call.provider, call: call.n };
    if (call.uncharged > 0 && outcome.outcome === "committed") o.uncharged = call.uncharged;
    if (call.maxOutputTokens !== undefined) o.maxOutputTokens = call.maxOutputTokens;
    this.outcomes.push(o);
    this.onSettled?.(o);
    return o;
  }

  track<T>(p: Promise<T>): Promise<T> {
    this.pending.add(p);
    const drop = () => this.pending.delete(p);
    p.then(drop, drop);
    return p;
  }

  async generate(
    doGenerate: () => PromiseLike<LanguageModelV4GenerateResult>,
    params: LanguageModelV4CallOptions,
    model: LanguageModelV4,
  ): Promise<LanguageModelV4GenerateResult> {
    const call = await this.openLanguage("generate", params, model);
    const capped = call.maxOutputTokens;
    const generate = capped === undefined ? doGenerate : () => model.doGenerate({ ...params, maxOutputTokens: capped });
    const result = await call.provide(generate, params.abortSignal);
    const responseModel = result.response?.modelId;
    if (responseModel !== undefined) call.answeredBy(responseModel);
    const counts = countsOf(result.usage);
    if (counts !== null) await call.charge(counts);
    else await call.missing("absent", { delivered: result.content.length > 0, outputParts: result.content.length });
    return result;
  }

  async stream(
    doStream: () => PromiseLike<LanguageModelV4StreamResult>,
    params: LanguageModelV4CallOptions,
    model: LanguageModelV4,
  ): Promise<LanguageModelV4StreamResult> {
    const call = await this.openLanguage("stream", params, model);
    const capped = call.maxOutputTokens;
    const open = capped === undefined ? doStream : () => model.doStream({ ...params, maxOutputTokens: capped });
    const result = await call.provide(open, params.abortSignal);
    return { ...result, stream: meteredStream(result.stream, call, params.abortSignal) };
  }

  async embed(
    doEmbed: () => PromiseLike<EmbeddingModelV4Result>,
    params: EmbeddingModelV4CallOptions,
    model: EmbeddingModelV4,
  ): Promise<EmbeddingModelV4Result> {
    let chars = 0;
    for (const v of params.values) chars += typeof v === "string" ? v.length : jsonLength(v);
    const call = await this.open("embed", model, tokensOf(chars), 0);
    const result = await call.provide(doEmbed, params.abortSignal);
    const tokens = result.usage?.tokens;
    if (count(tokens)) await call.charge({ inputTokens: tokens, cachedTokens: 0, outputTokens: 0 });
    else await call.missing("absent", { delivered: result.embeddings.length > 0, outputParts: 0 });
    return result;
  }

  private openLanguage(kind: Kind, params: LanguageModelV4CallOptions, model: LanguageModelV4): Promise<Call> {
    const out = params.maxOutputTokens ?? this.options.defaultMaxOutputTokens ?? DEFAULT_MAX_OUTPUT_TOKENS;
    return this.open(kind, model, estimatePromptTokens(params), out);
  }
}

/** What a cut call saw: whether anything was delivered, the content parts, the input the provider reported early. */
interface Seen {
  delivered: boolean;
  outputParts: number;
  /** Anthropic's `message_start` counts, or a finish's input side when its output side is unknown. */
  input?: { input: number; cached: number } | null;
  /** A finish's output side when its input side is unknown. */
  output?: number | null;
}

/** One model call: its hold, and its settlement (once). */
class Call {
  private settling: Promise<AiCallOutcome> | null = null;
  model: string;
  /** `strictRunCap`: credits of usage beyond the hold, left uncharged. */
  uncharged = 0;
  /** `minOutputTokens`: the call's output lowered to what its hold pays for; undefined when it held its estimate. */
  maxOutputTokens: number | undefined;

  constructor(
    private readonly run: Run,
    readonly session: MeterSession,
    readonly kind: Kind,
    readonly n: number,
    readonly calledModel: string,
    readonly provider: string,
    readonly promptTokens: number,
    /** The call's price from its estimate (the hold, unless `strictRunCap` held what the run had left), at most what it holds. */
    readonly estimate: number,
  ) {
    this.model = calledModel;
  }

  get settled(): boolean {
    return this.settling !== null;
  }

  /** The model the provider says answered (a dated id): priced by it when the book prices it. */
  answeredBy(model: string): void {
    if (model.length > 0 && model.length <= 200 && this.run.manager.pricing.hasPrice(model, this.provider))
      this.model = model;
  }

  private settle(fn: () => Promise<MeterOutcome>): Promise<AiCallOutcome> {
    this.settling ??= this.run.track(
      fn().then(
        (o) => this.run.done(this, o),
        (error: unknown) => {
          this.run.held -= this.session.estimate; // (the session released the hold, or it lapses)
          throw error;
        },
      ),
    );
    return this.settling;
  }

  release(reason: string): Promise<AiCallOutcome> {
    return this.settle(() => this.session.release(reason));
  }

  /** The provider's call: when it throws, the hold is released ("aborted" when `signal` ended it) and the error rethrown. */
  async provide<R>(call: () => PromiseLike<R>, signal: AbortSignal | undefined): Promise<R> {
    try {
      return await call();
    } catch (error) {
      await this.release(signal?.aborted === true ? "aborted" : "error");
      throw error;
    }
  }

  /** Charges the usage the provider reported. */
  charge(c: Counts): Promise<AiCallOutcome> {
    return this.settle(() => {
      this.record(c, "response");
      return this.commit();
    });
  }

  /**
   * Commits the recorded usage; under `strictRunCap` at most the hold (what the run had left when
   * the call opened), the rest noted as `uncharged` on the usage and the outcome.
   */
  private commit(): Promise<MeterOutcome> {
    const hold = this.session.estimate;
    const used = this.session.used;
    if (this.run.options.strictRunCap !== true || used <= hold) return this.session.commit();
    this.uncharged = used - hold;
    const last = this.session.usages[this.session.usages.length - 1] as RecordedUsage;
    last.metadata = { ...last.metadata, uncharged: this.uncharged };
    return this.session.commit(hold);
  }

  /** The provider reported no (usable) usage: charged as `missingUsage` says (docs/llm-metering.md). */
  missing(problem: string, seen: Seen): Promise<AiCallOutcome> {
    return this.settle(() => {
      const rule = this.run.options.missingUsage ?? "counted";
      if (!seen.delivered || rule === "none") return this.session.release(`usage-${problem}`);
      if (rule === "estimate") {
        this.session.recordPriced({
          amount: this.estimate,
          model: this.model,
          provider: this.provider,
          source: "estimate",
          problem,
        });
        return this.commit();
      }
      const input = seen.input ?? { input: this.promptTokens, cached: 0 };
      const output = seen.output ?? seen.outputParts;
      this.record({ inputTokens: input.input, cachedTokens: input.cached, outputTokens: output }, "counted", problem);
      return this.commit();
    });
  }

  private record(c: Counts, source: "response" | "counted", problem?: string): void {
    const metadata: Record<string, number> = {};
    if (c.reasoningTokens !== undefined) metadata.reasoningTokens = c.reasoningTokens;
    if (c.cacheWriteTokens !== undefined) metadata.cacheWriteTokens = c.cacheWriteTokens;
    const usage = {
      model: this.model,
      provider: this.provider,
      inputTokens: c.inputTokens,
      outputTokens: c.outputTokens,
      ...(c.cachedTokens > 0 ? { cachedTokens: c.cachedTokens } : {}),
      ...(Object.keys(metadata).length > 0 ? { metadata } : {}),
    };
    let priced: RecordedUsage;
    try {
      priced = recordOf(usage, this.session.priceBook);
    } catch (error) {
      // The answering model's name failed where the called one was priced: price the called one.
      if (this.model === this.calledModel) throw error;
      this.model = this.calledModel;
      priced = recordOf({ ...usage, model: this.calledModel }, this.session.priceBook);
    }
    priced.source = source;
    if (problem !== undefined) priced.problem = problem;
    this.session.recordPriced(priced);
  }
}

const CONTENT_DELTAS = new Set(["text-delta", "reasoning-delta", "tool-input-delta"]);

/**
 * The provider's stream, passed through part by part: the call is charged at the finish part when
 * it carries the usage totals (before the part goes on), else as `missingUsage` says when the
 * stream ends, fails, is cancelled or its abort signal fires first.
 */
function meteredStream(
  source: ReadableStream<LanguageModelV4StreamPart>,
  call: Call,
  signal: AbortSignal | undefined,
): ReadableStream<LanguageModelV4StreamPart> {
  const reader = source.getReader();
  const seen: Seen = { delivered: false, outputParts: 0 };
  let sawError = false;
  const cut = (problem: string) => {
    if (call.settled) return undefined;
    // A failed settle is tracked by the run: it rejects `settled()`, where the caller sees it, not the stream.
    return call.missing(problem, seen).catch(() => undefined);
  };
  const onAbort = () => void cut("aborted");
  signal?.addEventListener("abort", onAbort, { once: true });
  const stop = () => signal?.removeEventListener("abort", onAbort);
  return new ReadableStream<LanguageModelV4StreamPart>({
    async pull(controller) {
      let next: Awaited<ReturnType<typeof reader.read>>;
      try {
        next = await reader.read();
      } catch (error) {
        stop();
        await cut(signal?.aborted === true ? "aborted" : "cut");
        controller.error(error);
        return;
      }
      if (next.done) {
        stop();
        await cut(sawError ? "cut" : "absent");
        controller.close();
        return;
      }
      const part = next.value;
      if (CONTENT_DELTAS.has(part.type)) {
        if ((part as { delta: string }).delta.length > 0) {
          seen.delivered = true;
          seen.outputParts++;
        }
      } else if (part.type === "tool-call" || part.type === "file" || part.type === "text-start") {
        seen.delivered = true;
      } else if (part.type === "response-metadata") {
        if (part.modelId !== undefined) call.answeredBy(part.modelId);
      } else if (part.type === "custom") {
        const early = earlyInput(part);
        if (early !== null) seen.input = early;
      } else if (part.type === "error") {
        sawError = true;
      } else if (part.type === "finish" && !call.settled) {
        stop();
        const counts = countsOf(part.usage);
        try {
          if (counts !== null) await call.charge(counts);
          else {
            seen.input = inputOf(part.usage?.inputTokens) ?? seen.input ?? null;
            seen.output = outputOf(part.usage?.outputTokens);
            if (seen.output !== null) seen.delivered = true;
            await call.missing(part.finishReason?.unified === "interrupted" ? "cut" : "absent", seen);
          }
        } catch (error) {
          controller.enqueue({ type: "error", error });
        }
      }
      controller.enqueue(part);
    },
    async cancel(reason) {
      stop();
      await cut("aborted");
      await reader.cancel(reason);
    },
  });
}

/** Anthropic's `message_start` usage (input and cache counts, sent before any content): a `custom` part. */
function earlyInput(part: LanguageModelV4StreamPart): { input: number; cached: number } | null {
  const p = part as { kind?: string; providerMetadata?: { anthropic?: { usage?: Record<string, unknown> } } };
  if (p.kind !== "anthropic.message_start") return null;
  const u = p.providerMetadata?.anthropic?.usage;
  if (u === undefined || !count(u.input_tokens)) return null;
  const write = count(u.cache_creation_input_tokens) ? u.cache_creation_input_tokens : 0;
  const read = count(u.cache_read_input_tokens) ? u.cache_read_input_tokens : 0;
  return { input: u.input_tokens + write, cached: read };
}
