import { isDeepStrictEqual } from "node:util";
import type {
  AnyBulkWriteOperation,
  ClientSession,
  Collection,
  Document,
  MongoClient,
  TransactionOptions,
} from "mongodb";
import { ConflictError, CreditError } from "../../errors.js";
import type { Grant, JournalEntry, Payment, Promo, Reservation } from "../../models/index.js";
import type { ChargeRecord, Changes, DbTransaction, LoadRequest, LoadedState } from "../types.js";
import {
  ACCOUNT,
  ENTRY,
  GRANT,
  RESERVATION,
  fromDoc,
  isOpenGrant,
  toDoc,
  updatableFields,
  type StoredDoc,
} from "./documents.js";
import { hasLabel, toCreditError } from "./errors.js";
import type { MongoOutbox } from "./outbox.js";
import type { MongoPromoStore } from "./promos.js";
import { type AccountState, type StateCache, checkCachedState, stateAfter } from "./state-cache.js";
import { type QueuedUnit, deferred } from "../store/group-commit.js";

/** The collections a unit of work writes. */
export interface UnitCollections {
  accounts: Collection<StoredDoc>;
  grants: Collection<StoredDoc>;
  reservations: Collection<StoredDoc>;
  journal: Collection<StoredDoc>;
}

/** What a batch needs from its manager. */
export interface BatchContext {
  readonly client: MongoClient;
  readonly c: UnitCollections;
  readonly states: StateCache | null;
  readonly verify: boolean;
  readonly promos: MongoPromoStore;
  readonly outbox: MongoOutbox;
  readonly transactionOptions: TransactionOptions;
}

/** A unit of work waiting to run; `attempts` counts the failed batches it took part in. */
export type Unit = QueuedUnit & {
  /** Out of optimistic attempts: runs alone, writing its account first (`MongoDbManager.attempt`). */
  locked?: boolean;
};

/**
 * `DbTransaction.getCharge` in `session`: the journal entry `entryId` of `userId` (by `_id`) and
 * the entries that reverse it (the `user_reverses` index), in seq order.
 * Driver errors are not converted here: the caller needs their labels.
 */
export async function readCharge(
  journal: Collection<StoredDoc>,
  session: ClientSession,
  userId: string,
  entryId: string,
): Promise<ChargeRecord | null> {
  const doc = await journal.findOne({ _id: entryId, userId }, { session });
  if (doc === null) return null;
  const reversals = await journal.find({ userId, reverses: entryId }, { session, sort: { seq: 1 } }).toArray();
  return { entry: fromDoc(ENTRY, doc), reversals: reversals.map((d) => fromDoc(ENTRY, d)) };
}

/** A read for the state of several accounts, with an idempotency key each (or none). */
export interface StateRequest {
  userId: string;
  key: string | undefined;
}

/**
 * The accounts with their open grants and active holds, through `$lookup`s (`let` + `$expr` `$eq`,
 * which MongoDB ≥ 5.0 answers from the `{ userId, … }` indexes), in one round trip; the entries of
 * the idempotency keys asked for come in the same one for one account, in a second (one indexed
 * `find`) for several. Accounts that do not exist are missing from the answer.
 * Driver errors are not converted here: the caller needs their labels.
 */
