import { AsyncLocalStorage } from "node:async_hooks";
import { createHash } from "node:crypto";
import { warnOnFailure } from "../../core/logger.js";
import {
  ConfigurationError,
  IdempotencyConflictError,
  ReservationExpiredError,
  ReservationNotActiveError,
} from "../../core/errors.js";
import {
  MAX_METER_KEY,
  NonNegativeAmount,
  parse,
  type JournalEntry,
  type MeterOptions,
  type RecordedUsage,
} from "../../models-entry.js";
import type { PriceBook } from "../pricing/rules.js";
import { recordOf, type PricingService, type UsageInput } from "../pricing/service.js";
import type { ParsedReserveOptions } from "../../core/services/credit-core.js";
import type { ModuleContext } from "../../core/module.js";
import { meteringChannel, type MeteringMessage } from "./diagnostics.js";

/** What one metered call did with its hold, reported once it is settled. @public */
export interface MeterOutcome {
  /** The account the call was metered on. */
  userId: string;
  /** The hold the call spent from. */
  reservationId: string;
  /** Credits held before the call. */
  estimate: number;
  /** `committed`: usage was charged (possibly 0 of the hold); `released`: the hold returned whole. */
  outcome: "committed" | "released";
  /** Credits charged (0 when released). */
  charged: number;
  /**
   * Why the hold was released: the call failed, measured nothing, or its client went away;
   * `settle-failed`: the call was served but its charge failed (the store was down, …: `error`).
   */
  releaseReason?: "error" | "no-usage" | "aborted" | "settle-failed" | (string & {});
  /** The error of a settle that failed (`releaseReason: "settle-failed"`): nothing was charged. */
  error?: unknown;
  /** Everything `recordUsage` recorded, in order, as priced. */
  usages: RecordedUsage[];
  /**
   * The hold lapsed (TTL) before the call ended — or, for a keyed call, another attempt released
   * it: its credits had gone back, so the usage was charged as an after-service deduction instead
   * of a commit.
   */
  chargedAfterService?: boolean;
  /**
   * Keyed calls: another attempt of the same `idempotencyKey` was charged first, with other usage.
   * This attempt's usage (in `usages`) was not charged; `charged` and `entry` are that charge, the
   * one charge of the call. (An attempt that shared the charged attempt's hold and measured the same
   * usage gets the same charge back as an idempotent replay, without this flag.)
   */
  replayed?: boolean;
  /** Usage beyond what the overdraft limit let us charge (the hold itself was charged in full). */
  shortfall?: number;
  /**
   * The commit (or after-service deduction) entry; null when released or nothing was charged, and
   * for a call served from a credit lease (`leased`: its usage is settled with the lease's window).
   */
  entry: JournalEntry | null;
  /**
   * Served from a credit lease (the metering middlewares' `lease` option, docs/metering.md,
   * "Leases"): the estimate was held inside this process's block of the user's credits and the
   * usage charged from it, settled in the window's one journal entry. `reservationId` is the
   * block's hold.
   */
  leased?: boolean;
  /**
   * A fixed-price request of the HTTP metering middlewares (their `price` option): no hold
   * (`reservationId` is empty, `estimate` is the price), charged by one deduction or not at all.
   */
  fixedPrice?: boolean;
}

/** The usage context of one metered call, reachable anywhere below it through `currentMeter()`. @public */
export interface MeterContext {
  /** The account the call is metered on. */
  readonly userId: string;
  /** The hold the call spends from. */
  readonly reservationId: string;
  /** The credits held for the call. */
  readonly estimate: number;
  /** Usages recorded so far, as priced. */
  readonly usages: readonly RecordedUsage[];
  /** The version of the price book this call prices tokens with (the one in force when its hold was placed); null without a book. */
  readonly priceBook: string | null;
  /** Σ recorded amounts. */
  readonly used: number;
  /** True once the hold was committed or released: later usage is not billed. */
  readonly settled: boolean;
  /** Records usage in this call; false (and a warning) if the call is already settled. */
  recordUsage(usage: UsageInput): boolean;
}

