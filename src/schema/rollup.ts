import { USAGE_MEASURES, USAGE_RULES, usageKindsOf, type UsageMeasure, type UsageRules } from "../core/domain/usage.js";
import { pgIdent as q, pgQualified, sqlLit } from "./ident.js";
import type { NamingOptions } from "./sql.js";
import {
  PG_USAGE,
  rollupColumn,
  sqlEntryMeasure,
  sqlEntryTotal,
  sqlFactor,
  sqlKind,
  sqlPlaced,
  sqlSourceArray,
  sqlTypes,
  usageSources,
} from "./usage-sql.js";

/**
 * The usage rollup of PostgreSQL (docs/usage.md, "The daily rollup"): `usage_daily`, one row per
 * account, UTC day, usage kind and unit (`unit`: '' for the default one, docs/units.md) with the sums a usage report adds up (credits, requests, tokens),
 * and `usage_state`, per account the journal's last seq those rows hold (`through_seq`). Nothing on
 * the journal's write path: a report that
 * reads the rollup, the audit and the archival first add each account's entries above its
 * `through_seq` (`rollupCatchUpSql`), with a compare-and-set on it, so that every entry is counted
 * once. The sums are generated from the rules of `src/core/domain/usage.ts` (`USAGE_RULES`, by
 * ./usage-sql.ts): an entry's total of each measure. The audit compares the rollup with the
 * journal's own report (`CreditService.audit`).
 *
 * Archival (checkpoints, detached partitions) catches the rollup up first and leaves the days it
 * empties in the rollup, so reports across accounts keep them.
 */
export interface RollupNames {
  /** The rollup table, qualified. */
  table: string;
  /** Its name without the schema (index names are made from it). */
  name: string;
  /** The table of each account's `through_seq`, qualified. */
  state: string;
}

export function rollupNames(naming: NamingOptions): RollupNames {
  const prefix = naming.prefix ?? "";
  const qualify = (n: string) => pgQualified(naming.schema, n);
  const name = `${prefix}usage_daily`;
  return {
    table: qualify(name),
    name,
    state: qualify(`${prefix}usage_state`),
  };
}

/**
 * The sums of `source` (journal rows) by account, UTC day, usage kind and unit ('' the default
 * one), in the rollup's columns: `SELECT user_id, day, kind, unit, credits, …` grouped by the first
 * four (each entry's totals by the rules of usage; no two units added, docs/units.md).
 */
function rollupSums(source: string, rules: UsageRules = USAGE_RULES, placed = sqlPlaced("e0")): string {
  const sources = usageSources(rules);
  // Each entry with its kind, its own measures and its part source's array, by the rules.
  const entries =
    `SELECT e0.user_id, ${placed} AS at, e0.kind, coalesce(e0.unit, '') AS unit, ${sqlFactor(PG_USAGE, "e0", rules)} AS f, ` +
    USAGE_MEASURES.map((m) => `${sqlEntryMeasure(PG_USAGE, m, "e0", "e0.kind", rules)} AS ${q(`m_${m}`)}`).join(", ") +
    sources.map((s) => `, ${sqlSourceArray(PG_USAGE, s.i, "e0", "e0.kind", rules)} AS a${s.i}`).join("") +
    ` FROM (SELECT j.*, ${sqlKind(PG_USAGE, "j", rules)} AS kind FROM ${source} j WHERE ${sqlTypes("j", rules)}) AS e0 WHERE e0.kind IS NOT NULL`;
  return (
    // By the UTC day the usage happened (docs/usage.md, "Late usage"): a late entry or a
    // reversal adds to the row of its occurred_at's day, an earlier day than the entries around it.
    `SELECT e.user_id, (e.at AT TIME ZONE 'UTC')::date, e.kind, e.unit, ` +
    USAGE_MEASURES.map(
      (m) => `sum((${sqlEntryTotal(PG_USAGE, m, (i) => `e.a${i}`, `e.${q(`m_${m}`)}`, rules)}) * e.f)`,
    ).join(", ") +
    ` FROM (${entries}) AS e GROUP BY 1, 2, 3, 4`
  );
}

/**
 * The statements that create the rollup's tables (idempotent: the DDL can run on a store that has
 * them). On Citus (`citus`) both are distributed with the accounts (docs/scaling-out.md): their
 * user id has the accounts' type, as colocation requires.
 */
