import type { Payment } from "../../models-entry.js";
import { checkoutState, mayRecordCheckout } from "./rules-payments.js";
import { ConflictError, NotFoundError } from "../../core/errors.js";
import { warnOnFailure } from "../../core/logger.js";
import type { CheckoutRequest, CheckoutResult, PaymentProvider } from "./provider.js";
import type { BillingDeps } from "./service-units.js";

/**
 * Opening a payment's checkout at its provider, for `PaymentService.createPaymentLink`
 * (docs/promos-and-payments.md): waiting on or taking over another call's claim, asking the
 * provider for a checkout an earlier attempt opened, and discarding a second one. The claim itself
 * (the payment row inserted under its id) is the service's.
 */
export class PaymentCheckouts {
  constructor(
    private readonly deps: BillingDeps,
    private readonly checkoutWaitMs: number,
    private readonly checkoutStaleMs: number,
    /** The payment compare-and-set loop (`PaymentService`'s `advance`). */
    private readonly advance: (
      id: string,
      change: (p: Payment) => Partial<Payment> | null,
      first?: Payment,
    ) => Promise<Payment>,
  ) {}

  /**
   * Waits until the claimed payment has a checkout or moved on (`settled`), or takes the claim over
   * by compare-and-set once it is stale, or when this call found its checkout failed to open (only
   * one caller wins either). A failure that happens while this call waits is the outcome of the
   * attempt it waited for: answered, not retried. Fails with a retryable `ConflictError` when the
   * claimer has not finished within `checkoutWaitMs`.
   */
  async awaitCheckout(first: Payment): Promise<{ settled: boolean; payment: Payment }> {
    const deadline = performance.now() + this.checkoutWaitMs;
    let pause = 5;
    let waited = false;
    for (let cur = first; ;) {
      const now = this.deps.clock();
      const state = checkoutState(cur, now, this.checkoutStaleMs);
      if (state === "settled" || (state === "failed" && waited)) return { settled: true, payment: cur };
      if (state === "stale" || state === "failed") {
        // Back to `created`: the claim of this call (a failed attempt left nothing to keep).
        const taken: Payment = { ...cur, status: "created", version: cur.version + 1, updatedAt: now };
        if (await this.deps.db.updatePayment(taken)) {
          if (state === "stale") {
            this.deps.logger?.warn(
              { paymentId: cur.id, claimedAt: cur.updatedAt.toISOString() },
              "credit-management: createPaymentLink took over a payment whose checkout was never opened",
            );
          } else {
            this.deps.logger?.info(
              { paymentId: cur.id, failedAt: cur.updatedAt.toISOString() },
              "credit-management: createPaymentLink retries a payment whose checkout failed to open",
            );
          }
          return { settled: false, payment: taken };
        }
      } else {
        waited = true;
        const left = deadline - performance.now();
        if (left <= 0) {
          throw new ConflictError(
            `Payment ${cur.id}: a concurrent call with this idempotency key is still opening its checkout; retry shortly.`,
            { paymentId: cur.id, reason: "checkout_in_progress", retryAfterSeconds: 1 },
          );
        }
        await sleep(Math.min(pause, left));
        pause = Math.min(pause * 2, 200);
      }
      const next = await this.deps.db.getPayment(cur.id, cur.userId);
      if (next === null) throw new NotFoundError(`Payment ${cur.id} not found.`, { paymentId: cur.id });
      cur = next;
    }
  }

