import type { Changes } from "../../src/core/domain/state.js";
import type { ModuleStorePart } from "../../src/core/db/module-part.js";
import { billingStore } from "../../src/modules/billing/store.js";
import { isDeepStrictEqual } from "node:util";
import { ConflictError, StorageError } from "../../src/core/errors.js";
import { outcomeUnknown } from "../../src/core/db/store/errors.js";
import type { InMemoryDbManager } from "../../src/built-in-parts.js";
import type { DbManager, DbTransaction, LoadRequest, LoadedState } from "../../src/store.js";
import type { ChargeRecord } from "../../src/core/db/types.js";
import { stateAfter, type AccountState } from "../../src/core/db/state-cache.js";
import type { Account, Grant, Payment, Promo, Reservation, Subscription } from "../../src/models-entry.js";
import type { Prng } from "./prng.js";
import { currentOp, type OpContext, type Scheduler } from "./scheduler.js";

/** What the simulated store saw, in the order it happened: the model replays it. */
export type StoreEvent =
  | { kind: "load"; op: OpContext | undefined; userId: string; key: string | undefined; seq: number }
  | { kind: "commit"; op: OpContext | undefined; userId: string; changes: Changes }
  /** A live read inside a unit of work (promos, payments: not from the load's snapshot). */
  | { kind: "txread"; op: OpContext | undefined; userId: string; key: string | undefined }
  /** A request answered (pushed by the simulation, so the log orders answers among commits). */
  | { kind: "end"; op: OpContext }
  /** A write outside a unit of work that took effect, with the stored subscription before it (if one). */
  | { kind: "write"; op: OpContext | undefined; method: string; args: readonly unknown[]; before: Subscription | null };

/** Store calls that write outside a unit of work: they get an `ack` point (outcome unknown). */
const WRITES = new Set([
  "insertPlan",
  "updatePlan",
  "deletePlan",
  "insertSubscription",
  "updateSubscription",
  "insertPromo",
  "setPromoActive",
  "insertPayment",
  "updatePayment",
]);

/** Passed through untouched: set-up, and the ledger's system events (written after the fact). */
const DIRECT = new Set(["init", "close", "insertLedgerEntry", "listLedgerEntries"]);

/** Attempts of a unit of work on write conflicts before `ConflictError` reaches the caller. */
const MAX_ATTEMPTS = 5;

/**
 * The in-memory store behind the public `DbManager` contract, as a database with optimistic
 * concurrency would behave: a unit of work loads a snapshot, computes, and commits only if the
 * account's seq has not moved (the store's own guard, which also refuses a used idempotency key or
 * an exhausted promo), else it runs again. Every call waits on the scheduler, which interleaves
 * units of work at their loads, reads and commits, and injects faults: storage errors, write
 * conflicts, a commit whose answer is lost, and calls that never answer (a process that died).
 */
export class SimStore {
  readonly events: StoreEvent[] = [];
  /** The store as a process without a state cache sees it. */
  readonly db: DbManager;

  constructor(
    readonly inner: InMemoryDbManager,
    readonly scheduler: Scheduler,
    /** Only to prove the simulation catches a store that loses what it answered as done. */
    private readonly loseCommits?: Prng,
    /** Only to prove the simulation catches spends drawn outside a grant's scope: loads grants without it. */
    readonly loseScopes = false,
    /** Only to prove the simulation catches a spend past a limit: loads limits without their amount (read as unlimited, so every spend passes the check; what they counted stays right). */
    readonly loseLimits = false,
    /** Only to prove the simulation catches alerts evaluated from the wrong state: loads accounts without their alert thresholds' states. */
    readonly loseAlertMarks = false,
    /** Only to prove the simulation catches credits moved between units: loads grants without their unit (all in the default one). */
    readonly loseUnits = false,
  ) {
    this.db = this.process(undefined);
  }

