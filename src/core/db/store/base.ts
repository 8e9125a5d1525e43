import type { Notification, Plan, Subscription } from "../../models/index.js";
import type { ClaimQuery, NotificationUpdate, OutboxQuery } from "../types-notifications.js";
import type { SubscriptionCursor } from "../types-subscriptions.js";
import type { Account, Grant, JournalEntry, LedgerEntry, Reservation } from "../../models/index.js";
import type { DbCapabilities, DbManager, DbTransaction, JournalQuery, LedgerQuery, ScanCursor } from "../types.js";
import type { SideParts } from "./parts.js";
import { ModuleParts, type BoundStorePart, type ModuleStorePart } from "../module-part.js";

/**
 * What every store shares, written once: `close()` that runs once however often it is called, and
 * the forwarding of plans and subscriptions and the outbox to the store's parts (`parts`). A store
 * writes its units of work, its reads and its parts; `defineStore` builds one from parts alone. A
 * module's part is bound by `usePart` (`bindPart`: the side of the store's dialect) and kept in
 * `modules` (docs/writing-a-store.md, "A module's part").
 */
export abstract class StoreBase implements DbManager {
  abstract readonly name: string;
  abstract readonly capabilities: DbCapabilities;
  /** The sub-stores this store forwards to (read at each call: a store may make them lazily). */
  protected abstract readonly parts: SideParts;
  private closing: Promise<void> | undefined;
  /**
   * The module parts bound to this store (`usePart`), in the order they were bound.
   *
   * @beta
   */
  readonly modules: ModuleParts = new ModuleParts();

  /**
   * Binds the side of this store's kind of a module's part (`ModuleStorePart`); undefined: none
   * (the default). Called once per module, by `usePart`.
   *
   * @beta
   */
  protected bindPart(_part: ModuleStorePart): BoundStorePart | undefined {
    return undefined;
  }

  /**
   * Binds a module's part (once per module id) and answers its reads; undefined when this store
   * has no side of it (docs/writing-a-store.md, "A module's part").
   *
   * @beta
   */
  usePart<Reads extends object>(part: ModuleStorePart<Reads>): Reads | undefined {
    // The bound side is the part's own side of this store's dialect, so its reads are the part's.
    return this.modules.use(part, (p) => this.bindPart(p))?.reads as Reads | undefined;
  }

  abstract init(): Promise<void>;
  abstract transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T>;
  abstract getAccount(userId: string): Promise<Account | null>;
  abstract getGrant(grantId: string, userId?: string): Promise<Grant | null>;
  abstract getReservation(reservationId: string, userId?: string): Promise<Reservation | null>;
  abstract listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]>;
  abstract listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]>;
  abstract findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]>;
  abstract findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]>;
  abstract listJournal(userId: string, query: JournalQuery): Promise<JournalEntry[]>;
  abstract insertLedgerEntry(entry: LedgerEntry): Promise<void>;
  abstract listLedgerEntries(query: LedgerQuery): Promise<LedgerEntry[]>;

  /** Releases what the store made, once: later calls wait for the first. */
  close(): Promise<void> {
    return (this.closing ??= this.closeOnce());
  }

  /** What `close()` does, the first time. */
  protected async closeOnce(): Promise<void> {}

  // Plans and subscriptions.
  async insertPlan(plan: Plan): Promise<void> {
    return this.parts.subscriptions.insertPlan(plan);
  }
  async getPlan(planId: string): Promise<Plan | null> {
    return this.parts.subscriptions.getPlan(planId);
  }
  async listPlans(options: { includeInactive: boolean }): Promise<Plan[]> {
    return this.parts.subscriptions.listPlans(options);
  }
  async updatePlan(plan: Plan, expectedVersion: number): Promise<boolean> {
    return this.parts.subscriptions.updatePlan(plan, expectedVersion);
  }
  async deletePlan(planId: string, expectedVersion: number): Promise<boolean> {
    return this.parts.subscriptions.deletePlan(planId, expectedVersion);
  }
  async planHasSubscribers(planId: string): Promise<boolean> {
    return this.parts.subscriptions.planHasSubscribers(planId);
  }
  async insertSubscription(subscription: Subscription): Promise<void> {
    return this.parts.subscriptions.insertSubscription(subscription);
  }
  async getSubscription(subscriptionId: string, userId?: string): Promise<Subscription | null> {
    return this.parts.subscriptions.getSubscription(subscriptionId, userId);
  }
  async getActiveSubscription(userId: string): Promise<Subscription | null> {
    return this.parts.subscriptions.getActiveSubscription(userId);
  }
  async listSubscriptions(userId: string): Promise<Subscription[]> {
    return this.parts.subscriptions.listSubscriptions(userId);
  }
  async updateSubscription(subscription: Subscription, expectedVersion: number): Promise<boolean> {
    return this.parts.subscriptions.updateSubscription(subscription, expectedVersion);
  }
  async findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<Subscription[]> {
    return this.parts.subscriptions.findDueSubscriptions(asOf, limit, after);
  }

  // The outbox.
  async insertNotifications(rows: readonly Notification[]): Promise<number> {
    return this.parts.outbox.insertNotifications(rows);
  }
  async claimNotifications(query: ClaimQuery): Promise<Notification[]> {
    return this.parts.outbox.claimNotifications(query);
  }
  async completeNotification(id: string, token: string, update: NotificationUpdate, userId?: string): Promise<boolean> {
    return this.parts.outbox.completeNotification(id, token, update, userId);
  }
  async purgeNotifications(before: Date, limit: number): Promise<number> {
    return this.parts.outbox.purgeNotifications(before, limit);
  }
  async listNotifications(
    userId: string,
    query: { status?: Notification["status"]; limit: number },
  ): Promise<Notification[]> {
    return this.parts.outbox.listNotifications(userId, query);
  }
  /** The outbox part's `listOutbox`, when it has one. */
  get listOutbox(): ((query: OutboxQuery) => Promise<Notification[]>) | undefined {
    const outbox = this.parts.outbox;
    if (typeof outbox.listOutbox !== "function") return undefined;
    return async (query) => (outbox.listOutbox as (q: OutboxQuery) => Notification[] | Promise<Notification[]>)(query);
  }
}
