// credit-management/testing with an `expect` that takes no message, as jest's: the suites pass one
// (vitest's `expect(value, message)`), which jest's refuses ("Expect takes at most one argument").
// The runner gives such an `expect` the value alone and puts the message in front of a failure's
// own (docs/testing.md). See issue 60.
import { afterAll, beforeAll, describe, expect as vitestExpect, it } from "vitest";
import { InMemoryDbManager } from "../src/index.js";
import { runDbManagerContract } from "../src/testing/index.js";
import { contractTestApi } from "./fixtures/contract-variants.js";
import { expect as suiteExpect, useTestApi, type Expect } from "../src/core/testing/runner.js";

/** jest's shape: one argument only. */
const oneArgument = Object.assign(
  (actual: unknown, ...rest: unknown[]) => {
    if (rest.length > 0) throw new Error("Expect takes at most one argument.");
    return vitestExpect(actual);
  },
  { any: (c: unknown) => vitestExpect.any(c as never) },
) as unknown as Expect;

const test = { describe, it, expect: oneArgument, beforeAll, afterAll };

describe("an expect that takes no message", () => {
  it("passes what passes; a failure carries the suite's message in front, sync and async", async () => {
    useTestApi(test);
    suiteExpect(2, "two").toBe(2);
    vitestExpect(() => suiteExpect(1, "the balance after a grant").toBe(2)).toThrow(/^the balance after a grant: /);
    vitestExpect(() => suiteExpect(1, "negated").not.toBe(1)).toThrow(/^negated: /);
    await vitestExpect(suiteExpect(Promise.resolve(1), "awaited").resolves.toBe(2)).rejects.toThrow(/^awaited: /);
    await suiteExpect(Promise.reject(new Error("x")), "refused").rejects.toThrow("x");
  });
});

// A variant of the in-memory store's run (test/memory.test.ts): every case through jest's shape of
// `expect` but the random runs of the domain's rules, which that run makes
// (test/fixtures/contract-variants.ts).
const name = "memory, with a one-argument expect (jest's shape)";
runDbManagerContract({
  name,
  create: async () => new InMemoryDbManager(),
  createPeer: async (db) => db,
  test: contractTestApi([name], test),
});
