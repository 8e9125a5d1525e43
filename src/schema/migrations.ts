import {
  type NamingOptions,
  type SqlDialect,
  columnChecks,
  columnSql,
  createTableSql,
  generateSql,
  indexSql,
  quoteIdent,
  sqlTables,
  versionRowSql,
  versionTableSql,
} from "./sql.js";
import type { Column } from "./columns.js";
import { pgQualified } from "./ident.js";
import type { SqlTable } from "./sql.js";
import { type TableKey, indexesOf } from "./tables.js";
import { nextVersion, targetVersion } from "./version.js";
import { ConfigurationError } from "../core/errors.js";
import { V1_TAKE_BACK } from "../core/domain/usage.js";
import { sqlLit } from "./ident.js";
import { rollupNames, rollupShortfallStep } from "./rollup.js";
import { revenueResetSql } from "../modules/revenue/schema-pg.js";
import { PG_USAGE, SQLITE_USAGE, sqlTest } from "./usage-sql.js";

/** A column added to a table that existed before. */
export interface AddedColumn {
  table: TableKey;
  /** The model's field (camelCase). */
  field: string;
  /** SQL literal filling existing rows of a NOT NULL column; dropped again afterwards. */
  fill?: string;
}

/** A column of a table that existed before. */
export interface ChangedColumn {
  table: TableKey;
  /** The model's field (camelCase). */
  field: string;
}

/**
 * An index of a table that existed before whose PostgreSQL definition changed (it keeps its name):
 * replaced by today's while it still has its old definition. The other dialects keep the index
 * they had.
 */
export interface ChangedIndex {
  table: TableKey;
  /** `IndexSpec.name`. */
  index: string;
  /** A piece of today's definition (`pg_get_indexdef`) that the old one lacks. */
  marker: string;
}

export interface Migration {
  /** The version this step reaches. */
  to: number;
  summary: string;
  /** Tables this version introduced: created whole by the DDL, so no earlier step's columns apply to them. */
  tables?: readonly TableKey[];
  columns: readonly AddedColumn[];
  /** Columns whose CHECK (an enum's allowed values, an identifier's shape) is replaced by today's. */
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
   * Statements of their own, run after the step's columns (a table filled from the rows there are,
   * a trigger). Given the dialect, the naming and the tables; none for a dialect that answers an
   * empty list. They must be able to run again.
   */
  statements?: (dialect: SqlDialect, naming: NamingOptions, tables: ReadonlyMap<TableKey, SqlTable>) => string[];
}

