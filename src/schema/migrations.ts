import { revenuePlanSql, revenueResetSql } from "./revenue-pg.js";
import {
  type NamingOptions,
  type SqlDialect,
  SCHEMA_VERSION,
  columnChecks,
  columnSql,
  createTableSql,
  generateSql,
  indexSql,
  quoteIdent,
  sqlTables,
  versionRowSql,
  CITUS_TRIGGERS,
  versionTableSql,
} from "./sql.js";
import type { Column } from "./columns.js";
import { pgQualified } from "./ident.js";
import { rollupBackfillSql, rollupDdl, rollupFoldUpgradeSql } from "./rollup.js";
import type { SqlTable } from "./sql.js";
import { type TableKey, indexesOf } from "./tables.js";
import { ConfigurationError } from "../errors.js";

/** A column added to a table that existed before. */
interface AddedColumn {
  table: TableKey;
  /** The model's field (camelCase). */
  field: string;
  /** SQL literal filling existing rows of a NOT NULL column; dropped again afterwards. */
  fill?: string;
}

/** A column of a table that existed before. */
interface ChangedColumn {
  table: TableKey;
  /** The model's field (camelCase). */
  field: string;
}

/**
 * An index of a table that existed before whose PostgreSQL definition changed (it keeps its name):
 * replaced by today's while it still has its old definition. The other dialects keep the index
 * they had.
 */
interface ChangedIndex {
  table: TableKey;
  /** `IndexSpec.name`. */
  index: string;
  /** A piece of today's definition (`pg_get_indexdef`) that the old one lacks. */
  marker: string;
}

interface Migration {
  /** The version this step reaches. */
  to: number;
  summary: string;
  columns: readonly AddedColumn[];
  /** Enum columns whose CHECK (the allowed values) is replaced by today's (values added). */
  checks?: readonly ChangedColumn[];
  /**
   * Columns whose PostgreSQL type changed in this version: a hex digest now stored as bytes
   * (`Column.bytes`: `BYTEA`, `decode(…, 'hex')` of each row), JSON now kept as text
   * (`Column.jsonText`: `JSON`). The whole table is rewritten once; the other dialects keep the
   * types they had.
   */
  retyped?: readonly ChangedColumn[];
  /** Indexes whose PostgreSQL definition changed in this version. */
  reindexed?: readonly ChangedIndex[];
  /**
   * Indexes added to tables that existed before (`IndexSpec.name`). PostgreSQL and SQLite get them
   * from the DDL (`CREATE INDEX IF NOT EXISTS`); MySQL, whose DDL declares them inside `CREATE
   * TABLE`, gets a `CREATE INDEX` here.
   */
  indexes?: readonly { table: TableKey; index: string }[];
  /**
   * Statements of their own, run after the step's columns (a table with a trigger, and filling it
   * from the rows there are: version 12's usage rollup). Given the dialect, the naming and the
   * tables; none for a dialect that answers an empty list. They must be able to run again.
   */
  statements?: (dialect: SqlDialect, naming: NamingOptions, tables: ReadonlyMap<TableKey, SqlTable>) => string[];
}

