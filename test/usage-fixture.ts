import type { CreditManager } from "../src/index.js";

/** Dimension values a browser must show as text, never run (test/usage-pages.browser.test.ts). */
export const HOSTILE_MODEL = `<img src=x onerror="window.__xss=1">`;
export const HOSTILE_SPENDER = `"><script>window.__xss=2</script>=1+1`;

/**
 * Usage of `account` over the last `days` days (today included), through a manager whose clock is
 * `clock.t`: a few charges a day by model, feature and spender, hostile values among them. The clock
 * is back at its start afterwards.
 */
export async function seedUsage(
  m: CreditManager,
  clock: { t: number },
  account = "alice",
  days = 10,
  models: readonly string[] = ["gpt-4o", "claude-sonnet", HOSTILE_MODEL],
): Promise<{ credits: number }> {
  const start = clock.t;
  let credits = 0;
  await m.credits.addCredits(account, 1_000_000);
  const spenders = ["key-web", "key-ci", HOSTILE_SPENDER];
  for (let d = days - 1; d >= 0; d--) {
    for (let i = 0; i < 3; i++) {
      clock.t = start - d * 86_400_000 - (i + 1) * 60_000;
      const amount = 10 + ((d * 7 + i * 13) % 40);
      const model = models[(d + i) % 3] as string;
      await m.credits.deductCredits(account, amount, {
        feature: i === 2 ? "search" : "chat",
        spender: spenders[(d + 2 * i) % 3] as string,
        metadata: { usages: [{ model, amount, inputTokens: amount * 10, outputTokens: amount * 3 }] },
      });
      credits += amount;
    }
  }
  clock.t = start;
  return { credits };
}
