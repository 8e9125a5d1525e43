import * as z from "zod";
import { ConfigurationError, ConflictError } from "../../errors.js";
import type {
  Account,
  Grant,
  JournalEntry,
  LedgerEntry,
  Notification,
  Plan,
  Reservation,
  Subscription,
} from "../../models/index.js";
import type { Payment, Promo, PromoClaim } from "../../models/index.js";
import { SYSTEM_KEY_PREFIX } from "../../models/common.js";
import { decodeRow, encodeValues } from "../../schema/codec.js";
import { upgradeStatements } from "../../schema/migrations.js";
import {
  SCHEMA_COMPONENT,
  SCHEMA_VERSION,
  type SqlTable,
  generateSql,
  sqlTables,
  versionTableName,
} from "../../schema/sql.js";
import type { TableKey } from "../../schema/tables.js";
import { type Attempt, DefinedStore, type StoreDefinition } from "../store/define.js";
import { origin, storeError } from "../store/errors.js";
import { backoff, sleep } from "../store/retry.js";
import { onBun, refuseOnWorkers, runtimeName } from "../../util/runtime.js";
import type { Changes, JournalQuery, LedgerQuery, LoadRequest, LoadedState, ScanCursor, StoreStats } from "../types.js";
import type { ClaimQuery, NotificationUpdate, OutboxQuery } from "../types-notifications.js";
import type { SubscriptionCursor } from "../types-subscriptions.js";
import type { UsageScan } from "../../domain/usage.js";
import { usageBucket } from "../postgres/usage.js";
import { usageSqliteSql } from "./usage.js";

export { SCHEMA_VERSION } from "../../schema/sql.js";

/**
 * The parts of a `better-sqlite3` database this store uses, as a structural type of its own (the
 * published declarations never import `better-sqlite3`'s types). A `new Database(file)` fits it.
 */
export interface SqliteDatabase {
  prepare(sql: string): SqliteStatement;
  exec(sql: string): unknown;
  pragma(source: string, options?: { simple?: boolean }): unknown;
  transaction<F extends () => unknown>(fn: F): { (): ReturnType<F>; immediate(): ReturnType<F> };
  close(): unknown;
}

/** A prepared statement of `SqliteDatabase`. */
export interface SqliteStatement {
  all(...params: unknown[]): unknown[];
  get(...params: unknown[]): unknown;
  run(...params: unknown[]): { changes: number };
}

type Database = SqliteDatabase;

/**
 * What opens `filename` (docs/runtimes.md, "SQLite on Bun"): the `better-sqlite3` package, or
 * Bun's own `bun:sqlite` (only under Bun). Both write the same file format.
 */
export type SqliteDriver = "better-sqlite3" | "bun:sqlite";
const SqliteDriverOption = z.enum(["better-sqlite3", "bun:sqlite"]) satisfies z.ZodType<SqliteDriver>;

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
  database?: Database;
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
  /** `init()` creates and upgrades the schema (default true); `false`: it only checks the version. */
  migrate?: boolean;
}

type Row = Record<string, unknown>;
type Param = string | number | bigint | Buffer | null;

/** A value as SQLite stores it: dates as ISO-8601 text in UTC (which sorts chronologically), booleans as 0/1. */
const param = (v: unknown): Param =>
  v instanceof Date ? v.toISOString() : typeof v === "boolean" ? (v ? 1 : 0) : ((v as Param) ?? null);

/**
 * How long SQLite's own busy handler waits for a lock, in ms: it sleeps on the event loop's thread,
 * so only this long; the rest of `busyTimeoutMs` is waited asynchronously (`Sqlite.patiently`).
 */
const LOCK_SPIN_MS = 5;
/** Between attempts at a locked file: jittered, in [cap/2, cap), the cap doubling from 4 ms to 50 ms. */
const LOCKED_BACKOFF = { base: 2, factor: 2, max: 50, floor: 0.5 };

/** Another connection holds the lock this statement needs (the statement did nothing). */
function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_BUSY");
}

/** The connection, its statements and the tables (the schema generator's SQLite DDL). */
class Sqlite {
  db: Database | null;
  readonly t: Record<TableKey, SqlTable>;
  private readonly statements = new Map<string, SqliteStatement>();
  /** `tx`'s transaction function on the current connection, and the body it runs now. */
  private runner: { db: Database; t: { (): unknown; immediate(): unknown } } | null = null;
  private body: (() => unknown) | null = null;

  constructor(
    private readonly options: SqliteDbManagerOptions,
    /** What opens the file; null: a database was handed in. */
    readonly driver: SqliteDriver | null,
  ) {
    this.db = options.database ?? null;
    this.t = Object.fromEntries(
      sqlTables({ dialect: "sqlite", prefix: options.tablePrefix }).map((t) => [t.key, t]),
    ) as Record<TableKey, SqlTable>;
  }

  /**
   * Runs `fn` (one statement, or one transaction: a locked file makes it do nothing) — again, after
   * an asynchronous backoff, while another connection holds the lock it needs, for up to
   * `busyTimeoutMs` in all; then the busy error is thrown. Synchronous when the lock was free.
   */
  patiently<T>(fn: () => T): T | Promise<T> {
    try {
      return fn();
    } catch (error) {
      if (!isBusy(error)) throw error;
      return this.retryLocked(fn, error);
    }
  }

