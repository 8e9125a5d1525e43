import {
  USAGE_RULES,
  sourceTest,
  usageEntryTypes,
  usageKindsOf,
  type UsageCase,
  type UsageMeasure,
  type UsagePartSource,
  type UsageRules,
  type UsageTest,
  type UsageValue,
} from "../core/domain/usage.js";
import type { UsageKind } from "../core/models/usage.js";
import { sqlLit } from "./ident.js";

/**
 * The rules of usage (`USAGE_RULES` of src/core/domain/usage.ts, docs/usage.md) as SQL expressions over
 * a journal row, for PostgreSQL (its `metadata` a jsonb) and SQLite (JSON text): what the usage
 * query (src/db/usage-query.ts) and PostgreSQL's daily rollup (./rollup.ts) are made of. Each
 * expression is written once; a dialect (`PG_USAGE`, `SQLITE_USAGE`) says how it reads JSON. Every
 * function takes the row's alias (`j`, `e`) and reads its columns `type`, `amount`, `shortfall`,
 * `metadata`, `description`, `reservation_id` and `take_back`.
 */

/** A JSON value inside `doc` (a column or expression) at `path`: object keys, or array indexes. */
export interface JsonRef {
  doc: string;
  path: readonly (string | number)[];
}

/** What a store's SQL says differently (the rest of the usage SQL is the same text). */
export interface UsageDialect {
  readonly name: "postgres" | "sqlite";
  /** The value at `ref` is a JSON string, number or array. */
  is(ref: JsonRef, type: "string" | "number" | "array"): string;
  /** The array at `ref` has an element. */
  nonEmpty(ref: JsonRef): string;
  /** The value at `ref` as a number when it is one, else 0 (`count` of src/core/domain/usage.ts). */
  num(ref: JsonRef): string;
  /** The value at `ref` as text when it is a string, else NULL. */
  str(ref: JsonRef): string;
  /** The value at `ref`, as JSON the dialect's functions read (an array's elements). */
  json(ref: JsonRef): string;
  /** Elements of the array `a`. */
  length(a: string): string;
  /** Whether text `x` starts with `s` (case-sensitive). */
  startsWith(x: string, s: string): string;
  /** The sum of `f(element)` over the elements of the array `a` (0 when it has none). */
  sumOver(a: string, f: (element: string) => string): string;
  /** A FROM item of the elements of array `a` as `x`: each element, and whether it is the first. */
  elements(a: string, x: string): { from: string; element: string; first: string };
  /** A NULL of type text (a column of UNION ALL branches). */
  readonly nullText: string;
}

/** `doc -> 'k' -> 0`: a jsonb value. */
const pgPath = (r: JsonRef): string =>
  [r.doc, ...r.path.map((k) => (typeof k === "number" ? String(k) : sqlLit(k)))].join(" -> ");

export const PG_USAGE: UsageDialect = {
  name: "postgres",
  is: (r, type) => `jsonb_typeof(${pgPath(r)}) = '${type}'`,
  // '[]' compares without jsonb_array_length, which fails on a value that is no array.
  nonEmpty: (r) => `${pgPath(r)} <> '[]'::jsonb`,
  num: (r) => `CASE WHEN jsonb_typeof(${pgPath(r)}) = 'number' THEN (${pgPath(r)})::text::numeric ELSE 0 END`,
  str: (r) => `CASE WHEN jsonb_typeof(${pgPath(r)}) = 'string' THEN ${pgPath(r)} #>> '{}' END`,
  json: pgPath,
  length: (a) => `jsonb_array_length(${a})`,
  startsWith: (x, s) => `left(${x}, ${s.length}) = ${sqlLit(s)}`,
  sumOver: (a, f) => `coalesce((SELECT sum(${f("q.v")}) FROM jsonb_array_elements(${a}) AS q(v)), 0)`,
  elements: (a, x) => ({
    from: `jsonb_array_elements(${a}) WITH ORDINALITY AS ${x}(v, o)`,
    element: `${x}.v`,
    first: `${x}.o = 1`,
  }),
  nullText: "NULL::text",
};

/** `fn(doc, '$."k"[0]')`, or `fn(doc)` at the document itself. */
const sqliteCall = (fn: string, r: JsonRef): string => {
  if (r.path.length === 0) return `${fn}(${r.doc})`;
  // Keys quoted (the rules' keys are constants, quoted all the same).
  const path = r.path.map((k) => (typeof k === "number" ? `[${k}]` : `."${k.replace(/"/g, '\\"')}"`)).join("");
  return `${fn}(${r.doc}, ${sqlLit(`$${path}`)})`;
};

