import { own } from "../domain/own.js";
import type { FeatureRule } from "../domain/checks.js";
import type { Logger } from "../logger.js";
import { CacheAside } from "../cache/aside.js";
import type { DbTransaction } from "../db/types.js";
import type { AccountWork, EntryMeta, Settlement } from "../domain/account-work.js";
import { namesNothing } from "../domain/entry-meta.js";
import { fingerprint } from "../domain/hash.js";
import { lateOccurredAt } from "../domain/late-usage.js";
import { ConfigurationError, ModuleError, ReservationExpiredError, ValidationError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import {
  checkColumnValue,
  isPackageModule,
  moduleRegistry,
  type AccountColumn,
  type CreditModule,
  type ModuleCapability,
  type ModuleContext,
  type ModuleRegistry,
} from "../module.js";
import type { UnitWork } from "../domain/unit-work.js";
import { ModuleWork } from "./module-work.js";
import { isPart, notificationsBuild } from "../part-builds.js";
import { DEFAULT_UNIT } from "../models/common.js";
import type { Reservation } from "../models/entities.js";
import {
  CheckpointEvery,
  FeatureRules,
  TrialCredits,
  DeductOptions,
  JournalKeysOptions,
  DEFAULT_LATE_USAGE_WINDOW_DAYS,
  LateUsageWindowDays,
  OutcomeWaitMs,
  OverdraftLimit,
  OverdraftLimits,
  type CommitOptions,
  type ReleaseOptions,
  type ReserveOptions,
} from "../models/inputs.js";
import type { Notification } from "../models/notifications.js";
import { parse } from "../models/parse.js";
import type { JournalEntry } from "../models/records.js";
import { parseConfig } from "../models/parse.js";
import { type JournalKeyring, journalKeyring } from "../domain/journal-keys.js";
import { copyHold, replayHold } from "./hold-lookup.js";
import { activeHold, includeHeldGrants, saveAccountOnly, UnitRunner, type UnitContext } from "./unit-of-work.js";
import { SubscriptionPeriods } from "./subscription-periods.js";
import type { CoreCreditServiceOptions } from "./credit-service.js";
import type * as z from "zod/mini";

/** `outcomeWaitMs` when none is given (docs/concepts.md, "Certain and uncertain errors"). */
const DEFAULT_OUTCOME_WAIT_MS = 5000;

/*
 * What the services of this package share of a `CoreCreditService` besides its public API: the unit-of-work
 * runner, the validated options, and the operations other services call on input their own models
 * already accepted (metering's holds and commits, lease settles, the jobs' units of work). A
 * `CoreCreditService` builds one; its modules get the part a module may use through their `init`
 * (`moduleContext` below, the `ModuleContext` of src/core/module.ts), src/core's own services the
 * rest through `creditCore`. Not exported from the package.
 */

/** Options as their models return them (validated). */
export type ParsedMutationOptions = Omit<z.output<typeof ReleaseOptions>, "userId">;
export type ParsedReserveOptions = z.output<typeof ReserveOptions>;
export type ParsedCommitOptions = Omit<z.output<typeof CommitOptions>, "userId">;

/** The entry fields of a call that names none. */
export const NO_META: EntryMeta = Object.freeze({});

/** What a unit of work of another service may ask for (see `CreditCore.runUnitOfWork`). */
export interface UnitOfWorkOptions {
  settle: boolean;
  /** The unit of work's name in diagnostics (docs/observability.md). Default `unitOfWork`. */
  operation?: string | undefined;
}

/** The shared part of a `CoreCreditService` (see the comment at the top of this file). */
export class CreditCore {
  readonly db: CoreCreditServiceOptions["db"];
  readonly ledger: LedgerLogger | undefined;
  /** The balance cache, when there is one. */
  readonly cache: CacheAside | undefined;
  readonly clock: () => Date;
  /** The `clock` option as given (undefined: the real clock; leases then read `Date.now()`, no Date per charge). */
  readonly givenClock: (() => Date) | undefined;
  /** The manager's logger (the metering middlewares log a failed handler to it). */
  readonly logger: Logger | undefined;
  readonly defaultTtl: number;
  /** The `overdraftLimit` option in credits (default 0); null: `"unlimited"`. */
  readonly overdraftLimit: number | null;
  /** The `overdraftLimits` option but the default unit's (null: unlimited); a unit not listed has none (docs/units.md). */
  readonly unitOverdraftLimits: Readonly<Record<string, number | null>>;
  /** How many days back usage may be recorded with `occurredAt` (docs/usage.md, "Late usage"). */
  readonly lateUsageWindowDays: number;
  /** The keys of the journal's chain (`journalKeys`, docs/concepts.md, "A keyed chain"); undefined: unkeyed. */
  readonly keyring: JournalKeyring | undefined;
  /** The `features` rules (docs/trial-and-checks.md). */
  readonly features: Readonly<Record<string, FeatureRule>>;
  /** Runs the units of work (src/core/services/unit-of-work.ts). */
  readonly units: UnitRunner;
  /** Whether its units of work bring a due subscription period first (the `subscriptions` option). */
  readonly bringsPeriods: boolean;
  /** What its modules registered, with the core's own (src/core/module.ts). */
  readonly registry: ModuleRegistry;

  constructor(options: CoreCreditServiceOptions) {
    this.registry = moduleRegistry(options.modules);
    this.db = options.db;
    this.ledger = options.ledger;
    this.cache = options.cache && new CacheAside(options.cache, options.cacheTtlSeconds ?? 30, options.logger);
    this.clock = options.clock ?? (() => new Date());
    this.givenClock = options.clock;
    this.logger = options.logger;
    this.defaultTtl = options.defaultReservationTtlSeconds ?? 900;
    const overdraft = parseConfig(
      OverdraftLimit,
      options.overdraftLimit === undefined ? 0 : options.overdraftLimit,
      "overdraftLimit",
      "CreditService",
    );
    const perUnit = parseConfig(OverdraftLimits, options.overdraftLimits ?? {}, "overdraftLimits", "CreditService");
    const { [DEFAULT_UNIT]: ownDefault, ...others } = perUnit;
    this.overdraftLimit =
      ownDefault !== undefined
        ? ownDefault === "unlimited"
          ? null
          : ownDefault
        : overdraft === "unlimited"
          ? null
          : overdraft;
    this.unitOverdraftLimits = Object.fromEntries(
      Object.entries(others).map(([unit, limit]) => [unit, limit === "unlimited" ? null : limit]),
    );
    if (options.notifications !== undefined && !isPart(options.notifications, "notifications")) {
      throw new ConfigurationError(
        "[credit-management] CreditService: notifications must be what notificationsPart() returns",
      );
    }
    const trial =
      options.trial === undefined ? undefined : parseConfig(TrialCredits, options.trial, "trial", "CreditService");
    this.features = parseConfig(FeatureRules, options.features ?? {}, "features", "CreditService");
    this.keyring =
      options.journalKeys === undefined
        ? undefined
        : journalKeyring(parseConfig(JournalKeysOptions, options.journalKeys, "journalKeys", "CreditService"));
    const checkpointEvery =
      options.checkpointEvery === undefined
        ? undefined
        : parseConfig(CheckpointEvery, options.checkpointEvery, "checkpointEvery", "CreditService");
    const outcomeWaitMs = parseConfig(
      OutcomeWaitMs,
      options.outcomeWaitMs ?? DEFAULT_OUTCOME_WAIT_MS,
      "outcomeWaitMs",
      "CreditService",
    );
    this.lateUsageWindowDays = parseConfig(
      LateUsageWindowDays,
      options.lateUsageWindowDays ?? DEFAULT_LATE_USAGE_WINDOW_DAYS,
      "lateUsageWindowDays",
      "CreditService",
    );
    if (options.subscriptions !== undefined && typeof options.subscriptions !== "boolean") {
      throw new ConfigurationError("[credit-management] CreditService: subscriptions must be a boolean");
    }
    // With `subscriptions`, a credit operation or read that finds a subscription period ended brings
    // the next one first (docs/subscriptions.md, "Periods start on time"), as the renewal job would.
    const periods =
      options.subscriptions === true
        ? new SubscriptionPeriods({ db: this.db, core: this, ledger: this.ledger, clock: this.clock })
        : undefined;
    this.bringsPeriods = periods !== undefined;
    this.units = new UnitRunner({
      db: this.db,
      ledger: this.ledger,
      cache: this.cache,
      clock: this.clock,
      logger: this.logger,
      outbox: options.notifications && notificationsBuild(options.notifications).outbox,
      trial,
      features: this.features,
      checkpointEvery,
      outcomeWaitMs,
      periods: periods && ((userId) => periods.bringDue(userId)),
      unitHooks: [
        ...this.registry.modules.flatMap((m) =>
          m.unitHook === undefined
            ? []
            : [
                {
                  hook: m.unitHook,
                  module: m.id,
                  column: m.accountColumn as AccountColumn<unknown> | undefined,
                  guarded: !isPackageModule(m),
                },
              ],
        ),
        ...(options.unitHooks ?? []).map((hook) => ({ hook, module: undefined, column: undefined, guarded: true })),
      ],
      journalKey: this.keyring?.current,
      unitOverdraftLimits: this.unitOverdraftLimits,
    });
  }

  /**
   * One unit of work on an account, for the core's other services (the subscription and expiry
   * jobs; a module runs its own through `ModuleContext.runUnitOfWork`): load (with `meta`'s idempotency key), answer a repeated key with
   * `replay`, settle, run `body`, save; then mirror to the ledger file and invalidate the cache.
   */
  runUnitOfWork<T>(
    userId: string,
    meta: EntryMeta,
    body: (work: AccountWork, tx: DbTransaction, unit: UnitContext) => Promise<T>,
    replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
    options: UnitOfWorkOptions = { settle: true },
  ): Promise<T> {
    return this.units.mutate(options.operation ?? "unitOfWork", userId, meta, body, replay, {
      settle: options.settle,
      periods: false,
    });
  }

  /** A deduction (`deductCredits`; after service: `deductCreditsAfterService`) of validated input. */
  deduct(operation: string, user: string, n: number, o: DeductOptions, allowDebt: boolean): Promise<JournalEntry> {
    const meta = this.meta(operation, o, () => ({ amount: n, ...o }));
    return this.units.mutate(operation, user, meta, (work) =>
      work.deduct(n, this.late(meta, work.now), { allowDebt, overdraftLimit: this.overdraftLimit }),
    );
  }

  /**
   * `meta` of usage recorded at `now`: its `occurredAt` checked against the late-usage window
   * (a `LateUsageError` outside it) and left out when the usage is on time (docs/usage.md, "Late usage").
   */
  late(meta: EntryMeta, now: Date): EntryMeta {
    if (meta.occurredAt === undefined) return meta;
    const occurredAt = lateOccurredAt(meta.occurredAt, now, this.lateUsageWindowDays);
    return occurredAt === meta.occurredAt ? meta : { ...meta, occurredAt };
  }

  /**
   * An after-service deduction of `amount`, or of what the overdraft limit allows when that is less
   * (the metering of a call that outlived its hold: the usage was delivered). Decided inside the unit
   * of work, so the account cannot move in between; a clamped entry records its `shortfall` and its
   * metadata adds `requested`; when the limit allows nothing, an entry of 0 credits whose `shortfall` is all of
   * it (docs/metering.md, "Served and not paid"). A repeated key answers with the first entry, as
   * `deductCreditsAfterService` does.
   */
  async chargeUpToLimit(userId: string, amount: number, options: DeductOptions): Promise<JournalEntry> {
    const o = parse(DeductOptions, options, "options");
    const meta = this.meta("deductCreditsAfterService", o, () => ({ amount, ...options }));
    return this.units.mutate("deductCreditsAfterService", userId, meta, (work) =>
      work.deductUpToLimit(amount, this.late(meta, work.now), this.overdraftLimit),
    );
  }

  /**
   * `reserveCredits` for input its models already accepted (metering parses its options once, up
   * front). Resolves to the stored reservation (read it, never change it), or with `callerCopy` to
   * the caller's own copy, made in the unit of work (the store may keep the hold it saved).
   */
  hold(user: string, n: number, o: ParsedReserveOptions, callerCopy = false): Promise<Reservation> {
    const ttl = o.ttlSeconds ?? this.defaultTtl;
    const meta = this.meta("reserveCredits", o, () => ({ amount: n, ...o, ttlSeconds: ttl }));
    const out = callerCopy ? copyHold : (r: Reservation) => r;
    return this.units.mutate(
      "reserveCredits",
      user,
      meta,
      (work) => out(work.reserve(n, ttl, o.reason ?? null, meta, o.minimum).reservation),
      async (entry, tx) => out(await replayHold(entry, tx)),
    );
  }

  /**
   * `commitReservedCredits` of a hold of `userId` (known to the caller: no lookup), for input its
   * models already accepted. `upToLimit` (metering, usage already delivered): past the overdraft
   * limit it commits what the limit allows — the hold and the headroom beyond it — instead of
   * refusing, decided inside the unit of work as `chargeUpToLimit` decides; a clamped commit entry
   * records its `shortfall` and its metadata adds `requested`.
   */
  commitHold(userId: string, id: string, o: ParsedCommitOptions, upToLimit = false): Promise<JournalEntry> {
    const meta = this.meta("commitReservedCredits", o, () => ({ reservationId: id, ...o }));
    return this.units.mutate("commitReservedCredits", userId, meta, async (work, tx) => {
      const hold = await activeHold(work, tx, id);
      if (hold.expiresAt.getTime() <= work.now.getTime()) throw new ReservationExpiredError(id, hold.expiresAt);
      const limit = this.overdraftLimit;
      const requested = o.amount ?? hold.amount;
      return upToLimit ? work.commitUpToLimit(hold, requested, meta, limit) : work.commit(hold, requested, meta, limit);
    });
  }

  /** `releaseReservedCredits` of a hold of `userId`, for input its models already accepted. */
  releaseHold(userId: string, id: string, o: ParsedMutationOptions): Promise<JournalEntry> {
    const meta = this.meta("releaseReservedCredits", o, () => ({ reservationId: id, ...o }));
    return this.units.mutate(
      "releaseReservedCredits",
      userId,
      meta,
      async (work, tx) => work.releaseHold(await activeHold(work, tx, id), "released", meta).entry,
    );
  }

  /**
   * One account settled as of `asOf` (default now; the caller checks it is not later): grants due
   * and holds lapsed by then, not by the clock (`expireCredits`, the hold-release job).
   */
  settleAsOf(userId: string, asOf?: Date, operation = "expireCredits"): Promise<Settlement> {
    return this.units.mutate(
      operation,
      userId,
      {},
      async (work, tx, unit) => {
        await includeHeldGrants(work, tx, unit.state.reservations);
        return work.settle(asOf ?? work.now);
      },
      undefined,
      { settle: false },
    );
  }

  /**
   * Settles what lapsed since the account was last touched, when an expiry is due at `now` (so
   * reads never report expired credits or lapsed holds). One read when nothing is due; no read
   * again after settling.
   */
  async settleDue(userId: string, now: Date): Promise<void> {
    const account = await this.db.getAccount(userId);
    if (account?.nextExpiryAt && account.nextExpiryAt.getTime() <= now.getTime())
      await this.units.mutate("settle", userId, {}, () => undefined);
  }

  /**
   * The unit a call acts in (docs/units.md, "Features in a unit"): the one `feature`'s rule names,
   * else `unit`; undefined: the default unit. Naming a unit other than the feature's is a
   * `ValidationError`.
   */
  unitOf(feature: string | undefined, unit: string | undefined): string | undefined {
    const named = unit === DEFAULT_UNIT ? undefined : unit;
    const rule = feature === undefined ? undefined : own(this.features, feature)?.unit;
    if (rule === undefined) return named;
    const ruleUnit = rule === DEFAULT_UNIT ? undefined : rule;
    if (unit !== undefined && named !== ruleUnit)
      throw new ValidationError(`Invalid options.unit: feature ${feature} is paid in ${rule}, not ${unit}`, [
        { path: "unit", message: `feature ${feature} is paid in ${rule}` },
      ]);
    return ruleUnit;
  }

  /**
   * The entry fields of validated options `o`. `args`: the call's arguments as the fingerprint of
   * an idempotency key covers them — built only when there is a key (most calls have none).
   */
  meta(
    operation: string,
    o: DeductOptions & { idempotencyKey?: string },
    args: () => Record<string, unknown>,
  ): EntryMeta {
    // Options that name nothing an entry records (`{ amount: 3 }` of a commit): no object of undefined fields.
    if (namesNothing(o)) return NO_META;
    let print: string | undefined;
    if (o.idempotencyKey !== undefined) {
      const { correlationId: _c, idempotencyKey: _k, ...rest } = args();
      // The default unit named or not is one unit: one fingerprint (docs/units.md).
      if (rest.unit === DEFAULT_UNIT) delete rest.unit;
      print = fingerprint(operation, rest);
    }
    return {
      description: o.description,
      idempotencyKey: o.idempotencyKey,
      fingerprint: print,
      unit: this.unitOf(o.feature, o.unit),
      correlationId: o.correlationId,
      metadata: o.metadata,
      spender: o.spender,
      feature: o.feature,
      // (Parsed by the deduction's model: a Date.)
      occurredAt: o.occurredAt as Date | undefined,
    };
  }
}

/**
 * The context the core hands `module`'s `init` (src/core/module.ts, docs/modules.md "Writing a
 * module"): the core's options and operations a module may use, each bound to `core` (a module may
 * call them detached), within what the module declared: its own column (`changeColumn`) and its
 * capabilities (`runUnitOfWork`'s `UnitWork`, src/core/services/module-work.ts). Made once per
 * module of a `CoreCreditService`.
 */
export function moduleContext(core: CreditCore, module: CreditModule): ModuleContext {
  const units = core.units;
  const allowed = new Set<ModuleCapability>(module.capabilities ?? []);
  const id = module.id;
  return Object.freeze({
    db: core.db,
    ledger: core.ledger,
    clock: core.clock,
    realClock: core.givenClock === undefined,
    logger: core.logger,
    registry: core.registry,
    overdraftLimit: core.overdraftLimit,
    features: core.features,
    alerts: units.config.outbox?.thresholds,
    unitOf: core.unitOf.bind(core),
    hold: core.hold.bind(core),
    commitHold: core.commitHold.bind(core),
    releaseHold: core.releaseHold.bind(core),
    deduct: (userId: string, amount: number, options: DeductOptions, allowDebt = false) =>
      core.deduct(allowDebt ? "deductCreditsAfterService" : "deductCredits", userId, amount, options, allowDebt),
    chargeUpToLimit: core.chargeUpToLimit.bind(core),
    runUnitOfWork: <T>(
      userId: string,
      meta: EntryMeta,
      body: (work: UnitWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
      replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
      options?: { operation?: string; settle?: boolean; periods?: boolean },
    ): Promise<T> =>
      units.mutate(
        options?.operation ?? "unitOfWork",
        userId,
        meta,
        (work, tx, unit) => body(new ModuleWork(work, id, allowed, core.overdraftLimit), tx, unit),
        replay,
        { settle: options?.settle ?? true, periods: options?.periods },
      ),
    changeColumn: async <T>(
      userId: string,
      column: AccountColumn<T>,
      change: (
        value: T | null,
        now: Date,
        malformed?: ModuleError,
      ) => { value: T | null; notifications?: readonly Notification[] } | null,
    ): Promise<T | null> => {
      // The module's own column alone (docs/modules.md, "What a module may change"), read and
      // written with the schema it declared.
      const own = module.accountColumn as AccountColumn<T> | undefined;
      if (own === undefined || own.name !== column?.name) {
        const name = typeof column?.name === "string" ? column.name : String(column);
        throw new ModuleError(
          id,
          `[credit-management] module "${id}": changeColumn of account column "${name}", which ${own === undefined ? "the module declares no column" : `is not its own ("${own.name}")`}: a module changes only the column it declares; nothing was written`,
          { column: name },
        );
      }
      let after: T | null = null;
      await saveAccountOnly(core.db, userId, core.clock, (account, now) => {
        let before: T | null = null;
        let malformed: ModuleError | undefined;
        try {
          before = checkColumnValue(id, own, userId, Reflect.get(account, own.name), "stored");
        } catch (error) {
          if (!(error instanceof ModuleError)) throw error;
          malformed = error;
        }
        const next = malformed === undefined ? change(before, now) : change(null, now, malformed);
        if (next === null) {
          if (malformed !== undefined) throw malformed;
          after = before;
          return null;
        }
        after = checkColumnValue(id, own, userId, next.value, "written");
        own.set(account, after);
        return next.notifications ?? [];
      });
      return after;
    },
  });
}
