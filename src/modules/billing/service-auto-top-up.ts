import {
  afterActionRequired,
  afterCredited,
  afterDeclined,
  amountForCredits,
  autoTopUpOf,
  chargeAmount,
  disabled,
  ruleOf,
  autoTopUpColumn,
  topUpRequest,
  withRule,
} from "./rules-auto-top-up.js";
import { newNotification } from "../../core/domain/notifications.js";
import { canAdvancePayment, isCredited, newPayment } from "./rules-payments.js";
import { ConfigurationError, ConflictError, type ModuleError, ValidationError } from "../../core/errors.js";
import {
  AutoTopUpInput,
  UserId,
  parse,
  type AutoTopUpState,
  type Notification,
  type Payment,
} from "../../models-entry.js";
import type { OffSessionChargeResult, PaymentEvent, PaymentProvider } from "./provider.js";
import type { BillingDeps } from "./service-units.js";
import type { UnitHook } from "../../core/services/unit-of-work.js";
import { billingRows } from "./store.js";

/** What `processAutoTopUp` did with the account's top-up in flight. @public */
export interface AutoTopUpResult {
  /**
   * none: no top-up in flight (or another one than asked for); credited: charged and credited (or
   * found credited); processing: charged, the provider's webhook credits it; action_required: the
   * customer must confirm it; declined: refused (the rule disabled itself after `maxFailures`).
   */
  outcome: "none" | "credited" | "processing" | "action_required" | "declined";
  /** The attempt (and its payment's id), or null for `none`. */
  attemptId: string | null;
  /** The provider's code of a decline or required action. */
  code?: string;
  /** True when this decline disabled the rule. */
  disabled?: boolean;
}

/**
 * What auto top-up needs of the payments it charges through: `PaymentService` gives it its
 * providers, its rates and its idempotent credit path, so an auto top-up is credited as a paid
 * payment is (once, whichever of the charge's answer and the webhook comes first). @internal
 */
export interface TopUpPayments {
  /** The configured provider `name` (`ValidationError` otherwise). */
  provider(name: string): PaymentProvider;
  /** Refuses a currency a per-currency `creditsPerUnit` does not price (`ValidationError`). */
  acceptedCurrency(currency: string): void;
  /** The currencies payments may be made in (a per-currency `creditsPerUnit`); null: any. */
  readonly rates: ReadonlyMap<string, number> | null;
  /** Credits bought by `amount` (smallest unit) in `currency`. */
  creditsFor(amount: number, currency: string): number;
  /** Credits a paid payment once (the webhooks' path). */
  creditPaid(provider: string, payment: Payment, event: PaymentEvent): Promise<unknown>;
  /** Compare-and-set loop on a payment outside any account (`first`: the payment as known). */
  advance(id: string, change: (p: Payment) => Partial<Payment> | null, first?: Payment): Promise<Payment>;
}

/**
 * Auto top-up (docs/promos-and-payments.md, "Auto top-up"): the account's rule and its attempt in
 * flight, charged off-session to the saved method through the payments it is given.
 * `PaymentService`'s `setAutoTopUp`, `getAutoTopUp`, `disableAutoTopUp` and `processAutoTopUp`
 * delegate here; their documentation is there. @internal
 */
export class AutoTopUpService {
  constructor(
    private readonly deps: BillingDeps,
    private readonly payments: TopUpPayments,
  ) {}

  /** `PaymentService.setAutoTopUp`. */
  async setAutoTopUp(userId: string, input: AutoTopUpInput): Promise<AutoTopUpState> {
    const user = parse(UserId, userId, "userId");
    const i = parse(AutoTopUpInput, input, "input");
    const provider = this.payments.provider(i.provider);
    if (provider.chargeSaved === undefined) {
      throw new ValidationError(`Invalid input.provider: "${provider.name}" cannot charge a saved method`, [
        { path: "provider", message: "no off-session charges (chargeSaved)" },
      ]);
    }
    this.payments.acceptedCurrency(i.currency);
    const rule = ruleOf(i);
    const out = await this.changeAutoTopUp(user, (prev) => ({ state: withRule(prev, rule) }));
    return out as AutoTopUpState;
  }

  /** `PaymentService.getAutoTopUp`. */
  async getAutoTopUp(userId: string): Promise<AutoTopUpState | null> {
    const user = parse(UserId, userId, "userId");
    const account = await this.deps.db.getAccount(user);
    return account === null ? null : autoTopUpOf(account);
  }