  private async retryLocked<T>(fn: () => T, first: unknown): Promise<T> {
    const deadline = performance.now() + Math.max(0, this.options.busyTimeoutMs ?? 5000);
    let error = first;
    for (let attempt = 1; ; attempt++) {
      const left = deadline - performance.now();
      if (left <= 0) throw error;
      await sleep(Math.min(backoff(attempt, LOCKED_BACKOFF), left));
      try {
        return fn();
      } catch (next) {
        if (!isBusy(next)) throw next;
        error = next;
      }
    }
  }

  async open(): Promise<Database> {
    if (this.db !== null) return this.db;
    this.db = await this.connect(this.options.filename ?? ":memory:", false);
    return this.db;
  }

  /** A new connection to `filename` (`mustExist`: fails when there is no such file). */
  private async connect(filename: string, mustExist: boolean): Promise<Database> {
    if (this.driver === "bun:sqlite") {
      // Its own module, loaded only here (under Bun): it imports bun:sqlite (docs/runtimes.md).
      const { loadBunSqlite, openBunSqlite } = await import("./bun.js");
      let driver: Awaited<ReturnType<typeof loadBunSqlite>>;
      try {
        driver = await loadBunSqlite();
      } catch (error) {
        throw new ConfigurationError(origin("sqlite", `bun:sqlite cannot be loaded on ${runtimeName()}`), error);
      }
      const db = openBunSqlite(driver, filename, { fileMustExist: mustExist });
      this.spin(db);
      return db;
    }
    type Driver = new (filename: string, options?: { fileMustExist?: boolean }) => Database;
    let Driver: Driver;
    try {
      const mod = (await import("better-sqlite3")) as unknown as { default?: Driver } & Driver;
      Driver = mod.default ?? mod;
    } catch (error) {
      throw new ConfigurationError(
        origin("sqlite", 'install the "better-sqlite3" package to use SqliteDbManager'),
        error,
      );
    }
    const db = new Driver(filename, mustExist ? { fileMustExist: true } : undefined);
    this.spin(db);
    return db;
  }

  /** SQLite's own (blocking) wait for a lock: short, see `LOCK_SPIN_MS`. */
  private spin(db: Database): void {
    db.pragma(`busy_timeout = ${Math.min(LOCK_SPIN_MS, Math.max(0, this.options.busyTimeoutMs ?? 5000))}`);
  }

  /**
   * Opens an existing store to read it, without `init()` (`credit-management audit`): no table is
   * created, nothing migrated, no pragma that writes. Fails with `ConfigurationError` when there is
   * no such file, or it is not a credit-management store at this release's schema version.
   */
  async openExisting(): Promise<void> {
    if (this.db === null) {
      const filename = this.options.filename;
      if (filename === undefined || filename === ":memory:" || filename === "")
        throw new ConfigurationError(origin("sqlite", "an existing store needs `filename`"));
      try {
        this.db = await this.connect(filename, true);
      } catch (error) {
        if (error instanceof ConfigurationError) throw error;
        throw new ConfigurationError(
          origin("sqlite", `cannot open ${JSON.stringify(filename)}: ${(error as Error).message}`),
          error,
        );
      }
    }
    const version = await this.version();
    const where = this.options.filename === undefined ? "the database" : JSON.stringify(this.options.filename);
    if (version === null) {
      this.close();
      throw new ConfigurationError(
        origin(
          "sqlite",
          `${where} is not a credit-management store (no ${versionTableName("sqlite", { prefix: this.options.tablePrefix })} row${this.options.tablePrefix ? "" : "; a store made with a tablePrefix needs the same prefix"})`,
        ),
      );
    }
    if (version !== SCHEMA_VERSION) {
      this.close();
      throw new ConfigurationError(
        origin(
          "sqlite",
          `${where} is at schema version ${version}, this release reads ${SCHEMA_VERSION}: ${version < SCHEMA_VERSION ? "let a manager of this release upgrade it (init()) first" : "upgrade credit-management"}`,
        ),
      );
    }
  }

  /** The store's schema version; null when it has no version row (not a store of ours, or empty). */
  version(): number | null | Promise<number | null> {
    const db = this.conn();
    return this.patiently(() => {
      const table = versionTableName("sqlite", { prefix: this.options.tablePrefix });
      const exists = db
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
        .get(`${this.options.tablePrefix ?? ""}schema_version`);
      if (exists === undefined) return null;
      const found = db.prepare(`SELECT version FROM ${table} WHERE component = ?`).get(SCHEMA_COMPONENT) as
        { version: number } | undefined;
      return found === undefined ? null : Number(found.version);
    });
  }

  private conn(): Database {
    if (this.db === null) throw new ConfigurationError(origin("sqlite", "call init() first"));
    return this.db;
  }

  private st(text: string): SqliteStatement {
    let s = this.statements.get(text);
    if (s === undefined) {
      s = this.conn().prepare(text);
      this.statements.set(text, s);
    }
    return s;
  }

  all(text: string, params: readonly unknown[] = []): Row[] {
    return this.st(text).all(...params.map(param)) as Row[];
  }
  /** `all` of a statement that is prepared for this call only (text that varies: not cached). */
  once(text: string, params: readonly unknown[] = []): Row[] {
    return this.conn()
      .prepare(text)
      .all(...params.map(param)) as Row[];
  }
  run(text: string, params: readonly unknown[] = []): number {
    return this.st(text).run(...params.map(param)).changes;
  }
  /** Runs `fn` in one transaction (`immediate`: takes the write lock at once). */
  tx<T>(fn: () => T, immediate = false): T {
    // One transaction function per connection, running whatever body is current: better-sqlite3
    // builds four wrappers and defines their properties on every `transaction(fn)` call (twice a
    // deduction here), meant to be made once. Nested calls (savepoints) restore the outer body.
    const db = this.conn();
    if (this.runner === null || this.runner.db !== db) {
      this.runner = { db, t: db.transaction(() => (this.body as () => unknown)()) };
    }
    const outer = this.body;
    this.body = fn;
    try {
      return (immediate ? this.runner.t.immediate() : this.runner.t()) as T;
    } finally {
      this.body = outer;
    }
  }

