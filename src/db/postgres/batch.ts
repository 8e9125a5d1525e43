import type { PgPoolClient as PoolClient, PgQueryResult as QueryResult } from "./pg-types.js";
import { ConflictError, LockTimeoutError, StorageError } from "../../errors.js";
import { isConnectionLevel, isLostConnection, storageError, workerCode } from "./errors.js";
import type { Account, Grant, JournalEntry, Payment, Promo, Reservation } from "../../models/index.js";
import { type Column, snakeCase } from "../../schema/columns.js";
import { byteaText, decodeRow, toTuples } from "../../schema/codec.js";
import type { SqlTable } from "../../schema/sql.js";
import type { Changes, DbTransaction, LoadRequest, LoadedState } from "../types.js";
import type { PostgresDbManager } from "./index.js";
import { decode as decodePromoRow, inUnit, promoPaymentSave } from "./promos.js";
import {
  GUARD_MARKER,
  type PostgresSql,
  type SaveArg,
  type SaveStatement,
  type Statement,
  arrayText,
  executeText,
  idempotentEntry,
  toRow,
} from "./sql.js";
import { type AccountState, stateAfter } from "./state-cache.js";
import { type AccountState as BaseState, stateAfter as stateOnTop } from "../state-cache.js";
import { type Deferred, type QueuedUnit, deferred } from "../store/group-commit.js";

/** A unit of work waiting to run. */
export interface Unit extends QueuedUnit {
  /** Waits for its account's lock (another process held it when a batch tried). */
  wait: boolean;
  /** Loads under the lock, not from the state cache (a batch that started from it failed). */
  fresh?: boolean;
  /** Out of attempts: its last one runs alone, waiting for its account's row lock (`wait`). */
  last?: boolean;
}

/** Why a unit must run again; `reason` is the driver error or the failed guard. */
export class Retry extends Error {
  constructor(readonly reason: unknown) {
    super("retry");
  }
}

/**
 * Opens a unit-of-work transaction: `BEGIN`, then one statement that sets what the transaction
 * needs (`set_config(…, true)` is `SET LOCAL`, which ends with the transaction; one `SELECT` of
 * them all is one statement for the server to run and the client to read instead of one per
 * setting). `TimeZone` UTC: the state statement reads rows as JSON, whose dates are ISO 8601
 * whatever the session's `DateStyle` but carry the session's offset, and under a far-off zone a
 * date near year 1 or 9999 prints as what JavaScript cannot parse (year 10000, or a local-mean-time
 * offset in seconds). Generic plans, always: the planner would otherwise re-plan the statements
 * whose array parameters change length on every execution (it prefers custom plans for them),
 * which costs more than running them. No sequential scans: every statement of a unit of work
 * finds its rows by key, but on a small table (a few thousand rows) the planner prefers reading
 * it whole and testing `key = ANY(array)` on every row, one array element after another: a batch
 * of 16 units then compared every account and grant row 16 times, three times over, which cost
 * more server CPU than all the rest of the batch. With the store's `lockTimeoutMs`,
 * `lock_timeout` too: a unit that waits for an account another transaction holds (an
 * application's own transaction above all, docs/transactions.md) waits that long at most, then
 * fails with `LockTimeoutError`.
 */
function beginText(lockTimeoutMs: number, distributed: boolean): string {
  const settings = [
    // Citus plans a statement across tables for the shard of its parameters' values only: custom.
    ["plan_cache_mode", distributed ? "force_custom_plan" : "force_generic_plan"],
    ["enable_seqscan", "off"],
    ["TimeZone", "UTC"],
    ...(lockTimeoutMs > 0 ? [["lock_timeout", String(lockTimeoutMs)]] : []),
  ];
  const set = settings.map(([name, value]) => `set_config('${name}', '${value}', true)`).join(", ");
  return `BEGIN ISOLATION LEVEL READ COMMITTED; SELECT ${set}`;
}

const begins = new Map<string, string>();

/** `BEGIN` and the settings of a unit-of-work transaction under this store's `lockTimeoutMs`. */
function beginOf(db: PostgresDbManager): string {
  const key = `${db.lockTimeoutMs}:${db.sql.distributed}`;
  let text = begins.get(key);
  if (text === undefined) begins.set(key, (text = beginText(db.lockTimeoutMs, db.sql.distributed)));
  return text;
}

/** A lock wait past `lock_timeout` (55P03): the account is held by a transaction that stays open. */
function lockTimeout(db: PostgresDbManager, what: string, error: unknown): LockTimeoutError {
  return new LockTimeoutError(
    `[credit-management] [postgres] ${what}: the account is locked by another transaction (still open after lockTimeoutMs = ${db.lockTimeoutMs}); nothing was written, the operation may be retried`,
    { operation: what, lockTimeoutMs: db.lockTimeoutMs },
    error,
  );
}

/** SQLSTATEs after which a unit of work runs again. */
const RETRY_CODES = new Set(["40001", "40P01", "23505"]);

/**
 * A later unit of a chain that did not run (its first unit did not load, or the shared
 * transaction failed), or that left the chain (`alone`: it needs a transaction of its own). It
 * wrote nothing; it runs again, and no attempt is counted.
 */
export class NotRun extends Error {
  constructor(readonly alone: boolean) {
    super("the unit of work runs again in another transaction");
  }
}

/** What the units of a chain so far left: the state the next one starts from. */
interface ChainState {
  /** The account, open grants and active holds (null: no account yet). */
  base: BaseState | null;
  /** The first unit started from the state cache without locking: the row's `xmin` it guards on. */
  xmin: string | null;
  /** The changes saved so far, in order: a later unit's idempotency key may be among their entries. */
  saved: Changes[];
  /** Every grant and hold they wrote, closed ones too (`getGrants` and `getReservation` read them). */
  grants: Map<string, Grant>;
  holds: Map<string, Reservation>;
  /** They claimed a promo or changed a payment: the database no longer answers those reads. */
  promos: boolean;
}

/** The chain's state once `changes` (made on top of it) are applied. */
function advance(at: ChainState, changes: Changes): ChainState {
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
    promos: at.promos || (changes.promoClaims?.length ?? 0) > 0 || (changes.paymentUpdates?.length ?? 0) > 0,
  };
}