/**
 * The upgrade steps of the schema, one per version after the first, in order (docs/schema-upgrades.md):
 * what each version changed in tables that existed before it. Tables a version introduced need no
 * step beyond their names in `tables`: the DDL creates them whole (`CREATE TABLE IF NOT EXISTS`),
 * and so for indexes. The first release's schema is version 1.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    to: 2,
    summary:
      "journal entries record what a take-back is (take_back, set from version 1's rule on the entries there are), the credits served and not paid (shortfall, set from version 1's metadata on the entries there are), the hash version, the key id of a keyed chain, an addition's scope and its start; grants record their start and whether they are upcoming; entries of type start; " +
      "accounts, grants, holds and entries record their unit (null: the default unit, which every row a version 1 store holds is in); " +
      "accounts record the key id of their latest entry (null on the rows there are: version 1 signed no entry with a key); " +
      "grants record the allowance they were drawn out in (null on the rows there are); " +
      "revenue reports close periods (period_closes, period_close_marks: new tables); " +
      "grant sources and notification types take any lower-case identifier; " +
      "PostgreSQL's daily usage rollup keys its rows by unit too (the rows there are: the default unit) and sums the credits served and not paid (shortfall, on the rows there are from the entries they hold)",
    // Closed periods of revenue reports (docs/revenue.md, "Closing a month"): new tables.
    tables: ["periodCloses", "periodCloseMarks"],
    // hash_version stays NULL on the entries there are: their hash is version 1's (docs/concepts.md).
    columns: [
      { table: "journal", field: "takeBack" },
      // The payment an entry credits or takes back from (docs/revenue.md, "Payments"): set below
      // on the entries a version 1 store holds from what version 1 wrote.
      { table: "journal", field: "paymentId" },
      // Credits served and not paid (docs/metering.md, "Served and not paid"): set below on the
      // entries a version 1 store holds from what version 1 wrote.
      { table: "journal", field: "shortfall" },
      { table: "journal", field: "hashVersion" },
      { table: "journal", field: "keyId" },
      { table: "journal", field: "scope" },
      // Grants that start later (docs/units.md): NULL on the rows there are — every one started.
      { table: "journal", field: "effectiveAt" },
      { table: "grants", field: "effectiveAt" },
      { table: "grants", field: "upcoming" },
      // Units (docs/units.md): NULL on the rows there are, the default unit.
      { table: "accounts", field: "units" },
      { table: "grants", field: "unit" },
      { table: "reservations", field: "unit" },
      { table: "journal", field: "unit" },
      // The allowance a grant was drawn out in (docs/customer-state.md, "What was granted"): NULL on
      // the rows there are, which no allowance counted (version 1 kept none).
      { table: "grants", field: "drawnOutIn" },
      // The key id of the account's latest entry (docs/concepts.md, "A keyed chain"): NULL on the
      // rows there are, whose entries version 1 wrote without a key.
      { table: "accounts", field: "lastKeyId" },
    ],
    // Grant sources and notification types: any lower-case identifier, so that a module's own
    // are stored (docs/modules.md), instead of version 1's lists.
    checks: [
      { table: "journal", field: "type" },
      { table: "grants", field: "source" },
      { table: "journal", field: "source" },
      { table: "notifications", field: "type" },
    ],
    statements: (dialect, naming, tables) => [
      v1TakeBacks(dialect, tables.get("journal") as SqlTable),
      ...v1PaymentLinks(dialect, tables.get("journal") as SqlTable, tables.get("payments") as SqlTable),
      ...v1RollupUnits(dialect, naming),
      // Before the rollup's shortfall, which reads the column.
      v1Shortfalls(dialect, tables.get("journal") as SqlTable),
      ...(dialect === "postgres" ? rollupShortfallStep(naming, (tables.get("journal") as SqlTable).qualified) : []),
      // PostgreSQL's revenue summary tied refunds to payments by the entries' metadata: emptied,
      // the next report fills it again from the journal (docs/revenue.md, "How it is computed").
      ...(dialect === "postgres" ? [revenueResetSql(naming)] : []),
    ],
  },
];

/**
 * The version 2 step's backfill: `take_back` of the entries a version 1 store holds, by the rule
 * version 1 read them with (`V1_TAKE_BACK`, src/core/domain/usage.ts), once. Only entries that have
 * none yet: it can run again.
 */
function v1TakeBacks(dialect: SqlDialect, journal: SqlTable): string {
  const q = (n: string) => quoteIdent(dialect, n);
  if (dialect === "mysql") {
    const is = (key: string, types: string) => `JSON_TYPE(JSON_EXTRACT(${q("metadata")}, '$."${key}"')) IN (${types})`;
    const [clawback, refund] = V1_TAKE_BACK;
    return (
      `UPDATE ${journal.qualified} SET ${q("take_back")} = CASE WHEN LEFT(${q("description")}, 12) = BINARY 'Lost dispute' ` +
      `THEN '${clawback?.then ?? "clawback"}' ELSE '${refund?.then ?? "refund"}' END WHERE ${q("take_back")} IS NULL AND ` +
      `${q("type")} IN ('deduct', 'commit_reserved', 'void') AND ${is("paymentId", "'STRING'")} AND ` +
      `${is("refundedAmount", "'INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL'")};`
    );
  }
  const d = dialect === "postgres" ? PG_USAGE : SQLITE_USAGE;
  const all = (c: (typeof V1_TAKE_BACK)[number]) => c.when.map((t) => sqlTest(d, t, "j")).join(" AND ");
  const cases = V1_TAKE_BACK.map((c) => `WHEN ${all(c)} THEN ${sqlLit(c.then)}`).join(" ");
  const last = V1_TAKE_BACK[V1_TAKE_BACK.length - 1] as (typeof V1_TAKE_BACK)[number];
  return (
    `UPDATE ${journal.qualified} AS j SET ${q("take_back")} = CASE ${cases} END ` +
    `WHERE j.${q("take_back")} IS NULL AND ${all(last)};`
  );
}

