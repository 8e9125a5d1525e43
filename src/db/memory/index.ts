import { ConflictError } from "../../errors.js";
import { isOpenGrant } from "../../domain/order.js";
import type { Account, Grant, JournalEntry, LedgerEntry, Payment, Promo, Reservation } from "../../models/index.js";
import { SYSTEM_KEY_PREFIX } from "../../models/common.js";
import { DueIndex } from "./due-index.js";
import { HoldIndex } from "./hold-index.js";
import { SettledHolds } from "./holds.js";
import { copyAccount, copyGrant, copyLedgerEntry, copyReservation } from "./copies.js";
import { CompactJournal } from "./journal.js";
import { UsageAccumulator, type UsageBucket, type UsageScan } from "../../domain/usage.js";
import { MemoryOutbox } from "./outbox.js";
import { MemoryPromoStore } from "./promos.js";
import { MemorySubscriptionStore } from "./subscriptions.js";
import type {
  AccountCredits,
  Changes,
  DbManager,
  DbTransaction,
  JournalQuery,
  LedgerQuery,
  LoadRequest,
  LoadedState,
  ScanCursor,
  StoreStats,
} from "../types.js";
import { StoreBase } from "../store/base.js";
import type { SideParts } from "../store/parts.js";
import { OpenGrants } from "./open-grants.js";
import { isPromiseLike } from "../../util/promise.js";

interface UserData {
  readonly userId: string;
  account: Account | null;
  /** Grants with remaining > 0 and not closed, in burn-down order. */
  open: OpenGrants;
  /** Every grant, by id, in insertion order. */
  grants: Map<string, Grant>;
  /** Active holds, as objects; settled ones (which never change again) as compact rows. */
  active: Map<string, Reservation>;
  /**
   * `active` as a list, handed to units of work as it is (they only read it): built at the first
   * load after a change, then shared, so a deduction on an account with many holds copies none.
   */
  activeList: readonly Reservation[] | null;
  settled: SettledHolds;
  /** The account's number in the store's `HoldIndex`, given at its first hold (-1: none yet). */
  holder: number;
  /** Entry seq n is at index n - 1 - journal.archived. */
  journal: CompactJournal;
  /** idempotency key → seq of its entry */
  byKey: Map<string, number>;
  /**
   * The account's lock: undefined when free, null when held with nobody waiting, else the callers
   * waiting in order (kept here, not in a map of its own: one lookup per unit of work).
   */
  lock: Array<() => void> | null | undefined;
}

function emptyUser(userId: string): UserData {
  return {
    userId,
    account: null,
    open: new OpenGrants(),
    grants: new Map(),
    active: new Map(),
    activeList: null,
    settled: new SettledHolds(),
    holder: -1,
    journal: new CompactJournal(),
    byKey: new Map(),
    lock: undefined,
  };
}

/**
 * The default store: everything in process memory, for tests, development and single-process
 * services that can afford to lose state on restart. Units of work on one account run one after
 * another (a per-account lock); different accounts run concurrently. Writes apply synchronously at
 * `save`, so a unit of work that throws leaves nothing behind.
 *
 * Accounts, grants and active reservations are kept as the objects handed to `save` (the library
 * never mutates them afterwards; the service copies what it hands to callers); the journal and the
 * settled reservations (one per metered request, never changed again) are kept as fixed-size binary
 * rows in one buffer per account (`CompactJournal`, `SettledHolds`).
 */
export class InMemoryDbManager extends StoreBase implements DbManager {
  readonly name = "memory";
  readonly capabilities = { multiProcess: false } as const;

