/**
 * The core's manager (ARCHITECTURE.md, "Where the core ends"): the ledger's services over one store,
 * ledger and cache — credits, subscriptions, expiration and notifications — and nothing of the
 * modules. `credit-management/core` exports its `createCreditManager`; the package's root builds
 * the full manager on `openCore` (src/manager.ts).
 */
import { moduleRegistry, type CreditModule } from "./module.js";
import * as z from "zod/mini";
import { LoggerOption, noteMemoryStore, silentLogger, type Logger } from "./logger.js";
import type { Cache } from "./cache/index.js";
import { CoreInMemoryDbManager } from "./db/memory/index.js";
import type { DbManager } from "./db/types.js";
import { LedgerLogger } from "./ledger/index.js";
import { AlertThresholds } from "./models/alerts.js";
import {
  CheckpointEvery,
  FeatureRules,
  JournalKeysOptions,
  LateUsageWindowDays,
  OutcomeWaitMs,
  OverdraftLimit,
  OverdraftLimits,
  TrialCredits,
} from "./models/inputs.js";
import { ThresholdSpec } from "./models/notifications.js";
import { parseConfig } from "./models/parse.js";
import type { NotificationQueue } from "./queue/index.js";
import { CoreCreditService, type CoreCreditServiceOptions } from "./services/credit-service.js";
import { ExpirationService, IdempotencyRetention } from "./services/expiration-service.js";
import { SubscriptionService } from "./services/subscription-service.js";
import { NotificationService } from "./services/notification-service.js";

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/** Options of the core's `createCreditManager`, validated like every public input. @public */
export const CoreManagerOptions = z.strictObject({
  /** The store. Default `new CoreInMemoryDbManager()` (the full entry's default: `new InMemoryDbManager()`). */
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
  /**
   * Credits `available` may go below zero through usage already delivered (after-service
   * deductions, commits beyond a hold, fixed-price metering), or `"unlimited"`. Default 0: no debt.
   */
  overdraftLimit: z.optional(OverdraftLimit),
  /**
   * The overdraft limit of each unit by name (docs/units.md, "Debt per unit"). A unit not listed
   * has none; the default unit's is `overdraftLimit` unless this names it.
   */
  overdraftLimits: z.optional(OverdraftLimits),
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
   * Idempotency keys: `retention` is how long a key answers retries — `"forever"` (default) or a
   * window such as `"24h"` or `"30d"` (at least 1m), after which `expiration.runAll()` /
   * `forgetIdempotencyKeys()` (the worker's jobs) forgets it (docs/running-for-years.md).
   */
  idempotency: z.optional(z.strictObject({ retention: z.optional(IdempotencyRetention) })),
  /**
   * Keys the journal's hash chain (docs/concepts.md, "A keyed chain"): `{ current, keys }`, each key
   * at least 32 bytes, kept outside the database. New entries are signed with HMAC-SHA256 under
   * `keys[current]`; `audit()` verifies each keyed entry with the key it names. Default: none.
   */
  journalKeys: z.optional(JournalKeysOptions),
  /** Run `db.init()` (create tables/indexes). Default true. */
  init: z.optional(z.boolean()),
  /**
   * Modules the manager carries besides its own (docs/modules.md, "Writing a module"): their error
   * codes, notification and event types, grant sources, account columns, unit hooks and audit
   * checks. Each module's `init` runs once per credit service the manager builds.
   *
   * @beta
   */
  modules: z.optional(
    z.array(
      // Typed by its shape here, so that the @public options name no @beta type; the registry
      // checks each module whole (a ConfigurationError) when the credit service is built.
      z.custom<object>((v) => isObject(v) && typeof (v as { id?: unknown }).id === "string", {
        error: "each module must be a CreditModule (an object with an `id`)",
      }),
    ),
  ),
});
/** Options of the core's `createCreditManager`, validated like every public input. @public */
export interface CoreManagerOptions extends Omit<z.input<typeof CoreManagerOptions>, "modules"> {
  /**
   * Modules the manager carries besides its own (docs/modules.md, "Writing a module").
   *
   * @beta
   */
  modules?: readonly CreditModule[];
}

/** The core's services over one store, ledger and cache. @public */
export interface CoreManager<C extends CoreCreditService = CoreCreditService> {
  /** Credits, holds, the journal and limits of each account. */
  credits: C;
  /** Plans and subscriptions. */
  subscriptions: SubscriptionService;
  /** The maintenance jobs. */
  expiration: ExpirationService;
  /** The outbox dispatcher, thresholds and emit hook; events are recorded once `queue` or `notifications` is given. */
  notifications: NotificationService;
  /** The audit ledger. */
  ledger: LedgerLogger;
  /** The store the services use. */
  db: DbManager;
  /** Flushes and closes the ledger file, then closes the store. */
  close(): Promise<void>;
}

/** The core's services and what a manager over them builds more with (src/manager.ts). @beta */
export interface CoreParts<C extends CoreCreditService> extends CoreManager<C> {
  /** The credit and subscription services over a store, ledger and cache (`inTransaction` builds them over its own). */
  build(
    db: DbManager,
    ledger: LedgerLogger,
    cache: Cache | undefined,
  ): { credits: C; subscriptions: SubscriptionService };
  /** Where the services log. */
  logger: Logger;
}

/**
 * @internal The stores a manager made itself because none was given (the full entry's default):
 * `openCore` says once that they hold everything in memory (`noteMemoryStore`).
 */
export const memoryByDefault = new WeakSet<object>();

/**
 * Opens the store and builds the core's services from options `o` (validated by a schema that holds
 * `CoreManagerOptions`' fields); `makeCredits` builds the credit service.
 * @beta
 */
export async function openCore<C extends CoreCreditService>(
  o: z.output<typeof CoreManagerOptions>,
  makeCredits: (options: CoreCreditServiceOptions) => C,
): Promise<CoreParts<C>> {
  const db = o.db ?? new CoreInMemoryDbManager();
  const logger = o.logger ?? silentLogger;
  if (o.db === undefined || memoryByDefault.has(o.db)) noteMemoryStore(logger);
  // The modules' store parts are bound before `init()`, which creates their tables
  // (docs/writing-a-store.md, "A module's part"); bad modules are refused before anything is created.
  for (const m of moduleRegistry(o.modules as readonly CreditModule[] | undefined).modules)
    if (m.store !== undefined) db.usePart?.(m.store);
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
    overdraftLimit: o.overdraftLimit ?? 0,
    overdraftLimits: o.overdraftLimits,
    lateUsageWindowDays: o.lateUsageWindowDays,
    checkpointEvery: o.checkpointEvery,
    outcomeWaitMs: o.outcomeWaitMs,
    alerts: alertsOn ? { ...thresholds, alerts: alertDefaults } : undefined,
    trial: o.trial,
    features: o.features,
    domainEvents: o.domainEvents,
    journalKeys: o.journalKeys,
    subscriptions: true,
    // Checked whole by the credit service's registry (`moduleRegistry`).
    modules: o.modules as readonly CreditModule[] | undefined,
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
    credits,
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
 * @public
 */
export async function createCreditManager(options: CoreManagerOptions = {}): Promise<CoreManager> {
  const o = parseConfig(CoreManagerOptions, options, "options");
  const { build: _build, logger: _logger, ...manager } = await openCore(o, (x) => new CoreCreditService(x));
  return manager;
}