/** What `Batch.save` writes of one account, and what the state cache keeps after it. */
interface SaveItem {
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
function merged(txs: readonly UnitTx[]): SaveItem[] {
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
    const promoClaims = all((c) => c.promoClaims);
    const paymentUpdates = all((c) => c.paymentUpdates);
    const pendingChanges: Changes = {
      account: last.pendingChanges.account,
      previousSeq: first.pendingChanges.previousSeq,
      insertGrants: grants.inserted,
      updateGrants: grants.updated,
      insertReservations: holds.inserted,
      updateReservations: holds.updated,
      entries: all((c) => c.entries),
      ...(notifications.length > 0 ? { notifications } : {}),
      ...(promoClaims.length > 0 ? { promoClaims } : {}),
      ...(paymentUpdates.length > 0 ? { paymentUpdates } : {}),
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

/** Thrown by `load()` in a batch whose lock skipped the account: another transaction holds it. */
export class Skipped extends Error {
  constructor() {
    super("account locked by another transaction");
  }
}

/**
 * What a batch leaves to the dispatcher: the units to run again (`skipped`: their account was
 * busy, which is no failure of theirs), and whether the connection is bad.
 */
export interface BatchResult {
  /** `lost`: the connection was lost before anything was written (a failure, not a conflict, if it lasts). */
  retry: Array<{
    unit: Unit;
    reason: unknown;
    skipped?: boolean;
    lost?: boolean;
    notRun?: boolean;
    alone?: boolean;
    fresh?: boolean;
  }>;
  /** Why the connection is bad (the driver error, or true), when it is: undefined while it is usable. */
  brokenBy: unknown;
}

/**
 * One database transaction serving one or more units of work on different accounts.
 *
 * Every unit's `fn` starts at once with its own `DbTransaction`. When each has asked for its
 * state (or finished), one message begins the transaction, locks all their account rows (in user
 * id order) and reads all their states. The units compute; `save()` only queues. When all have
 * finished, one message writes every queued change in one statement and commits. A unit that
 * throws writes nothing and gets its error; the others commit. So a batch of n costs two round
 * trips and one commit instead of 2n and n.
 *
 * If the shared transaction fails (a conflict, a driver error), nothing of it is committed and the
 * units that did not fail by themselves run again, each alone, so a culprit fails only itself.
 */
export class Batch {
  readonly txs: UnitTx[];
  /** Set once the transaction is open (BEGIN sent and answered). */
  began = false;
  readonly opened = deferred<void>();
  /** The first driver error in the shared transaction: it is aborted, nothing will commit. */
  failure: unknown = undefined;
  /** A message that carried PREPAREs failed: list the connection's statements after rollback. */
  resync = false;
  /** The driver error (true if the error was no value) that made the connection unusable; undefined while it is usable. */
  brokenBy: unknown = undefined;
  /** The connection was lost (socket closed or reset, server shut the session down) in `failure`. */
  lost = false;
  private waiting: number;
  private started = false;
  /**
   * The statement in flight on `client`. The units of a batch run at once and share its one
   * connection, and node-pg takes one query at a time per client (a second one while the first
   * runs is deprecated, and refused from pg 9): each statement waits for the one before it.
   */
  private inFlight: Promise<unknown> | null = null;

  constructor(
    readonly db: PostgresDbManager,
    readonly client: PoolClient,
    units: readonly Unit[],
    /** Wait for the account lock (a lone waiter) instead of skipping a busy account. */
    private readonly wait: boolean,
  ) {
    this.txs = units.map((u) => new UnitTx(this, u));
    // Units of one account form a chain, in queue order: the first loads with the batch, the
    // others run after it, one at a time, on the state it left (see `runChain`).
    const byUser = new Map<string, UnitTx[]>();
    for (const tx of this.txs) {
      const chain = byUser.get(tx.userId);
      if (chain === undefined) byUser.set(tx.userId, [tx]);
      else {
        tx.follower = true;
        tx.isReady = true; // only the first of a chain takes part in opening the transaction
        chain.push(tx);
      }
    }
    this.chains = [...byUser.values()];
    this.waiting = this.chains.length;
    for (const tx of this.txs) db.track(tx);
  }

  /** The units of work per account, in queue order (one each, unless the group commit chains them). */
  private readonly chains: UnitTx[][];

  /** Forgets the units that are settled here (all but those whose resolution waits its turn). */
  untrackSettled(): void {
    for (const tx of this.txs) if (!tx.deferred) this.db.untrack(tx);
  }

  /**
   * Runs the units of one account one after another: the first as any unit of a batch, each
   * later one on the state the ones before it left (their saved changes on top of what the first
   * loaded), without a statement of its own: it holds the same row lock in the same transaction.
   * What a later unit cannot be answered from that state (a second load, a promo or payment read
   * after another unit of the chain changed promos or payments) makes it leave the chain: it runs
   * again in a transaction of its own, as does every later unit when the first could not load
   * (its account was busy elsewhere) or the shared transaction failed (docs/storage.md,
   * PostgreSQL: group commit).
   */
  private async runChain(
    chain: readonly UnitTx[],
    outcomes: Map<UnitTx, PromiseSettledResult<unknown>>,
  ): Promise<void> {
    let at: ChainState | null = null;
    for (const tx of chain) {
      if (tx.follower) {
        if (at === null || this.failure !== undefined) {
          outcomes.set(tx, { status: "rejected", reason: new NotRun(false) });
          continue;
        }
        tx.follow(at);
      }
      let outcome: PromiseSettledResult<unknown>;
      try {
        outcome = { status: "fulfilled", value: await tx.unit.fn(tx) };
      } catch (reason) {
        outcome = { status: "rejected", reason };
      } finally {
        this.ready(tx);
      }
      if (tx.unchained) outcome = { status: "rejected", reason: new NotRun(true) };
      outcomes.set(tx, outcome);
      if (!tx.follower) {
        if (!tx.loadDone) return void this.notRun(chain, outcomes);
        at = { base: tx.base, xmin: tx.xmin, saved: [], grants: new Map(), holds: new Map(), promos: false };
      }
      if (at !== null && outcome.status === "fulfilled" && tx.pending !== null) at = advance(at, tx.pending);
    }
  }

  /** The later units of a chain whose first unit did not load: they run again. */
  private notRun(chain: readonly UnitTx[], outcomes: Map<UnitTx, PromiseSettledResult<unknown>>): void {
    for (const tx of chain) if (tx.follower) outcomes.set(tx, { status: "rejected", reason: new NotRun(false) });
  }

  async run(): Promise<BatchResult> {
    const settled = new Map<UnitTx, PromiseSettledResult<unknown>>();
    await Promise.all(this.chains.map((chain) => this.runChain(chain, settled)));
    const outcomes = this.txs.map((tx) => settled.get(tx) as PromiseSettledResult<unknown>);
    const retry: BatchResult["retry"] = [];
    const solo = this.txs.length === 1;
    const fromStore = (e: unknown) => e instanceof Retry || e instanceof StorageError;
    // The shared transaction broke while the units ran: nothing of it will commit.
    const brokeEarly = this.failure !== undefined;
    let commitError: unknown = undefined;
    // Accounts whose units started from the state cache and decided something that writes nothing.
    const { unsure, confirm } = this.unconfirmed(settled);
    /** Of `confirm`: the users whose row moved since their state was cached (or unknown: all). */
    let stale: ReadonlySet<string> = new Set();
    if (!brokeEarly) {
      const saving = merged(this.txs.filter((tx, i) => outcomes[i]?.status === "fulfilled" && tx.pending !== null));
      if (saving.length > 0) {
        let xid: unknown;
        try {
          ({ xid, stale } = await this.save(saving, confirm));
        } catch (error) {
          commitError = error;
        }
        // Committed: nothing from here on may fail the units (a failure would run them again).
        if (commitError === undefined) this.remember(saving, xid);
      } else {
        if (confirm.length > 0) stale = await this.confirmStates(confirm);
        if (this.began) await this.rollback(); // read-only: nothing to commit
      }
    }
    if (this.began && !this.broken) await this.rollback();
    // A failed batch may have failed on a stale cached state: its units run again from the database.
    if (brokeEarly || commitError !== undefined) for (const tx of this.optimists) this.db.states?.delete(tx.userId);
    if (this.resync && !this.broken) await this.db.resyncPrepared(this.client);

    // What a unit that started from the cache decided without saving is final only once its
    // state is known current: the confirm statement found its row unchanged, or the batch's save
    // (guarded on the same `xmin`) committed. Else it runs again, loading under the lock.
    const failed = brokeEarly || commitError !== undefined;
    const redo = (tx: UnitTx) => unsure.has(tx) && (failed || stale.has(tx.userId));
    for (const user of stale) this.db.states?.delete(user);

    this.txs.forEach((tx, i) => {
      const outcome = outcomes[i] as PromiseSettledResult<unknown>;
      const unit = tx.unit;
      if (redo(tx)) {
        const reason = new ConflictError(`account ${tx.userId} changed since its state was cached`, {
          userId: tx.userId,
        });
        retry.push({ unit, reason, fresh: true });
        return;
      }
      if (outcome.status === "rejected") {
        const e = outcome.reason;
        if (e instanceof NotRun) {
          retry.push({ unit, reason: e, notRun: true, ...(e.alone ? { alone: true } : {}) });
          return;
        }
        if (e instanceof Skipped) {
          retry.push({ unit, reason: e, skipped: true });
          return;
        }
        // Its own error (insufficient credits, a refused guard, …) is final: it wrote nothing.
        // A store error of a shared transaction may be another unit's fault: run again alone. So
        // does a unit alone whose connection was lost before its save was sent: nothing of it
        // was written (every write is in the save message), and a stale pooled connection (its
        // server restarted, a load balancer dropped it) is the usual cause.
        if (brokeEarly && fromStore(e) && (!solo || e instanceof Retry || this.lost)) {
          retry.push({ unit, reason: e instanceof Retry ? e.reason : e, ...(this.lost ? { lost: true } : {}) });
        } else unit.reject(e);
        return;
      }
      if (brokeEarly) retry.push({ unit, reason: this.failure, ...(this.lost ? { lost: true } : {}) });
      else if (commitError === undefined) this.resolveInOrder(tx, outcome.value);
      else if (this.broken && !(commitError instanceof Retry))
        unit.reject(commitError); // COMMIT's outcome is unknown: no retry
      else if (commitError instanceof Retry)
        // Started from the state cache: most likely the cache was stale (another process wrote an
        // account) or an account was busy; run them again loading under the lock, still batched.
        retry.push({ unit, reason: commitError.reason, ...(this.optimists.length > 0 ? { fresh: true } : {}) });
      else if (!solo) retry.push({ unit, reason: commitError });
      else unit.reject(commitError);
    });
    this.untrackSettled();
    return { retry, brokenBy: this.brokenBy };
  }

  /**
   * Resolves a committed unit once every unit of the same account that committed before it in this
   * process has been resolved, so that what callers do after a commit (the ledger file's lines
   * above all) follows the account's `seq`. Their answers can arrive in the other order: the
   * server grants the next unit the row lock as soon as the earlier one commits, on another
   * connection, and on a busy machine the next unit's whole round trip can beat the earlier one's
   * COMMIT answer. An earlier unit has its entries in hand by then (it sent its save before this
   * one could lock), so comparing their first `seq` finds exactly those to wait for.
   */
  private resolveInOrder(tx: UnitTx, value: unknown): void {
    const before = this.db.committedBefore(tx);
    if (before === null) {
      tx.unit.resolve(value); // (untracked with the others at the end of run())
      return;
    }
    tx.deferred = true;
    void before.then(() => {
      tx.unit.resolve(value);
      this.db.untrack(tx);
    });
  }

  /**
   * The cached state a unit may start from without locking its account first (its first load, no
   * idempotency key, not after a failed attempt or while waiting for another process's lock):
   * the unit then costs the batch no load statement, and a batch of such units one message
   * (`BEGIN; save; COMMIT`). Its save writes the account row only if the row is still the version
   * (`xmin`) the state was made from — every committed change of an account writes its row, so
   * nothing the unit read (its state, and grants or holds it read later, outside the
   * transaction) can have changed — and fails the batch otherwise: its units run again alone,
   * loading under the lock (docs/storage.md#postgresql).
   */
  optimistic(tx: UnitTx, request: LoadRequest | undefined): AccountState | undefined {
    if (this.wait || tx.unit.solo || tx.unit.fresh === true || tx.follower || request?.idempotencyKey !== undefined)
      return undefined;
    const cached = this.db.states?.get(tx.userId);
    if (cached !== undefined) this.optimists.push(tx);
    return cached;
  }

  /** Units that started from the state cache (`optimistic`). */
  private readonly optimists: UnitTx[] = [];

  /** A unit asked for its state, used the store, or finished: once all have, open the transaction. */
  ready(tx: UnitTx): void {
    if (tx.isReady) return;
    tx.isReady = true;
    if (--this.waiting === 0) void this.start();
  }

  private async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    const loaders = this.txs
      .filter((tx) => tx.loadRequest !== null && !tx.loadDone)
      .sort((a, b) => (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0));
    const needed = loaders.length > 0 || this.txs.some((tx) => tx.needsTransaction);
    if (!needed) {
      this.opened.resolve();
      return;
    }
    const { sql } = this.db;
    const prepared = this.db.prepared;
    // A batch of several never waits for a lock: a busy account would hold up all the others.
    // Only a lone waiter waits for a row lock: a batch skips busy accounts (SKIP LOCKED).
    const many = loaders.length > 1;
    const lock = this.wait ? sql.lockOne : many ? sql.lockSkip : sql.lockOneSkip;
    const statements = loaders.length > 0 ? [lock, sql.state] : [];
    try {
      const results = await this.message(
        "load",
        statements,
        (prefix) => {
          let text = `${prefix}${beginOf(this.db)}`;
          if (loaders.length > 0) {
            const users = arrayText(loaders.map((tx) => tx.userId));
            for (const tx of loaders) tx.key = tx.loadRequest?.idempotencyKey ?? null;
            const keys = arrayText(loaders.map((tx) => tx.key));
            const states = this.db.states;
            for (const tx of loaders) tx.cached = states?.get(tx.userId);
            const xmins = arrayText(loaders.map((tx) => tx.cached?.xmin ?? null));
            const locked = many
              ? executeText(lock, [users], prepared)
              : executeText(lock, [loaders[0]?.userId ?? ""], prepared);
            text += `; ${locked}; ${executeText(sql.state, [users, keys, xmins], prepared)}`;
          }
          return text;
        },
        loaders.length > 0 ? 2 : 0,
      );
      this.began = true;
      if (loaders.length > 0) this.deliver(loaders, results[0] as QueryResult, results[1] as QueryResult);
      this.opened.resolve();
    } catch (error) {
      // BEGIN may have run before the failure: roll back whatever is open.
      this.began = true;
      for (const tx of loaders) tx.loaded.reject(error);
      this.opened.reject(error);
    }
  }

  /** Hands each unit its account and state from the batch's lock and state results. */
  deliver(txs: readonly UnitTx[], lock: QueryResult, state: QueryResult): void {
    const locked = new Set<string>();
    for (const row of lock.rows as Record<string, unknown>[]) locked.add(row.user_id as string);
    const states = new Map<string, Record<string, unknown>>();
    for (const row of state.rows as Record<string, unknown>[]) states.set(row.user_id as string, row);
    for (const tx of txs) {
      const row = states.get(tx.userId);
      if (!locked.has(tx.userId) && row?.present === true) tx.loaded.reject(new Skipped());
      else tx.receive(row);
    }
  }

  /** Locks and reads one more time for a unit that loads again (the lock is already held). */
  async reload(tx: UnitTx, request: LoadRequest | undefined): Promise<void> {
    const { sql } = this.db;
    const prepared = this.db.prepared;
    const users = arrayText([tx.userId]);
    tx.key = request?.idempotencyKey ?? null;
    const keys = arrayText([tx.key]);
    tx.cached = undefined;
    const begin = this.began ? "" : `${beginOf(this.db)}; `;
    this.began = true;
    const [lock, state] = await this.message(
      "load",
      [sql.lockOne, sql.state],
      (prefix) =>
        `${prefix}${begin}${executeText(sql.lockOne, [tx.userId], prepared)}; ${executeText(sql.state, [users, keys, "{NULL}"], prepared)}`,
      2,
    );
    this.deliver([tx], lock as QueryResult, state as QueryResult);
  }

  /**
   * @internal The statement that writes every queued change of `txs` and its arguments, and the
   * promo/payment statement when they have such rows (the batch's save; a host transaction's unit,
   * ./host.ts).
   */
  static saveParts(
    sql: PostgresSql,
    txs: ReadonlyArray<Pick<SaveItem, "userId" | "pendingChanges" | "originals"> & { readonly xmin?: string | null }>,
  ): { save: SaveStatement; saveArgs: Array<string | null>; extra: { statement: Statement; arg: string } | null } {
    const { tables } = sql;
    const updates = txs.filter((tx) => tx.pendingChanges.previousSeq !== null);
    const accountColumns =
      updates.length === 0
        ? null
        : changedColumns(
            tables.accounts,
            updates.map((tx) => [tx.pendingChanges.account, tx.originals.account] as const),
          );
    const grantUpdates = txs.flatMap((tx) =>
      tx.pendingChanges.updateGrants.map((g) => [g, tx.originals.grants.get(g.id)] as const),
    );
    const holdUpdates = txs.flatMap((tx) =>
      tx.pendingChanges.updateReservations.map((r) => [r, tx.originals.holds.get(r.id)] as const),
    );
    const grantColumns = grantUpdates.length === 0 ? null : changedColumns(tables.grants, grantUpdates);
    const reservationColumns = holdUpdates.length === 0 ? null : changedColumns(tables.reservations, holdUpdates);
    const args: Partial<Record<SaveArg, string>> = {};
    const json = (rows: readonly unknown[]) => JSON.stringify(rows);
    if (accountColumns !== null) {
      args.a = json(
        updates.map((tx) => {
          const row = pick(tables.accounts, ["user_id", ...accountColumns], tx.pendingChanges.account);
          row.prev = tx.pendingChanges.previousSeq;
          if (tx.xmin != null) row.xmin = tx.xmin;
          return row;
        }),
      );
      args.ak = arrayText(updates.map((tx) => tx.userId));
      args.xk = arrayText(updates.filter((tx) => tx.xmin != null).map((tx) => tx.userId));
    }
    const all = <T>(get: (c: Changes) => readonly T[]) => txs.flatMap((tx) => get(tx.pendingChanges));
    const inserts = txs.filter((tx) => tx.pendingChanges.previousSeq === null).map((tx) => tx.pendingChanges.account);
    if (inserts.length > 0) args.ai = json(inserts.map((a) => compactRow(tables.accounts.columns, a)));
    const newGrants = all((c) => c.insertGrants);
    if (newGrants.length > 0) args.ig = json(newGrants.map((g) => compactRow(tables.grants.columns, g)));
    if (grantColumns !== null) {
      args.ug = json(grantUpdates.map(([g]) => pick(tables.grants, ["id", "user_id", ...grantColumns], g)));
      args.ugk = arrayText(grantUpdates.map(([g]) => g.id));
    }
    const newHolds = all((c) => c.insertReservations);
    if (newHolds.length > 0) args.ir = json(newHolds.map((r) => compactRow(tables.reservations.columns, r)));
    if (reservationColumns !== null) {
      args.ur = json(holdUpdates.map(([r]) => pick(tables.reservations, ["id", "user_id", ...reservationColumns], r)));
      args.urk = arrayText(holdUpdates.map(([r]) => r.id));
    }
    const entries = all((c) => c.entries);
    if (entries.length > 0) args.e = json(entries.map((e) => compactRow(tables.journal.columns, e)));
    const notifications = all((c) => c.notifications ?? []);
    if (notifications.length > 0) args.n = json(notifications.map((n) => compactRow(tables.notifications.columns, n)));
    const save = sql.save({
      accountColumns,
      insertAccounts: inserts.length > 0,
      insertGrants: newGrants.length > 0,
      grantColumns,
      insertReservations: newHolds.length > 0,
      reservationColumns,
      entries: entries.length > 0,
      ...(notifications.length > 0 ? { notifications: true } : {}),
    });
    if (sql.distributed) args.uk = arrayText([...new Set(txs.map((tx) => tx.userId))]);
    const saveArgs = save.args.map((name) => args[name] ?? null);
    // Promo claims and payment updates (./promos.ts): their own guarded statement, same message.
    const extra = promoPaymentSave(
      tables,
      txs.map((tx) => tx.pendingChanges),
    );
    return { save, saveArgs, extra };
  }

  /**
   * The units that started from the state cache (`optimistic`) and decided something that writes
   * nothing — a refusal, or an end without a save — so that their outcome holds only if the state
   * was current (`unsure`); and of their accounts, the first unit of each that no save of the batch
   * guards (`confirm`: the confirm statement checks its `xmin`). A save of the account guards on
   * the same `xmin` as the cached state: if it commits, the state was current.
   */
  private unconfirmed(settled: ReadonlyMap<UnitTx, PromiseSettledResult<unknown>>): {
    unsure: Set<UnitTx>;
    confirm: UnitTx[];
  } {
    const unsure = new Set<UnitTx>();
    const confirm: UnitTx[] = [];
    if (this.db.trustCachedDecisions || this.optimists.length === 0) return { unsure, confirm };
    for (const chain of this.chains) {
      const first = chain[0] as UnitTx;
      if (first.xmin === null || !this.optimists.includes(first)) continue;
      let saves = false;
      for (const tx of chain) {
        const o = settled.get(tx);
        if (o === undefined) continue;
        if (o.status === "fulfilled") {
          if (tx.pending === null) unsure.add(tx);
          else saves = true;
        } else if (!(o.reason instanceof NotRun || o.reason instanceof Skipped || o.reason instanceof Retry)) {
          unsure.add(tx);
        }
      }
      if (!saves && chain.some((tx) => unsure.has(tx))) confirm.push(first);
    }
    return { unsure, confirm };
  }

  /** The confirm statement's text and the users it asks about. */
  private confirmText(txs: readonly UnitTx[]): string {
    const { sql } = this.db;
    const users = arrayText(txs.map((tx) => tx.userId));
    const xmins = arrayText(txs.map((tx) => tx.xmin));
    return executeText(sql.confirm, [users, xmins], this.db.prepared);
  }

  /**
   * A batch that saves nothing: one statement (in its transaction when one is open) finds the
   * accounts of `txs` whose row moved since their state was cached. A failure counts them all stale.
   */
  private async confirmStates(txs: readonly UnitTx[]): Promise<Set<string>> {
    try {
      const [result] = await this.message("confirm", [this.db.sql.confirm], (p) => `${p}${this.confirmText(txs)}`, 1);
      return new Set((result?.rows ?? []).map((r) => (r as { user_id: string }).user_id));
    } catch {
      return new Set(txs.map((tx) => tx.userId));
    }
  }

  /**
   * One statement for every queued change, the confirm statement of `confirm` when there are any
   * (same transaction, before COMMIT), and COMMIT, in one message; returns the committing
   * transaction's id and the users the confirm statement found stale.
   */
  private async save(
    txs: readonly SaveItem[],
    confirm: readonly UnitTx[],
  ): Promise<{ xid: unknown; stale: Set<string> }> {
    const { save, saveArgs, extra } = Batch.saveParts(this.db.sql, txs);
    const extraText = extra === null ? "" : `${executeText(extra.statement, [extra.arg], this.db.prepared)}; `;
    const confirmText = confirm.length === 0 ? "" : `; ${this.confirmText(confirm)}`;
    const statements = [
      ...(extra === null ? [] : [extra.statement]),
      save,
      ...(confirm.length === 0 ? [] : [this.db.sql.confirm]),
    ];
    // Units that saved without loading: their account write takes the row lock; the guard holds.
    const begin = this.began ? "" : `${beginOf(this.db)}; `;
    this.began = true;
    const results = await this.message(
      "save",
      statements,
      (prefix) => `${prefix}${begin}${extraText}${executeText(save, saveArgs, this.db.prepared)}${confirmText}; COMMIT`,
      confirm.length === 0 ? 2 : 3,
    );
    this.began = false;
    const [saved, confirmed] = results;
    const stale = new Set<string>(
      confirm.length === 0 ? [] : (confirmed?.rows ?? []).map((r) => (r as { user_id: string }).user_id),
    );
    return { xid: (saved?.rows[0] as { xid?: unknown } | undefined)?.xid, stale };
  }

  /**
   * After COMMIT: what the accounts now hold, for the next units of work on them. It must not
   * throw: `run()` would take it for a failed commit and run committed units again. A state it
   * cannot keep is dropped (the next unit of work on the account reads it).
   */
  private remember(txs: readonly SaveItem[], xid: unknown): void {
    const states = this.db.states;
    if (states === null) return;
    for (const tx of txs) {
      try {
        // A unit that saved without loading knows nothing of the rest of the account's state.
        if (!tx.loadDone || typeof xid !== "string") states.delete(tx.userId);
        else states.set(tx.userId, stateAfter(tx.base, tx.pendingChanges, xid));
      } catch {
        try {
          states.delete(tx.userId);
        } catch {
          // Nothing more to do: the kept state is checked against the row's xmin before use.
        }
      }
    }
  }

  /** The connection is unusable (it is closed, not pooled). */
  get broken(): boolean {
    return this.brokenBy !== undefined;
  }

  private breaks(error: unknown): void {
    this.brokenBy ??= error ?? true;
  }

  private async rollback(): Promise<void> {
    try {
      this.db.roundTrips++;
      await this.inTurn(() => this.client.query("ROLLBACK"));
    } catch (error) {
      this.breaks(error);
    }
    this.began = false;
  }

  /**
   * Sends one simple-protocol message of several statements (with the PREPAREs the connection
   * lacks in front); returns the results of its last `count` statements. Driver errors become
   * `Retry` or `StorageError` and mark the shared transaction failed.
   */
  message(
    what: string,
    statements: readonly Statement[],
    text: (prefix: string) => string,
    count: number,
  ): Promise<QueryResult[]> {
    return this.inTurn(() => this.send(what, statements, text, count));
  }

  /** Runs `fn` once the statement in flight on the client (if any) has answered. */
  private inTurn<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.inFlight;
    const run = before === null ? fn() : before.then(fn, fn);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.inFlight = settled;
    void settled.then(() => {
      if (this.inFlight === settled) this.inFlight = null;
    });
    return run;
  }

  private async send(
    what: string,
    statements: readonly Statement[],
    text: (prefix: string) => string,
    count: number,
  ): Promise<QueryResult[]> {
    const prepare = this.db.prepareFor(this.client, statements);
    this.db.roundTrips++;
    let result: QueryResult | QueryResult[];
    try {
      result = (await this.client.query(text(prepare.text))) as unknown as QueryResult | QueryResult[];
    } catch (error) {
      if (prepare.names.length > 0) this.resync = true;
      throw this.fail(what, error);
    }
    try {
      this.db.markPrepared(this.client, prepare.names);
    } catch {
      this.resync = true; // (the message may have committed: this must not fail it)
    }
    const list = Array.isArray(result) ? result : [result];
    return count === 0 ? [] : list.slice(list.length - count);
  }

  /** One parameterised statement inside the transaction (reads a unit makes beyond its load). */
  query(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    return this.inTurn(() => this.read(what, text, params));
  }

  private async read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    this.db.roundTrips++;
    try {
      const r = await this.client.query(
        this.db.prepared && !this.db.sql.distributed
          ? { name: this.db.statementName(text), text, values: params }
          : { text, values: params },
      );
      return r.rows as Record<string, unknown>[];
    } catch (error) {
      throw this.fail(what, error);
    }
  }

