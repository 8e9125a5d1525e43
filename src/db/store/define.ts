import { StoreBase } from "../../core/db/store/base.js";
import type { Part, SideParts } from "../../core/db/store/parts.js";
import type { BoundStorePart, ModuleStorePart } from "../../core/db/module-part.js";
import { ConfigurationError, ConflictError, CreditError } from "../../core/errors.js";
import type { Account, Grant, JournalEntry, LedgerEntry, Reservation } from "../../core/models/index.js";
import type { UsageBucket, UsageRollupRow } from "../../core/domain/usage.js";
import type { NotificationStore } from "../../core/db/types-notifications.js";
import type { SubscriptionStore } from "../../core/db/types-subscriptions.js";
import type {
  AccountCredits,
  AccountStore,
  DbCapabilities,
  DbManager,
  DbTransaction,
  JournalQuery,
  JournalStore,
  LedgerQuery,
  OptionalPart,
  ScanCursor,
} from "../../core/db/types.js";
import { AccountLocks } from "../../core/db/store/account-locks.js";
import { gaveUp, origin, storeError } from "../../core/db/store/errors.js";
import { backoff, sleep } from "../../core/db/store/retry.js";

/** One attempt of a unit of work, as a backend hands it to `defineStore` (see `UnitOfWorkPart`). @beta */
export interface Attempt extends DbTransaction {
  /**
   * Writes what `save` queued, atomically (nothing when `save` was not called). Throws
   * `ConflictError` when the account moved since `load` (another process wrote it, or a unique
   * key was taken): the unit of work then runs again from the start, on a fresh `begin`.
   */
  commit(): void | Promise<void>;
  /** Ends an attempt that will not commit (`fn` threw, or `commit` failed). Optional. */
  rollback?(): void | Promise<void>;
}

/**
 * Units of work run by `defineStore`: the backend only starts an attempt. The helper runs them one
 * after another per account in this process (a FIFO lock), retries an attempt whose `commit`
 * throws `ConflictError` with jittered backoff up to `maxAttempts` (then once more from
 * `beginLocked` where the backend has it), and writes nothing of an attempt whose `fn` threw.
 * @beta
 */
export interface UnitOfWorkPart {
  /** Opens an attempt of a unit of work on the user's account. */
  begin(userId: string): Attempt | Promise<Attempt>;
  /**
   * Optional: an attempt that cannot meet a conflict, because it holds the store's write lock (or
   * the account's) from its `load` to its `commit` or `rollback`. The helper runs one when
   * `maxAttempts` attempts from `begin` met conflicts, instead of giving up
   * (docs/writing-a-store.md, "The parts: `defineStore`"). It may wait for the lock, for a
   * bounded time of the store's own; it throws `ConflictError` (from here or from `commit`) when
   * it could not have it: only then does the unit of work fail with `ConflictError`. `rollback`
   * must release the lock.
   */
  beginLocked?(userId: string): Attempt | Promise<Attempt>;
}

/** The accounts part: its reads, and either its own `transaction` or `begin` (run by the helper). @beta */
export type AccountsPart = Part<Omit<AccountStore, "transaction">> &
  (Pick<AccountStore, "transaction"> | UnitOfWorkPart);

/** What `defineStore` builds a `DbManager` from. @beta */
export interface StoreDefinition {
  /** Short name for errors and logs (`[credit-management] [<name>] …`). */
  name: string;
  /** Several processes may share the store. */
  multiProcess: boolean;
  /** Creates tables and indexes; idempotent. */
  init(): Promise<void> | void;
  /** Releases what the store made; called once, whatever `close()` is called. */
  close?(): Promise<void> | void;
  /** The accounts part: reads of accounts, grants and holds, and the units of work. */
  accounts: AccountsPart;
  /** The journal part: the journal and the audit ledger. */
  journal: Part<JournalStore>;
  /** Plans and subscriptions. Without it the store answers them with `ConfigurationError`. */
  subscriptions?: Part<SubscriptionStore>;
  /**
   * Binds the side of a module's store part this backend has (`ModuleStorePart`: its reads, its
   * reads inside an attempt, answered by the attempt's `part`, and the rows its `commit` writes
   * from `Changes.rows`); undefined where it has none: the module then refuses its calls
   * (docs/writing-a-store.md, "A module's part"). Called once per module.
   *
   * @beta
   */
  bindPart?(part: ModuleStorePart): BoundStorePart | undefined;
  /** The notification outbox. Without it, `ConfigurationError`. */
  outbox?: Part<NotificationStore>;
  /**
   * Attempts of a unit of work that keeps meeting conflicts before `ConflictError` (default 10);
   * with `accounts.beginLocked`, before it runs once more holding the lock instead.
   */
  maxAttempts?: number;
}