  private readonly users = new Map<string, UserData>();
  /** Grant id → the account's data (set once, at insert: the objects are in its maps). */
  private readonly grantOwner = new Map<string, UserData>();
  /** Hold id → the account's number (`holders`) and the hold's settled row, once settled. */
  private readonly holds = new HoldIndex();
  /** Accounts with holds, by their number in `holds` (an account with a hold is never dropped). */
  private readonly holders: UserData[] = [];
  /** Open grants that can expire, by id, and ordered by (expiresAt, id) for `findDueGrants`. */
  private readonly expiring = new Map<string, Grant>();
  private readonly dueGrants = new DueIndex((id, t) => this.expiring.get(id)?.expiresAt?.getTime() === t);
  /** Holds ordered by (expiresAt, id) for `findExpiredReservations`. */
  private readonly dueHolds = new DueIndex((id) => this.holderOf(id)?.active.has(id) === true);
  private readonly ledger: LedgerEntry[] = [];
  /** @internal Promos, claims and payments. */
  readonly promoStore = new MemoryPromoStore();
  private readonly outbox = new MemoryOutbox();
  /** Plans and subscriptions, promos and payments, the outbox. */
  protected readonly parts: SideParts = {
    subscriptions: new MemorySubscriptionStore(),
    promos: this.promoStore,
    outbox: this.outbox,
  };

  async init(): Promise<void> {}

  transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> {
    try {
      const result = this.transactionNow(userId, fn);
      return isPromiseLike(result) ? (result as Promise<T>) : Promise.resolve(result);
    } catch (error) {
      return Promise.reject(error as Error);
    }
  }

