/**
 * Fixed-price metering (the `price` option): the check before the handler, the charge after it
 * succeeded, and the report of a charge that failed (docs/metering.md, "Fixed-price endpoints").
 */
import { ConfigurationError, InsufficientCreditsError, SpendLimitError } from "../../core/errors.js";
import { IdempotencyKey, parse, type SpendLimitStatus } from "../../models-entry.js";
import { applies, clockTimes } from "../../core/domain/limits.js";
import type { CreditService } from "../../credit-service.js";
import type { MeterLease, MeterOutcome, SetAside } from "./service.js";
import type { JournalEntry } from "../../models-entry.js";
import { warnOnFailure, type Logger } from "../../core/logger.js";
import { meteringChannel } from "./diagnostics.js";
import { meteringOf } from "./module.js";
import type { MeteringLocals, MeteringOptionsBase } from "./routes-common.js";

/**
 * Fixed-price metering (the `price` option), or null without one: what a request costs, the check
 * before the handler runs and the charge after it succeeded (docs/metering.md, "Fixed-price endpoints").
 */
export function fixedPrice<Req>(
  o: MeteringOptionsBase<Req>,
  lease: MeterLease | undefined,
  logger: Logger | undefined,
): FixedPricing<Req> | null {
  const price = o.price;
  if (price === undefined) return null;
  if (typeof price !== "function" && !(Number.isSafeInteger(price) && price >= 0))
    throw new ConfigurationError(
      "[credit-management] [metering] `price` must be a non-negative integer or a function.",
    );
  const { deductCreditsAfterService, getUserCreditsInfo } = o.credits;
  if (typeof deductCreditsAfterService !== "function" || typeof getUserCreditsInfo !== "function")
    throw new ConfigurationError("[credit-management] [metering] `price` needs `credits` to be manager.credits.");
  const credits = o.credits as FixedCredits;
  return new FixedPricing(price, credits, lease, o.onSettled, logger);
}

const checkedCost = (cost: unknown): number => {
  if (typeof cost === "number" && Number.isSafeInteger(cost) && cost >= 0) return cost;
  throw new ConfigurationError(
    `[credit-management] [metering] \`price\` answered ${String(cost)}: it must be a non-negative integer`,
  );
};

/** @internal Fixed-price metering of one middleware: the cost, the check, the charge. */
export class FixedPricing<Req> {
  constructor(
    private readonly price: number | ((request: Req) => number | Promise<number>),
    readonly credits: FixedCredits,
    readonly lease: MeterLease | undefined,
    readonly onSettled: ((outcome: MeterOutcome, request: Req) => void) | undefined,
    /** The manager's logger: a failed charge is logged to it (`settleFailed`). */
    readonly logger?: Logger | undefined,
  ) {}

  /** The cost of `req`: the price, or what the `price` function answers for it. */
  async costOf(req: Req): Promise<number> {
    const price = this.price;
    return typeof price === "number" ? price : checkedCost(await price(req));
  }

  /** The deduction's idempotency key from a request's `Idempotency-Key` header (a 400 when malformed). */
  keyOf(header: string | null | undefined): string | undefined {
    return header === null || header === undefined || header === ""
      ? undefined
      : parse(IdempotencyKey, `http:${header}`, "Idempotency-Key");
  }

