import { USAGE_MEASURES, USAGE_RULES, usageKindsOf, type UsageRules } from "../domain/usage.js";
import type { NamingOptions } from "./sql.js";
import {
  pgEntryMeasure,
  pgEntryTotal,
  pgKind,
  pgLit,
  pgSourceArray,
  pgSources,
  pgTypes,
  rollupColumn,
} from "./usage-pg.js";

/** A PostgreSQL identifier, quoted (as `quoteIdent` of ./sql.ts, which imports this module). */
const quoteIdent = (_dialect: "postgres", name: string): string => `"${name.replace(/"/g, '""')}"`;

/**
 * The usage rollup of PostgreSQL (docs/usage.md, "The daily rollup"): `usage_daily`, one row per
 * account, UTC day and usage kind with the sums a usage report adds up (credits, requests, tokens),
 * kept by an `AFTER INSERT` trigger on the journal — in the same statement, so in the same
 * transaction as the entry: it is never behind, and costs no round trip. The trigger's body and
 * the fill are generated from the rules of `src/domain/usage.ts` (`USAGE_RULES`, by ./usage-pg.ts):
 * an entry's total of each measure. The audit compares the rollup with the journal's own report
 * (`CreditService.audit`).
 *
 * Only inserts count: the archival of old journal entries (checkpoints, detached partitions)
 * leaves the days it empties in the rollup, so reports across accounts keep them.
 */
export interface RollupNames {
  /** The rollup table, qualified. */
  table: string;
  /** Its name without the schema (index names are made from it). */
  name: string;
  /** The trigger function, qualified. */
  fn: string;
  /** The trigger's name (unqualified: triggers live on their table). */
  trigger: string;
}

export function rollupNames(naming: NamingOptions): RollupNames {
  const q = (n: string) => quoteIdent("postgres", n);
  const prefix = naming.prefix ?? "";
  const qualify = (n: string) => (naming.schema === undefined ? q(n) : `${q(naming.schema)}.${q(n)}`);
  const name = `${prefix}usage_daily`;
  return { table: qualify(name), name, fn: qualify(`${prefix}usage_daily_add`), trigger: `${prefix}usage_daily_add` };
}

/**
 * The sums of `source` (journal rows: the journal, or the trigger's transition table) by account,
 * UTC day and usage kind, in the rollup's columns: `SELECT user_id, day, kind, credits, …` grouped
 * by the first three (each entry's totals by the rules of usage).
 */
function rollupSums(source: string, rules: UsageRules = USAGE_RULES): string {
  const q = (n: string) => quoteIdent("postgres", n);
  const sources = pgSources(rules);
  // Each entry with its kind, its own measures and its part source's array, by the rules.
  const entries =
    `SELECT e0.user_id, e0.created_at, e0.kind, ` +
    USAGE_MEASURES.map((m) => `${pgEntryMeasure(m, "e0", "e0.kind", rules)} AS ${q(`m_${m}`)}`).join(", ") +
    sources.map((s) => `, ${pgSourceArray(s.i, "e0", "e0.kind", rules)} AS a${s.i}`).join("") +
    ` FROM (SELECT j.*, ${pgKind("j", rules)} AS kind FROM ${source} j WHERE ${pgTypes("j", rules)}) AS e0 WHERE e0.kind IS NOT NULL`;
  return (
    `SELECT e.user_id, (e.created_at AT TIME ZONE 'UTC')::date, e.kind, ` +
    USAGE_MEASURES.map((m) => `sum(${pgEntryTotal(m, (i) => `e.a${i}`, `e.${q(`m_${m}`)}`, rules)})`).join(", ") +
    ` FROM (${entries}) AS e GROUP BY 1, 2, 3`
  );
}

/**
 * The statements that create the rollup table, its function and its trigger on `journal` (the
 * journal table, qualified): idempotent (the trigger is dropped and made again), so the DDL can
 * run on a store that has them.
 *
 * The trigger runs once per statement (schema version 14; version 12's ran once per row): it adds
 * the statement's new journal rows (its transition table), summed by account, day and kind, with
 * one upsert — a group commit's batch of deductions costs one call and one upsert per account and
 * day, not one of each per entry (docs/benchmarks.md). A row of the rollup is only written by a
 * transaction that inserts an entry of its account, which holds that account's row locked (the
 * entry continues its chain), so concurrent upserts never wait on each other in a cycle. On a
 * partitioned journal the trigger is made on the parent, which every insert names; its transition
 * table holds the rows of every partition.
 */
