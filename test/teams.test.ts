import { describe, expect, it } from "vitest";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import { SpendLimitError, ValidationError } from "../src/core/errors.js";
import { CreditService } from "../src/credit-service.js";

/** A service whose clock the test moves, starting now. */
function service() {
  const clock = { now: Date.now() };
  const db = new InMemoryDbManager();
  const credits = new CreditService({ db, clock: () => new Date(clock.now) });
  return { credits, clock, db };
}
const DAY = 86_400_000;

describe("spender and feature on every spend (docs/teams-and-limits.md)", () => {
  it("are recorded on the entry, covered by its hash; a spend without them is recorded as before", async () => {
    const { credits } = service();
    await credits.addCredits("org", 100);
    const plain = await credits.deductCredits("org", 1);
    expect(plain).toMatchObject({ spender: null, feature: null });
    const named = await credits.deductCredits("org", 2, { spender: "alice", feature: "images" });
    expect(named).toMatchObject({ spender: "alice", feature: "images" });
    const after = await credits.deductCreditsAfterService("org", 3, { spender: "key-2" });
    expect(after).toMatchObject({ spender: "key-2", feature: null });
    const hold = await credits.reserveCredits("org", 10, { spender: "bob", feature: "text" });
    expect(hold).toMatchObject({ spender: "bob", feature: "text" });
    const commit = await credits.commitReservedCredits(hold.id, { amount: 4 });
    expect(commit).toMatchObject({ type: "commit_reserved", spender: "bob", feature: "text" });
    const history = (await credits.getCreditHistory("org")).items;
    expect(history.map((e) => [e.type, e.spender ?? null])).toEqual([
      ["commit_reserved", "bob"],
      ["reserve", "bob"],
      ["deduct", "key-2"],
      ["deduct", "alice"],
      ["deduct", null],
      ["add", null],
    ]);
    expect((await credits.audit("org", { from: "genesis" })).ok).toBe(true);
  });

  it("bad spender or feature is a ValidationError that changes nothing", async () => {
    const { credits } = service();
    await credits.addCredits("org", 10);
    await expect(credits.deductCredits("org", 1, { spender: "" })).rejects.toBeInstanceOf(ValidationError);
    await expect(credits.deductCredits("org", 1, { feature: "no spaces" })).rejects.toBeInstanceOf(ValidationError);
    expect((await credits.getUserCreditsInfo("org")).balance).toBe(10);
  });
});

describe("history by spender and feature (docs/teams-and-limits.md)", () => {
  it("filtered pages, followed to the end, are exactly the matching entries, newest first", async () => {
    const { credits } = service();
    await credits.addCredits("org", 1000);
    const who = ["alice", "bob", "carol"] as const;
    for (let i = 0; i < 40; i++)
      await credits.deductCredits("org", 1, { spender: who[i % 3], ...(i % 4 === 0 ? { feature: "images" } : {}) });
    const all = (await credits.getCreditHistory("org", { limit: 1000 })).items;
    for (const filter of [{ spender: "bob" }, { feature: "images" }, { spender: "alice", feature: "images" }]) {
      const seen: number[] = [];
      let cursor: string | undefined;
      do {
        const page = await credits.getCreditHistory("org", { ...filter, limit: 4, ...(cursor ? { cursor } : {}) });
        expect(page.items.length).toBeLessThanOrEqual(4);
        seen.push(...page.items.map((e) => e.seq));
        cursor = page.nextCursor ?? undefined;
      } while (cursor !== undefined);
      const expected = all
        .filter(
          (e) =>
            (filter.spender === undefined || e.spender === filter.spender) &&
            (filter.feature === undefined || e.feature === filter.feature),
        )
        .map((e) => e.seq);
      expect(expected.length).toBeGreaterThan(0);
      expect(seen).toEqual(expected);
    }
    await expect(credits.getCreditHistory("org", { spender: "" })).rejects.toBeInstanceOf(ValidationError);
  });

  it("one call reads at most 5,000 entries: a page may be empty with a cursor to go on from", async () => {
    const { credits } = service();
    await credits.addCredits("org", 10_000);
    await credits.deductCredits("org", 1, { spender: "alice" });
    for (let i = 0; i < 5_100; i++) await credits.deductCredits("org", 1, { spender: "bob" });
    const first = await credits.getCreditHistory("org", { spender: "alice" });
    expect(first.items).toEqual([]);
    expect(first.nextCursor).not.toBeNull();
    const second = await credits.getCreditHistory("org", { spender: "alice", cursor: first.nextCursor! });
    expect(second.items.map((e) => e.spender)).toEqual(["alice"]);
    expect(second.nextCursor).toBeNull();
  });
});