  /** Records the first failure of the shared transaction and maps the driver error. */
  private fail(what: string, error: unknown): Error {
    workerCode(error);
    if (this.failure === undefined) {
      this.failure = error;
      this.lost = isLostConnection(error);
    }
    const code = (error as { code?: unknown } | null)?.code;
    if (isConnectionLevel(error)) {
      this.breaks(error);
    }
    if (typeof code === "string" && RETRY_CODES.has(code)) return new Retry(error);
    if (code === "55P03") return lockTimeout(this.db, what, error);
    if (code === "22P02" && String((error as Error).message).includes(GUARD_MARKER)) return new Retry(error);
    if (code === "26000" || code === "42P05") {
      // Our record of the connection's prepared statements was wrong (someone ran DISCARD or
      // DEALLOCATE, or a failed message left it unsure): list them again, then run again.
      this.resync = true;
      return new Retry(error);
    }
    return storageError(what, error);
  }
}

/** The `DbTransaction` one unit of work sees inside a batch. */
export class UnitTx implements DbTransaction, SaveItem {
  readonly userId: string;
  isReady = false;
  /** A later unit of its account's chain in the batch (see `Batch.runChain`). */
  follower = false;
  /** A later unit of a chain that asked what the chain cannot answer: it runs again on its own. */
  unchained = false;
  /**
   * Started from the state cache without locking (`Batch.optimistic`): the `xmin` of the account
   * row that state was made at, which its save requires the row still to have. Null otherwise.
   */
  xmin: string | null = null;
  /** A later unit's chain state (null: the first unit, or a unit alone). */
  private chain: ChainState | null = null;
  /** The first `load()` request, answered by the batch. */
  loadRequest: LoadRequest | null = null;
  /** The idempotency key the load in flight asks for (null: none). */
  key: string | null = null;
  loadDone = false;
  readonly loaded = deferred<LoadedState>();
  /** Another method was called before the batch opened its transaction. */
  needsTransaction = false;
  pending: Changes | null = null;
  /** Resolved once the unit is settled here (see `Batch.resolveInOrder`). */
  readonly done = deferred<void>();
  /** Its resolution waits for an earlier unit of the account: `untrack` comes then. */
  deferred = false;
  /** The cached state whose `xmin` the load statement compared with the account row's. */
  cached: AccountState | undefined = undefined;
  /** The account, open grants and active holds as loaded (null: no account yet): the cache's next state starts from them. */
  base: Omit<AccountState, "xmin"> | null = null;
  /** Tests: the state came from the cache; compare it with the database. */
  private verifyHit = false;
  private saved = false;
  private state: { seq: number | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } | null = null;
  /** Rows as read in this unit of work: updates write only the columns that differ from them. */
  readonly originals: { account: Account | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } = {
    account: null,
    grants: new Map(),
    holds: new Map(),
  };

