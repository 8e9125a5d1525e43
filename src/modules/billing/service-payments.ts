import { basisOfPrice } from "../../core/domain/cost-basis.js";
import { createHash } from "node:crypto";
import { warnOnFailure, type Logger } from "../../core/logger.js";
import type { Cache } from "../../core/cache/index.js";
import type { DbManager, DbTransaction, LoadedState } from "../../core/db/types.js";
import type { EntryMeta, UnitWork } from "../../core/domain/unit-work.js";
import { fingerprint } from "../../core/domain/hash.js";
import type { Thresholds } from "../../core/domain/notifications.js";
import {
  canAdvancePayment,
  creditsAtRate,
  heldOf,
  isCredited,
  isOtherCheckout,
  newPayment,
  refundedBy,
  reversal,
  takeBackPlan,
} from "./rules-payments.js";
import { webhookChannel, type WebhookMessage } from "./diagnostics.js";
import {
  ConfigurationError,
  ConflictError,
  IdempotencyConflictError,
  NotFoundError,
  ValidationError,
} from "../../core/errors.js";
import { WebhookRejectedError } from "./errors.js";
import type { LedgerLogger } from "../../core/ledger/index.js";
import { newId } from "../../core/util/uuid.js";
import {
  CreatePaymentInput,
  RecordRefundOptions,
  CreditsPerUnit,
  KeyNamespace,
  WaitDuration,
  PaymentHistoryQuery,
  PaymentId,
  UserId,
  parse,
  type AutoTopUpInput,
  type AutoTopUpState,
  type Grant,
  type Payment,
  type PaymentStatus,
} from "../../models-entry.js";
import { parseConfig } from "../../core/models/parse.js";
import { systemKey } from "../../core/domain/keys.js";
import { afterCredited, autoTopUpOf, setAutoTopUpOf } from "./rules-auto-top-up.js";
import type { HeadersLike, PaymentEvent, PaymentProvider } from "./provider.js";
import { billingDeps, runBillingUnit, type BillingDeps, type UnitResult } from "./service-units.js";
import { BILLING, billingTx } from "./store.js";
import { PaymentCheckouts } from "./service-checkouts.js";
import { AutoTopUpService, type AutoTopUpResult } from "./service-auto-top-up.js";
import type { CreditService } from "../../credit-service.js";
import { decodeCursor, encodeCursor } from "./service-promos.js";

export type { AutoTopUpResult } from "./service-auto-top-up.js";

/**
 * Options of `new PaymentService()`: the store, the credit service, the providers, the ledger, the cache, the
 * clock and the logger. @public
 */
export interface PaymentServiceOptions {
  /** The store. */
  db: DbManager;
  /**
   * Runs the account's units of work — pass the one your application uses (as `createCreditManager`
   * does), so its notification thresholds apply to payments too. Default: a
   * `CreditService` over `db` with the `alerts` below.
   */
  credits?: CreditService;
  /**
   * Without `credits`: the thresholds of the `CreditService` built here (`CreditService({ alerts })`),
   * so its changes record notification events (low_credits, credits_exhausted, balance_restored, …)
   * like every other change of the account. Omitted: none are recorded (and a warning is logged the
   * first time it changes an account another service records alerts for). With `credits`: a
   * `ConfigurationError` (that service's own `alerts` apply).
   */
  alerts?: Thresholds;
  /** The providers payments can use, by their `name` ("razorpay", "stripe", …). */
  providers?: readonly PaymentProvider[];
  /**
   * Credits bought per smallest currency unit (1 = one credit per cent/paisa), the same in every
   * currency; or per currency (`{ INR: 1, USD: 85 }`, upper-case ISO-4217 codes), when payments in
   * any other currency are refused with `ValidationError` — use this form when end users pick the
   * currency; or a function of amount (smallest unit) and currency returning the credits. Default 1.
   * Rates give `amount × rate` rounded down (exact decimal products are not lost to floating point).
   */
  creditsPerUnit?: number | Readonly<Record<string, number>> | ((amount: number, currency: string) => number);
  /**
   * How long (milliseconds) a `createPaymentLink` call waits for a concurrent call with the same
   * idempotency key that is opening the payment's checkout, before it fails with a retryable
   * `ConflictError` (`details.reason: "checkout_in_progress"`). Default 10,000.
   */
  checkoutWaitMs?: number;
  /**
   * A payment claimed by a `createPaymentLink` (stored, no checkout yet) this many seconds ago by
   * the clock is presumed abandoned — its caller crashed before the provider answered — and a call
   * with the same key takes it over and opens the checkout. Keep it above the provider's slowest
   * answer. Default 60.
   */
  checkoutStaleSeconds?: number;
  /**
   * Mixed into the payment id derived from a user and an idempotency key — the id the providers see
   * as Razorpay's `reference_id` and Stripe's `Idempotency-Key`. Give each store that shares one
   * provider account its own (e.g. "eu", "us"), so the same user and key in two stores open two
   * checkouts instead of finding each other's. 1–64 characters; default none (ids as before).
   */
  keyNamespace?: string;
  /** The audit ledger; omit for none. */
  ledger?: LedgerLogger;
  /** Caches payment reads. Never consulted for a decision that moves credits. */
  cache?: Cache;
  /** Source of "now". Default `() => new Date()`. */
  clock?: () => Date;
  /** Where warnings and errors are logged. Default: none. */
  logger?: Logger;
}

