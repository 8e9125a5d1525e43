import { createHash } from "node:crypto";
import type { Column } from "../../schema/columns.js";
import { type SqlTable, generateSql, quoteIdent, sqlTables } from "../../schema/sql.js";
import type { TableKey } from "../../schema/tables.js";

/** Bump when the DDL changes; `init()` migrates older stores (see `migrations`). */
export const SCHEMA_VERSION = 1;

const q = (name: string) => quoteIdent("postgres", name);

/** A statement prepared once per connection and run by name. */
export interface Statement {
  name: string;
  text: string;
  /** Parameter types for SQL-level `PREPARE name(types) AS text`. */
  types: readonly string[];
}

function statement(text: string, types: readonly string[]): Statement {
  const name = `cm_${createHash("sha256").update(types.join(",")).update("\n").update(text).digest("hex").slice(0, 20)}`;
  return { name, text, types };
}

export interface Tables {
  accounts: SqlTable;
  grants: SqlTable;
  reservations: SqlTable;
  journal: SqlTable;
  ledger: SqlTable;
}

/** The SQL of one store configuration (schema + prefix), built once. */
export class PostgresSql {
  readonly tables: Tables;
  readonly ddl: string;
  readonly versionTable: string;
  readonly lockKey: string;
  readonly createSchema: string | null;

  /** Locks the account row (the unit of work's serialisation point) and returns it. */
  readonly lock: Statement;
  /** Open grants, active holds and the idempotent entry, read after the lock (fresh snapshot). */
  readonly state: Statement;
  readonly saveUpdate: Statement;
  readonly saveInsert: Statement;

  constructor(options: { schema?: string; prefix?: string }) {
    const list = sqlTables({ dialect: "postgres", schema: options.schema, prefix: options.prefix });
    const byKey = Object.fromEntries(list.map((t) => [t.key, t])) as Record<TableKey, SqlTable>;
    this.tables = byKey;
    this.ddl = generateSql({ dialect: "postgres", schema: options.schema, prefix: options.prefix });
    const versionName = `${options.prefix ?? ""}schema_version`;
    this.versionTable = options.schema === undefined ? q(versionName) : `${q(options.schema)}.${q(versionName)}`;
    this.lockKey = `credit-management:${options.schema ?? ""}:${options.prefix ?? ""}`;
    this.createSchema = options.schema === undefined ? null : `CREATE SCHEMA IF NOT EXISTS ${q(options.schema)}`;

    const { accounts, grants, reservations, journal } = byKey;
    this.lock = statement(`SELECT ${cols(accounts)} FROM ${accounts.qualified} WHERE user_id = $1 FOR UPDATE`, ["text"]);
    this.state = statement(
      `SELECT (SELECT json_agg(g) FROM ${grants.qualified} g WHERE g.user_id = $1 AND g.remaining > 0 AND g.closed_at IS NULL)::text AS grants, ` +
        `(SELECT json_agg(r) FROM ${reservations.qualified} r WHERE r.user_id = $1 AND r.status = 'active')::text AS holds, ` +
        `(SELECT row_to_json(j) FROM ${journal.qualified} j WHERE j.user_id = $1 AND j.idempotency_key = $2)::text AS idem`,
      ["text", "text"],
    );
    const accountUpdate =
      `UPDATE ${accounts.qualified} t SET ${assign(accounts, ["user_id", "created_at"])} ` +
      `FROM json_populate_record(NULL::${accounts.qualified}, $1->'a') x ` +
      `WHERE t.user_id = x.user_id AND t.seq = ($1->>'prev')::bigint RETURNING 1`;
    const accountInsert =
      `INSERT INTO ${accounts.qualified} (${cols(accounts)}) ` +
      `SELECT ${cols(accounts)} FROM json_populate_record(NULL::${accounts.qualified}, $1->'a') RETURNING 1`;
    this.saveUpdate = statement(saveText(byKey, accountUpdate), ["json"]);
    this.saveInsert = statement(saveText(byKey, accountInsert), ["json"]);
  }

  /** `SELECT <columns> FROM <table>` for plain reads. */
  select(key: TableKey): string {
    const t = this.tables[key];
    return `SELECT ${cols(t)} FROM ${t.qualified}`;
  }

  columns(key: TableKey): Column[] {
    return this.tables[key].columns;
  }
}

function cols(t: SqlTable): string {
  return t.columns.map((c) => q(c.name)).join(", ");
}

function assign(t: SqlTable, except: readonly string[]): string {
  return t.columns
    .filter((c) => !except.includes(c.name) && !t.spec.primaryKey.includes(c.field))
    .map((c) => `${q(c.name)} = x.${q(c.name)}`)
    .join(", ");
}

/**
 * One statement writes a whole unit of work: the guarded account write, then every insert and
 * update, each from a JSON array (`json_populate_recordset`). The last SELECT fails the statement
 * (and so the transaction) unless the account row matched its guard and every update found its
 * row: nothing is half-written even though COMMIT travels in the same message.
 */
function saveText(t: Tables, account: string): string {
  const { grants, reservations, journal } = t;
  const insert = (table: SqlTable, key: string) =>
    `INSERT INTO ${table.qualified} (${cols(table)}) SELECT ${cols(table)} FROM json_populate_recordset(NULL::${table.qualified}, $1->'${key}')`;
  const update = (table: SqlTable, key: string) =>
    `UPDATE ${table.qualified} t SET ${assign(table, ["user_id", "created_at"])} ` +
    `FROM json_populate_recordset(NULL::${table.qualified}, $1->'${key}') x ` +
    `WHERE t.id = x.id AND t.user_id = x.user_id RETURNING 1`;
  return (
    `WITH acc AS (${account}), ` +
    `ig AS (${insert(grants, "ig")}), ` +
    `ug AS (${update(grants, "ug")}), ` +
    `ir AS (${insert(reservations, "ir")}), ` +
    `ur AS (${update(reservations, "ur")}), ` +
    `ie AS (${insert(journal, "e")}) ` +
    `SELECT CASE WHEN (SELECT count(*) FROM acc) = 1 ` +
    `AND (SELECT count(*) FROM ug) = ($1->>'nug')::int ` +
    `AND (SELECT count(*) FROM ur) = ($1->>'nur')::int ` +
    `THEN 1 ELSE ('${GUARD_MARKER} ' || (SELECT count(*) FROM acc))::int END AS ok`
  );
}

/** Text of the error the save statement raises when its guard fails. */
export const GUARD_MARKER = "credit-management: the account moved or a row to update is missing";

/** A string literal safe whatever `standard_conforming_strings` says. */
export function literal(value: string | null): string {
  if (value === null) return "NULL";
  return `E'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

export function prepareText(s: Statement): string {
  return `PREPARE ${s.name}(${s.types.join(", ")}) AS ${s.text}`;
}

export function executeText(s: Statement, args: ReadonlyArray<string | null>): string {
  return `EXECUTE ${s.name}(${args.map(literal).join(", ")})`;
}
