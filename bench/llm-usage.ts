/**
 * npx tsx bench/llm-usage.ts — not part of `npm run bench`: the CPU the `llm` option spends reading
 * a streamed response (per SSE chunk, OpenAI- and Anthropic-shaped), and what pricing one usage
 * through a price book costs. Best of 7 rounds, on the sources.
 */
import { ResponseUsageReader } from "../src/modules/pricing/rules-llm-usage.js";
import { PricingService } from "../src/modules/pricing/service.js";
import { streams } from "../test/http/llm-upstream.js";

const enc = new TextEncoder();
const N = 20_000;
const openai = [
  ...Array.from({ length: N }, () => enc.encode(streams.openai[0] as string)),
  ...streams.openai.slice(-2).map((c) => enc.encode(c)),
];
const anthropic = [
  enc.encode(streams.anthropic[0] as string),
  ...Array.from({ length: N }, () => enc.encode(streams.anthropic[2] as string)),
  ...streams.anthropic.slice(-3).map((c) => enc.encode(c)),
];

const best = (fn: () => void): number => {
  let min = Infinity;
  for (let round = 0; round < 7; round++) {
    const t = process.hrtime.bigint();
    fn();
    min = Math.min(min, Number(process.hrtime.bigint() - t));
  }
  return min;
};

for (const [name, chunks] of [
  ["OpenAI stream", openai],
  ["Anthropic stream", anthropic],
] as const) {
  const ns = best(() => {
    const reader = new ResponseUsageReader("text/event-stream");
    for (const c of chunks) reader.push(c);
    if (!reader.end().ok) throw new Error("no usage read");
  });
  console.log(`${name}: ${(ns / N / 1000).toFixed(2)} µs per chunk of ${chunks[1]?.length} bytes`);
}

const pricing = new PricingService({
  book: {
    models: Array.from({ length: 200 }, (_, i) => ({
      model: `model-${i}`,
      input: { credits: 3, per: 20 },
      output: { credits: 3, per: 5 },
      cachedInput: { credits: 3, per: 40 },
    })),
  },
});
const usage = { model: "model-150-2025-01-01", inputTokens: 1234, cachedTokens: 1024, outputTokens: 567 };
const ns = best(() => {
  for (let i = 0; i < N; i++) pricing.price(usage);
});
console.log(`pricing one usage (dated id, 200 models): ${(ns / N / 1000).toFixed(2)} µs`);
