/**
 * The core's manager (ARCHITECTURE.md, "Where the core ends"): the ledger's services over one store,
 * ledger and cache — credits, subscriptions, expiration and notifications — and nothing of the
 * modules. `credit-management/core` exports its `createCreditManager`; the package's root builds
 * the full manager on `openCore` (src/manager.ts).
 */
import * as z from "zod";
import { LoggerOption, silentLogger, type Logger } from "./logger.js";
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
  ThresholdSpec,
  TrialCredits,
} from "./models/index.js";
import { parseConfig } from "./models/parse.js";
import type { NotificationQueue } from "./queue/index.js";
import { CoreCreditService, type CoreCreditServiceOptions } from "./services/credit-service.js";
import { ExpirationService, IdempotencyRetention } from "./services/expiration-service.js";
import { SubscriptionService } from "./services/subscription-service.js";
import { NotificationService } from "./services/notification-service.js";

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/** Options of the core's `createCreditManager`, validated like every public input. */
export const CoreManagerOptions = z.strictObject({
  /** The store. Default `new InMemoryDbManager()`. */
  db: z
    .custom<DbManager>((v) => isObject(v) && typeof (v as DbManager).transaction === "function", {
      error: "db must implement DbManager",
    })
    .optional(),
  /** `{ filePath }` mirrors the ledger to a JSONL file; `false` or omitted: no file. */
  ledger: z.union([z.literal(false), z.strictObject({ filePath: z.string().min(1) })]).optional(),
  cache: z
    .custom<Cache>((v) => isObject(v) && typeof (v as Cache).get === "function", {
      error: "cache must implement Cache",
    })
    .optional(),
  clock: z.custom<() => Date>((v) => typeof v === "function", { error: "clock must be a function" }).optional(),
  /**
   * Where the library logs (warnings: cache or ledger-file trouble, failed job steps, …): any
   * object with pino's `error`, `warn`, `info` and `debug` — pino, a child logger, `console`,
   * winston. Default: a logger that writes nothing.
   */
  logger: LoggerOption.optional(),
  /** TTL of a hold when none is given, in seconds. Default 900. */
  defaultReservationTtlSeconds: z
    .number()
    .int()
    .min(1)
    .max(30 * 24 * 3600)
    .optional(),
  /**
   * How many days back usage may be recorded with `occurredAt` (`deductCredits`,
   * `deductCreditsAfterService`; docs/usage.md, "Late usage"): 0 to 366, default 35. Older usage is
   * refused with a `LateUsageError`.
   */
  lateUsageWindowDays: LateUsageWindowDays.optional(),
  /** Credits `available` may go below zero through after-service usage; null = unlimited (default). */
  overdraftLimit: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable().optional(),
  /**
   * A checkpoint entry in the unit of work that takes an account's journal past each multiple of
   * this many entries (docs/operations.md, "Checkpoints and archival"). Default: none.
   */
  checkpointEvery: CheckpointEvery.optional(),
  /**
   * How long, in ms, a call whose commit was sent but not answered looks for what it wrote once the
   * store answers again, before it throws `OutcomeUnknownError` (docs/concepts.md, "Certain and
   * uncertain errors"). Default 5,000.
   */
  outcomeWaitMs: OutcomeWaitMs.optional(),
  /** Where notifications are delivered. Giving one (or `notifications`) turns notification events on. */
  queue: z
    .custom<NotificationQueue>((v) => isObject(v) && typeof (v as NotificationQueue).publish === "function", {
      error: "queue must implement NotificationQueue",
    })
    .optional(),
  /** Notification thresholds and delivery settings (docs/notifications.md). */
  notifications: ThresholdSpec.extend({
    /** Delivery attempts before a row is `failed`. Default 10. */
    maxAttempts: z.number().int().min(1).max(1000).optional(),
    /** First retry delay in ms (doubles per failure). Default 1,000. */
    backoffBaseMs: z.number().int().min(1).optional(),
    /** Longest retry delay in ms. Default 3,600,000. */
    backoffMaxMs: z.number().int().min(1).optional(),
    /** A dispatcher's claim on a row, in ms. Default 60,000. */
    leaseMs: z.number().int().min(100).optional(),
    /** Longest wait for one publish, in ms (at most `leaseMs`). Default half of `leaseMs`. */
    publishTimeoutMs: z.number().int().min(1).optional(),
    /** The expiring-credit reminder windows `expiration.runAll()` records, in days. Default `[7]`; `[]`: none. */
    reminderDays: z.array(z.number().min(0).max(3650)).max(16).optional(),
    /**
     * The alert thresholds of every account without its own (docs/notifications.md, "Alerts"):
     * available credits, what is left as a percentage, spend in a calendar window, credits expiring
     * soon; `notifications.setAlerts` gives an account its own.
     */
    alerts: AlertThresholds.optional(),
  }).optional(),
  /** Trial credits granted once, when a user's account is first created (see `TrialCredits`). */
  trial: TrialCredits.optional(),
  /**
   * Per-feature rules of `credits.check()` and `credits.getCustomerState()`:
   * `{ [feature]: { minAvailable, enabled?, plans? } }` (docs/trial-and-checks.md).
   */
  features: FeatureRules.optional(),
  /**
   * Record a domain event per journal entry in the outbox, with the change (docs/events.md). Turns
   * the outbox on, as `queue` and `notifications` do. Default false.
   */
  domainEvents: z.boolean().optional(),
  /**
   * Idempotency keys: `retention` is how long a key answers retries — `"forever"` (default) or a
   * window such as `"24h"` or `"30d"` (at least 1m), after which `expiration.runAll()` /
   * `forgetIdempotencyKeys()` (the worker's jobs) forgets it (docs/running-for-years.md).
   */
  idempotency: z.strictObject({ retention: IdempotencyRetention.optional() }).optional(),
  /** Run `db.init()` (create tables/indexes). Default true. */
  init: z.boolean().optional(),
});
export type CoreManagerOptions = z.input<typeof CoreManagerOptions>;