  constructor(
    private readonly batch: Batch,
    readonly unit: Unit,
  ) {
    this.userId = unit.userId;
  }

  get pendingChanges(): Changes {
    return this.pending as Changes;
  }

  /** A later unit of a chain starts from what the ones before it left, under the same lock. */
  follow(at: ChainState): void {
    this.chain = at;
    this.xmin = at.xmin;
    const base = at.base;
    this.state = {
      seq: base?.account.seq ?? null,
      grants: new Map((base?.grants ?? []).map((g) => [g.id, g])),
      holds: new Map((base?.reservations ?? []).map((r) => [r.id, r])),
    };
    this.base = base;
    this.originals.account = base?.account ?? null;
    for (const g of base?.grants ?? []) this.originals.grants.set(g.id, g);
    for (const r of base?.reservations ?? []) this.originals.holds.set(r.id, r);
  }

  /** Leaves the chain: the unit of work runs again in a transaction of its own. */
  private unchain(): never {
    this.unchained = true;
    throw new NotRun(true);
  }

  /** A later unit's load: the chain's state, and its idempotent entry from the chain or the database. */
  private async loadInChain(chain: ChainState, request: LoadRequest | undefined): Promise<LoadedState> {
    if (this.loadDone) this.unchain();
    this.loadRequest = request ?? {};
    const key = request?.idempotencyKey;
    let idempotent: JournalEntry | null = null;
    if (key !== undefined) {
      for (const c of chain.saved) idempotent ??= c.entries.find((e) => e.idempotencyKey === key) ?? null;
      if (idempotent === null) {
        const { sql } = this.batch.db;
        const j = sql.tables.journal;
        const [row] = await this.batch.query(
          "load",
          `SELECT row_to_json(j)::text AS idem FROM ${j.qualified} j WHERE ${idempotentEntry("$1::text", "$2::text")}`,
          [this.userId, key],
        );
        const text = row?.idem as string | null | undefined;
        idempotent = text ? decodeRow<JournalEntry>(j.columns, JSON.parse(text)) : null;
      }
    }
    this.loadDone = true;
    const base = chain.base;
    return {
      account: base?.account ?? null,
      grants: [...(base?.grants ?? [])],
      reservations: [...(base?.reservations ?? [])],
      idempotent,
    };
  }