/**
 * What each version changed in tables that existed before it. Tables a version introduced need no
 * step: the DDL creates them whole (`CREATE TABLE IF NOT EXISTS`), and so for indexes.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    to: 2,
    summary:
      "accounts.alert (notification level) and grants.expired_amount; new tables for promos, payments, notifications, plans and subscriptions",
    columns: [
      { table: "accounts", field: "alert" },
      { table: "grants", field: "expiredAmount", fill: "0" },
    ],
  },
  {
    to: 3,
    summary: "subscriptions.period_credits and subscriptions.request",
    columns: [
      { table: "subscriptions", field: "periodCredits" },
      { table: "subscriptions", field: "request" },
    ],
  },
  {
    to: 4,
    summary:
      "notifications.type allows feature_status_changed and the domain events (credits_added, credits_adjusted, credits_deducted, credits_refunded, credits_voided, credits_expired, hold_placed, hold_settled)",
    columns: [],
    checks: [{ table: "notifications", field: "type" }],
  },
  {
    to: 5,
    summary:
      'journal_entries.type allows checkpoint (docs/operations.md, "Checkpoints and archival"); journal_entries.forgotten_key: where the idempotency-key retention job moves a key past its window, out of the unique index; PostgreSQL: journal_entries.hash and prev_hash as BYTEA (32 bytes, not 64 hex characters), grants as JSON text (docs/running-for-years.md)',
    columns: [{ table: "journal", field: "forgottenKey" }],
    checks: [{ table: "journal", field: "type" }],
    retyped: [
      { table: "journal", field: "hash" },
      { table: "journal", field: "prevHash" },
      { table: "journal", field: "grants" },
    ],
  },
  {
    to: 6,
    summary:
      "PostgreSQL: the unique index of journal_entries' idempotency keys holds a 16-byte digest of user id and key, not the key's text (docs/running-for-years.md)",
    columns: [],
    reindexed: [{ table: "journal", index: "idempotency_key", marker: "sha256(" }],
  },
  // Version 7: one entry for every change of this version (add to its lists).
  {
    to: 7,
    summary:
      "notifications.version: the version of each outbox row's payload schema (rows stored before read as 1, docs/events.md); PostgreSQL and SQLite: the partial index notifications_failed, so stats() counts failed rows without reading the outbox; subscriptions.change_keys: the idempotency keys of cancel, resume and changePlan calls (docs/subscriptions.md)",
    columns: [
      { table: "notifications", field: "version", fill: "1" },
      { table: "subscriptions", field: "changeKeys" },
    ],
  },
  // Auto top-up: self-contained, so it can take whichever number is free.
  {
    to: 8,
    summary:
      'accounts.auto_top_up: the auto top-up rule and its state (docs/promos-and-payments.md, "Auto top-up"); notifications.type allows auto_top_up_requested, auto_top_up_failed, auto_top_up_action_required and auto_top_up_disabled',
    columns: [{ table: "accounts", field: "autoTopUp" }],
    checks: [{ table: "notifications", field: "type" }],
  },
  // Version 9: who spends on what (docs/teams-and-limits.md). Self-contained: renumber freely.
  {
    to: 9,
    summary:
      "accounts.limits (spend limits and what each counted in its window); journal_entries.type allows limits (the entry that records a change of them); journal_entries.spender and .feature (covered by the entry's hash when set: entries written before hash as they did); reservations.spender and .feature (docs/teams-and-limits.md)",
    columns: [
      { table: "accounts", field: "limits" },
      { table: "journal", field: "spender" },
      { table: "journal", field: "feature" },
      { table: "reservations", field: "spender" },
      { table: "reservations", field: "feature" },
    ],
    checks: [{ table: "journal", field: "type" }],
  },
  // Version 10: scoped grants (docs/teams-and-limits.md, "Scoped credits"). Self-contained: renumber freely.
  {
    to: 10,
    summary:
      "grants.scope (the features and spenders a grant may pay for; null: any spend); accounts.scoped (true once the account was given a scoped grant), both nullable: rows stored before read as unscoped (docs/teams-and-limits.md); the index journal_entries_created (usage reports across accounts, docs/usage.md)",
    columns: [
      { table: "grants", field: "scope" },
      { table: "accounts", field: "scoped" },
    ],
    // The journal's created_at index for usage reports across accounts (docs/usage.md).
    indexes: [{ table: "journal", index: "created" }],
  },
  // Version 11: limit notifications (docs/teams-and-limits.md, "Limit notifications"). Self-contained: renumber freely.
  {
    to: 11,
    summary:
      'notifications.type allows limit_warning and limit_reached (a spend limit\'s 80 % and 100 %, docs/teams-and-limits.md "Limit notifications"); a spend limit in accounts.limits keeps alerted (JSON: no column change; limits stored before read it from what they counted)',
    columns: [],
    checks: [{ table: "notifications", field: "type" }],
  },
  // Version 12: the daily usage rollup (docs/usage.md, "The daily rollup").
  {
    to: 12,
    summary:
      "PostgreSQL: the table usage_daily (credits, requests and tokens per account, UTC day and usage kind) kept by an AFTER INSERT trigger on journal_entries, filled from the journal there is; reports across accounts read it for whole days, and audit compares it with the journal (docs/usage.md)",
    columns: [],
    statements: (dialect, naming, tables) => {
      const journal = tables.get("journal");
      if (dialect !== "postgres" || journal === undefined) return [];
      const accounts = tables.get("accounts");
      if (accounts === undefined) return [];
      // The tables (version 18's: no trigger), then the fill with each account's cursor, in one
      // statement (src/schema/rollup.ts): every entry counted once, by the fill or a later catch-up.
      return [...rollupDdl(naming), ...rollupBackfillSql(journal.qualified, accounts.qualified, naming)];
    },
  },
  // Version 13: plan allowances (docs/subscriptions.md, "Allowances"). A store is brought
  // through every step whose `to` exceeds its version.
  {
    to: 13,
    summary:
      "plans.allowances (scoped credits a plan allocates every period) and subscriptions.period_allowances (what the current period is on of each, for proration), both nullable: plans stored before read as having none, subscriptions as on their plan's (docs/subscriptions.md)",
    columns: [
      { table: "plans", field: "allowances" },
      { table: "subscriptions", field: "periodAllowances" },
    ],
  },
  // Version 14: the usage rollup's trigger once per statement (docs/usage.md, "The daily rollup").
  {
    to: 14,
    summary:
      "PostgreSQL: the usage rollup's trigger on journal_entries runs once per statement, over the statement's new rows (a transition table), instead of once per row; the rollup's rows and what they hold do not change (docs/usage.md)",
    // No statements since version 18: the upgrade to 18 drops the trigger this step replaced.
    columns: [],
  },
  // Version 15: cost basis (docs/revenue.md). Self-contained: renumber freely.
  {
    to: 15,
    summary:
      "grants.cost_basis and journal_entries.cost_basis: what each credit of a grant, and of the addition that created it, was sold for (covered by the entry's hash when set); both nullable: grants and entries stored before read as having none (docs/revenue.md)",
    columns: [
      { table: "grants", field: "costBasis" },
      { table: "journal", field: "costBasis" },
    ],
  },
  // Version 16: the revenue summary (docs/revenue.md, "How it is computed"). Self-contained: renumber freely.
  {
    to: 16,
    summary:
      "PostgreSQL: the tables revenue_state, revenue_daily and revenue_deferred (revenue per account and UTC day, filled by revenue reports from the journal when they read it; no trigger), created empty by the DDL (docs/revenue.md)",
    columns: [],
  },
  // Version 17: the revenue summary by currency and source (docs/revenue.md, "How it is computed").
  {
    to: 17,
    summary:
      "PostgreSQL: the table revenue_days (the revenue summary by account, UTC day, currency and source, which reports without a feature or spender group read); the summary of version 16 is emptied, and the next revenue report fills it again from the journal (docs/revenue.md)",
    columns: [],
    statements: (dialect, naming) => (dialect === "postgres" ? [revenueResetSql(naming)] : []),
  },
  // Version 18: the usage rollup off the journal's write path (docs/usage.md, "The daily rollup").
  {
    to: 18,
    summary:
      "PostgreSQL: the usage rollup's trigger on journal_entries and its function dropped; the table usage_state (per account, the journal's last seq that usage_daily holds), each account's set to its seq: usage_daily keeps its rows, and reports across accounts, the audit and archival add the entries after it (docs/usage.md)",
    columns: [],
    statements: (dialect, naming, tables) => {
      const journal = tables.get("journal");
      const accounts = tables.get("accounts");
      if (dialect !== "postgres" || journal === undefined || accounts === undefined) return [];
      return rollupFoldUpgradeSql(journal.qualified, accounts.qualified, naming);
    },
  },
  // Version 19: the revenue summary emptied (docs/revenue.md, decision 3). Self-contained: renumber freely.
  {
    to: 19,
    summary:
      "PostgreSQL: the revenue summary emptied (revenue_state, revenue_days, revenue_daily, revenue_deferred, where they exist): it holds refunds' figures by the rule before this release (a take-back past the balance or from a free grant, a reversal past what the refunded payment earned), and the next revenue report fills it again from the journal (docs/revenue.md)",
    columns: [],
    statements: (dialect, naming) => (dialect === "postgres" ? [revenueResetSql(naming)] : []),
  },
  // Version 20: a unit of work in one call on Citus (docs/scaling-out.md). Self-contained: renumber freely.
  {
    to: 20,
    summary:
      "PostgreSQL on Citus only: accounts.rev (the account row's revision, which every save adds one to) and the functions unit_load and unit_save, which Citus delegates to the account's worker, so that a unit of work is one call committed there (docs/scaling-out.md); made by the distributed DDL. Other stores: no change",
    columns: [],
  },
  // Version 21: the revenue summary by plan (docs/revenue.md, "The report"). Self-contained: renumber freely.
  {
    to: 21,
    summary:
      "PostgreSQL: the column plan in revenue_days, revenue_daily and revenue_deferred (the revenue summary by the plan whose subscription sold the credits), and the summary emptied, its keys now holding the plan; the next revenue report fills it again from the journal (docs/revenue.md)",
    columns: [],
    statements: (dialect, naming) => (dialect === "postgres" ? [revenuePlanSql(naming), revenueResetSql(naming)] : []),
  },
  // Version 22: corrections (docs/concepts.md, "The journal"). Self-contained: renumber freely.
  {
    to: 22,
    summary:
      "journal_entries.type allows reverse (an entry that gives back part or all of a charge), and notifications.type the domain event credits_reversed; journal_entries.reverses (the charge a reverse entry gives back) and .occurred_at (when an entry's usage happened, where that is not created_at), both nullable and covered by the entry's hash when set: entries stored before read as none and hash as they did; the indexes journal_entries_id (an entry by its id), journal_entries_user_reverses (a charge's reversals) and journal_entries_occurred (entries by when their usage happened) (docs/concepts.md)",
    columns: [
      { table: "journal", field: "reverses" },
      { table: "journal", field: "occurredAt" },
    ],
    checks: [
      { table: "journal", field: "type" },
      { table: "notifications", field: "type" },
    ],
    indexes: [
      { table: "journal", index: "id" },
      { table: "journal", index: "user_reverses" },
      { table: "journal", index: "occurred" },
    ],
  },
  // Version 23: on Citus, a save writes the account's shards directly (docs/scaling-out.md). Self-contained: renumber freely.
  {
    to: 23,
    summary:
      "PostgreSQL on Citus only: the function unit_save writes the account's shards directly where it runs on their worker (under the lock Citus's own writes take on the account's shard), with statements it prepares once per connection and shard, and through the distributed tables elsewhere (docs/scaling-out.md); made by the distributed DDL. Other stores: no change",
    columns: [],
  },
  // Version 24: on Citus, a save checks its account's shard by one placement (docs/scaling-out.md). Self-contained: renumber freely.
  {
    to: 24,
    summary:
      "PostgreSQL on Citus only: the function unit_save checks that the account's shard is on its node by that shard's placement alone (its colocated shards move with it), read by the placements' unique index, and names its prepared statements by the account's shard; made by the distributed DDL. Other stores: no change",
    columns: [],
  },
  // Version 25: on Citus, units of work of one node's accounts saved in one call (docs/scaling-out.md);
  // an addition's source on its entry (docs/revenue.md). Self-contained: renumber freely.
  {
    to: 25,
    summary:
      "PostgreSQL on Citus only: the function unit_saves (several units' saves in one call Citus delegates to a worker, each in a subtransaction of its own, committed together), and unit_load reports the node it read on, by which a process groups its saves; made by the distributed DDL. Every SQL store: journal_entries.source (an add entry's grant source, covered by the entry's hash when set; nullable: entries stored before read as none) (docs/revenue.md)",
    columns: [{ table: "journal", field: "source" }],
  },
];

/** The version a table first appeared in (1 when it is not listed). */
const TABLE_SINCE: Partial<Record<TableKey, number>> = {
  notifications: 2,
  plans: 2,
  subscriptions: 2,
  promos: 2,
  promoClaims: 2,
  payments: 2,
};

