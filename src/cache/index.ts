import { LRUCache } from "lru-cache";

/**
 * A cache of plans and credit-info reads. Writes invalidate; no decision that moves credits ever
 * reads it. Implementations may fail: the services log the failure and read the store instead.
 */
export interface Cache {
  get<T>(key: string): Promise<T | undefined>;
  /** `ttlSeconds` omitted: the cache's default TTL. */
  set<T>(key: string, value: T, ttlSeconds?: number): Promise<void>;
  /** May return nothing when done at once (the in-memory cache): callers await only a promise. */
  delete(key: string): Promise<void> | void;
}

export interface InMemoryCacheOptions {
  /** Most entries kept (least recently used go first). Default 10,000. */
  max?: number;
  /** Default TTL in seconds. Default 60. */
  ttlSeconds?: number;
}

/** `Cache` on lru-cache, in process memory. */
export class InMemoryCache implements Cache {
  private readonly lru: LRUCache<string, { v: unknown }>;
  private readonly ttlMs: number;

  constructor(options: InMemoryCacheOptions = {}) {
    this.ttlMs = (options.ttlSeconds ?? 60) * 1000;
    this.lru = new LRUCache({ max: options.max ?? 10_000, ttl: this.ttlMs });
  }

  async get<T>(key: string): Promise<T | undefined> {
    return this.lru.get(key)?.v as T | undefined;
  }

  async set<T>(key: string, value: T, ttlSeconds?: number): Promise<void> {
    this.lru.set(key, { v: value }, { ttl: ttlSeconds === undefined ? this.ttlMs : ttlSeconds * 1000 });
  }

  delete(key: string): void {
    this.lru.delete(key);
  }
}
