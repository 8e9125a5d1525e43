import type { Changes } from "../../core/domain/state.js";
import { hasModuleRows } from "../../core/db/module-part.js";
import { ConflictError, StorageError } from "../../core/errors.js";
import type { Account, Grant, JournalEntry, Reservation } from "../../models-entry.js";
import { decodeRow } from "../../schema/codec.js";
import type { Column } from "../../schema/columns.js";
import { REVISION, unitFunctionNames } from "../../schema/citus-units.js";
import type { SqlTable } from "../../schema/sql.js";
import { type AccountState as BaseState, StateCache, stateAfter } from "../../core/db/state-cache.js";
import type { ChargeRecord, DbTransaction, LoadRequest, LoadedState } from "../../core/db/types.js";
import { checkOneAccount, isConflict, leavesOutcomeUnknown, lockTimeout, storageError, workerCode } from "./errors.js";
import { outcomeUnknown } from "../../core/db/store/errors.js";
import type { PostgresDbManager } from "./index.js";
import { stateText, type StartState } from "./reads.js";
import { chargeOf, toRow } from "./sql.js";
import type { Unit } from "./unit.js";

/** An account's last committed state in this process, at the account row's revision. */
interface CitusState extends BaseState {
  rev: number;
  node: number | null;
}

/** One unit's save waiting for its node's call: `args`, `unit_save`'s arguments (without the lock timeout). */
interface Waiting {
  args: unknown[];
  resolve: (rev: number) => void;
  reject: (error: unknown) => void;
}

/** The saves of one node's accounts: the calls out, and those that wait for the next. */
interface SaveQueue {
  out: number;
  waiting: Waiting[];
}

/** The most units one `unit_saves` call carries. */
const MAX_UNITS_PER_CALL = 32;
/**
 * The most calls out at once to one node; saves ready meanwhile wait and go together (two: 1.2×
 * the deductions per second of one call per unit at 16 callers, where one call out was slower;
 * docs/benchmarks.md, "Citus").
 */
const MAX_CALLS_OUT = 2;

/** Thrown inside a unit of work that needs what one call cannot do: it runs as a transaction instead. */
class NeedsTransaction extends Error {
  constructor() {
    super("the unit of work runs again in a transaction");
  }
}

/**
 * Units of work on a store distributed on Citus, each as calls of the functions Citus delegates to
 * the account's worker (docs/scaling-out.md, "A unit of work in one call"; src/schema/citus-units.ts):
 *
 * - the unit starts from this process's last committed state of the account (a cache keyed on the
 *   account row's revision, which moves with the row when its shard moves), or from one
 *   `unit_load` call, which reads the account, its open grants and active holds and an
 *   idempotency key's entry in one snapshot;
 * - its changes go in one `unit_save` call, which writes them only if the account is still at
 *   the revision the unit started from, and commits on the worker with a plain COMMIT. Else
 *   nothing is written and the unit runs again from a fresh load. Saves for one worker that are
 *   ready while calls to it are out go together in one `unit_saves` call (`saveOn`);
 * - a unit that started from the cache, or read more rows after its load, and writes nothing (a
 *   refusal) is final once the account's revision is confirmed unchanged; else it runs again.
 *
 * Units of one account in this process run one after another (the next starts from the state the
 * previous one left). A unit that reads or saves rows of a module, loads twice or saves
 * without loading runs instead as a transaction that locks the account (`./batch.ts`); so does a
 * unit whose saves keep failing on a revision other processes move (`maxAttempts`).
 */
export class CitusUnits {
  readonly states: StateCache<CitusState> | null;
  /** The last unit of each account in this process: the next one starts after it. */
  private readonly tails = new Map<string, Promise<void>>();
  readonly fn: { load: string; save: string; saves: string };
  /** Saves waiting, by the node that held their account at its load (`saveOn`). */
  private readonly queues = new Map<number | null, SaveQueue>();

  constructor(
    readonly db: PostgresDbManager,
    cacheSize: number,
    private readonly maxAttempts: number,
    /** Runs a unit as a transaction of its own that waits for its account's lock (`./batch.ts`). */
    private readonly inTransaction: (unit: Unit) => void,
  ) {
    this.states = cacheSize === 0 ? null : new StateCache<CitusState>(cacheSize);
    this.fn = unitFunctionNames(db.sql.naming);
  }

