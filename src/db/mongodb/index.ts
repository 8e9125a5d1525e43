import { StoreBase } from "../../core/db/store/base.js";
import type { SideParts } from "../../core/db/store/parts.js";
import type { ModuleParts, ModuleStorePart } from "../../core/db/module-part.js";
import { bindMongo, type MongoBoundPart, type MongoPartHost } from "./module-part.js";
import { MongoClient } from "mongodb";
import type { ClientSession, Db, Document, Filter, MongoClientOptions } from "mongodb";
import { ConfigurationError, ConflictError, StorageError } from "../../core/errors.js";
import type { Account, Grant, JournalEntry, LedgerEntry, Reservation } from "../../core/models/index.js";
import { SYSTEM_KEY_PREFIX } from "../../core/models/common.js";
import { MongoOutbox } from "./outbox.js";
import type {
  AccountCredits,
  DbCapabilities,
  DbManager,
  DbTransaction,
  JournalQuery,
  LedgerQuery,
  ScanCursor,
  StoreStats,
} from "../../core/db/types.js";
import { ACCOUNT, ENTRY, GRANT, LEDGER, RESERVATION, fromDoc, toDoc, type StoredDoc } from "./documents.js";
import { MongoSubscriptionStore } from "./subscriptions.js";
import {
  MONGO_COLLECTIONS,
  VERSION_COLLECTION,
  droppedIndexesAfter,
  filledFieldsAfter,
  linkedFieldsAfter,
  linkedFilter,
} from "./layout.js";
import { SCHEMA_COMPONENT } from "../../schema/sql.js";
import { targetVersion } from "../../schema/version.js";
import { versionRefusal } from "../../schema/migrations.js";
import { StateCache } from "./state-cache.js";
import { copyCounts } from "./copy-counts.js";
import { MongoBatch, type BatchResult, type Unit } from "./batch.js";
import {
  STANDALONE_MESSAGE,
  guard,
  isDriverError,
  isIndexConflict,
  isNamespaceExists,
  isRetryableConflict,
  isUnreachable,
  toCreditError,
} from "./errors.js";
import { joinedStore } from "../store/joined.js";
import { inSession } from "./session.js";
import { GroupCommit } from "../store/group-commit.js";
import { gaveUp } from "../../core/db/store/errors.js";
import { backoff, sleep } from "../../core/db/store/retry.js";
import type { UsageBucket, UsageScan } from "../../core/domain/usage.js";
import { usageBucketOf, usagePipeline } from "./usage.js";
import { BatchOption, type MongoDbManagerConfig, type MongoDbManagerOptions, supportsTransactions } from "./options.js";
import { BSON_OPTIONS, type Collections, ONE_BATCH, afterCursor, batchOf } from "./collections.js";
import { BACKOFF, LOCK_WAIT_MS, StaleAccount, TRANSACTION_OPTIONS, type UnitContext } from "./unit.js";
export type { MongoDbManagerConfig, MongoDbManagerOptions } from "./options.js";

/**
 * How long `entryCommitted`'s linearizable read may wait for a majority to confirm it, in ms (the
 * server's own limit: without one, it waits for as long as no majority answers).
 */
const LOOKUP_READ_MS = 5_000;

/** Weight of one batch in `MongoDbManager.staleRate`. */
const STALE_WEIGHT = 0.2;
/** Above this stale rate batches read their states instead of starting from the cache. */
const STALE_BYPASS = 0.3;
/**
 * What a batch that read its states leaves of the stale rate: after a run of stale batches (rate
 * about 0.5) some 17 batches read before one tries the cache again.
 */
const STALE_DECAY = 0.97;

/**
 * The MongoDB store (`credit-management/mongodb`), on the official `mongodb` driver.
 *
 * Every unit of work runs in a batch of one or more ({@link MongoBatch}): one multi-document
 * transaction (snapshot read concern, majority write concern) that starts its writes by updating
 * each account document with the guard `{ _id: userId, seq: <seq when loaded> }`. Two units of
 * work on one account therefore always write the same document: MongoDB lets only one of them
 * commit and the other runs again from the start (write conflicts, guard misses and a racing first
 * insert alike), with jittered backoff, up to `maxAttempts`; then its transactions write the
 * account first, for up to `LOCK_WAIT_MS` of tries, before a `ConflictError` (`runBatch`). Within
 * one process, units of work on one account queue for it first (FIFO), so only other processes
 * can make a unit of work run again, and the last committed state of recently used accounts is
 * kept to skip their read (see `stateCacheSize`). Needs a replica set (Atlas, or a single-node
 * `--replSet`); `init()` says so on a standalone server.
 *
 * Group commit (`batch`, on by default): units of work on different accounts that wait at the same
 * moment share one batch, with one command per collection for all their writes and one commit;
 * each account write keeps its guard, and a failed batch runs its units again one by one, so that
 * a culprit fails only itself (after a guard miss, which is no unit's failure, together again on
 * fresh reads). `batch: false`: every batch has one unit.
 *
 * ```ts
 * const db = MongoDbManager.fromUri(process.env.MONGO_URI!, "billing");
 * const credits = await createCreditManager({ db }); // runs db.init()
 * ```
 * @public
 */
