import { ConflictError } from "../../errors.js";
import { compareGrants, isOpenGrant } from "../../domain/order.js";
import type { Account, Grant, JournalEntry, LedgerEntry, Reservation } from "../../models/index.js";
import { SYSTEM_KEY_PREFIX } from "../../models/common.js";
import type { Changes } from "../../domain/state.js";
import { UsageAccumulator, usageEntryTypes, type UsageBucket, type UsageScan } from "../../domain/usage.js";
import type {
  AccountCredits,
  ChargeRecord,
  DbCapabilities,
  DbManager,
  DbTransaction,
  JournalQuery,
  LedgerQuery,
  LoadRequest,
  LoadedState,
  ScanCursor,
  StoreStats,
} from "../types.js";
import { AccountLocks } from "../store/account-locks.js";
import { StoreBase } from "../store/base.js";
import type { MemoryBoundPart, ModuleParts, ModuleStorePart } from "../module-part.js";
import type { SideParts } from "../store/parts.js";
import { copy, copyEntry, copyHold } from "./copies.js";
import { DueTimes } from "./due-times.js";
import { MemoryOutbox } from "./outbox.js";
import { MemorySubscriptionStore } from "./subscriptions.js";

/** The journal entry types a usage report reads (USAGE_RULES). */
const USAGE_TYPES: ReadonlySet<string> = new Set(usageEntryTypes());

/** One account's rows. */
interface AccountRows {
  readonly userId: string;
  account: Account | null;
  /** Every grant, by id, in insertion order. */
  grants: Map<string, Grant>;
  /** The open ones (remaining > 0, not closed), in burn-down order: what a unit of work loads. */
  open: Map<string, Grant>;
  /**
   * The open grant last in burn-down order when it opened, or null: after it closes, still one that
   * none of the open grants comes after.
   */
  lastOpened: Grant | null;
  /** Every hold, by id, in insertion order. */
  holds: Map<string, Reservation>;
  /** The active ones: what a unit of work loads. */
  active: Map<string, Reservation>;
  /** The entries kept: `journal[i]` has seq `archived + i + 1`. */
  journal: JournalEntry[];
  /** Entries removed by archival (`deleteJournalBefore`) before the first one kept. */
  archived: number;
  /** Idempotency key → the seq of its entry, in journal order. */
  byKey: Map<string, number>;
}

function newAccountRows(userId: string): AccountRows {
  return {
    userId,
    account: null,
    grants: new Map(),
    open: new Map(),
    lastOpened: null,
    holds: new Map(),
    active: new Map(),
    journal: [],
    archived: 0,
    byKey: new Map(),
  };
}

/**
 * The default store: everything in process memory, as plain objects in maps — for tests,
 * development and single-process services that can afford to lose state on restart, and the
 * reference the contract suite and the simulation read the other stores against. Units of work on
 * one account run one after another (a per-account lock); different accounts run concurrently. A
 * unit of work's changes apply at once when it returns, so one that throws leaves nothing behind.
 *
 * One object per row: a new account, grant or hold is kept as `save` handed it, and a new version
 * of one is written into the object kept (`Object.assign`), so the maps' objects live as long as
 * their rows. (Replacing them instead made each deduction's account and grant new objects for the
 * garbage collector to move: docs/benchmarks.md, "Performance machinery and what it buys".) Units
 * of work load the kept objects themselves and only read them; they are done before their save
 * applies. A journal entry is kept as a copy (the services hand the entry to the caller), and every
 * read hands out copies: nothing a caller holds is the store's own.
 *
 * This class holds the core's rows only; a module's part (`ModuleStorePart.memory`, bound by
 * `usePart`) keeps the module's rows, checks and applies what a unit of work saves for it at the
 * unit's commit, and answers its reads inside units of work. The package's `InMemoryDbManager` is
 * this store with the package's own modules' parts bound.
 * @public
 */
export class CoreInMemoryDbManager extends StoreBase implements DbManager {
  /** The store's name (`memory`, `postgres`, `mongodb`, `sqlite`, …), in diagnostics and errors. */
  readonly name = "memory";
  /** What the store supports: its transactions and its optional parts. */
  readonly capabilities: DbCapabilities = {
    multiProcess: false,
    parts: { subscriptions: true, outbox: true },
  };
  /** The module parts bound to this store, as its kind binds them (`usePart`). @beta */
  declare readonly modules: ModuleParts<MemoryBoundPart>;

