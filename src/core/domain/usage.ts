/**
 * The rules of usage reports (docs/usage.md): which journal entries are usage and of what kind,
 * how an entry splits by model, and the calendar windows of a query in an IANA time zone. Pure
 * functions: no I/O. Every store aggregates by these rules natively; `aggregateUsage` is the
 * reference the memory store runs and the property tests compare the others with.
 */
import type { JournalEntry, TakeBack } from "../models/index.js";
import type { UsageDimension, UsageInterval, UsageKind, UsageRow } from "../models/usage.js";
import { largestRemainder } from "./fraction.js";
import { windowIndex } from "./windows.js";

/** A query after validation, with its windows' boundaries (what a store's `usage()` reads). @beta */
export interface UsageScan {
  /** One account, or null: every account. */
  account: string | null;
  /** The start of the range (inclusive). */
  from: Date;
  /** The end of the range (exclusive). */
  to: Date;
  /** The windows' length; null: one window for the whole range. */
  interval: UsageInterval | null;
  /** The IANA time zone whose calendar the windows follow. */
  timeZone: string;
  /** The dimensions each bucket is grouped by. */
  groupBy: readonly UsageDimension[];
  /** The kinds of usage counted. */
  kinds: readonly UsageKind[];
  /** The order of the buckets: by window start, or by credits. */
  orderBy: "start" | "credits";
  /** Rows wanted; a store answers at most `limit + 1` (one more says the report was cut). */
  limit: number;
  /**
   * The windows, as instants in ms: window i is [boundaries[i], boundaries[i + 1]); the first is
   * `from`, the last `to`, those between are the calendar boundaries of `interval` in `timeZone`.
   */
  boundaries: readonly number[];
  /**
   * Only entries with a seq at or below it (with one `account`): the figures as of that state of the
   * account, whatever it wrote since (a `period_spend` threshold's recount, src/core/services/alert-reads.ts).
   * A store that takes later entries away from a rollup may answer a group at zero that the
   * journal alone would not. Absent: every entry.
   */
  throughSeq?: number | undefined;
  /** Summed from the journal alone, never from a rollup (the audit's report, which it compares the rollup with). */
  fromJournal?: boolean | undefined;
}

/**
 * A row of a store's daily usage rollup (docs/usage.md, "The daily rollup"): one account's sums
 * of one UTC day (`YYYY-MM-DD`) and kind.
 * @beta
 */
export interface UsageRollupRow extends UsageSums {
  /** The day of the row (UTC, `YYYY-MM-DD`). */
  day: string;
  /** The kind of usage summed. */
  kind: UsageKind;
  /** The unit of the entries summed (docs/units.md); null or absent: the default unit. */
  unit?: string | null;
}

/**
 * What one catch-up round of a store's daily usage rollup did (`DbManager.catchUpUsage`; the
 * worker's usage round, docs/usage.md, "Keeping the rollup caught up").
 * @beta
 */
export interface UsageCatchUp {
  /** Accounts whose cursor it moved (an account caught up in several pieces counts once a piece). */
  accounts: number;
  /** Journal entries it added to the rollup. */
  entries: number;
  /** It stopped at its `maxEntries`: what is left, if anything, is the next round's. */
  more: boolean;
}

/**
 * What a store's `usage()` answers per group: the window by its index in `boundaries`. (Its
 * measures are spelled out, not `UsageSums`: it is part of the store contract a store's author reads.)
 * @beta
 */
export interface UsageBucket {
  /** The index of the bucket's window in the scan's `boundaries`. */
  window: number;
  /** The kind of usage summed. */
  kind: UsageKind;
  /** The unit of the entries summed, each apart (docs/units.md); null or absent: the default unit. */
  unit?: string | null;
  /** The dimension values, by dimension (only those grouped by). */
  groups: Record<string, string | null>;
  /** Credits of the bucket. */
  credits: number;
  /** Requests (entries) of the bucket. */
  requests: number;
  /** Input tokens of the bucket. */
  inputTokens: number;
  /** Output tokens of the bucket. */
  outputTokens: number;
  /** Cached input tokens of the bucket. */
  cachedTokens: number;
  /** Credits of the bucket's requests served and not paid (the overdraft limit's shortfall); absent: 0. */
  shortfall?: number;
}

/**
 * A bucket of a report (`usageRows`): a store's, or catch-up usage of a closed period
 * (docs/usage.md, "Closed months"), which `credits.getUsage` adds after the store answered.
 */
export interface ReportBucket extends UsageBucket {
  /** The `through` (ms) of the close whose closed period held the usage's time; null or absent: ordinary usage. */
  catchUp?: number | null;
}

