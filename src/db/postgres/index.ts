import { StoreBase } from "../../core/db/store/base.js";
import type { SideParts } from "../../core/db/store/parts.js";
import type { ModuleParts, ModuleStorePart } from "../../core/db/module-part.js";
import { bindPostgres, type PostgresBoundPart } from "./module-part.js";
import type * as PgModule from "pg";
import { rollupDays, usageSql } from "./usage.js";
import { usageBucket } from "../usage-query.js";
import { rollupAsOfSql, rollupNames } from "../../schema/rollup.js";
import { catchUpRollup, rollupRound } from "./usage-rollup.js";
import type { UsageBucket, UsageCatchUp, UsageRollupRow, UsageScan } from "../../core/domain/usage.js";
import type { PgPool as Pool, PgPoolClient as PoolClient } from "./pg-types.js";
import { ConfigurationError, CreditError, StorageError } from "../../core/errors.js";
import type { Account, Grant, JournalEntry, LedgerEntry, Reservation } from "../../core/models/index.js";
import { SYSTEM_KEY_PREFIX } from "../../core/models/common.js";
import { PostgresOutbox } from "./outbox.js";
import { decodeRow } from "../../schema/codec.js";
import type {
  AccountCredits,
  DbManager,
  DbTransaction,
  JournalQuery,
  LedgerQuery,
  ScanCursor,
  StoreStats,
} from "../../core/db/types.js";
import type { Unit } from "./unit.js";
import { UnitDispatch } from "./dispatch.js";
import { queryOf } from "./prepared.js";
import { byId, list, one, scanDue } from "./reads.js";
import { detectDistributed, distributedDdlSettings } from "./citus.js";
import { REVISION } from "../../schema/citus-units.js";
import type { PostgresDbManagerOptions } from "./options.js";
import { isConnectionLevel, storageError, workerCode } from "./errors.js";
import { hostStore, type PgQueryable } from "./host.js";
import { PostgresSql, insertRowText, output, toRow } from "./sql.js";
import { upgradeStatements, versionRefusal } from "../../schema/migrations.js";
import { SCHEMA_COMPONENT } from "../../schema/sql.js";
import { targetVersion } from "../../schema/version.js";
import { StateCache } from "./state-cache.js";
import { DEFAULT_AHEAD, PartitionOptions } from "../../schema/partitions.js";
import type {
  ArchivePartitionsInput,
  ArchivePartitionsReport,
  ConvertReport,
  EnsurePartitionsReport,
  PartitionInfo,
} from "../../core/db/types-partitions.js";
import {
  archivePartitions,
  convertToPartitioned,
  ensurePartitions,
  listPartitions,
  relationKind,
} from "./partitions.js";
import { PostgresSubscriptionStore } from "./subscriptions.js";

export type {
  ArchivePartitionsInput,
  ArchivePartitionsReport,
  ArchivedPartition,
  ConvertReport,
  EnsurePartitionsReport,
  PartitionInfo,
} from "../../core/db/types-partitions.js";
export type { PgQueryable } from "./host.js";
export type { PostgresDbManagerOptions } from "./options.js";
export type { PgPool, PgPoolClient, PgPoolConfig, PgQuery, PgQueryResult } from "./pg-types.js";

/** Journal entries one statement of `deleteJournalBefore` removes (docs/operations.md, "Checkpoints and archival"). */
const DELETE_BATCH = 10_000;

/** A connection this process has checked out: its 'error' listener, and the first error it heard. */
interface Lease {
  listener: (error: Error) => void;
  error: Error | undefined;
}
const leases = new WeakMap<PoolClient, Lease>();

/**
 * The PostgreSQL store, on `pg`.
 *
 * A unit of work runs in a transaction that locks its account row (`SELECT … FOR UPDATE`), so
 * units of work on one account run one after another across every process. A transaction costs
 * two round trips (one when the unit starts from the state cache: `Batch.optimistic`):
 *
 *  1. `BEGIN; EXECUTE lock; EXECUTE state` in one message: the lock, then (in a statement with a
 *     fresh READ COMMITTED snapshot, so it sees what the previous lock holder committed) the
 *     account, open grants, active holds and the idempotent entry as JSON — or, when the locked
 *     row is the version (`xmin`) this process's state cache holds, none of them but the entry;
 *  2. `EXECUTE save; COMMIT` in one message: one statement writes everything (a CTE of inserts
 *     and updates from JSON arrays) and fails unless every account row passed its `seq` guard.
 *
 * Group commit (`batch`, on by default): units of work on different accounts that wait at the
 * same time share one such transaction, so n units cost two round trips and one COMMIT. Batches
 * never wait for a row lock (`SKIP LOCKED`); a unit whose account another transaction holds runs
 * again alone and waits for it ({@link Batch}).
 *
 * `save()` queues the changes; they are written when the unit of work returns, so a unit of work
 * that throws after `save()` writes nothing. Unique violations (two first writes of a new account,
 * an idempotency key), serialization failures and deadlocks run the unit of work again, alone,
 * with jittered backoff; there `load()` finds the key and the service answers with the first
 * result. After `maxAttempts` such failures a unit of work runs once more alone, waiting for its
 * row lock, before `ConflictError`. A unit of work whose connection is lost before its save message was sent (nothing of it
 * written) runs again the same way, on another connection. Other database errors surface as
 * `StorageError` with the driver's error as `cause`; a connection lost while its COMMIT was in
 * flight too (the outcome is unknown: it does not run again). A connection that failed is closed,
 * never handed out again.
 * @public
 */
