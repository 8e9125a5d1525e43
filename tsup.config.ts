import { defineConfig } from "tsup";

export default defineConfig({
  entry: {
    index: "src/index.ts",
    "core/index": "src/core/index.ts",
    "testing/index": "src/testing/index.ts",
    "postgres/index": "src/db/postgres/index.ts",
    "cli/index": "src/cli/index.ts",
    "mongodb/index": "src/db/mongodb/index.ts",
    "sqlite/index": "src/db/sqlite/index.ts",
    "redis/index": "src/redis/index.ts",
    "nats/index": "src/nats/index.ts",
    "webhooks/index": "src/webhooks/index.ts",
    "http/index": "src/http/index.ts",
    "models/index": "src/models-public.ts",
    store: "src/store.ts",
    "schema/index": "src/schema/public.ts",
    "otel/index": "src/otel/index.ts",
    "worker/index": "src/worker/index.ts",
    // uPlot's files are in src/console/vendor.ts (scripts/console-vendor.mjs): bundled, not a dependency.
    "console/index": "src/console/index.ts",
    "ai/index": "src/ai/index.ts",
  },
  format: ["esm", "cjs"],
  // Members marked @internal serve the package's own modules: not in the published declarations.
  dts: { compilerOptions: { stripInternal: true } },
  sourcemap: true,
  clean: true,
  target: "node20",
  // Keep `node:` on built-in imports: Cloudflare Workers (nodejs_compat) and Deno resolve
  // `node:crypto`, and bundlers for those targets mark `node:*` external (docs/runtimes.md).
  removeNodeProtocol: false,
  splitting: true,
  treeshake: true,
  // Drivers and test runners are peers: never bundle them.
  external: [
    "mongodb",
    "pg",
    "ioredis",
    "better-sqlite3",
    // Bun's own SQLite: loaded by src/db/sqlite/bun.ts, only under Bun (docs/runtimes.md).
    "bun:sqlite",
    "vitest",
    "fast-check",
    "@nats-io/jetstream",
    "@nats-io/transport-node",
    "@opentelemetry/api",
    "@opentelemetry/sdk-metrics",
    "@opentelemetry/exporter-prometheus",
    // credit-management/ai imports only types from them (docs/llm-metering.md, "The AI SDK").
    "ai",
    "@ai-sdk/provider",
  ],
});
