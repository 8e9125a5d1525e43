import type { Document } from "mongodb";
import {
  USAGE_MEASURES,
  USAGE_RULES,
  sourceTest,
  usageEntryTypes,
  usageKindsOf,
  type UsageBucket,
  type UsageCase,
  type UsageMeasure,
  type UsagePartSource,
  type UsageRules,
  type UsageScan,
  type UsageTest,
  type UsageValue,
} from "../../core/domain/usage.js";
import type { UsageKind } from "../../core/models/usage.js";

const NUMBER_TYPES = ["int", "long", "double", "decimal"];
const num = (x: unknown) => ({ $cond: [{ $in: [{ $type: x }, NUMBER_TYPES] }, x, 0] });
const str = (x: unknown) => ({ $cond: [{ $eq: [{ $type: x }, "string"] }, x, null] });

// The rules of usage (USAGE_RULES of src/core/domain/usage.ts) as aggregation expressions over a
// journal document.

const path = (p: readonly string[]) => `$metadata.${p.join(".")}`;
const arrayOr = (x: unknown) => ({ $cond: [{ $isArray: x }, x, []] });

function test(t: UsageTest): unknown {
  if ("type" in t) return { $in: ["$type", [...t.type]] };
  if ("held" in t) return { [t.held ? "$ne" : "$eq"]: [{ $ifNull: ["$reservationId", null] }, null] };
  if ("takeBack" in t) return { $eq: ["$takeBack", t.takeBack] };
  if ("descriptionStartsWith" in t) {
    const s = t.descriptionStartsWith;
    return { $eq: [{ $substrCP: [{ $ifNull: ["$description", ""] }, 0, [...s].length] }, s] };
  }
  const p = path(t.metadata);
  const is =
    t.is === "string"
      ? { $eq: [{ $type: p }, "string"] }
      : t.is === "number"
        ? { $in: [{ $type: p }, NUMBER_TYPES] }
        : { $isArray: p };
  return t.nonEmpty === true ? { $and: [is, { $gt: [{ $size: arrayOr(p) }, 0] }] } : is;
}

const all = (ts: readonly UsageTest[]): unknown => (ts.length === 1 ? test(ts[0]!) : { $and: ts.map(test) });

/** Whether every test of `ts` holds of a journal document, as an aggregation expression (a `$expr`). */
export const usageTestsExpression = all;

/** The first case that holds (null when none does). */
function cases<T>(cs: readonly UsageCase<T>[], then: (v: T) => unknown): unknown {
  const [c, ...more] = cs;
  if (c === undefined) return null;
  if (c.when.length === 0) return then(c.then);
  return { $cond: [all(c.when), then(c.then), cases(more, then)] };
}

const value = (v: UsageValue, sign: 1 | -1): unknown => {
  const x =
    typeof v === "number"
      ? v
      : v === "amount"
        ? "$amount"
        : v === "shortfall"
          ? { $ifNull: ["$shortfall", 0] }
          : num(path(v.metadata));
  return sign === 1 ? x : { $multiply: [-1, x] };
};