export class PostgresDbManager extends StoreBase implements DbManager {
  /** The store's name (`memory`, `postgres`, `mongodb`, `sqlite`, …), in diagnostics and errors. */
  readonly name = "postgres";
  /** What the store supports: its transactions and its optional parts. */
  readonly capabilities = { multiProcess: true } as const;
  /**
   * @internal The SQL this manager runs (table names, DDL, statements); `init()` makes it distributed
   * on Citus.
   */
  sql: PostgresSql;
  private pool: Pool | null;
  private poolPromise: Promise<Pool> | null = null;
  private readonly ownsPool: boolean;
  /** @internal */
  readonly options: PostgresDbManagerOptions;
  /** @internal Group commit and the runs again of units of work (./dispatch.ts). */
  readonly units: UnitDispatch;
  private readonly outbox: PostgresOutbox;
  /** @internal */
  readonly prepared: boolean;
  /** @internal Last committed states of recently used accounts (null: none kept, or distributed). */
  states: StateCache | null;
  /** @internal */
  readonly verifyStates: boolean;
  /** @internal `stateCacheSize` (0: no state cache). */
  readonly stateCacheSize: number;
  private closed = false;
  private readonly migrate: boolean;
  /** @internal `lockTimeoutMs` (0: none). */
  readonly lockTimeoutMs: number;
  /** Round trips to the server (for benchmarks and tests). */
  roundTrips = 0;
  /** Loads answered from the state cache (for benchmarks and tests). */
  stateCacheHits = 0;
  /** `partitions`, validated (null: not partitioned by this manager). */
  readonly partitioning: Required<PartitionOptions> | null;
  /** Plans and subscriptions (see `./subscriptions.ts`). */
  private readonly subscriptionStore = new PostgresSubscriptionStore(this);

  /** A store on PostgreSQL: a pool made from `options` (`connectionString`), or the `pool` given. */
  constructor(options: PostgresDbManagerOptions) {
    super();
    if ((options.pool === undefined) === (options.connectionString === undefined)) {
      throw new ConfigurationError("[credit-management] [postgres] pass exactly one of `pool` or `connectionString`");
    }
    if (options.partitions === undefined) this.partitioning = null;
    else {
      const p = PartitionOptions.safeParse(options.partitions);
      if (!p.success)
        throw new ConfigurationError(
          `[credit-management] [postgres] \`partitions\` must be { interval: "day" | "week" | "month", ahead?: 0…366 }: ${p.error.issues.map((i) => `${i.path.join(".") || "partitions"}: ${i.message}`).join("; ")}`,
        );
      this.partitioning = { interval: p.data.interval, ahead: p.data.ahead ?? DEFAULT_AHEAD };
    }
    try {
      this.sql = new PostgresSql({
        schema: options.schema,
        prefix: options.tablePrefix,
        ...(this.partitioning === null ? {} : { partitioned: this.partitioning }),
      });
    } catch (error) {
      throw new ConfigurationError(`[credit-management] [postgres] ${(error as Error).message}`, error);
    }
    this.options = options;
    this.migrate = options.migrate !== false;
    this.pool = options.pool ?? null;
    this.ownsPool = options.pool === undefined;
    const lockTimeout = options.lockTimeoutMs ?? 10_000;
    if (!Number.isSafeInteger(lockTimeout) || lockTimeout < 0) {
      throw new ConfigurationError("[credit-management] [postgres] `lockTimeoutMs` must be a non-negative integer");
    }
    this.lockTimeoutMs = lockTimeout;
    const cacheSize = options.stateCacheSize ?? 10_000;
    if (!Number.isSafeInteger(cacheSize) || cacheSize < 0) {
      throw new ConfigurationError("[credit-management] [postgres] `stateCacheSize` must be a non-negative integer");
    }
    this.stateCacheSize = cacheSize;
    this.states = cacheSize === 0 ? null : new StateCache(cacheSize);
    this.verifyStates = options.verifyStateCache === true;
    this.prepared = options.preparedStatements !== false;
    this.units = new UnitDispatch(this, options.batch, Math.max(1, options.maxAttempts ?? 10));
    this.outbox = new PostgresOutbox(this);
  }