  push(unit: Unit): void {
    const before = this.tails.get(unit.userId);
    const run = (before ?? Promise.resolve()).then(() => this.run(unit));
    this.tails.set(unit.userId, run);
    void run.then(() => {
      if (this.tails.get(unit.userId) === run) this.tails.delete(unit.userId);
    });
  }

  /** Runs `unit` to its end (resolved or rejected); never throws. */
  private async run(unit: Unit): Promise<void> {
    let fresh = unit.fresh === true;
    for (let attempt = 1; ; attempt++) {
      const tx = new CallTx(this, unit.userId, fresh);
      let outcome: PromiseSettledResult<unknown>;
      try {
        outcome = { status: "fulfilled", value: await unit.fn(tx) };
      } catch (reason) {
        outcome = { status: "rejected", reason };
      }
      if (tx.needsTransaction || (outcome.status === "rejected" && outcome.reason instanceof NeedsTransaction))
        return this.transaction(unit);
      try {
        if (outcome.status === "fulfilled" && tx.pending !== null) {
          await tx.commit();
        } else if (tx.unsure && !(outcome.status === "rejected" && outcome.reason instanceof StorageError)) {
          // Decided on a state that may be old: final only if the account is still at its revision.
          if (!(await tx.current())) throw new Again(new ConflictError(`account ${unit.userId} changed`));
        }
      } catch (error) {
        if (!(error instanceof Again)) return unit.reject(error);
        this.states?.delete(unit.userId);
        fresh = true;
        // Out of attempts (other processes keep moving the account): as a transaction that waits
        // for the account's lock and loads under it (docs/storage.md).
        if (attempt >= this.maxAttempts) return this.transaction(unit);
        continue;
      }
      if (outcome.status === "fulfilled") unit.resolve(outcome.value);
      else unit.reject(outcome.reason);
      return;
    }
  }

  /**
   * Saves one unit (`args`: `unit_save`'s arguments but the lock timeout) in a call of its own, or
   * in a `unit_saves` call with the other units of accounts on `node` that became ready while
   * `MAX_CALLS_OUT` calls to that node were out (docs/scaling-out.md, "A unit of work in one
   * call"). Resolves to the account's new revision; rejects with the unit's own error (a
   * `StorageError` whose cause carries the SQLSTATE, as `read` gives), or the call's.
   */
  saveOn(node: number | null, args: unknown[]): Promise<number> {
    let queue = this.queues.get(node);
    if (queue === undefined) {
      queue = { out: 0, waiting: [] };
      this.queues.set(node, queue);
    }
    const q = queue;
    return new Promise<number>((resolve, reject) => {
      q.waiting.push({ args, resolve, reject });
      if (q.out < MAX_CALLS_OUT) void this.send(q);
    });
  }

  /** Sends `queue`'s waiting saves, a call at a time, until none waits (one unit alone: `unit_save`). */
  private async send(queue: SaveQueue): Promise<void> {
    queue.out++;
    // Always given back: a node whose count stayed up would hold its next saves forever.
    try {
      while (queue.waiting.length > 0) {
        const units = queue.waiting.splice(0, MAX_UNITS_PER_CALL);
        const { db, fn } = this;
        if (units.length === 1) {
          const [unit] = units as [Waiting];
          try {
            const [row] = await db.read(
              "save",
              `SELECT ${fn.save}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS rev`,
              [...unit.args, db.lockTimeoutMs],
            );
            unit.resolve(Number(row?.rev));
          } catch (error) {
            unit.reject(error);
          }
          continue;
        }
        let results: Array<{ rev?: number; code?: string; message?: string }>;
        try {
          const [row] = await db.read("save", `SELECT ${fn.saves}($1, $2, $3) AS r`, [
            units[0]?.args[0],
            JSON.stringify(units.map((u) => u.args)),
            db.lockTimeoutMs,
          ]);
          results = JSON.parse(String(row?.r)) as typeof results;
        } catch (error) {
          for (const u of units) u.reject(error);
          continue;
        }
        units.forEach((u, i) => {
          const r = results[i];
          if (r?.code === undefined && typeof r?.rev === "number") u.resolve(r.rev);
          else {
            const cause = Object.assign(new Error(r?.message ?? "no result for the unit"), {
              code: r?.code ?? "XX000",
            });
            u.reject(storageError("save", workerCode(cause)));
          }
        });
      }
    } finally {
      queue.out--;
    }
  }