export async function readStates(
  c: UnitCollections,
  session: ClientSession,
  requests: readonly StateRequest[],
): Promise<Map<string, { state: AccountState; idempotent: JournalEntry | null }>> {
  const out = new Map<string, { state: AccountState; idempotent: JournalEntry | null }>();
  if (requests.length === 0) return out;
  const ids = requests.map((r) => r.userId);
  const keyOf = new Map(requests.map((r) => [r.userId, r.key]));
  const single = requests.length === 1;
  const user = single ? ids[0] : undefined;
  // One user: plain matches (the common case of an unbatched unit of work); several: by `$$u`.
  const byUser = (extra: Document): Document =>
    single ? { $match: { userId: user, ...extra } } : { $match: { $expr: { $eq: ["$userId", "$$u"] }, ...extra } };
  const lookup = (from: string, extra: Document, as: string, more: Document[] = []): Document => ({
    $lookup: { from, ...(single ? {} : { let: { u: "$_id" } }), pipeline: [byUser(extra), ...more], as },
  });
  const pipeline: Document[] = [
    { $match: single ? { _id: user } : { _id: { $in: ids } } },
    lookup(c.grants.collectionName, { _open: true }, "_grants"),
    lookup(c.reservations.collectionName, { status: "active" }, "_holds"),
  ];
  const keyed = requests.filter((r) => r.key !== undefined);
  if (single && keyed.length === 1) {
    pipeline.push({
      $lookup: {
        from: c.journal.collectionName,
        pipeline: [{ $match: { userId: user, idempotencyKey: keyed[0]?.key } }, { $limit: 1 }],
        as: "_key",
      },
    });
  }
  const docs = await c.accounts
    .aggregate<Document>(pipeline, { session, batchSize: Math.max(1, ids.length) })
    .toArray();
  // Several keys: one indexed find for all of them (a second command).
  const entries = new Map<string, Document>();
  if (!single && keyed.length > 0 && docs.length > 0) {
    const present = new Set(docs.map((d) => d._id as string));
    const wanted = keyed.filter((r) => present.has(r.userId));
    if (wanted.length > 0) {
      const found = await c.journal
        .find(
          { $or: wanted.map((r) => ({ userId: r.userId, idempotencyKey: r.key })) },
          { session, batchSize: wanted.length },
        )
        .toArray();
      for (const e of found) entries.set(e.userId as string, e);
    }
  }
  for (const doc of docs) {
    const userId = doc._id as string;
    const keyed = single ? (doc._key as Document[] | undefined)?.[0] : entries.get(userId);
    const wanted = keyOf.get(userId);
    out.set(userId, {
      state: {
        account: fromDoc(ACCOUNT, doc),
        rev: typeof doc._rev === "number" ? doc._rev : 0,
        grants: (doc._grants as Document[]).map((d) => fromDoc(GRANT, d)),
        reservations: (doc._holds as Document[]).map((d) => fromDoc(RESERVATION, d)),
      },
      idempotent:
        keyed === undefined || wanted === undefined || keyed.idempotencyKey !== wanted ? null : fromDoc(ENTRY, keyed),
    });
  }
  return out;
}

/** Two field values as the models give them (numbers, strings, dates, null, plain objects) are the same. */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (a instanceof Date && b instanceof Date) return a.getTime() === b.getTime();
  return isDeepStrictEqual(a, b);
}

/**
 * The `$set` of an update: only the fields of `next` that differ from `prev`, the state the unit of
 * work started from (the account's guard proves the stored documents are still that state). Fewer
 * fields to encode, send and apply: a deduction sets four of an account's nine fields and one of a
 * grant's ten (docs/storage.md, "MongoDB").
 */
function changedFields(fields: Document, prev: object): Document {
  const set: Document = {};
  const old = prev as Record<string, unknown>;
  for (const key of Object.keys(fields))
    if (!same(fields[key], old[key] === undefined ? null : old[key])) set[key] = fields[key];
  return set;
}

const isEmpty = (o: object): boolean => {
  for (const _ in o) return false;
  return true;
};

/** The guarded write of one account (the first write of its unit of work). */
export function accountOp(changes: Changes, base: AccountState | null | undefined): AnyBulkWriteOperation<StoredDoc> {
  const { account } = changes;
  if (changes.previousSeq === null) return { insertOne: { document: toDoc(ACCOUNT, account, { _rev: 1 }) } };
  const { userId, ...fields } = account;
  // `_rev` makes every save a real write (MongoDB skips no-op updates), and proves that no other
  // save committed since the state was read or cached.
  const filter: Document = { _id: userId, seq: changes.previousSeq };
  if (base === undefined || base === null)
    return { updateOne: { filter, update: { $set: fields, $inc: { _rev: 1 } } } };
  filter._rev = base.rev;
  const set = changedFields(fields, base.account);
  return { updateOne: { filter, update: isEmpty(set) ? { $inc: { _rev: 1 } } : { $set: set, $inc: { _rev: 1 } } } };
}