/** What `handleWebhook` did. Any of these is answered with HTTP 200. @public */
export interface WebhookResult {
  /**
   * credited: a paid payment was credited; reversed: refund/lost dispute took credits back;
   * updated: the status moved forward; duplicate: already done (a redelivery); unchanged: the
   * event would move the status back, so it was ignored; ignored: not an event or payment we track,
   * or a refund/dispute of another provider payment than the one credited (e.g. another attempt).
   */
  outcome: "credited" | "reversed" | "updated" | "duplicate" | "unchanged" | "ignored";
  /** The provider's event type, as it named it. */
  eventType: string;
  /** The payment the event was about; null when it matched none. */
  paymentId: string | null;
  /** The payment's status after the event; null when it matched none. */
  status: PaymentStatus | null;
  /** Why the event was ignored, when it was. */
  reason?: string;
}

/** A page of payments, newest first. @public */
export interface PaymentPage {
  /** The payments of this page, newest first. */
  items: Payment[];
  /** Pass as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}

/**
 * Payment top-ups: opens a checkout at a provider, stores a pending payment with the credits it
 * will buy, and applies the provider's signed webhooks: each paid payment is credited exactly once
 * (in the same unit of work that marks it paid), statuses only move forward, and refunds or lost
 * disputes take the credits back.
 * @public
 */
export class PaymentService {
  private readonly deps: BillingDeps;
  private readonly providers = new Map<string, PaymentProvider>();
  private readonly creditsFor: (amount: number, currency: string) => number;
  /** The currencies payments may be made in (from a per-currency `creditsPerUnit`); null: any. */
  private readonly rates: ReadonlyMap<string, number> | null = null;
  private readonly checkoutWaitMs: number;
  private readonly checkoutStaleMs: number;
  /** `keyNamespace` with its separator, or "" (see `PaymentServiceOptions.keyNamespace`). */
  private readonly keyPrefix: string;
  private readonly autoTopUps: AutoTopUpService;
  private readonly checkouts: PaymentCheckouts;

  /** A payment service over `options.db`; `createCreditManager` builds one with its `payments` option. */
  constructor(options: PaymentServiceOptions) {
    this.deps = billingDeps(options, "PaymentService");
    for (const p of options.providers ?? []) this.providers.set(p.name, p);
    this.checkoutWaitMs = parseConfig(WaitDuration, options.checkoutWaitMs ?? 10_000, "checkoutWaitMs");
    this.checkoutStaleMs = parseConfig(WaitDuration, options.checkoutStaleSeconds ?? 60, "checkoutStaleSeconds") * 1000;
    const ns =
      options.keyNamespace === undefined ? undefined : parseConfig(KeyNamespace, options.keyNamespace, "keyNamespace");
    this.keyPrefix = ns === undefined ? "" : `${ns}\u0000`;
    const c = parseConfig(CreditsPerUnit, options.creditsPerUnit ?? 1, "creditsPerUnit");
    if (typeof c === "function") {
      this.creditsFor = c;
    } else if (typeof c === "number") {
      this.creditsFor = (amount) => creditsAtRate(amount, c);
    } else {
      const rates = new Map(Object.entries(c));
      this.rates = rates;
      this.creditsFor = (amount, currency) => creditsAtRate(amount, rates.get(currency) as number);
    }
    this.checkouts = new PaymentCheckouts(this.deps, this.checkoutWaitMs, this.checkoutStaleMs, (id, change, first) =>
      this.advance(id, change, first),
    );
    this.autoTopUps = new AutoTopUpService(this.deps, {
      provider: (name) => this.provider(name),
      acceptedCurrency: (currency) => this.acceptedCurrency(currency),
      rates: this.rates,
      creditsFor: (amount, currency) => this.creditsFor(amount, currency),
      creditPaid: (provider, payment, event) => this.credit(provider, payment, event, resultOf(event.type)),
      advance: (id, change, first) => this.advance(id, change, first),
    });
  }