  transactionNow<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): T | Promise<T> {
    // Per-account lock: the first caller runs at once; later ones queue and are handed the lock
    // in order. No promise is made unless someone has to wait (or `fn` itself returns one).
    let u = this.users.get(userId);
    if (u === undefined) this.users.set(userId, (u = emptyUser(userId)));
    if (u.lock !== undefined) {
      let waiting = u.lock;
      if (waiting === null) u.lock = waiting = [];
      const held = u;
      return new Promise<void>((resolve) => waiting.push(resolve)).then(() => this.runLocked(held, fn));
    }
    u.lock = null;
    return this.runLocked(u, fn);
  }

  /**
   * Runs `fn` holding the account's lock; applies what it saved once it returned; hands the lock on.
   * A synchronous `fn`'s result (or error) comes back as such.
   */
  private runLocked<T>(u: UserData, fn: (tx: DbTransaction) => Promise<T> | T): T | Promise<T> {
    const tx = new MemoryTransaction(this, u);
    let result: T | Promise<T>;
    try {
      result = fn(tx);
      if (!isPromiseLike(result)) {
        // Applied only once `fn` has returned: a unit of work that throws after save() leaves nothing.
        // save() checked the changes and nothing ran since (no await): no need to check again.
        if (tx.pending !== null) this.apply(u, tx.pending, true);
        this.unlock(u);
        return result;
      }
    } catch (error) {
      this.unlock(u);
      throw error;
    }
    return Promise.resolve(result).then(
      (value) => {
        try {
          if (tx.pending !== null) this.apply(u, tx.pending);
        } finally {
          this.unlock(u);
        }
        return value;
      },
      (error: unknown) => {
        this.unlock(u);
        throw error;
      },
    );
  }

  private unlock(u: UserData): void {
    const next = u.lock?.shift();
    if (next !== undefined) return next();
    u.lock = undefined;
    // An account that nothing was ever saved to leaves no trace (a refused first operation).
    if (u.account === null && this.users.get(u.userId) === u) this.users.delete(u.userId);
  }

  /** @internal */
  user(userId: string): UserData | undefined {
    return this.users.get(userId);
  }

  /** @internal Refuses changes that would break the seq guard or a unique key. */
  check(u: UserData, changes: Changes): void {
    const currentSeq = u.account?.seq ?? null;
    if (currentSeq !== changes.previousSeq) {
      throw new ConflictError(`account ${changes.account.userId} changed during the unit of work`);
    }
    // Check uniques before writing anything, so a refused save leaves no trace.
    for (const e of changes.entries) {
      if (e.idempotencyKey !== null && u.byKey.has(e.idempotencyKey)) {
        throw new ConflictError(`idempotency key ${e.idempotencyKey} is already used`);
      }
    }
    if (hasPromoRows(changes)) this.promoStore.check(changes);
    if (changes.notifications !== undefined) {
      for (const n of changes.notifications) {
        if (!this.outbox.accepts(n)) throw new ConflictError(`notification key ${n.dedupeKey} is already used`);
      }
    }
  }

  /** @internal Applies a unit of work's changes at once (synchronously: nothing interleaves). */
  apply(u: UserData, changes: Changes, checked = false): void {
    if (!checked) this.check(u, changes);
    u.account = changes.account;
    for (const g of changes.insertGrants) this.putGrant(u, g, true);
    for (const g of changes.updateGrants) this.putGrant(u, g, false);
    for (const r of changes.insertReservations) this.putReservation(u, r, true);
    for (const r of changes.updateReservations) this.putReservation(u, r, false);
    for (const e of changes.entries) {
      if (e.idempotencyKey !== null) u.byKey.set(e.idempotencyKey, e.seq);
      u.journal.append(e);
    }
    if (hasPromoRows(changes)) this.promoStore.apply(changes);
    if (changes.notifications !== undefined && changes.notifications.length > 0)
      this.outbox.insertNotifications(changes.notifications);
  }

  /** `isNew`: an inserted grant (else one of the account's, updated). */
  private putGrant(u: UserData, g: Grant, isNew: boolean): void {
    if (isNew) this.grantOwner.set(g.id, u);
    u.grants.set(g.id, g);
    const open = isOpenGrant(g);
    if (open) u.open.set(g);
    else u.open.delete(g);
    const before = this.expiring.get(g.id);
    if (open && g.expiresAt !== null) {
      this.expiring.set(g.id, g);
      if (before?.expiresAt?.getTime() !== g.expiresAt.getTime()) this.dueGrants.add(g.expiresAt.getTime(), g.id);
    } else if (before !== undefined) {
      this.expiring.delete(g.id);
      this.dueGrants.removed();
    }
  }

  /** `isNew`: an inserted hold (else one of the account's, updated). */
  private putReservation(u: UserData, r: Reservation, isNew: boolean): void {
    const wasActive = !isNew && u.active.has(r.id);
    if (isNew) {
      if (u.holder < 0) u.holder = this.holders.push(u) - 1;
      this.holds.add(r.id, u.holder);
    }
    if (r.status === "active") {
      if (!wasActive) this.dueHolds.add(r.expiresAt.getTime(), r.id);
      u.active.set(r.id, r);
      u.activeList = null;
    } else {
      if (wasActive) {
        u.active.delete(r.id);
        u.activeList = null;
        this.dueHolds.removed(r.expiresAt.getTime(), r.id);
      }
      const row = this.holds.settle(r.id, u.holder, u.settled.size);
      u.settled.set(r, row, this.holds.key);
    }
  }

  /** The account whose hold `id` is, if any. */
  private holderOf(id: string): UserData | undefined {
    const n = this.holds.owner(id);
    return n < 0 ? undefined : this.holders[n];
  }

  /** @internal A hold of the account: the stored object while active, else a copy from its settled row. */
  holdOf(u: UserData, id: string): Reservation | null {
    const active = u.active.get(id);
    if (active !== undefined) return active;
    const row = u.holder < 0 ? -1 : this.holds.settledRow(id, u.holder);
    return row < 0 ? null : u.settled.at(row, u.userId);
  }

  async getAccount(userId: string): Promise<Account | null> {
    const account = this.users.get(userId)?.account;
    return account === null || account === undefined ? null : copyAccount(account);
  }

  async getAccountCredits(userId: string): Promise<AccountCredits> {
    const u = this.users.get(userId);
    const account = u?.account;
    if (u === undefined || account === null || account === undefined) return { account: null, grants: null };
    return { account: copyAccount(account), grants: account.scoped === true ? u.open.values().map(copyGrant) : null };
  }

  async listAccountIds(after: string | null, limit: number): Promise<string[]> {
    const ids: string[] = [];
    for (const [userId, user] of this.users) {
      if (user.account !== null && user.account !== undefined && (after === null || userId > after)) ids.push(userId);
    }
    return ids.sort().slice(0, limit);
  }

  async getGrant(grantId: string, userId?: string): Promise<Grant | null> {
    const grant = this.grantOwner.get(grantId)?.grants.get(grantId);
    return grant === undefined || (userId !== undefined && grant.userId !== userId) ? null : copyGrant(grant);
  }

  async getReservation(reservationId: string, userId?: string): Promise<Reservation | null> {
    const u = this.holderOf(reservationId);
    const hold = u === undefined ? null : this.holdOf(u, reservationId);
    if (hold !== null && userId !== undefined && hold.userId !== userId) return null;
    // An active hold is the stored object; a settled one is already a new object, made from its row.
    return hold !== null && hold.status === "active" ? copyReservation(hold) : hold;
  }

  reservationOwner(reservationId: string): string | null {
    return this.holderOf(reservationId)?.userId ?? null;
  }

  async listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]> {
    const u = this.users.get(userId);
    if (u === undefined) return [];
    if (options?.includeInactive) return [...u.grants.values()].map(copyGrant);
    // Oldest first, as the other stores answer (the open list is in burn-down order).
    return u.open.values().sort(oldestFirst).map(copyGrant);
  }

  async listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]> {
    const u = this.users.get(userId);
    if (u === undefined) return [];
    const status = options?.status;
    const active = () => [...u.active.values()].map(copyReservation);
    if (status === "active") return active();
    const settled = u.settled.values(userId); // new objects, made from the settled rows
    if (status !== undefined) return settled.filter((r) => r.status === status);
    // By creation, as the other stores list them.
    return [...active(), ...settled].sort(oldestFirst);
  }

  /**
   * Drops keys from each account's key map (the lookup); the entries keep them (their hash covers
   * them). Oldest first within an account: keys enter the map in journal order.
   */
  async forgetIdempotencyKeys(before: Date, limit: number): Promise<number> {
    const cutoff = before.getTime();
    let forgotten = 0;
    for (const u of this.users.values()) {
      for (const [key, seq] of u.byKey) {
        if (forgotten >= limit) return forgotten;
        // byKey holds the entry's seq; index i holds seq i + 1 + archived.
        if (u.journal.createdAt(seq - 1 - u.journal.archived) >= cutoff) break;
        if (key.startsWith(SYSTEM_KEY_PREFIX)) continue; // the library's own: kept (see DbManager)
        u.byKey.delete(key);
        forgotten++;
      }
    }
    return forgotten;
  }

  async listJournal(userId: string, q: JournalQuery): Promise<JournalEntry[]> {
    const journal = this.users.get(userId)?.journal;
    if (journal === undefined) return [];
    const out: JournalEntry[] = [];
    const types = q.types === undefined ? null : new Set(q.types);
    const from = q.from?.getTime();
    const to = q.to?.getTime();
    const take = (i: number) => {
      const at = journal.createdAt(i);
      if (
        (types === null || types.has(journal.type(i))) &&
        (from === undefined || at >= from) &&
        (to === undefined || at < to)
      ) {
        out.push(journal.get(i, userId));
      }
    };
    // (Index i holds seq i + 1 + base: entries before base are archived.)
    const base = journal.archived;
    if (q.order === "desc") {
      const start = Math.min(journal.length, (q.beforeSeq ?? base + journal.length + 1) - 1 - base);
      for (let i = start - 1; i >= 0 && out.length < q.limit; i--) take(i);
    } else {
      for (let i = Math.max(0, (q.afterSeq ?? 0) - base); i < journal.length && out.length < q.limit; i++) take(i);
    }
    return out;
  }

  async usage(scan: UsageScan): Promise<UsageBucket[]> {
    const sum = new UsageAccumulator(scan);
    const from = scan.from.getTime();
    const to = scan.to.getTime();
    const add = (u: UserData) => {
      const j = u.journal;
      for (let i = 0; i < j.length; i++) {
        const at = j.createdAt(i);
        if (at < from || at >= to) continue;
        const t = j.type(i);
        if (t !== "deduct" && t !== "commit_reserved" && t !== "void") continue;
        sum.add(u.userId, j.get(i, u.userId));
      }
    };
    if (scan.account !== null) {
      const u = this.users.get(scan.account);
      if (u !== undefined) add(u);
    } else for (const u of this.users.values()) add(u);
    return sum.result();
  }

  async deleteJournalBefore(userId: string, beforeSeq: number): Promise<number> {
    const u = this.users.get(userId);
    if (u === undefined) return 0;
    const before = u.journal.archived;
    // Swapped whole between units of work (nothing here awaits): a reader sees the old or the new.
    u.journal = u.journal.from(beforeSeq, userId);
    for (const [key, seq] of u.byKey) if (seq < beforeSeq) u.byKey.delete(key);
    return u.journal.archived - before;
  }

  async findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]> {
    const ids = this.dueGrants.scan(asOf.getTime(), limit, cursorOf(after));
    return ids.map((id) => copyGrant(this.expiring.get(id) as Grant));
  }

  async findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]> {
    const ids = this.dueHolds.scan(asOf.getTime(), limit, cursorOf(after));
    return ids.map((id) => copyReservation(this.holderOf(id)?.active.get(id) as Reservation));
  }

  /** Nothing to reach; no schema (docs/observability.md). */
  async ping(): Promise<{ schemaVersion: number | null }> {
    return { schemaVersion: null };
  }

  async stats(): Promise<StoreStats> {
    let activeHolds = 0;
    let heldCredits = 0;
    for (const u of this.holders) {
      activeHolds += u.active.size;
      heldCredits += u.account?.reserved ?? 0;
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

  async insertLedgerEntry(entry: LedgerEntry): Promise<void> {
    this.ledger.push(copyLedgerEntry(entry));
  }

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
    return matches.slice(0, q.limit).map((i) => copyLedgerEntry(this.ledger[i] as LedgerEntry));
  }
}