/** Options of `generateUpgradeSql`. */
export interface UpgradeSqlOptions extends NamingOptions {
  dialect: SqlDialect;
  /** The version the store is at now (1 … SCHEMA_VERSION). */
  fromVersion: number;
  /**
   * `generateUpgradeSql`, PostgreSQL: a store distributed on Citus (docs/scaling-out.md): today's
   * DDL is the distributed one, whose calls distribute a table the upgrade adds.
   */
  distributed?: boolean;
}

/**
 * The statements that bring a store at `fromVersion` to `SCHEMA_VERSION`, in order: the columns
 * each later version added to tables the store already has, then the current DDL (idempotent: it
 * creates the tables and indexes the store lacks), then the version row. Applied to a store made
 * by `generateSql` of `fromVersion` (or by `init()` of that release), the result has the same
 * tables, columns, keys, checks and indexes as a fresh install. PostgreSQL's statements can run
 * again after a partial run; MySQL and SQLite have no `ADD COLUMN IF NOT EXISTS`, so run theirs
 * once, in a transaction where the server allows it.
 */
export function upgradeStatements(options: UpgradeSqlOptions): string[] {
  const { dialect, fromVersion } = options;
  if (!Number.isSafeInteger(fromVersion) || fromVersion < 1 || fromVersion > SCHEMA_VERSION) {
    throw new ConfigurationError(
      `fromVersion must be a whole number from 1 to ${SCHEMA_VERSION}, got ${String(fromVersion)}`,
    );
  }
  const naming: NamingOptions = { prefix: options.prefix, schema: options.schema };
  const tables = new Map(sqlTables({ dialect, ...naming }).map((t) => [t.key, t]));
  const out: string[] = [];
  // SQLite: tables rebuilt with today's definition (their later columns already there).
  const rebuilt = new Set<TableKey>();
  /** SQLite: `table` rebuilt as today's, copying its rows as they are after `step` (later columns filled). */
  const rebuild = (table: SqlTable, step: Migration) => {
    const later = new Map(
      MIGRATIONS.filter((m) => m.to > step.to)
        .flatMap((m) => m.columns)
        .filter((a) => a.table === table.key)
        .map((a) => [a.field, a.fill ?? "NULL"]),
    );
    out.push(...rebuildSqlite(table, naming, later));
    rebuilt.add(table.key);
  };
  /** Whether `table` existed at `fromVersion`: one that appeared later is created whole by the DDL. */
  const existed = (table: TableKey) => (TABLE_SINCE[table] ?? 1) <= fromVersion;
  /** A table and column that a step names (a mistake in MIGRATIONS when there is none). */
  const columnOf = (step: Migration, key: TableKey, field: string) => {
    const table = tables.get(key);
    const column = table?.columns.find((c) => c.field === field);
    if (table === undefined || column === undefined)
      throw new Error(`migration to ${step.to}: no column ${key}.${field}`);
    return { table, column };
  };
  for (const step of MIGRATIONS) {
    if (step.to <= fromVersion) continue;
    for (const added of step.columns) {
      if (!existed(added.table) || rebuilt.has(added.table)) continue;
      const { table, column } = columnOf(step, added.table, added.field);
      if (dialect === "sqlite" && added.fill !== undefined && step.to >= 7) {
        // SQLite cannot drop the DEFAULT that fills the rows: the table is rebuilt instead, so that
        // it equals a fresh install (versions before 7 added theirs with ALTER TABLE).
        rebuild(table, { ...step, to: step.to - 1 });
        continue;
      }
      const ifMissing = dialect === "postgres" ? "IF NOT EXISTS " : "";
      const definition = columnSql(dialect, column, false, table.spec.name, added.fill);
      out.push(`ALTER TABLE ${table.qualified} ADD COLUMN ${ifMissing}${definition};`);
      // The fill is for the rows already there; a fresh install's column has no default.
      if (added.fill !== undefined && dialect !== "sqlite") {
        out.push(`ALTER TABLE ${table.qualified} ALTER COLUMN ${quoteIdent(dialect, column.name)} DROP DEFAULT;`);
      }
    }
    for (const changed of step.checks ?? []) {
      if (!existed(changed.table) || rebuilt.has(changed.table)) continue;
      const { table, column } = columnOf(step, changed.table, changed.field);
      if (dialect === "sqlite") rebuild(table, step);
      else out.push(...replaceCheck(dialect, table, column, naming, options.distributed === true));
    }
    if (step.statements !== undefined) out.push(...step.statements(dialect, naming, tables));
    if (dialect === "mysql") {
      for (const added of step.indexes ?? []) {
        if (!existed(added.table)) continue;
        const table = tables.get(added.table);
        const spec = table?.spec.indexes.find((i) => i.name === added.index);
        if (table === undefined || spec === undefined)
          throw new Error(`migration to ${step.to}: no index ${added.table}.${added.index}`);
        const keys = spec.fields.map((f) => quoteIdent(dialect, columnOf(step, added.table, f).column.name));
        out.push(
          `CREATE ${spec.unique === true ? "UNIQUE " : ""}INDEX ${quoteIdent(dialect, `${table.name}_${spec.name}`)} ON ${table.qualified} (${keys.join(", ")});`,
        );
      }
    }
    if (dialect !== "postgres") continue;
    // One statement per table: each ALTER … TYPE rewrites the whole table once.
    const retyped = new Map<SqlTable, Column[]>();
    for (const changed of step.retyped ?? []) {
      if (!existed(changed.table)) continue;
      const { table, column } = columnOf(step, changed.table, changed.field);
      if (column.bytes !== true && column.jsonText !== true)
        throw new Error(`migration to ${step.to}: no bytes or JSON text column ${changed.table}.${changed.field}`);
      retyped.set(table, [...(retyped.get(table) ?? []), column]);
    }
    for (const [table, columns] of retyped) out.push(retype(table, columns, naming));
    for (const changed of step.reindexed ?? []) {
      if (!existed(changed.table)) continue;
      const table = tables.get(changed.table);
      if (table === undefined) throw new Error(`migration to ${step.to}: no table ${changed.table}`);
      out.push(replaceIndex(table, changed, naming));
    }
  }
  return out;
}

