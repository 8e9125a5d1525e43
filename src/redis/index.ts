/**
 * `credit-management/redis`: the `Cache` and the `NotificationQueue` on Redis.
 *
 * Both take a client you own (an `ioredis` `Redis` or `Cluster`, or anything with ioredis's
 * `call(command, args)`), or build their own from a URL with `connect()` (ioredis is an optional
 * peer dependency, imported only then). Every command has a deadline, so a Redis outage costs a
 * credit read at most `timeoutMs` before it falls back to the store.
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "../core/logger.js";
import type { Cache } from "../core/cache/index.js";
import { ConfigurationError } from "../core/errors.js";
import { withTimeout } from "../core/util/promise.js";
import type { NotificationMessage, NotificationQueue } from "../core/queue/index.js";

/** The one method of an ioredis client these adapters use. @public */
export interface RedisCommandClient {
  /** Sends a Redis command. */
  call(command: string, args: (string | number)[]): Promise<unknown>;
  /** Closes the connection. */
  quit?(): Promise<unknown>;
}

/** The first of a run of equal connection errors is logged at once; the same error again at most this often. */
const CONNECTION_ERROR_EVERY_MS = 60_000;

/**
 * Builds an ioredis client for `url` (lazily importing the optional peer), with listeners of its
 * own: without an `error` listener ioredis prints "[ioredis] Unhandled error event" and a stack to
 * stderr at every reconnect while Redis is down. Its errors go to `logger` instead, deduplicated:
 * an error is logged when its message differs from the last one logged or `CONNECTION_ERROR_EVERY_MS`
 * has passed (with the number of errors left out meanwhile), and the connection coming back once
 * (docs/operations.md, "Logging").
 */
async function clientFor(url: string, logger: Logger | undefined, what: string): Promise<RedisCommandClient> {
  type Client = RedisCommandClient & { on(event: string, listener: (arg?: unknown) => void): unknown };
  let mod: { Redis: new (url: string, options: Record<string, unknown>) => Client };
  try {
    // ioredis is an optional peer: typed here by what the library uses of it, not by its own types.
    mod = (await import("ioredis")) as unknown as typeof mod;
  } catch (error) {
    throw new ConfigurationError("[credit-management] [redis] `ioredis` is not installed: npm install ioredis", error);
  }
  // One retry per command; the adapters' own deadlines bound how long a caller waits in an outage.
  const client = new mod.Redis(url, { maxRetriesPerRequest: 1 });
  const report = connectionReporter(logger, what);
  client.on("error", report.error);
  client.on("ready", report.ready);
  return client;
}

/** The deduplicated report of one client's connection errors (see `clientFor`). */
function connectionReporter(
  logger: Logger | undefined,
  what: string,
  now: () => number = Date.now,
): { error: (error?: unknown) => void; ready: () => void } {
  let lastMessage: string | null = null;
  let lastAt = 0;
  let left = 0;
  let down = false;
  return {
    error(error) {
      down = true;
      const message = error instanceof Error ? error.message : String(error);
      const at = now();
      if (message === lastMessage && at - lastAt < CONNECTION_ERROR_EVERY_MS) {
        left++;
        return;
      }
      logger?.warn(
        { err: error, redis: what, ...(left > 0 ? { errorsLeftOut: left } : {}) },
        `credit-management: Redis ${what} connection failed (retrying)`,
      );
      lastMessage = message;
      lastAt = at;
      left = 0;
    },
    ready() {
      if (!down) return;
      logger?.info({ redis: what }, `credit-management: Redis ${what} connection restored`);
      down = false;
      lastMessage = null;
      left = 0;
    },
  };
}

/** `promise`, or an error naming the command `what` after `ms`. */
function commandWithin<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return withTimeout(promise, ms, () => new Error(`[credit-management] [redis] ${what} timed out after ${ms} ms`));
}

// -------------------------------------------------------------------------------------------------
// Cache

/** Options of `new RedisCache()`: the client, the key prefix and the default TTL. @public */
export interface RedisCacheOptions {
  /** An ioredis client (not closed by `close()`). */
  client: RedisCommandClient;
  /** Put in front of every key. Default `"credit-management:"`. */
  keyPrefix?: string;
  /** TTL when `set` gets none, in seconds. Default 60. */
  ttlSeconds?: number;
  /** Deadline of one command, in ms. Default 250. */
  timeoutMs?: number;
  /** Where outages are reported. */
  logger?: Logger;
  /**
   * Invalidations that failed and are kept to retry (beyond it, recovery starts a new cache
   * generation instead, which makes every entry written before it a miss). Default 10,000.
   */
  maxPendingInvalidations?: number;
}

