import type { Logger } from "../logger.js";
import { CacheAside } from "../cache/aside.js";
import type { Cache } from "../cache/index.js";
import type { Changes, DbManager, DbTransaction, LoadedState } from "../db/types.js";
import type { PromoPaymentChanges } from "../db/types-promos.js";
import { AccountWork, holdWith, type EntryMeta, type Settlement } from "../domain/account-work.js";
import { fingerprint } from "../domain/hash.js";
import {
  NO_NOTIFICATIONS,
  evaluateAlert,
  expiredHoldNotifications,
  eventNotifications,
  newNotification,
  type Thresholds,
} from "../domain/notifications.js";
import { compareGrants, isDue } from "../domain/order.js";
import { replayJournal, type AuditReport } from "../domain/replay.js";
import { grantTrial } from "../domain/trial.js";
import { domainEvents } from "../domain/events.js";
import { decideCheck, featureFlips, type CheckResult } from "../domain/checks.js";
import {
  ConfigurationError,
  ConflictError,
  CreditError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  NotFoundError,
  ReservationExpiredError,
  ReservationNotActiveError,
  RuleViolationError,
  StorageError,
  ValidationError,
} from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import { MeterOptions as MeterOptionsSchema, type MeterOptions } from "../models/metering.js";
import {
  archiveJournal,
  archivePartitions,
  type ArchiveJournalOptions,
  type ArchivePartitionsOptions,
  type ArchiveReport,
} from "./archive.js";
import type { ArchivePartitionsReport } from "../db/types-partitions.js";
import {
  openMeter,
  runMetered,
  type MeterContext,
  type MeterOutcome,
  type MeterSession,
  type SessionDeps,
} from "./metering.js";
import type { PricingService } from "./pricing-service.js";
import type { CreditsInfo } from "../models/index.js";
import {
  AddCreditsOptions,
  AsOf,
  AuditOptions,
  CheckpointEvery,
  CheckpointOptions,
  CommitOptions,
  DeductOptions,
  EntityId,
  ExpiringDays,
  GrantsQuery,
  HistoryQuery,
  ReleaseOptions,
  ReserveOptions,
  TrialCredits,
  FeatureRules,
  CheckOptions,
  UserId,
  VoidGrantOptions,
  Amount,
  parse,
  type Account,
  type Grant,
  type JournalEntry,
  type Notification,
  type Reservation,
} from "../models/index.js";
import { andThen, isPromiseLike } from "../util/promise.js";
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
import { leaseBlock, leaseSettleKey } from "../domain/leases.js";
import { CreditLeases, leaseHoldOf, type LeaseHold, type LeaseSettle, type LeaseSettled } from "./leases.js";
import type { LeaseOptions } from "../models/leases.js";
import type * as z from "zod";

/** Options as their models return them (validated). */
type ParsedMutationOptions = Omit<z.output<typeof ReleaseOptions>, "userId">;
type ParsedReserveOptions = z.output<typeof ReserveOptions>;
type ParsedCommitOptions = Omit<z.output<typeof CommitOptions>, "userId">;
type ParsedTrial = z.output<typeof TrialCredits>;

export interface CreditServiceOptions {
  db: DbManager;
  /** The audit ledger; omit for none (journal entries are still stored). */
  ledger?: LedgerLogger;
  /** Caches `getUserCreditsInfo` reads. Never consulted for a decision that moves credits. */
  cache?: Cache;
  /** Source of "now". Default `() => new Date()`. */
  clock?: () => Date;
  logger?: Logger;
  /** TTL of a hold when `reserveCredits` gets none, in seconds. Default 900. */
  defaultReservationTtlSeconds?: number;
  /**
   * How far below zero `available` may go through after-service deductions and over-commits, in
   * credits. Default null: unlimited, as in the seed.
   */
  overdraftLimit?: number | null;
  /** TTL of cached credit-info reads, in seconds. Default 30. */
  cacheTtlSeconds?: number;
  /**
   * Records notification events in the outbox, in the unit of work that causes them (see
   * `NotificationService`): low credits below these thresholds, exhaustion, restoration, lapsed
   * holds, and refusals for lack of credits. Omitted: no events are recorded.
   */
  alerts?: Thresholds;
  /**
   * Trial credits granted once per user, in the unit of work that first creates the account (see
   * `grantTrial`): never to an account that existed before, whatever its balance. Omitted: none.
   */
  trial?: TrialCredits;
  /**
   * Per-feature rules for `check()`: `{ [feature]: { minAvailable } }`. With notifications on
   * (`alerts`), a change that flips a feature records `feature_status_changed`.
   */
  features?: FeatureRules;
  /**
   * Records a domain event per journal entry in the outbox, in the unit of work of the change
   * (`credits_added`, `credits_deducted`, `hold_placed`, …: docs/events.md). Turns the outbox on
   * (as `alerts: {}` does) when `alerts` is not given. Default false.
   */
  domainEvents?: boolean;
  /** The price book metered calls price tokens and costs with (docs/llm-metering.md). */
  pricing?: PricingService;
  /**
   * Writes a checkpoint entry in the unit of work that takes an account's journal past a multiple
   * of this many entries (docs/operations.md, "Checkpoints and archival"). Default: none (the
   * `checkpointAccounts` job writes them).
   */
  checkpointEvery?: number;
}

/**
 * What a unit of work's body gets besides the work and the transaction: the state it was loaded
 * from, and `attach` for rows other services save in the same transaction (promo claims, payment
 * updates). @internal
 */
export interface UnitContext {
  state: LoadedState;
  attach(rows: PromoPaymentChanges): void;
}

/** What `getExpiringCredits` returns. */
export interface ExpiringCredits {
  userId: string;
  /** Credits that expire within the window (unspent, unheld). */
  total: number;
  /** The grants behind them, soonest expiry first. */
  grants: Grant[];
}

/** A page of journal entries, newest first. */
export interface HistoryPage {
  items: JournalEntry[];
  /** Pass as `cursor` for the next (older) page; null on the last page. */
  nextCursor: string | null;
}

/** The default options object of every mutation: known valid, so not parsed on the hot path. */
const NO_OPTIONS: DeductOptions = Object.freeze({});
const NO_META: EntryMeta = Object.freeze({});
const SETTLE = Object.freeze({ settle: true });

/** Options of one unit of work: settle what time has done; bring a due subscription period first. */
interface RunOptions {
  settle: boolean;
  /** Default true; false for the units other services run (the subscription service's own above all). */
  periods?: boolean;
}

/**
 * Thrown out of an attempt whose settlement expired a subscription period's grants while a
 * subscription service is wired: the unit of work is abandoned (nothing written), the period is
 * brought up to date, and the operation runs again (once).
 */
class PeriodDue extends Error {}

const NO_ENTRIES: readonly JournalEntry[] = Object.freeze([]);

interface UnitOutcome<T> {
  value: T;
  entries: readonly JournalEntry[];
  canonicals?: readonly string[];
  /** The holds placed and ended, only while someone listens on the hold channel (docs/observability.md). */
  holds?: { placed: readonly Reservation[]; ended: readonly Reservation[]; reservedAfter: number };
}

