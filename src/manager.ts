import { LoggerOption, silentLogger } from "./logger.js";
import * as z from "zod/mini";
import type { Cache } from "./cache/index.js";
import { InMemoryDbManager } from "./db/memory/index.js";
import type { DbManager } from "./db/types.js";
import { LedgerLogger } from "./ledger/index.js";
import {
  AlertThresholds,
  CheckpointEvery,
  FeatureRules,
  LateUsageWindowDays,
  OutcomeWaitMs,
  PriceBookInput,
  ThresholdSpec,
  TrialCredits,
} from "./models-entry.js";
import { parseConfig } from "./models/parse.js";
import { CustomerTokenSettings } from "./modules/customer-tokens/model.js";
import type { NotificationQueue } from "./queue/index.js";
import { CreditService } from "./services/credit-service.js";
import { ExpirationService, IdempotencyRetention } from "./services/expiration-service.js";
import { SubscriptionService } from "./services/subscription-service.js";
import { PaymentManagerOptions, buildPaymentService } from "./modules/billing/providers.js";
import type { PaymentService } from "./modules/billing/service-payments.js";
import { PromoService } from "./modules/billing/service-promos.js";
import { NotificationService } from "./services/notification-service.js";
import { checkHealth, type HealthOptions, type HealthReport } from "./health.js";
import { PricingService } from "./modules/pricing/service.js";
import type { PgQueryable } from "./db/postgres/host.js";
import {
  openScope,
  runSessionTransaction,
  runTransaction,
  type ServiceFactory,
  type SessionSource,
  type TransactionSession,
  type TransactionOptions,
  type TransactionScope,
} from "./transactions.js";

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/** Options of `createCreditManager`, validated like every public input. */
export const CreditManagerOptions = z.strictObject({
  /** The store. Default `new InMemoryDbManager()`. */
  db: z.optional(
    z.custom<DbManager>((v) => isObject(v) && typeof (v as DbManager).transaction === "function", {
      error: "db must implement DbManager",
    }),
  ),
  /** `{ filePath }` mirrors the ledger to a JSONL file; `false` or omitted: no file. */
  ledger: z.optional(z.union([z.literal(false), z.strictObject({ filePath: z.string().check(z.minLength(1)) })])),
  cache: z.optional(
    z.custom<Cache>((v) => isObject(v) && typeof (v as Cache).get === "function", {
      error: "cache must implement Cache",
    }),
  ),
  clock: z.optional(z.custom<() => Date>((v) => typeof v === "function", { error: "clock must be a function" })),
  /**
   * Where the library logs (warnings: cache or ledger-file trouble, failed job steps, …): any
   * object with pino's `error`, `warn`, `info` and `debug` — pino, a child logger, `console`,
   * winston. Default: a logger that writes nothing.
   */
  logger: z.optional(LoggerOption),
  /** TTL of a hold when none is given, in seconds. Default 900. */
  defaultReservationTtlSeconds: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(30 * 24 * 3600))),
  /**
   * How many days back usage may be recorded with `occurredAt` (`deductCredits`,
   * `deductCreditsAfterService`; docs/usage.md, "Late usage"): 0 to 366, default 35. Older usage is
   * refused with a `LateUsageError`.
   */
  lateUsageWindowDays: z.optional(LateUsageWindowDays),
  /** Credits `available` may go below zero through after-service usage; null = unlimited (default). */
  overdraftLimit: z.optional(z.nullable(z.number().check(z.int(), z.minimum(0), z.maximum(Number.MAX_SAFE_INTEGER)))),
  /**
   * A checkpoint entry in the unit of work that takes an account's journal past each multiple of
   * this many entries (docs/operations.md, "Checkpoints and archival"). Default: none.
   */
  checkpointEvery: z.optional(CheckpointEvery),
  /**
   * How long, in ms, a call whose commit was sent but not answered looks for what it wrote once the
   * store answers again, before it throws `OutcomeUnknownError` (docs/concepts.md, "Certain and
   * uncertain errors"). Default 5,000.
   */
  outcomeWaitMs: z.optional(OutcomeWaitMs),
  /** Payment providers and the credits a payment buys (docs/promos-and-payments.md). */
  payments: z.optional(PaymentManagerOptions),
  /** Where notifications are delivered. Giving one (or `notifications`) turns notification events on. */
  queue: z.optional(
    z.custom<NotificationQueue>((v) => isObject(v) && typeof (v as NotificationQueue).publish === "function", {
      error: "queue must implement NotificationQueue",
    }),
  ),
  /** Notification thresholds and delivery settings (docs/notifications.md). */
  notifications: z.optional(
    z.extend(ThresholdSpec, {
      /** Delivery attempts before a row is `failed`. Default 10. */
      maxAttempts: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
      /** First retry delay in ms (doubles per failure). Default 1,000. */
      backoffBaseMs: z.optional(z.number().check(z.int(), z.minimum(1))),
      /** Longest retry delay in ms. Default 3,600,000. */
      backoffMaxMs: z.optional(z.number().check(z.int(), z.minimum(1))),
      /** A dispatcher's claim on a row, in ms. Default 60,000. */
      leaseMs: z.optional(z.number().check(z.int(), z.minimum(100))),
      /** Longest wait for one publish, in ms (at most `leaseMs`). Default half of `leaseMs`. */
      publishTimeoutMs: z.optional(z.number().check(z.int(), z.minimum(1))),
      /** The expiring-credit reminder windows `expiration.runAll()` records, in days. Default `[7]`; `[]`: none. */
      reminderDays: z.optional(z.array(z.number().check(z.minimum(0), z.maximum(3650))).check(z.maxLength(16))),
      /**
       * The alert thresholds of every account without its own (docs/notifications.md, "Alerts"):
       * available credits, what is left as a percentage, spend in a calendar window, credits expiring
       * soon; `notifications.setAlerts` gives an account its own.
       */
      alerts: z.optional(AlertThresholds),
    }),
  ),
  /** Trial credits granted once, when a user's account is first created (see `TrialCredits`). */
  trial: z.optional(TrialCredits),
  /**
   * Per-feature rules of `credits.check()` and `credits.getCustomerState()`:
   * `{ [feature]: { minAvailable, enabled?, plans? } }` (docs/trial-and-checks.md).
   */
  features: z.optional(FeatureRules),
  /**
   * Record a domain event per journal entry in the outbox, with the change (docs/events.md). Turns
   * the outbox on, as `queue` and `notifications` do. Default false.
   */
  domainEvents: z.optional(z.boolean()),
  /**
   * The price book: credits per input, output and cached token and per request of each model, and
   * credits per unit of money, for `recordUsage({ model, inputTokens, outputTokens })`, `{ cost }`
   * and the metering middleware's `llm` option (docs/llm-metering.md). Replace it at run time with
   * `manager.pricing.setPriceBook()`.
   */
  pricing: z.optional(PriceBookInput),
  /**
   * Idempotency keys: `retention` is how long a key answers retries — `"forever"` (default) or a
   * window such as `"24h"` or `"30d"` (at least 1m), after which `expiration.runAll()` /
   * `forgetIdempotencyKeys()` (the worker's jobs) forgets it (docs/running-for-years.md).
   */
  idempotency: z.optional(z.strictObject({ retention: z.optional(IdempotencyRetention) })),
  /**
   * Customer tokens (docs/usage.md, "For your customers"): `secret` (32+ characters, or a list whose
   * first signs and all verify) signs `credits.customerToken(...)`. Omitted: customer tokens are off.
   */
  customerTokens: z.optional(CustomerTokenSettings),
  /** Run `db.init()` (create tables/indexes). Default true. */
  init: z.optional(z.boolean()),
});
export type CreditManagerOptions = z.input<typeof CreditManagerOptions>;

