import type { Grant, Payment, PaymentStatus, Reservation } from "../../models-entry.js";

/** What a new payment is made of; the rest starts empty. */
export type NewPayment = Pick<
  Payment,
  "id" | "userId" | "provider" | "amount" | "currency" | "credits" | "description" | "metadata"
>;

/** A payment as the store keeps it, just created at `now` (no checkout yet, nothing credited). */
export function newPayment(f: NewPayment, now: Date): Payment {
  return {
    id: f.id,
    userId: f.userId,
    provider: f.provider,
    providerRef: null,
    providerPaymentId: null,
    amount: f.amount,
    currency: f.currency,
    credits: f.credits,
    status: "created",
    checkoutUrl: null,
    description: f.description,
    grantId: null,
    creditEntryId: null,
    refundedAmount: 0,
    creditsReversed: 0,
    metadata: f.metadata,
    version: 1,
    createdAt: now,
    updatedAt: now,
  };
}

/**
 * Order of payment statuses: a payment moves only to a higher rank. Failed, expired and cancelled
 * rank below paid, so money that arrives after them is still credited; nothing moves a payment
 * back from paid, and refunded / disputed_lost are final.
 */
const RANK: Record<PaymentStatus, number> = {
  created: 0,
  failed: 1,
  authorized: 2,
  expired: 3,
  cancelled: 3,
  paid: 4,
  partially_refunded: 5,
  refunded: 6,
  disputed_lost: 6,
};

/** Whether a payment in `from` may move to `to` (partially_refunded → itself: a further partial refund). */
export function canAdvancePayment(from: PaymentStatus, to: PaymentStatus): boolean {
  if (from === "partially_refunded" && to === "partially_refunded") return true;
  return RANK[to] > RANK[from];
}

/** True once the payment's credits were added (paid, or later states that follow paid). */
export const isCredited = (s: PaymentStatus): boolean => RANK[s] >= RANK.paid;

/**
 * Credits to take back after a refund of `refundedTotal` (cumulative, currency units) of a payment
 * of `amount` that bought `credits`, of which `alreadyReversed` were taken back: proportional,
 * rounded up (a partial refund never leaves the user a fraction of a credit they did not pay for),
 * all of them when fully refunded.
 */
export function creditsToReverse(
  amount: number,
  credits: number,
  refundedTotal: number,
  alreadyReversed: number,
): number {
  const target = refundedTotal >= amount ? credits : Math.min(credits, Math.ceil((credits * refundedTotal) / amount));
  return Math.max(0, target - alreadyReversed);
}

/**
 * The credits a payment of `amount` (smallest currency unit) buys at `rate` credits per unit
 * (docs/promos-and-payments.md): `amount × rate` rounded down to whole credits, without binary
 * floating point short-changing exact products — 100 × 0.29 is 28.999999999999996 in doubles,
 * and is 29 credits. A product within 2 × `Number.EPSILON` (relative) of an integer — the
 * rounding error of the rate and of the multiplication — snaps to it; anything else is floored.
 */
export function creditsAtRate(amount: number, rate: number): number {
  const x = amount * rate;
  const nearest = Math.round(x);
  return Math.abs(x - nearest) <= Math.abs(x) * 2 * Number.EPSILON ? nearest : Math.floor(x);
}

/**
 * The refunded amount a reversal event stands for, at most the payment's `amount`: all of it for a
 * lost dispute, else the event's cumulative `refundedTotal`.
 */
export function refundedBy(amount: number, event: { dispute: boolean; refundedTotal: number | null }): number {
  return event.dispute ? amount : Math.min(event.refundedTotal ?? 0, amount);
}

/**
 * What a refund (cumulative, `refunded` by `refundedBy`) or a lost dispute does to payment `p`
 * (docs/promos-and-payments.md, "Refunds and lost disputes take the credits back"): nothing when
 * the status cannot move forward or a refund does not refund more than before — a redelivery of
 * the status it is in (`duplicate`) or an older event (`unchanged`); else its new status and
 * refunded amount, and the credits to take back: none before the payment was credited (a late
 * paid event then credits nothing), all not yet reversed on a lost dispute, a refund's share
 * rounded up (`creditsToReverse`).
 */
export function reversal(
  p: Payment,
  dispute: boolean,
  refunded: number,
):
  | { outcome: "duplicate" | "unchanged" }
  | { outcome: "apply"; status: PaymentStatus; refundedAmount: number; takeBack: number } {
  const status: PaymentStatus = dispute ? "disputed_lost" : refunded >= p.amount ? "refunded" : "partially_refunded";
  if (!canAdvancePayment(p.status, status) || (!dispute && refunded <= p.refundedAmount)) {
    return { outcome: p.status === status ? "duplicate" : "unchanged" };
  }
  // Credited means its credits were added (`creditEntryId`), not a status past paid: a payment
  // refunded before it was credited is partially_refunded, and credits nothing later.
  const takeBack =
    !isCredited(p.status) || p.creditEntryId === null
      ? 0
      : dispute
        ? p.credits - p.creditsReversed
        : creditsToReverse(p.amount, p.credits, refunded, p.creditsReversed);
  return { outcome: "apply", status, refundedAmount: dispute ? p.refundedAmount : refunded, takeBack };
}