/** The `$set` of an item's update: what changed since `base` where it holds the item, else every field. */
function itemSet<T extends { id: string }>(
  fields: Document,
  item: T,
  base: ReadonlyMap<string, T> | undefined,
): Document {
  const prev = base?.get(item.id);
  return prev === undefined ? fields : changedFields(fields, prev);
}

/** Inserts and updates of grants, then of holds, of one unit of work. */
export function itemOps(
  changes: Changes,
  base?: AccountState | null,
): {
  grants: AnyBulkWriteOperation<StoredDoc>[];
  holds: AnyBulkWriteOperation<StoredDoc>[];
} {
  const { account } = changes;
  // Updates set only what changed since the state the unit of work started from (see `changedFields`).
  const baseGrants =
    base === undefined || base === null || changes.updateGrants.length === 0
      ? undefined
      : new Map(base.grants.map((g) => [g.id, g]));
  const baseHolds =
    base === undefined || base === null || changes.updateReservations.length === 0
      ? undefined
      : new Map(base.reservations.map((r) => [r.id, r]));
  const userId = account.userId;
  // Insertion order per user: the seq of the entry that created the grant or hold.
  const ord = new Map<string, number>();
  for (const e of changes.entries) {
    if (e.type === "add") for (const p of e.grants) ord.set(p.grantId, e.seq);
    else if (e.type === "reserve" && e.reservationId !== null) ord.set(e.reservationId, e.seq);
  }
  const ordOf = (id: string) => ord.get(id) ?? account.seq;
  return {
    grants: [
      ...changes.insertGrants.map((g) => ({
        insertOne: { document: toDoc(GRANT, g, { _open: isOpenGrant(g), _ord: ordOf(g.id) }) },
      })),
      ...changes.updateGrants.map((g) => ({
        updateOne: {
          filter: { _id: g.id, userId },
          update: { $set: { ...itemSet(updatableFields(GRANT, g), g, baseGrants), _open: isOpenGrant(g) } },
        },
      })),
    ],
    holds: [
      ...changes.insertReservations.map((r) => ({
        insertOne: { document: toDoc(RESERVATION, r, { _ord: ordOf(r.id) }) },
      })),
      ...changes.updateReservations.flatMap((r) => {
        const set = itemSet(updatableFields(RESERVATION, r), r, baseHolds);
        // A hold written back unchanged needs no command (an empty `$set` is refused before MongoDB 5.0).
        return isEmpty(set) ? [] : [{ updateOne: { filter: { _id: r.id, userId }, update: { $set: set } } }];
      }),
    ],
  };
}

/** The journal entries of one unit of work, as inserts. */
export const entryOps = (changes: Changes): AnyBulkWriteOperation<StoredDoc>[] =>
  changes.entries.map((e) => ({ insertOne: { document: toDoc(ENTRY, e) } }));

/** Checks that `save()` got rows of its own account only. */
export function checkOwner(userId: string, changes: Changes): void {
  if (changes.account.userId !== userId)
    throw new Error(`save() got account ${changes.account.userId} in a unit of work on ${userId}`);
}

/**
 * One command for a collection's writes: `bulkWrite` (ordered) for several, the single-operation
 * command for one (less work in the driver), nothing for none. Every update must match.
 */
export async function write(
  collection: Collection<StoredDoc>,
  ops: AnyBulkWriteOperation<StoredDoc>[],
  session: ClientSession,
): Promise<void> {
  const [only] = ops;
  if (only === undefined) return;
  let updates = 0;
  let matched = 0;
  if (ops.length === 1 && "insertOne" in only) {
    await collection.insertOne(only.insertOne.document, { session });
  } else if (ops.length === 1 && "updateOne" in only) {
    updates = 1;
    matched = (await collection.updateOne(only.updateOne.filter, only.updateOne.update, { session })).matchedCount;
  } else {
    updates = ops.filter((op) => "updateOne" in op).length;
    matched = (await collection.bulkWrite(ops, { session, ordered: true })).matchedCount;
  }
  // Every update names a document of an account its unit of work read: a miss is a bug.
  if (matched !== updates) {
    throw new Error(
      `[credit-management] [mongodb] ${updates - matched} update(s) of ${collection.collectionName} matched no document`,
    );
  }
}