export interface CreditManager {
  credits: CreditService;
  subscriptions: SubscriptionService;
  expiration: ExpirationService;
  promos: PromoService;
  payments: PaymentService;
  /** The price book of LLM usage (docs/llm-metering.md). */
  pricing: PricingService;
  /** The outbox dispatcher, thresholds and emit hook; events are recorded once `queue` or `notifications` is given. */
  notifications: NotificationService;
  ledger: LedgerLogger;
  db: DbManager;
  /**
   * Checks the store (reachable, schema version), cache, queue, ledger file and outbox, each within
   * a time-out, so a hung store answers `down` instead of hanging (docs/observability.md).
   */
  health(options?: HealthOptions): Promise<HealthReport>;
  /**
   * The credit, subscription and promo services inside a transaction the application has open on
   * `client` (PostgreSQL: a `pg` client after `BEGIN`, or anything with its `query(text, values)`;
   * docs/transactions.md): their writes commit or roll back with it. Call `committed()` or
   * `rolledBack()` on the scope once the application's transaction ended. Other stores:
   * `ConfigurationError`.
   */
  inTransaction(client: PgQueryable | TransactionSession): TransactionScope;
  /**
   * `fn` in a transaction of its own on a connection of `pool` (a `pg` Pool), with the services
   * inside it (`tx`) and the connection (`client`) for the application's own statements: BEGIN,
   * `fn`, COMMIT, then `committed()` — or ROLLBACK and `rolledBack()` when `fn` or the commit
   * failed, `fn` running again on a conflict (`options.attempts`, default 3). Resolves to what `fn`
   * returned (docs/transactions.md).
   */
  transaction<T, C extends PgQueryable & { release(error?: Error | boolean): void }>(
    pool: { connect(): Promise<C> },
    fn: (tx: TransactionScope, client: C) => Promise<T>,
    options?: TransactionOptions,
  ): Promise<T>;
  /**
   * MongoDB: `fn` inside `session.withTransaction` on a session of `client` (a `MongoClient`), with
   * the services inside it and the session for the application's own operations; `committed()`
   * after the commit, `rolledBack()` after an abort, `fn` again on a conflict (`options.attempts`,
   * default 3; docs/transactions.md).
   */
  transaction<T, S extends TransactionSession>(
    client: SessionSource<S>,
    fn: (tx: TransactionScope, session: S) => Promise<T>,
    options?: TransactionOptions,
  ): Promise<T>;
  /** Flushes and closes the ledger file, then closes the store. */
  close(): Promise<void>;
}

