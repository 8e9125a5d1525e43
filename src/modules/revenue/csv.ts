import type { RevenueDimension, RevenueReport } from "./model.js";
import { csvLines, csvStream } from "../../util/csv.js";

/**
 * The figures of a revenue row, in the order the CSV writes them (docs/revenue.md, "What each figure
 * means"), and their columns: money in the currency's smallest unit, named so (`paidMinor`: cents
 * for USD), so that a spreadsheet reader does not take 20 for $20.
 */
const FIGURES = [
  ["deferredStart", "deferredStartMinor"],
  ["paid", "paidMinor"],
  ["recognized", "recognizedMinor"],
  ["breakage", "breakageMinor"],
  ["refunds", "refundsMinor"],
  ["deferredEnd", "deferredEndMinor"],
  ["unbilledCredits", "unbilledCredits"],
] as const;

/**
 * A revenue report as CSV (docs/revenue.md, "Where finance reads it"): RFC 4180, a header line, then
 * a row per revenue row — `start`, `end` (ISO 8601, UTC), `currency` (empty on the rows of unbilled
 * usage), the dimensions of `groupBy` in its order, `catchUpThrough` (ISO 8601 on a catch-up row,
 * docs/revenue.md "Closing a month"; empty on ordinary rows), then `deferredStartMinor`, `paidMinor`,
 * `recognizedMinor`, `breakageMinor`, `refundsMinor`, `deferredEndMinor` (the currency's smallest
 * unit) and `unbilledCredits` (credits). Text a spreadsheet would run as a formula (an account id or spender beginning with `=`,
 * `+`, `-`, `@`, a tab or a CR) is prefixed with `'`, as in `usageCsv`.
 * @public
 */
export function revenueCsv(report: RevenueReport, groupBy: readonly RevenueDimension[] = []): string {
  let out = "";
  for (const line of revenueCsvLines(report, groupBy)) out += line;
  return out;
}

/** The lines of `revenueCsv`'s document, one at a time (what the HTTP route and the CLI stream). */
export function revenueCsvLines(report: RevenueReport, groupBy: readonly RevenueDimension[] = []): Generator<string> {
  return csvLines(
    ["start", "end", "currency", ...groupBy, "catchUpThrough", ...FIGURES.map(([, column]) => column)],
    (function* () {
      for (const r of report.rows)
        yield [
          r.start,
          r.end,
          r.currency,
          ...groupBy.map((g) => r[g]),
          r.catchUpThrough,
          ...FIGURES.map(([f]) => r[f]),
        ];
    })(),
  );
}

/** `revenueCsv`'s document as a stream of UTF-8 chunks, made as the reader asks (the HTTP route's body). */
export function revenueCsvStream(
  report: RevenueReport,
  groupBy: readonly RevenueDimension[] = [],
): ReadableStream<Uint8Array> {
  return csvStream(revenueCsvLines(report, groupBy));
}
