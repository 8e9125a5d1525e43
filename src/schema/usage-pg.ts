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
  type UsageTest,
  type UsageValue,
} from "../domain/usage.js";
import type { UsageKind } from "../models/usage.js";

/**
 * The rules of usage (`USAGE_RULES` of src/domain/usage.ts, docs/usage.md) as PostgreSQL
 * expressions over a journal row: what the usage query (src/db/postgres/usage.ts), the daily
 * rollup's trigger and its fill (./rollup.ts) are made of. Every function takes the row's alias
 * (`j`, `e`, or `NEW` in the trigger) and writes its columns `type`, `amount`, `metadata`
 * (jsonb), `description` and `reservation_id`.
 */

/** A SQL string literal. Rules' keys and texts are constants of the table, quoted all the same. */
export const pgLit = (s: string): string => `'${s.replace(/'/g, "''")}'`;

/** A jsonb value at `path` below `doc`. */
export const pgPath = (doc: string, path: readonly string[]): string => [doc, ...path.map(pgLit)].join(" -> ");

/** `x` (a jsonb) as a number when it is one, else 0: `count` of src/domain/usage.ts. */
export const pgNum = (x: string): string =>
  `CASE WHEN jsonb_typeof(${x}) = 'number' THEN (${x})::text::numeric ELSE 0 END`;

/** `x` (a jsonb) as text when it is a string, else NULL. */
export const pgStr = (x: string): string => `CASE WHEN jsonb_typeof(${x}) = 'string' THEN ${x} #>> '{}' END`;

/** A measure's column in SQL (quoted: the measures are camel case), with an optional prefix. */
export const pgMeasure = (m: UsageMeasure, prefix = ""): string => `"${prefix}${m}"`;

/** A measure's column in the daily rollup: snake case (`input_tokens`). */
export const rollupColumn = (m: UsageMeasure): string => m.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** A test of row `r` in SQL. */
export function pgTest(t: UsageTest, r: string): string {
  if ("type" in t) return `${r}.type IN (${t.type.map(pgLit).join(", ")})`;
  if ("held" in t) return `${r}.reservation_id IS ${t.held ? "NOT NULL" : "NULL"}`;
  if ("descriptionStartsWith" in t) {
    const s = t.descriptionStartsWith;
    return `left(${r}.description, ${s.length}) = ${pgLit(s)}`;
  }
  const v = pgPath(`${r}.metadata`, t.metadata);
  const is = `jsonb_typeof(${v}) = '${t.is}'`;
  // '[]' compares without jsonb_array_length, which fails on a value that is no array.
  return t.nonEmpty === true ? `${is} AND ${v} <> '[]'::jsonb` : is;
}

const pgAll = (ts: readonly UsageTest[], r: string): string =>
  ts.length === 0 ? "true" : ts.map((t) => pgTest(t, r)).join(" AND ");

/** The first case that holds, in SQL: `CASE WHEN … END` (NULL when none holds). */
export function pgCase<T>(cases: readonly UsageCase<T>[], r: string, then: (v: T) => string): string {
  if (cases.length > 0 && cases[0]!.when.length === 0) return then(cases[0]!.then);
  let out = "CASE";
  for (const c of cases) {
    if (c.when.length === 0) return `${out} ELSE ${then(c.then)} END`;
    out += ` WHEN ${pgAll(c.when, r)} THEN ${then(c.then)}`;
  }
  return `${out} END`;
}

/** A value of the rules, times `sign`. */
export function pgValue(v: UsageValue, r: string, sign: 1 | -1): string {
  const x =
    typeof v === "number" ? String(v) : v === "amount" ? `${r}.amount` : pgNum(pgPath(`${r}.metadata`, v.metadata));
  return sign === 1 ? x : `-(${x})`;
}

/** Row `r`'s usage kind (text), or NULL when it is no usage. */
export const pgKind = (r: string, rules: UsageRules = USAGE_RULES): string => pgCase(rules.kinds, r, pgLit);

/** The entry types some kind's rules accept: `r.type IN (…)`. */
export const pgTypes = (r: string, rules: UsageRules = USAGE_RULES): string =>
  `${r}.type IN (${usageEntryTypes(rules).map(pgLit).join(", ")})`;

