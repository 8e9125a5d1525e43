/**
 * A commit sent whose answer is lost (docs/concepts.md, "Certain and uncertain errors"): a store
 * over the in-memory one that, once armed, commits (or not) the next unit of work and then fails it
 * as a lost connection would (`OutcomeUnknownError`), and can stay unreachable for a while. The
 * call must answer the real outcome: its result when the commit landed, a `StorageError` (nothing
 * applied) when it did not, and `OutcomeUnknownError` with the ids to learn it by when the store
 * does not answer within `outcomeWaitMs`. The real stores are cut for real in
 * test/postgres-robustness.test.ts, test/mongodb.test.ts and test/citus.test.ts.
 */
import { describe, expect, it, vi } from "vitest";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import { outcomeUnknown } from "../src/core/db/store/errors.js";
import type { DbTransaction } from "../src/core/db/types.js";
import { OutcomeUnknownError, StorageError } from "../src/core/errors.js";
import { errorResponse } from "../src/http/router.js";
import type { JournalEntry } from "../src/core/models/index.js";
import { createCreditManager } from "../src/manager.js";

class Cut extends Error {}

class DoubtfulStore extends InMemoryDbManager {
  entryCommitted?: (userId: string, entry: JournalEntry) => Promise<boolean>;
  /** The next unit of work that saves fails after its commit: applied, or not. */
  armed: "applied" | "lost" | null = null;
  /** After the cut, for this long (ms), every unit of work fails as an unreachable store. */
  downFor = 0;
  private downUntil = 0;
  lookups = 0;

  private cut(): void {
    this.armed = null;
    this.downUntil = Date.now() + this.downFor;
  }

  up(): void {
    this.downUntil = 0;
  }

  override async transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T): Promise<T> {
    if (Date.now() < this.downUntil) {
      this.lookups++;
      throw new StorageError("[credit-management] [test] the store is unreachable");
    }
    const mode = this.armed;
    if (mode === null) return super.transaction(userId, fn);
    let saved = false;
    const run = (tx: DbTransaction) =>
      fn(
        new Proxy(tx, {
          get: (target, key) => {
            const value = Reflect.get(target, key, target) as unknown;
            if (key !== "save" || typeof value !== "function") return value;
            return (changes: unknown) => {
              saved = true;
              return (value as (c: unknown) => unknown).call(target, changes);
            };
          },
        }),
      );
    if (mode === "applied") {
      const result = await super.transaction(userId, run);
      if (!saved) return result;
      this.cut();
      throw outcomeUnknown("test", new Error("Connection terminated unexpectedly"));
    }
    try {
      return await super.transaction(userId, async (tx) => {
        const result = await run(tx);
        if (saved) throw new Cut(); // never applied
        return result;
      });
    } catch (error) {
      if (!(error instanceof Cut)) throw error;
      this.cut();
      throw outcomeUnknown("test", new Error("Connection terminated unexpectedly"));
    }
  }
}

async function setUp(outcomeWaitMs?: number) {
  const db = new DoubtfulStore();
  const manager = await createCreditManager({ db, ...(outcomeWaitMs === undefined ? {} : { outcomeWaitMs }) });
  await manager.credits.addCredits("u", 100);
  return { db, credits: manager.credits };
}

