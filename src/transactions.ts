import type { Cache } from "./core/cache/index.js";
import type { DbManager } from "./core/db/types.js";
import { ConfigurationError, ConflictError, LockTimeoutError } from "./core/errors.js";
import type { LedgerLogger } from "./core/ledger/index.js";
import type { Logger } from "./core/logger.js";
import type { JournalEntry } from "./core/models/index.js";
import type { CreditService } from "./credit-service.js";
import type { PromoService } from "./modules/billing/service-promos.js";
import type { SubscriptionService } from "./core/services/subscription-service.js";

/**
 * The services of a manager inside a transaction of the application's own
 * (`manager.inTransaction`, `manager.transaction`; docs/transactions.md). Their writes — accounts,
 * grants, holds, journal entries, outbox rows, subscriptions, promo claims — go into that
 * transaction and commit or roll back with it. What happens outside the store (the JSONL mirror's
 * lines, cache invalidations) waits for `committed()`; `rolledBack()` drops it.
 * @public
 */
export interface TransactionScope {
  /** Credit operations in the transaction (units of work run one after another, each once). */
  readonly credits: CreditService;
  /** Plans and subscriptions in the transaction. */
  readonly subscriptions: SubscriptionService;
  /** Promo codes in the transaction. */
  readonly promos: PromoService;
  /**
   * Call once the application's transaction has committed: mirrors its journal entries to the
   * ledger file and invalidates the cached balances it changed (awaited). Ends the scope.
   */
  committed(): Promise<void>;
  /**
   * Call once the application's transaction has rolled back (or failed): drops the queued lines
   * and invalidates the cached balances the scope touched (nothing uncommitted was ever cached).
   * Ends the scope.
   */
  rolledBack(): Promise<void>;
}

/** What a unit of work inside the scope queues for after the host's commit. */
interface Effects {
  lines: Array<{ entries: readonly JournalEntry[]; canonicals: readonly string[] | undefined }>;
  keys: Set<string>;
}

/** The services a manager builds over a store, a ledger and a cache (see `createCreditManager`). @internal */
export type ServiceFactory = (
  db: DbManager,
  ledger: LedgerLogger,
  cache: Cache | undefined,
) => { credits: CreditService; subscriptions: SubscriptionService; promos: PromoService };

/** A store that can run its units of work inside a transaction the application has open. @internal */
interface Joinable {
  joinTransaction(handle: unknown): DbManager;
}

function joinable(db: DbManager): db is DbManager & Joinable {
  return typeof (db as Partial<Joinable>).joinTransaction === "function";
}

/** @internal `manager.inTransaction(handle)`. */
export function openScope(
  base: { db: DbManager; ledger: LedgerLogger; cache: Cache | undefined; logger: Logger; build: ServiceFactory },
  handle: unknown,
): TransactionScope {
  const { db, ledger, cache, logger } = base;
  if (!joinable(db)) {
    throw new ConfigurationError(
      `[credit-management] the ${db.name} store cannot join an application's transaction (PostgreSQL can: docs/transactions.md)`,
    );
  }
  const effects: Effects = { lines: [], keys: new Set() };
  let ended = false;
  const joined = db.joinTransaction(handle);
  // After `committed()` or `rolledBack()` the handle's transaction is over: refuse to use it.
  const scopedDb = new Proxy(joined, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (typeof value !== "function" || !ended) return value;
      return () =>
        Promise.reject(
          new ConfigurationError(
            "[credit-management] this transaction scope has ended (committed() or rolledBack() was called): open a new one",
          ),
        );
    },
  });
  // The ledger: journal entries are in the store already (in the host's transaction); their file
  // lines wait for the commit. Error and system events go on as they do (outside the transaction).
  const scopedLedger = Object.create(ledger) as LedgerLogger;
  Object.defineProperty(scopedLedger, "recordTransactions", {
    value: (entries: readonly JournalEntry[], canonicals?: readonly string[]) => {
      effects.lines.push({ entries, canonicals });
    },
  });
  // The cache: never read (the host's transaction sees what others cannot yet), never filled (an
  // uncommitted balance must not be served), invalidated only once the host's transaction ended.
  const scopedCache: Cache | undefined =
    cache === undefined
      ? undefined
      : {
          get: async () => undefined,
          set: async () => {},
          delete: (key: string) => {
            effects.keys.add(key);
          },
        };
  const services = base.build(scopedDb, scopedLedger, scopedCache);
  const invalidate = async () => {
    if (cache === undefined) return;
    await Promise.all(
      [...effects.keys].map(async (key) => {
        try {
          await cache.delete(key);
        } catch (error) {
          logger.warn({ err: error, key }, "credit-management: cache invalidation after a transaction failed");
        }
      }),
    );
  };
  const end = () => {
    if (ended)
      throw new ConfigurationError("[credit-management] committed() or rolledBack() was already called on this scope");
    ended = true;
  };
  return {
    ...services,
    async committed() {
      end();
      for (const { entries, canonicals } of effects.lines) ledger.recordTransactions(entries, canonicals);
      effects.lines = [];
      await invalidate();
    },
    async rolledBack() {
      end();
      effects.lines = [];
      await invalidate();
    },
  };
}

