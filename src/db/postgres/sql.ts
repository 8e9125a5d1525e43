import { createHash } from "node:crypto";
import { REVISION } from "../../schema/citus-units.js";
import type { Column } from "../../schema/columns.js";
import { byteaText, decodeRow, toTuples } from "../../schema/codec.js";
import type { JournalEntry } from "../../core/models/index.js";
import type { ChargeRecord } from "../../core/db/types.js";
import type { PartitionOptions } from "../../schema/partitions.js";
import {
  type NamingOptions,
  type SqlTable,
  distributedSpecs,
  generateSqlAt,
  generateStatementsAt,
  keyDigestSql,
  quoteIdent,
  sqlTables,
  versionTableName,
} from "../../schema/sql.js";
import { type TableKey, tableSpecs } from "../../schema/tables.js";

const q = (name: string) => quoteIdent("postgres", name);

/** A statement prepared once per connection (SQL `PREPARE`) and run with `EXECUTE`. */
export interface Statement {
  name: string;
  text: string;
  /** Parameter types of `PREPARE name(types) AS text`. */
  types: readonly string[];
}

export function statement(text: string, types: readonly string[]): Statement {
  const name = `cm_${createHash("sha256").update(types.join(",")).update("\n").update(text).digest("hex").slice(0, 24)}`;
  return { name, text, types };
}

export type Tables = Record<TableKey, SqlTable>;

/**
 * What one save statement writes, for one or more accounts. Updates name the columns that changed
 * (the union over the rows; null for no updates): only those travel and are written.
 */
export interface SaveShape {
  /** Columns of the guarded account updates; null when no existing account is written. */
  accountColumns: readonly string[] | null;
  insertAccounts: boolean;
  insertGrants: boolean;
  grantColumns: readonly string[] | null;
  insertReservations: boolean;
  reservationColumns: readonly string[] | null;
  entries: boolean;
  /** Outbox rows (`Changes.notifications`). */
  notifications?: boolean;
  /**
   * Distributed only: the number of rows of each insert (`ai`, `ig`, `ir`, `e`, `n`), which it
   * writes as that many `VALUES` rows (see `saveText`).
   */
  rows?: Partial<Record<"ai" | "ig" | "ir" | "e" | "n", number>>;
}

/**
 * The arguments of a save statement, by name: a JSON array of rows per part (`a` account updates,
 * `ai` new accounts, `ig`/`ug` grants, `ir`/`ur` holds, `e` journal entries, `n` outbox rows) and
 * the keys of the rows each update finds (`ak`, `ugk`, `urk`: `text[]`; `xk`: the accounts not
 * locked before the save, see `Batch.optimistic`; `uk`, distributed only: every user of the save,
 * which names the shard of the grants and holds it updates).
 */
export type SaveArg = "a" | "ak" | "xk" | "ai" | "ig" | "ug" | "ugk" | "ir" | "ur" | "urk" | "e" | "n" | "uk";

/** A save statement and the names of its parameters, in order. */
export interface SaveStatement extends Statement {
  args: readonly SaveArg[];
}

/** Text of the error the save statement raises when its guard fails. */
export const GUARD_MARKER = "credit-management: the account moved or a row to update is missing";