  private readonly accounts = new Map<string, AccountRows>();
  private readonly locks = new AccountLocks();
  /** Grant id → its account's rows. */
  private readonly grantOwner = new Map<string, AccountRows>();
  /** Hold id → its account's rows. */
  private readonly holdOwner = new Map<string, AccountRows>();
  /** Open grants that expire, for `findDueGrants`. */
  private readonly dueGrants = new DueTimes();
  /** Active holds, by when they lapse, for `findExpiredReservations`. */
  private readonly dueHolds = new DueTimes();
  private readonly ledger: LedgerEntry[] = [];
  private readonly outbox = new MemoryOutbox();
  /** Plans and subscriptions, the outbox. */
  protected readonly parts: SideParts = { subscriptions: new MemorySubscriptionStore(), outbox: this.outbox };

  /** Creates the store's tables (or collections) and indexes where missing; call once before use. */
  async init(): Promise<void> {
    // A module's part keeps its rows in memory: its `migrate`, if any, prepares them.
    for (const { part } of this.modules.bound) await part.migrate?.();
  }

  /**
   * Runs `fn` as one unit of work on the user's account: its writes commit together or not at all; `fn` runs
   * again after a write conflict.
   */
  async transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> {
    // A promise only when another unit of work holds the account (as the store helper's `run` waits).
    const wait = this.locks.acquire(userId);
    if (wait !== undefined) await wait;
    try {
      const rows = this.accounts.get(userId) ?? newAccountRows(userId);
      const tx = new MemoryTransaction(this, rows);
      const result = await fn(tx);
      // Applied only once `fn` has returned: a unit of work that throws after save() leaves nothing.
      if (tx.pending !== null) this.apply(rows, tx.pending);
      return result;
    } finally {
      this.locks.release(userId);
    }
  }

  /**
   * Runs `fn` on this store while the account's units of work wait (`DbManager.readSnapshot`;
   * docs/operations.md, "Auditing"): a unit of work changes the account, its grants and holds all
   * at once when it ends, so every read of the account `fn` makes sees one state.
   */
  async readSnapshot<T>(userId: string, fn: (db: DbManager) => Promise<T>): Promise<T> {
    const wait = this.locks.acquire(userId);
    if (wait !== undefined) await wait;
    try {
      return await fn(this);
    } finally {
      this.locks.release(userId);
    }
  }

  /** Binds the side of this store's kind of a module's part (once per module, by `usePart`). @beta */
  protected override bindPart(part: ModuleStorePart): MemoryBoundPart | undefined {
    return part.memory?.();
  }

  /** @internal The reads of `module`'s part inside the unit of work `tx` (`DbTransaction.part`). */
  moduleTransaction(module: string, tx: DbTransaction): object | undefined {
    return this.modules.get(module)?.transaction?.(tx);
  }

  /**
   * @internal Refuses changes that would break the seq guard or a unique key (at `save`, and again
   * when they apply: module rows and the outbox are shared by every account).
   */
  check(rows: AccountRows, changes: Changes): void {
    if ((rows.account?.seq ?? null) !== changes.previousSeq) {
      throw new ConflictError(`account ${changes.account.userId} changed during the unit of work`);
    }
    for (const e of changes.entries) {
      if (e.idempotencyKey !== null && rows.byKey.has(e.idempotencyKey)) {
        throw new ConflictError(`idempotency key ${e.idempotencyKey} is already used`);
      }
    }
    if (changes.rows !== undefined) {
      for (const { module, part } of this.modules.bound) {
        const rows = changes.rows[module];
        if (rows !== undefined) part.check?.(rows);
      }
    }
    for (const n of changes.notifications ?? []) {
      if (!this.outbox.accepts(n)) throw new ConflictError(`notification key ${n.dedupeKey} is already used`);
    }
  }

  /** Checks and applies a unit of work's changes (synchronously: nothing interleaves). */
  private apply(rows: AccountRows, changes: Changes): void {
    this.check(rows, changes);
    this.accounts.set(rows.userId, rows);
    // A copy of what the caller saved, never its own object: later versions are written into the
    // kept one, and the caller may still hold (and read) the changes it saved.
    if (rows.account === null) rows.account = { ...changes.account };
    else Object.assign(rows.account, changes.account);
    for (const grants of [changes.insertGrants, changes.updateGrants]) {
      for (const g of grants) {
        this.grantOwner.set(g.id, rows);
        this.indexGrant(rows, keep(rows.grants, g));
      }
    }
    for (const holds of [changes.insertReservations, changes.updateReservations]) {
      for (const r of holds) {
        this.holdOwner.set(r.id, rows);
        this.indexHold(rows, keep(rows.holds, r));
      }
    }
    for (const e of changes.entries) {
      rows.journal.push(copyEntry(e));
      if (e.idempotencyKey !== null) rows.byKey.set(e.idempotencyKey, e.seq);
    }
    if (changes.rows !== undefined) {
      for (const { module, part } of this.modules.bound) {
        const rows = changes.rows[module];
        if (rows !== undefined) part.apply?.(rows);
      }
    }
    if (changes.notifications !== undefined) this.outbox.insertNotifications(changes.notifications);
  }