/** The core's services over one store, ledger and cache. */
export interface CoreManager<C extends CoreCreditService = CoreCreditService> {
  credits: C;
  subscriptions: SubscriptionService;
  expiration: ExpirationService;
  /** The outbox dispatcher, thresholds and emit hook; events are recorded once `queue` or `notifications` is given. */
  notifications: NotificationService;
  ledger: LedgerLogger;
  db: DbManager;
  /** Flushes and closes the ledger file, then closes the store. */
  close(): Promise<void>;
}

/** The core's services and what a manager over them builds more with (src/manager.ts). */
export interface CoreParts<C extends CoreCreditService> extends CoreManager<C> {
  /** The credit and subscription services over a store, ledger and cache (`inTransaction` builds them over its own). */
  build(
    db: DbManager,
    ledger: LedgerLogger,
    cache: Cache | undefined,
  ): { credits: C; subscriptions: SubscriptionService };
  logger: Logger;
}

/**
 * Opens the store and builds the core's services from options `o` (validated by a schema that holds
 * `CoreManagerOptions`' fields); `makeCredits` builds the credit service.
 */
export async function openCore<C extends CoreCreditService>(
  o: z.output<typeof CoreManagerOptions>,
  makeCredits: (options: CoreCreditServiceOptions) => C,
): Promise<CoreParts<C>> {
  const db = o.db ?? new InMemoryDbManager();
  const logger = o.logger ?? silentLogger;
  if (o.init !== false) await db.init();
  const ledger = new LedgerLogger({ db, filePath: o.ledger ? o.ledger.filePath : false, logger, clock: o.clock });
  const n = o.notifications;
  const thresholds = n === undefined ? {} : { lowCredits: n.lowCredits, lowCreditsPercent: n.lowCreditsPercent };
  const alertDefaults = n?.alerts ?? [];
  const alertsOn = o.queue !== undefined || n !== undefined || o.domainEvents === true;
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
    subscriptions: true,
  };
  const build = (db: DbManager, ledger: LedgerLogger, cache: Cache | undefined) => {
    const credits = makeCredits({ ...creditOptions, db, ledger, cache });
    return { credits, subscriptions: new SubscriptionService({ db, ledger, cache, clock: o.clock, logger, credits }) };
  };
  const { credits, subscriptions } = build(db, ledger, o.cache);
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
  let closed = false;
  return {
    credits,
    subscriptions,
    expiration,
    notifications,
    ledger,
    db,
    build,
    logger,
    async close() {
      if (closed) return;
      closed = true;
      await notifications.stop();
      await ledger.close();
      await db.close();
    },
  };
}

/**
 * The core's services over one store, ledger and cache, without the modules (ARCHITECTURE.md,
 * "Modules"): `credits`, `subscriptions`, `expiration`, `notifications`. Bad options:
 * `ConfigurationError`.
 */
export async function createCreditManager(options: CoreManagerOptions = {}): Promise<CoreManager> {
  const o = parseConfig(CoreManagerOptions, options, "options");
  const { build: _build, logger: _logger, ...manager } = await openCore(o, (x) => new CoreCreditService(x));
  return manager;
}