/**
 * PostgreSQL: hex text columns as `BYTEA` (each value decoded), JSONB ones as `JSON`, in one
 * `ALTER TABLE` (one rewrite), only while the first of them still has its old type, so that the
 * statement can run again after a partial upgrade (it is one statement: all or nothing).
 */
function retype(table: SqlTable, columns: readonly Column[], naming: NamingOptions): string {
  const schema = naming.schema === undefined ? "current_schema()" : `'${naming.schema}'`;
  const first = columns[0] as Column;
  const alter = columns
    .map((c) => {
      const n = quoteIdent("postgres", c.name);
      return c.bytes === true
        ? `ALTER COLUMN ${n} TYPE BYTEA USING decode(${n}, 'hex')`
        : `ALTER COLUMN ${n} TYPE JSON USING ${n}::json`;
    })
    .join(", ");
  return (
    `DO $$ BEGIN IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = ${schema} ` +
    `AND table_name = '${table.name}' AND column_name = '${first.name}' AND data_type = '${first.bytes === true ? "text" : "jsonb"}') THEN ` +
    `ALTER TABLE ${table.qualified} ${alter}; END IF; END $$;`
  );
}

/**
 * PostgreSQL: while the index `changed` lacks `changed.marker` in its definition, builds today's
 * under a temporary name, drops the old one and gives the new one its name, in one statement (so
 * it can run again, and the key stays unique throughout). The build blocks writes to the table,
 * not reads; the drop and the rename are quick, though inside `init()`'s transaction the table
 * stays locked until it commits.
 */
