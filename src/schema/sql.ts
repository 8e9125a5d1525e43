import type * as z from "zod/mini";
import { rollupDdl, rollupNames } from "./rollup.js";
import { SQLITE_ROLLUP_VERSION, sqliteRollupDdl } from "./sqlite-rollup.js";
import { revenueDdl } from "../modules/revenue/schema-pg.js";
import { citusUnitFunctions } from "./citus-units.js";
import { keyDigestSql } from "./key-digest.js";
import { pgIdent, pgQualified, sqlLit } from "./ident.js";
import { targetVersion } from "./version.js";

export { keyDigestSql } from "./key-digest.js";
import {
  type Column,
  FORGOTTEN_KEY,
  IDENTIFIER_PATTERN,
  type JsonSchemaNode,
  columnsOf,
  modelJsonSchema,
  snakeCase,
} from "./columns.js";
import {
  DEFAULT_AHEAD,
  PARTITIONED_TABLES,
  PARTITION_FIELD,
  PartitionOptions,
  type PartitionInterval,
  defaultPartitionName,
  partitionName,
  rangesAround,
  timestampLiteral,
} from "./partitions.js";
import {
  type IndexCondition,
  type IndexSpec,
  type TableKey,
  type TableSpec,
  type TableSpecs,
  indexesOf,
  tableSpecs,
} from "./tables.js";
import { ConfigurationError } from "../core/errors.js";

/** A SQL database the schema is written for. @public */
export type SqlDialect = "postgres" | "mysql" | "sqlite";
/** The SQL dialects `generateSql` writes. @public */
export const SQL_DIALECTS: readonly SqlDialect[] = ["postgres", "mysql", "sqlite"];

/** Where the tables live. @public */
export interface NamingOptions {
  /** Put in front of every table and index name, e.g. `"credits_"`. Letters, digits and `_`. */
  prefix?: string;
  /** PostgreSQL schema / MySQL database / SQLite attached database holding the tables. */
  schema?: string;
}

/** Options of `generateSql()`: the dialect and the names. @public */
export interface SqlOptions extends NamingOptions {
  /** The database's dialect. */
  dialect: SqlDialect;
  /** The tables to generate; default `tableSpecs` (pass your own to see what a model change does). */
  tables?: TableSpecs;
  /**
   * End with the version table and its row at `SCHEMA_VERSION` (default true), so a store made from
   * this DDL passes the version check of an adapter that does not migrate (`migrate: false`).
   */
  versionRow?: boolean;
  /**
   * PostgreSQL for Citus (docs/scaling-out.md): every table whose rows belong to one account (a
   * NOT NULL `user_id`) gets `user_id` first in its primary key and in each unique index that
   * lacks it, as a table distributed by `user_id` requires, and the Citus calls that distribute
   * them (colocated with the accounts) and make plans, promos and the version row reference
   * tables follow the tables, before any row is written — what `init()` of a store on a Citus
   * coordinator runs. Each call runs only on a table not yet distributed, so the DDL can run
   * again. Default false. Ids stay unique in practice (UUIDs); what changes is that the
   * database enforces it per user.
   */
  distributed?: boolean;
  /**
   * PostgreSQL: the journal and the audit-ledger events as tables `PARTITION BY RANGE (created_at)`
   * (docs/running-for-years.md, "Partitioning on PostgreSQL"), each with a DEFAULT partition and
   * the partitions of the current and the next `ahead` (default 2) intervals at the time of
   * generation. Their primary keys end with `created_at`, and the journal's idempotency-key index
   * is not unique (the account's row lock keeps a key to one entry). Not with `distributed`.
   */
  partitioned?: PartitionInterval | PartitionOptions;
}

export { SCHEMA_VERSION } from "./version.js";

/** The row of the version table that holds our version. */
export const SCHEMA_COMPONENT = "credit-management";

