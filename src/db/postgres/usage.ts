import {
  USAGE_MEASURES,
  USAGE_RULES,
  type UsageBucket,
  type UsageMeasure,
  type UsageRules,
  type UsageScan,
} from "../../domain/usage.js";
import type { UsageKind } from "../../models/usage.js";
import {
  pgElementMeasure,
  pgEntryMeasure,
  pgEntryTotal,
  pgKind,
  pgKindOrder,
  pgLit,
  pgMeasure,
  pgSourceArray,
  pgSourceSum,
  pgSources,
  pgStr,
  pgTypes,
  rollupColumn,
} from "../../schema/usage-pg.js";

/**
 * The usage query of a PostgreSQL store (docs/usage.md): the rules of `src/domain/usage.ts`
 * (`USAGE_RULES`, compiled by src/schema/usage-pg.ts; `groupValue`) in SQL, summed by `GROUP BY` with the
 * window of each entry from `width_bucket` over the query's boundaries (worked out in the query's
 * time zone before, so every store has the same windows). Entries are read by the primary key
 * (user_id, seq) for one account, by the BRIN index on created_at for every account. Only the
 * groups come back.
 */
export function usageSql(
  journal: string,
  scan: UsageScan,
  rollup?: { table: string; days: RollupDays },
  rules: UsageRules = USAGE_RULES,
): { text: string; params: unknown[] } {
  const params: unknown[] = [];
  const p = (v: unknown) => {
    params.push(v);
    return `$${params.length}`;
  };
  const bounds = p(scan.boundaries.map((b) => new Date(b).toISOString()));
  // With the rollup, the journal is read only for the partial days at the edges of the range.
  const where =
    rollup === undefined
      ? [`j.created_at >= ${p(scan.from)}`, `j.created_at < ${p(scan.to)}`]
      : [
          `((j.created_at >= ${p(scan.from)} AND j.created_at < ${p(new Date(rollup.days.from))}) OR ` +
            `(j.created_at >= ${p(new Date(rollup.days.to))} AND j.created_at < ${p(scan.to)}))`,
        ];
  if (scan.account !== null) where.unshift(`j.user_id = ${p(scan.account)}`);
  where.push(pgTypes("j", rules));
  const kinds = p([...scan.kinds]);
  // The rules (USAGE_RULES of src/domain/usage.ts) compiled: each entry's kind, its own measures
  // ("m_…") and the array of its part source ("a1", "a2", …: NULL but the one its parts come from).
  const sources = pgSources(rules);
  const entryCols = [
    ...USAGE_MEASURES.map((m) => `${pgEntryMeasure(m, "e1", "e1.kind", rules)} AS ${pgMeasure(m, "m_")}`),
    ...sources.map((s) => `${pgSourceArray(s.i, "e1", "e1.kind", rules)} AS a${s.i}`),
  ];
  const none = sources.length === 0 ? "true" : `(${sources.map((s) => `e.a${s.i} IS NULL`).join(" AND ")})`;
  // The measures some source balances: the parts' sum of each ("s_…"), the rest a part of its own.
  const balanced = USAGE_MEASURES.filter((m) => sources.some((s) => s.source.balanced.includes(m)));
  const sums = balanced.map((m) => {
    const branches = sources
      .filter((s) => s.source.balanced.includes(m))
      .map((s) => `WHEN e2.a${s.i} IS NOT NULL THEN ${pgSourceSum(s, m, `e2.a${s.i}`, `e2.${pgMeasure(m, "m_")}`)}`);
    return `COALESCE(CASE ${branches.join(" ")} END, 0) AS ${pgMeasure(m, "s_")}`;
  });
  const rest = (m: UsageMeasure) => {
    const entry = `e.${pgMeasure(m, "m_")}`;
    const left = balanced.includes(m) ? `${entry} - e.${pgMeasure(m, "s_")}` : "0";
    if (sources.every((s) => s.source.balanced.includes(m))) return left; // (s_ is 0 with no source)
    const branches = sources.map(
      (s) => `WHEN e.a${s.i} IS NOT NULL THEN ${s.source.balanced.includes(m) ? left : "0"}`,
    );
    return `CASE ${branches.join(" ")} ELSE ${entry} END`;
  };
  const restWhere = [
    none,
    ...sources.map((s) => {
      const differs = s.source.balanced.map((m) => `e.${pgMeasure(m, "m_")} <> e.${pgMeasure(m, "s_")}`);
      return `(e.a${s.i} IS NOT NULL AND (${differs.join(" OR ") || "false"}))`;
    }),
  ];
  const own = sources.filter((s) => s.source.own).map((s) => `e.a${s.i} IS NOT NULL`);
  // usageParts: each element of the entry's source, then what they do not account for, or the
  // entry whole when it has none.
  const parts = [
    ...sources.map((s) => {
      const x = (f: string | undefined) => (f === undefined ? "NULL::text" : pgStr(`x.v -> ${pgLit(f)}`));
      return (
        `SELECT ${x(s.source.model)} AS model, ${s.source.own ? x(s.source.feature) : "NULL::text"} AS feature, ` +
        `${s.source.own ? x(s.source.spender) : "NULL::text"} AS spender, ${s.source.own} AS own, ` +
        USAGE_MEASURES.map(
          (m) => `${pgElementMeasure(s, m, "x.v", "x.o = 1", `e.${pgMeasure(m, "m_")}`)} AS ${pgMeasure(m)}`,
        ).join(", ") +
        ` FROM jsonb_array_elements(e.a${s.i}) WITH ORDINALITY AS x(v, o)`
      );
    }),
    `SELECT NULL::text AS model, NULL::text AS feature, NULL::text AS spender, ${own.length === 0 ? "false" : `(${own.join(" OR ")})`} AS own, ` +
      USAGE_MEASURES.map((m) => `${rest(m)} AS ${pgMeasure(m)}`).join(", ") +
      ` WHERE ${restWhere.join(" OR ")}`,
  ].join(" UNION ALL ");
  // A part's own dimensions (model, and a lease part's feature and spender) need the entries split.
  const split = scan.groupBy.some((d) => d === "model" || d === "feature" || d === "spender");
  const groups: string[] = [];
  const names: string[] = [];
  for (const d of scan.groupBy) {
    const name = `g${names.length}`;
    names.push(name);
    switch (d) {
      case "account":
        groups.push(`e.user_id AS ${name}`);
        break;
      case "model":
        groups.push(`pt.model AS ${name}`);
        break;
      case "feature":
      case "spender":
        groups.push(`CASE WHEN pt.own THEN pt.${d} ELSE e.${d} END AS ${name}`);
        break;
      case "reason":
        groups.push(`e.description AS ${name}`);
        break;
      default: {
        const v = `e.metadata -> ${p(d.slice("metadata.".length))}`;
        groups.push(
          `CASE jsonb_typeof(${v}) WHEN 'string' THEN ${v} #>> '{}' WHEN 'number' THEN (${v})::text WHEN 'boolean' THEN (${v})::text END AS ${name}`,
        );
      }
    }
  }
  const keys = ["w", "kind", ...names].map((_, i) => String(i + 1));
  const order = [
    ...(scan.orderBy === "credits" ? ["credits DESC"] : []),
    "w",
    pgKindOrder("kind", rules),
    ...names.map((n) => `${n} COLLATE "C" NULLS FIRST`),
  ];
  const measures = USAGE_MEASURES.map((m) => pgMeasure(m));
  const text =
    `WITH e0 AS (SELECT j.user_id, j.type, j.amount, j.metadata, j.description, j.spender, j.feature, j.reservation_id, ` +
    `width_bucket(j.created_at, ${bounds}::timestamptz[]) - 1 AS w, ${pgKind("j", rules)} AS kind FROM ${journal} j WHERE ${where.join(" AND ")} OFFSET 0), ` +
    `e1 AS (SELECT e0.* FROM e0 WHERE e0.kind = ANY(${kinds}::text[])), ` +
    `e2 AS (SELECT e1.*, ${entryCols.join(", ")} FROM e1 OFFSET 0), ` +
    (split ? `e AS (SELECT e2.*${sums.map((x) => `, ${x}`).join("")} FROM e2 OFFSET 0), ` : "") +
    // Each part as a narrow row first (OFFSET 0 keeps it a subquery): whatever the planner picks
    // to group them, it never sorts the entries' JSON.
    (split
      ? `n AS (SELECT ${["e.w AS w", "e.kind AS kind", ...groups].join(", ")}, ${measures.map((m) => `pt.${m}`).join(", ")} ` +
        `FROM e CROSS JOIN LATERAL (${parts}) AS pt OFFSET 0) `
      : // No dimension of a part is asked for: an entry's parts add up to its totals, so each entry
        // is one row; only the measures its source does not balance (tokens) are read from its parts.
        `n AS (${rollup === undefined ? "" : "("}SELECT ${["e.w AS w", "e.kind AS kind", ...groups].join(", ")}, ` +
        USAGE_MEASURES.map(
          (m) => `${pgEntryTotal(m, (i) => `e.a${i}`, `e.${pgMeasure(m, "m_")}`, rules)} AS ${pgMeasure(m)}`,
        ).join(", ") +
        ` FROM e2 AS e OFFSET 0) `) +
    (rollup === undefined ? "" : rollupPart(rollup, scan, bounds, kinds, p)) +
    `SELECT * FROM (SELECT ${["w", "kind", ...names].join(", ")}, ${measures.map((m) => `sum(${m}) AS ${m}`).join(", ")} ` +
    `FROM n GROUP BY ${keys.join(", ")}) AS s ORDER BY ${order.join(", ")} LIMIT ${p(scan.limit + 1)}`;
  return { text, params };
}

