import * as z from "zod/mini";
import { CallerMetadata } from "../../core/models/common.js";
import { text } from "../../core/models/text.js";

/** A token or request count: a safe integer ≥ 0. */
export const TokenCount = z
  .number({ error: (i) => (i.input === undefined ? "a token count is required" : "a token count must be a number") })
  .check(
    z.int({ error: "a token count must be a whole number" }),
    z.minimum(0, { error: "a token count must not be negative" }),
    z.maximum(Number.MAX_SAFE_INTEGER, { error: "a token count must not exceed Number.MAX_SAFE_INTEGER" }),
  );

/** A model or provider name as an LLM API spells it, e.g. "gpt-4o-mini", "claude-sonnet-4-5-20250929". */
export const ModelName = text(200).check(z.minLength(1));

/**
 * An exact rational rate: `credits` per `per` units (tokens, requests, or one unit of a currency),
 * e.g. `{ credits: 3, per: 1_000 }` is "3 credits per 1,000 tokens". Both are safe integers, so no
 * price is ever a binary fraction (docs/llm-metering.md, "Rates and rounding").
 * @public
 */
export const Rate = z.strictObject({
  /** Credits charged for every `per` units: a safe integer ≥ 0. */
  credits: z
    .number({ error: "credits must be a number" })
    .check(
      z.int({ error: "credits must be a whole number (use `per` for fractions: 3 credits per 1,000 tokens)" }),
      z.minimum(0, { error: "credits must not be negative" }),
      z.maximum(Number.MAX_SAFE_INTEGER, { error: "credits must not exceed Number.MAX_SAFE_INTEGER" }),
    ),
  /** How many units those credits pay for: a safe integer ≥ 1. Default 1. */
  per: z.optional(
    z
      .number({ error: "per must be a number" })
      .check(
        z.int({ error: "per must be a whole number" }),
        z.minimum(1, { error: "per must be at least 1" }),
        z.maximum(Number.MAX_SAFE_INTEGER, { error: "per must not exceed Number.MAX_SAFE_INTEGER" }),
      ),
  ),
});
/**
 * An exact rational rate: `credits` per `per` units (tokens, requests, or one unit of a currency),
 * e.g. `{ credits: 3, per: 1_000 }` is "3 credits per 1,000 tokens". Both are safe integers, so no
 * price is ever a binary fraction (docs/llm-metering.md, "Rates and rounding").
 * @public
 */
export type Rate = z.input<typeof Rate>;

/** The rates of one model (or of the book's `default`). A rate left out is 0 only where said. @public */
export const ModelRates = z.strictObject({
  /** Credits per input (prompt) token that was not read from a cache. Required. */
  input: Rate,
  /** Credits per output (completion) token. Required. */
  output: Rate,
  /** Credits per cached input token (a prompt-cache read). Default: the `input` rate, never free. */
  cachedInput: z.optional(Rate),
  /** Credits per request (`requests`, default 1 per recorded call). Default: none. */
  request: z.optional(Rate),
});
/** The rates of one model (or of the book's `default`). A rate left out is 0 only where said. @public */
export type ModelRates = z.input<typeof ModelRates>;

/** One model's entry in a price book. @public */
export const ModelPrice = z.extend(ModelRates, {
  /** The model name as the API reports it, e.g. "gpt-4o-mini". */
  model: ModelName,
  /** Only usage of this provider matches (e.g. "openai"); omitted: any provider. */
  provider: z.optional(ModelName),
  /** Other exact names of the same model, e.g. "gpt-4o-latest". */
  aliases: z.optional(z.array(ModelName).check(z.maxLength(100))),
  /**
   * Also match any model id that starts with `model` (e.g. `"ft:gpt-4o-mini:"` for fine-tunes).
   * Default false: only the exact name, an alias, or the name with a date suffix
   * (`-2024-08-06`, `-20241022`, `@20240620`) match. The longest matching prefix wins.
   */
  prefix: z.optional(z.boolean()),
});
/** One model's entry in a price book. @public */
export type ModelPrice = z.input<typeof ModelPrice>;

/** A currency code (ISO 4217 style, or your own), e.g. "USD". */
export const CurrencyCode = z
  .string()
  .check(z.regex(/^[A-Za-z][A-Za-z0-9_-]{0,15}$/, { error: "must be a currency code such as USD" }));

/**
 * A price book: the credits each model's usage costs, and what a unit of money is worth in credits.
 * Configured with `createCreditManager({ pricing })` and replaced at run time with
 * `manager.pricing.setPriceBook(book)` (docs/llm-metering.md).
 * @public
 */
export const PriceBookInput = z
  .strictObject({
    /** Names this version (stored in every priced usage). Default: `sha256:` and 16 hex digits of the book's content. */
    version: z.optional(text(100).check(z.minLength(1))),
    /** The models, each with its rates. */
    models: z.optional(z.array(ModelPrice).check(z.maxLength(10_000))),
    /**
     * Rates for a model not in `models`. Omitted (the default): usage of an unknown model is refused
     * with an `UnknownModelError`, never billed as free.
     */
    default: z.optional(ModelRates),
    /** Credits per one unit of each currency (e.g. `{ USD: { credits: 100_000 } }`: 1 credit = $0.00001). */
    currencies: z.optional(z.record(CurrencyCode, Rate)),
    /** The currency of a `cost` that names none. Default: the only currency in `currencies`, if there is one. */
    defaultCurrency: z.optional(CurrencyCode),
  })
  .check(
    z.superRefine((book, ctx) => {
      if (book.defaultCurrency !== undefined && book.currencies?.[book.defaultCurrency] === undefined) {
        ctx.issues.push({
          code: "custom",
          path: ["defaultCurrency"],
          message: "must be one of `currencies`",
          input: book.defaultCurrency,
        });
      }
      const seen = new Map<string, number>();
      (book.models ?? []).forEach((m, i) => {
        for (const name of [m.model, ...(m.aliases ?? [])]) {
          const key = `${m.provider ?? ""}\u0000${name}`;
          const first = seen.get(key);
          if (first !== undefined && first !== i) {
            ctx.issues.push({
              code: "custom",
              path: ["models", i, "model"],
              message: `"${name}"${m.provider === undefined ? "" : ` (${m.provider})`} is priced twice (also models.${first})`,
              input: name,
            });
          }
          seen.set(key, i);
        }
      });
    }),
  );
