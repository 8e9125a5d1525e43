import { USAGE_MEASURES, usageKindsOf } from "../core/domain/usage.js";
import { sqlLit } from "./ident.js";
import type { NamingOptions } from "./sql.js";
import { rollupColumn } from "./usage-sql.js";

/**
 * SQLite's daily usage rollup (docs/usage.md, "The daily rollup"), the same figures as
 * PostgreSQL's (src/schema/rollup.ts) by account, UTC day and usage kind, and by the parts'
 * feature, spender and model too, so that one account's report by those answers from it:
 * `usage_daily`, one row per account, day, kind and those three (`dims`, their JSON array, keys the
 * row: SQLite's keys tell no NULL apart), and `usage_state`, per account the journal's last seq the
 * rows hold (`through_seq`). Kept by the unit of work that writes the entries, in its transaction
 * (src/db/sqlite/usage-rollup.ts), by the rules of `src/core/domain/usage.ts` (`usageParts`); an
 * account whose cursor is behind (a store upgraded from a version without the rollup) is caught up
 * by the first report, audit or recount that reads it.
 *
 * Part of schema version 2: a store at version 1 has no rollup and reads the journal.
 */
export const SQLITE_ROLLUP_VERSION = 2;

export interface SqliteRollupNames {
  table: string;
  state: string;
  /** The rollup's index by day (reports across accounts). */
  day: string;
}

const quote = (name: string) => `"${name.replace(/"/g, '""')}"`;

export function sqliteRollupNames(naming: NamingOptions): SqliteRollupNames {
  const prefix = naming.prefix ?? "";
  return {
    table: quote(`${prefix}usage_daily`),
    state: quote(`${prefix}usage_state`),
    day: quote(`${prefix}usage_daily_day`),
  };
}

/** The statements that create the rollup's tables (idempotent). */
export function sqliteRollupDdl(naming: NamingOptions): string[] {
  const r = sqliteRollupNames(naming);
  return [
    `CREATE TABLE IF NOT EXISTS ${r.table} (
  "user_id" TEXT NOT NULL,
  "day" TEXT NOT NULL,
  "kind" TEXT NOT NULL CHECK ("kind" IN (${usageKindsOf().map(sqlLit).join(", ")})),
  "dims" TEXT NOT NULL,
  "feature" TEXT,
  "spender" TEXT,
  "model" TEXT,
${USAGE_MEASURES.map((m) => `  "${rollupColumn(m)}" ${m === "credits" || m === "shortfall" ? "INTEGER" : "NUMERIC"} NOT NULL,`).join("\n")}
  PRIMARY KEY ("user_id", "day", "kind", "dims")
) WITHOUT ROWID;`,
    // Reports across accounts read a range of days.
    `CREATE INDEX IF NOT EXISTS ${r.day} ON ${r.table} ("day");`,
    `CREATE TABLE IF NOT EXISTS ${r.state} (\n  "user_id" TEXT PRIMARY KEY,\n  "through_seq" INTEGER NOT NULL\n) WITHOUT ROWID;`,
  ];
}
