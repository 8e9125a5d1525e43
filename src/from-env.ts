import { ConfigurationError } from "./core/errors.js";
import { InMemoryDbManager } from "./built-in-parts.js";
import type { MongoDbManager as MongoAdapter } from "./db/mongodb/index.js";
import type { PostgresDbManager as PostgresAdapter } from "./db/postgres/index.js";
import type { DbManager } from "./core/db/types.js";
import { PartitionInterval } from "./schema/partitions.js";
import { checkCreditEnv } from "./util/credit-env.js";

/** The environment variables `createDbManagerFromEnv` reads. @public */
export interface DbEnv {
  /** A MongoDB connection string (replica set or Atlas). */
  CREDIT_MONGO_URI?: string | undefined;
  /** The database for MongoDB. Default `credit_management`. */
  CREDIT_MONGO_DB?: string | undefined;
  /** A PostgreSQL connection string, used when `CREDIT_MONGO_URI` is not set. */
  CREDIT_PG_URL?: string | undefined;
  /** The PostgreSQL schema of the tables. Default: the connection's search_path. */
  CREDIT_PG_SCHEMA?: string | undefined;
  /**
   * A SQLite file (`SqliteDbManager({ filename })`), used when neither `CREDIT_MONGO_URI` nor
   * `CREDIT_PG_URL` is set. `init()` creates it; `credit-management audit` only opens an existing one.
   */
  CREDIT_SQLITE_PATH?: string | undefined;
  /**
   * `day`, `week` or `month`: the store is partitioned by time (`PostgresDbManager({ partitions })`,
   * docs/running-for-years.md, "Partitioning on PostgreSQL"). Unset or empty: not.
   */
  CREDIT_PG_PARTITIONS?: string | undefined;
  /** Any other variable of the environment. */
  [name: string]: string | undefined;
}

/**
 * The store the environment asks for, like the original system's switch: `MongoDbManager` when
 * `CREDIT_MONGO_URI` is set (database `CREDIT_MONGO_DB`, default `credit_management`; the
 * manager owns its client, so `close()` closes it); else `PostgresDbManager` when `CREDIT_PG_URL`
 * is set (schema `CREDIT_PG_SCHEMA`; it owns its pool); else `SqliteDbManager` on the file
 * `CREDIT_SQLITE_PATH` when it is set; otherwise a new `InMemoryDbManager`. A `CREDIT_*` variable
 * set but blank (empty or spaces), or one the package does not read (a misspelt name such as
 * `CREDIT_PG_URI`), is a `ConfigurationError` naming it (docs/storage.md, "From the environment").
 *
 * An adapter (and with it its driver, an optional peer dependency) is loaded only when it is
 * asked for, so the core never pulls a driver. `createCreditManager` runs
 * `init()`; call it yourself when wiring by hand.
 * @public
 */
export async function createDbManagerFromEnv(env: DbEnv = process.env): Promise<DbManager> {
  // A blank or misspelt variable would pick another store (an empty one in memory): refused.
  checkCreditEnv(env);
  const uri = env.CREDIT_MONGO_URI;
  if (uri === undefined || uri.trim() === "") {
    const pgUrl = env.CREDIT_PG_URL?.trim();
    const sqlitePath = env.CREDIT_SQLITE_PATH?.trim();
    if (!pgUrl && sqlitePath) {
      // The store loads `better-sqlite3` on init() and says so with a ConfigurationError if it is missing.
      const { SqliteDbManager } = await import("./db/sqlite/index.js");
      return new SqliteDbManager({ filename: sqlitePath });
    }
    if (!pgUrl) return new InMemoryDbManager();
    let PostgresDbManager: typeof PostgresAdapter;
    try {
      ({ PostgresDbManager } = await import("./db/postgres/index.js"));
    } catch (error) {
      throw new ConfigurationError(
        "[credit-management] CREDIT_PG_URL is set but the PostgreSQL adapter could not be loaded",
        error,
      );
    }
    // The pool loads `pg` on first use and says so with a ConfigurationError if it is missing.
    const interval = env.CREDIT_PG_PARTITIONS?.trim() || undefined;
    if (interval !== undefined && !PartitionInterval.safeParse(interval).success)
      throw new ConfigurationError(
        `[credit-management] CREDIT_PG_PARTITIONS must be day, week or month, not "${interval}"`,
      );
    return new PostgresDbManager({
      connectionString: pgUrl,
      schema: env.CREDIT_PG_SCHEMA?.trim() || undefined,
      ...(interval === undefined ? {} : { partitions: { interval: interval as PartitionInterval } }),
    });
  }
  const dbName = env.CREDIT_MONGO_DB?.trim() || "credit_management";
  let MongoDbManager: typeof MongoAdapter;
  try {
    ({ MongoDbManager } = await import("./db/mongodb/index.js"));
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