/** A table as an adapter sees it: its quoted name and its columns (inside the package). */
export interface SqlTable {
  /** The table's key in `tableSpecs`. */
  key: TableKey;
  /** The table's definition. */
  spec: TableSpec;
  /** The name with prefix, unquoted. */
  name: string;
  /** Schema-qualified, quoted name for SQL text. */
  qualified: string;
  /** The table's columns. */
  columns: Column[];
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PREFIX = /^[A-Za-z0-9_]*$/;
/** PostgreSQL truncates longer identifiers; MySQL refuses them. */
const MAX_IDENTIFIER = 63;

/** Checks a prefix and schema name; a `ConfigurationError` names the problem. */
export function checkNaming(options: NamingOptions): void {
  if (options.prefix !== undefined && !PREFIX.test(options.prefix)) {
    throw new ConfigurationError(`prefix ${JSON.stringify(options.prefix)} may only contain letters, digits and "_"`);
  }
  if (options.schema !== undefined && !IDENTIFIER.test(options.schema)) {
    throw new ConfigurationError(
      `schema ${JSON.stringify(options.schema)} must start with a letter or "_" and contain only letters, digits and "_"`,
    );
  }
}

export function quoteIdent(dialect: SqlDialect, name: string): string {
  return dialect === "mysql" ? `\`${name.replace(/`/g, "``")}\`` : pgIdent(name);
}

/** The tables of `options`, with their columns read from the models. */
export function sqlTables(options: SqlOptions): SqlTable[] {
  checkNaming(options);
  const specs = options.tables ?? tableSpecs;
  const prefix = options.prefix ?? "";
  return (Object.keys(specs) as TableKey[]).map((key) => {
    const spec = specs[key];
    const name = prefix + spec.name;
    const q = quoteIdent(options.dialect, name);
    return {
      key,
      spec,
      name,
      qualified: options.schema === undefined ? q : `${quoteIdent(options.dialect, options.schema)}.${q}`,
      columns: tableColumns(spec),
    };
  });
}

/**
 * The columns of a table: its model's, and for a table with an idempotency key one more,
 * `forgotten_key` (field `forgottenKey`): where the retention job (`forgetIdempotencyKeys`) moves a
 * key out of the unique index once its window has passed (docs/running-for-years.md). The entry
 * still reads back with its key (`decodeRow` folds the column back into `idempotencyKey`), so its
 * hash verifies; only the lookup by key no longer finds it.
 */
export function tableColumns(spec: TableSpec): Column[] {
  const columns = columnsOf(spec.model);
  /** The column of a field the spec lists under `list`, which must be of `kind` (and `fits`: `is`). */
  const listed = (list: string, field: string, kind: Column["kind"], is: string, fits = true) => {
    const c = columns.find((x) => x.field === field);
    if (c === undefined || c.kind !== kind || !fits)
      throw new Error(`table ${spec.name}: ${list} field "${field}" is not ${is}`);
    return c;
  };
  for (const field of spec.binary ?? []) listed("binary", field, "string", "a string field of its model").bytes = true;
  for (const field of spec.jsonText ?? [])
    listed("jsonText", field, "json", "a JSON field of its model").jsonText = true;
  for (const field of spec.tuples ?? []) {
    const keys = tupleKeys(spec.model, field);
    const c = listed("tuples", field, "json", "an array of objects in its model", keys !== null);
    c.tuple = keys as string[];
  }
  if (spec.idempotencyKey === undefined) return columns;
  const key = columns.find((c) => c.field === spec.idempotencyKey);
  if (key === undefined) throw new Error(`table ${spec.name}: no field "${spec.idempotencyKey}" in its model`);
  columns.push({ ...key, field: FORGOTTEN_KEY, name: snakeCase(FORGOTTEN_KEY), nullable: true });
  return columns;
}

/**
 * The keys of the objects of an array field, in the model's order; null unless the field is an
 * array of objects whose optional keys come last and none of whose keys is nullable.
 */
