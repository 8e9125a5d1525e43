// The auto top-up rules on their own (src/modules/billing/rules-auto-top-up.ts): the rule's validation, the edge
// trigger, one top-up in flight, the monthly cap, the amount charged, and what a credit, a decline
// and a required action do to the state. test/payments-auto-top-up.test.ts checks them end to end.
import { describe, expect, it } from "vitest";
import {
  afterActionRequired,
  afterCredited,
  afterDeclined,
  amountForCredits,
  blockedBy,
  STALE_ATTEMPT_MS,
  chargeAmount,
  disabled,
  requestTopUp,
  ruleOf,
  topUpRequest,
  withRule,
} from "../src/modules/billing/rules-auto-top-up.js";
import { creditsAtRate } from "../src/modules/billing/rules-payments.js";
import { AutoTopUpInput, type AutoTopUpState } from "../src/models-entry.js";
import type { AccountWithAutoTopUp } from "../src/modules/billing/model-auto-top-up.js";

const now = new Date();
const base = {
  below: 100,
  amount: 500,
  provider: "stripe",
  customer: "cus_1",
  paymentMethod: "pm_1",
  currency: "usd",
};
const rule = (over: Record<string, unknown> = {}) => ruleOf(AutoTopUpInput.parse({ ...base, ...over }));
const state = (over: Record<string, unknown> = {}): AutoTopUpState => withRule(null, rule(over));
let n = 0;
const ids = () => `atu_${++n}`;

describe("AutoTopUpInput", () => {
  it("takes a rule and upper-cases the currency; maxFailures defaults to 3", () => {
    expect(rule()).toMatchObject({ below: 100, amount: 500, toBalance: null, currency: "USD", maxFailures: 3 });
  });

  it.each([
    ["neither amount nor toBalance", { amount: undefined }],
    ["both amount and toBalance", { toBalance: 1000 }],
    ["toBalance not above below", { amount: undefined, toBalance: 100 }],
    ["minAmount above maxAmount", { minAmount: 10, maxAmount: 5, amount: undefined, toBalance: 200 }],
    ["amount below minAmount", { minAmount: 600 }],
    ["amount above maxAmount", { maxAmount: 400 }],
    ["below of 0", { below: 0 }],
    ["a fractional amount", { amount: 1.5 }],
    ["an empty payment method", { paymentMethod: "" }],
    ["a bad currency", { currency: "dollars" }],
    ["an unknown field", { extra: 1 }],
    ["maxFailures of 0", { maxFailures: 0 }],
  ])("refuses %s", (_, over) => {
    expect(AutoTopUpInput.safeParse({ ...base, ...over }).success).toBe(false);
  });
});

describe("requestTopUp: the edge trigger", () => {
  it("asks once when a change takes available from below or more to under it", () => {
    const asked = requestTopUp(state(), 150, 99, now, ids);
    expect(asked?.attempt).toMatchObject({ available: 99 });
    expect(asked?.state.pending?.id).toBe(asked?.attempt.id);
    expect(asked?.state.monthCount).toBe(1);
  });

  it.each([
    ["staying above", 300, 100],
    ["already below", 99, 50],
    ["going up", 50, 150],
    ["exactly at below (not under it)", 150, 100],
  ])("asks nothing %s", (_, before, after) => {
    expect(requestTopUp(state(), before, after, now, ids)).toBeNull();
  });

  it("at most one in flight: a second crossing while one is pending asks nothing", () => {
    const first = requestTopUp(state(), 150, 99, now, ids);
    expect(first).not.toBeNull();
    expect(blockedBy(first!.state, now)).toBe("in_flight");
    expect(requestTopUp(first!.state, 150, 10, now, ids)).toBeNull();
  });

  it("an attempt in flight for 24 hours (its outbox row failed for good) no longer blocks: the next change left below asks again", () => {
    const first = requestTopUp(state(), 150, 99, now, ids)!;
    const almost = new Date(now.getTime() + STALE_ATTEMPT_MS - 1);
    expect(blockedBy(first.state, almost)).toBe("in_flight");
    expect(requestTopUp(first.state, 99, 90, almost, ids)).toBeNull();
    const later = new Date(now.getTime() + STALE_ATTEMPT_MS);
    expect(blockedBy(first.state, later)).toBeNull();
    // Already below: no crossing, yet the stale attempt is replaced by a new one.
    const again = requestTopUp(first.state, 99, 90, later, ids);
    expect(again?.attempt.id).not.toBe(first.attempt.id);
    expect(again?.state.pending?.id).toBe(again?.attempt.id);
    expect(again?.state.monthCount).toBe(2);
    // Not above it: a change that leaves available at or above below asks nothing.
    expect(requestTopUp(first.state, 99, 150, later, ids)).toBeNull();
  });

  it("nothing while disabled", () => {
    expect(requestTopUp(disabled(state(), "disabled"), 150, 99, now, ids)).toBeNull();
  });

  it("nothing once the month's cap is spent; a new month starts from zero", () => {
    let s = state({ maxPerMonth: 2 });
    for (let i = 0; i < 2; i++) {
      const asked = requestTopUp(s, 150, 99, now, ids)!;
      s = afterCredited(asked.state, asked.attempt.id);
    }
    expect(blockedBy(s, now)).toBe("monthly_cap");
    expect(requestTopUp(s, 150, 99, now, ids)).toBeNull();
    const nextMonth = new Date(now.getTime() + 32 * 86_400_000);
    expect(requestTopUp(s, 150, 99, nextMonth, ids)?.state.monthCount).toBe(1);
  });

  it("no rule: nothing", () => {
    expect(requestTopUp(null, 150, 99, now, ids)).toBeNull();
  });
});

