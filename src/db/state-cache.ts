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
  const grants = new Map<string, Grant>();
  for (const g of before?.grants ?? []) grants.set(g.id, g);
  for (const g of changes.insertGrants) grants.set(g.id, g);
  for (const g of changes.updateGrants) grants.set(g.id, g);
  const holds = new Map<string, Reservation>();
  for (const r of before?.reservations ?? []) holds.set(r.id, r);
  for (const r of changes.insertReservations) holds.set(r.id, r);
  for (const r of changes.updateReservations) holds.set(r.id, r);
  return {
    account: changes.account,
    grants: [...grants.values()].filter(isOpenGrant),
    reservations: [...holds.values()].filter((r) => r.status === "active"),
  };
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