/** What a unit of work's body may use besides the account: the loaded state, extra rows to save. */
class Unit implements UnitContext {
  extra: PromoPaymentChanges | undefined = undefined;
  constructor(readonly state: LoadedState) {}
  attach(rows: PromoPaymentChanges): void {
    this.extra = { ...this.extra, ...rows };
  }
}

/** What `UnitRun` needs of the service. */
interface UnitRunDeps {
  readonly clock: () => Date;
  alerts: Thresholds | undefined;
  trial: ParsedTrial | undefined;
  includeHeldGrants(work: AccountWork, tx: DbTransaction, holds: readonly Reservation[]): Promise<void>;
  addNotifications(work: AccountWork, changes: Changes): void;
  /** Write a checkpoint entry each time an account's seq passes a multiple of this (`checkpointEvery`). */
  checkpointEvery: number | undefined;
}

/**
 * One unit of work, as the store's transaction runs it (once, or again after a conflict): load,
 * answer a repeated idempotency key with the first result, settle what time has done, run the body,
 * save. Written as steps that continue synchronously while every step has its answer at hand (the
 * in-memory store) and switch to promises only where one is needed (a database), so a unit of work
 * in memory costs no promise of its own.
 */
class UnitRun<T> {
  /** A refusal for lack of credits in the last attempt, with the account's seq then. */
  refused: { seq: number; error: InsufficientCreditsError } | undefined;

  constructor(
    private readonly deps: UnitRunDeps,
    private readonly userId: string,
    private readonly meta: EntryMeta,
    private readonly body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
    private readonly replay: ((entry: JournalEntry, tx: DbTransaction) => Promise<T>) | undefined,
    private readonly settle: boolean,
    /** Abandon the attempt when settlement ends a subscription period (`PeriodDue`). */
    private readonly periods: boolean,
    /** The diagnostics message, while someone listens (docs/observability.md): counts attempts. */
    private readonly message: UnitOfWorkMessage | undefined,
  ) {}

  attempt(tx: DbTransaction): UnitOutcome<T> | Promise<UnitOutcome<T>> {
    this.refused = undefined;
    if (this.message !== undefined) {
      this.message.attempts++;
      this.message.outcome = "ok";
    }
    const key = this.meta.idempotencyKey;
    const state = tx.load(key === undefined ? undefined : { idempotencyKey: key });
    // (`andThen` by hand: no closure when the store answered at once.)
    return isPromiseLike(state) ? Promise.resolve(state).then((s) => this.loaded(tx, s)) : this.loaded(tx, state);
  }

  private loaded(tx: DbTransaction, state: LoadedState): UnitOutcome<T> | Promise<UnitOutcome<T>> {
    const key = this.meta.idempotencyKey;
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
      if (this.replay === undefined) return { value: first as T, entries: NO_ENTRIES };
      return this.replay(first, tx).then((value) => ({ value, entries: NO_ENTRIES }));
    }
    const work = new AccountWork(this.userId, state, this.deps.clock(), newId);
    if (this.deps.trial !== undefined && state.account === null) grantTrial(work, this.deps.trial);
    if (this.settle && work.needsSettle) {
      return this.deps.includeHeldGrants(work, tx, state.reservations).then(() => {
        const settled = work.settle();
        if (this.periods && settled.periodGrantsEnded > 0) throw new PeriodDue();
        return this.run(tx, state, work);
      });
    }
    return this.run(tx, state, work);
  }

  private run(tx: DbTransaction, state: LoadedState, work: AccountWork): UnitOutcome<T> | Promise<UnitOutcome<T>> {
    const unit = new Unit(state);
    let running: T | Promise<T>;
    try {
      running = this.body(work, tx, unit);
    } catch (error) {
      throw this.failed(error, work);
    }
    if (!isPromiseLike(running)) return this.finish(tx, work, unit, running);
    return Promise.resolve(running).then(
      (result) => this.finish(tx, work, unit, result),
      (error: unknown) => {
        throw this.failed(error, work);
      },
    );
  }

  private failed(error: unknown, work: AccountWork): unknown {
    if (error instanceof InsufficientCreditsError && this.deps.alerts !== undefined)
      this.refused = { seq: work.account.seq, error };
    return error;
  }

  private finish(
    tx: DbTransaction,
    work: AccountWork,
    unit: Unit,
    result: T,
  ): UnitOutcome<T> | Promise<UnitOutcome<T>> {
    const every = this.deps.checkpointEvery;
    if (every !== undefined && checkpointDue(work, every)) {
      // Every N entries, a checkpoint in the same unit of work (docs/operations.md, "Checkpoints and archival").
      const missing = work.missingHeldGrants();
      if (missing.length > 0)
        return tx.getGrants(missing).then((grants) => {
          work.include(grants);
          work.checkpoint();
          return this.save(tx, work, unit, result);
        });
      work.checkpoint();
    }
    return this.save(tx, work, unit, result);
  }

  private save(tx: DbTransaction, work: AccountWork, unit: Unit, result: T): UnitOutcome<T> | Promise<UnitOutcome<T>> {
    const outcome: UnitOutcome<T> = { value: result, entries: work.entries, canonicals: work.canonicals };
    const extra = unit.extra;
    const hasExtra =
      extra !== undefined && ((extra.promoClaims?.length ?? 0) > 0 || (extra.paymentUpdates?.length ?? 0) > 0);
    if (!work.changed && !hasExtra) return outcome;
    const changes: Changes = work.changes();
    if (extra !== undefined) Object.assign(changes, extra);
    if (this.deps.alerts !== undefined) this.deps.addNotifications(work, changes);
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
    const saved = tx.save(changes);
    return isPromiseLike(saved) ? Promise.resolve(saved).then(() => outcome) : outcome;
  }
}

/** True when the work's entries took the account's seq past a multiple of `every` (and the last is no checkpoint). */
function checkpointDue(work: AccountWork, every: number): boolean {
  const made = work.entries;
  if (made.length === 0 || (made[made.length - 1] as JournalEntry).type === "checkpoint") return false;
  const before = work.loaded === null ? 0 : work.loaded.seq;
  return Math.floor(before / every) < Math.floor(work.account.seq / every);
}

const infoKey = (userId: string) => `credits:info:${userId}`;

/** Stores may keep the objects they return (the in-memory one does): callers get their own copy. */
const copy = <T>(o: T): T => structuredClone(o);

/**
 * Credits of one account at a time: additions, deductions, holds, expiry, voids, history and
 * audit. Every mutation is one unit of work on the account (`DbManager.transaction`), validated by
 * the zod models before anything is read, and resolves to its journal entry (or reservation).
 */
export class CreditService {
  readonly db: DbManager;
  private readonly ledger: LedgerLogger | undefined;
  /** Set by a subscription service over this one (`bringPeriodsWith`). */
  private periodHook: ((userId: string) => Promise<unknown>) | undefined;
  /** The balance cache, when there is one. */
  private readonly cache: CacheAside | undefined;
  private readonly clock: () => Date;
  private readonly logger: Logger | undefined;
  private readonly defaultTtl: number;
  private readonly overdraftLimit: number | null;
  private readonly alerts: Thresholds | undefined;
  private readonly features: Readonly<Record<string, { minAvailable: number }>>;
  private readonly hasFeatures: boolean;
  private readonly domainEvents: boolean;
  private readonly pricing: PricingService | undefined;

