import type { ClientSession } from "mongodb";
import { ConflictError } from "../../core/errors.js";
import { hasLabel } from "./errors.js";
import { outcomeUnknown } from "../../core/db/store/errors.js";
import type { AccountState } from "./state-cache.js";
import type { QueuedUnit } from "../store/group-commit.js";
import {
  StaleAccount,
  TRANSACTION_OPTIONS,
  UnitTx,
  readStates,
  saveChanges,
  staleOf,
  type UnitContext,
  type UnitHost,
} from "./unit.js";

/** A unit of work waiting to run; `attempts` counts the failed batches it took part in. */
export type Unit = QueuedUnit & {
  /**
   * Out of optimistic attempts: it runs alone, its transaction writing its account first, until
   * this time (`performance.now()`, ms; see `MongoDbManager.runBatch`).
   */
  lockedUntil?: number;
  /** Its last (locked) run wrote its account first: whatever failed it then, it lost no race. */
  held?: boolean;
  /** How long to wait before its next run alone, in ms (backoff after a lost race). */
  delay?: number;
};

/** A unit of work's `DbTransaction` in a batch, with the caller waiting for it. */
class BatchTx extends UnitTx {
  constructor(
    host: UnitHost,
    readonly unit: Unit,
    cached: AccountState | undefined,
  ) {
    super(host, unit.userId, cached);
  }
}

/** The shared transaction failed: nothing of it commits, and its units run again alone. */
class BatchFailed extends Error {
  constructor(readonly reason: unknown) {
    super("the shared transaction failed");
  }
}

/**
 * What a batch leaves to its manager: the units to run again — alone, or (`batch: true`, after a
 * guard miss on a cached state) in a batch again, on fresh reads.
 */
export interface BatchResult {
  retry: Array<{ unit: Unit; reason: unknown; batch?: boolean }>;
}

/** Times a commit whose outcome is unknown is retried (as `withTransaction` does) before giving up. */
const COMMIT_RETRIES = 3;

/**
 * One MongoDB transaction serving one or more units of work on different accounts (group commit):
 * its own, or the application's (`joined`, for `joinTransaction`: no commit, and whatever fails
 * is the caller's to report).
 *
 * Every unit's `fn` starts at once with its own `DbTransaction`. A unit whose account is in the
 * state cache loads without a read; the others wait until every unit has asked for its state (or
 * finished), and one aggregate reads all their states in the transaction. `save()` only queues.
 * When every unit has finished, the batch writes all queued changes — one command per collection:
 * the guarded account updates (every guard must match, else the whole batch aborts), grants, holds,
 * journal entries — and commits once. A unit resolves only after that commit.
 *
 * A unit that throws writes nothing and gets its own error (after a refusal decided on a cached
 * state is confirmed current: one read of `_rev` for all such units). If the shared transaction
 * fails (a write conflict, a duplicate key, any driver error), nothing of it is committed and
 * every unit runs again, alone, so a culprit fails only itself. A guard miss (a cached state that
 * another process made stale) fails no unit: the batch's units run again together, on fresh reads.
 * A commit whose outcome stays unknown is never rerun: its units get an `OutcomeUnknownError`. A unit out
 * of optimistic attempts (`lockedUntil`) runs alone and writes its account's `_rev` before
 * anything else: from then on no other transaction can write the account before this one ends.
 */
export class MongoBatch implements UnitHost {
  readonly txs: BatchTx[];
  private session: ClientSession | null;
  private inTransaction: boolean;
  /** The transaction is the batch's own (to commit, or abort, and end), not the application's. */
  private readonly own: boolean;
  /** The first failure of the shared transaction: nothing of it will commit. */
  failure: unknown = undefined;
  /** Serialises the session's commands (a transaction's first command must go first). */
  private chain: Promise<unknown> = Promise.resolve();
  /** Units computing (not waiting for the batch's read, not finished). */
  private running: number;
  private pendingLoads: UnitTx[] = [];
  /** Set once the commit was sent: from then on a failure may hide a commit. */
  private committing = false;

