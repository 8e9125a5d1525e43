import { USAGE_MEASURES, USAGE_RULES, type UsageRules, type UsageScan } from "../../core/domain/usage.js";
import { rollupColumn, sqlMeasure } from "../../schema/usage-sql.js";
import { PG_QUERY, usageQuery, type RollupDays } from "../usage-query.js";

/**
 * The usage query of a PostgreSQL store (src/db/usage-query.ts): entries by the primary key
 * (user_id, seq) for one account, by the BRIN index on created_at for every account, each in its
 * window by `width_bucket`; with `rollup`, the whole days from the daily rollup.
 */
export function usageSql(
  journal: string,
  scan: UsageScan,
  rollup?: { table: string; days: RollupDays },
  rules: UsageRules = USAGE_RULES,
): { text: string; params: unknown[] } {
  return usageQuery(
    PG_QUERY,
    journal,
    scan,
    rules,
    rollup === undefined ? undefined : { days: rollup.days, rows: (q) => rollupPart(rollup, scan, q) },
  );
}

const DAY = 86_400_000;

/**
 * The whole UTC days a report may read from the rollup (docs/usage.md, "The daily rollup"), or
 * null when it must read the journal: only a report across accounts (no `account`) grouped by
 * account or by nothing — the rollup keeps no other dimension — whose windows are made of whole
 * UTC days (each boundary between `from` and `to` a UTC midnight: `interval: null` in any time
 * zone, or days, weeks or months in UTC), and whose range holds at least one whole day. The
 * partial days at the edges (a `from` or `to` that is not a midnight) are read from the journal.
 */
export function rollupDays(scan: UsageScan): RollupDays | null {
  if (scan.account !== null || scan.fromJournal === true || scan.groupBy.some((d) => d !== "account")) return null;
  const b = scan.boundaries;
  for (let i = 1; i < b.length - 1; i++) if (b[i]! % DAY !== 0) return null;
  const from = Math.ceil(scan.from.getTime() / DAY) * DAY;
  const to = Math.floor(scan.to.getTime() / DAY) * DAY;
  return from < to ? { from, to } : null;
}

/** The rollup's rows of the whole days as parts of `n` (the window of each day by `width_bucket`). */
function rollupPart(
  rollup: { table: string; days: RollupDays },
  scan: UsageScan,
  { bounds, kindIn, p }: { bounds: string; kindIn: (x: string) => string; p: (v: unknown) => string },
): string {
  const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
  // Summed per window, kind (and account) first, by hash: the outer GROUP BY then sees one row per
  // group instead of one per account and day (and sorts no more than fits in work_mem).
  const byAccount = scan.groupBy.length > 0;
  return (
    `UNION ALL SELECT ${["w", "kind", "unit", ...scan.groupBy.map((_, i) => `u AS g${i}`)].join(", ")}, ` +
    `${USAGE_MEASURES.map((m) => `sum(${sqlMeasure(m)})`).join(", ")} FROM (SELECT ` +
    // One window (interval null): no bucket to work out, and the planner counts the groups right.
    `${scan.boundaries.length === 2 ? "0" : `width_bucket(r.day::timestamp AT TIME ZONE 'UTC', ${bounds}::timestamptz[]) - 1`} AS w, r.kind AS kind, nullif(r.unit, '') AS unit, r.user_id AS u, ` +
    `${USAGE_MEASURES.map((m) => `r.${rollupColumn(m)} AS ${sqlMeasure(m)}`).join(", ")} FROM ${rollup.table} r ` +
    `WHERE r.day >= ${p(day(rollup.days.from))}::date AND r.day < ${p(day(rollup.days.to))}::date AND ${kindIn("r.kind")}) AS rr ` +
    `GROUP BY w, kind, unit${byAccount ? ", u" : ""}) `
  );
}