  /** `PaymentService.disableAutoTopUp`. */
  async disableAutoTopUp(userId: string): Promise<AutoTopUpState | null> {
    const user = parse(UserId, userId, "userId");
    // A stored rule its schema refuses is removed: no top-up is asked for without a rule.
    return this.changeAutoTopUp(user, (prev, _now, malformed) =>
      malformed !== undefined ? { state: null } : prev === null ? null : { state: disabled(prev, "disabled") },
    );
  }

  /** `PaymentService.processAutoTopUp`. */
  async processAutoTopUp(userId: string, attemptId?: string): Promise<AutoTopUpResult> {
    const user = parse(UserId, userId, "userId");
    const account = await this.deps.db.getAccount(user);
    const s = account === null ? null : autoTopUpOf(account);
    const attempt = s?.pending ?? null;
    if (s === null || attempt === null || (attemptId !== undefined && attempt.id !== attemptId)) {
      return { outcome: "none", attemptId: null };
    }
    const rule = s.rule;
    const provider = this.payments.provider(rule.provider);
    const charge = provider.chargeSaved?.bind(provider);
    if (charge === undefined) {
      throw new ConfigurationError(
        `[credit-management] [${provider.name}] cannot charge a saved method (chargeSaved): auto top-up ${attempt.id} waits`,
      );
    }
    if (this.payments.rates !== null && !this.payments.rates.has(rule.currency)) {
      // A process configured with other rates than the application that set the rule (a worker
      // without its CREDIT_CREDITS_PER_UNIT): nothing is charged; the top-up waits for one that has them.
      throw new ConfigurationError(
        `[credit-management] auto top-up ${attempt.id} is in ${rule.currency}, which this process's payments.creditsPerUnit does not price (${[...this.payments.rates.keys()].join(", ")}): give it the application's rates (CREDIT_CREDITS_PER_UNIT); it waits`,
      );
    }
    const creditsFor = (amount: number) => this.payments.creditsFor(amount, rule.currency);
    const amount = chargeAmount(rule, attempt.available, (c) => amountForCredits(c, creditsFor));
    const now = this.deps.clock();
    const credits = creditsFor(amount);
    let payment = newPayment(
      {
        id: attempt.id,
        userId: user,
        provider: provider.name,
        amount,
        currency: rule.currency,
        credits,
        description: `Auto top-up: ${credits} credits`,
        metadata: { autoTopUp: true },
      },
      now,
    );
    try {
      await this.deps.db.insertPayment(payment);
    } catch (error) {
      if (!(error instanceof ConflictError)) throw error;
      // An earlier try of this attempt: charge what it recorded (the same amount, the same key).
      const first = await this.deps.db.getPayment(attempt.id, user);
      if (first === null) throw error;
      payment = first;
    }
    if (isCredited(payment.status)) {
      await this.settleAutoTopUp(user, attempt.id, () => ({ state: afterCredited }));
      return { outcome: "credited", attemptId: attempt.id };
    }
    const answer: OffSessionChargeResult = await charge({
      paymentId: payment.id,
      userId: user,
      amount: payment.amount,
      currency: payment.currency,
      credits: payment.credits,
      description: payment.description ?? `Auto top-up: ${payment.credits} credits`,
      customer: rule.customer,
      paymentMethod: rule.paymentMethod,
      idempotencyKey: payment.id,
    });
    /** What the outbox rows of a charge that did not go through say of it. */
    const refused = (code: string) => ({
      attemptId: attempt.id,
      paymentId: payment.id,
      providerPaymentId: answer.providerPaymentId,
      amount: payment.amount,
      currency: payment.currency,
      credits: payment.credits,
      code,
    });
    /** The provider's reference of the charge, on a payment that has none yet. */
    const recordRef = (ref: string) =>
      this.payments.advance(payment.id, (p) => (p.providerRef === null ? { providerRef: ref } : null), payment);
    switch (answer.status) {
      case "succeeded": {
        const event: PaymentEvent = {
          eventId: null,
          type: "auto_top_up.succeeded",
          kind: "paid",
          paymentId: payment.id,
          providerIds: [answer.providerPaymentId],
          providerPaymentId: answer.providerPaymentId,
          userId: user,
          amount: payment.amount,
          currency: payment.currency,
          refundedTotal: null,
        };
        await this.payments.creditPaid(provider.name, payment, event);
        return { outcome: "credited", attemptId: attempt.id };
      }
      case "processing":
        await recordRef(answer.providerPaymentId);
        return { outcome: "processing", attemptId: attempt.id };
      case "requires_action": {
        if (answer.providerPaymentId !== null) await recordRef(answer.providerPaymentId);
        await this.settleAutoTopUp(user, attempt.id, (cur, now) => {
          const next = afterActionRequired(cur, attempt.id, answer.code);
          if (next === null) return null;
          return {
            state: () => next,
            notifications: [
              newNotification(
                user,
                "auto_top_up_action_required",
                { ...refused(answer.code), nextAction: answer.nextAction },
                now,
                `auto_top_up_action_required:${attempt.id}`,
              ),
            ],
          };
        });
        return { outcome: "action_required", attemptId: attempt.id, code: answer.code };
      }
      case "declined": {
        await this.payments.advance(
          payment.id,
          (p) =>
            canAdvancePayment(p.status, "failed")
              ? {
                  status: "failed",
                  providerRef: p.providerRef ?? answer.providerPaymentId,
                }
              : null,
          payment,
        );
        let disabledNow = false;
        await this.settleAutoTopUp(user, attempt.id, (cur, now) => {
          const next = afterDeclined(cur, attempt.id, answer.code);
          if (next === null) return null;
          disabledNow = next.disabledNow;
          const rows: Notification[] = [
            newNotification(
              user,
              "auto_top_up_failed",
              {
                ...refused(answer.code),
                reason: answer.message,
                failures: next.state.failures,
                maxFailures: next.state.rule.maxFailures,
              },
              now,
              `auto_top_up_failed:${attempt.id}`,
            ),
          ];
          if (next.disabledNow) {
            rows.push(
              newNotification(
                user,
                "auto_top_up_disabled",
                { reason: "max_failures", failures: next.state.failures, lastCode: answer.code },
                now,
                `auto_top_up_disabled:${attempt.id}`,
              ),
            );
          }
          return { state: () => next.state, notifications: rows };
        });
        return { outcome: "declined", attemptId: attempt.id, code: answer.code, disabled: disabledNow };
      }
    }
  }

