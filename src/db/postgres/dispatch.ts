import { Batch } from "./batch.js";
import { storageError } from "./errors.js";
import type { PostgresDbManager } from "./index.js";
import type { PostgresDbManagerOptions } from "./options.js";
import type { PgPoolClient as PoolClient } from "./pg-types.js";
import type { BatchResult, Unit } from "./unit.js";
import type { UnitTx } from "./unit-tx.js";
import { CitusUnits } from "./citus-units.js";
import { GroupCommit } from "../store/group-commit.js";
import { gaveUp } from "../../core/db/store/errors.js";
import { backoff } from "../../core/db/store/retry.js";

/** Jittered, in [cap/2, cap), the cap doubling from 4 ms up to 250 ms. */
const BACKOFF = { base: 4, factor: 2, max: 250, floor: 0.5 };

/**
 * How the store's units of work reach the database: group commit, the runs again after a
 * conflict or a lost connection, and the order in which committed units of one account resolve.
 */
export class UnitDispatch {
  /** Units of work per transaction at most (`batch.maxUnits`; 1: `batch: false`). */
  readonly maxUnits: number;
  /** The units of work of this process in a batch now, per account (see `committedBefore`). */
  private readonly running = new Map<string, UnitTx[]>();
  /**
   * Group commit. A batch takes the oldest waiting units of accounts that this process is not
   * working on, up to `maxUnits` (several of one account form a chain: `Batch.runChain`), while
   * fewer than `concurrency` batches run. Batches never wait for a row lock (SKIP LOCKED). A unit
   * whose account another process holds becomes a waiter: it runs alone and waits for the lock on
   * a connection of its own, outside the batch slots, so the lock passes on the moment it is
   * released; at most one waiter per account and `waiters` in all. Units of an account this
   * process is working on wait in memory and join the next batch (docs/storage.md, PostgreSQL).
   */
  private readonly group: GroupCommit<Unit>;
  /**
   * @internal On Citus: units of work as calls Citus delegates to the account's worker
   * (./citus-units.ts); false runs each as a transaction of its own instead (the bench's "before").
   */
  calls = true;
  private citus: CitusUnits | null = null;

  constructor(
    private readonly db: PostgresDbManager,
    batchOption: PostgresDbManagerOptions["batch"],
    private readonly maxAttempts: number,
  ) {
    const batch = batchOption ?? {};
    this.maxUnits = batch === false ? 1 : Math.max(1, batch.maxUnits ?? 32);
    this.group = new GroupCommit<Unit>({
      maxUnits: this.maxUnits,
      concurrency: batch === false ? Infinity : Math.max(1, batch.concurrency ?? 4),
      maxAlone: batch === false ? Infinity : Math.max(1, batch.waiters ?? 4),
      // Units of one account queued together share a batch, one after another in its transaction
      // (`Batch.runChain`): a hot account's units wait in memory for the next batch rather than
      // each taking a transaction of its own behind the row lock.
      perAccount: 1,
      perBatch: this.maxUnits,
      alone: (u) => u.wait,
      runBatch: (units) => this.runBatch(units, false),
      runAlone: (u) => this.runBatch([u], true),
    });
  }

  /** A new unit of work (`transaction()`): batched, or a transaction of its own. */
  push(unit: Unit): void {
    if (this.calls && this.db.sql.distributed) {
      this.citus ??= new CitusUnits(this.db, this.db.stateCacheSize, this.maxAttempts, (u) => {
        void this.runBatch([u], true);
      });
      this.citus.push(unit);
    } else if (this.maxUnits === 1 || this.db.sql.distributed) {
      // No batching: every unit of work is a transaction of its own that waits for its lock.
      unit.wait = true;
      void this.runBatch([unit], true);
    } else {
      this.group.push(false, unit);
    }
  }