/** The shared transaction failed: nothing of it commits, and its units run again alone. */
class BatchFailed extends Error {
  constructor(readonly reason: unknown) {
    super("the shared transaction failed");
  }
}

/** An account write of the batch found its account moved since it was read or cached. */
class GuardMissed extends ConflictError {
  constructor(missed: number) {
    super(`[credit-management] [mongodb] ${missed} account(s) of a batch changed during the unit of work`);
  }
}

/**
 * What a batch leaves to its manager: the units to run again — alone, or (`batch: true`, after a
 * guard miss on a cached state) in a batch again, on fresh reads.
 */
export interface BatchResult {
  retry: Array<{ unit: Unit; reason: unknown; batch?: boolean }>;
}

/** Times a commit whose outcome is unknown is retried (as `withTransaction` does) before giving up. */
const COMMIT_RETRIES = 3;

/**
 * One MongoDB transaction serving one or more units of work on different accounts (group commit).
 *
 * Every unit's `fn` starts at once with its own `DbTransaction`. A unit whose account is in the
 * state cache loads without a read; the others wait until every unit has asked for its state (or
 * finished), and one aggregate reads all their states in the transaction. `save()` only queues.
 * When every unit has finished, the batch writes all queued changes — one command per collection:
 * the guarded account updates (every guard must match, else the whole batch aborts), grants, holds,
 * journal entries — and commits once. A unit resolves only after that commit.
 *
 * A unit that throws writes nothing and gets its own error (after a refusal decided on a cached
 * state is confirmed current: one read of `_rev` for all such units). If the shared transaction
 * fails (a write conflict, a duplicate key, any driver error), nothing of it is committed and
 * every unit runs again, alone, so a culprit fails only itself. A guard miss (a cached state that
 * another process made stale) fails no unit: the batch's units run again together, on fresh reads.
 * A commit whose outcome stays unknown is never rerun: its units get a `StorageError`.
 */
export class MongoBatch {
  readonly txs: BatchTx[];
  private session: ClientSession | null = null;
  private inTransaction = false;
  /** The first failure of the shared transaction: nothing of it will commit. */
  failure: unknown = undefined;
  /** Serialises the session's commands (a transaction's first command must go first). */
  private chain: Promise<unknown> = Promise.resolve();
  /** Units computing (not waiting for the batch's read, not finished). */
  private running: number;
  private pendingLoads: BatchTx[] = [];
  /** Set once the commit was sent: from then on a failure may hide a commit. */
  private committing = false;

  constructor(
    readonly ctx: BatchContext,
    units: readonly Unit[],
    /** Start units from the state cache (false: every unit reads its state in the transaction). */
    cached = true,
  ) {
    this.txs = units.map((u) => new BatchTx(this, u, cached ? ctx.states?.get(u.userId) : undefined));
    this.running = this.txs.length;
  }

  async run(): Promise<BatchResult> {
    try {
      return await this.runUnits();
    } finally {
      if (this.session !== null) {
        // Cleanup only: the batch's own result or error is what `run` answers. The server aborts an
        // abandoned transaction...
        if (this.inTransaction) await this.session.abortTransaction().catch(() => undefined);
        // ...and times out a session that fails to end.
        await this.session.endSession().catch(() => undefined);
      }
    }
  }

