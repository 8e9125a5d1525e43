import * as z from "zod/mini";
import type { Logger } from "../logger.js";
import type { Cache } from "../cache/index.js";
import type { DbManager, DbTransaction, LoadedState } from "../db/types.js";
import type { ModuleRows } from "../domain/state.js";
import type { AccountWork, EntryMeta } from "../domain/account-work.js";
import type { Thresholds } from "../domain/notifications.js";
import { ConfigurationError, IdempotencyConflictError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import { ThresholdSpec, type JournalEntry } from "../models/index.js";
import { parseConfig } from "../models/parse.js";
import { CoreCreditService } from "./credit-service.js";
import { creditCore } from "./credit-service.js";

/** What promo and payment services share with `CoreCreditService`. @internal */
export interface UnitDeps {
  db: DbManager;
  ledger?: LedgerLogger | undefined;
  cache?: Cache | undefined;
  clock: () => Date;
  logger?: Logger | undefined;
  /** Runs their units of work (so notifications, settlement and side effects are the same). */
  credits: CoreCreditService;
  /**
   * Set while `credits` is a fallback built without `alerts`: the first unit of work on an account
   * whose alert level another (alerting) service keeps warns that this one records no alerts.
   */
  alertsOff?: { service: string; warned: boolean } | undefined;
  /** The unit of work's name in diagnostics (docs/observability.md). Default `unitOfWork`. */
  operation?: string | undefined;
}

/** What promo and payment services take to run units of work (see `PromoServiceOptions`). @internal */
export interface UnitOptions {
  db: DbManager;
  ledger?: LedgerLogger | undefined;
  cache?: Cache | undefined;
  clock?: (() => Date) | undefined;
  logger?: Logger | undefined;
  credits?: CoreCreditService | undefined;
  alerts?: Thresholds | undefined;
}

/**
 * Builds the shared dependencies, with a `CreditService` over the same store when none is given
 * — with the `alerts` thresholds given, as `new CreditService({ alerts })` takes them. `alerts`
 * beside `credits` is a `ConfigurationError`: the units of work run through that `CreditService`,
 * whose own `alerts` decide, and thresholds silently not applied are what this option is against.
 * @internal
 */
export function unitDeps(options: UnitOptions, service: string): UnitDeps {
  const clock = options.clock ?? (() => new Date());
  let alerts: Thresholds | undefined;
  if (options.alerts !== undefined) {
    if (options.credits !== undefined) {
      throw new ConfigurationError(
        `[credit-management] ${service}: give \`alerts\` to the CreditService passed as \`credits\` (its units of work, and so its thresholds, are the ones used), not to both.`,
      );
    }
    alerts = parseConfig(AlertsOption, options.alerts, "alerts", service);
  }
  const credits =
    options.credits ??
    new CoreCreditService({
      db: options.db,
      ledger: options.ledger,
      cache: options.cache,
      clock,
      logger: options.logger,
      alerts,
    });
  return {
    db: options.db,
    ledger: options.ledger,
    cache: options.cache,
    clock,
    logger: options.logger,
    credits,
    alertsOff: options.credits === undefined && alerts === undefined ? { service, warned: false } : undefined,
  };
}

/** `alerts` as `CoreCreditService` reads them (`Thresholds`: null is "none", like omitted). */
const AlertsOption = z.extend(ThresholdSpec, {
  lowCredits: z.optional(z.nullable(ThresholdSpec.shape.lowCredits.def.innerType)),
  lowCreditsPercent: z.optional(z.nullable(ThresholdSpec.shape.lowCreditsPercent.def.innerType)),
});

/** What a unit-of-work body returns: its value and what it saves beside the account's changes. */
export interface UnitResult<T> {
  value: T;
  extra?: ModuleRows;
}

/**
 * One unit of work on `userId`'s account, run by `CreditService`'s own runner (load, idempotent
 * replay, settlement, notifications, one `save` together with `extra`, side effects after the
 * commit). A repeated idempotency key without a `replay` is a conflict. `body` runs again from the
 * start when the store retries.
 * @internal
 */
export async function runAccountUnit<T>(
  deps: UnitDeps,
  userId: string,
  meta: EntryMeta,
  body: (work: AccountWork, tx: DbTransaction, state: LoadedState) => Promise<UnitResult<T>>,
  replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
): Promise<T> {
  // Seen inside the unit of work (which a store may run again), reported once it has ended: no
  // side effect from within a transaction.
  const off = deps.alertsOff;
  let unrecorded = false;
  const running = creditCore(deps.credits).runUnitOfWork(
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
    { settle: true, operation: deps.operation },
  );
  if (off === undefined) return running;
  const warn = () => {
    if (!unrecorded || off.warned) return;
    // The account has an alert level, so some service records alerts for it; this one's own
    // CreditService does not: its changes move the balance without the events they cause.
    off.warned = true;
    deps.logger?.warn(
      { userId, service: off.service },
      `credit-management: ${off.service} records no notification events (built without \`credits\` or \`alerts\`), but this account's alerts are kept by another service: pass the same \`credits\`, or \`alerts\``,
    );
  };
  return running.finally(warn);
}