function tupleKeys(model: z.core.$ZodObject, field: string): string[] | null {
  const items = (modelJsonSchema(model).properties as Record<string, JsonSchemaNode> | undefined)?.[field]?.items as
    JsonSchemaNode | undefined;
  if (items?.type !== "object" || typeof items.properties !== "object" || items.properties === null) return null;
  const keys = Object.keys(items.properties);
  const required = new Set((items.required as string[] | undefined) ?? []);
  const firstOptional = keys.findIndex((k) => !required.has(k));
  if (firstOptional >= 0 && keys.slice(firstOptional).some((k) => required.has(k))) return null;
  const nullable = (n: JsonSchemaNode) =>
    (Array.isArray(n.type) && n.type.includes("null")) ||
    (Array.isArray(n.anyOf) && (n.anyOf as JsonSchemaNode[]).some((b) => b.type === "null"));
  if (Object.values(items.properties as Record<string, JsonSchemaNode>).some(nullable)) return null;
  return keys;
}

/**
 * DDL for every table, its primary key, checks and indexes, in `dialect`. Idempotent
 * (`IF NOT EXISTS`), so it can be applied again after a partial run.
 * @public
 */
export function generateSql(options: SqlOptions): string {
  return generateSqlAt(options, new Date());
}

/** The partitioning of `options`, validated (null: none). */
export function partitioningOf(options: Pick<SqlOptions, "partitioned">): Required<PartitionOptions> | null {
  if (options.partitioned === undefined) return null;
  const o = PartitionOptions.safeParse(
    typeof options.partitioned === "string" ? { interval: options.partitioned } : options.partitioned,
  );
  if (!o.success)
    throw new ConfigurationError(
      `partitioned must be "day", "week" or "month" or { interval, ahead? }: ${o.error.issues.map((i) => i.message).join("; ")}`,
    );
  return { interval: o.data.interval, ahead: o.data.ahead ?? DEFAULT_AHEAD };
}

/**
 * `generateSql`, with the partitions (if `partitioned`) of the intervals around `now`; `now` null:
 * only the DEFAULT partitions (a store's `init()` then makes the others: `ensurePartitions`).
 */
export function generateSqlAt(options: SqlOptions, now: Date | null): string {
  return `${generateStatementsAt(options, now).join("\n\n")}\n`;
}

/**
 * `generateSqlAt` as a list of statements (the first a comment): Citus propagates a DDL statement
 * to the workers with the text it came in, so a store on Citus sends them one at a time.
 */