export const SQLITE_USAGE: UsageDialect = {
  name: "sqlite",
  is: (r, type) =>
    `${sqliteCall("json_type", r)} ${{ string: "= 'text'", number: "IN ('integer', 'real')", array: "= 'array'" }[type]}`,
  nonEmpty: (r) => `${sqliteCall("json_array_length", r)} > 0`,
  num: (r) => `CASE WHEN ${SQLITE_USAGE.is(r, "number")} THEN ${sqliteCall("json_extract", r)} ELSE 0 END`,
  str: (r) => `CASE WHEN ${SQLITE_USAGE.is(r, "string")} THEN ${sqliteCall("json_extract", r)} END`,
  // An array or object comes back as its JSON text.
  json: (r) => sqliteCall("json_extract", r),
  length: (a) => `json_array_length(${a})`,
  // substr, not LIKE: LIKE ignores case in SQLite.
  startsWith: (x, s) => `substr(${x}, 1, ${s.length}) = ${sqlLit(s)}`,
  // An element that is no object reads as one without fields (NULL: its value is no JSON text to read).
  sumOver: (a, f) => `(SELECT total(${f("CASE WHEN q.type = 'object' THEN q.value END")}) FROM json_each(${a}) AS q)`,
  elements: (a, x) => ({
    from: `json_each(${a}) AS ${x}`,
    element: `CASE WHEN ${x}.type = 'object' THEN ${x}.value END`,
    first: `${x}.key = 0`,
  }),
  nullText: "NULL",
};

/** A measure's column in SQL (quoted: the measures are camel case), with an optional prefix. */
export const sqlMeasure = (m: UsageMeasure, prefix = ""): string => `"${prefix}${m}"`;

/** A measure's column in the daily rollup: snake case (`input_tokens`). */
export const rollupColumn = (m: UsageMeasure): string => m.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

const metadata = (r: string, path: readonly string[]): JsonRef => ({ doc: `${r}.metadata`, path });

/** A test of row `r` in SQL. */
export function sqlTest(d: UsageDialect, t: UsageTest, r: string): string {
  if ("type" in t) return `${r}.type IN (${t.type.map(sqlLit).join(", ")})`;
  if ("held" in t) return `${r}.reservation_id IS ${t.held ? "NOT NULL" : "NULL"}`;
  if ("takeBack" in t) return `${r}.take_back = ${sqlLit(t.takeBack)}`;
  if ("descriptionStartsWith" in t) return d.startsWith(`${r}.description`, t.descriptionStartsWith);
  const is = d.is(metadata(r, t.metadata), t.is);
  return t.nonEmpty === true ? `${is} AND ${d.nonEmpty(metadata(r, t.metadata))}` : is;
}

/** The first case that holds, in SQL: `CASE WHEN … END` (NULL when none holds). */
function sqlCase<T>(d: UsageDialect, cases: readonly UsageCase<T>[], r: string, then: (v: T) => string): string {
  if (cases.length > 0 && cases[0]!.when.length === 0) return then(cases[0]!.then);
  let out = "CASE";
  for (const c of cases) {
    if (c.when.length === 0) return `${out} ELSE ${then(c.then)} END`;
    out += ` WHEN ${c.when.map((t) => sqlTest(d, t, r)).join(" AND ")} THEN ${then(c.then)}`;
  }
  return `${out} END`;
}

/** A value of the rules, times `sign`. */
function sqlValue(d: UsageDialect, v: UsageValue, r: string, sign: 1 | -1): string {
  const x =
    typeof v === "number"
      ? String(v)
      : v === "amount"
        ? `${r}.amount`
        : v === "shortfall"
          ? `coalesce(${r}.shortfall, 0)`
          : d.num(metadata(r, v.metadata));
  return sign === 1 ? x : `-(${x})`;
}

/** Row `r`'s usage kind (text), or NULL when it is no usage. */
export const sqlKind = (d: UsageDialect, r: string, rules: UsageRules = USAGE_RULES): string =>
  sqlCase(d, rules.kinds, r, sqlLit);

/**
 * Row `r`'s factor: -1 when it gives usage back (`rules.negated`: a reversal), else 1 — what each
 * of its parts' measures is multiplied by.
 */
export const sqlFactor = (d: UsageDialect, r: string, rules: UsageRules = USAGE_RULES): string =>
  rules.negated === null
    ? "1"
    : `CASE WHEN ${rules.negated.map((t) => sqlTest(d, t, r)).join(" AND ")} THEN -1 ELSE 1 END`;

/** When row `r`'s usage happened (docs/usage.md, "Late usage"): its `occurred_at`, else its `created_at`. */
export const sqlPlaced = (r: string): string => `coalesce(${r}.occurred_at, ${r}.created_at)`;

/**
 * Row `r` is placed in a range: `range(column)` holds of its `occurred_at` when it has one, else of
 * its `created_at` — written so that an index on either column can find the rows.
 */
export const sqlPlacedIn = (r: string, range: (column: string) => string): string =>
  `((${r}.occurred_at IS NULL AND ${range(`${r}.created_at`)}) OR ${range(`${r}.occurred_at`)})`;

/** The entry types some kind's rules accept: `r.type IN (…)`. */
export const sqlTypes = (r: string, rules: UsageRules = USAGE_RULES): string =>
  `${r}.type IN (${usageEntryTypes(rules).map(sqlLit).join(", ")})`;

