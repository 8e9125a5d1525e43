import * as crypto from "node:crypto";
import { stringify } from "safe-stable-stringify";
import { ValidationError } from "../../core/errors.js";
import { UnknownModelError } from "./errors.js";
import type { CostUsage, ModelRates, PriceBookInput, PriceQuote, TokenUsage } from "../../models-entry.js";
import { reduced } from "../../core/domain/fraction.js";

/**
 * Pricing LLM usage from a price book (docs/llm-metering.md): exact rational rates, summed exactly
 * in BigInt, rounded up once per recorded usage; the model matched by exact name, alias, dated id
 * or an opt-in prefix.
 */

/** A rate as an exact fraction: `n` credits per `d` units. */
export interface ExactRate {
  readonly n: bigint;
  readonly d: bigint;
  /** "n/d" as configured, for the entry's metadata. */
  readonly text: string;
}

/** One priced model (or the default), compiled. */
export interface PriceEntry {
  /** The entry's `model`, or "default". */
  readonly name: string;
  readonly provider: string | undefined;
  readonly input: ExactRate;
  readonly output: ExactRate;
  readonly cachedInput: ExactRate;
  readonly request: ExactRate | undefined;
}

/** A validated, compiled, immutable price book. */
export interface PriceBook {
  readonly version: string;
  /** Exact names and aliases → entries (one per provider, `undefined` for any provider). */
  readonly names: ReadonlyMap<string, readonly PriceEntry[]>;
  /** Prefix entries, longest prefix first. */
  readonly prefixes: readonly { prefix: string; entry: PriceEntry }[];
  readonly fallback: PriceEntry | undefined;
  readonly currencies: ReadonlyMap<string, ExactRate>;
  readonly defaultCurrency: string | undefined;
}

/** The models' types (their schemas transform nothing: what they accept is what they return). */
type ParsedBook = PriceBookInput;
type ParsedRates = ModelRates;
type ParsedRate = ParsedRates["input"];

const rate = (r: ParsedRate): ExactRate => {
  const per = r.per ?? 1;
  return { n: BigInt(r.credits), d: BigInt(per), text: `${r.credits}/${per}` };
};

const entryOf = (name: string, provider: string | undefined, r: ParsedRates): PriceEntry => {
  const input = rate(r.input);
  return {
    name,
    provider,
    input,
    output: rate(r.output),
    cachedInput: r.cachedInput === undefined ? input : rate(r.cachedInput),
    request: r.request === undefined ? undefined : rate(r.request),
  };
};

/** Compiles a book its model (`PriceBookInput`) accepted. Its version: the given one, else a hash of its content. */
export function compilePriceBook(book: ParsedBook): PriceBook {
  const version =
    book.version ??
    `sha256:${crypto
      .createHash("sha256")
      .update(stringify(book) ?? "")
      .digest("hex")
      .slice(0, 16)}`;
  const names = new Map<string, PriceEntry[]>();
  const prefixes: { prefix: string; entry: PriceEntry }[] = [];
  for (const m of book.models ?? []) {
    const entry = entryOf(m.model, m.provider, m);
    for (const name of [m.model, ...(m.aliases ?? [])]) {
      const list = names.get(name);
      if (list === undefined) names.set(name, [entry]);
      else list.push(entry);
    }
    if (m.prefix === true) prefixes.push({ prefix: m.model, entry });
  }
  prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
  const currencies = new Map<string, ExactRate>();
  for (const [code, r] of Object.entries(book.currencies ?? {})) currencies.set(code, rate(r));
  const only = currencies.size === 1 ? [...currencies.keys()][0] : undefined;
  return {
    version,
    names,
    prefixes,
    fallback: book.default === undefined ? undefined : entryOf("default", undefined, book.default),
    currencies,
    defaultCurrency: book.defaultCurrency ?? only,
  };
}