export function generateStatementsAt(options: SqlOptions, now: Date | null): string[] {
  const { dialect } = options;
  if (options.distributed === true && dialect !== "postgres") {
    throw new ConfigurationError("distributed applies to the postgres dialect only (Citus)");
  }
  const partitioning = partitioningOf(options);
  if (partitioning !== null && dialect !== "postgres")
    throw new ConfigurationError("partitioned applies to the postgres dialect only");
  if (partitioning !== null && options.distributed === true)
    throw new ConfigurationError("partitioned and distributed cannot be combined");
  const distributed = options.distributed === true;
  const tables = sqlTables(
    distributed ? { ...options, tables: distributedSpecs(options.tables ?? tableSpecs) } : options,
  );
  const out: string[] = [
    `-- credit-management: ${DIALECT_NAMES[dialect]} schema, generated from the zod models.\n` +
      `-- Amounts are ${dialect === "sqlite" ? "INTEGER" : "BIGINT"} within ±(2^53 − 1), so they read back as exact JavaScript numbers.` +
      (dialect === "sqlite"
        ? "\n-- Dates are ISO-8601 text in UTC (2030-01-01T00:00:00.000Z), which sorts chronologically."
        : ""),
  ];
  if (dialect === "postgres" && options.schema !== undefined) {
    out.push(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(dialect, options.schema)};`);
  }
  for (const table of tables) {
    out.push(...tableDdl(dialect, table, options, table.qualified, partitioning !== null));
    if (partitioning === null || !PARTITIONED_TABLES.includes(table.key)) continue;
    out.push(partitionSql(table, null, options));
    if (now !== null)
      for (const range of rangesAround(partitioning.interval, now, partitioning.ahead))
        out.push(partitionSql(table, range, options));
  }
  // PostgreSQL: the daily usage rollup's tables (docs/usage.md). On
  // Citus they are distributed with the accounts too (docs/scaling-out.md): their user id has the
  // accounts' type, as colocation requires.
  const journal = tables.find((t) => t.key === "journal");
  const accounts = tables.find((t) => t.key === "accounts");
  const userIdType =
    accounts === undefined
      ? undefined
      : columnParts(dialect, accounts.columns.find((c) => c.field === "userId") as Column, true, "accounts").type;
  if (dialect === "postgres" && journal !== undefined && !distributed)
    out.push(...rollupDdl(options), ...revenueDdl(options));
  // SQLite: its daily usage rollup, from schema version 2 (src/schema/sqlite-rollup.ts).
  if (dialect === "sqlite" && journal !== undefined && targetVersion() >= SQLITE_ROLLUP_VERSION)
    out.push(...sqliteRollupDdl(options));
  if (distributed) {
    // The rollup's tables first, so that they are distributed with the others.
    const rollup = journal === undefined ? [] : rollupDdl(options, undefined, { userIdType: userIdType ?? "TEXT" });
    out.push(
      ...rollup,
      versionTableSql(dialect, options),
      ...citusCalls(tables, options),
      ...citusUnitFunctions(tables, options),
    );
  }
  if (options.versionRow !== false)
    out.push(
      ...(distributed ? [] : [versionTableSql(dialect, options)]),
      versionRowSql(dialect, options, targetVersion(), distributed),
    );
  return out;
}

/** The tables whose every row belongs to one account: a required `userId` field. */
export function perAccountTables(specs: TableSpecs = tableSpecs): TableKey[] {
  return (Object.keys(specs) as TableKey[]).filter((key) => {
    const userId = columnsOf(specs[key].model).find((c) => c.field === "userId");
    return userId !== undefined && !userId.nullable;
  });
}

/**
 * `specs` for a store distributed by user (Citus): `userId` first in the primary key and in the
 * unique indexes of every per-account table that lack it.
 */
export function distributedSpecs(specs: TableSpecs): TableSpecs {
  const perAccount = new Set(perAccountTables(specs));
  const withUser = (fields: readonly string[]) => (fields.includes("userId") ? fields : ["userId", ...fields]);
  const out = { ...specs };
  for (const key of Object.keys(specs) as TableKey[]) {
    const spec = specs[key];
    if (!perAccount.has(key)) continue;
    out[key] = {
      ...spec,
      primaryKey: withUser(spec.primaryKey),
      indexes: spec.indexes.map((i) => (i.unique ? { ...i, fields: withUser(i.fields) } : i)),
    };
  }
  return out;
}

/**
 * The Citus calls that distribute the tables (docs/scaling-out.md): every per-account table and
 * the usage rollup by `user_id`, colocated with the accounts; plans, promos and the version table
 * as reference tables (a copy on every worker); the ledger and what else has no user stays a
 * local table on the coordinator. Each call runs only where the table is not distributed yet
 * (`pg_dist_partition`), so the DDL can run again, and an upgrade distributes a table it adds.
 */
export function citusCalls(tables: readonly SqlTable[], options: NamingOptions): string[] {
  const perAccount = new Set<string>(
    perAccountTables(tables.reduce((m, t) => ({ ...m, [t.key]: t.spec }), {} as TableSpecs)),
  );
  const accounts = tables.find((t) => t.key === "accounts");
  const unless = (qualified: string, call: string) =>
    `SELECT ${call} WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = ${sqlLit(qualified)}::regclass);`;
  const lines = [
    "-- Citus (docs/scaling-out.md): per-account tables distributed by user_id, colocated with the accounts;",
    "-- plans, promos and the version table reference tables; the ledger stays on the coordinator.",
  ];
  const distribute = (qualified: string) =>
    unless(
      qualified,
      accounts === undefined || qualified === accounts.qualified
        ? `create_distributed_table(${sqlLit(qualified)}, 'user_id')`
        : `create_distributed_table(${sqlLit(qualified)}, 'user_id', colocate_with => ${sqlLit(accounts.qualified)})`,
    );
  const ordered = [...tables].sort((a, b) => (a.key === "accounts" ? -1 : b.key === "accounts" ? 1 : 0));
  for (const t of ordered) if (perAccount.has(t.key)) lines.push(distribute(t.qualified));
  if (tables.some((t) => t.key === "journal"))
    lines.push(distribute(rollupNames(options).table), distribute(rollupNames(options).state));
  for (const t of tables) {
    if (perAccount.has(t.key) || t.key === "ledger") continue;
    lines.push(unless(t.qualified, `create_reference_table(${sqlLit(t.qualified)})`));
  }
  const version = versionTableName("postgres", options);
  lines.push(unless(version, `create_reference_table(${sqlLit(version)})`));
  return [lines.join("\n")];
}

/** The version table's name, quoted and qualified. */
export function versionTableName(dialect: SqlDialect, naming: NamingOptions): string {
  const name = quoteIdent(dialect, checkLength(`${naming.prefix ?? ""}schema_version`));
  return naming.schema === undefined ? name : `${quoteIdent(dialect, naming.schema)}.${name}`;
}

/** `CREATE TABLE IF NOT EXISTS` of the version table. */
export function versionTableSql(dialect: SqlDialect, naming: NamingOptions): string {
  const table = versionTableName(dialect, naming);
  switch (dialect) {
    case "postgres":
      return `CREATE TABLE IF NOT EXISTS ${table} (component TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now());`;
    case "mysql":
      return `CREATE TABLE IF NOT EXISTS ${table} (component VARCHAR(64) NOT NULL PRIMARY KEY, version INT NOT NULL, updated_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;`;
    case "sqlite":
      return `CREATE TABLE IF NOT EXISTS ${table} (component TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));`;
  }
}

/** Sets the version row to `version` (an upsert). */
export function versionRowSql(
  dialect: SqlDialect,
  naming: NamingOptions,
  version: number,
  distributed = false,
): string {
  const table = versionTableName(dialect, naming);
  const values = `(component, version) VALUES ('${SCHEMA_COMPONENT}', ${version})`;
  switch (dialect) {
    case "postgres":
      // Citus (a reference table) takes only immutable functions in DO UPDATE: the row's default
      // time, computed before, is the same `now()`.
      return `INSERT INTO ${table} ${values} ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, updated_at = ${distributed ? "EXCLUDED.updated_at" : "now()"};`;
    case "mysql":
      return `INSERT INTO ${table} ${values} ON DUPLICATE KEY UPDATE version = VALUES(version), updated_at = CURRENT_TIMESTAMP(3);`;
    case "sqlite":
      return `INSERT INTO ${table} ${values} ON CONFLICT (component) DO UPDATE SET version = excluded.version, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now');`;
  }
}

