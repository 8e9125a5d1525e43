import * as z from "zod/mini";
import { Amount, NonNegativeAmount } from "../../core/models/common.js";
import type { Account } from "../../core/models/entities.js";
import { Currency } from "./model-payments.js";

/** A provider's id of a saved customer or payment method (`cus_…`, `pm_…`). */
const ProviderRef = z
  .string({ error: "must be a string" })
  .check(z.minLength(1, { error: "must not be empty" }), z.maxLength(255, { error: "must be at most 255 characters" }));

/**
 * `payments.setAutoTopUp(userId, rule)` (docs/promos-and-payments.md, "Auto top-up"): when a spend
 * takes the account's available credits below `below`, the saved payment method is charged
 * off-session — `amount` (smallest currency unit) each time, or enough to bring available credits
 * back to `toBalance` — and the credits are added once the provider says the payment succeeded.
 * @public
 */
export const AutoTopUpInput = z
  .strictObject({
    /** Credits: a spend that takes `available` from at least this to below it asks for a top-up. */
    below: Amount,
    /** Smallest currency unit charged each time (exactly one of `amount` and `toBalance`). */
    amount: z.optional(Amount),
    /** Credits: charge what brings `available` (when the top-up was asked for) back to this. */
    toBalance: z.optional(Amount),
    /** The provider that holds the saved method ("stripe", or a custom provider's name). */
    provider: z.string().check(z.minLength(1), z.maxLength(64)),
    /** The provider's customer (Stripe `cus_…`). */
    customer: ProviderRef,
    /** The saved payment method, usable off-session (Stripe `pm_…`). */
    paymentMethod: ProviderRef,
    currency: Currency,
    /** Smallest currency unit: no charge below this (a `toBalance` top-up is raised to it). */
    minAmount: z.optional(Amount),
    /** Smallest currency unit: no charge above this (a `toBalance` top-up is cut to it). */
    maxAmount: z.optional(Amount),
    /** Top-ups per calendar month (UTC) at most, counting those asked for and not declined. */
    maxPerMonth: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
    /** Consecutive declines after which the rule disables itself. Default 3. */
    maxFailures: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(100))),
  })
  .check(
    z.superRefine((r, ctx) => {
      if ((r.amount === undefined) === (r.toBalance === undefined)) {
        ctx.addIssue({ code: "custom", path: ["amount"], message: "give exactly one of amount and toBalance" });
      }
      if (r.toBalance !== undefined && r.toBalance <= r.below) {
        ctx.addIssue({ code: "custom", path: ["toBalance"], message: "toBalance must be above below" });
      }
      if (r.minAmount !== undefined && r.maxAmount !== undefined && r.minAmount > r.maxAmount) {
        ctx.addIssue({ code: "custom", path: ["minAmount"], message: "minAmount must not exceed maxAmount" });
      }
      if (r.amount !== undefined) {
        if (r.minAmount !== undefined && r.amount < r.minAmount)
          ctx.addIssue({ code: "custom", path: ["amount"], message: "amount is below minAmount" });
        if (r.maxAmount !== undefined && r.amount > r.maxAmount)
          ctx.addIssue({ code: "custom", path: ["amount"], message: "amount is above maxAmount" });
      }
    }),
  );
/**
 * `payments.setAutoTopUp(userId, rule)` (docs/promos-and-payments.md, "Auto top-up"): when a spend
 * takes the account's available credits below `below`, the saved payment method is charged
 * off-session — `amount` (smallest currency unit) each time, or enough to bring available credits
 * back to `toBalance` — and the credits are added once the provider says the payment succeeded.
 * @public
 */
export type AutoTopUpInput = z.input<typeof AutoTopUpInput>;
/** A validated `AutoTopUpInput`. @public */
export type AutoTopUpSettings = z.output<typeof AutoTopUpInput>;

/** The rule as stored (validated, currency upper-cased). @public */
export const AutoTopUpRule = z.object({
  below: Amount,
  amount: z.nullable(Amount),
  toBalance: z.nullable(Amount),
  provider: z.string(),
  customer: z.string(),
  paymentMethod: z.string(),
  currency: z.string(),
  minAmount: z.nullable(Amount),
  maxAmount: z.nullable(Amount),
  maxPerMonth: z.nullable(z.number().check(z.int())),
  maxFailures: z.number().check(z.int(), z.minimum(1)),
});
/** The rule as stored (validated, currency upper-cased). @public */
export type AutoTopUpRule = z.infer<typeof AutoTopUpRule>;

/** A top-up asked for and not yet settled: charged, declined, or waiting for the customer. */
export const AutoTopUpAttempt = z.object({
  /** The attempt's id: its payment's id and the provider's idempotency key. */
  id: z.string(),
  /** `available` after the spend that asked for it. */
  available: z.number().check(z.int()),
  /** ISO-8601. */
  requestedAt: z.string(),
});
export type AutoTopUpAttempt = z.infer<typeof AutoTopUpAttempt>;

/**
 * The account's auto top-up (stored on the account, `accounts.auto_top_up`; changed only inside
 * its unit of work, so concurrent spends crossing `below` ask for one top-up).
 * @public
 */
export const AutoTopUpState = z.object({
  rule: AutoTopUpRule,
  enabled: z.boolean(),
  /** Why the rule is disabled ("max_failures", "disabled"), or null. */
  disabledReason: z.nullable(z.string()),
  /** The top-up in flight (at most one), or null. */
  pending: z.nullable(AutoTopUpAttempt),
  /** "YYYY-MM" (UTC) `monthCount` counts in. */
  month: z.nullable(z.string()),
  /** Top-ups asked for this month and not declined. */
  monthCount: NonNegativeAmount,
  /** Consecutive declines. */
  failures: NonNegativeAmount,
  /** The last decline's (or required action's) provider code, or null. */
  lastError: z.nullable(z.string()),
});
/**
 * The account's auto top-up (stored on the account, `accounts.auto_top_up`; changed only inside
 * its unit of work, so concurrent spends crossing `below` ask for one top-up).
 * @public
 */
export type AutoTopUpState = z.infer<typeof AutoTopUpState>;

/**
 * The billing module's column of the account row: the auto top-up rule and its state, null or
 * absent when none. The stores' account table is the core's `Account` with it (src/schema/tables.ts),
 * so a unit of work loads it, keeps it and saves it with the account.
 */
export const AccountAutoTopUp = { autoTopUp: z.optional(z.nullable(AutoTopUpState)) };

/** An account as the billing module reads it: the core's row and its `autoTopUp` column. @public */
export type AccountWithAutoTopUp = Account & { autoTopUp?: AutoTopUpState | null };
