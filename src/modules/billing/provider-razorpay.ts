import { ConfigurationError } from "../../core/errors.js";
import { PaymentProviderError, WebhookRejectedError } from "./errors.js";
import { ProviderApi } from "./provider-http.js";
import { at, header, hmacHex, int, parseJson, safeEqualHex, str } from "./provider-signature.js";
import type {
  CheckoutRequest,
  CheckoutResult,
  FetchLike,
  HeadersLike,
  PaymentEvent,
  PaymentEventKind,
  PaymentProvider,
} from "./provider.js";

/** Options of `new RazorpayProvider()`: the key id and secret, the webhook secret and the HTTP client. @public */
export interface RazorpayProviderOptions {
  /** Default `process.env.RAZORPAY_KEY_ID`. */
  keyId?: string;
  /** Default `process.env.RAZORPAY_KEY_SECRET`. */
  keySecret?: string;
  /** Default `process.env.RAZORPAY_WEBHOOK_SECRET`. Webhooks are refused without it. */
  webhookSecret?: string;
  /** Where Razorpay sends the user after paying; default `${APP_BASE_URL}/payments/return`. */
  callbackUrl?: string;
  /** Default `https://api.razorpay.com`. */
  baseUrl?: string;
  /** Default the global `fetch`. */
  fetch?: FetchLike;
  /** Longest wait for one API call, in ms (then `PaymentProviderError`). Default 30,000. */
  timeoutMs?: number;
}

const PAYMENT_EVENTS: Record<string, PaymentEventKind> = {
  "payment.authorized": "authorized",
  "payment.captured": "paid",
  "payment.failed": "failed",
  "payment_link.paid": "paid",
  "payment_link.expired": "expired",
  "payment_link.cancelled": "cancelled",
  "refund.processed": "refund",
  "payment.dispute.lost": "dispute_lost",
};

/**
 * Razorpay Payment Links (`POST /v1/payment_links`, HTTP Basic with the key id and secret), with
 * our payment id as the link's `reference_id` — unique per link at Razorpay, so a link already
 * opened for a payment is found again by it (`GET /v1/payment_links?reference_id=…`).
 * Webhooks: `X-Razorpay-Signature` = hex HMAC-SHA256 of the raw body with the webhook secret.
 * @public
 */
export class RazorpayProvider implements PaymentProvider {
  /** The provider's name in payments and webhooks: `razorpay`. */
  readonly name = "razorpay";
  private readonly o: Pick<RazorpayProviderOptions, "keyId" | "keySecret" | "webhookSecret" | "callbackUrl">;
  private readonly api: ProviderApi;

  /** A Razorpay provider with the account's keys and webhook secret. */
  constructor(options: RazorpayProviderOptions = {}) {
    const env = typeof process === "undefined" ? {} : process.env;
    const appBase = env.APP_BASE_URL;
    this.o = {
      keyId: options.keyId ?? env.RAZORPAY_KEY_ID,
      keySecret: options.keySecret ?? env.RAZORPAY_KEY_SECRET,
      webhookSecret: options.webhookSecret ?? env.RAZORPAY_WEBHOOK_SECRET,
      callbackUrl: options.callbackUrl ?? (appBase ? `${appBase.replace(/\/$/, "")}/payments/return` : undefined),
    };
    this.api = new ProviderApi("razorpay", "https://api.razorpay.com", options);
  }

  /** Whether webhooks can be received: true once a webhook secret is configured. */
  get receivesWebhooks(): boolean {
    return Boolean(this.o.webhookSecret);
  }

  /** False until a key id and secret are configured: no checkout can be opened. */
  get opensCheckouts(): boolean {
    return Boolean(this.o.keyId && this.o.keySecret);
  }