  decode<T>(key: TableKey, row: Row | undefined): T | null {
    return row === undefined ? null : decodeRow<T>(this.t[key].columns, row);
  }
  list<T>(key: TableKey, text: string, params: readonly unknown[] = []): T[] {
    return this.all(`SELECT * FROM ${this.t[key].qualified} ${text}`, params).map((r) =>
      decodeRow<T>(this.t[key].columns, r),
    );
  }
  one<T>(key: TableKey, text: string, params: readonly unknown[] = []): T | null {
    return this.decode<T>(key, this.all(`SELECT * FROM ${this.t[key].qualified} ${text} LIMIT 1`, params)[0]);
  }
  insert(key: TableKey, rows: readonly object[], orIgnore = false): number {
    const t = this.t[key];
    const text = `INSERT ${orIgnore ? "OR IGNORE " : ""}INTO ${t.qualified} (${t.columns.map((c) => `"${c.name}"`).join(", ")}) VALUES (${t.columns.map(() => "?").join(", ")})`;
    let n = 0;
    for (const row of rows) n += this.run(text, encodeValues(t.columns, row as Row, { dates: "iso", booleans: "int" }));
    return n;
  }
  /** Replaces a row found by its primary key (and `guard`, e.g. " AND version = ?"): false when none matched. */
  update(key: TableKey, row: object, guard = "", guardParams: readonly unknown[] = []): boolean {
    const t = this.t[key];
    const plan = this.updatePlan(t, guard);
    const values = encodeValues(t.columns, row as Row, { dates: "iso", booleans: "int" });
    const params = new Array<unknown>(plan.order.length + guardParams.length);
    for (let i = 0; i < plan.order.length; i++) params[i] = values[plan.order[i] as number];
    for (let i = 0; i < guardParams.length; i++) params[plan.order.length + i] = guardParams[i];
    return this.run(plan.text, params) === 1;
  }
  /** An UPDATE's text and its parameters' column indices (the other columns, then the key's), per table and guard. */
  private updatePlan(t: SqlTable, guard: string): { text: string; order: number[] } {
    let plans = this.updatePlans.get(t);
    if (plans === undefined) this.updatePlans.set(t, (plans = new Map()));
    let plan = plans.get(guard);
    if (plan === undefined) {
      const keys = new Set(t.spec.primaryKey.map((f) => t.columns.find((c) => c.field === f)?.name));
      const cols = t.columns.filter((c) => !keys.has(c.name));
      const where = [...keys].map((k) => `"${k}" = ?`).join(" AND ");
      const text = `UPDATE ${t.qualified} SET ${cols.map((c) => `"${c.name}" = ?`).join(", ")} WHERE ${where}${guard}`;
      const index = (name: string | undefined) => t.columns.findIndex((c) => c.name === name);
      plan = { text, order: [...cols.map((c) => index(c.name)), ...[...keys].map(index)] };
      plans.set(guard, plan);
    }
    return plan;
  }
  private readonly updatePlans = new Map<SqlTable, Map<string, { text: string; order: number[] }>>();

  /** Opens the write transaction of a locked attempt: `BEGIN IMMEDIATE` takes the write lock now (or is busy). */
  begin(): void {
    this.conn().exec("BEGIN IMMEDIATE");
  }
  /** Ends the transaction `begin` opened: COMMIT, or ROLLBACK (nothing when none is open any more). */
  end(commit: boolean): void {
    const db = this.conn();
    if (commit) db.exec("COMMIT");
    else if ((db as { inTransaction?: boolean }).inTransaction !== false) db.exec("ROLLBACK");
  }

  async init(): Promise<void> {
    const db = await this.open();
    this.spin(db); // a database handed in too
    await this.patiently(() => db.pragma("journal_mode = WAL"));
    db.pragma("synchronous = FULL"); // a commit reported done survives a power loss too
    const naming = { prefix: this.options.tablePrefix };
    await this.patiently(() => this.migrate(db, naming));
  }

  /** Creates the tables, or upgrades them, in one write transaction. */
  private migrate(db: Database, naming: { prefix: string | undefined }): void {
    this.tx(() => {
      const table = versionTableName("sqlite", naming);
      const exists = db
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
        .get(`${naming.prefix ?? ""}schema_version`);
      const found =
        exists === undefined
          ? undefined
          : (db.prepare(`SELECT version FROM ${table} WHERE component = ?`).get(SCHEMA_COMPONENT) as
              { version: number } | undefined);
      const version = found?.version ?? 0;
      if (version > SCHEMA_VERSION)
        throw new ConfigurationError(
          origin(
            "sqlite",
            `the store's schema is version ${version}, newer than this release understands (${SCHEMA_VERSION}): upgrade credit-management`,
          ),
        );
      if (version === SCHEMA_VERSION) return;
      if (this.options.migrate === false) {
        throw new ConfigurationError(
          origin(
            "sqlite",
            `the store's schema is version ${version}, this release needs ${SCHEMA_VERSION}, and this manager does not migrate (migrate: false): apply \`npx credit-management schema --dialect sqlite${version > 0 ? ` --from-version ${version}` : ""}\` first`,
          ),
        );
      }
      if (version > 0)
        for (const s of upgradeStatements({ dialect: "sqlite", fromVersion: version, ...naming })) db.exec(s);
      db.exec(generateSql({ dialect: "sqlite", ...naming }));
    }, true);
  }

