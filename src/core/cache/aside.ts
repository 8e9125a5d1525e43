import type { Logger } from "../logger.js";
import { isPromiseLike } from "../util/promise.js";
import type { Cache } from "./index.js";

/**
 * How a service uses its `Cache` (cache-aside), in one place for every service: a failed read is
 * a miss, a failed invalidation is logged (the store was written; the answer stands), and a read
 * after a miss fills the cache only if no invalidation of its key may have overtaken it — in any
 * process sharing a cache that leases (see `startFill`), and with any cache at least this instance's
 * own invalidations, counted while reads of the key are in flight. Otherwise a read that began
 * before a write could put back what the write just invalidated, served until the TTL.
 */
export class CacheAside {
  /** Keys with reads in flight: how many, and the invalidations of the key since the first began. */
  private readonly inFlight = new Map<string, { readers: number; invalidations: number }>();

  constructor(
    private readonly cache: Cache,
    private readonly ttlSeconds: number,
    private readonly logger: Logger | undefined,
  ) {}

  async get<T>(key: string): Promise<T | undefined> {
    try {
      return await this.cache.get<T>(key);
    } catch (error) {
      this.logger?.warn({ err: error, key }, "credit-management: cache read failed; reading the store");
      return undefined;
    }
  }

  /**
   * After a miss: `read()` from the store, then cache `cached(value)` — a value of its own, never
   * the one returned, so a caller that changes its result changes nothing cached — unless the key
   * was invalidated meanwhile.
   */
  async readThrough<T>(key: string, read: () => Promise<T>, cached: (value: T) => unknown): Promise<T> {
    const fill = await startFill(this.cache, key, this.ttlSeconds, this.logger);
    let flight = this.inFlight.get(key);
    if (flight === undefined) this.inFlight.set(key, (flight = { readers: 0, invalidations: 0 }));
    flight.readers++;
    const before = flight.invalidations;
    let value: T;
    try {
      value = await read();
    } finally {
      if (--flight.readers === 0) this.inFlight.delete(key);
    }
    if (flight.invalidations === before) await fill(cached(value));
    return value;
  }

  /**
   * After a write that changed what `key` caches (never before: a read in between would cache the
   * old value): drops it, and makes the fills of reads in flight no-ops. A promise only when the
   * cache answers with one; callers await it (a shared cache must not serve the old value to the
   * writer's next read), but it never rejects.
   */
  invalidate(key: string): Promise<void> | undefined {
    const flight = this.inFlight.get(key);
    if (flight !== undefined) flight.invalidations++;
    try {
      const deleting = this.cache.delete(key);
      if (isPromiseLike(deleting))
        return Promise.resolve(deleting).then(undefined, (error: unknown) => this.invalidationFailed(error, key));
    } catch (error) {
      this.invalidationFailed(error, key);
    }
    return undefined;
  }

  private invalidationFailed(error: unknown, key: string): void {
    this.logger?.warn({ err: error, key }, "credit-management: cache invalidation failed");
  }
}

/**
 * How a service fills `key` after a miss: call before reading the source, then pass what was read
 * to the returned function (or skip it when the read is known to be stale). With a cache that
 * leases, the lease is taken here, so the fill stores nothing if an invalidation ran meanwhile (in
 * any process); a lease that cannot be taken means no fill (a plain `set` could put back an old
 * value). Otherwise the fill is a plain `set`. Cache failures are logged, never thrown: the store
 * was read, the answer stands.
 */
async function startFill(
  cache: Cache,
  key: string,
  ttlSeconds: number,
  logger: Logger | undefined,
): Promise<(value: unknown) => Promise<void>> {
  const failed = (error: unknown, what: string) => logger?.warn({ err: error, key }, `credit-management: ${what}`);
  if (typeof cache.lease !== "function" || typeof cache.setLeased !== "function") {
    return (value) => cache.set(key, value, ttlSeconds).catch((error: unknown) => failed(error, "cache write failed"));
  }
  const leasing = cache as Required<Cache>;
  let lease: string;
  try {
    lease = await leasing.lease(key, ttlSeconds);
  } catch (error) {
    failed(error, "cache lease failed; this read is not cached");
    return async () => undefined;
  }
  return (value) =>
    leasing.setLeased(key, lease, value, ttlSeconds).then(
      () => undefined,
      (error: unknown) => failed(error, "cache write failed"),
    );
}
