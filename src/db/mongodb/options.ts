import type { MongoClient } from "mongodb";
import type { Db } from "mongodb";
import * as z from "zod/mini";

// The MongoDB store's options (docs/storage.md, MongoDB) and what a server must be to run it.

/** Options shared by every way of building a `MongoDbManager`. @public */
export interface MongoDbManagerOptions {
  /** Prefix of the collection names (`<prefix>accounts`, `<prefix>grants`, …). Default `"credit_"`. */
  collectionPrefix?: string;
  /**
   * Optimistic attempts of one unit of work (transient transaction errors the driver retries and
   * seq-guard misses both count) before it runs holding its account: its transactions write the
   * account first, tried for up to 5 s, and only then a write conflict surfaces as `ConflictError`
   * (docs/storage.md, MongoDB). Default 25.
   */
  maxAttempts?: number;
  /**
   * Accounts whose last committed state this process keeps (LRU), so a unit of work on a recently
   * used account skips its read: the save's guard on `{ seq, _rev }` proves the state current
   * (else the unit of work reruns on a fresh read), and a unit of work that refuses without saving
   * re-checks `_rev`. `0` reads every time. Default 10,000.
   */
  stateCacheSize?: number;
  /**
   * Group commit: units of work on different accounts that wait at the same moment share one
   * transaction — one read for those whose state is not cached, one command per collection for
   * their writes (the account updates each keep their guard; if one misses, the batch aborts and
   * its units run again on fresh reads; after any other failure, each alone), one commit. A caller's promise resolves only after its batch
   * committed. `concurrency` batches run at once, each with up to `maxUnits` units.
   * `false` (or `maxUnits: 1`): every unit of work is a transaction of its own.
   * Default `{ maxUnits: 32, concurrency: 2 }`.
   */
  batch?: false | { maxUnits?: number; concurrency?: number };
  /** @internal Tests: on every state-cache hit, also read the account and fail if they differ. */
  verifyStateCache?: boolean;
  /**
   * `init()` creates the collections and indexes, drops the indexes a later version removed and
   * records the schema version in `<prefix>schema_version` (default true). `false`, for teams that
   * own their database changes (`npx credit-management schema --dialect mongodb [--from-version N]`,
   * a mongosh script): `init()` only checks that the version document says this release's
   * `SCHEMA_VERSION` and throws `ConfigurationError` naming the command to run when it is older,
   * newer or absent (docs/schema-upgrades.md).
   */
  migrate?: boolean;
}

export const BatchOption = z.union([
  z.literal(false),
  z.strictObject({
    maxUnits: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
    concurrency: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(64))),
  }),
]);

/** Either a connected (or connectable) `MongoClient` and a database name, or a `Db`. @public */
export type MongoDbManagerConfig = ({ client: MongoClient; dbName: string } | { db: Db }) & MongoDbManagerOptions;

/**
 * True when a `hello` answer comes from a replica-set member or a mongos, which run
 * multi-document transactions; false for a standalone mongod.
 */
export function supportsTransactions(hello: Record<string, unknown>): boolean {
  return typeof hello.setName === "string" || hello.msg === "isdbgrid";
}
