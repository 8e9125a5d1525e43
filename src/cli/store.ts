import { createDbManagerFromEnv, type DbEnv } from "../from-env.js";
import { InMemoryDbManager } from "../built-in-parts.js";
import type { DbManager } from "../core/db/types.js";
import { createCreditManager, type CreditManager } from "../manager.js";
import type { RedisCache } from "../redis/index.js";
import { ConfigurationError, ValidationError } from "../core/errors.js";
import { journalKeysOf } from "../serve/journal-keys-env.js";
import { UsageError } from "../util/usage-error.js";

/** The variables (and flag) that name the store `audit`, `revenue`, `accounts` and `reverse` read (docs/cli.md). */
export const STORE_VARIABLES =
  "CREDIT_MONGO_URI (and CREDIT_MONGO_DB), CREDIT_PG_URL (and CREDIT_PG_SCHEMA) or CREDIT_SQLITE_PATH (or give --sqlite FILE)";

/** Where a command's store comes from: the environment (as `createDbManagerFromEnv`), or a given one. @public */
export interface StoreSource {
  /** The environment read instead of the process's. */
  env?: DbEnv;
  /** A store to use instead of the environment's (tests, or a host wiring its own). Not closed. */
  db?: DbManager;
}

/**
 * The store of `audit` and `accounts` (docs/cli.md): `source.db` as given, else the SQLite file
 * `sqlite` names (`--sqlite`, which wins over the environment), else the environment's. Opened
 * without `init()`: nothing created or migrated; a SQLite file must exist and be a store at this
 * release's schema version, or a `UsageError` is thrown (and the file left as it was).
 * `memoryFromEnv`: an empty in-memory store made because the environment names none (the caller decides
 * whether that is a usage error); `owned`: the caller closes it.
 */
export async function openCommandStore(
  sqlite: string | undefined,
  source: StoreSource,
): Promise<{ db: DbManager; owned: boolean; memoryFromEnv: boolean }> {
  const env = source.env ?? process.env;
  const db = source.db ?? (await createDbManagerFromEnv(sqlite === undefined ? env : { CREDIT_SQLITE_PATH: sqlite }));
  const owned = source.db === undefined;
  // A store that must be opened before it is read, and is not created or migrated for it (SQLite).
  const opener = db as DbManager & { openExisting?: () => Promise<void> };
  if (typeof opener.openExisting === "function") {
    try {
      await opener.openExisting();
    } catch (error) {
      // Cleanup: the error being thrown is the one to report.
      if (owned) await db.close().catch(() => undefined);
      if (error instanceof ConfigurationError) throw new UsageError(error.message);
      throw error;
    }
  }
  return { db, owned, memoryFromEnv: owned && db instanceof InMemoryDbManager };
}

/**
 * Closes each in turn on a command's way out (its `finally`). A failure to close is dropped: the
 * command's own result or error is what it reports.
 */
export async function closeQuietly(...closers: (() => Promise<unknown> | undefined)[]): Promise<void> {
  // Dropped on purpose: the command has already answered; a failed close only leaks a handle the exit frees.
  for (const close of closers) await close()?.catch(() => undefined);
}

/**
 * Runs `run` with a manager on the store of `audit`, `revenue`, `accounts` or `reverse`
 * (docs/cli.md): the store as `openCommandStore` opens it, without init(); the empty in-memory
 * store the environment falls back to is a `UsageError` naming the variables. A command that
 * `writes` (`accounts`, `reverse`) also sends what it writes to the JSONL file CREDIT_LEDGER_FILE
 * names, and invalidates what the services cached in the Redis cache CREDIT_REDIS_URL and
 * CREDIT_REDIS_CACHE_PREFIX name (as the worker's); one that reads has neither. Afterwards a store
 * given by the caller stays open (only the manager's ledger is closed); one made from the
 * environment is closed, with the cache.
 */
export async function withCommandManager<T>(
  command: { name: string; sqlite: string | undefined; writes: boolean },
  source: StoreSource,
  run: (manager: CreditManager, db: DbManager) => Promise<T>,
): Promise<T> {
  // A command that only reads writes no ledger file and invalidates no cache.
  const env = (command.writes ? (source.env ?? process.env) : {}) as Record<string, string | undefined>;
  const ledgerFile = env.CREDIT_LEDGER_FILE?.trim() || undefined;
  const redisUrl = env.CREDIT_REDIS_URL?.trim() || undefined;
  const cachePrefix = env.CREDIT_REDIS_CACHE_PREFIX?.trim() || undefined;
  if (cachePrefix !== undefined && redisUrl === undefined)
    throw new UsageError("CREDIT_REDIS_CACHE_PREFIX needs CREDIT_REDIS_URL");

  const journalKeys = journalKeysOf((source.env ?? process.env) as Record<string, string | undefined>);
  const { db, owned, memoryFromEnv } = await openCommandStore(command.sqlite, source);
  let cache: RedisCache | undefined;
  let manager: CreditManager | undefined;
  try {
    if (memoryFromEnv) throw new UsageError(`${command.name} reads a store: set ${STORE_VARIABLES}`);
    if (cachePrefix !== undefined) {
      // The services' cache: a write here must invalidate what they cached of the account.
      const { RedisCache } = await import("../redis/index.js");
      cache = await RedisCache.connect(redisUrl as string, { keyPrefix: cachePrefix });
    }
    manager = await createCreditManager({
      db,
      init: false,
      ledger: ledgerFile === undefined ? false : { filePath: ledgerFile },
      ...(cache === undefined ? {} : { cache }),
      ...(journalKeys === undefined ? {} : { journalKeys }),
    }).catch((error: unknown) => {
      if (
        (error instanceof ValidationError || error instanceof ConfigurationError) &&
        /journalKeys/.test(error.message)
      )
        throw new UsageError(`CREDIT_JOURNAL_KEYS: ${error.message}`);
      throw error;
    });
    return await run(manager, db);
  } finally {
    if (manager === undefined) {
      if (owned) await db.close();
    } else if (owned) await manager.close();
    else await manager.ledger.close();
    await cache?.close();
  }
}
