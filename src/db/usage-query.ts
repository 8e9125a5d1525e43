import {
  USAGE_MEASURES,
  USAGE_RULES,
  type UsageBucket,
  type UsageMeasure,
  type UsageRules,
  type UsageScan,
} from "../core/domain/usage.js";
import type { UsageKind } from "../core/models/usage.js";
import {
  PG_USAGE,
  SQLITE_USAGE,
  sqlElementMeasure,
  sqlEntryMeasure,
  sqlEntryTotal,
  sqlFactor,
  sqlKind,
  sqlKindOrder,
  sqlMeasure,
  sqlPlaced,
  sqlPlacedIn,
  sqlSourceArray,
  sqlSourceSum,
  sqlTypes,
  usageSources,
  type UsageDialect,
} from "../schema/usage-sql.js";
import { sqlLit } from "../schema/ident.js";

/**
 * How the usage query reads on one store: the rules' expressions (`rules`), and what its SQL says
 * differently around them — parameters, the windows, the planner's fences.
 */
export interface UsageQueryDialect {
  readonly rules: UsageDialect;
  /**
   * How parameters are written: `$1`, `$2`, … numbered in the order they are given (a value used
   * twice is one parameter), or `?`, each standing for the next value in the text.
   */
  readonly placeholders: "numbered" | "positional";
  /** A time parameter's value. */
  time(t: Date): unknown;
  /**
   * Each entry's window (`w`, its index in `scan.boundaries`): a CTE before the entries (`with`),
   * a column of `e0` read from the journal row `j` (`column`), and a join of `e1` (`join`).
   */
  windows(scan: UsageScan, p: (v: unknown) => string): { with: string; column: string; join: string; bounds: string };
  /** `x` is one of the kinds. */
  kindIn(x: string, kinds: readonly UsageKind[], p: (v: unknown) => string): string;
  /** A metadata value of row `r` at `key` as a group: text of a string, number or boolean, else NULL. */
  metadataGroup(r: string, key: string, p: (v: unknown) => string): string;
  /** A group column in the order of the report: NULL first, then text by code point. */
  orderGroup(name: string): string;
  /** The aggregate sum of a measure. */
  readonly sum: string;
  /** After a CTE's query, what keeps the planner from folding it into the next (PostgreSQL: `OFFSET 0`). */
  readonly fence: string;
  /**
   * Before the query of a CTE whose columns are read several times, what has it worked out once
   * (SQLite: `MATERIALIZED`; else SQLite works each entry's rules out again at each read).
   */
  readonly once: string;
  /**
   * Whether an entry's parts are a LATERAL subquery of it (PostgreSQL); else each source's
   * elements are a branch of a UNION ALL over the entries (SQLite).
   */
  readonly lateral: boolean;
}

export const PG_QUERY: UsageQueryDialect = {
  rules: PG_USAGE,
  placeholders: "numbered",
  time: (t) => t,
  windows: (scan, p) => {
    const bounds = p(scan.boundaries.map((b) => new Date(b).toISOString()));
    return { with: "", column: `width_bucket(${sqlPlaced("j")}, ${bounds}::timestamptz[]) - 1 AS w`, join: "", bounds };
  },
  kindIn: (x, kinds, p) => `${x} = ANY(${p(kinds)}::text[])`,
  metadataGroup: (r, key, p) => {
    const v = `${r}.metadata -> ${p(key)}`;
    return `CASE jsonb_typeof(${v}) WHEN 'string' THEN ${v} #>> '{}' WHEN 'number' THEN (${v})::text WHEN 'boolean' THEN (${v})::text END`;
  },
  orderGroup: (name) => `${name} COLLATE "C" NULLS FIRST`,
  sum: "sum",
  fence: " OFFSET 0",
  once: "",
  lateral: true,
};