  /**
   * Opens the checkout of a payment this call has claimed and records it, unless another call
   * recorded one first (then this one is discarded and the recorded payment returned).
   */
  async openCheckout(provider: PaymentProvider, claim: Payment, keyed: boolean, resumed: boolean): Promise<Payment> {
    let checkout: CheckoutResult;
    try {
      checkout = await this.checkout(
        provider,
        {
          paymentId: claim.id,
          userId: claim.userId,
          amount: claim.amount,
          currency: claim.currency,
          credits: claim.credits,
          description: claim.description ?? `${claim.credits} credits`,
          // Not the caller's key: ours are per user, a provider's per merchant account (two users'
          // "buy-1" would collide). The id derived from user and key is unique and stable — the same
          // on a take-over or a retry, so a provider that takes it (Stripe) answers with the same
          // checkout, and one that keys checkouts by our id (Razorpay's reference_id) finds it.
          idempotencyKey: keyed ? claim.id : undefined,
        },
        resumed,
      );
    } catch (error) {
      // Failed only while the claim is still this call's: a call that took it over meanwhile goes on.
      const failed: Payment = { ...claim, status: "failed", version: claim.version + 1, updatedAt: this.deps.clock() };
      if (!(await this.deps.db.updatePayment(failed))) {
        const cur = await this.deps.db.getPayment(claim.id, claim.userId);
        if (cur !== null && cur.checkoutUrl !== null) return cur;
      }
      throw error;
    }
    // Also onto a payment whose later attempt failed meanwhile: this checkout is as good. One that
    // another call recorded a checkout on keeps it, and ours is discarded.
    const recorded = await this.advance(
      claim.id,
      (cur) =>
        mayRecordCheckout(cur)
          ? { status: "created", providerRef: checkout.providerRef, checkoutUrl: checkout.url }
          : null,
      claim,
    );
    if (recorded.providerRef !== checkout.providerRef) await this.discardCheckout(provider, recorded, checkout);
    return recorded;
  }

  /**
   * The provider's checkout for the payment. After a take-over or a retry (`resumed`), a provider
   * that can look checkouts up by our payment id (`findCheckout`) is asked first: a request of an
   * earlier attempt may have opened one whose answer was lost (a crash, a timeout). A failed open is
   * followed by one more look-up: a refusal can mean the checkout exists already (Razorpay refuses a
   * second link with the same reference_id), and a concurrent, slower attempt may have opened it.
   * A look-up that fails before opening fails the attempt: opening blind could make a second checkout.
   */
  private async checkout(
    provider: PaymentProvider,
    request: CheckoutRequest,
    resumed: boolean,
  ): Promise<CheckoutResult> {
    const find = provider.findCheckout?.bind(provider);
    if (find !== undefined && resumed) {
      const found = await find(request);
      if (found !== null) return this.adopted(provider, request, found, "before opening");
    }
    try {
      return await provider.createCheckout(request);
    } catch (error) {
      // A look-up that fails too finds nothing: the provider's own error is the one to throw.
      const found = find === undefined ? null : await find(request).catch(() => null);
      if (found === null) throw error;
      return this.adopted(provider, request, found, `after: ${(error as Error).message}`);
    }
  }

  private adopted(
    provider: PaymentProvider,
    request: CheckoutRequest,
    found: CheckoutResult,
    when: string,
  ): CheckoutResult {
    this.deps.logger?.warn(
      { paymentId: request.paymentId, provider: provider.name, providerRef: found.providerRef, when },
      "credit-management: createPaymentLink found the checkout an earlier attempt had opened, and uses it",
    );
    return found;
  }

  /**
   * A checkout opened for a payment that recorded another one (or moved on) first: it is handed to
   * no one, cancelled at the provider where it can be, and recorded as a ledger event — kept with
   * its id should money ever arrive on it (the webhook still finds the payment by its id).
   */
  private async discardCheckout(provider: PaymentProvider, p: Payment, checkout: CheckoutResult): Promise<void> {
    const details = {
      paymentId: p.id,
      provider: provider.name,
      discardedRef: checkout.providerRef,
      recordedRef: p.providerRef,
      status: p.status,
    };
    let cancelled = false;
    let reason: string | undefined;
    if (provider.cancelCheckout !== undefined) {
      try {
        await provider.cancelCheckout(checkout.providerRef);
        cancelled = true;
      } catch (error) {
        reason = (error as Error).message;
      }
    } else {
      reason = "the provider cannot cancel checkouts";
    }
    this.deps.logger?.warn(
      { ...details, cancelled, reason },
      "credit-management: a second checkout opened for one payment was discarded",
    );
    const context = { userId: p.userId, correlationId: p.id };
    const message = `A second checkout ${checkout.providerRef} of payment ${p.id} (${provider.name}) was not handed out`;
    await (
      cancelled
        ? this.deps.ledger?.logSystem(`${message}; cancelled at the provider`, details, context)
        : this.deps.ledger?.logError(`${message}; NOT cancelled (${reason})`, { ...details, reason }, context)
    )?.catch(warnOnFailure(this.deps.logger, "writing a discarded checkout's ledger event"));
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
