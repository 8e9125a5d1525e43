import { CreditError } from "../../core/errors.js";

/** The error codes of the billing module (promos and payments, docs/promos-and-payments.md). */
export const BILLING_ERROR_CODES = [
  "PROMO_NOT_ELIGIBLE",
  "WEBHOOK_REJECTED",
  "PAYMENT_PROVIDER_ERROR",
] as const satisfies readonly BillingErrorCode[];
/** A code of the billing module's errors. @public */
export type BillingErrorCode = "PROMO_NOT_ELIGIBLE" | "WEBHOOK_REJECTED" | "PAYMENT_PROVIDER_ERROR";

/** A promo code cannot be claimed by this account now; `reason` says why. Nothing was changed. @public */
export class PromoNotEligibleError extends CreditError<"PROMO_NOT_ELIGIBLE"> {
  /** Why the account may not claim the promo (`not_found`, `expired`, `exhausted`, …). */
  readonly reason: string;
  /** An error for a promo the account may not claim. */
  constructor(code: string, reason: string, message: string) {
    super("PROMO_NOT_ELIGIBLE", reason === "not_found" ? 404 : 409, message, { details: { code, reason } });
    this.reason = reason;
  }
}

/**
 * A webhook was refused: bad or stale signature, unparseable body, or an event that contradicts the
 * stored payment (other user, other amount). Nothing was changed; answer the provider with 400.
 * @public
 */
export class WebhookRejectedError extends CreditError<"WEBHOOK_REJECTED"> {
  /** Why the webhook was refused. */
  readonly reason: string;
  /** An error for a webhook whose signature or content is refused. */
  constructor(message: string, reason: string, details?: Record<string, unknown>) {
    super("WEBHOOK_REJECTED", 400, message, { details: { reason, ...details } });
    this.reason = reason;
  }
}

/** A payment provider's API refused or failed a request. @public */
export class PaymentProviderError extends CreditError<"PAYMENT_PROVIDER_ERROR"> {
  /** An error from a payment provider's API. */
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super("PAYMENT_PROVIDER_ERROR", 502, message, { details, cause });
  }
}
