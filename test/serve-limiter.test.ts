import { describe, expect, it } from "vitest";
import { TokenBuckets } from "../src/http/rate-limit.js";

describe('serve: the limit of failed authentications, TokenBuckets (docs/service.md, "Secure it")', () => {
  it("blocks an IP once its burst of failures is spent, others not, and lets it in again as tokens refill", () => {
    let now = 1_000_000;
    const limiter = new TokenBuckets(3, 6, () => now); // 3 failures at once, then one every 10 s
    expect(limiter.waitFor("10.0.0.1")).toBe(0);
    for (let i = 0; i < 3; i++) {
      expect(limiter.waitFor("10.0.0.1")).toBe(0);
      limiter.take("10.0.0.1");
    }
    expect(limiter.waitFor("10.0.0.1")).toBe(10);
    expect(limiter.waitFor("10.0.0.2")).toBe(0);
    now += 4_000;
    expect(limiter.waitFor("10.0.0.1")).toBe(6);
    now += 6_000;
    expect(limiter.waitFor("10.0.0.1")).toBe(0);
    limiter.take("10.0.0.1");
    expect(limiter.waitFor("10.0.0.1")).toBe(10);
  });
});