/**
 * A MongoDB `ClientSession` as the library uses it (structural: the core imports no driver): one
 * with a transaction started joins it (`manager.inTransaction(session)`).
 * @public
 */
export interface TransactionSession {
  /** True while the session has a transaction started. */
  inTransaction(): boolean;
}

/** A `MongoClient` as `manager.transaction` uses it: sessions that run `withTransaction`. @public */
export interface SessionSource<S extends TransactionSession> {
  /** A new session, with `withTransaction` and `endSession`. */
  startSession(): S & {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the driver's callback type is its own
    withTransaction<R>(fn: (session: any) => Promise<R>): Promise<R>;
    endSession(): Promise<void>;
  };
}

/**
 * `manager.transaction(mongoClient, fn)`: `fn` inside `session.withTransaction` (which runs it
 * again on a transient error: each run gets a new scope, the committed one's effects follow the
 * commit), and again in a new session on a `ConflictError` from a credit operation (the driver's
 * label is not on it), up to `attempts`.
 */
export async function runSessionTransaction<T, S extends TransactionSession>(
  open: (session: S) => TransactionScope,
  client: SessionSource<S>,
  fn: (tx: TransactionScope, session: S) => Promise<T>,
  options: TransactionOptions | undefined,
): Promise<T> {
  const attempts = checkedAttempts(options);
  for (let attempt = 1; ; attempt++) {
    const session = client.startSession();
    let scope: TransactionScope | undefined;
    try {
      const value = await session.withTransaction(async (s: S) => {
        if (scope !== undefined) await scope.rolledBack(); // an earlier run, aborted
        scope = open(s);
        return fn(scope, s);
      });
      const done = scope as TransactionScope;
      scope = undefined;
      await done.committed();
      return value;
    } catch (error) {
      await scope?.rolledBack();
      if (attempt >= attempts || !retryable(error)) throw error;
    } finally {
      // The outcome is decided above; a session that fails to end is timed out by the server.
      await session.endSession().catch(() => undefined);
    }
    await pause(attempt);
  }
}

/** A pg client as `manager.transaction` uses it. */
interface ClientLike {
  query(text: string, values?: unknown[]): Promise<unknown>;
}

/** Options of `manager.transaction`. @public */
export interface TransactionOptions {
  /**
   * Runs of `fn` when the transaction meets a conflict (`ConflictError` but not `LockTimeoutError`,
   * or PostgreSQL's serialization failure or deadlock in the application's own statements): the
   * transaction is rolled back (MongoDB: aborted) and `fn` runs again, in a new one. Default 3; 1:
   * never again.
   */
  attempts?: number;
}

const RETRY_SQLSTATES = new Set(["40001", "40P01"]);

function retryable(error: unknown): boolean {
  if (error instanceof LockTimeoutError) return false;
  if (error instanceof ConflictError) return true;
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && RETRY_SQLSTATES.has(code);
}

/**
 * @internal `manager.transaction(pool, fn)`: BEGIN on a connection of `pool`, `fn` with the scope
 * and the connection, COMMIT, then the after-commit effects; ROLLBACK and `rolledBack()` when
 * anything failed, and `fn` again on a conflict (up to `attempts`).
 */
export async function runTransaction<T, C extends ClientLike & { release(error?: Error | boolean): void }>(
  open: (client: C) => TransactionScope,
  pool: { connect(): Promise<C> },
  fn: (tx: TransactionScope, client: C) => Promise<T>,
  options: TransactionOptions | undefined,
  lockTimeoutMs: number | undefined,
): Promise<T> {
  if (typeof (pool as { connect?: unknown } | null)?.connect !== "function") {
    throw new ConfigurationError(
      "[credit-management] manager.transaction(pool, fn) needs a pg Pool (anything with connect()); inside a transaction of your own use manager.inTransaction(client)",
    );
  }
  const attempts = checkedAttempts(options);
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken: unknown = false;
    let scope: TransactionScope | undefined;
    let committed: TransactionScope | undefined;
    try {
      await client.query("BEGIN");
      if (lockTimeoutMs !== undefined && lockTimeoutMs > 0)
        await client.query(`SET LOCAL lock_timeout = ${Math.trunc(lockTimeoutMs)}`);
      scope = open(client);
      const value = await fn(scope, client);
      await client.query("COMMIT");
      committed = scope;
      return value;
    } catch (error) {
      try {
        await client.query("ROLLBACK");
      } catch (failure) {
        broken = failure;
      }
      await scope?.rolledBack();
      if (attempt >= attempts || !retryable(error)) throw error;
    } finally {
      client.release(broken instanceof Error ? broken : undefined);
      await committed?.committed();
    }
    await pause(attempt);
  }
}

function checkedAttempts(options: TransactionOptions | undefined): number {
  const attempts = options?.attempts ?? 3;
  if (!Number.isSafeInteger(attempts) || attempts < 1)
    throw new ConfigurationError("[credit-management] options.attempts must be a positive integer");
  return attempts;
}

/** Before another run of a transaction: jittered, 5 ms doubling per attempt. */
const pause = (attempt: number) =>
  new Promise((resolve) => setTimeout(resolve, 5 * 2 ** attempt * (0.5 + Math.random() / 2)));