/** One part of an entry's usage: the entry, or one model's share of it. */
export interface UsagePart extends UsageSums {
  kind: UsageKind;
  model: string | null;
  /** A lease window's part names its own feature and spender (undefined: the entry's). */
  feature?: string | null;
  spender?: string | null;
}

type Meta = Record<string, unknown> | null | undefined;

const count = (v: unknown): number => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const text = (v: unknown): string | null => (typeof v === "string" ? v : null);

// ---- The rules: one table every store compiles ----

/** What a usage report sums, per row. @beta */
export type UsageMeasure = "credits" | "requests" | "inputTokens" | "outputTokens" | "cachedTokens" | "shortfall";
/** Every `UsageMeasure`, in the order of a row's fields. */
export const USAGE_MEASURES: readonly UsageMeasure[] = [
  "credits",
  "requests",
  "inputTokens",
  "outputTokens",
  "cachedTokens",
  "shortfall",
];
/** A value of each measure. @beta */
export type UsageSums = Record<UsageMeasure, number>;

/**
 * A test of a journal entry: its type is one of `type`; the metadata value at `metadata` (a path of
 * keys) is a JSON string, a number or an array (`nonEmpty`: with at least one element); its
 * description starts with `descriptionStartsWith` (case-sensitive); it has a hold's id (`held`); the
 * library recorded it as a take-back of this kind (`takeBack`, set only by the library).
 */
export type UsageTest =
  | { readonly type: readonly JournalEntry["type"][] }
  | { readonly metadata: readonly string[]; readonly is: "string" | "number" | "array"; readonly nonEmpty?: true }
  | { readonly descriptionStartsWith: string }
  | { readonly held: boolean }
  | { readonly takeBack: TakeBack };

/**
 * A number the rules read: a constant, the entry's amount, its `shortfall` (set only by the
 * library; 0 when not set), or a metadata number (0 when not a number).
 */
export type UsageValue = number | "amount" | "shortfall" | { readonly metadata: readonly string[] };

/** One rule of a list: the first whose tests all hold (none: always) gives `then`. */
export interface UsageCase<T> {
  readonly when: readonly UsageTest[];
  readonly then: T;
}

/**
 * Where the parts of an entry are (docs/usage.md): an array in its metadata whose elements each
 * give a part's model (and with `own`, its feature and spender: else the entry's) and measures,
 * each from a numeric field of the element (0 when not a number), or `null`: the entry's own
 * value on the first element and 0 on the others, or `false`: 0 on every element (a measure no
 * element may say: a balanced one is then the entry's own, whole, on the part of the rest). What the parts do not account for of the
 * `balanced` measures (the entry's value less their sum, when it differs) is a part with no
 * model (and with `own`, no feature and spender).
 */
export interface UsagePartSource {
  readonly array: readonly string[];
  /** An empty array is not this source (the next one, or the entry whole). */
  readonly nonEmpty: boolean;
  readonly own: boolean;
  readonly model: string;
  readonly feature?: string;
  readonly spender?: string;
  readonly fields: { readonly [M in UsageMeasure]: string | null | false };
  readonly balanced: readonly UsageMeasure[];
}

/** What an entry of one usage kind adds to the report. */
export interface UsageKindRule {
  /** The factor of every measure (kinds are rows of their own: a refund is never netted with spend). */
  readonly sign: 1 | -1;
  /** The entry's own value of each measure: the first case that holds. */
  readonly measures: { readonly [M in UsageMeasure]: readonly UsageCase<UsageValue>[] };
  /** Where its parts are: the first source that holds; none: the entry is one part, whole. */
  readonly parts: readonly UsagePartSource[];
}

export interface UsageRules {
  /** An entry's usage kind: the first case that holds; none: the entry is no usage. */
  readonly kinds: readonly UsageCase<UsageKind>[];
  /**
   * The entries that give usage back (a reversal, docs/usage.md "Corrections"): when all these tests
   * hold, every measure of each of the entry's parts counts negated, in the kind and dimensions the
   * other rules give it. Null: no entry does.
   */
  readonly negated: readonly UsageTest[] | null;
  readonly rules: { readonly [K in UsageKind]: UsageKindRule };
}

/**
 * How schema version 1 told a payment's take-back (docs/promos-and-payments.md) from spend: a
 * deduction, capture or void with metadata `paymentId` (a string) and `refundedAmount` (a number),
 * a `clawback` when its description starts "Lost dispute". Only the upgrade to version 2 reads it,
 * once, to set `takeBack` on the entries a version 1 store holds (src/schema/migrations.ts); every
 * report reads `takeBack`.
 */
