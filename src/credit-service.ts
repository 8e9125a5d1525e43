/**
 * `CreditService`: the core's credit service (`CoreCreditService`, src/core/services/credit-service.ts)
 * with the methods of the modules a manager brings (ARCHITECTURE.md, "Modules"): usage and revenue
 * reports, the customer's state, archival, metering and leases with their price book, and customer tokens.
 * `createCreditManager` builds this one; `credit-management/core` builds the core's alone.
 */
import { ConfigurationError, ValidationError } from "./core/errors.js";
import { CoreCreditService, type CoreCreditServiceOptions } from "./core/services/credit-service.js";
import type { Thresholds } from "./core/domain/notifications.js";
import type { CorePart } from "./core/part-builds.js";
import { recordingOf } from "./core/services/outbox-recording.js";
import { UserId, parse } from "./core/models/index.js";
import { CustomerStatesQuery } from "./modules/customer-state/model.js";
import type { UsageQuery, UsageReport } from "./core/models/usage.js";
import { getUsage } from "./modules/usage/service.js";
import type { CustomerStates } from "./modules/customer-state/service.js";
import {
  archiveJournal,
  archivePartitions,
  type ArchiveJournalOptions,
  type ArchivePartitionsOptions,
  type ArchiveReport,
} from "./modules/archive/service.js";
import type { ArchivePartitionsReport } from "./core/db/types-partitions.js";
import type { CustomerState, CustomerStatePage } from "./modules/customer-state/rules.js";
import { closePeriod, getRevenue, listPeriodCloses } from "./modules/revenue/service.js";
import type { PeriodClose, RevenueQuery, RevenueReport } from "./modules/revenue/model.js";
import { MeterOptions as MeterOptionsSchema, type MeterOptions } from "./modules/metering/model.js";
import {
  openMeter,
  runMetered,
  type MeterContext,
  type MeterOutcome,
  type MeterSession,
} from "./modules/metering/service.js";
import type { PricingService } from "./modules/pricing/service.js";
import type { CreditLeases } from "./modules/leases/service.js";
import { billingModule } from "./modules/billing/module.js";
import { carriesBilling } from "./modules/billing/service-units.js";
import { pricingModule } from "./modules/pricing/module.js";
import { webhooksModule } from "./modules/webhooks/module.js";
import { revenueModule } from "./modules/revenue/module.js";
import { carriesMetering, meteringModule, type MeteringModule } from "./modules/metering/module.js";
import { leasesModule, type LeasesModule } from "./modules/leases/module.js";
import { customerStateModule, type CustomerStateModule } from "./modules/customer-state/module.js";
import type { LeaseOptions } from "./modules/leases/model.js";
import { CustomerTokens, type CustomerGrant, type CustomerToken } from "./modules/customer-tokens/service.js";
import type { CustomerTokenOptions, CustomerTokenSettings } from "./modules/customer-tokens/model.js";

/** Options of `new CreditService()`: the core's, the price book and customer tokens. @public */
export interface CreditServiceOptions extends CoreCreditServiceOptions {
  /**
   * Records notification events in the outbox, in the unit of work that causes them (see
   * `NotificationService`): low credits below these thresholds, exhaustion, restoration, alerts,
   * lapsed holds, and refusals for lack of credits. Omitted: no events are recorded (unless
   * `notifications` or `domainEvents` is given). With `notifications`: a `ConfigurationError`.
   */
  alerts?: Thresholds;
  /**
   * Records a domain event per journal entry in the outbox, in the unit of work of the change
   * (`credits_added`, `credits_deducted`, `hold_placed`, …: docs/events.md). Turns the outbox on
   * (as `alerts: {}` does) when `alerts` is not given. Default false. With `notifications`: a
   * `ConfigurationError`.
   */
  domainEvents?: boolean;
  /** The price book metered calls price tokens and costs with (docs/llm-metering.md). */
  pricing?: PricingService;
  /**
   * The secret `customerToken` signs with and `verifyCustomerToken` checks against (docs/usage.md,
   * "For your customers"). Omitted: customer tokens are off.
   */
  customerTokens?: CustomerTokenSettings;
}