export function rollupDdl(
  naming: NamingOptions,
  rules: UsageRules = USAGE_RULES,
  citus?: { userIdType: string },
): string[] {
  const r = rollupNames(naming);
  const userId = citus?.userIdType ?? "TEXT";
  return [
    `CREATE TABLE IF NOT EXISTS ${r.table} (
  "user_id" ${userId} NOT NULL,
  "day" DATE NOT NULL,
  "kind" TEXT NOT NULL CHECK ("kind" IN (${usageKindsOf(rules).map(sqlLit).join(", ")})),
${USAGE_MEASURES.map((m) => `  ${q(rollupColumn(m))} ${rollupType(m)} NOT NULL,`).join("\n")}
  "unit" TEXT NOT NULL DEFAULT '',
  PRIMARY KEY ("user_id", "day", "kind", "unit")
) WITH (fillfactor = 70);`,
    // Reports across accounts read a range of days.
    `CREATE INDEX IF NOT EXISTS ${q(`${r.name}_day`)} ON ${r.table} ("day");`,
    `CREATE TABLE IF NOT EXISTS ${r.state} (\n  "user_id" ${userId} PRIMARY KEY,\n  "through_seq" BIGINT NOT NULL\n);`,
  ];
}

/** The SQL type of a measure's column: credits are whole numbers, the others sums of metadata numbers. */
const rollupType = (m: UsageMeasure): string => (m === "credits" || m === "shortfall" ? "BIGINT" : "NUMERIC");

/**
 * The version 2 step of the rollup's `shortfall` (credits served and not paid, docs/usage.md): the
 * column, and on the rows there are the shortfall of the entries they hold (seq up to the
 * account's `through_seq`, by the same rules), so that the rollup stays the journal's. Days whose
 * entries were archived keep 0. It can run again (it sets, never adds).
 */
export function rollupShortfallStep(naming: NamingOptions, journal: string, rules: UsageRules = USAGE_RULES): string[] {
  const r = rollupNames(naming);
  const cols = ["user_id", "day", "kind", "unit", ...USAGE_MEASURES.map(rollupColumn)].map(q).join(", ");
  const held = `(SELECT j.* FROM ${journal} j JOIN ${r.state} st ON st.user_id = j.user_id AND j.seq <= st.through_seq)`;
  return [
    `ALTER TABLE IF EXISTS ${r.table} ADD COLUMN IF NOT EXISTS "shortfall" BIGINT NOT NULL DEFAULT 0;`,
    `ALTER TABLE IF EXISTS ${r.table} ALTER COLUMN "shortfall" DROP DEFAULT;`,
    `DO $cm$ BEGIN IF to_regclass(${sqlLit(r.table)}) IS NOT NULL AND to_regclass(${sqlLit(r.state)}) IS NOT NULL THEN ` +
      `UPDATE ${r.table} AS u SET "shortfall" = s."shortfall" FROM (${rollupSums(held, rules)}) AS s(${cols}) ` +
      `WHERE u.user_id = s.user_id AND u.day = s.day AND u.kind = s.kind AND u.unit = s.unit AND s."shortfall" <> 0; ` +
      `END IF; END $cm$;`,
  ];
}

/** The upsert of `sums` (rows of `rollupSums`) into the rollup: each row's figures added to its row. */
function rollupUpsert(r: RollupNames, sums: string): string {
  const columns = USAGE_MEASURES.map((m) => q(rollupColumn(m)));
  return (
    `INSERT INTO ${r.table} AS u ("user_id", "day", "kind", "unit", ${columns.join(", ")}) ${sums} ` +
    `ON CONFLICT ("user_id", "day", "kind", "unit") DO UPDATE SET ${columns.map((c) => `${c} = u.${c} + EXCLUDED.${c}`).join(", ")}`
  );
}

/**
 * The part the catch-ups across accounts share, after their `cm_c` (`user_id`, `from_seq`,
 * `to_seq`, in user id order): `cm_s` moves each cursor from `from_seq` to `to_seq` by a
 * compare-and-set, `cm_j` reads the entries of the accounts it moved, `cm_u` adds them up into
 * the rollup. The statement's `SELECT` follows it.
 */