  async load(request?: LoadRequest): Promise<LoadedState> {
    if (this.chain !== null) return this.loadInChain(this.chain, request);
    if (this.loadRequest === null && !this.isReady) {
      this.loadRequest = request ?? {};
      const cached = this.batch.optimistic(this, request);
      if (cached !== undefined) {
        const state = this.fromCache(cached);
        this.batch.ready(this);
        if (this.verifyHit) await this.verifyCached(state);
        return state;
      }
      this.batch.ready(this);
      const state = await this.loaded.promise;
      if (this.verifyHit) await this.verifyCached(state);
      return state;
    }
    await this.batch.opened.promise;
    this.xmin = null; // the reload locks the row: the seq guard suffices from here on
    const again = deferred<LoadedState>();
    const previous = this.loaded;
    // `receive` answers through `this.loaded`: point it at a fresh one for this reload.
    (this as { loaded: Deferred<LoadedState> }).loaded = again;
    try {
      await this.batch.reload(this, request);
    } catch (error) {
      (this as { loaded: Deferred<LoadedState> }).loaded = previous;
      throw error;
    }
    return again.promise;
  }

  /**
   * Starts the unit from the state cache without a statement (see `Batch.optimistic`): the save
   * then guards the account row on the `xmin` the state was made at.
   */
  private fromCache(cached: AccountState): LoadedState {
    const { account, grants, reservations } = cached;
    this.xmin = cached.xmin;
    this.batch.db.stateCacheHits++;
    this.verifyHit = this.batch.db.verifyStates;
    this.state = {
      seq: account.seq,
      grants: new Map(grants.map((g) => [g.id, g])),
      holds: new Map(reservations.map((r) => [r.id, r])),
    };
    this.base = { account, grants, reservations };
    this.originals.account = account;
    for (const g of grants) this.originals.grants.set(g.id, g);
    for (const r of reservations) this.originals.holds.set(r.id, r);
    this.loadDone = true;
    return { account, grants: [...grants], reservations: [...reservations], idempotent: null };
  }

