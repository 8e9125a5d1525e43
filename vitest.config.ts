import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Fails a test after which node-pg warned of two queries at once on one client (pg 9 refuses them).
    setupFiles: ["test/setup/pg-warnings.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // CI reads a machine summary from this file (see .ci/run).
    reporters: process.env.CI ? ["default", "json"] : ["default"],
    outputFile: process.env.CI ? { json: ".ci/test-results.json" } : undefined,
  },
});