  /** Registers (or replaces) a provider. */
  addProvider(provider: PaymentProvider): void {
    this.providers.set(provider.name, provider);
  }

  /**
   * Opens a checkout at the provider and stores the payment as `created` with its credits.
   * Resolves to the payment, whose `checkoutUrl` is where to send the user. With an
   * `idempotencyKey`, a repeated call returns the same payment (the same arguments) or fails with
   * `IdempotencyConflictError` (other arguments); the key also goes to the provider where it takes one.
   *
   * One checkout per payment: the payment row, inserted under its unique id before the provider is
   * called, is the claim. A call with the same key that finds it still without a checkout waits for
   * it (up to `checkoutWaitMs`, then a retryable `ConflictError`), or takes it over once it is older
   * than `checkoutStaleSeconds` (its first caller crashed). A call with the same key that finds it
   * `failed` to open its checkout (see `mayReopenCheckout`) takes it over and tries again; calls
   * already waiting on the failed attempt answer with its outcome. A take-over asks the provider for
   * the checkout an earlier attempt may have opened (same idempotency key; `findCheckout`) before
   * opening one. Should two checkouts still be opened (a provider slower than
   * `checkoutStaleSeconds`), the first recorded is the payment's; the other is handed to no one and
   * cancelled at the provider where it can be.
   */
  async createPaymentLink(userId: string, input: CreatePaymentInput): Promise<Payment> {
    const user = parse(UserId, userId, "userId");
    const i = parse(CreatePaymentInput, input, "input");
    const provider = this.provider(i.provider);
    if (provider.opensCheckouts === false) {
      // Refused before anything is recorded: no `failed` payment in the user's history.
      throw new ConfigurationError(
        `[credit-management] [${provider.name}] is not configured to open checkouts (API keys, return pages).`,
      );
    }
    this.acceptedCurrency(i.currency);
    const credits = this.creditsFor(i.amount, i.currency);
    if (!Number.isSafeInteger(credits) || credits < 1) {
      throw new ValidationError(`Invalid input.amount: ${i.amount} ${i.currency} buys no whole credit`, [
        { path: "amount", message: "buys no whole credit" },
      ]);
    }
    const now = this.deps.clock();
    const description = i.description ?? `${credits} credits`;
    // With a key, the id is derived from it: the store's unique id makes a repeated call find the first.
    // 40 characters at most (148 bits of the hash): Razorpay takes it as the link's `reference_id`,
    // which it limits to 40.
    const id =
      i.idempotencyKey === undefined
        ? newId()
        : `pl_${createHash("sha256").update(`${this.keyPrefix}${user}\u0000${i.idempotencyKey}`).digest("hex").slice(0, 37)}`;
    let claim = newPayment(
      {
        id,
        userId: user,
        provider: provider.name,
        amount: i.amount,
        currency: i.currency,
        credits,
        description,
        metadata: i.metadata ?? null,
      },
      now,
    );
    // Stored before the provider hears of it: a webhook for this checkout always finds its payment,
    // and the insert is the claim only one caller wins (the store's unique id, across processes).
    // `resumed`: this call took over a payment an earlier attempt may have opened a checkout for.
    let resumed = false;
    try {
      await this.deps.db.insertPayment(claim);
    } catch (error) {
      if (!(error instanceof ConflictError) || i.idempotencyKey === undefined) throw error;
      const first = await this.deps.db.getPayment(id, user);
      if (first === null || first.userId !== user) throw error;
      // Every argument counts (metadata compared key-order-free: a store may reorder JSON keys).
      const same =
        first.provider === provider.name &&
        first.amount === i.amount &&
        first.currency === i.currency &&
        first.description === description &&
        fingerprint("metadata", first.metadata) === fingerprint("metadata", claim.metadata);
      if (!same) throw new IdempotencyConflictError(i.idempotencyKey);
      // The first call got as far as a checkout (or the provider moved the payment on): answer with
      // it. Else wait for it, or take over its abandoned claim or its failed attempt.
      const outcome = await this.checkouts.awaitCheckout(first);
      if (outcome.settled) return outcome.payment;
      claim = outcome.payment;
      resumed = true;
    }
    return this.checkouts.openCheckout(provider, claim, i.idempotencyKey !== undefined, resumed);
  }