const DIALECT_NAMES: Record<SqlDialect, string> = {
  postgres: "PostgreSQL",
  mysql: "MySQL / MariaDB",
  sqlite: "SQLite",
};

/**
 * `CREATE TABLE IF NOT EXISTS` of `table` (columns, primary key, checks; not its indexes, except on
 * MySQL where they are in the table) under the quoted name `as` (default its own): an upgrade
 * that rebuilds a table (SQLite) creates today's under another name first.
 */
export function createTableSql(dialect: SqlDialect, table: SqlTable, as: string = table.qualified): string {
  return tableDdl(dialect, table, {}, as)[0] as string;
}

function tableStatement(
  dialect: SqlDialect,
  table: SqlTable,
  lines: string[],
  as: string,
  partitioned: boolean,
): string {
  const storage = partitioned
    ? ` PARTITION BY RANGE (${quoteIdent(dialect, snakeCase(PARTITION_FIELD))})`
    : dialect === "postgres" && table.spec.fillfactor !== undefined
      ? ` WITH (fillfactor = ${table.spec.fillfactor})`
      : "";
  return `CREATE TABLE IF NOT EXISTS ${as} (\n${lines.join(",\n")}\n)${storage};`;
}

/**
 * `CREATE TABLE IF NOT EXISTS <table>_p<yyyymmdd> PARTITION OF <table> FOR VALUES FROM … TO …`
 * (`range` null: the DEFAULT partition), in the table's schema.
 */
