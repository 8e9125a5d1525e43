import { ConfigurationError } from "../../core/errors.js";
import { DefinedStore } from "../store/define.js";
import { origin, storeError } from "../../core/db/store/errors.js";
import { refuseOnWorkers } from "../../core/util/runtime.js";
import type { StoreStats } from "../../core/db/types.js";
import { type SqliteDbManagerOptions, type SqliteDriver, chooseDriver } from "./options.js";
import { Sqlite } from "./connection.js";
import { definition } from "./definition.js";
export type { SqliteDatabase, SqliteDbManagerOptions, SqliteDriver, SqliteStatement } from "./options.js";

/**
 * The SQLite store (`credit-management/sqlite`), on `better-sqlite3`, or under Bun on `bun:sqlite`
 * (`driver`: docs/runtimes.md, "SQLite on Bun"): a persistent embedded store for single-node
 * services and tests, built with `defineStore`. The file is in WAL mode, so
 * readers never wait for the writer; several processes may share it. A unit of work reads its
 * account in one read transaction and writes everything in one write transaction guarded on the
 * account's `seq` (another process that wrote the account in between makes it run again, with
 * backoff; after `maxAttempts` such conflicts it runs once more holding the write lock from its
 * first read, on a second connection: `Locker`); in this process, units of work on one account
 * run one after another, and the writes of units on different accounts that commit at the same
 * moment share one write transaction, a savepoint each (group commit, `batch`: ./batch.ts).
 *
 * ```ts
 * const db = new SqliteDbManager({ filename: "credits.db" });
 * const credits = await createCreditManager({ db }); // runs db.init(): tables, WAL
 * ```
 * @public
 */
export class SqliteDbManager extends DefinedStore {
  private readonly sqlite: Sqlite;

  /** A store in a SQLite file (`filename`), or in memory. */
  constructor(options: SqliteDbManagerOptions = {}) {
    // Refused when made, not at the first request (docs/runtimes.md).
    refuseOnWorkers(
      "The SQLite store (SqliteDbManager)",
      "it needs a file system and better-sqlite3's native addon, which Workers cannot load; use PostgresDbManager (pg over TCP, nodejs_compat)",
    );
    if (options.database !== undefined && options.filename !== undefined) {
      throw new ConfigurationError(origin("sqlite", "pass `filename` or `database`, not both"));
    }
    const driver = chooseDriver(options);
    let s: Sqlite;
    try {
      s = new Sqlite(options, driver);
    } catch (error) {
      throw new ConfigurationError(origin("sqlite", (error as Error).message), error);
    }
    super(definition(s, options));
    this.sqlite = s;
  }

  /**
   * What opens the file: `"better-sqlite3"`, or `"bun:sqlite"` (the default under Bun); null when
   * a `database` was handed in (docs/runtimes.md, "SQLite on Bun").
   */
  get driver(): SqliteDriver | null {
    return this.sqlite.driver;
  }

  /**
   * Opens an existing store to read it, instead of `init()`: nothing is created or migrated (what
   * `credit-management audit` does). Throws `ConfigurationError` when the file does not exist or is
   * not a credit-management store at this release's schema version. Idempotent; `close()` closes it.
   */
  async openExisting(): Promise<void> {
    await this.sqlite.openExisting();
  }

  /** The version row: proves the file can be read (docs/observability.md). */
  async ping(): Promise<{ schemaVersion: number | null }> {
    try {
      return { schemaVersion: await this.sqlite.version() };
    } catch (error) {
      throw storeError(this.name, "ping", error);
    }
  }

  /** Active holds (the `status_expiry` index) and the outbox's pending and failed rows, in one read. */
  async stats(): Promise<StoreStats> {
    const s = this.sqlite;
    const r = s.t.reservations.qualified;
    const n = s.t.notifications.qualified;
    const text =
      `SELECT (SELECT count(*) FROM ${r} WHERE status = 'active') AS holds, ` +
      `(SELECT coalesce(sum(amount), 0) FROM ${r} WHERE status = 'active') AS held, ` +
      `(SELECT count(*) FROM ${n} WHERE status = 'pending') AS pending, ` +
      `(SELECT count(*) FROM ${n} WHERE status = 'failed') AS failed, ` +
      `(SELECT min(created_at) FROM ${n} WHERE status = 'pending') AS oldest`;
    try {
      const row = (await s.patiently(() => s.all(text)))[0] ?? {};
      return {
        activeHolds: Number(row.holds ?? 0),
        heldCredits: Number(row.held ?? 0),
        outboxPending: Number(row.pending ?? 0),
        outboxFailed: Number(row.failed ?? 0),
        oldestPendingAt: typeof row.oldest === "string" ? new Date(row.oldest) : null,
      };
    } catch (error) {
      throw storeError(this.name, "stats", error);
    }
  }
}