  constructor(options: CreditServiceOptions) {
    this.pricing = options.pricing;
    this.db = options.db;
    this.ledger = options.ledger;
    this.cache = options.cache && new CacheAside(options.cache, options.cacheTtlSeconds ?? 30, options.logger);
    this.clock = options.clock ?? (() => new Date());
    this.logger = options.logger;
    this.defaultTtl = options.defaultReservationTtlSeconds ?? 900;
    this.overdraftLimit = options.overdraftLimit ?? null;
    if (options.domainEvents !== undefined && typeof options.domainEvents !== "boolean") {
      throw new ConfigurationError("[credit-management] CreditService: domainEvents must be a boolean");
    }
    this.domainEvents = options.domainEvents === true;
    this.alerts = options.alerts ?? (this.domainEvents ? {} : undefined);
    this.runDeps.alerts = this.alerts;
    try {
      if (options.trial !== undefined) this.runDeps.trial = parse(TrialCredits, options.trial, "trial");
      this.features = parse(FeatureRules, options.features ?? {}, "features");
      this.hasFeatures = Object.keys(this.features).length > 0;
      if (options.checkpointEvery !== undefined)
        this.runDeps.checkpointEvery = parse(CheckpointEvery, options.checkpointEvery, "checkpointEvery");
    } catch (error) {
      throw new ConfigurationError(`[credit-management] CreditService: ${(error as Error).message}`, error);
    }
  }

  /** Adds credits as a new grant (after paying any debt). */
  async addCredits(userId: string, amount: number, options: AddCreditsOptions = {}): Promise<JournalEntry> {
    const user = parse(UserId, userId, "userId");
    const n = parse(Amount, amount, "amount");
    const o = parse(AddCreditsOptions, options, "options");
    const expiresAt = o.expiresAt ?? null;
    const past = (now: Date) => expiresAt !== null && expiresAt.getTime() <= now.getTime();
    const refuse = () =>
      new RuleViolationError(`Invalid options.expiresAt: ${expiresAt?.toISOString()} is not in the future`, [
        { path: "expiresAt", message: "must be in the future" },
      ]);
    // Without a key, refused before any work; with one, only once it is known not to be a retry
    // (a retry of an addition that was made while its expiry was ahead answers with the first entry).
    if (o.idempotencyKey === undefined && past(this.clock())) throw refuse();
    const meta = this.meta("addCredits", o, () => ({ amount: n, ...o, expiresAt: o.expiresAt?.toISOString() ?? null }));
    return this.mutate("addCredits", user, meta, (work) => {
      if (past(work.now)) throw refuse();
      return work.add(
        n,
        {
          expiresAt: o.expiresAt ?? null,
          priority: o.priority ?? 0,
          source: o.source ?? "manual",
          sourceRef: o.sourceRef ?? null,
          description: o.description ?? null,
          metadata: o.metadata ?? null,
        },
        meta,
      );
    });
  }

  /**
   * Creates the user's account when it has none — granting the trial credits when `trial` is
   * configured (once per user, docs/trial-and-checks.md) — and changes nothing for an account that
   * exists (it settles what lapsed, as any operation does). For a "user created" event
   * (docs/events.md): a redelivery changes nothing. Resolves to the account's credits.
   */
  async openAccount(userId: string): Promise<CreditsInfo> {
    const user = parse(UserId, userId, "userId");
    await this.mutate("openAccount", user, NO_META, () => undefined);
    return this.getUserCreditsInfo(user);
  }

  /** Deducts credits; refuses (`InsufficientCreditsError`) to take `available` below zero. */
  deductCredits(userId: string, amount: number, options: DeductOptions = NO_OPTIONS): Promise<JournalEntry> {
    return this.deduct("deductCredits", userId, amount, options, false);
  }

  /**
   * Deducts for usage already delivered: takes what unheld grants have and records the rest as
   * debt, within the overdraft limit. Held credits are never taken.
   */
  deductCreditsAfterService(
    userId: string,
    amount: number,
    options: DeductOptions = NO_OPTIONS,
  ): Promise<JournalEntry> {
    return this.deduct("deductCreditsAfterService", userId, amount, options, true);
  }

