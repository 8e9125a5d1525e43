import * as z from "zod/mini";
import { ConfigurationError } from "../../core/errors.js";
import { origin } from "../../core/db/store/errors.js";
import { onBun, runtimeName } from "../../core/util/runtime.js";

// The SQLite store's options and the structural types of the database it opens (docs/storage.md, SQLite;
// docs/runtimes.md, "SQLite on Bun"), and the choices made from them: the driver, the file a
// second connection can lock.

/**
 * The parts of a `better-sqlite3` database this store uses, as a structural type of its own (the
 * published declarations never import `better-sqlite3`'s types). A `new Database(file)` fits it.
 * @public
 */
export interface SqliteDatabase {
  /** Prepares a statement. */
  prepare(sql: string): SqliteStatement;
  /** Runs statements without values. */
  exec(sql: string): unknown;
  /** Runs a pragma. */
  pragma(source: string, options?: { simple?: boolean }): unknown;
  /** Wraps `fn` in a transaction. */
  transaction<F extends () => unknown>(fn: F): { (): ReturnType<F>; immediate(): ReturnType<F> };
  /** Closes the database. */
  close(): unknown;
}

/** A prepared statement of `SqliteDatabase`. @public */
export interface SqliteStatement {
  /** Every row of the statement. */
  all(...params: unknown[]): unknown[];
  /** The first row of the statement. */
  get(...params: unknown[]): unknown;
  /** Runs the statement; returns how many rows it changed. */
  run(...params: unknown[]): { changes: number };
}

export type Database = SqliteDatabase;

/**
 * What opens `filename` (docs/runtimes.md, "SQLite on Bun"): the `better-sqlite3` package, or
 * Bun's own `bun:sqlite` (only under Bun). Both write the same file format.
 * @public
 */
export type SqliteDriver = "better-sqlite3" | "bun:sqlite";
const SqliteDriverOption = z.enum(["better-sqlite3", "bun:sqlite"]) satisfies z.ZodMiniType<SqliteDriver>;

/** Options of `new SqliteDbManager()`: the file, or the database, and the driver. @public */
export interface SqliteDbManagerOptions {
  /**
   * The database file (created if missing; `":memory:"`: a private in-memory database), opened by
   * `driver`: `better-sqlite3` must be installed, except under Bun, where `bun:sqlite` opens it.
   */
  filename?: string;
  /**
   * What opens `filename`: `"better-sqlite3"` (the default on Node.js and Deno), or `"bun:sqlite"`
   * (the default under Bun; refused elsewhere). The file is the same either way: it moves between
   * them (docs/runtimes.md, "SQLite on Bun"). Not with `database`.
   */
  driver?: SqliteDriver;
  /** An open `better-sqlite3` database instead (or anything with its interface, `SqliteDatabase`): `close()` leaves it open. */
  database?: SqliteDatabase;
  /** Put in front of every table and index name, e.g. `"credits_"`. */
  tablePrefix?: string;
  /**
   * How long a write waits for another process's write lock before it counts as a conflict, in ms.
   * Default 5,000. The wait does not block the event loop: SQLite itself waits at most a few ms
   * (`LOCK_SPIN_MS`), then the store retries asynchronously with backoff until this total.
   */
  busyTimeoutMs?: number;
  /**
   * Optimistic attempts of a unit of work that meets conflicts (another process wrote the account)
   * before it runs once more holding the write lock from its first read to its commit, which
   * cannot conflict (docs/storage.md, SQLite). Default 3. A database in memory has no second
   * connection to hold the lock on: there, attempts before `ConflictError`, default 10.
   */
  maxAttempts?: number;
  /**
   * Group commit: the writes of units of work on different accounts that reach their commit at the
   * same moment (the same turn of the event loop) share one write transaction and its one fsync,
   * each in a savepoint of its own, up to `maxUnits` (default 32) in one. A unit whose write fails
   * gets its own error and writes nothing; the others commit. `false`: every unit of work's write is
   * a transaction of its own (docs/storage.md, SQLite).
   */
  batch?: false | { maxUnits?: number };
  /** `init()` creates and upgrades the schema (default true); `false`: it only checks the version. */
  migrate?: boolean;
}

/**
 * The file a second connection can open for locked attempts: `filename`, or the file of the
 * `better-sqlite3` database handed in (its `name`, and `memory: false`); null for a database in
 * memory, a read-only one, or one handed in that does not say its file.
 */
export function lockableFile(options: SqliteDbManagerOptions): string | null {
  if (options.database !== undefined) {
    const d = options.database as { name?: unknown; memory?: unknown; readonly?: unknown };
    return d.memory === false && d.readonly !== true && typeof d.name === "string" && d.name !== "" ? d.name : null;
  }
  const f = options.filename;
  return f === undefined || f === "" || f === ":memory:" ? null : f;
}

/**
 * Writes per group-commit transaction (`options.batch`, validated; default 32); null with `batch:
 * false`. Anything else is a `ConfigurationError`.
 */
export function batchUnits(options: SqliteDbManagerOptions): number | null {
  const batch: unknown = options.batch;
  if (batch === false) return null;
  const units: unknown = batch === undefined ? 32 : ((batch as { maxUnits?: unknown } | null)?.maxUnits ?? 32);
  if (
    (batch !== undefined && (typeof batch !== "object" || batch === null)) ||
    !Number.isSafeInteger(units) ||
    (units as number) < 1
  )
    throw new ConfigurationError(
      origin(
        "sqlite",
        `\`batch\` must be false or { maxUnits: a whole number from 1 }, not ${JSON.stringify(batch) ?? String(batch)}`,
      ),
    );
  return units as number;
}

/**
 * `options.driver`, validated, or the default: `bun:sqlite` under Bun, `better-sqlite3` elsewhere;
 * null when a database is handed in (nothing to open).
 */
export function chooseDriver(options: SqliteDbManagerOptions): SqliteDriver | null {
  if (options.driver === undefined) {
    if (options.database !== undefined) return null;
    return onBun() ? "bun:sqlite" : "better-sqlite3";
  }
  const parsed = SqliteDriverOption.safeParse(options.driver);
  if (!parsed.success)
    throw new ConfigurationError(
      origin(
        "sqlite",
        `\`driver\` must be "better-sqlite3" or "bun:sqlite", not ${JSON.stringify(options.driver) ?? String(options.driver)}`,
      ),
    );
  if (options.database !== undefined)
    throw new ConfigurationError(
      origin("sqlite", "pass `driver` or `database`, not both: `driver` opens `filename`, `database` is open already"),
    );
  if (parsed.data === "bun:sqlite" && !onBun())
    throw new ConfigurationError(
      origin(
        "sqlite",
        `driver "bun:sqlite" is Bun's own SQLite and cannot be loaded on ${runtimeName()}: use "better-sqlite3" (the default here)`,
      ),
    );
  return parsed.data;
}