  close(): void {
    if (this.options.database === undefined) this.db?.close();
    this.db = null;
    // Prepared on that connection: not usable on the next one (bun:sqlite finalizes them on close).
    this.statements.clear();
  }
}

/** A driver refusal the next attempt can get past: a unique key taken, or the write lock held past the busy timeout. */
function isConflict(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return (
    typeof code === "string" &&
    (code.startsWith("SQLITE_CONSTRAINT_UNIQUE") ||
      code === "SQLITE_CONSTRAINT_PRIMARYKEY" ||
      code.startsWith("SQLITE_BUSY"))
  );
}

/**
 * The file's second connection, for locked attempts (docs/storage.md, SQLite): a unit of work that
 * kept meeting conflicts runs once more on it inside `BEGIN IMMEDIATE`, taken before its first read
 * and held across its `await`s until its commit — on a connection of its own, so that nothing else
 * this process runs meanwhile joins that transaction. One at a time in this process (a FIFO turn);
 * opened at the first, so a store that never meets a conflict never opens it.
 */
class Locker {
  private s: Sqlite | null = null;
  private opening: Promise<Sqlite> | null = null;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private readonly options: SqliteDbManagerOptions,
    private readonly filename: string,
    /** What opens it: the store's own driver (`better-sqlite3` for a `database` handed in). */
    private readonly driver: SqliteDriver,
  ) {}

  /**
   * A locked attempt on `userId`: its turn here, then the write lock, waited for as every write
   * waits (`patiently`: up to `busyTimeoutMs`); `ConflictError` when it stayed busy that long.
   */
  async begin(userId: string): Promise<SqliteAttempt> {
    const release = await this.turn();
    try {
      const s = await (this.opening ??= this.open());
      await s.patiently(() => s.begin());
      return new SqliteAttempt(s, userId, release);
    } catch (error) {
      release();
      if (!isBusy(error)) throw error;
      throw new ConflictError(
        origin(
          "sqlite",
          `the write lock stayed taken for busyTimeoutMs (${this.options.busyTimeoutMs ?? 5000} ms) (${(error as Error).message})`,
        ),
        { userId },
        error,
      );
    }
  }

  /** Waits for the locked attempts before this one; resolves to the function that ends its turn. */
  private turn(): Promise<() => void> {
    const before = this.tail;
    let end!: () => void;
    this.tail = new Promise<void>((resolve) => (end = resolve));
    let ended = false;
    const release = () => {
      if (ended) return;
      ended = true;
      end();
    };
    return before.then(() => release);
  }

  private async open(): Promise<Sqlite> {
    try {
      const { tablePrefix, busyTimeoutMs } = this.options;
      const s = new Sqlite({ filename: this.filename, tablePrefix, busyTimeoutMs }, this.driver);
      const db = await s.open();
      db.pragma("synchronous = FULL"); // per connection, as init() sets it on the first
      this.s = s;
      return s;
    } catch (error) {
      this.opening = null; // the next locked attempt tries again
      throw error;
    }
  }

  close(): void {
    this.s?.close();
    this.s = null;
    this.opening = null;
  }
}

/**
 * The file a second connection can open for locked attempts: `filename`, or the file of the
 * `better-sqlite3` database handed in (its `name`, and `memory: false`); null for a database in
 * memory, a read-only one, or one handed in that does not say its file.
 */
function lockableFile(options: SqliteDbManagerOptions): string | null {
  if (options.database !== undefined) {
    const d = options.database as { name?: unknown; memory?: unknown; readonly?: unknown };
    return d.memory === false && d.readonly !== true && typeof d.name === "string" && d.name !== "" ? d.name : null;
  }
  const f = options.filename;
  return f === undefined || f === "" || f === ":memory:" ? null : f;
}

/**
 * One attempt of a unit of work. `load` reads the account in one read transaction; `save` queues;
 * `commit` writes everything in one write transaction that first moves the account row from the
 * `seq` it was loaded at (the guard): if another process wrote the account since, nothing is
 * written and the unit of work runs again. Writes never wait across an `await`.
 *
 * A locked attempt (`release` given, on the `Locker`'s connection) runs inside the `BEGIN
 * IMMEDIATE` its `Locker` opened: its reads and writes are savepoints in it, `commit` ends it with
 * COMMIT and `rollback` with ROLLBACK, and both end its turn. No other writer can run in between,
 * so its guard cannot fail.
 */
class SqliteAttempt implements Attempt {
  private pending: Changes | undefined;
  private saved = false;

  constructor(
    private readonly s: Sqlite,
    readonly userId: string,
    private readonly release?: () => void,
  ) {}

  load(request?: LoadRequest): LoadedState | Promise<LoadedState> {
    if (this.release !== undefined) return this.read(request);
    return this.s.patiently(() => this.read(request));
  }

