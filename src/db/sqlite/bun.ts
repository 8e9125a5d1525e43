import type { SqliteDatabase, SqliteStatement } from "./index.js";

/**
 * The SQLite store on Bun's own `bun:sqlite` (docs/runtimes.md, "SQLite on Bun"): the part of
 * `better-sqlite3`'s interface that the store uses (`SqliteDatabase`), over a `bun:sqlite`
 * database. This module is loaded by the store only under Bun, and `bun:sqlite` only when a file
 * is opened, so nothing here is loaded on Node.js or Deno.
 *
 * The differences it covers: `get()` answers `null` for no row (`better-sqlite3`: `undefined`);
 * there is no `pragma()` (a `PRAGMA` statement instead); `close()` closes the file only once every
 * statement is finalized (so `close()` here finalizes them first). What needs nothing: `run()` answers
 * `{ changes, lastInsertRowid }`; errors carry the extended result code as a string in `code`
 * (`SQLITE_BUSY`, `SQLITE_CONSTRAINT_UNIQUE`, …), as `better-sqlite3`'s do; `exec()` runs several
 * statements; `transaction()` has `immediate()` and nests with savepoints; integers come back as
 * numbers (no `safeIntegers`, as with `better-sqlite3`'s default). The store binds only positional
 * parameters (`?`), so the prefixes of named ones (`$`, `:`, `@`, `strict`) do not arise.
 */

/** The parts of a `bun:sqlite` statement used here. */
interface BunStatement {
  all(...params: unknown[]): unknown[];
  get(...params: unknown[]): unknown;
  run(...params: unknown[]): { changes: number; lastInsertRowid: number | bigint };
  finalize(): void;
}

/** The parts of a `bun:sqlite` database used here. */
export interface BunDatabase {
  prepare(sql: string): BunStatement;
  exec(sql: string): unknown;
  transaction<F extends () => unknown>(fn: F): { (): ReturnType<F>; immediate(): ReturnType<F> };
  close(throwOnError?: boolean): unknown;
  /** Whether a transaction is open. */
  readonly inTransaction: boolean;
}

class Statement implements SqliteStatement {
  constructor(private readonly statement: BunStatement) {}
  all(...params: unknown[]): unknown[] {
    return this.statement.all(...params);
  }
  get(...params: unknown[]): unknown {
    return this.statement.get(...params) ?? undefined;
  }
  run(...params: unknown[]): { changes: number } {
    return this.statement.run(...params);
  }
}

/** A `bun:sqlite` database with the interface of a `better-sqlite3` one (the part the store uses). */
export class BunSqliteDatabase implements SqliteDatabase {
  /** Every statement prepared here, finalized by `close()`. */
  private readonly statements = new Set<BunStatement>();

  constructor(readonly database: BunDatabase) {}

  prepare(sql: string): SqliteStatement {
    const statement = this.database.prepare(sql);
    this.statements.add(statement);
    return new Statement(statement);
  }
  exec(sql: string): this {
    this.database.exec(sql);
    return this;
  }
  /** `better-sqlite3`'s `pragma()`: the rows of `PRAGMA source`, or (`simple`) the first column of the first. */
  pragma(source: string, options?: { simple?: boolean }): unknown {
    const statement = this.database.prepare(`PRAGMA ${source}`);
    let rows: Record<string, unknown>[];
    try {
      rows = statement.all() as Record<string, unknown>[];
    } finally {
      statement.finalize();
    }
    if (options?.simple !== true) return rows;
    const first = rows[0];
    return first === undefined ? undefined : Object.values(first)[0];
  }
  transaction<F extends () => unknown>(fn: F): { (): ReturnType<F>; immediate(): ReturnType<F> } {
    return this.database.transaction(fn);
  }
  /** `better-sqlite3`'s `inTransaction` (group commit reads it: ./batch.ts). */
  get inTransaction(): boolean {
    return this.database.inTransaction;
  }
  /**
   * Closes the file for real: `bun:sqlite`'s `close()` leaves the connection open while one of its
   * statements is not finalized (it stays open until they are), unlike `better-sqlite3`'s, which
   * finalizes them. Left open, it would still hold the file, its WAL and its locks after `close()`.
   */
  close(): void {
    for (const statement of this.statements) statement.finalize();
    this.statements.clear();
    this.database.close();
  }
}

/** `bun:sqlite`'s `Database` class. */
export type BunDatabaseClass = new (
  filename: string,
  options?: { create?: boolean; readwrite?: boolean },
) => BunDatabase;

/** Imports `bun:sqlite` (only under Bun: elsewhere the import fails). */
export async function loadBunSqlite(): Promise<BunDatabaseClass> {
  // The specifier is made at run time, so that a bundler of a user's app never tries to resolve
  // it: with the literal, bundling a Worker that imports credit-management/sqlite (wrangler's
  // esbuild) failed with 'Could not resolve "bun:sqlite"'. Bun imports it all the same.
  const specifier = ["bun", "sqlite"].join(":");
  const mod = (await import(/* webpackIgnore: true */ /* @vite-ignore */ specifier)) as { Database: BunDatabaseClass };
  return mod.Database;
}

/** Opens `filename` with `bun:sqlite`'s `Database` (created when missing, unless `fileMustExist`). */
export function openBunSqlite(
  Database: BunDatabaseClass,
  filename: string,
  options: { fileMustExist?: boolean } = {},
): BunSqliteDatabase {
  const db = new Database(
    filename,
    options.fileMustExist === true ? { readwrite: true, create: false } : { readwrite: true, create: true },
  );
  return new BunSqliteDatabase(db);
}