/** The SQL of one store configuration (schema + prefix), built once per manager. */
export class PostgresSql {
  readonly tables: Tables;
  /** Schema and prefix. */
  readonly naming: NamingOptions;
  /** The DDL (partitioned: the tables with their DEFAULT partitions; `ensurePartitions` adds the ranges). */
  readonly ddl: string;
  /**
   * Distributed on Citus (docs/scaling-out.md): the DDL is `ddlStatements`, sent one at a time,
   * and every statement of a unit of work names its users' ids on each distributed table it
   * reads or writes (`user_id = ANY(…)`), so that Citus routes it to the shard of those users.
   */
  readonly distributed: boolean;
  /** The DDL as statements (the first a comment). */
  readonly ddlStatements: readonly string[];
  readonly versionTable: string;
  /** Advisory lock of `init()` on this configuration's tables (schema and prefix). */
  readonly lockKey: string;
  /** Advisory lock of `init()` on the schema itself (every prefix), taken before `lockKey`. */
  readonly schemaLockKey: string;
  readonly createSchema: string | null;
  /**
   * Locks the account rows of a batch of several units, in user id order (so that two batches
   * never wait for each other in a cycle), skipping rows another transaction holds: such a batch
   * never waits (a busy account would hold up every other account of the batch); the unit whose
   * account was busy runs again alone. Parameter: the user ids. Returns the ids it locked.
   */
  readonly lockSkip: Statement;
  /** Locks one account row, waiting for it (`user_id = $1`: an index lookup whatever the statistics). */
  readonly lockOne: Statement;
  /** Locks one account row unless another transaction holds it. */
  readonly lockOneSkip: Statement;
  /**
   * Per user: whether the account exists, its row's `xmin`, and unless that is the `xmin` of the
   * cached state the unit of work has, the account row, open grants and active holds as JSON; and
   * the entry of its idempotency key. Sent in the same message as `lock` but as a statement of its
   * own: under READ COMMITTED each statement takes a new snapshot, so this one sees everything the
   * previous holders of the locks committed (reads in the locking statement itself would still see
   * the snapshot taken before it waited). Parameters: the user ids, their idempotency keys (or
   * NULL), the `xmin` of their cached states (or NULL).
   */
  readonly state: Statement;
  /**
   * The users (of `$1`) whose account row is no longer the version (`xmin`, `$2`, same order) a
   * cached state was made from: a unit of work that started from that state and ends without a
   * save (a refusal, a no-op) is final only if its user is not among them (docs/storage.md,
   * "Caches: what each may answer").
   */
  readonly confirm: Statement;
  private readonly saves = new Map<string, SaveStatement>();

  constructor(options: { schema?: string; prefix?: string; partitioned?: PartitionOptions; distributed?: boolean }) {
    const distributed = options.distributed === true;
    this.distributed = distributed;
    const list = sqlTables({
      dialect: "postgres",
      schema: options.schema,
      prefix: options.prefix,
      ...(distributed ? { tables: distributedSpecs(tableSpecs) } : {}),
    });
    this.tables = Object.fromEntries(list.map((t) => [t.key, t])) as Tables;
    this.naming = { schema: options.schema, prefix: options.prefix };
    const ddlOptions = {
      dialect: "postgres" as const,
      schema: options.schema,
      prefix: options.prefix,
      partitioned: options.partitioned,
      ...(distributed ? { distributed } : {}),
    };
    this.ddl = generateSqlAt(ddlOptions, null);
    this.ddlStatements = generateStatementsAt(ddlOptions, null);
    this.versionTable = versionTableName("postgres", options);
    this.lockKey = `credit-management:${options.schema ?? ""}:${options.prefix ?? ""}`;
    this.schemaLockKey = `credit-management-schema:${options.schema ?? ""}`;
    this.createSchema = options.schema === undefined ? null : `CREATE SCHEMA IF NOT EXISTS ${q(options.schema)}`;

    const { accounts, grants, reservations, journal } = this.tables;
    // Citus: the shard of each distributed table read, named by the users' ids (see `distributed`).
    const on = (alias: string, ids: string) => (distributed ? ` AND ${alias}.user_id = ANY(${ids})` : "");
    this.lockOne = statement(`SELECT user_id FROM ${accounts.qualified} WHERE user_id = $1 FOR UPDATE`, ["text"]);
    this.lockOneSkip = statement(
      `SELECT user_id FROM ${accounts.qualified} WHERE user_id = $1 FOR UPDATE SKIP LOCKED`,
      ["text"],
    );
    this.lockSkip = statement(
      `SELECT user_id FROM ${accounts.qualified} WHERE user_id = ANY($1) ORDER BY user_id FOR UPDATE SKIP LOCKED`,
      ["text[]"],
    );
    this.confirm = statement(
      `SELECT c.user_id FROM unnest($1::text[], $2::text[]) AS c(user_id, xmin) ` +
        `LEFT JOIN ${accounts.qualified} a ON a.user_id = c.user_id${on("a", "$1")} WHERE a.xmin::text IS DISTINCT FROM c.xmin`,
      ["text[]", "text[]"],
    );
    // `a.xmin` is that of the row version the lock holds: a cached state made by the transaction
    // that wrote it is current (see ./state-cache.ts), and grants and holds need no reading.
    const fresh = `a.xmin::text IS DISTINCT FROM u.xmin`;
    this.state = statement(
      `SELECT u.user_id, a.user_id IS NOT NULL AS present, a.xmin::text AS xmin, ` +
        `CASE WHEN ${fresh} THEN row_to_json(a)::text END AS account, ` +
        `CASE WHEN ${fresh} THEN (SELECT json_agg(g) FROM ${grants.qualified} g WHERE g.user_id = u.user_id${on("g", "$1")} AND g.closed_at IS NULL AND g.remaining > 0)::text END AS grants, ` +
        `CASE WHEN ${fresh} THEN (SELECT json_agg(r) FROM ${reservations.qualified} r WHERE r.user_id = u.user_id${on("r", "$1")} AND r.status = 'active')::text END AS holds, ` +
        `(SELECT row_to_json(j) FROM ${journal.qualified} j WHERE ${idempotentEntry("u.user_id", "u.key")}${on("j", "$1")})::text AS idem ` +
        `FROM unnest($1::text[], $2::text[], $3::text[]) AS u(user_id, key, xmin) LEFT JOIN ${accounts.qualified} a ON a.user_id = u.user_id${on("a", "$1")}`,
      ["text[]", "text[]", "text[]"],
    );
  }