  /** Files a kept grant under what it is now: open (in burn-down order) or not, due to expire or not. */
  private indexGrant(rows: AccountRows, g: Grant): void {
    if (!isOpenGrant(g)) rows.open.delete(g.id);
    else if (!rows.open.has(g.id)) {
      // A grant's place in burn-down order never changes, so the open grants are put in order only
      // when one opens (is created, or gets credits back) before the last: most go after it.
      rows.open.set(g.id, g);
      if (rows.lastOpened === null || compareGrants(rows.lastOpened, g) < 0) rows.lastOpened = g;
      else inBurnDownOrder(rows);
    }
    if (isOpenGrant(g) && g.expiresAt !== null) this.dueGrants.set(g.id, g.expiresAt.getTime());
    else this.dueGrants.delete(g.id);
  }

  /** Files a kept hold under what it is now: active (and due to lapse) or not. */
  private indexHold(rows: AccountRows, r: Reservation): void {
    if (r.status === "active") {
      rows.active.set(r.id, r);
      this.dueHolds.set(r.id, r.expiresAt.getTime());
    } else {
      rows.active.delete(r.id);
      this.dueHolds.delete(r.id);
    }
  }

  /** @internal The account's rows (tests). */
  user(userId: string): AccountRows | undefined {
    return this.accounts.get(userId);
  }

  /** The account; null when the user has none. */
  async getAccount(userId: string): Promise<Account | null> {
    const account = this.accounts.get(userId)?.account;
    return account == null ? null : copy(account);
  }

  /** The account's balance figures, read outside a unit of work. */
  async getAccountCredits(userId: string): Promise<AccountCredits> {
    const rows = this.accounts.get(userId);
    const account = rows?.account;
    if (rows === undefined || account == null) return { account: null, grants: null };
    return { account: copy(account), grants: account.scoped === true ? [...rows.open.values()].map(copy) : null };
  }

  /** Up to `limit` account ids after `after`, in id order. */
  async listAccountIds(after: string | null, limit: number): Promise<string[]> {
    const ids = [...this.accounts.keys()].filter((id) => after === null || id > after);
    return ids.sort().slice(0, limit);
  }

  /** The grant; null when there is none (or, with `userId`, it is another user's). */
  async getGrant(grantId: string, userId?: string): Promise<Grant | null> {
    const grant = this.grantOwner.get(grantId)?.grants.get(grantId);
    return grant === undefined || (userId !== undefined && grant.userId !== userId) ? null : copy(grant);
  }

  /** The hold; null when there is none (or, with `userId`, it is another user's). */
  async getReservation(reservationId: string, userId?: string): Promise<Reservation | null> {
    const hold = this.holdOwner.get(reservationId)?.holds.get(reservationId);
    return hold === undefined || (userId !== undefined && hold.userId !== userId) ? null : copyHold(hold);
  }

  /** The user of the hold; null when there is none. */
  async reservationOwner(reservationId: string): Promise<string | null> {
    return this.holdOwner.get(reservationId)?.userId ?? null;
  }

