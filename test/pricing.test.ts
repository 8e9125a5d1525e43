import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  addLlmUsage,
  ConfigurationError,
  createCreditManager,
  recordUsage,
  UnknownModelError,
  ValidationError,
  type CreditManager,
} from "../src/index.js";
import { type PriceBookInput, type RecordedUsage } from "../src/models-public.js";

/** Prices in credits where 1 credit = $0.000001 (a micro-dollar), as a host would set them. */
const BOOK: PriceBookInput = {
  version: "2026-11-01",
  models: [
    // $2.50 / 1M input, $10 / 1M output, $1.25 / 1M cached input
    {
      model: "gpt-4o",
      provider: "openai",
      input: { credits: 5, per: 2 },
      output: { credits: 10 },
      cachedInput: { credits: 5, per: 4 },
    },
    { model: "gpt-4o-mini", input: { credits: 3, per: 20 }, output: { credits: 3, per: 5 }, aliases: ["4o-mini"] },
    {
      model: "claude-sonnet-4-5",
      input: { credits: 3 },
      output: { credits: 15 },
      cachedInput: { credits: 3, per: 10 },
      request: { credits: 7 },
    },
    { model: "ft:gpt-4o-mini:", prefix: true, input: { credits: 1 }, output: { credits: 2 } },
    { model: "tiny", input: { credits: 3, per: 1000 }, output: { credits: 3, per: 1000 } },
  ],
  currencies: { USD: { credits: 1_000_000 }, EUR: { credits: 1_100_000 } },
  defaultCurrency: "USD",
};

/** 1,001 uncached input, 333 output and 3 cached tokens of gpt-4o (openai), as the journal keeps them. */
const GPT_4O_USAGE = {
  provider: "openai",
  inputTokens: 1001,
  outputTokens: 333,
  cachedTokens: 3,
  priceBook: "2026-11-01",
  priced: "gpt-4o",
  // 1,001 × 5/2 + 333 × 10 + 3 × 5/4 = 2502.5 + 3330 + 3.75 = 5836.25 → 5837
  amount: 5837,
  exact: "23345/4",
  rates: { input: "5/2", output: "10/1", cachedInput: "5/4" },
  source: "tokens",
};