  /**
   * Creates the schema, tables and indexes (the schema generator's DDL) when the store has none or
   * an older version, under an advisory lock so several processes may call it at once.
   */
  async init(): Promise<void> {
    const client = await this.connect();
    let broken: unknown = false;
    try {
      await client.query("BEGIN");
      await this.detectCitus(client);
      // The schema is shared by every table prefix, whose locks differ: two managers with other
      // prefixes would both insert it (CREATE SCHEMA IF NOT EXISTS takes no lock: the second fails
      // with a unique violation). So every init takes the schema's lock, then its own; and a
      // concurrent creator that takes neither (another tool) is tolerated.
      if (this.sql.createSchema !== null)
        await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [this.sql.schemaLockKey]);
      await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [this.sql.lockKey]);
      if (this.sql.createSchema !== null && this.migrate) {
        await client.query("SAVEPOINT cm_schema");
        try {
          await client.query(this.sql.createSchema);
        } catch (error) {
          const code = (error as { code?: unknown }).code;
          if (code !== "23505" && code !== "42P06") throw error;
          // Created concurrently and committed (we waited for it): now the statement finds it.
          await client.query("ROLLBACK TO SAVEPOINT cm_schema");
          await client.query(this.sql.createSchema);
        }
        await client.query("RELEASE SAVEPOINT cm_schema");
      }
      const naming = { schema: this.options.schema, prefix: this.options.tablePrefix };
      await client.query("SAVEPOINT cm_version");
      const found: { rows: { version: number }[] } = await client
        .query(`SELECT version FROM ${this.sql.versionTable} WHERE component = '${SCHEMA_COMPONENT}'`)
        .catch(async (error: unknown) => {
          if ((error as { code?: unknown }).code !== "42P01") throw error; // undefined_table: a new store
          await client.query("ROLLBACK TO SAVEPOINT cm_version");
          return { rows: [] as { version: number }[] };
        });
      const version = found.rows[0]?.version ?? 0;
      const refused = versionRefusal("postgres", version, this.migrate, this.sql.versionTable);
      if (refused !== null) throw refused;
      if (this.partitioning !== null && version > 0 && (await relationKind(this, client, "journal")) === "r") {
        throw new ConfigurationError(
          `[credit-management] [postgres] \`partitions\` is set but the store's journal (${this.sql.tables.journal.qualified}) is a plain table: a store is partitioned when it is created; convert it first (docs/running-for-years.md, "Partitioning on PostgreSQL") or leave \`partitions\` out`,
        );
      }
      if (version < targetVersion()) {
        // The steps of every later version (columns added to tables the store has), then today's
        // DDL, which creates what is missing and sets the version row (src/schema/migrations.ts).
        if (version > 0)
          for (const statement of upgradeStatements({
            dialect: "postgres",
            fromVersion: version,
            ...naming,
            ...(this.sql.distributed ? { distributed: true } : {}),
          }))
            await client.query(statement);
        if (this.sql.distributed) for (const statement of this.sql.ddlStatements) await client.query(statement);
        else await client.query(this.sql.ddl);
      }
      // The modules' tables, in this transaction and under its lock (docs/writing-a-store.md, "A module's part").
      const run = async (text: string) => void (await client.query(text));
      if (this.migrate) for (const { part } of this.modules.bound) await (part as PostgresBoundPart).migrate?.(run);
      await client.query("COMMIT");
    } catch (error) {
      broken = (await rollback(client)) && error;
      if (error instanceof ConfigurationError) throw error;
      throw storageError("init", error);
    } finally {
      this.release(client, broken);
    }
    if (this.partitioning !== null && this.migrate) await this.ensurePartitions();
  }

  /**
   * In `init()`'s transaction: whether the store is distributed on Citus (the `distributed`
   * option, the server's extensions and, for a store that exists, its accounts table), and the
   * SQL for it. A distributed store's DDL runs with the settings Citus needs for it in a
   * transaction: triggers on distributed tables (the usage rollup's), and its commands to the
   * workers over one connection each, so that later ones see the tables the first made.
   */
  private async detectCitus(client: PoolClient): Promise<void> {
    const distributed = await detectDistributed(client, this.options.distributed, this.sql.tables.accounts.qualified);
    if (distributed !== this.sql.distributed) {
      this.sql = new PostgresSql({
        schema: this.options.schema,
        prefix: this.options.tablePrefix,
        ...(this.partitioning === null ? {} : { partitioned: this.partitioning }),
        distributed,
      });
      this.creditsStatement = undefined;
    }
    if (distributed) {
      // The rows' `xmin` that the state cache keys on belongs to a worker (and changes when a
      // shard moves); the save statement's transaction id is the coordinator's: no state cache.
      this.states = null;
      if (this.partitioning !== null)
        throw new ConfigurationError(
          "[credit-management] [postgres] `partitions` and a store distributed on Citus cannot be combined (docs/scaling-out.md)",
        );
      await distributedDdlSettings(client);
    }
  }

  /**
   * With `partitions`: creates the partitions of the current interval at `now` and the `ahead`
   * after it where none covers them yet (rows that reached the DEFAULT partition in such a range
   * move into the new one). Idempotent, under the store's advisory lock; the worker runs it each
   * jobs round (docs/running-for-years.md, "Partitioning on PostgreSQL"). Without: does nothing.
   */
  async ensurePartitions(now: Date = new Date()): Promise<EnsurePartitionsReport> {
    if (this.partitioning === null) return { created: [], movedFromDefault: 0 };
    return ensurePartitions(this, this.partitioning.interval, this.partitioning.ahead, now);
  }

  /**
   * With `partitions`: converts a store made without them (its journal and ledger table plain
   * tables) to the partitioned layout, in one transaction that writers wait for (a maintenance
   * window: every row is copied). Partitions are made from the interval of the oldest row to
   * `ahead` after `now`; the old tables are dropped unless `keepOld` (then kept as
   * `<table>_unpartitioned`). Call it before `init()`, which refuses `partitions` on a plain store
   * (docs/running-for-years.md, "Partitioning on PostgreSQL"). A store already partitioned: nothing.
   */
  async convertToPartitioned(options: { now?: Date; keepOld?: boolean } = {}): Promise<ConvertReport> {
    if (this.partitioning === null)
      throw new ConfigurationError("[credit-management] [postgres] convertToPartitioned needs the `partitions` option");
    return convertToPartitioned(
      this,
      this.partitioning.interval,
      this.partitioning.ahead,
      options.now ?? new Date(),
      options.keepOld === true,
    );
  }

  /** The partitions of the journal and the ledger table, oldest first (none: not partitioned). */
  listPartitions(): Promise<PartitionInfo[]> {
    return listPartitions(this);
  }

  /**
   * @internal Detaches and archives the partitions older than `before` (`credits.archivePartitions`,
   * which validates the options and writes missing checkpoints): see ./partitions.ts.
   */
  archivePartitions(input: ArchivePartitionsInput): Promise<ArchivePartitionsReport> {
    return archivePartitions(this, input);
  }

  /** Ends the pool if this manager created it. */
  protected override async closeOnce(): Promise<void> {
    this.closed = true;
    if (!this.ownsPool) return;
    // A pool that could not be made (no "pg" package) has nothing to end; the call that made it got the error.
    const pool = this.pool ?? (this.poolPromise ? await this.poolPromise.catch(() => null) : null);
    await pool?.end();
  }

  /**
   * Runs `fn` as one unit of work on the user's account: its writes commit together or not at all; `fn` runs
   * again after a write conflict.
   */
  transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const unit: Unit = {
        userId,
        fn: fn as Unit["fn"],
        resolve: resolve as Unit["resolve"],
        reject,
        attempts: 0,
        solo: false,
        wait: false,
      };
      this.units.push(unit);
    });
  }

  /**
   * Whether `entry` is committed, for a unit of work whose commit's answer was lost
   * (docs/storage.md, "Conflicts and errors"), asked under the account's row lock: in
   * one transaction, the account row is locked, which waits for a save still in progress (every
   * save writes its account row first); on Citus its revision is moved too, so that a save sent
   * earlier that has not reached the worker yet fails its revision check, and the move is
   * committed. An account with no row is inserted instead, which waits for a save in progress that
   * creates it; if the insert goes through, no such save committed: it is rolled back and the
   * answer is no (on Citus: unknown, `null`, since a first save may not have reached the worker
   * yet). Then the entry is read, in a statement that sees every commit the lock waited
   * for (read committed).
   */
  async entryCommitted(userId: string, entry: JournalEntry): Promise<boolean | null> {
    const { accounts, journal } = this.sql.tables;
    const lock = this.sql.distributed
      ? `UPDATE ${accounts.qualified} SET ${REVISION} = ${REVISION} + 1 WHERE user_id = $1 RETURNING true`
      : `SELECT true FROM ${accounts.qualified} WHERE user_id = $1 FOR UPDATE`;
    const create =
      `INSERT INTO ${accounts.qualified} (user_id, balance, reserved, debt, seq, created_at, updated_at) ` +
      `VALUES ($1, 0, 0, 0, 0, now(), now()) ON CONFLICT (user_id) DO NOTHING RETURNING true`;
    const read = `SELECT true FROM ${journal.qualified} WHERE user_id = $1 AND id = $2`;
    return this.onConnection("entryCommitted", async (client, drop) => {
      await client.query(
        `BEGIN ISOLATION LEVEL READ COMMITTED; SELECT set_config('lock_timeout', '${this.lockTimeoutMs}', true)`,
      );
      try {
        const locked = (await client.query({ text: lock, values: [userId] })).rows.length > 0;
        if (!locked && (await client.query({ text: create, values: [userId] })).rows.length > 0) {
          // No save creating the account is in progress here. On Citus a first save may still be
          // on its way to the account's worker, and nothing stops it landing later without leaving
          // an empty account behind: the outcome cannot be known (docs/limitations.md).
          await client.query("ROLLBACK");
          return this.sql.distributed ? null : false;
        }
        const found = (await client.query({ text: read, values: [userId, entry.id] })).rows.length > 0;
        await client.query("COMMIT");
        return found;
      } catch (error) {
        await client.query("ROLLBACK").catch(drop);
        throw error;
      }
    });
  }

  /**
   * This store on `client`, a connection inside a transaction the application has open: reads and
   * units of work run there, without BEGIN or COMMIT of their own, so they commit or roll back with
   * it. For `manager.inTransaction(client)` (docs/transactions.md), which adds the services and
   * their after-commit effects; on its own it changes no cache and writes no ledger file.
   */
  joinTransaction(client: PgQueryable): DbManager {
    if (typeof (client as { query?: unknown } | null)?.query !== "function") {
      throw new ConfigurationError(
        "[credit-management] [postgres] a transaction to join must be a client with `query(text, values)` (a pg client after BEGIN, or an adapter over your query builder's transaction: docs/transactions.md)",
      );
    }
    return hostStore(this, client);
  }

  /** The version row: one round trip that proves the store answers (docs/observability.md). */
  async ping(): Promise<{ schemaVersion: number | null }> {
    const rows = await this.read("ping", `SELECT version FROM ${this.sql.versionTable} WHERE component = $1`, [
      SCHEMA_COMPONENT,
    ]);
    return { schemaVersion: rows[0] === undefined ? null : Number(rows[0].version) };
  }

  /**
   * Active holds (the `status_expiry` index) and the outbox's pending (`pending_due`) and failed
   * rows (the partial index `notifications_failed`): no scan of the outbox.
   */
  async stats(): Promise<StoreStats> {
    const r = this.sql.tables.reservations.qualified;
    const n = this.sql.tables.notifications.qualified;
    const text =
      `SELECT (SELECT count(*) FROM ${r} WHERE status = 'active')::float8 AS holds, ` +
      `(SELECT coalesce(sum(amount), 0) FROM ${r} WHERE status = 'active')::float8 AS held, ` +
      `(SELECT count(*) FROM ${n} WHERE status = 'pending')::float8 AS pending, ` +
      `(SELECT count(*) FROM ${n} WHERE status = 'failed')::float8 AS failed, ` +
      `(SELECT extract(epoch FROM min(created_at)) * 1000 FROM ${n} WHERE status = 'pending')::float8 AS oldest`;
    const row = (await this.read("stats", text, []))[0] ?? {};
    return {
      activeHolds: Number(row.holds ?? 0),
      heldCredits: Number(row.held ?? 0),
      outboxPending: Number(row.pending ?? 0),
      outboxFailed: Number(row.failed ?? 0),
      oldestPendingAt: row.oldest === null || row.oldest === undefined ? null : new Date(Number(row.oldest)),
    };
  }

  /** The account; null when the user has none. */
  getAccount(userId: string): Promise<Account | null> {
    return one(this, "getAccount", "accounts", "WHERE user_id = $1", [userId]);
  }

  /**
   * One statement (one snapshot, one round trip): the account row as `getAccount` reads it and,
   * only when it is scoped, its open grants as JSON (dates rendered in UTC by `output`, whatever
   * the session's zone). An account never given a scoped grant reads no grant.
   */
  async getAccountCredits(userId: string): Promise<AccountCredits> {
    const rows = await this.read("getAccountCredits", this.creditsText(), [userId]);
    const row = rows[0];
    if (row === undefined) return { account: null, grants: null };
    const json = row.cm_scoped_grants as string | null | undefined;
    const grants =
      typeof json === "string"
        ? (JSON.parse(json) as Record<string, unknown>[]).map((r) => this.decode<Grant>("grants", r))
        : null;
    const account = this.decode<Account>("accounts", row);
    return { account, grants: account.scoped === true ? (grants ?? []) : null };
  }

  private creditsText(): string {
    if (this.creditsStatement === undefined) {
      const { accounts, grants } = this.sql.tables;
      this.creditsStatement =
        `SELECT ${output(accounts, "a")}, CASE WHEN a.scoped THEN (SELECT json_agg(g)::text FROM ` +
        `(SELECT ${output(grants, "x")} FROM ${grants.qualified} x WHERE x.user_id = a.user_id${this.sql.distributed ? " AND x.user_id = $1" : ""} AND x.remaining > 0 AND x.closed_at IS NULL) g) ` +
        `END AS cm_scoped_grants FROM ${accounts.qualified} a WHERE a.user_id = $1`;
    }
    return this.creditsStatement;
  }
  private creditsStatement: string | undefined;

  /** Up to `limit` account ids after `after`, in id order. */
  async listAccountIds(after: string | null, limit: number): Promise<string[]> {
    // The primary key's own order (its collation breaks ties by bytes: a total order to page by);
    // every user id sorts after the empty one.
    const rows = await this.read(
      "listAccountIds",
      `SELECT user_id FROM ${this.sql.tables.accounts.qualified} WHERE user_id > $1 ORDER BY user_id LIMIT $2`,
      [after ?? "", limit],
    );
    return rows.map((r) => r.user_id as string);
  }

  /** The grant; null when there is none (or, with `userId`, it is another user's). */
  getGrant(grantId: string, userId?: string): Promise<Grant | null> {
    return byId(this, "getGrant", "grants", grantId, userId);
  }

  /** The hold; null when there is none (or, with `userId`, it is another user's). */
  getReservation(reservationId: string, userId?: string): Promise<Reservation | null> {
    return byId(this, "getReservation", "reservations", reservationId, userId);
  }

  /** The user's grants: the open ones, or every one with `includeInactive`. */
  listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]> {
    const where = options?.includeInactive ? "" : " AND remaining > 0 AND closed_at IS NULL";
    const order = `${this.sql.column("grants", "created_at")}, id`;
    return list(this, "listGrants", "grants", `WHERE user_id = $1${where} ORDER BY ${order}`, [userId]);
  }

  /** The user's holds, of one status when `status` is given. */
  listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]> {
    const order = `${this.sql.column("reservations", "created_at")}, id`;
    return options?.status === undefined
      ? list(this, "listReservations", "reservations", `WHERE user_id = $1 ORDER BY ${order}`, [userId])
      : list(this, "listReservations", "reservations", `WHERE user_id = $1 AND status = $2 ORDER BY ${order}`, [
          userId,
          options.status,
        ]);
  }

  /** False once the rollup table was found missing (a schema applied without it). */
  private hasRollup = true;

  /**
   * Runs `work`, which needs the usage rollup's table; null, without running it, once that table
   * was found missing (a schema applied without it), and null when `work` finds it missing.
   */
  private async withRollup<T>(work: () => Promise<T>): Promise<T | null> {
    if (!this.hasRollup) return null;
    try {
      return await work();
    } catch (error) {
      if (!isMissingRelation(error)) throw error;
      this.hasRollup = false;
      return null;
    }
  }

  /**
   * @internal Adds the journal's entries past each account's rollup cursor to the daily usage
   * rollup (docs/usage.md, "The daily rollup"; `catchUpRollup` of ./usage-rollup.ts): every
   * account's, or `userId`'s only, each up to at least its seq when the call began. Returns the
   * accounts caught up. On Citus, one account a statement (each routed to the worker that holds it).
   */
  async catchUpUsageRollup(userId?: string): Promise<number> {
    return catchUpRollup(this, userId);
  }

  /** The worker's usage round (./usage-rollup.ts; docs/usage.md, "Keeping the rollup caught up"). */
  async catchUpUsage(options: { maxEntries: number; batchEntries?: number }): Promise<UsageCatchUp> {
    return (await this.withRollup(() => rollupRound(this, options))) ?? { accounts: 0, entries: 0, more: false };
  }

  /** The journal's usage, summed per bucket of the scan (docs/usage.md). */
  async usage(scan: UsageScan): Promise<UsageBucket[]> {
    const journal = this.sql.tables.journal.qualified;
    // Reports across accounts by whole UTC days read the daily rollup (docs/usage.md), caught up
    // to the journal first.
    const days = this.hasRollup ? rollupDays(scan) : null;
    if (days !== null) {
      const { text, params } = usageSql(journal, scan, { table: rollupNames(this.sql.naming).table, days });
      const rows = await this.withRollup(async () => {
        await this.catchUpUsageRollup();
        return this.readWithoutJit("usage", text, params);
      });
      if (rows !== null) return rows.map((r) => usageBucket(r, scan));
    }
    const { text, params } = usageSql(journal, scan);
    const rows = await this.read("usage", text, params);
    return rows.map((r) => usageBucket(r, scan));
  }

  /**
   * @internal The daily usage rollup's rows of one account (docs/usage.md, "The daily rollup"),
   * oldest day first; null when the store has no rollup. `CreditService.audit` compares them with
   * the journal.
   */
  async usageRollup(userId: string): Promise<UsageRollupRow[] | null> {
    return this.withRollup(async () => {
      await this.catchUpUsageRollup(userId);
      const rows = await this.read(
        "usageRollup",
        `SELECT to_char(day, 'YYYY-MM-DD') AS day, kind, unit, credits, requests, input_tokens, output_tokens, cached_tokens, shortfall ` +
          `FROM ${rollupNames(this.sql.naming).table} WHERE user_id = $1 ORDER BY day, kind, unit`,
        [userId],
      );
      return rollupRows(rows);
    });
  }

  /**
   * Runs `fn` with this store as one snapshot shows it, every account (`DbManager.readSnapshot`;
   * docs/operations.md, "Auditing"): a read-only transaction at REPEATABLE READ on one pooled connection, which every
   * read of the store `fn` is given runs on (`hostStore`), so that they all see the same committed
   * state whatever commits meanwhile. The account's rollup is caught up before; inside, its
   * `usageRollup` reads the rollup as a catch-up would leave it at that snapshot (`rollupAsOfSql`):
   * a catch-up writes, which a read-only transaction cannot.
   */
  async readSnapshot<T>(userId: string, fn: (db: DbManager) => Promise<T>): Promise<T> {
    // The account's rollup caught up first (docs/usage.md, "The daily rollup"), as a reader's is.
    await this.withRollup(() => this.catchUpUsageRollup(userId));
    const client = await this.connect();
    let failure: unknown = false;
    try {
      this.roundTrips++;
      await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
      // One statement at a time on the connection: `fn` may start reads together (Promise.all).
      let tail: Promise<unknown> = Promise.resolve();
      const serial: PgQueryable = {
        query: (text, values) => {
          const result = tail.then(() => client.query(text, values));
          // Only the order of the next statement hangs on it: `result` itself, rejected, reaches its caller.
          tail = result.catch(() => undefined);
          return result;
        },
      };
      const scoped = hostStore(this, serial);
      const asOf = rollupAsOfSql(this.sql.tables.journal.qualified, this.sql.naming);
      const usageRollup = (userId: string) =>
        this.withRollup(async () => rollupRows((await serial.query(asOf, [userId])).rows as Record<string, unknown>[]));
      Object.defineProperty(scoped, "usageRollup", { value: usageRollup, configurable: true });
      const value = await fn(scoped);
      await client.query("COMMIT");
      return value;
    } catch (error) {
      if (isConnectionLevel(error)) failure = error;
      // The error of `fn` is the one reported; a connection that cannot roll back is dropped, not pooled.
      await client.query("ROLLBACK").catch((e: unknown) => (failure = e));
      throw error;
    } finally {
      this.release(client, failure);
    }
  }

  /** The user's journal entries the query selects, in sequence order. */
  listJournal(userId: string, query: JournalQuery): Promise<JournalEntry[]> {
    const params: unknown[] = [userId];
    const where = ["user_id = $1"];
    const add = (sql: (n: number) => string, value: unknown) => {
      params.push(value);
      where.push(sql(params.length));
    };
    if (query.order === "desc" && query.beforeSeq !== undefined) add((n) => `seq < $${n}`, query.beforeSeq);
    if (query.order === "asc" && query.afterSeq !== undefined) add((n) => `seq > $${n}`, query.afterSeq);
    if (query.types !== undefined) add((n) => `type = ANY($${n}::text[])`, [...query.types]);
    // When the money moved (docs/concepts.md, "Two times on every entry"): never after created_at,
    // whose bound keeps the journal's time partitions pruned.
    if (query.from !== undefined)
      add((n) => `created_at >= $${n} AND coalesce(occurred_at, created_at) >= $${n}`, query.from);
    if (query.to !== undefined) add((n) => `coalesce(occurred_at, created_at) < $${n}`, query.to);
    params.push(query.limit);
    const rest = `WHERE ${where.join(" AND ")} ORDER BY seq ${query.order === "desc" ? "DESC" : "ASC"} LIMIT $${params.length}`;
    return list(this, "listJournal", "journal", rest, params);
  }

  /**
   * Moves the keys to `forgotten_key` (out of the partial unique index, which VACUUM then shrinks;
   * the entry keeps its key and its hash verifies). Rows a unit of work holds are skipped for the
   * next call. Reads the live keys through their index: the work of a call is bounded by the keys
   * the window keeps (docs/running-for-years.md).
   */
  async forgetIdempotencyKeys(before: Date, limit: number): Promise<number> {
    const t = this.sql.tables.journal.qualified;
    const rows = await this.read(
      "forgetIdempotencyKeys",
      // Citus locks no rows across shards: there the update re-checks each row it locks instead.
      `WITH c AS (SELECT user_id, seq FROM ${t} WHERE idempotency_key IS NOT NULL AND created_at < $1 ` +
        `AND substr(idempotency_key, 1, ${SYSTEM_KEY_PREFIX.length}) <> $3 LIMIT $2${this.sql.distributed ? "" : " FOR UPDATE SKIP LOCKED"}), ` +
        `u AS (UPDATE ${t} j SET forgotten_key = j.idempotency_key, idempotency_key = NULL FROM c ` +
        `WHERE j.user_id = c.user_id AND j.seq = c.seq${this.sql.distributed ? " AND j.idempotency_key IS NOT NULL" : ""} RETURNING 1) SELECT count(*)::int AS n FROM u`,
      [before, limit, SYSTEM_KEY_PREFIX],
    );
    return Number(rows[0]?.n ?? 0);
  }

  /** Deletes the user's journal entries before sequence `beforeSeq` (archival); resolves to how many. */
  async deleteJournalBefore(userId: string, beforeSeq: number): Promise<number> {
    // The usage rollup keeps the days of archived entries: it has them before they go (docs/usage.md).
    await this.withRollup(() => this.catchUpUsageRollup(userId));
    // In batches by the primary key, so no statement holds many row locks or a long transaction.
    const t = this.sql.tables.journal.qualified;
    const text = `DELETE FROM ${t} WHERE user_id = $1 AND seq IN (SELECT seq FROM ${t} WHERE user_id = $1 AND seq < $2 ORDER BY seq LIMIT $3) RETURNING seq`;
    let removed = 0;
    for (;;) {
      const rows = await this.read("deleteJournalBefore", text, [userId, beforeSeq, DELETE_BATCH]);
      removed += rows.length;
      if (rows.length < DELETE_BATCH) return removed;
    }
  }

  /** Open grants expired by `asOf`, at most `limit`, after the cursor. */
  findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]> {
    const where = "remaining > 0 AND closed_at IS NULL AND expires_at IS NOT NULL";
    const cursor = after && { at: after.expiresAt, id: after.id };
    return scanDue(this, "findDueGrants", "grants", "expires_at", where, asOf, limit, cursor);
  }

  /** Active holds expired by `asOf`, at most `limit`, after the cursor. */
  findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]> {
    const cursor = after && { at: after.expiresAt, id: after.id };
    return scanDue(
      this,
      "findExpiredReservations",
      "reservations",
      "expires_at",
      "status = 'active'",
      asOf,
      limit,
      cursor,
    );
  }

  /** The module parts bound to this store, as its kind binds them (`usePart`). @beta */
  declare readonly modules: ModuleParts<PostgresBoundPart>;

  /** A module's PostgreSQL side (`ModuleStorePart.postgres`), bound to this store (./module-part.ts). */
  /** Binds the side of this store's kind of a module's part (once per module, by `usePart`). @beta */
  protected override bindPart(part: ModuleStorePart): PostgresBoundPart | undefined {
    return bindPostgres(part, this);
  }

  /** Plans and subscriptions, the outbox. */
  private partsValue: SideParts | undefined;
  /** The sub-stores this store forwards to. */
  protected get parts(): SideParts {
    return (this.partsValue ??= {
      subscriptions: this.subscriptionStore,
      outbox: this.outbox,
    });
  }

  /** Appends an audit-ledger event. */
  async insertLedgerEntry(entry: LedgerEntry): Promise<void> {
    const t = this.sql.tables.ledger;
    // Not routed on Citus: the ledger stays a table on the coordinator.
    await this.read("insertLedgerEntry", insertRowText(t, false), [JSON.stringify(toRow(t.columns, entry))]);
  }

  /** The audit-ledger events the query selects. */
  listLedgerEntries(query: LedgerQuery): Promise<LedgerEntry[]> {
    const params: unknown[] = [];
    const where: string[] = [];
    const add = (column: string, op: string, value: unknown) => {
      params.push(value);
      where.push(`${column} ${op} $${params.length}`);
    };
    if (query.eventType !== undefined) add("event_type", "=", query.eventType);
    if (query.userId !== undefined) add("user_id", "=", query.userId);
    if (query.before !== undefined && query.beforeId !== undefined) {
      // The same instant as the previous page's last entry: those after it in (created_at, id) order.
      params.push(query.before, query.beforeId);
      where.push(
        `(created_at < $${params.length - 1} OR (created_at = $${params.length - 1} AND id < $${params.length}))`,
      );
    } else if (query.before !== undefined) add("created_at", "<", query.before);
    params.push(query.limit);
    const rest =
      `${where.length ? `WHERE ${where.join(" AND ")} ` : ""}` +
      `ORDER BY ${this.sql.column("ledger", "created_at")} DESC, id DESC LIMIT $${params.length}`;
    return list(this, "listLedgerEntries", "ledger", rest, params);
  }

  // -----------------------------------------------------------------------------------------------

  /** @internal */
  decode<T>(key: keyof PostgresSql["tables"], row: Record<string, unknown>): T {
    return decodeRow<T>(this.sql.tables[key].columns, row);
  }

  /**
   * @internal A pooled connection, to give back with {@link release}. A failure to get one is a
   * StorageError; a missing `pg` package a ConfigurationError.
   *
   * pg-pool takes its own 'error' listener off a client while it is checked out, and node-pg emits
   * 'error' on a client whose connection dies (a closed or reset socket, a FATAL from the server:
   * a terminated backend, `idle_in_transaction_session_timeout`). With no listener that event
   * crashes the process. The query in flight, if any, fails with the same error by itself (and a
   * later one with "not queryable"), and that failure is what the caller gets, as StorageError;
   * the listener only keeps the error, so that the connection is closed rather than reused.
   */
  async connect(): Promise<PoolClient> {
    if (this.closed) throw new StorageError("[credit-management] [postgres] the store is closed");
    let client: PoolClient;
    try {
      const pool = this.pool ?? (await this.createPool());
      client = await pool.connect();
    } catch (error) {
      if (error instanceof ConfigurationError) throw error;
      throw storageError("connect", error);
    }
    const lease: Lease = {
      error: undefined,
      listener: (error) => {
        lease.error ??= error;
      },
    };
    client.on("error", lease.listener);
    leases.set(client, lease);
    return client;
  }

  /**
   * @internal Gives a connection from {@link connect} back to the pool. One that failed, or may be
   * unusable (`failure`: the error, or true), or whose connection died while checked out, is
   * closed instead (`release(error)`), never handed out again.
   */
  release(client: PoolClient, failure: unknown = false): void {
    const lease = leases.get(client);
    leases.delete(client);
    if (lease !== undefined) client.removeListener("error", lease.listener);
    const reason = lease?.error ?? failure;
    if (reason === false || reason === undefined || reason === null) client.release();
    else
      client.release(
        reason instanceof Error
          ? reason
          : new Error("[credit-management] [postgres] connection closed after a failure"),
      );
  }

  /**
   * @internal `read` in a transaction of its own with JIT compilation off: a report over the rollup reads a
   * few hundred thousand narrow rows, which the planner's costs put past `jit_above_cost`, and
   * compiling them took longer than running them (docs/usage.md, "The daily rollup"). `write`: the
   * rollup's catch-up across accounts, whose generated sums the planner costs past it even with
   * nothing to add (compiled, it took 10 s on a loaded machine; without JIT 6–11 ms).
   */
  async readWithoutJit(
    what: string,
    text: string,
    params: unknown[],
    write = false,
  ): Promise<Record<string, unknown>[]> {
    return this.onConnection(what, async (client, drop) => {
      await client.query(write ? "BEGIN" : "BEGIN READ ONLY");
      try {
        await client.query("SET LOCAL jit = off");
        const result = await client.query({ text, values: params });
        await client.query("COMMIT");
        return result.rows as Record<string, unknown>[];
      } catch (error) {
        // The statement's error is the one reported; a connection that cannot roll back is dropped, not pooled.
        await client.query("ROLLBACK").catch(drop);
        throw error;
      }
    });
  }

  /**
   * @internal `fn` in one transaction on a pooled connection, outside units of work (a module's part
   * that writes several statements together): committed when `fn` returns, rolled back when it
   * throws — a `CreditError` of `fn` as it is, a failure of the server a `StorageError`.
   */
  async inTransaction<T>(
    what: string,
    fn: (query: (text: string, params?: unknown[]) => Promise<Record<string, unknown>[]>) => Promise<T>,
  ): Promise<T> {
    const client = await this.connect();
    let failure: unknown = false;
    try {
      this.roundTrips++;
      await client.query("BEGIN");
      const value = await fn(async (text, params = []) => {
        this.roundTrips++;
        return (await client.query(text, params)).rows as Record<string, unknown>[];
      });
      await client.query("COMMIT");
      return value;
    } catch (error) {
      if (isConnectionLevel(error)) failure = error;
      if (await rollback(client)) failure = true;
      if (error instanceof CreditError) throw error;
      throw storageError(what, workerCode(error));
    } finally {
      this.release(client, failure);
    }
  }

  /** @internal Runs one statement outside a unit of work (prepared by name on each connection). */
  read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    return this.onConnection(what, async (client) => {
      const result = await client.query(queryOf(this, text, params));
      return result.rows as Record<string, unknown>[];
    });
  }

  /**
   * `fn` on a pooled connection, one round trip: its failure a `StorageError`, and the connection
   * closed, not pooled, after a connection-level failure or when `fn` drops it (`drop(reason)`).
   */
  private async onConnection<T>(
    what: string,
    fn: (client: PoolClient, drop: (reason: unknown) => void) => Promise<T>,
  ): Promise<T> {
    const client = await this.connect();
    let failure: unknown = false;
    try {
      this.roundTrips++;
      return await fn(client, (reason) => (failure = reason));
    } catch (error) {
      if (isConnectionLevel(error)) failure = error;
      throw storageError(what, workerCode(error));
    } finally {
      this.release(client, failure);
    }
  }

  private createPool(): Promise<Pool> {
    this.poolPromise ??= (async () => {
      let pg: typeof PgModule;
      try {
        const mod = (await import("pg")) as typeof PgModule & { default?: typeof PgModule };
        pg = mod.default ?? mod;
      } catch (error) {
        throw new ConfigurationError(
          '[credit-management] [postgres] install the "pg" package to use PostgresDbManager',
          error,
        );
      }
      const pool = new pg.Pool({ ...this.options.poolConfig, connectionString: this.options.connectionString });
      // An idle connection that dies must not crash the process; the next checkout reconnects.
      pool.on("error", () => {});
      this.pool = pool;
      return pool;
    })();
    return this.poolPromise;
  }
}

/** Rolls back an open transaction; true when the connection should be thrown away. */
async function rollback(client: PoolClient): Promise<boolean> {
  try {
    await client.query("ROLLBACK");
    return false;
  } catch {
    return true;
  }
}

/** An undefined_table error, as the store's read() rethrows it (its cause or itself). */
function isMissingRelation(error: unknown): boolean {
  for (let e: unknown = error; e !== undefined && e !== null; e = (e as { cause?: unknown }).cause) {
    if ((e as { code?: unknown }).code === "42P01") return true;
    if (e === (e as { cause?: unknown }).cause) break;
  }
  return false;
}

/** The rollup's rows as the store reads them (`usageRollup`). */
function rollupRows(rows: readonly Record<string, unknown>[]): UsageRollupRow[] {
  return rows.map((r) => ({
    day: String(r.day),
    kind: r.kind as UsageRollupRow["kind"],
    unit: r.unit === "" || r.unit == null ? null : String(r.unit), // '' is the default unit (a key: no NULL)
    credits: Number(r.credits),
    requests: Number(r.requests),
    inputTokens: Number(r.input_tokens),
    outputTokens: Number(r.output_tokens),
    cachedTokens: Number(r.cached_tokens),
    shortfall: Number(r.shortfall),
  }));
}