  private async runUnits(): Promise<BatchResult> {
    const outcomes = await Promise.allSettled(
      this.txs.map(async (tx) => {
        try {
          return await tx.unit.fn(tx);
        } finally {
          this.park();
        }
      }),
    );
    const retry: BatchResult["retry"] = [];
    const states = this.ctx.states;
    const again = (tx: BatchTx, reason: unknown) => {
      states?.delete(tx.userId);
      retry.push({ unit: tx.unit, reason });
    };
    if (this.failure !== undefined) {
      for (const tx of this.txs) again(tx, this.failure);
      return { retry };
    }
    const savers = this.txs.filter((tx, i) => outcomes[i]?.status === "fulfilled" && tx.pending !== null);
    // Decided on a cached state without writing: final only once `_rev` shows the state current.
    const unconfirmed = this.txs.filter((tx, i) => {
      const o = outcomes[i] as PromiseSettledResult<unknown>;
      return tx.fromCache && tx.pending === null && (o.status === "fulfilled" || o.reason instanceof CreditError);
    });
    const stale = new Set<BatchTx>();
    try {
      if (unconfirmed.length > 0) for (const tx of await this.staleOf(unconfirmed, savers.length > 0)) stale.add(tx);
      if (savers.length > 0) await this.save(savers);
    } catch (error) {
      const reason = error instanceof BatchFailed ? error.reason : error;
      if (reason instanceof GuardMissed) {
        // Some account moved since its state was cached (another process wrote it). Nothing
        // committed; every unit runs again in a batch, its cached state dropped: the next batch
        // reads them all (one read) inside its transaction, where a state cannot be stale.
        for (const tx of this.txs) again(tx, reason);
        for (const r of retry) r.batch = true;
        return { retry };
      }
      if (!this.committing || hasLabel(reason, "TransientTransactionError")) {
        // Nothing committed: everyone runs again (savers and refusals alike), alone.
        for (const tx of this.txs) again(tx, reason);
        return { retry };
      }
      // The commit's outcome is unknown: its savers must not run again (they might have
      // committed), so they get the error; retry with the same idempotency key to learn more.
      for (const tx of this.txs) {
        if (savers.includes(tx)) {
          states?.delete(tx.userId);
          tx.unit.reject(toCreditError(reason, "commit (outcome unknown)"));
        } else again(tx, reason);
      }
      return { retry };
    }
    this.txs.forEach((tx, i) => {
      const outcome = outcomes[i] as PromiseSettledResult<unknown>;
      if (stale.has(tx)) {
        // Decided on a stale cached state: run again (in a batch, on a fresh read).
        again(tx, new ConflictError(`account ${tx.userId} changed since its state was cached`));
        (retry[retry.length - 1] as BatchResult["retry"][number]).batch = true;
        return;
      }
      if (outcome.status === "rejected") {
        states?.delete(tx.userId);
        tx.unit.reject(outcome.reason);
        return;
      }
      // What the cache holds now: only a state this unit of work loaded (and what it changed).
      try {
        if (tx.pending !== null && tx.base !== undefined) states?.set(tx.userId, stateAfter(tx.base, tx.pending));
        else if (tx.pending === null && tx.base !== undefined && tx.base !== null) states?.set(tx.userId, tx.base);
        else states?.delete(tx.userId);
      } catch {
        states?.delete(tx.userId); // the next unit of work reads instead
      }
      tx.unit.resolve(outcome.value);
    });
    return { retry };
  }

  /**
   * The units whose cached state is not the account's current one (`_rev` moved): one read, in
   * the transaction when the batch writes too (its snapshot), else on its own.
   */
  private async staleOf(txs: readonly BatchTx[], inTransaction: boolean): Promise<BatchTx[]> {
    const ids = txs.map((tx) => tx.userId);
    const find = (session: ClientSession | undefined) =>
      this.ctx.c.accounts
        .find(
          { _id: { $in: ids } },
          { projection: { _rev: 1 }, batchSize: Math.max(1, ids.length), ...(session ? { session } : {}) },
        )
        .toArray();
    const docs = inTransaction || this.inTransaction ? await this.op(find) : await this.plain(() => find(undefined));
    const revs = new Map(docs.map((d) => [d._id, d._rev as unknown]));
    return txs.filter((tx) => revs.get(tx.userId) !== tx.base?.rev);
  }