/**
 * One store per process, even if the ESM and the CJS build are both loaded (the dual-package
 * hazard): `recordUsage` imported one way must find a call metered the other way.
 */
const STORAGE_KEY = Symbol.for("credit-management.meter-context");
const storage: AsyncLocalStorage<MeterSession> = ((globalThis as Record<symbol, unknown>)[STORAGE_KEY] ??=
  new AsyncLocalStorage<MeterSession>()) as AsyncLocalStorage<MeterSession>;

/**
 * Records usage in the metered call this code runs under (the original system's `addLlmUsage`):
 * credits (`{ amount: 312, model: "gpt-4o-mini", provider: "openai" }`), tokens priced through the
 * manager's price book (`{ model, inputTokens, outputTokens, cachedTokens? }`), or money converted
 * at its currency rate (`{ cost: "0.05", currency: "USD" }`), see docs/llm-metering.md. The usages
 * are summed into the amount committed and stored, as priced, in the commit entry's metadata.
 * A usage the book cannot price is refused here (`UnknownModelError`, `ValidationError`) and not
 * recorded.
 *
 * Returns false when the metered call has already been settled (e.g. a detached task that outlived
 * its request): that usage is not billed, and the manager's logger gets a warning. Outside any
 * metered call it throws a `ConfigurationError` — unbilled usage should be loud. Use
 * `currentMeter()` to check first in code that also runs unmetered.
 * @public
 */
export function recordUsage(usage: UsageInput): boolean {
  const session = storage.getStore();
  if (session === undefined) {
    throw new ConfigurationError(
      "recordUsage() was called outside a metered call (credits.meter(), creditMetering() or creditMeteringMiddleware()).",
    );
  }
  return session.recordUsage(usage);
}

/**
 * The original system's `addLlmUsage(model, provider, cost, metadata)`: records a call that cost
 * `cost` (major units of the price book's default currency, e.g. 0.05 dollars), converted to
 * credits at the book's rate. `recordUsage({ cost, currency, model, provider, metadata })` is the
 * same with a currency of your choice.
 * @public
 */
export function addLlmUsage(
  model: string,
  provider: string,
  cost: number | string,
  metadata?: Record<string, unknown>,
): boolean {
  const usage: UsageInput = { model, provider, cost };
  if (metadata !== undefined) (usage as { metadata?: unknown }).metadata = metadata;
  return recordUsage(usage);
}

/** The metered call this code runs under, or undefined. @public */
export function currentMeter(): MeterContext | undefined {
  return storage.getStore()?.context;
}

/**
 * What a session uses of the core, from the metering module's context (`ModuleContext`,
 * src/core/module.ts): the hold operations for input already validated (the meter's options once,
 * when it opens; each usage when it is recorded), so one metered call runs no model twice; the
 * store, to read the charge another attempt of a keyed call made; the price book (each session
 * pins the version in force when it opens), the ledger and the logger.
 * @internal
 */
export type SessionDeps = Pick<
  ModuleContext,
  "hold" | "commitHold" | "releaseHold" | "chargeUpToLimit" | "db" | "ledger" | "logger"
> & { readonly pricing: PricingService | undefined };

/** What metering uses of the module context `ctx`, with the price book `pricing` (made once per `CreditService`). @internal */
export function sessionDeps(ctx: ModuleContext, pricing: PricingService | undefined): SessionDeps {
  return {
    hold: ctx.hold,
    commitHold: ctx.commitHold,
    releaseHold: ctx.releaseHold,
    chargeUpToLimit: ctx.chargeUpToLimit,
    db: ctx.db,
    ledger: ctx.ledger,
    logger: ctx.logger,
    pricing,
  };
}

/**
 * Credits a lease set aside in its block for one request (the fixed-price routes' check, docs/metering.md,
 * "Leases"), until the request is charged or given back.
 * @beta
 */