  /** The batch's answer to `load()`: the state statement's row (undefined: no account). */
  receive(stateRow: Record<string, unknown> | undefined): void {
    const { db } = this.batch;
    const { tables } = db.sql;
    try {
      const idemText = stateRow?.idem as string | null | undefined;
      const idempotent = idemText ? decodeRow<JournalEntry>(tables.journal.columns, JSON.parse(idemText)) : null;
      const xmin = typeof stateRow?.xmin === "string" ? stateRow.xmin : null;
      const cached = this.cached;
      let account: Account | null;
      let grants: readonly Grant[];
      let reservations: readonly Reservation[];
      if (stateRow?.present === true && cached !== undefined && xmin === cached.xmin) {
        // The account row is the version the cached state was made from: nothing changed since.
        ({ account, grants, reservations } = cached);
        db.stateCacheHits++;
        this.verifyHit = db.verifyStates;
      } else {
        const accountText = stateRow?.present === true ? (stateRow.account as string | null) : null;
        account = accountText ? decodeRow<Account>(tables.accounts.columns, JSON.parse(accountText)) : null;
        grants = parseRows<Grant>(tables.grants, stateRow?.grants as string | null | undefined);
        reservations = parseRows<Reservation>(tables.reservations, stateRow?.holds as string | null | undefined);
        if (account !== null && xmin !== null) db.states?.set(this.userId, { xmin, account, grants, reservations });
      }
      this.state = {
        seq: account?.seq ?? null,
        grants: new Map(grants.map((g) => [g.id, g])),
        holds: new Map(reservations.map((r) => [r.id, r])),
      };
      this.base = account === null ? null : { account, grants, reservations };
      this.originals.account = account;
      for (const g of grants) this.originals.grants.set(g.id, g);
      for (const r of reservations) this.originals.holds.set(r.id, r);
      this.loadDone = true;
      this.loaded.resolve({ account, grants: [...grants], reservations: [...reservations], idempotent });
    } catch (error) {
      this.loaded.reject(error);
    }
  }

