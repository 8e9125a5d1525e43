import type { BoundStorePart, ModuleRowLists, ModuleStorePart } from "../../core/db/module-part.js";
import type { Sqlite } from "./connection.js";

/**
 * What `SqliteDbManager` hands a module's part (`ModuleStorePart.sqlite`): a connection to the
 * store's file and its statements (`run`, `all`) and transactions (`tx`). Synchronous: a read
 * outside units of work that finds the file locked runs again (the store wraps the part's reads).
 *
 * @beta
 */
export interface SqlitePartHost {
  /**
   * Runs one statement (`?` parameters, in order: a `Date` is bound as ISO-8601 text in UTC, a
   * boolean as 0 or 1); answers the number of rows it changed.
   */
  run(text: string, params?: readonly unknown[]): number;
  /** The rows of one query, each an object by column name (parameters as `run` binds them). */
  all(text: string, params?: readonly unknown[]): Record<string, unknown>[];
  /** Runs `fn` in one transaction (`immediate`: takes the write lock at once); nested, in a savepoint. */
  tx<T>(fn: () => T, immediate?: boolean): T;
}

/**
 * The host the package's own parts get: the store's connection with its tables' names (`t`) and
 * the statements on them (`one`, `list`, `insert`, `update`), for the tables of the package's
 * schema. A part of the package declares its sides with it (a `SqliteBoundPart`'s methods accept
 * it: the store hands every part its `Sqlite`). @internal
 */
export type SqliteStoreHost = Pick<Sqlite, "t" | "one" | "list" | "insert" | "update" | "run" | "all" | "tx">;
/** `SqlitePartTx` as the package's own parts read it (`db`: the attempt's `SqliteStoreHost`). @internal */
export interface SqliteStoreTx extends SqlitePartTx {
  readonly db: SqliteStoreHost;
}

/**
 * A unit of work's attempt as a module's part reads in it: `db` is the attempt's connection (a
 * locked attempt has its own).
 *
 * @beta
 */
export interface SqlitePartTx {
  /** The account of the unit of work. */
  readonly userId: string;
  /** The store's database, inside the unit's transaction. */
  readonly db: SqlitePartHost;
}

/**
 * A module's part bound to a `SqliteDbManager` (docs/writing-a-store.md, "A module's part"): `write`
 * writes a unit of work's rows of the module inside the unit's write transaction, on `db`
 * (synchronously), throwing `ConflictError` (nothing of the unit is written) when a guard fails.
 *
 * @beta
 */
export interface SqliteBoundPart<Reads extends object = object> extends BoundStorePart<Reads> {
  /** The module's reads inside a unit of work (`tx.part(moduleId)`). */
  transaction?(tx: SqlitePartTx): object;
  /** Writes the module's rows of a unit of work, inside its transaction. */
  write?(db: SqlitePartHost, rows: ModuleRowLists): void;
  /** Creates the part's tables where missing, on `db`, in `init()`'s write transaction (`BoundStorePart.migrate`). */
  migrate?(db: SqlitePartHost): void;
}

/** The SQLite side of `part` bound to `host`; undefined when it has none. */
export const bindSqlite = (part: ModuleStorePart, host: SqliteStoreHost): SqliteBoundPart | undefined =>
  (part.sqlite as ((host: SqliteStoreHost) => SqliteBoundPart) | undefined)?.(host);
