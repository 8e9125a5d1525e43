import { availableParallelism } from "node:os";
import { defineConfig } from "vitest/config";

/**
 * What passing tests print on purpose, kept out of the run's output so that a passing run's stderr
 * is empty and anything else printed stands out. Each is a test's expected path, asserted there.
 */
const EXPECTED_OUTPUT: readonly RegExp[] = [
  // @hono/node-server logs a response body that failed while it was being sent: the upstream
  // streams that test/http/llm-*.test.ts cut on purpose ("other side closed").
  /^TypeError: terminated\n[\s\S]*SocketError: other side closed/,
  // Hono's default error handler logs what a handler threw: the handlers of the metering tests
  // that throw on purpose (test/http/metering-apps.ts, "model crashed").
  /^Error: model crashed\n/,
  // @anthropic-ai/sdk warns of a deprecated model name; the official-client tests name one.
  /^The model '[^']+' is deprecated and will reach end-of-life/,
  // The published contract suite says which case a store without deleteJournalBefore does not
  // run (test/define-store.test.ts builds such a store).
  /^\[contract\] .*: no deleteJournalBefore, the archive case is not run/,
];

/** CREDIT_TEST_DEPTH: the factor of the random runs' sizes (test/fixtures/depth.ts); 1 in CI. */
const depth = Math.max(1, Number(process.env.CREDIT_TEST_DEPTH ?? 1) || 1);

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Two test files at a time at least. Vitest's default, one fewer than the cores, runs them one
    // after another on a 2-core machine, where most files spend their time waiting on sockets,
    // child processes and the disk (CONTRIBUTING.md, "Tests").
    maxWorkers: Math.max(2, availableParallelism() - 1),
    // Fails a test after which node-pg warned of two queries at once on one client (pg 9 refuses them).
    // Scales fast-check's default runs with CREDIT_TEST_DEPTH (npm run test:deep; test/fixtures/depth.ts).
    setupFiles: ["test/setup/pg-warnings.ts", "test/setup/depth.ts"],
    // Builds the CLI once for the tests that run it as a process (inject("cliEntry")).
    globalSetup: ["test/setup/cli-build.ts"],
    // A deeper run (CREDIT_TEST_DEPTH, npm run test:deep) gives its longer cases as much more time.
    testTimeout: 60_000 * depth,
    hookTimeout: 60_000,
    onConsoleLog: (log) => (EXPECTED_OUTPUT.some((pattern) => pattern.test(log)) ? false : undefined),
    // The run ends with what was skipped and why (test/setup/skip-summary.ts). CI also reads a
    // machine summary from the JSON file (see .ci/run).
    reporters: ["default", "./test/setup/skip-summary.ts", ...(process.env.CI ? ["json"] : [])],
    outputFile: process.env.CI ? { json: ".ci/test-results.json" } : undefined,
  },
});
