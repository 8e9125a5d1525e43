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
 * The statements that create the rollup table, its function and its trigger on `journal` (the
 * journal table, qualified): idempotent (the trigger is dropped and made again), so the DDL can
 * run on a store that has them. On a partitioned journal the trigger is made on the parent and
 * PostgreSQL clones it onto every partition, those made later included.
 */
export function rollupDdl(journal: string, naming: NamingOptions, rules: UsageRules = USAGE_RULES): string[] {
  const r = rollupNames(naming);
  const q = (n: string) => quoteIdent("postgres", n);
  const sources = pgSources(rules);
  const columns = USAGE_MEASURES.map((m) => q(rollupColumn(m)));
  // An entry's totals, by the rules: its kind `k`, its part source's array in `a1`, `a2`, … (NULL
  // but the one its parts come from).
  const totals = USAGE_MEASURES.map((m) =>
    pgEntryTotal(m, (i) => `a${i}`, pgEntryMeasure(m, "NEW", "k", rules), rules),
  );
  return [
    `CREATE TABLE IF NOT EXISTS ${r.table} (
  "user_id" TEXT NOT NULL,
  "day" DATE NOT NULL,
  "kind" TEXT NOT NULL CHECK ("kind" IN (${usageKindsOf(rules).map(pgLit).join(", ")})),
${USAGE_MEASURES.map((m) => `  ${q(rollupColumn(m))} ${m === "credits" ? "BIGINT" : "NUMERIC"} NOT NULL,`).join("\n")}
  PRIMARY KEY ("user_id", "day", "kind")
) WITH (fillfactor = 70);`,
    // Reports across accounts read a range of days.
    `CREATE INDEX IF NOT EXISTS ${q(`${r.name}_day`)} ON ${r.table} ("day");`,
    // Generated from USAGE_RULES: its text differs from the function version 12 installed, its
    // answers do not (docs/schema-upgrades.md, "The rollup's function"), so stores made before
    // keep theirs until an upgrade runs this DDL again.
    `CREATE OR REPLACE FUNCTION ${r.fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  k text;
${sources.map((s) => `  a${s.i} jsonb;`).join("\n")}
BEGIN
  -- Generated from USAGE_RULES (src/domain/usage.ts): the entry's usage kind, or none.
  IF NOT (${pgTypes("NEW", rules)}) THEN RETURN NULL; END IF;
  k := ${pgKind("NEW", rules)};
  IF k IS NULL THEN RETURN NULL; END IF;
${sources.map((s) => `  a${s.i} := ${pgSourceArray(s.i, "NEW", "k", rules)};`).join("\n")}
  INSERT INTO ${r.table} AS u ("user_id", "day", "kind", ${columns.join(", ")})
  VALUES (NEW.user_id, (NEW.created_at AT TIME ZONE 'UTC')::date, k, ${totals.join(",\n    ")})
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
  const sources = pgSources();
  // Each entry with its kind, its own measures and its part source's array, by the rules.
  const entries =
    `SELECT e0.user_id, e0.created_at, e0.kind, ` +
    USAGE_MEASURES.map((m) => `${pgEntryMeasure(m, "e0", "e0.kind")} AS ${q(`m_${m}`)}`).join(", ") +
    sources.map((s) => `, ${pgSourceArray(s.i, "e0", "e0.kind")} AS a${s.i}`).join("") +
    ` FROM (SELECT j.*, ${pgKind("j")} AS kind FROM ${journal} j WHERE ${pgTypes("j")}) AS e0 WHERE e0.kind IS NOT NULL`;
  return [
    `DELETE FROM ${r.table};`,
    `INSERT INTO ${r.table} ("user_id", "day", "kind", ${USAGE_MEASURES.map((m) => q(rollupColumn(m))).join(", ")}) ` +
      `SELECT e.user_id, (e.created_at AT TIME ZONE 'UTC')::date, e.kind, ` +
      USAGE_MEASURES.map((m) => `sum(${pgEntryTotal(m, (i) => `e.a${i}`, `e.${q(`m_${m}`)}`)})`).join(", ") +
      ` FROM (${entries}) AS e ` +
      // In day order, as the trigger writes them: a report's range of days reads adjacent pages.
      `GROUP BY 1, 2, 3 ORDER BY 2, 1, 3;`,
  ];
}