describe("the price book", () => {
  let m: CreditManager;
  beforeEach(async () => {
    m = await createCreditManager({ pricing: BOOK });
    await m.credits.addCredits("u", 1_000_000_000);
  });
  afterEach(async () => m.close());

  /** Records `usage` in a metered call and returns what its commit entry stored. */
  const meter = async (usage: Parameters<typeof recordUsage>[0], estimate = 1000) => {
    await m.credits.meter("u", { estimate }, () => {
      recordUsage(usage);
    });
    const commit = (await m.credits.getCreditHistory("u", { types: ["commit_reserved"], limit: 1 })).items[0];
    const deducted = (await m.credits.getCreditHistory("u", { limit: 1 })).items[0];
    const usages = commit?.metadata?.usages as unknown as RecordedUsage[];
    const charged = (commit?.amount ?? 0) + (deducted?.type === "deduct" ? deducted.amount : 0);
    return { charged, usage: usages[0] as RecordedUsage };
  };

  it("prices tokens exactly and rounds the call up to a whole credit", async () => {
    const { charged, usage } = await meter(
      { model: "gpt-4o", provider: "openai", inputTokens: 1001, outputTokens: 333, cachedTokens: 3 },
      10_000,
    );
    expect(charged).toBe(5837);
    expect(usage).toEqual({ model: "gpt-4o", ...GPT_4O_USAGE });
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("is exact for token counts far beyond what a float multiplies exactly", async () => {
    // 2^53 − 1 output tokens at 3/5 (gpt-4o-mini): exactly 5404319552844594.6, rounded up to
    // 5404319552844595; a float product (x * 3 / 5) cannot even hold x * 3.
    const tokens = Number.MAX_SAFE_INTEGER;
    const q = m.pricing.price({ model: "gpt-4o-mini", inputTokens: 0, outputTokens: tokens });
    expect(q).toMatchObject({ amount: 5404319552844595, exact: "27021597764222973/5" });
    expect(Number.isSafeInteger(q.amount)).toBe(true);
    // Where the float answer is off by one: 3 credits per 10 tokens.
    m.pricing.setPriceBook({ models: [{ model: "t", input: { credits: 3, per: 10 }, output: { credits: 0 } }] });
    const exact = m.pricing.price({ model: "t", inputTokens: tokens, outputTokens: 0 }).amount;
    expect(exact).toBe(2702159776422298);
    expect(Math.ceil((tokens * 3) / 10)).toBe(2702159776422297); // what float arithmetic would charge
    // Large counts charged through a metered call stay exact in the journal (funded: no debt by default).
    m.pricing.setPriceBook(BOOK);
    await m.credits.addCredits("u", 77_777_777_618);
    const { charged, usage } = await meter(
      { model: "gpt-4o-mini", inputTokens: 123_456_789_012, outputTokens: 98_765_432_109 },
      1_000,
    );
    // 123,456,789,012 × 3/20 + 98,765,432,109 × 3/5 = 18518518351.8 + 59259259265.4 = 77777777617.2
    expect(charged).toBe(77_777_777_618);
    expect(usage.exact).toBe("388888888086/5");
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("refuses a price beyond Number.MAX_SAFE_INTEGER with a ValidationError, and records nothing", async () => {
    const big = {
      model: "claude-sonnet-4-5",
      inputTokens: Number.MAX_SAFE_INTEGER,
      outputTokens: Number.MAX_SAFE_INTEGER,
    };
    expect(() => m.pricing.price(big)).toThrow(ValidationError);
    expect(() => m.pricing.price(big)).toThrow(/more than Number.MAX_SAFE_INTEGER/);
    let used = -1;
    await m.credits.meter("u", { estimate: 10 }, (ctx) => {
      expect(() => recordUsage(big)).toThrow(ValidationError);
      used = ctx.used;
    });
    expect(used).toBe(0);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1_000_000_000);
  });

  it("rounds up per call: many small calls never lose a fraction of a credit", async () => {
    // "tiny": 3 credits per 1,000 tokens. 1,000 calls of 7 tokens: exactly 21 credits in all,
    // 0.021 a call; each call is charged 1, so the account pays 1,000 and never less than the exact price.
    let total = 0;
    for (let i = 0; i < 1000; i++) {
      const q = m.pricing.price({ model: "tiny", inputTokens: 4, outputTokens: 3 });
      expect(q.exact).toBe("21/1000");
      total += q.amount;
    }
    expect(total).toBe(1000);
    // Within one metered call each recorded usage is rounded on its own, and the sum is charged.
    const before = (await m.credits.getUserCreditsInfo("u")).balance;
    await m.credits.meter("u", { estimate: 100 }, () => {
      for (let i = 0; i < 10; i++) recordUsage({ model: "tiny", inputTokens: 500, outputTokens: 1 }); // 1503/1000 → 2 each
    });
    expect(before - (await m.credits.getUserCreditsInfo("u")).balance).toBe(20);
    // An exact multiple is not rounded: 1,000 tokens cost 3.
    expect(m.pricing.price({ model: "tiny", inputTokens: 1000, outputTokens: 0 }).amount).toBe(3);
    expect(m.pricing.price({ model: "tiny", inputTokens: 0, outputTokens: 0 }).amount).toBe(0);
  });

  it("matches dated ids, aliases, providers and opt-in prefixes; never gpt-4o-mini as gpt-4o", () => {
    expect(
      m.pricing.price({ model: "gpt-4o-2024-08-06", provider: "openai", inputTokens: 2, outputTokens: 0 }).priced,
    ).toBe("gpt-4o");
    expect(m.pricing.price({ model: "claude-sonnet-4-5-20250929", inputTokens: 1, outputTokens: 0 }).priced).toBe(
      "claude-sonnet-4-5",
    );
    expect(m.pricing.price({ model: "claude-sonnet-4-5@20250929", inputTokens: 1, outputTokens: 0 }).priced).toBe(
      "claude-sonnet-4-5",
    );
    expect(m.pricing.price({ model: "4o-mini", inputTokens: 20, outputTokens: 0 })).toMatchObject({
      priced: "gpt-4o-mini",
      amount: 3,
    });
    expect(m.pricing.price({ model: "gpt-4o-mini-2024-07-18", inputTokens: 20, outputTokens: 0 }).priced).toBe(
      "gpt-4o-mini",
    );
    expect(m.pricing.price({ model: "ft:gpt-4o-mini:acme::abc123", inputTokens: 1, outputTokens: 1 })).toMatchObject({
      priced: "ft:gpt-4o-mini:",
      amount: 3,
    });
    // A real fine-tune id names the dated snapshot it was trained from: the documented entry prices it.
    expect(
      m.pricing.price({ model: "ft:gpt-4o-mini-2024-07-18:acme::9xYz12", inputTokens: 1, outputTokens: 1 }),
    ).toMatchObject({ priced: "ft:gpt-4o-mini:", amount: 3 });
    expect(m.pricing.hasPrice("ft:gpt-4o-mini-2024-07-18:acme:custom-suffix:9xYz12")).toBe(true);
    // Only the base model's date is ignored: another base model is not a fine-tune of this one.
    expect(m.pricing.hasPrice("ft:gpt-4o-mini-audio-2024-07-18:acme::9xYz12")).toBe(false);
    expect(m.pricing.hasPrice("ft:gpt-4o-2024-08-06:acme::9xYz12")).toBe(false);
    // An entry that names a provider prices that provider's usage only.
    expect(() => m.pricing.price({ model: "gpt-4o", provider: "azure", inputTokens: 1, outputTokens: 0 })).toThrow(
      UnknownModelError,
    );
    expect(() => m.pricing.price({ model: "gpt-4o", inputTokens: 1, outputTokens: 0 })).toThrow(UnknownModelError);
    // A suffix that is not a date is another model.
    expect(() =>
      m.pricing.price({ model: "gpt-4o-audio-preview", provider: "openai", inputTokens: 1, outputTokens: 0 }),
    ).toThrow(UnknownModelError);
    expect(m.pricing.hasPrice("gpt-4o-2024-11-20", "openai")).toBe(true);
    expect(m.pricing.hasPrice("gpt-5")).toBe(false);
  });

  it("refuses an unknown model with a typed error (nothing recorded), or bills it by the book's default", async () => {
    let error: unknown;
    await m.credits.meter("u", { estimate: 10 }, () => {
      try {
        recordUsage({ model: "mystery-1", provider: "acme", inputTokens: 10, outputTokens: 10 });
      } catch (e) {
        error = e;
      }
    });
    expect(error).toBeInstanceOf(UnknownModelError);
    expect((error as UnknownModelError).code).toBe("UNKNOWN_MODEL");
    expect((error as UnknownModelError).status).toBe(422);
    expect((error as UnknownModelError).details).toEqual({
      model: "mystery-1",
      provider: "acme",
      priceBook: "2026-11-01",
    });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1_000_000_000); // nothing measured: released

    m.pricing.setPriceBook({
      ...BOOK,
      version: "with-default",
      default: { input: { credits: 20 }, output: { credits: 80 } },
    });
    const { charged, usage } = await meter({ model: "mystery-1", provider: "acme", inputTokens: 10, outputTokens: 10 });
    expect(charged).toBe(1000);
    expect(usage).toMatchObject({ priced: "default", priceBook: "with-default" });
  });

  it("converts money exactly: 0.1 + 0.2 dollars is 300,000 credits, not 300,000.00000000006", async () => {
    expect(m.pricing.price({ cost: 0.1 }).amount + m.pricing.price({ cost: 0.2 }).amount).toBe(300_000);
    // The float sum 0.1 + 0.2 prints as 0.30000000000000004: that is the cost given, and it is above 0.3.
    expect(m.pricing.price({ cost: 0.1 + 0.2 })).toMatchObject({
      amount: 300_001,
      exact: "7500000000000001/25000000000",
    });
    expect(m.pricing.price({ cost: "0.3" })).toMatchObject({ amount: 300_000, exact: "300000/1" });
    expect(m.pricing.price({ cost: "0.0000005" })).toMatchObject({ amount: 1, exact: "1/2" }); // half a credit: rounded up
    expect(m.pricing.price({ cost: 1e-7 })).toMatchObject({ amount: 1, exact: "1/10" });
    expect(m.pricing.price({ cost: "12.5", currency: "EUR" })).toMatchObject({ amount: 13_750_000, priced: "EUR" });
    expect(() => m.pricing.price({ cost: "1", currency: "GBP" })).toThrow(/no rate for currency "GBP"/);
    expect(() => m.pricing.price({ cost: -1 })).toThrow(ValidationError);
    expect(() => m.pricing.price({ cost: "1,5" })).toThrow(ValidationError);
    expect(() => m.pricing.price({ cost: Number.NaN })).toThrow(ValidationError);

    // The original's addLlmUsage(model, provider, cost, metadata): the book's default currency.
    await m.credits.meter("u", { estimate: 100_000 }, () => {
      addLlmUsage("gpt-4o", "openai", 0.05, { prompt_tokens: 100, completion_tokens: 50 });
    });
    const commit = (await m.credits.getCreditHistory("u", { types: ["commit_reserved"], limit: 1 })).items[0];
    expect(commit?.amount).toBe(50_000);
    expect((commit?.metadata?.usages as unknown as RecordedUsage[])[0]).toEqual({
      amount: 50_000,
      model: "gpt-4o",
      provider: "openai",
      metadata: { prompt_tokens: 100, completion_tokens: 50 },
      cost: "0.05",
      currency: "USD",
      priceBook: "2026-11-01",
      priced: "USD",
      rates: { USD: "1000000/1" },
      exact: "50000/1",
      source: "cost",
    });
  });

  it("prices a call with the book in force when its hold was placed; the entry names that version", async () => {
    const usage = { model: "tiny", inputTokens: 1000, outputTokens: 1000 }; // 6 credits under 2026-11-01
    let pinned: string | null = null;
    await m.credits.meter("u", { estimate: 100 }, (ctx) => {
      // The book changes between the hold and the commit: this call keeps its version.
      const v = m.pricing.setPriceBook({
        ...BOOK,
        version: "2026-12-01",
        models: [{ model: "tiny", input: { credits: 1 }, output: { credits: 1 } }],
      });
      expect(v).toBe("2026-12-01");
      pinned = ctx.priceBook;
      recordUsage(usage);
    });
    expect(pinned).toBe("2026-11-01");
    const first = (await m.credits.getCreditHistory("u", { types: ["commit_reserved"], limit: 1 })).items[0];
    expect(first?.amount).toBe(6);
    expect((first?.metadata?.usages as unknown as RecordedUsage[])[0]).toMatchObject({
      priceBook: "2026-11-01",
      exact: "6/1",
    });
    // The next call holds under the new book.
    const { charged, usage: second } = await meter(usage, 5000);
    expect(charged).toBe(2000);
    expect(second.priceBook).toBe("2026-12-01");
    expect(m.pricing.version).toBe("2026-12-01");
    expect((await m.credits.audit("u")).ok).toBe(true);
  });

  it("names an unnamed book by a hash of its content, and keeps the old book when a new one is refused", () => {
    const v1 = m.pricing.setPriceBook({ models: [{ model: "a", input: { credits: 1 }, output: { credits: 1 } }] });
    const v2 = m.pricing.setPriceBook({ models: [{ model: "a", input: { credits: 1 }, output: { credits: 2 } }] });
    expect(v1).toMatch(/^sha256:[0-9a-f]{16}$/);
    expect(v2).not.toBe(v1);
    expect(m.pricing.setPriceBook({ models: [{ model: "a", input: { credits: 1 }, output: { credits: 1 } }] })).toBe(
      v1,
    );
    for (const bad of [
      { models: [{ model: "a", input: { credits: 1.5 }, output: { credits: 1 } }] },
      { models: [{ model: "a", input: { credits: 1, per: 0 }, output: { credits: 1 } }] },
      { models: [{ model: "a", input: { credits: -1 }, output: { credits: 1 } }] },
      { models: [{ model: "a", input: { credits: 1 } }] },
      {
        models: [
          { model: "a", input: { credits: 1 }, output: { credits: 1 } },
          { model: "a", input: { credits: 2 }, output: { credits: 2 } },
        ],
      },
      { currencies: { USD: { credits: 1 } }, defaultCurrency: "EUR" },
      { models: [], typo: true },
    ]) {
      expect(() => m.pricing.setPriceBook(bad as PriceBookInput)).toThrow(ValidationError);
    }
    expect(m.pricing.version).toBe(v1);
  });

  it("refuses malformed token usage with a ValidationError", async () => {
    await m.credits.meter("u", { estimate: 10 }, () => {
      for (const bad of [
        { model: "tiny", inputTokens: -1, outputTokens: 0 },
        { model: "tiny", inputTokens: 1.5, outputTokens: 0 },
        { model: "tiny", inputTokens: 1 },
        { model: "", inputTokens: 1, outputTokens: 1 },
        { model: "tiny", inputTokens: "1", outputTokens: 1 },
        { model: "tiny", inputTokens: 1, outputTokens: 1, extra: 1 },
      ]) {
        expect(() => recordUsage(bad as never)).toThrow(ValidationError);
      }
    });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1_000_000_000);
  });
});

describe("without a price book", () => {
  it("prices nothing: tokens and costs are a ConfigurationError, amounts work as before", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("u", 100);
    await m.credits.meter("u", { estimate: 10 }, (ctx) => {
      expect(ctx.priceBook).toBeNull();
      expect(() => recordUsage({ model: "x", inputTokens: 1, outputTokens: 1 })).toThrow(ConfigurationError);
      expect(() => addLlmUsage("x", "y", 0.01)).toThrow(ConfigurationError);
      recordUsage({ amount: 4 });
    });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(96);
    await m.close();
  });

  it("refuses a bad book given to createCreditManager", async () => {
    await expect(
      createCreditManager({ pricing: { models: [{ model: "a", input: { credits: 1 } }] } as never }),
    ).rejects.toBeInstanceOf(ConfigurationError);
  });
});

