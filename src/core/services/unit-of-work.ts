import type { Logger } from "../logger.js";
import type { CacheAside } from "../cache/aside.js";
import type { Changes, DbManager, DbTransaction, LoadedState } from "../db/types.js";
import type { ModuleRowLists, ModuleRows } from "../domain/state.js";
import { hasModuleRows, mergeModuleRows } from "../db/module-part.js";
import { backoff, sleep, type BackoffOptions } from "../db/store/retry.js";
import { AccountWork, type EntryMeta } from "../domain/account-work.js";
import type { UnitWork } from "../domain/unit-work.js";
import type { JournalKey } from "../domain/journal-keys.js";
import { newNotification } from "../domain/notifications.js";
import { RECOUNTS, type SpendRecount } from "./alert-reads.js";
import type { OutboxRecording } from "./outbox-recording.js";
import { grantTrial } from "../domain/trial.js";
import type { FeatureRule } from "../domain/checks.js";
import {
  ConflictError,
  CreditError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  NotFoundError,
  OutcomeUnknownError,
  ReservationExpiredError,
  ReservationNotActiveError,
  StorageError,
} from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import type { TrialCredits } from "../models/index.js";
import type { Account, Grant, JournalEntry, Notification, Reservation } from "../models/index.js";
import {
  holdChannel,
  refusalChannel,
  traced,
  tracePromise,
  unitOfWorkChannel,
  type HoldMessage,
  type RefusalMessage,
  type UnitOfWorkMessage,
} from "../diagnostics.js";
import { newId } from "../util/uuid.js";
import { runUnitHook, type RegisteredHook } from "./hook-guard.js";
import type * as z from "zod/mini";

/*
 * The unit-of-work runner behind `CreditService` (and, through `CreditCore.runUnitOfWork`, the other services):
 * one run of load, idempotent replay, settlement, the body, notifications and one save, with the
 * subscription period and refusal hooks around it and the side effects (ledger file, cache,
 * diagnostics) after the commit. The rules of each operation stay with the service that calls it.
 */

type ParsedTrial = z.output<typeof TrialCredits>;

/**
 * What a unit of work's body gets besides the work and the transaction: the state it was loaded
 * from, and `attach` for the rows a module saves in the same transaction (docs/modules.md, "Writing
 * a module").
 * @beta
 */
export interface UnitContext {
  /** The account's state as the unit of work loaded it. */
  readonly state: LoadedState;
  /**
   * Saves `rows` with the unit of work, atomically with the account's changes: each list under the
   * module's own name (its store part reads it on the `Changes` its `save` gets). A later list of
   * one name replaces an earlier one. `Rows` is the module's own row type, say
   * `{ referrals?: Referral[] }`.
   */
  attach(rows: ModuleRows): void;
}

/** Options of one unit of work: settle what time has done; bring a due subscription period first. */
export interface RunOptions {
  settle: boolean;
  /** Default true; false for the units other services run (the subscription periods' own above all). */
  periods?: boolean;
  /**
   * Evaluate the account's alerts even when the unit changes nothing else (`evaluateAlerts`, the
   * worker's alert rounds): what time alone moved is recorded, the account saved only when its
   * alert state moved. Default false: a unit that changes nothing writes nothing.
   */
  evaluate?: boolean;
}

/**
 * What an attempt answers when its settlement expired a subscription period's grants: the unit of
 * work ends with nothing written, the period is brought
 * up to date, and the operation runs again (once).
 */
const PERIOD_DUE = "period due";

interface UnitOutcome<T> {
  value: T;
  entries: readonly JournalEntry[];
  canonicals?: readonly string[];
  /** The holds placed and ended, only while someone listens on the hold channel (docs/observability.md). */
  holds?: { placed: readonly Reservation[]; ended: readonly Reservation[]; reservedAfter: number };
}

/** What a unit of work's body may use besides the account: the loaded state, extra rows to save. */
class Unit implements UnitContext {
  extra: ModuleRows | undefined = undefined;
  constructor(readonly state: LoadedState) {}
  attach(rows: ModuleRows): void {
    const merged: Record<string, ModuleRowLists | undefined> = { ...this.extra };
    for (const [module, lists] of Object.entries(rows)) merged[module] = { ...merged[module], ...lists };
    this.extra = merged;
  }
}