export const V1_TAKE_BACK: readonly UsageCase<"refund" | "clawback">[] = (() => {
  const takeBack: readonly UsageTest[] = [
    { type: ["deduct", "commit_reserved", "void"] },
    { metadata: ["paymentId"], is: "string" },
    { metadata: ["refundedAmount"], is: "number" },
  ];
  return [
    { when: [...takeBack, { descriptionStartsWith: "Lost dispute" }], then: "clawback" },
    { when: takeBack, then: "refund" },
  ];
})();

const TAKE_BACK_RULE: UsageKindRule = {
  sign: 1,
  measures: {
    credits: [{ when: [], then: "amount" }],
    requests: [{ when: [], then: 0 }],
    inputTokens: [{ when: [], then: 0 }],
    outputTokens: [{ when: [], then: 0 }],
    cachedTokens: [{ when: [], then: 0 }],
    shortfall: [{ when: [], then: 0 }],
  },
  parts: [],
};

/**
 * Parts recorded with their own feature, spender and model, under the names of the report's
 * measures (a reversal's, a lease window's): `array` in the entry's metadata. A part's shortfall is
 * never read from it (metadata says nothing of what was served and not paid): the entry's own
 * `shortfall` is the part with no dimension's (docs/usage.md, "Served and not paid").
 */
const ownParts = (array: readonly string[]): UsagePartSource => ({
  array,
  nonEmpty: false,
  own: true,
  model: "model",
  feature: "feature",
  spender: "spender",
  fields: {
    credits: "credits",
    requests: "requests",
    inputTokens: "inputTokens",
    outputTokens: "outputTokens",
    cachedTokens: "cachedTokens",
    shortfall: false,
  },
  balanced: ["credits", "requests", "shortfall"],
});

/**
 * The rules of usage (docs/usage.md), the one place they are written. The memory store runs them
 * here (`usageParts`); the PostgreSQL and SQLite query (one text for both, src/db/usage-query.ts,
 * from src/schema/usage-sql.ts), the MongoDB pipeline (src/db/mongodb/usage.ts) and PostgreSQL's daily
 * rollup trigger and fill (src/schema/rollup.ts) are generated from them, so a new entry kind or
 * measure is an edit here (and, for a measure, a column of the rollup: a schema version).
 *
 * - `spend`: a deduction and a captured hold (`commit_reserved`: what was captured — a partial
 *   capture's returned credits are not in it). Requests: 1 for a deduction or a capture, 0 for
 *   the excess of a capture charged after it (a deduction with the hold's id: the same request),
 *   a lease window's count. Split by a lease window's parts (`metadata.leaseWindow.parts`), else
 *   by its recorded LLM usages (`metadata.usages`, docs/llm-metering.md: the requests with the
 *   first), so the parts of an entry always add up to its amount and its requests.
 *   A reversal (`reverse`, docs/usage.md "Corrections") is spend given back: negated, split by
 *   the parts it records (`metadata.reversal.parts`: the charge's parts scaled to what it gives
 *   back, `reversalMetadata`), its requests those it records. Every store places it at its
 *   `occurredAt` — the charge's time — so it nets out in the charge's window.
 * - `refund` / `clawback`: the deductions and voids that take a refunded payment's or a lost
 *   dispute's credits back, as the library recorded them (`takeBack`, never the metadata or the
 *   description); their credits, never netted with spend.
 *
 * Additions, expiries, other voids, holds and their releases are no usage. Every entry counts in
 * the window of its `occurredAt` when it has one (late usage, a reversal), else of its `createdAt`.
 */
export const USAGE_RULES: UsageRules = {
  kinds: [
    { when: [{ type: ["deduct", "commit_reserved", "void"] }, { takeBack: "clawback" }], then: "clawback" },
    { when: [{ type: ["deduct", "commit_reserved", "void"] }, { takeBack: "refund" }], then: "refund" },
    { when: [{ type: ["deduct", "commit_reserved", "reverse"] }], then: "spend" },
  ],
  negated: [{ type: ["reverse"] }],
  rules: {
    spend: {
      sign: 1,
      measures: {
        credits: [{ when: [], then: "amount" }],
        requests: [
          { when: [{ type: ["reverse"] }], then: { metadata: ["reversal", "requests"] } },
          { when: [{ type: ["deduct"] }, { held: false }], then: 1 },
          { when: [{ type: ["deduct"] }], then: 0 },
          {
            when: [{ metadata: ["leaseWindow", "requests"], is: "number" }],
            then: { metadata: ["leaseWindow", "requests"] },
          },
          { when: [], then: 1 },
        ],
        inputTokens: [{ when: [], then: 0 }],
        outputTokens: [{ when: [], then: 0 }],
        cachedTokens: [{ when: [], then: 0 }],
        // Credits served and not charged: the overdraft limit's cut, the entry's `shortfall`, which
        // only the library sets, on a charge (docs/metering.md, "Served and not paid"); never the
        // metadata's say.
        shortfall: [{ when: [], then: "shortfall" }],
      },
      parts: [
        ownParts(["reversal", "parts"]),
        ownParts(["leaseWindow", "parts"]),
        {
          array: ["usages"],
          nonEmpty: true,
          own: false,
          model: "model",
          fields: {
            credits: "amount",
            requests: null,
            inputTokens: "inputTokens",
            outputTokens: "outputTokens",
            cachedTokens: "cachedTokens",
            shortfall: null,
          },
          balanced: ["credits", "requests"],
        },
      ],
    },
    refund: TAKE_BACK_RULE,
    clawback: TAKE_BACK_RULE,
  },
};

