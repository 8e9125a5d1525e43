import { LRUCache } from "lru-cache";

/**
 * Token buckets by key (an IP, an account): `burst` tokens each, refilled at `perMinute`. Used by
 * the customer tokens' rate limit (docs/usage.md, "For your customers") and serve's limit of failed
 * authentications (docs/service.md, "Secure it"). At most `max` keys are tracked, the least recently
 * used dropped first; a key not tracked has a full bucket.
 */
export class TokenBuckets {
  private readonly buckets: LRUCache<string, { tokens: number; at: number }>;
  constructor(
    private readonly burst: number,
    private readonly perMinute: number,
    private readonly now: () => number = Date.now,
    max = 10_000,
  ) {
    this.buckets = new LRUCache({ max });
  }

  private refill(key: string) {
    const t = this.now();
    const b = this.buckets.get(key);
    if (b === undefined) return undefined;
    b.tokens = Math.min(this.burst, b.tokens + (Math.max(0, t - b.at) / 60_000) * this.perMinute);
    b.at = t;
    return b;
  }

  /** Whole seconds until `key` has a token again (at least 1), or 0 when it has one now. */
  waitFor(key: string): number {
    if (this.buckets.size === 0) return 0; // nothing tracked: every request skips the lookup
    const b = this.refill(key);
    if (b === undefined || b.tokens >= 1) return 0;
    return this.secondsFor(b.tokens);
  }

  /** Takes a token from `key`'s bucket (an empty one stays empty). */
  take(key: string): void {
    const b = this.refill(key) ?? { tokens: this.burst, at: this.now() };
    b.tokens = Math.max(0, b.tokens - 1);
    this.buckets.set(key, b);
  }

  /**
   * Takes `cost` tokens (a request's weight; at most the burst) when `key` has them and answers 0;
   * otherwise takes nothing and answers the whole seconds until it has them (at least 1).
   */
  tryTake(key: string, cost = 1): number {
    const need = Math.min(cost, this.burst);
    const b = this.refill(key) ?? { tokens: this.burst, at: this.now() };
    if (b.tokens < need) return this.secondsFor(b.tokens, need);
    b.tokens -= need;
    this.buckets.set(key, b);
    return 0;
  }

  private secondsFor(tokens: number, need = 1): number {
    return Math.max(1, Math.ceil(((need - tokens) / this.perMinute) * 60));
  }
}
