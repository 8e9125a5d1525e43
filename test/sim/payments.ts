import type { CreditModel } from "../../src/core/testing/model.js";
import type { Payment } from "../../src/models-entry.js";
import type { PaymentEvent, PaymentProvider } from "../../src/modules/billing/provider.js";
import { PaymentProviderError } from "../../src/modules/billing/errors.js";
import { findGrant } from "./model.js";

/**
 * Payments in the simulation: a provider of its own (no network, no signatures: the events are
 * the JSON of `PaymentEvent`), and a model of what paying and refunding do to an account, from
 * docs/promos-and-payments.md: credits are `amount × rate` rounded down (rate 0.29 per cent); a
 * paid event credits once; a refund (cumulative) takes back its share of the credits, rounded up —
 * all of it when fully refunded: what is left of the payment's grant is voided when that covers the
 * rest (credits held from it are voided when their hold ends), and the rest is deducted after the
 * fact (debt allowed). A refund before the payment was credited only moves its status.
 */

export const RATE_PER_100 = 29;

export const simProvider: PaymentProvider = {
  name: "sim",
  async createCheckout(request) {
    return { providerRef: `ref-${request.paymentId}`, url: `https://pay.invalid/${request.paymentId}` };
  },
  verifyWebhook() {},
  parseEvent(rawBody) {
    return JSON.parse(Buffer.from(rawBody).toString("utf8")) as PaymentEvent;
  },
};

export function webhook(kind: "paid" | "refund", paymentId: string, refundedTotal: number | null): string {
  const event: PaymentEvent = {
    eventId: null,
    type: kind,
    kind,
    paymentId,
    providerIds: [],
    providerPaymentId: `pi-${paymentId}`,
    userId: null,
    amount: null,
    currency: null,
    refundedTotal,
  };
  return JSON.stringify(event);
}

export interface ModelPayment {
  id: string;
  userId: string;
  amount: number;
  credits: number;
  credited: boolean;
  grantId: string | null;
  /** Refunded so far (cumulative, currency units). */
  refunded: number;
  /** Credits taken back so far. */
  reversed: number;
}

export class PaymentsModel {
  readonly payments = new Map<string, ModelPayment>();

  constructor(private readonly fail: (what: string) => never) {}

  of(userId: string): ModelPayment[] {
    return [...this.payments.values()].filter((p) => p.userId === userId);
  }

  inserted(p: Payment, user: string, amount: number): void {
    const credits = Math.floor((amount * RATE_PER_100) / 100);
    if (p.userId !== user || p.amount !== amount || p.credits !== credits) {
      this.fail(
        `payment ${p.id} stored for ${p.userId}, ${p.amount} buying ${p.credits} credits; asked ${user}, ${amount}: ${credits} credits`,
      );
    }
    if (this.payments.has(p.id)) this.fail(`payment ${p.id} inserted twice`);
    this.payments.set(p.id, {
      id: p.id,
      userId: user,
      amount,
      credits,
      credited: false,
      grantId: null,
      refunded: 0,
      reversed: 0,
    });
  }

  /** An auto top-up's payment, recorded by the worker (an earlier try's insert is found again). */
  insertedTopUp(p: Payment): void {
    const credits = Math.floor((p.amount * RATE_PER_100) / 100);
    if (p.credits !== credits)
      this.fail(`auto top-up ${p.id}: ${p.amount} buying ${p.credits} credits, not ${credits}`);
    if (this.payments.has(p.id)) return;
    this.topUps.add(p.id);
    this.payments.set(p.id, {
      id: p.id,
      userId: p.userId,
      amount: p.amount,
      credits,
      credited: false,
      grantId: null,
      refunded: 0,
      reversed: 0,
    });
  }

  /** Payments that are auto top-ups. */
  readonly topUps = new Set<string>();

  private get(update: Payment | undefined, where: string): ModelPayment {
    if (update === undefined) this.fail(`${where}: no payment update in the unit of work`);
    return this.payments.get(update.id) ?? this.fail(`${where}: payment ${update.id} unknown to the model`);
  }

  /** A paid event's unit of work: adds the credits once. Returns the payment. */
  credited(m: CreditModel, update: Payment | undefined, grantId: string | null, where: string): void {
    const p = this.get(update, where);
    if (p.credited || p.refunded > 0)
      this.fail(`${where}: payment ${p.id} credited although it was ${p.credited ? "credited" : "refunded"} already`);
    p.credited = true;
    p.grantId = grantId;
    m.add(grantId, p.credits, null, 0);
  }

