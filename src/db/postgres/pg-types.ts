/**
 * The parts of node-pg this store uses, as structural types of its own: the published declarations
 * then never import `pg`'s types, so a TypeScript consumer without `@types/pg` type-checks. A
 * `pg.Pool` and its clients fit them.
 */

/** What a query answers (node-pg's `QueryResult`). */
export interface PgQueryResult {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- rows are decoded by the table codecs
  rows: any[];
  rowCount: number | null;
}

/** A query: text, or a config with values and an optional prepared-statement name. */
export type PgQuery = string | { text: string; values?: unknown[]; name?: string };

/** A client checked out of the pool (node-pg's `PoolClient`). */
export interface PgPoolClient {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- node-pg's overloads answer QueryResult or arrays of them
  query(query: PgQuery, values?: unknown[]): Promise<any>;
  release(error?: Error | boolean): void;
  on(event: "error", listener: (error: Error) => void): unknown;
  removeListener(event: "error", listener: (error: Error) => void): unknown;
}

/** A connection pool (node-pg's `Pool`). */
export interface PgPool {
  connect(): Promise<PgPoolClient>;
  end(): Promise<void>;
  on(event: "error", listener: (error: Error, client: PgPoolClient) => void): unknown;
}

/** Settings of the pool made from `connectionString` (node-pg's `PoolConfig`: max, ssl, timeouts, …). */
export interface PgPoolConfig {
  max?: number;
  min?: number;
  idleTimeoutMillis?: number;
  connectionTimeoutMillis?: number;
  ssl?: unknown;
  application_name?: string;
  [option: string]: unknown;
}
