import type { UsageScan } from "../../domain/usage.js";

/**
 * The usage query of a SQLite store (docs/usage.md): the rules of `src/domain/usage.ts` in SQL over
 * the journal's JSON text, summed by `GROUP BY`. Each entry's window is found by a join on the
 * query's boundaries (worked out in the query's time zone before; ISO-8601 text compares as time).
 * Entries are read by the primary key (user_id, seq) for one account, by the index on created_at
 * for every account. Parameters are positional (`?`); only the groups come back (`usageBucket` of
 * the PostgreSQL store reads its rows).
 */
export function usageSqliteSql(journal: string, scan: UsageScan): { text: string; params: unknown[] } {
  const params: unknown[] = [];
  const num = (doc: string, path: string) =>
    `CASE WHEN json_type(${doc}, '${path}') IN ('integer', 'real') THEN json_extract(${doc}, '${path}') ELSE 0 END`;
  const str = (doc: string, path: string) =>
    `CASE WHEN json_type(${doc}, '${path}') = 'text' THEN json_extract(${doc}, '${path}') END`;
  const windows = scan.boundaries
    .slice(0, -1)
    .map((b, i) => [i, new Date(b).toISOString(), new Date(scan.boundaries[i + 1]!).toISOString()]);
  const where: string[] = [];
  const wParams: unknown[] = [JSON.stringify(windows)];
  if (scan.account !== null) {
    where.push("j.user_id = ?");
    wParams.push(scan.account);
  }
  where.push("j.created_at >= ?", "j.created_at < ?", "j.type IN ('deduct', 'commit_reserved', 'void')");
  wParams.push(scan.from.toISOString(), scan.to.toISOString());
  const kind =
    `CASE WHEN json_type(j.metadata, '$.paymentId') = 'text' AND json_type(j.metadata, '$.refundedAmount') IN ('integer', 'real') ` +
    `THEN CASE WHEN j.description LIKE 'Lost dispute%' THEN 'clawback' ELSE 'refund' END ` +
    `WHEN j.type = 'void' THEN NULL ELSE 'spend' END`;
  const requests =
    `CASE WHEN e1.kind <> 'spend' THEN 0 WHEN e1.type = 'deduct' THEN CASE WHEN e1.reservation_id IS NULL THEN 1 ELSE 0 END ` +
    `WHEN json_type(e1.metadata, '$.leaseWindow.requests') IN ('integer', 'real') THEN json_extract(e1.metadata, '$.leaseWindow.requests') ELSE 1 END`;
  const leased = (e: string) =>
    `COALESCE(${e}.kind = 'spend' AND json_type(${e}.metadata, '$.leaseWindow.parts') = 'array', 0)`;
  const priced = (e: string) =>
    `COALESCE(${e}.kind = 'spend' AND NOT ${leased(e)} AND json_type(${e}.metadata, '$.usages') = 'array' AND json_array_length(${e}.metadata, '$.usages') > 0, 0)`;
  // usageParts: three kinds of part, each with the entry's columns the groups read.
  const cols = "e.user_id, e.w, e.kind, e.description, e.spender, e.feature, e.metadata";
  const parts =
    `SELECT ${cols}, ${str("x.value", "$.model")} AS model, ${str("x.value", "$.feature")} AS p_feature, ${str("x.value", "$.spender")} AS p_spender, 1 AS own, ` +
    `${num("x.value", "$.credits")} AS credits, ${num("x.value", "$.requests")} AS requests, ${num("x.value", "$.inputTokens")} AS input, ` +
    `${num("x.value", "$.outputTokens")} AS output, ${num("x.value", "$.cachedTokens")} AS cached ` +
    `FROM e, json_each(e.metadata, '$.leaseWindow.parts') AS x WHERE e.leased ` +
    `UNION ALL SELECT ${cols}, ${str("u.value", "$.model")}, NULL, NULL, 0, ${num("u.value", "$.amount")}, CASE WHEN u.key = 0 THEN e.requests ELSE 0 END, ` +
    `${num("u.value", "$.inputTokens")}, ${num("u.value", "$.outputTokens")}, ${num("u.value", "$.cachedTokens")} ` +
    `FROM e, json_each(e.metadata, '$.usages') AS u WHERE e.priced ` +
    `UNION ALL SELECT ${cols}, NULL, NULL, NULL, e.leased, e.amount - e.psum, e.requests - e.preq, 0, 0, 0 ` +
    `FROM e WHERE (NOT e.leased AND NOT e.priced) OR e.amount <> e.psum OR e.requests <> e.preq`;
  const groups: string[] = [];
  const gParams: unknown[] = [];
  const names: string[] = [];
  for (const d of scan.groupBy) {
    const name = `g${names.length}`;
    names.push(name);
    switch (d) {
      case "account":
        groups.push(`pt.user_id AS ${name}`);
        break;
      case "model":
        groups.push(`pt.model AS ${name}`);
        break;
      case "feature":
      case "spender":
        groups.push(`CASE WHEN pt.own = 1 THEN pt.p_${d} ELSE pt.${d} END AS ${name}`);
        break;
      case "reason":
        groups.push(`pt.description AS ${name}`);
        break;
      default: {
        // Keys are letters, digits, _ and - (UsageDimension): safe inside a quoted path.
        const path = `'$."${d.slice("metadata.".length)}"'`;
        groups.push(
          `CASE json_type(pt.metadata, ${path}) WHEN 'text' THEN json_extract(pt.metadata, ${path}) ` +
            `WHEN 'integer' THEN CAST(json_extract(pt.metadata, ${path}) AS TEXT) WHEN 'real' THEN CAST(json_extract(pt.metadata, ${path}) AS TEXT) ` +
            `WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' END AS ${name}`,
        );
      }
    }
  }
  const kinds = scan.kinds.map((k) => `'${k}'`).join(", ");
  const order = [
    ...(scan.orderBy === "credits" ? ["credits DESC"] : []),
    "w",
    `CASE kind WHEN 'spend' THEN 0 WHEN 'refund' THEN 1 ELSE 2 END`,
    ...names.map((n) => `${n} IS NOT NULL, ${n}`),
  ];
  const text =
    `WITH win AS MATERIALIZED (SELECT json_extract(value, '$[0]') AS i, json_extract(value, '$[1]') AS s, json_extract(value, '$[2]') AS t FROM json_each(?)), ` +
    `e0 AS (SELECT j.user_id, j.type, j.amount, j.metadata, j.description, j.spender, j.feature, j.reservation_id, j.created_at, ${kind} AS kind ` +
    `FROM ${journal} j WHERE ${where.join(" AND ")}), ` +
    `e1 AS (SELECT e0.*, win.i AS w FROM e0 JOIN win ON e0.created_at >= win.s AND e0.created_at < win.t WHERE e0.kind IN (${kinds})), ` +
    `e AS (SELECT e1.*, ${requests} AS requests, ${leased("e1")} AS leased, ${priced("e1")} AS priced, ` +
    `CASE WHEN ${leased("e1")} THEN (SELECT total(${num("q.value", "$.credits")}) FROM json_each(e1.metadata, '$.leaseWindow.parts') AS q) ` +
    `WHEN ${priced("e1")} THEN (SELECT total(${num("q.value", "$.amount")}) FROM json_each(e1.metadata, '$.usages') AS q) ELSE 0 END AS psum, ` +
    `CASE WHEN ${leased("e1")} THEN (SELECT total(${num("q.value", "$.requests")}) FROM json_each(e1.metadata, '$.leaseWindow.parts') AS q) ` +
    `WHEN ${priced("e1")} THEN ${requests} ELSE 0 END AS preq FROM e1), ` +
    `pt AS (${parts}) ` +
    `SELECT * FROM (SELECT ${["pt.w AS w", "pt.kind AS kind", ...groups].join(", ")}, total(pt.credits) AS credits, total(pt.requests) AS requests, ` +
    `total(pt.input) AS input, total(pt.output) AS output, total(pt.cached) AS cached ` +
    `FROM pt GROUP BY ${["w", "kind", ...names].map((_, i) => String(i + 1)).join(", ")}) ` +
    `ORDER BY ${order.join(", ")} LIMIT ?`;
  params.push(...wParams, ...gParams, scan.limit + 1);
  return { text, params };
}