/**
 * A price book: the credits each model's usage costs, and what a unit of money is worth in credits.
 * Configured with `createCreditManager({ pricing })` and replaced at run time with
 * `manager.pricing.setPriceBook(book)` (docs/llm-metering.md).
 * @public
 */
export type PriceBookInput = z.input<typeof PriceBookInput>;

/** Usage in tokens, priced through the manager's price book. @public */
export const TokenUsage = z.strictObject({
  /** The model that did the work, as the API reports it (dated ids match their undated entry). */
  model: ModelName,
  provider: z.optional(ModelName),
  /** Input (prompt) tokens not read from a cache. */
  inputTokens: TokenCount,
  /** Output (completion) tokens. */
  outputTokens: TokenCount,
  /** Input tokens read from a prompt cache (billed at `cachedInput`, else the input rate). Default 0. */
  cachedTokens: z.optional(TokenCount),
  /** Requests made (billed at `request`). Default 1. */
  requests: z.optional(TokenCount),
  metadata: z.optional(CallerMetadata),
});
/** Usage in tokens, priced through the manager's price book. @public */
export type TokenUsage = z.input<typeof TokenUsage>;

/**
 * A decimal amount of money: a number (read as the shortest decimal that prints it: 0.05 is
 * "0.05", never 0.05000000000000000277) or a decimal string ("0.05"); ≥ 0, at most 18 decimals.
 */
export const MoneyAmount = z.union(
  [
    z
      .number()
      .check(
        z.nonnegative({ error: "cost must not be negative" }),
        z.refine(Number.isFinite, { error: "cost must be finite" }),
      ),
    z.string().check(z.regex(/^\d{1,30}(\.\d{1,18})?$/, { error: 'cost must be a decimal such as "0.05"' })),
  ],
  { error: 'cost must be a number or a decimal string such as "0.05"' },
);

/** Usage given as money (the original's `addLlmUsage(model, provider, cost, metadata)`), converted by the book's currency rate. @public */
export const CostUsage = z.strictObject({
  /** What the call cost, in major units of `currency` (e.g. 0.05 dollars). */
  cost: MoneyAmount,
  /** Default: the book's `defaultCurrency`. */
  currency: z.optional(CurrencyCode),
  model: z.optional(ModelName),
  provider: z.optional(ModelName),
  metadata: z.optional(CallerMetadata),
});
/** Usage given as money (the original's `addLlmUsage(model, provider, cost, metadata)`), converted by the book's currency rate. @public */
export type CostUsage = z.input<typeof CostUsage>;

/**
 * How the amount of a recorded usage was found: `tokens` or `cost` given to `recordUsage`, the
 * usage a response reported (`response`, read by the metering middleware), or — when a response's
 * own usage could not be billed — the hold's `estimate` or the tokens `counted` before it ended.
 * Absent: given as `amount`.
 * @public
 */
export type UsageSource = "tokens" | "cost" | "response" | "estimate" | "counted";

/**
 * A usage as recorded in a metered call and stored in its commit entry (`metadata.usages`): the
 * credits it cost and how they were computed, so an invoice or a dispute can be explained later.
 * @public
 */
export interface RecordedUsage {
  /** Credits this usage costs. */
  amount: number;
  /** The model called. */
  model?: string;
  /** The model's provider. */
  provider?: string;
  /** What the call recorded beside the usage. */
  metadata?: Record<string, unknown>;
  /** Input tokens. */
  inputTokens?: number;
  /** Output tokens. */
  outputTokens?: number;
  /** Cached input tokens. */
  cachedTokens?: number;
  /** Requests counted. */
  requests?: number;
  /** The money given (`cost` usage), as a decimal string, and its currency. */
  cost?: string;
  /** The cost's currency. */
  currency?: string;
  /** The version of the price book that priced it. */
  priceBook?: string;
  /** The book entry that matched: the entry's `model` name, or `"default"`. */
  priced?: string;
  /** The rates applied, as "credits/per" fractions (`input`, `output`, `cachedInput`, `request`, or the currency's). */
  rates?: Record<string, string>;
  /** The exact price before rounding up, as a fraction "n/d" (the amount is its ceiling). */
  exact?: string;
  /** How the amount was found (absent: given as `amount`). */
  source?: UsageSource;
  /** When the response's own usage could not be used: why (`cut`, `absent`, `malformed`, `unknown-model`, …). */
  problem?: string;
}

/** A price quoted by `manager.pricing.price(usage)`. @public */
export interface PriceQuote {
  /** Credits: the exact price rounded up to a whole credit. */
  amount: number;
  /** The exact price as a fraction "n/d". */
  exact: string;
  /** The price book's version that priced the usage. */
  priceBook: string;
  /** The entry that matched (`model`, or `"default"`), or the currency for a cost. */
  priced: string;
  /** The rates applied. */
  rates: Record<string, string>;
}