  /** The user's grants: the open ones, or every one with `includeInactive`. */
  async listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]> {
    const rows = this.accounts.get(userId);
    if (rows === undefined) return [];
    if (options?.includeInactive) return [...rows.grants.values()].map(copy);
    return [...rows.open.values()].sort(oldestFirst).map(copy);
  }

  /** The user's holds, of one status when `status` is given. */
  async listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]> {
    const rows = this.accounts.get(userId);
    if (rows === undefined) return [];
    const status = options?.status;
    return [...rows.holds.values()]
      .filter((r) => status === undefined || r.status === status)
      .sort(oldestFirst)
      .map(copyHold);
  }

  /**
   * Drops keys from each account's key map (the lookup); the entries keep them (their hash covers
   * them). Oldest first within an account: keys enter the map in journal order.
   */
  async forgetIdempotencyKeys(before: Date, limit: number): Promise<number> {
    let forgotten = 0;
    for (const rows of this.accounts.values()) {
      for (const [key, seq] of rows.byKey) {
        if (forgotten >= limit) return forgotten;
        const entry = rows.journal[seq - 1 - rows.archived] as JournalEntry;
        if (entry.createdAt >= before) break;
        if (key.startsWith(SYSTEM_KEY_PREFIX)) continue; // the library's own: kept (see DbManager)
        rows.byKey.delete(key);
        forgotten++;
      }
    }
    return forgotten;
  }

  /** The user's journal entries the query selects, in sequence order. */
  async listJournal(userId: string, q: JournalQuery): Promise<JournalEntry[]> {
    const rows = this.accounts.get(userId);
    if (rows === undefined) return [];
    const { journal, archived } = rows;
    const types = q.types === undefined ? null : new Set(q.types);
    const out: JournalEntry[] = [];
    const take = (e: JournalEntry) => {
      if (types !== null && !types.has(e.type)) return;
      // When the money moved (docs/concepts.md, "Two times on every entry").
      const moved = e.occurredAt ?? e.createdAt;
      if ((q.from !== undefined && moved < q.from) || (q.to !== undefined && moved >= q.to)) return;
      out.push(copyEntry(e));
    };
    // The entry of seq s is at index s - 1 - archived.
    if (q.order === "desc") {
      const end = Math.min(journal.length, (q.beforeSeq ?? Infinity) - 1 - archived);
      for (let i = end - 1; i >= 0 && out.length < q.limit; i--) take(journal[i] as JournalEntry);
    } else {
      const start = Math.max(0, (q.afterSeq ?? 0) - archived);
      for (let i = start; i < journal.length && out.length < q.limit; i++) take(journal[i] as JournalEntry);
    }
    return out;
  }

  /** The journal's usage, summed per bucket of the scan (docs/usage.md). */
  async usage(scan: UsageScan): Promise<UsageBucket[]> {
    const sum = new UsageAccumulator(scan);
    const accounts = scan.account === null ? [...this.accounts.values()] : [this.accounts.get(scan.account)];
    for (const rows of accounts) {
      // (The accumulator places each entry at its occurredAt, else createdAt, and skips those outside the range.)
      for (const e of rows?.journal ?? []) if (USAGE_TYPES.has(e.type)) sum.add(e.userId, e);
    }
    return sum.result();
  }

  /** Deletes the user's journal entries before sequence `beforeSeq` (archival); resolves to how many. */
  async deleteJournalBefore(userId: string, beforeSeq: number): Promise<number> {
    const rows = this.accounts.get(userId);
    if (rows === undefined) return 0;
    const removed = Math.min(Math.max(beforeSeq - 1 - rows.archived, 0), rows.journal.length);
    rows.journal = rows.journal.slice(removed);
    rows.archived += removed;
    for (const [key, seq] of rows.byKey) if (seq < beforeSeq) rows.byKey.delete(key);
    return removed;
  }

  /** Open grants expired by `asOf`, at most `limit`, after the cursor. */
  async findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]> {
    const ids = this.dueGrants.scan(asOf.getTime(), limit, cursorOf(after));
    return ids.map((id) => copy(this.grantOwner.get(id)?.grants.get(id) as Grant));
  }

  /** Active holds expired by `asOf`, at most `limit`, after the cursor. */
  async findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]> {
    const ids = this.dueHolds.scan(asOf.getTime(), limit, cursorOf(after));
    return ids.map((id) => copyHold(this.holdOwner.get(id)?.holds.get(id) as Reservation));
  }

  /** Nothing to reach; no schema (docs/observability.md). */
  async ping(): Promise<{ schemaVersion: number | null }> {
    return { schemaVersion: null };
  }

  /** Row counts of the store's tables. */
  async stats(): Promise<StoreStats> {
    let activeHolds = 0;
    let heldCredits = 0;
    for (const rows of this.accounts.values()) {
      activeHolds += rows.active.size;
      heldCredits += rows.account?.reserved ?? 0;
    }
    const o = this.outbox.stats();
    return {
      activeHolds,
      heldCredits,
      outboxPending: o.pending,
      outboxFailed: o.failed,
      oldestPendingAt: o.oldestPendingAt,
    };
  }

  /** Appends an audit-ledger event. */
  async insertLedgerEntry(entry: LedgerEntry): Promise<void> {
    this.ledger.push(copy(entry));
  }

  /** The audit-ledger events the query selects. */
  async listLedgerEntries(q: LedgerQuery): Promise<LedgerEntry[]> {
    // Newest first by createdAt, then by insertion (the store's tie-break); a page resumes after
    // (before, the insertion index of beforeId).
    const before = q.before?.getTime();
    let anchor = -1;
    if (before !== undefined && q.beforeId !== undefined) {
      const i = this.ledger.findIndex((e) => e.id === q.beforeId);
      if (i >= 0 && this.ledger[i]?.createdAt.getTime() === before) anchor = i;
    }
    const matches: number[] = [];
    for (let i = 0; i < this.ledger.length; i++) {
      const e = this.ledger[i] as LedgerEntry;
      if (q.eventType !== undefined && e.eventType !== q.eventType) continue;
      if (q.userId !== undefined && e.userId !== q.userId) continue;
      const t = e.createdAt.getTime();
      if (before !== undefined && !(t < before || (t === before && i < anchor))) continue;
      matches.push(i);
    }
    const at = (i: number) => (this.ledger[i] as LedgerEntry).createdAt.getTime();
    matches.sort((a, b) => at(b) - at(a) || b - a);
    return matches.slice(0, q.limit).map((i) => copy(this.ledger[i] as LedgerEntry));
  }
}

