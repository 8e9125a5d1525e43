import * as z from "zod/mini";
import type { TableKey } from "./tables.js";

/**
 * PostgreSQL declarative partitioning of the append-only tables by `created_at`
 * (docs/running-for-years.md, "Partitioning on PostgreSQL"). Ranges are whole UTC days, ISO weeks
 * (Monday to Monday, UTC) or calendar months (UTC).
 * @public
 */
export const PartitionInterval = z.enum(["day", "week", "month"]);
/**
 * PostgreSQL declarative partitioning of the append-only tables by `created_at`
 * (docs/running-for-years.md, "Partitioning on PostgreSQL"). Ranges are whole UTC days, ISO weeks
 * (Monday to Monday, UTC) or calendar months (UTC).
 * @public
 */
export type PartitionInterval = z.infer<typeof PartitionInterval>;

/** `PostgresDbManager({ partitions })` and `generateSql({ partitioned })`. @public */
export const PartitionOptions = z.strictObject({
  interval: PartitionInterval,
  /** Partitions made ahead of the current one (default 2): inserts never reach the DEFAULT one. */
  ahead: z.optional(z.number().check(z.int(), z.minimum(0), z.maximum(366))),
});
/** `PostgresDbManager({ partitions })` and `generateSql({ partitioned })`. @public */
export type PartitionOptions = z.input<typeof PartitionOptions>;

/**
 * The tables partitioned by time: the journal and the audit-ledger events, both append-only. The
 * outbox (`notifications`) is not: its dedupe key must stay unique across all its rows (a unique
 * index of a partitioned table must contain the partition key), and settled rows already leave
 * it through `purgeNotifications`.
 */
export const PARTITIONED_TABLES: readonly TableKey[] = ["journal", "ledger"];

/** The model field tables are partitioned by. */
export const PARTITION_FIELD = "createdAt";

/** Default of `PartitionOptions.ahead`. */
export const DEFAULT_AHEAD = 2;

/** Start (inclusive) of the range holding `at`. */
export function rangeStart(interval: PartitionInterval, at: Date): Date {
  const y = at.getUTCFullYear();
  const m = at.getUTCMonth();
  const d = at.getUTCDate();
  switch (interval) {
    case "day":
      return new Date(Date.UTC(y, m, d));
    case "week": {
      const day = (at.getUTCDay() + 6) % 7; // Monday 0 … Sunday 6
      return new Date(Date.UTC(y, m, d - day));
    }
    case "month":
      return new Date(Date.UTC(y, m, 1));
  }
}

/** Start of the range `n` ranges after the one starting at `start`. */
export function rangeAfter(interval: PartitionInterval, start: Date, n = 1): Date {
  const y = start.getUTCFullYear();
  const m = start.getUTCMonth();
  const d = start.getUTCDate();
  switch (interval) {
    case "day":
      return new Date(Date.UTC(y, m, d + n));
    case "week":
      return new Date(Date.UTC(y, m, d + 7 * n));
    case "month":
      return new Date(Date.UTC(y, m + n, 1));
  }
}

/** The ranges `[from, to)` of the current interval at `now` and the `ahead` after it. */
export function rangesAround(interval: PartitionInterval, now: Date, ahead: number): { from: Date; to: Date }[] {
  const out: { from: Date; to: Date }[] = [];
  let from = rangeStart(interval, now);
  for (let i = 0; i <= ahead; i++) {
    const to = rangeAfter(interval, from);
    out.push({ from, to });
    from = to;
  }
  return out;
}

/** `<table>_p20300101`: the partition of the range starting at `from` (UTC date). */
export function partitionName(table: string, from: Date): string {
  return `${table}_p${from.toISOString().slice(0, 10).replace(/-/g, "")}`;
}

/** `<table>_default`: rows outside every range (an insert never fails for want of a partition). */
export function defaultPartitionName(table: string): string {
  return `${table}_default`;
}

/** A `timestamptz` literal of an instant, in UTC whatever the session's settings. */
export function timestampLiteral(at: Date): string {
  return `'${at.toISOString()}'::timestamptz`;
}