  /** The providers whose webhooks can be received (a webhook secret is configured). */
  webhookProviders(): string[] {
    return [...this.providers.values()].filter((p) => p.receivesWebhooks !== false).map((p) => p.name);
  }

  /**
   * The providers that can charge a saved method off-session now (`chargeSaved`, and configured
   * for it: `chargesSaved` not false): the ones an auto top-up can be charged through.
   */
  chargingProviders(): string[] {
    return [...this.providers.values()]
      .filter((p) => p.chargeSaved !== undefined && p.chargesSaved !== false)
      .map((p) => p.name);
  }

  /**
   * Applies a provider's webhook. `rawBody` must be the exact bytes received (the signature covers
   * them). Throws `WebhookRejectedError` (HTTP 400, nothing changed) on a bad or stale signature or
   * an event that contradicts the stored payment, `ConfigurationError` without a webhook secret,
   * `NotFoundError` for an unknown provider.
   */
  async handleWebhook(
    providerName: string,
    rawBody: Uint8Array | string,
    headers: HeadersLike,
  ): Promise<WebhookResult> {
    const provider = this.providers.get(providerName);
    // A provider without a webhook secret cannot check a signature: it answers as one never
    // configured (404), not a configuration error (500) that any anonymous request could cause.
    if (provider === undefined || provider.receivesWebhooks === false) {
      throw new NotFoundError(`No payment provider "${providerName}" receives webhooks here.`, {
        provider: providerName,
      });
    }
    const raw = typeof rawBody === "string" ? Buffer.from(rawBody, "utf8") : rawBody;
    const started = performance.now();
    const publish = (outcome: WebhookMessage["outcome"], eventType: string | null) => {
      if (webhookChannel.hasSubscribers) {
        const durationMs = performance.now() - started;
        webhookChannel.publish({ provider: provider.name, outcome, eventType, durationMs } satisfies WebhookMessage);
      }
    };
    try {
      const result = await this.applyWebhook(provider, raw, headers);
      publish(result.outcome, result.eventType);
      return result;
    } catch (error) {
      publish(error instanceof WebhookRejectedError ? "rejected" : "failed", null);
      if (error instanceof WebhookRejectedError) {
        // Refused webhooks are security-relevant: kept as ledger error events (never fatal).
        await this.deps.ledger
          ?.logError(`Webhook from ${provider.name} rejected: ${error.message}`, {
            provider: provider.name,
            ...error.details,
          })
          .catch(warnOnFailure(this.deps.logger, "writing the rejected webhook's ledger event"));
      }
      throw error;
    }
  }

  private async applyWebhook(provider: PaymentProvider, raw: Uint8Array, headers: HeadersLike): Promise<WebhookResult> {
    provider.verifyWebhook(raw, headers, this.deps.clock());
    const event = provider.parseEvent(raw);
    const result = resultOf(event.type);
    if (event.kind === null) return result("ignored", null, "event type not handled");
    const payment = await this.findPayment(provider.name, event);
    if (payment === null) return result("ignored", null, "no payment of ours");
    this.assertConsistent(payment, event);

    if ((event.kind === "expired" || event.kind === "cancelled") && isOtherCheckout(payment, event.providerIds)) {
      // The end of a checkout that was never the payment's: a second one opened by a slow or
      // taken-over attempt and then cancelled (or left to expire). The recorded checkout is open.
      return result("ignored", payment, "event for another checkout than the payment's");
    }
    switch (event.kind) {
      case "authorized":
      case "failed":
      case "expired":
      case "cancelled": {
        const to = event.kind;
        let moved = false;
        const p = await this.advance(payment.id, (cur) => {
          if (!canAdvancePayment(cur.status, to)) return null;
          moved = true;
          return { status: to };
        });
        return result(moved ? "updated" : "unchanged", p);
      }
      case "paid":
        return this.credit(provider.name, payment, event, result);
      case "refund":
      case "dispute_lost":
        return this.reverse(provider.name, payment, event, result);
    }
  }

