import type { PgPool as Pool, PgPoolConfig as PoolConfig } from "./pg-types.js";
import type { PartitionOptions } from "../../schema/partitions.js";

/**
 * Options of `new PostgresDbManager()`: the connection (a connection string or a pool), the schema and the
 * pool's settings. @public
 */
export interface PostgresDbManagerOptions {
  /**
   * An existing pool. `close()` leaves it open: it is yours, and so are the errors of its idle
   * connections (give it a `pool.on("error", …)` listener, as node-pg asks: without one a dropped
   * idle connection crashes the process). Connections this manager has checked out have one.
   */
  pool?: Pool;
  /**
   * Creates a pool (`pg` must be installed: without it every call fails with ConfigurationError);
   * `close()` ends it. Errors of its idle connections are ignored (the pool drops them).
   */
  connectionString?: string;
  /** More settings of the pool created from `connectionString` (size, timeouts, ssl, …). */
  poolConfig?: Omit<PoolConfig, "connectionString">;
  /** PostgreSQL schema of the tables (created by `init()`). Default: the connection's search_path. */
  schema?: string;
  /** Put in front of every table and index name, e.g. `"credits_"`. */
  tablePrefix?: string;
  /**
   * Prepare statements once per connection (default true). Set false behind a pooler that does
   * not keep sessions (PgBouncer in transaction mode): every statement is then sent in full.
   */
  preparedStatements?: boolean;
  /**
   * Group commit: units of work on different accounts that wait at the same time share one
   * transaction (one lock statement, one read, one write, one COMMIT). `concurrency` batches run
   * at once (each on its own connection), each with up to `maxUnits` units; `waiters` units whose
   * account another process holds wait for its lock at once, each on a connection of its own.
   * `false`: every unit of work is a transaction of its own. Default
   * `{ maxUnits: 32, concurrency: 4, waiters: 4 }`: keep `concurrency + waiters` below the pool size.
   */
  batch?: false | { maxUnits?: number; concurrency?: number; waiters?: number };
  /**
   * Accounts whose last committed state (account row, open grants, active holds) this process
   * keeps (default 10,000; 0: none). A unit of work on such an account locks it as always; the
   * same statement then reads its grants and holds only if the account row is no longer the
   * version the kept state was made from (another process, or another manager, wrote it since),
   * which the server tells by the row's `xmin`. Less work for the server and the client; every
   * guarantee stays.
   */
  stateCacheSize?: number;
  /** @internal Measurement only (bench/postgres-compare.ts): a piece of the machinery off. */
  tune?: { seqscanOff?: boolean; optimistic?: boolean };
  /** @internal Tests: on every state-cache hit, also read the state and fail if they differ. */
  verifyStateCache?: boolean;
  /**
   * Attempts of a unit of work that meets a serialization failure, a deadlock or a concurrent
   * first write of the same new account before it fails with `ConflictError`. Default 10.
   */
  maxAttempts?: number;
  /**
   * Longest wait of a unit of work for an account another transaction holds, in ms (PostgreSQL's
   * `lock_timeout`, set on the store's own transactions). Past it the unit fails with
   * `LockTimeoutError` and writes nothing. What it bounds in practice: an application's own
   * transaction that holds an account until it commits (docs/transactions.md). Default 10,000;
   * 0: wait without limit.
   */
  lockTimeoutMs?: number;
  /**
   * `init()` creates a missing schema and upgrades an older one (default true). `false`, for teams
   * that own their DDL (`npx credit-management schema [--from-version N]`, applied by their
   * migration tool): `init()` only checks that the store is at this release's `SCHEMA_VERSION`
   * and throws `ConfigurationError` naming the command to run when it is older, newer or absent.
   */
  migrate?: boolean;
  /**
   * Partition the journal and the audit-ledger events by `created_at` (docs/running-for-years.md,
   * "Partitioning on PostgreSQL"): `interval` `"day"`, `"week"` or `"month"` (UTC), and `ahead`
   * partitions (default 2) made ahead of the current one, by `init()` and by `ensurePartitions()`
   * (the worker calls it each jobs round). For a new store only: `init()` refuses it on a store
   * whose journal is a plain table (see the docs for the conversion).
   */
  partitions?: PartitionOptions;
  /**
   * A store distributed by user on Citus (docs/scaling-out.md). Left out: `init()` asks the
   * server — on a coordinator with the `citus` extension it creates a new store distributed (every
   * per-account table by `user_id`, colocated with the accounts; plans, promos and the version row
   * as reference tables), and it finds out whether an existing store is. `true`: the same, and
   * `init()` fails with `ConfigurationError` where the server has no Citus or the store is not
   * distributed. `false`: plain tables (on a Citus coordinator: local tables of the coordinator);
   * `init()` fails on a store that is distributed.
   */
  distributed?: boolean;
}
