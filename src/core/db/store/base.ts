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
 * @beta
 */
export abstract class StoreBase implements DbManager {
  /** The store's name (`memory`, `postgres`, `mongodb`, `sqlite`, …), in diagnostics and errors. */
  abstract readonly name: string;
  /** What the store supports: its transactions and its optional parts. */
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

  /** Creates the store's tables (or collections) and indexes where missing; call once before use. */
  abstract init(): Promise<void>;
  /**
   * Runs `fn` as one unit of work on the user's account: its writes commit together or not at all; `fn` runs
   * again after a write conflict.
   */
  abstract transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T>;
  /** The account; null when the user has none. */
  abstract getAccount(userId: string): Promise<Account | null>;
  /** The grant; null when there is none (or, with `userId`, it is another user's). */
  abstract getGrant(grantId: string, userId?: string): Promise<Grant | null>;
  /** The hold; null when there is none (or, with `userId`, it is another user's). */
  abstract getReservation(reservationId: string, userId?: string): Promise<Reservation | null>;
  /** The user's grants: the open ones, or every one with `includeInactive`. */
  abstract listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]>;
  /** The user's holds, of one status when `status` is given. */
  abstract listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]>;
  /** Open grants expired by `asOf`, at most `limit`, after the cursor. */
  abstract findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]>;
  /** Active holds expired by `asOf`, at most `limit`, after the cursor. */
  abstract findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]>;
  /** The user's journal entries the query selects, in sequence order. */
  abstract listJournal(userId: string, query: JournalQuery): Promise<JournalEntry[]>;
  /** Appends an audit-ledger event. */
  abstract insertLedgerEntry(entry: LedgerEntry): Promise<void>;
  /** The audit-ledger events the query selects. */
  abstract listLedgerEntries(query: LedgerQuery): Promise<LedgerEntry[]>;

  /** Releases what the store made, once: later calls wait for the first. */
  close(): Promise<void> {
    return (this.closing ??= this.closeOnce());
  }

  /** What `close()` does, the first time. */
  protected async closeOnce(): Promise<void> {}

  // Plans and subscriptions.
  /** Stores a new plan. */
  async insertPlan(plan: Plan): Promise<void> {
    return this.parts.subscriptions.insertPlan(plan);
  }
  /** The plan; null when there is none. */
  async getPlan(planId: string): Promise<Plan | null> {
    return this.parts.subscriptions.getPlan(planId);
  }
  /** The plans, the inactive ones too with `includeInactive`. */
  async listPlans(options: { includeInactive: boolean }): Promise<Plan[]> {
    return this.parts.subscriptions.listPlans(options);
  }
  /** Saves a plan's new state if its version is still `expectedVersion`; resolves to whether it did. */
  async updatePlan(plan: Plan, expectedVersion: number): Promise<boolean> {
    return this.parts.subscriptions.updatePlan(plan, expectedVersion);
  }
  /** Deletes a plan if its version is still `expectedVersion`; resolves to whether it did. */
  async deletePlan(planId: string, expectedVersion: number): Promise<boolean> {
    return this.parts.subscriptions.deletePlan(planId, expectedVersion);
  }
  /** Whether any subscription is on the plan. */
  async planHasSubscribers(planId: string): Promise<boolean> {
    return this.parts.subscriptions.planHasSubscribers(planId);
  }
  /** Stores a new subscription. */
  async insertSubscription(subscription: Subscription): Promise<void> {
    return this.parts.subscriptions.insertSubscription(subscription);
  }
  /** The subscription; null when there is none (or, with `userId`, it is another user's). */
  async getSubscription(subscriptionId: string, userId?: string): Promise<Subscription | null> {
    return this.parts.subscriptions.getSubscription(subscriptionId, userId);
  }
  /** The user's active subscription; null when there is none. */
  async getActiveSubscription(userId: string): Promise<Subscription | null> {
    return this.parts.subscriptions.getActiveSubscription(userId);
  }
  /** The user's subscriptions. */
  async listSubscriptions(userId: string): Promise<Subscription[]> {
    return this.parts.subscriptions.listSubscriptions(userId);
  }
  /** Saves a subscription's new state if its version is still `expectedVersion`; resolves to whether it did. */
  async updateSubscription(subscription: Subscription, expectedVersion: number): Promise<boolean> {
    return this.parts.subscriptions.updateSubscription(subscription, expectedVersion);
  }
  /** Subscriptions whose next run is due by `asOf`, at most `limit`, after the cursor. */
  async findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor): Promise<Subscription[]> {
    return this.parts.subscriptions.findDueSubscriptions(asOf, limit, after);
  }

  // The outbox.
  /** Adds outbox rows (a row whose dedupe key the user already has is skipped); resolves to how many were added. */
  async insertNotifications(rows: readonly Notification[]): Promise<number> {
    return this.parts.outbox.insertNotifications(rows);
  }
  /** Claims outbox rows due for delivery, for the dispatcher holding `token`. */
  async claimNotifications(query: ClaimQuery): Promise<Notification[]> {
    return this.parts.outbox.claimNotifications(query);
  }
  /** Records a delivery attempt's outcome on a row still claimed with `token`; resolves to whether it was. */
  async completeNotification(id: string, token: string, update: NotificationUpdate, userId?: string): Promise<boolean> {
    return this.parts.outbox.completeNotification(id, token, update, userId);
  }
  /** Deletes at most `limit` delivered or failed rows older than `before`; resolves to how many. */
  async purgeNotifications(before: Date, limit: number): Promise<number> {
    return this.parts.outbox.purgeNotifications(before, limit);
  }
  /** The user's outbox rows, newest first, of one status when given. */
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