/** The notifications part of `options`: given, or of its `alerts` and `domainEvents` (src/core/parts.ts). */
function notificationsOf(options: CreditServiceOptions): CorePart<"notifications"> | undefined {
  const { alerts, domainEvents, notifications } = options;
  if (domainEvents !== undefined && typeof domainEvents !== "boolean")
    throw new ConfigurationError("[credit-management] CreditService: domainEvents must be a boolean");
  if (notifications === undefined) return recordingOf(alerts, domainEvents === true, "CreditService");
  if (alerts !== undefined || domainEvents !== undefined) {
    throw new ConfigurationError(
      "[credit-management] CreditService: give `alerts` and `domainEvents` to notificationsPart() when you pass `notifications`, not beside it",
    );
  }
  return notifications;
}

const noTokens = () =>
  new ConfigurationError(
    "[credit-management] customer tokens are off: pass `customerTokens: { secret }` to createCreditManager (docs/usage.md)",
  );

/** The customer tokens of each `CreditService` that signs them. */
const tokensOf = new WeakMap<object, CustomerTokens>();

/**
 * The credits of one account at a time (the core's operations: docs/api.md) and the modules'
 * methods over them: `getUsage`, `getRevenue`, `getCustomerState`, `meter`, `openMeter`, `leases`,
 * `customerToken`.
 * @public
 */
export class CreditService extends CoreCreditService {
  /** The package's modules this service carries, each given the core through its `init` (src/core/module.ts). */
  private readonly own: { metering: MeteringModule; leases: LeasesModule; states: CustomerStateModule };
  private readonly clock: () => Date;

  /** A credit service over `options.db`; `createCreditManager` builds one, with the other services. */
  constructor(options: CreditServiceOptions) {
    const metering = meteringModule(options.pricing);
    const billing = billingModule();
    const own = { metering, leases: leasesModule(metering), states: customerStateModule() };
    super({
      ...options,
      notifications: notificationsOf(options),
      // The package's modules (ARCHITECTURE.md, "Modules"), each through the module seam, then the caller's.
      modules: [
        billing,
        pricingModule(),
        webhooksModule(),
        revenueModule(),
        own.metering,
        own.leases,
        own.states,
        ...(options.modules ?? []),
      ],
    });
    this.own = own;
    carriesMetering(this, metering);
    carriesBilling(this, billing);
    this.clock = options.clock ?? (() => new Date());
    if (options.customerTokens !== undefined)
      tokensOf.set(this, new CustomerTokens(options.customerTokens, this.clock));
  }

  /** What metering's sessions use of the core (the metering module's). */
  private get session() {
    return this.own.metering.session();
  }

  /** The customer's state (src/modules/customer-state/service.ts). */
  private get states(): CustomerStates {
    return this.own.states.states();
  }

  /**
   * What the customer may do now, from one snapshot of the account (docs/customer-state.md, "The
   * state in one read"): balance, reserved, available and debt at journal position `seq`; for
   * every feature its plan, scoped grants, spend limits and `features` rules name, whether it may
   * be used now (and else why, with `check()`'s reasons), what was granted, used and is left of it,
   * when it resets and the grants behind it; each spend limit; the subscription and its period;
   * the alerts. Read from the store, never from the cache.
   */
  async getCustomerState(userId: string): Promise<CustomerState> {
    return this.states.get(parse(UserId, userId, "userId"));
  }

  /**
   * The states of many accounts, page by page (docs/customer-state.md): the store's accounts in id
   * order after `cursor` (or only those of `userIds`), at most `limit` (default 100, at most
   * 1,000) a page; `nextCursor` continues, null at the end. Each state as `getCustomerState`'s.
   */
  async listCustomerStates(query: CustomerStatesQuery = {}): Promise<CustomerStatePage> {
    return this.states.list(parse(CustomerStatesQuery, query, "query"));
  }

  /**
   * Usage summed by calendar window and dimension (docs/usage.md): one account's (`account`) or the
   * whole store's, as rows of `{ start, end, ...groups, kind, credits, requests, inputTokens,
   * outputTokens, cachedTokens }`. Spend, refunds and clawbacks are rows of their own kind (never
   * netted). Each store aggregates natively. A bad or too large query is a `ValidationError`.
   */
  async getUsage(query: UsageQuery): Promise<UsageReport> {
    return getUsage(this.db, query);
  }