describe("a commit whose answer was lost", () => {
  it("that landed: the call answers its result, once the store answers again", async () => {
    const { db, credits } = await setUp();
    db.armed = "applied";
    db.downFor = 150;
    const entry = await credits.deductCredits("u", 7);
    expect(entry).toMatchObject({ type: "deduct", amount: 7, balanceAfter: 93 });
    expect(db.lookups).toBeGreaterThan(0); // it asked while the store was down, and again after
    expect((await credits.getUserCreditsInfo("u")).balance).toBe(93);
    expect((await credits.audit("u")).ok).toBe(true);
  });

  it("that did not land: a StorageError, and nothing is applied", async () => {
    const { db, credits } = await setUp();
    db.armed = "lost";
    const error = await credits.deductCredits("u", 7, { idempotencyKey: "k" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect(error).not.toBeInstanceOf(OutcomeUnknownError);
    expect((error as Error).message).toMatch(/nothing of it was applied/);
    expect((await credits.getUserCreditsInfo("u")).balance).toBe(100);
    // The same key applies it now, once.
    expect((await credits.deductCredits("u", 7, { idempotencyKey: "k" })).balanceAfter).toBe(93);
  });

  it("while the store stays down past outcomeWaitMs: OutcomeUnknownError with the entry id and the key; the key then tells", async () => {
    const { db, credits } = await setUp(100);
    db.armed = "applied";
    db.downFor = 60_000;
    const started = Date.now();
    const error = (await credits
      .deductCredits("u", 7, { idempotencyKey: "k" })
      .catch((e: unknown) => e)) as OutcomeUnknownError;
    expect(Date.now() - started).toBeLessThan(2000);
    expect(error).toBeInstanceOf(OutcomeUnknownError);
    expect(error).toMatchObject({ code: "OUTCOME_UNKNOWN", status: 503, userId: "u", idempotencyKey: "k" });
    expect(error.entryIds).toHaveLength(1);
    expect(error.message).toMatch(/may or may not be applied; retry it with the same idempotency key \("k"\)/);
    db.up();
    const [stored] = (await credits.getCreditHistory("u", { limit: 1 })).items;
    expect(stored?.id).toBe(error.entryIds[0]);
    const again = await credits.deductCredits("u", 7, { idempotencyKey: "k" });
    expect(again.id).toBe(error.entryIds[0]); // the first result: applied once
    expect((await credits.getUserCreditsInfo("u")).balance).toBe(93);
  });

  it("a store that answers the look-up itself (`entryCommitted`) is asked instead of a unit of work, again while it cannot tell yet", async () => {
    const { db, credits } = await setUp();
    const asked: string[] = [];
    // The store's own answer: "cannot tell yet" twice (a commit still in progress), then what its journal holds.
    db.entryCommitted = async (userId: string, entry: JournalEntry) => {
      asked.push(entry.id);
      if (asked.length <= 2) throw new StorageError("[credit-management] [test] a commit is still in progress");
      const [found] = await db.listJournal(userId, { order: "asc", afterSeq: entry.seq - 1, limit: 1 });
      return found?.id === entry.id;
    };
    const units = vi.spyOn(db, "transaction");
    db.armed = "applied";
    const entry = await credits.deductCredits("u", 7);
    expect(entry.balanceAfter).toBe(93);
    expect(asked).toEqual([entry.id, entry.id, entry.id]);
    expect(units).toHaveBeenCalledTimes(1); // the deduction's own: the look-ups ran no unit of work
    db.armed = "lost";
    const error = await credits.deductCredits("u", 7).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect(error).not.toBeInstanceOf(OutcomeUnknownError);
    expect((await credits.getUserCreditsInfo("u")).balance).toBe(93);
  });

  it("without a key: the message names the entry id to look for", async () => {
    const { db, credits } = await setUp(0);
    db.armed = "lost";
    db.downFor = 60_000;
    const error = (await credits.deductCredits("u", 7).catch((e: unknown) => e)) as OutcomeUnknownError;
    expect(error).toBeInstanceOf(OutcomeUnknownError);
    expect(error.idempotencyKey).toBeUndefined();
    expect(error.message).toContain(`look for journal entry ${error.entryIds[0] as string}`);
  });

  it("over HTTP: 503 OUTCOME_UNKNOWN with the ids and the key, not the generic store message", async () => {
    const error = new OutcomeUnknownError("lost", { userId: "u", entryIds: ["e1"], idempotencyKey: "k" });
    const response = errorResponse(error);
    expect(response.status).toBe(503);
    const body = (await response.json()) as { error: { code: string; message: string; details: unknown } };
    expect(body.error.code).toBe("OUTCOME_UNKNOWN");
    expect(body.error.message).toMatch(/may or may not be applied/);
    expect(body.error.details).toEqual({ userId: "u", entryIds: ["e1"], idempotencyKey: "k" });
    expect((await errorResponse(new StorageError("down")).json()) as unknown).toMatchObject({
      error: { code: "STORAGE_ERROR" },
    });
  });
});
