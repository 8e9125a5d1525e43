import type { Changes } from "../../core/db/types.js";
import {
  type AccountState as BaseState,
  StateCache as BaseCache,
  stateAfter as mergeChanges,
} from "../../core/db/state-cache.js";

/**
 * An account as a unit of work loads it, and the `xmin` of the account row that state belongs to.
 *
 * Every save writes the account row (a guarded update, or the insert of a new account) in the
 * same transaction as the grants, holds and entries it changes, so a new version of the row,
 * with the writing transaction's id as its `xmin`, comes with every committed change of the
 * account's state, whichever process made it. The load statement compares the locked row's
 * `xmin` with the cached one on the server and reads grants and holds only when they differ.
 */
export interface AccountState extends BaseState {
  /** `xmin` of the account row (a 32-bit transaction id, as text). */
  xmin: string;
}

/**
 * How long an entry may be used. Transaction ids wrap around after 2^32 transactions: an entry
 * used within ten minutes of being stored could only be mistaken for a newer version of its row
 * if the server ran over 7 million transactions a second.
 */
const TTL_MS = 10 * 60 * 1000;

export class StateCache extends BaseCache<AccountState> {
  constructor(max: number) {
    super(max, TTL_MS);
  }
}

/** The account's state once `changes`, made on top of `before`, are committed by transaction `xmin`. */
export function stateAfter(before: BaseState | null, changes: Changes, xmin: string): AccountState {
  return { ...mergeChanges(before, changes), xmin };
}