/**
 * `Cache` on Redis: JSON values (Dates kept) under `keyPrefix`, with TTLs, and leases (see
 * `Cache.lease`), so a read in one process never caches a balance that a write in another process
 * invalidated meanwhile.
 *
 * An entry is the string `v2|<generation>|<lease>|<json>`: `<lease>` is empty for a plain `set`,
 * and `<json>` is empty for a lease's placeholder (a miss). `lease` and `setLeased` are each one
 * Lua script on the entry's key alone (so they work in a Cluster): `lease` hands out the key's
 * lease if it has one, else writes a placeholder with a new random one; `setLeased` writes the
 * value only if the key still holds that lease. `delete` (a plain `DEL`) removes the entry, and
 * with it the lease. A placeholder that expires or is evicted makes the fill a no-op, never a stale
 * hit.
 *
 * Every entry is tagged with the cache's generation, a random token stored at
 * `<keyPrefix>__generation__` (no TTL); `get` reads it alongside the entry and treats an entry of
 * another generation as a miss. Replacing the token (one `SET`) thus invalidates every entry at
 * once, in every process sharing the Redis, without touching any other key: the cache only ever
 * writes or deletes `<keyPrefix><key>` for keys it was given and its generation key, never a
 * pattern, so other data under the same prefix (a notification stream) is safe. A missing
 * generation key (evicted, flushed) is recreated with a new token, so old entries stay misses.
 * Entries in another format (written by an earlier release) are misses too.
 *
 * Values are JSON in which a Date is `{ "$date": "<ISO>" }` and an object of the value whose only
 * key is `$date` or `$escape` is wrapped as `{ "$escape": <object> }`, so every JSON value (and
 * Dates) reads back exactly as it was written.
 *
 * An outage never yields a wrong answer: a failed `get`/`set` throws (the services log a warning
 * and read the store), and a failed `delete` is remembered. Until every remembered invalidation has
 * been applied (retried at most once per second), `get` and `lease` refuse to answer from Redis, so
 * a value that a write could not invalidate is never served after Redis comes back. (Other
 * processes that could still reach Redis during a partial outage may serve such a value, or fill
 * one under a lease the failed `delete` did not end, until its TTL.)
 * @public
 */
export class RedisCache implements Cache {
  /** Prepended to every key. */
  readonly keyPrefix: string;
  private client: RedisCommandClient;
  private ownsClient = false;
  private readonly ttl: number;
  private readonly timeoutMs: number;
  private readonly logger: Logger | undefined;
  private readonly maxPending: number;
  /** Keys whose invalidation failed. */
  private readonly pending = new Set<string>();
  /** Too many failed invalidations to remember: start a new generation on recovery. */
  private overflow = false;
  private lastRecovery = 0;
  /** Where the generation token lives. */
  readonly generationKey: string;
  /** The generation this process last saw (what `set` tags entries with). */
  private generation: string | undefined;

  /** A cache on Redis, on the client given or one made from `url`. */
  constructor(options: RedisCacheOptions) {
    this.client = options.client;
    this.keyPrefix = options.keyPrefix ?? "credit-management:";
    this.ttl = options.ttlSeconds ?? 60;
    this.timeoutMs = options.timeoutMs ?? 250;
    this.logger = options.logger;
    this.maxPending = options.maxPendingInvalidations ?? 10_000;
    this.generationKey = `${this.keyPrefix}__generation__`;
  }

  /** A cache with its own ioredis client for `url`; `close()` closes it. */
  static async connect(url: string, options: Omit<RedisCacheOptions, "client"> = {}): Promise<RedisCache> {
    const cache = new RedisCache({ ...options, client: await clientFor(url, options.logger, "cache") });
    cache.ownsClient = true;
    return cache;
  }

  /** True while invalidations that failed during an outage are not applied yet. */
  get degraded(): boolean {
    return this.overflow || this.pending.size > 0;
  }

  /** The value under `key`; undefined when absent or expired. */
  async get<T>(key: string): Promise<T | undefined> {
    await this.recover();
    // Two commands sent together (one round trip; no script, so keys may live on different
    // Cluster nodes): the current generation and the entry.
    const [generation, raw] = await Promise.all([this.readGeneration(), this.run("GET", [this.keyPrefix + key])]);
    const entry = typeof raw === "string" ? parseEntry(raw) : undefined;
    // An entry of another generation (or format), or a lease's placeholder, is a miss.
    if (entry === undefined || entry.generation !== generation || entry.json === "") return undefined;
    return decodeValue(entry.json) as T;
  }