function replaceIndex(table: SqlTable, changed: ChangedIndex, naming: NamingOptions): string {
  const index = indexesOf(table.spec).find((i) => i.name === changed.index);
  if (index === undefined) throw new Error(`no index ${changed.index} on ${table.spec.name}`);
  const schema = naming.schema === undefined ? "current_schema()" : `'${naming.schema}'`;
  const name = `${table.name}_${changed.index}`;
  const building = `${name}__new`;
  const qualify = (n: string) => pgQualified(naming.schema, n);
  return (
    // The one index's definition, looked up by name: pg_indexes computes the definition of other
    // schemas' indexes too, and fails ("could not open relation with OID") when one of those is
    // dropped meanwhile. No such index: null, nothing to replace.
    `DO $$ BEGIN IF position('${changed.marker}' in coalesce(pg_get_indexdef(to_regclass(format('%I.%I', ${schema}, '${name}'))), ` +
    `'${changed.marker}')) = 0 THEN ` +
    `DROP INDEX IF EXISTS ${qualify(building)}; ${indexSql("postgres", table, index, naming, building)} ` +
    `DROP INDEX ${qualify(name)}; ALTER INDEX ${qualify(building)} RENAME TO ${quoteIdent("postgres", name)}; END IF; END $$;`
  );
}

