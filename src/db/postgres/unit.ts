import type { QueuedUnit } from "../store/group-commit.js";

/** A unit of work waiting to run. */
export interface Unit extends QueuedUnit {
  /** Waits for its account's lock (another process held it when a batch tried). */
  wait: boolean;
  /** Loads under the lock, not from the state cache (a batch that started from it failed). */
  fresh?: boolean;
  /** Out of attempts: its last one runs alone, waiting for its account's row lock (`wait`). */
  last?: boolean;
}

/** Why a unit must run again; `reason` is the driver error or the failed guard. */
export class Retry extends Error {
  constructor(readonly reason: unknown) {
    super("retry");
  }
}

/**
 * A later unit of a chain that did not run (its first unit did not load, or the shared
 * transaction failed), or that left the chain (`alone`: it needs a transaction of its own). It
 * wrote nothing; it runs again, and no attempt is counted.
 */
export class NotRun extends Error {
  constructor(readonly alone: boolean) {
    super("the unit of work runs again in another transaction");
  }
}

/** Thrown by `load()` in a batch whose lock skipped the account: another transaction holds it. */
export class Skipped extends Error {
  constructor() {
    super("account locked by another transaction");
  }
}

/**
 * What a batch leaves to the dispatcher: the units to run again (`skipped`: their account was
 * busy, which is no failure of theirs), and whether the connection is bad.
 */
export interface BatchResult {
  /** `lost`: the connection was lost before anything was written (a failure, not a conflict, if it lasts). */
  retry: Array<{
    unit: Unit;
    reason: unknown;
    skipped?: boolean;
    lost?: boolean;
    notRun?: boolean;
    alone?: boolean;
    fresh?: boolean;
  }>;
  /** Why the connection is bad (the driver error, or true), when it is: undefined while it is usable. */
  brokenBy: unknown;
}