describe("spend limits (docs/teams-and-limits.md)", () => {
  it("a spend past the tightest limit is refused with SpendLimitError and changes nothing", async () => {
    const { credits } = service();
    await credits.addCredits("org", 10_000);
    await credits.setLimits("org", [
      { amount: 1000, period: "month" },
      { spender: "alice", amount: 300, period: "month" },
    ]);
    await credits.deductCredits("org", 250, { spender: "alice" });
    const refused = await credits.deductCredits("org", 51, { spender: "alice" }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SpendLimitError);
    expect((refused as SpendLimitError).status).toBe(429);
    expect((refused as SpendLimitError).details).toMatchObject({
      requested: 51,
      remaining: 50,
      limit: { spender: "alice", amount: 300, period: "month" },
    });
    expect(Date.parse((refused as SpendLimitError).details?.resetsAt as string)).toBeGreaterThan(Date.now());
    expect((await credits.getUserCreditsInfo("org")).balance).toBe(9750);
    // Bob is under the account's limit only.
    await credits.deductCredits("org", 750, { spender: "bob" });
    await expect(credits.deductCredits("org", 1, { spender: "bob" })).rejects.toBeInstanceOf(SpendLimitError);
    expect((await credits.getLimits("org")).map((l) => [l.spender, l.used, l.remaining])).toEqual([
      [null, 1000, 0],
      ["alice", 250, 50],
    ]);
    expect((await credits.audit("org")).ok).toBe(true);
  });

  it("a limit of 0 disables a spender; removeLimit enables it again", async () => {
    const { credits } = service();
    await credits.addCredits("org", 100);
    await credits.setLimits("org", [{ spender: "mallory", amount: 0, period: "day" }]);
    await expect(credits.deductCredits("org", 1, { spender: "mallory" })).rejects.toBeInstanceOf(SpendLimitError);
    await expect(credits.reserveCredits("org", 1, { spender: "mallory" })).rejects.toBeInstanceOf(SpendLimitError);
    await credits.deductCredits("org", 1, { spender: "alice" });
    expect(await credits.removeLimit("org", { spender: "mallory" })).toEqual([]);
    await credits.deductCredits("org", 1, { spender: "mallory" });
  });

  it("holds count when placed and are trued up at commit and release", async () => {
    const { credits } = service();
    await credits.addCredits("org", 1000);
    await credits.setLimits("org", [{ spender: "alice", amount: 100, period: "week" }]);
    const hold = await credits.reserveCredits("org", 80, { spender: "alice" });
    await expect(credits.deductCredits("org", 21, { spender: "alice" })).rejects.toBeInstanceOf(SpendLimitError);
    await credits.commitReservedCredits(hold.id, { amount: 30 });
    expect((await credits.getLimits("org"))[0]?.used).toBe(30);
    const other = await credits.reserveCredits("org", 70, { spender: "alice" });
    await credits.releaseReservedCredits(other.id);
    expect((await credits.getLimits("org"))[0]?.used).toBe(30);
  });

  it("after-service deductions are recorded past a limit, and say so", async () => {
    const { credits } = service();
    await credits.addCredits("org", 1000);
    await credits.setLimits("org", [{ spender: "alice", amount: 10, period: "day" }]);
    const entry = await credits.deductCreditsAfterService("org", 25, { spender: "alice" });
    expect(entry.metadata).toMatchObject({ overLimit: true });
    expect((await credits.getLimits("org"))[0]).toMatchObject({ used: 25, remaining: 0 });
    expect((await credits.audit("org")).ok).toBe(true);
  });

  it("windows reset: next day's spends start from 0", async () => {
    const { credits, clock } = service();
    await credits.addCredits("org", 1000);
    await credits.setLimits("org", [{ spender: "alice", amount: 10, period: "day" }]);
    await credits.deductCredits("org", 10, { spender: "alice" });
    await expect(credits.deductCredits("org", 1, { spender: "alice" })).rejects.toBeInstanceOf(SpendLimitError);
    clock.now += DAY;
    await credits.deductCredits("org", 10, { spender: "alice" });
  });

  it('check() answers reason "limit" with the reset time', async () => {
    const { credits } = service();
    await credits.addCredits("org", 1000);
    await credits.setLimits("org", [{ spender: "alice", amount: 10, period: "month" }]);
    expect(await credits.check("org", { spender: "alice", amount: 10 })).toMatchObject({ allowed: true, reason: "ok" });
    await credits.deductCredits("org", 5, { spender: "alice" });
    const denied = await credits.check("org", { spender: "alice", amount: 6 });
    expect(denied).toMatchObject({ allowed: false, reason: "limit", limitRemaining: 5 });
    expect(denied.resetsAt?.getTime()).toBeGreaterThan(Date.now());
    expect(await credits.check("org", { spender: "bob", amount: 6 })).toMatchObject({ allowed: true });
  });

  it("a limit changed mid-window keeps what was spent; setting limits is a journal entry", async () => {
    const { credits } = service();
    await credits.addCredits("org", 1000);
    await credits.setLimits("org", [{ spender: "alice", amount: 100, period: "month" }]);
    await credits.deductCredits("org", 80, { spender: "alice" });
    const [lowered] = await credits.setLimits("org", [{ spender: "alice", amount: 50, period: "month" }]);
    expect(lowered).toMatchObject({ used: 80, remaining: 0 });
    await expect(credits.deductCredits("org", 1, { spender: "alice" })).rejects.toBeInstanceOf(SpendLimitError);
    const types = (await credits.getCreditHistory("org")).items.map((e) => e.type);
    expect(types).toEqual(["limits", "deduct", "limits", "add"]);
    expect((await credits.audit("org", { from: "genesis" })).ok).toBe(true);
  });

  it("bad limits are a ValidationError that changes nothing", async () => {
    const { credits } = service();
    await expect(credits.setLimits("org", [{ amount: 5 }])).rejects.toBeInstanceOf(ValidationError);
    await expect(credits.setLimits("org", [{ amount: 5, resetsWith: "subscription" }])).rejects.toBeInstanceOf(
      ValidationError,
    );
    expect(await credits.getLimits("org")).toEqual([]);
    expect((await credits.getCreditHistory("org")).items).toEqual([]);
  });
});