  /**
   * Settles attempt `id` in a unit of work on the account (no journal entry): `decide` says the
   * new state (from the current one) and the outbox rows, or null when the attempt is no longer the
   * one in flight (settled already: a retry or a concurrent worker changes nothing).
   */
  private async settleAutoTopUp(
    user: string,
    id: string,
    decide: (
      cur: AutoTopUpState,
      now: Date,
    ) => { state: (s: AutoTopUpState, id: string) => AutoTopUpState; notifications?: Notification[] } | null,
  ): Promise<void> {
    await this.changeAutoTopUp(user, (prev, now) => {
      if (prev === null || prev.pending?.id !== id) return null;
      const d = decide(prev, now);
      if (d === null) return null;
      return { state: d.state(prev, id), notifications: d.notifications };
    });
  }

  /**
   * Changes the account's `autoTopUp` in a transaction on the account (as `setThreshold` changes
   * its alert override): `change` returns the new state and outbox rows, or null for no change.
   * Resolves to the state after.
   */
  private changeAutoTopUp(
    user: string,
    change: (
      prev: AutoTopUpState | null,
      now: Date,
      malformed?: ModuleError,
    ) => { state: AutoTopUpState | null; notifications?: readonly Notification[] | undefined } | null,
  ): Promise<AutoTopUpState | null> {
    return this.deps.ctx.changeColumn(user, autoTopUpColumn, (prev, now, malformed) => {
      const next = change(prev, now, malformed);
      return next === null ? null : { value: next.state, notifications: next.notifications ?? [] };
    });
  }
}

/**
 * The billing module's decision in every unit of work that writes (docs/promos-and-payments.md,
 * "Auto top-up"): `topUpRequest`'s row, saved with the spend whether or not notifications are on.
 * `CreditService` runs it.
 */
export const autoTopUpHook: UnitHook = ({ loaded, now, changes }) => {
  const recordsPayment = (billingRows(changes)?.paymentUpdates?.length ?? 0) > 0;
  const asked = topUpRequest(loaded, changes.account, now, recordsPayment);
  return asked === null ? [] : [asked];
};
