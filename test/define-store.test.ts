import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InMemoryDbManager } from "../src/index.js";
import { ConfigurationError, ConflictError, StorageError } from "../src/core/errors.js";
import { defineStore, type Attempt } from "../src/store.js";
import { runDbManagerContract } from "../src/testing/index.js";
import type { LoadedState } from "../src/core/db/types.js";
import { billingStore } from "../src/modules/billing/store.js";
import { billingStorePart } from "../src/modules/billing/store-part.js";
import { deep } from "./fixtures/depth.js";

const test = { describe, it, expect, beforeAll, afterAll };

/** A store of the accounts and journal parts only: what a new backend has on its first day. */
function accountsOnly() {
  const m = new InMemoryDbManager();
  return defineStore({
    name: "parts",
    multiProcess: false,
    init: () => m.init(),
    accounts: {
      transaction: (userId, fn) => m.transaction(userId, fn),
      getAccount: (u) => m.getAccount(u),
      getGrant: (id) => m.getGrant(id),
      getReservation: (id) => m.getReservation(id),
      listGrants: (u, o) => m.listGrants(u, o),
      listReservations: (u, o) => m.listReservations(u, o),
      findDueGrants: (at, n, after) => m.findDueGrants(at, n, after),
      findExpiredReservations: (at, n, after) => m.findExpiredReservations(at, n, after),
    },
    journal: {
      listJournal: (u, q) => m.listJournal(u, q),
      insertLedgerEntry: (e) => m.insertLedgerEntry(e),
      listLedgerEntries: (q) => m.listLedgerEntries(q),
    },
  });
}

// The contract part by part: the parts this store lacks are skipped, each with its reason.
runDbManagerContract({
  name: "defineStore, accounts and journal only",
  create: async () => accountsOnly(),
  propertyRuns: deep(20),
  raceSize: 200,
  test,
  skip: {
    subscriptions: "no subscriptions part yet",
    promos: "no promos part yet",
    outbox: "no outbox part yet",
  },
});

const EMPTY: LoadedState = { account: null, grants: [], reservations: [], idempotent: null };

/**
 * A unit-of-work part whose commits fail with `failures` (then succeed), counting what happens.
 * With `locked`: a `beginLocked` too, whose attempts' commits fail with `locked.failures` (and
 * whose begin throws `locked.refused` when given), counted apart in `log.locked`.
 */
function attempts(failures: unknown[], locked?: { failures: unknown[]; refused?: unknown }) {
  const log = { begun: 0, committed: 0, rolledBack: 0, locked: 0 };
  const begin = (userId: string, queue = failures): Attempt => {
    log.begun++;
    return {
      userId,
      load: () => EMPTY,
      getGrants: async () => [],
      getReservation: async () => null,
      save: () => {},
      commit: () => {
        const failure = queue.shift();
        if (failure !== undefined) throw failure;
        log.committed++;
      },
      rollback: () => {
        log.rolledBack++;
      },
    };
  };
  const fail = () => Promise.reject(new Error("disk on fire"));
  const store = defineStore({
    name: "unit",
    multiProcess: true,
    maxAttempts: 3,
    init: () => {},
    close: () => {
      closes++;
    },
    accounts: {
      begin: (userId) => begin(userId),
      ...(locked !== undefined && {
        beginLocked: (userId: string) => {
          log.locked++;
          if (locked.refused !== undefined) throw locked.refused;
          return begin(userId, locked.failures);
        },
      }),
      getAccount: fail,
      getGrant: async () => null,
      getReservation: async () => null,
      listGrants: async () => [],
      listReservations: async () => [],
      findDueGrants: async () => [],
      findExpiredReservations: async () => [],
    },
    journal: { listJournal: async () => [], insertLedgerEntry: async () => {}, listLedgerEntries: async () => [] },
  });
  let closes = 0;
  return { store, log, closes: () => closes };
}