  /**
   * `SELECT <columns> FROM <table>` for plain reads, dates as {@link output} renders them. An
   * `ORDER BY` after it names datetime columns through {@link column}: a bare name would sort by
   * the text output column of that name (in the same order, but without the index).
   */
  select(key: TableKey): string {
    const t = this.tables[key];
    return `SELECT ${output(t)} FROM ${t.qualified}`;
  }

  /**
   * A journal entry of an account by id (`$2`) and the entries that reverse it, in seq order
   * (`DbTransaction.getCharge`): the id's index, then the account's index of reversals.
   */
  chargeText(): string {
    const entries = this.select("journal");
    return `${entries} WHERE user_id = $1 AND id = $2 UNION ALL ${entries} WHERE user_id = $1 AND reverses = $2 ORDER BY seq`;
  }

  /** A column of a table as `"schema"."table"."column"` (the input column, never an output alias). */
  column(key: TableKey, name: string): string {
    return column(this.tables[key], name);
  }

  /** The save statement for a shape of changes, built on first use. */
  save(shape: SaveShape): SaveStatement {
    const key = JSON.stringify(shape);
    let s = this.saves.get(key);
    if (s === undefined) {
      const { text, args, types } = saveText(this.tables, shape, this.distributed);
      s = { ...statement(text, types), args };
      this.saves.set(key, s);
    }
    return s;
  }
}

/**
 * The condition that finds the journal entry (alias `j`) of the user id and idempotency key `user`
 * and `key` (SQL values): through the unique index on the digest of both
 * (`IndexSpec.digest`), then the values themselves.
 */
export function idempotentEntry(user: string, key: string): string {
  return (
    `${keyDigestSql(["j.user_id", "j.idempotency_key"])} = ${keyDigestSql([user, key])} ` +
    `AND j.user_id = ${user} AND j.idempotency_key = ${key}`
  );
}

/** A table's column by its qualified name, for ORDER BY (a bare name would mean the output column). */
export function column(t: SqlTable, name: string): string {
  return `${t.qualified}.${q(name)}`;
}

/** Column names, for insert lists (what reads return is {@link output}). */
export function cols(t: SqlTable, alias?: string): string {
  return t.columns.map((c) => (alias ? `${alias}.${q(c.name)}` : q(c.name))).join(", ");
}

