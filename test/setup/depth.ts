/**
 * fast-check's default number of runs (100, for a property that names none) at the run's depth
 * (`CREDIT_TEST_DEPTH`, test/fixtures/depth.ts); a property that names its runs scales them with
 * `deep(n)`.
 */
import fc from "fast-check";
import { DEPTH, deep } from "../fixtures/depth.js";

if (DEPTH > 1) fc.configureGlobal({ ...fc.readConfigureGlobal(), numRuns: deep(100) });