describe("usageOfResponse", () => {
  it("maps an SDK response's usage to recordUsage's counts, and refuses one without usage", async () => {
    const { usageOfResponse } = await import("../src/index.js");
    const chat = {
      model: "gpt-4o-2024-08-06",
      usage: { prompt_tokens: 1001, completion_tokens: 333, prompt_tokens_details: { cached_tokens: 3 } },
    };
    expect(usageOfResponse(chat, { provider: "openai" })).toEqual({
      model: "gpt-4o-2024-08-06",
      provider: "openai",
      inputTokens: 998,
      cachedTokens: 3,
      outputTokens: 333,
    });
    const message = {
      type: "message",
      model: "claude-sonnet-4-5-20250929",
      usage: { input_tokens: 10, cache_read_input_tokens: 90, output_tokens: 5 },
    };
    expect(usageOfResponse(message)).toEqual({
      model: "claude-sonnet-4-5-20250929",
      inputTokens: 10,
      cachedTokens: 90,
      outputTokens: 5,
    });
    expect(() => usageOfResponse({ model: "x" })).toThrow(ValidationError);
    expect(() => usageOfResponse({ usage: { prompt_tokens: 1, completion_tokens: 1 } })).toThrow(/names no model/);
    expect(() => usageOfResponse({ model: "x", usage: { prompt_tokens: -1, completion_tokens: 1 } })).toThrow(
      ValidationError,
    );
    // Priced through the book: the same as the counts given by hand.
    const m = await createCreditManager({ pricing: BOOK });
    expect(m.pricing.price(usageOfResponse(chat, { provider: "openai" })).amount).toBe(5829); // 998 × 5/2 + 3 × 5/4 + 333 × 10 = 5828.75
    await m.close();
  });
});

