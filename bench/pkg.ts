/**
 * The library as the benchmark measures it: the built package in dist/ (what `npm install
 * credit-management` gives; `npm run bench` builds it first), not the TypeScript sources as tsx
 * runs them. tsx keeps function names by wrapping every function expression in a `__name(…)` call,
 * made again each time the enclosing function runs — on the hot path, a property definition per
 * closure per call that the published build does not have (six alternating pairs of runs: the
 * sources cost more CPU per reserve + commit cycle in all six, per deduction in four).
 * `BENCH_SOURCE=1` measures src/ (as tsx runs it) instead, without a build.
 *
 * Types come from src/ either way (dist/ may not exist when the bench is type-checked).
 */
import type * as Core from "../src/index.js";
import type * as Http from "../src/http/index.js";
import type * as MongoDb from "../src/db/mongodb/index.js";
import type * as Postgres from "../src/db/postgres/index.js";
import type * as Sqlite from "../src/db/sqlite/index.js";
import type * as Otel from "../src/otel/index.js";
import type * as Console from "../src/console/index.js";
import type * as Worker from "../src/worker/index.js";

const SOURCE = process.env.BENCH_SOURCE === "1";

/** Imports one entry point: dist/<built>index.js, or src/<source>index.ts (as tsx resolves index.js) with BENCH_SOURCE=1. */
async function entry<T>(built: string, source: string): Promise<T> {
  const url = new URL(SOURCE ? `../src/${source}index.js` : `../dist/${built}index.js`, import.meta.url);
  try {
    return (await import(url.href)) as T;
  } catch (error) {
    if (!SOURCE && (error as { code?: string }).code === "ERR_MODULE_NOT_FOUND") {
      throw new Error(
        `bench: ${url.pathname} is missing: run \`npm run build\` first (npm run bench does), or set BENCH_SOURCE=1`,
        { cause: error },
      );
    }
    throw error;
  }
}

/** What is measured, for the table's footer. */
export const measured = SOURCE ? "src/ as tsx runs it (BENCH_SOURCE=1)" : "the built package (dist/)";
export const core = await entry<typeof Core>("", "");
export const http = await entry<typeof Http>("http/", "http/");
export const consoleEntry = await entry<typeof Console>("console/", "console/");
/** Store adapters load only when their bench runs (their drivers are optional). */
export const mongodb = () => entry<typeof MongoDb>("mongodb/", "db/mongodb/");
export const postgres = () => entry<typeof Postgres>("postgres/", "db/postgres/");
export const sqlite = () => entry<typeof Sqlite>("sqlite/", "db/sqlite/");
/** The worker's rounds (`createWorker`). */
export const worker = () => entry<typeof Worker>("worker/", "worker/");
/** The OpenTelemetry integration (its peer, @opentelemetry/api, is a devDependency here). */
export const otel = () => entry<typeof Otel>("otel/", "otel/");