/**
 * Statements replacing the inline CHECK of `column` with today's. PostgreSQL: the constraint it
 * named `<table>_<column>_check` is dropped and added again (one statement, so it can run again;
 * on Citus, `distributed`, which takes no ADD CONSTRAINT beside another subcommand: two, the drop
 * first, which can run again as a pair);
 * MySQL/MariaDB: `MODIFY COLUMN` with today's definition (the column's check goes with it);
 * SQLite, which cannot change a constraint: the table is rebuilt (created under a new name, rows
 * copied, the old one dropped, the new one renamed; the DDL that follows recreates its indexes).
 */
function replaceCheck(
  dialect: SqlDialect,
  table: SqlTable,
  column: Column,
  naming: NamingOptions,
  distributed: boolean,
): string[] {
  const q = (n: string) => quoteIdent(dialect, n);
  switch (dialect) {
    case "postgres": {
      const name = q(`${table.name}_${column.name}_check`);
      const checks = columnChecks(dialect, column, table.spec.name);
      if (distributed)
        return [
          `ALTER TABLE ${table.qualified} DROP CONSTRAINT IF EXISTS ${name};`,
          ...checks.map((c) => `ALTER TABLE ${table.qualified} ADD CONSTRAINT ${name} CHECK (${c});`),
        ];
      return [
        `ALTER TABLE ${table.qualified} DROP CONSTRAINT IF EXISTS ${name}, ${checks.map((c) => `ADD CONSTRAINT ${name} CHECK (${c})`).join(", ")};`,
      ];
    }
    case "mysql":
      return [`ALTER TABLE ${table.qualified} MODIFY COLUMN ${columnSql(dialect, column, false, table.spec.name)};`];
    case "sqlite":
      return rebuildSqlite(table, naming, new Map());
  }
}

