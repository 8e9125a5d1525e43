// The payment rules on their own (src/modules/billing/rules-payments.ts): the credits a payment buys, what a
// refund or a lost dispute does to it, and how the credits are taken back. The webhook tests
// (test/payments.test.ts) and the contract suite check them end to end.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  creditsAtRate,
  creditsToReverse,
  heldOf,
  refundedBy,
  reversal,
  takeBackPlan,
} from "../src/modules/billing/rules-payments.js";
import type { Payment, PaymentStatus, Reservation } from "../src/models-entry.js";
import { samples } from "./fixtures/samples.js";

describe("creditsAtRate: amount × rate, rounded down, exact decimal products kept", () => {
  it.each([
    ["a whole rate", 499, 2, 998],
    ["100 × 0.29 is 29 (28.999999999999996 in doubles)", 100, 0.29, 29],
    ["10 × 0.1 is 1", 10, 0.1, 1],
    ["3 × 0.1 is 0 (0.30000000000000004: a fraction, floored)", 3, 0.1, 0],
    ["7 × 1.15 is 8 (8.049999…)", 7, 1.15, 8],
    ["1 × 0.5 rounds down to 0", 1, 0.5, 0],
    ["999 × 0.999 is 998 (998.001)", 999, 0.999, 998],
    ["49,900 paise at 0.01 is 499", 49_900, 0.01, 499],
    ["a tiny rate gives nothing", 5, 1e-9, 0],
    ["zero amount", 0, 85, 0],
  ])("%s", (_, amount, rate, expected) => {
    expect(creditsAtRate(amount, rate)).toBe(expected);
  });

  it("an integer: the exact product amount × cents / 100, floored, for any rate in hundredths", () => {
    // Products up to 10^9 credits: there a product's distance to the next integer (≥ 0.01 when it
    // is not one) is far above the snap tolerance (2 × EPSILON relative).
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1e7 }), fc.integer({ min: 0, max: 10_000 }), (amount, cents) => {
        const hundredths = amount * cents; // exact: below 2^53
        expect(creditsAtRate(amount, cents / 100)).toBe((hundredths - (hundredths % 100)) / 100);
      }),
    );
  });
});

const payment = (over: Partial<Payment> = {}): Payment => ({
  ...samples.payments,
  amount: 1000,
  credits: 500,
  status: "paid",
  // Paid here means credited: its credits were added by this entry.
  creditEntryId: "7d1f0c2e-0000-4000-8000-00000000e001",
  refundedAmount: 0,
  creditsReversed: 0,
  ...over,
});

describe("reversal: what a refund or a lost dispute does to a payment", () => {
  it.each<[string, Partial<Payment>, boolean, number | null, ReturnType<typeof reversal>]>([
    [
      "a partial refund: its share, rounded up",
      {},
      false,
      333,
      { outcome: "apply", status: "partially_refunded", refundedAmount: 333, takeBack: 167 },
    ],
    [
      "a further partial refund: the rest of the share",
      { status: "partially_refunded", refundedAmount: 333, creditsReversed: 167 },
      false,
      500,
      { outcome: "apply", status: "partially_refunded", refundedAmount: 500, takeBack: 83 },
    ],
    [
      "the full refund: all not yet reversed",
      { status: "partially_refunded", refundedAmount: 500, creditsReversed: 250 },
      false,
      1000,
      { outcome: "apply", status: "refunded", refundedAmount: 1000, takeBack: 250 },
    ],
    [
      "a refund larger than the payment counts as the full amount",
      {},
      false,
      5000,
      { outcome: "apply", status: "refunded", refundedAmount: 1000, takeBack: 500 },
    ],
    [
      "a lost dispute: all not yet reversed, the refunded amount stays",
      { status: "partially_refunded", refundedAmount: 200, creditsReversed: 100 },
      true,
      null,
      { outcome: "apply", status: "disputed_lost", refundedAmount: 200, takeBack: 400 },
    ],
    [
      "before the payment was credited: only the status moves",
      { status: "created" },
      false,
      1000,
      { outcome: "apply", status: "refunded", refundedAmount: 1000, takeBack: 0 },
    ],
    // @see issue 26, item 4 (the simulation, seed 8): its status ranks past paid, its credits were never added.
    [
      "refunded in part before it was credited, refunded again: nothing to take back",
      { status: "partially_refunded", refundedAmount: 333, creditEntryId: null },
      false,
      600,
      { outcome: "apply", status: "partially_refunded", refundedAmount: 600, takeBack: 0 },
    ],
    [
      "a redelivered full refund: duplicate",
      { status: "refunded", refundedAmount: 1000, creditsReversed: 500 },
      false,
      1000,
      { outcome: "duplicate" },
    ],
    [
      "an older partial refund after a later one: duplicate (same status), nothing taken",
      { status: "partially_refunded", refundedAmount: 500, creditsReversed: 250 },
      false,
      333,
      { outcome: "duplicate" },
    ],
    [
      "a partial refund after the full one: unchanged",
      { status: "refunded", refundedAmount: 1000, creditsReversed: 500 },
      false,
      333,
      { outcome: "unchanged" },
    ],
    [
      "a refund after a lost dispute: unchanged",
      { status: "disputed_lost", creditsReversed: 500 },
      false,
      1000,
      { outcome: "unchanged" },
    ],
  ])("%s", (_, over, dispute, refundedTotal, expected) => {
    const p = payment(over);
    expect(reversal(p, dispute, refundedBy(p.amount, { dispute, refundedTotal }))).toEqual(expected);
  });

  it("over any sequence of refunds, never takes back more than the payment bought, and all of it once fully refunded", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1e6 }),
        fc.integer({ min: 0, max: 1e6 }),
        fc.array(fc.integer({ min: 0, max: 2e6 }), { maxLength: 8 }),
        (amount, credits, totals) => {
          let p = payment({ amount, credits });
          for (const total of [...totals, amount]) {
            const r = reversal(p, false, refundedBy(amount, { dispute: false, refundedTotal: total }));
            if (r.outcome !== "apply") continue;
            expect(r.takeBack).toBeGreaterThanOrEqual(0);
            p = {
              ...p,
              status: r.status,
              refundedAmount: r.refundedAmount,
              creditsReversed: p.creditsReversed + r.takeBack,
            };
            expect(p.creditsReversed).toBeLessThanOrEqual(credits);
          }
          expect([p.status, p.creditsReversed]).toEqual(["refunded" satisfies PaymentStatus, credits]);
        },
      ),
    );
  });

  it("creditsToReverse: proportional, rounded up, all when fully refunded, never below what was taken", () => {
    expect(creditsToReverse(1000, 500, 1, 0)).toBe(1);
    expect(creditsToReverse(1000, 500, 1000, 0)).toBe(500);
    expect(creditsToReverse(1000, 500, 400, 300)).toBe(0);
  });
});

