/**
 * Builds the CLI (src/cli/index.ts) once per test run, as tsup builds dist/cli/ (ESM in split
 * chunks, packages left to node_modules), for the tests that run `credit-management` as a process
 * of its own: each such child starts plain `node` on JavaScript instead of compiling the sources
 * again through tsx (seconds a child on a loaded machine). It is built from this run's sources,
 * never taken from dist/, which may be older than they are.
 *
 * The tests read the built entry's path with `inject("cliEntry")`.
 */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { build } from "esbuild";
import type { TestProject } from "vitest/node";

const root = join(import.meta.dirname, "../..");

export default async function setup(project: TestProject) {
  // Under node_modules, so that the chunks' imports of packages resolve as dist/'s do; a folder of
  // this run's own, as two runs at once may build different sources.
  const cache = join(root, "node_modules/.cache");
  mkdirSync(cache, { recursive: true });
  const outdir = mkdtempSync(join(cache, "credit-management-cli-"));
  await build({
    entryPoints: { index: join(root, "src/cli/index.ts") },
    outdir,
    bundle: true,
    // Split, as dist/cli/ is: index.ts holds a stop signal before it loads the rest
    // (test/serve-early-signal.test.ts).
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    packages: "external",
    sourcemap: true,
    logLevel: "warning",
  });
  project.provide("cliEntry", join(outdir, "index.js"));
  return () => rmSync(outdir, { recursive: true, force: true });
}

declare module "vitest" {
  export interface ProvidedContext {
    cliEntry: string;
  }
}
