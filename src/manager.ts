import * as z from "zod/mini";
import type { DbManager } from "./core/db/types.js";
import type { LedgerLogger } from "./core/ledger/index.js";
import { CoreManagerOptions, memoryByDefault, openCore } from "./core/manager.js";
import {
  ExpirationPartOptions,
  expirationPart,
  NotificationSettings,
  notificationsWith,
  QueueOption,
  subscriptionsPart,
} from "./core/parts.js";
import { PriceBookInput } from "./modules/pricing/model.js";
import { parseConfig } from "./core/models/parse.js";
import { CustomerTokenSettings } from "./modules/customer-tokens/model.js";
import { CreditService } from "./credit-service.js";
import type { ExpirationService } from "./core/services/expiration-service.js";
import type { SubscriptionService } from "./core/services/subscription-service.js";
import { PaymentManagerOptions, buildPaymentService } from "./modules/billing/providers.js";
import type { PaymentService } from "./modules/billing/service-payments.js";
import { PromoService } from "./modules/billing/service-promos.js";
import { InMemoryDbManager, useBuiltInParts } from "./built-in-parts.js";
import type { NotificationService } from "./core/services/notification-service.js";
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

/** Options of `createCreditManager`, validated like every public input: the core's and the modules'. @public */
export const CreditManagerOptions = z.extend(z.omit(CoreManagerOptions, { parts: true }), {
  /** Where notifications are delivered. Giving one (or `notifications`) turns notification events on. */
  queue: z.optional(QueueOption),
  /** Notification thresholds and delivery settings (docs/notifications.md). */
  notifications: z.optional(NotificationSettings),
  /**
   * Record a domain event per journal entry in the outbox, with the change (docs/events.md). Turns
   * the outbox on, as `queue` and `notifications` do. Default false.
   */
  domainEvents: z.optional(z.boolean()),
  /**
   * Idempotency keys: `retention` is how long a key answers retries — `"forever"` (default) or a
   * window such as `"24h"` or `"30d"` (at least 1m), after which `expiration.runAll()` /
   * `forgetIdempotencyKeys()` (the worker's jobs) forgets it (docs/running-for-years.md).
   */
  idempotency: ExpirationPartOptions.shape.idempotency,
  /** Payment providers and the credits a payment buys (docs/promos-and-payments.md). */
  payments: z.optional(PaymentManagerOptions),
  /**
   * The price book: credits per input, output and cached token and per request of each model, and
   * credits per unit of money, for `recordUsage({ model, inputTokens, outputTokens })`, `{ cost }`
   * and the metering middleware's `llm` option (docs/llm-metering.md). Replace it at run time with
   * `manager.pricing.setPriceBook()`.
   */
  pricing: z.optional(PriceBookInput),
  /**
   * Customer tokens (docs/usage.md, "For your customers"): `secret` (32+ characters, or a list whose
   * first signs and all verify) signs `credits.customerToken(...)`. Omitted: customer tokens are off.
   */
  customerTokens: z.optional(CustomerTokenSettings),
});
/** Options of `createCreditManager`, validated like every public input: the core's and the modules'. @public */
export type CreditManagerOptions = z.input<typeof CreditManagerOptions>;

/**
 * What `createCreditManager` returns: the services over one store, the audit ledger, the store itself, and
 * the transaction helpers. @public
 */
export interface CreditManager {
  /** Credits, holds, the journal, limits, metering and reports of each account (docs/api.md). */
  credits: CreditService;
  /** Plans and subscriptions (docs/subscriptions.md). */
  subscriptions: SubscriptionService;
  /** The maintenance jobs: holds released, grants expired, subscriptions renewed (docs/operations.md). */
  expiration: ExpirationService;
  /** Promo codes (docs/promos-and-payments.md). */
  promos: PromoService;
  /** Payments, checkouts and provider webhooks (docs/promos-and-payments.md). */
  payments: PaymentService;
  /** The price book of LLM usage (docs/llm-metering.md). */
  pricing: PricingService;
  /** The outbox dispatcher, thresholds and emit hook; events are recorded once `queue` or `notifications` is given. */
  notifications: NotificationService;
  /** The audit ledger: the JSON-lines file, when one is configured, and its statistics. */
  ledger: LedgerLogger;
  /** The store the services use. */
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

/** The store of a manager made without one: in memory, said once in the log (docs/storage.md). */
function defaultStore(): InMemoryDbManager {
  const db = new InMemoryDbManager();
  memoryByDefault.add(db);
  return db;
}

/** Builds the services over one store, ledger and cache. Bad options: `ConfigurationError`. @public */
export async function createCreditManager(options: CreditManagerOptions = {}): Promise<CreditManager> {
  const o = parseConfig(CreditManagerOptions, options, "options");
  const pricing = new PricingService(o.pricing === undefined ? {} : { book: o.pricing });
  // The package's own modules bring their store parts (promos and payments, the revenue summary).
  // Every part of the core; notification events are recorded once `queue`, `notifications` or
  // `domainEvents` is given (docs/notifications.md).
  const recording = o.queue !== undefined || o.notifications !== undefined || o.domainEvents === true;
  const core = await openCore(
    { ...o, db: o.db === undefined ? defaultStore() : useBuiltInParts(o.db) },
    (x) => new CreditService({ ...x, pricing, customerTokens: o.customerTokens }),
    {
      subscriptions: subscriptionsPart(),
      notifications: notificationsWith({ ...o.notifications, queue: o.queue, domainEvents: o.domainEvents }, recording),
      expiration: expirationPart({ idempotency: o.idempotency }),
    },
  );
  const { credits, ledger, db, logger } = core;
  const subscriptions = core.subscriptions as SubscriptionService;
  const expiration = core.expiration as ExpirationService;
  const notifications = core.notifications as NotificationService;
  // The services over the store, ledger and cache; `inTransaction` builds them again over its own.
  const build: ServiceFactory = (db, ledger, cache) => {
    const { credits, subscriptions } = core.build(db, ledger, cache);
    return {
      credits,
      subscriptions: subscriptions as SubscriptionService,
      promos: new PromoService({ db, ledger, cache, clock: o.clock, logger, credits }),
    };
  };
  const promos = new PromoService({ db, ledger, cache: o.cache, clock: o.clock, logger, credits });
  const payments = buildPaymentService({ db, ledger, cache: o.cache, clock: o.clock, logger, credits }, o.payments);
  // The dispatcher charges each auto top-up before it publishes the request (docs/promos-and-payments.md,
  // "Auto top-up"): a transient failure is a failed attempt, retried with the outbox's backoff.
  notifications.setHandler("auto_top_up_requested", (row) =>
    payments.processAutoTopUp(
      row.userId,
      typeof row.payload.attemptId === "string" ? row.payload.attemptId : undefined,
    ),
  );
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
    close: core.close,
  };
}