  /** Creates a Razorpay payment link for the checkout; resolves to its id and URL. */
  async createCheckout(r: CheckoutRequest): Promise<CheckoutResult> {
    const body: Record<string, unknown> = {
      amount: r.amount,
      currency: r.currency,
      description: r.description,
      reference_id: r.paymentId,
      notes: { credit_payment_id: r.paymentId, user_id: r.userId, credits: String(r.credits) },
    };
    if (this.o.callbackUrl) {
      body.callback_url = this.o.callbackUrl;
      body.callback_method = "get";
    }
    const res = await this.api.call("/v1/payment_links", {
      method: "POST",
      headers: { authorization: this.auth(), "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const id = str(res.id);
    const url = str(res.short_url);
    if (id === null || url === null)
      throw new PaymentProviderError("[credit-management] [razorpay] Payment link answer without id or short_url.");
    return { providerRef: id, url };
  }

  /**
   * The link already opened for this payment: `GET /v1/payment_links?reference_id=<payment id>`
   * (Razorpay's "Fetch All Payment Links", filtered by the reference_id it keeps unique per link).
   * A link with our reference_id for another amount, currency or payment (notes) is not ours —
   * another store sharing this Razorpay account — and is refused with `PaymentProviderError`
   * rather than handed to this payment's user.
   */
  async findCheckout(r: CheckoutRequest): Promise<CheckoutResult | null> {
    const res = await this.api.call(`/v1/payment_links?reference_id=${encodeURIComponent(r.paymentId)}`, {
      method: "GET",
      headers: { authorization: this.auth() },
    });
    const links = Array.isArray(res.payment_links) ? (res.payment_links as unknown[]) : [];
    for (const link of links) {
      if (str(at(link, "reference_id")) !== r.paymentId) continue;
      const id = str(at(link, "id"));
      const url = str(at(link, "short_url"));
      const notes = at(link, "notes");
      const notedId = str(at(notes, "credit_payment_id"));
      if (
        int(at(link, "amount")) !== r.amount ||
        str(at(link, "currency"))?.toUpperCase() !== r.currency ||
        (notedId !== null && notedId !== r.paymentId) ||
        id === null ||
        url === null
      ) {
        throw new PaymentProviderError(
          `[credit-management] [razorpay] Payment link ${id ?? "?"} has reference_id ${r.paymentId} but is not this payment's (amount, currency or notes differ): is another store using this Razorpay account?`,
          { provider: "razorpay", providerRef: id },
        );
      }
      return { providerRef: id, url };
    }
    return null;
  }

  /** `POST /v1/payment_links/:id/cancel`: the link can no longer be paid. */
  async cancelCheckout(providerRef: string): Promise<void> {
    await this.api.call(`/v1/payment_links/${encodeURIComponent(providerRef)}/cancel`, {
      method: "POST",
      headers: { authorization: this.auth() },
    });
  }

  private auth(): string {
    const { keyId, keySecret } = this.o;
    if (!keyId || !keySecret) {
      throw new ConfigurationError(
        "[credit-management] [razorpay] Set keyId and keySecret (or RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET).",
      );
    }
    return `Basic ${Buffer.from(`${keyId}:${keySecret}`).toString("base64")}`;
  }

  /**
   * Checks the webhook's signature over the exact bytes received; throws `WebhookRejectedError`
   * when it does not match (or is stale).
   */
  verifyWebhook(rawBody: Uint8Array, headers: HeadersLike): void {
    const secret = this.o.webhookSecret;
    if (!secret) {
      throw new ConfigurationError(
        "[credit-management] [razorpay] No webhook secret: set webhookSecret (or RAZORPAY_WEBHOOK_SECRET). Webhooks are refused without it.",
      );
    }
    const got = header(headers, "x-razorpay-signature");
    if (got === undefined || !safeEqualHex(hmacHex(secret, rawBody), got.trim())) {
      throw new WebhookRejectedError("Razorpay webhook signature does not match.", "bad_signature");
    }
  }

  /** The payment event a verified webhook body carries; throws `WebhookRejectedError` when it is not an event. */
  parseEvent(rawBody: Uint8Array): PaymentEvent {
    const body = parseJson(rawBody);
    const type = str(body.event) ?? "";
    const payment = at(body, "payload", "payment", "entity");
    const link = at(body, "payload", "payment_link", "entity");
    const refund = at(body, "payload", "refund", "entity");
    const dispute = at(body, "payload", "dispute", "entity");
    const notes = (at(link, "notes") ?? at(payment, "notes")) as Record<string, unknown> | undefined;
    const kind = PAYMENT_EVENTS[type] ?? null;
    const paymentEntityId = str(at(payment, "id")) ?? str(at(refund, "payment_id"));
    const providerIds = [str(at(link, "id")), paymentEntityId].filter((x): x is string => x !== null);
    let refundedTotal: number | null = null;
    if (kind === "refund") refundedTotal = int(at(payment, "amount_refunded")) ?? int(at(refund, "amount"));
    return {
      eventId: str(body.id),
      type,
      kind,
      paymentId: str(at(notes, "credit_payment_id")) ?? str(at(link, "reference_id")),
      providerIds,
      providerPaymentId: providerPaymentId(kind, paymentEntityId, refund, dispute),
      userId: str(at(notes, "user_id")),
      amount: int(at(payment, "amount")) ?? int(at(link, "amount")),
      currency: (str(at(payment, "currency")) ?? str(at(link, "currency")))?.toUpperCase() ?? null,
      refundedTotal,
    };
  }
}

/**
 * The `pay_…` an event is about: the one paid, or the one a refund or dispute is of (its own
 * `payment_id` first). Lets a refund of another attempt at the same link be told apart.
 */
function providerPaymentId(
  kind: PaymentEventKind | null,
  payment: string | null,
  refund: unknown,
  dispute: unknown,
): string | null {
  if (kind === "paid") return payment;
  if (kind === "refund") return str(at(refund, "payment_id")) ?? payment;
  if (kind === "dispute_lost") return str(at(dispute, "payment_id")) ?? payment;
  return null;
}