  /**
   * Records a refund made outside a webhook — an operator who refunded at the provider's dashboard,
   * or the console's refund action (docs/console.md): as a `refund` webhook with `refundedTotal`
   * (cumulative, smallest unit; default the whole amount) would, it takes back the credits it
   * covers, once per total (a repeat changes nothing). `by` names who did it: it is written into the
   * journal entry's description and metadata (`refundedBy`). Only a paid or partly refunded
   * payment can be refunded (`ValidationError` otherwise).
   */
  async recordRefund(userId: string, paymentId: string, options: RecordRefundOptions = {}): Promise<WebhookResult> {
    const o = parse(RecordRefundOptions, options, "options");
    const p = await this.getPayment(userId, paymentId);
    const total = o.refundedTotal ?? p.amount;
    if (total > p.amount) {
      throw new ValidationError(`Invalid refundedTotal: must be a whole number from 1 to ${p.amount}`, [
        { path: "refundedTotal", message: "out of range" },
      ]);
    }
    // Already refunded that far (a repeated form, a webhook that came first): nothing to do.
    if ((p.status === "refunded" || p.status === "partially_refunded") && p.refundedAmount >= total)
      return { outcome: "duplicate", eventType: "manual.refund", paymentId: p.id, status: p.status };
    if (p.status !== "paid" && p.status !== "partially_refunded") {
      throw new ValidationError(`Payment ${p.id} is ${p.status}: only a paid payment can be refunded`, [
        { path: "paymentId", message: `status ${p.status}` },
      ]);
    }
    const by = o.by;
    const event: PaymentEvent = {
      eventId: null,
      type: "manual.refund",
      kind: "refund",
      paymentId: p.id,
      providerIds: [],
      providerPaymentId: null,
      userId: p.userId,
      amount: p.amount,
      currency: p.currency,
      refundedTotal: total,
    };
    const result = resultOf(event.type);
    return this.reverse(p.provider, p, event, result, by);
  }

  /** A payment of `userId` (`NotFoundError` for another user's, as for a missing one). */
  async getPayment(userId: string, paymentId: string): Promise<Payment> {
    const user = parse(UserId, userId, "userId");
    const id = parse(PaymentId, paymentId, "paymentId");
    const p = await this.deps.db.getPayment(id, user);
    if (p === null || p.userId !== user) throw new NotFoundError(`Payment ${id} not found.`, { paymentId: id });
    return p;
  }

  /** A user's payments, newest first, with cursor paging (limit 1–100, default 20). */
  async getPaymentHistory(userId: string, query: PaymentHistoryQuery = {}): Promise<PaymentPage> {
    const user = parse(UserId, userId, "userId");
    const q = parse(PaymentHistoryQuery, query, "query");
    const limit = q.limit ?? 20;
    const c = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    const rows = await this.deps.db.listPayments(user, {
      limit: limit + 1,
      before: c && { createdAt: c.at, id: c.id },
    });
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? encodeCursor(last.createdAt, last.id) : null };
  }

  // Auto top-up (docs/promos-and-payments.md, "Auto top-up"): src/modules/billing/service-auto-top-up.ts

  /**
   * Sets (or replaces) the account's auto top-up rule: a spend that takes its available credits
   * below `below` asks for a top-up, which `processAutoTopUp` (the worker) charges to the saved
   * method. Enables the rule and forgets earlier declines; a top-up in flight and the month's count
   * are kept. The provider must be configured and able to charge off-session (`chargeSaved`), the
   * currency accepted (`ValidationError` otherwise, nothing changed). Resolves to the stored state.
   */
  setAutoTopUp(userId: string, input: AutoTopUpInput): Promise<AutoTopUpState> {
    return this.autoTopUps.setAutoTopUp(userId, input);
  }

  /** The account's auto top-up rule and state, or null when it has none. */
  getAutoTopUp(userId: string): Promise<AutoTopUpState | null> {
    return this.autoTopUps.getAutoTopUp(userId);
  }

  /**
   * Disables the account's auto top-up (kept, so `getAutoTopUp` still shows it; `setAutoTopUp`
   * enables it again). A top-up already in flight still completes. Resolves to the state, or null
   * when there is no rule.
   */
  disableAutoTopUp(userId: string): Promise<AutoTopUpState | null> {
    return this.autoTopUps.disableAutoTopUp(userId);
  }

