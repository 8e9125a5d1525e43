/**
 * The SQL of `serve`'s own tables (the API keys, the webhook endpoints) on SQLite and PostgreSQL:
 * each store writes its statements once, with `$1, $2…` parameters, and runs them through one of
 * these (docs/service.md, "Secure it"; docs/notifications.md, "Webhooks").
 */
import { pgIdent } from "../../schema/ident.js";

/** What `serve`'s own stores (the webhook endpoints, the API keys) use of a SQLite connection. @public */
export interface SqliteLike {
  /** Prepares a statement. */
  prepare(sql: string): {
    get(...p: unknown[]): unknown;
    all(...p: unknown[]): unknown[];
    run(...p: unknown[]): { changes: number };
  };
  /** Runs statements without values. */
  exec(sql: string): unknown;
  /** Runs a pragma. */
  pragma(s: string): unknown;
  /** Closes the database. */
  close(): unknown;
}

/** What `serve`'s own stores use of a `pg` pool. @public */
export interface PgPoolLike {
  /** Runs a statement with its values. */
  query(sql: string, params?: unknown[]): Promise<{ rows: unknown[]; rowCount: number | null }>;
  /** Closes the pool. */
  end(): Promise<void>;
}

/** A database as `serve`'s own SQL stores use it: its statements, with `$1, $2…` parameters. */
export interface OwnSql {
  /** A table of ours by its name: in the store's schema on PostgreSQL. */
  table(name: string): string;
  /** Made ready before the first CREATE: SQLite's busy time-out, PostgreSQL's schema. */
  prepare(): Promise<void>;
  /** Runs a statement without parameters (a CREATE, an ALTER). */
  exec(sql: string): Promise<void>;
  /** The rows of a SELECT. */
  rows<R>(sql: string, params: unknown[]): Promise<R[]>;
  /** The number of rows an INSERT, UPDATE or DELETE changed. */
  changes(sql: string, params: unknown[]): Promise<number>;
  close(): Promise<void>;
}

/** A SQLite connection of our own (WAL lets it write beside the store's). */
export function sqliteSql(db: SqliteLike): OwnSql {
  // Each statement prepared once (the keys' `get` runs on every request whose key is not cached).
  // Its `$n` are in order, so they become SQLite's positional `?`.
  const statements = new Map<string, ReturnType<SqliteLike["prepare"]>>();
  const prepared = (sql: string) => {
    let st = statements.get(sql);
    if (st === undefined) statements.set(sql, (st = db.prepare(sql.replace(/\$\d+/g, "?"))));
    return st;
  };
  return {
    table: (name) => name,
    prepare: async () => void db.pragma("busy_timeout = 5000"),
    exec: async (sql) => void db.exec(sql),
    rows: async <R>(sql: string, params: unknown[]) => prepared(sql).all(...params) as R[],
    changes: async (sql, params) => prepared(sql).run(...params).changes,
    close: async () => void db.close(),
  };
}

/** A `pg` pool of our own, on the store's PostgreSQL database and in its schema (when it has one). */
export function postgresSql(pool: PgPoolLike, schema: string | undefined): OwnSql {
  const quoted = schema === undefined ? undefined : pgIdent(schema);
  return {
    table: (name) => (quoted === undefined ? name : `${quoted}.${name}`),
    async prepare() {
      if (quoted !== undefined) await pool.query(`CREATE SCHEMA IF NOT EXISTS ${quoted}`);
    },
    exec: async (sql) => void (await pool.query(sql)),
    rows: async <R>(sql: string, params: unknown[]) => (await pool.query(sql, params)).rows as R[],
    changes: async (sql, params) => (await pool.query(sql, params)).rowCount ?? 0,
    close: () => pool.end(),
  };
}
