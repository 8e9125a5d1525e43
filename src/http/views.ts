import * as z from "zod/mini";
import type { RouteContext } from "./router.js";
import {
  AutoTopUpRule,
  AutoTopUpState,
  Grant,
  JournalEntry,
  Payment,
  Plan,
  Reservation,
  Subscription,
} from "../models-entry.js";

/**
 * What a caller who is not an admin sees of a record (docs/service.md, "What each role sees"): a
 * user's key or JWT, a member's (spender) key, a customer token read the account holder's view, with
 * the operator's fields left out: the free text and metadata an operator or
 * the host writes (descriptions, reasons, `metadata` such as the console's `actor`, a refund's
 * `refundedBy`), the accounting (cost basis), the keys and digests of the operator's requests, and
 * the payment provider's ids of the customer, the saved payment method and the money movement.
 * Admins read the whole record, on every route.
 */
export const OPERATOR_FIELDS = {
  grant: ["description", "metadata", "sourceRef", "costBasis"],
  entry: ["description", "metadata", "costBasis", "idempotencyKey", "fingerprint", "correlationId"],
  reservation: ["reason", "metadata"],
  payment: ["description", "metadata", "providerPaymentId"],
  autoTopUpRule: ["customer", "paymentMethod"],
  subscription: ["metadata", "idempotencyKey", "intent"],
  plan: ["metadata"],
} as const;

/** `{ a: true, … }` for `omit`, from a list of field names. */
const mask = <K extends string>(fields: readonly K[]) =>
  Object.fromEntries(fields.map((f) => [f, true])) as { [P in K]: true };

export const GrantView = z.omit(Grant, mask(OPERATOR_FIELDS.grant));
export const EntryView = z.omit(JournalEntry, mask(OPERATOR_FIELDS.entry));
export const ReservationView = z.omit(Reservation, mask(OPERATOR_FIELDS.reservation));
export const PaymentView = z.extend(z.omit(Payment, mask(OPERATOR_FIELDS.payment)), {
  /** Whether it is an auto top-up's charge (`metadata.autoTopUp` of the whole record). */
  autoTopUp: z.boolean(),
});
export const AutoTopUpRuleView = z.omit(AutoTopUpRule, mask(OPERATOR_FIELDS.autoTopUpRule));
export const AutoTopUpStateView = z.extend(AutoTopUpState, { rule: AutoTopUpRuleView });
export const SubscriptionView = z.omit(Subscription, mask(OPERATOR_FIELDS.subscription));
export const PlanView = z.omit(Plan, mask(OPERATOR_FIELDS.plan));

/** The fields of `record` that `view` has, and no other (a view is its model less the operator's fields). */
function project<S extends z.ZodMiniObject>(view: S, record: object): z.output<S> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(view.shape)) if (key in record) out[key] = (record as Record<string, unknown>)[key];
  return out as z.output<S>;
}

export const grantView = (g: Grant) => project(GrantView, g);
export const entryView = (e: JournalEntry) => project(EntryView, e);
export const reservationView = (r: Reservation) => project(ReservationView, r);
export const paymentView = (p: Payment) => ({ ...project(PaymentView, p), autoTopUp: p.metadata?.autoTopUp === true });
export const subscriptionView = (s: Subscription) => project(SubscriptionView, s);
export const planView = (p: Plan) => project(PlanView, p);
export const autoTopUpView = (s: AutoTopUpState | null) =>
  s === null ? null : { ...project(AutoTopUpStateView, s), rule: project(AutoTopUpRuleView, s.rule) };

/** `record` as the caller sees it: whole for an admin, `view(record)` for anyone else. */
export function seen<T, V>(ctx: RouteContext, record: T, view: (r: T) => V): T | V {
  return ctx.identity?.admin === true ? record : view(record);
}
