import { ConfigurationError, ValidationError } from "../../core/errors.js";
import { compilePriceBook, findPrice, priceCost, priceTokens, type PriceBook } from "./rules.js";
import { usageOfJson } from "./rules-llm-usage.js";
import {
  CostUsage,
  ModelName,
  PriceBookInput,
  TokenUsage,
  UsageRecord,
  parse,
  type PriceQuote,
  type RecordedUsage,
} from "../../models-entry.js";

/** What `recordUsage()` takes: credits (`amount`), tokens priced through the book, or money (`cost`). @public */
export type UsageInput = UsageRecord | TokenUsage | CostUsage;

/** Options of `new PricingService()`: the store, the clock and the models' rates. @public */
export interface PricingServiceOptions {
  /** The price book to start with. Omitted: none until `setPriceBook`. */
  book?: PriceBookInput;
}

/**
 * The manager's price book (docs/llm-metering.md): the credits each model's tokens cost and what a
 * unit of money is worth. Replaced whole at run time with `setPriceBook`; every metered call prices
 * its usage with the version in force when its hold was placed, and stores that version.
 * @public
 */
export class PricingService {
  private book: PriceBook | null = null;

  /** A price book over `options.db`; `createCreditManager` builds one. */
  constructor(options: PricingServiceOptions = {}) {
    if (options.book !== undefined) {
      try {
        this.setPriceBook(options.book);
      } catch (error) {
        throw new ConfigurationError(`[credit-management] pricing: ${(error as Error).message}`, error);
      }
    }
  }

  /** The version of the book in force (its `version`, else a hash of its content); null without a book. */
  get version(): string | null {
    return this.book?.version ?? null;
  }

  /**
   * Replaces the price book (validated whole first: a bad book is a `ValidationError` and the old one
   * stays). Calls already metered keep the version they started with. Returns the new version.
   */
  setPriceBook(book: PriceBookInput): string {
    this.book = compilePriceBook(parse(PriceBookInput, book, "priceBook"));
    return this.book.version;
  }

  /** Whether the book prices this model (exactly, by alias, dated id, prefix or the default). */
  hasPrice(model: string, provider?: string): boolean {
    const m = parse(ModelName, model, "model");
    const p = provider === undefined ? undefined : parse(ModelName, provider, "provider");
    return this.book !== null && findPrice(this.book, m, p) !== undefined;
  }

  /**
   * The price of usage in tokens or money, without recording it: `{ amount, exact, priceBook,
   * priced, rates }`. `UnknownModelError`, `ValidationError` or (no book) `ConfigurationError`.
   */
  price(usage: TokenUsage | CostUsage): PriceQuote {
    const r = recordOf(usage, this.current());
    return {
      amount: r.amount,
      exact: r.exact as string,
      priceBook: r.priceBook as string,
      priced: r.priced as string,
      rates: r.rates as Record<string, string>,
    };
  }

  /** @internal The compiled book in force (a metered call pins it when its hold is placed). */
  current(): PriceBook | null {
    return this.book;
  }
}

/**
 * The token usage an LLM response reports — an OpenAI chat completion or Responses object, or an
 * Anthropic message, as its SDK returns it — ready for `recordUsage()`:
 * `recordUsage(usageOfResponse(await openai.chat.completions.create({ … }), { provider: "openai" }))`.
 * The counts are mapped as docs/llm-metering.md ("Recording usage") says. A response without usage,
 * without a model or with a malformed usage is a `ValidationError`.
 * @public
 */
export function usageOfResponse(response: unknown, options: { provider?: string } = {}): TokenUsage {
  const reading = usageOfJson(response);
  if (!reading.ok || reading.usage.model === undefined) {
    const message = reading.ok ? "the response names no model" : (reading.detail ?? `its usage is ${reading.problem}`);
    throw new ValidationError(`Invalid response: ${message}`, [{ path: "usage", message }]);
  }
  const u = reading.usage;
  const out: TokenUsage = { model: u.model as string, inputTokens: u.inputTokens, outputTokens: u.outputTokens };
  if (u.cachedTokens > 0) out.cachedTokens = u.cachedTokens;
  if (options.provider !== undefined) out.provider = options.provider;
  return out;
}

const noBook = () =>
  new ConfigurationError(
    "recordUsage() with tokens or a cost needs a price book: pass `pricing` to createCreditManager() or call manager.pricing.setPriceBook() (docs/llm-metering.md).",
  );

/**
 * A usage as it is recorded: `amount` as given; tokens priced through `book`; a `cost` converted
 * at the book's currency rate. Validated first (`ValidationError`, `UnknownModelError`).
 */
export function recordOf(usage: UsageInput, book: PriceBook | null): RecordedUsage {
  if (typeof usage !== "object" || usage === null) {
    throw new ValidationError(
      "Invalid usage: must be an object ({ amount }, { model, inputTokens, outputTokens } or { cost })",
      [{ path: "", message: "must be an object" }],
    );
  }
  if ("amount" in usage) return stripUndefined(parse(UsageRecord, usage, "usage")) as RecordedUsage;
  if ("cost" in usage) {
    const u = parse(CostUsage, usage, "usage");
    if (book === null) throw noBook();
    const q = priceCost(book, u);
    const out: RecordedUsage = { amount: q.amount };
    if (u.model !== undefined) out.model = u.model;
    if (u.provider !== undefined) out.provider = u.provider;
    if (u.metadata !== undefined) out.metadata = u.metadata;
    Object.assign(out, {
      cost: q.cost,
      currency: q.currency,
      priceBook: q.priceBook,
      priced: q.priced,
      rates: q.rates,
      exact: q.exact,
      source: "cost",
    });
    return out;
  }
  const u = parse(TokenUsage, usage, "usage");
  if (book === null) throw noBook();
  const q = priceTokens(book, u);
  const out: RecordedUsage = { amount: q.amount, model: u.model };
  if (u.provider !== undefined) out.provider = u.provider;
  if (u.metadata !== undefined) out.metadata = u.metadata;
  out.inputTokens = u.inputTokens;
  out.outputTokens = u.outputTokens;
  if (u.cachedTokens !== undefined) out.cachedTokens = u.cachedTokens;
  if (u.requests !== undefined) out.requests = u.requests;
  Object.assign(out, { priceBook: q.priceBook, priced: q.priced, rates: q.rates, exact: q.exact, source: "tokens" });
  return out;
}

/** `o` without its undefined fields. */
function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}
