import * as z from "zod/mini";
import {
  Amount,
  EntityId,
  IdempotencyKey,
  CallerMetadata,
  Metadata,
  NonNegativeAmount,
  ShortText,
  UserId,
} from "../../core/models/common.js";
import { Money } from "../../core/models/cost-basis.js";
import { text } from "../../core/models/text.js";

/**
 * Where a payment is. Statuses only move forward (see `canAdvancePayment`):
 * created → failed → authorized → expired/cancelled → paid → partially_refunded → refunded |
 * disputed_lost. A payment that failed, expired or was cancelled can still become paid (money
 * received is always credited); a paid one never goes back.
 * @public
 */
export const PaymentStatus = z.enum([
  "created",
  "failed",
  "authorized",
  "expired",
  "cancelled",
  "paid",
  "partially_refunded",
  "refunded",
  "disputed_lost",
]);
/**
 * Where a payment is. Statuses only move forward (see `canAdvancePayment`):
 * created → failed → authorized → expired/cancelled → paid → partially_refunded → refunded |
 * disputed_lost. A payment that failed, expired or was cancelled can still become paid (money
 * received is always credited); a paid one never goes back.
 * @public
 */
export type PaymentStatus = z.infer<typeof PaymentStatus>;

/** An ISO-4217 currency code, upper-cased. */
export const Currency = z.pipe(
  z.string().check(z.regex(/^[A-Za-z]{3}$/, { error: "currency must be a 3-letter ISO-4217 code" })),
  z.transform((s) => s.toUpperCase()),
);

/** A payment top-up: what the user pays and the credits it buys. @public */
export const Payment = z.object({
  id: EntityId,
  userId: UserId,
  /** "razorpay", "stripe", or the name of a custom provider. */
  provider: z.string().check(z.maxLength(64)),
  /** The provider's object the user pays through (payment link id, Checkout Session id). */
  providerRef: z.nullable(z.string().check(z.maxLength(255))),
  /** The provider's id of the money movement (Razorpay `pay_…`, Stripe PaymentIntent); set once paid. */
  providerPaymentId: z.nullable(z.string().check(z.maxLength(255))),
  /** In the smallest currency unit (paise, cents). */
  amount: Amount,
  currency: z.string().check(z.maxLength(3)),
  /** Credits a successful payment adds. */
  credits: Amount,
  status: PaymentStatus,
  /** Where to send the user to pay. */
  checkoutUrl: z.nullable(z.string()),
  description: z.nullable(z.string()),
  /** The grant the payment created (null until paid, or when all its credits paid debt). */
  grantId: z.nullable(EntityId),
  /** The journal entry that credited the payment. */
  creditEntryId: z.nullable(EntityId),
  /** Amount refunded so far (cumulative), smallest currency unit. */
  refundedAmount: NonNegativeAmount,
  /** Credits taken back so far by refunds and lost disputes. */
  creditsReversed: NonNegativeAmount,
  metadata: z.nullable(Metadata),
  /** Bumped by every write: the compare-and-set guard of updates. */
  version: z.number().check(z.int(), z.minimum(1)),
  createdAt: z.date(),
  updatedAt: z.date(),
});
/** A payment top-up: what the user pays and the credits it buys. @public */
export type Payment = z.infer<typeof Payment>;

/** A rate of credits per smallest currency unit. */
const Rate = z
  .number({ error: "a rate must be a number" })
  .check(z.positive({ error: "a rate must be positive" }), z.maximum(1e9, { error: "a rate must be at most 1e9" }));

/** `checkoutWaitMs` / `checkoutStaleSeconds` of the payments: a finite number >= 0. */
export const WaitDuration = z.number().check(z.minimum(0));

/** `keyNamespace` of the payments: 1–64 characters without NUL (it is joined to the key with one). */
export const KeyNamespace = z.string().check(
  z.minLength(1, { error: "must not be empty" }),
  z.maxLength(64, { error: "must be at most 64 characters" }),
  z.refine((s) => !s.includes("\u0000"), { error: "must not contain NUL" }),
);

/**
 * `creditsPerUnit`: one rate for every currency, a rate per currency (upper-case ISO-4217 codes;
 * payments in others are refused), or a function of amount and currency returning the credits.
 */
export const CreditsPerUnit = z.union([
  Rate,
  z
    .record(z.string().check(z.regex(/^[A-Z]{3}$/, { error: "currency must be an upper-case ISO-4217 code" })), Rate)
    .check(z.refine((r) => Object.keys(r).length > 0, { error: "name at least one currency" })),
  z.custom<(amount: number, currency: string) => number>((v) => typeof v === "function"),
]);

/** A payment to record (`payments.createPayment()`): amount in the currency's smallest unit, currency, provider and the credits it buys. @public */
export const CreatePaymentInput = z.strictObject({
  /** In the smallest currency unit: 1 to 10¹³ (docs/revenue.md, "Figures are exact"). */
  amount: Money.check(z.gte(1, { error: "amount must be at least 1" })),
  currency: Currency,
  provider: text(64).check(z.minLength(1)),
  description: z.optional(ShortText),
  metadata: z.optional(CallerMetadata),
  /**
   * Makes the call idempotent per user (same key, same arguments: the same payment; a retry after
   * its checkout failed to open tries again). The payment id derived from user and key goes to the
   * provider as its idempotency key (Stripe) and the link's reference_id (Razorpay).
   */
  idempotencyKey: z.optional(IdempotencyKey),
});
/** A payment to record (`payments.createPayment()`): amount in the currency's smallest unit, currency, provider and the credits it buys. @public */
export type CreatePaymentInput = z.input<typeof CreatePaymentInput>;

/** A page of `payments.listPayments()`: size and cursor. @public */
export const PaymentHistoryQuery = z.strictObject({
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(100))),
  /** `nextCursor` of the previous page. */
  cursor: z.optional(z.string().check(z.minLength(1), z.maxLength(300))),
});
/** A page of `payments.listPayments()`: size and cursor. @public */
export type PaymentHistoryQuery = z.input<typeof PaymentHistoryQuery>;

export const PaymentId = EntityId;

/** Options of `payments.recordRefund(userId, paymentId, options)`. @public */
export const RecordRefundOptions = z.strictObject({
  /** Cumulative refunded total in the smallest unit, 1 to the payment's amount (default: all of it). */
  refundedTotal: z.optional(z.number().check(z.int(), z.minimum(1))),
  /** Who recorded it: in the journal entry's description and metadata (`refundedBy`). */
  by: z.optional(text(255).check(z.minLength(1))),
});
/** Options of `payments.recordRefund(userId, paymentId, options)`. @public */
export type RecordRefundOptions = z.input<typeof RecordRefundOptions>;
