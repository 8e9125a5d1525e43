import {
  USAGE_MEASURES,
  USAGE_RULES,
  sourceTest,
  usageEntryTypes,
  usageKindsOf,
  type UsageCase,
  type UsageMeasure,
  type UsagePartSource,
  type UsageRules,
  type UsageScan,
  type UsageTest,
  type UsageValue,
} from "../../domain/usage.js";
import type { UsageKind } from "../../models/usage.js";

// The rules of usage (USAGE_RULES of src/domain/usage.ts) as SQLite expressions over a journal
// row `r` (its columns type, amount, metadata as JSON text, description, reservation_id).

const lit = (s: string) => `'${s.replace(/'/g, "''")}'`;
/** A JSON path of keys (quoted: the rules' keys are constants, quoted all the same). */
const jpath = (path: readonly string[]) => lit(`$${path.map((k) => `."${k.replace(/"/g, '\\"')}"`).join("")}`);
const num = (doc: string, path: string) =>
  `CASE WHEN json_type(${doc}, ${path}) IN ('integer', 'real') THEN json_extract(${doc}, ${path}) ELSE 0 END`;
const str = (doc: string, path: string) =>
  `CASE WHEN json_type(${doc}, ${path}) = 'text' THEN json_extract(${doc}, ${path}) END`;
const col = (m: UsageMeasure, prefix = "") => `"${prefix}${m}"`;

function test(t: UsageTest, r: string): string {
  if ("type" in t) return `${r}.type IN (${t.type.map(lit).join(", ")})`;
  if ("held" in t) return `${r}.reservation_id IS ${t.held ? "NOT NULL" : "NULL"}`;
  // substr, not LIKE: LIKE ignores case in SQLite.
  if ("descriptionStartsWith" in t) {
    const s = t.descriptionStartsWith;
    return `substr(${r}.description, 1, ${s.length}) = ${lit(s)}`;
  }
  const p = jpath(t.metadata);
  const type = { string: "= 'text'", number: "IN ('integer', 'real')", array: "= 'array'" }[t.is];
  const is = `json_type(${r}.metadata, ${p}) ${type}`;
  return t.nonEmpty === true ? `${is} AND json_array_length(${r}.metadata, ${p}) > 0` : is;
}

function cases<T>(cs: readonly UsageCase<T>[], r: string, then: (v: T) => string): string {
  if (cs.length > 0 && cs[0]!.when.length === 0) return then(cs[0]!.then);
  let out = "CASE";
  for (const c of cs) {
    if (c.when.length === 0) return `${out} ELSE ${then(c.then)} END`;
    out += ` WHEN ${c.when.map((t) => test(t, r)).join(" AND ")} THEN ${then(c.then)}`;
  }
  return `${out} END`;
}

const value = (v: UsageValue, r: string, sign: 1 | -1) => {
  const x =
    typeof v === "number" ? String(v) : v === "amount" ? `${r}.amount` : num(`${r}.metadata`, jpath(v.metadata));
  return sign === 1 ? x : `-(${x})`;
};

function byKind(rules: UsageRules, kind: string, f: (k: UsageKind) => string): string {
  const kinds = usageKindsOf(rules);
  const xs = kinds.map(f);
  if (xs.every((x) => x === xs[0])) return xs[0]!;
  return `CASE ${kind} ${kinds.map((k, i) => `WHEN ${lit(k)} THEN ${xs[i]}`).join(" ")} END`;
}

type Source = { i: number; kind: UsageKind; source: UsagePartSource; sign: 1 | -1 };
const sourcesOf = (rules: UsageRules): Source[] => {
  const out: Source[] = [];
  for (const kind of usageKindsOf(rules)) {
    const rule = rules.rules[kind];
    for (const source of rule.parts) out.push({ i: out.length + 1, kind, source, sign: rule.sign });
  }
  return out;
};

/** An element's (`x`, JSON) value of measure `m`; `first`: whether it is the array's first; `entry`: the entry's value. */
function element(s: Source, m: UsageMeasure, x: string, first: string, entry: string): string {
  const f = s.source.fields[m];
  if (f === null) return `CASE WHEN ${first} THEN ${entry} ELSE 0 END`;
  const v = num(x, jpath([f]));
  return s.sign === 1 ? v : `-(${v})`;
}

