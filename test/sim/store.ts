import { ConflictError, StorageError } from "../../src/errors.js";
import type { InMemoryDbManager } from "../../src/db/memory/index.js";
import type { Changes, DbManager, DbTransaction, LoadRequest, LoadedState } from "../../src/store.js";
import type { Grant, Payment, Promo, Reservation, Subscription } from "../../src/models/index.js";
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
  /** The store the services use. */
  readonly db: DbManager;

  constructor(
    readonly inner: InMemoryDbManager,
    readonly scheduler: Scheduler,
    /** Only to prove the simulation catches a store that loses what it answered as done. */
    private readonly loseCommits?: Prng,
  ) {
    this.db = new Proxy(inner, {
      get: (target, prop, receiver) => {
        if (prop === "transaction") return this.transaction;
        // Without it the services take the path every database takes (a promise per unit of work).
        if (prop === "transactionNow") return undefined;
        const value: unknown = Reflect.get(target, prop, receiver);
        if (typeof value !== "function") return value;
        const method = value as (...args: unknown[]) => unknown;
        if (typeof prop !== "string" || DIRECT.has(prop)) return method.bind(target);
        return (...args: unknown[]) => this.call(prop, args, () => method.apply(target, args));
      },
    }) as unknown as DbManager;
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

  /** `DbManager.transaction`: optimistic, retried on conflicts at the commit, like a database adapter. */
  readonly transaction = async <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> => {
    for (let attempt = 1; ; attempt++) {
      const tx = new SimTransaction(this, userId);
      const value = await fn(tx);
      const changes = tx.changes;
      if (changes === null) return value;
      const verdict = await this.scheduler.point("commit");
      try {
        if (verdict === "error") throw new StorageError("[sim] injected: storage error before the commit");
        if (verdict === "conflict") throw new ConflictError("[sim] injected: write conflict at the commit");
        // Synchronous: the seq guard, the unique keys and the write happen with nothing in between.
        if (this.loseCommits?.chance(0.05) !== true)
          this.inner.transactionNow(userId, (t) => {
            t.load();
            t.save(changes);
          });
      } catch (error) {
        if (error instanceof ConflictError && attempt < MAX_ATTEMPTS) continue;
        throw error;
      }
      this.events.push({ kind: "commit", op: currentOp(), userId, changes });
      const ack = await this.scheduler.point("ack");
      if (ack === "error") throw new StorageError("[sim] injected: committed, but the answer was lost");
      return value;
    }
  };

  /** @internal */
  async wait(): Promise<void> {
    const verdict = await this.scheduler.point("load");
    if (verdict === "error") throw new StorageError("[sim] injected: a read inside a unit of work failed");
  }
}

class SimTransaction implements DbTransaction {
  changes: Changes | null = null;
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
  ) {}

  async load(request?: LoadRequest): Promise<LoadedState> {
    await this.sim.wait();
    // A snapshot, as a database transaction sees one: the state at the load, for every read of the
    // unit of work (the store's own lists move on as other units of work commit). The memory
    // store's methods compute their answers when called, so these three see one instant.
    const inner = this.sim.inner;
    const loaded = inner.transactionNow(this.userId, (t) => t.load(request)) as LoadedState;
    const grants = inner.listGrants(this.userId, { includeInactive: true });
    const holds = inner.listReservations(this.userId);
    const state = structuredClone(loaded);
    this.grants = new Map((await grants).map((g) => [g.id, g]));
    this.holds = new Map((await holds).map((r) => [r.id, r]));
    this.key = request?.idempotencyKey;
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
    return grantIds
      .map((id) => this.grants.get(id))
      .filter((g): g is Grant => g !== undefined)
      .map((g) => structuredClone(g));
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    await this.sim.wait();
    const r = this.holds.get(reservationId);
    return r === undefined ? null : structuredClone(r);
  }

  async getPromo(code: string): Promise<Promo | null> {
    await this.sim.wait();
    this.liveRead();
    return this.sim.inner.getPromo(code);
  }

  async countPromoClaims(code: string): Promise<number> {
    await this.sim.wait();
    this.liveRead();
    return this.sim.inner.countPromoClaims(code, this.userId);
  }

  async getPayment(paymentId: string): Promise<Payment | null> {
    await this.sim.wait();
    this.liveRead();
    const p = await this.sim.inner.getPayment(paymentId);
    return p !== null && p.userId === this.userId ? p : null;
  }

  save(changes: Changes): void {
    if (this.changes !== null) throw new Error("save() may be called once per unit of work");
    this.changes = changes;
  }
}
