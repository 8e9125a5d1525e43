import type { Changes } from "../../core/domain/state.js";
import type { ModuleParts } from "../../core/db/module-part.js";
import type { SqliteBoundPart } from "./module-part.js";
import { ConflictError } from "../../core/errors.js";
import type { Account, Grant, JournalEntry, Reservation } from "../../models-entry.js";
import type { Attempt } from "../store/define.js";
import { AccountLocks } from "../../core/db/store/account-locks.js";
import { origin } from "../../core/db/store/errors.js";
import type { ChargeRecord, LoadRequest, LoadedState } from "../../core/db/types.js";
import type { SqliteDbManagerOptions, SqliteDriver } from "./options.js";
import { Sqlite, isBusy } from "./connection.js";
import type { SqliteUsageRollup } from "./usage-rollup.js";
import type { SqliteBatches } from "./batch.js";

// A unit of work on the SQLite store (docs/storage.md, SQLite): one attempt guarded on the
// account's seq, and the second connection that runs an attempt holding the write lock.

/** A driver refusal the next attempt can get past: a unique key taken, or the write lock held past the busy timeout. */
export function isConflict(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return (
    typeof code === "string" &&
    (code.startsWith("SQLITE_CONSTRAINT_UNIQUE") ||
      code === "SQLITE_CONSTRAINT_PRIMARYKEY" ||
      code.startsWith("SQLITE_BUSY"))
  );
}

/** `error` as a `ConflictError` (`what` happened to a unit of work on `userId`) when it is a conflict; else itself. */
function asConflict(error: unknown, what: string, userId: string): unknown {
  if (!isConflict(error)) return error;
  return new ConflictError(origin("sqlite", `${what} (${(error as Error).message})`), { userId }, error);
}

/**
 * The file's second connection, for locked attempts (docs/storage.md, SQLite): a unit of work that
 * kept meeting conflicts runs once more on it inside `BEGIN IMMEDIATE`, taken before its first read
 * and held across its `await`s until its commit — on a connection of its own, so that nothing else
 * this process runs meanwhile joins that transaction. One at a time in this process (a FIFO turn);
 * opened at the first, so a store that never meets a conflict never opens it.
 */
export class Locker {
  private s: Sqlite | null = null;
  private opening: Promise<Sqlite> | null = null;
  /** The turns: one lock, the file's. */
  private readonly turns = new AccountLocks();

