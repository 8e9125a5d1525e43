import { pgIdent as q, pgQualified } from "../../schema/ident.js";
import type { NamingOptions } from "../../schema/sql.js";

/**
 * The revenue summary of PostgreSQL (docs/revenue.md, "How it is computed"): tables a report
 * fills from the journal when it reads (no trigger, nothing on the journal's write path).
 *
 * - `revenue_state`: per account, the journal's last seq in the summary and the roll-forward's
 *   state after it (JSON text).
 * - `revenue_days`: per account, UTC day (the day each entry is booked at), currency, source and plan (`grp`: the three as JSON
 *   text, the key; the same values in their columns to group by), the figures. `catch_up`: on the
 *   rows of catch-up figures, the `through` (ms) of their close (docs/revenue.md, "Closing a month"),
 *   appended to `grp`; null on the others.
 * - `revenue_daily`: the same by feature and spender too (`grp`: the five and the close), for reports grouped by them.
 * - `revenue_deferred`: per account, currency, source and plan, deferred after the entries in the summary.
 */
export interface RevenueNames {
  state: string;
  daily: string;
  split: string;
  deferred: string;
  /** `revenue_days`' and `revenue_daily`'s names without the schema (for their indexes). */
  dailyName: string;
  splitName: string;
}

export function revenueNames(naming: NamingOptions): RevenueNames {
  const prefix = naming.prefix ?? "";
  const qualify = (n: string) => pgQualified(naming.schema, n);
  return {
    state: qualify(`${prefix}revenue_state`),
    daily: qualify(`${prefix}revenue_days`),
    split: qualify(`${prefix}revenue_daily`),
    deferred: qualify(`${prefix}revenue_deferred`),
    dailyName: `${prefix}revenue_days`,
    splitName: `${prefix}revenue_daily`,
  };
}

/** `CREATE … IF NOT EXISTS` of the summary's tables and index (idempotent). */
export function revenueDdl(naming: NamingOptions): string[] {
  const n = revenueNames(naming);
  const money = "BIGINT NOT NULL DEFAULT 0";
  return [
    `CREATE TABLE IF NOT EXISTS ${n.state} (\n  "user_id" TEXT PRIMARY KEY,\n  "through_seq" BIGINT NOT NULL,\n  "state" TEXT\n);`,
    `CREATE TABLE IF NOT EXISTS ${n.daily} (\n  "user_id" TEXT NOT NULL,\n  "day" DATE NOT NULL,\n  "grp" TEXT NOT NULL,\n  "currency" TEXT,\n  "source" TEXT,\n  "plan" TEXT,\n  "catch_up" BIGINT,\n  "paid" ${money},\n  "recognized" ${money},\n  "breakage" ${money},\n  "refunds" ${money},\n  "unbilled" ${money},\n  PRIMARY KEY ("user_id", "day", "grp")\n);`,
    `CREATE TABLE IF NOT EXISTS ${n.split} (\n  "user_id" TEXT NOT NULL,\n  "day" DATE NOT NULL,\n  "grp" TEXT NOT NULL,\n  "currency" TEXT,\n  "source" TEXT,\n  "plan" TEXT,\n  "feature" TEXT,\n  "spender" TEXT,\n  "catch_up" BIGINT,\n  "paid" ${money},\n  "recognized" ${money},\n  "breakage" ${money},\n  "refunds" ${money},\n  "unbilled" ${money},\n  PRIMARY KEY ("user_id", "day", "grp")\n);`,
    // Catch-up rows (docs/revenue.md, "Closing a month"): a summary made before them gets the column.
    `ALTER TABLE ${n.daily} ADD COLUMN IF NOT EXISTS "catch_up" BIGINT;`,
    `ALTER TABLE ${n.split} ADD COLUMN IF NOT EXISTS "catch_up" BIGINT;`,
    // The whole book's reports read the days from a window's start on.
    `CREATE INDEX IF NOT EXISTS ${q(`${n.splitName}_day`)} ON ${n.split} ("day");`,
    `CREATE INDEX IF NOT EXISTS ${q(`${n.dailyName}_day`)} ON ${n.daily} ("day");`,
    `CREATE TABLE IF NOT EXISTS ${n.deferred} (\n  "user_id" TEXT NOT NULL,\n  "grp" TEXT NOT NULL,\n  "currency" TEXT NOT NULL,\n  "source" TEXT,\n  "plan" TEXT,\n  "deferred" ${money},\n  PRIMARY KEY ("user_id", "grp")\n);`,
  ];
}

/**
 * Empties the summary where it exists, so that the next report fills it again from the journal:
 * the upgrade to schema version 2, whose journal records the payment an entry credits or takes back
 * from (docs/revenue.md, "Payments"), where the summary's states of version 1 read the metadata,
 * and whose summary books each entry on the day its money moved (version 1's on the day it was
 * written, with the columns that marked an account whose days went backwards, dropped here).
 */
export function revenueResetSql(naming: NamingOptions): string {
  const n = revenueNames(naming);
  const lit = (x: string) => `'${x.replace(/'/g, "''")}'`;
  return (
    `DO $cm$ BEGIN IF to_regclass(${lit(n.state)}) IS NOT NULL THEN ` +
    `TRUNCATE ${n.state}, ${n.daily}, ${n.split}, ${n.deferred}; ` +
    `ALTER TABLE ${n.state} DROP COLUMN IF EXISTS "max_day", DROP COLUMN IF EXISTS "disordered"; END IF; END $cm$;`
  );
}