export interface SetAside {
  /**
   * Charges them from the block at once: true when it still serves (a line of its window, settled
   * with it). False when it does not (it is settling, ended, or stops serving): the credits left the
   * block and the caller charges them through `charge()`.
   */
  charge(reason: string | undefined): boolean;
  /** Gives them back to the block (the request was not charged). */
  giveBack(): void;
}

/**
 * What metering's routes use of a lease (`manager.credits.leases()`, the leases module, docs/metering.md,
 * "Leases"): metering owns this shape, the leases module implements it, so metering's code calls
 * no lease's method of its own. Internal to the package: the routes' `lease` option is typed
 * `CreditLeases`, the class a user has.
 */
export interface MeterLease {
  /** A session served from the user's block, or null when it holds in the store. */
  openMeter(userId: string, options: MeterOptions): MeterSession | null;
  /** Sets `amount` aside in the user's block, or null when the block does not cover it. */
  setAside(userId: string, amount: number, spend?: { spender?: string; feature?: string }): SetAside | null;
  /** Whether the lease was closed. */
  readonly isClosed: boolean;
  /** Charges `amount`, from the block or exactly. */
  charge(
    userId: string,
    amount: number,
    options?: { reason?: string; spender?: string; feature?: string },
  ):
    | { amount: number; via: "lease" | "exact"; entry: JournalEntry | null }
    | Promise<{ amount: number; via: "lease" | "exact"; entry: JournalEntry | null }>;
}

/** Whether `lease` has the shape of a `MeterLease` (the `lease` option of the metering routes). @internal */
export function isMeterLease(lease: unknown): lease is MeterLease {
  if (typeof lease !== "object" || lease === null) return false;
  const l: Partial<Record<keyof MeterLease, unknown>> = lease;
  return typeof l.openMeter === "function" && typeof l.setAside === "function" && typeof l.charge === "function";
}

/** `MeterContext` of a session: prototype getters over the session, no per-call closures. */
class SessionContext implements MeterContext {
  constructor(private readonly session: MeterSession) {}
  get userId(): string {
    return this.session.userId;
  }
  get reservationId(): string {
    return this.session.reservationId;
  }
  get estimate(): number {
    return this.session.estimate;
  }
  get usages(): readonly RecordedUsage[] {
    return this.session.usages;
  }
  get priceBook(): string | null {
    return this.session.priceBook?.version ?? null;
  }
  get used(): number {
    return this.session.used;
  }
  get settled(): boolean {
    return this.session.settled;
  }
  recordUsage(usage: UsageInput): boolean {
    return this.session.recordUsage(usage);
  }
}

/**
 * A placed hold and its usage context. `commit()` and `release()` settle it; whichever comes first
 * wins and every later call gets the same outcome, so one metered call is one commit or one release.
 *
 * A keyed call (`idempotencyKey`) may have several attempts at once — retries that start while an
 * earlier attempt still runs — and they may share a hold. Whichever way an attempt charges (a
 * commit, or an after-service deduction when its hold lapsed or another attempt released it), it
 * charges under the call's one charge key, `<key>:charge`. The store keeps one entry per key, so the
 * call is charged once whatever order the attempts finish in, and whichever process judged the
 * hold lapsed by its own clock; every other attempt is answered with that charge.
 * @public
 */
export class MeterSession {
  private contextObject: MeterContext | null = null;
  private readonly recorded: RecordedUsage[] = [];
  /** @internal The price book this call prices with: the one in force when its hold was placed. */
  readonly priceBook: PriceBook | null;
  private sum = 0;
  private settlement: Promise<MeterOutcome> | null = null;

  /**
   * Sessions come from `credits.openMeter()` and `meter()`.
   * @param holdKey the key this attempt's hold was placed under (`<key>` or `<key>:attempt-<n>`,
   *   see `openMeter`); its release uses `<holdKey>:release`. Default: the call's key.
   * @internal
   */
  constructor(
    private readonly deps: SessionDeps,
    /** The account the call is metered on. */
    readonly userId: string,
    /** The hold the call spends from. */
    readonly reservationId: string,
    /** The credits held for the call. */
    readonly estimate: number,
    private readonly options: Omit<MeterOptions, "estimate">,
    private readonly holdKey: string | undefined = options.idempotencyKey,
  ) {
    this.priceBook = deps.pricing?.current() ?? null;
  }