/**
 * The version 2 step's backfill of `shortfall` (docs/metering.md, "Served and not paid"), once, from
 * what version 1 wrote: the metadata `shortfall` of a deduction or capture, where it is a whole
 * number of at least 1 (what version 1's overdraft cut recorded, and what its reports read). Only
 * entries that have none yet: it can run again.
 */
function v1Shortfalls(dialect: SqlDialect, journal: SqlTable): string {
  const q = (n: string) => quoteIdent(dialect, n);
  const [column, type, metadata] = [q("shortfall"), q("type"), q("metadata")];
  const where = `${column} IS NULL AND ${type} IN ('deduct', 'commit_reserved')`;
  const max = Number.MAX_SAFE_INTEGER;
  if (dialect === "mysql") {
    const v = `JSON_EXTRACT(${metadata}, '$."shortfall"')`;
    return (
      `UPDATE ${journal.qualified} SET ${column} = CAST(${v} AS SIGNED) WHERE ${where} AND ` +
      `JSON_TYPE(${v}) IN ('INTEGER', 'UNSIGNED INTEGER') AND ${v} BETWEEN 1 AND ${max};`
    );
  }
  if (dialect === "postgres") {
    const v = `(${metadata} -> 'shortfall')`;
    const n = `${v}::text::numeric`;
    return (
      `UPDATE ${journal.qualified} SET ${column} = ${n}::bigint WHERE ${where} AND jsonb_typeof(${v}) = 'number' ` +
      `AND ${n} BETWEEN 1 AND ${max} AND ${n} = trunc(${n});`
    );
  }
  const v = `json_extract(${metadata}, '$."shortfall"')`;
  return (
    `UPDATE ${journal.qualified} SET ${column} = ${v} WHERE ${where} AND ` +
    `json_type(${metadata}, '$."shortfall"') = 'integer' AND ${v} BETWEEN 1 AND ${max};`
  );
}

/**
 * The version 2 step's backfill of `payment_id` (docs/schema-upgrades.md, "The versions"), once,
 * from what version 1 wrote: an addition that credited a payment is the one the payment's row names
 * (`payments.credit_entry_id`, written in the same unit of work, never by a caller); a take-back
 * (its `take_back` set just before, by version 1's rule) names its payment in its metadata
 * (`paymentId`), as version 1 read it: linked where the account has a payment of that id. Only
 * entries that have none yet: it can run again.
 */
function v1PaymentLinks(dialect: SqlDialect, journal: SqlTable, payments: SqlTable): string[] {
  const q = (n: string) => quoteIdent(dialect, n);
  const [id, user, link, type, entry] = ["id", "user_id", "payment_id", "type", "credit_entry_id"].map(q);
  const metadata = `j.${q("metadata")}`;
  /** The metadata's `paymentId` when it is text, else NULL. */
  const named =
    dialect === "mysql"
      ? `JSON_UNQUOTE(JSON_EXTRACT(${metadata}, '$."paymentId"'))`
      : (dialect === "postgres" ? PG_USAGE : SQLITE_USAGE).str({ doc: metadata, path: ["paymentId"] });
  const takeBack = `j.${link} IS NULL AND j.${q("take_back")} IS NOT NULL`;
  if (dialect === "mysql")
    return [
      `UPDATE ${journal.qualified} AS j JOIN ${payments.qualified} AS p ON p.${user} = j.${user} AND p.${entry} = j.${id} ` +
        `SET j.${link} = p.${id} WHERE j.${link} IS NULL AND j.${type} = 'add';`,
      `UPDATE ${journal.qualified} AS j JOIN ${payments.qualified} AS p ON p.${user} = j.${user} AND p.${id} = ${named} ` +
        `SET j.${link} = p.${id} WHERE ${takeBack};`,
    ];
  if (dialect === "postgres")
    return [
      `UPDATE ${journal.qualified} AS j SET ${link} = p.${id} FROM ${payments.qualified} AS p ` +
        `WHERE j.${link} IS NULL AND j.${type} = 'add' AND p.${user} = j.${user} AND p.${entry} = j.${id};`,
      `UPDATE ${journal.qualified} AS j SET ${link} = p.${id} FROM ${payments.qualified} AS p ` +
        `WHERE ${takeBack} AND p.${user} = j.${user} AND p.${id} = ${named};`,
    ];
  const paymentOf = (on: string) => `FROM ${payments.qualified} AS p WHERE p.${user} = j.${user} AND p.${on}`;
  const set = (on: string, where: string) =>
    `UPDATE ${journal.qualified} AS j SET ${link} = (SELECT p.${id} ${paymentOf(on)}) ` +
    `WHERE ${where} AND EXISTS (SELECT 1 ${paymentOf(on)});`;
  return [set(`${entry} = j.${id}`, `j.${link} IS NULL AND j.${type} = 'add'`), set(`${id} = ${named}`, takeBack)];
}

