import { ConfigurationError } from "../../core/errors.js";
import { PaymentProviderError, WebhookRejectedError } from "./errors.js";
import { ProviderApi } from "./provider-http.js";
import { at, header, hmacHex, int, parseJson, safeEqualHex, str } from "./provider-signature.js";
import type {
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

/** Options of `new StripeProvider()`: the secret key, the webhook signing secret and the HTTP client. @public */
export interface StripeProviderOptions {
  /** Default `process.env.STRIPE_SECRET_KEY`. */
  secretKey?: string;
  /** Default `process.env.STRIPE_WEBHOOK_SECRET` (`whsec_…`). Webhooks are refused without it. */
  webhookSecret?: string;
  /** Default `${APP_BASE_URL}/payments/success?payment_id=…`. */
  successUrl?: string;
  /** Default `${APP_BASE_URL}/payments/cancel?payment_id=…`. */
  cancelUrl?: string;
  /** Largest accepted age (and clock skew) of a signed event, in seconds. Default 300. */
  toleranceSeconds?: number;
  /** Default `https://api.stripe.com`. */
  baseUrl?: string;
  /** The HTTP client. Default: the global `fetch`. */
  fetch?: FetchLike;
  /** Longest wait for one API call, in ms (then `PaymentProviderError`). Default 30,000. */
  timeoutMs?: number;
  /**
   * The Stripe API version every call names (`Stripe-Version`), so a change of the account's
   * default version in Stripe's dashboard never changes what the library gets. Default
   * `STRIPE_API_VERSION`, the version this release is tested against.
   */
  apiVersion?: string;
}

/** The Stripe API version this release is written and tested against. @public */
export const STRIPE_API_VERSION = "2024-06-20";

/**
 * Stripe Checkout Sessions (`POST /v1/checkout/sessions`, form-encoded, Bearer secret key).
 * Webhooks: `Stripe-Signature: t=<unix>,v1=<hex>` where v1 = HMAC-SHA256 of `<t>.<raw body>`;
 * events older (or newer) than the tolerance are refused.
 * @public
 */
export class StripeProvider implements PaymentProvider {
  /** The provider's name in payments and webhooks: `stripe`. */
  readonly name = "stripe";
  private readonly secretKey: string | undefined;
  private readonly webhookSecret: string | undefined;
  private readonly successUrl: string | undefined;
  private readonly cancelUrl: string | undefined;
  private readonly tolerance: number;
  private readonly api: ProviderApi;
  private readonly apiVersion: string;

  /** A Stripe provider with the account's secret key and webhook signing secret. */
  constructor(options: StripeProviderOptions = {}) {
    const env = stripeEnvOptions(typeof process === "undefined" ? {} : process.env);
    this.secretKey = options.secretKey ?? env.secretKey;
    this.webhookSecret = options.webhookSecret ?? env.webhookSecret;
    this.successUrl = options.successUrl ?? env.successUrl;
    this.cancelUrl = options.cancelUrl ?? env.cancelUrl;
    this.tolerance = options.toleranceSeconds ?? 300;
    this.api = new ProviderApi("stripe", "https://api.stripe.com", options);
    this.apiVersion = options.apiVersion ?? STRIPE_API_VERSION;
    // A key without the pages Checkout sends the user back to would fail at the first payment,
    // after the payment was recorded: refuse it now, at startup.
    if (this.secretKey && (!this.successUrl || !this.cancelUrl)) {
      throw new ConfigurationError(
        "[credit-management] [stripe] A secret key is set, but no successUrl and cancelUrl (or APP_BASE_URL): set them.",
      );
    }
  }

  /** False until a secret key (and the return pages) are configured: no checkout can be opened. */
  get opensCheckouts(): boolean {
    return Boolean(this.secretKey && this.successUrl && this.cancelUrl);
  }

  /** False without a secret key: no saved card can be charged (auto top-up). */
  get chargesSaved(): boolean {
    return Boolean(this.secretKey);
  }

  /** Whether webhooks can be received: true once a webhook secret is configured. */
  get receivesWebhooks(): boolean {
    return Boolean(this.webhookSecret);
  }

  /** Creates a Stripe Checkout session for the checkout; resolves to its id and URL. */
  async createCheckout(r: CheckoutRequest): Promise<CheckoutResult> {
    const authorization = this.auth();
    if (!this.successUrl || !this.cancelUrl) {
      throw new ConfigurationError("[credit-management] [stripe] Set successUrl and cancelUrl (or APP_BASE_URL).");
    }
    const withId = (u: string) => `${u}${u.includes("?") ? "&" : "?"}payment_id=${encodeURIComponent(r.paymentId)}`;
    const form = new URLSearchParams({
      mode: "payment",
      "line_items[0][quantity]": "1",
      "line_items[0][price_data][currency]": r.currency.toLowerCase(),
      "line_items[0][price_data][unit_amount]": String(r.amount),
      "line_items[0][price_data][product_data][name]": r.description,
      client_reference_id: r.paymentId,
      "metadata[credit_payment_id]": r.paymentId,
      "metadata[user_id]": r.userId,
      "metadata[credits]": String(r.credits),
      "payment_intent_data[metadata][credit_payment_id]": r.paymentId,
      "payment_intent_data[metadata][user_id]": r.userId,
      success_url: withId(this.successUrl),
      cancel_url: withId(this.cancelUrl),
    });
    const headers: Record<string, string> = {
      authorization,
      "content-type": "application/x-www-form-urlencoded",
      "stripe-version": this.apiVersion,
    };
    if (r.idempotencyKey !== undefined) headers["idempotency-key"] = r.idempotencyKey;
    const res = await this.api.call("/v1/checkout/sessions", { method: "POST", headers, body: form.toString() });
    const id = str(res.id);
    const url = str(res.url);
    if (id === null || url === null)
      throw new PaymentProviderError("[credit-management] [stripe] Checkout Session answer without id or url.");
    return { providerRef: id, url };
  }

  /**
   * Auto top-up: `POST /v1/payment_intents` with `off_session=true` and `confirm=true` for the
   * saved `customer` and `payment_method`, under `Idempotency-Key` (the attempt's id, so a retry
   * gets the first answer back). A 402 is a decline (its `decline_code` or `code`);
   * `authentication_required` and a `requires_action` intent need the customer (3-D Secure).
   */
  async chargeSaved(r: OffSessionChargeRequest): Promise<OffSessionChargeResult> {
    const form = new URLSearchParams({
      amount: String(r.amount),
      currency: r.currency.toLowerCase(),
      customer: r.customer,
      payment_method: r.paymentMethod,
      off_session: "true",
      confirm: "true",
      description: r.description,
      "metadata[credit_payment_id]": r.paymentId,
      "metadata[user_id]": r.userId,
      "metadata[credits]": String(r.credits),
      "metadata[auto_top_up]": "true",
    });
    const { status, body } = await this.api.answer("/v1/payment_intents", {
      method: "POST",
      headers: {
        authorization: this.auth(),
        "content-type": "application/x-www-form-urlencoded",
        "stripe-version": this.apiVersion,
        "idempotency-key": r.idempotencyKey,
      },
      body: form.toString(),
    });
    if (status >= 400) {
      const err = at(body, "error");
      const pi = at(err, "payment_intent");
      const id = str(at(pi, "id"));
      const code = str(at(err, "decline_code")) ?? str(at(err, "code")) ?? `http_${status}`;
      if (code === "authentication_required" || str(at(pi, "status")) === "requires_action") {
        return { status: "requires_action", providerPaymentId: id, code, nextAction: nextAction(pi) };
      }
      return { status: "declined", providerPaymentId: id, code, message: str(at(err, "message")) ?? code };
    }
    const id = str(body.id);
    if (id === null)
      throw new PaymentProviderError("[credit-management] [stripe] PaymentIntent answer without id.", {
        provider: "stripe",
      });
    const st = str(body.status);
    if (st === "succeeded") return { status: "succeeded", providerPaymentId: id };
    if (st === "processing") return { status: "processing", providerPaymentId: id };
    if (st === "requires_action" || st === "requires_confirmation") {
      return { status: "requires_action", providerPaymentId: id, code: st, nextAction: nextAction(body) };
    }
    const last = at(body, "last_payment_error");
    const code = str(at(last, "decline_code")) ?? str(at(last, "code")) ?? st ?? "unknown";
    return { status: "declined", providerPaymentId: id, code, message: str(at(last, "message")) ?? code };
  }

  /** The API's `authorization` header; a `ConfigurationError` without a secret key. */
  private auth(): string {
    if (!this.secretKey)
      throw new ConfigurationError("[credit-management] [stripe] Set secretKey (or STRIPE_SECRET_KEY).");
    return `Bearer ${this.secretKey}`;
  }

  /** `POST /v1/checkout/sessions/:id/expire`: the session can no longer be paid. */
  async cancelCheckout(providerRef: string): Promise<void> {
    await this.api.call(`/v1/checkout/sessions/${encodeURIComponent(providerRef)}/expire`, {
      method: "POST",
      headers: { authorization: this.auth(), "stripe-version": this.apiVersion },
    });
  }

  /**
   * Checks the webhook's signature over the exact bytes received; throws `WebhookRejectedError`
   * when it does not match (or is stale).
   */
  verifyWebhook(rawBody: Uint8Array, headers: HeadersLike, now: Date): void {
    const secret = this.webhookSecret;
    if (!secret) {
      throw new ConfigurationError(
        "[credit-management] [stripe] No webhook secret: set webhookSecret (or STRIPE_WEBHOOK_SECRET). Webhooks are refused without it.",
      );
    }
    const sig = header(headers, "stripe-signature");
    if (sig === undefined) throw new WebhookRejectedError("Stripe-Signature header is missing.", "bad_signature");
    let t: string | undefined;
    const v1: string[] = [];
    for (const part of sig.split(",")) {
      const i = part.indexOf("=");
      const k = part.slice(0, i).trim();
      const v = part.slice(i + 1).trim();
      if (k === "t") t = v;
      else if (k === "v1") v1.push(v);
    }
    const ts = t !== undefined && /^[0-9]{1,12}$/.test(t) ? Number(t) : NaN;
    if (Number.isNaN(ts) || v1.length === 0)
      throw new WebhookRejectedError("Stripe-Signature header is malformed.", "bad_signature");
    const expected = hmacHex(secret, Buffer.concat([Buffer.from(`${t}.`), Buffer.from(rawBody)]));
    // Compare against every v1 (Stripe sends several while a secret is rolled), all in constant time.
    let ok = false;
    for (const s of v1) ok = safeEqualHex(expected, s) || ok;
    if (!ok) throw new WebhookRejectedError("Stripe webhook signature does not match.", "bad_signature");
    if (Math.abs(now.getTime() / 1000 - ts) > this.tolerance) {
      throw new WebhookRejectedError("Stripe webhook timestamp is outside the tolerance.", "stale_signature", {
        toleranceSeconds: this.tolerance,
      });
    }
  }

  /** The payment event a verified webhook body carries; throws `WebhookRejectedError` when it is not an event. */
  parseEvent(rawBody: Uint8Array): PaymentEvent {
    const body = parseJson(rawBody);
    const type = str(body.type) ?? "";
    const o = at(body, "data", "object");
    const meta = at(o, "metadata");
    let kind: PaymentEventKind | null = null;
    let amount: number | null = null;
    let refundedTotal: number | null = null;
    let providerPaymentId: string | null = null;
    const pi = str(at(o, "payment_intent"));
    const providerIds: string[] = [];
    if (type.startsWith("checkout.session.")) {
      const paid = str(at(o, "payment_status")) === "paid";
      if (type === "checkout.session.completed") kind = paid ? "paid" : null;
      else if (type === "checkout.session.async_payment_succeeded") kind = "paid";
      else if (type === "checkout.session.async_payment_failed") kind = "failed";
      else if (type === "checkout.session.expired") kind = "expired";
      amount = int(at(o, "amount_total"));
      providerPaymentId = kind === "paid" ? pi : null;
      for (const id of [str(at(o, "id")), pi]) if (id !== null) providerIds.push(id);
    } else if (type === "payment_intent.succeeded" || type === "payment_intent.payment_failed") {
      // Auto top-ups (off-session PaymentIntents, `metadata.credit_payment_id`); a Checkout
      // payment's intent carries the same metadata and credits under the same key.
      const id = str(at(o, "id"));
      kind = type === "payment_intent.succeeded" ? "paid" : "failed";
      amount = kind === "paid" ? (int(at(o, "amount_received")) ?? int(at(o, "amount"))) : int(at(o, "amount"));
      providerPaymentId = kind === "paid" ? id : null;
      if (id !== null) providerIds.push(id);
    } else if (type === "charge.refunded") {
      kind = "refund";
      amount = int(at(o, "amount"));
      refundedTotal = int(at(o, "amount_refunded"));
      providerPaymentId = pi;
      for (const id of [pi, str(at(o, "id"))]) if (id !== null) providerIds.push(id);
    } else if (type === "charge.dispute.closed") {
      kind = str(at(o, "status")) === "lost" ? "dispute_lost" : null;
      providerPaymentId = pi;
      for (const id of [pi, str(at(o, "charge"))]) if (id !== null) providerIds.push(id);
    }
    return {
      eventId: str(body.id),
      type,
      kind,
      paymentId: str(at(meta, "credit_payment_id")) ?? str(at(o, "client_reference_id")),
      providerIds,
      providerPaymentId,
      userId: str(at(meta, "user_id")),
      amount,
      currency: str(at(o, "currency"))?.toUpperCase() ?? null,
      refundedTotal,
    };
  }
}

/** What a PaymentIntent says the customer must do (`next_action`), or null. */
function nextAction(pi: unknown): Record<string, unknown> | null {
  const n = at(pi, "next_action");
  return typeof n === "object" && n !== null ? (n as Record<string, unknown>) : null;
}

/**
 * @internal What `StripeProvider` takes from an environment when its options leave it out:
 * `STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET`, and the return pages under `APP_BASE_URL` (blank
 * values count as unset). The worker passes its own environment (src/cli/worker.ts).
 */
export function stripeEnvOptions(
  env: Readonly<Record<string, string | undefined>>,
): Pick<StripeProviderOptions, "secretKey" | "webhookSecret" | "successUrl" | "cancelUrl"> {
  const value = (name: string) => env[name]?.trim() || undefined;
  const appBase = value("APP_BASE_URL")?.replace(/\/$/, "");
  return {
    secretKey: value("STRIPE_SECRET_KEY"),
    webhookSecret: value("STRIPE_WEBHOOK_SECRET"),
    successUrl: appBase === undefined ? undefined : `${appBase}/payments/success`,
    cancelUrl: appBase === undefined ? undefined : `${appBase}/payments/cancel`,
  };
}