describe("defineStore", () => {
  it("hands on the accounts part's optional look-up of a commit in doubt (`entryCommitted`), and has none without it", async () => {
    const m = new InMemoryDbManager();
    const accounts = accountsOnly();
    expect(accounts.entryCommitted).toBeUndefined();
    const asked: string[] = [];
    const store = defineStore({
      name: "look-up",
      multiProcess: true,
      init: () => {},
      accounts: {
        transaction: (userId, fn) => m.transaction(userId, fn),
        entryCommitted: (userId, entry) => {
          asked.push(`${userId}:${entry.id}`);
          return true;
        },
        getAccount: (u) => m.getAccount(u),
        getGrant: (id) => m.getGrant(id),
        getReservation: (id) => m.getReservation(id),
        listGrants: (u, o) => m.listGrants(u, o),
        listReservations: (u, o) => m.listReservations(u, o),
        findDueGrants: (at, n, after) => m.findDueGrants(at, n, after),
        findExpiredReservations: (at, n, after) => m.findExpiredReservations(at, n, after),
      },
      journal: { listJournal: async () => [], insertLedgerEntry: async () => {}, listLedgerEntries: async () => [] },
    });
    await expect(store.entryCommitted?.("u", { id: "e1" } as never)).resolves.toBe(true);
    expect(asked).toEqual(["u:e1"]);
  });

  it("runs a unit of work again after a commit that met a conflict, and gives up after maxAttempts", async () => {
    const { store, log } = attempts([new ConflictError("moved"), new ConflictError("moved")]);
    expect(await store.transaction("u", () => 7)).toBe(7);
    expect(log).toEqual({ begun: 3, committed: 1, rolledBack: 2, locked: 0 });

    const three = attempts([1, 2, 3].map(() => new ConflictError("moved")));
    const error = await three.store.transaction("u", () => 7).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConflictError);
    expect((error as Error).message).toBe(
      "[credit-management] [unit] gave up on a unit of work on account u after 3 conflicting attempts",
    );
    expect(three.log.committed).toBe(0);
  });

  it("with beginLocked: after maxAttempts conflicts, runs once more from it, without giving up", async () => {
    const moved = () => new ConflictError("moved");
    const { store, log } = attempts([moved(), moved(), moved()], { failures: [] });
    expect(await store.transaction("u", () => 7)).toBe(7);
    expect(log).toEqual({ begun: 4, committed: 1, rolledBack: 3, locked: 1 });

    // Fewer conflicts than maxAttempts: the locked attempt is not needed.
    const two = attempts([moved(), moved()], { failures: [] });
    expect(await two.store.transaction("u", () => 7)).toBe(7);
    expect(two.log).toEqual({ begun: 3, committed: 1, rolledBack: 2, locked: 0 });

    // The locked attempt could not have its lock (or its commit still conflicted): ConflictError.
    for (const locked of [{ failures: [], refused: moved() }, { failures: [moved()] }]) {
      const stuck = attempts([moved(), moved(), moved()], locked);
      const error = await stuck.store.transaction("u", () => 7).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConflictError);
      expect((error as Error).message).toBe(
        "[credit-management] [unit] gave up on a unit of work on account u after 4 conflicting attempts",
      );
      expect(stuck.log).toMatchObject({ committed: 0, locked: 1 });
    }
  });

  it("does not run again a unit of work that threw, and reports a driver failure as StorageError naming the store", async () => {
    const { store, log } = attempts([]);
    const boom = new Error("boom");
    await expect(store.transaction("u", () => Promise.reject(boom))).rejects.toBe(boom);
    expect(log).toEqual({ begun: 1, committed: 0, rolledBack: 1, locked: 0 });

    const driver = attempts([new Error("SQLITE_IOERR")]);
    const commitError = await driver.store.transaction("u", () => 1).catch((e: unknown) => e);
    expect(commitError).toBeInstanceOf(StorageError);
    expect((commitError as Error).message).toBe("[credit-management] [unit] transaction failed: SQLITE_IOERR");

    const readError = await store.getAccount("u").catch((e: unknown) => e);
    expect(readError).toBeInstanceOf(StorageError);
    expect((readError as Error).message).toBe("[credit-management] [unit] getAccount failed: disk on fire");
  });

  it("runs the units of work of one account one after another", async () => {
    const { store } = attempts([]);
    const order: string[] = [];
    const unit = (name: string) => async () => {
      order.push(`${name} start`);
      await new Promise((r) => setTimeout(r, 5));
      order.push(`${name} end`);
    };
    await Promise.all([
      store.transaction("u", unit("a")),
      store.transaction("u", unit("b")),
      store.transaction("v", unit("c")),
    ]);
    expect(order.slice(0, 2)).toEqual(["a start", "c start"]);
    expect(order.indexOf("b start")).toBeGreaterThan(order.indexOf("a end"));
  });

  it("answers the methods of a part it lacks with ConfigurationError, says so in its capabilities, and closes once", async () => {
    const { store, closes } = attempts([]);
    expect(store.capabilities).toEqual({
      multiProcess: true,
      parts: { subscriptions: false, outbox: false },
    });
    // No `bindPart`: a module's part does not bind, and the module refuses its calls.
    expect(store.usePart?.(billingStorePart)).toBeUndefined();
    await expect(billingStore(store).getPromo("X")).rejects.toBeInstanceOf(ConfigurationError);
    await expect(store.insertPlan({} as never)).rejects.toThrow(
      "[credit-management] [unit] has no subscriptions part (insertPlan)",
    );
    await Promise.all([store.close(), store.close()]);
    await store.close();
    expect(closes()).toBe(1);
  });
});
