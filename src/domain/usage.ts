/**
 * The rules of usage reports (docs/usage.md): which journal entries are usage and of what kind,
 * how an entry splits by model, and the calendar windows of a query in an IANA time zone. Pure
 * functions: no I/O. Every store aggregates by these rules natively; `aggregateUsage` is the
 * reference the memory store runs and the property tests compare the others with.
 */
import type { JournalEntry } from "../models/index.js";
import type { UsageDimension, UsageInterval, UsageKind, UsageRow } from "../models/usage.js";

/** A query after validation, with its windows' boundaries (what a store's `usage()` reads). */
export interface UsageScan {
  /** One account, or null: every account. */
  account: string | null;
  from: Date;
  to: Date;
  interval: UsageInterval | null;
  timeZone: string;
  groupBy: readonly UsageDimension[];
  kinds: readonly UsageKind[];
  orderBy: "start" | "credits";
  /** Rows wanted; a store answers at most `limit + 1` (one more says the report was cut). */
  limit: number;
  /**
   * The windows, as instants in ms: window i is [boundaries[i], boundaries[i + 1]); the first is
   * `from`, the last `to`, those between are the calendar boundaries of `interval` in `timeZone`.
   */
  boundaries: readonly number[];
}

/**
 * A row of a store's daily usage rollup (docs/usage.md, "The daily rollup"): one account's sums
 * of one UTC day (`YYYY-MM-DD`) and kind.
 */
export interface UsageRollupRow {
  day: string;
  kind: UsageKind;
  credits: number;
  requests: number;
  inputTokens: number;
  outputTokens: number;
  cachedTokens: number;
}

/** What a store's `usage()` answers per group: the window by its index in `boundaries`. */
export interface UsageBucket {
  window: number;
  kind: UsageKind;
  /** The dimension values, by dimension (only those grouped by). */
  groups: Record<string, string | null>;
  credits: number;
  requests: number;
  inputTokens: number;
  outputTokens: number;
  cachedTokens: number;
}

/** One part of an entry's usage: the entry, or one model's share of it. */
export interface UsagePart {
  kind: UsageKind;
  model: string | null;
  /** A lease window's part names its own feature and spender (undefined: the entry's). */
  feature?: string | null;
  spender?: string | null;
  credits: number;
  requests: number;
  inputTokens: number;
  outputTokens: number;
  cachedTokens: number;
}

type Meta = Record<string, unknown> | null | undefined;

const count = (v: unknown): number => (typeof v === "number" && Number.isFinite(v) ? v : 0);
const text = (v: unknown): string | null => (typeof v === "string" ? v : null);

/**
 * The kind of usage an entry is, or null when it is none: `spend` for a deduction and a captured
 * hold (`commit_reserved`: what was captured — a partial capture's returned credits are not in it);
 * `refund` / `clawback` for the deductions and voids that take a refunded payment's or a lost
 * dispute's credits back (metadata `paymentId` and `refundedAmount`, docs/promos-and-payments.md).
 * Additions, expiries, other voids, holds and their releases are not usage.
 */
export function usageKind(e: Pick<JournalEntry, "type" | "metadata" | "description">): UsageKind | null {
  if (e.type !== "deduct" && e.type !== "commit_reserved" && e.type !== "void") return null;
  const m = e.metadata;
  if (m != null && typeof m.paymentId === "string" && typeof m.refundedAmount === "number") {
    return e.description?.startsWith("Lost dispute") === true ? "clawback" : "refund";
  }
  return e.type === "void" ? null : "spend";
}

/**
 * Requests an entry stands for: a lease window's count, 1 for a deduction or a capture, 0 for the
 * excess of a capture charged after it (a deduction with the hold's id: the same request) and for
 * refunds and clawbacks.
 */
export function usageRequests(e: Pick<JournalEntry, "type" | "metadata" | "reservationId">, kind: UsageKind): number {
  if (kind !== "spend") return 0;
  if (e.type === "deduct") return e.reservationId == null ? 1 : 0;
  const w = (e.metadata as Meta)?.leaseWindow as Meta;
  return w != null && typeof w.requests === "number" ? w.requests : 1;
}

/**
 * An entry's usage split into parts (empty when it is not usage). A spend with recorded LLM usages
 * (`metadata.usages`, docs/llm-metering.md) splits by them: each usage's credits and tokens under
 * its model, the entry's requests with the first; credits the usages do not account for (the
 * entry's amount less theirs, when it differs) form a part with no model. A lease window's entry
 * with a breakdown (`metadata.leaseWindow.parts`, docs/usage.md) splits by its parts, and what
 * they do not account for (credits or requests) is a part with no dimension. So the parts of an
 * entry always add up to its amount and its requests.
 */
