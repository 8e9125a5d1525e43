import type { ClientSession, Collection, Document } from "mongodb";
import type { BoundStorePart, ModuleRowLists, ModuleStorePart } from "../../core/db/module-part.js";

/**
 * What `MongoDbManager` hands a module's part (`ModuleStorePart.mongodb`): its collections by name,
 * with the store's prefix (inside `joinTransaction`, on the application's session).
 *
 * @beta
 */
export interface MongoPartHost {
  /**
   * A collection of the store's database by its name, with the store's prefix added; its
   * documents' `_id` is a string, as in the store's own collections.
   */
  collection(name: string): Collection<Document & { _id: string }>;
}

/**
 * A unit of work's transaction as a module's part reads in it: `op` runs one command in the unit's
 * session and transaction (driver errors unconverted: the store decides whether the unit runs again).
 *
 * @beta
 */
export interface MongoPartTx {
  /** The account of the unit of work. */
  readonly userId: string;
  /** Runs one command in the unit's session and transaction. */
  op<T>(run: (session: ClientSession) => Promise<T>): Promise<T>;
}

/**
 * A module's part bound to a `MongoDbManager` (docs/writing-a-store.md, "A module's part"): `save`
 * writes a unit of work's rows of the module in its transaction, throwing `ConflictError` (the
 * whole transaction aborts) when one of the module's guards fails.
 *
 * @beta
 */
export interface MongoBoundPart<Reads extends object = object> extends BoundStorePart<Reads> {
  /** The module's reads inside a unit of work (`tx.part(moduleId)`). */
  transaction?(tx: MongoPartTx): object;
  /** Writes the module's rows of a unit of work in its session and transaction. */
  save?(session: ClientSession, rows: ModuleRowLists): Promise<void>;
  /** Creates the part's collections' indexes where missing, after the store's own (`BoundStorePart.migrate`). */
  migrate?(): Promise<void>;
}

/** The MongoDB side of `part` bound to `host`; undefined when it has none. */
export const bindMongo = (part: ModuleStorePart, host: MongoPartHost): MongoBoundPart | undefined =>
  (part.mongodb as ((host: MongoPartHost) => MongoBoundPart) | undefined)?.(host);