  /** Stores `value` under `key` for `ttlSeconds` (default: the cache's TTL). */
  async set<T>(key: string, value: T, ttlSeconds?: number): Promise<void> {
    // Tagged with the last generation seen: if another process has started a new one since, the
    // entry is a miss, never a stale hit. (An earlier release reads `v2|…` as a miss.)
    const generation = this.generation ?? (await this.readGeneration());
    await this.run("SET", [
      this.keyPrefix + key,
      `${ENTRY}${generation}||${encodeValue(value)}`,
      "EX",
      this.ttlOf(ttlSeconds),
    ]);
  }

  /** Removes `key` and ends its leases. */
  async delete(key: string): Promise<void> {
    try {
      await this.run("DEL", [this.keyPrefix + key]);
    } catch (error) {
      if (this.pending.size >= this.maxPending) this.overflow = true;
      else this.pending.add(key);
      this.logger?.warn(
        { err: error, key },
        "credit-management: Redis cache invalidation failed; reads bypass the cache until it is applied",
      );
      throw error;
    }
  }

  /** A token for `setLeased`, taken after a miss (see `Cache.lease`). */
  async lease(key: string, ttlSeconds?: number): Promise<string> {
    // Not while invalidations of this process are pending: one of them may be this key's.
    await this.recover();
    const generation = this.generation ?? (await this.readGeneration());
    const head = `${ENTRY}${generation}|`;
    const lease = await this.run("EVAL", [LEASE, 1, this.keyPrefix + key, head, newToken(), this.ttlOf(ttlSeconds)]);
    if (typeof lease !== "string") throw new Error("[credit-management] [redis] unexpected reply to the lease script");
    return `${head}${lease}|`;
  }

  /** Stores `value` only while `lease` is the key's live lease; resolves to whether it stored. */
  async setLeased<T>(key: string, lease: string, value: T, ttlSeconds?: number): Promise<boolean> {
    // `lease` is the entry's head under it (see `lease`): the script compares, then writes.
    if (!lease.startsWith(ENTRY) || !lease.endsWith("|")) return false;
    await this.recover();
    const stored = await this.run("EVAL", [
      SET_LEASED,
      1,
      this.keyPrefix + key,
      lease,
      encodeValue(value),
      this.ttlOf(ttlSeconds),
    ]);
    return stored === 1;
  }

  /** Closes the client if `connect()` created it. */
  async close(): Promise<void> {
    if (this.ownsClient) await this.client.quit?.();
  }

  private ttlOf(ttlSeconds: number | undefined): number {
    return Math.max(1, Math.ceil(ttlSeconds ?? this.ttl));
  }

  /** Applies remembered invalidations; throws (so reads go to the store) while that fails. */
  private async recover(): Promise<void> {
    if (!this.degraded) return;
    const now = Date.now();
    if (now - this.lastRecovery < 1000)
      throw new Error("[credit-management] [redis] invalidations pending after an outage");
    this.lastRecovery = now;
    try {
      if (this.overflow) {
        // O(1) and touches no other key: every entry written before is a miss from now on.
        const generation = newToken();
        await this.run("SET", [this.generationKey, generation]);
        this.generation = generation;
        this.overflow = false;
        this.pending.clear();
      } else {
        const keys = [...this.pending];
        for (let i = 0; i < keys.length; i += 500) {
          const batch = keys.slice(i, i + 500);
          await this.run(
            "DEL",
            batch.map((k) => this.keyPrefix + k),
          );
          for (const k of batch) this.pending.delete(k);
        }
      }
      this.logger?.warn("credit-management: Redis cache recovered; pending invalidations applied");
    } catch (error) {
      this.logger?.warn({ err: error }, "credit-management: Redis cache still unavailable; reading the store");
      throw error;
    }
  }

  /** The current generation, created (by whichever process comes first) if missing. */
  private async readGeneration(): Promise<string> {
    let generation = await this.run("GET", [this.generationKey]);
    if (typeof generation !== "string") {
      await this.run("SET", [this.generationKey, newToken(), "NX"]);
      generation = await this.run("GET", [this.generationKey]);
      if (typeof generation !== "string")
        throw new Error("[credit-management] [redis] the cache generation key vanished");
    }
    this.generation = generation;
    return generation;
  }

  private run(command: string, args: (string | number)[]): Promise<unknown> {
    return commandWithin(this.client.call(command, args), this.timeoutMs, command);
  }
}