  /** Tests (`verifyStateCache`): a state from the cache must be what the database holds. */
  private async verifyCached(state: LoadedState): Promise<void> {
    const { db } = this.batch;
    const [row] = await this.batch.query("verifyStateCache", db.sql.state.text, [[this.userId], [null], [null]]);
    // Started without the lock (`Batch.optimistic`): a state another process made stale since is
    // no fault of the cache; its save's guard refuses it.
    if (this.xmin !== null && row?.xmin !== this.xmin) return;
    const { tables } = db.sql;
    const account = row?.account
      ? decodeRow<Account>(tables.accounts.columns, JSON.parse(row.account as string))
      : null;
    // Stored columns only, keys sorted, null and undefined alike, dates as ISO text.
    const canon = (v: unknown): unknown => {
      if (v instanceof Date) return v.toISOString();
      if (Array.isArray(v)) return v.map(canon);
      if (v === null || typeof v !== "object") return v;
      const o = v as Record<string, unknown>;
      return Object.fromEntries(
        Object.keys(o)
          .sort()
          .filter((k) => o[k] !== null && o[k] !== undefined)
          .map((k) => [k, canon(o[k])]),
      );
    };
    const rows = (table: SqlTable, xs: ReadonlyArray<{ id: string }>) =>
      [...xs].sort((a, b) => (a.id < b.id ? -1 : 1)).map((x) => toRow(table.columns, x));
    const norm = (s: { account: Account | null; grants: readonly Grant[]; reservations: readonly Reservation[] }) =>
      JSON.stringify(
        canon({
          account: s.account === null ? null : toRow(tables.accounts.columns, s.account),
          grants: rows(tables.grants, s.grants),
          reservations: rows(tables.reservations, s.reservations),
        }),
      );
    const read = {
      account,
      grants: parseRows<Grant>(tables.grants, row?.grants as string | null),
      reservations: parseRows<Reservation>(tables.reservations, row?.holds as string | null),
    };
    const cached = { account: state.account, grants: state.grants, reservations: state.reservations };
    if (norm(read) !== norm(cached)) {
      throw new Error(`state cache of ${this.userId} differs from the database: ${norm(cached)} != ${norm(read)}`);
    }
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    // Under the account lock the loaded open grants are current: answer from them when we can.
    const loaded = this.state?.grants;
    if (loaded !== undefined && grantIds.every((id) => loaded.has(id)))
      return grantIds.map((id) => loaded.get(id) as Grant);
    // In a chain, a grant an earlier unit wrote is as it left it (the database has it as before).
    const written = this.chain?.grants;
    if (written !== undefined && grantIds.some((id) => written.has(id))) {
      const rest = grantIds.filter((id) => !written.has(id) && !loaded?.has(id));
      const read = rest.length === 0 ? [] : await this.getGrants(rest);
      const byId = new Map(read.map((g) => [g.id, g]));
      return grantIds.flatMap((id) => written.get(id) ?? loaded?.get(id) ?? byId.get(id) ?? []);
    }
    await this.opening();
    const { db } = this.batch;
    const rows = await this.batch.query(
      "getGrants",
      `${db.sql.select("grants")} WHERE user_id = $1 AND id = ANY($2::text[])`,
      [this.userId, [...grantIds]],
    );
    const byId = new Map(rows.map((r) => [r.id as string, decodeRow<Grant>(db.sql.tables.grants.columns, r)]));
    for (const g of byId.values()) if (!this.originals.grants.has(g.id)) this.originals.grants.set(g.id, g);
    return grantIds.flatMap((id) => byId.get(id) ?? []);
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const held = this.state?.holds.get(reservationId) ?? this.chain?.holds.get(reservationId);
    if (held !== undefined) return held;
    await this.opening();
    const { db } = this.batch;
    const rows = await this.batch.query(
      "getReservation",
      `${db.sql.select("reservations")} WHERE user_id = $1 AND id = $2`,
      [this.userId, reservationId],
    );
    if (rows[0] === undefined) return null;
    const r = decodeRow<Reservation>(db.sql.tables.reservations.columns, rows[0]);
    if (!this.originals.holds.has(r.id)) this.originals.holds.set(r.id, r);
    return r;
  }

