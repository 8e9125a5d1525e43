import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dropSharedStore, killHard, openSharedStore, startChildUntil } from "./fixtures/child.js";
import { CreditService, InMemoryDbManager, NotificationService } from "../src/index.js";
import { type DbManager } from "../src/store.js";
import { RedisCache, RedisStreamQueue, type RedisCommandClient } from "../src/redis/index.js";

const url = process.env.CREDIT_REDIS_URL;
const mongoUri = process.env.CREDIT_MONGO_URI;
const pgUrl = process.env.CREDIT_PG_URL;
const here = dirname(fileURLToPath(import.meta.url));
const tag = `cm-test-${process.pid}-${randomUUID().slice(0, 8)}`;

/** A client wrapper that can be switched off, like a Redis outage. */
function flaky(client: RedisCommandClient) {
  const state = { down: false };
  const wrapped: RedisCommandClient = {
    call: (command, args) =>
      state.down ? Promise.reject(new Error("ECONNREFUSED (simulated outage)")) : client.call(command, args),
  };
  return { state, client: wrapped };
}

type StreamEntry = [string, string[]];
const fieldsOf = (e: StreamEntry) => {
  const o: Record<string, string> = {};
  for (let i = 0; i < e[1].length; i += 2) o[e[1][i] as string] = e[1][i + 1] as string;
  return o;
};

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!url)("Redis", () => {
  // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
  let redis: Redis;
  beforeAll(() => {
    redis = new Redis(url as string);
  });
  afterAll(async () => {
    const keys = await redis.keys(`${tag}*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
  });
  const read = async (stream: string) => ((await redis.xrange(stream, "-", "+")) as StreamEntry[]).map(fieldsOf);

  describe("RedisStreamQueue", () => {
    it("the stream receives each event once per crossing, and a redelivered message once", async () => {
      const stream = `${tag}:once`;
      const queue = new RedisStreamQueue({ client: redis, stream });
      const db = new InMemoryDbManager();
      const credits = new CreditService({ db, alerts: { lowCredits: 30 } });
      const notifications = new NotificationService({ db, queue });
      await credits.addCredits("u1", 100);
      for (let i = 0; i < 10; i++) await credits.deductCredits("u1", 10); // low once, exhausted once
      await credits.addCredits("u1", 100); // restored
      await Promise.all(Array.from({ length: 20 }, () => credits.deductCredits("u1", 4))); // low once
      await notifications.dispatchPending();
      await notifications.dispatchPending();
      const messages = await read(stream);
      expect(messages.map((m) => m.type)).toEqual([
        "low_credits",
        "credits_exhausted",
        "balance_restored",
        "low_credits",
      ]);
      expect(messages[0]).toMatchObject({ userId: "u1", attempt: "1" });
      // At 30, on the line: the line is on the alarm side (docs/notifications.md).
      expect(JSON.parse(messages[0]?.payload as string)).toMatchObject({ available: 30, threshold: 30 });
      // A redelivery of the same message (a dispatcher that died after XADD) is dropped.
      const first = messages[0] as Record<string, string>;
      await queue.publish({
        id: first.id as string,
        userId: "u1",
        type: "low_credits",
        payload: {},
        createdAt: first.createdAt as string,
        attempt: 2,
      });
      expect(await read(stream)).toHaveLength(4);
    });

    it("a queue that throws on the first attempts still gets the event afterwards", async () => {
      const stream = `${tag}:retry`;
      const { state, client } = flaky(redis);
      const queue = new RedisStreamQueue({ client, stream });
      const db = new InMemoryDbManager();
      const clock = { now: Date.now() };
      const credits = new CreditService({ db, alerts: { lowCredits: 30 }, clock: () => new Date(clock.now) });
      const notifications = new NotificationService({
        db,
        queue,
        clock: () => new Date(clock.now),
        backoffBaseMs: 1000,
      });
      await credits.addCredits("u2", 100);
      await credits.deductCredits("u2", 80);
      state.down = true;
      expect(await notifications.dispatchPending()).toMatchObject({ retried: 1, sent: 0 });
      clock.now += 2000;
      expect(await notifications.dispatchPending()).toMatchObject({ retried: 1, sent: 0 });
      state.down = false;
      expect(await notifications.dispatchPending()).toMatchObject({ claimed: 0 }); // backoff: 2 s now
      clock.now += 5000;
      expect(await notifications.dispatchPending()).toMatchObject({ sent: 1 });
      const messages = await read(stream);
      expect(messages.map((m) => [m.type, m.attempt])).toEqual([["low_credits", "3"]]);
    });

    it("an XADD that fails leaves no dedupe marker: the retry appends the event (not marked sent while lost)", async () => {
      const stream = `${tag}:xaddfail`;
      const queue = new RedisStreamQueue({ client: redis, stream });
      const db = new InMemoryDbManager();
      const clock = { now: Date.now() };
      const credits = new CreditService({ db, alerts: { lowCredits: 30 }, clock: () => new Date(clock.now) });
      const notifications = new NotificationService({
        db,
        queue,
        clock: () => new Date(clock.now),
        backoffBaseMs: 1000,
      });
      await credits.addCredits("u5", 100);
      await credits.deductCredits("u5", 80);
      await redis.set(stream, "not-a-stream"); // XADD fails inside the script (WRONGTYPE)
      expect(await notifications.dispatchPending()).toMatchObject({ retried: 1, sent: 0 });
      const [row] = await notifications.list("u5");
      expect(await redis.exists(`${stream}:sent:${row?.id}`)).toBe(0);
      await redis.del(stream);
      clock.now += 5000;
      expect(await notifications.dispatchPending()).toMatchObject({ sent: 1 });
      expect((await read(stream)).map((m) => [m.type, m.id, m.attempt])).toEqual([["low_credits", row?.id, "2"]]);
      // The marker is set once the append succeeded: a redelivery is still dropped.
      await queue.publish({
        id: row?.id as string,
        userId: "u5",
        type: "low_credits",
        payload: {},
        createdAt: new Date().toISOString(),
        attempt: 3,
      });
      expect(await read(stream)).toHaveLength(1);
      // The error reaches the caller directly too.
      await redis.set(`${stream}:direct`, "x");
      const direct = new RedisStreamQueue({ client: redis, stream: `${stream}:direct` });
      await expect(
        direct.publish({
          id: "m1",
          userId: "u5",
          type: "low_credits",
          payload: {},
          createdAt: new Date().toISOString(),
          attempt: 1,
        }),
      ).rejects.toThrow(/WRONGTYPE/);
      expect(await redis.exists(`${stream}:direct:sent:m1`)).toBe(0);
    });

    const stores = [
      { kind: "mongodb", url: mongoUri, why: "set CREDIT_MONGO_URI" },
      { kind: "postgres", url: pgUrl, why: "set CREDIT_PG_URL" },
    ] as const;
    for (const store of stores) {
      // reason: needs a store several processes share (skipped without one: ${store.why}).
      it.skipIf(!store.url)(
        `${store.kind}: a process killed (SIGKILL) between the commit and the delivery delivers on the next dispatch`,
        async () => {
          // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
          const stream = `${tag}:crash:${store.kind}`;
          const name = `credit_test_crash_${process.pid}_${randomUUID().slice(0, 8)}`;
          const userId = `crash-${randomUUID()}`;
          const { child } = await startChildUntil(
            join(here, "fixtures/outbox-crash.ts"),
            [store.kind, store.url as string, name, userId],
            "claimed",
          );
          expect(await killHard(child)).toBe("SIGKILL");

          const db: DbManager = openSharedStore({ kind: store.kind, url: store.url as string }, name);
          try {
            const queue = new RedisStreamQueue({ client: redis, stream });
            const notifications = new NotificationService({ db, queue });
            const [row] = await notifications.list(userId);
            expect(row).toMatchObject({ type: "low_credits", status: "pending" });
            // Claimed by the dead process: not delivered before its lease (1.5 s) lapses …
            expect((await notifications.dispatchPending()).claimed).toBe(0);
            await new Promise((r) => setTimeout(r, 1600));
            // … then delivered once.
            expect(await notifications.dispatchPending()).toMatchObject({ sent: 1 });
            expect((await read(stream)).map((m) => [m.type, m.userId, m.id])).toEqual([
              ["low_credits", userId, row?.id],
            ]);
            expect((await notifications.list(userId))[0]?.status).toBe("sent");
          } finally {
            await db.close();
            await dropSharedStore({ kind: store.kind, url: store.url as string }, name);
          }
        },
        30_000,
      );
    }
  });

  it("examples/notifications-worker.ts --demo --once prints each notification once", async () => {
    const { stdout } = await new Promise<{ stdout: string }>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ["--import", "tsx", join(here, "../examples/notifications-worker.ts"), "--demo", "--once"],
        {
          env: { ...process.env, CREDIT_STREAM: `${tag}:example` },
          stdio: ["ignore", "pipe", "pipe"],
        },
      );
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      child.on("exit", (code) =>
        code === 0 ? resolve({ stdout: out }) : reject(new Error(`worker exited ${code}: ${err}`)),
      );
    });
    const lines = stdout.split("\n").filter((l) => l.includes(" demo-user "));
    expect(lines.map((l) => l.split(" ")[2])).toEqual([
      "low_credits",
      "credits_exhausted",
      "balance_restored",
      "subscription_renewed",
    ]);
  }, 60_000);

  describe("RedisCache", () => {
    it("gets, sets with TTL under the prefix, deletes; Dates survive", async () => {
      const cache = new RedisCache({ client: redis, keyPrefix: `${tag}:c:` });
      expect(await cache.get("a")).toBeUndefined();
      const value = { n: 1, at: new Date("2030-01-02T03:04:05.006Z"), list: [1, "x", null] };
      await cache.set("a", value, 30);
      expect(await cache.get("a")).toEqual(value);
      expect(await redis.ttl(`${tag}:c:a`)).toBeGreaterThan(25);
      await cache.set("b", 2);
      expect(await redis.ttl(`${tag}:c:b`)).toBeGreaterThan(55);
      await cache.delete("a");
      expect(await cache.get("a")).toBeUndefined();
      await cache.set("short", 1, 1);
      await new Promise((r) => setTimeout(r, 1100));
      expect(await cache.get("short")).toBeUndefined();
    });

    it("an outage degrades to the store with a warning and never serves a value it could not invalidate", async () => {
      const { state, client } = flaky(redis);
      const warnings: string[] = [];
      const logger = { warn: (_o: unknown, msg?: string) => warnings.push(String(msg ?? _o)) } as never;
      const cache = new RedisCache({ client, keyPrefix: `${tag}:o:`, logger });
      const db = new InMemoryDbManager();
      const credits = new CreditService({ db, cache, logger });
      await credits.addCredits("u3", 100);
      expect((await credits.getUserCreditsInfo("u3")).available).toBe(100); // cached now
      state.down = true;
      await credits.deductCredits("u3", 30); // invalidation fails
      expect(warnings.some((w) => w.includes("invalidation failed"))).toBe(true);
      expect((await credits.getUserCreditsInfo("u3")).available).toBe(70); // from the store
      state.down = false;
      // Redis is back with the stale 100 still stored: the pending invalidation goes first.
      await new Promise((r) => setTimeout(r, 1000));
      expect((await credits.getUserCreditsInfo("u3")).available).toBe(70);
      expect(cache.degraded).toBe(false);
      expect(await redis.get(`${tag}:o:credits:info:u3`)).not.toContain('"available":100');
    });

    it("overflowing maxPendingInvalidations invalidates only the cache's entries (a stream under the same prefix survives), in every process", async () => {
      // The README's layout: one client, cache prefix "billing:", stream "billing:notifications".
      const ns = `${tag}:billing:`;
      const stream = `${ns}notifications`;
      const failDel = { on: false };
      const client: RedisCommandClient = {
        call: (command, args) =>
          failDel.on && command === "DEL"
            ? Promise.reject(new Error("ECONNRESET (simulated)"))
            : redis.call(command, ...args),
      };
      const cache = new RedisCache({ client, keyPrefix: ns, maxPendingInvalidations: 1 });
      const other = new RedisCache({ client: redis, keyPrefix: ns }); // another process on the same Redis
      const queue = new RedisStreamQueue({ client: redis, stream });
      await queue.publish({
        id: "m1",
        userId: "u1",
        type: "low_credits",
        payload: {},
        createdAt: new Date().toISOString(),
        attempt: 1,
      });
      await redis.xgroup("CREATE", stream, "workers", "0");
      await redis.set(`${ns}unrelated`, "keep");
      await cache.set("credits:info:a", { available: 100 });
      await cache.set("credits:info:b", { available: 200 });
      expect(await other.get("credits:info:a")).toEqual({ available: 100 });

      failDel.on = true; // the writes' invalidations fail: 2 > maxPendingInvalidations
      await expect(cache.delete("credits:info:a")).rejects.toThrow();
      await expect(cache.delete("credits:info:b")).rejects.toThrow();
      failDel.on = false;
      expect(cache.degraded).toBe(true);

      // Recovered: the stale values are served by no process …
      expect(await cache.get("credits:info:a")).toBeUndefined();
      expect(cache.degraded).toBe(false);
      expect(await cache.get("credits:info:b")).toBeUndefined();
      expect(await other.get("credits:info:a")).toBeUndefined();
      expect(await other.get("credits:info:b")).toBeUndefined();
      // … and nothing else under the prefix was touched: stream, consumer group, dedupe marker.
      expect(await redis.xlen(stream)).toBe(1);
      expect(await redis.xinfo("GROUPS", stream)).toHaveLength(1);
      expect(await redis.exists(`${stream}:sent:m1`)).toBe(1);
      expect(await redis.get(`${ns}unrelated`)).toBe("keep");
      await queue.publish({
        id: "m1",
        userId: "u1",
        type: "low_credits",
        payload: {},
        createdAt: new Date().toISOString(),
        attempt: 2,
      });
      expect(await redis.xlen(stream)).toBe(1); // the redelivery is still dropped
      // The cache works normally in the new generation, for both processes.
      await cache.set("credits:info:a", { available: 70 });
      expect(await other.get("credits:info:a")).toEqual({ available: 70 });
      await other.set("credits:info:b", { available: 50 });
      expect(await cache.get("credits:info:b")).toEqual({ available: 50 });
    });

    it("recovery never scans or deletes keys it was not given, even with an empty keyPrefix", async () => {
      const commands: { command: string; args: (string | number)[] }[] = [];
      const failDel = { on: false };
      const client: RedisCommandClient = {
        call: (command, args) => {
          commands.push({ command, args });
          if (["SCAN", "KEYS", "FLUSHDB", "FLUSHALL", "UNLINK"].includes(command))
            return Promise.reject(new Error(`refused in this test: ${command}`));
          if (failDel.on && command === "DEL") return Promise.reject(new Error("ECONNRESET (simulated)"));
          return redis.call(command, ...args);
        },
      };
      const cache = new RedisCache({ client, keyPrefix: "", maxPendingInvalidations: 0 });
      const hadGeneration = (await redis.exists(cache.generationKey)) === 1;
      try {
        const key = `${tag}:empty:k`;
        await redis.set(`${tag}:empty:unrelated`, "keep");
        await cache.set(key, 1);
        failDel.on = true;
        await expect(cache.delete(key)).rejects.toThrow();
        failDel.on = false;
        await new Promise((r) => setTimeout(r, 1000));
        expect(await cache.get(key)).toBeUndefined();
        expect(cache.degraded).toBe(false);
        expect(await redis.get(`${tag}:empty:unrelated`)).toBe("keep");
        expect(commands.map((c) => c.command).filter((c) => !["GET", "SET", "DEL"].includes(c))).toEqual([]);
        const written = commands
          .filter((c) => c.command === "SET" || c.command === "DEL")
          .flatMap((c) => (c.command === "SET" ? [c.args[0]] : c.args));
        expect(new Set(written)).toEqual(new Set([key, cache.generationKey]));
      } finally {
        if (!hadGeneration) await redis.del(cache.generationKey);
      }
    });

    it("an entry of another generation, or of a lost generation key, is a miss", async () => {
      const prefix = `${tag}:g:`;
      const cache = new RedisCache({ client: redis, keyPrefix: prefix });
      await cache.set("k", { n: 1 });
      expect(await cache.get("k")).toEqual({ n: 1 });
      await redis.del(cache.generationKey); // evicted or flushed
      expect(await cache.get("k")).toBeUndefined();
      await redis.set(`${prefix}plain`, JSON.stringify({ n: 2 })); // written without a generation
      expect(await cache.get("plain")).toBeUndefined();
      await cache.set("k", { n: 3 });
      expect(await cache.get("k")).toEqual({ n: 3 });
    });

    it("a command that hangs times out instead of holding the caller", async () => {
      const hanging: RedisCommandClient = { call: () => new Promise(() => undefined) };
      const cache = new RedisCache({ client: hanging, timeoutMs: 50 });
      const t = Date.now();
      await expect(cache.get("x")).rejects.toThrow(/timed out/);
      expect(Date.now() - t).toBeLessThan(1000);
    });
  });
});

// No server needed: the clients point at a closed port, as during an outage.
describe("the clients connect() makes, with Redis down", () => {
  it("report connection errors to the logger, deduplicated, and print nothing to stderr", async () => {
    const script = `
      import { RedisCache, RedisStreamQueue } from ${JSON.stringify(join(here, "../src/redis/index.ts"))};
      const logged = [];
      const logger = Object.fromEntries(["error", "warn", "info", "debug"].map((level) => [level, (obj, msg) => logged.push({ level, msg, redis: obj.redis, err: obj.err?.message })]));
      let reconnects = 0;
      const cache = await RedisCache.connect("redis://127.0.0.1:1", { logger, timeoutMs: 100 });
      const queue = await RedisStreamQueue.connect("redis://127.0.0.1:1", { logger, timeoutMs: 100 });
      for (const c of [cache, queue]) c.client.on("reconnecting", () => reconnects++);
      await new Promise((r) => setTimeout(r, 1500));
      await queue.ping().catch(() => undefined);
      for (const c of [cache, queue]) c.client.disconnect();
      process.stdout.write(JSON.stringify({ logged, reconnects }));
    `;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
    expect(stderr).toBe("");
    expect(code).toBe(0);
    const { logged, reconnects } = JSON.parse(stdout) as {
      logged: { level: string; msg: string; redis: string; err: string }[];
      reconnects: number;
    };
    // ioredis tried again and again; each client's (identical) error was logged once.
    expect(reconnects).toBeGreaterThanOrEqual(6);
    expect(logged.map((l) => [l.level, l.redis]).sort()).toEqual([
      ["warn", "cache"],
      ["warn", "queue"],
    ]);
    for (const l of logged) {
      expect(l.msg).toMatch(/Redis (cache|queue) connection failed/);
      expect(l.err).toMatch(/ECONNREFUSED/);
    }
  }, 20_000);
});