  /**
   * The store as one process (one manager) sees it: with its own state cache, as the PostgreSQL
   * and MongoDB adapters keep one per process (`stateCacheSize`), or none. A process that dies is
   * replaced by a new one, with an empty cache.
   */
  process(cache: ProcessCache | undefined): DbManager {
    const inner = this.inner;
    const transaction = <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T) =>
      this.transaction(userId, fn, cache);
    return new Proxy(inner, {
      get: (target, prop, receiver) => {
        if (prop === "transaction") return transaction;
        // A module's reads, as the store's own methods: each a scheduling point.
        if (prop === "usePart")
          return (part: ModuleStorePart) => {
            const reads = target.usePart(part);
            return reads === undefined ? undefined : this.scheduled(reads as Record<string, unknown>);
          };
        const value: unknown = Reflect.get(target, prop, receiver);
        if (typeof value !== "function") return value;
        const method = value as (...args: unknown[]) => unknown;
        if (typeof prop !== "string" || DIRECT.has(prop)) return method.bind(target);
        return (...args: unknown[]) => this.call(prop, args, () => method.apply(target, args));
      },
    }) as unknown as DbManager;
  }

  /** `reads` with each method run as the store's own (`call`). */
  private scheduled(reads: Record<string, unknown>): object {
    return new Proxy(reads, {
      get: (target, prop) => {
        const value: unknown = Reflect.get(target, prop, target);
        if (typeof value !== "function" || typeof prop !== "string") return value;
        const method = value as (...args: unknown[]) => unknown;
        return (...args: unknown[]) => this.call(prop, args, () => method.apply(target, args));
      },
    });
  }

  private async call(method: string, args: readonly unknown[], run: () => unknown): Promise<unknown> {
    const write = WRITES.has(method);
    const verdict = await this.scheduler.point(write ? "write" : "read");
    if (verdict === "error") throw new StorageError(`[sim] injected: ${method} failed before it ran`);
    if (!write) return run();
    // The memory store answers without waiting: nothing runs between this read and the write.
    const stored =
      method === "updateSubscription" ? await this.inner.getSubscription((args[0] as Subscription).id) : null;
    const result = await run();
    if (result !== false)
      this.events.push({ kind: "write", op: currentOp(), method, args: structuredClone(args), before: stored });
    const ack = await this.scheduler.point("ack");
    if (ack === "error") throw new StorageError(`[sim] injected: ${method} was written, its answer lost`);
    return result;
  }

  /**
   * `DbManager.transaction`: optimistic, retried on conflicts at the commit, like a database
   * adapter. A unit of work that started from the process's cached state is guarded like the
   * adapters guard it: its save by the account's seq (a copy another process outdated conflicts,
   * and the unit runs again on the store's state); its answer without a save by a read of the
   * account's current seq (moved: the unit runs again), unless the cache is the planted stale one.
   */
  private async transaction<T>(
    userId: string,
    fn: (tx: DbTransaction) => Promise<T> | T,
    cache: ProcessCache | undefined,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const tx = new SimTransaction(this, userId, cache);
      let value: T;
      try {
        value = await fn(tx);
      } catch (error) {
        // A refusal (or any error) decided on the copy stands only if the copy is still current.
        if (tx.cachedSeq !== null && cache?.stale !== true && !(await this.stillCurrent(userId, tx.cachedSeq))) {
          cache?.states.delete(userId);
          continue;
        }
        throw error;
      }
      const changes = tx.changes;
      if (changes === null) {
        if (tx.cachedSeq !== null && cache?.stale !== true && !(await this.stillCurrent(userId, tx.cachedSeq))) {
          cache?.states.delete(userId);
          continue;
        }
        return value;
      }
      // Known again only once the commit's answer is back (a lost answer leaves none).
      cache?.states.delete(userId);
      const verdict = await this.scheduler.point("commit");
      try {
        if (verdict === "error") throw new StorageError("[sim] injected: storage error before the commit");
        if (verdict === "conflict") throw new ConflictError("[sim] injected: write conflict at the commit");
        // Under the account's lock: the seq guard, the unique keys and the write, with nothing in between.
        if (this.loseCommits?.chance(0.05) !== true)
          await this.inner.transaction(userId, async (t) => {
            // The account row as loaded, as PostgreSQL's xmin and MongoDB's _rev guard it: a save
            // that changed only the account (an auto top-up settled: its seq stays) moves it too.
            if (tx.base !== null && !isDeepStrictEqual((await t.load()).account, tx.loadedAccount))
              throw new ConflictError("[sim] the account changed since the unit of work loaded it");
            await t.save(changes);
          });
      } catch (error) {
        if (error instanceof ConflictError && attempt < MAX_ATTEMPTS) continue;
        throw error;
      }
      this.events.push({ kind: "commit", op: currentOp(), userId, changes });
      // A lost answer is what an adapter reports when the connection fails after COMMIT was sent:
      // the outcome is unknown, and the unit-of-work runner looks its entries up
      // (docs/concepts.md, "Certain and uncertain errors").
      const ack = await this.scheduler.point("ack");
      if (ack === "error") throw outcomeUnknown("sim", new Error("[sim] injected: committed, but the answer was lost"));
      cache?.states.set(userId, { ...stateAfter(tx.base, changes), seq: changes.account.seq });
      return value;
    }
  }

  /** Whether the account's seq is still `seq` (the check of a unit of work that started from a cached state). */
  private async stillCurrent(userId: string, seq: number): Promise<boolean> {
    const verdict = await this.scheduler.point("read");
    if (verdict === "error") throw new StorageError("[sim] injected: the check of a cached state failed");
    const current = await this.inner.transaction(userId, (t) => t.load());
    return (current.account?.seq ?? null) === seq;
  }

  /** @internal */
  async wait(): Promise<void> {
    const verdict = await this.scheduler.point("load");
    if (verdict === "error") throw new StorageError("[sim] injected: a read inside a unit of work failed");
  }
}