function casAndFold(r: RollupNames, journal: string, rules: UsageRules): string {
  return (
    `cm_s AS (INSERT INTO ${r.state} AS s ("user_id", "through_seq") SELECT user_id, to_seq FROM cm_c ORDER BY user_id ` +
    `ON CONFLICT ("user_id") DO UPDATE SET "through_seq" = EXCLUDED."through_seq" ` +
    `WHERE s."through_seq" = (SELECT c.from_seq FROM cm_c c WHERE c.user_id = s.user_id) RETURNING s.user_id), ` +
    `cm_j AS (SELECT j.* FROM ${journal} j JOIN cm_c c ON c.user_id = j.user_id JOIN cm_s ON cm_s.user_id = c.user_id ` +
    `WHERE j.seq > c.from_seq AND j.seq <= c.to_seq), ` +
    `cm_u AS (${rollupUpsert(r, rollupSums("cm_j", rules))}) `
  );
}

/**
 * The catch-up of the rollup (docs/usage.md, "The daily rollup"), one statement: for each account
 * whose journal went past its `through_seq`, its entries `through_seq < seq <= accounts.seq` summed
 * into the rollup, and `through_seq` moved to `accounts.seq` — a compare-and-set: it moves only
 * from the value this statement read, so a concurrent catch-up of the same entries (which waits on
 * the state row's lock, then finds it moved) adds nothing. One statement is one snapshot: the
 * entries up to `accounts.seq` are there (an entry and its account's seq commit together).
 * Accounts are taken in user id order, so two catch-ups lock state rows in one order. Returns one
 * row: `n`, the accounts caught up, and `stale`, the accounts it found behind (more than `n` when
 * another catch-up moved some meanwhile: it may have stopped short of this one's seq, so a reader
 * runs it again).
 */
export function rollupCatchUpSql(
  journal: string,
  accounts: string,
  naming: NamingOptions,
  rules: UsageRules = USAGE_RULES,
): string {
  const r = rollupNames(naming);
  return (
    `WITH cm_c AS (SELECT a.user_id, coalesce(s.through_seq, 0) AS from_seq, a.seq AS to_seq ` +
    `FROM ${accounts} a LEFT JOIN ${r.state} s ON s.user_id = a.user_id ` +
    `WHERE a.seq > coalesce(s.through_seq, 0) ORDER BY a.user_id), ` +
    casAndFold(r, journal, rules) +
    `SELECT count(*)::int AS n, (SELECT count(*)::int FROM cm_c) AS stale FROM cm_s`
  );
}

/**
 * A bounded catch-up (the worker's usage round, docs/usage.md, "Keeping the rollup caught up"),
 * one statement: the accounts behind their cursor in user id order (after `$1` when `after`, else
 * `$1` is null), at most `$2` of them, and of their new entries at most `$3` in all — each
 * account's from its cursor, the last one's cut short where `$3` runs out (its rest is the next
 * statement's). The
 * compare-and-set, the lock order and the snapshot as in `rollupCatchUpSql`. Returns a row per
 * account taken, in user id order: `user_id`, `entries` (added when `moved`), `clipped` (entries
 * of it are left), `moved` (false: another catch-up moved its cursor first and added them).
 */
export function rollupCatchUpBatchSql(
  journal: string,
  accounts: string,
  naming: NamingOptions,
  after: boolean,
  rules: UsageRules = USAGE_RULES,
): string {
  const r = rollupNames(naming);
  return (
    `WITH cm_l AS (SELECT a.user_id, coalesce(s.through_seq, 0) AS from_seq, a.seq AS head ` +
    `FROM ${accounts} a LEFT JOIN ${r.state} s ON s.user_id = a.user_id ` +
    `WHERE a.seq > coalesce(s.through_seq, 0)${after ? " AND a.user_id > $1" : " AND $1::text IS NULL"} ORDER BY a.user_id LIMIT $2), ` +
    // The entries of the accounts before each one (bigint throughout: a numeric bound would keep
    // the journal's read off its primary key).
    `cm_w AS (SELECT user_id, from_seq, head, coalesce(sum(head - from_seq) OVER (ORDER BY user_id ` +
    `ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::bigint AS before FROM cm_l), ` +
    `cm_c AS (SELECT user_id, from_seq, (from_seq + least(head - from_seq, $3::bigint - before))::bigint AS to_seq, head ` +
    `FROM cm_w WHERE before < $3::bigint), ` +
    casAndFold(r, journal, rules) +
    `SELECT c.user_id, (c.to_seq - c.from_seq)::int AS entries, c.to_seq < c.head AS clipped, cm_s.user_id IS NOT NULL AS moved ` +
    `FROM cm_c c LEFT JOIN cm_s ON cm_s.user_id = c.user_id ORDER BY c.user_id`
  );
}