  /**
   * @internal An after-service deduction of `amount`, or of what the overdraft limit allows when
   * that is less (the metering of a call that outlived its hold: the usage was delivered). Decided
   * inside the unit of work, so the account cannot move in between; a clamped entry's metadata adds
   * `requested` and `shortfall`. Resolves to null when the limit allows nothing. A repeated key
   * answers with the first entry, as `deductCreditsAfterService` does.
   */
  chargeUpToLimit(userId: string, amount: number, options: DeductOptions): Promise<JournalEntry | null> {
    let meta: EntryMeta;
    try {
      meta = this.meta("deductCreditsAfterService", parse(DeductOptions, options, "options"), () => ({
        amount,
        ...options,
      }));
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return this.mutate("deductCreditsAfterService", userId, meta, (work) =>
      work.deductUpToLimit(amount, meta, this.overdraftLimit),
    );
  }

  /** Places a hold on `amount` credits for `ttlSeconds` (default 900). Resolves to the reservation. */
  async reserveCredits(userId: string, amount: number, options: ReserveOptions = NO_OPTIONS): Promise<Reservation> {
    const user = parse(UserId, userId, "userId");
    const n = parse(Amount, amount, "amount");
    const o = options === NO_OPTIONS ? NO_OPTIONS : parse(ReserveOptions, options, "options");
    const r = await this.placeHold(user, n, o);
    // The caller's own copy (the store may keep `r`): a one-shape literal, not a spread (V8 copies
    // a spread of this object a property at a time).
    const allocations = r.allocations.map((p) => ({ grantId: p.grantId, amount: p.amount }));
    return holdWith(r, r.status, r.settledAt, r.committedAmount, r.amount, allocations);
  }

  /**
   * @internal `reserveCredits` for input its models already accepted (metering parses its options
   * once, up front). Resolves to the stored reservation: read it, never change it.
   */
  placeHold(user: string, n: number, o: ParsedReserveOptions): Promise<Reservation> {
    const ttl = o.ttlSeconds ?? this.defaultTtl;
    const meta = this.meta("reserveCredits", o, () => ({ amount: n, ...o, ttlSeconds: ttl }));
    return this.mutate(
      "reserveCredits",
      user,
      meta,
      (work) => work.reserve(n, ttl, o.reason ?? null, meta).reservation,
      replayHold,
    );
  }

  /**
   * Captures a hold: all of it by default, or `amount` (less returns the rest to its grants; more
   * takes the excess like an after-service deduction). Resolves to the commit entry.
   */
  commitReservedCredits(reservationId: string, options: CommitOptions = NO_OPTIONS): Promise<JournalEntry> {
    let id: string;
    let o: ParsedCommitOptions;
    let userId: string | undefined;
    try {
      id = parse(EntityId, reservationId, "reservationId");
      if (options === NO_OPTIONS) o = NO_OPTIONS;
      else ({ userId, ...o } = parse(CommitOptions, options, "options"));
    } catch (error) {
      return Promise.reject(error as Error);
    }
    if (o.amount === undefined && o.idempotencyKey !== undefined) {
      // With a key, "the full hold" is that hold's amount: a retry that names it is the same call.
      const parsed = o;
      return this.findReservation(id, userId).then((found) =>
        this.commitHold(found.userId, id, { ...parsed, amount: found.amount }),
      );
    }
    // A given owner routes the unit of work; its reads are the owner's, so another user's hold is not found.
    if (userId !== undefined) return this.commitHold(userId, id, o);
    const owner = this.ownerOfReservation(id);
    return typeof owner === "string" ? this.commitHold(owner, id, o) : owner.then((u) => this.commitHold(u, id, o));
  }

  /**
   * @internal `commitReservedCredits` of a hold of `userId` (known to the caller: no lookup), for
   * input its models already accepted.
   */
  commitHold(userId: string, id: string, o: ParsedCommitOptions): Promise<JournalEntry> {
    return this.commitWith(userId, id, o, false);
  }

  /**
   * @internal `commitHold` of usage already delivered (metering): past the overdraft limit it
   * commits what the limit allows — the hold and the headroom beyond it — instead of refusing,
   * decided inside the unit of work as `chargeUpToLimit` decides; a clamped commit entry's metadata
   * adds `requested` and `shortfall`.
   */
  commitHoldUpToLimit(userId: string, id: string, o: ParsedCommitOptions): Promise<JournalEntry> {
    return this.commitWith(userId, id, o, true);
  }

  private commitWith(userId: string, id: string, o: ParsedCommitOptions, upToLimit: boolean): Promise<JournalEntry> {
    const meta = this.meta("commitReservedCredits", o, () => ({ reservationId: id, ...o }));
    return this.mutate("commitReservedCredits", userId, meta, (work, tx) => {
      const commit = (hold: Reservation): JournalEntry => {
        if (hold.expiresAt.getTime() <= work.now.getTime()) throw new ReservationExpiredError(id, hold.expiresAt);
        const limit = this.overdraftLimit;
        const requested = o.amount ?? hold.amount;
        return upToLimit
          ? work.commitUpToLimit(hold, requested, meta, limit)
          : work.commit(hold, requested, meta, limit);
      };
      return andThen(this.activeHold(work, tx, id), commit);
    });
  }

  /** Returns everything a hold earmarked. Resolves to the release entry. */
  releaseReservedCredits(reservationId: string, options: ReleaseOptions = NO_OPTIONS): Promise<JournalEntry> {
    let id: string;
    let o: ParsedMutationOptions;
    let userId: string | undefined;
    try {
      id = parse(EntityId, reservationId, "reservationId");
      if (options === NO_OPTIONS) o = NO_OPTIONS;
      else ({ userId, ...o } = parse(ReleaseOptions, options, "options"));
    } catch (error) {
      return Promise.reject(error as Error);
    }
    // A given owner routes the unit of work, as for a commit.
    if (userId !== undefined) return this.releaseHold(userId, id, o);
    const owner = this.ownerOfReservation(id);
    return typeof owner === "string" ? this.releaseHold(owner, id, o) : owner.then((u) => this.releaseHold(u, id, o));
  }

  /** @internal `releaseReservedCredits` of a hold of `userId`, for input its models already accepted. */
  releaseHold(userId: string, id: string, o: ParsedMutationOptions): Promise<JournalEntry> {
    const meta = this.meta("releaseReservedCredits", o, () => ({ reservationId: id, ...o }));
    return this.mutate("releaseReservedCredits", userId, meta, (work, tx) => {
      const release = (hold: Reservation): JournalEntry => work.releaseHold(hold, "released", meta).entry;
      return andThen(this.activeHold(work, tx, id), release);
    });
  }

  /** Removes what is left of a grant (refunds, disputes). Held parts go when their hold ends. */
  async voidGrant(grantId: string, options: VoidGrantOptions = {}): Promise<JournalEntry> {
    const id = parse(EntityId, grantId, "grantId");
    const { userId, ...o } = parse(VoidGrantOptions, options, "options");
    // Keyed by the owner when given: one shard, and another user's grant is not found.
    const grant = await this.db.getGrant(id, userId);
    if (grant === null || (userId !== undefined && grant.userId !== userId))
      throw new NotFoundError(`Grant ${id} not found.`, { grantId: id });
    const meta = this.meta("voidGrant", o, () => ({ grantId: id, ...o }));
    return this.mutate("voidGrant", grant.userId, meta, async (work, tx) => {
      // The work's copy first: settlement may just have expired it.
      const current = work.getGrant(id) ?? (await tx.getGrants([id]))[0];
      if (current === undefined) throw new NotFoundError(`Grant ${id} not found.`, { grantId: id });
      work.include([current]);
      // A grant past its expiry is expired whether or not settlement has closed it yet.
      const closedReason = current.closedReason ?? (isDue(current, work.now) ? "expired" : null);
      if (closedReason !== null) {
        throw new ConflictError(`Grant ${id} is already ${closedReason}.`, { grantId: id, closedReason });
      }
      return work.voidGrant(current, meta);
    });
  }

  /**
   * Expires the unspent credits of this user's grants due at `asOf` (default now; never later than
   * now) and releases lapsed holds. Resolves to the credits expired.
   */
  async expireCredits(userId: string, asOf?: Date | string): Promise<number> {
    const user = parse(UserId, userId, "userId");
    const at = parse(AsOf, asOf, "asOf");
    const now = this.clock();
    if (at !== undefined && at.getTime() > now.getTime()) {
      throw new RuleViolationError(`Invalid asOf: ${at.toISOString()} is in the future`, [
        { path: "asOf", message: "must not be in the future" },
      ]);
    }
    return (await this.settleAsOf(user, at)).expired;
  }

  /**
   * @internal One account settled as of `asOf` (default now; the caller checks it is not later):
   * grants due and holds lapsed by then, not by the clock (`expireCredits`, the hold-release job).
   */
  settleAsOf(userId: string, asOf?: Date, operation = "expireCredits"): Promise<Settlement> {
    return this.mutate(
      operation,
      userId,
      {},
      async (work, tx, unit) => {
        await this.includeHeldGrants(work, tx, unit.state.reservations);
        return work.settle(asOf ?? work.now);
      },
      undefined,
      { settle: false },
    );
  }

  /** Balance, reserved, available and debt. Settles due expiries first, so the numbers are current. */
  async getUserCreditsInfo(userId: string): Promise<CreditsInfo> {
    const user = parse(UserId, userId, "userId");
    const now = this.clock();
    const cache = this.cache;
    if (cache === undefined) return creditsInfo(user, await this.settledAccount(user, now));
    const key = infoKey(user);
    const hit = await cache.get<{ info: CreditsInfo; validUntil: number | null }>(key);
    // Valid until the next expiry by *our* clock (the cache's TTL runs on its own clock).
    if (hit !== undefined && (hit.validUntil === null || now.getTime() < hit.validUntil)) return { ...hit.info };
    const account = await cache.readThrough(
      key,
      () => this.settledAccount(user, now),
      (read) => ({
        info: creditsInfo(user, read),
        validUntil: read?.nextExpiryAt ? read.nextExpiryAt.getTime() : null,
      }),
    );
    return creditsInfo(user, account);
  }

  /**
   * "Allowed?": whether `userId` may use `feature` (its `minAvailable` in `features`) and/or spend
   * `amount` now (see `decideCheck`). Reads `getUserCreditsInfo`, so it is served from the cache
   * when there is one and is never stale after this account's own writes (they invalidate it). An
   * advisory read: a deduction still decides for itself. A feature not in `features` is a
   * `ValidationError`.
   */
  async check(userId: string, options: CheckOptions = {}): Promise<CheckResult> {
    const user = parse(UserId, userId, "userId");
    const o = parse(CheckOptions, options, "options");
    const rule = o.feature === undefined ? undefined : this.features[o.feature];
    if (o.feature !== undefined && rule === undefined) {
      throw new ValidationError(`Invalid options.feature: ${JSON.stringify(o.feature)} has no rule in \`features\``, [
        { path: "feature", message: "unknown feature" },
      ]);
    }
    const info = await this.getUserCreditsInfo(user);
    const decision = decideCheck(info.available, rule?.minAvailable, o.amount);
    if (decision.allowed || this.cache === undefined) return decision;
    // A denial is answered from the store's current state, not from a cached copy another
    // process may have outdated (its writes invalidate its own cache, not ours): docs/storage.md,
    // "Caches: what each may answer".
    const current = creditsInfo(user, await this.settledAccount(user, this.clock()));
    return decideCheck(current.available, rule?.minAvailable, o.amount);
  }

  /** The journal, newest first, with cursor paging and filters. */
  async getCreditHistory(userId: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    const user = parse(UserId, userId, "userId");
    const q = parse(HistoryQuery, query, "query");
    const limit = q.limit ?? 50;
    const rows = await this.db.listJournal(user, {
      order: "desc",
      beforeSeq: q.cursor === undefined ? undefined : Number(q.cursor),
      limit: limit + 1,
      types: q.types,
      from: q.from,
      to: q.to,
    });
    const items = rows.slice(0, limit);
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? String(last.seq) : null };
  }