/** A row of `usageSql` as a bucket. */
export function usageBucket(row: Record<string, unknown>, scan: UsageScan): UsageBucket {
  const groups: Record<string, string | null> = {};
  scan.groupBy.forEach((d, i) => {
    const v = row[`g${i}`];
    groups[d] = v === null || v === undefined ? null : String(v);
  });
  return {
    window: Number(row.w),
    kind: row.kind as UsageKind,
    groups,
    ...(Object.fromEntries(USAGE_MEASURES.map((m) => [m, Number(row[m])])) as Record<UsageMeasure, number>),
  };
}

/** The whole UTC days of a report's range, read from the rollup: `[from, to)`, in ms. */
export interface RollupDays {
  from: number;
  to: number;
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
  if (scan.account !== null || scan.groupBy.some((d) => d !== "account")) return null;
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
  bounds: string,
  kinds: string,
  p: (v: unknown) => string,
): string {
  const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
  // Summed per window, kind (and account) first, by hash: the outer GROUP BY then sees one row per
  // group instead of one per account and day (and sorts no more than fits in work_mem).
  const byAccount = scan.groupBy.length > 0;
  return (
    `UNION ALL SELECT ${["w", "kind", ...scan.groupBy.map((_, i) => `u AS g${i}`)].join(", ")}, ` +
    `${USAGE_MEASURES.map((m) => `sum(${pgMeasure(m)})`).join(", ")} FROM (SELECT ` +
    // One window (interval null): no bucket to work out, and the planner counts the groups right.
    `${scan.boundaries.length === 2 ? "0" : `width_bucket(r.day::timestamp AT TIME ZONE 'UTC', ${bounds}::timestamptz[]) - 1`} AS w, r.kind AS kind, r.user_id AS u, ` +
    `${USAGE_MEASURES.map((m) => `r.${rollupColumn(m)} AS ${pgMeasure(m)}`).join(", ")} FROM ${rollup.table} r ` +
    `WHERE r.day >= ${p(day(rollup.days.from))}::date AND r.day < ${p(day(rollup.days.to))}::date AND r.kind = ANY(${kinds}::text[])) AS rr ` +
    `GROUP BY w, kind${byAccount ? ", u" : ""}) `
  );
}