/** A process's cached account states (open grants and active holds, as the adapters keep them). */
export class ProcessCache {
  readonly states = new Map<string, AccountState & { seq: number }>();

  /**
   * `stale`: a planted bug, to prove the simulation catches one: a unit of work that started from
   * the cache and saves nothing is answered without checking the copy is still the store's state
   * (a refusal, a settle or a job's "nothing to do" decided on a copy another process outdated).
   */
  constructor(readonly stale = false) {}
}

class SimTransaction implements DbTransaction {
  changes: Changes | null = null;
  /** The account's seq of the cached state the unit started from (null: it loaded from the store). */
  cachedSeq: number | null = null;
  /** The account, open grants and active holds it loaded (null: no account yet). */
  base: AccountState | null = null;
  /** The account row as the store (or the cached copy) gave it, before any planted loss. */
  loadedAccount: Account | null = null;
  /** The account's grants and holds (all states) as of the load. */
  private grants = new Map<string, Grant>();
  private holds = new Map<string, Reservation>();
  /** The idempotency key the unit of work loaded with. */
  private key: string | undefined;

  private liveRead(): void {
    this.sim.events.push({ kind: "txread", op: currentOp(), userId: this.userId, key: this.key });
  }

  constructor(
    private readonly sim: SimStore,
    readonly userId: string,
    private readonly cache: ProcessCache | undefined,
  ) {}

