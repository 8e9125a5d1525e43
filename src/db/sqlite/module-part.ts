import type { BoundStorePart, ModuleRowLists, ModuleStorePart } from "../../core/db/module-part.js";
import type { Sqlite } from "./connection.js";

/**
 * What `SqliteDbManager` hands a module's part (`ModuleStorePart.sqlite`): a connection to the
 * store's file, its tables' names (`t`) and its statements (`one`, `list`, `insert`, `update`,
 * `run`, `all`). Synchronous: a read outside units of work that finds the file locked runs again
 * (the store wraps the part's reads).
 *
 * @beta
 */
export type SqlitePartHost = Pick<Sqlite, "t" | "one" | "list" | "insert" | "update" | "run" | "all" | "tx">;

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
export const bindSqlite = (part: ModuleStorePart, host: SqlitePartHost): SqliteBoundPart | undefined =>
  (part.sqlite as ((host: SqlitePartHost) => SqliteBoundPart) | undefined)?.(host);
