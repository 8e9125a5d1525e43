import type { ModuleParts } from "../../core/db/module-part.js";
import type { MongoBoundPart, MongoPartTx } from "./module-part.js";
import { isDeepStrictEqual } from "node:util";
import type {
  AnyBulkWriteOperation,
  ClientSession,
  Collection,
  Document,
  MongoClient,
  TransactionOptions,
} from "mongodb";
import { ConflictError } from "../../core/errors.js";
import type { Grant, JournalEntry, Reservation } from "../../models-entry.js";
import type { ChargeRecord, Changes, DbTransaction, LoadRequest, LoadedState } from "../../core/db/types.js";
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
import type { MongoOutbox } from "./outbox.js";
import { type AccountState, type StateCache, checkCachedState, stateAfter } from "./state-cache.js";
import { deferred } from "../store/group-commit.js";
import { ONE_BATCH } from "./collections.js";

// A unit of work on the MongoDB store (docs/storage.md, MongoDB): the `DbTransaction` it sees, its
// reads and its writes (in the batch it runs in, ./batch.ts), and how long its attempts wait.

/**
 * Snapshot reads, majority-acknowledged commits: a unit of work sees one consistent state, and a
 * commit it reports survives a primary failover.
 */
export const TRANSACTION_OPTIONS: TransactionOptions = {
  readConcern: { level: "snapshot" },
  writeConcern: { w: "majority" },
  readPreference: "primary",
};

/** Jittered exponential backoff between attempts of a unit of work, in ms (at most 100). */
export const BACKOFF = { base: 4, factor: 1.5, max: 100, floor: 0 };

/** How long a unit of work's locked attempts try to write its account first, in ms (see `attempt`). */
export const LOCK_WAIT_MS = 5_000;

/** The collections a unit of work writes. */
export interface UnitCollections {
  accounts: Collection<StoredDoc>;
  grants: Collection<StoredDoc>;
  reservations: Collection<StoredDoc>;
  journal: Collection<StoredDoc>;
}

/** What a unit of work, and the batch it runs in, need from their manager. */
export interface UnitContext {
  /** Where a batch starts its session and transaction (not the application's: `joinTransaction`). */
  readonly client: MongoClient;
  readonly c: UnitCollections;
  readonly states: StateCache | null;
  /** Tests (`verifyStateCache`): every state-cache hit is checked against a read. */
  readonly verify: boolean;
  /** The modules' parts (./module-part.ts). */
  readonly modules: ModuleParts<MongoBoundPart>;
  readonly outbox: MongoOutbox;
}

/**
 * The transaction a unit of work runs in: its batch's (./batch.ts). Driver errors reach the unit
 * of work unconverted: the manager, which decides whether it runs again, needs their labels.
 */
export interface UnitHost {
  readonly ctx: UnitContext;
  /** Runs one command in the transaction. */
  op<T>(run: (session: ClientSession) => Promise<T>): Promise<T>;
  /** Reads the state `tx.load()` asked for and hands it over (`tx.receive`), now or with others. */
  waitForLoad(tx: UnitTx): void;
}

/**
 * The account moved since its state was read or cached (an account write's guard matched
 * nothing): the unit of work runs again (never leaves `transaction`).
 */
export class StaleAccount extends ConflictError {
  constructor(
    what: string,
    /** A unit of work concerned started from the state cache (run again at once, on a fresh read). */
    readonly fromCache: boolean,
  ) {
    super(`[credit-management] [mongodb] ${what} changed during the unit of work`);
  }
}

