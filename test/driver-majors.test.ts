/**
 * The older majors the support table (docs/runtimes.md) claims, installed beside the current ones under npm
 * aliases (package.json: `mongodb6` is `mongodb@^6`, `ioredis5` is `ioredis@^5`): the MongoDB
 * adapter's essential contract through the driver 6 client, the Redis cache and stream queue
 * through an ioredis 5 client. The adapters take the client the application made, so the major
 * the application installed is the one in use.
 */
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";
import type { MongoClient } from "mongodb";
import { MongoClient as MongoClient6 } from "mongodb6";
import { Redis as Redis5 } from "ioredis5";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CreditService,
  InMemoryDbManager,
  InsufficientCreditsError,
  NotificationService,
  type NotificationMessage,
} from "../src/index.js";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { RedisCache, RedisStreamQueue } from "../src/redis/index.js";

const require = createRequire(import.meta.url);
const majorOf = (pkg: string) => Number((require(`${pkg}/package.json`) as { version: string }).version.split(".")[0]);

const mongoUri = process.env.CREDIT_MONGO_URI;
const redisUrl = process.env.CREDIT_REDIS_URL;
it("the aliases are the majors the support table claims beside the current ones", () => {
  expect(majorOf("mongodb6")).toBe(6);
  expect(majorOf("ioredis5")).toBe(5);
  expect(majorOf("mongodb")).toBeGreaterThan(6);
  expect(majorOf("ioredis")).toBeGreaterThan(5);
});

// reason: needs a MongoDB replica set (CREDIT_MONGO_URI, set by .ci/run)
describe.skipIf(!mongoUri)("MongoDB adapter through the mongodb 6 driver", () => {
  // reason: needs CREDIT_MONGO_URI; the run's closing block names it when skipped
  let client: MongoClient6;
  const commands: string[] = [];
  const dbName = `credit_test_driver6_${process.pid}_${randomUUID().slice(0, 8)}`;
  beforeAll(async () => {
    client = new MongoClient6(mongoUri as string, { monitorCommands: true });
    client.on("commandStarted", (e) => void commands.push(e.commandName));
    await client.connect();
  });
  afterAll(async () => {
    await client?.db(dbName).dropDatabase();
    await client?.close();
  });

  it("units of work, a refusal, an idempotent replay, a hold, the outbox and audit", async () => {
    // The option is typed with the installed `mongodb` (7 here); an application on 6 has 6's types.
    const db = new MongoDbManager({ client: client as unknown as MongoClient, dbName });
    await db.init();
    expect(commands).toContain("createIndexes"); // through this client
    const credits = new CreditService({ db, domainEvents: true });
    const sent: NotificationMessage[] = [];
    const notifications = new NotificationService({ db, queue: { publish: async (m) => void sent.push(m) } });
    await credits.addCredits("u1", 100, { idempotencyKey: "order-1" });
    const used = await credits.deductCredits("u1", 30, { idempotencyKey: "use-1" });
    expect((await credits.deductCredits("u1", 30, { idempotencyKey: "use-1" })).id).toBe(used.id);
    await expect(credits.deductCredits("u1", 500)).rejects.toBeInstanceOf(InsufficientCreditsError);
    const hold = await credits.reserveCredits("u1", 50);
    expect((await credits.getUserCreditsInfo("u1")).available).toBe(20);
    await credits.commitReservedCredits(hold.id, { amount: 20 }); // 30 go back
    const released = await credits.reserveCredits("u1", 10);
    await credits.releaseReservedCredits(released.id);
    expect(await credits.getUserCreditsInfo("u1")).toMatchObject({ balance: 50, reserved: 0, available: 50 });
    expect((await credits.audit("u1")).ok).toBe(true);
    expect(await notifications.dispatchPending()).toMatchObject({ failed: 0 });
    expect(sent.map((m) => [m.type, m.version])).toEqual([
      ["credits_added", 1],
      ["credits_deducted", 1],
      ["transaction_error", 1], // the refusal
      ["hold_placed", 1],
      ["hold_settled", 1],
      ["hold_placed", 1],
      ["hold_settled", 1],
    ]);
    expect(await db.stats()).toMatchObject({ activeHolds: 0, outboxPending: 0 });
  });
});

// reason: needs a Redis server (CREDIT_REDIS_URL, set by .ci/run)
describe.skipIf(!redisUrl)("Redis cache and stream queue through ioredis 5", () => {
  // reason: needs CREDIT_REDIS_URL; the run's closing block names it when skipped
  const tag = `cm-ioredis5-${randomUUID().slice(0, 8)}`;
  let redis: Redis5;
  beforeAll(async () => {
    redis = new Redis5(redisUrl as string);
    await redis.ping(); // connected before the adapters' short deadlines start counting
  });
  afterAll(async () => {
    const keys = await redis.keys(`${tag}*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
  });

  it("the cache answers, is invalidated by a write, and keeps Dates", async () => {
    const cache = new RedisCache({ client: redis, keyPrefix: `${tag}:c:`, timeoutMs: 5000 }); // a busy CI machine
    const value = { at: new Date(Date.now() + 60_000), n: [1, null] };
    await cache.set("k", value, 30);
    expect(await cache.get("k")).toEqual(value);
    expect(await redis.ttl(`${tag}:c:k`)).toBeGreaterThan(25);
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, cache });
    await credits.addCredits("u1", 100);
    expect((await credits.getUserCreditsInfo("u1")).available).toBe(100); // cached now
    await credits.deductCredits("u1", 30);
    expect((await credits.getUserCreditsInfo("u1")).available).toBe(70);
    expect(cache.degraded).toBe(false);
  });

  it("the stream queue appends each message once, with its version", async () => {
    const stream = `${tag}:s`;
    const queue = new RedisStreamQueue({ client: redis, stream });
    const message: NotificationMessage = {
      id: "m1",
      userId: "u1",
      type: "low_credits",
      version: 2,
      payload: { available: 5 },
      createdAt: new Date().toISOString(),
      attempt: 1,
    };
    await queue.publish(message);
    await queue.publish({ ...message, attempt: 2 }); // a redelivery: dropped
    await queue.ping();
    const entries = (await redis.xrange(stream, "-", "+")).map(([, fields]) => {
      const o: Record<string, string> = {};
      for (let i = 0; i < fields.length; i += 2) o[fields[i] as string] = fields[i + 1] as string;
      return o;
    });
    expect(entries).toEqual([expect.objectContaining({ id: "m1", type: "low_credits", version: "2", attempt: "1" })]);
    expect(JSON.parse(entries[0]?.payload as string)).toEqual({ available: 5 });
  });
});