  constructor(
    readonly ctx: UnitContext,
    units: readonly Unit[],
    /** Start units from the state cache (false: every unit reads its state in the transaction). */
    cached = true,
    /** The application's session, with its transaction started (`joinTransaction`). */
    joined?: ClientSession,
  ) {
    this.txs = units.map(
      (u) => new BatchTx(this, u, cached && u.lockedUntil === undefined ? ctx.states?.get(u.userId) : undefined),
    );
    this.running = this.txs.length;
    this.session = joined ?? null;
    this.inTransaction = joined !== undefined;
    this.own = joined === undefined;
  }

  async run(): Promise<BatchResult> {
    try {
      return await this.runUnits();
    } finally {
      if (this.session !== null && this.own) {
        // Cleanup only: the batch's own result or error is what `run` answers. The server aborts an
        // abandoned transaction...
        if (this.inTransaction) await this.session.abortTransaction().catch(() => undefined);
        // ...and times out a session that fails to end.
        await this.session.endSession().catch(() => undefined);
      }
    }
  }

  private async runUnits(): Promise<BatchResult> {
    // A locked unit's write of its account first: if that fails, no unit runs (the batch failed).
    for (const tx of this.txs) if (tx.unit.lockedUntil !== undefined) await this.hold(tx);
    const outcomes =
      this.failure !== undefined
        ? []
        : await Promise.allSettled(
            this.txs.map(async (tx) => {
              try {
                return await tx.unit.fn(tx);
              } finally {
                this.park();
              }
            }),
          );
    const retry: BatchResult["retry"] = [];
    const states = this.ctx.states;
    const again = (tx: BatchTx, reason: unknown) => {
      states?.delete(tx.userId);
      retry.push({ unit: tx.unit, reason });
    };
    if (this.failure !== undefined) {
      for (const tx of this.txs) again(tx, this.failure);
      return { retry };
    }
    const savers = this.txs.filter((tx, i) => outcomes[i]?.status === "fulfilled" && tx.pending !== null);
    // Decided on a cached state without writing (an answer, a refusal, or any error the unit threw,
    // such as a recount that only a stale seq asked for): final only once `_rev` shows the state
    // current.
    const unconfirmed = this.txs.filter((tx) => tx.fromCache && tx.pending === null);
    const stale = new Set<BatchTx>();
    try {
      if (unconfirmed.length > 0) for (const tx of await this.staleOf(unconfirmed, savers.length > 0)) stale.add(tx);
      if (savers.length > 0) await this.save(savers);
    } catch (error) {
      const reason = error instanceof BatchFailed ? error.reason : error;
      if (reason instanceof StaleAccount) {
        // Some account moved since its state was cached (another process wrote it). Nothing
        // committed; every unit runs again in a batch, its cached state dropped: the next batch
        // reads them all (one read) inside its transaction, where a state cannot be stale.
        for (const tx of this.txs) again(tx, reason);
        for (const r of retry) r.batch = true;
        return { retry };
      }
      if (!this.committing || hasLabel(reason, "TransientTransactionError")) {
        // Nothing committed: everyone runs again (savers and refusals alike), alone.
        for (const tx of this.txs) again(tx, reason);
        return { retry };
      }
      // The commit's outcome is unknown: its savers must not run again (they might have
      // committed); they get `OutcomeUnknownError`, which the unit-of-work runner resolves where
      // it can (docs/concepts.md, "Certain and uncertain errors").
      for (const tx of this.txs) {
        if (savers.includes(tx)) {
          states?.delete(tx.userId);
          tx.unit.reject(outcomeUnknown("mongodb", reason));
        } else again(tx, reason);
      }
      return { retry };
    }
    this.txs.forEach((tx, i) => {
      const outcome = outcomes[i] as PromiseSettledResult<unknown>;
      if (stale.has(tx)) {
        // Decided on a stale cached state: run again (in a batch, on a fresh read).
        again(tx, new ConflictError(`account ${tx.userId} changed since its state was cached`));
        (retry[retry.length - 1] as BatchResult["retry"][number]).batch = true;
        return;
      }
      if (outcome.status === "rejected") {
        states?.delete(tx.userId);
        tx.unit.reject(outcome.reason);
        return;
      }
      // What the cache holds now: only a state this unit of work loaded (and what it changed).
      try {
        const after = tx.stateAfter();
        if (after !== undefined) states?.set(tx.userId, after);
        else states?.delete(tx.userId);
      } catch {
        states?.delete(tx.userId); // the next unit of work reads instead
      }
      tx.unit.resolve(outcome.value);
    });
    return { retry };
  }

