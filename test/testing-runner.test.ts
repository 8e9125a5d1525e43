// credit-management/testing takes its test functions from the caller, so it loads without vitest
// (from CommonJS too; the tarball check requires it) and runs under any runner.
import { readdirSync, readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { ConfigurationError } from "../src/core/errors.js";
import { InMemoryDbManager } from "../src/index.js";
import { runContractPart, runDbManagerContract, type ContractPart, type TestApi } from "../src/testing/index.js";

describe("the contract suite's test functions", () => {
  it("no module of the testing entry point imports a test runner (it takes the caller's)", () => {
    const dir = new URL("../src/testing/", import.meta.url);
    const runners = readdirSync(dir)
      .filter((f) => f.endsWith(".ts"))
      .filter((f) =>
        /^import [^;]*from "(vitest|jest|@jest\/globals|mocha)"/m.test(readFileSync(new URL(f, dir), "utf8")),
      );
    expect(runners).toEqual([]);
  });

  it("without `test` and without a runner's globals, refuses with ConfigurationError that says what to pass", () => {
    expect(() => runDbManagerContract({ name: "no runner", create: async () => new InMemoryDbManager() })).toThrow(
      ConfigurationError,
    );
    expect(() => runDbManagerContract({ name: "no runner", create: async () => new InMemoryDbManager() })).toThrow(
      /test: \{ describe, it, expect, beforeAll, afterAll \}/,
    );
  });

  it("refuses a `test` that lacks one of the functions", () => {
    const partial = { describe, it, expect } as unknown as TestApi;
    expect(() =>
      runDbManagerContract({ name: "partial", create: async () => new InMemoryDbManager(), test: partial }),
    ).toThrow(/lacks beforeAll, afterAll/);
  });

  it("registers every suite and test through the functions it is given (another runner's)", () => {
    const registered: string[] = [];
    const path: string[] = [];
    const hooks: string[] = [];
    const other: TestApi = {
      describe: (name, body) => {
        path.push(name);
        body();
        path.pop();
      },
      it: (name) => void registered.push([...path, name].join(" > ")),
      beforeAll: () => void hooks.push("beforeAll"),
      afterAll: () => void hooks.push("afterAll"),
      expect: Object.assign(() => expect.unreachable("no test body runs while registering"), { any: () => null }),
    };
    runDbManagerContract({ name: "other runner", create: async () => new InMemoryDbManager(), test: other });
    expect(registered.length).toBeGreaterThan(50);
    expect(registered.every((t) => t.startsWith("DbManager contract: other runner > "))).toBe(true);
    expect(registered.some((t) => t.includes("notifications > "))).toBe(true);
    expect(hooks).toEqual(["beforeAll", "afterAll"]);
  });

  it("runContractPart registers one part's tests; an unknown part, or managers without a peer, is a ConfigurationError", () => {
    const registered: string[] = [];
    const path: string[] = [];
    const other: TestApi = {
      describe: (name, body) => {
        path.push(name);
        body();
        path.pop();
      },
      it: (name) => void registered.push([...path, name].join(" > ")),
      beforeAll: () => undefined,
      afterAll: () => undefined,
      expect: Object.assign(() => expect.unreachable("no test body runs while registering"), { any: () => null }),
    };
    const db = new InMemoryDbManager();
    runContractPart("trial", () => db, { test: other });
    expect(registered.length).toBeGreaterThan(0);
    expect(registered.every((t) => t.startsWith("trial credits > "))).toBe(true);
    expect(() => runContractPart("nope" as ContractPart, () => db, { test: other })).toThrow(ConfigurationError);
    expect(() => runContractPart("managers", () => db, { test: other })).toThrow(/needs `getPeer`/);
  });
});