/**
 * One unit of work, as the store's transaction runs it (once, or again after a conflict): load,
 * answer a repeated idempotency key with the first result, settle what time has done, run the body,
 * save.
 */
class UnitRun<T> {
  /** A refusal for lack of credits in the last attempt, with the account's seq then. */
  refused: { seq: number; error: InsufficientCreditsError } | undefined;
  /** What the last attempt handed to `save()`: the outcome it answers once the commit is known. */
  saved: UnitOutcome<T> | undefined;
  /**
   * A recount of `period_spend` windows made beside the unit of work (src/core/services/alert-reads.ts),
   * and whether an attempt counts what it lacks itself (the last try).
   */
  counted: SpendRecount | undefined;
  inline = false;

  constructor(
    private readonly runner: UnitRunner,
    private readonly userId: string,
    private readonly meta: EntryMeta,
    private readonly body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
    private readonly replay: ((entry: JournalEntry, tx: DbTransaction) => Promise<T>) | undefined,
    private readonly settle: boolean,
    /** End the attempt with nothing written when settlement ends a subscription period (`PERIOD_DUE`). */
    private readonly periods: boolean,
    /** Evaluate the alerts of an account the unit leaves unchanged (`RunOptions.evaluate`). */
    private readonly evaluate: boolean,
    /** The diagnostics message, while someone listens (docs/observability.md): counts attempts. */
    private readonly message: UnitOfWorkMessage | undefined,
  ) {}

  async attempt(tx: DbTransaction): Promise<UnitOutcome<T> | typeof PERIOD_DUE> {
    this.refused = undefined;
    this.saved = undefined;
    if (this.message !== undefined) {
      this.message.attempts++;
      this.message.outcome = "ok";
    }
    const key = this.meta.idempotencyKey;
    const state = await tx.load(key === undefined ? undefined : { idempotencyKey: key });
    if (key !== undefined && state.idempotent !== null) {
      const first = state.idempotent;
      if (first.idempotencyKey !== key) {
        // The store compared the key as it arrived, which is not always the key asked for (node-pg
        // and BSON turn a lone UTF-16 surrogate into U+FFFD, so keys JavaScript tells apart can
        // arrive as one). Another key's entry must never be answered as a replay of this operation.
        throw new StorageError(
          `[credit-management] the idempotency key ${JSON.stringify(key)} of account ${this.userId} found the entry of key ${JSON.stringify(first.idempotencyKey)}: the store cannot tell them apart`,
        );
      }
      if (first.fingerprint !== this.meta.fingerprint) throw new IdempotencyConflictError(key);
      if (this.message !== undefined) this.message.outcome = "replayed";
      const value = this.replay === undefined ? (first as T) : await this.replay(first, tx);
      return { value, entries: [] };
    }
    const work = new AccountWork(this.userId, state, this.runner.config.clock(), newId);
    work.chainKey = this.runner.config.journalKey;
    work.unitOverdraftLimits = this.runner.config.unitOverdraftLimits;
    if (this.runner.config.trial !== undefined && state.account === null) grantTrial(work, this.runner.config.trial);
    if (this.settle && work.needsSettle) {
      await includeHeldGrants(work, tx, state.reservations);
      const settled = work.settle();
      if (this.periods && settled.periodGrantsEnded > 0) return PERIOD_DUE;
    }
    const unit = new Unit(state);
    let result: T;
    try {
      result = await this.body(work, tx, unit);
    } catch (error) {
      if (error instanceof InsufficientCreditsError && this.runner.config.outbox !== undefined)
        this.refused = { seq: work.account.seq, error };
      throw error;
    }
    const every = this.runner.config.checkpointEvery;
    if (every !== undefined && checkpointDue(work, every)) {
      // Every N entries, a checkpoint in the same unit of work (docs/operations.md, "Checkpoints and archival").
      const missing = work.missingHeldGrants();
      if (missing.length > 0) work.include(await tx.getGrants(missing));
      work.checkpoint();
    }
    return this.save(tx, work, unit, result);
  }