  async getPromo(code: string): Promise<Promo | null> {
    if (this.chain?.promos === true || this.xmin !== null) this.unchain();
    await this.opening();
    const { sql } = this.batch.db;
    const { text, params } = inUnit.getPromo(sql.tables, code);
    const [row] = await this.batch.query("getPromo", text, params);
    return row === undefined ? null : decodePromoRow.promo(sql.tables, row);
  }

  async countPromoClaims(code: string): Promise<number> {
    if (this.chain?.promos === true || this.xmin !== null) this.unchain();
    await this.opening();
    const { text, params } = inUnit.countClaims(this.batch.db.sql.tables, code, this.userId);
    const [row] = await this.batch.query("countPromoClaims", text, params);
    return Number(row?.n ?? 0);
  }

  async getPayment(paymentId: string): Promise<Payment | null> {
    if (this.chain?.promos === true || this.xmin !== null) this.unchain();
    await this.opening();
    const { sql } = this.batch.db;
    const { text, params } = inUnit.getPayment(sql.tables, paymentId, this.userId);
    const [row] = await this.batch.query("getPayment", text, params);
    return row === undefined ? null : decodePromoRow.payment(sql.tables, row);
  }

  async save(changes: Changes): Promise<void> {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    if (
      this.chain?.promos === true &&
      ((changes.promoClaims?.length ?? 0) > 0 || (changes.paymentUpdates?.length ?? 0) > 0)
    )
      this.unchain();
    this.saved = true;
    if (this.state !== null && changes.previousSeq !== this.state.seq) {
      throw new ConflictError(`account ${this.userId} changed during the unit of work`, { userId: this.userId });
    }
    const rows: Array<{ userId: string }> = [
      changes.account,
      ...changes.insertGrants,
      ...changes.updateGrants,
      ...changes.insertReservations,
      ...changes.updateReservations,
      ...changes.entries,
      ...(changes.promoClaims ?? []),
      ...(changes.paymentUpdates ?? []),
      ...(changes.notifications ?? []),
    ];
    if (rows.some((o) => o.userId !== this.userId)) {
      throw new Error(`save() of account ${this.userId} got a row of another account`);
    }
    this.pending = changes;
  }

  /** Waits until the batch's transaction is open (reads before `load()` count as ready). */
  private async opening(): Promise<void> {
    if (!this.isReady) {
      this.needsTransaction = true;
      this.batch.ready(this);
    }
    await this.batch.opened.promise;
  }
}

/**
 * A model object as the JSON object `json_populate_record(set)` reads, without its null and
 * undefined fields: a key the JSON lacks reads as NULL, and the statement's payload (parsed by the
 * server, built and sent by the client) is that much shorter.
 */
function compactRow(columns: readonly Column[], value: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const v = value as Record<string, unknown>;
  for (const c of columns) {
    const x = v[c.field];
    if (x !== null && x !== undefined)
      out[c.name] = c.bytes === true ? byteaText(x as string) : c.tuple !== undefined ? toTuples(c.tuple, x) : x;
  }
  return out;
}

/** Only `names` of a model object, by column name (null fields left out: they read as NULL). */
function pick(table: SqlTable, names: readonly string[], value: object): Record<string, unknown> {
  const v = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const c of table.columns) {
    if (!names.includes(c.name)) continue;
    const x = v[c.field];
    if (x !== null && x !== undefined) out[c.name] = x;
  }
  return out;
}

/**
 * The columns (in table order) in which the rows differ from the rows as read; every updatable
 * column when a row was not read in its unit of work.
 */
function changedColumns(table: SqlTable, rows: ReadonlyArray<readonly [object, object | null | undefined]>): string[] {
  const candidates = updatable(table);
  const changed = new Set<string>();
  for (const [row, original] of rows) {
    const before = original as Record<string, unknown> | null | undefined;
    const after = row as Record<string, unknown>;
    for (const c of candidates) {
      if (changed.has(c.name)) continue;
      if (before === null || before === undefined || !sameValue(before[c.field], after[c.field])) changed.add(c.name);
    }
  }
  const names = candidates.filter((c) => changed.has(c.name)).map((c) => c.name);
  return names.length > 0 ? names : candidates.map((c) => c.name);
}

const updatableColumns = new WeakMap<SqlTable, Column[]>();
/** Columns an update may write: not the key, the owner or the creation time. */
function updatable(table: SqlTable): Column[] {
  let list = updatableColumns.get(table);
  if (list === undefined) {
    const keys = new Set(["user_id", "created_at", ...table.spec.primaryKey.map(snakeCase)]);
    list = table.columns.filter((c) => !keys.has(c.name));
    updatableColumns.set(table, list);
  }
  return list;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a instanceof Date && b instanceof Date) return a.getTime() === b.getTime();
  return false;
}

function parseRows<T>(table: SqlTable, json: string | null | undefined): T[] {
  if (!json) return [];
  return (JSON.parse(json) as Record<string, unknown>[]).map((row) => decodeRow<T>(table.columns, row));
}
