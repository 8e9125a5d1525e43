import type { PgPoolClient as PoolClient, PgQueryResult as QueryResult } from "./pg-types.js";
import { ConflictError, StorageError } from "../../core/errors.js";
import {
  isConflict,
  isConnectionLevel,
  isLostConnection,
  leavesOutcomeUnknown,
  lockTimeout,
  storageError,
  workerCode,
} from "./errors.js";
import type { LoadRequest } from "../../core/db/types.js";
import type { PostgresDbManager } from "./index.js";
import { type Statement, arrayText, executeText } from "./sql.js";
import { type AccountState, stateAfter } from "./state-cache.js";
import { deferred } from "../store/group-commit.js";
import { outcomeUnknown } from "../../core/db/store/errors.js";
import { type ChainState, type SaveItem, advance, merged } from "./chain.js";
import { saveParts } from "./save-rows.js";
import { type BatchResult, NotRun, Retry, Skipped, type Unit } from "./unit.js";
import { UnitTx } from "./unit-tx.js";
import { markPrepared, prepareFor, queryOf, resyncPrepared } from "./prepared.js";

/**
 * Opens a unit-of-work transaction: `BEGIN`, then one statement that sets what the transaction
 * needs (`set_config(…, true)` is `SET LOCAL`, which ends with the transaction; one `SELECT` of
 * them all is one statement for the server to run and the client to read instead of one per
 * setting). `TimeZone` UTC: the state statement reads rows as JSON, whose dates are ISO 8601
 * whatever the session's `DateStyle` but carry the session's offset, and under a far-off zone a
 * date near year 1 or 9999 prints as what JavaScript cannot parse (year 10000, or a local-mean-time
 * offset in seconds). On Citus, custom plans: Citus plans a statement across tables for the
 * shard of its parameters' values only. No sequential scans (docs/storage.md, "What each piece
 * buys": 142 µs of server CPU a deduction with them, 83 without): every statement of a unit of work
 * finds its rows by key, but on a small table (a few thousand rows) the planner prefers reading
 * it whole and testing `key = ANY(array)` on every row, one array element after another: a batch
 * of 16 units then compared every account and grant row 16 times, three times over, which cost
 * more server CPU than all the rest of the batch. With the store's `lockTimeoutMs`,
 * `lock_timeout` too: a unit that waits for an account another transaction holds (an
 * application's own transaction above all, docs/transactions.md) waits that long at most, then
 * fails with `LockTimeoutError`.
 */
function beginText(lockTimeoutMs: number, distributed: boolean, seqscanOff: boolean): string {
  const settings = [
    ...(distributed ? [["plan_cache_mode", "force_custom_plan"]] : []),
    ...(seqscanOff ? [["enable_seqscan", "off"]] : []),
    ["TimeZone", "UTC"],
    ...(lockTimeoutMs > 0 ? [["lock_timeout", String(lockTimeoutMs)]] : []),
  ];
  const set = settings.map(([name, value]) => `set_config('${name}', '${value}', true)`).join(", ");
  return `BEGIN ISOLATION LEVEL READ COMMITTED; SELECT ${set}`;
}

const begins = new Map<string, string>();

/** `BEGIN` and the settings of a unit-of-work transaction under this store's `lockTimeoutMs`. */
function beginOf(db: PostgresDbManager): string {
  const seqscanOff = db.options.tune?.seqscanOff !== false;
  const key = `${db.lockTimeoutMs}:${db.sql.distributed}:${seqscanOff}`;
  let text = begins.get(key);
  if (text === undefined) begins.set(key, (text = beginText(db.lockTimeoutMs, db.sql.distributed, seqscanOff)));
  return text;
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
    for (const tx of this.txs) db.units.track(tx);
  }

  /** The units of work per account, in queue order (one each, unless the group commit chains them). */
  private readonly chains: UnitTx[][];

  /** Forgets the units that are settled here (all but those whose resolution waits its turn). */
  untrackSettled(): void {
    for (const tx of this.txs) if (!tx.deferred) this.db.units.untrack(tx);
  }

  /**
   * Runs the units of one account one after another: the first as any unit of a batch, each
   * later one on the state the ones before it left (their saved changes on top of what the first
   * loaded), without a statement of its own: it holds the same row lock in the same transaction.
   * What a later unit cannot be answered from that state (a second load, a read of a module's rows
   * after another unit of the chain saved some) makes it leave the chain: it runs
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
        at = { base: tx.base, xmin: tx.xmin, saved: [], grants: new Map(), holds: new Map(), modules: false };
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
    if (this.resync && !this.broken) {
      this.db.roundTrips++;
      await resyncPrepared(this.client);
    }

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
      else if (this.broken && !(commitError instanceof Retry)) {
        // The connection failed with the COMMIT in the message: no retry, and unless the message
        // was never sent its outcome is unknown (docs/concepts.md, "Certain and uncertain
        // errors"). The next unit of the account loads.
        this.db.states?.delete(tx.userId);
        const cause = commitError instanceof StorageError ? commitError.cause : commitError;
        unit.reject(leavesOutcomeUnknown(cause) ? outcomeUnknown("postgres", commitError) : commitError);
      } else if (commitError instanceof Retry)
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
    const before = this.db.units.committedBefore(tx);
    if (before === null) {
      tx.unit.resolve(value); // (untracked with the others at the end of run())
      return;
    }
    tx.deferred = true;
    void before.then(() => {
      tx.unit.resolve(value);
      this.db.units.untrack(tx);
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
    if (this.db.options.tune?.optimistic === false) return undefined;
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
    if (this.optimists.length === 0) return { unsure, confirm };
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
    const { save, saveArgs, extra } = saveParts(this.db.sql, txs, this.db.modules);
    const extraText = extra.map((x) => `${executeText(x.statement, [x.arg], this.db.prepared)}; `).join("");
    const confirmText = confirm.length === 0 ? "" : `; ${this.confirmText(confirm)}`;
    const statements = [...extra.map((x) => x.statement), save, ...(confirm.length === 0 ? [] : [this.db.sql.confirm])];
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
    const prepare = this.db.prepared ? prepareFor(this.client, statements) : { text: "", names: [] };
    this.db.roundTrips++;
    let result: QueryResult | QueryResult[];
    try {
      result = (await this.client.query(text(prepare.text))) as unknown as QueryResult | QueryResult[];
    } catch (error) {
      if (prepare.names.length > 0) this.resync = true;
      throw this.fail(what, error);
    }
    try {
      markPrepared(this.client, prepare.names);
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
      const r = await this.client.query(queryOf(this.db, text, params));
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
    if (isConflict(error)) return new Retry(error);
    if (code === "55P03") return lockTimeout(this.db, what, error);
    if (code === "26000" || code === "42P05") {
      // Our record of the connection's prepared statements was wrong (someone ran DISCARD or
      // DEALLOCATE, or a failed message left it unsure): list them again, then run again.
      this.resync = true;
      return new Retry(error);
    }
    return storageError(what, error);
  }
}