/** The priced usages are ordinary metadata: each store keeps them as written and audit() replays them. */
describe.each([
  { name: "PostgreSQL", url: process.env.CREDIT_PG_URL },
  { name: "MongoDB", url: process.env.CREDIT_MONGO_URI },
])("priced usages on $name", ({ name, url }) => {
  // reason: needs that database server; its URL is set by .ci/run
  it.skipIf(!url)("the commit entry keeps the counts, the model and the book version", async () => {
    // reason: needs CREDIT_PG_URL / CREDIT_MONGO_URI (set by .ci/run)
    const { randomUUID } = await import("node:crypto");
    const tag = `cm_price_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
    let db;
    let drop: () => Promise<void>;
    if (name === "PostgreSQL") {
      const { PostgresDbManager } = await import("../src/db/postgres/index.js");
      const pg = (await import("pg")).default;
      db = new PostgresDbManager({ connectionString: url as string, schema: tag, poolConfig: { max: 2 } });
      drop = async () => {
        const pool = new pg.Pool({ connectionString: url as string });
        await pool.query(`DROP SCHEMA IF EXISTS "${tag}" CASCADE`);
        await pool.end();
      };
    } else {
      const { MongoClient } = await import("mongodb");
      const { MongoDbManager } = await import("../src/db/mongodb/index.js");
      const client = new MongoClient(url as string);
      db = new MongoDbManager({ client, dbName: tag });
      drop = async () => {
        await client.db(tag).dropDatabase();
        await client.close();
      };
    }
    const m = await createCreditManager({ db, pricing: BOOK });
    try {
      await m.credits.addCredits("u", 100_000);
      await m.credits.meter("u", { estimate: 10_000 }, () => {
        recordUsage({
          model: "gpt-4o-2024-08-06",
          provider: "openai",
          inputTokens: 1001,
          outputTokens: 333,
          cachedTokens: 3,
        });
      });
      const commit = (await m.credits.getCreditHistory("u", { types: ["commit_reserved"], limit: 1 })).items[0];
      expect(commit?.amount).toBe(5837);
      expect((commit?.metadata?.usages as unknown as RecordedUsage[])[0]).toEqual({
        model: "gpt-4o-2024-08-06",
        ...GPT_4O_USAGE,
      });
      expect((await m.credits.audit("u")).ok).toBe(true);
    } finally {
      await m.close();
      await drop();
    }
  });
});