/** `to_char` pattern of {@link output}'s dates: ISO 8601 in UTC, milliseconds (as JavaScript keeps them). */
const ISO_UTC = `'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'`;

/**
 * The columns of `t` as a SELECT or RETURNING list that reads back the same whatever the session's
 * `DateStyle` and `TimeZone`. node-pg parses a `timestamptz` from its text form, which the session
 * decides: under `DateStyle = SQL, DMY` (or German, or Postgres), set by the connection's options,
 * the role or the database, it gives `null` for every date. Forcing `DateStyle` would change the
 * sessions of a pool the user owns and not hold behind a pooler in transaction mode; so datetime
 * columns travel as `to_char(<col> AT TIME ZONE 'UTC', …)` instead (a fixed pattern: no session
 * setting changes it), under their own names, and `decodeRow` makes them `Date`s. (Units of work
 * read their state as JSON, whose dates are ISO 8601 whatever the `DateStyle`; see `BEGIN` in
 * ./batch.ts for their `TimeZone`.)
 */
export function output(t: SqlTable, alias?: string): string {
  return t.columns
    .map((c) => {
      const ref = alias ? `${alias}.${q(c.name)}` : q(c.name);
      return c.kind === "datetime" ? `to_char(${ref} AT TIME ZONE 'UTC', ${ISO_UTC}) AS ${q(c.name)}` : ref;
    })
    .join(", ");
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
function recordOf(t: SqlTable, names: readonly string[], extra?: string): string {
  const byName = new Map(t.columns.map((c) => [c.name, c]));
  const fields = names.map((n) => {
    const c = byName.get(n) as Column;
    return `${q(n)} ${c.bytes === true ? "bytea" : c.jsonText === true ? "json" : PG_TYPES[c.kind]}`;
  });
  if (extra !== undefined) fields.push(extra);
  return `x(${fields.join(", ")})`;
}

/**
 * One statement writes everything a batch of units of work changed: the guarded account updates
 * (`WHERE seq = <seq at load>`), new accounts, and every insert and update of grants, holds and
 * journal entries, each from a JSON array parameter of its own (`json_populate_recordset` for new
 * rows, `json_to_recordset` of just the changed columns for updates), each update restricted to
 * its own account. The final SELECT fails the statement (and so the transaction) unless every
 * account update passed its guard and every update found its row: nothing is half-written
 * although COMMIT travels in the same message.
 *
 * One parameter per part, not one JSON document with a member per part: the server re-parses a
 * `json` value from its first byte for every `->` on it, and the counts and keys the statement
 * needs would each parse it again. Rows are found by their key (`= ANY($n::text[])`, keys the
 * client sends beside the rows: an index scan, as units of work run without sequential scans):
 * joined on the JSON alone, the planner (which assumes 100 JSON rows) may rather hash-join a whole
 * table. Grants and holds are found by id (primary key): found by `user_id`, every row the account
 * ever had would be read and compared with every changed row.
 */
function saveText(
  t: Tables,
  shape: SaveShape,
  distributed = false,
): { text: string; args: SaveArg[]; types: string[] } {
  const { accounts, grants, reservations, journal } = t;
  const args: SaveArg[] = [];
  const types: string[] = [];
  const param = (name: SaveArg, type: "json" | "text[]") => {
    args.push(name);
    types.push(type);
    return `$${args.length}`;
  };
  const insert = (table: SqlTable, name: "ai" | "ig" | "ir" | "e" | "n") => {
    const rows = param(name, "json");
    if (!distributed)
      return `INSERT INTO ${table.qualified} (${cols(table)}) SELECT ${cols(table)} FROM json_populate_recordset(NULL::${table.qualified}, ${rows})`;
    return routedInsert(table, rows, shape.rows?.[name] ?? 1);
  };
  const set = (names: readonly string[]) => names.map((n) => `${q(n)} = x.${q(n)}`).join(", ");
  const ctes: string[] = [];
  const checks: string[] = [];
  let users = "";
  const update = (name: "ug" | "ur", table: SqlTable, names: readonly string[]) => {
    const rows = param(name, "json");
    const ids = param(`${name}k`, "text[]");
    // Citus: the shard of the rows, by their users' ids (PostgresSql.distributed).
    if (distributed && users === "") users = param("uk", "text[]");
    ctes.push(
      `${name} AS (UPDATE ${table.qualified} t SET ${set(names)} FROM json_to_recordset(${rows}) AS ${recordOf(table, ["id", "user_id", ...names])} ` +
        `WHERE t.id = ANY(${ids}) AND t.id = x.id AND t.user_id = x.user_id${distributed ? ` AND t.user_id = ANY(${users})` : ""} RETURNING 1)`,
    );
    checks.push(`(SELECT count(*) FROM ${name}) = cardinality(${ids})`);
  };
  let accountKeys = "";
  if (shape.accountColumns !== null) {
    const rows = param("a", "json");
    accountKeys = param("ak", "text[]");
    // Accounts of units that started from the state cache (./batch.ts, `Batch.optimistic`) are
    // not locked yet: lock them here, skipping any another transaction holds, so that a batch
    // never waits for another process; a skipped account fails the guard below.
    // (Distributed: no state cache, every account is locked before its save.)
    const unlocked = distributed ? "" : param("xk", "text[]");
    if (!distributed)
      ctes.push(
        `lk AS (SELECT user_id FROM ${accounts.qualified} WHERE user_id = ANY(${unlocked}) ORDER BY user_id FOR UPDATE SKIP LOCKED)`,
      );
    ctes.push(
      // Citus: the revision the one-call units of work check (./citus-units.ts) moves with every save.
      `acc AS (UPDATE ${accounts.qualified} t SET ${set(shape.accountColumns)}${distributed ? `, ${REVISION} = t.${REVISION} + 1` : ""} ` +
        `FROM json_to_recordset(${rows}) AS ${recordOf(accounts, ["user_id", ...shape.accountColumns], "prev bigint, xmin text")} ` +
        // `xmin`: a unit that started from the state cache without locking the row (./batch.ts,
        // `Batch.optimistic`) requires the row version its state was made from.
        `WHERE t.user_id = ANY(${accountKeys}) AND t.user_id = x.user_id AND t.seq = x.prev ` +
        (distributed
          ? `AND x.xmin IS NULL RETURNING 1)`
          : `AND (x.xmin IS NULL OR (t.xmin::text = x.xmin AND t.user_id IN (SELECT user_id FROM lk))) RETURNING 1)`),
    );
    checks.push(`(SELECT count(*) FROM acc) = cardinality(${accountKeys})`);
  }
  if (shape.insertAccounts) ctes.push(`ai AS (${insert(accounts, "ai")})`);
  if (shape.insertGrants) ctes.push(`ig AS (${insert(grants, "ig")})`);
  if (shape.grantColumns !== null) update("ug", grants, shape.grantColumns);
  if (shape.insertReservations) ctes.push(`ir AS (${insert(reservations, "ir")})`);
  if (shape.reservationColumns !== null) update("ur", reservations, shape.reservationColumns);
  if (shape.entries) ctes.push(`ie AS (${insert(journal, "e")})`);
  if (shape.notifications === true) ctes.push(`io AS (${insert(t.notifications, "n")})`);
  const ok = checks.length === 0 ? "true" : checks.join(" AND ");
  const seen = shape.accountColumns === null ? "0" : "(SELECT count(*) FROM acc)";
  const text =
    `WITH ${ctes.join(", ")} ` +
    // Not a constant (the planner would fold a constant cast and fail every time).
    `SELECT CASE WHEN ${ok} THEN 1 ELSE ('${GUARD_MARKER} ' || ${seen})::int END AS ok, ` +
    // The `xmin` of every row this transaction writes (its 32-bit id): the cached states' version.
    `(txid_current() % 4294967296)::text AS xid`;
  return { text, args, types };
}

/**
 * Citus: `INSERT` of `count` rows of `t` from the JSON array `rows` (a SQL expression; `count`
 * null: one row, from the JSON object `rows`), as `VALUES` rows. An `INSERT … SELECT` from a
 * function of a parameter is not routed to a shard: the coordinator runs it, copies the rows to
 * the workers and commits in two phases. `VALUES` rows are routed, each by its `user_id`, which
 * Citus computes from the parameter before routing; a transaction of such statements on one
 * account commits on its worker with a plain COMMIT (docs/scaling-out.md).
 */
export function routedInsert(t: SqlTable, rows: string, count: number | null): string {
  const row = (i: number | null) => {
    const rec = `json_populate_record(NULL::${t.qualified}, ${i === null ? rows : `${rows} -> ${i}`})`;
    return `(${t.columns.map((c) => `(${rec}).${q(c.name)}`).join(", ")})`;
  };
  const values = count === null ? [row(null)] : Array.from({ length: count }, (_, i) => row(i));
  return `INSERT INTO ${t.qualified} (${cols(t)}) VALUES ${values.join(", ")}`;
}

/**
 * `INSERT` of one row of `t` from the JSON object `$1` ({@link toRow}'s form). Citus
 * (`distributed`): routed to the row's shard ({@link routedInsert}), not run by the coordinator.
 */
export function insertRowText(t: SqlTable, distributed: boolean): string {
  if (distributed) return routedInsert(t, "$1::json", null);
  return `INSERT INTO ${t.qualified} (${cols(t)}) SELECT ${cols(t)} FROM json_populate_record(NULL::${t.qualified}, $1::json)`;
}

/** A string literal, safe whatever `standard_conforming_strings` says. */
export function literal(value: string | null): string {
  if (value === null) return "NULL";
  return `E'${value.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
}

export function prepareText(s: Statement): string {
  return `PREPARE ${s.name}(${s.types.join(", ")}) AS ${s.text}`;
}

/** A `text[]` literal's content: `{"a","b\\"c",NULL}`. */
export function arrayText(values: ReadonlyArray<string | null>): string {
  return `{${values.map((v) => (v === null ? "NULL" : `"${v.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`)).join(",")}}`;
}

/** `EXECUTE name(args)`, or with `prepared` false the statement itself with its arguments inlined. */
export function executeText(s: Statement, args: ReadonlyArray<string | null>, prepared = true): string {
  if (prepared) return `EXECUTE ${s.name}(${args.map(literal).join(", ")})`;
  return s.text.replace(
    /\$(\d+)/g,
    (_m, n: string) => `(${literal(args[Number(n) - 1] ?? null)}::${s.types[Number(n) - 1]})`,
  );
}

/**
 * A model object as the JSON object `json_populate_record(set)` reads (column names; dates as ISO
 * text). `nulls: "drop"` leaves out its null and undefined fields: a key the JSON lacks reads as
 * NULL, and the statement's payload (parsed by the server, built and sent by the client) is that
 * much shorter.
 */
export function toRow(
  columns: readonly Column[],
  value: object,
  nulls: "keep" | "drop" = "keep",
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const v = value as Record<string, unknown>;
  for (const c of columns) {
    const x = v[c.field] ?? null;
    if (x !== null)
      out[c.name] = c.bytes === true ? byteaText(x as string) : c.tuple !== undefined ? toTuples(c.tuple, x) : x;
    else if (nulls === "keep") out[c.name] = null;
  }
  return out;
}

/**
 * `DbTransaction.getCharge` from the rows of `PostgresSql.chargeText` (any order of `seq`): the
 * entry `entryId` and its reversals, or null when the account has no such entry.
 */
export function chargeOf(
  journal: SqlTable,
  rows: readonly Record<string, unknown>[],
  entryId: string,
): ChargeRecord | null {
  let entry: JournalEntry | null = null;
  const reversals: JournalEntry[] = [];
  for (const r of rows) {
    const e = decodeRow<JournalEntry>(journal.columns, r);
    if (e.id === entryId) entry = e;
    else reversals.push(e);
  }
  return entry === null ? null : { entry, reversals };
}