  /**
   * Checks that `userId` may run a request of `cost` and starts it (the handler may run): when the
   * user's lease block covers the cost, it is set aside in the block (the request will be charged
   * from it) and the answer is there at once; otherwise the account is read (`available >= cost`,
   * advisory: requests in flight together may all pass it, and the charges after them then go
   * into debt within the overdraft limit). Rejects with an `InsufficientCreditsError` (402).
   * `key`: from the request's `Idempotency-Key` (`keyOf`); a keyed request is never served from a lease.
   */
  async open(
    req: Req,
    userId: string,
    cost: number,
    key: string | undefined,
    reason: string,
    locals?: Partial<MeteringLocals>,
    spend: MeterSpend = NO_SPEND,
  ): Promise<PricedRequest<Req>> {
    if (cost === 0) return new PricedRequest(this, req, userId, cost, key, reason, locals, null, spend);
    if (this.lease !== undefined && key === undefined) {
      const held = this.lease.setAside(userId, cost, spend);
      if (held !== null) return new PricedRequest(this, req, userId, cost, key, reason, locals, held, spend);
    }
    const named = spend.spender !== undefined || spend.feature !== undefined;
    const [info, limits] = await Promise.all([
      named ? this.credits.getUserCreditsInfo(userId, spend) : this.credits.getUserCreditsInfo(userId),
      // A named spend is checked against the spend limits for it too (429 with the reset).
      named && this.credits.getLimits !== undefined ? this.credits.getLimits(userId) : null,
    ]);
    if (limits !== null) {
      // In the unit the spend acts in: its feature's rule's, which the read names (docs/units.md).
      const refusal = limitRefusal(limits, spend, cost, info.unit);
      if (refusal !== null) throw refusal;
    }
    if (info.available < cost) {
      throw new InsufficientCreditsError(
        `Cannot run a request of ${cost} credits: only ${Math.max(info.available, 0)} available.`,
        { requested: cost, available: info.available },
      );
    }
    return new PricedRequest(this, req, userId, cost, key, reason, locals, null, spend);
  }

  /**
   * Charges a request that succeeded and was not served from a block: one after-service deduction
   * (the service was delivered, so it is taken into debt when credits ran out meanwhile, up to the
   * overdraft limit: beyond it, what the limit allows, the rest the `shortfall`, recorded as an
   * error event in the ledger, as metering with holds does), through the lease when there is one
   * and the request has no key (its block may cover it by now). A lease closed while the request
   * ran (a shutdown) charges it exactly. Resolves to the credits charged and the entry, if any.
   */
  async charge(
    p: PricedRequest<Req>,
  ): Promise<{ charged: number; entry: JournalEntry | null; leased: boolean; shortfall: number }> {
    const { userId, cost, key } = p;
    const reason = p.reason;
    const lease = this.lease;
    if (lease !== undefined && key === undefined && !lease.isClosed) {
      try {
        const c = await lease.charge(userId, cost, { reason, ...p.spend });
        return { charged: c.amount, entry: c.entry, leased: c.via === "lease", shortfall: 0 };
      } catch (error) {
        // The service was delivered: what the exact path refuses is taken into debt, within the
        // limit, by the after-service deduction below.
        if (!(error instanceof InsufficientCreditsError)) throw error;
      }
    }
    const options: { description: string; idempotencyKey?: string } & MeterSpend = { description: reason, ...p.spend };
    if (key !== undefined) options.idempotencyKey = key;
    const core = meteringOf(this.credits);
    if (core === undefined) {
      const entry = await this.credits.deductCreditsAfterService(userId, cost, options);
      return { charged: entry.amount, entry, leased: false, shortfall: 0 };
    }
    const entry = await core.chargeUpToLimit(userId, cost, options);
    const charged = entry?.amount ?? 0;
    const shortfall = cost - charged;
    if (shortfall > 0) {
      await core.ledger
        ?.logError(
          "a fixed-price request exceeded the overdraft limit; charged what the limit allows",
          { requested: cost, charged, shortfall, reason },
          { userId },
        )
        .catch(warnOnFailure(core.logger, "writing a metering shortfall's ledger event"));
    }
    return { charged, entry, leased: false, shortfall };
  }
}

/**
 * One fixed-price request between its check and its charge (`FixedPricing.open`), settled once:
 * charged (after it ended well) or not. Each outcome goes to `onSettled` (a failing callback
 * changes nothing) and to `res.locals.creditsDeducted` where there are locals (Express).
 */
export class PricedRequest<Req = unknown> {
  /** Settled: charged, or reported as not charged. */
  done = false;