  async load(request?: LoadRequest): Promise<LoadedState> {
    // As the PostgreSQL adapter does: a load without an idempotency key may start from the copy.
    const hit = request?.idempotencyKey === undefined ? this.cache?.states.get(this.userId) : undefined;
    if (hit !== undefined) {
      this.cachedSeq = hit.seq;
      this.base = hit;
      this.loadedAccount = structuredClone(hit.account);
      // Other grants and holds are read from the store when asked for (`getGrants`, `getReservation`).
      this.grants = new Map(hit.grants.map((g) => [g.id, g]));
      this.holds = new Map(hit.reservations.map((r) => [r.id, r]));
      this.sim.events.push({ kind: "load", op: currentOp(), userId: this.userId, key: undefined, seq: hit.seq });
      return structuredClone({
        account: hit.account,
        grants: [...hit.grants],
        reservations: [...hit.reservations],
        idempotent: null,
      });
    }
    await this.sim.wait();
    // A snapshot, as a database transaction sees one: the state at the load, for every read of the
    // unit of work (the store's own lists move on as other units of work commit). Read under the
    // account's lock, these three see one instant.
    const inner = this.sim.inner;
    const [loaded, grants, holds] = await inner.transaction(this.userId, async (t) => [
      await t.load(request),
      await inner.listGrants(this.userId, { includeInactive: true }),
      await inner.listReservations(this.userId),
    ]);
    const state = structuredClone(loaded);
    this.loadedAccount = structuredClone(loaded.account);
    if (this.sim.loseScopes) state.grants = state.grants.map((g) => ({ ...g, scope: null }));
    if (this.sim.loseUnits) state.grants = state.grants.map((g) => ({ ...g, unit: null }));
    if (this.sim.loseLimits && state.account?.limits != null)
      state.account = {
        ...state.account,
        limits: state.account.limits.map((l) => ({ ...l, amount: Number.MAX_SAFE_INTEGER })),
      };
    if (this.sim.loseAlertMarks && state.account?.alert != null) {
      const { marks: _lost, ...alert } = state.account.alert;
      state.account = { ...state.account, alert };
    }
    this.grants = new Map(grants.map((g) => [g.id, g]));
    this.holds = new Map(holds.map((r) => [r.id, r]));
    this.key = request?.idempotencyKey;
    if (state.account !== null) {
      this.base = { account: state.account, grants: state.grants, reservations: state.reservations };
      this.cache?.states.set(this.userId, { ...structuredClone(this.base), seq: state.account.seq });
    }
    this.sim.events.push({
      kind: "load",
      op: currentOp(),
      userId: this.userId,
      key: request?.idempotencyKey,
      seq: state.account?.seq ?? 0,
    });
    return state;
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    await this.sim.wait();
    if (this.cachedSeq !== null && grantIds.some((id) => !this.grants.has(id))) {
      for (const g of await this.sim.inner.listGrants(this.userId, { includeInactive: true }))
        if (!this.grants.has(g.id)) this.grants.set(g.id, g);
    }
    return grantIds
      .map((id) => this.grants.get(id))
      .filter((g): g is Grant => g !== undefined)
      .map((g) => structuredClone(g));
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    await this.sim.wait();
    if (this.cachedSeq !== null && !this.holds.has(reservationId)) {
      const r = (await this.sim.inner.listReservations(this.userId)).find((h) => h.id === reservationId);
      if (r !== undefined) this.holds.set(r.id, r);
    }
    const r = this.holds.get(reservationId);
    return r === undefined ? null : structuredClone(r);
  }

  /** A charge and its reversals (`reverseCharge`), read live: another reversal commits under the account's seq guard. */
  async getCharge(entryId: string): Promise<ChargeRecord | null> {
    await this.sim.wait();
    this.liveRead();
    return this.sim.inner.transaction(this.userId, (t) => t.getCharge?.(entryId) ?? null);
  }

  /** The billing module's reads in the unit of work, read live as `getCharge`. */
  part(module: string): object | undefined {
    if (module !== "billing") return undefined;
    const db = billingStore(this.sim.inner);
    return {
      getPromo: async (code: string): Promise<Promo | null> => {
        await this.sim.wait();
        this.liveRead();
        return db.getPromo(code);
      },
      countPromoClaims: async (code: string): Promise<number> => {
        await this.sim.wait();
        this.liveRead();
        return db.countPromoClaims(code, this.userId);
      },
      getPayment: async (paymentId: string): Promise<Payment | null> => {
        await this.sim.wait();
        this.liveRead();
        const p = await db.getPayment(paymentId);
        return p !== null && p.userId === this.userId ? p : null;
      },
    };
  }

  save(changes: Changes): void {
    if (this.changes !== null) throw new Error("save() may be called once per unit of work");
    this.changes = changes;
  }
}