  /** One command outside the transaction; a driver error fails the batch. */
  private async plain<T>(run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw this.fail(error);
    }
  }

  /** Writes every queued change (one command per collection) and commits. */
  private async save(savers: readonly BatchTx[]): Promise<void> {
    const { c, promos, outbox } = this.ctx;
    const changes = savers.map((tx) => tx.pending as Changes);
    const accounts = savers.map((tx) => accountOp(tx.pending as Changes, tx.base));
    const updates = accounts.filter((op) => "updateOne" in op).length;
    const matched = await this.op(async (session) => {
      const [only] = accounts;
      if (accounts.length === 1 && only !== undefined && "insertOne" in only) {
        await c.accounts.insertOne(only.insertOne.document, { session });
        return 0;
      }
      if (accounts.length === 1 && only !== undefined && "updateOne" in only) {
        return (await c.accounts.updateOne(only.updateOne.filter, only.updateOne.update, { session })).matchedCount;
      }
      return (await c.accounts.bulkWrite(accounts, { session, ordered: true })).matchedCount;
    });
    if (matched !== updates) throw this.fail(new GuardMissed(updates - matched));
    const items = savers.map((tx) => itemOps(tx.pending as Changes, tx.base));
    const grants = items.flatMap((x) => x.grants);
    const holds = items.flatMap((x) => x.holds);
    const entries = changes.flatMap(entryOps);
    if (grants.length > 0) await this.op((s) => write(c.grants, grants, s));
    if (holds.length > 0) await this.op((s) => write(c.reservations, holds, s));
    if (entries.length > 0) await this.op((s) => write(c.journal, entries, s));
    for (const ch of changes) {
      if ((ch.promoClaims?.length ?? 0) > 0 || (ch.paymentUpdates?.length ?? 0) > 0)
        await this.op((s) => promos.saveIn(s, ch));
    }
    const notifications = changes.flatMap((ch) => ch.notifications ?? []);
    if (notifications.length > 0) await this.op((s) => outbox.insertInTransaction(notifications, s));
    await this.commit();
  }

  private async commit(): Promise<void> {
    const session = this.session as ClientSession;
    this.committing = true;
    for (let i = 0; ; i++) {
      try {
        await session.commitTransaction();
        this.inTransaction = false;
        return;
      } catch (error) {
        if (
          hasLabel(error, "UnknownTransactionCommitResult") &&
          !hasLabel(error, "TransientTransactionError") &&
          i < COMMIT_RETRIES
        )
          continue;
        this.inTransaction = false; // a commit was attempted: nothing to abort any more
        throw this.fail(error);
      }
    }
  }

  /**
   * Runs one command of the shared transaction (starting it on the first), after the commands
   * before it. A driver error fails the batch; every later command fails at once.
   */
  op<T>(run: (session: ClientSession) => Promise<T>): Promise<T> {
    const next = this.chain.then(async () => {
      if (this.failure !== undefined) throw new BatchFailed(this.failure);
      if (this.session === null) this.session = this.ctx.client.startSession();
      if (!this.inTransaction) {
        this.session.startTransaction(this.ctx.transactionOptions);
        this.inTransaction = true;
      }
      try {
        return await run(this.session);
      } catch (error) {
        throw this.fail(error);
      }
    });
    // The chain only orders the next step after this one; `next`, returned, carries the error to its caller.
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Records the first failure of the shared transaction. */
  private fail(error: unknown): BatchFailed {
    if (error instanceof BatchFailed) return error;
    if (this.failure === undefined) this.failure = error;
    return new BatchFailed(error);
  }

  /** A unit waits for the batch's read. */
  waitForLoad(tx: BatchTx): void {
    this.pendingLoads.push(tx);
    this.park();
  }

  /** A unit stopped computing (waits for the read, or finished): once none computes, read. */
  private park(): void {
    this.running--;
    if (this.running > 0 || this.pendingLoads.length === 0) return;
    const loaders = this.pendingLoads;
    this.pendingLoads = [];
    this.running += loaders.length;
    void this.op((session) =>
      readStates(
        this.ctx.c,
        session,
        loaders.map((tx) => ({ userId: tx.userId, key: tx.loadKey })),
      ),
    ).then(
      (found) => {
        for (const tx of loaders) tx.receive(found.get(tx.userId));
      },
      (error: unknown) => {
        for (const tx of loaders) tx.loaded.reject(error);
      },
    );
  }
}

/** The `DbTransaction` one unit of work sees inside a batch. */
export class BatchTx implements DbTransaction {
  readonly userId: string;
  /** The state `load()` handed out: from the cache or the batch's read (null: no account). */
  base: AccountState | null | undefined = undefined;
  fromCache = false;
  pending: Changes | null = null;
  loadKey: string | undefined = undefined;
  loaded = deferred<LoadedState>();
  private loads = 0;
  private saved = false;