export class MongoDbManager extends StoreBase implements DbManager {
  /** The store's name (`memory`, `postgres`, `mongodb`, `sqlite`, …), in diagnostics and errors. */
  readonly name = "mongodb";
  /** What the store supports: its transactions and its optional parts. */
  readonly capabilities: DbCapabilities = { multiProcess: true };
  /** Prefix of the collection names. */
  readonly collectionPrefix: string;
  private readonly migrate: boolean;

  private readonly client: MongoClient;
  private readonly db: Db;
  /** True when `fromUri` created the client: `close()` closes it. */
  private ownsClient = false;
  private readonly maxAttempts: number;
  private readonly c: Collections;
  /** Plans and subscriptions (./subscriptions.ts), the outbox. */
  protected readonly parts: SideParts;
  /** The module parts bound to this store, as its kind binds them (`usePart`). @beta */
  declare readonly modules: ModuleParts<MongoBoundPart>;
  private lastLedgerOrd = 0;
  private readonly states: StateCache | null;
  private readonly verifyStates: boolean;
  /**
   * Group commit, oldest first. A unit of work whose account this process is already working on
   * waits in the queue (FIFO per account). A unit that must run alone (after a failed batch, or
   * a lost race) runs at once (after its backoff) in a batch of its own. The others form batches
   * of distinct accounts, up to `maxUnits` each, while fewer than `concurrency` run.
   */
  private readonly group: GroupCommit<Unit>;
  private readonly batchContext: UnitContext;
  /**
   * How often batches that started from cached states lately found one stale (a moving average
   * of 0 or 1 per such batch). Another process writing the same accounts makes most cached states
   * stale by their next use, and a batch with one stale state is wasted (its account update and
   * abort) before it runs again on fresh reads. Above {@link STALE_BYPASS} batches read every
   * state in the transaction instead (one `aggregate`, as with `stateCacheSize: 0`), each such
   * batch lowering the average a little, so that the cache is tried again now and then.
   */
  private staleRate = 0;
  /** The collections of modules' parts, by name (./module-part.ts). */
  private readonly partHost: MongoPartHost;
  private readonly outbox: MongoOutbox;

  /** A store on MongoDB: a client made from `options` (`uri`), or the `client` given. */
  constructor(config: MongoDbManagerConfig) {
    super();
    if ("db" in config && config.db !== undefined) {
      this.db = config.db;
      this.client = config.db.client;
    } else if ("client" in config && config.client !== undefined) {
      if (typeof config.dbName !== "string" || config.dbName.length === 0) {
        throw new ConfigurationError("[credit-management] [mongodb] `dbName` is required with `client`.");
      }
      this.client = config.client;
      this.db = config.client.db(config.dbName);
    } else {
      throw new ConfigurationError("[credit-management] [mongodb] Pass `{ client, dbName }` or `{ db }`.");
    }
    this.collectionPrefix = config.collectionPrefix ?? "credit_";
    this.migrate = config.migrate !== false;
    this.maxAttempts = config.maxAttempts ?? 25;
    if (!Number.isInteger(this.maxAttempts) || this.maxAttempts < 1) {
      throw new ConfigurationError("[credit-management] [mongodb] `maxAttempts` must be a positive integer.");
    }
    const cacheSize = config.stateCacheSize ?? 10_000;
    if (!Number.isInteger(cacheSize) || cacheSize < 0) {
      throw new ConfigurationError("[credit-management] [mongodb] `stateCacheSize` must be a non-negative integer.");
    }
    this.states = cacheSize === 0 ? null : new StateCache(cacheSize);
    this.verifyStates = config.verifyStateCache === true;
    const batch = BatchOption.safeParse(config.batch === undefined ? {} : config.batch);
    if (!batch.success) {
      throw new ConfigurationError(
        "[credit-management] [mongodb] `batch` must be false or { maxUnits?: integer 1..1000, concurrency?: integer 1..64 }: " +
          batch.error.issues.map((i) => `${i.path.join(".") || "batch"}: ${i.message}`).join("; "),
        batch.error,
      );
    }
    this.group = new GroupCommit<Unit>({
      maxUnits: batch.data === false ? 1 : (batch.data.maxUnits ?? 32),
      // Without group commit every unit of work is a batch of one, as many at once as there are accounts.
      concurrency: batch.data === false ? Infinity : (batch.data.concurrency ?? 2),
      maxAlone: Infinity,
      perAccount: 1,
      alone: (u) => u.solo,
      runBatch: (units) => this.runBatch(units),
      // A unit alone waits out its backoff here, holding its account (FIFO per account).
      runAlone: async (u) => {
        if ((u.delay ?? 0) > 0) await sleep(u.delay as number);
        await this.runBatch([u]);
      },
    });
    const col = (name: string) => this.db.collection<StoredDoc>(`${this.collectionPrefix}${name}`, BSON_OPTIONS);
    this.c = {
      accounts: col("accounts"),
      grants: col("grants"),
      reservations: col("reservations"),
      journal: col("journal"),
      ledger: col("ledger"),
      notifications: col("notifications"),
      plans: col("plans"),
      subscriptions: col("subscriptions"),
    };
    this.partHost = { collection: col };
    this.outbox = new MongoOutbox(this.c.notifications);
    this.parts = {
      subscriptions: new MongoSubscriptionStore(this.c.plans, this.c.subscriptions),
      outbox: this.outbox,
    };
    this.batchContext = {
      client: this.client,
      c: this.c,
      states: this.states,
      verify: this.verifyStates,
      modules: this.modules,
      outbox: this.outbox,
    };
  }

