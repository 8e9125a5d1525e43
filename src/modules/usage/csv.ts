import type { UsageDimension, UsageReport } from "../../core/models/usage.js";
import { DEFAULT_UNIT } from "../../core/models/common.js";
import { toCsv } from "../../util/csv.js";

/** The columns after the dimensions, each a field of the usage row. */
const COLUMNS = ["kind", "credits", "requests", "inputTokens", "outputTokens", "cachedTokens", "shortfall"] as const;

/**
 * A usage report as CSV (docs/usage.md, "Over HTTP"): RFC 4180, a header line, then a row per usage
 * row — `start`, `end` (ISO 8601, UTC), the dimensions of `groupBy` in its order, `kind`, `unit`
 * when a row of the report is in another unit than the default one (docs/units.md; the default
 * one's rows say `credits`), `credits`, `requests`, `inputTokens`, `outputTokens`, `cachedTokens`, `shortfall`
 * (credits served and not paid), then `catchUpThrough` (ISO 8601; empty on an ordinary row) when a row
 * of the report is catch-up usage of a closed period (docs/usage.md, "Closed months").
 * Text that a spreadsheet would run as a formula (beginning with `=`, `+`, `-`, `@`, a tab or a CR)
 * is prefixed with `'`.
 * @public
 */
export function usageCsv(report: UsageReport, groupBy: readonly UsageDimension[] = []): string {
  const units = report.rows.some((r) => r.unit !== undefined);
  const catchUp = report.rows.some((r) => r.catchUpThrough !== undefined);
  const [kind, ...measures] = COLUMNS;
  return toCsv(
    ["start", "end", ...groupBy, kind, ...(units ? ["unit"] : []), ...measures, ...(catchUp ? ["catchUpThrough"] : [])],
    report.rows.map((r) => [
      r.start,
      r.end,
      ...groupBy.map((g) => r[g]),
      r.kind,
      ...(units ? [r.unit ?? DEFAULT_UNIT] : []),
      ...measures.map((c) => r[c]),
      ...(catchUp ? [r.catchUpThrough ?? null] : []),
    ]),
  );
}