  constructor(
    private readonly pricing: FixedPricing<Req>,
    private readonly req: Req,
    readonly userId: string,
    readonly cost: number,
    readonly key: string | undefined,
    /** The journal's reason: `METHOD path`. */
    readonly reason: string,
    private readonly locals: Partial<MeteringLocals> | undefined,
    /** The cost as the check set it aside in the user's lease block; null when none. */
    private held: SetAside | null,
    /** Who spends on what (the `spender` and `feature` options). */
    readonly spend: MeterSpend = NO_SPEND,
  ) {}

  /**
   * Charges the request: the credits charged, or null when the charge failed (the store is down,
   * …: reported by `settleFailed`, the request served free).
   * From the lease block the check set it aside in when that still serves it, else through
   * `FixedPricing.charge`.
   */
  async charge(): Promise<number | null> {
    this.done = true;
    if (this.cost === 0) return this.charged(0, null, false);
    const held = this.held;
    if (held !== null) {
      this.held = null;
      if (held.charge(this.reason)) return this.charged(this.cost, null, true);
    }
    try {
      const c = await this.pricing.charge(this);
      return this.charged(c.charged, c.entry, c.leased, c.shortfall);
    } catch (error) {
      const failed = { userId: this.userId, reservationId: "", estimate: this.cost, usages: [], fixedPrice: true };
      settleFailed(this.pricing.logger, error, failed, this.pricing.onSettled, this.req, this.locals);
      return null;
    }
  }

  /** Reports a request that was not charged (it failed, or its client went away). */
  notCharged(why: "error" | "aborted"): void {
    this.done = true;
    this.giveBack();
    if (this.locals === undefined && this.pricing.onSettled === undefined) return;
    this.report({
      userId: this.userId,
      reservationId: "",
      estimate: this.cost,
      outcome: "released",
      charged: 0,
      releaseReason: why,
      usages: [],
      entry: null,
      fixedPrice: true,
    });
  }

  /**
   * The whole response is at hand, its headers not sent: not charged when its status is >= 400 or
   * its client left (`aborted`), answering 0 at once; else charged (`charge`).
   */
  ended(status: number, aborted = false): number | Promise<number | null> {
    if (status < 400 && !aborted) return this.charge();
    this.notCharged(status >= 400 ? "error" : "aborted");
    return 0;
  }

  /** The response is done: charged if it finished with status < 400, else not (unless settled already). */
  closed(finished: boolean, status: number): void {
    if (this.done) return;
    if (!finished) this.notCharged("aborted");
    else if (status >= 400) this.notCharged("error");
    else void this.charge();
  }

  /** The request will not run (its client left before the handler): what the check set aside goes back, nothing is reported. */
  drop(): void {
    this.done = true;
    this.giveBack();
  }

  private giveBack(): void {
    if (this.held === null) return;
    this.held.giveBack();
    this.held = null;
  }

  /** A charge made: reported (built only when someone reads it), and the credits returned. */
  private charged(charged: number, entry: JournalEntry | null, leased: boolean, shortfall = 0): number {
    if (this.locals === undefined && this.pricing.onSettled === undefined) return charged;
    const outcome: MeterOutcome = {
      userId: this.userId,
      reservationId: "",
      estimate: this.cost,
      outcome: "committed",
      charged,
      usages: [],
      entry,
      fixedPrice: true,
    };
    if (leased) outcome.leased = true;
    if (shortfall > 0) outcome.shortfall = shortfall;
    this.report(outcome);
    return charged;
  }

  private report(outcome: MeterOutcome): void {
    reportTo(this.pricing.onSettled, this.req, outcome, this.locals);
  }
}

/**
 * A metered request served whose settle failed (the store down at the charge, …): nothing charged.
 * Logged at `error` to the manager's logger, published on the metering channel (reason
 * `settle-failed`, the `credit_management.metering.calls` metric: docs/observability.md) and
 * reported to `onSettled` as released with `releaseReason: "settle-failed"` and the `error`.
 */