  private async runBatch(units: Unit[], wait: boolean): Promise<void> {
    let client: PoolClient;
    try {
      client = await this.db.connect();
    } catch (error) {
      for (const u of units) u.reject(error);
      return;
    }
    let result: BatchResult;
    const batch = new Batch(this.db, client, units, wait);
    try {
      result = await batch.run();
    } catch (error) {
      batch.untrackSettled(); // a unit that waits for this batch's units must not wait for ever
      this.db.release(client, error);
      for (const u of units) u.reject(storageError("transaction", error));
      return;
    }
    this.db.release(client, result.brokenBy);
    for (const { unit, reason, skipped, lost, notRun, alone, fresh } of result.retry) {
      if (notRun) {
        // A later unit of a chain that did not run, or left it: again, no attempt counted.
        if (alone) unit.solo = true;
        this.requeue(unit, 0);
        continue;
      }
      if (skipped) {
        // Its account is busy in another transaction: run it again alone, waiting for the lock.
        unit.wait = true;
        this.requeue(unit, 0);
        continue;
      }
      unit.attempts++;
      if (unit.attempts >= this.maxAttempts && lost === true) {
        // The connection kept failing: that is the database's state, not a conflict.
        unit.reject(storageError("transaction", reason));
      } else if (unit.attempts >= this.maxAttempts && unit.last !== true) {
        // Out of attempts (a hot account whose cached state other processes keep making stale,
        // a unit failed by its batch-mates): once more, alone, waiting for the row lock and
        // loading under it, where no other transaction can move the account (docs/storage.md).
        unit.last = true;
        unit.wait = true;
        unit.fresh = true;
        unit.solo = true;
        this.requeue(unit, 0);
      } else if (unit.attempts >= this.maxAttempts) {
        unit.reject(gaveUp("postgres", unit.userId, unit.attempts, reason));
      } else if (fresh === true && unit.fresh !== true) {
        // A batch that started from the state cache failed: once more batched, loading under the lock.
        unit.fresh = true;
        this.requeue(unit, 0);
      } else {
        // Alone from now on, so that whatever failed the batch fails only its own unit.
        unit.solo = true;
        this.requeue(unit, backoff(unit.attempts, BACKOFF));
      }
    }
  }

  /** @internal A batch took `tx` on. */
  track(tx: UnitTx): void {
    const list = this.running.get(tx.userId);
    if (list === undefined) this.running.set(tx.userId, [tx]);
    else list.push(tx);
  }

  /** @internal `tx` is settled (resolved, rejected or handed back for a retry). */
  untrack(tx: UnitTx): void {
    tx.done.resolve();
    const list = this.running.get(tx.userId);
    if (list === undefined) return;
    const at = list.indexOf(tx);
    if (at >= 0) list.splice(at, 1);
    if (list.length === 0) this.running.delete(tx.userId);
  }

  /**
   * @internal Settles once the other units of `tx`'s account whose entries come before its own
   * are settled; null when there are none (the usual case: nothing to wait for).
   */
  committedBefore(tx: UnitTx): Promise<unknown> | null {
    const list = this.running.get(tx.userId);
    const first = tx.pending?.entries[0]?.seq;
    if (list === undefined || list.length < 2 || first === undefined) return null;
    let waits: Promise<void>[] | null = null;
    for (const other of list) {
      const seq = other === tx ? undefined : other.pending?.entries[0]?.seq;
      if (seq !== undefined && seq < first) (waits ??= []).push(other.done.promise);
    }
    return waits === null ? null : Promise.all(waits);
  }

  /** Runs a unit again after `delay` ms (at the front of the queue, or on its own without batching). */
  private requeue(unit: Unit, delay: number): void {
    const again = () => {
      if (this.maxUnits === 1 || this.db.sql.distributed) void this.runBatch([unit], true);
      else this.group.push(true, unit);
    };
    if (delay > 0) setTimeout(again, delay);
    else setImmediate(again); // after the current batch has released its accounts
  }
}
