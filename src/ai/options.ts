import * as z from "zod/mini";
import {
  Amount,
  FeatureName,
  IdempotencyKey,
  MAX_TTL_SECONDS,
  CallerMetadata,
  SpenderId,
  TokenCount,
  UserId,
} from "../models-entry.js";

/**
 * The longest `idempotencyKey` of a run: each model call holds under `<key>:<n>` (n up to 4
 * digits, then metering's own `:attempt-<n>` tags, cut and hashed when too long).
 */
export const MAX_RUN_KEY = 200;

/**
 * What each request gives `creditMiddleware()`, as it gives a credit call its options: who pays,
 * for what, under which key and cap. A bad value is a `ValidationError` (docs/llm-metering.md,
 * "The AI SDK").
 */
export const AiRunInput = z.strictObject({
  /** The account that pays. */
  userId: UserId,
  /** Who spends and on what (docs/teams-and-limits.md): limits for them apply, their scoped grants pay. */
  spender: z.optional(SpenderId),
  feature: z.optional(FeatureName),
  /**
   * Makes the run safe to retry: the same key charges each model call of the run once. Each call
   * holds under `<key>:<n>` (the n-th call of the run that was not released).
   */
  idempotencyKey: z.optional(
    IdempotencyKey.check(
      z.maxLength(MAX_RUN_KEY, {
        error: `idempotencyKey must be at most ${MAX_RUN_KEY} characters (the middleware appends a call number)`,
      }),
    ),
  ),
  /** Stored with every charge beside `model`, `provider` and the usages. */
  metadata: z.optional(CallerMetadata),
  correlationId: z.optional(z.string().check(z.minLength(1), z.maxLength(255))),
  /**
   * The most the whole run (every model call through this middleware) may be charged, in credits.
   * Passed by at most the price of the input the provider reported beyond the estimate of the
   * last call (and of any call in flight with it), unless `strictRunCap` (docs/llm-metering.md,
   * "The run's cap").
   */
  maxRunCredits: z.optional(Amount),
});

/**
 * How the middleware meters, which the program sets: a bad value (or an option the middleware does
 * not know) is a `ConfigurationError`.
 */
export const AiRunSetup = z.strictObject({
  /**
   * Makes `maxRunCredits` a bound the run never passes: each call holds what the run has left (its
   * worst case under the cap) and is charged at most that; usage priced beyond it is not charged
   * (the outcome's `uncharged`). Needs `maxRunCredits`.
   */
  strictRunCap: z.optional(z.boolean()),
  /**
   * Holds what is there (docs/llm-metering.md, "A hold for what is there"): a language-model call
   * whose estimate is more than the account may spend now (for the spender and feature, within
   * their limits) holds what it may spend, down to the price of the prompt and this many output
   * tokens, and its `maxOutputTokens` is lowered to what the hold pays for; below it the call is
   * refused before the provider is called. Default: none (the estimate is held whole, or refused).
   */
  minOutputTokens: z.optional(TokenCount.check(z.refine((n) => n > 0, { error: "minOutputTokens must be > 0" }))),
  /** Output tokens a call that sets no `maxOutputTokens` is held for. Default 4,096. */
  defaultMaxOutputTokens: z.optional(
    TokenCount.check(z.refine((n) => n > 0, { error: "defaultMaxOutputTokens must be > 0" })),
  ),
  /**
   * What a call the provider reported no usage for is charged (a stream cut by an abort or an
   * error, a finish without usage): `"counted"` (default) the prompt — as the provider reported it,
   * else as estimated — and one output token per content part delivered; `"estimate"` the hold;
   * `"none"` nothing. A call that delivered nothing is released whatever this says.
   */
  missingUsage: z.optional(z.enum(["counted", "estimate", "none"])),
  /** The provider's name in the price book. Default: the model's `provider` up to its first dot (`openai.chat` → `openai`). */
  provider: z.optional(z.string().check(z.minLength(1), z.maxLength(200))),
  /** Seconds each call's hold lives. Default: the manager's reservation TTL. */
  ttlSeconds: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_TTL_SECONDS))),
});

/** What `strictRunCap` without `maxRunCredits` is told. */
export const STRICT_CAP_NEEDS_CAP = "strictRunCap needs maxRunCredits (the cap it keeps)";

/** The options of `creditMiddleware()` other than the manager (docs/llm-metering.md, "The AI SDK"). @beta */
export const AiMeteringOptions = z.strictObject({ ...AiRunInput.shape, ...AiRunSetup.shape }).check(
  z.refine((o) => o.strictRunCap !== true || o.maxRunCredits !== undefined, {
    error: STRICT_CAP_NEEDS_CAP,
    path: ["strictRunCap"],
  }),
);
/** The options of `creditMiddleware()` other than the manager (docs/llm-metering.md, "The AI SDK"). @beta */
export type AiMeteringOptions = z.input<typeof AiMeteringOptions>;