  /** A module's MongoDB side (`ModuleStorePart.mongodb`), bound to this store (./module-part.ts). */
  /** Binds the side of this store's kind of a module's part (once per module, by `usePart`). @beta */
  protected override bindPart(part: ModuleStorePart): MongoBoundPart | undefined {
    return bindMongo(part, this.partHost);
  }

  /**
   * A manager with its own `MongoClient` for `uri` (connected on first use); `close()` closes it.
   * `options` go to the `MongoClient`.
   */
  static fromUri(
    uri: string,
    dbName: string,
    options: MongoDbManagerOptions & { clientOptions?: MongoClientOptions } = {},
  ): MongoDbManager {
    const { clientOptions, ...rest } = options;
    let client: MongoClient;
    try {
      client = new MongoClient(uri, clientOptions);
    } catch (error) {
      throw new ConfigurationError(
        `[credit-management] [mongodb] Invalid connection string: ${(error as Error).message}`,
        error,
      );
    }
    const manager = new MongoDbManager({ client, dbName, ...rest });
    manager.ownsClient = true;
    return manager;
  }

  /** Name of the database the collections live in. */
  get databaseName(): string {
    return this.db.databaseName;
  }

  /**
   * Checks that the server runs transactions and reads the schema-version document
   * (`<prefix>schema_version`, `_id: "credit-management"`): a newer version than this release's is
   * refused. Then, unless `migrate: false` (which only checks the version), creates the collections
   * (DocumentDB and MongoDB < 4.4 cannot create them inside a transaction), drops the indexes a
   * later version removed and fills the fields it added in stored documents
   * (src/db/mongodb/layout.ts), creates every index and records
   * `SCHEMA_VERSION`. Validators are not applied (docs/schema-upgrades.md). Idempotent, and safe
   * to run from several processes at once.
   */
  async init(): Promise<void> {
    await this.assertTransactions();
    const versions = this.db.collection<{ _id: string; version: number; updatedAt?: Date }>(
      `${this.collectionPrefix}${VERSION_COLLECTION}`,
    );
    const found = await guard("init: read the schema version", () => versions.findOne({ _id: SCHEMA_COMPONENT }));
    const version = typeof found?.version === "number" ? found.version : 0;
    const refused = versionRefusal("mongodb", version, this.migrate, versions.collectionName, this.collectionPrefix);
    if (refused !== null) throw refused;
    if (!this.migrate) return; // (at this release's version: any other is refused above)
    const existing = await guard("init: listCollections", () =>
      this.db.listCollections({}, { nameOnly: true }).toArray(),
    );
    const names = new Set(existing.map((c) => c.name));
    const collections = [
      ...Object.values(MONGO_COLLECTIONS).map((layout) => ({
        collection: this.db.collection(`${this.collectionPrefix}${layout.name}`),
        indexes: layout.indexes,
      })),
      { collection: versions, indexes: [] },
    ];
    for (const { collection } of collections) {
      if (names.has(collection.collectionName)) continue;
      await guard(`init: create ${collection.collectionName}`, async () => {
        try {
          await this.db.createCollection(collection.collectionName);
        } catch (error) {
          if (!isNamespaceExists(error)) throw error; // another process created it first
        }
      });
    }
    // Each index a later version removed is dropped only with exactly its old keys.
    for (const dropped of droppedIndexesAfter(version)) {
      const collection = this.db.collection(`${this.collectionPrefix}${MONGO_COLLECTIONS[dropped.collection].name}`);
      await guard(`init: drop index ${dropped.name} of ${collection.collectionName}`, async () => {
        const indexes = await collection.listIndexes().toArray();
        const old = indexes.find((i) => i.name === dropped.name);
        if (old === undefined || JSON.stringify(old.key) !== JSON.stringify(dropped.key)) return;
        try {
          await collection.dropIndex(dropped.name);
        } catch (error) {
          if ((error as { code?: unknown }).code !== 27) throw error; // IndexNotFound: dropped concurrently
        }
      });
    }
    // Fields a later version added, in the documents stored before (only those that lack it: can run again).
    for (const filled of filledFieldsAfter(version)) {
      const collection = this.db.collection(`${this.collectionPrefix}${MONGO_COLLECTIONS[filled.collection].name}`);
      await guard(`init: fill ${filled.field} of ${collection.collectionName}`, () =>
        collection.updateMany(
          { [filled.field]: { $exists: false }, ...(filled.where === undefined ? {} : { $expr: filled.where }) },
          { $set: { [filled.field]: filled.value } },
        ),
      );
    }
    await copyCounts(this.db, this.collectionPrefix, version);
    for (const linked of linkedFieldsAfter(version)) {
      type Doc = { _id: string; userId: string } & Record<string, unknown>;
      const collection = this.db.collection<Doc>(
        `${this.collectionPrefix}${MONGO_COLLECTIONS[linked.collection].name}`,
      );
      const source = this.db.collection<Doc>(`${this.collectionPrefix}${MONGO_COLLECTIONS[linked.source].name}`);
      await guard(`init: link ${linked.field} of ${collection.collectionName}`, async () => {
        // Page by _id (the gateway of some servers cannot continue a cursor: one batch per read).
        for (let after: string | null = null; ;) {
          const page = await source
            .find(
              {
                ...(linked.key === undefined ? {} : { [linked.key]: { $type: "string" } }),
                ...(after === null ? {} : { _id: { $gt: after } }),
              },
              {
                projection: { _id: 1, userId: 1, ...(linked.key === undefined ? {} : { [linked.key]: 1 }) },
                ...batchOf(1000),
              },
            )
            .sort({ _id: 1 })
            .limit(1000)
            .toArray();
          if (page.length === 0) break;
          await collection.bulkWrite(
            page.map((d) => ({
              updateMany: { filter: linkedFilter(linked, d), update: { $set: { [linked.field]: d._id } } },
            })),
            { ordered: false },
          );
          after = page[page.length - 1]?._id ?? null;
        }
      });
    }
    for (const { collection, indexes } of collections) {
      if (indexes.length === 0) continue;
      try {
        await collection.createIndexes(indexes);
      } catch (error) {
        if (isIndexConflict(error)) {
          throw new ConfigurationError(
            `[credit-management] [mongodb] An index on ${collection.collectionName} has the name or keys of one ` +
              `this version needs but other options (${(error as Error).message}). Drop it and run init() again.`,
            error,
          );
        }
        throw toCreditError(error, `init: createIndexes on ${collection.collectionName}`);
      }
    }
    // Last, once everything else is there; `$max`: never lowers what a newer release wrote meanwhile.
    await guard("init: write the schema version", async () => {
      const write = () =>
        versions.updateOne(
          { _id: SCHEMA_COMPONENT },
          { $max: { version: targetVersion() }, $set: { updatedAt: new Date() } },
          { upsert: true },
        );
      try {
        await write();
      } catch (error) {
        if ((error as { code?: unknown }).code !== 11000) throw error;
        await write(); // a concurrent upsert inserted it first: now this one updates
      }
    });
    // The modules' indexes, after the store's own (docs/writing-a-store.md, "A module's part").
    for (const { module, part } of this.modules.bound)
      await guard(`init: the ${module} module's part`, async () => void (await (part as MongoBoundPart).migrate?.()));
  }

