import { deferred, oncePerTurn } from "../store/group-commit.js";
import { type Sqlite, isBusy } from "./connection.js";

// Group commit on the SQLite store (docs/storage.md, SQLite, "Group commit"): the writes of units
// of work that reach their commit in the same turn of the event loop share one write transaction
// and its one fsync, each in a savepoint of its own.

/** A unit of work's write waiting for its batch (`SqliteBatches.commit`). */
interface QueuedWrite {
  /** Writes the unit's changes, guarded on its account as loaded (a savepoint inside the batch's transaction). */
  write: () => void;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * The writes of units of work on the store's connection, batched. A unit reads its account as
 * without batching and computes; its commit queues its write, and at the end of the turn the
 * queued writes run in one `BEGIN IMMEDIATE … COMMIT`, each in a savepoint: a write that fails
 * (its account's guard, a unique key, any other refusal) is rolled back alone and its unit gets
 * that error; the others commit together, and each caller's promise resolves only after that
 * COMMIT. Units of one account never meet in a batch: `defineStore` runs them one after another
 * in this process. If the shared transaction itself fails, nothing of it is committed and each
 * write runs again alone, so a culprit fails only itself. A write with no other unit of work in
 * flight on the connection commits at once, without waiting for the end of the turn.
 */
export class SqliteBatches {
  private readonly queue: QueuedWrite[] = [];
  /** A batch is being written (it may be waiting for another process's write lock). */
  private running = false;
  private readonly schedule = oncePerTurn(() => void this.flush());
  /** Attempts of this store begun and not yet committed or rolled back (`SqliteAttempt`). */
  open = 0;

  constructor(
    private readonly s: Sqlite,
    /** Writes per transaction at most. */
    private readonly maxUnits: number,
  ) {}

  /**
   * Writes `write` in the next batch; settles once that batch committed (or with the write's own
   * error). Synchronous, as without batching, when nothing else is in flight.
   */
  commit(write: () => void): void | Promise<void> {
    if (this.open === 0 && this.queue.length === 0 && !this.running) return this.alone(write);
    const d = deferred<void>();
    this.queue.push({ write, resolve: d.resolve, reject: d.reject });
    this.schedule();
    return d.promise;
  }

  /** One write in a transaction of its own, run again while another connection holds the lock. */
  private alone(write: () => void): void | Promise<void> {
    return this.s.patiently(write);
  }

  private async flush(): Promise<void> {
    if (this.running || this.queue.length === 0) return;
    this.running = true;
    try {
      await this.run(this.queue.splice(0, this.maxUnits));
    } finally {
      this.running = false;
      if (this.queue.length > 0) this.schedule();
    }
  }

  private async run(batch: readonly QueuedWrite[]): Promise<void> {
    const failed = new Map<QueuedWrite, unknown>();
    try {
      await this.s.patiently(() => {
        failed.clear(); // a try that found the file locked wrote nothing
        this.s.tx(() => {
          for (const w of batch) {
            try {
              w.write();
            } catch (error) {
              // Busy, or the transaction itself ended (SQLite rolls it back on some I/O errors):
              // the batch as a whole failed.
              if (isBusy(error) || !this.s.inTransaction) throw error;
              failed.set(w, error); // its savepoint is rolled back; the others go on
            }
          }
        }, true);
      });
    } catch (error) {
      if (isBusy(error)) {
        // The write lock stayed taken for busyTimeoutMs: each unit hears it (a conflict, run again).
        for (const w of batch) w.reject(error);
        return;
      }
      // Nothing of the batch is committed: each write again, alone.
      for (const w of batch) {
        try {
          await this.alone(w.write);
          w.resolve();
        } catch (own) {
          w.reject(own);
        }
      }
      return;
    }
    for (const w of batch) {
      if (failed.has(w)) w.reject(failed.get(w));
      else w.resolve();
    }
  }
}