/** Builds the services over one store, ledger and cache. Bad options: `ConfigurationError`. */
export async function createCreditManager(options: CreditManagerOptions = {}): Promise<CreditManager> {
  const o = parseConfig(CreditManagerOptions, options, "options");
  const db = o.db ?? new InMemoryDbManager();
  const logger = o.logger ?? silentLogger;
  if (o.init !== false) await db.init();
  const ledger = new LedgerLogger({
    db,
    filePath: o.ledger ? o.ledger.filePath : false,
    logger,
    clock: o.clock,
  });
  const n = o.notifications;
  const thresholds = n === undefined ? {} : { lowCredits: n.lowCredits, lowCreditsPercent: n.lowCreditsPercent };
  const alertDefaults = n?.alerts ?? [];
  const alertsOn = o.queue !== undefined || n !== undefined || o.domainEvents === true;
  const pricing = new PricingService(o.pricing === undefined ? {} : { book: o.pricing });
  const creditOptions = {
    clock: o.clock,
    logger,
    defaultReservationTtlSeconds: o.defaultReservationTtlSeconds,
    overdraftLimit: o.overdraftLimit ?? null,
    lateUsageWindowDays: o.lateUsageWindowDays,
    checkpointEvery: o.checkpointEvery,
    outcomeWaitMs: o.outcomeWaitMs,
    alerts: alertsOn ? { ...thresholds, alerts: alertDefaults } : undefined,
    trial: o.trial,
    features: o.features,
    domainEvents: o.domainEvents,
    pricing,
    customerTokens: o.customerTokens,
    subscriptions: true,
  };
  // The services over the store, ledger and cache; `inTransaction` builds them again over its own.
  const build: ServiceFactory = (db, ledger, cache) => {
    const credits = new CreditService({ ...creditOptions, db, ledger, cache });
    const shared = { db, ledger, cache, clock: o.clock, logger, credits };
    return { credits, subscriptions: new SubscriptionService(shared), promos: new PromoService(shared) };
  };
  const { credits, subscriptions, promos } = build(db, ledger, o.cache);
  const notifications = new NotificationService({
    db,
    queue: o.queue,
    thresholds,
    alerts: alertDefaults,
    clock: o.clock,
    logger,
    maxAttempts: n?.maxAttempts,
    backoffBaseMs: n?.backoffBaseMs,
    backoffMaxMs: n?.backoffMaxMs,
    leaseMs: n?.leaseMs,
    publishTimeoutMs: n?.publishTimeoutMs,
    recording: alertsOn,
  });
  const expiration = new ExpirationService({
    db,
    credits,
    subscriptions,
    ledger,
    clock: o.clock,
    logger,
    notifications: alertsOn ? notifications : undefined,
    reminderDays: n?.reminderDays,
    idempotencyRetention: o.idempotency?.retention,
  });
  const payments = buildPaymentService({ db, ledger, cache: o.cache, clock: o.clock, logger, credits }, o.payments);
  // The dispatcher charges each auto top-up before it publishes the request (docs/promos-and-payments.md,
  // "Auto top-up"): a transient failure is a failed attempt, retried with the outbox's backoff.
  notifications.setHandler("auto_top_up_requested", (row) =>
    payments.processAutoTopUp(
      row.userId,
      typeof row.payload.attemptId === "string" ? row.payload.attemptId : undefined,
    ),
  );
  let closed = false;
  return {
    credits,
    subscriptions,
    expiration,
    promos,
    payments,
    pricing,
    notifications,
    ledger,
    db,
    inTransaction: (client) => openScope({ db, ledger, cache: o.cache, logger, build }, client),
    // (One implementation of both overloads: `fn`'s second parameter is the pool's client or the session.)
    transaction: ((
      source: unknown,
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      fn: (tx: TransactionScope, handle: any) => Promise<unknown>,
      options?: TransactionOptions,
    ) => {
      const open = (handle: unknown) => openScope({ db, ledger, cache: o.cache, logger, build }, handle);
      if (typeof (source as Partial<SessionSource<TransactionSession>> | null)?.startSession === "function")
        return runSessionTransaction(open, source as SessionSource<TransactionSession>, fn, options);
      return runTransaction(
        open,
        source as { connect(): Promise<PgQueryable & { release(): void }> },
        fn,
        options,
        (db as { lockTimeoutMs?: number }).lockTimeoutMs,
      );
    }) as CreditManager["transaction"],
    health: (options) =>
      checkHealth({ db, cache: o.cache, queue: o.queue, ledger, clock: o.clock ?? (() => new Date()) }, options),
    async close() {
      if (closed) return;
      closed = true;
      await notifications.stop();
      await ledger.close();
      await db.close();
    },
  };
}
