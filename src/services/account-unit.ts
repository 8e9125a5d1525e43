import type { Logger } from "pino";
import type { Cache } from "../cache/index.js";
import type { DbManager, DbTransaction, LoadedState } from "../db/types.js";
import type { PromoPaymentChanges } from "../db/types-promos.js";
import type { AccountWork, EntryMeta } from "../domain/account-work.js";
import { IdempotencyConflictError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import type { JournalEntry } from "../models/index.js";
import { CreditService } from "./credit-service.js";

/** What promo and payment services share with `CreditService`. @internal */
export interface UnitDeps {
  db: DbManager;
  ledger?: LedgerLogger | undefined;
  cache?: Cache | undefined;
  clock: () => Date;
  logger?: Logger | undefined;
  /** Runs their units of work (so notifications, settlement and side effects are the same). */
  credits: CreditService;
}

/** Builds the shared dependencies, with a `CreditService` over the same store when none is given. @internal */
export function unitDeps(options: {
  db: DbManager;
  ledger?: LedgerLogger | undefined;
  cache?: Cache | undefined;
  clock?: (() => Date) | undefined;
  logger?: Logger | undefined;
  credits?: CreditService | undefined;
}): UnitDeps {
  const clock = options.clock ?? (() => new Date());
  const credits =
    options.credits ??
    new CreditService({ db: options.db, ledger: options.ledger, cache: options.cache, clock, logger: options.logger });
  return { db: options.db, ledger: options.ledger, cache: options.cache, clock, logger: options.logger, credits };
}

/** What a unit-of-work body returns: its value and what it saves beside the account's changes. */
export interface UnitResult<T> {
  value: T;
  extra?: PromoPaymentChanges;
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
  return deps.credits.runUnitOfWork(
    userId,
    meta,
    async (work, tx, unit) => {
      const result = await body(work, tx, unit.state);
      if (result.extra !== undefined) unit.attach(result.extra);
      return result.value;
    },
    replay ??
      (async () => {
        throw new IdempotencyConflictError(meta.idempotencyKey ?? "");
      }),
  );
}
