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
import { parseConfig } from "./models/parse.js";
import { CoreCreditService, type CoreCreditServiceOptions } from "./services/credit-service.js";
import type { ExpirationService } from "./services/expiration-service.js";
import type { SubscriptionService } from "./services/subscription-service.js";
import type { NotificationService } from "./services/notification-service.js";
import {
  expirationBuild,
  isPart,
  notificationsBuild,
  subscriptionsBuild,
  type CorePart,
  type ManagerParts,
  type PartServices,
} from "./part-builds.js";

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
  /** Trial credits granted once, when a user's account is first created (see `TrialCredits`). */
  trial: z.optional(TrialCredits),
  /**
   * Per-feature rules of `credits.check()` and `credits.getCustomerState()`:
   * `{ [feature]: { minAvailable, enabled?, plans? } }` (docs/trial-and-checks.md).
   */
  features: z.optional(FeatureRules),
  /**
   * Keys the journal's hash chain (docs/concepts.md, "A keyed chain"): `{ current, keys }`, each key
   * at least 32 bytes, kept outside the database. New entries are signed with HMAC-SHA256 under
   * `keys[current]`; `audit()` verifies each keyed entry with the key it names. Default: none.
   */
  journalKeys: z.optional(JournalKeysOptions),
  /** Run `db.init()` (create tables/indexes). Default true. */
  init: z.optional(z.boolean()),
  /**
   * The parts of the core the manager builds besides `credits` (docs/modules.md, "Parts of the
   * core"): `{ subscriptions: subscriptionsPart(), notifications: notificationsPart(options),
   * expiration: expirationPart(options) }`, each under its service's name. Default none: the
   * ledger alone.
   */
  parts: z.optional(
    z.strictObject({
      subscriptions: z.optional(
        z.custom<CorePart<"subscriptions">>((v) => isPart(v, "subscriptions"), {
          error: "parts.subscriptions must be what subscriptionsPart() returns",
        }),
      ),
      notifications: z.optional(
        z.custom<CorePart<"notifications">>(
          (v) => isPart(v, "notifications") && notificationsBuild(v as CorePart<"notifications">).service !== undefined,
          {
            error: "parts.notifications must be what notificationsPart() returns",
          },
        ),
      ),
      expiration: z.optional(
        z.custom<CorePart<"expiration">>((v) => isPart(v, "expiration"), {
          error: "parts.expiration must be what expirationPart() returns",
        }),
      ),
    }),
  ),
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
export interface CoreManagerOptions<P extends ManagerParts = ManagerParts> extends Omit<
  z.input<typeof CoreManagerOptions>,
  "modules" | "parts"
> {
  /**
   * The parts of the core the manager builds besides `credits` (docs/modules.md, "Parts of the
   * core"), each under its service's name. Default none: the ledger alone.
   */
  parts?: P;
  /**
   * Modules the manager carries besides its own (docs/modules.md, "Writing a module").
   *
   * @beta
   */
  modules?: readonly CreditModule[];
}

/**
 * The core's manager over one store, ledger and cache: `credits`, `ledger`, `db`, and the service of
 * each part it was given (`P`, its `parts` option: `PartServices`). @public
 */
export type CoreManager<P extends ManagerParts = Record<never, never>> = {
  /** Credits, holds, the journal and limits of each account. */
  credits: CoreCreditService;
  /** The audit ledger. */
  ledger: LedgerLogger;
  /** The store the services use. */
  db: DbManager;
  /** Stops the notifications' dispatcher (with that part), flushes and closes the ledger file, then closes the store. */
  close(): Promise<void>;
} & PartServices<P>;