export function partitionSql(table: SqlTable, range: { from: Date; to: Date } | null, naming: NamingOptions): string {
  const name = checkLength(range === null ? defaultPartitionName(table.name) : partitionName(table.name, range.from));
  const qualified = pgQualified(naming.schema, name);
  const bound =
    range === null ? "DEFAULT" : `FOR VALUES FROM (${timestampLiteral(range.from)}) TO (${timestampLiteral(range.to)})`;
  return `CREATE TABLE IF NOT EXISTS ${qualified} PARTITION OF ${table.qualified} ${bound};`;
}

/**
 * A table partitioned by time: `created_at` ends its primary key, and its unique indexes are
 * plain ones (PostgreSQL has no unique index across partitions without the partition key). The
 * journal's idempotency key stays one entry per key all the same: every entry is written under
 * its account's row lock, after a lookup of the key (docs/running-for-years.md, "Partitioning on
 * PostgreSQL").
 */
export function partitionedSpec(spec: TableSpec): TableSpec {
  return {
    ...spec,
    primaryKey: spec.primaryKey.includes(PARTITION_FIELD) ? spec.primaryKey : [...spec.primaryKey, PARTITION_FIELD],
    fillfactor: undefined,
  };
}

function tableDdl(
  dialect: SqlDialect,
  table: SqlTable,
  options: NamingOptions & { distributed?: boolean },
  as: string = table.qualified,
  partitionedStore = false,
): string[] {
  const partitioned = partitionedStore && PARTITIONED_TABLES.includes(table.key);
  if (partitioned) table = { ...table, spec: partitionedSpec(table.spec) };
  const q = (n: string) => quoteIdent(dialect, n);
  const col = (field: string) => columnOf(table, field);
  const indexes = indexesOf(table.spec).map((i) => (partitioned && i.unique === true ? { ...i, unique: false } : i));
  const indexed = new Set(indexes.flatMap((i) => i.fields).concat(table.spec.primaryKey));
  const lines = table.columns.map((c) => `  ${columnSql(dialect, c, indexed.has(c.field), table.spec.name)}`);
  const pkName = checkLength(`${table.name}_pkey`);
  lines.push(`  CONSTRAINT ${q(pkName)} PRIMARY KEY (${table.spec.primaryKey.map((f) => q(col(f).name)).join(", ")})`);

  const statements: string[] = [];
  if (dialect === "mysql") {
    // MySQL has neither partial indexes nor CREATE INDEX IF NOT EXISTS: keys go in the table.
    for (const index of mysqlIndexes(indexes)) {
      const name = checkLength(`${table.name}_${index.name}`);
      lines.push(
        `  ${index.unique ? "UNIQUE KEY" : "KEY"} ${q(name)} (${index.fields.map((f) => q(col(f).name)).join(", ")})`,
      );
    }
    statements.push(
      `CREATE TABLE IF NOT EXISTS ${as} (\n${lines.join(",\n")}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;`,
    );
    return statements;
  }
  statements.push(tableStatement(dialect, table, lines, as, partitioned));
  for (const index of indexes) statements.push(indexSql(dialect, table, index, options));
  return statements;
}

