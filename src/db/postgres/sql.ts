import { createHash } from "node:crypto";
import type { Column } from "../../schema/columns.js";
import { type SqlTable, generateSql, quoteIdent, sqlTables } from "../../schema/sql.js";
import type { TableKey } from "../../schema/tables.js";

/** Bump when the DDL changes; `init()` migrates older stores. */
export const SCHEMA_VERSION = 1;

const q = (name: string) => quoteIdent("postgres", name);

/** A statement prepared once per connection (SQL `PREPARE`) and run with `EXECUTE`. */
export interface Statement {
  name: string;
  text: string;
  /** Parameter types of `PREPARE name(types) AS text`. */
  types: readonly string[];
}

function statement(text: string, types: readonly string[]): Statement {
  const name = `cm_${createHash("sha256").update(types.join(",")).update("\n").update(text).digest("hex").slice(0, 24)}`;
  return { name, text, types };
}

export type Tables = Record<TableKey, SqlTable>;

/**
 * What one save writes. Updates name the columns that changed (a column list per table, or null
 * for no updates): only those travel and are written.
 */
export interface SaveShape {
  /** null: the account is new (INSERT); else the changed columns (UPDATE guarded by previous seq). */
  accountColumns: readonly string[] | null;
  insertGrants: boolean;
  grantColumns: readonly string[] | null;
  insertReservations: boolean;
  reservationColumns: readonly string[] | null;
  entries: boolean;
}

/** Text of the error the save statement raises when its guard fails. */
export const GUARD_MARKER = "credit-management: the account moved or a row to update is missing";

/** The SQL of one store configuration (schema + prefix), built once per manager. */
export class PostgresSql {
  readonly tables: Tables;
  readonly ddl: string;
  readonly versionTable: string;
  readonly lockKey: string;
  readonly createSchema: string | null;
  /** Locks the account row (the serialisation point of units of work) and returns it. */
  readonly lock: Statement;
  /**
   * Open grants, active holds and the idempotent entry. Sent in the same message as `lock` but as
   * a statement of its own: under READ COMMITTED each statement takes a new snapshot, so this one
   * sees everything the previous holder of the lock committed (reads in the locking statement
   * itself would still see the snapshot taken before it waited for the lock).
   */
  readonly state: Statement;
  private readonly saves = new Map<string, Statement>();

  constructor(options: { schema?: string; prefix?: string }) {
    const list = sqlTables({ dialect: "postgres", schema: options.schema, prefix: options.prefix });
    this.tables = Object.fromEntries(list.map((t) => [t.key, t])) as Tables;
    this.ddl = generateSql({ dialect: "postgres", schema: options.schema, prefix: options.prefix });
    const versionName = `${options.prefix ?? ""}schema_version`;
    this.versionTable = options.schema === undefined ? q(versionName) : `${q(options.schema)}.${q(versionName)}`;
    this.lockKey = `credit-management:${options.schema ?? ""}:${options.prefix ?? ""}`;
    this.createSchema = options.schema === undefined ? null : `CREATE SCHEMA IF NOT EXISTS ${q(options.schema)}`;

    const { accounts, grants, reservations, journal } = this.tables;
    this.lock = statement(`SELECT ${cols(accounts)} FROM ${accounts.qualified} WHERE user_id = $1 FOR UPDATE`, ["text"]);
    this.state = statement(
      `SELECT (SELECT json_agg(g) FROM ${grants.qualified} g WHERE g.user_id = $1 AND g.closed_at IS NULL AND g.remaining > 0)::text AS grants, ` +
        `(SELECT json_agg(r) FROM ${reservations.qualified} r WHERE r.user_id = $1 AND r.status = 'active')::text AS holds, ` +
        `(SELECT row_to_json(j) FROM ${journal.qualified} j WHERE j.user_id = $1 AND j.idempotency_key = $2)::text AS idem`,
      ["text", "text"],
    );
  }

  /** `SELECT <columns> FROM <table>` for plain reads. */
  select(key: TableKey): string {
    const t = this.tables[key];
    return `SELECT ${cols(t)} FROM ${t.qualified}`;
  }

  /** The save statement for a shape of changes, built on first use. Parameters: user id, JSON. */
  save(shape: SaveShape): Statement {
    const key = JSON.stringify(shape);
    let s = this.saves.get(key);
    if (s === undefined) {
      s = statement(saveText(this.tables, shape), ["text", "json"]);
      this.saves.set(key, s);
    }
    return s;
  }
}