  /** Unspent, unheld credits that expire within `days` days from now. */
  async getExpiringCredits(userId: string, days: number): Promise<ExpiringCredits> {
    const user = parse(UserId, userId, "userId");
    const d = parse(ExpiringDays, days, "days");
    const now = this.clock().getTime();
    const until = now + d * 86_400_000;
    const grants = (await this.db.listGrants(user))
      .filter((g) => g.remaining > 0 && g.closedAt === null && g.expiresAt !== null)
      .filter((g) => (g.expiresAt as Date).getTime() > now && (g.expiresAt as Date).getTime() <= until)
      .sort((a, b) => (a.expiresAt as Date).getTime() - (b.expiresAt as Date).getTime());
    return { userId: user, total: grants.reduce((s, g) => s + g.remaining, 0), grants: grants.map(copy) };
  }

  /** A user's grants with their `remaining`, `expiresAt` and `priority`, in burn-down order. */
  async getGrants(userId: string, options: GrantsQuery = {}): Promise<Grant[]> {
    const user = parse(UserId, userId, "userId");
    const o = parse(GrantsQuery, options, "options");
    await this.settledAccount(user, this.clock());
    const grants = await this.db.listGrants(user, { includeInactive: o.includeInactive === true });
    return grants.sort(compareGrants).map(copy);
  }

  /**
   * Metering: reserves `options.estimate`, runs `fn` inside a usage context (AsyncLocalStorage), then
   * commits the number `fn` returns, else the usage recorded with `recordUsage()` anywhere below
   * it; with neither it releases the hold (or charges the estimate, `noUsage: "estimate"`). If `fn`
   * throws, the hold is released and the error rethrown. Exactly one commit or release per call;
   * the usages go into the commit entry's metadata. Resolves to what `fn` resolved to.
   * `InsufficientCreditsError` when the hold cannot be placed (then `fn` does not run).
   */
  async meter<T>(
    userId: string,
    options: MeterOptions & { onSettled?: (outcome: MeterOutcome) => void },
    fn: (context: MeterContext) => T | Promise<T>,
  ): Promise<T> {
    const given = (options ?? {}) as MeterOptions & { onSettled?: (outcome: MeterOutcome) => void };
    // (A copy without `onSettled` only when it is there: the schema knows no such option.)
    let rest: MeterOptions = given;
    const proto = typeof given === "object" ? (Object.getPrototypeOf(given) as unknown) : undefined;
    if ((proto !== Object.prototype && proto !== null) || Object.prototype.hasOwnProperty.call(given, "onSettled")) {
      const { onSettled: _, ...others } = given;
      rest = others;
    }
    const onSettled = given.onSettled;
    const o = parse(MeterOptionsSchema, rest, "options");
    if (onSettled !== undefined && typeof onSettled !== "function") {
      throw new ValidationError("Invalid options.onSettled: must be a function", [
        { path: "onSettled", message: "must be a function" },
      ]);
    }
    if (typeof fn !== "function")
      throw new ValidationError("Invalid fn: must be a function", [{ path: "fn", message: "must be a function" }]);
    return runMetered(this.sessionDeps, parse(UserId, userId, "userId"), o, fn, onSettled);
  }

  /**
   * Credit leases (docs/metering.md, "Leases"): blocks of a user's credits held by this process,
   * charges served from them in memory and settled in one journal entry per window.
   */
  leases(options: LeaseOptions = {}): CreditLeases {
    return new CreditLeases(
      { credits: this, ledger: this.ledger, logger: this.logger, session: this.sessionDeps },
      options,
    );
  }

  /**
   * @internal Settles window `s.window` of lease `s.lease` in one keyed unit of work: commits what
   * the window used from its hold (or, the hold gone, deducts it after service within the overdraft
   * limit), then — `s.roll` — holds the next block (`leaseBlock`). The key `lease:<lease>:<window>`
   * makes a retried or recovered settle charge once; a replay finds the next block it placed.
   */
  async settleLease(userId: string, s: LeaseSettle): Promise<LeaseSettled> {
    const key = leaseSettleKey(s.lease, s.window);
    const window = { lease: s.lease, window: s.window, requests: s.requests, total: s.used };
    const meta: EntryMeta = {
      idempotencyKey: key,
      fingerprint: fingerprint("settleLease", window),
      metadata: { leaseWindow: window },
    };
    const next = { lease: s.lease, window: s.window + 1 };
    const limit = this.overdraftLimit;
    const settled = await this.mutate(
      "settleLease",
      userId,
      meta,
      (work, tx): LeaseSettled | Promise<LeaseSettled> => {
        let keyed = false;
        const roll = (entry: JournalEntry | null): LeaseSettled => {
          let hold: Reservation | null = null;
          const block = s.roll === null ? 0 : leaseBlock(work.available, s.roll.sizing);
          if (s.roll !== null && block > 0) {
            // The key goes on the unit's first entry (an opening window has no settle entry).
            const holdMeta: EntryMeta = keyed
              ? { metadata: { leaseHold: next } }
              : { ...meta, metadata: { leaseHold: next } };
            hold = work.reserve(block, s.roll.ttlSeconds, "lease", holdMeta).reservation;
          }
          return { entry, next: hold === null ? null : leaseHoldOf(hold), replayed: false };
        };
        const charge = (hold: Reservation | null): LeaseSettled => {
          keyed = true;
          if (hold !== null) {
            if (s.used === 0 && s.requests === 0) return roll(work.releaseHold(hold, "released", meta).entry);
            return roll(work.commitUpToLimit(hold, s.used, meta, limit));
          }
          if (s.used === 0) {
            keyed = false;
            return roll(null);
          }
          // The hold lapsed: the usage was delivered, so it is charged after service.
          const entry = work.deductUpToLimit(s.used, meta, limit);
          if (entry === null) keyed = false;
          return roll(entry);
        };
        if (s.holdId === null) return charge(null);
        let found: Reservation | Promise<Reservation>;
        try {
          found = this.activeHold(work, tx, s.holdId);
        } catch (error) {
          if (error instanceof ReservationExpiredError || error instanceof ReservationNotActiveError)
            return charge(null);
          throw error;
        }
        if (!isPromiseLike(found)) {
          if (found.expiresAt.getTime() <= work.now.getTime()) return charge(null);
          return charge(found);
        }
        return Promise.resolve(found).then(
          (h) => charge(h.expiresAt.getTime() <= work.now.getTime() ? null : h),
          (error: unknown) => {
            if (error instanceof ReservationExpiredError || error instanceof ReservationNotActiveError)
              return charge(null);
            throw error;
          },
        );
      },
      (entry) => Promise.resolve({ entry, next: null, replayed: true }),
    );
    if (!settled.replayed || s.roll === null) return settled;
    // A replay: the next block (if the first settle placed one) is the active hold tagged with it.
    return { entry: settled.entry, next: await this.leaseHold(userId, next.lease, next.window), replayed: true };
  }