/**
 * The catch-up of one account (`$1`) from `through_seq` `$2` to `$3` (its `seq`, read before: the
 * entries up to it are committed), one statement on the account's rows only — on Citus, routed to
 * the worker that holds them. The compare-and-set as in `rollupCatchUpSql`. Returns one row: `n`,
 * 1 when it moved the cursor and added the entries, else 0.
 */
export function rollupCatchUpOneSql(journal: string, naming: NamingOptions, rules: UsageRules = USAGE_RULES): string {
  const r = rollupNames(naming);
  return (
    `WITH cm_s AS (INSERT INTO ${r.state} AS s ("user_id", "through_seq") VALUES ($1, $3) ` +
    `ON CONFLICT ("user_id") DO UPDATE SET "through_seq" = EXCLUDED."through_seq" WHERE s."through_seq" = $2 RETURNING s.user_id), ` +
    `cm_j AS (SELECT j.* FROM ${journal} j WHERE j.user_id = $1 AND j.seq > $2 AND j.seq <= $3 AND EXISTS (SELECT 1 FROM cm_s)), ` +
    `cm_u AS (${rollupUpsert(r, rollupSums("cm_j", rules))}) ` +
    `SELECT count(*)::int AS n FROM cm_s`
  );
}

/**
 * Fills the rollup from the journal there is (a journal loaded in bulk: bench/usage.ts): what it
 * held is replaced, so the statements can run again. The fill and the accounts' cursors are one
 * statement, one snapshot: each account's entries up to its `seq` then, and `through_seq` that
 * seq; a writer meanwhile adds entries above it, which the next catch-up adds.
 */
export function rollupBackfillSql(journal: string, accounts: string, naming: NamingOptions): string[] {
  const r = rollupNames(naming);
  return [
    `DELETE FROM ${r.table};`,
    `DELETE FROM ${r.state};`,
    `WITH cm_s AS (INSERT INTO ${r.state} ("user_id", "through_seq") SELECT user_id, seq FROM ${accounts} WHERE seq > 0 RETURNING user_id, through_seq), ` +
      `cm_j AS (SELECT j.* FROM ${journal} j JOIN cm_s ON cm_s.user_id = j.user_id WHERE j.seq <= cm_s.through_seq) ` +
      `INSERT INTO ${r.table} ("user_id", "day", "kind", "unit", ${USAGE_MEASURES.map((m) => q(rollupColumn(m))).join(", ")}) ` +
      // In day order: a report's range of days reads adjacent pages.
      `${rollupSums("cm_j")} ORDER BY 2, 1, 3, 4;`,
  ];
}

/**
 * One account's rollup rows (`$1`) as a catch-up would leave them at this statement's snapshot
 * (docs/usage.md, "The daily rollup"): the rows stored plus the sums of its journal entries past
 * its `through_seq`, by the same rules as the catch-up, without writing anything. What the audit
 * reads inside its snapshot (a read-only transaction, where a catch-up cannot run), so that the
 * rows it compares cover the journal it replays. Columns as the stored rows', `day` as text.
 */
export function rollupAsOfSql(journal: string, naming: NamingOptions, rules: UsageRules = USAGE_RULES): string {
  const r = rollupNames(naming);
  const measures = USAGE_MEASURES.map((m) => q(rollupColumn(m)));
  return (
    `WITH cm_p AS (SELECT j.* FROM ${journal} j WHERE j.user_id = $1 AND j.seq > ` +
    `coalesce((SELECT s.through_seq FROM ${r.state} s WHERE s.user_id = $1), 0)), ` +
    `cm_n ("user_id", "day", "kind", "unit", ${measures.join(", ")}) AS (${rollupSums("cm_p", rules)}) ` +
    `SELECT to_char(x.day, 'YYYY-MM-DD') AS day, x.kind, x.unit, ${measures.map((c) => `sum(x.${c}) AS ${c}`).join(", ")} FROM (` +
    `SELECT "day", "kind", "unit", ${measures.join(", ")} FROM ${r.table} WHERE user_id = $1 UNION ALL ` +
    `SELECT "day", "kind", "unit", ${measures.join(", ")} FROM cm_n) x GROUP BY x.day, x.kind, x.unit ORDER BY x.day, x.kind, x.unit`
  );
}
