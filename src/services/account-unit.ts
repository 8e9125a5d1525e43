import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { Cache } from "../cache/index.js";
import type { DbManager, DbTransaction, LoadedState } from "../db/types.js";
import type { PromoPaymentChanges } from "../db/types-promos.js";
import { AccountWork, type EntryMeta } from "../domain/account-work.js";
import { IdempotencyConflictError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import type { JournalEntry } from "../models/index.js";

/** What promo and payment units of work share with `CreditService`. @internal */
export interface UnitDeps {
  db: DbManager;
  ledger?: LedgerLogger | undefined;
  cache?: Cache | undefined;
  clock: () => Date;
  logger?: Logger | undefined;
}

/** What a unit-of-work body returns: its value and what it saves beside the account's changes. */
export interface UnitResult<T> {
  value: T;
  extra?: PromoPaymentChanges;
}

/**
 * One unit of work on `userId`'s account, as `CreditService` runs them: load (with the idempotency
 * key of `meta`, answered by `replay` when it was used before), settle what lapsed, run `body`,
 * save the account's changes together with `extra` (promo claims, payment updates) in one
 * `save`; then, only after the commit, mirror the entries to the ledger and invalidate the cached
 * credit info. `body` runs again from the start when the store retries.
 * @internal
 */
export async function runAccountUnit<T>(
  deps: UnitDeps,
  userId: string,
  meta: EntryMeta,
  body: (work: AccountWork, tx: DbTransaction, state: LoadedState) => Promise<UnitResult<T>>,
  replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
): Promise<T> {
  const key = meta.idempotencyKey;
  const { value, entries } = await deps.db.transaction(userId, async (tx) => {
    const state = await tx.load(key === undefined ? undefined : { idempotencyKey: key });
    if (key !== undefined && state.idempotent !== null) {
      const first = state.idempotent;
      if (first.fingerprint !== meta.fingerprint) throw new IdempotencyConflictError(key);
      if (replay === undefined) throw new IdempotencyConflictError(key);
      return { value: await replay(first, tx), entries: [] as JournalEntry[] };
    }
    const work = new AccountWork(userId, state, deps.clock(), randomUUID);
    if (work.needsSettle) {
      const missing = new Set<string>();
      for (const h of state.reservations) {
        for (const p of h.allocations) if (work.getGrant(p.grantId) === undefined) missing.add(p.grantId);
      }
      if (missing.size > 0) work.include(await tx.getGrants([...missing]));
      work.settle();
    }
    const result = await body(work, tx, state);
    const extra = result.extra ?? {};
    const hasExtra = (extra.promoClaims?.length ?? 0) > 0 || (extra.paymentUpdates?.length ?? 0) > 0;
    if (work.changed || hasExtra) await tx.save({ ...work.changes(), ...extra });
    return { value: result.value, entries: work.entries };
  });
  if (entries.length > 0) {
    deps.ledger?.recordTransactions(entries);
    if (deps.cache !== undefined) {
      try {
        await deps.cache.delete(`credits:info:${userId}`);
      } catch (error) {
        deps.logger?.warn({ err: error, userId }, "credit-management: cache invalidation failed");
      }
    }
  }
  return value;
}