  /** @internal The active hold a lease's settle placed for window `window`, or null. */
  async leaseHold(userId: string, lease: string, window: number): Promise<LeaseHold | null> {
    const holds = await this.db.transaction(userId, (tx) => andThen(tx.load(), (state) => state.reservations));
    const placed = holds.find((h) => {
      const tag = (h.metadata as { leaseHold?: { lease?: unknown; window?: unknown } } | null)?.leaseHold;
      return tag?.lease === lease && tag.window === window;
    });
    return placed === undefined ? null : leaseHoldOf(placed);
  }

  /** What metered calls use of this service (one object for all of them). */
  private get sessionDeps(): SessionDeps {
    return (this.meterDeps ??= { credits: this, pricing: this.pricing, ledger: this.ledger, logger: this.logger });
  }
  private meterDeps: SessionDeps | undefined;

  /**
   * The building block of `meter()` for hosts that settle on their own schedule (the HTTP
   * middleware commits when a streamed response ends): places the hold and returns the session;
   * `session.run(fn)` runs code in its usage context, `session.commit(amount?)` / `session.release()`
   * settle it once.
   */
  async openMeter(userId: string, options: MeterOptions): Promise<MeterSession> {
    const o = parse(MeterOptionsSchema, options, "options");
    return openMeter(this.sessionDeps, parse(UserId, userId, "userId"), o);
  }

  /** A reservation by id. */
  async getReservation(reservationId: string): Promise<Reservation> {
    return copy(await this.findReservation(parse(EntityId, reservationId, "reservationId")));
  }

  /**
   * Replays the user's journal: checks the hash chain, seq, every entry's balanceAfter,
   * reservedAfter and debtAfter, the invariants, and that the stored account, grants and holds are
   * what the journal says. By default from the latest checkpoint entry, starting from the state it
   * records; `{ from: "genesis" }` replays from the first entry and checks each checkpoint's state
   * against the replay (docs/operations.md, "Checkpoints and archival").
   */
  async audit(userId: string, options: AuditOptions = {}): Promise<AuditReport> {
    const user = parse(UserId, userId, "userId");
    const o = parse(AuditOptions, options, "options");
    // From the latest checkpoint by default (docs/operations.md, "Checkpoints and archival").
    const start = o.from === "genesis" ? undefined : await this.latestCheckpoint(user);
    const entries: JournalEntry[] = [];
    let after = start === undefined ? 0 : start.seq - 1;
    for (;;) {
      const page = await this.db.listJournal(user, { order: "asc", afterSeq: after, limit: 1000 });
      for (const e of page) entries.push(e);
      if (page.length < 1000) break;
      after = (page[page.length - 1] as JournalEntry).seq;
    }
    const [account, grants, reservations] = await Promise.all([
      this.db.getAccount(user),
      this.db.listGrants(user, { includeInactive: true }),
      this.db.listReservations(user),
    ]);
    const report = replayJournal(user, entries, { account, grants, reservations });
    const first = entries[0];
    if (o.from === "genesis" && first !== undefined && first.seq > 1) {
      report.problems.unshift(
        `entries 1 to ${first.seq - 1} are archived: audit from the checkpoint, and the archive with \`credit-management audit --archive\``,
      );
      report.ok = false;
    }
    return report;
  }

  /** The user's latest checkpoint entry, if any. */
  async latestCheckpoint(userId: string): Promise<JournalEntry | undefined> {
    const user = parse(UserId, userId, "userId");
    const [last] = await this.db.listJournal(user, { order: "desc", types: ["checkpoint"], limit: 1 });
    return last === undefined ? undefined : copy(last);
  }

  /**
   * Writes a checkpoint entry (docs/operations.md, "Checkpoints and archival"): amount 0, the
   * account unchanged, its open grants and active holds recorded in the entry (which the hash
   * chain covers). Resolves to the entry, or to null when fewer than `minEntries` (default 1)
   * entries follow the latest checkpoint — or the account has none.
   */
  async checkpoint(userId: string, options: CheckpointOptions = {}): Promise<JournalEntry | null> {
    const user = parse(UserId, userId, "userId");
    const o = parse(CheckpointOptions, options, "options");
    const last = await this.latestCheckpoint(user);
    const since = last === undefined ? 0 : last.seq;
    const min = o.minEntries ?? 1;
    return this.mutate(
      "checkpoint",
      user,
      NO_META,
      async (work, tx) => {
        // (A checkpoint written meanwhile by another worker only makes this one less needed.)
        if (work.isNew || work.account.seq - since < min) return null;
        const missing = work.missingHeldGrants();
        if (missing.length > 0) work.include(await tx.getGrants(missing));
        return copy(work.checkpoint());
      },
      undefined,
      { settle: false, periods: false },
    );
  }

  /**
   * Moves the journal entries older than each account's latest checkpoint (written before
   * `before`) to a new JSONL file, then removes them from the store; the checkpoint stays, so
   * `audit()`, history pages after it and refunds work as before, and `credit-management audit
   * --archive FILE` verifies the file against it (docs/operations.md, "Checkpoints and archival").
   */
  archiveJournal(options: ArchiveJournalOptions): Promise<ArchiveReport> {
    return archiveJournal(this.db, options);
  }

  /**
   * PostgreSQL with `partitions`: for every time partition of the journal and the ledger table
   * whose range ends by `before`, makes sure each account with entries in it has a checkpoint after
   * them (writing the missing ones, unless `checkpoint: false`), writes its rows to
   * `<dir>/<partition>.jsonl` (flushed to disk), then detaches and drops it. `credit-management
   * audit --archive` verifies the files, in sequence, against the store (docs/running-for-years.md,
   * "Partitioning on PostgreSQL").
   */
  archivePartitions(options: ArchivePartitionsOptions): Promise<ArchivePartitionsReport> {
    return archivePartitions(this.db, options, (userId) => this.checkpoint(userId), this.now());
  }

