import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InMemoryCache } from "../src/core/cache/index.js";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { ConfigurationError, ConflictError } from "../src/core/errors.js";
import { createCreditManager, type CreditManager } from "../src/manager.js";

const uri = process.env.CREDIT_MONGO_URI;
// reason: needs a MongoDB replica set (CREDIT_MONGO_URI); the run's closing block names it when skipped
describe.skipIf(!uri)("credit operations inside the application's session transaction (MongoDB)", () => {
  const dbName = `credit_test_tx_${process.pid}_${randomUUID().slice(0, 8)}`;
  const filePath = join(mkdtempSync(join(tmpdir(), "cm-tx-mongo-")), "ledger.jsonl");
  let client: MongoClient;
  let cache: InMemoryCache;
  let manager: CreditManager;
  const user = () => `u-${randomUUID()}`;
  const fileText = async () => {
    await manager.ledger.flush();
    return existsSync(filePath) ? readFileSync(filePath, "utf8") : "";
  };

  beforeAll(async () => {
    client = new MongoClient(uri as string);
    await client.connect();
    cache = new InMemoryCache();
    manager = await createCreditManager({
      db: new MongoDbManager({ client, dbName }),
      cache,
      ledger: { filePath },
      domainEvents: true,
    });
    await client.db(dbName).createCollection("orders"); // no implicit creation inside a transaction
  });

  afterAll(async () => {
    await manager?.close();
    await client?.db(dbName).dropDatabase();
    await client?.close();
  });

  it("commit: the order, the account, the journal, the outbox, the file and the cache all show it", async () => {
    const u = user();
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(0); // cached: 0
    const orders = client.db(dbName).collection<{ _id: string; userId: string }>("orders");
    const order = randomUUID();
    const entries = await manager.transaction(client, async (tx, session) => {
      await orders.insertOne({ _id: order, userId: u }, { session });
      const added = await tx.credits.addCredits(u, 100, { idempotencyKey: `order:${order}` });
      const spent = await tx.credits.deductCredits(u, 30);
      expect((await tx.credits.getUserCreditsInfo(u)).balance).toBe(70); // its own writes
      return [added, spent];
    });
    expect(await orders.findOne({ _id: order })).not.toBeNull();
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 70 });
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(70);
    const journal = await manager.db.listJournal(u, { order: "asc", limit: 10 });
    expect(journal.map((e) => e.id)).toEqual(entries.map((e) => e.id));
    expect(await manager.db.listNotifications(u, { limit: 10 })).toHaveLength(2);
    const text = await fileText();
    for (const e of entries) expect(text).toContain(e.id);
  });

  it("abort: nothing anywhere — store, journal, outbox, file, cache", async () => {
    const u = user();
    await manager.credits.addCredits(u, 10);
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(10);
    const session = client.startSession();
    let added = "";
    try {
      session.startTransaction();
      const scope = manager.inTransaction(session);
      added = (await scope.credits.addCredits(u, 500)).id;
      await scope.credits.reserveCredits(u, 200);
      await session.abortTransaction();
      await scope.rolledBack();
      await expect(scope.credits.addCredits(u, 1)).rejects.toBeInstanceOf(ConfigurationError);
    } finally {
      await session.endSession();
    }
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 10, reserved: 0 });
    expect(await manager.db.listJournal(u, { order: "asc", limit: 10 })).toHaveLength(1);
    expect(await manager.db.listReservations(u)).toEqual([]);
    expect(await manager.db.listNotifications(u, { limit: 10 })).toHaveLength(1);
    expect(await fileText()).not.toContain(added);
    expect((await manager.credits.getUserCreditsInfo(u)).balance).toBe(10);
  });

  it("a write conflict is a ConflictError saying retry the transaction; manager.transaction runs fn again", async () => {
    const u = user();
    await manager.credits.addCredits(u, 10);
    const session = client.startSession();
    try {
      session.startTransaction();
      const scope = manager.inTransaction(session);
      await scope.credits.getUserCreditsInfo(u); // the snapshot
      await manager.credits.addCredits(u, 5); // committed after it
      const error = await scope.credits.deductCredits(u, 1).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConflictError);
      expect((error as ConflictError).details).toMatchObject({ retry: "transaction" });
      await session.abortTransaction();
      await scope.rolledBack();
    } finally {
      await session.endSession();
    }
    let runs = 0;
    const entry = await manager.transaction(client, async (tx) => {
      runs++;
      await tx.credits.getUserCreditsInfo(u);
      if (runs === 1) await manager.credits.addCredits(u, 5);
      return tx.credits.deductCredits(u, 12);
    });
    expect(runs).toBe(2);
    expect(entry.amount).toBe(12);
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 8 });
  });

  it("a session without a transaction is refused", async () => {
    const session = client.startSession();
    try {
      expect(() => manager.inTransaction(session)).toThrow(ConfigurationError);
    } finally {
      await session.endSession();
    }
  });

  it("a session transaction holding the account: another unit of work conflicts or waits, never double-spends", async () => {
    const u = user();
    await manager.credits.addCredits(u, 100);
    const other = await createCreditManager({
      db: new MongoDbManager({ client, dbName, maxAttempts: 5, batch: false }),
      init: false,
    });
    const session = client.startSession();
    let outcome: unknown;
    try {
      session.startTransaction();
      const scope = manager.inTransaction(session);
      await scope.credits.deductCredits(u, 60);
      // MongoDB answers the second writer with a write conflict (retried with backoff, then
      // ConflictError); a server that locks rows instead (DocumentDB) makes it wait for the commit.
      const started = performance.now();
      const racing = other.credits.deductCredits(u, 60).then(
        () => "spent",
        (e: unknown) => e,
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      await session.commitTransaction();
      await scope.committed();
      outcome = await racing;
      expect(performance.now() - started).toBeLessThan(20_000);
    } finally {
      await session.endSession();
    }
    expect(outcome).not.toBe("spent");
    expect((outcome as { code?: string }).code).toMatch(/^(CONFLICT|INSUFFICIENT_CREDITS)$/);
    await expect(other.credits.deductCredits(u, 60)).rejects.toMatchObject({ code: "INSUFFICIENT_CREDITS" });
    expect(await manager.db.getAccount(u)).toMatchObject({ balance: 40 });
    await other.close();
  });
});
