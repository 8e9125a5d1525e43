import type { ClientSession, TransactionOptions } from "mongodb";
import { ConflictError, CreditError } from "../../errors.js";
import type { Grant, JournalEntry, Payment, Promo, Reservation } from "../../models/index.js";
import { MongoOutbox } from "./outbox.js";
import type { ChargeRecord, Changes, DbTransaction, LoadRequest, LoadedState } from "../types.js";
import { GRANT, RESERVATION, fromDoc } from "./documents.js";
import type { MongoPromoStore } from "./promos.js";
import { checkCachedState, stateAfter, type AccountState } from "./state-cache.js";
import { accountOp, checkOwner, entryOps, itemOps, readCharge, readStates, write } from "./batch.js";
import { type Collections, batchOf } from "./collections.js";

// A unit of work on the MongoDB store (docs/storage.md, MongoDB): the transaction it runs in,
// its reads and its guarded write of the account, and how long its attempts wait.

/**
 * Snapshot reads, majority-acknowledged commits: a unit of work sees one consistent state, and a
 * commit it reports survives a primary failover.
 */
export const TRANSACTION_OPTIONS: TransactionOptions = {
  readConcern: { level: "snapshot" },
  writeConcern: { w: "majority" },
  readPreference: "primary",
};

/** The account moved since it was loaded: retry the unit of work (never leaves `transaction`). */
export class StaleAccount extends ConflictError {
  constructor(
    userId: string,
    /** The unit of work started from the state cache (retried at once, without backoff). */
    readonly fromCache: boolean,
  ) {
    super(`[credit-management] [mongodb] account ${userId} changed during the unit of work`, { userId });
  }
}

export class MongoTransaction implements DbTransaction {
  private saved = false;
  /** The state `load()` handed out (from the cache or the database). */
  private base: AccountState | null | undefined;
  private baseFromCache = false;
  /** The committed state for the cache once this unit of work commits. */
  stateAfter: AccountState | undefined;
  /** A locked attempt that wrote its account first: no other transaction can write it now. */
  holding = false;

  constructor(
    private readonly c: Collections,
    private readonly session: ClientSession,
    readonly userId: string,
    private readonly cached: AccountState | undefined,
    private readonly verify: boolean,
    private readonly promos: MongoPromoStore,
    /** A locked attempt: `run` writes the account document before anything else (see `attempt`). */
    private readonly lockFirst = false,
  ) {}

  /**
   * Runs the unit of work. One that decided on a cached state without saving (a refusal, or
   * nothing to change) must not be trusted before the account's `_rev` confirms the state was
   * current: else it reruns on a fresh read.
   */
  async run<T>(fn: (tx: DbTransaction) => Promise<T>): Promise<T> {
    // A write of the account's `_rev` first (no account yet: nothing to hold, and a racing first
    // insert is a duplicate key as ever): from here no other transaction can write it before this
    // one ends, and `load` reads the `_rev` written, which the save's guard then finds.
    if (this.lockFirst) {
      const res = await this.c.accounts.updateOne(
        { _id: this.userId },
        { $inc: { _rev: 1 } },
        { session: this.session },
      );
      this.holding = res.matchedCount === 1;
    }
    let value: T;
    try {
      value = await fn(this);
    } catch (error) {
      if (this.baseFromCache && !this.saved && error instanceof CreditError) await this.confirmCached();
      throw error;
    }
    if (this.baseFromCache && !this.saved) await this.confirmCached();
    if (!this.saved && this.base !== undefined && this.base !== null) this.stateAfter = this.base;
    return value;
  }

  private async confirmCached(): Promise<void> {
    const doc = await this.c.accounts.findOne({ _id: this.userId }, { session: this.session, projection: { _rev: 1 } });
    if (doc?._rev !== this.base?.rev) throw new StaleAccount(this.userId, true);
  }