/**
 * The version 2 step of PostgreSQL's daily usage rollup (docs/usage.md, "The daily rollup"): its
 * rows keyed by unit too (docs/units.md), those there are in the default unit (''). It can run
 * again: the key is replaced only while it lacks the unit.
 */
function v1RollupUnits(dialect: SqlDialect, naming: NamingOptions): string[] {
  if (dialect !== "postgres") return [];
  const table = rollupNames(naming).table;
  return [
    `ALTER TABLE IF EXISTS ${table} ADD COLUMN IF NOT EXISTS "unit" TEXT NOT NULL DEFAULT '';`,
    `DO $cm$ DECLARE k text; BEGIN SELECT c.conname INTO k FROM pg_constraint c WHERE c.conrelid = to_regclass(${sqlLit(table)}) ` +
      `AND c.contype = 'p' AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.conrelid ` +
      `AND a.attnum = ANY (c.conkey) AND a.attname = 'unit'); ` +
      `IF k IS NOT NULL THEN EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I, ADD PRIMARY KEY ("user_id", "day", "kind", "unit")', ` +
      `${sqlLit(table)}, k); END IF; END $cm$;`,
  ];
}

/** The steps a store is brought through: the shipped ones, then a test's next version's (./version.ts). */
function steps(): readonly Migration[] {
  const next = nextVersion();
  return next === null ? MIGRATIONS : [...MIGRATIONS, ...next.sql];
}

