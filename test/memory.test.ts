import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DbTransaction } from "../src/core/db/types.js";
import { AccountWork } from "../src/core/domain/account-work.js";
import { compareGrants } from "../src/core/domain/order.js";
import { CreditService, InMemoryDbManager } from "../src/index.js";
import { type JournalEntry } from "../src/models-public.js";
import { runDbManagerContract } from "../src/testing/index.js";
import { deep } from "./fixtures/depth.js";

const test = { describe, it, expect, beforeAll, afterAll };

// One store in one process: the "peer" is the same store, so the services over each (their plan,
// promo and info caches) are the ones that differ.
runDbManagerContract({
  name: "memory",
  create: async () => new InMemoryDbManager(),
  createPeer: async (db) => db,
  propertyRuns: deep(300),
  usageRuns: deep(40),
  test,
});

/** A unit of work that adds `amount` to `u`; answers the balance after. */
function add(u: string, amount: number) {
  return async (tx: DbTransaction) => {
    const work = new AccountWork(u, await tx.load(), new Date(), randomUUID);
    work.add(
      amount,
      { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
      {},
    );
    await tx.save(work.changes());
    return work.account.balance;
  };
}

describe("in-memory store: units of work and the per-account lock", () => {
  it("keeps copies of what a unit of work saved: a later unit of work changes none of the first one's objects", async () => {
    // The first save on a new account, and a grant's first version, were once kept as the very
    // objects handed to save(): the next unit of work wrote its account and grant into them, so a
    // caller holding the first unit's changes (the simulation's log of commits) saw a balance and a
    // grant of a later one.
    const db = new InMemoryDbManager();
    let first!: ReturnType<AccountWork["changes"]>;
    await db.transaction("u", async (tx) => {
      const work = new AccountWork("u", await tx.load(), new Date(), randomUUID);
      work.add(
        50,
        { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
        {},
      );
      first = work.changes();
      await tx.save(first);
    });
    const seen = structuredClone(first);
    await db.transaction("u", add("u", 74));
    await db.transaction("u", async (tx) => {
      const work = new AccountWork("u", await tx.load(), new Date(), randomUUID);
      work.deduct(20, {}, { allowDebt: false, overdraftLimit: null });
      await tx.save(work.changes());
    });
    expect((await db.getAccount("u"))?.balance).toBe(104);
    expect(first).toEqual(seen);
  });

  it("answers a unit of work with its result, committed", async () => {
    const db = new InMemoryDbManager();
    expect(await db.transaction("u", add("u", 7))).toBe(7);
    expect((await db.getAccount("u"))?.balance).toBe(7);
    expect(await db.listJournal("u", { order: "asc", limit: 10 })).toHaveLength(1);
  });

  it("saves nothing of a unit of work that fails after its save, and frees the account", async () => {
    const db = new InMemoryDbManager();
    await expect(
      db.transaction("u", async (tx) => {
        await add("u", 5)(tx);
        throw new Error("boom after save");
      }),
    ).rejects.toThrow("boom after save");
    expect(await db.getAccount("u")).toBeNull();
    // Nothing was ever saved to the account: it left no trace, and the lock is free.
    expect(db.user("u")).toBeUndefined();
    expect(await db.transaction("u", add("u", 3))).toBe(3);
  });

  it("runs units of work on one account one after another, in order, and others meanwhile", async () => {
    const db = new InMemoryDbManager();
    const order: string[] = [];
    let release!: () => void;
    const first = db.transaction("u", async (tx) => {
      order.push("first starts");
      await new Promise<void>((resolve) => (release = resolve));
      const balance = await add("u", 1)(tx);
      order.push("first ends");
      return balance;
    });
    const second = db.transaction("u", async (tx) => {
      order.push("second runs");
      return add("u", 10)(tx);
    });
    // Other accounts are not blocked meanwhile.
    expect(await db.transaction("v", add("v", 2))).toBe(2);
    expect(order).toEqual(["first starts"]);
    release();
    expect(await first).toBe(1);
    expect(await second).toBe(11);
    expect(order).toEqual(["first starts", "first ends", "second runs"]);
  });

  it("hands a unit of work the open grants in burn-down order, whatever order they opened in", async () => {
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db });
    const inDays = (d: number) => new Date(Date.now() + d * 86_400_000);
    const grantOf = (e: JournalEntry) => e.grants[0]?.grantId;
    // Opened in another order than burn-down's: lower priority first, then soonest expiry, never-expiring last.
    const never = grantOf(await credits.addCredits("u", 10));
    const later = grantOf(await credits.addCredits("u", 10, { priority: 5 }));
    const month = grantOf(await credits.addCredits("u", 10, { expiresAt: inDays(30) }));
    const soon = grantOf(await credits.addCredits("u", 10, { expiresAt: inDays(2) }));
    const expected = [soon, month, never, later];
    const loaded = () => db.transaction("u", (tx) => tx.load());
    expect((await loaded()).grants.map((g) => g.id)).toEqual(expected);
    // A hold takes every credit of the first grant, which leaves the open grants; its release gives
    // them back, and the grant opens again in its place, not at the end.
    const hold = await credits.reserveCredits("u", 10);
    expect((await loaded()).grants.map((g) => g.id)).toEqual([month, never, later]);
    await credits.releaseReservedCredits(hold.id);
    const state = await loaded();
    expect(state.grantsInOrder).toBe(true);
    expect(state.grants.map((g) => g.id)).toEqual(expected);
    expect([...state.grants].sort(compareGrants).map((g) => g.id)).toEqual(expected);
    // Deductions, which read only the grants they draw from, draw in that order.
    const drawn: (string | undefined)[] = [];
    for (let i = 0; i < 4; i++) drawn.push(grantOf(await credits.deductCredits("u", 10)));
    expect(drawn).toEqual(expected);
  });
});