/** By kind: `CASE kind WHEN 'spend' THEN … END`, or the one expression when every kind has the same. */
function byKind(kind: string, rules: UsageRules, f: (k: UsageKind) => string): string {
  const kinds = usageKindsOf(rules);
  const xs = kinds.map(f);
  if (xs.every((x) => x === xs[0])) return xs[0]!;
  return `CASE ${kind} ${kinds.map((k, i) => `WHEN ${pgLit(k)} THEN ${xs[i]}`).join(" ")} END`;
}

/** The entry's own value of measure `m` (before it splits into parts), given its kind. */
export const pgEntryMeasure = (m: UsageMeasure, r: string, kind: string, rules: UsageRules = USAGE_RULES): string =>
  byKind(kind, rules, (k) => pgCase(rules.rules[k].measures[m], r, (v) => pgValue(v, r, rules.rules[k].sign)));

/** Every part source of the rules, numbered from 1, with its kind. */
export function pgSources(
  rules: UsageRules = USAGE_RULES,
): { i: number; kind: UsageKind; source: UsagePartSource; sign: 1 | -1 }[] {
  const out: { i: number; kind: UsageKind; source: UsagePartSource; sign: 1 | -1 }[] = [];
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
export function pgSourceArray(i: number, r: string, kind: string, rules: UsageRules = USAGE_RULES): string {
  const all = pgSources(rules);
  const s = all[i - 1]!;
  const before = all.filter((x) => x.kind === s.kind && x.i < i);
  const when = (x: (typeof all)[number]) => `WHEN ${kind} = ${pgLit(x.kind)} AND ${pgTest(sourceTest(x.source), r)}`;
  return `CASE ${before.map((x) => `${when(x)} THEN NULL `).join("")}${when(s)} THEN ${pgPath(`${r}.metadata`, s.source.array)} END`;
}

/** An element's value of measure `m` (element `x`, a jsonb; `entry`: the entry's value, for `null` fields). */
export function pgElementMeasure(
  s: { source: UsagePartSource; sign: 1 | -1 },
  m: UsageMeasure,
  x: string,
  first: string,
  entry: string,
): string {
  const f = s.source.fields[m];
  if (f === null) return `CASE WHEN ${first} THEN ${entry} ELSE 0 END`;
  const v = pgNum(`${x} -> ${pgLit(f)}`);
  return s.sign === 1 ? v : `-(${v})`;
}

/** The sum of measure `m` over the parts of source array `a` (numeric; 0 when empty). */
export function pgSourceSum(
  s: { source: UsagePartSource; sign: 1 | -1 },
  m: UsageMeasure,
  a: string,
  entry: string,
): string {
  const f = s.source.fields[m];
  if (f === null) return `CASE WHEN ${a} <> '[]'::jsonb THEN ${entry} ELSE 0 END`;
  return `coalesce((SELECT sum(${pgElementMeasure(s, m, "q.v", "", entry)}) FROM jsonb_array_elements(${a}) AS q(v)), 0)`;
}

/**
 * An entry's total of measure `m` (all its parts): the entry's value for a measure its source
 * balances (or with no source), else the sum over the source's elements (one element read
 * without a subquery). `array(i)`: source i's array column (NULL when not the source); `entry`:
 * the entry's value.
 */
export function pgEntryTotal(
  m: UsageMeasure,
  array: (i: number) => string,
  entry: string,
  rules: UsageRules = USAGE_RULES,
): string {
  const branches = pgSources(rules)
    .filter((s) => !s.source.balanced.includes(m))
    .map((s) => {
      const a = array(s.i);
      const one = s.source.fields[m] === null ? entry : pgElementMeasure(s, m, `${a} -> 0`, "", entry);
      return `WHEN ${a} IS NOT NULL THEN CASE WHEN jsonb_array_length(${a}) = 1 THEN ${one} ELSE ${pgSourceSum(s, m, a, entry)} END`;
    });
  return branches.length === 0 ? entry : `CASE ${branches.join(" ")} ELSE ${entry} END`;
}

/** The kinds in report order, as SQL over a kind column: 0, 1, … */
export const pgKindOrder = (kind: string, rules: UsageRules = USAGE_RULES): string =>
  `CASE ${kind} ${usageKindsOf(rules)
    .map((k, i) => `WHEN ${pgLit(k)} THEN ${i}`)
    .join(" ")} END`;

export { USAGE_MEASURES };