  private async save(tx: DbTransaction, work: AccountWork, unit: Unit, result: T): Promise<UnitOutcome<T>> {
    const outcome: UnitOutcome<T> = { value: result, entries: work.entries, canonicals: work.canonicals };
    const extra = unit.extra;
    const hasExtra = hasModuleRows(extra);
    if (!work.changed && !hasExtra) return this.evaluateOnly(tx, work, outcome);
    const changes: Changes = work.changes();
    if (extra !== undefined && hasExtra) changes.rows = extra;
    if (this.runner.config.outbox !== undefined)
      await this.runner.addNotifications(this.runner.config.outbox, work, changes, {
        counted: this.counted,
        inline: this.inline,
      });
    // What the modules decide in the same unit of work (the billing module: an auto top-up).
    const attach = (rows: ModuleRows): void => {
      changes.rows = mergeModuleRows([changes.rows, rows]);
    };
    for (const hook of this.runner.config.unitHooks) {
      // Each within what its module may change (src/core/services/hook-guard.ts).
      const rows = runUnitHook(
        hook,
        { loaded: work.loaded, now: work.now, changes, attach },
        this.runner.config.logger,
      );
      if (rows.length > 0) changes.notifications = [...(changes.notifications ?? []), ...rows];
    }
    if (
      holdChannel.hasSubscribers &&
      (changes.insertReservations.length > 0 || changes.updateReservations.length > 0)
    ) {
      outcome.holds = {
        placed: changes.insertReservations,
        ended: changes.updateReservations,
        reservedAfter: changes.account.reserved,
      };
    }
    this.saved = outcome;
    await tx.save(changes);
    return outcome;
  }

  /**
   * A unit that changed nothing: with `evaluate` (and notifications recorded), the account's alerts
   * are evaluated as every change evaluates them, and the account saved alone when its alert state
   * moved. An account never changed is left alone (its thresholds wait for its first change).
   */
  private async evaluateOnly(tx: DbTransaction, work: AccountWork, outcome: UnitOutcome<T>): Promise<UnitOutcome<T>> {
    const outbox = this.runner.config.outbox;
    if (!this.evaluate || outbox === undefined || work.account.seq === 0) return outcome;
    const changes = work.changes();
    if (!(await this.runner.addNotifications(outbox, work, changes, { counted: this.counted, inline: this.inline })))
      return outcome;
    this.saved = outcome;
    await tx.save(changes);
    return outcome;
  }
}

/** True when the work's entries took the account's seq past a multiple of `every` (and the last is no checkpoint). */
function checkpointDue(work: AccountWork, every: number): boolean {
  const made = work.entries;
  if (made.length === 0 || (made[made.length - 1] as JournalEntry).type === "checkpoint") return false;
  const before = work.loaded === null ? 0 : work.loaded.seq;
  return Math.floor(before / every) < Math.floor(work.account.seq / every);
}

/** The cache key of an account's credit info. */
export const infoKey = (userId: string) => `credits:info:${userId}`;

/** What a `UnitRunner` is built with (by `CoreCreditService`, from its validated options). @internal */
export interface UnitRunnerOptions {
  db: DbManager;
  ledger: LedgerLogger | undefined;
  cache: CacheAside | undefined;
  clock: () => Date;
  logger: Logger | undefined;
  /**
   * What units of work record in the outbox: the alerts with their thresholds, the domain events
   * (src/core/services/outbox-recording.ts, given by the notifications part); undefined: no outbox rows.
   */
  outbox: OutboxRecording | undefined;
  trial: ParsedTrial | undefined;
  features: Readonly<Record<string, FeatureRule>>;
  /** Write a checkpoint entry each time an account's seq passes a multiple of this (`checkpointEvery`). */
  checkpointEvery: number | undefined;
  /**
   * Brings the user's due subscription period (src/core/services/subscription-periods.ts) and resolves
   * to whether one was due (undefined: periods are left to the renewal job): units of work that find a period's grants expired call it, then run
   * again; so do operations refused for lack of credits, when it brought a period.
   */
  periods: ((userId: string) => Promise<boolean>) | undefined;
  /**
   * How long a unit of work whose commit was sent but not answered asks the store whether it was
   * applied, in ms (`outcomeWaitMs`, docs/concepts.md, "Certain and uncertain errors").
   */
  outcomeWaitMs: number;
  /** What modules decide in every unit of work that writes (`unitHooks`), each with its module. */
  unitHooks: readonly RegisteredHook[];
  /** The key new entries are signed with (`journalKeys`); undefined: plain SHA-256. */
  journalKey?: JournalKey | undefined;
  /** The overdraft limit of each unit but the default one (`overdraftLimits`, docs/units.md); null: unlimited. */
  unitOverdraftLimits?: Readonly<Record<string, number | null>> | undefined;
}