  /** The usage context `currentMeter()` returns (one object per session). */
  get context(): MeterContext {
    return (this.contextObject ??= new SessionContext(this));
  }

  /** Runs `fn(...args)` inside this call's usage context (AsyncLocalStorage): `recordUsage` finds it. */
  run<A extends unknown[], T>(fn: (...args: A) => T, ...args: A): T {
    return storage.run(this, fn, ...args);
  }

  /** Whether the call's hold was committed or released. */
  get settled(): boolean {
    return this.settlement !== null;
  }

  /** The usage recorded in the call so far. */
  get usages(): readonly RecordedUsage[] {
    return this.recorded;
  }

  /** Σ recorded amounts. */
  get used(): number {
    return this.sum;
  }

  /** Records usage in this call; false (and a warning) if the call is already settled. */
  recordUsage(usage: UsageInput): boolean {
    return this.recordPriced(recordOf(usage, this.priceBook));
  }

  /** @internal Records a usage already priced (the metering middleware's reading of a response). */
  recordPriced(u: RecordedUsage): boolean {
    if (this.settlement !== null) {
      this.deps.logger?.warn(
        { userId: this.userId, reservationId: this.reservationId, usage: u },
        "credit-management: usage recorded after its metered call was settled; it is not billed",
      );
      return false;
    }
    this.recorded.push(u);
    this.sum += u.amount;
    return true;
  }

  /**
   * Commits `amount`, or (omitted) the recorded usage. With neither, follows `noUsage` (default:
   * release). A hold that lapsed meanwhile is charged as an after-service deduction; usage beyond
   * the overdraft limit charges the hold in full and reports the `shortfall`.
   */
  commit(amount?: number): Promise<MeterOutcome> {
    if (this.settlement !== null) return this.settlement;
    if (amount === undefined && this.recorded.length === 0 && (this.options.noUsage ?? "release") === "release") {
      this.settlement = this.published(this.doRelease("no-usage"));
      return this.settlement;
    }
    const n = amount ?? (this.recorded.length > 0 ? this.sum : this.estimate);
    try {
      // Validated like any input: a sum of usages beyond Number.MAX_SAFE_INTEGER is refused here.
      parse(NonNegativeAmount, n, "usage amount");
    } catch (error) {
      this.settlement = this.published(this.doRelease("error"));
      return this.settlement.then(() => Promise.reject(error));
    }
    this.settlement = this.published(this.doCommit(n));
    return this.settlement;
  }

  /** Returns the whole hold (a failed call, a client that went away). */
  release(reason: MeterOutcome["releaseReason"] = "error"): Promise<MeterOutcome> {
    if (this.settlement !== null) return this.settlement;
    this.settlement = this.published(this.doRelease(reason));
    return this.settlement;
  }

  /** Publishes the settled outcome on the metering channel while someone listens (docs/observability.md). */
  private published(settling: Promise<MeterOutcome>): Promise<MeterOutcome> {
    if (!meteringChannel.hasSubscribers) return settling;
    return settling.then((o) => {
      if (meteringChannel.hasSubscribers) meteringChannel.publish(meteringMessage(o));
      return o;
    });
  }

  /** The key every attempt of a keyed call charges under (undefined without a key). */
  private get chargeKey(): string | undefined {
    const key = this.options.idempotencyKey;
    return key === undefined ? undefined : `${key}:charge`;
  }