  /**
   * @internal One unit of work on an account, for the other services of this package (the
   * subscription and expiry jobs): load (with `meta`'s idempotency key), answer a repeated key with
   * `replay`, settle, run `body`, save; then mirror to the ledger file and invalidate the cache.
   */
  runUnitOfWork<T>(
    userId: string,
    meta: EntryMeta,
    body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T>,
    replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
    options: { settle: boolean; operation?: string } = { settle: true },
  ): Promise<T> {
    return this.mutate(options.operation ?? "unitOfWork", userId, meta, body, replay, {
      settle: options.settle,
      periods: false,
    });
  }

  /**
   * @internal How a subscription service brings a user's due period (`SubscriptionService` sets
   * it): credit operations and reads that find a period's grants expired call it, then run again;
   * so do operations refused for lack of credits, when it resolves to true (it brought a period).
   */
  bringPeriodsWith(hook: ((userId: string) => Promise<unknown>) | undefined): void {
    this.periodHook = hook;
  }

  /** @internal The service's clock. */
  now(): Date {
    return this.clock();
  }

  // -----------------------------------------------------------------------------------------------

  private deduct(
    operation: string,
    userId: string,
    amount: number,
    options: DeductOptions,
    allowDebt: boolean,
  ): Promise<JournalEntry> {
    let user: string;
    let n: number;
    let meta: EntryMeta;
    try {
      user = parse(UserId, userId, "userId");
      n = parse(Amount, amount, "amount");
      const o = options === NO_OPTIONS ? NO_OPTIONS : parse(DeductOptions, options, "options");
      meta = o === NO_OPTIONS ? NO_META : this.meta(operation, o, () => ({ amount: n, ...o }));
    } catch (error) {
      return Promise.reject(error as Error);
    }
    return this.mutate(operation, user, meta, (work) =>
      work.deduct(n, meta, { allowDebt, overdraftLimit: this.overdraftLimit }),
    );
  }

  /**
   * The entry fields of validated options `o`. `args`: the call's arguments as the fingerprint of
   * an idempotency key covers them — built only when there is a key (most calls have none).
   */
  private meta(
    operation: string,
    o: DeductOptions & { idempotencyKey?: string },
    args: () => Record<string, unknown>,
  ): EntryMeta {
    if (o === NO_OPTIONS) return NO_META;
    let print: string | undefined;
    if (o.idempotencyKey !== undefined) {
      const { correlationId: _c, idempotencyKey: _k, ...rest } = args();
      print = fingerprint(operation, rest);
    }
    return {
      description: o.description,
      idempotencyKey: o.idempotencyKey,
      fingerprint: print,
      correlationId: o.correlationId,
      metadata: o.metadata,
    };
  }

