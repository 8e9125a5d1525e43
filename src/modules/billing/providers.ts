import * as z from "zod/mini";
import { CreditsPerUnit, KeyNamespace, WaitDuration } from "../../models-entry.js";
import { PaymentService, type PaymentServiceOptions } from "./service-payments.js";
import { RazorpayProvider, type RazorpayProviderOptions } from "./provider-razorpay.js";
import { StripeProvider, type StripeProviderOptions } from "./provider-stripe.js";
import type { PaymentProvider } from "./provider.js";

export { RazorpayProvider, type RazorpayProviderOptions } from "./provider-razorpay.js";
export { STRIPE_API_VERSION, StripeProvider, type StripeProviderOptions } from "./provider-stripe.js";
export type {
  CheckoutRequest,
  CheckoutResult,
  FetchLike,
  HeadersLike,
  OffSessionChargeRequest,
  OffSessionChargeResult,
  PaymentEvent,
  PaymentEventKind,
  PaymentProvider,
} from "./provider.js";

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/** `createCreditManager({ payments })`. @public */
export const PaymentManagerOptions = z.strictObject({
  /**
   * Providers to use. Default: Razorpay and Stripe, configured from `razorpay` / `stripe` below or
   * the environment (`RAZORPAY_KEY_ID`, `RAZORPAY_KEY_SECRET`, `RAZORPAY_WEBHOOK_SECRET`,
   * `STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET`, `APP_BASE_URL`).
   */
  providers: z.optional(
    z.array(
      z.custom<PaymentProvider>((v) => isObject(v) && typeof (v as PaymentProvider).verifyWebhook === "function"),
    ),
  ),
  razorpay: z.optional(z.custom<RazorpayProviderOptions>(isObject)),
  stripe: z.optional(z.custom<StripeProviderOptions>(isObject)),
  /**
   * Credits per smallest currency unit (default 1) in any currency; or per currency
   * (`{ INR: 1, USD: 85 }`: other currencies are refused); or `(amount, currency) => credits`.
   */
  creditsPerUnit: z.optional(CreditsPerUnit),
  /**
   * How long a `createPaymentLink` waits for a concurrent call with the same idempotency key to
   * open the payment's checkout before a retryable `ConflictError` (milliseconds, default 10,000).
   */
  checkoutWaitMs: z.optional(WaitDuration),
  /** After how many seconds a claimed payment still without a checkout is taken over by a retry (default 60). */
  checkoutStaleSeconds: z.optional(WaitDuration),
  /**
   * Mixed into payment ids derived from idempotency keys (what providers see as Razorpay's
   * `reference_id` and Stripe's `Idempotency-Key`): give each store sharing one provider account its
   * own. Default none.
   */
  keyNamespace: z.optional(KeyNamespace),
});
/** `createCreditManager({ payments })`. @public */
export type PaymentManagerOptions = z.input<typeof PaymentManagerOptions>;

/** @internal */
export function buildPaymentService(
  shared: Omit<PaymentServiceOptions, keyof PaymentManagerOptions>,
  options: z.output<typeof PaymentManagerOptions> = {},
): PaymentService {
  const { providers, razorpay, stripe, ...settings } = options;
  return new PaymentService({
    ...shared,
    ...settings,
    providers: providers ?? [new RazorpayProvider(razorpay), new StripeProvider(stripe)],
  });
}