export function usageParts(
  e: Pick<JournalEntry, "type" | "amount" | "metadata" | "description" | "reservationId">,
): UsagePart[] {
  const kind = usageKind(e);
  if (kind === null) return [];
  const requests = usageRequests(e, kind);
  const whole = (): UsagePart => ({
    kind,
    model: null,
    credits: e.amount,
    requests,
    inputTokens: 0,
    outputTokens: 0,
    cachedTokens: 0,
  });
  if (kind !== "spend") return [whole()];
  const m = e.metadata as Meta;
  const w = m?.leaseWindow as Meta;
  if (w != null && Array.isArray(w.parts)) {
    const parts: UsagePart[] = (w.parts as unknown[]).map((p) => {
      const x = (p ?? {}) as Record<string, unknown>;
      return {
        kind,
        model: text(x.model),
        feature: text(x.feature),
        spender: text(x.spender),
        credits: count(x.credits),
        requests: count(x.requests),
        inputTokens: count(x.inputTokens),
        outputTokens: count(x.outputTokens),
        cachedTokens: count(x.cachedTokens),
      };
    });
    // What the parts do not account for (a capture cut by the overdraft limit, the excess of a
    // window beyond its hold charged in an entry of its own): a part with no dimension.
    let credits = e.amount;
    let rest = requests;
    for (const p of parts) {
      credits -= p.credits;
      rest -= p.requests;
    }
    if (credits !== 0 || rest !== 0) {
      parts.push({
        kind,
        model: null,
        feature: null,
        spender: null,
        credits,
        requests: rest,
        inputTokens: 0,
        outputTokens: 0,
        cachedTokens: 0,
      });
    }
    return parts;
  }
  const usages = m?.usages;
  if (!Array.isArray(usages) || usages.length === 0) return [whole()];
  const parts: UsagePart[] = [];
  let sum = 0;
  for (const u of usages as unknown[]) {
    const x = (u ?? {}) as Record<string, unknown>;
    const credits = count(x.amount);
    sum += credits;
    parts.push({
      kind,
      model: text(x.model),
      credits,
      requests: parts.length === 0 ? requests : 0,
      inputTokens: count(x.inputTokens),
      outputTokens: count(x.outputTokens),
      cachedTokens: count(x.cachedTokens),
    });
  }
  if (sum !== e.amount) {
    parts.push({
      kind,
      model: null,
      credits: e.amount - sum,
      requests: 0,
      inputTokens: 0,
      outputTokens: 0,
      cachedTokens: 0,
    });
  }
  return parts;
}

/** A metadata value as a usage group: text for a string, number or boolean, else null. */
export function metadataGroup(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return null;
}

// ---- Calendar windows in a time zone ----

const formats = new Map<string, Intl.DateTimeFormat>();
function format(tz: string): Intl.DateTimeFormat {
  let f = formats.get(tz);
  if (f === undefined) {
    f = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      hourCycle: "h23",
      year: "numeric",
      month: "numeric",
      day: "numeric",
      hour: "numeric",
      minute: "numeric",
      second: "numeric",
    });
    formats.set(tz, f);
  }
  return f;
}

/** Wall-clock fields of instant `ms` in zone `tz` (month 1–12). */
export function wallClock(
  ms: number,
  tz: string,
): { year: number; month: number; day: number; hour: number; minute: number; second: number } {
  const out = { year: 0, month: 0, day: 0, hour: 0, minute: 0, second: 0 };
  for (const p of format(tz).formatToParts(new Date(ms))) {
    if (p.type in out) out[p.type as keyof typeof out] = Number(p.value);
  }
  if (out.year <= 0) out.year = 1 - out.year; // (years before 1 are outside DateInput's range)
  return out;
}

/** The zone's offset from UTC at instant `ms`, in ms (wall clock minus UTC). */
function offsetAt(ms: number, tz: string): number {
  const w = wallClock(ms, tz);
  const wall = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
  return wall - (ms - (((ms % 1000) + 1000) % 1000));
}

/**
 * The first instant whose wall clock in `tz` is at or after midnight starting the given date
 * (month 1–12; day may overflow, Date.UTC normalizes it). When midnight does not exist (a DST gap
 * at midnight), the day starts when the gap ends.
 */
export function startOfDay(year: number, month: number, day: number, tz: string): number {
  const wall = Date.UTC(year, month - 1, day);
  // The offsets a day before and after: midnight is at `wall` minus one of them (a zone changes
  // its offset at most once around a date). Both fit when midnight happens twice: the first.
  const before = wall - offsetAt(wall - 86_400_000, tz);
  const after = wall - offsetAt(wall + 86_400_000, tz);
  const isMidnight = (t: number) => {
    const w = wallClock(t, tz);
    return Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second) === wall;
  };
  const fits = [before, after].filter(isMidnight);
  if (fits.length > 0) return Math.min(...fits);
  // Midnight falls in a gap: the date begins when the clocks jump, at midnight by the old offset.
  return before;
}