  /** `unit` as a transaction (`./batch.ts`); settles when it does. */
  private transaction(unit: Unit): Promise<void> {
    return new Promise<void>((settled) => {
      const { resolve, reject } = unit;
      unit.resolve = (value) => {
        resolve(value);
        settled();
      };
      unit.reject = (error) => {
        reject(error);
        settled();
      };
      unit.wait = true;
      unit.fresh = true;
      this.states?.delete(unit.userId);
      this.inTransaction(unit);
    });
  }
}

/** The unit must run again from a fresh load (`reason`: the driver error or the failed check). */
class Again extends Error {
  constructor(readonly reason: unknown) {
    super("again");
  }
}

/** The `DbTransaction` of one unit of work on Citus (see {@link CitusUnits}). */
class CallTx implements DbTransaction {
  /** It asked for what one call cannot do: it runs again as a transaction. */
  needsTransaction = false;
  /** Its decision rests on a cached state or on reads after its load: confirm before it is final. */
  unsure = false;
  pending: Changes | null = null;
  private loaded: { rev: number | null; base: BaseState | null; node: number | null } | null = null;
  private readonly originals = { grants: new Map<string, Grant>(), holds: new Map<string, Reservation>() };

  constructor(
    private readonly units: CitusUnits,
    readonly userId: string,
    private readonly fresh: boolean,
  ) {}

  private get tables() {
    return this.units.db.sql.tables;
  }

  private transaction(): never {
    this.needsTransaction = true;
    throw new NeedsTransaction();
  }

  async load(request?: LoadRequest): Promise<LoadedState> {
    if (this.loaded !== null) this.transaction();
    const key = request?.idempotencyKey ?? null;
    const cached = this.fresh || key !== null ? undefined : this.units.states?.get(this.userId);
    if (cached !== undefined) {
      this.unsure = true;
      if (this.units.db.verifyStates) await this.verify(cached);
      return this.start(cached.rev, cached, null, cached.node);
    }
    const [row] = await this.units.db.read("load", `SELECT ${this.units.fn.load}($1, $2) AS s`, [this.userId, key]);
    const s = JSON.parse(String(row?.s)) as {
      rev: number | null;
      node: number | null;
      account: Record<string, unknown> | null;
      grants: Record<string, unknown>[] | null;
      holds: Record<string, unknown>[] | null;
      idem: Record<string, unknown> | null;
    };
    const t = this.tables;
    const account = s.account === null ? null : decodeRow<Account>(t.accounts.columns, s.account);
    const base =
      account === null
        ? null
        : {
            account,
            grants: (s.grants ?? []).map((g) => decodeRow<Grant>(t.grants.columns, g)),
            reservations: (s.holds ?? []).map((r) => decodeRow<Reservation>(t.reservations.columns, r)),
          };
    const idempotent = s.idem === null ? null : decodeRow<JournalEntry>(t.journal.columns, s.idem);
    return this.start(s.rev === null ? null : Number(s.rev), base, idempotent, s.node);
  }

  private start(
    rev: number | null,
    base: BaseState | null,
    idempotent: JournalEntry | null,
    node: number | null,
  ): LoadedState {
    this.loaded = { rev, base, node };
    for (const g of base?.grants ?? []) this.originals.grants.set(g.id, g);
    for (const r of base?.reservations ?? []) this.originals.holds.set(r.id, r);
    return {
      account: base?.account ?? null,
      grants: [...(base?.grants ?? [])],
      reservations: [...(base?.reservations ?? [])],
      idempotent,
    };
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    const known = this.originals.grants;
    if (grantIds.every((id) => known.has(id))) return grantIds.map((id) => known.get(id) as Grant);
    this.unsure = true;
    const rows = await this.units.db.read(
      "getGrants",
      `${this.units.db.sql.select("grants")} WHERE user_id = $1 AND id = ANY($2::text[])`,
      [this.userId, [...grantIds]],
    );
    for (const r of rows) {
      const g = decodeRow<Grant>(this.tables.grants.columns, r);
      if (!known.has(g.id)) known.set(g.id, g);
    }
    return grantIds.flatMap((id) => known.get(id) ?? []);
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const known = this.originals.holds.get(reservationId);
    if (known !== undefined) return known;
    this.unsure = true;
    const [row] = await this.units.db.read(
      "getReservation",
      `${this.units.db.sql.select("reservations")} WHERE user_id = $1 AND id = $2`,
      [this.userId, reservationId],
    );
    if (row === undefined) return null;
    const r = decodeRow<Reservation>(this.tables.reservations.columns, row);
    this.originals.holds.set(r.id, r);
    return r;
  }

