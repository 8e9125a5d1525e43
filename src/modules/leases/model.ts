import * as z from "zod/mini";
import { Amount, FeatureName, IdempotencyKey, CallerMetadata, ShortText, UnitName } from "../../core/models/common.js";
import { SpenderId } from "../../core/models/limits.js";
import { MAX_TTL_SECONDS } from "../../core/models/inputs.js";

/** Options of `credits.leases(options)` (docs/metering.md, "Leases"). @public */
export const LeaseOptions = z.strictObject({
  /** Credits one block holds at most (default 1000). */
  size: z.optional(Amount),
  /** Seconds a block's hold lives before its credits go back on their own (default 60). */
  ttlSeconds: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(MAX_TTL_SECONDS))),
  /** Milliseconds between settles: each window's usage is one journal entry (default 1000). */
  settleEveryMs: z.optional(z.number().check(z.int(), z.minimum(10), z.maximum(3_600_000))),
  /**
   * A user with fewer than `exactBelow × size` available credits is charged on the exact path (one
   * unit of work per charge), so small balances stay exact (default 4).
   */
  exactBelow: z.optional(z.number().check(z.minimum(0), z.maximum(1_000_000))),
  /** A block is at most this share of what the user has available (default 0.5). */
  share: z.optional(z.number().check(z.gt(0), z.maximum(1))),
  /**
   * The unit its blocks hold and its charges spend (docs/units.md); omitted: the default unit. A
   * charge naming a feature whose rule names a unit is in that unit (another than this one: a
   * `ValidationError`).
   */
  unit: z.optional(UnitName),
});
/** Options of `credits.leases(options)` (docs/metering.md, "Leases"). @public */
export type LeaseOptions = z.input<typeof LeaseOptions>;

/** Options of `lease.charge(userId, amount, options)`. @public */
export const LeaseChargeOptions = z.strictObject({
  /** Why: written on the charge's ledger-file line (and on the entry of an exact charge). */
  reason: z.optional(ShortText),
  /** A keyed charge takes the exact path: one deduction under this key, whichever process retries it. */
  idempotencyKey: z.optional(IdempotencyKey),
  /** Exact path only (a leased charge is one line of its window). */
  description: z.optional(ShortText),
  /** What is spent on: the window's entry counts it by feature (docs/usage.md, "Leases"). */
  feature: z.optional(FeatureName),
  /** Who spends: the window's entry counts it by spender. */
  spender: z.optional(SpenderId),
  metadata: z.optional(CallerMetadata),
});
/** Options of `lease.charge(userId, amount, options)`. @public */
export type LeaseChargeOptions = z.input<typeof LeaseChargeOptions>;
