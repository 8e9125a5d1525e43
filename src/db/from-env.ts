import { ConfigurationError } from "../errors.js";
import { InMemoryDbManager } from "./memory/index.js";
import type { MongoDbManager as MongoAdapter } from "./mongodb/index.js";
import type { PostgresDbManager as PostgresAdapter } from "./postgres/index.js";
import type { DbManager } from "./types.js";
import type { PartitionInterval } from "../schema/partitions.js";

/** The environment variables `createDbManagerFromEnv` reads. */
export interface DbEnv {
  /** A MongoDB connection string (replica set or Atlas). Unset or empty: in-memory. */
  CREDIT_MONGO_URI?: string | undefined;
  /** The database for MongoDB. Default `credit_management`. */
  CREDIT_MONGO_DB?: string | undefined;
  /** A PostgreSQL connection string, used when `CREDIT_MONGO_URI` is not set. */
  CREDIT_PG_URL?: string | undefined;
  /** The PostgreSQL schema of the tables. Default: the connection's search_path. */
  CREDIT_PG_SCHEMA?: string | undefined;
  /**
   * `day`, `week` or `month`: the store is partitioned by time (`PostgresDbManager({ partitions })`,
   * docs/running-for-years.md, "Partitioning on PostgreSQL"). Unset or empty: not.
   */
  CREDIT_PG_PARTITIONS?: string | undefined;
  [name: string]: string | undefined;
}

/**
 * The store the environment asks for, like the original system's switch: `MongoDbManager` when
 * `CREDIT_MONGO_URI` is set (database `CREDIT_MONGO_DB`, default `credit_management`; the
 * manager owns its client, so `close()` closes it); else `PostgresDbManager` when `CREDIT_PG_URL`
 * is set (schema `CREDIT_PG_SCHEMA`; it owns its pool); otherwise a new `InMemoryDbManager`.
 *
 * An adapter (and with it its driver, an optional peer dependency) is loaded only when it is
 * asked for, so the core never pulls a driver. `createCreditManager` runs
 * `init()`; call it yourself when wiring by hand.
 */
export async function createDbManagerFromEnv(env: DbEnv = process.env): Promise<DbManager> {
  const uri = env.CREDIT_MONGO_URI;
  if (uri === undefined || uri.trim() === "") {
    const pgUrl = env.CREDIT_PG_URL?.trim();
    if (!pgUrl) return new InMemoryDbManager();
    let PostgresDbManager: typeof PostgresAdapter;
    try {
      ({ PostgresDbManager } = await import("./postgres/index.js"));
    } catch (error) {
      throw new ConfigurationError(
        "[credit-management] CREDIT_PG_URL is set but the PostgreSQL adapter could not be loaded",
        error,
      );
    }
    // The pool loads `pg` on first use and says so with a ConfigurationError if it is missing.
    const interval = env.CREDIT_PG_PARTITIONS?.trim() || undefined;
    return new PostgresDbManager({
      connectionString: pgUrl,
      schema: env.CREDIT_PG_SCHEMA?.trim() || undefined,
      // Validated by the manager (a ConfigurationError naming the values it takes).
      ...(interval === undefined ? {} : { partitions: { interval: interval as PartitionInterval } }),
    });
  }
  const dbName = env.CREDIT_MONGO_DB?.trim() || "credit_management";
  let MongoDbManager: typeof MongoAdapter;
  try {
    ({ MongoDbManager } = await import("./mongodb/index.js"));
  } catch (error) {
    const missing = (error as { code?: string }).code;
    if (missing === "ERR_MODULE_NOT_FOUND" || missing === "MODULE_NOT_FOUND") {
      throw new ConfigurationError(
        "[credit-management] CREDIT_MONGO_URI is set but the `mongodb` driver is not installed: npm install mongodb",
        error,
      );
    }
    throw error;
  }
  return MongoDbManager.fromUri(uri, dbName);
}
