/**
 * A FIFO lock per account, inside one process. Units of work on one account from this process run
 * one after another instead of racing each other through the database: a race between them would
 * only end in write conflicts and retries. Across processes the transaction and its seq guard
 * decide; this lock only keeps one process from competing with itself.
 */
export class AccountLocks {
  /** userId → callers waiting (present while someone holds the account). */
  private readonly queues = new Map<string, Array<() => void>>();

  /** Resolves when the caller holds `key`; no promise is made to wait on when nobody holds it. */
  acquire(key: string): Promise<void> | undefined {
    const queue = this.queues.get(key);
    if (queue === undefined) {
      this.queues.set(key, []);
      return undefined;
    }
    return new Promise<void>((resolve) => queue.push(resolve));
  }

  /** Hands `key` to the next waiter, in arrival order. */
  release(key: string): void {
    const queue = this.queues.get(key);
    const next = queue?.shift();
    if (next !== undefined) next();
    else this.queues.delete(key);
  }
}