  /**
   * Charges the account's top-up in flight (`attemptId`: only that one) off-session and credits it
   * when the provider says it succeeded — through the same idempotent path as the webhooks, so the
   * answer and a `payment_intent.succeeded` webhook credit once. The provider's idempotency key is
   * the attempt's id: a retry (after a time-out, a 5xx, a crash before the credit) finds the first
   * charge. A decline marks the payment failed, keeps the provider's code (the rule's `lastError`) and sends `auto_top_up_failed`
   * (and `auto_top_up_disabled` at the rule's `maxFailures`-th consecutive decline); a charge that
   * needs the customer sends `auto_top_up_action_required`. Errors that may pass
   * (`PaymentProviderError`: time-outs, 5xx, 429) are thrown, the top-up still in flight: call
   * again later (the worker retries with backoff).
   */
  processAutoTopUp(userId: string, attemptId?: string): Promise<AutoTopUpResult> {
    return this.autoTopUps.processAutoTopUp(userId, attemptId);
  }

  /** Refuses a currency a per-currency `creditsPerUnit` does not price. */
  private acceptedCurrency(currency: string): void {
    if (this.rates !== null && !this.rates.has(currency)) {
      throw new ValidationError(`Invalid input.currency: "${currency}" is not accepted`, [
        { path: "currency", message: `accepted: ${[...this.rates.keys()].join(", ")}` },
      ]);
    }
  }

  // -----------------------------------------------------------------------------------------------

  private provider(name: string): PaymentProvider {
    const p = this.providers.get(name);
    if (p === undefined) {
      throw new ValidationError(`Invalid input.provider: "${name}" is not configured`, [
        { path: "provider", message: `configured: ${[...this.providers.keys()].join(", ") || "none"}` },
      ]);
    }
    return p;
  }

  private async findPayment(provider: string, event: PaymentEvent): Promise<Payment | null> {
    if (event.paymentId !== null) {
      const p = await this.deps.db.getPayment(event.paymentId);
      if (p !== null && p.provider === provider) return p;
    }
    for (const id of event.providerIds) {
      const p = await this.deps.db.findPaymentByProviderId(provider, id);
      if (p !== null) return p;
    }
    return null;
  }

  /**
   * Refuses an event that names another user, amount or currency than the stored payment, or a paid
   * event for another provider payment than the one credited. (A refund or dispute of another
   * attempt is not a contradiction: `reverse` ignores it.)
   */
  private assertConsistent(p: Payment, e: PaymentEvent): void {
    const refuse = (what: string) => {
      this.deps.logger?.warn(
        { paymentId: p.id, eventType: e.type, what },
        "credit-management: webhook contradicts the stored payment",
      );
      return new WebhookRejectedError(
        `Webhook event ${e.type} does not match payment ${p.id} (${what}).`,
        `${what}_mismatch`,
        {
          paymentId: p.id,
        },
      );
    };
    if (e.userId !== null && e.userId !== p.userId) throw refuse("user");
    if (e.amount !== null && e.amount !== p.amount) throw refuse("amount");
    if (e.currency !== null && e.currency !== p.currency) throw refuse("currency");
    if (e.kind !== "refund" && e.kind !== "dispute_lost" && otherAttempt(p, e)) throw refuse("provider_payment");
  }

  /**
   * Credits a paid payment: one unit of work on its user's account that adds the grant (source
   * `payment`, sourceRef and idempotency key from the provider's payment id) and marks the payment
   * paid with a compare-and-set — so concurrent or repeated deliveries credit once.
   */
  private async credit(
    provider: string,
    payment: Payment,
    event: PaymentEvent,
    result: WebhookAnswer,
  ): Promise<WebhookResult> {
    const ref = event.providerPaymentId ?? payment.providerRef ?? payment.id;
    const meta: EntryMeta = {
      idempotencyKey: systemKey(`payment:${provider}:${ref}`),
      fingerprint: fingerprint("payment", { paymentId: payment.id }),
      correlationId: payment.id,
      description: `Payment ${payment.id} (${provider})`,
      // The grant's payment (docs/revenue.md, "Payments"): revenue reads this field, never the metadata.
      paymentId: payment.id,
      metadata: { paymentId: payment.id, provider },
    };
    return this.paymentUnit("creditPayment", payment, meta, result, async (p, work) => {
      if (isCredited(p.status)) return { value: result("duplicate", p) };
      const entry = work.add(
        p.credits,
        {
          expiresAt: null,
          priority: 0,
          source: "payment",
          sourceRef: ref,
          description: meta.description ?? null,
          metadata: null,
          // What the credits were sold for: the amount paid over the credits (docs/revenue.md).
          costBasis: p.credits > 0 ? basisOfPrice(p.amount, p.credits, p.currency) : null,
        },
        meta,
      );
      // An auto top-up credited (synchronously or by the webhook): no longer in flight.
      const topUp = autoTopUpOf(work.account);
      if (topUp?.pending?.id === p.id) setAutoTopUpOf(work.account, afterCredited(topUp, p.id));
      const next: Payment = {
        ...p,
        status: "paid",
        providerPaymentId: event.providerPaymentId ?? p.providerPaymentId,
        grantId: entry.grants[0]?.grantId ?? null,
        creditEntryId: entry.id,
        version: p.version + 1,
        updatedAt: work.now,
      };
      return { value: result("credited", next), extra: { [BILLING]: { paymentUpdates: [next] } } };
    });
  }