function cols(t: SqlTable, alias?: string): string {
  return t.columns.map((c) => (alias ? `${alias}.${q(c.name)}` : q(c.name))).join(", ");
}

const PG_TYPES: Record<Column["kind"], string> = {
  string: "text",
  enum: "text",
  integer: "bigint",
  number: "double precision",
  boolean: "boolean",
  datetime: "timestamptz",
  json: "jsonb",
};

/** `x(id text, remaining bigint, …)`: the record a `json_to_record(set)` call reads. */
function recordOf(t: SqlTable, names: readonly string[]): string {
  const byName = new Map(t.columns.map((c) => [c.name, c]));
  return `x(${names.map((n) => `${q(n)} ${PG_TYPES[(byName.get(n) as Column).kind]}`).join(", ")})`;
}

/**
 * One statement writes a whole unit of work: the guarded account write plus every insert and
 * update, each from JSON (`json_populate_recordset` for new rows, `json_to_recordset` of just
 * the changed columns for updates), restricted to the account's rows. The final SELECT fails the
 * statement (and so the transaction) unless the account row passed its seq guard and every
 * update found its row: nothing is half-written although COMMIT travels in the same message.
 */
function saveText(t: Tables, shape: SaveShape): string {
  const { accounts, grants, reservations, journal } = t;
  const insert = (table: SqlTable, key: string) =>
    `INSERT INTO ${table.qualified} (${cols(table)}) SELECT ${cols(table)} FROM json_populate_recordset(NULL::${table.qualified}, $2->'${key}')`;
  const set = (names: readonly string[]) => names.map((n) => `${q(n)} = x.${q(n)}`).join(", ");
  const update = (table: SqlTable, key: string, names: readonly string[]) =>
    `UPDATE ${table.qualified} t SET ${set(names)} FROM json_to_recordset($2->'${key}') AS ${recordOf(table, ["id", ...names])} ` +
    `WHERE t.user_id = $1 AND t.id = x.id RETURNING 1`;
  const ctes: string[] = [
    shape.accountColumns === null
      ? `acc AS (INSERT INTO ${accounts.qualified} (${cols(accounts)}) SELECT ${cols(accounts)} FROM json_populate_record(NULL::${accounts.qualified}, $2->'a') RETURNING 1)`
      : `acc AS (UPDATE ${accounts.qualified} t SET ${set(shape.accountColumns)} FROM json_to_record($2->'a') AS ${recordOf(accounts, shape.accountColumns)} ` +
        `WHERE t.user_id = $1 AND t.seq = ($2->>'prev')::bigint RETURNING 1)`,
  ];
  const checks = ["(SELECT count(*) FROM acc) = 1"];
  if (shape.insertGrants) ctes.push(`ig AS (${insert(grants, "ig")})`);
  if (shape.grantColumns !== null) {
    ctes.push(`ug AS (${update(grants, "ug", shape.grantColumns)})`);
    checks.push(`(SELECT count(*) FROM ug) = json_array_length($2->'ug')`);
  }
  if (shape.insertReservations) ctes.push(`ir AS (${insert(reservations, "ir")})`);
  if (shape.reservationColumns !== null) {
    ctes.push(`ur AS (${update(reservations, "ur", shape.reservationColumns)})`);
    checks.push(`(SELECT count(*) FROM ur) = json_array_length($2->'ur')`);
  }
  if (shape.entries) ctes.push(`ie AS (${insert(journal, "e")})`);
  return (
    `WITH ${ctes.join(", ")} ` +
    `SELECT CASE WHEN ${checks.join(" AND ")} THEN 1 ` +
    `ELSE ('${GUARD_MARKER} ' || (SELECT count(*) FROM acc))::int END AS ok`
  );
}

/** A string literal, safe whatever `standard_conforming_strings` says. */
export function literal(value: string | null): string {
  if (value === null) return "NULL";
  return `E'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

export function prepareText(s: Statement): string {
  return `PREPARE ${s.name}(${s.types.join(", ")}) AS ${s.text}`;
}

/** `EXECUTE name(args)`, or with `prepared` false the statement itself with its arguments inlined. */
export function executeText(s: Statement, args: ReadonlyArray<string | null>, prepared = true): string {
  if (prepared) return `EXECUTE ${s.name}(${args.map(literal).join(", ")})`;
  return s.text.replace(/\$(\d+)/g, (_m, n: string) => `(${literal(args[Number(n) - 1] ?? null)}::${s.types[Number(n) - 1]})`);
}
