// A plan read that races a plan write over one store and one cache: the reader is paused between
// its store read and its cache fill while a plan write (of another service sharing the cache, or of
// the same service) commits and invalidates. The fill must not land, else the old plan is served
// until the plan cache's TTL (300 s by default).
import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it } from "vitest";
import { CreditService, InMemoryCache, InMemoryDbManager, SubscriptionService, type Cache } from "../src/index.js";
import { type DbManager } from "../src/store.js";
import { RedisCache } from "../src/redis/index.js";

const redisUrl = process.env.CREDIT_REDIS_URL;
/** A store whose next plan read (one plan, or the list) waits for `release()` after reading. */
function pausingStore(db: DbManager) {
  let gate: { reached: () => void; wait: Promise<void> } | null = null;
  let release = () => {};
  let reached: Promise<void> = Promise.resolve();
  const arm = () => {
    let resolveReached = () => {};
    reached = new Promise<void>((r) => (resolveReached = r));
    const wait = new Promise<void>((r) => (release = r));
    gate = { reached: resolveReached, wait };
  };
  const paused = async <T>(read: Promise<T>): Promise<T> => {
    const value = await read;
    const g = gate;
    if (g !== null) {
      gate = null;
      g.reached();
      await g.wait;
    }
    return value;
  };
  const store = new Proxy(db, {
    get(target, prop, receiver) {
      if (prop === "getPlan") return (id: string) => paused(target.getPlan(id));
      if (prop === "listPlans") return (q: Parameters<DbManager["listPlans"]>[0]) => paused(target.listPlans(q));
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store, arm, reached: () => reached, release: () => release() };
}

/** A cache with only get/set/delete (no leases), as a host's own cache may be. */
const plainCache = (inner: Cache): Cache => ({
  get: (k) => inner.get(k),
  set: (k, v, t) => inner.set(k, v, t),
  delete: (k) => inner.delete(k),
});

const redisClients: Redis[] = [];
afterAll(async () => {
  for (const c of redisClients) await c.quit();
});

interface Case {
  name: string;
  skip?: boolean;
  /** The reader's cache and the writer's (the same one, or two clients of one shared cache). */
  caches(): { reader: Cache; writer: Cache };
  /** Whether the writer is the reader's own service (a cache without leases is guarded only there). */
  sameService: boolean;
}

const cases: Case[] = [
  {
    name: "InMemoryCache shared by two services",
    caches: () => {
      const c = new InMemoryCache();
      return { reader: c, writer: c };
    },
    sameService: false,
  },
  {
    name: "RedisCache, one client per service (two processes)",
    skip: !redisUrl,
    caches: () => {
      const prefix = `cm-plan-race-${randomUUID().slice(0, 8)}:`;
      const a = new Redis(redisUrl as string);
      const b = new Redis(redisUrl as string);
      redisClients.push(a, b);
      return {
        reader: new RedisCache({ client: a, keyPrefix: prefix }),
        writer: new RedisCache({ client: b, keyPrefix: prefix }),
      };
    },
    sameService: false,
  },
  {
    name: "a cache without leases, written by the reading service itself",
    caches: () => {
      const c = plainCache(new InMemoryCache());
      return { reader: c, writer: c };
    },
    sameService: true,
  },
];

describe.each(cases)("plan cache race: $name", (c) => {
  /** A reader whose store can be paused mid-read, a writer (the same service, or another process's), and a plan. */
  async function racing() {
    const db = new InMemoryDbManager();
    const pause = pausingStore(db);
    const { reader: readerCache, writer: writerCache } = c.caches();
    const reader = new SubscriptionService({
      db: pause.store,
      credits: new CreditService({ db: pause.store, subscriptions: true }),
      cache: readerCache,
    });
    const writer = c.sameService
      ? reader
      : new SubscriptionService({ db, credits: new CreditService({ db, subscriptions: true }), cache: writerCache });
    const plan = await writer.createPlan({ name: "Pro", creditsPerPeriod: 100, billingPeriod: "monthly" });
    return { pause, reader, writer, plan };
  }

  // reason: a backend whose server URL is not set is skipped; the others run
  it.skipIf(c.skip === true)("a getPlan overtaken by updatePlan does not cache the old plan", async () => {
    // reason: the RedisCache case needs CREDIT_REDIS_URL; the run's closing block names it when skipped
    const { pause, reader, writer, plan } = await racing();

    pause.arm();
    const reading = reader.getPlan(plan.id);
    await pause.reached(); // the reader has the old plan in hand
    await writer.updatePlan(plan.id, { creditsPerPeriod: 200 });
    pause.release();
    expect((await reading).creditsPerPeriod).toBe(100); // what it read, before the write

    expect((await reader.getPlan(plan.id)).creditsPerPeriod).toBe(200);
    expect((await writer.getPlan(plan.id)).creditsPerPeriod).toBe(200);
  });

  // reason: a backend whose server URL is not set is skipped; the others run
  it.skipIf(c.skip === true)("a listPlans overtaken by a plan write does not cache the old list", async () => {
    // reason: the RedisCache case needs CREDIT_REDIS_URL; the run's closing block names it when skipped
    const { pause, reader, writer, plan } = await racing();

    pause.arm();
    const reading = reader.listPlans();
    await pause.reached();
    await writer.updatePlan(plan.id, { isActive: false });
    pause.release();
    expect((await reading).map((p) => p.id)).toEqual([plan.id]);

    expect(await reader.listPlans()).toEqual([]);
  });

  // reason: a backend whose server URL is not set is skipped; the others run
  it.skipIf(c.skip === true)("a read that no write overtook is cached", async () => {
    // reason: the RedisCache case needs CREDIT_REDIS_URL; the run's closing block names it when skipped
    const db = new InMemoryDbManager();
    const { reader: readerCache } = c.caches();
    const reader = new SubscriptionService({
      db,
      credits: new CreditService({ db, subscriptions: true }),
      cache: readerCache,
    });
    const plan = await reader.createPlan({ name: "Pro", creditsPerPeriod: 100, billingPeriod: "monthly" });
    await reader.getPlan(plan.id);
    // Changed behind the services' back: a cached plan is still served.
    await db.updatePlan({ ...(await db.getPlan(plan.id))!, creditsPerPeriod: 300 }, plan.version);
    expect((await reader.getPlan(plan.id)).creditsPerPeriod).toBe(100);
  });
});