  /**
   * The account, its open grants and active holds: from the state cache when this unit of work got
   * one and no idempotency key is asked for, else from the database (`read`).
   */
  async load(request?: LoadRequest): Promise<LoadedState> {
    const key = request?.idempotencyKey;
    // The cache knows nothing of idempotency keys: a keyed unit of work always reads.
    if (this.cached !== undefined && key === undefined) {
      if (this.verify) await this.verifyCached();
      this.base = this.cached;
      this.baseFromCache = true;
      const { account, grants, reservations } = this.cached;
      return { account, grants: [...grants], reservations: [...reservations], idempotent: null };
    }
    const { state, idempotent } = await this.read(key);
    this.base = state;
    this.baseFromCache = false;
    return state === null
      ? { account: null, grants: [], reservations: [], idempotent: null }
      : { account: state.account, grants: [...state.grants], reservations: [...state.reservations], idempotent };
  }

  /** Tests: the cached state must be what the database holds. */
  private async verifyCached(): Promise<void> {
    const { state } = await this.read(undefined);
    checkCachedState(this.userId, this.cached, state);
  }

  /**
   * One round trip: the account with its open grants, active holds and (if asked) the entry of an
   * idempotency key, through `$lookup`s. Without an account there is nothing else to find: all of a
   * user's documents are written in the unit of work that creates or updates the account.
   *
   * Driver errors are not converted here: `withTransaction` must see their labels to retry.
   */
  private async read(
    key: string | undefined,
  ): Promise<{ state: AccountState | null; idempotent: JournalEntry | null }> {
    const found = (await readStates(this.c, this.session, [{ userId: this.userId, key }])).get(this.userId);
    return found === undefined ? { state: null, idempotent: null } : found;
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    if (grantIds.length === 0) return [];
    const docs = await this.c.grants
      .find(
        { _id: { $in: [...grantIds] }, userId: this.userId },
        { session: this.session, ...batchOf(grantIds.length) },
      )
      .toArray();
    return docs.map((d) => fromDoc(GRANT, d));
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const doc = await this.c.reservations.findOne(
      { _id: reservationId, userId: this.userId },
      { session: this.session },
    );
    return doc === null ? null : fromDoc(RESERVATION, doc);
  }

  getCharge(entryId: string): Promise<ChargeRecord | null> {
    return readCharge(this.c.journal, this.session, this.userId, entryId);
  }

  getPromo(code: string): Promise<Promo | null> {
    return this.promos.getPromoIn(this.session, code);
  }

  countPromoClaims(code: string): Promise<number> {
    return this.promos.countClaimsIn(this.session, code, this.userId);
  }

  getPayment(paymentId: string): Promise<Payment | null> {
    return this.promos.getPaymentIn(this.session, paymentId, this.userId);
  }

  /**
   * At most four round trips: the guarded account write first (so a loser of a race learns it
   * before writing anything else), then grants and holds (one `bulkWrite` each) and the entries
   * (one `insertMany`).
   */
  async save(changes: Changes): Promise<void> {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    checkOwner(this.userId, changes);
    const session = this.session;

    // A concurrent first insert fails with a duplicate key; a guard miss (`seq`, and `_rev`, which
    // proves that no other save committed since the state was read or cached) matches nothing:
    // either way the unit of work is retried.
    const op = accountOp(changes, this.base);
    if ("insertOne" in op) {
      await this.c.accounts.insertOne(op.insertOne.document, { session });
    } else if ("updateOne" in op) {
      const res = await this.c.accounts.updateOne(op.updateOne.filter, op.updateOne.update, { session });
      if (res.matchedCount !== 1) throw new StaleAccount(this.userId, this.baseFromCache);
    }
    const { grants, holds } = itemOps(changes, this.base);
    await write(this.c.grants, grants, session);
    await write(this.c.reservations, holds, session);
    await write(this.c.journal, entryOps(changes), session);
    await this.promos.saveIn(session, changes);
    if (changes.notifications !== undefined && changes.notifications.length > 0) {
      await new MongoOutbox(this.c.notifications).insertInTransaction(changes.notifications, session);
    }
    // What the cache holds once the transaction commits (only a state this unit of work loaded).
    if (this.base !== undefined) this.stateAfter = stateAfter(this.base, changes);
  }
}

/** Jittered exponential backoff between attempts of a unit of work, in ms (at most 100). */
export const BACKOFF = { base: 4, factor: 1.5, max: 100, floor: 0 };

/** How long a unit of work's locked attempts try to write its account first, in ms (see `attempt`). */
export const LOCK_WAIT_MS = 5_000;