/** The column of `table` that holds `field`. */
function columnOf(table: SqlTable, field: string): Column {
  const c = table.columns.find((x) => x.field === field);
  if (c === undefined) throw new Error(`table ${table.spec.name}: no field "${field}" in its model`);
  return c;
}

/**
 * `CREATE [UNIQUE] INDEX IF NOT EXISTS` of one index of `table` (not MySQL, whose keys are in its
 * table), named `<table>_<index name>`, or `as` (an upgrade builds today's index under another
 * name first).
 */
export function indexSql(
  dialect: "postgres" | "sqlite",
  table: SqlTable,
  index: IndexSpec,
  options: NamingOptions & { distributed?: boolean },
  as?: string,
): string {
  const q = (n: string) => quoteIdent(dialect, n);
  const col = (field: string) => columnOf(table, field);
  const name = checkLength(as ?? `${table.name}_${index.name}`);
  // SQLite puts the schema on the index name, PostgreSQL on the table only.
  const indexName = dialect === "sqlite" && options.schema !== undefined ? `${q(options.schema)}.${q(name)}` : q(name);
  const on = dialect === "sqlite" ? q(table.name) : table.qualified;
  const keys =
    dialect === "postgres" && index.digest === true
      ? // Citus needs the distribution column itself in a unique index.
        `${options.distributed === true ? `${q(col("userId").name)}, ` : ""}(${keyDigestSql(index.fields.map((f) => q(col(f).name)))})`
      : index.fields.map((f) => q(col(f).name)).join(", ");
  const where =
    index.where === undefined
      ? ""
      : ` WHERE ${index.where.map((w) => condition(dialect, col(w.field), w)).join(" AND ")}`;
  const using = dialect === "postgres" && index.brin === true ? "USING brin " : "";
  return `CREATE ${index.unique ? "UNIQUE " : ""}INDEX IF NOT EXISTS ${indexName} ON ${on} ${using}(${keys})${where};`;
}

/**
 * Partial indexes become full ones, but for those only worth having partial (`partialOnly`); a
 * non-unique one that is a prefix of another is dropped.
 */
function mysqlIndexes(indexes: IndexSpec[]): IndexSpec[] {
  return indexes.filter(
    (index) =>
      index.partialOnly !== true &&
      (index.unique === true ||
        !indexes.some(
          (other) =>
            other !== index &&
            other.fields.length > index.fields.length &&
            index.fields.every((f, i) => other.fields[i] === f),
        )),
  );
}

function checkLength(name: string): string {
  if (name.length > MAX_IDENTIFIER) {
    throw new ConfigurationError(
      `identifier "${name}" is longer than ${MAX_IDENTIFIER} characters: use a shorter prefix`,
    );
  }
  return name;
}

function condition(dialect: SqlDialect, column: Column, c: IndexCondition): string {
  const name = quoteIdent(dialect, column.name);
  switch (c.op) {
    case "isNull":
      return `${name} IS NULL`;
    case "notNull":
      return `${name} IS NOT NULL`;
    case "gt":
      return `${name} > ${c.value}`;
    case "eq":
      return `${name} = ${sqlLit(c.value)}`;
  }
}

/**
 * One column's definition. `fill`: a DEFAULT for the rows a table already has when the column is
 * added to it (an upgrade); a fresh table's columns have none.
 */
export function columnSql(
  dialect: SqlDialect,
  c: Column,
  indexed: boolean,
  table: string,
  fill?: string,
  inlineChecks = true,
): string {
  const { type, checks } = columnParts(dialect, c, indexed, table);
  const parts = [quoteIdent(dialect, c.name), type];
  if (!c.nullable) parts.push("NOT NULL");
  if (fill !== undefined) parts.push(`DEFAULT ${fill}`);
  if (inlineChecks) for (const check of checks) parts.push(`CHECK (${check})`);
  return parts.join(" ");
}

/** The CHECK expressions of one column (what `columnSql` puts inline), e.g. an enum's `IN (…)`. */
export function columnChecks(dialect: SqlDialect, c: Column, table: string): string[] {
  return columnParts(dialect, c, false, table).checks;
}

