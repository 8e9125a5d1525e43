import type { Logger } from "../logger.js";
import type { Cache } from "../cache/index.js";
import type { DbManager } from "../db/types.js";
import type { CorePart } from "../part-builds.js";
import { compareGrants, isDue } from "../domain/order.js";
import type { AuditReport } from "../domain/replay.js";
import { decideFeature, type CheckResult, type FeatureRule } from "../domain/checks.js";
import { type Spend, tightestLimit } from "../domain/limits.js";
import { ConfigurationError, ConflictError, NotFoundError, RuleViolationError, ValidationError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import { auditAccount, latestCheckpoint, writeCheckpoint } from "./audit.js";
import type { AuditCheck } from "./audit-check.js";
import type { UnitHook } from "./unit-of-work.js";
import { SpendLimits } from "./spend-limits.js";
import { getReversals, reverseCharge } from "./reversals.js";
import type { ChargeReversals } from "../domain/reversal.js";
import { BalanceReads, type CreditsState, inUnit, workCredits } from "./balance-reads.js";
import { activePlanId } from "./subscription-periods.js";
import { NO_SPEND } from "../domain/entry-meta.js";
import { copy, creditHistory, expiringCredits, type ExpiringCredits, type HistoryPage } from "./history.js";
import { MAX_SALE } from "../models/cost-basis.js";
import { checkSaleWorth } from "../domain/cost-basis.js";
import type { JournalHead, JournalKeysOptions, MutationOptions } from "../models/inputs.js";
import type { RemoveLimitInput, SpendLimitInput } from "../models/limits.js";
import type { CreditsInfo } from "../models/records.js";
import { EntityId, UserId, Amount } from "../models/common.js";
import type { Grant, Reservation } from "../models/entities.js";
import {
  AddCreditsOptions,
  AsOf,
  AuditOptions,
  CheckpointOptions,
  CommitOptions,
  DeductOptions,
  ExpiringDays,
  GrantsQuery,
  HistoryQuery,
  ReleaseOptions,
  ReserveOptions,
  ReverseChargeOptions,
  type TrialCredits,
  type FeatureRules,
  CheckOptions,
  CreditsInfoOptions,
  VoidGrantOptions,
} from "../models/inputs.js";
import type { SpendLimit, SpendLimitStatus } from "../models/limits.js";
import { parse } from "../models/parse.js";
import type { JournalEntry } from "../models/records.js";
import { findReservation, ownerOfReservation } from "./hold-lookup.js";
import { CreditCore, NO_META, moduleContext } from "./credit-core.js";
import type { CreditModule } from "../module.js";

/**
 * Options of `new CoreCreditService()`: the store, the ledger, the cache, the clock and the defaults of holds
 * and trials. @public
 */
export interface CoreCreditServiceOptions {
  /** The store. */
  db: DbManager;
  /** The audit ledger; omit for none (journal entries are still stored). */
  ledger?: LedgerLogger;
  /** Caches `getUserCreditsInfo` reads. Never consulted for a decision that moves credits. */
  cache?: Cache;
  /** Source of "now". Default `() => new Date()`. */
  clock?: () => Date;
  /** Where warnings and errors are logged. Default: none. */
  logger?: Logger;
  /** TTL of a hold when `reserveCredits` gets none, in seconds. Default 900. */
  defaultReservationTtlSeconds?: number;
  /**
   * How far below zero `available` may go through usage already delivered — after-service
   * deductions, late usage, commits beyond a hold, fixed-price metering — in credits, or
   * `"unlimited"` (docs/concepts.md, "Overdraft and debt"). Default 0: such usage takes what is
   * available and never makes debt.
   */
  overdraftLimit?: number | "unlimited";
  /**
   * The overdraft limit of each unit by name, in that unit, or `"unlimited"` (docs/units.md, "Debt
   * per unit"). A unit not listed has none (0); the default unit's is `overdraftLimit` unless this
   * names it.
   */
  overdraftLimits?: Record<string, number | "unlimited">;
  /**
   * How many days back `deductCredits` and `deductCreditsAfterService` accept an `occurredAt`
   * (docs/usage.md, "Late usage"): 0 to 366, default 35. Older usage is a `LateUsageError`.
   */
  lateUsageWindowDays?: number;
  /** TTL of cached credit-info reads, in seconds. Default 30. */
  cacheTtlSeconds?: number;
  /**
   * Records notification events in the outbox, in the unit of work that causes them
   * (`notificationsPart(options)`, docs/notifications.md): low credits below its thresholds,
   * exhaustion, restoration, alerts, lapsed holds, refusals for lack of credits, and a domain event
   * per journal entry with its `domainEvents`. Omitted: no events are recorded.
   */
  notifications?: CorePart<"notifications">;
  /**
   * Trial credits granted once per user, in the unit of work that first creates the account (see
   * `grantTrial`): never to an account that existed before, whatever its balance. Omitted: none.
   */
  trial?: TrialCredits;
  /**
   * Per-feature rules for `check()`: `{ [feature]: { minAvailable } }`. With notifications on
   * (`notifications`), a change that flips a feature records `feature_status_changed`.
   */
  features?: FeatureRules;
  /**
   * Writes a checkpoint entry in the unit of work that takes an account's journal past a multiple
   * of this many entries (docs/operations.md, "Checkpoints and archival"). Default: none (the
   * `checkpointAccounts` job writes them).
   */
  checkpointEvery?: number;
  /**
   * How long, in ms, a call whose commit was sent but not answered (the connection to the store
   * died after COMMIT) looks for what it wrote once the store answers again, before it throws
   * `OutcomeUnknownError` (docs/concepts.md, "Certain and uncertain errors"). 0 to 600,000;
   * default 5,000.
   */
  outcomeWaitMs?: number;
  /**
   * Brings a user's due subscription period before an operation or read that finds it ended, as the
   * renewal job would (docs/subscriptions.md, "Periods start on time"). `createCreditManager` sets it;
   * a `SubscriptionService` built over this service needs it (else a `ConfigurationError`).
   * Default false: no subscriptions over this service.
   */
  subscriptions?: boolean;
  /**
   * What `audit()` checks besides the replay: each module's own check of the account (ARCHITECTURE.md,
   * "Seams"; `CreditService` adds the revenue module's). Default none.
   */
  auditChecks?: readonly AuditCheck[];
  /**
   * What modules decide in every unit of work that writes: each hook's outbox rows are saved with
   * the unit (ARCHITECTURE.md, "Seams"; `CreditService` adds the billing module's auto top-up).
   * Default none.
   */
  unitHooks?: readonly UnitHook[];
  /**
   * The modules this service carries (docs/modules.md, "Writing a module"): their error codes,
   * notification and event types and grant sources are accepted, their unit hooks and audit checks
   * run, and each module's `init` is called once with the core's context. Default none.
   * @beta
   */
  modules?: readonly CreditModule[];
  /**
   * Keys the journal's hash chain (docs/concepts.md, "A keyed chain"): new entries are signed with
   * HMAC-SHA256 under `keys[current]` and name it (`keyId`); `audit()` verifies each keyed entry with
   * the key it names. Keep the keys outside the database. Default: none (plain SHA-256).
   */
  journalKeys?: JournalKeysOptions;
}

export type { ExpiringCredits, HistoryPage } from "./history.js";
export type { ChargeReversals } from "../domain/reversal.js";

/**
 * Credits of one account at a time: additions, deductions, holds, expiry, voids, history and
 * audit. Every mutation is one unit of work on the account (`DbManager.transaction`), validated by
 * the zod models before anything is read, and resolves to its journal entry (or reservation).
 * @public
 */
export class CoreCreditService {
  /** The store this service reads and writes. */
  readonly db: DbManager;
  /** What this package's other services share of this one (src/core/services/credit-core.ts). */
  private readonly core: CreditCore;
  /** Balance and limit reads (src/core/services/balance-reads.ts). */
  private readonly reads: BalanceReads;
  /** Spend limits (src/core/services/spend-limits.ts). */
  private readonly limits: SpendLimits;

  /** The modules' checks `audit()` runs after the replay. */
  private readonly auditChecks: readonly AuditCheck[];

  /** A credit service over `options.db`, with the core's operations alone. */
  constructor(options: CoreCreditServiceOptions) {
    const core = new CreditCore(options);
    this.auditChecks = [
      ...(options.modules ?? []).flatMap((m) => (m.auditCheck === undefined ? [] : [m.auditCheck])),
      ...(options.auditChecks ?? []),
    ];
    this.core = core;
    this.db = core.db;
    this.reads = new BalanceReads(core.db, core.cache, core.clock, core.units);
    this.limits = new SpendLimits(core, this.reads);
    // Each module gets the core's context once (docs/modules.md, "Writing a module").
    const modules = core.registry.modules;
    for (const m of modules) {
      if (m.store !== undefined) core.db.usePart?.(m.store);
      // Its own context: what it declared (its column, its capabilities) is what it may change.
      m.init?.(moduleContext(core, m));
    }
  }

  /**
   * Now by the manager's clock (the `clock` option; the real clock by default): the time its
   * operations record, holds lapse and limit windows end by.
   */
  now(): Date {
    return this.core.clock();
  }

  /** Adds credits as a new grant (after paying any debt). */
  async addCredits(userId: string, amount: number, options: AddCreditsOptions = {}): Promise<JournalEntry> {
    const user = parse(UserId, userId, "userId");
    const n = parse(Amount, amount, "amount");
    const o = parse(AddCreditsOptions, options, "options");
    if (o.source !== undefined) this.core.registry.checkGrantSource(o.source);
    checkSaleWorth(n, o.costBasis, MAX_SALE);
    const expiresAt = o.expiresAt ?? null;
    const effectiveAt = o.effectiveAt ?? null;
    checkStart(effectiveAt, expiresAt);
    const past = (now: Date) => expiresAt !== null && expiresAt.getTime() <= now.getTime();
    const refuse = () =>
      new RuleViolationError(`Invalid options.expiresAt: ${expiresAt?.toISOString()} is not in the future`, [
        { path: "expiresAt", message: "must be in the future" },
      ]);
    // Without a key, refused before any work; with one, only once it is known not to be a retry
    // (a retry of an addition that was made while its expiry was ahead answers with the first entry).
    if (o.idempotencyKey === undefined && past(this.core.clock())) throw refuse();
    const meta = this.core.meta("addCredits", o, () => ({
      amount: n,
      ...o,
      expiresAt: o.expiresAt?.toISOString() ?? null,
      // Only when given, so a key's fingerprint without a start is what it always was.
      ...(o.effectiveAt === undefined ? {} : { effectiveAt: effectiveAt?.toISOString() ?? null }),
    }));
    return this.core.units.mutate("addCredits", user, meta, (work) => {
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
          scope: o.scope ?? null,
          costBasis: o.costBasis ?? null,
          effectiveAt,
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
    // Answered from what the unit of work left (not read again).
    const read = await this.core.units.mutate("openAccount", user, NO_META, workCredits);
    return this.reads.stateOf(user, read, NO_SPEND, this.core.clock()).info;
  }

  /** Deducts credits; refuses (`InsufficientCreditsError`) to take `available` below zero. */
  deductCredits(userId: string, amount: number, options: DeductOptions = {}): Promise<JournalEntry> {
    return this.deduct("deductCredits", userId, amount, options, false);
  }

  /**
   * Deducts for usage already delivered: takes what unheld grants have and records the rest as
   * debt, within the overdraft limit. Held credits are never taken.
   */
  deductCreditsAfterService(userId: string, amount: number, options: DeductOptions = {}): Promise<JournalEntry> {
    return this.deduct("deductCreditsAfterService", userId, amount, options, true);
  }

  /**
   * Places a hold on `amount` credits for `ttlSeconds` (default 900). Resolves to the reservation.
   * With `minimum` (docs/concepts.md, "Holds"): a hold for what is there — `amount`, or what the
   * spender and feature may spend now when that is less, refused below `minimum`; the
   * reservation's `amount` is what it holds.
   */
  async reserveCredits(userId: string, amount: number, options: ReserveOptions = {}): Promise<Reservation> {
    const user = parse(UserId, userId, "userId");
    const n = parse(Amount, amount, "amount");
    const o = parse(ReserveOptions, options, "options");
    if (o.minimum !== undefined && o.minimum > n) {
      throw new ValidationError(`Invalid options.minimum: ${o.minimum} is more than the amount (${n})`, [
        { path: "minimum", message: "must be at most the amount" },
      ]);
    }
    return this.core.hold(user, n, o, true);
  }

  /**
   * Captures a hold: all of it by default, or `amount` (less returns the rest to its grants; more
   * takes the excess like an after-service deduction). Resolves to the commit entry.
   */
  async commitReservedCredits(reservationId: string, options: CommitOptions = {}): Promise<JournalEntry> {
    const id = parse(EntityId, reservationId, "reservationId");
    const { userId, ...o } = parse(CommitOptions, options, "options");
    if (o.amount === undefined && o.idempotencyKey !== undefined) {
      // With a key, "the full hold" is that hold's amount: a retry that names it is the same call.
      const found = await findReservation(this.db, id, userId);
      return this.core.commitHold(found.userId, id, { ...o, amount: found.amount });
    }
    // A given owner routes the unit of work; its reads are the owner's, so another user's hold is not found.
    return this.core.commitHold(userId ?? (await ownerOfReservation(this.db, id)), id, o);
  }

  /** Returns everything a hold earmarked. Resolves to the release entry. */
  async releaseReservedCredits(reservationId: string, options: ReleaseOptions = {}): Promise<JournalEntry> {
    const id = parse(EntityId, reservationId, "reservationId");
    const { userId, ...o } = parse(ReleaseOptions, options, "options");
    // A given owner routes the unit of work, as for a commit.
    return this.core.releaseHold(userId ?? (await ownerOfReservation(this.db, id)), id, o);
  }

  /**
   * Gives back `options.amount` credits (default: all that is left) of the charge `entryId` of
   * `userId` — a deduction or a hold's capture — exactly to the grants it drew from, in its
   * proportions, their expiry, priority, scope and cost basis unchanged; the debt it made first
   * (docs/concepts.md, "Giving a charge back"). Never more than the charge, whatever runs at once:
   * the check is inside the account's unit of work. Resolves to the `reverse` entry (a retry with
   * the same `idempotencyKey`: the first one). `NotFoundError`: no entry of that id on this account;
   * `RuleViolationError`: not a charge (a take-back, an addition, …), or more than is left of it.
   */
  async reverseCharge(userId: string, entryId: string, options: ReverseChargeOptions): Promise<JournalEntry> {
    const user = parse(UserId, userId, "userId");
    const id = parse(EntityId, entryId, "entryId");
    return reverseCharge(this.core, user, id, parse(ReverseChargeOptions, options, "options"));
  }

  /**
   * The charge `entryId` of `userId`, its `reverse` entries (oldest first), what they gave back
   * (`reversed`) and what is left to give back (`remaining`). `NotFoundError` and
   * `RuleViolationError` as `reverseCharge`'s.
   */
  async getReversals(userId: string, entryId: string): Promise<ChargeReversals> {
    const user = parse(UserId, userId, "userId");
    const id = parse(EntityId, entryId, "entryId");
    return getReversals(this.core, user, id);
  }

  /** Removes what is left of a grant (refunds, disputes). Held parts go when their hold ends. */
  async voidGrant(grantId: string, options: VoidGrantOptions = {}): Promise<JournalEntry> {
    const id = parse(EntityId, grantId, "grantId");
    const { userId, ...o } = parse(VoidGrantOptions, options, "options");
    // Keyed by the owner when given: one shard, and another user's grant is not found.
    const grant = await this.db.getGrant(id, userId);
    if (grant === null || (userId !== undefined && grant.userId !== userId))
      throw new NotFoundError(`Grant ${id} not found.`, { grantId: id });
    const meta = this.core.meta("voidGrant", o, () => ({ grantId: id, ...o }));
    return this.core.units.mutate("voidGrant", grant.userId, meta, async (work, tx) => {
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
    const now = this.core.clock();
    if (at !== undefined && at.getTime() > now.getTime()) {
      throw new RuleViolationError(`Invalid asOf: ${at.toISOString()} is in the future`, [
        { path: "asOf", message: "must not be in the future" },
      ]);
    }
    return (await this.core.settleAsOf(user, at)).expired;
  }

  /**
   * Balance, reserved, available and debt. Settles due expiries first, so the numbers are current.
   * `available` is what a spend by `options.spender` on `options.feature` may use (omitted: a spend
   * naming neither); an account given scoped grants also has `scoped`, their unheld credits per
   * scope (docs/teams-and-limits.md, "Scoped credits").
   */
  async getUserCreditsInfo(userId: string, options: CreditsInfoOptions = {}): Promise<CreditsInfo> {
    const user = parse(UserId, userId, "userId");
    const o = parse(CreditsInfoOptions, options, "options");
    const unit = this.core.unitOf(o.feature, o.unit) ?? null;
    const info = (await this.reads.state(user, { spender: o.spender ?? null, feature: o.feature ?? null })).info;
    return inUnit(info, unit);
  }

  /**
   * Replaces the account's spend limits (docs/teams-and-limits.md): each caps what the spends it
   * applies to (its spender's, its feature's, or all) may take per window. A limit kept with the
   * same spender, feature and window keeps what its window has counted. Recorded as a `limits`
   * journal entry. Resolves to the limits as `getLimits` reports them.
   */
  setLimits(userId: string, limits: SpendLimitInput[], options: MutationOptions = {}): Promise<SpendLimitStatus[]> {
    return this.limits.setLimits(userId, limits, options);
  }

  /**
   * Adds one spend limit, or changes the one with the same spender, feature and window (it keeps
   * what its window counted), in the account's unit of work: the other limits stay exactly as they
   * are, so two callers changing different limits at once both keep their change, where a read of
   * `getLimits` followed by `setLimits` would lose one (docs/teams-and-limits.md). Recorded as a
   * `limits` journal entry. Resolves to all the account's limits as `getLimits` reports them.
   */
  setLimit(userId: string, limit: SpendLimitInput, options: MutationOptions = {}): Promise<SpendLimitStatus[]> {
    return this.limits.setLimit(userId, limit, options);
  }

  /** The account's spend limits: each with its window now, what it counted and what is left. */
  getLimits(userId: string): Promise<SpendLimitStatus[]> {
    return this.limits.getLimits(userId);
  }

  /**
   * Removes the limits with exactly this spender and feature (omitted: none), and this window when
   * given. Resolves to the limits left. Recorded as a `limits` entry when it removed any.
   */
  removeLimit(userId: string, which: RemoveLimitInput, options: MutationOptions = {}): Promise<SpendLimitStatus[]> {
    return this.limits.removeLimit(userId, which, options);
  }

  /**
   * "Allowed?": whether `userId` may use `feature` and/or spend `amount` now: not when the
   * feature's rule turns it off, else `decideCheck` (its `minAvailable`; a feature with no rule in
   * `features` is paid from the pool like any spend), then the spend limits (docs/trial-and-checks.md).
   * Reads `getUserCreditsInfo`, so it is served from the cache when there is one and is never stale
   * after this account's own writes (they invalidate it). An advisory read: a deduction still
   * decides for itself. `getCustomerState` answers each feature with the same rule.
   */
  async check(userId: string, options: CheckOptions = {}): Promise<CheckResult> {
    const user = parse(UserId, userId, "userId");
    const o = parse(CheckOptions, options, "options");
    const rule = o.feature === undefined ? undefined : this.core.features[o.feature];
    const spend = { spender: o.spender ?? null, feature: o.feature ?? null };
    const unit = this.core.unitOf(o.feature, o.unit) ?? null;
    // Only a rule that names plans needs the subscription read.
    const plan = rule?.plans === undefined ? null : await activePlanId(this.db, user);
    // In another unit than the default one: its figures, and the spend limits in it (docs/units.md).
    const inUnitOf = (s: CreditsState): CreditsState => (unit === null ? s : { ...s, info: inUnit(s.info, unit) });
    const spent: Spend = { ...spend, unit };
    const state = inUnitOf(await this.reads.state(user, spend));
    const decision = this.decide(state, rule, plan, o.amount, spent);
    // A denial answered from the cache is answered again from the store's current state, not from
    // a copy another process may have outdated (its writes invalidate its own cache, not ours):
    // docs/storage.md, "Caches: what each may answer".
    if (decision.allowed || state.fresh) return decision;
    const now = this.core.clock();
    return this.decide(
      inUnitOf(this.reads.stateOf(user, await this.reads.settled(user, now), spend, now)),
      rule,
      plan,
      o.amount,
      spent,
    );
  }

  /** `decideFeature` over a read of the account: its rule, `decideCheck`, then the spend limits that apply. */
  private decide(
    state: { info: CreditsInfo; limits: SpendLimit[] | null },
    rule: FeatureRule | undefined,
    plan: string | null,
    amount: number | undefined,
    spend: Spend,
  ): CheckResult {
    const limits = state.limits;
    return decideFeature(state.info.available, rule, plan, amount, () =>
      limits === null ? null : tightestLimit(limits, spend, this.core.clock().getTime()),
    );
  }

  /**
   * The journal, newest first, with cursor paging and filters. With `spender` or `feature` the
   * store's pages are filtered here (any store, no index of its own): one call reads at most
   * `HISTORY_SCAN` entries, so a page may hold fewer than `limit` with `nextCursor` still set.
   */
  async getCreditHistory(userId: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    const user = parse(UserId, userId, "userId");
    return creditHistory(this.db, user, parse(HistoryQuery, query, "query"));
  }

  /** Unspent, unheld credits that expire within `days` days from now. */
  async getExpiringCredits(userId: string, days: number): Promise<ExpiringCredits> {
    const user = parse(UserId, userId, "userId");
    return expiringCredits(this.db, user, parse(ExpiringDays, days, "days"), this.core.clock().getTime());
  }

  /** A user's grants with their `remaining`, `expiresAt` and `priority`, in burn-down order. */
  async getGrants(userId: string, options: GrantsQuery = {}): Promise<Grant[]> {
    const user = parse(UserId, userId, "userId");
    const o = parse(GrantsQuery, options, "options");
    await this.core.settleDue(user, this.core.clock());
    const grants = await this.db.listGrants(user, { includeInactive: o.includeInactive === true });
    return grants.sort(compareGrants).map(copy);
  }

  /** A reservation by id. */
  async getReservation(reservationId: string): Promise<Reservation> {
    return copy(await findReservation(this.db, parse(EntityId, reservationId, "reservationId")));
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
    if (o.head !== undefined && o.head.userId !== user)
      throw new ValidationError(
        `Invalid options.head: it is the head of ${JSON.stringify(o.head.userId)}, not of ${JSON.stringify(user)}`,
        [{ path: "head.userId", message: "another account's head" }],
      );
    return auditAccount(this.db, user, o, this.auditChecks, this.core.keyring?.keys);
  }

  /**
   * The head of the user's hash chain — `{ userId, seq, hash }` of its latest entry — to keep outside
   * the database (docs/concepts.md, "A keyed chain"); `audit(userId, { head })` then finds the journal
   * up to it rewritten or cut. Null when the account has no entries.
   */
  async journalHead(userId: string): Promise<JournalHead | null> {
    const user = parse(UserId, userId, "userId");
    const [last] = await this.db.listJournal(user, { order: "desc", limit: 1 });
    return last === undefined ? null : { userId: user, seq: last.seq, hash: last.hash };
  }

  /** The user's latest checkpoint entry, if any. */
  async latestCheckpoint(userId: string): Promise<JournalEntry | undefined> {
    return latestCheckpoint(this.db, parse(UserId, userId, "userId"));
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
    return writeCheckpoint(this.db, this.core.units, user, o.minEntries ?? 1);
  }

  // -----------------------------------------------------------------------------------------------

  private async deduct(
    operation: string,
    userId: string,
    amount: number,
    options: DeductOptions,
    allowDebt: boolean,
  ): Promise<JournalEntry> {
    const user = parse(UserId, userId, "userId");
    const n = parse(Amount, amount, "amount");
    return this.core.deduct(operation, user, n, parse(DeductOptions, options, "options"), allowDebt);
  }
}

/**
 * The core of `credits`, for the core's own services built over a `CoreCreditService` (subscriptions,
 * expiry, notifications, the payments' units of work). A `ConfigurationError` for an object that is
 * no `CoreCreditService` (a `credits` option given something else). Only src/core uses it: modules
 * get the core's context through their `init` (src/core/module.ts), the rest the public methods.
 * @internal
 */
export function creditCore(credits: CoreCreditService): CreditCore {
  if (!(credits instanceof CoreCreditService))
    throw new ConfigurationError(
      "[credit-management] credits must be a CreditService (createCreditManager's, or new CreditService)",
    );
  return credits["core"];
}

/**
 * A grant's `expiresAt` must be after its start (docs/units.md, "Grants that start later"):
 * refused before anything is read.
 */
function checkStart(effectiveAt: Date | null, expiresAt: Date | null): void {
  if (effectiveAt === null || expiresAt === null || expiresAt.getTime() > effectiveAt.getTime()) return;
  throw new ValidationError(
    `Invalid options.expiresAt: ${expiresAt.toISOString()} is not after options.effectiveAt ${effectiveAt.toISOString()}`,
    [{ path: "expiresAt", message: "must be after effectiveAt" }],
  );
}
