/** What a provider needs to open a checkout for a stored payment. @public */
export interface CheckoutRequest {
  /** Our payment id (sent to the provider as a note / metadata / client reference). */
  paymentId: string;
  /** The account the credits go to. */
  userId: string;
  /** Smallest currency unit. */
  amount: number;
  /** ISO-4217, upper-case. */
  currency: string;
  /** Credits the payment buys. */
  credits: number;
  /** What the customer sees on the checkout page. */
  description: string;
  /**
   * Set when the caller gave an `idempotencyKey`: our payment id derived from user and key (unique
   * across users, stable across retries), to pass on as the provider's idempotency key where it has
   * one. Not the caller's key itself: ours are per user, a provider's per merchant account.
   */
  idempotencyKey?: string | undefined;
}

/** What the provider created: where to send the user, and the provider's id for it. @public */
export interface CheckoutResult {
  /** The provider's id of the checkout (a Checkout session, a payment link). */
  providerRef: string;
  /** Where to send the customer to pay. */
  url: string;
}

/**
 * What a provider needs to charge a saved payment method off-session (auto top-up,
 * docs/promos-and-payments.md): the customer is not there to confirm it.
 * @public
 */
export interface OffSessionChargeRequest {
  /** Our payment id (the top-up attempt's): sent as metadata, so the provider's webhooks name it. */
  paymentId: string;
  /** The account the credits go to. */
  userId: string;
  /** Smallest currency unit. */
  amount: number;
  /** ISO-4217, upper-case. */
  currency: string;
  /** Credits the charge buys. */
  credits: number;
  /** What the customer's statement shows. */
  description: string;
  /** The provider's customer (Stripe `cus_…`). */
  customer: string;
  /** The saved payment method (Stripe `pm_…`). */
  paymentMethod: string;
  /**
   * The provider's idempotency key: derived from the attempt, the same on every retry of it, so a
   * retry after a time-out or a crash finds the first charge instead of making a second.
   */
  idempotencyKey: string;
}

/**
 * The provider's answer to an off-session charge. `succeeded`: the money is taken (credited at
 * once); `processing`: not yet known (credited by the provider's webhook); `requires_action`: the
 * customer must confirm it (3-D Secure), `nextAction` what the provider returned;
 * `declined`: refused, `code` the provider's reason (`card_declined`, `insufficient_funds`, …).
 * Errors that may pass (time-outs, 5xx, 429) are thrown as `PaymentProviderError`: retried under
 * the same idempotency key.
 * @public
 */
export type OffSessionChargeResult =
  | { status: "succeeded" | "processing"; providerPaymentId: string }
  | {
      status: "requires_action";
      providerPaymentId: string | null;
      code: string;
      nextAction: Record<string, unknown> | null;
    }
  | { status: "declined"; providerPaymentId: string | null; code: string; message: string };

/** Header lookup: a fetch `Headers`, or a plain (Node-style) header object. @public */
export type HeadersLike = Headers | Record<string, string | string[] | undefined>;

/** What an incoming event means for a payment, in provider-neutral terms. @public */
export type PaymentEventKind = "authorized" | "paid" | "failed" | "expired" | "cancelled" | "refund" | "dispute_lost";

/** What a provider's webhook says about a payment, in the provider-neutral form `PaymentService` handles. @public */
export interface PaymentEvent {
  /** The provider's event id, for logs. */
  eventId: string | null;
  /** The provider's event type, as sent. */
  type: string;
  /** null: an event type we do not act on. */
  kind: PaymentEventKind | null;
  /** Our payment id, when the event carries it (notes, metadata, client_reference_id). */
  paymentId: string | null;
  /** The provider's ids that may identify the payment (link / session / payment intent / pay_…). */
  providerIds: string[];
  /**
   * The provider's id of the money movement: on paid events the one paid, on refund and dispute
   * events the one refunded or disputed (ignored when it is not the one credited).
   */
  providerPaymentId: string | null;
  /** The user the event says it is for, when it says. */
  userId: string | null;
  /** Amount of the payment, smallest unit, when the event says. */
  amount: number | null;
  /** The currency of the amount (ISO 4217), when the event carries one. */
  currency: string | null;
  /** On refunds: the total refunded so far (cumulative), smallest unit. */
  refundedTotal: number | null;
}

/**
 * A payment provider: opens checkouts and turns verified webhooks into `PaymentEvent`s. Both
 * built-in providers implement it; a custom provider can too (`PaymentService({ providers })`).
 * @public
 */
export interface PaymentProvider {
  /** Name used in `createPaymentLink({ provider })` and `/webhooks/:provider`. */
  readonly name: string;
  /** Creates a checkout for the request at the provider; resolves to its reference and the URL to pay at. */
  createCheckout(request: CheckoutRequest): Promise<CheckoutResult>;
  /**
   * Optional: the checkout this provider already opened for `request.paymentId`, or null when it
   * has none. Asked before a checkout is opened again for a payment an earlier attempt may have
   * opened one for (a take-over of an abandoned claim, a retry after a failure), and after an
   * attempt to open one failed — so a request that reached the provider before its answer was lost
   * does not leave a second checkout. Razorpay implements it (links by `reference_id`); a provider
   * whose `createCheckout` honours `idempotencyKey` (Stripe) need not.
   */
  findCheckout?(request: CheckoutRequest): Promise<CheckoutResult | null>;
  /**
   * Optional: charges a saved payment method off-session (auto top-up). Stripe implements it (a
   * PaymentIntent with `off_session` and `confirm`); a provider without it cannot be an auto
   * top-up rule's provider.
   */
  chargeSaved?(request: OffSessionChargeRequest): Promise<OffSessionChargeResult>;
  /**
   * Optional: closes a checkout so it can no longer be paid (Razorpay cancels the payment link,
   * Stripe expires the Checkout Session). Called only for a checkout the library opened but never
   * handed out — a concurrent or taken-over `createPaymentLink` of the same payment recorded
   * another one first.
   */
  cancelCheckout?(providerRef: string): Promise<void>;
  /**
   * Optional: false when this provider has no webhook secret, so it cannot check a webhook's
   * signature. The HTTP handler then answers its webhook path 404 (as for an unknown provider) and
   * passes it on to the host's `next`, instead of a 500 for every anonymous request. Omitted: true.
   */
  readonly receivesWebhooks?: boolean;
  /**
   * Optional: false when this provider lacks what opening a checkout needs (API keys, return
   * pages). `createPaymentLink` then refuses with `ConfigurationError` before it records anything.
   * Omitted: true.
   */
  readonly opensCheckouts?: boolean;
  /**
   * Optional: false when this provider has `chargeSaved` but lacks what a charge needs (Stripe: no
   * secret key), so auto top-ups cannot be charged: the worker then says so at start instead of
   * failing every attempt (docs/promos-and-payments.md, "Auto top-up"). Omitted: true.
   */
  readonly chargesSaved?: boolean;
  /**
   * Checks the signature over the exact bytes received. Throws `WebhookRejectedError` when it does
   * not match (or is stale), `ConfigurationError` when no webhook secret is configured.
   */
  verifyWebhook(rawBody: Uint8Array, headers: HeadersLike, now: Date): void;
  /** Parses a verified body. Throws `WebhookRejectedError` when it is not an event. */
  parseEvent(rawBody: Uint8Array): PaymentEvent;
}

/** A `fetch` compatible function (injectable for tests and proxies). @public */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;
