import type { DbTransaction } from "../../core/db/types.js";

/**
 * Group commit, shared by the database stores (MongoDB, PostgreSQL): units of work on different
 * accounts that wait at the same time are handed to the store in batches, one transaction each.
 * `GroupCommit` owns the queue, the accounts in flight, the batch slots and the once-per-turn
 * scheduling; the store only runs a batch (`runBatch`) or a unit alone (`runAlone`).
 */

/** A promise with its resolve and reject (Node 20 has no `Promise.withResolvers`). */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

/** A deferred promise whose rejection is never unhandled (nobody may be waiting for it). */
export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // The waiter, if any, gets the rejection through `promise`; this only keeps it from being unhandled.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/** A unit of work waiting for a batch: `db.transaction(userId, fn)`. */
export interface QueuedUnit {
  userId: string;
  fn: (tx: DbTransaction) => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  /** Tries so far (the adapter counts them against its attempt limit). */
  attempts: number;
  /** Runs alone from now on (after a failed batch, so that a culprit fails only itself). */
  solo: boolean;
}

/**
 * `run` at the end of the current turn of the event loop, once however often it is asked for in
 * the turn: units of work started together (or resubmitted together when a batch's callers resume)
 * travel together.
 */
export function oncePerTurn(run: () => void): () => void {
  let scheduled = false;
  return () => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      run();
    });
  };
}

/** How a store's group commit forms batches. */
export interface GroupCommitOptions<U extends QueuedUnit> {
  /** Units of work per batch (distinct accounts). */
  maxUnits: number;
  /** Batches running at once. */
  concurrency: number;
  /** Units running alone at once, outside the batch slots (Infinity: no limit). */
  maxAlone: number;
  /**
   * How many batches and lone units of this process may work on one account at once (MongoDB: 1,
   * a FIFO per account; PostgreSQL: 2, a batch and one unit queued behind it for the row lock).
   */
  perAccount: number;
  /**
   * Units of one account a batch may take (default 1: distinct accounts). Above 1 the store runs
   * them one after another in the batch's transaction (PostgreSQL's chains).
   */
  perBatch?: number;
  /** Whether `unit` runs alone (`busy`: the batches and lone units now on its account). */
  alone(unit: U, busy: number): boolean;
  /** Runs a batch; settles when the accounts are free again. */
  runBatch(units: U[]): Promise<void>;
  /** Runs one unit alone; settles when its account is free again. */
  runAlone(unit: U): Promise<void>;
}

/** The most queued units one pass looks at (a queue of one hot account must not cost O(n²)). */
const SCAN_LIMIT = 4096;

/**
 * The queue of units of work waiting for a batch, and the dispatcher that forms batches from it at
 * the end of each turn of the event loop: oldest first, distinct accounts this process is not
 * working on, up to `maxUnits`, while fewer than `concurrency` batches run. A unit that must run
 * alone (`options.alone`: after a failed batch, so that a culprit fails only itself; or waiting for
 * a lock another process holds) runs at once outside the batch slots, up to `maxAlone`.
 */
export class GroupCommit<U extends QueuedUnit> {
  private readonly queue: U[] = [];
  /** Batches and lone units of this process per account. */
  private readonly busy = new Map<string, number>();
  private batches = 0;
  private lone = 0;
  private readonly schedule = oncePerTurn(() => this.pump());

  constructor(private readonly o: GroupCommitOptions<U>) {}

  /** Queues a unit (`front`: units to run again, oldest of their accounts, go first, in order). */
  push(front: boolean, ...units: U[]): void {
    if (front) this.queue.unshift(...units);
    else this.queue.push(...units);
    this.schedule();
  }

  private pump(): void {
    const o = this.o;
    const scanLimit = Math.min(this.queue.length, SCAN_LIMIT);
    for (let i = 0, seen = 0; i < this.queue.length && seen < scanLimit; seen++) {
      const u = this.queue[i] as U;
      const busy = this.busy.get(u.userId) ?? 0;
      if (busy >= o.perAccount) {
        i++;
        continue;
      }
      if (o.alone(u, busy)) {
        if (this.lone >= o.maxAlone) {
          i++;
          continue;
        }
        this.queue.splice(i, 1);
        this.hold(u.userId, 1);
        this.lone++;
        void o.runAlone(u).finally(() => {
          this.lone--;
          this.release([u]);
        });
        continue;
      }
      if (busy > 0 || this.batches >= o.concurrency) {
        i++;
        continue;
      }
      this.queue.splice(i, 1);
      const batch = [u];
      this.hold(u.userId, 1);
      if (!u.solo) {
        const perBatch = o.perBatch ?? 1;
        const taken = new Map<string, number>([[u.userId, 1]]);
        for (let j = i; j < this.queue.length && batch.length < o.maxUnits && seen < scanLimit; seen++) {
          const v = this.queue[j] as U;
          const n = taken.get(v.userId);
          if (v.solo || (n === undefined ? this.busy.has(v.userId) : n >= perBatch) || o.alone(v, 0)) {
            j++;
            continue;
          }
          this.queue.splice(j, 1);
          batch.push(v);
          taken.set(v.userId, (n ?? 0) + 1);
          if (n === undefined) this.hold(v.userId, 1);
        }
      }
      const accounts = batch.filter((v, k) => batch.findIndex((w) => w.userId === v.userId) === k);
      this.batches++;
      void o.runBatch(batch).finally(() => {
        this.batches--;
        this.release(accounts);
      });
    }
  }

  private hold(userId: string, delta: 1 | -1): void {
    const n = (this.busy.get(userId) ?? 0) + delta;
    if (n > 0) this.busy.set(userId, n);
    else this.busy.delete(userId);
  }

  private release(units: readonly U[]): void {
    for (const u of units) this.hold(u.userId, -1);
    if (this.queue.length > 0) this.schedule();
  }
}