export const SQLITE_QUERY: UsageQueryDialect = {
  rules: SQLITE_USAGE,
  placeholders: "positional",
  time: (t) => t.toISOString(),
  // The windows as rows joined on each entry's time (ISO-8601 text compares as time).
  windows: (scan, p) => {
    const b = scan.boundaries.map((x) => new Date(x).toISOString());
    const bounds = p(JSON.stringify(b.slice(0, -1).map((s, i) => [i, s, b[i + 1]])));
    return {
      with:
        `win AS MATERIALIZED (SELECT json_extract(value, '$[0]') AS i, json_extract(value, '$[1]') AS s, ` +
        `json_extract(value, '$[2]') AS t FROM json_each(${bounds})), `,
      column: `${sqlPlaced("j")} AS at`,
      join: ", win.i AS w FROM e0 JOIN win ON e0.at >= win.s AND e0.at < win.t",
      bounds,
    };
  },
  kindIn: (x, kinds) => `${x} IN (${kinds.map(sqlLit).join(", ")})`,
  metadataGroup: (r, key) => {
    // Keys are letters, digits, _ and - (UsageDimension): safe inside a quoted path.
    const at = (f: string) => `${f}(${r}.metadata, '$."${key}"')`;
    const text = `CAST(${at("json_extract")} AS TEXT)`;
    return (
      `CASE ${at("json_type")} WHEN 'text' THEN ${at("json_extract")} WHEN 'integer' THEN ${text} ` +
      `WHEN 'real' THEN ${text} WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' END`
    );
  },
  orderGroup: (name) => `${name} IS NOT NULL, ${name}`,
  sum: "total",
  fence: "",
  once: "MATERIALIZED ",
  lateral: false,
};

/** The whole UTC days of a report's range that a store reads from its daily rollup: `[from, to)`, in ms. */
export interface RollupDays {
  from: number;
  to: number;
}

/** A part of an entry's usage in SQL: where its model, feature and spender come from, and its measures. */
interface PartSql {
  model: string;
  feature: string;
  spender: string;
  /** Whether the part's own feature and spender stand for the entry's. */
  own: string;
  measures: string[];
  /** Its elements (a source's), or none: one row per entry. */
  from: string | null;
  /** Which entries have it. */
  where: string;
}

/**
 * The usage query (docs/usage.md) of a SQL store, one text for PostgreSQL and SQLite (`d`): the
 * rules of `src/core/domain/usage.ts` (`USAGE_RULES`, compiled by src/schema/usage-sql.ts;
 * `groupValue`) summed by `GROUP BY`, each entry in the window of `scan.boundaries` its time
 * falls in (worked out in the query's time zone before, so every store has the same windows).
 * Entries are read by the primary key (user_id, seq) for one account, by the index on created_at
 * for every account. Only the groups come back (`usageBucket` reads them).
 *
 * `rollup`: the whole days a daily rollup answers (the journal is then read only for
 * the partial days at the edges) and the query of its rows as more rows of `n`.
 */
