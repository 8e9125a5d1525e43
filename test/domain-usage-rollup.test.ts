// The audit rule of the daily usage rollup on its own (src/core/domain/usage.ts, docs/usage.md, "The
// daily rollup"): which UTC days are compared, and the problems a rollup that differs from the
// journal's own report gives. Pure: rows and buckets are given, no store. Dates are worked out
// from the current year (no date that will pass).
import { describe, expect, it } from "vitest";
import {
  rollupAuditScan,
  rollupProblems,
  type RollupEdge,
  type UsageBucket,
  type UsageRollupRow,
} from "../src/core/domain/usage.js";
import { windowIndex } from "../src/core/domain/windows.js";
import type { UsageKind } from "../src/core/models/usage.js";

const DAY = 86_400_000;
/** How far before a whole journal's first entry the audit looks: the longest late-usage window. */
const LATE = 366 * DAY;
const D0 = Date.UTC(new Date().getUTCFullYear(), 0, 10);
const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const edge = (seq: number, ms: number): RollupEdge => ({ seq, createdAt: new Date(ms) });

const row = (ms: number, kind: UsageKind, credits: number, requests = 1, inputTokens = 0): UsageRollupRow => ({
  day: day(ms),
  kind,
  credits,
  requests,
  inputTokens,
  outputTokens: 0,
  cachedTokens: 0,
  shortfall: 0,
});

/** The journal's bucket for day `ms` of the scan that starts at `from`. */
const bucket = (from: number, ms: number, kind: UsageKind, credits: number, requests = 1, inputTokens = 0) =>
  ({
    window: Math.floor((ms - from) / DAY),
    kind,
    groups: {},
    credits,
    requests,
    inputTokens,
    outputTokens: 0,
    cachedTokens: 0,
  }) satisfies UsageBucket;

describe("the days the rollup audit compares", () => {
  it("from the first entry's UTC day (less the longest late-usage window) to the end of the last one's, by day, every kind, one account", () => {
    const scan = rollupAuditScan("u1", edge(1, D0 + 5_000), edge(9, D0 + 2 * DAY + 7_000));
    expect(scan).toMatchObject({
      account: "u1",
      from: new Date(D0 - LATE),
      to: new Date(D0 + 3 * DAY),
      interval: "day",
      timeZone: "UTC",
      groupBy: [],
      kinds: ["spend", "refund", "clawback"],
    });
    expect(scan?.boundaries.slice(-4)).toEqual([D0, D0 + DAY, D0 + 2 * DAY, D0 + 3 * DAY]);
    expect(scan?.boundaries).toHaveLength(366 + 4);
  });

  it("at the UTC edge: an entry at midnight is in the day it starts, one a millisecond before in the day before", () => {
    const scan = rollupAuditScan("u1", edge(1, D0 - 1), edge(4, D0 + DAY))!;
    expect(scan.from).toEqual(new Date(D0 - DAY - LATE));
    expect(scan.to).toEqual(new Date(D0 + 2 * DAY));
    expect(windowIndex(scan.boundaries, D0 - 1)).toBe(366);
    expect(windowIndex(scan.boundaries, D0 + DAY)).toBe(368);
    // The rows of both edge days are compared with the journal's.
    const problems = rollupProblems(
      [row(D0 - 1, "spend", 5), row(D0 + DAY, "spend", 6)],
      [bucket(D0 - DAY - LATE, D0 - 1, "spend", 5), bucket(D0 - DAY - LATE, D0 + DAY, "spend", 7)],
      edge(1, D0 - 1),
      edge(4, D0 + DAY),
    );
    expect(problems).toEqual([
      `usage rollup: ${day(D0 + DAY)} spend has credits 6, requests 1, tokens 0/0/0, the journal credits 7, requests 1, tokens 0/0/0`,
    ]);
  });

  it("after archival the first remaining entry's day is not compared (entries before it are gone), nor any before", () => {
    // The first remaining entry is a millisecond before midnight: the next day is the first compared.
    const scan = rollupAuditScan("u1", edge(40, D0 + DAY - 1), edge(45, D0 + 2 * DAY));
    expect(scan?.from).toEqual(new Date(D0 + DAY));
    expect(scan?.boundaries).toEqual([D0 + DAY, D0 + 2 * DAY, D0 + 3 * DAY]);
    // Entries of one day only, after archival: nothing to ask the journal.
    expect(rollupAuditScan("u1", edge(40, D0 + 3_000), edge(41, D0 + 9_000))).toBeNull();
  });

  it("no entry: nothing to ask the journal", () => {
    expect(rollupAuditScan("u1", undefined, undefined)).toBeNull();
  });
});

