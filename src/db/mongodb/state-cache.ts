import { LRUCache } from "lru-cache";
import type { Account, Grant, Reservation } from "../../models/index.js";
import type { Changes } from "../types.js";
import { isOpenGrant } from "./documents.js";

/**
 * An account as a unit of work loads it: the account document (with its write counter `rev`),
 * its open grants and its active holds.
 */
export interface AccountState {
  account: Account;
  /** The account document's `_rev`: every committed save increments it. */
  rev: number;
  grants: readonly Grant[];
  reservations: readonly Reservation[];
}

/** Accounts with more open grants and active holds than this are not kept. */
const MAX_ITEMS = 256;

/**
 * The last committed state of recently used accounts, in this process. A unit of work may start
 * from it instead of reading the account: its save then guards on `{ seq, _rev }`, so the write
 * only lands if no other writer committed since (otherwise it is retried from a fresh read), and a
 * unit of work that ends without saving (a refusal, a read) re-reads `_rev` to confirm it decided
 * on current data. Objects in it are frozen and never handed out for mutation.
 */
export class StateCache {
  private readonly lru: LRUCache<string, AccountState>;

  constructor(max: number) {
    this.lru = new LRUCache({ max });
  }

  get(userId: string): AccountState | undefined {
    return this.lru.get(userId);
  }

  set(userId: string, state: AccountState): void {
    if (state.grants.length + state.reservations.length > MAX_ITEMS) this.lru.delete(userId);
    else this.lru.set(userId, state);
  }

  delete(userId: string): void {
    this.lru.delete(userId);
  }
}

/** The state after `changes` were committed on top of `before` (null: the account was new). */
export function stateAfter(before: AccountState | null, changes: Changes): AccountState {
  const grants = new Map<string, Grant>();
  for (const g of before?.grants ?? []) grants.set(g.id, g);
  for (const g of changes.insertGrants) grants.set(g.id, g);
  for (const g of changes.updateGrants) grants.set(g.id, g);
  const holds = new Map<string, Reservation>();
  for (const r of before?.reservations ?? []) holds.set(r.id, r);
  for (const r of changes.insertReservations) holds.set(r.id, r);
  for (const r of changes.updateReservations) holds.set(r.id, r);
  return freezeState({
    account: changes.account,
    rev: changes.previousSeq === null || before === null ? 1 : before.rev + 1,
    grants: [...grants.values()].filter(isOpenGrant),
    reservations: [...holds.values()].filter((r) => r.status === "active"),
  });
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
