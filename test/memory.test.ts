import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DbTransaction } from "../src/db/types.js";
import { AccountWork } from "../src/domain/account-work.js";
import { InMemoryDbManager } from "../src/index.js";
import { runDbManagerContract } from "../src/testing/index.js";

const test = { describe, it, expect, beforeAll, afterAll };

// One store in one process: the "peer" is the same store, so the services over each (their plan,
// promo and info caches) are the ones that differ.
runDbManagerContract({
  name: "memory",
  create: async () => new InMemoryDbManager(),
  createPeer: async (db) => db,
  propertyRuns: 300,
  test,
});

/** A unit of work that adds `amount` to `u` (synchronously: the in-memory store answers at once). */
function addNow(u: string, amount: number) {
  return (tx: DbTransaction) => {
    const state = tx.load();
    if (state instanceof Promise) throw new Error("the in-memory store loads synchronously");
    const work = new AccountWork(u, state, new Date(), randomUUID);
    work.add(
      amount,
      { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
      {},
    );
    void tx.save(work.changes());
    return work.account.balance;
  };
}

describe("in-memory store: transactionNow and the per-account lock", () => {
  it("answers a synchronous unit of work with its result, already committed", async () => {
    const db = new InMemoryDbManager();
    const result = db.transactionNow("u", addNow("u", 7));
    expect(result).toBe(7); // the value itself, not a promise
    expect((await db.getAccount("u"))?.balance).toBe(7);
    expect(await db.listJournal("u", { order: "asc", limit: 10 })).toHaveLength(1);
  });

  it("throws a failing unit of work at once, saves nothing and frees the account", async () => {
    const db = new InMemoryDbManager();
    expect(() =>
      db.transactionNow("u", (tx) => {
        addNow("u", 5)(tx);
        throw new Error("boom after save");
      }),
    ).toThrow("boom after save");
    expect(await db.getAccount("u")).toBeNull();
    // Nothing was ever saved to the account: it left no trace, and the lock is free.
    expect(db.user("u")).toBeUndefined();
    expect(db.transactionNow("u", addNow("u", 3))).toBe(3);
  });

  it("answers with a promise while another unit of work holds the account, and keeps their order", async () => {
    const db = new InMemoryDbManager();
    const order: string[] = [];
    let release!: () => void;
    const first = db.transaction("u", async (tx) => {
      order.push("first starts");
      await new Promise<void>((resolve) => (release = resolve));
      const balance = addNow("u", 1)(tx);
      order.push("first ends");
      return balance;
    });
    const second = db.transactionNow("u", (tx) => {
      order.push("second runs");
      return addNow("u", 10)(tx);
    });
    expect(second).toBeInstanceOf(Promise);
    expect(order).toEqual(["first starts"]);
    // Other accounts are not blocked meanwhile.
    expect(db.transactionNow("v", addNow("v", 2))).toBe(2);
    release();
    expect(await first).toBe(1);
    expect(await second).toBe(11);
    expect(order).toEqual(["first starts", "first ends", "second runs"]);
  });
});
