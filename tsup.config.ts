import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { rollup } from "rollup";
import { dts } from "rollup-plugin-dts";
import { defineConfig } from "tsup";

const entry: Record<string, string> = {
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
};

export default defineConfig({
  entry,
  format: ["esm", "cjs"],
  // The declarations are built once the JavaScript is (`buildDeclarations`, below).
  dts: false,
  onSuccess: buildDeclarations,
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

/**
 * The declarations of each entry point, `.d.ts` beside the ES module and `.d.cts` beside the
 * CommonJS one. tsc emits one declaration file per source file of src/ (tsconfig.types.json:
 * @internal members stripped) into a temporary folder, and rollup-plugin-dts rolls them up per
 * entry point, the declarations that several entry points share in chunks of their own. tsup's
 * `dts` option runs the same plugin on the sources, where TypeScript type-checks the program again
 * for each file it emits: 90 s here, against 25 s this way. The type check is `npm run typecheck`'s.
 * rollup-plugin-dts stays at the version tsup 8.5 bundles: 6.5 puts what `credit-management/core`
 * shares with the root entry point in the root's file, so the core's declarations would load the
 * whole package's.
 */
async function buildDeclarations(): Promise<void> {
  // Outside node_modules: rollup-plugin-dts leaves what is there to the package's dependencies.
  const emitted = mkdtempSync(join(tmpdir(), "credit-management-declarations-"));
  try {
    const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
    execFileSync(process.execPath, [tsc, "-p", "tsconfig.types.json", "--outDir", emitted], { stdio: "inherit" });
    const input = Object.fromEntries(
      Object.entries(entry).map(([name, source]) => [
        name,
        join(emitted, source.replace(/^src\//, "").replace(/\.ts$/, ".d.ts")),
      ]),
    );
    const bundle = await rollup({
      input,
      plugins: [dts()],
      // Only the package's own files are rolled up; zod, the drivers and node: are imported.
      external: (id) => !id.startsWith(".") && !id.startsWith("/"),
      onwarn(warning, warn) {
        // The CLI entry point exports nothing: its declarations are empty.
        if (warning.code !== "CIRCULAR_DEPENDENCY" && warning.code !== "EMPTY_BUNDLE") warn(warning);
      },
    });
    // A chunk is named after its first file, `usage.d` for usage.d.ts: `usage-<hash>` here.
    const chunk = (extension: string) => (c: { name: string }) => `${c.name.replace(/\.d$/, "")}-[hash]${extension}`;
    for (const extension of [".d.ts", ".d.cts"])
      await bundle.write({
        dir: "dist",
        format: "es",
        entryFileNames: `[name]${extension}`,
        chunkFileNames: chunk(extension),
      });
    await bundle.close();
  } finally {
    rmSync(emitted, { recursive: true, force: true });
  }
}
