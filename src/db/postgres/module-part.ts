import type { BoundStorePart, ModuleRowLists, ModuleStorePart } from "../../core/db/module-part.js";
import type { PostgresDbManager } from "./index.js";

/**
 * What `PostgresDbManager` hands a module's part (`ModuleStorePart.postgres`): its statements
 * outside units of work (`read`) and where its tables are (`sql.naming`: the schema and the table
 * prefix the store was given), so the module keeps its tables beside the store's.
 *
 * @beta
 */
export interface PostgresPartHost {
  /** Runs one statement on the store's pool, outside units of work (`what` names it in errors). */
  read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]>;
  /** The store's schema and table prefix (undefined: the connection's search path, no prefix). */
  readonly sql: { readonly naming: { readonly schema?: string | undefined; readonly prefix?: string | undefined } };
}

/**
 * The host the package's own parts get: the store itself, with its statements and tables' names
 * (`sql`, which `init()` makes distributed on Citus: read it at each call). @internal
 */
export type PostgresStoreHost = Pick<PostgresDbManager, "read" | "sql" | "inTransaction">;

/**
 * A unit of work's transaction as a module's part reads in it (`PostgresBoundPart.transaction`):
 * `read` runs a statement on the unit's connection, inside its transaction (a later unit of a
 * group-commit chain that reads a module's rows leaves the chain and runs again alone).
 *
 * @beta
 */
export interface PostgresPartTx {
  /** The account of the unit of work. */
  readonly userId: string;
  /** The store's schema and table prefix, as the host has them (`PostgresPartHost.sql`). */
  readonly sql: PostgresPartHost["sql"];
  /** Runs one statement on the unit's connection, inside its transaction. */
  read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]>;
}

/**
 * A statement a module's part adds to a unit of work's save message, and its one JSON argument:
 * it runs in the same transaction, before COMMIT, and fails the transaction (the units of work run
 * again) when one of the module's guards fails.
 *
 * @beta
 */
export interface PostgresModuleSave {
  /**
   * The statement, prepared by name on each connection (`PREPARE name(types) AS text`): `name` is
   * the same for the same text and types and no other statement's (the package's own hash the
   * text); `types`, its one parameter's type (`json`).
   */
  readonly statement: { readonly name: string; readonly text: string; readonly types: readonly string[] };
  /** Its one argument: the rows as JSON. */
  readonly arg: string;
}

/**
 * A module's part bound to a `PostgresDbManager` (docs/writing-a-store.md, "A module's part").
 *
 * @beta
 */
export interface PostgresBoundPart<Reads extends object = object> extends BoundStorePart<Reads> {
  /** The module's reads inside a unit of work (`tx.part(moduleId)`). */
  transaction?(tx: PostgresPartTx): object;
  /**
   * The statement that saves the module's rows of the units of work of one save message (`rows`:
   * the module's rows of each unit that has some), or null when there is nothing to write.
   * `distributedUser`: on Citus, the one account of the unit of work (a distributed save is of one
   * account); null elsewhere.
   */
  save?(rows: readonly ModuleRowLists[], distributedUser: string | null): PostgresModuleSave | null;
  /**
   * Creates the part's tables where missing (`BoundStorePart.migrate`): `run` runs one statement in
   * `init()`'s transaction, under its lock, so that several processes may start at once.
   */
  migrate?(run: (text: string) => Promise<void>): Promise<void>;
}

/** The PostgreSQL side of `part` bound to `host`; undefined when it has none. */
export const bindPostgres = (part: ModuleStorePart, host: PostgresStoreHost): PostgresBoundPart | undefined =>
  (part.postgres as ((host: PostgresStoreHost) => PostgresBoundPart) | undefined)?.(host);