  /** Closes the client if `fromUri` created it; a client handed in stays open. */
  protected override async closeOnce(): Promise<void> {
    if (this.ownsClient) await this.client.close();
  }

  /**
   * Runs `fn` as one unit of work on the user's account: its writes commit together or not at all; `fn` runs
   * again after a write conflict.
   */
  transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.group.push(false, { userId, fn, resolve: resolve as Unit["resolve"], reject, attempts: 0, solo: false });
    });
  }

  /**
   * Whether `entry` is committed, for a unit of work whose commit's answer was lost
   * (docs/storage.md, "How it stays correct under concurrency"). Snapshot reads wait for nothing,
   * so first a fence: a write of the account's document (an upsert, for an account not created
   * yet) in a transaction that is then aborted, so that it leaves nothing. Every save writes its
   * account's document first, and MongoDB lets a transaction write a document only while no other
   * holds an uncommitted write of it: while the commit in doubt (or any other) is still open, the
   * fence fails with a write conflict, and the caller asks again. Once it succeeds, that commit
   * has landed or never will. Then the entry is read with `linearizable` read concern: from the
   * primary, confirmed as such, and only once what it read is majority-committed, so that neither
   * answer can be undone by a failover.
   */
  async entryCommitted(userId: string, entry: JournalEntry): Promise<boolean> {
    const { accounts, journal } = this.c;
    await guard("entryCommitted: write the account", async () => {
      const session = this.client.startSession();
      try {
        session.startTransaction(TRANSACTION_OPTIONS);
        await accounts.updateOne({ _id: userId }, { $inc: { _fence: 1 } }, { session, upsert: true });
      } finally {
        // Cleanup only: the write's own outcome is what counts. The server aborts an abandoned
        // transaction (nothing of it is kept either way) and times out a session that fails to end.
        if (session.inTransaction()) await session.abortTransaction().catch(() => undefined);
        await session.endSession().catch(() => undefined);
      }
    });
    const found = await guard("entryCommitted: read the entry", () =>
      journal.findOne(
        { _id: entry.id, userId },
        {
          projection: { _id: 1 },
          readConcern: { level: "linearizable" },
          readPreference: "primary",
          maxTimeMS: LOOKUP_READ_MS,
        },
      ),
    );
    return found !== null;
  }

  /**
   * This store inside the application's transaction on `session` (a `ClientSession` with a
   * transaction started: `session.startTransaction()`, or the session `withTransaction` hands its
   * callback). Reads and units of work run in it, with no transaction or retry of their own, so
   * they commit or abort with it. For `manager.inTransaction(session)` (docs/transactions.md),
   * which adds the services and their after-commit effects.
   */
  joinTransaction(session: ClientSession): DbManager {
    const s = session as Partial<ClientSession> | null;
    if (typeof s?.inTransaction !== "function" || !s.inTransaction()) {
      throw new ConfigurationError(
        "[credit-management] [mongodb] a transaction to join must be a ClientSession with a transaction started (session.startTransaction(), or the session withTransaction hands its callback): docs/transactions.md",
      );
    }
    const c = Object.fromEntries(
      Object.entries(this.c).map(([key, collection]) => [key, inSession(collection, session)]),
    ) as Collections;
    const host: MongoPartHost = {
      collection: (name) =>
        inSession(this.db.collection<StoredDoc>(`${this.collectionPrefix}${name}`, BSON_OPTIONS), session),
    };
    const modules = this.modules.rebound((part) => bindMongo(part, host));
    const outbox = new MongoOutbox(c.notifications);
    const parts: SideParts = {
      subscriptions: new MongoSubscriptionStore(c.plans, c.subscriptions),
      outbox,
    };
    // No state cache: its guard on `{ seq, _rev }` keeps it right whatever the application decides.
    const context = { ...this.batchContext, c, states: null, verify: false, modules, outbox };
    /** A failure as the application hears it: a conflict aborted its transaction, which only it can run again. */
    const failure = (error: unknown) => {
      const e = toCreditError(error, "transaction");
      if (!(e instanceof ConflictError)) return e;
      return new ConflictError(
        `${e.message}; abort and retry the transaction`,
        { ...e.details, retry: "transaction" },
        error,
      );
    };
    return joinedStore(
      this,
      { c, modules, partHost: host, outbox, parts },
      (userId, fn) =>
        new Promise((resolve, reject) => {
          const unit: Unit = {
            userId,
            fn: async (tx) => fn(tx),
            resolve: resolve as Unit["resolve"],
            reject: (error) => reject(failure(error)),
            attempts: 0,
            solo: true,
          };
          void new MongoBatch(context, [unit], false, session).run().then(
            ({ retry }) => retry.forEach((r) => unit.reject(r.reason)),
            (error: unknown) => unit.reject(error),
          );
        }),
    );
  }

  /**
   * Runs a batch of one or more units; those that must run again go to the front of the queue.
   * After a failed batch its units run again alone, so that whatever failed it fails only its own
   * unit; after a guard miss (no unit's failure) together again, on fresh reads. A unit alone that
   * lost a race (a write conflict, a guard miss, a racing first insert or unique-index refusal,
   * anything labelled transient) runs again after a jittered backoff; any other failure is its own. After `maxAttempts` runs, its runs are locked: each transaction first writes the
   * account document (`_rev`), which no other transaction can then write until it ends, so nothing
   * can move the account under it; that first write fails at once while another transaction holds
   * the document, and is tried again, with backoff, for up to `LOCK_WAIT_MS` before `ConflictError`
   * (docs/storage.md, MongoDB). A locked run that failed after its first write lost no race: it is
   * not run again (`ConflictError`, or `StorageError` when the server could not be reached).
   */
  private async runBatch(units: Unit[]): Promise<void> {
    let retry: BatchResult["retry"];
    try {
      const cached = this.staleRate <= STALE_BYPASS;
      ({ retry } = await new MongoBatch(this.batchContext, units, cached).run());
      if (cached)
        this.staleRate = this.staleRate * (1 - STALE_WEIGHT) + (retry.some((r) => r.batch) ? STALE_WEIGHT : 0);
      else this.staleRate *= STALE_DECAY;
    } catch (error) {
      // A bug in the batch itself: whether it committed is unknown, so no unit may run again
      // (rejecting a unit already told its outcome does nothing).
      for (const unit of units) unit.reject(toCreditError(error, "transaction"));
      return;
    }
    const again: Unit[] = [];
    for (const { unit, reason, batch } of retry) {
      unit.attempts++;
      // Guard misses, racing first inserts and unique-index refusals abort the transaction
      // without the transient label: the next run reloads and decides again (a repeated
      // idempotency key then answers with the first result or IdempotencyConflictError).
      const lost = batch === true || reason instanceof StaleAccount || isRetryableConflict(reason);
      if (units.length === 1 && !lost) {
        unit.reject(toCreditError(reason, "transaction"));
        continue;
      }
      unit.delay = 0;
      if (unit.lockedUntil !== undefined) {
        if (unit.held === true || performance.now() >= unit.lockedUntil) {
          unit.reject(this.exhausted(unit.userId, unit.attempts, reason));
          continue;
        }
        unit.delay = backoff(unit.attempts - this.maxAttempts, BACKOFF);
      } else if (unit.attempts >= this.maxAttempts) {
        // Out of optimistic attempts: alone, its account written first.
        unit.solo = true;
        unit.lockedUntil = performance.now() + LOCK_WAIT_MS;
      } else {
        unit.solo = batch !== true;
        // A unit alone that lost a race waits a little; one whose batch failed runs alone at once.
        if (units.length === 1 && batch !== true) unit.delay = backoff(unit.attempts, BACKOFF);
      }
      again.push(unit);
    }
    // At the front of the queue, in their order: they are the oldest of their accounts.
    if (again.length > 0) this.group.push(true, ...again);
  }

  /** Reads the schema-version document (null when there is none), which also proves the server answers. */
  async ping(): Promise<{ schemaVersion: number | null }> {
    const doc = await guard("ping", () =>
      this.db
        .collection<{ _id: string; version?: unknown }>(`${this.collectionPrefix}${VERSION_COLLECTION}`)
        .findOne({ _id: SCHEMA_COMPONENT }),
    );
    return { schemaVersion: typeof doc?.version === "number" ? doc.version : null };
  }

  /** Two aggregations: active holds (`status_expiry` index) and the outbox's pending and failed rows. */
  async stats(): Promise<StoreStats> {
    const [holds, outbox] = await guard("stats", () =>
      Promise.all([
        this.c.reservations
          .aggregate<{ n: number; held: number }>([
            { $match: { status: "active" } },
            { $group: { _id: null, n: { $sum: 1 }, held: { $sum: "$amount" } } },
          ])
          .toArray(),
        this.c.notifications
          .aggregate<{ _id: string; n: number; oldest: Date | null }>([
            { $match: { status: { $in: ["pending", "failed"] } } },
            { $group: { _id: "$status", n: { $sum: 1 }, oldest: { $min: "$createdAt" } } },
          ])
          .toArray(),
      ]),
    );
    const pending = outbox.find((g) => g._id === "pending");
    return {
      activeHolds: Number(holds[0]?.n ?? 0),
      heldCredits: Number(holds[0]?.held ?? 0),
      outboxPending: Number(pending?.n ?? 0),
      outboxFailed: Number(outbox.find((g) => g._id === "failed")?.n ?? 0),
      oldestPendingAt: pending?.oldest instanceof Date ? pending.oldest : null,
    };
  }

  /** The account; null when the user has none. */
  async getAccount(userId: string): Promise<Account | null> {
    const doc = await guard("getAccount", () => this.c.accounts.findOne({ _id: userId }));
    return doc === null ? null : fromDoc(ACCOUNT, doc);
  }

  /**
   * An unscoped account: the `findOne` of `getAccount` (an `aggregate` costs more than the `_id`
   * lookup, even when it joins nothing). A scoped one: then the account again with its open grants
   * in one command (a `$lookup` on the `{ userId, _open }` index, as a unit of work's read), whose
   * answer is what is returned: one snapshot, two round trips.
   */
  async getAccountCredits(userId: string): Promise<AccountCredits> {
    const account = await this.getAccount(userId);
    if (account?.scoped !== true) return { account, grants: null };
    const docs = await guard("getAccountCredits", () =>
      this.c.accounts
        .aggregate<Document>(
          [
            { $match: { _id: userId } },
            {
              $lookup: {
                from: this.c.grants.collectionName,
                pipeline: [{ $match: { userId, _open: true } }],
                as: "_grants",
              },
            },
          ],
          { batchSize: 1 },
        )
        .toArray(),
    );
    const doc = docs[0];
    if (doc === undefined) return { account: null, grants: null };
    const now = fromDoc(ACCOUNT, doc);
    return {
      account: now,
      grants: now.scoped === true ? (doc._grants as Document[]).map((d) => fromDoc(GRANT, d)) : null,
    };
  }

  /** Up to `limit` account ids after `after`, in id order. */
  async listAccountIds(after: string | null, limit: number): Promise<string[]> {
    const docs = await guard("listAccountIds", () =>
      this.c.accounts
        .find(after === null ? {} : { _id: { $gt: after } }, { projection: { _id: 1 }, ...batchOf(limit) })
        .sort({ _id: 1 })
        .limit(limit)
        .toArray(),
    );
    return docs.map((d) => d._id);
  }

  /** The grant; null when there is none (or, with `userId`, it is another user's). */
  async getGrant(grantId: string, userId?: string): Promise<Grant | null> {
    const doc = await guard("getGrant", () =>
      this.c.grants.findOne(userId === undefined ? { _id: grantId } : { userId, _id: grantId }),
    );
    return doc === null ? null : fromDoc(GRANT, doc);
  }

  /** The hold; null when there is none (or, with `userId`, it is another user's). */
  async getReservation(reservationId: string, userId?: string): Promise<Reservation | null> {
    const doc = await guard("getReservation", () =>
      this.c.reservations.findOne(userId === undefined ? { _id: reservationId } : { userId, _id: reservationId }),
    );
    return doc === null ? null : fromDoc(RESERVATION, doc);
  }

  /** The user's grants: the open ones, or every one with `includeInactive`. */
  async listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]> {
    const filter: Filter<StoredDoc> = options?.includeInactive ? { userId } : { userId, _open: true };
    const docs = await guard("listGrants", () =>
      this.c.grants.find(filter, ONE_BATCH).sort({ _ord: 1, _id: 1 }).toArray(),
    );
    return docs.map((d) => fromDoc(GRANT, d));
  }

  /** The user's holds, of one status when `status` is given. */
  async listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]> {
    const filter: Filter<StoredDoc> = options?.status === undefined ? { userId } : { userId, status: options.status };
    const docs = await guard("listReservations", () =>
      this.c.reservations.find(filter, ONE_BATCH).sort({ _ord: 1, _id: 1 }).toArray(),
    );
    return docs.map((d) => fromDoc(RESERVATION, d));
  }

  /** The journal's usage, summed per bucket of the scan (docs/usage.md). */
  async usage(scan: UsageScan): Promise<UsageBucket[]> {
    // Every group in the aggregate's own answer (its `$limit` is `limit + 1`), as far as the
    // server's 16 MB cap on a batch allows: no cursor left open for a getMore, which a gateway or a
    // failover between the two could lose, failing the report (docs/usage.md, "How each store answers").
    const docs = await guard("usage", () =>
      this.c.journal
        .aggregate(usagePipeline(scan), { allowDiskUse: true, batchSize: Math.max(1, scan.limit + 1) })
        .toArray(),
    );
    return docs.map((d) => usageBucketOf(d, scan));
  }

  /** The user's journal entries the query selects, in sequence order. */
  async listJournal(userId: string, q: JournalQuery): Promise<JournalEntry[]> {
    if (q.limit <= 0) return [];
    const filter: Filter<StoredDoc> = { userId };
    if (q.order === "desc") {
      if (q.beforeSeq !== undefined) filter.seq = { $lt: q.beforeSeq };
    } else if (q.afterSeq !== undefined) {
      filter.seq = { $gt: q.afterSeq };
    }
    if (q.types !== undefined) filter.type = { $in: [...q.types] };
    // When the money moved (docs/concepts.md, "Two times on every entry"): `occurredAt`, else
    // `createdAt` (`occurredAt: null` matches a missing one too); never after `createdAt`.
    const moved: Filter<StoredDoc>[] = [];
    if (q.from !== undefined) {
      filter.createdAt = { $gte: q.from };
      moved.push({ $or: [{ occurredAt: null }, { occurredAt: { $gte: q.from } }] });
    }
    if (q.to !== undefined)
      moved.push({ $or: [{ occurredAt: { $lt: q.to } }, { occurredAt: null, createdAt: { $lt: q.to } }] });
    if (moved.length > 0) filter.$and = moved;
    const docs = await guard("listJournal", () =>
      this.c.journal
        .find(filter, batchOf(q.limit))
        .sort({ seq: q.order === "desc" ? -1 : 1 })
        .limit(q.limit)
        .toArray(),
    );
    return docs.map((d) => fromDoc(ENTRY, d));
  }

  /**
   * Moves each key to `forgottenKey` and removes `idempotencyKey`: out of the partial unique
   * index (string keys only), still part of the entry (`fromDoc` folds it back; the hash covers it).
   */
  async forgetIdempotencyKeys(before: Date, limit: number): Promise<number> {
    const SYSTEM_KEYS = new RegExp(`^${SYSTEM_KEY_PREFIX}`);
    if (limit <= 0) return 0;
    const docs = await guard("forgetIdempotencyKeys", () =>
      this.c.journal
        .find({ idempotencyKey: { $type: "string", $not: SYSTEM_KEYS }, createdAt: { $lt: before } }, batchOf(limit))
        .project<{ _id: string; idempotencyKey: string }>({ _id: 1, idempotencyKey: 1 })
        .limit(limit)
        .toArray(),
    );
    if (docs.length === 0) return 0;
    const result = await guard("forgetIdempotencyKeys", () =>
      this.c.journal.bulkWrite(
        docs.map((d) => ({
          updateOne: {
            filter: { _id: d._id, idempotencyKey: d.idempotencyKey },
            update: { $set: { forgottenKey: d.idempotencyKey }, $unset: { idempotencyKey: "" } },
          },
        })),
        { ordered: false },
      ),
    );
    return result.modifiedCount;
  }

  /** Deletes the user's journal entries before sequence `beforeSeq` (archival); resolves to how many. */
  async deleteJournalBefore(userId: string, beforeSeq: number): Promise<number> {
    // In batches of ids, so no one delete runs long (docs/operations.md, "Checkpoints and archival").
    let removed = 0;
    for (;;) {
      const ids = await guard("deleteJournalBefore", () =>
        this.c.journal
          .find({ userId, seq: { $lt: beforeSeq } }, { projection: { _id: 1 }, ...batchOf(10_000) })
          .sort({ seq: 1 })
          .limit(10_000)
          .toArray(),
      );
      if (ids.length === 0) return removed;
      const r = await guard("deleteJournalBefore", () =>
        this.c.journal.deleteMany({ _id: { $in: ids.map((d) => d._id) } }),
      );
      removed += r.deletedCount;
      if (ids.length < 10_000) return removed;
    }
  }

  /** Open grants expired by `asOf`, at most `limit`, after the cursor. */
  async findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]> {
    if (limit <= 0) return [];
    // `_open: true` lets the server use the partial index of open grants.
    const filter: Filter<StoredDoc> = { _open: true, expiresAt: { $lte: asOf }, ...afterCursor(after) };
    const docs = await guard("findDueGrants", () =>
      this.c.grants.find(filter, batchOf(limit)).sort({ expiresAt: 1, _id: 1 }).limit(limit).toArray(),
    );
    return docs.map((d) => fromDoc(GRANT, d));
  }

  /** Active holds expired by `asOf`, at most `limit`, after the cursor. */
  async findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]> {
    if (limit <= 0) return [];
    const filter: Filter<StoredDoc> = { status: "active", expiresAt: { $lte: asOf }, ...afterCursor(after) };
    const docs = await guard("findExpiredReservations", () =>
      this.c.reservations.find(filter, batchOf(limit)).sort({ expiresAt: 1, _id: 1 }).limit(limit).toArray(),
    );
    return docs.map((d) => fromDoc(RESERVATION, d));
  }

  /** Appends an audit-ledger event. */
  async insertLedgerEntry(entry: LedgerEntry): Promise<void> {
    // `_ord` keeps entries of one process in insertion order when their createdAt ties.
    const ord = Math.max(Date.now() * 1024, this.lastLedgerOrd + 1);
    this.lastLedgerOrd = ord;
    const doc = toDoc(LEDGER, entry, { _ord: ord });
    // Undefined values in free-form details are left out, as JSON would.
    await guard("insertLedgerEntry", () => this.c.ledger.insertOne(doc, { ignoreUndefined: true }));
  }

  /** The audit-ledger events the query selects. */
  async listLedgerEntries(q: LedgerQuery): Promise<LedgerEntry[]> {
    if (q.limit <= 0) return [];
    const filter: Filter<StoredDoc> = {};
    if (q.eventType !== undefined) filter.eventType = q.eventType;
    if (q.userId !== undefined) filter.userId = q.userId;
    if (q.before !== undefined) {
      const anchor =
        q.beforeId === undefined
          ? null
          : await guard("listLedgerEntries", () =>
              this.c.ledger.findOne(
                { _id: q.beforeId as string, ...(q.userId === undefined ? {} : { userId: q.userId }) },
                { projection: { createdAt: 1, _ord: 1 } },
              ),
            );
      if (anchor !== null && anchor.createdAt instanceof Date && anchor.createdAt.getTime() === q.before.getTime()) {
        // The same instant as the previous page's last entry: those after it in (_ord, _id) order.
        const at = q.before;
        filter.$or = [
          { createdAt: { $lt: at } },
          { createdAt: at, _ord: { $lt: anchor._ord } },
          { createdAt: at, _ord: anchor._ord, _id: { $lt: q.beforeId as string } },
        ];
      } else filter.createdAt = { $lt: q.before };
    }
    const docs = await guard("listLedgerEntries", () =>
      this.c.ledger.find(filter, batchOf(q.limit)).sort({ createdAt: -1, _ord: -1, _id: -1 }).limit(q.limit).toArray(),
    );
    return docs.map((d) => fromDoc(LEDGER, d));
  }

  /** Fails with `ConfigurationError` unless the server can run multi-document transactions. */
  private async assertTransactions(): Promise<void> {
    let hello: Document;
    try {
      hello = await this.db.command({ hello: 1 });
    } catch (error) {
      if (!isDriverError(error)) throw error;
      // Servers before 4.4.2 know only the legacy name (and cannot run our transactions anyway
      // below 4.0, which the answer shows as no setName).
      try {
        hello = await this.db.command({ isMaster: 1 });
      } catch (legacyError) {
        throw new StorageError(
          `[credit-management] [mongodb] Could not reach the server to check it: ${(error as Error).message}`,
          legacyError,
        );
      }
    }
    if (!supportsTransactions(hello)) throw new ConfigurationError(STANDALONE_MESSAGE);
  }

  /**
   * The unit of work gave up after `attempts`: a `ConflictError` when it lost races, a
   * `StorageError` (503) when the last attempt failed because the server could not be reached.
   */
  private exhausted(userId: string, attempts: number, cause?: unknown): ConflictError | StorageError {
    if (isUnreachable(cause)) {
      return new StorageError(
        `[credit-management] [mongodb] The unit of work on account ${userId} could not reach the server in ${attempts} attempts: ${(cause as Error).message}`,
        cause,
      );
    }
    return gaveUp("mongodb", userId, attempts, cause);
  }
}
