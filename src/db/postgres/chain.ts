import type { Changes } from "../../core/domain/state.js";
import { hasModuleRows, mergeModuleRows } from "../../core/db/module-part.js";
import type { Grant, Reservation } from "../../core/models/index.js";
import type { AccountState } from "./state-cache.js";
import { type AccountState as BaseState, stateAfter as stateOnTop } from "../../core/db/state-cache.js";
import type { UnitTx } from "./unit-tx.js";

/** What the units of a chain so far left: the state the next one starts from. */
export interface ChainState {
  /** The account, open grants and active holds (null: no account yet). */
  base: BaseState | null;
  /** The first unit started from the state cache without locking: the row's `xmin` it guards on. */
  xmin: string | null;
  /** The changes saved so far, in order: a later unit's idempotency key may be among their entries. */
  saved: Changes[];
  /** Every grant and hold they wrote, closed ones too (`getGrants` and `getReservation` read them). */
  grants: Map<string, Grant>;
  holds: Map<string, Reservation>;
  /** They saved rows of a module: the database no longer answers the modules' reads. */
  modules: boolean;
}

/** The chain's state once `changes` (made on top of it) are applied. */
export function advance(at: ChainState, changes: Changes): ChainState {
  const grants = new Map(at.grants);
  for (const g of [...changes.insertGrants, ...changes.updateGrants]) grants.set(g.id, g);
  const holds = new Map(at.holds);
  for (const r of [...changes.insertReservations, ...changes.updateReservations]) holds.set(r.id, r);
  return {
    base: stateOnTop(at.base, changes),
    xmin: at.xmin,
    saved: [...at.saved, changes],
    grants,
    holds,
    modules: at.modules || hasModuleRows(changes.rows),
  };
}

/** What `Batch.save` writes of one account, and what the state cache keeps after it. */
export interface SaveItem {
  readonly userId: string;
  /** The account row's `xmin` its state was made at, when it was not locked before the save. */
  readonly xmin: string | null;
  readonly pendingChanges: Changes;
  readonly originals: UnitTx["originals"];
  readonly loadDone: boolean;
  readonly base: Omit<AccountState, "xmin"> | null;
}

/**
 * The saving units of a batch with those of one account (a chain, in order) merged into one
 * item: the last account row guarded by the first unit's `seq`, a grant or hold inserted and then
 * updated inserted as it ended, one update per row with its last version, every entry and outbox
 * row. Each row's original is the first one read (the database's): updates write the columns
 * that differ from it.
 */
export function merged(txs: readonly UnitTx[]): SaveItem[] {
  const byUser = new Map<string, UnitTx[]>();
  for (const tx of txs) {
    const list = byUser.get(tx.userId);
    if (list === undefined) byUser.set(tx.userId, [tx]);
    else list.push(tx);
  }
  const items: SaveItem[] = [];
  for (const list of byUser.values()) {
    const first = list[0] as UnitTx;
    if (list.length === 1) {
      items.push(first);
      continue;
    }
    const last = list[list.length - 1] as UnitTx;
    const rows = <T extends { id: string }>(ins: (c: Changes) => readonly T[], upd: (c: Changes) => readonly T[]) => {
      const inserted = new Map<string, T>();
      const updated = new Map<string, T>();
      for (const tx of list) {
        for (const x of ins(tx.pendingChanges)) inserted.set(x.id, x);
        for (const x of upd(tx.pendingChanges)) (inserted.has(x.id) ? inserted : updated).set(x.id, x);
      }
      return { inserted: [...inserted.values()], updated: [...updated.values()] };
    };
    const grants = rows(
      (c) => c.insertGrants,
      (c) => c.updateGrants,
    );
    const holds = rows(
      (c) => c.insertReservations,
      (c) => c.updateReservations,
    );
    const all = <T>(get: (c: Changes) => readonly T[] | undefined) =>
      list.flatMap((tx) => get(tx.pendingChanges) ?? []);
    const notifications = all((c) => c.notifications);
    const moduleRows = mergeModuleRows(list.map((tx) => tx.pendingChanges.rows));
    const pendingChanges: Changes = {
      account: last.pendingChanges.account,
      previousSeq: first.pendingChanges.previousSeq,
      insertGrants: grants.inserted,
      updateGrants: grants.updated,
      insertReservations: holds.inserted,
      updateReservations: holds.updated,
      entries: all((c) => c.entries),
      ...(notifications.length > 0 ? { notifications } : {}),
      ...(moduleRows !== undefined ? { rows: moduleRows } : {}),
    };
    const originals: UnitTx["originals"] = { account: first.originals.account, grants: new Map(), holds: new Map() };
    for (const tx of list) {
      for (const [id, g] of tx.originals.grants) if (!originals.grants.has(id)) originals.grants.set(id, g);
      for (const [id, r] of tx.originals.holds) if (!originals.holds.has(id)) originals.holds.set(id, r);
    }
    // The first saving unit's state is the chain's as its first unit loaded it (nothing saved before).
    items.push({
      userId: first.userId,
      xmin: first.xmin,
      pendingChanges,
      originals,
      loadDone: first.loadDone,
      base: first.base,
    });
  }
  return items;
}