/**
 * SQLite, which can neither change a constraint nor drop a column's DEFAULT: `table` rebuilt as
 * today's (created under a new name, rows copied, the old one dropped, the new one renamed; the
 * DDL that follows recreates its indexes). `later`: columns the old table lacks (added by a later
 * version), each with the SQL literal its rows get.
 */
function rebuildSqlite(table: SqlTable, naming: NamingOptions, later: ReadonlyMap<string, string>): string[] {
  const q = (n: string) => quoteIdent("sqlite", n);
  const rebuilt = `${table.name}__rebuild`;
  const qualifiedRebuilt = pgQualified(naming.schema, rebuilt);
  const columns = table.columns.map((c) => q(c.name)).join(", ");
  const values = table.columns.map((c) => later.get(c.field) ?? q(c.name)).join(", ");
  return [
    `DROP TABLE IF EXISTS ${qualifiedRebuilt};`,
    createTableSql("sqlite", table, qualifiedRebuilt),
    `INSERT INTO ${qualifiedRebuilt} (${columns}) SELECT ${values} FROM ${table.qualified};`,
    `DROP TABLE ${table.qualified};`,
    `ALTER TABLE ${qualifiedRebuilt} RENAME TO ${q(table.name)};`,
  ];
}

/**
 * Why a manager of `dialect`'s store refuses a store at schema `version` (0: it has none; its
 * version row — MongoDB: document — would be in `versionTable`): it is newer than this release, or
 * older while the manager does not migrate (`migrate: false`: the error names the command that
 * upgrades it, with `--prefix` where the store's names have a `prefix` the command must be given).
 * Null when it may go on.
 */
