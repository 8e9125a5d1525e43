import { LRUCache } from "lru-cache";

/**
 * A cache of plans and credit-info reads. Writes invalidate; no decision that moves credits ever
 * reads it. Implementations may fail: the services log the failure and read the store instead.
 *
 * `lease` and `setLeased` are optional, and go together (a cache with only one of them is used
 * as one with neither). With them, a read that missed fills the cache only if no `delete` of the
 * key ran since it took its lease, so a read cannot put back what a write (in any process sharing
 * the cache) has just invalidated. Without them, reads fill with `set`, guarded only against the
 * writes of the same service instance: a read in one process can then cache a balance that a
 * write in another process invalidated meanwhile, served until the TTL.
 * @public
 */
export interface Cache {
  /** The value under `key`; undefined when absent or expired. */
  get<T>(key: string): Promise<T | undefined>;
  /** `ttlSeconds` omitted: the cache's default TTL. */
  set<T>(key: string, value: T, ttlSeconds?: number): Promise<void>;
  /**
   * May return nothing when done at once (the in-memory cache): callers await only a promise.
   * Ends every lease of `key` taken before it.
   */
  delete(key: string): Promise<void> | void;
  /**
   * Taken after a miss and before reading the source: a token for `setLeased`. Leaves a
   * placeholder (a miss for `get`) for `ttlSeconds` (default: the cache's TTL) if `key` has no
   * live lease; a lease that no `delete` has ended since it was taken (a placeholder, or a value
   * stored with it) may be handed to several readers. Must be atomic with `delete` and `setLeased`.
   */
  lease?(key: string, ttlSeconds?: number): Promise<string>;
  /**
   * Stores `value` only if `lease` is still the key's live lease (no `delete` since it was taken,
   * not expired, not evicted), as one atomic compare-and-set. Resolves to whether it stored.
   * Whenever in doubt, store nothing: a missed fill costs one more read of the source.
   */
  setLeased?<T>(key: string, lease: string, value: T, ttlSeconds?: number): Promise<boolean>;
}

/** Options of `new InMemoryCache()`. @public */
export interface InMemoryCacheOptions {
  /** Most entries kept (least recently used go first). Default 10,000. */
  max?: number;
  /** Default TTL in seconds. Default 60. */
  ttlSeconds?: number;
}

/** An entry: a value (`has`), and the lease it was filled under or is waiting for. */
interface Entry {
  v: unknown;
  has: boolean;
  lease: string | undefined;
}

/**
 * `Cache` on lru-cache, in process memory. Leases are supported, so services sharing one instance
 * (several managers in a process) never cache a read that another one's write overtook.
 * @public
 */
export class InMemoryCache implements Cache {
  private readonly lru: LRUCache<string, Entry>;
  private readonly ttlMs: number;
  /** Lease tokens: never reused by this cache. */
  private leases = 0;

  /** A cache of at most `options.max` entries, each kept for `options.ttlSeconds`. */
  constructor(options: InMemoryCacheOptions = {}) {
    this.ttlMs = (options.ttlSeconds ?? 60) * 1000;
    this.lru = new LRUCache({ max: options.max ?? 10_000, ttl: this.ttlMs });
  }

  /** The value under `key`; undefined when absent or expired. */
  async get<T>(key: string): Promise<T | undefined> {
    const e = this.lru.get(key);
    return e?.has ? (e.v as T) : undefined;
  }

  /** Stores `value` under `key` for `ttlSeconds` (default: the cache's TTL). */
  async set<T>(key: string, value: T, ttlSeconds?: number): Promise<void> {
    this.lru.set(key, { v: value, has: true, lease: undefined }, { ttl: this.ttl(ttlSeconds) });
  }

  /** Removes `key` and ends its leases. */
  delete(key: string): void {
    this.lru.delete(key);
  }

  /** A token for `setLeased`, taken after a miss (see `Cache.lease`). */
  async lease(key: string, ttlSeconds?: number): Promise<string> {
    const e = this.lru.get(key);
    if (e?.lease !== undefined) return e.lease;
    const lease = String(++this.leases);
    this.lru.set(key, { v: undefined, has: false, lease }, { ttl: this.ttl(ttlSeconds) });
    return lease;
  }

  /** Stores `value` only while `lease` is the key's live lease; resolves to whether it stored. */
  async setLeased<T>(key: string, lease: string, value: T, ttlSeconds?: number): Promise<boolean> {
    // An evicted or expired placeholder is a refusal too: nothing is stored that might be old.
    if (this.lru.get(key)?.lease !== lease) return false;
    this.lru.set(key, { v: value, has: true, lease }, { ttl: this.ttl(ttlSeconds) });
    return true;
  }

  private ttl(ttlSeconds: number | undefined): number {
    return ttlSeconds === undefined ? this.ttlMs : ttlSeconds * 1000;
  }
}
