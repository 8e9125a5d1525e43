import { LRUCache } from "lru-cache";
import type { Account, Grant, Reservation } from "../../models/index.js";
import type { Changes } from "../types.js";

/**
 * An account as a unit of work loads it: the account row, its open grants and its active holds,
 * and the `xmin` of the account row that state belongs to.
 *
 * Every save writes the account row (a guarded update, or the insert of a new account) in the
 * same transaction as the grants, holds and entries it changes, so a new version of the row,
 * with the writing transaction's id as its `xmin`, comes with every committed change of the
 * account's state, whichever process made it. The load statement compares the locked row's
 * `xmin` with the cached one on the server and reads grants and holds only when they differ.
 */
export interface AccountState {
  /** `xmin` of the account row (a 32-bit transaction id, as text). */
  xmin: string;
  account: Account;
  grants: readonly Grant[];
  reservations: readonly Reservation[];
}

/** Accounts with more open grants and active holds than this are not kept. */
const MAX_ITEMS = 256;

/**
 * How long an entry may be used. Transaction ids wrap around after 2^32 transactions: an entry
 * used within ten minutes of being stored could only be mistaken for a newer version of its row
 * if the server ran over 7 million transactions a second.
 */
const TTL_MS = 10 * 60 * 1000;

/**
 * The last committed state of recently used accounts, in this process. Objects in it are frozen:
 * they are handed to units of work as they are (the library never mutates what `load()` returns).
 */
export class StateCache {
  private readonly lru: LRUCache<string, AccountState>;

  constructor(max: number) {
    this.lru = new LRUCache({ max, ttl: TTL_MS });
  }

  get(userId: string): AccountState | undefined {
    return this.lru.get(userId);
  }

  set(userId: string, state: AccountState): void {
    if (state.grants.length + state.reservations.length > MAX_ITEMS) this.lru.delete(userId);
    else this.lru.set(userId, freezeState(state));
  }

  delete(userId: string): void {
    this.lru.delete(userId);
  }
}

/** The account's state once `changes`, made on top of `before`, are committed by transaction `xmin`. */
export function stateAfter(before: Omit<AccountState, "xmin"> | null, changes: Changes, xmin: string): AccountState {
  const grants = new Map<string, Grant>();
  for (const g of before?.grants ?? []) grants.set(g.id, g);
  for (const g of changes.insertGrants) grants.set(g.id, g);
  for (const g of changes.updateGrants) grants.set(g.id, g);
  const holds = new Map<string, Reservation>();
  for (const r of before?.reservations ?? []) holds.set(r.id, r);
  for (const r of changes.insertReservations) holds.set(r.id, r);
  for (const r of changes.updateReservations) holds.set(r.id, r);
  return {
    xmin,
    account: changes.account,
    // What the load statement reads: `closed_at IS NULL AND remaining > 0`, `status = 'active'`.
    grants: [...grants.values()].filter((g) => g.remaining > 0 && (g.closedAt === null || g.closedAt === undefined)),
    reservations: [...holds.values()].filter((r) => r.status === "active"),
  };
}

/** Freezes a state and the objects in it (they are shared between units of work). */
export function freezeState(state: AccountState): AccountState {
  const deep = <T extends object>(o: T): T => {
    if (Object.isFrozen(o)) return o;
    for (const v of Object.values(o)) if (v !== null && typeof v === "object" && !(v instanceof Date)) deep(v);
    return Object.freeze(o);
  };
  deep(state.account);
  for (const g of state.grants) deep(g);
  for (const r of state.reservations) deep(r);
  return Object.freeze({ ...state, grants: Object.freeze([...state.grants]), reservations: Object.freeze([...state.reservations]) });
}
