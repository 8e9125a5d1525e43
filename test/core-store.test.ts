/**
 * A store written against the core contract alone (docs/writing-a-store.md, "The core contract"):
 * a class of its own — not `defineStore`, not `StoreBase` — that implements `DbManager` and the
 * unit of work's `DbTransaction` and nothing of a module's part. Its methods forward to an
 * in-memory store, but the suite sees only what the class declares: it must pass every part of the
 * contract but the modules' it leaves out, and the billing module must refuse it plainly. The core's
 * own in-memory store (`CoreInMemoryDbManager`, `credit-management/core`) is held to the same suite.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createCreditManager } from "../src/index.js";
import { CoreInMemoryDbManager } from "../src/core/index.js";
import { ConfigurationError } from "../src/core/errors.js";
import type {
  DbCapabilities,
  DbManager,
  DbTransaction,
  JournalQuery,
  LedgerQuery,
  LoadRequest,
  ScanCursor,
} from "../src/core/db/types.js";
import type { ClaimQuery, NotificationUpdate, OutboxQuery } from "../src/core/db/types-notifications.js";
import type { SubscriptionCursor } from "../src/core/db/types-subscriptions.js";
import type { Changes } from "../src/core/domain/state.js";
import type { LedgerEntry, Notification, Plan, Subscription } from "../src/core/models/index.js";
import { runDbManagerContract } from "../src/testing/index.js";
import { deep } from "./fixtures/depth.js";

class CoreOnlyStore implements DbManager {
  readonly name = "core-only";
  readonly capabilities: DbCapabilities = {
    multiProcess: false,
    parts: { subscriptions: true, outbox: true },
  };
  private readonly m = new CoreInMemoryDbManager();

  init() {
    return this.m.init();
  }
  close() {
    return this.m.close();
  }
  transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> {
    // The unit of work sees a transaction of the core's five methods, none of a module's.
    return this.m.transaction(userId, (tx) =>
      fn({
        userId: tx.userId,
        load: (request?: LoadRequest) => tx.load(request),
        getGrants: (ids) => tx.getGrants(ids),
        getReservation: (id) => tx.getReservation(id),
        ...(tx.getCharge === undefined ? {} : { getCharge: (id: string) => tx.getCharge!(id) }),
        save: (changes: Changes) => tx.save(changes),
      }),
    );
  }
  getAccount(userId: string) {
    return this.m.getAccount(userId);
  }
  getGrant(id: string) {
    return this.m.getGrant(id);
  }
  getReservation(id: string) {
    return this.m.getReservation(id);
  }
  listGrants(userId: string, options?: Parameters<DbManager["listGrants"]>[1]) {
    return this.m.listGrants(userId, options);
  }
  listReservations(userId: string, options?: Parameters<DbManager["listReservations"]>[1]) {
    return this.m.listReservations(userId, options);
  }
  findDueGrants(asOf: Date, limit: number, after?: ScanCursor) {
    return this.m.findDueGrants(asOf, limit, after);
  }
  findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor) {
    return this.m.findExpiredReservations(asOf, limit, after);
  }
  listJournal(userId: string, query: JournalQuery) {
    return this.m.listJournal(userId, query);
  }
  insertLedgerEntry(entry: LedgerEntry) {
    return this.m.insertLedgerEntry(entry);
  }
  listLedgerEntries(query: LedgerQuery) {
    return this.m.listLedgerEntries(query);
  }
  insertNotifications(rows: readonly Notification[]) {
    return this.m.insertNotifications(rows);
  }
  claimNotifications(query: ClaimQuery) {
    return this.m.claimNotifications(query);
  }
  completeNotification(id: string, token: string, update: NotificationUpdate, userId?: string) {
    return this.m.completeNotification(id, token, update, userId);
  }
  purgeNotifications(before: Date, limit: number) {
    return this.m.purgeNotifications(before, limit);
  }
  listNotifications(userId: string, query: OutboxQuery) {
    return this.m.listNotifications(userId, query);
  }
  insertPlan(plan: Plan) {
    return this.m.insertPlan(plan);
  }
  getPlan(id: string) {
    return this.m.getPlan(id);
  }
  listPlans(options: { includeInactive: boolean }) {
    return this.m.listPlans(options);
  }
  updatePlan(plan: Plan, expectedVersion: number) {
    return this.m.updatePlan(plan, expectedVersion);
  }
  deletePlan(id: string, expectedVersion: number) {
    return this.m.deletePlan(id, expectedVersion);
  }
  planHasSubscribers(id: string) {
    return this.m.planHasSubscribers(id);
  }
  insertSubscription(s: Subscription) {
    return this.m.insertSubscription(s);
  }
  getSubscription(id: string) {
    return this.m.getSubscription(id);
  }
  getActiveSubscription(userId: string) {
    return this.m.getActiveSubscription(userId);
  }
  listSubscriptions(userId: string) {
    return this.m.listSubscriptions(userId);
  }
  updateSubscription(s: Subscription, expectedVersion: number) {
    return this.m.updateSubscription(s, expectedVersion);
  }
  findDueSubscriptions(asOf: Date, limit: number, after?: SubscriptionCursor) {
    return this.m.findDueSubscriptions(asOf, limit, after);
  }
}

describe("the core contract", () => {
  it("is at most 30 methods of a store and 5 of its transaction", () => {
    const methods = Object.getOwnPropertyNames(CoreOnlyStore.prototype).filter((n) => n !== "constructor");
    expect(methods.length).toBeLessThanOrEqual(30);
    expect(methods).not.toContain("getPromo");
  });

  it("is all the billing module needs to refuse plainly: its calls answer ConfigurationError", async () => {
    const manager = await createCreditManager({ db: new CoreOnlyStore() });
    try {
      await manager.credits.addCredits("u", 10);
      expect((await manager.credits.getUserCreditsInfo("u")).balance).toBe(10);
      await expect(manager.promos.createPromo({ code: "WELCOME", credits: 5 })).rejects.toBeInstanceOf(
        ConfigurationError,
      );
      await expect(manager.promos.claimPromo("u", "WELCOME")).rejects.toThrow("has no promos part");
    } finally {
      await manager.close();
    }
  });
});

// Every part but the modules' each store leaves out (each skip says why): a store of the core
// contract alone, and the core's own in-memory store (the core's rows, no module's part).
const coreSuite = { propertyRuns: deep(20), raceSize: 200, test: { describe, it, expect, beforeAll, afterAll } };
runDbManagerContract({
  ...coreSuite,
  name: "a store of the core contract only",
  create: async () => new CoreOnlyStore(),
  skip: { promos: "a store of the core contract only: no promos part (the billing module's)" },
});
runDbManagerContract({
  ...coreSuite,
  name: "CoreInMemoryDbManager",
  create: async () => new CoreInMemoryDbManager(),
  skip: { promos: "the core's store: the billing module's part is InMemoryDbManager's" },
});