export function rollupDdl(
  journal: string,
  naming: NamingOptions,
  rules: UsageRules = USAGE_RULES,
  citus?: { userIdType: string },
): string[] {
  const r = rollupNames(naming);
  const q = (n: string) => quoteIdent("postgres", n);
  const columns = USAGE_MEASURES.map((m) => q(rollupColumn(m)));
  return [
    `CREATE TABLE IF NOT EXISTS ${r.table} (
  "user_id" ${citus?.userIdType ?? "TEXT"} NOT NULL,
  "day" DATE NOT NULL,
  "kind" TEXT NOT NULL CHECK ("kind" IN (${usageKindsOf(rules).map(pgLit).join(", ")})),
${USAGE_MEASURES.map((m) => `  ${q(rollupColumn(m))} ${m === "credits" ? "BIGINT" : "NUMERIC"} NOT NULL,`).join("\n")}
  PRIMARY KEY ("user_id", "day", "kind")
) WITH (fillfactor = 70);`,
    // Reports across accounts read a range of days.
    `CREATE INDEX IF NOT EXISTS ${q(`${r.name}_day`)} ON ${r.table} ("day");`,
    ...(citus === undefined
      ? statementTrigger(journal, r, columns, rules)
      : citusRowTrigger(journal, r, columns, rules)),
  ];
}

/** The trigger of one server: once per statement, over its transition table (version 14). */
function statementTrigger(journal: string, r: RollupNames, columns: string[], rules: UsageRules): string[] {
  const q = (n: string) => quoteIdent("postgres", n);
  return [
    // Generated from USAGE_RULES (docs/schema-upgrades.md, "The rollup's function").
    `CREATE OR REPLACE FUNCTION ${r.fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  -- Generated from USAGE_RULES (src/domain/usage.ts): the new entries' usage by account, day, kind.
  INSERT INTO ${r.table} AS u ("user_id", "day", "kind", ${columns.join(", ")})
  ${rollupSums("cm_new_entries", rules)}
  ON CONFLICT ("user_id", "day", "kind") DO UPDATE SET ${columns.map((c) => `${c} = u.${c} + EXCLUDED.${c}`).join(", ")};
  RETURN NULL;
END
$fn$;`,
    `DROP TRIGGER IF EXISTS ${q(r.trigger)} ON ${journal};`,
    `CREATE TRIGGER ${q(r.trigger)} AFTER INSERT ON ${journal} REFERENCING NEW TABLE AS cm_new_entries ` +
      `FOR EACH STATEMENT EXECUTE FUNCTION ${r.fn}();`,
  ];
}

/**
 * The trigger on Citus (docs/scaling-out.md): it runs on the journal's shards, on the worker that
 * holds the account, and its insert goes to the rollup's colocated shard there. Citus takes no
 * transition table in a distributed insert nor a subquery in its VALUES: once per row, each
 * total computed first, then one upsert of plain values.
 */
function citusRowTrigger(journal: string, r: RollupNames, columns: string[], rules: UsageRules): string[] {
  const q = (n: string) => quoteIdent("postgres", n);
  const sources = pgSources(rules);
  const totals = USAGE_MEASURES.map((m) =>
    pgEntryTotal(m, (i) => `a${i}`, pgEntryMeasure(m, "NEW", "k", rules), rules),
  );
  return [
    `CREATE OR REPLACE FUNCTION ${r.fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  k text;
${sources.map((s) => `  a${s.i} jsonb;`).join("\n")}
${USAGE_MEASURES.map((_, i) => `  t${i} numeric;`).join("\n")}
BEGIN
  -- Generated from USAGE_RULES (src/domain/usage.ts): the entry's usage kind, or none.
  IF NOT (${pgTypes("NEW", rules)}) THEN RETURN NULL; END IF;
  k := ${pgKind("NEW", rules)};
  IF k IS NULL THEN RETURN NULL; END IF;
${sources.map((s) => `  a${s.i} := ${pgSourceArray(s.i, "NEW", "k", rules)};`).join("\n")}
${totals.map((t, i) => `  t${i} := ${t};`).join("\n")}
  INSERT INTO ${r.table} AS u ("user_id", "day", "kind", ${columns.join(", ")})
  VALUES (NEW.user_id, (NEW.created_at AT TIME ZONE 'UTC')::date, k, ${totals.map((_, i) => `t${i}`).join(", ")})
  ON CONFLICT ("user_id", "day", "kind") DO UPDATE SET ${columns.map((c) => `${c} = u.${c} + EXCLUDED.${c}`).join(", ")};
  RETURN NULL;
END
$fn$;`,
    `DROP TRIGGER IF EXISTS ${q(r.trigger)} ON ${journal};`,
    `CREATE TRIGGER ${q(r.trigger)} AFTER INSERT ON ${journal} FOR EACH ROW EXECUTE FUNCTION ${r.fn}();`,
  ];
}

/**
 * Fills the rollup from the journal there is (the upgrade to version 12, docs/schema-upgrades.md):
 * what it held is replaced, so the statement can run again. Runs after the trigger exists, whose
 * lock on the journal keeps writers out until the upgrade commits: no entry is counted twice or
 * missed.
 */
export function rollupBackfillSql(journal: string, naming: NamingOptions): string[] {
  const r = rollupNames(naming);
  const q = (n: string) => quoteIdent("postgres", n);
  return [
    `DELETE FROM ${r.table};`,
    `INSERT INTO ${r.table} ("user_id", "day", "kind", ${USAGE_MEASURES.map((m) => q(rollupColumn(m))).join(", ")}) ` +
      // In day order, as the trigger writes them: a report's range of days reads adjacent pages.
      `${rollupSums(journal)} ORDER BY 2, 1, 3;`,
  ];
}