/**
 * A dated model id without its date: `gpt-4o-2024-08-06` → `gpt-4o`, `claude-3-5-sonnet-20241022`
 * → `claude-3-5-sonnet`, `claude-3-5-sonnet@20240620` → `claude-3-5-sonnet`, `gpt-4-0613` → `gpt-4`
 * (a month and day); null when it carries no date.
 */
export function undated(model: string): string | null {
  const m = /^(.+?)(?:-\d{4}-\d{2}-\d{2}|[-@]\d{8}|-(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))$/.exec(model);
  return m === null ? null : (m[1] as string);
}

/** The entry for this provider among those of one name: the provider's own first, then one for any provider. */
function pick(list: readonly PriceEntry[] | undefined, provider: string | undefined): PriceEntry | undefined {
  if (list === undefined) return undefined;
  let any: PriceEntry | undefined;
  for (const e of list) {
    if (e.provider === undefined) any ??= e;
    else if (e.provider === provider) return e;
  }
  return any;
}

/**
 * The entry that prices `model`: its exact name or alias; else the name without a date suffix;
 * else the longest `prefix` entry it starts with; else the book's default; else undefined. An entry
 * with a `provider` matches usage of that provider only.
 */
export function findPrice(book: PriceBook, model: string, provider: string | undefined): PriceEntry | undefined {
  const exact = pick(book.names.get(model), provider);
  if (exact !== undefined) return exact;
  const base = undated(model);
  const dated = base === null ? undefined : pick(book.names.get(base), provider);
  if (dated !== undefined) return dated;
  const fineTune = undatedFineTune(model);
  for (const p of book.prefixes) {
    if (
      (model.startsWith(p.prefix) || (fineTune !== null && fineTune.startsWith(p.prefix))) &&
      (p.entry.provider === undefined || p.entry.provider === provider)
    )
      return p.entry;
  }
  return book.fallback;
}

/**
 * A fine-tune id with its base model's date removed: OpenAI names the dated snapshot it was trained
 * from (`ft:gpt-4o-mini-2024-07-18:acme::9xYz12` → `ft:gpt-4o-mini:acme::9xYz12`), so a prefix entry
 * `ft:gpt-4o-mini:` prices every fine-tune of that model (docs/llm-metering.md, "Model matching").
 * Null when the id is not `ft:<dated model>:…`.
 */
function undatedFineTune(model: string): string | null {
  if (!model.startsWith("ft:")) return null;
  const end = model.indexOf(":", 3);
  if (end === -1) return null;
  const base = undated(model.slice(3, end));
  return base === null ? null : `ft:${base}${model.slice(end)}`;
}

const MAX = BigInt(Number.MAX_SAFE_INTEGER);

/** Σ count × rate as one exact fraction. */
function sum(terms: readonly (readonly [bigint, ExactRate])[]): { n: bigint; d: bigint } {
  let n = 0n;
  let d = 1n;
  for (const [count, r] of terms) {
    if (count === 0n || r.n === 0n) continue;
    // n/d + count·r.n/r.d, kept reduced so the numbers stay small
    ({ n, d } = reduced(n * r.d + count * r.n * d, d * r.d));
  }
  return { n, d };
}

/** The exact price rounded up to whole credits; beyond Number.MAX_SAFE_INTEGER a `ValidationError`. */
function credits(exact: { n: bigint; d: bigint }, what: string): number {
  const up = (exact.n + exact.d - 1n) / exact.d;
  if (up > MAX) {
    const message = `${what} costs ${up} credits, more than Number.MAX_SAFE_INTEGER: amounts must stay safe integers`;
    throw new ValidationError(`Invalid usage: ${message}`, [{ path: "", message }]);
  }
  return Number(up);
}

/**
 * The price of token usage: input, output and cached tokens and requests at their rates, summed
 * exactly, then rounded up to a whole credit (docs/llm-metering.md, "Rates and rounding").
 * `UnknownModelError` for a model the book does not price and no default; a `ValidationError` for
 * a price beyond Number.MAX_SAFE_INTEGER.
 */