describe("takeBackPlan: voiding what is left of the grant, or deducting", () => {
  const open = (remaining: number) => ({ closedAt: null, remaining });
  it.each<
    [
      string,
      number,
      ReturnType<typeof open> | { closedAt: Date; remaining: number } | null,
      number,
      ReturnType<typeof takeBackPlan>,
    ]
  >([
    ["nothing spent: the whole grant is voided", 500, open(500), 0, { voidGrant: true, deduct: 0 }],
    ["part spent: the rest is voided, the spent part deducted", 500, open(200), 0, { voidGrant: true, deduct: 300 }],
    [
      "part held: voided with the hold's share counted, the rest deducted",
      500,
      open(200),
      100,
      { voidGrant: true, deduct: 200 },
    ],
    [
      "a refund larger than what is left: void it all, deduct the rest (debt)",
      800,
      open(500),
      0,
      { voidGrant: true, deduct: 300 },
    ],
    [
      "a partial take-back smaller than the grant's rest: deducted, the grant stays",
      100,
      open(500),
      0,
      { voidGrant: false, deduct: 100 },
    ],
    [
      "what is held pushes the rest past the take-back: deducted",
      450,
      open(400),
      100,
      { voidGrant: false, deduct: 450 },
    ],
    ["a grant spent to zero: deducted", 500, open(0), 0, { voidGrant: false, deduct: 500 }],
    [
      "a closed grant (expired or voided): deducted",
      500,
      { closedAt: new Date(0), remaining: 500 },
      0,
      { voidGrant: false, deduct: 500 },
    ],
    ["no grant: deducted", 500, null, 0, { voidGrant: false, deduct: 500 }],
  ])("%s", (_, k, grant, held, expected) => {
    expect(takeBackPlan(k, grant, held)).toEqual(expected);
  });

  it("takes back exactly k: what is voided (the grant's rest and what is held of it) plus what is deducted", () => {
    const n = fc.integer({ min: 0, max: 1e12 });
    fc.assert(
      fc.property(n, n, n, fc.boolean(), (k, remaining, held, closed) => {
        const plan = takeBackPlan(k, { closedAt: closed ? new Date(0) : null, remaining }, held);
        expect(plan.deduct).toBeGreaterThanOrEqual(0);
        expect((plan.voidGrant ? remaining + held : 0) + plan.deduct).toBe(k);
        if (closed) expect(plan.voidGrant).toBe(false);
      }),
    );
  });

  it("heldOf sums what active holds hold of one grant", () => {
    const hold = (allocations: { grantId: string; amount: number }[], status: Reservation["status"] = "active") => ({
      allocations,
      status,
    });
    expect(
      heldOf(
        [
          hold([
            { grantId: "g", amount: 3 },
            { grantId: "h", amount: 4 },
          ]),
          hold([{ grantId: "g", amount: 5 }]),
        ],
        "g",
      ),
    ).toBe(8);
    expect(heldOf([], "g")).toBe(0);
  });

  it("heldOf counts nothing of a hold that ended (released, committed or expired)", () => {
    for (const status of ["released", "committed", "expired"] as const) {
      expect(heldOf([{ allocations: [{ grantId: "g", amount: 5 }], status }], "g")).toBe(0);
    }
  });
});