  /**
   * The options of a commit, release or after-service deduction: the call's description and
   * correlation id, `key` (this step's idempotency key; undefined for an unkeyed call) and metadata.
   */
  private mutation(key: string | undefined, extra: Record<string, unknown> | null): MutationInput {
    const o = this.options;
    const out: MutationInput = { description: o.description, correlationId: o.correlationId, idempotencyKey: key };
    // `{}` when there is nothing to say.
    const metadata: Record<string, unknown> = o.metadata === undefined ? {} : { ...o.metadata };
    if (extra !== null) Object.assign(metadata, extra);
    if (this.recorded.length > 0) metadata.usages = this.recorded;
    out.metadata = metadata as Json;
    return out;
  }

  /** @internal */
  protected outcome(outcome: MeterOutcome["outcome"], charged: number, entry: JournalEntry | null): MeterOutcome {
    return {
      userId: this.userId,
      reservationId: this.reservationId,
      estimate: this.estimate,
      outcome,
      charged,
      usages: this.recorded.slice(),
      entry,
    };
  }

  /** @internal */
  protected async doCommit(amount: number): Promise<MeterOutcome> {
    try {
      const options: CommitInput = this.mutation(this.chargeKey, null);
      options.amount = amount;
      // Past the overdraft limit the commit takes what the limit allows (decided in its unit of
      // work) and its entry says what was left: also when a retry replays it.
      const entry = await this.deps.commitHold(this.userId, this.reservationId, options, true);
      // What the limit left unpaid: the entry's own field, which only the library sets.
      const shortfall = entry.shortfall ?? 0;
      const outcome = this.outcome("committed", amount - shortfall, entry);
      if (shortfall > 0)
        await this.reportShortfall(
          outcome,
          shortfall,
          "metered usage exceeded the overdraft limit; charged the hold and what the limit allows",
          {},
        );
      return outcome;
    } catch (error) {
      return this.commitFailed(amount, error);
    }
  }

  /** The commit was refused: charge after service when the hold is gone (lapsed, or released by another attempt). */
  private async commitFailed(amount: number, refusal: unknown): Promise<MeterOutcome> {
    try {
      const gone = { reservationId: this.reservationId };
      if (refusal instanceof ReservationExpiredError)
        return await this.chargeAfterService(amount, this.chargeKey, { ...gone, holdExpired: true }, HOLD_GONE);
      // A keyed hold is shared by the attempts that meet on it: one that failed released it while
      // this one still ran. The usage was delivered, so it is charged like a lapsed hold's (the
      // charge key keeps the call to one charge). A hold committed otherwise is not charged again.
      if (
        this.chargeKey !== undefined &&
        refusal instanceof ReservationNotActiveError &&
        refusal.details?.status === "released"
      ) {
        return await this.chargeAfterService(amount, this.chargeKey, { ...gone, holdReleased: true }, HOLD_GONE);
      }
      throw refusal;
    } catch (error) {
      // The call's charge key holds another attempt's charge (with other usage): the call is charged.
      if (
        error instanceof IdempotencyConflictError &&
        this.chargeKey !== undefined &&
        error.details?.idempotencyKey === this.chargeKey
      ) {
        return this.chargedElsewhere(amount, error);
      }
      // Anything else (the store is down, …): try to return the hold rather than leave it until its TTL.
      await this.tryRelease("error");
      throw error;
    }
  }

  /**
   * Usage already delivered whose hold is gone (the call outlived it, or, keyed, another attempt
   * released it; a leased call's block no longer covers it), charged as an after-service deduction
   * under `key` with `extra` in its metadata. Beyond the overdraft limit, the most the limit allows
   * is charged (possibly nothing) and the rest reported as the `shortfall` with `message`, as for
   * an active hold.
   * @internal
   */
  protected async chargeAfterService(
    amount: number,
    key: string | undefined,
    extra: Record<string, unknown>,
    message: string,
  ): Promise<MeterOutcome> {
    // Named for the call's spender and feature (a hold's commit is its hold's), so the limits for them count it.
    const { spender, feature } = this.options;
    const options = { ...this.mutation(key, extra), spender, feature };
    const entry = amount > 0 ? await this.deps.chargeUpToLimit(this.userId, amount, options) : null;
    const charged = entry?.amount ?? 0;
    const outcome = this.outcome("committed", charged, entry);
    outcome.chargedAfterService = true;
    if (amount - charged > 0) await this.reportShortfall(outcome, amount - charged, message, extra);
    return outcome;
  }