/** The head of an entry in this format: `v2|<generation>|<lease>|<json>`. */
const ENTRY = "v2|";

/** An entry's generation and JSON (its lease, between them, is the Lua scripts' business). */
function parseEntry(raw: string): { generation: string; json: string } | undefined {
  if (!raw.startsWith(ENTRY)) return undefined;
  const a = raw.indexOf("|", ENTRY.length);
  const b = a < 0 ? -1 : raw.indexOf("|", a + 1);
  if (b < 0) return undefined;
  return { generation: raw.slice(ENTRY.length, a), json: raw.slice(b + 1) };
}

/**
 * KEYS: the entry. ARGV: the head `v2|<generation>|`, a new lease, the placeholder's TTL. Returns
 * the lease of the entry if it is of this generation and has one (a placeholder, or a value filled
 * under it: no `DEL` has ended it), else writes a placeholder under the new lease and returns it.
 */
const LEASE = `
local e = redis.call('GET', KEYS[1])
local n = #ARGV[1]
if e and string.sub(e, 1, n) == ARGV[1] then
  local bar = string.find(e, '|', n + 1, true)
  if bar and bar > n + 1 then
    return string.sub(e, n + 1, bar - 1)
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2] .. '|', 'EX', ARGV[3])
return ARGV[2]`;

/**
 * KEYS: the entry. ARGV: the head `v2|<generation>|<lease>|`, the JSON, the TTL. Writes the value
 * only if the entry still has that head (that generation and lease); returns 1 if it did, else 0.
 */
const SET_LEASED = `
local e = redis.call('GET', KEYS[1])
if e and string.sub(e, 1, #ARGV[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0`;

// The value codec. In the JSON, `{ "$date": "<ISO>" }` is a Date, and `{ "$escape": <object> }` is
// that object taken as it is: every object of the value whose only key is `$date` or `$escape` is
// written wrapped so, so no value can read back as something else.

/** The wrapper of an object of the value that looks like a marker (serialises as `{ "$escape": … }`). */
class Escaped {
  constructor(readonly $escape: object) {}
}

function encodeValue(value: unknown): string {
  return JSON.stringify(value, encodeMember);
}

function encodeMember(this: unknown, key: string, value: unknown): unknown {
  // `value` is after `toJSON` (a Date is a string by then); the holder still has the original.
  const original = (this as Record<string, unknown>)[key];
  if (original instanceof Date) return { $date: original.toISOString() };
  // The object inside a wrapper is written as it is (its members are still encoded).
  if (this instanceof Escaped) return value;
  if (typeof value === "object" && value !== null && !Array.isArray(value) && looksLikeMarker(value))
    return new Escaped(value);
  return value;
}

/** True when the object's JSON has exactly one member, named `$date` or `$escape`. */
function looksLikeMarker(o: object): boolean {
  let only: string | undefined;
  for (const k of Object.keys(o)) {
    const v = (o as Record<string, unknown>)[k];
    // Members JSON leaves out.
    if (v === undefined || typeof v === "function" || typeof v === "symbol") continue;
    if (only !== undefined) return false;
    only = k;
  }
  return only === "$date" || only === "$escape";
}

function decodeValue(json: string): unknown {
  return decode(JSON.parse(json));
}

/** Top down (a reviver works bottom up, and would read a wrapped object's content as a marker). */
function decode(v: unknown): unknown {
  if (typeof v !== "object" || v === null) return v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const d = decode(v[i]);
      if (d !== v[i]) v[i] = d;
    }
    return v;
  }
  const o = v as Record<string, unknown>;
  const only = soleKey(o);
  if (only === "$date" && typeof o.$date === "string") return new Date(o.$date);
  if (only === "$escape" && typeof o.$escape === "object" && o.$escape !== null && !Array.isArray(o.$escape)) {
    return decodeMembers(o.$escape as Record<string, unknown>);
  }
  return decodeMembers(o);
}

/** Decodes the members of a parsed object in place (JSON.parse made `__proto__` an own member). */
function decodeMembers(o: Record<string, unknown>): Record<string, unknown> {
  for (const k of Object.keys(o)) {
    const d = decode(o[k]);
    if (d !== o[k]) o[k] = d;
  }
  return o;
}

function soleKey(o: object): string | undefined {
  let only: string | undefined;
  for (const k in o) {
    if (only !== undefined) return undefined;
    only = k;
  }
  return only;
}

/** A random token: a lease, or a cache generation. */
const newToken = () => randomBytes(8).toString("hex");