/** By kind: `CASE kind WHEN 'spend' THEN … END`, or the one expression when every kind has the same. */
function byKind(kind: string, rules: UsageRules, f: (k: UsageKind) => string): string {
  const kinds = usageKindsOf(rules);
  const xs = kinds.map(f);
  if (xs.every((x) => x === xs[0])) return xs[0]!;
  return `CASE ${kind} ${kinds.map((k, i) => `WHEN ${sqlLit(k)} THEN ${xs[i]}`).join(" ")} END`;
}

/** The entry's own value of measure `m` (before it splits into parts), given its kind. */
export const sqlEntryMeasure = (
  d: UsageDialect,
  m: UsageMeasure,
  r: string,
  kind: string,
  rules: UsageRules = USAGE_RULES,
): string =>
  byKind(kind, rules, (k) => sqlCase(d, rules.rules[k].measures[m], r, (v) => sqlValue(d, v, r, rules.rules[k].sign)));

/** A part source of the rules, numbered from 1, with its kind. */
export interface NumberedSource {
  i: number;
  kind: UsageKind;
  source: UsagePartSource;
  sign: 1 | -1;
}

/** Every part source of the rules, numbered from 1, with its kind. */
export function usageSources(rules: UsageRules = USAGE_RULES): NumberedSource[] {
  const out: NumberedSource[] = [];
  for (const kind of usageKindsOf(rules)) {
    for (const source of rules.rules[kind].parts)
      out.push({ i: out.length + 1, kind, source, sign: rules.rules[kind].sign });
  }
  return out;
}

/**
 * Source `i`'s array of row `r` when it is the source of the entry's parts (the first of its
 * kind's sources that holds), else NULL.
 */
export function sqlSourceArray(
  d: UsageDialect,
  i: number,
  r: string,
  kind: string,
  rules: UsageRules = USAGE_RULES,
): string {
  const all = usageSources(rules);
  const s = all[i - 1]!;
  const before = all.filter((x) => x.kind === s.kind && x.i < i);
  const when = (x: NumberedSource) => `WHEN ${kind} = ${sqlLit(x.kind)} AND ${sqlTest(d, sourceTest(x.source), r)}`;
  return `CASE ${before.map((x) => `${when(x)} THEN NULL `).join("")}${when(s)} THEN ${d.json(metadata(r, s.source.array))} END`;
}

/**
 * An element's value of measure `m` (`x`: the element, as JSON; `first`: whether it is the
 * array's first; `entry`: the entry's value, which a `null` field puts on the first element).
 */
export function sqlElementMeasure(
  d: UsageDialect,
  s: { source: UsagePartSource; sign: 1 | -1 },
  m: UsageMeasure,
  x: JsonRef,
  first: string,
  entry: string,
): string {
  const f = s.source.fields[m];
  if (f === false) return "0";
  if (f === null) return `CASE WHEN ${first} THEN ${entry} ELSE 0 END`;
  const v = d.num({ doc: x.doc, path: [...x.path, f] });
  return s.sign === 1 ? v : `-(${v})`;
}

/** The sum of measure `m` over the parts of source array `a` (0 when empty). */
export function sqlSourceSum(
  d: UsageDialect,
  s: { source: UsagePartSource; sign: 1 | -1 },
  m: UsageMeasure,
  a: string,
  entry: string,
): string {
  if (s.source.fields[m] === false) return "0";
  if (s.source.fields[m] === null) return `CASE WHEN ${d.nonEmpty({ doc: a, path: [] })} THEN ${entry} ELSE 0 END`;
  return d.sumOver(a, (x) => sqlElementMeasure(d, s, m, { doc: x, path: [] }, "", entry));
}

/**
 * An entry's total of measure `m` (all its parts): the entry's value for a measure its source
 * balances (or with no source), else the sum over the source's elements (one element read
 * without a subquery). `array(i)`: source i's array column (NULL when not the source); `entry`:
 * the entry's value.
 */
export function sqlEntryTotal(
  d: UsageDialect,
  m: UsageMeasure,
  array: (i: number) => string,
  entry: string,
  rules: UsageRules = USAGE_RULES,
): string {
  const branches = usageSources(rules)
    .filter((s) => !s.source.balanced.includes(m))
    .map((s) => {
      const a = array(s.i);
      const one = s.source.fields[m] === null ? entry : sqlElementMeasure(d, s, m, { doc: a, path: [0] }, "", entry);
      return `WHEN ${a} IS NOT NULL THEN CASE WHEN ${d.length(a)} = 1 THEN ${one} ELSE ${sqlSourceSum(d, s, m, a, entry)} END`;
    });
  return branches.length === 0 ? entry : `CASE ${branches.join(" ")} ELSE ${entry} END`;
}

/** The kinds in report order, as SQL over a kind column: 0, 1, … */
export const sqlKindOrder = (kind: string, rules: UsageRules = USAGE_RULES): string =>
  `CASE ${kind} ${usageKindsOf(rules)
    .map((k, i) => `WHEN ${sqlLit(k)} THEN ${i}`)
    .join(" ")} END`;
