import { ConfigurationError } from "../../core/errors.js";
import { decodeRow, encodeValues } from "../../schema/codec.js";
import { upgradeStatements, versionRefusal } from "../../schema/migrations.js";
import { SCHEMA_COMPONENT, type SqlTable, generateSql, sqlTables, versionTableName } from "../../schema/sql.js";
import type { TableKey } from "../../schema/tables.js";
import { targetVersion } from "../../schema/version.js";
import { origin } from "../../core/db/store/errors.js";
import { backoff, sleep } from "../../core/db/store/retry.js";
import { runtimeName } from "../../core/util/runtime.js";
import { refuseDriverForNode } from "./driver-version.js";
import type { Database, SqliteDbManagerOptions, SqliteDriver, SqliteStatement } from "./options.js";

// One connection to the SQLite file (docs/storage.md, SQLite): its statements, the tables the
// schema generator makes, the schema's creation and upgrade, and the asynchronous wait for a lock.

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
export function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_BUSY");
}

/** The connection, its statements and the tables (the schema generator's SQLite DDL). */
export class Sqlite {
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
    // Before the driver loads: a better-sqlite3 that needs a newer Node.js crashes the process.
    refuseDriverForNode();
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
    const target = targetVersion();
    if (version !== target) {
      this.close();
      throw new ConfigurationError(
        origin(
          "sqlite",
          `${where} is at schema version ${version}, this release reads ${target}: ${version < target ? "let a manager of this release upgrade it (init()) first" : "upgrade credit-management"}`,
        ),
      );
    }
  }

  /** The store's schema version; null when it has no version row (not a store of ours, or empty). */
  version(): number | null | Promise<number | null> {
    const db = this.conn();
    return this.patiently(() => this.readVersion(db));
  }

  private readVersion(db: Database): number | null {
    const naming = { prefix: this.options.tablePrefix };
    const exists = db
      .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
      .get(`${naming.prefix ?? ""}schema_version`);
    if (exists === undefined) return null;
    const found = db
      .prepare(`SELECT version FROM ${versionTableName("sqlite", naming)} WHERE component = ?`)
      .get(SCHEMA_COMPONENT) as { version: number } | undefined;
    return found === undefined ? null : Number(found.version);
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
  /**
   * A guard for `update` that matches `row` as it was read, every column (`IS`, so NULLs match):
   * the row's version, for a table that keeps no version column of its own.
   */
  unchanged(key: TableKey, row: object): { guard: string; params: unknown[] } {
    const t = this.t[key];
    return {
      guard: t.columns.map((c) => ` AND "${c.name}" IS ?`).join(""),
      params: encodeValues(t.columns, row as Row, { dates: "iso", booleans: "int" }),
    };
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

  /** Whether a transaction is open on the connection (true when the driver does not say). */
  get inTransaction(): boolean {
    return (this.db as { inTransaction?: boolean } | null)?.inTransaction !== false;
  }

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
      const version = this.readVersion(db) ?? 0;
      const refused = versionRefusal(
        "sqlite",
        version,
        this.options.migrate !== false,
        versionTableName("sqlite", naming),
      );
      if (refused !== null) throw refused;
      if (version === targetVersion()) return;
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