/**
 * How `k` credits of a refunded or disputed payment are taken back from its grant (`grant`: null
 * when there is none or it is unknown), `held` of which active holds still hold. When the grant is
 * open with credits and its rest — what it has plus what is held of it — is no more than `k`, the
 * rest is voided (`voidGrant`; held credits are voided when their hold ends) and the remainder,
 * already spent, is deducted after the fact; otherwise all `k` are deducted. Deductions may go
 * into debt (docs/concepts.md, "Overdraft and debt").
 */
export function takeBackPlan(
  k: number,
  grant: Pick<Grant, "closedAt" | "remaining"> | null,
  held: number,
): { voidGrant: boolean; deduct: number } {
  if (grant !== null && grant.closedAt === null && grant.remaining > 0 && grant.remaining + held <= k) {
    return { voidGrant: true, deduct: k - grant.remaining - held };
  }
  return { voidGrant: false, deduct: k };
}

/**
 * What the active ones of `holds` hold of grant `grantId`. A hold that ended — even in the unit of
 * work asking, whose settlement may just have released it — gave its credits back to the grant (or
 * spent them), so it holds nothing (docs/promos-and-payments.md).
 */
export function heldOf(holds: readonly Pick<Reservation, "allocations" | "status">[], grantId: string): number {
  let held = 0;
  for (const r of holds) {
    if (r.status !== "active") continue;
    for (const a of r.allocations) if (a.grantId === grantId) held += a.amount;
  }
  return held;
}

/**
 * Where a payment's checkout stands, for a `createPaymentLink` call that found the payment already
 * stored under its idempotency key. The stored row is the claim: while it is `created` without a
 * checkout, the call that inserted it (or last took it over) is talking to the provider, and only
 * claimers write to it (a webhook always moves the status on).
 *  - settled: it has a checkout, or the provider moved it on (paid, expired, …): answer with it;
 *  - claimed: another call is opening its checkout: wait for it;
 *  - stale: claimed at least `staleMs` ago (`updatedAt`) and still without a checkout — its
 *    caller is presumed dead (a crash between the claim and the provider's answer): take it over;
 *  - failed: opening its checkout failed (see `mayReopenCheckout`): a new call takes it over and
 *    tries again.
 */
export function checkoutState(p: Payment, now: Date, staleMs: number): "settled" | "claimed" | "stale" | "failed" {
  if (mayReopenCheckout(p)) return "failed";
  if (!awaitsCheckout(p)) return "settled";
  return now.getTime() - p.updatedAt.getTime() >= staleMs ? "stale" : "claimed";
}

/** True once a checkout was recorded for the payment (it was handed out: the user may be paying on it). */
export const hasCheckout = (p: Payment): boolean => p.checkoutUrl !== null || p.providerRef !== null;

/**
 * True while a payment may take a checkout: `created`, and none recorded yet. The first checkout
 * recorded wins; any other one opened for the payment is handed to no one.
 */
export const awaitsCheckout = (p: Payment): boolean => p.status === "created" && !hasCheckout(p);

/**
 * True when a payment is `failed` without ever having had a checkout recorded: `createPaymentLink`
 * failed to open it (provider error, network, timeout). Nothing was handed to the user, so no one
 * can have paid or failed to pay on it — a retry may open it again (the provider is asked with the
 * same idempotency key / reference, so a checkout its first request did open is found, not doubled).
 * A `failed` payment with a checkout is a failed payment attempt on it (the checkout is still
 * payable), and `authorized`, `expired`, `cancelled`, `paid` and later are the provider's word:
 * none of these is retried.
 */
export const mayReopenCheckout = (p: Payment): boolean =>
  p.status === "failed" && !hasCheckout(p) && p.providerPaymentId === null && p.grantId === null;

/** True while a checkout answered for the payment may still be recorded as its own. */
export const mayRecordCheckout = (p: Payment): boolean => awaitsCheckout(p) || mayReopenCheckout(p);

/**
 * True when a checkout-level event (`expired`, `cancelled`) names checkouts of the provider
 * (`providerIds`) and the payment's recorded one is not among them: the end of a second checkout
 * that was never the payment's. An event that names none (a custom provider) is the payment's.
 */
export const isOtherCheckout = (p: Payment, providerIds: readonly string[]): boolean =>
  p.providerRef !== null && providerIds.length > 0 && !providerIds.includes(p.providerRef);
