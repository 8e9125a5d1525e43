/**
 * How the billing module's services (promos, payments, auto top-up, checkouts) run their units of
 * work: through the module context the credit service hands the billing module (docs/modules.md,
 * "The module's context"), as any module outside this package would.
 */
import { recordingOf } from "../../core/services/outbox-recording.js";
import * as z from "zod/mini";
import type { Logger } from "../../core/logger.js";
import type { Cache } from "../../core/cache/index.js";
import type { DbManager, DbTransaction, LoadedState } from "../../core/db/types.js";
import type { ModuleRows } from "../../core/domain/state.js";
import type { EntryMeta, UnitWork } from "../../core/domain/unit-work.js";
import type { Thresholds } from "../../core/domain/notifications.js";
import { ConfigurationError, IdempotencyConflictError } from "../../core/errors.js";
import type { LedgerLogger } from "../../core/ledger/index.js";
import type { ModuleContext } from "../../core/module.js";
import { ThresholdSpec, type JournalEntry } from "../../core/models/index.js";
import { parseConfig } from "../../core/models/parse.js";
import { CoreCreditService } from "../../core/services/credit-service.js";
import { billingStore, type BillingDb } from "./store.js";

/** What promo and payment services take to run units of work (see `PromoServiceOptions`). */
export interface UnitOptions {
  db: DbManager;
  ledger?: LedgerLogger | undefined;
  cache?: Cache | undefined;
  clock?: (() => Date) | undefined;
  logger?: Logger | undefined;
  /** The `CreditService` whose units of work these are (it carries the billing module). */
  credits?: object | undefined;
  alerts?: Thresholds | undefined;
}

/** What the billing module's services run on: the billing module's context and the store's billing part. */
export interface BillingDeps {
  /** The store's billing part. */
  db: BillingDb;
  ledger?: LedgerLogger | undefined;
  cache?: Cache | undefined;
  clock: () => Date;
  logger?: Logger | undefined;
  /** The context of the billing module of the credit service that runs these units of work. */
  ctx: ModuleContext;
  /**
   * Set while the credit service is a fallback built without `alerts`: the first unit of work on an
   * account whose alert level another (alerting) service keeps warns that this one records no alerts.
   */
  alertsOff?: { service: string; warned: boolean } | undefined;
}

/** The billing module's context in each credit service that carries the module (`CreditService`), by the service. */
const contexts = new WeakMap<object, { context(): ModuleContext }>();

/** Records `billing` as the billing module of `credits` (`CreditService`'s constructor does, once the module is initialised). */
export function carriesBilling(credits: object, billing: { context(): ModuleContext }): void {
  contexts.set(credits, billing);
}

/**
 * The context of the billing module of `credits`: the promo and payment services' way to the
 * core from the `credits` they are given. Undefined for a service that carries none.
 */
export function billingOf(credits: object): ModuleContext | undefined {
  return contexts.get(credits)?.context();
}

/** `alerts` as `CoreCreditService` reads them (`Thresholds`: null is "none", like omitted). */
const AlertsOption = z.extend(ThresholdSpec, {
  lowCredits: z.optional(z.nullable(ThresholdSpec.shape.lowCredits.def.innerType)),
  lowCreditsPercent: z.optional(z.nullable(ThresholdSpec.shape.lowCreditsPercent.def.innerType)),
});

/**
 * The billing module's context of `options.credits` (a `CreditService`, which carries the billing
 * module), or of a core credit service built here over the same store with the billing module and
 * the `alerts` given. `alerts` beside `credits` is a `ConfigurationError`: the units of work run
 * through that service, whose own `alerts` decide, and thresholds silently not applied are what
 * this option is against. The store's billing part is required (a `ConfigurationError` without it).
 */
export function billingDeps(options: UnitOptions, service: string): BillingDeps {
  const clock = options.clock ?? (() => new Date());
  let alertsOff: BillingDeps["alertsOff"];
  let ctx: ModuleContext | undefined;
  if (options.credits !== undefined) {
    if (options.alerts !== undefined) {
      throw new ConfigurationError(
        `[credit-management] ${service}: give \`alerts\` to the CreditService passed as \`credits\` (its units of work, and so its thresholds, are the ones used), not to both.`,
      );
    }
    ctx = billingOf(options.credits);
  } else {
    ctx = fallbackContext(options, clock, service);
    if (options.alerts === undefined) alertsOff = { service, warned: false };
  }
  if (ctx === undefined) {
    throw new ConfigurationError(
      `[credit-management] ${service}: \`credits\` must be a CreditService (from \`credit-management\`, which carries the billing module), or omitted`,
    );
  }
  return {
    db: billingStore(options.db),
    ledger: options.ledger,
    cache: options.cache,
    clock,
    logger: options.logger,
    ctx,
    alertsOff,
  };
}

/**
 * The context of a core credit service over `options.db`, with the `alerts` given, built for a
 * promo or payment service given no `credits`: its one module is there for its context.
 */
function fallbackContext(options: UnitOptions, clock: () => Date, service: string): ModuleContext | undefined {
  const alerts =
    options.alerts === undefined ? undefined : parseConfig(AlertsOption, options.alerts, "alerts", service);
  const context: { ctx?: ModuleContext } = {};
  new CoreCreditService({
    db: options.db,
    ledger: options.ledger,
    cache: options.cache,
    clock,
    logger: options.logger,
    notifications: recordingOf(alerts, false, service),
    // The billing module's capabilities (its take-backs: ./module.ts).
    modules: [{ id: "billing", capabilities: ["overdraftLimit", "takeBack"], init: (c) => (context.ctx = c) }],
  });
  return context.ctx;
}

/** What a unit-of-work body returns: its value and the billing rows saved beside the account's changes. */
export interface UnitResult<T> {
  value: T;
  extra?: ModuleRows;
}

/**
 * One unit of work on `userId`'s account through the billing module's context (load, idempotent
 * replay, settlement, notifications, one save together with `extra`, side effects after the
 * commit); no due subscription period is brought first. A repeated idempotency key without a
 * `replay` is a conflict. `body` runs again from the start when the store retries.
 */
export async function runBillingUnit<T>(
  deps: BillingDeps,
  operation: string,
  userId: string,
  meta: EntryMeta,
  body: (work: UnitWork, tx: DbTransaction, state: LoadedState) => Promise<UnitResult<T>>,
  replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
): Promise<T> {
  // Seen inside the unit of work (which a store may run again), reported once it has ended: no
  // side effect from within a transaction.
  const off = deps.alertsOff;
  let unrecorded = false;
  const running = deps.ctx.runUnitOfWork(
    userId,
    meta,
    async (work, tx, unit) => {
      if (off !== undefined && !off.warned && work.account.alert !== null) unrecorded = true;
      const result = await body(work, tx, unit.state);
      if (result.extra !== undefined) unit.attach(result.extra);
      return result.value;
    },
    replay ??
      (async () => {
        throw new IdempotencyConflictError(meta.idempotencyKey ?? "");
      }),
    { operation, settle: true, periods: false },
  );
  if (off === undefined) return running;
  const warn = () => {
    if (!unrecorded || off.warned) return;
    // The account has an alert level, so some service records alerts for it; this one's own
    // credit service does not: its changes move the balance without the events they cause.
    off.warned = true;
    deps.logger?.warn(
      { userId, service: off.service },
      `credit-management: ${off.service} records no notification events (built without \`credits\` or \`alerts\`), but this account's alerts are kept by another service: pass the same \`credits\`, or \`alerts\``,
    );
  };
  return running.finally(warn);
}
