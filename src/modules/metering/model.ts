import * as z from "zod/mini";
import { Amount, IdempotencyKey, CallerMetadata, NonNegativeAmount, ShortText } from "../../core/models/common.js";
import { MAX_TTL_SECONDS } from "../../core/models/inputs.js";
import { SpendFields } from "../../core/models/limits.js";
import { text } from "../../core/models/text.js";

/** One usage recorded inside a metered call (the original system's `addLlmUsage`). @public */
export const UsageRecord = z.strictObject({
  /** Credits this usage costs, in the smallest unit (0 allowed: a free call still shows up). */
  amount: NonNegativeAmount,
  /** The model that did the work, e.g. "gpt-4o-mini". */
  model: z.optional(text(200).check(z.minLength(1))),
  /** The provider, e.g. "openai". */
  provider: z.optional(text(200).check(z.minLength(1))),
  metadata: z.optional(CallerMetadata),
});
/** One usage recorded inside a metered call (the original system's `addLlmUsage`). @public */
export type UsageRecord = z.infer<typeof UsageRecord>;

/** 255 less the longest suffix metering appends (`:reserve`, `:release`): the longest meter key. */
export const MAX_METER_KEY = 255 - ":reserve".length;

/** Options of `credits.meter(userId, options, fn)`. @public */
export const MeterOptions = z
  .strictObject({
    /** Credits to hold before `fn` runs. */
    estimate: Amount,
    /**
     * Holds what is there (docs/concepts.md, "Holds"): `estimate`, or what the spender and feature
     * may spend now when that is less, down to `minimum` (at most `estimate`; below it the call is
     * refused before `fn` runs). The call's `estimate` (`currentMeter().estimate`) is what it holds.
     */
    minimum: z.optional(Amount),
    /** Seconds until the hold lapses. Default: the manager's default reservation TTL. */
    ttlSeconds: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_TTL_SECONDS))),
    /** Reason stored on the hold, e.g. "POST /api/chat". */
    reason: z.optional(ShortText),
    description: z.optional(ShortText),
    /**
     * Makes the call safe to retry. The hold is placed under `<key>:reserve` and released under
     * `<key>:release`; an attempt that retries a failed one holds under `<key>:attempt-<n>:reserve`.
     * The charge — a commit, or an after-service deduction — of every attempt is `<key>:charge`, so a
     * call is charged once. At most 247 characters, so that each of those is a valid idempotency key
     * (255).
     */
    idempotencyKey: z.optional(
      IdempotencyKey.check(
        z.maxLength(MAX_METER_KEY, {
          error: `idempotencyKey must be at most ${MAX_METER_KEY} characters (metering appends up to 8)`,
        }),
      ),
    ),
    correlationId: z.optional(text(255).check(z.minLength(1))),
    /** Stored with the commit entry beside the recorded usages. */
    metadata: z.optional(CallerMetadata),
    /**
     * What to do when `fn` neither returns a number nor records usage: `"release"` the hold (default,
     * as the original middleware does: nothing measured, nothing charged) or charge the `"estimate"`.
     */
    noUsage: z.optional(z.enum(["release", "estimate"])),
    /**
     * Who spends and on what (docs/teams-and-limits.md): the hold, its commit and an after-service
     * charge name them, so the spend limits for them apply and the scoped grants they may use pay.
     */
    ...SpendFields,
  })
  .check(
    z.refine((o) => o.minimum === undefined || o.minimum <= o.estimate, {
      error: "minimum must be at most the estimate",
      path: ["minimum"],
    }),
  );
/** Options of `credits.meter(userId, options, fn)`. @public */
export type MeterOptions = z.input<typeof MeterOptions>;