/**
 * A module's decision in every unit of work that writes (`unitHook` of a `CreditModule`,
 * docs/modules.md): given the account as loaded, the time and the changes about to be saved (the
 * modules' rows included), the outbox rows it adds, saved with them. It may set its module's own
 * column on `changes.account` (`AccountColumn.set`, validated with the column's schema) and `attach`
 * its module's rows, and nothing else: a hook that changes the core's fields (the account's balance,
 * its grants, holds, entries) or another module's column is a `ModuleError`, and nothing is saved
 * (docs/modules.md, "What a module may change"). The unit of work runs again from its load after a
 * conflict. The billing module asks for an
 * auto top-up so.
 * @beta
 */
export type UnitHook = (unit: {
  /** The account as loaded; null for a new account. */
  loaded: Account | null;
  /** The unit of work's time. */
  now: Date;
  /** What the unit of work saves. */
  changes: Changes;
  /** Saves the module's rows with the unit of work (as `UnitContext.attach`). */
  attach(rows: ModuleRows): void;
}) => readonly Notification[];

/**
 * Runs the units of work of a `CreditService`: `mutate` is the only way its operations
 * change an account. @internal
 */
export class UnitRunner {
  constructor(readonly config: UnitRunnerOptions) {}

  /**
   * One unit of work: load, answer a repeated idempotency key with the first result, settle what
   * time has done, run `body`, save; then (only after the commit) mirror to the ledger file and
   * invalidate the cache.
   */
  mutate<T>(
    operation: string,
    userId: string,
    meta: EntryMeta,
    body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
    replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
    options: RunOptions = { settle: true },
  ): Promise<T> {
    // Nobody listening: five property reads, no message (docs/observability.md).
    if (!traced(unitOfWorkChannel)) return this.run(operation, userId, meta, body, replay, options, undefined);
    const message: UnitOfWorkMessage = {
      operation,
      userId,
      store: this.config.db.name,
      outcome: "ok",
      durationMs: 0,
      attempts: 0,
      conflicts: 0,
      entries: 0,
      errorCode: null,
    };
    const started = performance.now();
    return tracePromise(
      unitOfWorkChannel,
      message,
      () => this.run(operation, userId, meta, body, replay, options, message),
      (m, _value, error) => {
        m.durationMs = performance.now() - started;
        m.conflicts = Math.max(m.attempts - 1, 0);
        if (error !== undefined) {
          m.outcome = unitFailure(error);
          m.errorCode = error instanceof CreditError ? error.code : null;
        }
      },
    );
  }

  /** `mutate` itself; `message` counts the attempts and entries while someone listens. */
  private async run<T>(
    operation: string,
    userId: string,
    meta: EntryMeta,
    body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
    replay: ((entry: JournalEntry, tx: DbTransaction) => Promise<T>) | undefined,
    options: RunOptions,
    message: UnitOfWorkMessage | undefined,
  ): Promise<T> {
    const periods = options.periods !== false && this.config.periods !== undefined;
    const evaluate = options.evaluate === true;
    const unit = new UnitRun<T>(this, userId, meta, body, replay, options.settle, periods, evaluate, message);
    const again = () =>
      this.run(operation, userId, meta, body, replay, { settle: options.settle, periods: false, evaluate }, message);
    let outcome: UnitOutcome<T> | typeof PERIOD_DUE;
    try {
      outcome = await this.recounting(userId, unit);
    } catch (error) {
      if (error instanceof OutcomeUnknownError) return this.inDoubt(operation, userId, meta, unit, error, message);
      if (periods && error instanceof InsufficientCreditsError)
        return this.afterRefusal(operation, userId, unit, error, again);
      return this.refusedOrFailed(operation, userId, unit, error);
    }
    if (outcome === PERIOD_DUE) return this.afterPeriod(userId, again);
    return this.committed(userId, outcome, message);
  }

