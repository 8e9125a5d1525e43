import { isDeepStrictEqual } from "node:util";
import type { Changes } from "../../core/db/types.js";
import {
  type AccountState as BaseState,
  StateCache as BaseCache,
  stateAfter as mergeChanges,
} from "../../core/db/state-cache.js";
import { ACCOUNT } from "./documents.js";

/**
 * An account as a unit of work loads it, with the account document's write counter. The cache
 * holds the last committed state of recently used accounts: a unit of work may start from it
 * instead of reading the account; its save then guards on `{ seq, _rev }`, so the write only lands
 * if no other writer committed since (otherwise it is retried from a fresh read), and a unit of
 * work that ends without saving (a refusal, a read) re-reads `_rev` to confirm it decided on
 * current data.
 */
export interface AccountState extends BaseState {
  /** The account document's `_rev`: every committed save increments it. */
  rev: number;
}

export class StateCache extends BaseCache<AccountState> {}

/** The state after `changes` were committed on top of `before` (null: the account was new). */
export function stateAfter(before: AccountState | null, changes: Changes): AccountState {
  return {
    ...mergeChanges(before, changes),
    rev: changes.previousSeq === null || before === null ? 1 : before.rev + 1,
  };
}

/**
 * Tests (`verifyStateCache`): throws unless the cached state is the one the database holds (the
 * same fields and values; grants and holds in any order). An account field the unit of work left
 * out is null in the database (`toDoc`): a module's column on an account created without it.
 */
export function checkCachedState(
  userId: string,
  cached: AccountState | null | undefined,
  stored: AccountState | null | undefined,
): void {
  // Another manager wrote the account since (its `_rev` moved): a stale state is no fault of the
  // cache; the save's guard refuses it and a decision without a save is confirmed on `_rev`.
  if (cached && stored && cached.rev !== stored.rev) return;
  const byId = <T extends { id: string }>(xs: readonly T[]) => [...xs].sort((a, b) => (a.id < b.id ? -1 : 1));
  const norm = (x: AccountState | null | undefined) =>
    x && {
      ...x,
      account: { ...Object.fromEntries(ACCOUNT.keys.map((k) => [k, null])), ...x.account },
      grants: byId(x.grants).map((g) => ({ ...g })),
      reservations: byId(x.reservations).map((r) => ({ ...r })),
    };
  const a = JSON.stringify(norm(cached));
  const b = JSON.stringify(norm(stored));
  if (!isDeepStrictEqual(JSON.parse(a), JSON.parse(b)))
    throw new Error(`state cache of ${userId} differs from the database: ${a} != ${b}`);
}