/** A read for the state of several accounts, with an idempotency key each (or none). */
interface StateRequest {
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
function accountOp(changes: Changes, base: AccountState | null | undefined): AnyBulkWriteOperation<StoredDoc> {
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
function itemOps(
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
const entryOps = (changes: Changes): AnyBulkWriteOperation<StoredDoc>[] =>
  changes.entries.map((e) => ({ insertOne: { document: toDoc(ENTRY, e) } }));

/**
 * One command for a collection's writes: `bulkWrite` (ordered) for several, the single-operation
 * command for one (less work in the driver), nothing for none. Returns how many of its updates
 * matched no document.
 */
async function write(
  collection: Collection<StoredDoc>,
  ops: AnyBulkWriteOperation<StoredDoc>[],
  session: ClientSession,
): Promise<number> {
  const [only] = ops;
  if (only === undefined) return 0;
  const updates = ops.filter((op) => "updateOne" in op).length;
  if (ops.length === 1 && "insertOne" in only) {
    await collection.insertOne(only.insertOne.document, { session });
    return 0;
  }
  if (ops.length === 1 && "updateOne" in only)
    return 1 - (await collection.updateOne(only.updateOne.filter, only.updateOne.update, { session })).matchedCount;
  return updates - (await collection.bulkWrite(ops, { session, ordered: true })).matchedCount;
}

/**
 * Writes what the units of work `txs` saved, in their transaction (`op`), one command per
 * collection: the guarded account writes first (so that a loser of a race learns it before writing
 * anything else; `StaleAccount` when a guard matches nothing), then grants, holds, journal
 * entries, the modules' rows, and the outbox's rows.
 */
export async function saveChanges(ctx: UnitContext, op: UnitHost["op"], txs: readonly UnitTx[]): Promise<void> {
  const { c, modules, outbox } = ctx;
  const changes = txs.map((tx) => tx.pending as Changes);
  const accounts = txs.map((tx) => accountOp(tx.pending as Changes, tx.base));
  const missed = await op((s) => write(c.accounts, accounts, s));
  if (missed > 0) {
    const fromCache = txs.some((tx) => tx.fromCache);
    throw new StaleAccount(
      txs.length === 1 ? `account ${txs[0]?.userId}` : `${missed} account(s) of a batch`,
      fromCache,
    );
  }
  const items = txs.map((tx) => itemOps(tx.pending as Changes, tx.base));
  const writes: Array<[Collection<StoredDoc>, AnyBulkWriteOperation<StoredDoc>[]]> = [
    [c.grants, items.flatMap((x) => x.grants)],
    [c.reservations, items.flatMap((x) => x.holds)],
    [c.journal, changes.flatMap(entryOps)],
  ];
  for (const [collection, ops] of writes) {
    if (ops.length === 0) continue;
    // Every update names a document of an account its unit of work read: a miss is a bug.
    const unmatched = await op((s) => write(collection, ops, s));
    if (unmatched > 0)
      throw new Error(
        `[credit-management] [mongodb] ${unmatched} update(s) of ${collection.collectionName} matched no document`,
      );
  }
  for (const ch of changes) {
    if (ch.rows === undefined) continue;
    for (const { module, part } of modules.bound) {
      const rows = ch.rows[module];
      if (rows !== undefined && part.save !== undefined)
        await op((s) => (part.save as NonNullable<typeof part.save>)(s, rows));
    }
  }
  const notifications = changes.flatMap((ch) => ch.notifications ?? []);
  if (notifications.length > 0) await op((s) => outbox.insertInTransaction(notifications, s));
}

/**
 * The units of work among `txs` whose cached state is not the account's current one (its `_rev`
 * moved): one read (`session`: in the transaction, else on its own).
 */
export async function staleOf<T extends UnitTx>(
  accounts: Collection<StoredDoc>,
  txs: readonly T[],
  session: ClientSession | undefined,
): Promise<T[]> {
  const ids = txs.map((tx) => tx.userId);
  const docs = await accounts
    .find(
      { _id: { $in: ids } },
      { projection: { _rev: 1 }, batchSize: Math.max(1, ids.length), ...(session ? { session } : {}) },
    )
    .toArray();
  const revs = new Map(docs.map((d) => [d._id, d._rev as unknown]));
  return txs.filter((tx) => revs.get(tx.userId) !== tx.base?.rev);
}

/**
 * The `DbTransaction` a unit of work sees, in a batch or alone. `load()` starts from the state
 * cache where the host gave a cached state (and no idempotency key is asked for), else waits for
 * the host's read; `save()` only queues: the host writes once the unit of work has finished
 * (`saveChanges`), so one that throws writes nothing.
 */
export class UnitTx implements DbTransaction {
  /** The state `load()` handed out: from the cache or a read (null: no account). */
  base: AccountState | null | undefined = undefined;
  fromCache = false;
  pending: Changes | null = null;
  loadKey: string | undefined = undefined;
  loaded = deferred<LoadedState>();
  private loads = 0;
  private saved = false;

  constructor(
    private readonly host: UnitHost,
    readonly userId: string,
    private readonly cached: AccountState | undefined,
  ) {}

  async load(request?: LoadRequest): Promise<LoadedState> {
    const key = request?.idempotencyKey;
    this.loads++;
    // The cache knows nothing of idempotency keys: a keyed unit of work always reads.
    if (this.loads === 1 && this.cached !== undefined && key === undefined) {
      if (this.host.ctx.verify) await this.verifyCached();
      this.base = this.cached;
      this.fromCache = true;
      const { account, grants, reservations } = this.cached;
      return { account, grants: [...grants], reservations: [...reservations], idempotent: null };
    }
    if (this.loads === 1) {
      this.loadKey = key;
      this.host.waitForLoad(this);
      return this.loaded.promise;
    }
    // Loading again: a read of its own, in the transaction.
    const found = await this.host.op((s) => readStates(this.host.ctx.c, s, [{ userId: this.userId, key }]));
    this.loaded = deferred<LoadedState>();
    this.receive(found.get(this.userId));
    return this.loaded.promise;
  }

  /** The host's answer to `load()`. */
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
    const found = await this.host.op((s) => readStates(this.host.ctx.c, s, [{ userId: this.userId, key: undefined }]));
    checkCachedState(this.userId, this.cached, found.get(this.userId)?.state ?? null);
  }

  /**
   * What the state cache may hold once the transaction commits: the state this unit of work
   * loaded, with what it saved (undefined: nothing to keep, it loaded nothing).
   */
  stateAfter(): AccountState | undefined {
    if (this.pending !== null) return this.base === undefined ? undefined : stateAfter(this.base, this.pending);
    return this.base ?? undefined;
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    if (grantIds.length === 0) return [];
    // The loaded open grants are current (the account guard proves it): answer from them if we can.
    const open = new Map((this.base?.grants ?? []).map((g) => [g.id, g]));
    if (grantIds.every((id) => open.has(id))) return grantIds.map((id) => open.get(id) as Grant);
    const { c } = this.host.ctx;
    const docs = await this.host.op((session) =>
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
    const { c } = this.host.ctx;
    const doc = await this.host.op((session) =>
      c.reservations.findOne({ _id: reservationId, userId: this.userId }, { session }),
    );
    return doc === null ? null : fromDoc(RESERVATION, doc);
  }

  /** The entry by `_id`, and the entries that reverse it (the `user_reverses` index) in seq order. */
  getCharge(entryId: string): Promise<ChargeRecord | null> {
    const { journal } = this.host.ctx.c;
    return this.host.op(async (session) => {
      const doc = await journal.findOne({ _id: entryId, userId: this.userId }, { session });
      if (doc === null) return null;
      const reversals = await journal
        .find({ userId: this.userId, reverses: entryId }, { session, sort: { seq: 1 }, ...ONE_BATCH })
        .toArray();
      return { entry: fromDoc(ENTRY, doc), reversals: reversals.map((d) => fromDoc(ENTRY, d)) };
    });
  }

  /** The reads of `module`'s part in this unit of work (`DbTransaction.part`). */
  part(module: string): object | undefined {
    const bound = this.host.ctx.modules.get(module);
    if (bound?.transaction === undefined) return undefined;
    const tx: MongoPartTx = { userId: this.userId, op: (run) => this.host.op(run) };
    return bound.transaction(tx);
  }

  /** Queues the changes: the host writes them when the unit of work has finished. */
  async save(changes: Changes): Promise<void> {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    if (changes.account.userId !== this.userId)
      throw new Error(`save() got account ${changes.account.userId} in a unit of work on ${this.userId}`);
    this.pending = changes;
  }
}