  async getCharge(entryId: string): Promise<ChargeRecord | null> {
    // Read after the load: the save's revision guard confirms nothing was written since.
    this.unsure = true;
    const { sql } = this.units.db;
    const rows = await this.units.db.read("getCharge", sql.chargeText(), [this.userId, entryId]);
    return chargeOf(this.tables.journal, rows, entryId);
  }

  // A module's rows may live in reference tables: a transaction of their own (./batch.ts).
  part(_module: string): object | undefined {
    this.transaction();
  }

  async save(changes: Changes): Promise<void> {
    if (this.pending !== null) throw new Error("save() may be called once per unit of work");
    if (this.loaded === null || hasModuleRows(changes.rows)) this.transaction();
    if (changes.previousSeq !== (this.loaded.base?.account.seq ?? null))
      throw new ConflictError(`account ${this.userId} changed during the unit of work`, { userId: this.userId });
    checkOneAccount(this.userId, changes);
    this.pending = changes;
  }

  /** Writes the changes in one `unit_save` call; on success, the account's new state is cached. */
  async commit(): Promise<void> {
    const c = this.pending as Changes;
    const loaded = this.loaded as { rev: number | null; base: BaseState | null; node: number | null };
    const t = this.tables;
    // None: NULL, for which the function runs no statement.
    const json = (table: SqlTable, rows: readonly object[]) =>
      rows.length === 0 ? null : JSON.stringify(rows.map((r) => toRow(table.columns, r, "drop")));
    const { db } = this.units;
    let rev: number;
    try {
      rev = await this.units.saveOn(loaded.node, [
        this.userId,
        loaded.rev,
        c.previousSeq,
        JSON.stringify(toRow(t.accounts.columns as Column[], c.account)),
        json(t.grants, c.insertGrants),
        json(t.grants, c.updateGrants),
        json(t.reservations, c.insertReservations),
        json(t.reservations, c.updateReservations),
        json(t.journal, c.entries),
        json(t.notifications, c.notifications ?? []),
      ]);
    } catch (error) {
      // read() wraps the driver's error: its SQLSTATE is the cause's. A conflict (the function's
      // revision check and missing rows raise 40001; a deadlock; a concurrent first write's unique
      // key) runs the unit again from a fresh load. The function raises no 22P02 guard error.
      const cause = error instanceof StorageError ? error.cause : error;
      if (isConflict(cause)) throw new Again(error);
      if ((cause as { code?: unknown } | null)?.code === "55P03") throw lockTimeout(db, "save", error);
      if (leavesOutcomeUnknown(cause)) {
        // The save commits as it runs: lost with it, its outcome is unknown (docs/concepts.md,
        // "Certain and uncertain errors"). The next unit of the account loads.
        this.units.states?.delete(this.userId);
        throw outcomeUnknown("postgres", error);
      }
      throw error;
    }
    try {
      this.units.states?.set(this.userId, { ...stateAfter(loaded.base, c), rev, node: loaded.node });
    } catch {
      this.units.states?.delete(this.userId); // (committed: this must not fail the unit)
    }
  }

  /** Whether the account is still at the revision this unit started from. */
  async current(): Promise<boolean> {
    const loaded = this.loaded;
    if (loaded === null) return true;
    const [row] = await this.units.db.read(
      "confirm",
      `SELECT ${REVISION} AS rev FROM ${this.tables.accounts.qualified} WHERE user_id = $1`,
      [this.userId],
    );
    return (row === undefined ? null : Number(row.rev)) === loaded.rev;
  }

  /** Tests (`verifyStateCache`): a cached state at the account's revision must be what the database holds. */
  private async verify(cached: CitusState): Promise<void> {
    const fresh = new CallTx(this.units, this.userId, true);
    const state = await fresh.load();
    if (fresh.loaded?.rev !== cached.rev) return; // moved since: the save's check refuses it
    const norm = (x: StartState) => stateText(this.tables, x);
    if (norm(state) !== norm(cached))
      throw new Error(`state cache of ${this.userId} differs from the database: ${norm(cached)} != ${norm(state)}`);
  }
}