/** Options of `generateUpgradeSql`. @public */
export interface UpgradeSqlOptions extends NamingOptions {
  /** The database's dialect. */
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
 * The statements that bring a store at `fromVersion` to `SCHEMA_VERSION`, in order: what each
 * later version changed in tables the store already has (`MIGRATIONS`). The current DDL follows
 * them (idempotent: it creates the tables and indexes the store lacks), then the version row
 * (`generateUpgradeSql`, `init()`). Applied to a store made by `generateSql` of `fromVersion` (or
 * by `init()` of that release), the result has the same tables, columns, keys, checks and indexes
 * as a fresh install. PostgreSQL's statements can run
 * again after a partial run; MySQL and SQLite have no `ADD COLUMN IF NOT EXISTS`, so run theirs
 * once, in a transaction where the server allows it.
 */
export function upgradeStatements(options: UpgradeSqlOptions): string[] {
  const { dialect, fromVersion } = options;
  const target = targetVersion();
  if (!Number.isSafeInteger(fromVersion) || fromVersion < 1 || fromVersion > target) {
    throw new ConfigurationError(`fromVersion must be a whole number from 1 to ${target}, got ${String(fromVersion)}`);
  }
  const pending = steps().filter((m) => m.to > fromVersion);
  const naming: NamingOptions = { prefix: options.prefix, schema: options.schema };
  const tables = new Map(sqlTables({ dialect, ...naming }).map((t) => [t.key, t]));
  const out: string[] = [];
  // SQLite: tables rebuilt with today's definition (their later columns already there).
  const rebuilt = new Set<TableKey>();
  /** SQLite: `table` rebuilt as today's, copying its rows as they are after `step` (later columns filled). */
  const rebuild = (table: SqlTable, step: Migration) => {
    const later = new Map(
      pending
        .filter((m) => m.to > step.to)
        .flatMap((m) => m.columns)
        .filter((a) => a.table === table.key)
        .map((a) => [a.field, a.fill ?? "NULL"]),
    );
    out.push(...rebuildSqlite(table, naming, later));
    rebuilt.add(table.key);
  };
  /** Whether `table` existed at `fromVersion`: one that appeared later is created whole by the DDL. */
  const existed = (table: TableKey) => !pending.some((m) => m.tables?.includes(table) === true);
  /** A table and column that a step names (a mistake in MIGRATIONS when there is none). */
  const columnOf = (step: Migration, key: TableKey, field: string) => {
    const table = tables.get(key);
    const column = table?.columns.find((c) => c.field === field);
    if (table === undefined || column === undefined)
      throw new Error(`migration to ${step.to}: no column ${key}.${field}`);
    return { table, column };
  };
  for (const step of pending) {
    for (const added of step.columns) {
      if (!existed(added.table) || rebuilt.has(added.table)) continue;
      const { table, column } = columnOf(step, added.table, added.field);
      if (dialect === "sqlite" && added.fill !== undefined) {
        // SQLite cannot drop the DEFAULT that fills the rows: the table is rebuilt instead, so that
        // it equals a fresh install.
        rebuild(table, { ...step, to: step.to - 1 });
        continue;
      }
      const ifMissing = dialect === "postgres" ? "IF NOT EXISTS " : "";
      // Citus adds no column with a constraint in one command (its constraints need names): the
      // column, then its checks under the name PostgreSQL gives an inline one (`replaceCheck`).
      const split =
        dialect === "postgres" &&
        options.distributed === true &&
        columnChecks(dialect, column, table.spec.name).length > 0;
      const definition = columnSql(dialect, column, false, table.spec.name, added.fill, !split);
      out.push(`ALTER TABLE ${table.qualified} ADD COLUMN ${ifMissing}${definition};`);
      if (split) out.push(...replaceCheck(dialect, table, column, naming, true));
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
        `ALTER TABLE ${table.qualified} ${[`DROP CONSTRAINT IF EXISTS ${name}`, ...checks.map((c) => `ADD CONSTRAINT ${name} CHECK (${c})`)].join(", ")};`,
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
  const target = targetVersion();
  if (version > target)
    return new ConfigurationError(
      `${store} the store's schema is version ${version}, newer than this release understands (${target}): upgrade credit-management`,
    );
  if (version === target || migrate) return null;
  const command = `npx credit-management schema --dialect ${dialect}${prefix ? ` --prefix ${prefix}` : ""}`;
  if (version > 0)
    return new ConfigurationError(
      `${store} the store's schema is version ${version}, this release needs ${target}, and this manager does not migrate (migrate: false): apply \`${command} --from-version ${version}\` first`,
    );
  const row = dialect === "mongodb" ? "document" : "row";
  return new ConfigurationError(
    `${store} the store has no credit-management schema (no version ${row} in ${versionTable}) and this manager does not migrate (migrate: false): apply \`${command}\` first`,
  );
}

/**
 * An upgrade script from `fromVersion` to `SCHEMA_VERSION` (see `upgradeStatements`), with the
 * version table and row, for teams that apply DDL themselves (`credit-management schema
 * --from-version N`). At the current version it only makes sure the version row is there.
 * @public
 */
export function generateUpgradeSql(options: UpgradeSqlOptions): string {
  const { dialect, fromVersion } = options;
  const naming: NamingOptions = { prefix: options.prefix, schema: options.schema };
  const target = targetVersion();
  const header = [
    `-- credit-management: upgrade of the ${dialect} schema from version ${fromVersion} to ${target}.`,
    ...steps()
      .filter((m) => m.to > fromVersion)
      .map((m) => `-- version ${m.to}: ${m.summary}`),
  ].join("\n");
  const statements = upgradeStatements(options);
  // The DDL of today, without its own version row: that is set last, once everything else is done.
  const distributed = options.distributed === true;
  if (distributed && dialect !== "postgres")
    throw new ConfigurationError("distributed applies to the postgres dialect only (Citus)");
  const ddl = generateSql({ dialect, ...naming, versionRow: false, ...(distributed ? { distributed } : {}) });
  return `${header}\n\n${versionTableSql(dialect, naming)}\n\n${statements.map((s) => `${s}\n\n`).join("")}${ddl}\n${versionRowSql(dialect, naming, target, distributed)}\n`;
}
