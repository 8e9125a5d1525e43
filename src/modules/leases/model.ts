import * as z from "zod";
import { Amount, FeatureName, IdempotencyKey, Metadata, ShortText } from "../../models/common.js";
import { SpenderId } from "../../models/limits.js";
import { MAX_TTL_SECONDS } from "../../models/inputs.js";

/** Options of `credits.leases(options)` (docs/metering.md, "Leases"). */
export const LeaseOptions = z.strictObject({
  /** Credits one block holds at most (default 1000). */
  size: z.optional(Amount),
  /** Seconds a block's hold lives before its credits go back on their own (default 60). */
  ttlSeconds: z.number().int().min(1).max(MAX_TTL_SECONDS).optional(),
  /** Milliseconds between settles: each window's usage is one journal entry (default 1000). */
  settleEveryMs: z.number().int().min(10).max(3_600_000).optional(),
  /**
   * A user with fewer than `exactBelow × size` available credits is charged on the exact path (one
   * unit of work per charge), so small balances stay exact (default 4).
   */
  exactBelow: z.number().min(0).max(1_000_000).optional(),
  /** A block is at most this share of what the user has available (default 0.5). */
  share: z.number().gt(0).max(1).optional(),
});
export type LeaseOptions = z.input<typeof LeaseOptions>;

/** Options of `lease.charge(userId, amount, options)`. */
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
  metadata: z.optional(Metadata),
});
export type LeaseChargeOptions = z.input<typeof LeaseChargeOptions>;