/**
 * The CHECK of an identifier column (`Column.identifier`, `IDENTIFIER_PATTERN`): PostgreSQL matches
 * the pattern; SQLite, which has no regular expressions, says the same with GLOB; MySQL/MariaDB,
 * whose regular expressions differ between them, bound the length.
 */
function identifierCheck(dialect: SqlDialect, name: string): string {
  switch (dialect) {
    case "postgres":
      return `${name} ~ '${IDENTIFIER_PATTERN}'`;
    case "sqlite":
      return `length(${name}) BETWEEN 1 AND 64 AND ${name} GLOB '[a-z]*' AND ${name} NOT GLOB '*[^a-z0-9_]*'`;
    case "mysql":
      return `CHAR_LENGTH(${name}) BETWEEN 1 AND 64`;
  }
}

function columnParts(
  dialect: SqlDialect,
  c: Column,
  indexed: boolean,
  table: string,
): { type: string; checks: string[] } {
  const name = quoteIdent(dialect, c.name);
  const checks: string[] = [];
  let type: string;
  switch (c.kind) {
    case "string":
      if (c.bytes === true && dialect === "postgres") {
        type = "BYTEA";
      } else if (c.identifier === true) {
        type = dialect === "mysql" ? "VARCHAR(64)" : dialect === "postgres" ? `TEXT COLLATE "C"` : "TEXT";
        checks.push(identifierCheck(dialect, name));
      } else if (dialect === "mysql") {
        if (c.maxLength === undefined && indexed) {
          throw new Error(`${table}.${c.field} is a key but its model sets no maximum length (MySQL needs one)`);
        }
        type = c.maxLength === undefined ? "LONGTEXT" : `VARCHAR(${c.maxLength})`;
      } else if (dialect === "postgres") {
        // "C" collation: byte order, the order JavaScript compares ids in; and no locale surprises.
        type = `${c.maxLength === undefined ? "TEXT" : `VARCHAR(${c.maxLength})`} COLLATE "C"`;
      } else {
        type = "TEXT";
      }
      break;
    case "enum": {
      const values = c.values ?? [];
      type =
        dialect === "mysql"
          ? `VARCHAR(${Math.max(1, ...values.map((v) => v.length))})`
          : dialect === "postgres"
            ? `TEXT COLLATE "C"`
            : "TEXT";
      checks.push(`${name} IN (${values.map(sqlLit).join(", ")})`);
      break;
    }
    case "integer":
      type = dialect === "sqlite" ? "INTEGER" : "BIGINT";
      if (c.minimum !== undefined && c.maximum !== undefined)
        checks.push(`${name} BETWEEN ${c.minimum} AND ${c.maximum}`);
      else if (c.minimum !== undefined) checks.push(`${name} >= ${c.minimum}`);
      else if (c.maximum !== undefined) checks.push(`${name} <= ${c.maximum}`);
      break;
    case "number":
      type = dialect === "postgres" ? "DOUBLE PRECISION" : dialect === "mysql" ? "DOUBLE" : "REAL";
      break;
    case "boolean":
      type = dialect === "sqlite" ? "INTEGER" : "BOOLEAN";
      if (dialect === "sqlite") checks.push(`${name} IN (0, 1)`);
      break;
    case "datetime":
      // SQLite: ISO-8601 text in UTC ("2030-01-01T00:00:00.000Z"), which sorts chronologically.
      type = dialect === "postgres" ? "TIMESTAMPTZ" : dialect === "mysql" ? "DATETIME(3)" : "TEXT";
      break;
    case "json":
      type = dialect === "postgres" ? (c.jsonText === true ? "JSON" : "JSONB") : dialect === "mysql" ? "JSON" : "TEXT";
      if (dialect === "sqlite") checks.push(`json_valid(${name})`);
      break;
  }
  return { type, checks };
}
