import { AsyncLocalStorage } from "node:async_hooks";
import type { Logger } from "pino";
import { ConfigurationError, InsufficientCreditsError, ReservationExpiredError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import { NonNegativeAmount, parse, UsageRecord, type JournalEntry, type MeterOptions } from "../models/index.js";
import type { CreditService } from "./credit-service.js";

/** What one metered call did with its hold, reported once it is settled. */
export interface MeterOutcome {
  userId: string;
  reservationId: string;
  /** Credits held before the call. */
  estimate: number;
  /** `committed`: usage was charged (possibly 0 of the hold); `released`: the hold returned whole. */
  outcome: "committed" | "released";
  /** Credits charged (0 when released). */
  charged: number;
  /** Why the hold was released: the call failed, measured nothing, or its client went away. */
  releaseReason?: "error" | "no-usage" | "aborted" | (string & {});
  /** Everything `recordUsage` recorded, in order. */
  usages: UsageRecord[];
  /**
   * The hold lapsed (TTL) before the call ended: its credits had gone back, so the usage was
   * charged as an after-service deduction instead of a commit.
   */
  chargedAfterService?: boolean;
  /** Usage beyond what the overdraft limit let us charge (the hold itself was charged in full). */
  shortfall?: number;
  /** The commit (or after-service deduction) entry; null when released or nothing was charged. */
  entry: JournalEntry | null;
}

/** The usage context of one metered call, reachable anywhere below it through `currentMeter()`. */
export interface MeterContext {
  readonly userId: string;
  readonly reservationId: string;
  readonly estimate: number;
  /** Usages recorded so far. */
  readonly usages: readonly UsageRecord[];
  /** Σ recorded amounts. */
  readonly used: number;
  /** True once the hold was committed or released: later usage is not billed. */
  readonly settled: boolean;
  /** Records usage in this call; false (and a warning) if the call is already settled. */
  recordUsage(usage: UsageRecord): boolean;
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
 * `recordUsage({ amount: 312, model: "gpt-4o-mini", provider: "openai" })`. The usages are summed into
 * the amount committed and stored in the commit entry's metadata.
 *
 * Returns false when the metered call has already been settled (e.g. a detached task that outlived
 * its request): that usage is not billed, and the manager's logger gets a warning. Outside any
 * metered call it throws a `ConfigurationError` — unbilled usage should be loud. Use
 * `currentMeter()` to check first in code that also runs unmetered.
 */
export function recordUsage(usage: UsageRecord): boolean {
  const session = storage.getStore();
  if (session === undefined) {
    throw new ConfigurationError(
      "recordUsage() was called outside a metered call (credits.meter(), creditMetering() or creditMeteringMiddleware()).",
    );
  }
  return session.context.recordUsage(usage);
}

/** The metered call this code runs under, or undefined. */
export function currentMeter(): MeterContext | undefined {
  return storage.getStore()?.context;
}

type Credits = Pick<
  CreditService,
  "reserveCredits" | "commitReservedCredits" | "releaseReservedCredits" | "deductCreditsAfterService"
>;

interface SessionDeps {
  credits: Credits;
  ledger?: LedgerLogger | undefined;
  logger?: Logger | undefined;
}

/**
 * A placed hold and its usage context. `commit()` and `release()` settle it; whichever comes first
 * wins and every later call gets the same outcome, so one metered call is one commit or one release.
 */
export class MeterSession {
  readonly context: MeterContext;
  private readonly recorded: UsageRecord[] = [];
  private settlement: Promise<MeterOutcome> | null = null;

  constructor(
    private readonly deps: SessionDeps,
    readonly userId: string,
    readonly reservationId: string,
    readonly estimate: number,
    private readonly options: Omit<MeterOptions, "estimate">,
  ) {
    const recorded = this.recorded;
    const isSettled = () => this.settlement !== null;
    this.context = {
      userId,
      reservationId,
      estimate,
      usages: recorded,
      get used() {
        return recorded.reduce((s, u) => s + u.amount, 0);
      },
      get settled() {
        return isSettled();
      },
      recordUsage(usage: UsageRecord): boolean {
        const u = parse(UsageRecord, usage, "usage");
        if (isSettled()) {
          deps.logger?.warn(
            { userId, reservationId, usage: u },
            "credit-management: usage recorded after its metered call was settled; it is not billed",
          );
          return false;
        }
        recorded.push(stripUndefined(u));
        return true;
      },
    };
  }

  /** Runs `fn` inside this call's usage context (AsyncLocalStorage): `recordUsage` finds it. */
  run<T>(fn: () => T): T {
    return storage.run(this, fn);
  }

  get settled(): boolean {
    return this.settlement !== null;
  }

  get usages(): readonly UsageRecord[] {
    return this.recorded;
  }

  /**
   * Commits `amount`, or (omitted) the recorded usage. With neither, follows `noUsage` (default:
   * release). A hold that lapsed meanwhile is charged as an after-service deduction; usage beyond
   * the overdraft limit charges the hold in full and reports the `shortfall`.
   */
  commit(amount?: number): Promise<MeterOutcome> {
    if (this.settlement !== null) return this.settlement;
    if (amount !== undefined) {
      try {
        parse(NonNegativeAmount, amount, "usage amount");
      } catch (error) {
        this.settlement = this.doRelease("error");
        return this.settlement.then(() => Promise.reject(error));
      }
    }
    if (amount === undefined && this.recorded.length === 0 && (this.options.noUsage ?? "release") === "release") {
      this.settlement = this.doRelease("no-usage");
    } else {
      const n = amount ?? (this.recorded.length > 0 ? this.context.used : this.estimate);
      this.settlement = this.doCommit(n);
    }
    return this.settlement;
  }

  /** Returns the whole hold (a failed call, a client that went away). */
  release(reason: MeterOutcome["releaseReason"] = "error"): Promise<MeterOutcome> {
    if (this.settlement !== null) return this.settlement;
    this.settlement = this.doRelease(reason);
    return this.settlement;
  }

  private key(suffix: string): string | undefined {
    return this.options.idempotencyKey === undefined ? undefined : `${this.options.idempotencyKey}:${suffix}`;
  }

  private metadata(extra: Record<string, unknown> = {}) {
    return {
      ...(this.options.metadata ?? {}),
      ...extra,
      ...(this.recorded.length > 0 ? { usages: this.recorded } : {}),
    } as Record<string, never>;
  }

  private base(): MeterOutcome {
    return {
      userId: this.userId,
      reservationId: this.reservationId,
      estimate: this.estimate,
      outcome: "released",
      charged: 0,
      usages: [...this.recorded],
      entry: null,
    };
  }

  private async doCommit(amount: number): Promise<MeterOutcome> {
    const { credits } = this.deps;
    const common = {
      description: this.options.description,
      correlationId: this.options.correlationId,
    };
    try {
      const entry = await credits.commitReservedCredits(this.reservationId, {
        ...common,
        amount,
        idempotencyKey: this.key("commit"),
        metadata: this.metadata(),
      });
      return { ...this.base(), outcome: "committed", charged: amount, entry };
    } catch (error) {
      if (error instanceof ReservationExpiredError) {
        // The call outlived its hold: the credits went back, the usage was still delivered.
        const entry =
          amount > 0
            ? await credits.deductCreditsAfterService(this.userId, amount, {
                ...common,
                idempotencyKey: this.key("after-service"),
                metadata: this.metadata({ reservationId: this.reservationId, holdExpired: true }),
              })
            : null;
        return { ...this.base(), outcome: "committed", charged: amount, chargedAfterService: true, entry };
      }
      if (error instanceof InsufficientCreditsError && amount > this.estimate) {
        // Past the overdraft limit: charge what was held and report the rest.
        const entry = await credits.commitReservedCredits(this.reservationId, {
          ...common,
          amount: this.estimate,
          idempotencyKey: this.key("commit"),
          metadata: this.metadata({ requested: amount, shortfall: amount - this.estimate }),
        });
        const shortfall = amount - this.estimate;
        await this.deps.ledger
          ?.logError(
            "metered usage exceeded the overdraft limit; the hold was charged in full",
            { reservationId: this.reservationId, requested: amount, charged: this.estimate, shortfall },
            { userId: this.userId, correlationId: this.options.correlationId },
          )
          .catch(() => undefined);
        return { ...this.base(), outcome: "committed", charged: this.estimate, shortfall, entry };
      }
      // Anything else (the store is down, …): try to return the hold rather than leave it until its TTL.
      await this.tryRelease("error");
      throw error;
    }
  }

  private async doRelease(reason: NonNullable<MeterOutcome["releaseReason"]>): Promise<MeterOutcome> {
    await this.tryRelease(reason, true);
    return { ...this.base(), releaseReason: reason };
  }

  private async tryRelease(reason: string, raise = false): Promise<void> {
    try {
      await this.deps.credits.releaseReservedCredits(this.reservationId, {
        description: this.options.description,
        correlationId: this.options.correlationId,
        idempotencyKey: this.key("release"),
        metadata: this.metadata({ releaseReason: reason }),
      });
    } catch (error) {
      if (error instanceof ReservationExpiredError) return; // already back
      this.deps.logger?.warn(
        { err: error, reservationId: this.reservationId },
        "credit-management: releasing a metered hold failed; it lapses at its TTL",
      );
      if (raise) throw error;
    }
  }
}

/** Places the hold of a metered call (`InsufficientCreditsError` when it cannot be placed). */
export async function openMeter(deps: SessionDeps, userId: string, options: MeterOptions): Promise<MeterSession> {
  const { estimate, ttlSeconds, reason, noUsage: _n, metadata: _m, ...rest } = options;
  const hold = await deps.credits.reserveCredits(userId, estimate, {
    ...rest,
    ttlSeconds,
    reason,
    idempotencyKey: options.idempotencyKey === undefined ? undefined : `${options.idempotencyKey}:reserve`,
  });
  return new MeterSession(deps, hold.userId, hold.id, hold.amount, options);
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
    value = await session.run(() => fn(session.context));
  } catch (error) {
    const outcome = await session.release("error").catch(() => null);
    if (outcome) onSettled?.(outcome);
    throw error;
  }
  const outcome = await session.commit(typeof value === "number" ? value : undefined);
  onSettled?.(outcome);
  return value;
}

function stripUndefined<T extends object>(o: T): T {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out as T;
}
