/**
 * A test runner of its own for the contract suite (`credit-management/testing` takes any runner's
 * `describe`, `it`, `expect`, `beforeAll` and `afterAll`): it collects what the suite registers,
 * then runs it in process and answers which cases passed and which failed, so that a test can run
 * the suite against a store with a planted fault and assert that it fails — and which cases caught
 * it — without those failures failing the run it is part of. `expect` is vitest's.
 */
import { expect } from "vitest";
import type { TestApi } from "../src/testing/index.js";

type Hook = () => unknown;
interface Case {
  readonly kind: "case";
  readonly name: string;
  readonly body: () => unknown;
  readonly timeout: number | undefined;
}
interface Block {
  readonly kind: "block";
  readonly name: string;
  readonly before: Hook[];
  readonly after: Hook[];
  readonly children: (Block | Case)[];
}

export interface SuiteReport {
  /** Full names (`describe > … > it`) of the cases that passed. */
  passed: string[];
  /** Milliseconds each case took, by full name. */
  took: Map<string, number>;
  /** The cases that failed (or timed out), with the first line of their error. */
  failed: { name: string; error: string }[];
}

/** Rejects with a timeout error after `ms`; the case's own promise is left to settle on its own. */
async function within(body: () => unknown, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  try {
    await Promise.race([Promise.resolve().then(body), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const firstLine = (error: unknown) => (error instanceof Error ? error.message : String(error)).split("\n")[0] ?? "";

/**
 * Collects what `register` registers through the test functions it is given, then runs it: hooks
 * and cases in order, each case within its own timeout (else `timeoutMs`). A `beforeAll` that
 * fails fails every case of its block. With `only`, just the cases whose full name it accepts run
 * (and the hooks of the blocks that hold them); the others are neither run nor reported.
 */
export async function runCollected(
  register: (test: TestApi) => void,
  timeoutMs = 30_000,
  only: (name: string) => boolean = () => true,
): Promise<SuiteReport> {
  const root: Block = { kind: "block", name: "", before: [], after: [], children: [] };
  let current = root;
  const test: TestApi = {
    describe(name, body) {
      const block: Block = { kind: "block", name, before: [], after: [], children: [] };
      current.children.push(block);
      const parent = current;
      current = block;
      try {
        body();
      } finally {
        current = parent;
      }
    },
    it(name, body, timeout) {
      current.children.push({ kind: "case", name, body, timeout });
    },
    beforeAll(body) {
      current.before.push(body);
    },
    afterAll(body) {
      current.after.push(body);
    },
    expect: expect as unknown as TestApi["expect"],
  };
  register(test);

  const report: SuiteReport = { passed: [], failed: [], took: new Map() };
  const cases = (block: Block, path: string[]): string[] =>
    block.children
      .flatMap((c) => (c.kind === "case" ? [[...path, c.name].join(" > ")] : cases(c, [...path, c.name])))
      .filter(only);

  const run = async (block: Block, path: string[]): Promise<void> => {
    if (cases(block, path).length === 0) return;
    for (const hook of block.before) {
      try {
        await within(hook, timeoutMs);
      } catch (error) {
        for (const name of cases(block, path)) report.failed.push({ name, error: `beforeAll: ${firstLine(error)}` });
        return;
      }
    }
    for (const child of block.children) {
      if (child.kind === "block") {
        await run(child, [...path, child.name]);
        continue;
      }
      const name = [...path, child.name].join(" > ");
      if (!only(name)) continue;
      const start = performance.now();
      try {
        await within(child.body, child.timeout ?? timeoutMs);
        report.passed.push(name);
      } catch (error) {
        report.failed.push({ name, error: firstLine(error) });
      }
      report.took.set(name, performance.now() - start);
    }
    for (const hook of block.after) await within(hook, timeoutMs).catch(() => {});
  };
  await run(root, []);
  return report;
}