  /** Usage the overdraft limit left uncharged: on the outcome, and as an error event in the ledger. */
  private async reportShortfall(
    outcome: MeterOutcome,
    shortfall: number,
    message: string,
    why: Record<string, unknown>,
  ): Promise<void> {
    outcome.shortfall = shortfall;
    await this.deps.ledger
      ?.logError(
        message,
        {
          reservationId: this.reservationId,
          requested: outcome.charged + shortfall,
          charged: outcome.charged,
          shortfall,
          ...why,
        },
        { userId: this.userId, correlationId: this.options.correlationId },
      )
      .catch(warnOnFailure(this.deps.logger, "writing a metering shortfall's ledger event"));
  }

  /**
   * Another attempt of this keyed call was charged first, with other usage: this attempt's usage is
   * not charged. Its own hold, if it is another one and still held, goes back; the answer is the
   * call's one charge, read from the store; a system event records the usage left uncharged.
   */
  private async chargedElsewhere(amount: number, conflict: IdempotencyConflictError): Promise<MeterOutcome> {
    const key = this.chargeKey as string;
    await this.tryRelease("already-charged");
    const first = await this.deps.db.transaction(
      this.userId,
      async (tx) => (await tx.load({ idempotencyKey: key })).idempotent,
    );
    if (first === null) throw conflict; // not a charge of this call after all
    const entry = structuredClone(first);
    const outcome = this.outcome("committed", entry.amount, entry);
    outcome.replayed = true;
    if (entry.type === "deduct") outcome.chargedAfterService = true;
    await this.deps.ledger
      ?.logSystem(
        "metered attempt not charged: another attempt of the same idempotency key was charged first",
        {
          idempotencyKey: this.options.idempotencyKey,
          reservationId: this.reservationId,
          requested: amount,
          charged: entry.amount,
          chargeEntryId: entry.id,
        },
        { userId: this.userId, correlationId: this.options.correlationId },
      )
      .catch(warnOnFailure(this.deps.logger, "writing an uncharged attempt's ledger event"));
    return outcome;
  }

  /** @internal */
  protected async doRelease(reason: NonNullable<MeterOutcome["releaseReason"]>): Promise<MeterOutcome> {
    await this.tryRelease(reason, true);
    const outcome = this.outcome("released", 0, null);
    outcome.releaseReason = reason;
    return outcome;
  }

  private async tryRelease(reason: string, raise = false): Promise<void> {
    const key = this.holdKey === undefined ? undefined : `${this.holdKey}:release`;
    try {
      await this.deps.releaseHold(this.userId, this.reservationId, this.mutation(key, { releaseReason: reason }));
    } catch (error) {
      if (error instanceof ReservationExpiredError) return; // already back
      // A keyed hold is shared by the attempts that meet on it: another one settled it already
      // (committed it under the call's charge key, or released it under this release key).
      if (
        key !== undefined &&
        (error instanceof ReservationNotActiveError || error instanceof IdempotencyConflictError)
      )
        return;
      this.deps.logger?.warn(
        { err: error, reservationId: this.reservationId },
        "credit-management: releasing a metered hold failed; it lapses at its TTL",
      );
      if (raise) throw error;
    }
  }
}

/**
 * Places the hold of a metered call (`InsufficientCreditsError` when it cannot be placed). `userId`
 * and `options` are validated already (`UserId`, `MeterOptions`).
 */