  /**
   * The unit's transaction; when its alerts need a `period_spend` window counted (`RecountNeeded`:
   * nothing was written), counted beside it, with the account free, and the unit run again
   * (src/core/services/alert-reads.ts); its last try counts in the unit itself.
   */
  private async recounting<T>(userId: string, unit: UnitRun<T>): Promise<UnitOutcome<T> | typeof PERIOD_DUE> {
    for (let i = 0; ; i++) {
      unit.inline = i === RECOUNTS;
      try {
        return await this.config.db.transaction(userId, (tx) => unit.attempt(tx));
      } catch (error) {
        const counting = unit.inline ? undefined : this.config.outbox?.recount(this.config.db, userId, error);
        if (counting === undefined) throw error;
        unit.counted = await counting;
      }
    }
  }

  /**
   * The store was sent the unit's commit and lost the connection before it answered
   * (docs/concepts.md, "Certain and uncertain errors"). The unit knows the journal entries it
   * wrote: they are looked up once the store answers again, for up to `outcomeWaitMs`. Found: the
   * call succeeded and answers its result. Not found: the commit did not take effect, a
   * `StorageError` (nothing applied). The store never answered, or the unit wrote no entry to look
   * for: `OutcomeUnknownError`, with the entry ids and the idempotency key to learn it by.
   */
  private async inDoubt<T>(
    operation: string,
    userId: string,
    meta: EntryMeta,
    unit: UnitRun<T>,
    doubt: OutcomeUnknownError,
    message: UnitOfWorkMessage | undefined,
  ): Promise<T> {
    const saved = unit.saved;
    const first = saved?.entries[0];
    const applied = first === undefined ? undefined : await this.lookUp(userId, first);
    if (applied === true) return this.committed(userId, saved as UnitOutcome<T>, message);
    if (applied === false) {
      throw new StorageError(
        `[credit-management] ${operation} on account ${userId}: the connection to the store was lost as it committed, and the store has answered since that nothing of it was applied; it may be retried`,
        doubt,
      );
    }
    const key = meta.idempotencyKey;
    const entryIds = saved?.entries.map((e) => e.id) ?? [];
    const learn =
      key !== undefined
        ? `retry it with the same idempotency key ("${key}"): it applies once, or answers with the first result`
        : first !== undefined
          ? `look for journal entry ${first.id} in the account's history before doing it again`
          : "read the account before doing it again";
    const why =
      applied === null
        ? "and the store cannot tell whether it will still land (the account's first change, possibly still on its way)"
        : `and the store did not answer within outcomeWaitMs (${this.config.outcomeWaitMs} ms)`;
    throw new OutcomeUnknownError(
      `[credit-management] ${operation} on account ${userId}: the connection to the store was lost after the commit was sent, ${why}: the change may or may not be applied; ${learn}`,
      { userId, entryIds, ...(key === undefined ? {} : { idempotencyKey: key }) },
      doubt,
    );
  }