/** The start of the window of `interval` in `tz` holding instant `ms`. */
export function windowStart(ms: number, interval: UsageInterval, tz: string): number {
  const w = wallClock(ms, tz);
  switch (interval) {
    case "hour":
      // The hour on the wall clock: an hour repeated when clocks go back is two windows.
      return ms - (w.minute * 60 + w.second) * 1000 - (((ms % 1000) + 1000) % 1000);
    case "day":
      return startOfDay(w.year, w.month, w.day, tz);
    case "week": {
      // ISO weeks: Monday.
      const dow = new Date(Date.UTC(w.year, w.month - 1, w.day)).getUTCDay();
      return startOfDay(w.year, w.month, w.day - ((dow + 6) % 7), tz);
    }
    case "month":
      return startOfDay(w.year, w.month, 1, tz);
  }
}

/** The start of the window after the one that starts at `start`. */
export function nextWindowStart(start: number, interval: UsageInterval, tz: string): number {
  if (interval === "hour") {
    // Past the hour, then back to the wall clock's hour (zones with half-hour shifts).
    const next = windowStart(start + 3_600_000, "hour", tz);
    return next > start ? next : start + 3_600_000;
  }
  const w = wallClock(start, tz);
  // From a start that is midnight (or a gap's end on that date): the next date's start.
  if (interval === "day") return startOfDay(w.year, w.month, w.day + 1, tz);
  if (interval === "week") return startOfDay(w.year, w.month, w.day + 7, tz);
  return startOfDay(w.year, w.month + 1, 1, tz);
}

/**
 * The boundaries of a query's windows: `from`, each calendar boundary of `interval` in `tz`
 * strictly between `from` and `to`, and `to`; null when there would be more than `max` windows.
 */
export function usageBoundaries(
  from: number,
  to: number,
  interval: UsageInterval | null,
  tz: string,
  max: number,
): number[] | null {
  const out = [from];
  if (interval !== null) {
    let b = nextWindowStart(windowStart(from, interval, tz), interval, tz);
    while (b < to) {
      if (out.length >= max) return null;
      out.push(b);
      b = nextWindowStart(b, interval, tz);
    }
  }
  out.push(to);
  return out;
}

/** The index of the window holding `ms` (a binary search of the boundaries), or -1 outside them. */
export function windowIndex(boundaries: readonly number[], ms: number): number {
  if (ms < boundaries[0]! || ms >= boundaries[boundaries.length - 1]!) return -1;
  let lo = 0;
  let hi = boundaries.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (boundaries[mid]! <= ms) lo = mid;
    else hi = mid;
  }
  return lo;
}

// ---- Aggregation ----

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
  private readonly buckets = new Map<string, UsageBucket>();
  constructor(private readonly scan: UsageScan) {}

  /** Adds one journal entry of `account`. */
  add(account: string, e: JournalEntry): void {
    const window = windowIndex(this.scan.boundaries, e.createdAt.getTime());
    if (window < 0) return;
    for (const p of usageParts(e)) {
      if (!this.scan.kinds.includes(p.kind)) continue;
      const groups: Record<string, string | null> = {};
      let key = `${window}\u0000${p.kind}`;
      for (const d of this.scan.groupBy) {
        const v = groupValue(d, account, e, p);
        groups[d] = v;
        key += v === null ? "\u0000\u0001" : `\u0000${v}`;
      }
      let b = this.buckets.get(key);
      if (b === undefined) {
        b = { window, kind: p.kind, groups, credits: 0, requests: 0, inputTokens: 0, outputTokens: 0, cachedTokens: 0 };
        this.buckets.set(key, b);
      }
      b.credits += p.credits;
      b.requests += p.requests;
      b.inputTokens += p.inputTokens;
      b.outputTokens += p.outputTokens;
      b.cachedTokens += p.cachedTokens;
    }
  }

  /** The buckets, ordered and cut to `limit + 1` as a store answers. */
  result(): UsageBucket[] {
    return orderBuckets([...this.buckets.values()], this.scan).slice(0, this.scan.limit + 1);
  }
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
 * The order of a report's rows: by window, kind, then the groups' values in `groupBy` order (null
 * first, then by code units); with `orderBy: "credits"`, most credits first, then that order.
 */
