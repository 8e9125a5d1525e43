// The rollover rule on its own (src/core/domain/rollover.ts): what a carried grant had unspent and
// unheld at its period's end. The contract suite (src/core/testing/subscriptions.ts) checks it end to
// end on every store; these cases pin each branch of the rule.
import { describe, expect, it } from "vitest";
import { expiriesIn, liveAt, readExpiry, unspentAtEnd, type ExpiryRead } from "../src/core/domain/rollover.js";
import type { JournalEntry, Reservation } from "../src/core/models/index.js";
import { samples } from "./fixtures/samples.js";

const END = Date.parse("2030-02-01T00:00:00Z");
const hold = (id: string, status: Reservation["status"], expiresAt: number): Reservation => ({
  ...samples.reservations,
  unit: null,
  id,
  status,
  expiresAt: new Date(expiresAt),
});
const entry = (
  type: JournalEntry["type"],
  grants: [string, number][],
  reservationId: string | null = null,
): JournalEntry => ({
  ...samples.journal,
  type,
  reservationId,
  grants: grants.map(([grantId, amount]) => ({ grantId, amount })),
});

describe("liveAt: did a hold still hold its credits at the period's end?", () => {
  it("a hold that lapsed by the end did not; one that lapsed later, or ended otherwise, or is unknown, did", () => {
    expect(liveAt(hold("h", "expired", END - 1), END)).toBe(false);
    expect(liveAt(hold("h", "expired", END), END)).toBe(false);
    expect(liveAt(hold("h", "expired", END + 1), END)).toBe(true);
    expect(liveAt(hold("h", "released", END - 1), END)).toBe(true); // released while live: after the end
    expect(liveAt(hold("h", "committed", END - 1), END)).toBe(true);
    expect(liveAt(null, END)).toBe(true);
    expect(liveAt(undefined, END)).toBe(true);
  });
});

describe("expiriesIn: one grant's expiries among a unit of work's entries", () => {
  const holds = new Map([
    ["live", hold("live", "released", END + 60_000)],
    ["lapsed", hold("lapsed", "expired", END - 60_000)],
  ]);
  const entries = [
    entry("deduct", [["g", 5]]), // not an expiry
    entry("expire", [
      ["g", 30],
      ["other", 7],
    ]), // the period's closing expiry
    entry("expire", [["g", 4]], "live"), // returned by a hold still live at the end: not carried
    entry("expire", [["g", 3]], "lapsed"), // returned late by a hold lapsed before the end: carried
    entry("expire", [["other", 9]], "live"),
  ];

  it("counts every expiry of the grant, and apart what holds live at the end returned", () => {
    const g = expiriesIn(entries, "g", END, (id) => holds.get(id));
    expect(g).toEqual({ expired: 37, held: 4 });
    expect(unspentAtEnd(g)).toBe(33);
    expect(expiriesIn(entries, "other", END, (id) => holds.get(id))).toEqual({ expired: 16, held: 9 });
    expect(expiriesIn(entries, "none", END, (id) => holds.get(id))).toEqual({ expired: 0, held: 0 });
  });

  it("a hold the unit of work does not know counts as live (its credits are not carried)", () => {
    expect(expiriesIn([entry("expire", [["g", 6]], "gone")], "g", END, () => undefined)).toEqual({
      expired: 6,
      held: 6,
    });
  });

  it("never carries less than nothing", () => {
    expect(unspentAtEnd({ expired: 2, held: 5 })).toBe(0);
  });
});

describe("readExpiry: a user's expiries and reversals read newest first, up to each grant's closing entry", () => {
  it("counts apart what came back after the close: a live hold's return and a reversal's; stops at the close", () => {
    const live = (id: string) => id === "live";
    const g: ExpiryRead = { expired: 100, seen: 0, held: 0 };
    const reading = new Map([["g", g]]);
    // Newest first: a reversal's give-back and its expire again, a live hold's return, a lapsed
    // hold's late return, then the closing expiry.
    expect(readExpiry(reading, entry("expire", [["g", 20]]), live)).toEqual([]);
    expect(readExpiry(reading, entry("reverse", [["g", 20]]), live)).toEqual([]);
    expect(readExpiry(reading, entry("expire", [["g", 30]], "live"), live)).toEqual([]);
    expect(readExpiry(reading, entry("expire", [["g", 5]], "lapsed"), live)).toEqual([]);
    expect(
      readExpiry(
        reading,
        entry("expire", [
          ["g", 45],
          ["other", 9],
        ]),
        live,
      ),
    ).toEqual(["g"]);
    expect(g).toEqual({ expired: 100, seen: 100, held: 50 });
    expect(unspentAtEnd(g)).toBe(50);
  });

  it("a reversal's portion that paid debt instead came back to no closed grant", () => {
    const g: ExpiryRead = { expired: 10, seen: 0, held: 0 };
    const paid = { ...entry("reverse", []), grants: [{ grantId: "g", amount: 4, kind: "debt_paid" as const }] };
    readExpiry(new Map([["g", g]]), paid, () => false);
    expect(g.held).toBe(0);
  });
});
