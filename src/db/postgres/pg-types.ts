/**
 * The parts of node-pg this store uses, as structural types of its own: the published declarations
 * then never import `pg`'s types, so a TypeScript consumer without `@types/pg` type-checks. A
 * `pg.Pool` and its clients fit them.
 */

/** What a query answers (node-pg's `QueryResult`). @public */
export interface PgQueryResult {
  /** The rows. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- rows are decoded by the table codecs
  rows: any[];
  /** Rows the statement changed or returned. */
  rowCount: number | null;
}

/** A query: text, or a config with values and an optional prepared-statement name. @public */
export type PgQuery = string | { text: string; values?: unknown[]; name?: string };

/** A client checked out of the pool (node-pg's `PoolClient`). @public */
export interface PgPoolClient {
  /** Runs a statement with its values. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- node-pg's overloads answer QueryResult or arrays of them
  query(query: PgQuery, values?: unknown[]): Promise<any>;
  /** Returns the client to the pool; with an error, the client is discarded. */
  release(error?: Error | boolean): void;
  /** Listens to the client's errors. */
  on(event: "error", listener: (error: Error) => void): unknown;
  /** Stops listening. */
  removeListener(event: "error", listener: (error: Error) => void): unknown;
}

/** A connection pool (node-pg's `Pool`). @public */
export interface PgPool {
  /** A client of the pool, for one transaction. */
  connect(): Promise<PgPoolClient>;
  /** Closes the pool's clients. */
  end(): Promise<void>;
  /** Listens to the pool's errors. */
  on(event: "error", listener: (error: Error, client: PgPoolClient) => void): unknown;
}

/** Settings of the pool made from `connectionString` (node-pg's `PoolConfig`: max, ssl, timeouts, …). @public */
export interface PgPoolConfig {
  /** The most clients of the pool. */
  max?: number;
  /** The fewest clients kept open. */
  min?: number;
  /** How long an idle client stays open, in milliseconds. */
  idleTimeoutMillis?: number;
  /** How long a connection may take, in milliseconds. */
  connectionTimeoutMillis?: number;
  /** TLS settings, as `pg` takes them. */
  ssl?: unknown;
  /** The application's name in `pg_stat_activity`. */
  application_name?: string;
  /** Any other setting of `pg`'s `Pool`. */
  [option: string]: unknown;
}