/** By the document's kind, or the one expression when every kind has the same. */
function byKind(rules: UsageRules, f: (k: UsageKind) => unknown): unknown {
  const kinds = usageKindsOf(rules);
  const xs = kinds.map(f);
  if (xs.every((x) => JSON.stringify(x) === JSON.stringify(xs[0]))) return xs[0];
  return { $switch: { branches: kinds.map((k, i) => ({ case: { $eq: ["$kind", k] }, then: xs[i] })), default: null } };
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

/** The entry's own value of measure `m`, by its kind. */
const entryValue = (rules: UsageRules, m: UsageMeasure): unknown =>
  byKind(rules, (k) => cases(rules.rules[k].measures[m], (v) => value(v, rules.rules[k].sign)));

/**
 * The entry's own value of measure `m` in the stages after its own: a constant or a field read in
 * place, anything else from the field `m_<measure>` the pipeline adds (`entryFields`).
 */
const entryRef = (rules: UsageRules, m: UsageMeasure): unknown => {
  const v = entryValue(rules, m);
  return typeof v === "number" || typeof v === "string" ? v : `$m_${m}`;
};
const entryFields = (rules: UsageRules): Document =>
  Object.fromEntries(
    USAGE_MEASURES.filter((m) => entryRef(rules, m) === `$m_${m}`).map((m) => [`m_${m}`, entryValue(rules, m)]),
  );

/** An element's (`u`) value of measure `m`; `i`: its index. */
function element(rules: UsageRules, s: Source, m: UsageMeasure, u: string, i: string): unknown {
  const f = s.source.fields[m];
  if (f === false) return 0;
  if (f === null) return { $cond: [{ $eq: [i, 0] }, entryRef(rules, m), 0] };
  const v = num(`${u}.${f}`);
  return s.sign === 1 ? v : { $multiply: [-1, v] };
}

/** The sum of measure `m` over source `s`'s array. */
function sourceSum(rules: UsageRules, s: Source, m: UsageMeasure): unknown {
  const a = path(s.source.array);
  if (s.source.fields[m] === false) return 0;
  if (s.source.fields[m] === null) return { $cond: [{ $gt: [{ $size: arrayOr(a) }, 0] }, entryRef(rules, m), 0] };
  return {
    $reduce: { input: arrayOr(a), initialValue: 0, in: { $add: ["$$value", element(rules, s, m, "$$this", "")] } },
  };
}

/** The parts of an entry whose source is `s`: each element, then what they do not account for. */
function sourceParts(rules: UsageRules, s: Source): unknown {
  const a = path(s.source.array);
  const str1 = (f: string | undefined) => (f === undefined ? null : str(`$$u.${f}`));
  const part = (i: string) => ({
    model: str1(s.source.model),
    feature: s.source.own ? str1(s.source.feature) : null,
    spender: s.source.own ? str1(s.source.spender) : null,
    own: s.source.own,
    ...Object.fromEntries(USAGE_MEASURES.map((m) => [m, element(rules, s, m, "$$u", i)])),
  });
  // An element's index is needed only for a measure that goes to the first element.
  const indexed = USAGE_MEASURES.some((m) => s.source.fields[m] === null);
  const each = indexed
    ? {
        $map: {
          input: { $range: [0, { $size: arrayOr(a) }] },
          as: "i",
          in: { $let: { vars: { u: { $arrayElemAt: [a, "$$i"] } }, in: part("$$i") } },
        },
      }
    : { $map: { input: a, as: "u", in: part("") } };
  if (s.source.balanced.length === 0) return each;
  // The sums of the balanced measures, once each: what is left of the entry's is a part of its own.
  const rest = {
    model: null,
    feature: null,
    spender: null,
    own: s.source.own,
    ...Object.fromEntries(
      USAGE_MEASURES.map((m) => [
        m,
        s.source.balanced.includes(m) ? { $subtract: [entryRef(rules, m), `$$s_${m}`] } : 0,
      ]),
    ),
  };
  const differs = s.source.balanced.map((m) => ({ $ne: [entryRef(rules, m), `$$s_${m}`] }));
  return {
    $let: {
      vars: Object.fromEntries(s.source.balanced.map((m) => [`s_${m}`, sourceSum(rules, s, m)])),
      in: { $concatArrays: [each, { $cond: [{ $or: differs }, [rest], []] }] },
    },
  };
}

/**
 * The window of `$at` (when the usage happened: `occurredAt`, else `createdAt`) among `boundaries`, as a balanced tree of `$cond`s: about log2(n)
 * comparisons a document. (`$dateTrunc` with a timezone would do for most windows, but the
 * MongoDB-compatible server the suite runs on answered wrong days with it; the tree gives every
 * store the same windows, worked out in the query's time zone beforehand.)
 */
function windowTree(boundaries: readonly number[], lo: number, hi: number): unknown {
  if (hi - lo <= 1) return lo;
  const mid = (lo + hi) >> 1;
  return {
    $cond: [
      { $lt: ["$at", new Date(boundaries[mid]!)] },
      windowTree(boundaries, lo, mid),
      windowTree(boundaries, mid, hi),
    ],
  };
}

/**
 * The usage pipeline of a MongoDB store (docs/usage.md): the rules of `src/core/domain/usage.ts`
 * (`USAGE_RULES`, compiled above; `groupValue`) as aggregation expressions, each entry split into its parts (`$unwind`), summed by `$group`. Entries
 * are read by the (userId, seq) index for one account, by the createdAt index for every account.
 */
export function usagePipeline(scan: UsageScan, rules: UsageRules = USAGE_RULES): Document[] {
  const sources = sourcesOf(rules);
  // Each entry where its usage happened (docs/usage.md, "Late usage"): at its occurredAt (late
  // usage, a reversal), else its createdAt — each arm of the $or readable by an index.
  const range = { $gte: scan.from, $lt: scan.to };
  const match: Document = {
    $or: [{ occurredAt: null, createdAt: range }, { occurredAt: range }],
    type: { $in: usageEntryTypes(rules) },
  };
  if (scan.account !== null) match.userId = scan.account;
  if (scan.throughSeq !== undefined) match.seq = { $lte: scan.throughSeq };
  const kind = cases(rules.kinds, (k) => k);
  // Each entry's own measures ("m_…") and the number of its part source (0: none, the entry whole).
  // Each entry's own measures that are neither constant nor a field ("m_…"), and the number of
  // its part source (0: none, the entry whole).
  const entry = entryFields(rules);
  const src = {
    $switch: {
      branches: sources.map((s) => ({
        case: { $and: [{ $eq: ["$kind", s.kind] }, test(sourceTest(s.source))] },
        then: s.i,
      })),
      default: 0,
    },
  };
  const whole = {
    model: null,
    feature: null,
    spender: null,
    own: false,
    ...Object.fromEntries(USAGE_MEASURES.map((m) => [m, entryRef(rules, m)])),
  };
  // usageParts: the elements of the entry's source and what they do not account for, or the entry whole.
  const parts = {
    $switch: {
      branches: sources.map((s) => ({ case: { $eq: ["$src", s.i] }, then: sourceParts(rules, s) })),
      default: [whole],
    },
  };
  // Each unit summed apart (docs/units.md): null, the default unit.
  const id: Document = { w: "$w", kind: "$kind", unit: { $ifNull: ["$unit", null] } };
  scan.groupBy.forEach((d, i) => {
    const name = `g${i}`;
    switch (d) {
      case "account":
        id[name] = "$userId";
        break;
      case "model":
        id[name] = "$parts.model";
        break;
      case "feature":
      case "spender":
        id[name] = { $cond: ["$parts.own", `$parts.${d}`, { $ifNull: [`$${d}`, null] }] };
        break;
      case "reason":
        id[name] = { $ifNull: ["$description", null] };
        break;
      default: {
        // Keys are letters, digits, _ and - (UsageDimension): a plain field path.
        const v = `$metadata.${d.slice("metadata.".length)}`;
        id[name] = {
          $switch: {
            branches: [
              { case: { $eq: [{ $type: v }, "string"] }, then: v },
              { case: { $in: [{ $type: v }, [...NUMBER_TYPES, "bool"]] }, then: { $toString: v } },
            ],
            default: null,
          },
        };
      }
    }
  });
  const sort: Document = {};
  if (scan.orderBy === "credits") sort.credits = -1;
  sort["_id.w"] = 1;
  sort.ko = 1;
  sort["_id.unit"] = 1;
  scan.groupBy.forEach((_, i) => (sort[`_id.g${i}`] = 1));
  return [
    { $match: match },
    {
      $project: {
        userId: 1,
        type: 1,
        amount: 1,
        shortfall: 1,
        metadata: 1,
        description: 1,
        spender: 1,
        feature: 1,
        reservationId: 1,
        unit: 1,
        at: { $ifNull: ["$occurredAt", "$createdAt"] },
        kind,
        // -1 for an entry that gives usage back (a reversal), else 1: its parts' factor.
        f: rules.negated === null ? 1 : { $cond: [all(rules.negated), -1, 1] },
      },
    },
    { $match: { kind: { $in: [...scan.kinds] } } },
    { $addFields: { w: windowTree(scan.boundaries, 0, scan.boundaries.length - 1), ...entry, src } },
    { $addFields: { parts } },
    { $unwind: "$parts" },
    {
      $group: {
        _id: id,
        ...Object.fromEntries(USAGE_MEASURES.map((m) => [m, { $sum: { $multiply: [`$parts.${m}`, "$f"] } }])),
      },
    },
    {
      $addFields: {
        ko: {
          $switch: {
            branches: usageKindsOf(rules).map((k, i) => ({ case: { $eq: ["$_id.kind", k] }, then: i })),
            default: null,
          },
        },
      },
    },
    { $sort: sort },
    { $limit: scan.limit + 1 },
  ];
}

/** A document of `usagePipeline` as a bucket. */
export function usageBucketOf(doc: Document, scan: UsageScan): UsageBucket {
  const id = doc._id as Record<string, unknown>;
  const groups: Record<string, string | null> = {};
  scan.groupBy.forEach((d, i) => {
    const v = id[`g${i}`];
    groups[d] = v === null || v === undefined ? null : String(v);
  });
  return {
    window: Number(id.w),
    kind: id.kind as UsageKind,
    unit: id.unit === null || id.unit === undefined ? null : String(id.unit),
    groups,
    ...(Object.fromEntries(USAGE_MEASURES.map((m) => [m, Number(doc[m])])) as Record<UsageMeasure, number>),
  };
}