  /** A refund's unit of work for `total` refunded so far. */
  refunded(m: CreditModel, update: Payment | undefined, total: number, where: string): void {
    const p = this.get(update, where);
    const refunded = Math.min(total, p.amount);
    if (refunded <= p.refunded) this.fail(`${where}: a refund of ${refunded} after ${p.refunded} changed the account`);
    let k = 0;
    if (p.credited) {
      const share =
        refunded >= p.amount ? p.credits : Math.min(p.credits, Math.ceil((p.credits * refunded) / p.amount));
      k = Math.max(0, share - p.reversed);
      let left = k;
      const g = p.grantId === null ? undefined : findGrant(m, p.grantId);
      if (k > 0 && g !== undefined && g.closed === null && g.remaining > 0) {
        let held = 0;
        for (const h of m.holds) if (h.status === "active") for (const [gid, a] of h.parts) if (gid === g.id) held += a;
        if (g.remaining + held <= left) {
          left -= g.remaining + held;
          m.voidGrant(g);
        }
      }
      if (left > 0) m.deduct(left, true);
    }
    p.refunded = refunded;
    p.reversed += k;
    if (update !== undefined && (update.refundedAmount !== p.refunded || update.creditsReversed !== p.reversed)) {
      this.fail(
        `${where}: payment saved with refundedAmount ${update.refundedAmount}, creditsReversed ${update.creditsReversed}; the model ${p.refunded}, ${p.reversed}`,
      );
    }
  }
}

/**
 * The card network behind auto top-up in the simulation (docs/promos-and-payments.md, "Auto
 * top-up"): `chargeSaved` of the provider `card`. Each new idempotency key is charged with an
 * outcome the seed picks — succeeded, declined, a transient error before the charge, or charged
 * with the answer lost (the caller sees an error, the money moved) — and a repeated key gets the
 * first outcome back, as Stripe keeps it. `bank.charges` is what the provider holds: the
 * simulation checks that every successful charge is credited exactly once, and nothing is credited
 * that was not charged. With `forgetKey` (a planted bug: an adapter that does not send the
 * idempotency key) every call is a new charge.
 */
export interface Charge {
  id: string;
  paymentId: string;
  amount: number;
  succeeded: boolean;
}

export class SimBank {
  readonly charges: Charge[] = [];
  private readonly byKey = new Map<string, Charge>();

  constructor(
    private readonly pick: () => "succeeded" | "declined" | "transient" | "lost",
    private readonly forgetKey: boolean,
  ) {}

  readonly provider: PaymentProvider = {
    name: "card",
    createCheckout: async (r) => ({ providerRef: `card-${r.paymentId}`, url: `https://pay.invalid/${r.paymentId}` }),
    verifyWebhook() {},
    parseEvent: (raw) => JSON.parse(Buffer.from(raw).toString("utf8")) as PaymentEvent,
    chargeSaved: async (r) => {
      const known = this.forgetKey ? undefined : this.byKey.get(r.idempotencyKey);
      if (known !== undefined) {
        return known.succeeded
          ? { status: "succeeded", providerPaymentId: known.id }
          : { status: "declined", providerPaymentId: known.id, code: "card_declined", message: "declined" };
      }
      const outcome = this.pick();
      if (outcome === "transient") throw new PaymentProviderError("card network: 503", { provider: "card" });
      const charge: Charge = {
        id: `ch-${this.charges.length + 1}`,
        paymentId: r.paymentId,
        amount: r.amount,
        succeeded: outcome !== "declined",
      };
      this.charges.push(charge);
      this.byKey.set(r.idempotencyKey, charge);
      if (outcome === "lost") throw new PaymentProviderError("card network: time-out", { provider: "card" });
      return charge.succeeded
        ? { status: "succeeded", providerPaymentId: charge.id }
        : { status: "declined", providerPaymentId: charge.id, code: "card_declined", message: "declined" };
    },
  };

  /** The succeeded charges of `paymentId`. */
  succeeded(paymentId: string): Charge[] {
    return this.charges.filter((c) => c.paymentId === paymentId && c.succeeded);
  }
}