  constructor(
    private readonly batch: MongoBatch,
    readonly unit: Unit,
    private readonly cached: AccountState | undefined,
  ) {
    this.userId = unit.userId;
  }

  async load(request?: LoadRequest): Promise<LoadedState> {
    const key = request?.idempotencyKey;
    this.loads++;
    // The cache knows nothing of idempotency keys: a keyed unit of work always reads.
    if (this.loads === 1 && this.cached !== undefined && key === undefined) {
      if (this.batch.ctx.verify) await this.verifyCached();
      this.base = this.cached;
      this.fromCache = true;
      const { account, grants, reservations } = this.cached;
      return { account, grants: [...grants], reservations: [...reservations], idempotent: null };
    }
    if (this.loads === 1) {
      this.loadKey = key;
      this.batch.waitForLoad(this);
      return this.loaded.promise;
    }
    // Loading again: a read of its own, in the shared transaction.
    const found = await this.batch.op((s) => readStates(this.batch.ctx.c, s, [{ userId: this.userId, key }]));
    this.loaded = deferred<LoadedState>();
    this.receive(found.get(this.userId));
    return this.loaded.promise;
  }

  /** The batch's answer to `load()`. */
  receive(found: { state: AccountState; idempotent: JournalEntry | null } | undefined): void {
    this.fromCache = false;
    if (found === undefined) {
      this.base = null;
      this.loaded.resolve({ account: null, grants: [], reservations: [], idempotent: null });
      return;
    }
    const { state, idempotent } = found;
    this.base = state;
    this.loaded.resolve({
      account: state.account,
      grants: [...state.grants],
      reservations: [...state.reservations],
      idempotent,
    });
  }

  /** Tests (`verifyStateCache`): the cached state must be what the database holds. */
  private async verifyCached(): Promise<void> {
    const found = await this.batch.op((s) =>
      readStates(this.batch.ctx.c, s, [{ userId: this.userId, key: undefined }]),
    );
    checkCachedState(this.userId, this.cached, found.get(this.userId)?.state ?? null);
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    if (grantIds.length === 0) return [];
    // The loaded open grants are current (the account guard proves it): answer from them if we can.
    const open = new Map((this.base?.grants ?? []).map((g) => [g.id, g]));
    if (grantIds.every((id) => open.has(id))) return grantIds.map((id) => open.get(id) as Grant);
    const { c } = this.batch.ctx;
    const docs = await this.batch.op((session) =>
      c.grants
        .find(
          { _id: { $in: [...grantIds] }, userId: this.userId },
          { session, batchSize: Math.max(1, grantIds.length) },
        )
        .toArray(),
    );
    return docs.map((d) => fromDoc(GRANT, d));
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const held = this.base?.reservations.find((r) => r.id === reservationId);
    if (held !== undefined) return held;
    const { c } = this.batch.ctx;
    const doc = await this.batch.op((session) =>
      c.reservations.findOne({ _id: reservationId, userId: this.userId }, { session }),
    );
    return doc === null ? null : fromDoc(RESERVATION, doc);
  }

  getCharge(entryId: string): Promise<ChargeRecord | null> {
    return this.batch.op((session) => readCharge(this.batch.ctx.c.journal, session, this.userId, entryId));
  }

  getPromo(code: string): Promise<Promo | null> {
    return this.batch.op((s) => this.batch.ctx.promos.getPromoIn(s, code));
  }

  countPromoClaims(code: string): Promise<number> {
    return this.batch.op((s) => this.batch.ctx.promos.countClaimsIn(s, code, this.userId));
  }

  getPayment(paymentId: string): Promise<Payment | null> {
    return this.batch.op((s) => this.batch.ctx.promos.getPaymentIn(s, paymentId, this.userId));
  }

  /** Queues the changes: the batch writes them when every unit has finished. */
  async save(changes: Changes): Promise<void> {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    checkOwner(this.userId, changes);
    this.pending = changes;
  }
}
