import { randomUUID } from "node:crypto";
import type { Account, AutoTopUpAttempt, AutoTopUpRule, AutoTopUpSettings, Notification } from "../../models-entry.js";
import { AutoTopUpState } from "./model-auto-top-up.js";
import { newNotification } from "../../core/domain/notifications.js";
import { accountColumn } from "../../core/module.js";

/**
 * The billing module's column on the account: its auto top-up state (docs/promos-and-payments.md),
 * validated with `AutoTopUpState` when written and read.
 */
export const autoTopUpColumn = accountColumn("autoTopUp", AutoTopUpState);

/** The notification types of auto top-up (docs/promos-and-payments.md, "Auto top-up"). */
export const AUTO_TOP_UP_NOTIFICATION_TYPES = [
  "auto_top_up_requested",
  "auto_top_up_failed",
  "auto_top_up_action_required",
  "auto_top_up_disabled",
] as const;

/** The account's auto top-up state (its `autoTopUp` column); null when it has none. */
export const autoTopUpOf = (account: Account): AutoTopUpState | null => autoTopUpColumn.get(account);

/** Sets the account's auto top-up state (on a unit of work's copy of the account). */
export function setAutoTopUpOf(account: Account, state: AutoTopUpState | null): void {
  autoTopUpColumn.set(account, state);
}

/**
 * The auto top-up rules of docs/promos-and-payments.md ("Auto top-up"), as pure functions over the
 * account's `autoTopUp` state. The state is replaced, never changed in place (a unit of work's
 * account is a shallow copy of the stored one).
 */

/** Consecutive declines after which a rule disables itself, unless it says otherwise. */
export const DEFAULT_MAX_FAILURES = 3;

/** The stored rule of a validated input. */
export function ruleOf(i: AutoTopUpSettings): AutoTopUpRule {
  return {
    below: i.below,
    amount: i.amount ?? null,
    toBalance: i.toBalance ?? null,
    provider: i.provider,
    customer: i.customer,
    paymentMethod: i.paymentMethod,
    currency: i.currency,
    minAmount: i.minAmount ?? null,
    maxAmount: i.maxAmount ?? null,
    maxPerMonth: i.maxPerMonth ?? null,
    maxFailures: i.maxFailures ?? DEFAULT_MAX_FAILURES,
  };
}

/**
 * The state after (re)setting the rule: enabled, failures forgotten. The month's count and a
 * top-up in flight are kept (a new rule does not lift the monthly cap, nor start a second top-up).
 */
export function withRule(prev: AutoTopUpState | null | undefined, rule: AutoTopUpRule): AutoTopUpState {
  return {
    rule,
    enabled: true,
    disabledReason: null,
    pending: prev?.pending ?? null,
    month: prev?.month ?? null,
    monthCount: prev?.monthCount ?? 0,
    failures: 0,
    lastError: null,
  };
}

/** The state with the rule disabled for `reason` (null: no rule to disable). */
export function disabled(prev: AutoTopUpState | null | undefined, reason: string): AutoTopUpState | null {
  if (prev === null || prev === undefined) return null;
  return { ...prev, enabled: false, disabledReason: reason };
}

/** The calendar month (UTC) of `now`, "YYYY-MM". */
export function monthOf(now: Date): string {
  return now.toISOString().slice(0, 7);
}

/** Top-ups counted in the month of `now` (0 when the count is of an earlier month). */
export function countThisMonth(s: AutoTopUpState, now: Date): number {
  return s.month === monthOf(now) ? s.monthCount : 0;
}

/**
 * After this long (24 hours, Stripe's idempotency-key window) a top-up still in flight no longer
 * blocks the rule: its outbox row failed for good, or no worker charged it. The next change that
 * leaves `available` below `below` then asks for a new one (docs/promos-and-payments.md, "Worst
 * case"). The stale attempt's payment stays as it was; a charge of it that went through is still
 * credited by the provider's webhook.
 */
export const STALE_ATTEMPT_MS = 86_400_000;

/** Whether `s`'s attempt in flight was asked for `STALE_ATTEMPT_MS` or more before `now`. */
export function staleAttempt(s: AutoTopUpState, now: Date): boolean {
  return s.pending !== null && now.getTime() - Date.parse(s.pending.requestedAt) >= STALE_ATTEMPT_MS;
}

/** Why no top-up is asked for now, or null when one may be. */
export function blockedBy(s: AutoTopUpState, now: Date): "disabled" | "in_flight" | "monthly_cap" | null {
  if (!s.enabled) return "disabled";
  if (s.pending !== null && !staleAttempt(s, now)) return "in_flight";
  if (s.rule.maxPerMonth !== null && countThisMonth(s, now) >= s.rule.maxPerMonth) return "monthly_cap";
  return null;
}

/**
 * The top-up a change asks for, with the state after it, or null: when it takes `available` from
 * `below` or more (`before`) to under it (`after`) — once per crossing, like the low-credits alert —
 * and the rule is enabled, no top-up is in flight and the month's cap is not spent. An attempt in
 * flight for `STALE_ATTEMPT_MS` is replaced by the next change that leaves `available` below.
 */
