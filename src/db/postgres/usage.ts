import type { UsageBucket, UsageScan } from "../../domain/usage.js";
import type { UsageKind } from "../../models/usage.js";

/**
 * The usage query of a PostgreSQL store (docs/usage.md): the rules of `src/domain/usage.ts`
 * (`usageKind`, `usageRequests`, `usageParts`, `groupValue`) in SQL, summed by `GROUP BY` with the
 * window of each entry from `width_bucket` over the query's boundaries (worked out in the query's
 * time zone before, so every store has the same windows). Entries are read by the primary key
 * (user_id, seq) for one account, by the BRIN index on created_at for every account. Only the
 * groups come back.
 */
export function usageSql(
  journal: string,
  scan: UsageScan,
  rollup?: { table: string; days: RollupDays },
): { text: string; params: unknown[] } {
  const params: unknown[] = [];
  const p = (v: unknown) => {
    params.push(v);
    return `$${params.length}`;
  };
  const num = (x: string) => `CASE WHEN jsonb_typeof(${x}) = 'number' THEN (${x})::text::numeric ELSE 0 END`;
  const str = (x: string) => `CASE WHEN jsonb_typeof(${x}) = 'string' THEN ${x} #>> '{}' END`;
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
  where.push(`j.type IN ('deduct', 'commit_reserved', 'void')`);
  const kinds = p([...scan.kinds]);
  // usageKind: a payment's take-back (paymentId, refundedAmount) is a refund or, after a lost
  // dispute, a clawback; another void is no usage.
  const kind =
    `CASE WHEN jsonb_typeof(j.metadata -> 'paymentId') = 'string' AND jsonb_typeof(j.metadata -> 'refundedAmount') = 'number' ` +
    `THEN CASE WHEN j.description LIKE 'Lost dispute%' THEN 'clawback' ELSE 'refund' END ` +
    `WHEN j.type = 'void' THEN NULL ELSE 'spend' END`;
  // usageRequests
  const requests = (e: string) =>
    `CASE WHEN ${e}.kind <> 'spend' THEN 0 WHEN ${e}.type = 'deduct' THEN CASE WHEN ${e}.reservation_id IS NULL THEN 1 ELSE 0 END ` +
    `WHEN jsonb_typeof(${e}.metadata -> 'leaseWindow' -> 'requests') = 'number' THEN (${e}.metadata -> 'leaseWindow' ->> 'requests')::numeric ELSE 1 END`;
  const leaseParts = (e = "e") =>
    `CASE WHEN ${e}.kind = 'spend' AND jsonb_typeof(${e}.metadata -> 'leaseWindow' -> 'parts') = 'array' THEN ${e}.metadata -> 'leaseWindow' -> 'parts' END`;
  const usages = (e = "e") =>
    `CASE WHEN ${e}.kind = 'spend' AND jsonb_typeof(${e}.metadata -> 'leaseWindow' -> 'parts') IS DISTINCT FROM 'array' AND jsonb_typeof(${e}.metadata -> 'usages') = 'array' THEN ${e}.metadata -> 'usages' END`;
  // usageParts: a lease window's parts, or each recorded usage (the requests with the first);
  // then what they do not account for (credits or requests), or the entry whole when it has none.
  const parts =
    `SELECT ${str("x.v -> 'model'")} AS model, ${str("x.v -> 'feature'")} AS feature, ${str("x.v -> 'spender'")} AS spender, true AS own, ` +
    `${num("x.v -> 'credits'")} AS credits, ${num("x.v -> 'requests'")} AS requests, ${num("x.v -> 'inputTokens'")} AS input, ` +
    `${num("x.v -> 'outputTokens'")} AS output, ${num("x.v -> 'cachedTokens'")} AS cached ` +
    `FROM jsonb_array_elements(e.leased) AS x(v) ` +
    `UNION ALL SELECT ${str("u.v -> 'model'")}, NULL, NULL, false, ${num("u.v -> 'amount'")}, CASE WHEN u.o = 1 THEN e.requests ELSE 0 END, ` +
    `${num("u.v -> 'inputTokens'")}, ${num("u.v -> 'outputTokens'")}, ${num("u.v -> 'cachedTokens'")} ` +
    `FROM jsonb_array_elements(e.usages) WITH ORDINALITY AS u(v, o) ` +
    `UNION ALL SELECT NULL, NULL, NULL, e.leased IS NOT NULL, e.amount - e.psum, e.requests - e.preq, 0, 0, 0 ` +
    `WHERE (e.leased IS NULL AND e.usages IS NULL) OR e.amount <> e.psum OR e.requests <> e.preq`;
  // A part's own dimensions (model, and a lease part's feature and spender) need the entries split.
  const split = scan.groupBy.some((d) => d === "model" || d === "feature" || d === "spender");
  const tokens = (field: string) =>
    `CASE WHEN e.leased IS NOT NULL THEN COALESCE((SELECT sum(${num(`q.v -> '${field}'`)}) FROM jsonb_array_elements(e.leased) AS q(v)), 0) ` +
    `WHEN e.usages IS NULL THEN 0 WHEN jsonb_array_length(e.usages) = 1 THEN ${num(`e.usages -> 0 -> '${field}'`)} ` +
    `ELSE COALESCE((SELECT sum(${num(`q.v -> '${field}'`)}) FROM jsonb_array_elements(e.usages) AS q(v)), 0) END`;
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
    `CASE kind WHEN 'spend' THEN 0 WHEN 'refund' THEN 1 ELSE 2 END`,
    ...names.map((n) => `${n} COLLATE "C" NULLS FIRST`),
  ];
  const text =
    `WITH e0 AS (SELECT j.user_id, j.type, j.amount, j.metadata, j.description, j.spender, j.feature, j.reservation_id, ` +
    `width_bucket(j.created_at, ${bounds}::timestamptz[]) - 1 AS w, ${kind} AS kind FROM ${journal} j WHERE ${where.join(" AND ")}), ` +
    `e1 AS (SELECT e0.* FROM e0 WHERE e0.kind = ANY(${kinds}::text[])), ` +
    `e2 AS (SELECT e1.*, ${requests("e1")} AS requests, ${leaseParts("e1")} AS leased, ${usages("e1")} AS usages FROM e1), ` +
    (split
      ? `e AS (SELECT e2.*, COALESCE(CASE WHEN e2.leased IS NOT NULL THEN (SELECT sum(${num("q.v -> 'credits'")}) FROM jsonb_array_elements(e2.leased) AS q(v)) ` +
        `ELSE (SELECT sum(${num("q.v -> 'amount'")}) FROM jsonb_array_elements(e2.usages) AS q(v)) END, 0) AS psum, ` +
        `COALESCE(CASE WHEN e2.leased IS NOT NULL THEN (SELECT sum(${num("q.v -> 'requests'")}) FROM jsonb_array_elements(e2.leased) AS q(v)) ` +
        `WHEN jsonb_array_length(e2.usages) > 0 THEN e2.requests END, 0) AS preq FROM e2), `
      : "") +
    // Each part as a narrow row first (OFFSET 0 keeps it a subquery): whatever the planner picks
    // to group them, it never sorts the entries' JSON.
    (split
      ? `n AS (SELECT ${["e.w AS w", "e.kind AS kind", ...groups].join(", ")}, pt.credits, pt.requests, pt.input, pt.output, pt.cached ` +
        `FROM e CROSS JOIN LATERAL (${parts}) AS pt OFFSET 0) `
      : // No dimension of a part is asked for: an entry's parts add up to its amount and requests,
        // so each entry is one row; only the tokens are read from its parts.
        `n AS (${rollup === undefined ? "" : "("}SELECT ${["e.w AS w", "e.kind AS kind", ...groups].join(", ")}, e.amount AS credits, e.requests AS requests, ` +
        `${tokens("inputTokens")} AS input, ${tokens("outputTokens")} AS output, ${tokens("cachedTokens")} AS cached FROM e2 AS e OFFSET 0) `) +
    (rollup === undefined ? "" : rollupPart(rollup, scan, bounds, kinds, p)) +
    `SELECT * FROM (SELECT ${["w", "kind", ...names].join(", ")}, sum(credits) AS credits, sum(requests) AS requests, ` +
    `sum(input) AS input, sum(output) AS output, sum(cached) AS cached ` +
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
    credits: Number(row.credits),
    requests: Number(row.requests),
    inputTokens: Number(row.input),
    outputTokens: Number(row.output),
    cachedTokens: Number(row.cached),
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
    `sum(credits), sum(requests), sum(input), sum(output), sum(cached) FROM (SELECT ` +
    // One window (interval null): no bucket to work out, and the planner counts the groups right.
    `${scan.boundaries.length === 2 ? "0" : `width_bucket(r.day::timestamp AT TIME ZONE 'UTC', ${bounds}::timestamptz[]) - 1`} AS w, r.kind AS kind, r.user_id AS u, ` +
    `r.credits, r.requests, r.input_tokens AS input, r.output_tokens AS output, r.cached_tokens AS cached FROM ${rollup.table} r ` +
    `WHERE r.day >= ${p(day(rollup.days.from))}::date AND r.day < ${p(day(rollup.days.to))}::date AND r.kind = ANY(${kinds}::text[])) AS rr ` +
    `GROUP BY w, kind${byAccount ? ", u" : ""}) `
  );
}