export function versionRefusal(
  dialect: SqlDialect | "mongodb",
  version: number,
  migrate: boolean,
  versionTable: string,
  prefix?: string,
): ConfigurationError | null {
  const store = `[credit-management] [${dialect}]`;
  if (version > SCHEMA_VERSION)
    return new ConfigurationError(
      `${store} the store's schema is version ${version}, newer than this release understands (${SCHEMA_VERSION}): upgrade credit-management`,
    );
  if (version === SCHEMA_VERSION || migrate) return null;
  const command = `npx credit-management schema --dialect ${dialect}${prefix ? ` --prefix ${prefix}` : ""}`;
  if (version > 0)
    return new ConfigurationError(
      `${store} the store's schema is version ${version}, this release needs ${SCHEMA_VERSION}, and this manager does not migrate (migrate: false): apply \`${command} --from-version ${version}\` first`,
    );
  // MongoDB releases before the version document (schema versions 1 to 4) wrote none.
  const older = dialect === "mongodb" ? " (a store an older release made: add --from-version N)" : "";
  const row = dialect === "mongodb" ? "document" : "row";
  return new ConfigurationError(
    `${store} the store has no credit-management schema (no version ${row} in ${versionTable}) and this manager does not migrate (migrate: false): apply \`${command}\` first${older}`,
  );
}

/**
 * An upgrade script from `fromVersion` to `SCHEMA_VERSION` (see `upgradeStatements`), with the
 * version table and row, for teams that apply DDL themselves (`credit-management schema
 * --from-version N`). At the current version it only makes sure the version row is there.
 */
export function generateUpgradeSql(options: UpgradeSqlOptions): string {
  const { dialect, fromVersion } = options;
  const naming: NamingOptions = { prefix: options.prefix, schema: options.schema };
  const steps = MIGRATIONS.filter((m) => m.to > fromVersion);
  const header = [
    `-- credit-management: upgrade of the ${dialect} schema from version ${fromVersion} to ${SCHEMA_VERSION}.`,
    ...steps.map((m) => `-- version ${m.to}: ${m.summary}`),
  ].join("\n");
  const statements = upgradeStatements(options);
  // The DDL of today, without its own version row: that is set last, once everything else is done.
  const distributed = options.distributed === true;
  if (distributed && dialect !== "postgres")
    throw new ConfigurationError("distributed applies to the postgres dialect only (Citus)");
  const ddl = generateSql({ dialect, ...naming, versionRow: false, ...(distributed ? { distributed } : {}) });
  // Citus: the steps may make the rollup's trigger on the (distributed) journal before today's DDL.
  const citus = distributed ? `${CITUS_TRIGGERS}\n\n` : "";
  return `${header}\n\n${citus}${versionTableSql(dialect, naming)}\n\n${statements.map((s) => `${s}\n\n`).join("")}${ddl}\n${versionRowSql(dialect, naming, SCHEMA_VERSION, distributed)}\n`;
}