/** The core's services and what a manager over them builds more with (src/manager.ts). @beta */
export interface OpenedCore<C extends CoreCreditService> {
  /** Credits, holds, the journal and limits of each account. */
  credits: C;
  /** The audit ledger. */
  ledger: LedgerLogger;
  /** The store the services use. */
  db: DbManager;
  /** Stops the notifications' dispatcher, flushes and closes the ledger file, then closes the store. */
  close(): Promise<void>;
  /** The subscriptions part's service, when given. */
  subscriptions: SubscriptionService | undefined;
  /** The notifications part's service, when given. */
  notifications: NotificationService | undefined;
  /** The jobs' part's service, when given. */
  expiration: ExpirationService | undefined;
  /** The credit and subscription services over a store, ledger and cache (`inTransaction` builds them over its own). */
  build(
    db: DbManager,
    ledger: LedgerLogger,
    cache: Cache | undefined,
  ): { credits: C; subscriptions: SubscriptionService | undefined };
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
 * `CoreManagerOptions`' fields) and the parts given; `makeCredits` builds the credit service.
 * @beta
 */
export async function openCore<C extends CoreCreditService>(
  o: Omit<z.output<typeof CoreManagerOptions>, "parts">,
  makeCredits: (options: CoreCreditServiceOptions) => C,
  parts: ManagerParts,
): Promise<OpenedCore<C>> {
  const db = o.db ?? new CoreInMemoryDbManager();
  const logger = o.logger ?? silentLogger;
  if (o.db === undefined || memoryByDefault.has(o.db)) noteMemoryStore(logger);
  // The modules' store parts are bound before `init()`, which creates their tables
  // (docs/writing-a-store.md, "A module's part"); bad modules are refused before anything is created.
  for (const m of moduleRegistry(o.modules as readonly CreditModule[] | undefined).modules)
    if (m.store !== undefined) db.usePart?.(m.store);
  if (o.init !== false) await db.init();
  const ledger = new LedgerLogger({ db, filePath: o.ledger ? o.ledger.filePath : false, logger, clock: o.clock });
  const notifying = parts.notifications && notificationsBuild(parts.notifications);
  const creditOptions = {
    clock: o.clock,
    logger,
    defaultReservationTtlSeconds: o.defaultReservationTtlSeconds,
    overdraftLimit: o.overdraftLimit ?? 0,
    overdraftLimits: o.overdraftLimits,
    lateUsageWindowDays: o.lateUsageWindowDays,
    checkpointEvery: o.checkpointEvery,
    outcomeWaitMs: o.outcomeWaitMs,
    // Its units of work record in the outbox while the part records (src/core/services/outbox-recording.ts).
    notifications: notifying?.outbox === undefined ? undefined : parts.notifications,
    trial: o.trial,
    features: o.features,
    journalKeys: o.journalKeys,
    // Periods start on time on every manager (docs/subscriptions.md): another manager may have
    // subscribed accounts in the same store.
    subscriptions: true,
    // Checked whole by the credit service's registry (`moduleRegistry`).
    modules: o.modules as readonly CreditModule[] | undefined,
  };
  const build = (db: DbManager, ledger: LedgerLogger, cache: Cache | undefined) => {
    const credits = makeCredits({ ...creditOptions, db, ledger, cache });
    const context = { db, ledger, cache, clock: o.clock, logger, credits };
    return { credits, subscriptions: parts.subscriptions && subscriptionsBuild(parts.subscriptions).service(context) };
  };
  const { credits, subscriptions } = build(db, ledger, o.cache);
  const context = { db, ledger, cache: o.cache, clock: o.clock, logger, credits };
  const notifications = notifying?.service?.(context);
  const expiration =
    parts.expiration &&
    expirationBuild(parts.expiration).service({
      ...context,
      subscriptions,
      notifications,
      reminderDays: notifying?.reminderDays,
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
      await notifications?.stop();
      await ledger.close();
      await db.close();
    },
  };
}

/**
 * The core's manager over one store, ledger and cache, without the modules (ARCHITECTURE.md,
 * "Modules"): `credits`, and the service of each part in `options.parts` — `subscriptions`,
 * `notifications`, `expiration` (docs/modules.md, "Parts of the core"). Bad options:
 * `ConfigurationError`.
 * @public
 */
export async function createCreditManager<const P extends ManagerParts = Record<never, never>>(
  options: CoreManagerOptions<P> = {},
): Promise<CoreManager<P>> {
  const { parts, ...o } = parseConfig(CoreManagerOptions, options, "options");
  const core = await openCore(o, (x) => new CoreCreditService(x), parts ?? {});
  const manager: Record<string, unknown> = {
    credits: core.credits,
    ledger: core.ledger,
    db: core.db,
    close: core.close,
  };
  if (core.subscriptions !== undefined) manager.subscriptions = core.subscriptions;
  if (core.notifications !== undefined) manager.notifications = core.notifications;
  if (core.expiration !== undefined) manager.expiration = core.expiration;
  return manager as CoreManager<P>;
}