  private read(request?: LoadRequest): LoadedState {
    const { s, userId } = this;
    return s.tx(() => ({
      account: s.one<Account>("accounts", "WHERE user_id = ?", [userId]),
      grants: s.list<Grant>("grants", "WHERE user_id = ? AND closed_at IS NULL AND remaining > 0", [userId]),
      reservations: s.list<Reservation>("reservations", "WHERE user_id = ? AND status = 'active'", [userId]),
      idempotent:
        request?.idempotencyKey === undefined
          ? null
          : s.one<JournalEntry>("journal", "WHERE user_id = ? AND idempotency_key = ?", [
              userId,
              request.idempotencyKey,
            ]),
    }));
  }
  async getGrants(ids: readonly string[]): Promise<Grant[]> {
    if (ids.length === 0) return [];
    return this.s.list<Grant>("grants", `WHERE user_id = ? AND id IN (${ids.map(() => "?").join(", ")})`, [
      this.userId,
      ...ids,
    ]);
  }
  async getReservation(id: string): Promise<Reservation | null> {
    return this.s.one<Reservation>("reservations", "WHERE id = ? AND user_id = ?", [id, this.userId]);
  }
  async getPromo(code: string): Promise<Promo | null> {
    return this.s.one<Promo>("promos", "WHERE code = ?", [code]);
  }
  async countPromoClaims(code: string): Promise<number> {
    return Number(
      this.s.all(`SELECT count(*) AS n FROM ${this.s.t.promoClaims.qualified} WHERE code = ? AND user_id = ?`, [
        code,
        this.userId,
      ])[0]?.n ?? 0,
    );
  }
  async getPayment(id: string): Promise<Payment | null> {
    return this.s.one<Payment>("payments", "WHERE id = ? AND user_id = ?", [id, this.userId]);
  }
  save(changes: Changes): void {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    this.pending = changes;
  }

  commit(): void | Promise<void> {
    const c = this.pending;
    if (this.release !== undefined) return this.commitLocked(c);
    if (c === undefined) return;
    const conflict = (error: unknown) =>
      isConflict(error)
        ? new ConflictError(
            origin("sqlite", `a concurrent write won (${(error as Error).message})`),
            { userId: this.userId },
            error,
          )
        : error;
    try {
      const done = this.s.patiently(() => this.write(c));
      if (done instanceof Promise)
        return done.catch((error: unknown) => {
          throw conflict(error);
        });
    } catch (error) {
      throw conflict(error);
    }
  }

  /** A locked attempt's commit: its writes, then COMMIT; on a failure `rollback` ends it. */
  private commitLocked(c: Changes | undefined): void {
    try {
      if (c !== undefined) this.write(c);
      this.s.end(true);
    } catch (error) {
      if (!isConflict(error)) throw error;
      throw new ConflictError(
        origin("sqlite", `a write holding the lock was refused (${(error as Error).message})`),
        { userId: this.userId },
        error,
      );
    }
    this.release?.();
  }

  rollback(): void {
    if (this.release === undefined) return;
    try {
      this.s.end(false);
    } finally {
      this.release();
    }
  }

  /** Everything the unit of work saved, in one write transaction (nothing when it throws). */
  private write(c: Changes): void {
    const { s } = this;
    const stale = () =>
      new ConflictError(origin("sqlite", `account ${this.userId} changed during the unit of work`), {
        userId: this.userId,
      });
    s.tx(() => {
      if (c.previousSeq === null) s.insert("accounts", [c.account]);
      else if (!s.update("accounts", c.account, " AND seq = ?", [c.previousSeq])) throw stale();
      s.insert("grants", c.insertGrants);
      for (const g of c.updateGrants) s.update("grants", g);
      s.insert("reservations", c.insertReservations);
      for (const r of c.updateReservations) s.update("reservations", r);
      s.insert("journal", c.entries);
      for (const claim of c.promoClaims ?? []) {
        const took = s.run(
          `UPDATE ${s.t.promos.qualified} SET uses = uses + 1 WHERE code = ? AND (max_uses IS NULL OR uses < max_uses)`,
          [claim.code],
        );
        if (took !== 1)
          throw new ConflictError(origin("sqlite", `promo ${claim.code} has no use left`), { code: claim.code });
      }
      s.insert("promoClaims", c.promoClaims ?? []);
      for (const p of c.paymentUpdates ?? []) {
        if (!s.update("payments", p, " AND user_id = ? AND version = ?", [p.userId, p.version - 1]))
          throw new ConflictError(origin("sqlite", `payment ${p.id} changed`), { paymentId: p.id });
      }
      s.insert("notifications", c.notifications ?? []);
    }, true);
  }
}

/** SQL conditions and their parameters, built one by one. */
function conditions() {
  const where: string[] = [];
  const params: unknown[] = [];
  const add = (condition: string, ...values: unknown[]) => {
    where.push(condition);
    params.push(...values);
  };
  return { where, params, add };
}

/** `(col, id) > (at, id)`: resume a scan ordered by (col, id) strictly after a cursor. */
const after = (col: string, cursor: { at: Date; id: string } | undefined): [string, unknown[]] =>
  cursor === undefined ? ["", []] : [` AND (${col} > ? OR (${col} = ? AND id > ?))`, [cursor.at, cursor.at, cursor.id]];