  /**
   * A refund (cumulative `refundedTotal`) or a lost dispute: takes back the credits it covers. A
   * full reversal voids what is left of the payment's grant and deducts the part already spent
   * (overdraft allowed: it becomes debt, in the journal); a partial refund deducts its share. The
   * payment's `creditsReversed` and compare-and-set make redeliveries change nothing.
   */
  private async reverse(
    provider: string,
    payment: Payment,
    event: PaymentEvent,
    result: WebhookAnswer,
    by?: string,
  ): Promise<WebhookResult> {
    const dispute = event.kind === "dispute_lost";
    if (!dispute && event.refundedTotal === null) {
      throw new WebhookRejectedError(`Refund event ${event.type} carries no refunded amount.`, "malformed");
    }
    const refunded = refundedBy(payment.amount, { dispute, refundedTotal: event.refundedTotal });
    const key = systemKey(
      dispute ? `dispute:${provider}:${payment.id}` : `refund:${provider}:${payment.id}:${refunded}`,
    );
    const meta: EntryMeta = {
      idempotencyKey: key,
      fingerprint: fingerprint("reversePayment", { paymentId: payment.id, refunded, dispute }),
      correlationId: payment.id,
      description: `${dispute ? "Lost dispute" : "Refund"} of payment ${payment.id} (${provider})${by === undefined ? "" : ` by ${by}`}`,
      // What the entries are (usage reports, revenue and reverseCharge read it), never decided from
      // the metadata or the description.
      takeBack: dispute ? "clawback" : "refund",
      paymentId: payment.id,
      metadata: {
        paymentId: payment.id,
        provider,
        refundedAmount: refunded,
        ...(by === undefined ? {} : { refundedBy: by }),
      },
    };
    const operation = dispute ? "reverseDispute" : "reverseRefund";
    return this.paymentUnit(operation, payment, meta, result, async (p, work, tx, state) => {
      // A refund or dispute of another attempt at this payment (e.g. Razorpay auto-refunding an
      // authorized, never captured one): not the money that was credited. Checked here, under
      // the account's lock, so a concurrent paid event cannot slip in between.
      if (otherAttempt(p, event)) {
        this.deps.logger?.warn(
          {
            paymentId: p.id,
            eventType: event.type,
            providerPaymentId: event.providerPaymentId,
            credited: p.providerPaymentId,
          },
          "credit-management: refund or dispute of another payment attempt ignored",
        );
        return { value: result("ignored", p, "refund or dispute of another payment attempt") };
      }
      const r = reversal(p, dispute, refunded);
      if (r.outcome !== "apply") return { value: result(r.outcome, p) };
      if (r.takeBack > 0) await this.takeBack(work, tx, state, p, r.takeBack, meta);
      const next: Payment = {
        ...p,
        status: r.status,
        refundedAmount: r.refundedAmount,
        creditsReversed: p.creditsReversed + r.takeBack,
        version: p.version + 1,
        updatedAt: work.now,
      };
      return {
        value: result(r.takeBack > 0 ? "reversed" : "updated", next),
        extra: { [BILLING]: { paymentUpdates: [next] } },
      };
    });
  }