  /**
   * The units whose cached state is not the account's current one: in the transaction when the
   * batch writes too (its snapshot), else on its own.
   */
  private async staleOf(txs: readonly BatchTx[], inTransaction: boolean): Promise<BatchTx[]> {
    const accounts = this.ctx.c.accounts;
    if (inTransaction || this.inTransaction) return this.op((s) => staleOf(accounts, txs, s));
    try {
      return await staleOf(accounts, txs, undefined);
    } catch (error) {
      throw this.fail(error);
    }
  }

  /**
   * A locked unit's first write: its account's `_rev` (no account yet: nothing to hold, and a
   * racing first insert is a duplicate key as ever). Its `load` then reads the `_rev` written,
   * which the save's guard finds. A failure is recorded (`failure`), not thrown.
   */
  private async hold(tx: BatchTx): Promise<void> {
    const { accounts } = this.ctx.c;
    try {
      const res = await this.op((session) =>
        accounts.updateOne({ _id: tx.userId }, { $inc: { _rev: 1 } }, { session }),
      );
      tx.unit.held = res.matchedCount === 1;
    } catch {
      // `op` recorded the failure: the batch's units run again (or give up) without running here.
    }
  }

  /** Writes every queued change (one command per collection) and commits (its own transaction). */
  private async save(savers: readonly BatchTx[]): Promise<void> {
    try {
      await saveChanges(this.ctx, (run) => this.op(run), savers);
    } catch (error) {
      throw this.fail(error);
    }
    if (this.own) await this.commit();
  }

  private async commit(): Promise<void> {
    const session = this.session as ClientSession;
    this.committing = true;
    for (let i = 0; ; i++) {
      try {
        await session.commitTransaction();
        this.inTransaction = false;
        return;
      } catch (error) {
        if (
          hasLabel(error, "UnknownTransactionCommitResult") &&
          !hasLabel(error, "TransientTransactionError") &&
          i < COMMIT_RETRIES
        )
          continue;
        this.inTransaction = false; // a commit was attempted: nothing to abort any more
        throw this.fail(error);
      }
    }
  }

  /**
   * Runs one command of the shared transaction (starting it on the first), after the commands
   * before it. A driver error fails the batch; every later command fails at once.
   */
  op<T>(run: (session: ClientSession) => Promise<T>): Promise<T> {
    const next = this.chain.then(async () => {
      if (this.failure !== undefined) throw new BatchFailed(this.failure);
      if (this.session === null) this.session = this.ctx.client.startSession();
      if (!this.inTransaction) {
        this.session.startTransaction(TRANSACTION_OPTIONS);
        this.inTransaction = true;
      }
      try {
        return await run(this.session);
      } catch (error) {
        throw this.fail(error);
      }
    });
    // The chain only orders the next step after this one; `next`, returned, carries the error to its caller.
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Records the first failure of the shared transaction. */
  private fail(error: unknown): BatchFailed {
    if (error instanceof BatchFailed) return error;
    if (this.failure === undefined) this.failure = error;
    return new BatchFailed(error);
  }

  /** A unit waits for the batch's read. */
  waitForLoad(tx: UnitTx): void {
    this.pendingLoads.push(tx);
    this.park();
  }

  /** A unit stopped computing (waits for the read, or finished): once none computes, read. */
  private park(): void {
    this.running--;
    if (this.running > 0 || this.pendingLoads.length === 0) return;
    const loaders = this.pendingLoads;
    this.pendingLoads = [];
    this.running += loaders.length;
    void this.op((session) =>
      readStates(
        this.ctx.c,
        session,
        loaders.map((tx) => ({ userId: tx.userId, key: tx.loadKey })),
      ),
    ).then(
      (found) => {
        for (const tx of loaders) tx.receive(found.get(tx.userId));
      },
      (error: unknown) => {
        for (const tx of loaders) tx.loaded.reject(error);
      },
    );
  }
}
