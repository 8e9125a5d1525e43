import { describe, expect, it } from "vitest";
import { pacedSort } from "../src/util/paced-sort.js";

/** A pseudo-random sequence from `seed` (the same items every run). */
function items(n: number, seed: number): { key: number; at: number }[] {
  let x = seed;
  return Array.from({ length: n }, (_, at) => {
    x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
    return { key: x % 500, at }; // many ties: stability shows
  });
}

describe("pacedSort", () => {
  it("gives what a stable sort gives, for every size around its runs", async () => {
    for (const n of [0, 1, 2, 1023, 1024, 1025, 3000, 20_000]) {
      const xs = items(n, n + 7);
      const compare = (a: { key: number }, b: { key: number }) => a.key - b.key;
      expect(await pacedSort(xs, compare, () => undefined)).toEqual([...xs].sort(compare));
    }
  });

  it("pauses every few thousand comparisons, never sorting the whole in one piece", async () => {
    const xs = items(50_000, 1);
    let since = 0;
    let most = 0;
    let total = 0;
    let pauses = 0;
    const compare = (a: { key: number }, b: { key: number }) => {
      since++;
      total++;
      return a.key - b.key;
    };
    await pacedSort(xs, compare, () => {
      pauses++;
      most = Math.max(most, since);
      since = 0;
    });
    most = Math.max(most, since);
    expect(total).toBeGreaterThan(500_000);
    expect(pauses).toBeGreaterThan(100);
    // A run of 1,024 sorted at once is about 10,000 comparisons; a merge pauses every 1,024.
    expect(most).toBeLessThan(15_000);
  });
});