export function usageQuery(
  d: UsageQueryDialect,
  journal: string,
  scan: UsageScan,
  rules: UsageRules = USAGE_RULES,
  rollup?: {
    days: RollupDays;
    /** Rows of `n` (`w`, `kind`, `unit`, the groups, the measures) from the rollup, after `UNION ALL`, closing `n`'s parenthesis. */
    rows(q: { bounds: string; kindIn: (x: string) => string; p: (v: unknown) => string }): string;
    /**
     * With `scan.throughSeq` (one account): the SQL of the rollup's cursor for the account (the last
     * seq its rows hold). The whole days then take from the journal what lies between the cursor and
     * `throughSeq`: the entries up to `throughSeq` the rollup lacks, added, and those past it that it
     * holds, taken away.
     */
    cursor?(p: (v: unknown) => string): string;
  },
): { text: string; params: unknown[] } {
  const r = d.rules;
  // Each parameter is a mark in the text until the end, which writes them as the store does. An
  // object (an array) given twice is one parameter.
  const values: unknown[] = [];
  const given = new Map<unknown, string>();
  const p = (v: unknown) => {
    let mark = given.get(v);
    if (mark === undefined) {
      values.push(v);
      mark = `¶${values.length - 1}¶`;
      if (typeof v === "object" && v !== null) given.set(v, mark);
    }
    return mark;
  };
  const win = d.windows(scan, p);
  // Each entry where its usage happened: at its occurred_at (late usage, a reversal), else its created_at.
  const from = p(d.time(scan.from));
  const to = p(d.time(scan.to));
  const through = scan.throughSeq === undefined ? null : p(scan.throughSeq);
  const cursor = rollup?.cursor === undefined || through === null ? null : rollup.cursor(p);
  const where =
    rollup === undefined
      ? [sqlPlacedIn("j", (c) => `${c} >= ${from} AND ${c} < ${to}`)]
      : [
          (() => {
            const daysFrom = p(d.time(new Date(rollup.days.from)));
            const daysTo = p(d.time(new Date(rollup.days.to)));
            const edges = sqlPlacedIn(
              "j",
              (c) => `((${c} >= ${from} AND ${c} < ${daysFrom}) OR (${c} >= ${daysTo} AND ${c} < ${to}))`,
            );
            if (cursor === null) return edges;
            const days = sqlPlacedIn("j", (c) => `${c} >= ${daysFrom} AND ${c} < ${daysTo}`);
            const between = `((j.seq > ${cursor} AND j.seq <= ${through}) OR (j.seq > ${through} AND j.seq <= ${cursor}))`;
            return `((${edges} AND j.seq <= ${through}) OR (${days} AND ${between}))`;
          })(),
        ];
  if (scan.account !== null) where.unshift(`j.user_id = ${p(scan.account)}`);
  if (through !== null && cursor === null) where.push(`j.seq <= ${through}`);
  // Past `throughSeq`, an entry the rollup holds is taken away from it.
  const factor =
    cursor === null
      ? sqlFactor(r, "j", rules)
      : `(${sqlFactor(r, "j", rules)}) * (CASE WHEN j.seq > ${through} THEN -1 ELSE 1 END)`;
  where.push(sqlTypes("j", rules));
  const kinds = d.kindIn("e0.kind", scan.kinds, p);
  // The rules compiled: each entry's kind, its own measures ("m_…") and the array of its part
  // source ("a1", "a2", …: NULL but the one its parts come from).
  const sources = usageSources(rules);
  const entryCols = [
    ...USAGE_MEASURES.map((m) => `${sqlEntryMeasure(r, m, "e1", "e1.kind", rules)} AS ${sqlMeasure(m, "m_")}`),
    ...sources.map((s) => `${sqlSourceArray(r, s.i, "e1", "e1.kind", rules)} AS a${s.i}`),
  ];
  const none = sources.length === 0 ? "true" : `(${sources.map((s) => `e.a${s.i} IS NULL`).join(" AND ")})`;
  // The measures some source balances: the parts' sum of each ("s_…"), the rest a part of its own.
  const balanced = USAGE_MEASURES.filter((m) => sources.some((s) => s.source.balanced.includes(m)));
  const sums = balanced.map((m) => {
    const branches = sources
      .filter((s) => s.source.balanced.includes(m))
      .map(
        (s) => `WHEN e2.a${s.i} IS NOT NULL THEN ${sqlSourceSum(r, s, m, `e2.a${s.i}`, `e2.${sqlMeasure(m, "m_")}`)}`,
      );
    return `COALESCE(CASE ${branches.join(" ")} END, 0) AS ${sqlMeasure(m, "s_")}`;
  });
  const rest = (m: UsageMeasure) => {
    const entry = `e.${sqlMeasure(m, "m_")}`;
    const left = balanced.includes(m) ? `${entry} - e.${sqlMeasure(m, "s_")}` : "0";
    if (sources.every((s) => s.source.balanced.includes(m))) return left; // (s_ is 0 with no source)
    const branches = sources.map(
      (s) => `WHEN e.a${s.i} IS NOT NULL THEN ${s.source.balanced.includes(m) ? left : "0"}`,
    );
    return `CASE ${branches.join(" ")} ELSE ${entry} END`;
  };
  const restWhere = [
    none,
    ...sources.map((s) => {
      const differs = s.source.balanced.map((m) => `e.${sqlMeasure(m, "m_")} <> e.${sqlMeasure(m, "s_")}`);
      return `(e.a${s.i} IS NOT NULL AND (${differs.join(" OR ") || "false"}))`;
    }),
  ];
  const ownSources = sources.filter((s) => s.source.own).map((s) => `e.a${s.i} IS NOT NULL`);
  // usageParts: each element of the entry's source, then what they do not account for, or the
  // entry whole when it has none.
  const parts: PartSql[] = [
    ...sources.map((s): PartSql => {
      const x = r.elements(`e.a${s.i}`, "x");
      const field = (f: string | undefined) => (f === undefined ? r.nullText : r.str({ doc: x.element, path: [f] }));
      return {
        model: field(s.source.model),
        feature: s.source.own ? field(s.source.feature) : r.nullText,
        spender: s.source.own ? field(s.source.spender) : r.nullText,
        own: String(s.source.own),
        measures: USAGE_MEASURES.map((m) =>
          sqlElementMeasure(r, s, m, { doc: x.element, path: [] }, x.first, `e.${sqlMeasure(m, "m_")}`),
        ),
        from: x.from,
        where: `e.a${s.i} IS NOT NULL`,
      };
    }),
    {
      model: r.nullText,
      feature: r.nullText,
      spender: r.nullText,
      own: ownSources.length === 0 ? "false" : `(${ownSources.join(" OR ")})`,
      measures: USAGE_MEASURES.map(rest),
      from: null,
      where: restWhere.join(" OR "),
    },
  ];
  // A part's own dimensions (model, and a lease part's feature and spender) need the entries split.
  const split = scan.groupBy.some((g) => g === "model" || g === "feature" || g === "spender");
  // The group columns of a part (`pt`: its model, feature, spender and own flag as SQL).
  const names = scan.groupBy.map((_, i) => `g${i}`);
  const metadataGroups = scan.groupBy.map((g) =>
    g.startsWith("metadata.") ? d.metadataGroup("e", g.slice("metadata.".length), p) : "",
  );
  const groups = (pt: Pick<PartSql, "model" | "feature" | "spender" | "own">) =>
    scan.groupBy.map((g, i) => {
      const column =
        g === "account"
          ? "e.user_id"
          : g === "model"
            ? pt.model
            : g === "feature" || g === "spender"
              ? `CASE WHEN ${pt.own} THEN ${pt[g]} ELSE e.${g} END`
              : g === "reason"
                ? "e.description"
                : metadataGroups[i]!;
      return `${column} AS ${names[i]}`;
    });
  const head = (pt: Pick<PartSql, "model" | "feature" | "spender" | "own">) =>
    ["e.w AS w", "e.kind AS kind", "e.unit AS unit", ...groups(pt)].join(", ");
  const measureCols = USAGE_MEASURES.map((m) => sqlMeasure(m));
  const as = (xs: string[]) => xs.map((x, i) => `${x} AS ${measureCols[i]}`).join(", ");
  // The rollup's rows after the entries' (closing `n`), or `n` closed.
  const rollupRows = () =>
    rollup === undefined
      ? ") "
      : ` ${rollup.rows({ bounds: win.bounds, kindIn: (x) => d.kindIn(x, scan.kinds, p), p })}`;
  let n: string;
  if (!split) {
    // No dimension of a part is asked for: an entry's parts add up to its totals, so each entry
    // is one row; only the measures its source does not balance (tokens) are read from its parts.
    const totals = USAGE_MEASURES.map((m) => sqlEntryTotal(r, m, (i) => `e.a${i}`, `e.${sqlMeasure(m, "m_")}`, rules));
    const whole = { model: r.nullText, feature: r.nullText, spender: r.nullText, own: "false" };
    const row = `SELECT ${head(whole)}, ${as(totals.map((t) => `(${t}) * e.f`))} FROM e2 AS e${d.fence}`;
    // (Parenthesized before UNION ALL on PostgreSQL, for its fence; SQLite takes no parentheses there.)
    n = `n AS (${rollup === undefined || d.fence === "" ? row : `(${row})`}${rollupRows()}`;
  } else if (d.lateral) {
    // Each part as a narrow row first (a fence keeps it a subquery): whatever the planner picks
    // to group them, it never sorts the entries' JSON.
    const pt = { model: "pt.model", feature: "pt.feature", spender: "pt.spender", own: "pt.own" };
    const lateral = parts
      .map(
        (x) =>
          `SELECT ${x.model} AS model, ${x.feature} AS feature, ${x.spender} AS spender, ${x.own} AS own, ${as(x.measures)}` +
          (x.from === null ? ` WHERE ${x.where}` : ` FROM ${x.from}`),
      )
      .join(" UNION ALL ");
    n =
      `n AS (SELECT ${head(pt)}, ${measureCols.map((m) => `pt.${m} * e.f AS ${m}`).join(", ")} ` +
      `FROM e CROSS JOIN LATERAL (${lateral}) AS pt${d.fence}${rollupRows()}`;
  } else {
    // No LATERAL (SQLite): each source's elements are a branch over the entries that have it (its
    // table-valued function reads the entry's array), and what they leave a branch of its own.
    n = `n AS (${parts
      .map(
        (x) =>
          `SELECT ${head(x)}, ${as(x.measures.map((m) => `(${m}) * e.f`))} FROM e${x.from === null ? "" : `, ${x.from}`} WHERE ${x.where}`,
      )
      .join(" UNION ALL ")}${rollupRows()}`;
  }
  // Each unit summed apart (docs/units.md): the unit is a key of every group.
  const keys = ["w", "kind", "unit", ...names].map((_, i) => String(i + 1));
  const order = [
    ...(scan.orderBy === "credits" ? ["credits DESC"] : []),
    "w",
    sqlKindOrder("kind", rules),
    d.orderGroup("unit"),
    ...names.map(d.orderGroup),
  ];
  const text =
    `WITH ${win.with}e0 AS (SELECT j.user_id, j.type, j.amount, j.shortfall, j.metadata, j.description, j.spender, j.feature, j.reservation_id, j.unit, ` +
    `${win.column}, ${sqlKind(r, "j", rules)} AS kind, ${factor} AS f ` +
    `FROM ${journal} j WHERE ${where.join(" AND ")}${d.fence}), ` +
    `e1 AS (SELECT e0.*${win.join === "" ? " FROM e0" : win.join} WHERE ${kinds}), ` +
    `e2 AS ${d.once}(SELECT e1.*, ${entryCols.join(", ")} FROM e1${d.fence}), ` +
    // Split, the parts read each entry more than once: its sums are worked out once.
    (split ? `e AS ${d.once}(SELECT e2.*${sums.map((x) => `, ${x}`).join("")} FROM e2${d.fence}), ` : "") +
    n +
    `SELECT * FROM (SELECT ${["w", "kind", "unit", ...names].join(", ")}, ${measureCols.map((m) => `${d.sum}(${m}) AS ${m}`).join(", ")} ` +
    `FROM n GROUP BY ${keys.join(", ")}) AS s ORDER BY ${order.join(", ")} LIMIT ${p(scan.limit + 1)}`;
  if (d.placeholders === "numbered")
    return { text: text.replace(/¶(\d+)¶/g, (_, i: string) => `$${Number(i) + 1}`), params: values };
  const params: unknown[] = [];
  const positional = text.replace(/¶(\d+)¶/g, (_, i: string) => {
    params.push(values[Number(i)]);
    return "?";
  });
  return { text: positional, params };
}

/** A row of `usageQuery` as a bucket. */
export function usageBucket(row: Record<string, unknown>, scan: UsageScan): UsageBucket {
  const groups: Record<string, string | null> = {};
  scan.groupBy.forEach((g, i) => {
    const v = row[`g${i}`];
    groups[g] = v === null || v === undefined ? null : String(v);
  });
  return {
    window: Number(row.w),
    kind: row.kind as UsageKind,
    unit: row.unit === null || row.unit === undefined ? null : String(row.unit),
    groups,
    ...(Object.fromEntries(USAGE_MEASURES.map((m) => [m, Number(row[m])])) as Record<UsageMeasure, number>),
  };
}