  /**
   * Revenue by calendar window (docs/revenue.md): for one account (`account`) or every account,
   * per currency (and `groupBy`), the deferred value at each window's start and end and what was
   * paid, recognized, broken (expired or voided unused) and refunded in it, in the currency's
   * smallest unit, from the journal and the cost basis of each grant. Per account and currency
   * `deferredStart + paid − recognized − breakage − refunds = deferredEnd` (over the ordinary row and
   * the catch-up rows of a closed month: docs/revenue.md, "Closing a month"). Bounded (docs/revenue.md,
   * "How large a report can be"): no window after the one holding now, at most `limit` rows (default
   * 10,000; `truncated` says rows were left off). A bad or too large query is a `ValidationError`.
   */
  async getRevenue(query: RevenueQuery): Promise<RevenueReport> {
    return getRevenue(this.db, query, { now: this.clock().getTime() });
  }

  /**
   * Closes the revenue reports through `through` (docs/revenue.md, "Closing a month"): records
   * every account's journal seq now and the close, after which a revenue report of any window
   * ending at or before `through` reads the same forever; what is recorded later with a time before
   * `through` is booked at `through`, on catch-up rows (`RevenueRow.catchUpThrough`). `through` must
   * not be in the future and must be after the latest close's (`ValidationError`); of two closes
   * racing, one is recorded (the other a `ConflictError`). Costs one row per account.
   * @beta
   */
  async closePeriod(through: Date): Promise<PeriodClose> {
    return closePeriod(this.db, through, this.clock().getTime());
  }

  /** The closed periods of the revenue reports (docs/revenue.md, "Closing a month"), by `through` ascending. @beta */
  async listPeriodCloses(): Promise<PeriodClose[]> {
    return listPeriodCloses(this.db);
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
    // `onSettled` is not the schema's: the rest is validated without it.
    const { onSettled, ...rest } = options ?? {};
    const o = parse(MeterOptionsSchema, rest, "options");
    if (onSettled !== undefined && typeof onSettled !== "function") {
      throw new ValidationError("Invalid options.onSettled: must be a function", [
        { path: "onSettled", message: "must be a function" },
      ]);
    }
    if (typeof fn !== "function")
      throw new ValidationError("Invalid fn: must be a function", [{ path: "fn", message: "must be a function" }]);
    return runMetered(this.session, parse(UserId, userId, "userId"), o, fn, onSettled);
  }

  /**
   * The building block of `meter()` for hosts that settle on their own schedule (the HTTP
   * middleware commits when a streamed response ends): places the hold and returns the session;
   * `session.run(fn)` runs code in its usage context, `session.commit(amount?)` / `session.release()`
   * settle it once.
   */
  async openMeter(userId: string, options: MeterOptions): Promise<MeterSession> {
    const o = parse(MeterOptionsSchema, options, "options");
    return openMeter(this.session, parse(UserId, userId, "userId"), o);
  }

  /**
   * Credit leases (docs/metering.md, "Leases"): blocks of a user's credits held by this process,
   * charges served from them in memory and settled in one journal entry per window.
   */
  leases(options: LeaseOptions = {}): CreditLeases {
    return this.own.leases.leases(options);
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
    return archivePartitions(this.db, options, (userId) => this.checkpoint(userId), this.clock());
  }

  /**
   * A short-lived signed token that lets one of your customers read `account`'s balance, grants and
   * usage, and nothing else (docs/usage.md, "For your customers"): for the service's customer page
   * or your own front end. With `spender`, the usage it reads is that spender's only. Needs
   * `customerTokens: { secret }` in the manager's options (else a `ConfigurationError`).
   */
  customerToken(account: string, options: CustomerTokenOptions): Promise<CustomerToken> {
    const tokens = tokensOf.get(this);
    if (tokens === undefined) return Promise.reject(noTokens());
    return tokens.issue(account, options);
  }

  /**
   * What a customer token grants, or null when it is not one this manager signed, or it has
   * expired (docs/usage.md, "For your customers"). `ConfigurationError` when customer tokens are off.
   */
  verifyCustomerToken(token: string): Promise<CustomerGrant | null> {
    const tokens = tokensOf.get(this);
    if (tokens === undefined) return Promise.reject(noTokens());
    return tokens.verify(token);
  }
}

/** Whether `credits` signs customer tokens (`customerTokens` given): the service and console offer them then. */
export function customerTokensOn(credits: object | undefined): boolean {
  return credits !== undefined && tokensOf.has(credits);
}
