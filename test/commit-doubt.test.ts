/**
 * Connections cut right after a commit was sent, on the real servers (docs/concepts.md, "Certain and
 * uncertain errors"): every call answers the real outcome — its result when the commit landed, a
 * `StorageError` only when nothing was applied — or `OutcomeUnknownError`, whose key then tells.
 * MongoDB through test/fixtures/cut-proxy.ts (cuts after `commitTransaction`), Citus through
 * test/fixtures/arm-proxy.ts in front of the coordinator (cuts after the save call, which commits as
 * it runs). PostgreSQL's own: test/postgres-robustness.test.ts. Skipped without the servers.
 */
import { randomUUID } from "node:crypto";
import { MongoClient } from "mongodb";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { startArmProxy } from "./fixtures/arm-proxy.js";
import { startCutProxy } from "./fixtures/cut-proxy.js";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import type { DbManager } from "../src/core/db/types.js";
import { OutcomeUnknownError, StorageError } from "../src/core/errors.js";
import { CreditService } from "../src/credit-service.js";

const mongoUri = process.env.CREDIT_MONGO_URI;
const citusUrl = process.env.CREDIT_CITUS_URL;

/**
 * Spends 1 credit `n` times under keys, one after another; afterwards checks each answer against
 * the journal: a result is there, a `StorageError`'s key is not, an `OutcomeUnknownError` names the
 * entry its key then answers. Returns how many answers were each.
 */
async function spendAndCheck(db: DbManager, credits: CreditService, user: string, n: number) {
  const answers: Array<{ key: string; id?: string; error?: unknown }> = [];
  for (let i = 0; i < n; i++) {
    const key = `spend-${i}`;
    try {
      answers.push({ key, id: (await credits.deductCredits(user, 1, { idempotencyKey: key })).id });
    } catch (error) {
      answers.push({ key, error });
    }
  }
  const journal = await db.listJournal(user, { order: "asc", limit: 1000 });
  const byKey = new Map(journal.map((e) => [e.idempotencyKey, e.id]));
  const count = { done: 0, notApplied: 0, unknown: 0 };
  for (const a of answers) {
    if (a.id !== undefined) {
      expect(byKey.get(a.key), a.key).toBe(a.id);
      count.done++;
    } else if (a.error instanceof OutcomeUnknownError) {
      expect(a.error).toMatchObject({ userId: user, idempotencyKey: a.key });
      const again = await credits.deductCredits(user, 1, { idempotencyKey: a.key });
      expect(again.id).toBe(a.error.entryIds[0]);
      count.unknown++;
    } else {
      // Refused for certain: nothing of it is in the store.
      expect(a.error, a.key).toBeInstanceOf(StorageError);
      expect(byKey.has(a.key), `${a.key}: a StorageError, yet its entry is in the journal`).toBe(false);
      count.notApplied++;
    }
  }
  const applied = (await db.listJournal(user, { order: "asc", limit: 1000 })).filter((e) => e.type === "deduct");
  expect((await credits.getUserCreditsInfo(user)).balance).toBe(1000 - applied.length);
  expect((await credits.audit(user)).ok).toBe(true);
  return count;
}

// reason: needs a MongoDB replica set (CREDIT_MONGO_URI, set by .ci/run)
describe.skipIf(!mongoUri)("MongoDB: a connection cut after commitTransaction", () => {
  it("every spend answers its real outcome, or OutcomeUnknownError that its key resolves", async () => {
    const dbName = `credit_test_doubt_${process.pid}_${randomUUID().slice(0, 8)}`;
    const target = new URL((mongoUri as string).replace(/^mongodb:/, "http:"));
    // rate 0: the proxy cuts for certain at its 8th commit (and a transaction's opening or two).
    const proxy = await startCutProxy({
      target: { host: target.hostname, port: Number(target.port) },
      protocol: "mongodb",
      rate: 0,
      seed: 6,
    });
    const db = MongoDbManager.fromUri(
      `mongodb://127.0.0.1:${proxy.port}/?directConnection=true&serverSelectionTimeoutMS=3000`,
      dbName,
    );
    try {
      await db.init();
      const credits = new CreditService({ db });
      await credits.addCredits("u", 1000);
      const count = await spendAndCheck(db, credits, "u", 16);
      expect(proxy.cuts.afterCommit, JSON.stringify(proxy.cuts)).toBeGreaterThan(0);
      expect(count.done + count.unknown + count.notApplied).toBe(16);
    } finally {
      await db.close();
      await proxy.close();
      const client = await new MongoClient(mongoUri as string).connect();
      await client.db(dbName).dropDatabase();
      await client.close();
    }
  }, 120_000);
});

// reason: needs a Citus cluster (CREDIT_CITUS_URL, set by .ci/run)
describe.skipIf(!citusUrl)("Citus: a connection cut after the save call was sent", () => {
  it("the spend answers its real outcome (the save committed: its result), never a StorageError with its entry stored", async () => {
    const schema = `cm_doubt_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
    const proxy = await startArmProxy(new URL(citusUrl as string));
    const db = new PostgresDbManager({ connectionString: proxy.url, schema, poolConfig: { max: 4 } });
    try {
      await db.init();
      const credits = new CreditService({ db });
      await credits.addCredits("u", 1000);
      await credits.deductCredits("u", 1, { idempotencyKey: "warm" }); // the account's state is cached
      for (let i = 0; i < 3; i++) {
        const cuts = proxy.cuts;
        proxy.arm("unit_save");
        const entry = await credits.deductCredits("u", 1, { idempotencyKey: `cut-${i}` });
        expect(proxy.cuts).toBe(cuts + 1);
        expect(entry.balanceAfter).toBe(998 - i);
      }
      const count = await spendAndCheck(db, credits, "u", 0);
      expect(count).toEqual({ done: 0, notApplied: 0, unknown: 0 });
      expect((await credits.getUserCreditsInfo("u")).balance).toBe(996);
    } finally {
      await db.close();
      await proxy.close();
      const client = new pg.Client({ connectionString: citusUrl });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    }
  }, 120_000);
});