export function requestTopUp(
  s: AutoTopUpState | null | undefined,
  before: number,
  after: number,
  now: Date,
  newId: () => string = () => `atu_${randomUUID().replaceAll("-", "")}`,
): { state: AutoTopUpState; attempt: AutoTopUpAttempt } | null {
  if (s === null || s === undefined) return null;
  // Once per crossing; or, while a stale attempt blocks nothing any more, at any change left below.
  const crossed = before >= s.rule.below && after < s.rule.below;
  if (!crossed && !(staleAttempt(s, now) && after < s.rule.below)) return null;
  if (blockedBy(s, now) !== null) return null;
  const attempt: AutoTopUpAttempt = { id: newId(), available: after, requestedAt: now.toISOString() };
  const month = monthOf(now);
  return {
    state: { ...s, pending: attempt, month, monthCount: countThisMonth(s, now) + 1 },
    attempt,
  };
}

/**
 * What to charge for `attempt` (smallest currency unit): the rule's `amount`, or what buys the
 * credits that bring the attempt's `available` back to `toBalance` (`amountFor(credits)`), within
 * `minAmount`…`maxAmount`.
 */
export function chargeAmount(rule: AutoTopUpRule, available: number, amountFor: (credits: number) => number): number {
  let amount = rule.amount ?? amountFor(Math.max(1, (rule.toBalance as number) - available));
  if (rule.minAmount !== null) amount = Math.max(amount, rule.minAmount);
  if (rule.maxAmount !== null) amount = Math.min(amount, rule.maxAmount);
  return amount;
}

/** The smallest amount (≥ 1) that `creditsFor` turns into at least `credits` (it must not decrease with the amount). */
export function amountForCredits(credits: number, creditsFor: (amount: number) => number): number {
  let hi = 1;
  while (creditsFor(hi) < credits) {
    if (hi > Number.MAX_SAFE_INTEGER / 2) return hi;
    hi *= 2;
  }
  let lo = Math.floor(hi / 2) + 1;
  if (hi === 1) return 1;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (creditsFor(mid) >= credits) hi = mid;
    else lo = mid + 1;
  }
  return hi;
}

/** The state once attempt `id` was credited: nothing in flight, failures forgotten. */
export function afterCredited(s: AutoTopUpState, id: string): AutoTopUpState {
  if (s.pending?.id !== id) return s;
  return { ...s, pending: null, failures: 0, lastError: null };
}

/**
 * The state once attempt `id` was declined with `code`: nothing in flight, one more consecutive
 * failure, the top-up given back to the month's count; the rule disabled (`disabledNow`) at its
 * `maxFailures`-th consecutive decline.
 */
export function afterDeclined(
  s: AutoTopUpState,
  id: string,
  code: string,
): { state: AutoTopUpState; disabledNow: boolean } | null {
  if (s.pending?.id !== id) return null;
  const failures = s.failures + 1;
  const disabledNow = s.enabled && failures >= s.rule.maxFailures;
  return {
    state: {
      ...s,
      pending: null,
      failures,
      lastError: code,
      monthCount: Math.max(0, s.monthCount - 1),
      ...(disabledNow ? { enabled: false, disabledReason: "max_failures" } : {}),
    },
    disabledNow,
  };
}

/**
 * The state once attempt `id` needs the customer (3-D Secure): nothing in flight any more — the
 * payment is credited if the customer completes it (the provider's webhook) — and not a decline.
 */
export function afterActionRequired(s: AutoTopUpState, id: string, code: string): AutoTopUpState | null {
  if (s.pending?.id !== id) return null;
  return { ...s, pending: null, lastError: code };
}

/**
 * What `autoTopUpHook` (./service-auto-top-up.ts) decides in a unit of work's save: when the change
 * asks for a top-up (`requestTopUp`), sets the account's new state and returns the
 * `auto_top_up_requested` outbox row, committed with the spend; else null and nothing changes. A
 * unit that records a payment's change (`recordsPayment`) never asks: taking back a refund's (or
 * lost dispute's) credits must not charge the customer again at once (crediting a payment only
 * raises `available`).
 */
export function topUpRequest(
  before: Pick<Account, "balance" | "reserved"> | null,
  account: Account,
  now: Date,
  recordsPayment = false,
): Notification | null {
  const s = autoTopUpOf(account);
  if (s === null || before === null || recordsPayment) return null;
  const after = account.balance - account.reserved;
  const asked = requestTopUp(s, before.balance - before.reserved, after, now);
  if (asked === null) return null;
  setAutoTopUpOf(account, asked.state);
  const r = asked.state.rule;
  return newNotification(
    account.userId,
    "auto_top_up_requested",
    {
      attemptId: asked.attempt.id,
      available: after,
      below: r.below,
      provider: r.provider,
      currency: r.currency,
      amount: r.amount,
      toBalance: r.toBalance,
      seq: account.seq,
    },
    now,
    `auto_top_up:${asked.attempt.id}`,
  );
}
