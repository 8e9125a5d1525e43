/**
 * `meter()`'s `minimum` (docs/metering.md, "A hold for what is there"): the call holds what the user
 * may spend when that is less than its estimate, down to `minimum`, and `fn` sees what is held.
 */
import { afterEach, describe, expect, it } from "vitest";
import {
  createCreditManager,
  InsufficientCreditsError,
  recordUsage,
  ValidationError,
  type CreditManager,
  type MeterOutcome,
} from "../src/index.js";

const managers: CreditManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.close();
});
async function setup(credits: number): Promise<CreditManager> {
  const m = await createCreditManager();
  managers.push(m);
  await m.credits.addCredits("u", credits);
  return m;
}

describe("meter(): minimum", () => {
  it("holds what the user has when the estimate is more, and fn sees it as the call's estimate", async () => {
    const m = await setup(120);
    const outcomes: MeterOutcome[] = [];
    const seen = await m.credits.meter(
      "u",
      { estimate: 500, minimum: 20, feature: "chat", onSettled: (o) => outcomes.push(o) },
      (call) => {
        recordUsage({ amount: call.estimate - 10 });
        return { held: call.estimate }; // (a number returned would be the charge)
      },
    );
    expect(seen).toEqual({ held: 120 });
    expect(outcomes).toMatchObject([{ outcome: "committed", estimate: 120, charged: 110 }]);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 10, reserved: 0 });
  });

  it("a keyed call retried holds the same capped hold and is charged once", async () => {
    const m = await setup(100);
    const run = () =>
      m.credits.meter("u", { estimate: 300, minimum: 10, idempotencyKey: "call-1" }, (call) => {
        recordUsage({ amount: 40 });
        return { held: call.estimate };
      });
    expect(await run()).toEqual({ held: 100 });
    await m.credits.addCredits("u", 1_000);
    expect(await run()).toEqual({ held: 100 });
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 1_060, reserved: 0 });
  });

  it("is refused below minimum before fn runs, and a minimum above the estimate is a ValidationError", async () => {
    const m = await setup(15);
    let ran = false;
    const fn = () => {
      ran = true;
      return Promise.resolve(0);
    };
    await expect(m.credits.meter("u", { estimate: 300, minimum: 20 }, fn)).rejects.toBeInstanceOf(
      InsufficientCreditsError,
    );
    await expect(m.credits.meter("u", { estimate: 10, minimum: 11 }, fn)).rejects.toBeInstanceOf(ValidationError);
    expect(ran).toBe(false);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 15, reserved: 0 });
  });
});