export function priceTokens(book: PriceBook, usage: TokenUsage): PriceQuote {
  const entry = findPrice(book, usage.model, usage.provider);
  if (entry === undefined) throw new UnknownModelError(usage.model, usage.provider, book.version);
  const terms: [bigint, ExactRate][] = [
    [BigInt(usage.inputTokens), entry.input],
    [BigInt(usage.outputTokens), entry.output],
    [BigInt(usage.cachedTokens ?? 0), entry.cachedInput],
  ];
  const rates: Record<string, string> = { input: entry.input.text, output: entry.output.text };
  if ((usage.cachedTokens ?? 0) > 0) rates.cachedInput = entry.cachedInput.text;
  if (entry.request !== undefined) {
    terms.push([BigInt(usage.requests ?? 1), entry.request]);
    rates.request = entry.request.text;
  }
  const exact = sum(terms);
  return {
    amount: credits(exact, `usage of model "${usage.model}"`),
    exact: `${exact.n}/${exact.d}`,
    priceBook: book.version,
    priced: entry.name,
    rates,
  };
}

/**
 * A decimal as an exact fraction: a number is read as the shortest decimal that prints it
 * (`String(0.05)` is "0.05"), exponents included ("1e-7"); a string as written.
 */
export function decimalFraction(value: number | string): { n: bigint; d: bigint; text: string } {
  const text = typeof value === "number" ? String(value) : value;
  const m = /^(\d+)(?:\.(\d+))?(?:e([+-]?\d+))?$/i.exec(text);
  if (m === null) {
    const message = 'must be a non-negative decimal such as "0.05"';
    throw new ValidationError(`Invalid cost: ${message}`, [{ path: "cost", message }]);
  }
  const frac = m[2] ?? "";
  let n = BigInt((m[1] as string) + frac);
  let d = 10n ** BigInt(frac.length);
  const exp = Number(m[3] ?? 0);
  if (exp > 0) n *= 10n ** BigInt(exp);
  else if (exp < 0) d *= 10n ** BigInt(-exp);
  return { ...reduced(n, d), text: plainDecimal(m[1] as string, frac, exp) };
}

/** The plain decimal of `<int>.<frac>e<exp>`, without leading or trailing zeros: "1e-7" → "0.0000001". */
function plainDecimal(int: string, frac: string, exp: number): string {
  let digits = int + frac;
  let point = int.length + exp;
  if (point <= 0) {
    digits = "0".repeat(1 - point) + digits;
    point = 1;
  }
  if (point > digits.length) digits += "0".repeat(point - digits.length);
  const whole = digits.slice(0, point).replace(/^0+(?=\d)/, "");
  const rest = digits.slice(point).replace(/0+$/, "");
  return rest === "" ? whole : `${whole}.${rest}`;
}

/**
 * The credits a cost in money is worth at the book's rate for its currency, rounded up.
 * `ValidationError` for a currency the book has no rate for, or a price beyond the safe integers.
 */
export function priceCost(book: PriceBook, usage: CostUsage): PriceQuote & { cost: string; currency: string } {
  const currency = usage.currency ?? book.defaultCurrency;
  if (currency === undefined) {
    const message = "the price book has several currencies and no defaultCurrency: name the currency";
    throw new ValidationError(`Invalid usage.currency: ${message}`, [{ path: "currency", message }]);
  }
  const r = book.currencies.get(currency);
  if (r === undefined) {
    const message = `price book ${book.version} has no rate for currency "${currency}"`;
    throw new ValidationError(`Invalid usage.currency: ${message}`, [{ path: "currency", message }]);
  }
  const cost = decimalFraction(usage.cost);
  const { n, d } = reduced(cost.n * r.n, cost.d * r.d);
  return {
    amount: credits({ n, d }, `a cost of ${cost.text} ${currency}`),
    exact: `${n}/${d}`,
    priceBook: book.version,
    priced: currency,
    rates: { [currency]: r.text },
    cost: cost.text,
    currency,
  };
}