/** Between attempts: jittered, in [cap/2, cap), the cap doubling from 4 ms up to 250 ms. */
const BACKOFF = { base: 4, factor: 2, max: 250, floor: 0.5 };

/**
 * Builds a `DbManager` from its parts. The helper owns what every store would repeat: the
 * forwarding to the parts, errors that name their origin (a part's failure that is not a
 * `CreditError` becomes a `StorageError` reading `[credit-management] [<name>] <method> failed: …`),
 * a `close()` that runs once, and — for a backend that gives `accounts.begin` — the units of work:
 * the per-account lock in this process, retries and backoff.
 *
 * ```ts
 * const db = defineStore({
 *   name: "my-store",
 *   multiProcess: true,
 *   init: () => createTables(),
 *   accounts: { begin: (userId) => new MyAttempt(userId), getAccount, getGrant, … },
 *   journal: { listJournal, insertLedgerEntry, listLedgerEntries },
 *   // subscriptions, outbox, modules' parts (bindPart): add them one by one; the contract suite skips what is absent.
 * });
 * ```
 * @beta
 */
export function defineStore(definition: StoreDefinition): DbManager {
  return new DefinedStore(definition);
}

const PARTS: readonly OptionalPart[] = ["subscriptions", "outbox"];

/** The store `defineStore` returns; a backend class may extend it (`class MyStore extends DefinedStore { constructor() { super({ … }) } }`). @beta */
export class DefinedStore extends StoreBase {
  /** The store's name (`memory`, `postgres`, `mongodb`, `sqlite`, …), in diagnostics and errors. */
  readonly name: string;
  /** What the store supports: its transactions and its optional parts. */
  readonly capabilities: DbCapabilities;
  /** The sub-stores this store forwards to. */
  protected readonly parts: SideParts;
  private readonly accounts: AccountsPart;
  private readonly journal: Part<JournalStore>;
  private readonly locks = new AccountLocks();
  private readonly maxAttempts: number;

  /** A store made of `definition`'s parts (`defineStore`). */
  constructor(private readonly definition: StoreDefinition) {
    super();
    const name = definition.name;
    if (typeof name !== "string" || name.length === 0)
      throw new ConfigurationError("[credit-management] defineStore: `name` is required");
    this.name = name;
    this.maxAttempts = Math.max(1, definition.maxAttempts ?? 10);
    const present = Object.fromEntries(PARTS.map((p) => [p, definition[p] !== undefined])) as Record<
      OptionalPart,
      boolean
    >;
    this.capabilities = Object.freeze({ multiProcess: definition.multiProcess, parts: Object.freeze(present) });
    this.accounts = guarded(name, definition.accounts);
    this.journal = guarded(name, definition.journal);
    this.parts = {
      subscriptions: guarded(name, definition.subscriptions ?? missing(name, "subscriptions")),
      outbox: guarded(name, definition.outbox ?? missing(name, "outbox")),
    };
  }

  /** The definition's `bindPart`, its reads' failures named as the store's other methods' are. */
  protected override bindPart(part: ModuleStorePart): BoundStorePart | undefined {
    const bound = this.definition.bindPart?.(part);
    return bound === undefined ? undefined : { ...bound, reads: guarded(this.name, bound.reads) };
  }

  /** Creates the store's tables (or collections) and indexes where missing; call once before use. */
  async init(): Promise<void> {
    try {
      await this.definition.init();
    } catch (error) {
      throw storeError(this.name, "init", error);
    }
  }