export async function openMeter(deps: SessionDeps, userId: string, options: MeterOptions): Promise<MeterSession> {
  // The hold names who spends on what: the limits for them count it, their scoped grants fund it.
  const { ttlSeconds, spender, feature, reason, description, correlationId, minimum, idempotencyKey: key } = options;
  // With `minimum`, a hold for what is there: the session's estimate is what it holds.
  const reserve: ParsedReserveOptions = { ttlSeconds, spender, feature, reason, description, correlationId, minimum };
  if (key === undefined) {
    const hold = await deps.hold(userId, options.estimate, reserve);
    return new MeterSession(deps, hold.userId, hold.id, hold.amount, options);
  }
  // A retry of a keyed call. Attempt 1 holds under `<key>:reserve`. A hold that comes back released
  // belongs to an attempt that failed (fn threw, nothing measured, its client left), so this call
  // is a new attempt that holds under the next derived key, `<key>:attempt-2`, … — deterministic,
  // so concurrent retries meet on the same hold. A hold that comes back committed, expired or
  // active is shared with the attempt that placed it. Every attempt charges under the call's one
  // key, `<key>:charge` (see `MeterSession`), so a call is never charged twice.
  for (let attempt = 1; ; attempt++) {
    const base = attemptKey(key, attempt);
    reserve.idempotencyKey = `${base}:reserve`;
    const hold = await deps.hold(userId, options.estimate, reserve);
    if (hold.status === "released") continue;
    return new MeterSession(deps, hold.userId, hold.id, hold.amount, options, base);
  }
}

/**
 * The key of attempt `n`'s hold of a metered call keyed `key`: the key itself, then
 * `<key>:attempt-<n>`. A key too long for that (each derived key leaves room for `:reserve` and
 * `:release`) is cut and tagged with a hash of the whole key, so it stays unique.
 */
function attemptKey(key: string, n: number): string {
  if (n === 1) return key;
  const tag = `:attempt-${n}`;
  if (key.length + tag.length <= MAX_METER_KEY) return key + tag;
  const tail = `~${createHash("sha256").update(key).digest("hex").slice(0, 16)}${tag}`;
  return key.slice(0, MAX_METER_KEY - tail.length) + tail;
}

/**
 * Reserves `estimate`, runs `fn` in a usage context, then commits the number `fn` returns, else the
 * recorded usage (else releases, or charges the estimate with `noUsage: "estimate"`); releases if
 * `fn` throws and rethrows. Exactly one commit or release per call.
 */
export async function runMetered<T>(
  deps: SessionDeps,
  userId: string,
  options: MeterOptions,
  fn: (context: MeterContext) => T | Promise<T>,
  onSettled?: (outcome: MeterOutcome) => void,
): Promise<T> {
  const session = await openMeter(deps, userId, options);
  let value: T;
  try {
    value = await storage.run(session, fn, session.context);
  } catch (error) {
    // `fn`'s error is the one to throw; a hold that fails to release lapses at its TTL (docs/metering.md).
    const outcome = await session.release("error").catch(() => null);
    if (outcome) onSettled?.(outcome);
    throw error;
  }
  const outcome = await session.commit(typeof value === "number" ? value : undefined);
  onSettled?.(outcome);
  return value;
}

const HOLD_GONE = "metered usage after its hold was gone exceeded the overdraft limit; charged what the limit allows";

/** JSON metadata as the models type it. */
type Json = NonNullable<Parameters<ModuleContext["releaseHold"]>[2]["metadata"]>;
/** The options of a commit, release or after-service deduction a session builds. */
interface MutationInput {
  description?: string;
  correlationId?: string;
  idempotencyKey?: string;
  metadata?: Json;
}
type CommitInput = MutationInput & { amount?: number };

/** The metering channel's message for a settled call. */
function meteringMessage(o: MeterOutcome): MeteringMessage {
  const gone = o.chargedAfterService === true;
  return {
    userId: o.userId,
    reservationId: o.reservationId,
    estimate: o.estimate,
    outcome: o.outcome,
    charged: o.charged,
    released: o.outcome === "released" ? o.estimate : gone ? 0 : Math.max(o.estimate - o.charged, 0),
    reason:
      o.outcome === "released"
        ? (o.releaseReason ?? null)
        : o.replayed === true
          ? "replayed"
          : gone
            ? "after-service"
            : null,
    shortfall: o.shortfall ?? 0,
  };
}
