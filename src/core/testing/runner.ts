/**
 * The test functions the contract suites run on. The suites do not import a test runner: they get
 * `describe`, `it`, `expect`, `beforeAll` and `afterAll` from their caller (vitest's or jest's, or
 * any with the same shape), so this entry point loads with `import` and `require` alike and under
 * any runner. Without them, the runner's globals are used (vitest with `globals: true`, jest).
 */
import { ConfigurationError } from "../errors.js";

/** What the contract suites assert with: the subset of vitest's and jest's `expect` they use. @beta */
export interface Assertion {
  /** Passes when the value is the expected one (`Object.is`). */
  toBe(expected: unknown): void;
  /** Passes when the value deeply equals the expected one. */
  toEqual(expected: unknown): void;
  /** Passes when the value has the expected properties. */
  toMatchObject(expected: object): void;
  /** Passes when the value's length is `n`. */
  toHaveLength(length: number): void;
  /** Passes when the value is null. */
  toBeNull(): void;
  /** Passes when the value is an instance of the class. */
  toBeInstanceOf(expected: unknown): void;
  /** Passes when the string matches. */
  toMatch(expected: string | RegExp): void;
  /** Passes when the function throws (a matching error, when given). */
  toThrow(expected?: string | RegExp | Error | (abstract new (...args: never[]) => unknown)): void;
  /** Passes when the number is at least `n`. */
  toBeGreaterThanOrEqual(expected: number | bigint): void;
  /** Passes when the number is at most `n`. */
  toBeLessThanOrEqual(expected: number | bigint): void;
  /** The negated assertions. */
  readonly not: Assertion;
  /** Assertions on the promise's rejection. */
  readonly rejects: AsyncAssertion;
  /** Assertions on the promise's value. */
  readonly resolves: AsyncAssertion;
}

/** `expect(promise).rejects` / `.resolves`: the same matchers, awaited. @beta */
export interface AsyncAssertion {
  /** Passes when the value is the expected one (`Object.is`). */
  toBe(expected: unknown): PromiseLike<unknown>;
  /** Passes when the value deeply equals the expected one. */
  toEqual(expected: unknown): PromiseLike<unknown>;
  /** Passes when the value has the expected properties. */
  toMatchObject(expected: object): PromiseLike<unknown>;
  /** Passes when the value's length is `n`. */
  toHaveLength(length: number): PromiseLike<unknown>;
  /** Passes when the value is null. */
  toBeNull(): PromiseLike<unknown>;
  /** Passes when the value is an instance of the class. */
  toBeInstanceOf(expected: unknown): PromiseLike<unknown>;
  /** Passes when the string matches. */
  toMatch(expected: string | RegExp): PromiseLike<unknown>;
  /** Passes when the promise rejects (with a matching error, when given). */
  toThrow(expected?: string | RegExp | Error | (abstract new (...args: never[]) => unknown)): PromiseLike<unknown>;
  /** The negated assertions. */
  readonly not: AsyncAssertion;
}

/** The `expect` of the test runner the suite is given: vitest's, jest's. @beta */
export interface Expect {
  /** An assertion on `value`. */
  (actual: unknown, message?: string): Assertion;
  /** An asymmetric matcher: any instance of `constructor`. */
  any(constructor: unknown): unknown;
}

/**
 * The test functions of your runner. With vitest:
 * `import { afterAll, beforeAll, describe, expect, it } from "vitest"` and pass
 * `{ describe, it, expect, beforeAll, afterAll }`.
 * @beta
 */
export interface TestApi {
  /** The runner's `describe`. */
  describe(name: string, body: () => void): unknown;
  /** The runner's `it`. */
  it(name: string, body: () => unknown, timeout?: number): unknown;
  /** The runner's `beforeAll`. */
  beforeAll(body: () => unknown, timeout?: number): unknown;
  /** The runner's `afterAll`. */
  afterAll(body: () => unknown, timeout?: number): unknown;
  /** The runner's `expect`. */
  expect: Expect;
}

let current: TestApi | null = null;
/** Whether `current.expect` takes a message as its second argument (vitest's does, jest's throws). */
let takesMessage = true;

/** Whether `expect(value, message)` is accepted (jest's `expect` refuses a second argument). */
function acceptsMessage(expect: Expect): boolean {
  try {
    expect(0, "credit-management probe");
    return true;
  } catch {
    return false;
  }
}

/**
 * `assertion` whose failures carry `message` in front of their own, for an `expect` that takes
 * none: every matcher (and `.not`, `.rejects`, `.resolves`) as it is, its error (thrown, or the
 * rejection of an async one) annotated.
 */
function withMessage<T extends object>(assertion: T, message: string): T {
  const annotate = (error: unknown): unknown => {
    if (error instanceof Error) error.message = `${message}: ${error.message}`;
    return error;
  };
  return new Proxy(assertion, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property);
      if (typeof value === "function") {
        return (...args: unknown[]) => {
          try {
            const out: unknown = (value as (...a: unknown[]) => unknown).apply(target, args);
            if (out !== null && typeof (out as PromiseLike<unknown>)?.then === "function")
              return Promise.resolve(out).catch((error: unknown) => {
                throw annotate(error);
              });
            return out;
          } catch (error) {
            throw annotate(error);
          }
        };
      }
      return value !== null && typeof value === "object" ? withMessage(value, message) : value;
    },
  });
}

const NAMES = ["describe", "it", "expect", "beforeAll", "afterAll"] as const;

/** The test functions `api` lacks (none: it is a `TestApi`). */
const lacks = (api: object) => NAMES.filter((n) => typeof Reflect.get(api, n) !== "function");
const isTestApi = (api: object): api is TestApi => lacks(api).length === 0;

/** The runner's globals (vitest with `globals: true`, jest), or null. */
function fromGlobals(): TestApi | null {
  const g: object = globalThis;
  return isTestApi(g) ? g : null;
}

/** Sets the test functions the suites use from now on: `test`, else the runner's globals. */
export function useTestApi(test: TestApi | undefined): void {
  if (test !== undefined) {
    const missing = lacks(test);
    if (missing.length > 0) {
      throw new ConfigurationError(`[credit-management] [testing] \`test\` lacks ${missing.join(", ")}`);
    }
  }
  current = test ?? fromGlobals() ?? current;
  if (current === null) {
    throw new ConfigurationError(
      "[credit-management] [testing] pass your test runner's functions: `test: { describe, it, expect, beforeAll, afterAll }` " +
        '(with vitest: import them from "vitest"), or run with its globals on',
    );
  }
  takesMessage = acceptsMessage(current.expect);
}

function api(): TestApi {
  if (current === null) useTestApi(undefined);
  return current as TestApi;
}

export const describe: TestApi["describe"] = (name, body) => api().describe(name, body);
export const it: TestApi["it"] = (name, body, timeout) =>
  timeout === undefined ? api().it(name, body) : api().it(name, body, timeout);
export const beforeAll: TestApi["beforeAll"] = (body, timeout) =>
  timeout === undefined ? api().beforeAll(body) : api().beforeAll(body, timeout);
export const afterAll: TestApi["afterAll"] = (body, timeout) =>
  timeout === undefined ? api().afterAll(body) : api().afterAll(body, timeout);
export const expect: Expect = Object.assign(
  (actual: unknown, message?: string) => {
    const test = api();
    if (message === undefined) return test.expect(actual);
    // jest's `expect` takes no message: it goes in front of a failure's own instead.
    return takesMessage ? test.expect(actual, message) : withMessage(test.expect(actual), message);
  },
  {
    any: (constructor: unknown) => api().expect.any(constructor),
  },
);
