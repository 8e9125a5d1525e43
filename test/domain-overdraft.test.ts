// The overdraft rules on their own (src/core/domain/overdraft.ts): how far a charge of usage already
// delivered may take an account below zero, and what metering charges when the limit is reached.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { chargeWithinLimit, commitWithinLimit, headroom, requestedMeta } from "../src/core/domain/overdraft.js";

describe("headroom: what keeps available ≥ −overdraftLimit", () => {
  it.each([
    ["no limit: unbounded", 10, null, Infinity],
    ["a limit of 0: what is available", 10, 0, 10],
    ["available plus the limit", 10, 50, 60],
    ["already in overdraft: what is left of the limit", -30, 50, 20],
    ["at the limit: nothing", -50, 50, 0],
    ["past a limit lowered since: nothing, never negative", -80, 50, 0],
  ])("%s", (_, available, limit, expected) => {
    expect(headroom(available, limit)).toBe(expected);
  });
});

describe("charges and commits clamped to the limit", () => {
  it.each([
    ["within the headroom: all of it", 40, 60, 40],
    ["past it: the headroom", 100, 60, 60],
    ["no headroom: nothing", 100, 0, 0],
    ["no limit: all of it", 100, Infinity, 100],
  ])("charge %s", (_, requested, room, expected) => {
    expect(chargeWithinLimit(requested, room)).toBe(expected);
  });

  it.each([
    ["under the hold: what is asked", 30, 50, 0, 30],
    ["over the hold, within the headroom: what is asked", 70, 50, 20, 70],
    ["over the hold, past the headroom: the hold and the headroom", 90, 50, 20, 70],
    ["no headroom: the hold", 90, 50, 0, 50],
  ])("commit %s", (_, requested, held, room, expected) => {
    expect(commitWithinLimit(requested, held, room)).toBe(expected);
  });

  it("a clamped charge never takes available past −limit and never charges more than asked", () => {
    const n = fc.integer({ min: 0, max: 1e12 });
    fc.assert(
      fc.property(fc.integer({ min: -1e12, max: 1e12 }), n, n, (available, limit, requested) => {
        const charge = chargeWithinLimit(requested, headroom(available, limit));
        expect(charge).toBeLessThanOrEqual(requested);
        expect(charge).toBeGreaterThanOrEqual(0);
        if (charge > 0) expect(available - charge).toBeGreaterThanOrEqual(-limit);
      }),
    );
  });

  it("what was asked is recorded in the metadata only when the limit cut the charge; the shortfall never is", () => {
    const meta = { idempotencyKey: "k", metadata: { route: "/chat" } };
    expect(requestedMeta(meta, 100, 100)).toBe(meta);
    expect(requestedMeta(meta, 100, 60)).toEqual({
      idempotencyKey: "k",
      metadata: { route: "/chat", requested: 100 },
    });
    expect(requestedMeta({}, 5, 0).metadata).toEqual({ requested: 5 });
  });
});