function definition(s: Sqlite, options: SqliteDbManagerOptions): StoreDefinition {
  const count = (text: string, params: unknown[]) => Number(s.all(text, params)[0]?.n ?? 0);
  const unique = (what: string, run: () => unknown) => {
    try {
      run();
    } catch (error) {
      if (isConflict(error)) throw new ConflictError(origin("sqlite", what), undefined, error);
      throw error;
    }
  };
  // Each method is one statement or one transaction: run again while the file is locked.
  const patient = <T extends object>(part: T): T =>
    Object.fromEntries(
      Object.entries(part).map(([key, f]) => [
        key,
        typeof f === "function" && key !== "begin" && key !== "beginLocked"
          ? (...args: unknown[]) => s.patiently(() => (f as (...a: unknown[]) => unknown)(...args))
          : f,
      ]),
    ) as T;
  const file = lockableFile(options);
  const locker = file === null ? null : new Locker(options, file, s.driver ?? "better-sqlite3");
  const store: StoreDefinition = {
    name: "sqlite",
    multiProcess: true,
    maxAttempts: options.maxAttempts ?? (locker === null ? 10 : 3),
    init: () => s.init(),
    close: () => {
      locker?.close();
      s.close();
    },
    accounts: {
      begin: (userId) => new SqliteAttempt(s, userId),
      ...(locker !== null && { beginLocked: (userId: string) => locker.begin(userId) }),
      getAccount: (userId) => s.one<Account>("accounts", "WHERE user_id = ?", [userId]),
      getAccountCredits: (userId) => {
        const account = s.one<Account>("accounts", "WHERE user_id = ?", [userId]);
        if (account?.scoped !== true) return { account, grants: null };
        // A scoped account: read again with its open grants in one transaction (one snapshot:
        // another connection may have written since).
        return s.tx(() => {
          const now = s.one<Account>("accounts", "WHERE user_id = ?", [userId]);
          const grants =
            now?.scoped === true
              ? s.list<Grant>("grants", "WHERE user_id = ? AND remaining > 0 AND closed_at IS NULL", [userId])
              : null;
          return { account: now, grants };
        });
      },
      getGrant: (id, userId) =>
        userId === undefined
          ? s.one<Grant>("grants", "WHERE id = ?", [id])
          : s.one<Grant>("grants", "WHERE user_id = ? AND id = ?", [userId, id]),
      getReservation: (id, userId) =>
        userId === undefined
          ? s.one<Reservation>("reservations", "WHERE id = ?", [id])
          : s.one<Reservation>("reservations", "WHERE user_id = ? AND id = ?", [userId, id]),
      listGrants: (userId, o) =>
        s.list<Grant>(
          "grants",
          `WHERE user_id = ?${o?.includeInactive ? "" : " AND remaining > 0 AND closed_at IS NULL"} ORDER BY created_at, rowid`,
          [userId],
        ),
      listReservations: (userId, o) =>
        o?.status === undefined
          ? s.list<Reservation>("reservations", "WHERE user_id = ? ORDER BY created_at, rowid", [userId])
          : s.list<Reservation>("reservations", "WHERE user_id = ? AND status = ? ORDER BY created_at, rowid", [
              userId,
              o.status,
            ]),
      listAccountIds: (from, limit) =>
        s
          .all(`SELECT user_id FROM ${s.t.accounts.qualified} WHERE user_id > ? ORDER BY user_id LIMIT ?`, [
            from ?? "",
            limit,
          ])
          .map((r) => r.user_id as string),
      findDueGrants: (asOf: Date, limit: number, cursor?: ScanCursor) => {
        const [more, params] = after("expires_at", cursor && { at: cursor.expiresAt, id: cursor.id });
        return s.list<Grant>(
          "grants",
          `WHERE remaining > 0 AND closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?${more} ORDER BY expires_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
      findExpiredReservations: (asOf: Date, limit: number, cursor?: ScanCursor) => {
        const [more, params] = after("expires_at", cursor && { at: cursor.expiresAt, id: cursor.id });
        return s.list<Reservation>(
          "reservations",
          `WHERE status = 'active' AND expires_at <= ?${more} ORDER BY expires_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
    },
    journal: {
      listJournal: (userId, q: JournalQuery) => {
        const { where, params, add } = conditions();
        add("user_id = ?", userId);
        if (q.order === "desc" && q.beforeSeq !== undefined) add("seq < ?", q.beforeSeq);
        if (q.order === "asc" && q.afterSeq !== undefined) add("seq > ?", q.afterSeq);
        if (q.types !== undefined) add(`type IN (${q.types.map(() => "?").join(", ") || "NULL"})`, ...q.types);
        if (q.from !== undefined) add("created_at >= ?", q.from);
        if (q.to !== undefined) add("created_at < ?", q.to);
        return s.list<JournalEntry>(
          "journal",
          `WHERE ${where.join(" AND ")} ORDER BY seq ${q.order === "desc" ? "DESC" : "ASC"} LIMIT ?`,
          [...params, q.limit],
        );
      },
      // docs/usage.md: aggregated here, only the groups come back.
      usage: (scan: UsageScan) => {
        const { text, params } = usageSqliteSql(s.t.journal.qualified, scan);
        return s.once(text, params).map((r) => usageBucket(r, scan));
      },
      // The key moves to forgotten_key: out of the unique index, still part of the entry.
      forgetIdempotencyKeys: (before: Date, limit: number) => {
        const t = s.t.journal.qualified;
        return s.run(
          `UPDATE ${t} SET forgotten_key = idempotency_key, idempotency_key = NULL WHERE (user_id, seq) IN ` +
            `(SELECT user_id, seq FROM ${t} WHERE idempotency_key IS NOT NULL AND created_at < ? ` +
            `AND substr(idempotency_key, 1, ${SYSTEM_KEY_PREFIX.length}) <> ? LIMIT ?)`,
          [before, SYSTEM_KEY_PREFIX, limit],
        );
      },
      // docs/operations.md, "Checkpoints and archival": after archiveJournal wrote them to a file.
      deleteJournalBefore: (userId: string, beforeSeq: number) =>
        s.run(`DELETE FROM ${s.t.journal.qualified} WHERE user_id = ? AND seq < ?`, [userId, beforeSeq]),
      insertLedgerEntry: (entry: LedgerEntry) => void s.insert("ledger", [entry]),
      listLedgerEntries: (q: LedgerQuery) => {
        const { where, params, add } = conditions();
        if (q.eventType !== undefined) add("event_type = ?", q.eventType);
        if (q.userId !== undefined) add("user_id = ?", q.userId);
        if (q.before !== undefined && q.beforeId !== undefined) {
          // The same instant as the previous page's last entry: those inserted before it.
          where.push(
            `(created_at < ? OR (created_at = ? AND rowid < coalesce((SELECT rowid FROM ${s.t.ledger.qualified} WHERE id = ?), 0)))`,
          );
          params.push(q.before, q.before, q.beforeId);
        } else if (q.before !== undefined) add("created_at < ?", q.before);
        return s.list<LedgerEntry>(
          "ledger",
          `${where.length > 0 ? `WHERE ${where.join(" AND ")} ` : ""}ORDER BY created_at DESC, rowid DESC LIMIT ?`,
          [...params, q.limit],
        );
      },
    },
    subscriptions: {
      insertPlan: (plan: Plan) => unique(`plan ${plan.id} already exists`, () => s.insert("plans", [plan])),
      getPlan: (id) => s.one<Plan>("plans", "WHERE id = ?", [id]),
      listPlans: (o) => s.list<Plan>("plans", `${o.includeInactive ? "" : "WHERE is_active = 1 "}ORDER BY id`),
      updatePlan: (plan, expected) => s.update("plans", plan, " AND version = ?", [expected]),
      deletePlan: (id, expected) =>
        s.run(`DELETE FROM ${s.t.plans.qualified} WHERE id = ? AND version = ?`, [id, expected]) === 1,
      planHasSubscribers: (id) =>
        count(
          `SELECT count(*) AS n FROM ${s.t.subscriptions.qualified} WHERE status = 'active' AND (plan_id = ? OR pending_plan_id = ?)`,
          [id, id],
        ) > 0,
      insertSubscription: (sub: Subscription) =>
        unique(`user ${sub.userId} already has an active subscription`, () => s.insert("subscriptions", [sub])),
      getSubscription: (id, userId) =>
        userId === undefined
          ? s.one<Subscription>("subscriptions", "WHERE id = ?", [id])
          : s.one<Subscription>("subscriptions", "WHERE user_id = ? AND id = ?", [userId, id]),
      getActiveSubscription: (userId) =>
        s.one<Subscription>("subscriptions", "WHERE user_id = ? AND status = 'active'", [userId]),
      listSubscriptions: (userId) =>
        s.list<Subscription>("subscriptions", "WHERE user_id = ? ORDER BY created_at, id", [userId]),
      updateSubscription: (sub, expected) => {
        let done = false;
        unique(
          `user ${sub.userId} already has an active subscription`,
          () => (done = s.update("subscriptions", sub, " AND version = ?", [expected])),
        );
        return done;
      },
      findDueSubscriptions: (asOf: Date, limit: number, cursor?: SubscriptionCursor) => {
        const [more, params] = after("next_run_at", cursor && { at: cursor.nextRunAt, id: cursor.id });
        return s.list<Subscription>(
          "subscriptions",
          `WHERE next_run_at IS NOT NULL AND next_run_at <= ?${more} ORDER BY next_run_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
    },
    promos: {
      insertPromo: (promo: Promo) =>
        unique(`insertPromo: promo ${promo.code} exists`, () => s.insert("promos", [promo])),
      getPromo: (code) => s.one<Promo>("promos", "WHERE code = ?", [code]),
      listPromos: (q) =>
        q.before === undefined
          ? s.list<Promo>("promos", "ORDER BY created_at DESC, code DESC LIMIT ?", [q.limit])
          : s.list<Promo>(
              "promos",
              "WHERE created_at < ? OR (created_at = ? AND code < ?) ORDER BY created_at DESC, code DESC LIMIT ?",
              [q.before.createdAt, q.before.createdAt, q.before.code, q.limit],
            ),
      setPromoActive: (code, isActive, at) => {
        s.run(`UPDATE ${s.t.promos.qualified} SET is_active = ?, updated_at = ? WHERE code = ?`, [isActive, at, code]);
        return s.one<Promo>("promos", "WHERE code = ?", [code]);
      },
      countPromoClaims: (code, userId) =>
        count(`SELECT count(*) AS n FROM ${s.t.promoClaims.qualified} WHERE code = ? AND user_id = ?`, [code, userId]),
      listPromoClaims: (userId) =>
        s.list<PromoClaim>("promoClaims", "WHERE user_id = ? ORDER BY created_at, claim_number", [userId]),
      insertPayment: (p: Payment) => unique(`insertPayment: payment ${p.id} exists`, () => s.insert("payments", [p])),
      getPayment: (id, userId) =>
        userId === undefined
          ? s.one<Payment>("payments", "WHERE id = ?", [id])
          : s.one<Payment>("payments", "WHERE user_id = ? AND id = ?", [userId, id]),
      findPaymentByProviderId: (provider, id) =>
        s.one<Payment>("payments", "WHERE provider = ? AND provider_ref = ?", [provider, id]) ??
        s.one<Payment>("payments", "WHERE provider = ? AND provider_payment_id = ?", [provider, id]),
      listPayments: (userId, q) =>
        q.before === undefined
          ? s.list<Payment>("payments", "WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", [
              userId,
              q.limit,
            ])
          : s.list<Payment>(
              "payments",
              "WHERE user_id = ? AND (created_at < ? OR (created_at = ? AND id < ?)) ORDER BY created_at DESC, id DESC LIMIT ?",
              [userId, q.before.createdAt, q.before.createdAt, q.before.id, q.limit],
            ),
      updatePayment: (p: Payment) => s.update("payments", p, " AND version = ?", [p.version - 1]),
    },
    outbox: {
      insertNotifications: (rows: readonly Notification[]) => s.tx(() => s.insert("notifications", rows, true), true),
      claimNotifications: (q: ClaimQuery) => {
        if (q.limit <= 0) return [];
        const t = s.t.notifications.qualified;
        const until = new Date(q.now.getTime() + q.leaseMs);
        return s.tx(() => {
          // Only the oldest pending row of each user, so a user's events go out in id order; with
          // `types`, every due row of those types (ClaimQuery.types).
          const types = q.types ?? [];
          const which =
            q.types === undefined
              ? `AND NOT EXISTS (SELECT 1 FROM ${t} p WHERE p.user_id = ${t}.user_id AND p.status = 'pending' AND p.id < ${t}.id) `
              : `AND type IN (${types.map(() => "?").join(", ") || "NULL"}) `;
          const picked = s.list<Notification>(
            "notifications",
            `WHERE status = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?) ` +
              `${which}ORDER BY next_attempt_at, id LIMIT ?`,
            [q.now, q.now, ...types, q.limit],
          );
          for (const n of picked)
            s.run(`UPDATE ${t} SET claimed_until = ?, claim_token = ? WHERE id = ?`, [until, q.token, n.id]);
          return picked.map((n) => ({ ...n, claimedUntil: until, claimToken: q.token }));
        }, true);
      },
      completeNotification: (id, token, u: NotificationUpdate) =>
        s.run(
          `UPDATE ${s.t.notifications.qualified} SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, settled_at = ?, claimed_until = NULL, claim_token = NULL WHERE id = ? AND claim_token = ? AND status = 'pending'`,
          [u.status, u.attempts, u.nextAttemptAt, u.lastError, u.settledAt, id, token],
        ) === 1,
      purgeNotifications: (before, limit) =>
        limit <= 0
          ? 0
          : s.run(
              `DELETE FROM ${s.t.notifications.qualified} WHERE id IN (SELECT id FROM ${s.t.notifications.qualified} WHERE settled_at IS NOT NULL AND settled_at < ? AND status <> 'pending' ORDER BY settled_at LIMIT ?)`,
              [before, limit],
            ),
      // Pending rows through the pending_due index, failed ones through settled (docs/console.md).
      listOutbox: (q: OutboxQuery) => {
        if (q.limit <= 0) return [];
        const pending = q.status === "pending";
        const col = pending ? "next_attempt_at" : "settled_at";
        const dir = pending ? "ASC" : "DESC";
        const cmp = pending ? ">" : "<";
        const where = pending ? "WHERE status = 'pending'" : "WHERE settled_at IS NOT NULL AND status = 'failed'";
        const page = q.after === undefined ? "" : ` AND (${col} ${cmp} ? OR (${col} = ? AND id ${cmp} ?))`;
        const params = q.after === undefined ? [q.limit] : [q.after.at, q.after.at, q.after.id, q.limit];
        return s.list<Notification>(
          "notifications",
          `${where}${page} ORDER BY ${col} ${dir}, id ${dir} LIMIT ?`,
          params,
        );
      },
      listNotifications: (userId, q) =>
        q.status === undefined
          ? s.list<Notification>("notifications", "WHERE user_id = ? ORDER BY id LIMIT ?", [userId, q.limit])
          : s.list<Notification>("notifications", "WHERE user_id = ? AND status = ? ORDER BY id LIMIT ?", [
              userId,
              q.status,
              q.limit,
            ]),
    },
  };
  return {
    ...store,
    accounts: patient(store.accounts),
    journal: patient(store.journal),
    subscriptions: store.subscriptions && patient(store.subscriptions),
    promos: store.promos && patient(store.promos),
    outbox: store.outbox && patient(store.outbox),
  };
}

/**
 * `options.driver`, validated, or the default: `bun:sqlite` under Bun, `better-sqlite3` elsewhere;
 * null when a database is handed in (nothing to open).
 */
function chooseDriver(options: SqliteDbManagerOptions): SqliteDriver | null {
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

/**
 * The SQLite store (`credit-management/sqlite`), on `better-sqlite3`, or under Bun on `bun:sqlite`
 * (`driver`: docs/runtimes.md, "SQLite on Bun"): a persistent embedded store for single-node
 * services and tests, built with `defineStore`. The file is in WAL mode, so
 * readers never wait for the writer; several processes may share it. A unit of work reads its
 * account in one read transaction and writes everything in one write transaction guarded on the
 * account's `seq` (another process that wrote the account in between makes it run again, with
 * backoff; after `maxAttempts` such conflicts it runs once more holding the write lock from its
 * first read, on a second connection: `Locker`); in this process, units of work on one account
 * run one after another.
 *
 * ```ts
 * const db = new SqliteDbManager({ filename: "credits.db" });
 * const credits = await createCreditManager({ db }); // runs db.init(): tables, WAL
 * ```
 */
export class SqliteDbManager extends DefinedStore {
  private readonly sqlite: Sqlite;

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