/**
 * The usage query of a SQLite store (docs/usage.md): the rules of `src/domain/usage.ts`
 * (`USAGE_RULES`, compiled above; `groupValue`) in SQL over the journal's JSON text, summed by
 * `GROUP BY`. Each entry's window is found by a join on the
 * query's boundaries (worked out in the query's time zone before; ISO-8601 text compares as time).
 * Entries are read by the primary key (user_id, seq) for one account, by the index on created_at
 * for every account. Parameters are positional (`?`); only the groups come back (`usageBucket` of
 * the PostgreSQL store reads its rows).
 */
export function usageSqliteSql(
  journal: string,
  scan: UsageScan,
  rules: UsageRules = USAGE_RULES,
): { text: string; params: unknown[] } {
  const sources = sourcesOf(rules);
  const params: unknown[] = [];
  const windows = scan.boundaries
    .slice(0, -1)
    .map((b, i) => [i, new Date(b).toISOString(), new Date(scan.boundaries[i + 1]!).toISOString()]);
  const where: string[] = [];
  const wParams: unknown[] = [JSON.stringify(windows)];
  if (scan.account !== null) {
    where.push("j.user_id = ?");
    wParams.push(scan.account);
  }
  where.push("j.created_at >= ?", "j.created_at < ?", `j.type IN (${usageEntryTypes(rules).map(lit).join(", ")})`);
  wParams.push(scan.from.toISOString(), scan.to.toISOString());
  const kind = cases(rules.kinds, "j", lit);
  // Each entry's own measures ("m_…") and the number of its part source (0: none, the entry whole).
  const entryCols = USAGE_MEASURES.map(
    (m) =>
      `${byKind(rules, "e1.kind", (k) => cases(rules.rules[k].measures[m], "e1", (v) => value(v, "e1", rules.rules[k].sign)))} AS ${col(m, "m_")}`,
  );
  const src =
    sources.length === 0
      ? "0"
      : `CASE ${sources.map((s) => `WHEN e1.kind = ${lit(s.kind)} AND ${test(sourceTest(s.source), "e1")} THEN ${s.i}`).join(" ")} ELSE 0 END`;
  // The measures some source balances: the parts' sum of each ("s_…"), the rest a part of its own.
  const balanced = USAGE_MEASURES.filter((m) => sources.some((s) => s.source.balanced.includes(m)));
  const sums = balanced.map((m) => {
    const branches = sources
      .filter((s) => s.source.balanced.includes(m))
      .map((s) => {
        const entry = `e2.${col(m, "m_")}`;
        const sum =
          s.source.fields[m] === null
            ? entry // (the source's arrays are not empty, or the first would get nothing)
            : `(SELECT total(${element(s, m, "q.value", "", entry)}) FROM json_each(e2.metadata, ${jpath(s.source.array)}) AS q)`;
        return `WHEN ${s.i} THEN ${s.source.fields[m] === null && !s.source.nonEmpty ? `CASE WHEN json_array_length(e2.metadata, ${jpath(s.source.array)}) > 0 THEN ${entry} ELSE 0 END` : sum}`;
      });
    return `CASE e2.src ${branches.join(" ")} ELSE 0 END AS ${col(m, "s_")}`;
  });
  const rest = (m: UsageMeasure) => {
    const entry = `e.${col(m, "m_")}`;
    const left = balanced.includes(m) ? `${entry} - e.${col(m, "s_")}` : "0";
    if (sources.every((s) => s.source.balanced.includes(m))) return left; // (s_ is 0 with no source)
    return `CASE e.src ${sources.map((s) => `WHEN ${s.i} THEN ${s.source.balanced.includes(m) ? left : "0"}`).join(" ")} ELSE ${entry} END`;
  };
  const restWhere = [
    "e.src = 0",
    ...sources.map((s) => {
      const differs = s.source.balanced.map((m) => `e.${col(m, "m_")} <> e.${col(m, "s_")}`);
      return `(e.src = ${s.i} AND (${differs.join(" OR ") || "0"}))`;
    }),
  ];
  const ownSources = sources.filter((s) => s.source.own).map((s) => s.i);
  // usageParts: each element of the entry's source, then what they do not account for, or the
  // entry whole when it has none; each with the entry's columns the groups read.
  const cols = "e.user_id, e.w, e.kind, e.description, e.spender, e.feature, e.metadata";
  const parts = [
    ...sources.map((s) => {
      const x = (f: string | undefined) => (f === undefined ? "NULL" : str("x.value", jpath([f])));
      return (
        `SELECT ${cols}, ${x(s.source.model)} AS model, ${s.source.own ? x(s.source.feature) : "NULL"} AS p_feature, ` +
        `${s.source.own ? x(s.source.spender) : "NULL"} AS p_spender, ${s.source.own ? 1 : 0} AS own, ` +
        USAGE_MEASURES.map((m) => `${element(s, m, "x.value", "x.key = 0", `e.${col(m, "m_")}`)} AS ${col(m)}`).join(
          ", ",
        ) +
        ` FROM e, json_each(e.metadata, ${jpath(s.source.array)}) AS x WHERE e.src = ${s.i}`
      );
    }),
    `SELECT ${cols}, NULL AS model, NULL AS p_feature, NULL AS p_spender, ` +
      `${ownSources.length === 0 ? "0" : `e.src IN (${ownSources.join(", ")})`} AS own, ` +
      USAGE_MEASURES.map((m) => `${rest(m)} AS ${col(m)}`).join(", ") +
      ` FROM e WHERE ${restWhere.join(" OR ")}`,
  ].join(" UNION ALL ");
  // A part's own dimensions (model, and a lease part's feature and spender) need the entries split.
  // Without them each entry is one row of its totals: the measures its source balances are the
  // entry's, the others (tokens) the sums of its source's elements.
  const split = scan.groupBy.some((d) => d === "model" || d === "feature" || d === "spender");
  const total = (m: UsageMeasure) => {
    const entry = `e.${col(m, "m_")}`;
    const branches = sources
      .filter((s) => !s.source.balanced.includes(m))
      .map((s) => {
        const sum =
          s.source.fields[m] === null
            ? `CASE WHEN json_array_length(e.metadata, ${jpath(s.source.array)}) > 0 THEN ${entry} ELSE 0 END`
            : `(SELECT total(${element(s, m, "q.value", "", entry)}) FROM json_each(e.metadata, ${jpath(s.source.array)}) AS q)`;
        return `WHEN ${s.i} THEN ${sum}`;
      });
    return branches.length === 0 ? entry : `CASE e.src ${branches.join(" ")} ELSE ${entry} END`;
  };
  const whole =
    `SELECT ${cols}, NULL AS model, NULL AS p_feature, NULL AS p_spender, 0 AS own, ` +
    USAGE_MEASURES.map((m) => `${total(m)} AS ${col(m)}`).join(", ") +
    ` FROM e2 AS e`;
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
  const kinds = scan.kinds.map(lit).join(", ");
  const order = [
    ...(scan.orderBy === "credits" ? ["credits DESC"] : []),
    "w",
    `CASE kind ${usageKindsOf(rules)
      .map((k, i) => `WHEN ${lit(k)} THEN ${i}`)
      .join(" ")} END`,
    ...names.map((n) => `${n} IS NOT NULL, ${n}`),
  ];
  const text =
    `WITH win AS MATERIALIZED (SELECT json_extract(value, '$[0]') AS i, json_extract(value, '$[1]') AS s, json_extract(value, '$[2]') AS t FROM json_each(?)), ` +
    `e0 AS (SELECT j.user_id, j.type, j.amount, j.metadata, j.description, j.spender, j.feature, j.reservation_id, j.created_at, ${kind} AS kind ` +
    `FROM ${journal} j WHERE ${where.join(" AND ")}), ` +
    `e1 AS (SELECT e0.*, win.i AS w FROM e0 JOIN win ON e0.created_at >= win.s AND e0.created_at < win.t WHERE e0.kind IN (${kinds})), ` +
    `e2 AS (SELECT e1.*, ${[...entryCols, `${src} AS src`].join(", ")} FROM e1), ` +
    // Split, the parts read each entry three times: its columns are worked out once (MATERIALIZED).
    (split
      ? `e AS MATERIALIZED (SELECT e2.*${sums.map((x) => `, ${x}`).join("")} FROM e2), pt AS (${parts}) `
      : `pt AS (${whole}) `) +
    `SELECT * FROM (SELECT ${["pt.w AS w", "pt.kind AS kind", ...groups].join(", ")}, ` +
    USAGE_MEASURES.map((m) => `total(pt.${col(m)}) AS ${col(m)}`).join(", ") +
    ` FROM pt GROUP BY ${["w", "kind", ...names].map((_, i) => String(i + 1)).join(", ")}) ` +
    `ORDER BY ${order.join(", ")} LIMIT ?`;
  params.push(...wParams, ...gParams, scan.limit + 1);
  return { text, params };
}