  /**
   * One unit of work: load, answer a repeated idempotency key with the first result, settle what
   * time has done, run `body`, save; then (only after the commit) mirror to the ledger file and
   * invalidate the cache.
   */
  private mutate<T>(
    operation: string,
    userId: string,
    meta: EntryMeta,
    body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
    replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
    options: RunOptions = SETTLE,
  ): Promise<T> {
    // Nobody listening: five property reads, no message (docs/observability.md).
    if (!traced(unitOfWorkChannel)) return this.run(operation, userId, meta, body, replay, options, undefined);
    const message: UnitOfWorkMessage = {
      operation,
      userId,
      store: this.db.name,
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
  private run<T>(
    operation: string,
    userId: string,
    meta: EntryMeta,
    body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
    replay: ((entry: JournalEntry, tx: DbTransaction) => Promise<T>) | undefined,
    options: RunOptions,
    message: UnitOfWorkMessage | undefined,
  ): Promise<T> {
    const periods = options.periods !== false && this.periodHook !== undefined;
    const unit = new UnitRun<T>(this.runDeps, userId, meta, body, replay, options.settle, periods, message);
    const run = (tx: DbTransaction) => unit.attempt(tx);
    const db = this.db;
    const again = () =>
      this.run(operation, userId, meta, body, replay, { settle: options.settle, periods: false }, message);
    let done: UnitOutcome<T> | Promise<UnitOutcome<T>>;
    if (db.transactionNow === undefined) done = db.transaction(userId, run);
    else {
      // A store in memory answers at once: no promise until the one this method returns.
      try {
        done = db.transactionNow(userId, run);
      } catch (error) {
        if (error instanceof PeriodDue) return this.afterPeriod(userId, again);
        if (periods && error instanceof InsufficientCreditsError)
          return this.afterRefusal(operation, userId, unit, error, again);
        return this.refusedOrFailed(operation, userId, unit, error);
      }
      if (!isPromiseLike(done)) {
        try {
          const value = this.committed(userId, done, message);
          return isPromiseLike(value) ? (value as Promise<T>) : Promise.resolve(value);
        } catch (error) {
          return Promise.reject(error as Error);
        }
      }
    }
    return Promise.resolve(done).then(
      (outcome) => this.committed(userId, outcome, message),
      (error: unknown) =>
        error instanceof PeriodDue
          ? this.afterPeriod(userId, again)
          : periods && error instanceof InsufficientCreditsError
            ? this.afterRefusal(operation, userId, unit, error, again)
            : this.refusedOrFailed(operation, userId, unit, error),
    );
  }

  /**
   * A period's grants expired as the operation settled the account: the subscription service brings
   * the next period (its own keyed unit of work, the one the renewal job runs, so a job or another
   * request at the same instant allocates once), then the operation runs again. Should that fail,
   * the operation still runs, as it would have without a subscription service.
   */
  private async afterPeriod<T>(userId: string, again: () => Promise<T>): Promise<T> {
    try {
      await this.periodHook?.(userId);
    } catch (error) {
      this.logger?.warn(
        { err: error, userId },
        "credit-management: could not bring the user's subscription period up to date",
      );
    }
    return again();
  }

  /**
   * A refusal for lack of credits may come from a period that has ended while none of its grants
   * was left to expire (spent, voided): nothing told the unit of work. The subscription service
   * brings the period if one is due (the same keyed work as `afterPeriod`) and says whether it did;
   * then the operation runs once more, else the refusal stands. (Found by the simulation, issue 26.)
   */
  private async afterRefusal<T>(
    operation: string,
    userId: string,
    unit: UnitRun<unknown>,
    error: InsufficientCreditsError,
    again: () => Promise<T>,
  ): Promise<T> {
    let brought: unknown = false;
    try {
      brought = await this.periodHook?.(userId);
    } catch (failure) {
      this.logger?.warn(
        { err: failure, userId },
        "credit-management: could not bring the user's subscription period up to date",
      );
      // The store could not say whether a period is due: a refusal now could be false (the new
      // period's credits may be there). The caller gets the storage error (503), to retry.
      if (failure instanceof StorageError || !(failure instanceof CreditError)) {
        throw failure;
      }
    }
    return brought === true ? again() : this.refusedOrFailed(operation, userId, unit, error);
  }

  /**
   * After the commit (never before): mirror to the ledger file and invalidate the cache — awaited
   * when the cache answers with a promise (a shared cache must not serve the old balance to the
   * caller's next read). The invalidation also ends the leases of reads in flight (`Cache.lease`),
   * in every process sharing the cache, so none of them caches what it read before this commit.
   */
  private committed<T>(
    userId: string,
    outcome: UnitOutcome<T>,
    message: UnitOfWorkMessage | undefined,
  ): T | Promise<T> {
    if (message !== undefined) message.entries += outcome.entries.length;
    if (outcome.holds !== undefined && holdChannel.hasSubscribers) publishHolds(userId, outcome.holds);
    if (outcome.entries.length > 0) {
      this.ledger?.recordTransactions(outcome.entries, outcome.canonicals);
      const deleting = this.cache?.invalidate(infoKey(userId));
      if (deleting !== undefined) return deleting.then(() => outcome.value);
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

  /** What `UnitRun` uses of this service (built once). */
  private readonly runDeps: UnitRunDeps = {
    clock: () => this.clock(),
    alerts: undefined,
    trial: undefined,
    includeHeldGrants: (work, tx, holds) => this.includeHeldGrants(work, tx, holds),
    addNotifications: (work, changes) => this.addNotifications(work, changes),
    checkpointEvery: undefined,
  };

  /** `feature_status_changed` for each feature whose allowed state this unit of work flipped. */
  private featureNotifications(work: AccountWork, after: Account): readonly Notification[] {
    if (!this.hasFeatures) return NO_NOTIFICATIONS;
    const was = work.loaded;
    const before = was === null ? 0 : was.balance - was.reserved;
    const now = after.balance - after.reserved;
    return featureFlips(before, now, this.features).map((f) =>
      newNotification(
        work.userId,
        "feature_status_changed",
        { ...f, available: now, previousAvailable: before },
        work.now,
        null,
      ),
    );
  }

  /**
   * The outbox rows of a change (none: nothing allocated). In id order: the domain events of its
   * journal entries (with `domainEvents` on), lapsed holds (their release is what may move the
   * alert level), what the unit of work recorded itself (subscription events), the alert crossing,
   * then the features it flipped.
   */
  private addNotifications(work: AccountWork, changes: Changes): void {
    const journal = this.domainEvents
      ? domainEvents(work.userId, changes.entries, changes, work.now)
      : NO_NOTIFICATIONS;
    const expired =
      changes.updateReservations.length === 0
        ? NO_NOTIFICATIONS
        : expiredHoldNotifications(changes.updateReservations, work.now);
    const recorded = eventNotifications(work.events, work.userId, work.now);
    const alerts = evaluateAlert(changes.account, changes.entries, this.alerts as Thresholds, work.now);
    const features = this.featureNotifications(work, changes.account);
    if (journal.length === 0 && expired.length === 0 && recorded.length === 0 && features.length === 0) {
      if (alerts.length > 0) changes.notifications = alerts;
    } else {
      changes.notifications = [...journal, ...expired, ...recorded, ...alerts, ...features];
    }
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
      this.clock(),
      `transaction_error:${error.code}:${seq}`,
    );
    try {
      await this.db.insertNotifications([row]);
    } catch (failure) {
      this.logger?.warn(
        { err: failure, userId },
        "credit-management: could not record a transaction_error notification",
      );
    }
  }

  /**
   * The account, after settling what lapsed since it was last touched (so reads never report
   * expired credits or lapsed holds). One read when nothing is due.
   */
  private async settledAccount(userId: string, now: Date): Promise<Account | null> {
    const account = await this.db.getAccount(userId);
    if (account?.nextExpiryAt && account.nextExpiryAt.getTime() <= now.getTime()) {
      await this.mutate("settle", userId, {}, async () => undefined);
      return this.db.getAccount(userId);
    }
    return account;
  }

  /** Loads the grants that holds point at but that are not open (fully held, closed). */
  private async includeHeldGrants(work: AccountWork, tx: DbTransaction, holds: readonly Reservation[]): Promise<void> {
    const missing = new Set<string>();
    for (const h of holds)
      for (const p of h.allocations) if (work.getGrant(p.grantId) === undefined) missing.add(p.grantId);
    if (missing.size > 0) work.include(await tx.getGrants([...missing]));
  }

  /**
   * The active hold `id` with the grants it earmarked in the work. Synchronous when the account's
   * loaded state has them all (the usual case); otherwise reads what is missing.
   */
  private activeHold(work: AccountWork, tx: DbTransaction, id: string): Reservation | Promise<Reservation> {
    const hold = work.getHold(id);
    if (
      hold !== undefined &&
      hold.status === "active" &&
      hold.allocations.every((p) => work.getGrant(p.grantId) !== undefined)
    ) {
      return hold;
    }
    return this.readActiveHold(work, tx, id);
  }

  private async readActiveHold(work: AccountWork, tx: DbTransaction, id: string): Promise<Reservation> {
    const hold = work.getHold(id) ?? (await tx.getReservation(id));
    if (hold === null || hold === undefined)
      throw new NotFoundError(`Reservation ${id} not found.`, { reservationId: id });
    // A hold that lapsed (just now, in settlement, or earlier) says so with its own error.
    if (hold.status === "expired") throw new ReservationExpiredError(id, hold.expiresAt);
    if (hold.status !== "active") throw new ReservationNotActiveError(id, hold.status);
    await this.includeHeldGrants(work, tx, [hold]);
    return hold;
  }

  /**
   * The user whose hold `id` is (`NotFoundError` if none): all a commit or release by id needs to
   * know before its unit of work, which reads the hold itself. A store that can say it without
   * reading (and copying) the whole hold does (`DbManager.reservationOwner`).
   */
  private ownerOfReservation(id: string): string | Promise<string> {
    const db = this.db;
    if (db.reservationOwner === undefined) return this.findReservation(id).then((r) => r.userId);
    let owner: string | null | Promise<string | null>;
    try {
      owner = db.reservationOwner(id);
    } catch (error) {
      return Promise.reject(error as Error);
    }
    if (typeof owner === "string") return owner; // (a store in memory: no promise)
    return Promise.resolve(owner).then((found) => {
      if (found === null) throw new NotFoundError(`Reservation ${id} not found.`, { reservationId: id });
      return found;
    });
  }

  private async findReservation(id: string, userId?: string): Promise<Reservation> {
    const r = await this.db.getReservation(id, userId);
    // A store may answer by id alone (`defineStore` drivers): another user's hold is not found either.
    if (r === null || (userId !== undefined && r.userId !== userId))
      throw new NotFoundError(`Reservation ${id} not found.`, { reservationId: id });
    return r;
  }
}

/** A repeated `reserveCredits` key: the hold its first entry placed. */
async function replayHold(entry: JournalEntry, tx: DbTransaction): Promise<Reservation> {
  const r = await tx.getReservation(entry.reservationId ?? "");
  if (r === null) throw new NotFoundError(`Reservation of idempotency key ${entry.idempotencyKey} not found.`);
  return r;
}

/** What `getUserCreditsInfo` answers for an account as read (none yet: all zero), as a new object. */
function creditsInfo(userId: string, account: Account | null): CreditsInfo {
  return account
    ? {
        userId,
        balance: account.balance,
        reserved: account.reserved,
        available: account.balance - account.reserved,
        debt: account.debt,
      }
    : { userId, balance: 0, reserved: 0, available: 0, debt: 0 };
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