describe("topUpRequest: the unit of work's hook", () => {
  const account = (balance: number, s: AutoTopUpState | null): AccountWithAutoTopUp => ({
    userId: "u1",
    balance,
    reserved: 0,
    debt: 0,
    seq: 3,
    lastHash: null,
    nextExpiryAt: null,
    alert: null,
    autoTopUp: s,
    createdAt: now,
    updatedAt: now,
  });

  it("sets the pending attempt and returns the auto_top_up_requested row, deduplicated by the attempt", () => {
    const a = account(40, state());
    const row = topUpRequest({ balance: 140, reserved: 0 }, a, now);
    expect(row?.type).toBe("auto_top_up_requested");
    expect(row?.payload).toMatchObject({ available: 40, below: 100, attemptId: a.autoTopUp?.pending?.id });
    expect(row?.dedupeKey).toBe(`auto_top_up:${a.autoTopUp?.pending?.id}`);
  });

  it("leaves the account alone when nothing is asked (a new account, no crossing)", () => {
    const s = state();
    const a = account(40, s);
    expect(topUpRequest(null, a, now)).toBeNull();
    // A unit that records a payment's change (a refund's take-back) never asks.
    expect(topUpRequest({ balance: 140, reserved: 0 }, a, now, true)).toBeNull();
    expect(topUpRequest({ balance: 60, reserved: 0 }, a, now)).toBeNull();
    expect(a.autoTopUp).toBe(s);
  });

  it("counts holds: a hold that takes available under below asks", () => {
    const a = account(140, state());
    a.reserved = 50;
    expect(topUpRequest({ balance: 140, reserved: 0 }, a, now)?.payload).toMatchObject({ available: 90 });
  });
});

describe("chargeAmount", () => {
  const perCent = (c: number) => amountForCredits(c, (a) => creditsAtRate(a, 1));
  it("a fixed amount", () => {
    expect(chargeAmount(rule(), 10, perCent)).toBe(500);
  });
  it("toBalance: what buys the missing credits, within min and max", () => {
    const r = rule({ amount: undefined, toBalance: 1000 });
    expect(chargeAmount(r, 40, perCent)).toBe(960);
    expect(chargeAmount({ ...r, minAmount: 2000 }, 40, perCent)).toBe(2000);
    expect(chargeAmount({ ...r, maxAmount: 300 }, 40, perCent)).toBe(300);
    // In debt (available below zero): the debt too.
    expect(chargeAmount(r, -100, perCent)).toBe(1100);
  });
  it("amountForCredits: the smallest amount buying at least that many credits", () => {
    expect(amountForCredits(29, (a) => creditsAtRate(a, 0.29))).toBe(100);
    expect(amountForCredits(850, (a) => creditsAtRate(a, 85))).toBe(10);
    expect(amountForCredits(851, (a) => creditsAtRate(a, 85))).toBe(11);
    expect(amountForCredits(1, (a) => a)).toBe(1);
  });
});

describe("after the provider answered", () => {
  const pending = () => requestTopUp(state({ maxFailures: 2 }), 150, 99, now, ids)!;

  it("credited: nothing in flight, failures forgotten", () => {
    const p = pending();
    const s = afterCredited({ ...p.state, failures: 1 }, p.attempt.id);
    expect(s).toMatchObject({ pending: null, failures: 0, monthCount: 1 });
    // Another attempt's credit (a late webhook) changes nothing.
    expect(afterCredited(p.state, "other")).toBe(p.state);
  });

  it("declined: counted, the month's top-up given back, disabled at maxFailures consecutive declines", () => {
    let p = pending();
    const one = afterDeclined(p.state, p.attempt.id, "card_declined")!;
    expect(one).toMatchObject({ disabledNow: false });
    expect(one.state).toMatchObject({ pending: null, failures: 1, monthCount: 0, lastError: "card_declined" });
    p = requestTopUp(one.state, 150, 99, now, ids)!;
    const two = afterDeclined(p.state, p.attempt.id, "insufficient_funds")!;
    expect(two.disabledNow).toBe(true);
    expect(two.state).toMatchObject({ enabled: false, disabledReason: "max_failures", failures: 2 });
    expect(requestTopUp(two.state, 150, 99, now, ids)).toBeNull();
    // Setting the rule again enables it and forgets the failures.
    expect(withRule(two.state, two.state.rule)).toMatchObject({ enabled: true, failures: 0 });
    // A stale attempt id changes nothing.
    expect(afterDeclined(two.state, "other", "x")).toBeNull();
  });

  it("requires_action: nothing in flight, not a decline", () => {
    const p = pending();
    expect(afterActionRequired(p.state, p.attempt.id, "authentication_required")).toMatchObject({
      pending: null,
      failures: 0,
      monthCount: 1,
    });
  });
});
