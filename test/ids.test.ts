import { describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";

// docs/concepts.md, "Ids": the ids the library makes are time-ordered UUIDs (version 7, RFC 9562).
const V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
/** The Unix time in ms in a version 7 id's first 48 bits. */
const msOf = (id: string) => Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16);

describe("the ids the library makes", () => {
  it("are version 7 UUIDs carrying the time they were made: an entry's, its grant's and a hold's", async () => {
    const m = await createCreditManager();
    const before = Date.now();
    const added = await m.credits.addCredits("u", 100);
    const hold = await m.credits.reserveCredits("u", 10);
    const after = Date.now();
    const grantId = added.grants[0]!.grantId;
    for (const id of [added.id, grantId, hold.id]) {
      expect(id).toMatch(V7);
      expect(msOf(id)).toBeGreaterThanOrEqual(before);
      expect(msOf(id)).toBeLessThanOrEqual(after);
    }
  });

  it("made one after another sort in the order they were made, within one millisecond too", async () => {
    const m = await createCreditManager();
    await m.credits.addCredits("u", 10_000);
    const ids: string[] = [];
    for (let i = 0; i < 1000; i++) ids.push((await m.credits.deductCredits("u", 1)).id);
    // A deduction in memory takes microseconds: many ids share their millisecond with others.
    expect(new Set(ids.map(msOf)).size).toBeLessThan(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });
});