class MemoryTransaction implements DbTransaction {
  private saved = false;
  /** Changes to apply when the unit of work returns. */
  pending: Changes | null = null;
  constructor(
    private readonly db: InMemoryDbManager,
    private readonly u: UserData,
  ) {}

  get userId(): string {
    return this.u.userId;
  }

  load(request?: LoadRequest): LoadedState {
    const u = this.u;
    if (u.account === null) return { account: null, grants: [], reservations: [], idempotent: null };
    const key = request?.idempotencyKey;
    const at = key === undefined ? undefined : u.byKey.get(key);
    return {
      account: u.account,
      grants: u.open.live(),
      grantsInOrder: true,
      reservations: u.active.size === 0 ? NO_HOLDS : (u.activeList ??= [...u.active.values()]),
      idempotent: at === undefined ? null : u.journal.get(at - 1 - u.journal.archived, this.userId),
    };
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    const out: Grant[] = [];
    for (const id of grantIds) {
      const g = this.u.grants.get(id);
      if (g !== undefined) out.push(g);
    }
    return out;
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    return this.db.holdOf(this.u, reservationId);
  }

  async getPromo(code: string): Promise<Promo | null> {
    return this.db.promoStore.getPromo(code);
  }

  async countPromoClaims(code: string): Promise<number> {
    return this.db.promoStore.countPromoClaims(code, this.userId);
  }

  async getPayment(paymentId: string): Promise<Payment | null> {
    const p = await this.db.promoStore.getPayment(paymentId);
    return p !== null && p.userId === this.userId ? p : null;
  }

  save(changes: Changes): void {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    this.db.check(this.u, changes);
    this.pending = changes;
  }
}

/** Whether a unit of work saves promo claims or payment updates (few do: the rest skip that store). */
function hasPromoRows(changes: Changes): boolean {
  return changes.promoClaims !== undefined || changes.paymentUpdates !== undefined;
}

/** The loaded holds of an account with none (most): shared, never written. */
const NO_HOLDS: readonly Reservation[] = Object.freeze([]);

/** By creation, then id: the order the stores list grants and holds in. */
const oldestFirst = (a: { createdAt: Date; id: string }, b: { createdAt: Date; id: string }): number =>
  a.createdAt.getTime() - b.createdAt.getTime() || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

function cursorOf(after: ScanCursor | undefined): { time: number; id: string } | undefined {
  return after === undefined ? undefined : { time: after.expiresAt.getTime(), id: after.id };
}