  /**
   * One unit of work on `payment`'s account that changes the payment: `body` gets it as the unit
   * reads it. Rerun when it loses the payment's compare-and-set (`retryOnConflict`); a repeated key
   * answers "duplicate" with the payment as it is.
   */
  private paymentUnit(
    operation: string,
    payment: Payment,
    meta: EntryMeta,
    result: WebhookAnswer,
    body: (p: Payment, work: UnitWork, tx: DbTransaction, state: LoadedState) => Promise<UnitResult<WebhookResult>>,
  ): Promise<WebhookResult> {
    return retryOnConflict(() =>
      runBillingUnit(
        this.deps,
        operation,
        payment.userId,
        meta,
        async (work, tx, state) => {
          const p = await billingTx(tx, this.deps.db.name).getPayment(payment.id);
          if (p === null) throw new NotFoundError(`Payment ${payment.id} not found.`, { paymentId: payment.id });
          return body(p, work, tx, state);
        },
        // Inside the transaction: read through `tx` (a pool read here could wait for a connection
        // that units of work like this one hold).
        async (_entry, tx) => result("duplicate", await billingTx(tx, this.deps.db.name).getPayment(payment.id)),
      ),
    );
  }

  /**
   * Takes `k` credits of payment `p` back, as `takeBackPlan` (src/modules/billing/rules-payments.ts) decides:
   * voiding the rest of its grant and deducting what was spent, or deducting all of `k`.
   */
  private async takeBack(
    work: UnitWork,
    tx: DbTransaction,
    state: LoadedState,
    p: Payment,
    k: number,
    meta: EntryMeta,
  ): Promise<void> {
    let first = true;
    const next = (): EntryMeta => {
      const m = first ? meta : { ...meta, idempotencyKey: undefined, fingerprint: undefined };
      first = false;
      return m;
    };
    let g: Grant | undefined;
    if (p.grantId !== null) {
      const grant = work.getGrant(p.grantId) ?? (await tx.getGrants([p.grantId]))[0];
      if (grant !== undefined) {
        work.include([grant]);
        g = work.getGrant(grant.id) ?? grant;
      }
    }
    // The holds as this work has them: settlement may just have released one (heldOf counts only
    // active holds).
    const holds = state.reservations.map((r) => work.getHold(r.id) ?? r);
    const plan = takeBackPlan(k, g ?? null, g === undefined ? 0 : heldOf(holds, g.id));
    if (plan.voidGrant) work.voidGrant(g as Grant, next());
    if (plan.deduct > 0) work.deduct(plan.deduct, next(), { allowDebt: true, overdraftLimit: null });
  }

  /**
   * Compare-and-set loop on a payment outside any account: `change` returns the fields, or null for
   * none. `first`: the payment as the caller has it (tried before reading it again).
   */
  private async advance(
    id: string,
    change: (p: Payment) => Partial<Payment> | null,
    first?: Payment,
  ): Promise<Payment> {
    // Keyed by the owner once it is known (docs/scaling-out.md); a payment never changes user.
    let owner = first?.userId;
    for (let known = first; ; known = undefined) {
      const cur = known ?? (await this.deps.db.getPayment(id, owner));
      owner = cur?.userId ?? owner;
      if (cur === null) throw new NotFoundError(`Payment ${id} not found.`, { paymentId: id });
      const patch = change(cur);
      if (patch === null) return cur;
      const next: Payment = { ...cur, ...patch, version: cur.version + 1, updatedAt: this.deps.clock() };
      if (await this.deps.db.updatePayment(next)) return next;
    }
  }
}

/** Answers a webhook (or a manual refund) with its outcome, payment and status. */
type WebhookAnswer = (outcome: WebhookResult["outcome"], p: Payment | null, reason?: string) => WebhookResult;

/** The answer to a webhook (or a manual refund) of type `eventType`. */
function resultOf(eventType: string): WebhookAnswer {
  return (outcome, p, reason) => ({
    outcome,
    eventType,
    paymentId: p?.id ?? null,
    status: p?.status ?? null,
    ...(reason === undefined ? {} : { reason }),
  });
}

/** The event names another provider payment than the one the payment was credited with. */
function otherAttempt(p: Payment, e: PaymentEvent): boolean {
  return e.providerPaymentId !== null && p.providerPaymentId !== null && e.providerPaymentId !== p.providerPaymentId;
}

/**
 * Reruns a unit of work that lost a compare-and-set on its payment to a concurrent status update
 * (which runs outside the account's lock): the rerun reads the payment again and decides anew.
 */
async function retryOnConflict<T>(run: () => Promise<T>, attempts = 8): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await run();
    } catch (error) {
      if (!(error instanceof ConflictError) || i >= attempts) throw error;
    }
  }
}
