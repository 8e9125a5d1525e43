/**
 * The errors of the package's root entry: the core's (src/core/errors.ts) and those of every module
 * the package brings, each declared by its module (`errorCodes` of its `CreditModule`,
 * docs/modules.md). `CreditErrorCode` here is the union of them all.
 */
import { CreditError, type CreditErrorCode as CoreErrorCode } from "./core/errors.js";
import type { BillingErrorCode } from "./modules/billing/errors.js";
import type { PricingErrorCode } from "./modules/pricing/errors.js";
import type { WebhookErrorCode } from "./modules/webhooks/errors.js";
import type { HttpErrorCode } from "./http/errors.js";

export { CreditError };
export type { CoreErrorCode, BillingErrorCode, PricingErrorCode, WebhookErrorCode, HttpErrorCode };
export {
  ValidationError,
  RuleViolationError,
  LateUsageError,
  InsufficientCreditsError,
  SpendLimitError,
  NotFoundError,
  ReservationNotActiveError,
  ReservationExpiredError,
  IdempotencyConflictError,
  ConflictError,
  LockTimeoutError,
  ConfigurationError,
  StorageError,
  OutcomeUnknownError,
  ModuleError,
  type ValidationIssue,
  type OutcomeUnknownDetails,
} from "./core/errors.js";
export { PromoNotEligibleError, WebhookRejectedError, PaymentProviderError } from "./modules/billing/errors.js";
export { UnknownModelError, RunBudgetExceededError } from "./modules/pricing/errors.js";

/**
 * Every code a `CreditError` of this package carries: the core's, the billing module's (promos and
 * payments), the pricing module's, webhook delivery's and the HTTP API's own answers.
 * @public
 */
export type CreditErrorCode = CoreErrorCode | BillingErrorCode | PricingErrorCode | WebhookErrorCode | HttpErrorCode;

/** Whether `error` is a `CreditError` of this package (its `code` one of `CreditErrorCode`'s). @public */
export function isCreditError(error: unknown): error is CreditError<CreditErrorCode> {
  return error instanceof CreditError;
}