  /** What `close()` does, the first time. */
  protected override async closeOnce(): Promise<void> {
    try {
      await this.definition.close?.();
    } catch (error) {
      throw storeError(this.name, "close", error);
    }
  }

  /**
   * Runs `fn` as one unit of work on the user's account: its writes commit together or not at all; `fn` runs
   * again after a write conflict.
   */
  transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> {
    const accounts = this.definition.accounts;
    if ("transaction" in accounts) return accounts.transaction(userId, fn);
    return this.run(accounts, userId, fn);
  }

  /**
   * Runs a unit of work from the backend's `begin`: alone on its account here, retried on
   * conflicts; after `maxAttempts` of them, once more from `beginLocked` where there is one.
   */
  private async run<T>(part: UnitOfWorkPart, userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> {
    const wait = this.locks.acquire(userId);
    if (wait !== undefined) await wait;
    try {
      for (let attempts = 1; ; attempts++) {
        // Past maxAttempts only with beginLocked: the attempt that holds the lock throughout.
        const locked = attempts > this.maxAttempts;
        let tx: Attempt;
        try {
          tx = await (locked
            ? (part.beginLocked as (userId: string) => Attempt | Promise<Attempt>)(userId)
            : part.begin(userId));
        } catch (error) {
          if (locked && error instanceof ConflictError) throw gaveUp(this.name, userId, attempts, error);
          throw storeError(this.name, "transaction", error);
        }
        let value: T;
        try {
          value = await fn(tx);
        } catch (error) {
          await this.rollback(tx);
          throw error; // the unit of work's own failure: nothing written, not retried
        }
        try {
          await tx.commit();
          return value;
        } catch (error) {
          await this.rollback(tx);
          if (!(error instanceof ConflictError)) throw storeError(this.name, "transaction", error);
          if (locked || (attempts >= this.maxAttempts && part.beginLocked === undefined))
            throw gaveUp(this.name, userId, attempts, error);
          // The locked attempt waits for its lock itself: no backoff before it.
          if (attempts < this.maxAttempts) await sleep(backoff(attempts, BACKOFF));
        }
      }
    } finally {
      this.locks.release(userId);
    }
  }

  private async rollback(tx: Attempt): Promise<void> {
    try {
      await tx.rollback?.();
    } catch {
      // The attempt is over either way; its failure is what the caller hears about.
    }
  }

  /** The account; null when the user has none. */
  getAccount(userId: string): Promise<Account | null> {
    return this.accounts.getAccount(userId) as Promise<Account | null>;
  }
  /** The grant; null when there is none (or, with `userId`, it is another user's). */
  getGrant(grantId: string, userId?: string): Promise<Grant | null> {
    return this.accounts.getGrant(grantId, userId) as Promise<Grant | null>;
  }
  /** The hold; null when there is none (or, with `userId`, it is another user's). */
  getReservation(reservationId: string, userId?: string): Promise<Reservation | null> {
    return this.accounts.getReservation(reservationId, userId) as Promise<Reservation | null>;
  }
  /** The user's grants: the open ones, or every one with `includeInactive`. */
  listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]> {
    return this.accounts.listGrants(userId, options) as Promise<Grant[]>;
  }
  /** The user's holds, of one status when `status` is given. */
  listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]> {
    return this.accounts.listReservations(userId, options) as Promise<Reservation[]>;
  }
  /** Open grants expired by `asOf`, at most `limit`, after the cursor. */
  findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]> {
    return this.accounts.findDueGrants(asOf, limit, after) as Promise<Grant[]>;
  }
  /** Active holds expired by `asOf`, at most `limit`, after the cursor. */
  findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]> {
    return this.accounts.findExpiredReservations(asOf, limit, after) as Promise<Reservation[]>;
  }
  /** The user's journal entries the query selects, in sequence order. */
  listJournal(userId: string, query: JournalQuery): Promise<JournalEntry[]> {
    return this.journal.listJournal(userId, query) as Promise<JournalEntry[]>;
  }
  /** Forgets the idempotency keys of entries created before `before`; resolves to how many. */
  async forgetIdempotencyKeys(before: Date, limit: number): Promise<number> {
    const forget = this.journal.forgetIdempotencyKeys;
    if (forget === undefined) {
      throw new ConfigurationError(
        `[credit-management] the ${this.name} store cannot forget idempotency keys (its journal part has no forgetIdempotencyKeys): keep the retention "forever"`,
      );
    }
    return forget.call(this.journal, before, limit);
  }
  /** Appends an audit-ledger event. */
  insertLedgerEntry(entry: LedgerEntry): Promise<void> {
    return this.journal.insertLedgerEntry(entry) as Promise<void>;
  }
  /** The audit-ledger events the query selects. */
  listLedgerEntries(query: LedgerQuery): Promise<LedgerEntry[]> {
    return this.journal.listLedgerEntries(query) as Promise<LedgerEntry[]>;
  }
  /** Deletes the user's journal entries before sequence `beforeSeq` (archival); resolves to how many. */
  get deleteJournalBefore(): JournalStore["deleteJournalBefore"] {
    const remove = this.journal.deleteJournalBefore;
    return remove === undefined
      ? undefined
      : (userId, beforeSeq) => this.journal.deleteJournalBefore?.(userId, beforeSeq) as Promise<number>;
  }
  /** The journal's usage, summed per bucket of the scan (docs/usage.md). */
  get usage(): JournalStore["usage"] {
    const usage = this.journal.usage;
    return usage === undefined ? undefined : (scan) => this.journal.usage?.(scan) as Promise<UsageBucket[]>;
  }
  /** The journal part's `usageRollup`, when it has one (`JournalStore.usageRollup`). */
  get usageRollup(): JournalStore["usageRollup"] {
    const read = this.journal.usageRollup;
    return read === undefined
      ? undefined
      : (userId) => this.journal.usageRollup?.(userId) as Promise<UsageRollupRow[] | null>;
  }
  /** The account's balance figures, read outside a unit of work. */
  get getAccountCredits(): AccountStore["getAccountCredits"] {
    const read = this.accounts.getAccountCredits;
    return read === undefined
      ? undefined
      : (userId) => this.accounts.getAccountCredits?.(userId) as Promise<AccountCredits>;
  }
  /** Whether the journal entry of that id was committed. */
  get entryCommitted(): AccountStore["entryCommitted"] {
    const lookUp = this.accounts.entryCommitted;
    return lookUp === undefined
      ? undefined
      : (userId, entry) => this.accounts.entryCommitted?.(userId, entry) as Promise<boolean | null>;
  }
  /** Up to `limit` account ids after `after`, in id order. */
  get listAccountIds(): AccountStore["listAccountIds"] {
    const list = this.accounts.listAccountIds;
    return list === undefined
      ? undefined
      : (after, limit) => this.accounts.listAccountIds?.(after, limit) as Promise<string[]>;
  }
}

/**
 * `part` with every method answering a promise, its failures as the store's errors (a
 * `CreditError` as it is; anything else a `StorageError` naming the store and the method).
 */
function guarded<T extends object>(store: string, part: T): T {
  const cache = new Map<PropertyKey, unknown>();
  return new Proxy(part, {
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== "function" || key === "begin" || key === "beginLocked" || key === "transaction")
        return value;
      let wrapped = cache.get(key);
      if (wrapped === undefined) {
        const method = String(key);
        wrapped = async (...args: unknown[]) => {
          try {
            return await (value as (...a: unknown[]) => unknown).apply(target, args);
          } catch (error) {
            throw error instanceof CreditError ? error : storeError(store, method, error);
          }
        };
        cache.set(key, wrapped);
      }
      return wrapped;
    },
  });
}

/** A part the store does not have yet: each method fails with `ConfigurationError` saying so. */
function missing<T extends object>(store: string, part: OptionalPart): T {
  return new Proxy({} as T, {
    get(_target, key) {
      if (typeof key !== "string" || key === "then") return undefined;
      return () => Promise.reject(new ConfigurationError(origin(store, `has no ${part} part (${key})`)));
    },
  });
}