// -------------------------------------------------------------------------------------------------
// Queue

/** Options of `new RedisStreamQueue()`: the client, the stream and its length. @public */
export interface RedisStreamQueueOptions {
  /** An ioredis client (not closed by `close()`). */
  client: RedisCommandClient;
  /** The stream (`XADD` key). Default `"credit-management:notifications"`. In a Cluster, use a hash tag (`{cm}:notifications`). */
  stream?: string;
  /** Trim the stream to about this many messages (`MAXLEN ~`); null: never trim. Default 100,000. */
  maxLength?: number | null;
  /**
   * How long a message id is remembered to drop a redelivery (the dispatcher delivers at least
   * once), in seconds. Default 86,400. 0: no dedupe at the stream.
   */
  dedupeTtlSeconds?: number;
  /** Deadline of one publish, in ms. Default 2,000. */
  timeoutMs?: number;
  /** Where the connection errors of the client `connect()` makes are reported (deduplicated). */
  logger?: Logger;
}

/**
 * Appends each message to a Redis stream with `XADD`, fields `id`, `userId`, `type`, `version`
 * (of the payload's schema, docs/events.md), `payload` (JSON), `createdAt`, `attempt`. A redelivered message (same `id` within `dedupeTtlSeconds`) is not
 * appended again: an atomic script appends only when no marker key `<stream>:sent:<id>` exists,
 * and sets the marker only once the append succeeded (a failed `XADD` fails the publish, which
 * the dispatcher retries). Read it with a consumer group (`XREADGROUP`, see
 * `examples/notifications-worker.ts`); consumers should still drop ids they have handled.
 * @public
 */
export class RedisStreamQueue implements NotificationQueue {
  /** The stream messages are added to. */
  readonly stream: string;
  private readonly client: RedisCommandClient;
  private ownsClient = false;
  private readonly maxLength: number | null;
  private readonly dedupeTtl: number;
  private readonly timeoutMs: number;

  /** A queue that adds each message to a Redis stream. */
  constructor(options: RedisStreamQueueOptions) {
    this.client = options.client;
    this.stream = options.stream ?? "credit-management:notifications";
    this.maxLength = options.maxLength === undefined ? 100_000 : options.maxLength;
    this.dedupeTtl = options.dedupeTtlSeconds ?? 86_400;
    this.timeoutMs = options.timeoutMs ?? 2000;
  }

  /** A queue with its own ioredis client for `url`; `close()` closes it. */
  static async connect(url: string, options: Omit<RedisStreamQueueOptions, "client"> = {}): Promise<RedisStreamQueue> {
    const queue = new RedisStreamQueue({ ...options, client: await clientFor(url, options.logger, "queue") });
    queue.ownsClient = true;
    return queue;
  }

  /** `PING`, within `timeoutMs` (`manager.health()`). */
  async ping(): Promise<void> {
    await commandWithin(this.client.call("PING", []), this.timeoutMs, "PING");
  }

  /** Adds the message to the stream. */
  async publish(m: NotificationMessage): Promise<void> {
    const fields = [
      "id",
      m.id,
      "userId",
      m.userId,
      "type",
      m.type,
      "version",
      m.version ?? 1,
      "payload",
      JSON.stringify(m.payload),
      "createdAt",
      m.createdAt,
      "attempt",
      m.attempt,
    ];
    const trim = this.maxLength === null ? [] : ["MAXLEN", "~", this.maxLength];
    const add = [this.stream, ...trim, "*", ...fields];
    if (this.dedupeTtl === 0) {
      await commandWithin(this.client.call("XADD", add), this.timeoutMs, "XADD");
      return;
    }
    await commandWithin(
      this.client.call("EVAL", [
        PUBLISH_ONCE,
        2,
        this.stream,
        `${this.stream}:sent:${m.id}`,
        this.dedupeTtl,
        ...add.slice(1),
      ]),
      this.timeoutMs,
      "XADD",
    );
  }

  /** Closes the client if `connect()` created it. */
  async close(): Promise<void> {
    if (this.ownsClient) await this.client.quit?.();
  }
}

/**
 * KEYS: stream, marker. ARGV: marker TTL, then XADD's arguments after the key. Scripts do not roll
 * back, so the marker is set only after XADD succeeded; XADD's error is returned as the reply.
 */
const PUBLISH_ONCE = `
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local id = redis.pcall('XADD', KEYS[1], unpack(ARGV, 2))
if type(id) == 'table' and id.err then
  return id
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return id`;
