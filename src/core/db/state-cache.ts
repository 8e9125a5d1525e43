import { LRUCache } from "lru-cache";
import { isOpenGrant } from "../domain/order.js";
import type { Account, Grant, Reservation } from "../models/index.js";
import type { Changes } from "./types.js";

/**
 * What a unit of work loads of an account: the account, its open grants and its active holds. A
 * database adapter's cached state adds the version it was read or written at (MongoDB's `_rev`,
 * PostgreSQL's `xmin`), which its load or save checks before trusting it.
 */
export interface AccountState {
  account: Account;
  grants: readonly Grant[];
  reservations: readonly Reservation[];
}

/** Accounts with more open grants and active holds than this are not kept. */
const MAX_ITEMS = 256;

/**
 * The last committed state of recently used accounts, in this process (the database adapters' state
 * caches). States are frozen when stored: they are handed to units of work as they are (the
 * library never mutates what `load()` returns).
 */
export class StateCache<S extends AccountState> {
  private readonly lru: LRUCache<string, S>;

  /** `ttlMs`: how long an entry may be used (PostgreSQL bounds it for transaction-id wraparound). */
  constructor(max: number, ttlMs?: number) {
    this.lru = new LRUCache<string, S>(ttlMs === undefined ? { max } : { max, ttl: ttlMs });
  }

  get(userId: string): S | undefined {
    return this.lru.get(userId);
  }

  set(userId: string, state: S): void {
    if (state.grants.length + state.reservations.length > MAX_ITEMS) this.lru.delete(userId);
    else this.lru.set(userId, freezeState(state));
  }

  delete(userId: string): void {
    this.lru.delete(userId);
  }
}

/** The account's state once `changes`, made on top of `before` (null: a new account), are committed. */
export function stateAfter(before: AccountState | null, changes: Changes): AccountState {
  return {
    account: changes.account,
    grants: merged(before?.grants ?? [], [...changes.insertGrants, ...changes.updateGrants], isOpenGrant),
    reservations: merged(
      before?.reservations ?? [],
      [...changes.insertReservations, ...changes.updateReservations],
      (r) => r.status === "active",
    ),
  };
}

/**
 * `rows` with `written` in place of the rows of their ids and the other written rows after them,
 * in the order written, those `keep` says: only the few written rows are indexed, not the account's
 * every open grant and hold.
 */
function merged<T extends { id: string }>(rows: readonly T[], written: readonly T[], keep: (row: T) => boolean): T[] {
  const byId = new Map(written.map((row) => [row.id, row]));
  const out: T[] = [];
  for (const row of rows) {
    const now = byId.get(row.id) ?? row;
    byId.delete(row.id);
    if (keep(now)) out.push(now);
  }
  for (const row of byId.values()) if (keep(row)) out.push(row);
  return out;
}

/** Freezes a state and the objects in it (they are shared between units of work). */
export function freezeState<S extends AccountState>(state: S): S {
  const deep = <T extends object>(o: T): T => {
    if (Object.isFrozen(o)) return o;
    for (const v of Object.values(o)) if (v !== null && typeof v === "object" && !(v instanceof Date)) deep(v);
    return Object.freeze(o);
  };
  deep(state.account);
  for (const g of state.grants) deep(g);
  for (const r of state.reservations) deep(r);
  return Object.freeze({
    ...state,
    grants: Object.freeze([...state.grants]),
    reservations: Object.freeze([...state.reservations]),
  });
}