describe("rollupProblems", () => {
  const first = edge(1, D0 + 1_000);
  const last = edge(12, D0 + 2 * DAY + 1_000);
  const journal = [
    bucket(D0 - LATE, D0, "spend", 7, 1),
    bucket(D0 - LATE, D0 + DAY, "spend", 42, 2, 9),
    bucket(D0 - LATE, D0 + DAY, "clawback", 3, 0),
    bucket(D0 - LATE, D0 + 2 * DAY, "refund", 5, 0),
  ];
  const rollup = [
    row(D0, "spend", 7, 1),
    row(D0 + DAY, "spend", 42, 2, 9),
    row(D0 + DAY, "clawback", 3, 0),
    row(D0 + 2 * DAY, "refund", 5, 0),
  ];

  it("a rollup that matches the journal: no problem", () => {
    expect(rollupProblems(rollup, journal, first, last)).toEqual([]);
  });

  it("a tampered row: its day and kind, with both sums", () => {
    const tampered = rollup.map((r) => (r.kind === "spend" && r.day === day(D0 + DAY) ? { ...r, inputTokens: 10 } : r));
    expect(rollupProblems(tampered, journal, first, last)).toEqual([
      `usage rollup: ${day(D0 + DAY)} spend has credits 42, requests 2, tokens 10/0/0, the journal credits 42, requests 2, tokens 9/0/0`,
    ]);
    const recounted = rollup.map((r) => (r.kind === "refund" ? { ...r, requests: 1 } : r));
    expect(rollupProblems(recounted, journal, first, last)).toEqual([
      `usage rollup: ${day(D0 + 2 * DAY)} refund has credits 5, requests 1, tokens 0/0/0, the journal credits 5, requests 0, tokens 0/0/0`,
    ]);
  });

  it("a missing row: the journal's day and kind the rollup has not", () => {
    const missing = rollup.filter((r) => r.kind !== "clawback");
    expect(rollupProblems(missing, journal, first, last)).toEqual([
      `usage rollup: ${day(D0 + DAY)} clawback has none, the journal credits 3, requests 0, tokens 0/0/0`,
    ]);
  });

  it("an extra row: a day and kind the journal has not (another kind of the same day, a day with no usage)", () => {
    const extra = [...rollup, row(D0 + DAY, "refund", 1, 0), row(D0 + 2 * DAY, "spend", 4)];
    expect(rollupProblems(extra, journal, first, last)).toEqual([
      `usage rollup: ${day(D0 + DAY)} refund has credits 1, requests 0, tokens 0/0/0, the journal none`,
      `usage rollup: ${day(D0 + 2 * DAY)} spend has credits 4, requests 1, tokens 0/0/0, the journal none`,
    ]);
  });

  it("usage recorded late before the first entry's day (nothing archived) is compared on its day", () => {
    const late = [...journal, bucket(D0 - LATE, D0 - 20 * DAY, "spend", 11)];
    expect(rollupProblems([...rollup, row(D0 - 20 * DAY, "spend", 11)], late, first, last)).toEqual([]);
    expect(rollupProblems(rollup, late, first, last)).toEqual([
      `usage rollup: ${day(D0 - 20 * DAY)} spend has none, the journal credits 11, requests 1, tokens 0/0/0`,
    ]);
  });

  it("the same sums on another day are a problem on both days", () => {
    const moved = rollup.map((r) => (r.kind === "refund" ? { ...r, day: day(D0) } : r));
    expect(rollupProblems(moved, journal, first, last)).toEqual([
      `usage rollup: ${day(D0)} refund has credits 5, requests 0, tokens 0/0/0, the journal none`,
      `usage rollup: ${day(D0 + 2 * DAY)} refund has none, the journal credits 5, requests 0, tokens 0/0/0`,
    ]);
  });

  it("archived days are skipped: the rollup keeps rows the journal no longer has", () => {
    // Entries 1 to 19 archived; the first remaining one is on D0 + DAY: that day and those before
    // are not compared, the next ones are (the journal's buckets start at D0 + 2 days).
    const from = D0 + 2 * DAY;
    const rows = [
      row(D0 - 5 * DAY, "spend", 70),
      row(D0 + DAY, "spend", 99),
      row(from, "refund", 5, 0),
      row(from + DAY, "spend", 8),
    ];
    const buckets = [bucket(from, from, "refund", 5, 0), bucket(from, from + DAY, "spend", 9)];
    expect(rollupProblems(rows, buckets, edge(20, D0 + DAY + 1_000), edge(30, from + DAY + 1_000))).toEqual([
      `usage rollup: ${day(from + DAY)} spend has credits 8, requests 1, tokens 0/0/0, the journal credits 9, requests 1, tokens 0/0/0`,
    ]);
    // Without archival (the same entries from seq 1) those days are compared: rows the journal has not.
    expect(
      rollupProblems(
        rows,
        buckets.map((b) => ({ ...b, window: b.window + 1 + 366 })),
        edge(1, D0 + DAY + 1_000),
        edge(30, from + DAY + 1_000),
      ),
    ).toEqual([
      `usage rollup: ${day(D0 - 5 * DAY)} spend has credits 70, requests 1, tokens 0/0/0, the journal none`,
      `usage rollup: ${day(D0 + DAY)} spend has credits 99, requests 1, tokens 0/0/0, the journal none`,
      `usage rollup: ${day(from + DAY)} spend has credits 8, requests 1, tokens 0/0/0, the journal credits 9, requests 1, tokens 0/0/0`,
    ]);
  });

  it("an account with no journal entry: every row is a problem", () => {
    expect(rollupProblems([row(D0, "spend", 7)], [], undefined, undefined)).toEqual([
      `usage rollup: ${day(D0)} spend has credits 7, requests 1, tokens 0/0/0, the journal has no entry`,
    ]);
    expect(rollupProblems([], [], undefined, undefined)).toEqual([]);
  });
});