export function settleFailed<Req>(
  logger: Logger | undefined,
  error: unknown,
  call: Pick<MeterOutcome, "userId" | "reservationId" | "estimate" | "usages" | "fixedPrice">,
  onSettled: ((outcome: MeterOutcome, request: Req) => void) | undefined,
  req: Req,
  locals: Partial<MeteringLocals> | undefined,
): void {
  try {
    logger?.error(
      { err: error, userId: call.userId, reservationId: call.reservationId, estimate: call.estimate },
      "credit-management: settling a metered request failed; nothing was charged",
    );
  } catch {
    // the host's logger failing must not change the response
  }
  if (meteringChannel.hasSubscribers) {
    const { userId, reservationId, estimate } = call;
    const released = call.fixedPrice === true ? 0 : estimate;
    meteringChannel.publish({
      userId,
      reservationId,
      estimate,
      outcome: "released",
      charged: 0,
      released,
      reason: "settle-failed",
      shortfall: 0,
    });
  }
  if (locals === undefined && onSettled === undefined) return;
  const outcome: MeterOutcome = {
    ...call,
    outcome: "released",
    charged: 0,
    releaseReason: "settle-failed",
    entry: null,
    error,
  };
  if (outcome.fixedPrice === undefined) delete outcome.fixedPrice;
  reportTo(onSettled, req, outcome, locals);
}

/** Reports a settled request: to `onSettled` (a failing callback changes nothing), and its charge on `res.locals` where there are locals (Express). */
export function reportTo<Req>(
  onSettled: ((outcome: MeterOutcome, request: Req) => void) | undefined,
  req: Req,
  outcome: MeterOutcome,
  locals: Partial<MeteringLocals> | undefined,
): void {
  if (locals) locals.creditsDeducted = outcome.charged;
  try {
    onSettled?.(outcome, req);
  } catch {
    // a failing callback must not change the response
  }
}

/** Who spends on what in a metered request (the `spender` and `feature` options). */
export interface MeterSpend {
  spender?: string;
  feature?: string;
}

const NO_SPEND: MeterSpend = Object.freeze({});

/** What fixed-price metering uses of the credit service (`getLimits`: the check of a named spend). */
type FixedCredits = Pick<CreditService, "deductCreditsAfterService" | "getUserCreditsInfo"> &
  Partial<Pick<CreditService, "getLimits">>;

/**
 * The refusal of a fixed-price request of `cost` for `spend` in `unit` (undefined: the default unit)
 * by the tightest limit in that unit it does not fit; null when it fits them all.
 */
function limitRefusal(
  limits: readonly SpendLimitStatus[],
  spend: MeterSpend,
  cost: number,
  unit: string | undefined,
): SpendLimitError | null {
  const s = { spender: spend.spender ?? null, feature: spend.feature ?? null, unit: unit ?? null };
  let worst: SpendLimitStatus | null = null;
  for (const l of limits)
    if (applies(l, s) && l.remaining < cost && (worst === null || l.remaining < worst.remaining)) worst = l;
  if (worst === null) return null;
  const { spender, feature, amount, period, resetsWith } = worst;
  const named = unit === undefined ? {} : { unit };
  const error = new SpendLimitError(
    `Cannot run a request of ${cost} ${unit ?? "credits"}: the spend limit of ${amount} has ${worst.remaining} left until ${worst.resetsAt.toISOString()}.`,
    {
      requested: cost,
      limit: { spender, feature, ...named, amount, period, resetsWith },
      used: worst.used,
      remaining: worst.remaining,
      resetsAt: worst.resetsAt.toISOString(),
      ...named,
    },
  );
  // Refused when the manager read the limits, by its clock (the Retry-After counts from it).
  const at = clockTimes.get(limits);
  if (at !== undefined) clockTimes.set(error, at);
  return error;
}