  /**
   * Whether `entry` is in the account's journal, once no commit that could write it is still in
   * progress: the store's own answer where it has one (`entryCommitted`; docs/concepts.md, "Certain
   * and uncertain errors", links how each store makes sure), else a read in a unit of work of the
   * account, which waits for a commit in progress only as far as that store's units wait for one
   * another (docs/writing-a-store.md, "A commit in doubt: `entryCommitted`"). Asked again with
   * backoff while the store fails (or cannot tell yet), for up to `outcomeWaitMs`; undefined if it
   * never answered; null if it answered that it never can tell.
   */
  private async lookUp(userId: string, entry: JournalEntry): Promise<boolean | null | undefined> {
    const { db, outcomeWaitMs } = this.config;
    const deadline = Date.now() + outcomeWaitMs;
    for (let attempt = 0; ; attempt++) {
      try {
        if (db.entryCommitted !== undefined) return await db.entryCommitted(userId, entry);
        return await db.transaction(userId, async (tx) => {
          await tx.load();
          if (tx.getCharge !== undefined) return (await tx.getCharge(entry.id)) !== null;
          const [found] = await db.listJournal(userId, { order: "asc", afterSeq: entry.seq - 1, limit: 1 });
          return found?.id === entry.id;
        });
      } catch (error) {
        this.config.logger?.warn(
          { err: error, userId, entryId: entry.id },
          "credit-management: could not yet learn whether a commit was applied",
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await sleep(Math.min(backoff(attempt, LOOKUP_BACKOFF), left));
    }
  }

  /**
   * A period's grants expired as the operation settled the account: the next period is brought (its
   * own keyed unit of work, the one the renewal job runs, so a job or another request at the same
   * instant allocates once), then the operation runs again. Should that fail, the operation still
   * runs, as it would have with the period left to the job.
   */
  private async afterPeriod<T>(userId: string, again: () => Promise<T>): Promise<T> {
    try {
      await this.config.periods?.(userId);
    } catch (error) {
      this.config.logger?.warn(
        { err: error, userId },
        "credit-management: could not bring the user's subscription period up to date",
      );
    }
    return again();
  }

  /**
   * A refusal for lack of credits may come from a period that has ended while none of its grants
   * was left to expire (spent, voided): nothing told the unit of work. The period is brought if one
   * is due (the same keyed work as `afterPeriod`), and then the operation runs once more; else the
   * refusal stands (a case the simulation found).
   */
  private async afterRefusal<T>(
    operation: string,
    userId: string,
    unit: UnitRun<unknown>,
    error: InsufficientCreditsError,
    again: () => Promise<T>,
  ): Promise<T> {
    let brought = false;
    try {
      brought = (await this.config.periods?.(userId)) === true;
    } catch (failure) {
      this.config.logger?.warn(
        { err: failure, userId },
        "credit-management: could not bring the user's subscription period up to date",
      );
      // The store could not say whether a period is due (or whether bringing it took effect): a
      // refusal now could be false (the new period's credits may be there). The caller gets the
      // storage error or the unknown outcome (503), to retry.
      if (
        failure instanceof StorageError ||
        failure instanceof OutcomeUnknownError ||
        !(failure instanceof CreditError)
      ) {
        throw failure;
      }
    }
    return brought ? again() : this.refusedOrFailed(operation, userId, unit, error);
  }

  /**
   * After the commit (never before): mirror to the ledger file and invalidate the cache — awaited
   * when the cache answers with a promise (a shared cache must not serve the old balance to the
   * caller's next read). The invalidation also ends the leases of reads in flight (`Cache.lease`),
   * in every process sharing the cache, so none of them caches what it read before this commit.
   */
  private async committed<T>(
    userId: string,
    outcome: UnitOutcome<T>,
    message: UnitOfWorkMessage | undefined,
  ): Promise<T> {
    if (message !== undefined) message.entries += outcome.entries.length;
    if (outcome.holds !== undefined && holdChannel.hasSubscribers) publishHolds(userId, outcome.holds);
    if (outcome.entries.length > 0) {
      this.config.ledger?.recordTransactions(outcome.entries, outcome.canonicals);
      const invalidated = this.config.cache?.invalidate(infoKey(userId));
      if (invalidated !== undefined) await invalidated;
    }
    return outcome.value;
  }

  /** With notifications on, a refusal for lack of credits is recorded once the unit of work ended. */
  private async refusedOrFailed(
    operation: string,
    userId: string,
    unit: UnitRun<unknown>,
    error: unknown,
  ): Promise<never> {
    if (error instanceof InsufficientCreditsError && refusalChannel.hasSubscribers)
      refusalChannel.publish(refusal(operation, userId, error));
    const refused = unit.refused;
    if (refused !== undefined && error === refused.error) await this.recordRefusal(userId, refused.seq, refused.error);
    throw error;
  }

  /**
   * The outbox rows of a change, by the notifications part's recording
   * (src/core/services/outbox-recording.ts). Resolves to whether it recorded a row or moved the
   * account's alert state.
   */
  addNotifications(
    outbox: OutboxRecording,
    work: AccountWork,
    changes: Changes,
    recount: { counted: SpendRecount | undefined; inline: boolean },
  ): Promise<boolean> {
    return outbox.record(this.config.db, this.config.features, work, changes, recount);
  }

  /**
   * `transaction_error` for a refusal for lack of credits: once per account state (its seq), however
   * many calls are refused before the account changes. Recorded after the refusal (nothing was
   * committed); a store failure here is logged, the caller still gets the refusal.
   */
  private async recordRefusal(userId: string, seq: number, error: InsufficientCreditsError): Promise<void> {
    const row = newNotification(
      userId,
      "transaction_error",
      { code: error.code, message: error.message, ...(error.details ?? {}), seq },
      this.config.clock(),
      `transaction_error:${error.code}:${seq}`,
    );
    try {
      await this.config.db.insertNotifications([row]);
    } catch (failure) {
      this.config.logger?.warn(
        { err: failure, userId },
        "credit-management: could not record a transaction_error notification",
      );
    }
  }
}

/**
 * A unit of work that changes only the account's own row (its settings: auto top-up, alert
 * thresholds), guarded by its `seq` like every unit (docs/concepts.md, "The unit of work").
 * `change` edits a copy of the account and returns the notifications to record with it, or null
 * to write nothing (it may read beside the unit of work: what the account had when loaded is the
 * copy's); the copy's `updatedAt` is set to the unit's clock. One transaction: a caller whose
 * `change` needs a `period_spend` window counted beside it runs this in `withRecounts`
 * (src/core/services/alert-reads.ts).
 */
export async function saveAccountOnly(
  db: DbManager,
  userId: string,
  clock: () => Date,
  change: (
    account: Account,
    now: Date,
    grants: () => readonly Grant[],
  ) => readonly Notification[] | null | Promise<readonly Notification[] | null>,
): Promise<void> {
  await db.transaction(userId, async (tx) => {
    const state = await tx.load();
    const now = clock();
    const work = new AccountWork(userId, state, now, newId);
    const account = { ...work.account };
    const notifications = await change(account, now, () => work.openGrants());
    if (notifications === null) return;
    account.updatedAt = now;
    await tx.save({
      account,
      previousSeq: state.account === null ? null : state.account.seq,
      insertGrants: [],
      updateGrants: [],
      insertReservations: [],
      updateReservations: [],
      entries: [],
      notifications,
    });
  });
}

/** Loads the grants that holds point at but that are not open (fully held, closed). */
export async function includeHeldGrants(
  work: UnitWork,
  tx: DbTransaction,
  holds: readonly Reservation[],
): Promise<void> {
  const missing = new Set<string>();
  for (const h of holds)
    for (const p of h.allocations) if (work.getGrant(p.grantId) === undefined) missing.add(p.grantId);
  if (missing.size > 0) work.include(await tx.getGrants([...missing]));
}

/** The active hold `id`, with the grants it earmarked made part of the work (read when they are not). */
export async function activeHold(work: UnitWork, tx: DbTransaction, id: string): Promise<Reservation> {
  const hold = work.getHold(id) ?? (await tx.getReservation(id));
  if (hold === null || hold === undefined)
    throw new NotFoundError(`Reservation ${id} not found.`, { reservationId: id });
  // A hold that lapsed (just now, in settlement, or earlier) says so with its own error.
  if (hold.status === "expired") throw new ReservationExpiredError(id, hold.expiresAt);
  if (hold.status !== "active") throw new ReservationNotActiveError(id, hold.status);
  await includeHeldGrants(work, tx, [hold]);
  return hold;
}

/** How a unit of work that threw ended, for the diagnostics message. */
function unitFailure(error: unknown): UnitOfWorkMessage["outcome"] {
  if (error instanceof InsufficientCreditsError) return "refused";
  if (error instanceof ConflictError) return "conflict";
  if (error instanceof CreditError && error.status < 500) return "rejected";
  return "failed";
}

/** The refusal channel's message for a refusal for lack of credits. */
function refusal(operation: string, userId: string, error: InsufficientCreditsError): RefusalMessage {
  const d = (error.details ?? {}) as { requested?: unknown; available?: unknown; overdraftLimit?: unknown };
  return {
    operation,
    userId,
    reason: d.overdraftLimit === undefined ? "insufficient_credits" : "overdraft_limit",
    requested: typeof d.requested === "number" ? d.requested : 0,
    available: typeof d.available === "number" ? d.available : 0,
  };
}

/** One hold-channel message per hold placed or ended in a committed unit of work. */
function publishHolds(userId: string, holds: NonNullable<UnitOutcome<unknown>["holds"]>): void {
  const send = (r: Reservation, action: HoldMessage["action"]) =>
    holdChannel.publish({
      action,
      userId,
      reservationId: r.id,
      amount: r.amount,
      committed: action === "committed" ? (r.committedAmount ?? 0) : 0,
      reservedAfter: holds.reservedAfter,
    } satisfies HoldMessage);
  for (const r of holds.placed) send(r, "reserved");
  for (const r of holds.ended) if (r.status !== "active") send(r, r.status);
}

/** The pauses between the look-ups of a commit in doubt: 50 ms doubling to 1 s, jittered in the upper half. */
const LOOKUP_BACKOFF: BackoffOptions = { base: 50, factor: 2, max: 1000, floor: 0.5 };