/** The journal entry types some kind's rules accept: what a store's query reads at all. */
export function usageEntryTypes(rules: UsageRules = USAGE_RULES): JournalEntry["type"][] {
  const out = new Set<JournalEntry["type"]>();
  for (const c of rules.kinds) {
    const t = c.when.find((x): x is { type: readonly JournalEntry["type"][] } => "type" in x);
    // A kind's rule must name its entry types: the stores read no other entries.
    if (t === undefined) throw new Error(`usage rule for ${c.then} names no entry type`);
    for (const x of t.type) out.add(x);
  }
  return [...out];
}

/** The usage kinds, in report order. */
export const usageKindsOf = (rules: UsageRules = USAGE_RULES): UsageKind[] => Object.keys(rules.rules) as UsageKind[];

/** The metadata value at `path` (undefined when a step is not an object). */
export function metadataAt(m: unknown, path: readonly string[]): unknown {
  let v = m;
  for (const k of path) {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

type RuleEntry = Pick<JournalEntry, "type" | "amount" | "metadata" | "description" | "reservationId" | "takeBack"> &
  Partial<Pick<JournalEntry, "shortfall">>;

/** Whether `t` holds of `e`. */
export function usageTest(t: UsageTest, e: RuleEntry): boolean {
  if ("type" in t) return t.type.includes(e.type);
  if ("held" in t) return (e.reservationId != null) === t.held;
  if ("takeBack" in t) return e.takeBack === t.takeBack;
  if ("descriptionStartsWith" in t) return e.description?.startsWith(t.descriptionStartsWith) === true;
  const v = metadataAt(e.metadata, t.metadata);
  if (t.is === "string") return typeof v === "string";
  if (t.is === "number") return typeof v === "number" && Number.isFinite(v);
  return Array.isArray(v) && (t.nonEmpty !== true || v.length > 0);
}

function firstCase<T>(cases: readonly UsageCase<T>[], e: RuleEntry): T | null {
  for (const c of cases) if (c.when.every((t) => usageTest(t, e))) return c.then;
  return null;
}

function usageValue(v: UsageValue | null, e: RuleEntry): number {
  if (v === null) return 0;
  if (typeof v === "number") return v;
  if (v === "amount") return e.amount;
  if (v === "shortfall") return e.shortfall ?? 0;
  return count(metadataAt(e.metadata, v.metadata));
}

/** A source's array test (what picks it). */
export const sourceTest = (s: UsagePartSource): UsageTest =>
  s.nonEmpty ? { metadata: s.array, is: "array", nonEmpty: true } : { metadata: s.array, is: "array" };

/**
 * The kind of usage an entry is, or null when it is none (`USAGE_RULES.kinds`).
 */
export function usageKind(
  e: Pick<JournalEntry, "type" | "metadata" | "description"> & Partial<Pick<JournalEntry, "amount" | "reservationId">>,
  rules: UsageRules = USAGE_RULES,
): UsageKind | null {
  return firstCase(rules.kinds, { amount: 0, reservationId: null, ...e });
}

/**
 * An entry's usage split into parts (empty when it is not usage), by `rules` (`USAGE_RULES`): the
 * first part source of its kind that holds, each element a part and what they do not account for
 * of the balanced measures a part with no dimension; else the entry whole.
 */
export function usageParts(e: RuleEntry, rules: UsageRules = USAGE_RULES): UsagePart[] {
  const kind = usageKind(e, rules);
  if (kind === null) return [];
  const rule = rules.rules[kind];
  const entry = {} as Record<UsageMeasure, number>;
  for (const m of USAGE_MEASURES) entry[m] = usageValue(firstCase(rule.measures[m], e), e);
  const sign = isNegated(e, rules) ? -rule.sign : rule.sign;
  const signed = (p: UsagePart): UsagePart => {
    if (sign === 1) return p;
    for (const m of USAGE_MEASURES) p[m] = sign * p[m] + 0;
    return p;
  };
  const source = rule.parts.find((s) => usageTest(sourceTest(s), e));
  if (source === undefined) return [signed({ kind, model: null, ...entry })];
  const parts: UsagePart[] = (metadataAt(e.metadata, source.array) as unknown[]).map((el, i) => {
    const x = (el !== null && typeof el === "object" ? el : {}) as Record<string, unknown>;
    const p = { kind, model: text(x[source.model]) } as UsagePart;
    if (source.own) {
      p.feature = source.feature === undefined ? null : text(x[source.feature]);
      p.spender = source.spender === undefined ? null : text(x[source.spender]);
    }
    for (const m of USAGE_MEASURES) {
      const f = source.fields[m];
      p[m] = f === false ? 0 : f === null ? (i === 0 ? entry[m] : 0) : count(x[f]);
    }
    return p;
  });
  // What the parts do not account for (a capture cut by the overdraft limit, the excess of a
  // window beyond its hold charged in an entry of its own): a part with no dimension.
  const rest = { kind, model: null } as UsagePart;
  if (source.own) {
    rest.feature = null;
    rest.spender = null;
  }
  let differs = false;
  for (const m of USAGE_MEASURES) {
    rest[m] = 0;
    if (!source.balanced.includes(m)) continue;
    rest[m] = parts.reduce((left, p) => left - p[m], entry[m]);
    if (rest[m] !== 0) differs = true;
  }
  if (differs) parts.push(rest);
  return parts.map(signed);
}

/** Whether `e` gives usage back (`rules.negated`: a reversal). */
export function isNegated(e: RuleEntry, rules: UsageRules = USAGE_RULES): boolean {
  return rules.negated !== null && rules.negated.every((t) => usageTest(t, e));
}

/** A metadata value as a usage group: text for a string, number or boolean, else null. */
export function metadataGroup(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return null;
}

// ---- Aggregation ----

/**
 * When an entry's money moved, in ms (docs/concepts.md, "Two times on every entry"): its
 * `occurredAt` (usage recorded late, an expiry settled late at its grant's `expiresAt`, a reversal
 * at the time of the charge it gives back), else its `createdAt`. Usage reports place an entry by
 * it; revenue books an entry by it (`bookingOf`, src/modules/revenue/rules.ts).
 */
export const placedAt = (e: Pick<JournalEntry, "createdAt" | "occurredAt">): number =>
  (e.occurredAt ?? e.createdAt).getTime();

/** The value of dimension `d` for a part of entry `e` (of account `account`). */
export function groupValue(
  d: UsageDimension,
  account: string,
  e: Pick<JournalEntry, "feature" | "spender" | "description" | "metadata">,
  p: UsagePart,
): string | null {
  switch (d) {
    case "account":
      return account;
    case "model":
      return p.model;
    case "feature":
      return p.feature !== undefined ? p.feature : (e.feature ?? null);
    case "spender":
      return p.spender !== undefined ? p.spender : (e.spender ?? null);
    case "reason":
      return e.description ?? null;
    default:
      return metadataGroup((e.metadata as Meta)?.[d.slice("metadata.".length)]);
  }
}

/** Sums `parts` into `buckets` keyed by window, kind and groups. */
export class UsageAccumulator {
  private readonly buckets = new Map<string, ReportBucket>();
  constructor(
    private readonly scan: UsageScan,
    private readonly rules: UsageRules = USAGE_RULES,
  ) {}

  /** Adds one journal entry of `account`, in the window of its `occurredAt`, else its `createdAt`. */
  add(account: string, e: JournalEntry): void {
    this.addAt(account, e, windowIndex(this.scan.boundaries, placedAt(e)), 1, null);
  }

  /**
   * Adds `sign` times the usage of journal entry `e` of `account` in window `window` (none when
   * negative), as catch-up of the close through `catchUp` (ms; null: ordinary usage) — how a report
   * moves usage recorded after a close out of its closed period (docs/usage.md, "Closed months").
   */
  addAt(account: string, e: JournalEntry, window: number, sign: 1 | -1, catchUp: number | null): void {
    if (this.scan.throughSeq !== undefined && e.seq > this.scan.throughSeq) return;
    if (window < 0) return;
    for (const p of usageParts(e, this.rules)) {
      if (!this.scan.kinds.includes(p.kind)) continue;
      const groups: Record<string, string | null> = {};
      for (const d of this.scan.groupBy) groups[d] = groupValue(d, account, e, p);
      const unit = e.unit ?? null;
      const key = bucketKey({ window, kind: p.kind, unit, groups, catchUp }, this.scan.groupBy);
      let b = this.buckets.get(key);
      if (b === undefined) {
        b = { window, kind: p.kind, unit, groups, ...NO_MEASURES, ...(catchUp === null ? {} : { catchUp }) };
        this.buckets.set(key, b);
      }
      for (const m of USAGE_MEASURES) b[m] += sign * p[m];
    }
  }

  /** Every bucket, in no order and uncut (the changes a close makes to a store's buckets: `closedBuckets`). */
  all(): ReportBucket[] {
    return [...this.buckets.values()];
  }

  /** The buckets, ordered and cut to `limit + 1` as a store answers. */
  result(): UsageBucket[] {
    return orderBuckets([...this.buckets.values()], this.scan).slice(0, this.scan.limit + 1);
  }
}

/** A bucket's identity: its window, kind, unit, groups (in `groupBy` order) and close (catch-up). */
function bucketKey(
  b: Pick<ReportBucket, "window" | "kind" | "unit" | "groups" | "catchUp">,
  groupBy: readonly UsageDimension[],
): string {
  let key = `${b.window}\u0000${b.kind}\u0000${b.unit ?? "\u0001"}\u0000${b.catchUp ?? ""}`;
  for (const d of groupBy) {
    const v = b.groups[d] ?? null;
    key += v === null ? "\u0000\u0001" : `\u0000${v}`;
  }
  return key;
}

/**
 * A store's buckets (`DbManager.usage`, every entry at its time, uncut) with `changes` added: the
 * usage a close moves, each entry recorded after it with a time in its closed period taken out of
 * its window (negated, ordinary) and put in the window of the close's `through` as catch-up
 * (docs/usage.md, "Closed months"). An ordinary bucket the changes leave at zero in every measure
 * is dropped: without the entries taken out, the store would not have answered it.
 */
export function closedBuckets(
  buckets: readonly UsageBucket[],
  changes: readonly ReportBucket[],
  scan: Pick<UsageScan, "groupBy">,
): ReportBucket[] {
  const out = new Map<string, ReportBucket>();
  for (const b of buckets) out.set(bucketKey(b, scan.groupBy), b);
  const touched = new Set<string>();
  for (const c of changes) {
    const key = bucketKey(c, scan.groupBy);
    const b = out.get(key);
    if (b === undefined) out.set(key, { ...c, groups: { ...c.groups } });
    else {
      const sum: ReportBucket = { ...b, shortfall: b.shortfall ?? 0 };
      for (const m of USAGE_MEASURES) sum[m] = (sum[m] ?? 0) + (c[m] ?? 0);
      out.set(key, sum);
    }
    if ((c.catchUp ?? null) === null) touched.add(key);
  }
  for (const key of touched) {
    const b = out.get(key)!;
    if (USAGE_MEASURES.every((m) => (b[m] ?? 0) === 0)) out.delete(key);
  }
  return [...out.values()];
}

const KIND_ORDER: Record<UsageKind, number> = { spend: 0, refund: 1, clawback: 2 };

/** Compares group values: null first, then by code units (as the stores' binary collations). */
function compareValue(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return a < b ? -1 : 1;
}

/**
 * The order of a report's rows: by window, kind, unit, then the groups' values in `groupBy` order
 * (null first, then by code units), then ordinary before catch-up (by close); with `orderBy: "credits"`, most credits first, then that order.
 */
export function orderBuckets<B extends ReportBucket>(buckets: B[], scan: Pick<UsageScan, "groupBy" | "orderBy">): B[] {
  return buckets.sort((a, b) => {
    if (scan.orderBy === "credits" && a.credits !== b.credits) return b.credits - a.credits;
    if (a.window !== b.window) return a.window - b.window;
    if (a.kind !== b.kind) return KIND_ORDER[a.kind] - KIND_ORDER[b.kind];
    if ((a.unit ?? null) !== (b.unit ?? null)) return compareValue(a.unit ?? null, b.unit ?? null);
    for (const d of scan.groupBy) {
      const c = compareValue(a.groups[d] ?? null, b.groups[d] ?? null);
      if (c !== 0) return c;
    }
    // A group's ordinary bucket, then its catch-up ones by their close.
    return (a.catchUp ?? Number.NEGATIVE_INFINITY) - (b.catchUp ?? Number.NEGATIVE_INFINITY) || 0;
  });
}

/** A store's buckets as the report's rows (windows as dates, groups as fields), cut to `limit`. */
export function usageRows(buckets: readonly ReportBucket[], scan: UsageScan): { rows: UsageRow[]; truncated: boolean } {
  const ordered = orderBuckets(buckets.slice(), scan);
  const rows = ordered.slice(0, scan.limit).map((b) => {
    const row: UsageRow = {
      start: new Date(scan.boundaries[b.window]!),
      end: new Date(scan.boundaries[b.window + 1]!),
      ...b.groups,
      kind: b.kind,
      ...(b.unit == null ? {} : { unit: b.unit }), // the default unit's rows name none (docs/units.md)
      credits: b.credits,
      requests: b.requests,
      inputTokens: b.inputTokens,
      outputTokens: b.outputTokens,
      cachedTokens: b.cachedTokens,
      shortfall: b.shortfall ?? 0,
      // Catch-up of a closed period only (docs/usage.md, "Closed months").
      ...(b.catchUp == null ? {} : { catchUpThrough: new Date(b.catchUp) }),
    };
    return row;
  });
  return { rows, truncated: ordered.length > scan.limit };
}

// ---- Audit of a daily rollup ----

const DAY = 86_400_000;
/** The longest late-usage window a manager may have, in days (`LateUsageWindowDays`). */
const LATE_DAYS_MAX = 366;

/** What the rollup audit needs of an account's first and last remaining journal entries. */
export type RollupEdge = Pick<JournalEntry, "seq" | "createdAt">;

/**
 * The UTC days whose rollup rows the audit compares with the journal, as [from, to) in ms at UTC
 * midnights: from the day of the first remaining entry (the day after it when entries before it
 * are archived: its day lost some of its entries; the longest late-usage window before it when
 * none is: usage recorded late may be placed there) to the end of the day of the last one.
 */
function auditedDays(first: RollupEdge, last: RollupEdge): { from: number; to: number; archived: boolean } {
  const archived = first.seq > 1;
  // A whole journal: from as far back as usage recorded late may be placed (docs/usage.md, "Late usage").
  const from = Math.floor(first.createdAt.getTime() / DAY) * DAY + (archived ? DAY : -LATE_DAYS_MAX * DAY);
  const to = Math.floor(last.createdAt.getTime() / DAY) * DAY + DAY;
  return { from, to, archived };
}

/**
 * The query of the journal's own report the rollup audit compares with (docs/usage.md, "The daily
 * rollup"): account `account`'s usage of every kind by UTC day over the audited days; null when
 * there is no day to compare (no entry, or only the first remaining entry's day after archival).
 */
export function rollupAuditScan(
  account: string,
  first: RollupEdge | undefined,
  last: RollupEdge | undefined,
): UsageScan | null {
  if (first === undefined || last === undefined) return null;
  const { from, to } = auditedDays(first, last);
  if (from >= to) return null;
  const boundaries: number[] = [];
  for (let b = from; b <= to; b += DAY) boundaries.push(b);
  return {
    account,
    from: new Date(from),
    to: new Date(to),
    interval: "day",
    timeZone: "UTC",
    groupBy: [],
    kinds: ["spend", "refund", "clawback"],
    orderBy: "start",
    limit: 1_000_000,
    boundaries,
    // The journal's own report, as of its last entry: never a rollup's.
    throughSeq: last.seq,
    fromJournal: true,
  };
}

const sums = (x: UsageSums | undefined): string =>
  x === undefined
    ? "none"
    : `credits ${x.credits}, requests ${x.requests}, tokens ${x.inputTokens}/${x.outputTokens}/${x.cachedTokens}${x.shortfall === 0 ? "" : `, shortfall ${x.shortfall}`}`;

const unitOf = (x: { unit?: string | null }): string => (x.unit == null ? "" : ` ${x.unit}`);
const sameSums = (a: UsageSums, b: UsageSums): boolean => USAGE_MEASURES.every((m) => a[m] === b[m]);

/**
 * The audit of an account's daily usage rollup (docs/usage.md, "The daily rollup"): its `rows`
 * compared with `buckets`, the journal's own report by UTC day and kind (what a store's `usage()`
 * answers for `rollupAuditScan(account, first, last)`), given its first and last remaining journal
 * entries. One problem per day, kind and unit (`unitOf`: none for the default one) where they
 * differ, a row the journal has not or a day it has that the rollup has not. Days emptied by
 * archival (before the first remaining entry, and its own day when entries before it are
 * archived) are not compared: the rollup keeps them. An account with no entry: every row is one.
 */
export function rollupProblems(
  rows: readonly UsageRollupRow[],
  buckets: readonly UsageBucket[],
  first: RollupEdge | undefined,
  last: RollupEdge | undefined,
): string[] {
  const problems: string[] = [];
  if (first === undefined || last === undefined) {
    for (const r of rows)
      problems.push(`usage rollup: ${r.day} ${r.kind}${unitOf(r)} has ${sums(r)}, the journal has no entry`);
    return problems;
  }
  const { from, archived } = auditedDays(first, last);
  const journal = new Map<string, UsageSums>();
  for (const b of buckets) {
    const day = new Date(from + b.window * DAY).toISOString().slice(0, 10);
    journal.set(`${day} ${b.kind}${unitOf(b)}`, { ...b, shortfall: b.shortfall ?? 0 });
  }
  const firstDay = new Date(from).toISOString().slice(0, 10);
  for (const r of rows) {
    if (archived && r.day < firstDay) continue; // archived days: the rollup keeps them
    const key = `${r.day} ${r.kind}${unitOf(r)}`;
    const j = journal.get(key);
    journal.delete(key);
    if (j === undefined || !sameSums(r, j))
      problems.push(`usage rollup: ${key} has ${sums(r)}, the journal ${sums(j)}`);
  }
  for (const [key, j] of journal) problems.push(`usage rollup: ${key} has none, the journal ${sums(j)}`);
  return problems;
}

// ---- Reversals ----

/**
 * The metadata of a reversal of `amount` credits of `charge` (docs/usage.md, "Corrections"), given
 * what earlier reversals of it gave back (`reversedBefore`) and the caller's own metadata (`extra`):
 * the charge's metadata less what describes the capture itself (its `usages`, `leaseWindow`,
 * `requested`, `shortfall`), so `metadata.<key>` groups net it where the charge counted — the
 * charge's keys win over `extra`'s — and `reversal`, the usage it takes out by part:
 *
 * - credits: the charge's parts (by feature, spender and model, as `usageParts` splits it) scaled
 *   to what the charge has given back after it, less before it, each rounded by largest remainder —
 *   so the reversals of a charge add up to each of its parts exactly once it is all given back;
 * - requests and tokens: none, but on the reversal that gives back the charge's last credit, which
 *   takes out all of them. A partial give-back is a price correction: the request was made and its
 *   tokens were used.
 */
export function reversalMetadata(
  charge: JournalEntry,
  amount: number,
  reversedBefore: number,
  extra?: Record<string, unknown> | null,
): NonNullable<JournalEntry["metadata"]> {
  const whole = usageParts(charge);
  const parts = whole.length > 0 ? whole : [{ kind: "spend", model: null, ...NO_MEASURES } as UsagePart];
  const total = charge.amount;
  const done = reversedBefore + amount;
  const last = done >= total;
  const before = scaleParts(parts, reversedBefore, total);
  const after = scaleParts(parts, done, total);
  const out: Record<string, unknown>[] = [];
  let requests = 0;
  parts.forEach((p, i) => {
    const credits = after[i]! - before[i]!;
    const part = {
      feature: p.feature !== undefined ? p.feature : (charge.feature ?? null),
      spender: p.spender !== undefined ? p.spender : (charge.spender ?? null),
      model: p.model,
      credits,
      requests: last ? p.requests : 0,
      inputTokens: last ? p.inputTokens : 0,
      outputTokens: last ? p.outputTokens : 0,
      cachedTokens: last ? p.cachedTokens : 0,
      // What was served and not paid stays so: a reversal gives back credits charged.
      shortfall: 0,
    };
    requests += part.requests;
    if (credits !== 0 || (last && USAGE_MEASURES.some((m) => part[m] !== 0))) out.push(part);
  });
  const kept: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(charge.metadata ?? {})) if (!CAPTURE_ONLY_KEYS.has(k)) kept[k] = v;
  // (JSON throughout: the charge's metadata, the caller's and numbers and texts.)
  return { ...(extra ?? {}), ...kept, reversal: { requests, parts: out } } as NonNullable<JournalEntry["metadata"]>;
}

/** Metadata keys of a capture that describe the capture itself (as `excessMetadata` of ./entry-meta.ts leaves out). */
const CAPTURE_ONLY_KEYS = new Set(["usages", "leaseWindow", "requested", "shortfall", "reversal"]);

/** Every measure at zero (spread it into a new bucket or part). */
export const NO_MEASURES: UsageSums = {
  credits: 0,
  requests: 0,
  inputTokens: 0,
  outputTokens: 0,
  cachedTokens: 0,
  shortfall: 0,
};

/**
 * `x` of `total` credits split over `parts` in proportion to their credits (whose sum is `total`),
 * by largest remainder (`largestRemainder`, as a reversal shares its credits among grants). `x =
 * total` gives each part its own credits.
 */
function scaleParts(parts: readonly UsagePart[], x: number, total: number): number[] {
  if (x <= 0 || total <= 0) return parts.map(() => 0);
  if (x >= total) return parts.map((p) => p.credits);
  return largestRemainder(
    parts.map((p) => p.credits),
    x,
    total,
  );
}