  constructor(
    private readonly options: SqliteDbManagerOptions,
    private readonly filename: string,
    /** What opens it: the store's own driver (`better-sqlite3` for a `database` handed in). */
    private readonly driver: SqliteDriver,
    /** The store's daily usage rollup, which a unit of work's entries are added to. */
    private readonly rollup?: SqliteUsageRollup,
    /** The modules' parts (./module-part.ts). */
    private readonly modules?: ModuleParts<SqliteBoundPart>,
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
      return new SqliteAttempt(s, userId, release, this.rollup, this.modules);
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

  /** Waits for the locked attempts before this one; resolves to the function that ends its turn (once). */
  private async turn(): Promise<() => void> {
    await this.turns.acquire(this.filename);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.turns.release(this.filename);
    };
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
 * One attempt of a unit of work. `load` reads the account in one read transaction; `save` queues;
 * `commit` writes everything in one write transaction that first moves the account row from the
 * state it was loaded in (the guard: every column, not only `seq`, as a change to the account
 * alone — an auto top-up settled, a threshold set — keeps the seq): if another process wrote the
 * account since, nothing is written and the unit of work runs again. Writes never wait across an
 * `await`. With group commit (`batches`), that write is a savepoint in a transaction shared with
 * the other units of work committing in the same turn (./batch.ts).
 *
 * A locked attempt (`release` given, on the `Locker`'s connection) runs inside the `BEGIN
 * IMMEDIATE` its `Locker` opened: its reads and writes are savepoints in it, `commit` ends it with
 * COMMIT and `rollback` with ROLLBACK, and both end its turn. No other writer can run in between,
 * so its guard cannot fail.
 */
export class SqliteAttempt implements Attempt {
  private pending: Changes | undefined;
  private saved = false;
  /** Committing or over (`finish`). */
  private finished = false;
  /** The commit's guard: the account row as `load` read it (encoded then: the unit may change the objects). */
  private loaded: { seq: number; guard: string; params: unknown[] } | null = null;

  constructor(
    private readonly s: Sqlite,
    readonly userId: string,
    private readonly release?: () => void,
    /** The store's daily usage rollup (src/db/sqlite/usage-rollup.ts): the entries are added in the same transaction. */
    private readonly rollup?: SqliteUsageRollup,
    /** The modules' parts: their reads in the unit of work, and their rows written with it. */
    private readonly modules?: ModuleParts<SqliteBoundPart>,
    /** Group commit (an attempt that is not locked, unless `batch: false`). */
    private readonly batches?: SqliteBatches,
  ) {
    if (batches !== undefined) batches.open++;
  }

  /** The attempt is committing or over: no longer counted in flight for group commit. */
  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.batches !== undefined) this.batches.open--;
  }

  load(request?: LoadRequest): LoadedState | Promise<LoadedState> {
    if (this.release !== undefined) return this.read(request);
    return this.s.patiently(() => this.read(request));
  }

  private read(request?: LoadRequest): LoadedState {
    const { s, userId } = this;
    const state = s.tx(() => ({
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
    this.loaded = state.account === null ? null : { seq: state.account.seq, ...s.unchanged("accounts", state.account) };
    return state;
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
  async getCharge(entryId: string): Promise<ChargeRecord | null> {
    const { s, userId } = this;
    // One snapshot: the entry by its id, its reversals by the account's index of them.
    return s.tx(() => {
      const entry = s.one<JournalEntry>("journal", "WHERE id = ? AND user_id = ?", [entryId, userId]);
      if (entry === null) return null;
      const reversals = s.list<JournalEntry>("journal", "WHERE user_id = ? AND reverses = ? ORDER BY seq", [
        userId,
        entryId,
      ]);
      return { entry, reversals };
    });
  }
  /** The reads of `module`'s part in this attempt (`DbTransaction.part`), on its connection. */
  part(module: string): object | undefined {
    return this.modules?.get(module)?.transaction?.({ userId: this.userId, db: this.s });
  }
  save(changes: Changes): void {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    this.pending = changes;
  }

  commit(): void | Promise<void> {
    const c = this.pending;
    if (this.release !== undefined) return this.commitLocked(c);
    this.finish();
    if (c === undefined) return;
    const conflict = (error: unknown) => asConflict(error, "a concurrent write won", this.userId);
    try {
      const write = () => this.write(c);
      const done = this.batches === undefined ? this.s.patiently(write) : this.batches.commit(write);
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
      throw asConflict(error, "a write holding the lock was refused", this.userId);
    }
    this.release?.();
  }

  rollback(): void {
    this.finish();
    if (this.release === undefined) return;
    try {
      this.s.end(false);
    } finally {
      this.release();
    }
  }

  /**
   * Everything the unit of work saved, in one write transaction (nothing when it throws); inside a
   * batch's transaction, a savepoint of it.
   */
  private write(c: Changes): void {
    const { s } = this;
    const stale = () =>
      new ConflictError(origin("sqlite", `account ${this.userId} changed during the unit of work`), {
        userId: this.userId,
      });
    s.tx(() => {
      if (c.previousSeq === null) s.insert("accounts", [c.account]);
      else {
        const { guard, params } =
          this.loaded?.seq === c.previousSeq ? this.loaded : { guard: " AND seq = ?", params: [c.previousSeq] };
        if (!s.update("accounts", c.account, guard, params)) throw stale();
      }
      s.insert("grants", c.insertGrants);
      for (const g of c.updateGrants) s.update("grants", g);
      s.insert("reservations", c.insertReservations);
      for (const r of c.updateReservations) s.update("reservations", r);
      s.insert("journal", c.entries);
      this.rollup?.saved(s, this.userId, c.previousSeq, c.account.seq, c.entries);
      if (c.rows !== undefined && this.modules !== undefined) {
        for (const { module, part } of this.modules.bound) {
          const rows = c.rows[module];
          if (rows !== undefined) part.write?.(s, rows);
        }
      }
      s.insert("notifications", c.notifications ?? []);
    }, true);
  }
}