export function orderBuckets(buckets: UsageBucket[], scan: Pick<UsageScan, "groupBy" | "orderBy">): UsageBucket[] {
  return buckets.sort((a, b) => {
    if (scan.orderBy === "credits" && a.credits !== b.credits) return b.credits - a.credits;
    if (a.window !== b.window) return a.window - b.window;
    if (a.kind !== b.kind) return KIND_ORDER[a.kind] - KIND_ORDER[b.kind];
    for (const d of scan.groupBy) {
      const c = compareValue(a.groups[d] ?? null, b.groups[d] ?? null);
      if (c !== 0) return c;
    }
    return 0;
  });
}

/** A store's buckets as the report's rows (windows as dates, groups as fields), cut to `limit`. */
export function usageRows(buckets: readonly UsageBucket[], scan: UsageScan): { rows: UsageRow[]; truncated: boolean } {
  const ordered = orderBuckets(buckets.slice(), scan);
  const rows = ordered.slice(0, scan.limit).map((b) => {
    const row: UsageRow = {
      start: new Date(scan.boundaries[b.window]!),
      end: new Date(scan.boundaries[b.window + 1]!),
      ...b.groups,
      kind: b.kind,
      credits: b.credits,
      requests: b.requests,
      inputTokens: b.inputTokens,
      outputTokens: b.outputTokens,
      cachedTokens: b.cachedTokens,
    };
    return row;
  });
  return { rows, truncated: ordered.length > scan.limit };
}

// ---- Audit of a daily rollup ----

const DAY = 86_400_000;

/** What the rollup audit needs of an account's first and last remaining journal entries. */
export type RollupEdge = Pick<JournalEntry, "seq" | "createdAt">;

/**
 * The UTC days whose rollup rows the audit compares with the journal, as [from, to) in ms at UTC
 * midnights: from the day of the first remaining entry (the day after it when entries before it
 * are archived: its day lost some of its entries) to the end of the day of the last one.
 */
function auditedDays(first: RollupEdge, last: RollupEdge): { from: number; to: number; archived: boolean } {
  const archived = first.seq > 1;
  const from = Math.floor(first.createdAt.getTime() / DAY) * DAY + (archived ? DAY : 0);
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
  };
}

type UsageSums = Pick<UsageRollupRow, "credits" | "requests" | "inputTokens" | "outputTokens" | "cachedTokens">;

const sums = (x: UsageSums | undefined): string =>
  x === undefined
    ? "none"
    : `credits ${x.credits}, requests ${x.requests}, tokens ${x.inputTokens}/${x.outputTokens}/${x.cachedTokens}`;

const sameSums = (a: UsageSums, b: UsageSums): boolean =>
  a.credits === b.credits &&
  a.requests === b.requests &&
  a.inputTokens === b.inputTokens &&
  a.outputTokens === b.outputTokens &&
  a.cachedTokens === b.cachedTokens;

/**
 * The audit of an account's daily usage rollup (docs/usage.md, "The daily rollup"): its `rows`
 * compared with `buckets`, the journal's own report by UTC day and kind (what a store's `usage()`
 * answers for `rollupAuditScan(account, first, last)`), given the account's first and last
 * remaining journal entries. One problem per day and kind where they differ, a row the journal
 * has not or a day the journal has that the rollup has not. Days emptied by archival (before the
 * first remaining entry, and its own day when entries before it are archived) are not compared:
 * the rollup keeps them. An account with no entry: every row is a problem.
 */
export function rollupProblems(
  rows: readonly UsageRollupRow[],
  buckets: readonly UsageBucket[],
  first: RollupEdge | undefined,
  last: RollupEdge | undefined,
): string[] {
  const problems: string[] = [];
  if (first === undefined || last === undefined) {
    for (const r of rows) problems.push(`usage rollup: ${r.day} ${r.kind} has ${sums(r)}, the journal has no entry`);
    return problems;
  }
  const { from, archived } = auditedDays(first, last);
  const journal = new Map<string, UsageSums>();
  for (const b of buckets) {
    const day = new Date(from + b.window * DAY).toISOString().slice(0, 10);
    journal.set(`${day} ${b.kind}`, b);
  }
  const firstDay = new Date(from).toISOString().slice(0, 10);
  for (const r of rows) {
    if (archived && r.day < firstDay) continue; // archived days: the rollup keeps them
    const key = `${r.day} ${r.kind}`;
    const j = journal.get(key);
    journal.delete(key);
    if (j === undefined || !sameSums(r, j))
      problems.push(`usage rollup: ${key} has ${sums(r)}, the journal ${sums(j)}`);
  }
  for (const [key, j] of journal) problems.push(`usage rollup: ${key} has none, the journal ${sums(j)}`);
  return problems;
}
