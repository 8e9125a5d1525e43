import type { DbTransaction } from "./types.js";

/**
 * What the database adapters' group-commit dispatchers (MongoDB, PostgreSQL) share: a deferred
 * promise, the queued unit of work, and the once-per-turn scheduling of batch formation.
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