class MemoryTransaction implements DbTransaction {
  /** Changes to apply when the unit of work returns. */
  pending: Changes | null = null;
  constructor(
    private readonly db: CoreInMemoryDbManager,
    private readonly rows: AccountRows,
  ) {}

  get userId(): string {
    return this.rows.userId;
  }

  part(module: string): object | undefined {
    return this.db.moduleTransaction(module, this);
  }

  /** The stored objects themselves: the unit of work only reads them, and is done before its save applies. */
  async load(request?: LoadRequest): Promise<LoadedState> {
    const rows = this.rows;
    if (rows.account === null) return { account: null, grants: [], reservations: [], idempotent: null };
    const key = request?.idempotencyKey;
    const seq = key === undefined ? undefined : rows.byKey.get(key);
    return {
      account: rows.account,
      grants: [...rows.open.values()],
      // So a deduction reads only the grants it draws from, however many are open
      // (docs/writing-a-store.md, "Optional methods").
      grantsInOrder: true,
      reservations: [...rows.active.values()],
      idempotent: seq === undefined ? null : copyEntry(rows.journal[seq - 1 - rows.archived] as JournalEntry),
    };
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    const grants = grantIds.map((id) => this.rows.grants.get(id));
    return grants.filter((g) => g !== undefined);
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const hold = this.rows.holds.get(reservationId);
    return hold === undefined ? null : copyHold(hold);
  }

  /** A scan of the account's journal: the in-memory store keeps no index by entry id. */
  async getCharge(entryId: string): Promise<ChargeRecord | null> {
    let entry: JournalEntry | undefined;
    const reversals: JournalEntry[] = [];
    for (const e of this.rows.journal) {
      if (e.id === entryId) entry = e;
      else if (e.reverses === entryId) reversals.push(copyEntry(e));
    }
    return entry === undefined ? null : { entry: copyEntry(entry), reversals };
  }

  async save(changes: Changes): Promise<void> {
    if (this.pending !== null) throw new Error("save() may be called once per unit of work");
    this.db.check(this.rows, changes);
    this.pending = changes;
  }
}

/** Keeps `row` in `kept`: a copy of it when its id is new, else written into the object kept for it. */
function keep<T extends { id: string }>(kept: Map<string, T>, row: T): T {
  const old = kept.get(row.id);
  if (old === undefined) {
    const copy = { ...row };
    kept.set(row.id, copy);
    return copy;
  }
  return Object.assign(old, row);
}

/** Puts an account's open grants in burn-down order (`compareGrants`). */
function inBurnDownOrder(rows: AccountRows): void {
  const sorted = [...rows.open.values()].sort(compareGrants);
  rows.open.clear();
  for (const g of sorted) rows.open.set(g.id, g);
  rows.lastOpened = sorted[sorted.length - 1] ?? null;
}

/** By creation, then id: the order the stores list grants and holds in. */
const oldestFirst = (a: { createdAt: Date; id: string }, b: { createdAt: Date; id: string }): number =>
  a.createdAt.getTime() - b.createdAt.getTime() || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

function cursorOf(after: ScanCursor | undefined): { time: number; id: string } | undefined {
  return after === undefined ? undefined : { time: after.expiresAt.getTime(), id: after.id };
}
