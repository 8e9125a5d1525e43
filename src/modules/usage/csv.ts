import type { UsageDimension, UsageReport } from "../../core/models/usage.js";
import { toCsv } from "../../util/csv.js";

/** The columns after the dimensions, each a field of the usage row. */
const COLUMNS = ["kind", "credits", "requests", "inputTokens", "outputTokens", "cachedTokens"] as const;

/**
 * A usage report as CSV (docs/usage.md, "Over HTTP"): RFC 4180, a header line, then a row per usage
 * row — `start`, `end` (ISO 8601, UTC), the dimensions of `groupBy` in its order, `kind`, `credits`,
 * `requests`, `inputTokens`, `outputTokens`, `cachedTokens`. Text that a spreadsheet would run as a
 * formula (beginning with `=`, `+`, `-`, `@`, a tab or a CR) is prefixed with `'`.
 * @public
 */
export function usageCsv(report: UsageReport, groupBy: readonly UsageDimension[] = []): string {
  return toCsv(
    ["start", "end", ...groupBy, ...COLUMNS],
    report.rows.map((r) => [r.start, r.end, ...groupBy.map((g) => r[g]), ...COLUMNS.map((c) => r[c])]),
  );
}
