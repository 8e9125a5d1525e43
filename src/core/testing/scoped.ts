import { randomUUID } from "node:crypto";
import { describe, expect, it } from "./runner.js";
import type { DbManager } from "../db/types.js";
import { inScope, spendOrder } from "../domain/scope.js";
import { InsufficientCreditsError, ValidationError } from "../errors.js";
import type { Grant, JournalEntry } from "../models/index.js";
import { accountWithClock, serviceWithClock } from "./support.js";

/*
 * Scoped grants (docs/teams-and-limits.md, "Scoped credits") in the contract suite: what the store
 * keeps of a grant's scope, and spends that never draw from a grant outside their scope — one
 * manager, or two over one store (the suite's `createPeer`) spending at once.
 */

/**
 * Every credit a `deduct` or `reserve` entry of `userId` drew came from a grant whose scope
 * matches the entry's spender and feature (commits spend what their hold drew). Returns the
 * entries it checked.
 */
export async function expectNoOutOfScopeDraw(db: DbManager, userId: string): Promise<JournalEntry[]> {
  const grants = new Map<string, Grant>();
  for (const g of await db.listGrants(userId, { includeInactive: true })) grants.set(g.id, g);
  const entries = await db.listJournal(userId, { order: "asc", limit: 100_000 });
  const checked: JournalEntry[] = [];
  for (const e of entries) {
    if (e.type !== "deduct" && e.type !== "reserve") continue;
    const spend = { spender: e.spender ?? null, feature: e.feature ?? null };
    for (const p of e.grants) {
      const grant = grants.get(p.grantId);
      expect(grant !== undefined, `grant ${p.grantId} of entry ${e.seq}`).toBe(true);
      expect(
        inScope(grant?.scope ?? null, spend),
        `entry ${e.seq} (${JSON.stringify(spend)}) drew from grant ${p.grantId} scoped ${JSON.stringify(grant?.scope)}`,
      ).toBe(true);
    }
    checked.push(e);
  }
  return checked;
}

/**
 * Every `deduct` and `reserve` entry of `userId` drew its credits in the order
 * docs/teams-and-limits.md ("Scoped credits") gives: the scoped grants its spend matches first,
 * then the unscoped ones, each group in burn-down order — as the grants stood after the entry
 * before it (a unit of work decides on the state the previous entry left). Replays the journal from
 * its first entry, knowing adds, deducts, holds and holds committed whole (what the cases that call
 * it write): any other entry fails the check. Returns the spends it checked.
 */
export async function expectScopedFirstDraws(db: DbManager, userId: string): Promise<JournalEntry[]> {
  const grants = new Map<string, Grant>();
  for (const g of await db.listGrants(userId, { includeInactive: true })) grants.set(g.id, { ...g, remaining: 0 });
  const held = new Map<string, number>();
  const entries = await db.listJournal(userId, { order: "asc", limit: 100_000 });
  const checked: JournalEntry[] = [];
  const move = (grantId: string, amount: number) => {
    const g = grants.get(grantId);
    expect(g !== undefined, `grant ${grantId}`).toBe(true);
    if (g !== undefined) grants.set(grantId, { ...g, remaining: g.remaining + amount });
  };
  for (const e of entries) {
    if (e.type === "add") {
      for (const p of e.grants) move(p.grantId, p.amount);
      continue;
    }
    if (e.type === "commit_reserved") {
      expect(e.amount, `entry ${e.seq} commits its hold whole`).toBe(held.get(e.reservationId ?? ""));
      continue;
    }
    expect(e.type === "deduct" || e.type === "reserve", `entry ${e.seq} (${e.type}) is not modelled`).toBe(true);
    const spend = { spender: e.spender ?? null, feature: e.feature ?? null };
    const expected: { grantId: string; amount: number }[] = [];
    let left = e.amount;
    for (const g of spendOrder([...grants.values()], spend, e.createdAt)) {
      if (left === 0) break;
      const take = Math.min(g.remaining, left);
      left -= take;
      expected.push({ grantId: g.id, amount: take });
    }
    expect(
      e.grants.map((p) => ({ grantId: p.grantId, amount: p.amount })),
      `entry ${e.seq} (${JSON.stringify(spend)}) drew in the order of the grants it may use`,
    ).toEqual(expected);
    for (const p of e.grants) move(p.grantId, -p.amount);
    if (e.type === "reserve") held.set(e.reservationId ?? "", e.amount);
    checked.push(e);
  }
  return checked;
}

/**
 * `db` whose reads of an account (and units of work) are recorded in `reads` by method name, in
 * call order: what a `CreditService` over it asks of the store.
 */
function recordingReads(db: DbManager, reads: string[]): DbManager {
  const recorded = new Set<PropertyKey>([
    "getAccount",
    "getAccountCredits",
    "getGrant",
    "getReservation",
    "listGrants",
    "listReservations",
    "listJournal",
    "transaction",
  ]);
  return new Proxy(db, {
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== "function") return value;
      const method = value as (...a: unknown[]) => unknown;
      if (!recorded.has(key)) return method.bind(target);
      return (...args: unknown[]) => {
        reads.push(String(key));
        return method.apply(target, args);
      };
    },
  });
}

const byId = (a: { id: string }, b: { id: string }) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

/** The accounts part's cases for scoped grants. */
export function scopedAccountCases(db: DbManager): void {
  describe("scoped grants", () => {
    const user = () => `u-${randomUUID()}`;

    it("a grant's scope is stored and read back; bad scopes are refused and change nothing", async () => {
      const { u, credits } = accountWithClock(db, user);
      const plain = await credits.addCredits(u, 10);
      const scoped = await credits.addCredits(u, 20, { scope: { features: ["images"], spenders: ["alice", "bob"] } });
      const byId = new Map((await db.listGrants(u)).map((g) => [g.id, g]));
      expect(byId.get(scoped.grants[0]?.grantId as string)?.scope).toEqual({
        features: ["images"],
        spenders: ["alice", "bob"],
      });
      expect(byId.get(plain.grants[0]?.grantId as string)?.scope ?? null).toBeNull();
      expect((await db.getAccount(u))?.scoped).toBe(true);
      for (const bad of [{}, { features: [] }, { features: ["no spaces"] }, { spenders: [""] }, { other: ["x"] }]) {
        await expect(credits.addCredits(u, 5, { scope: bad as never })).rejects.toBeInstanceOf(ValidationError);
      }
      expect(await db.listJournal(u, { order: "desc", limit: 10 })).toHaveLength(2);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("spends draw their scope's grants first, never another's; info and check() count what the spend may use", async () => {
      const { u, credits, clock } = accountWithClock(db, user);
      const pool = (await credits.addCredits(u, 100)).grants[0]?.grantId;
      clock.now += 1000;
      const images = (await credits.addCredits(u, 30, { scope: { features: ["images"] } })).grants[0]?.grantId;
      clock.now += 1000;
      const alice = (await credits.addCredits(u, 15, { scope: { spenders: ["alice"] } })).grants[0]?.grantId;
      expect(await credits.getUserCreditsInfo(u)).toEqual({
        userId: u,
        balance: 145,
        reserved: 0,
        available: 100,
        debt: 0,
        scoped: [
          { features: ["images"], spenders: null, remaining: 30 },
          { features: null, spenders: ["alice"], remaining: 15 },
        ],
      });
      expect((await credits.getUserCreditsInfo(u, { spender: "alice", feature: "images" })).available).toBe(145);
      expect((await credits.getUserCreditsInfo(u, { feature: "images" })).available).toBe(130);
      const e = await credits.deductCredits(u, 40, { spender: "alice", feature: "images" });
      // Both scoped grants match: in burn-down order (the same priority and no expiry: the older first).
      expect(e.grants).toEqual([
        { grantId: images, amount: 30 },
        { grantId: alice, amount: 10 },
      ]);
      await expect(credits.deductCredits(u, 101, { spender: "bob" })).rejects.toBeInstanceOf(InsufficientCreditsError);
      expect((await credits.deductCredits(u, 100, { spender: "bob" })).grants).toEqual([
        { grantId: pool, amount: 100 },
      ]);
      // Alice's 5 are left; a plain spend may use none of them.
      expect(await credits.check(u, { amount: 1 })).toMatchObject({ allowed: false });
      expect(await credits.check(u, { spender: "alice", amount: 5 })).toMatchObject({ allowed: true });
      const hold = await credits.reserveCredits(u, 5, { spender: "alice" });
      expect(hold.allocations).toEqual([{ grantId: alice, amount: 5 }]);
      await credits.commitReservedCredits(hold.id, { amount: 2 });
      expect(await credits.getUserCreditsInfo(u, { spender: "alice" })).toMatchObject({ balance: 3, available: 3 });
      expect((await expectNoOutOfScopeDraw(db, u)).length).toBe(3);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("getAccountCredits, where the store has it: the account, with its open grants once it is scoped", async () => {
      const read = db.getAccountCredits?.bind(db);
      if (read === undefined) return;
      const u = user();
      expect(await read(u)).toEqual({ account: null, grants: null });
      const { credits } = serviceWithClock(db);
      await credits.addCredits(u, 10);
      expect(await read(u)).toEqual({ account: await db.getAccount(u), grants: null });
      await credits.addCredits(u, 20, { scope: { features: ["images"] } });
      const alice = (await credits.addCredits(u, 5, { scope: { spenders: ["alice"] } })).grants[0]?.grantId;
      await credits.deductCredits(u, 5, { spender: "alice" }); // alice's grant first: spent, no longer open
      const got = await read(u);
      expect(got.account).toEqual(await db.getAccount(u));
      expect(got.account?.scoped).toBe(true);
      const open = await db.listGrants(u);
      expect(open).toHaveLength(2);
      expect([...(got.grants ?? [])].sort(byId)).toEqual(open.sort(byId));
      expect(got.grants?.some((g) => g.id === alice)).toBe(false);
    });

    it("getUserCreditsInfo and check() read a scoped account's state and grants at one snapshot, in one read where the store has getAccountCredits", async () => {
      const reads: string[] = [];
      const { credits } = serviceWithClock(recordingReads(db, reads));
      const once = db.getAccountCredits !== undefined ? ["getAccountCredits"] : ["getAccount", "transaction"];
      const u = user();
      await credits.addCredits(u, 100);
      await credits.addCredits(u, 30, { scope: { spenders: ["alice"] } });
      reads.length = 0;
      expect(await credits.getUserCreditsInfo(u, { spender: "alice" })).toEqual({
        userId: u,
        balance: 130,
        reserved: 0,
        available: 130,
        debt: 0,
        scoped: [{ features: null, spenders: ["alice"], remaining: 30 }],
      });
      expect(reads).toEqual(once);
      reads.length = 0;
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ available: 100 });
      expect(reads).toEqual(once);
      reads.length = 0;
      expect(await credits.check(u, { amount: 101 })).toMatchObject({ allowed: false, available: 100 });
      expect(reads).toEqual(once);
      reads.length = 0;
      expect(await credits.check(u, { spender: "alice", amount: 101 })).toMatchObject({ allowed: true });
      expect(reads).toEqual(once);
      // openAccount answers from its unit of work: no read after it.
      reads.length = 0;
      expect(await credits.openAccount(u)).toEqual({
        userId: u,
        balance: 130,
        reserved: 0,
        available: 100,
        debt: 0,
        scoped: [{ features: null, spenders: ["alice"], remaining: 30 }],
      });
      expect(reads.length === 1 && reads[0]?.startsWith("transaction"), reads.join()).toBe(true);
      // An account never given a scoped grant: one read, as ever.
      const plain = user();
      await credits.addCredits(plain, 10);
      reads.length = 0;
      expect(await credits.check(plain, { amount: 11 })).toMatchObject({ allowed: false, available: 10 });
      expect(await credits.getUserCreditsInfo(plain)).toEqual({
        userId: plain,
        balance: 10,
        reserved: 0,
        available: 10,
        debt: 0,
      });
      expect(reads).toEqual(once.slice(0, 1).concat(once.slice(0, 1)));
    });

    it("after-service spends run into debt rather than use another scope's credits; scoped grants pay no debt; voids stay per grant", async () => {
      const { u, credits } = accountWithClock(db, user, 100);
      await credits.addCredits(u, 10);
      const images = (await credits.addCredits(u, 50, { scope: { features: ["images"] } })).grants[0]?.grantId;
      await credits.deductCreditsAfterService(u, 30, { feature: "chat" });
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 30, debt: 20, available: -20 });
      const later = await credits.addCredits(u, 25, { scope: { features: ["images"] } });
      expect(later.grants).toHaveLength(1);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ debt: 20 });
      await credits.voidGrant(images as string);
      expect(await credits.getUserCreditsInfo(u, { feature: "images" })).toMatchObject({ available: 5 });
      await expectNoOutOfScopeDraw(db, u);
      expect((await credits.audit(u)).ok).toBe(true);
    });
  });
}

/** The concurrency part's case for scoped grants: spends of several scopes at once. */
export function scopedConcurrencyCase(db: DbManager, race: number): void {
  it("concurrent spends of several spenders and features never draw from a grant outside their scope (docs/teams-and-limits.md)", async () => {
    const u = `u-${randomUUID()}`;
    const { credits } = serviceWithClock(db);
    await credits.addCredits(u, 40);
    await credits.addCredits(u, 30, { scope: { features: ["images"] } });
    await credits.addCredits(u, 20, { scope: { spenders: ["alice"] } });
    await credits.addCredits(u, 10, { scope: { features: ["chat"], spenders: ["bob"] } });
    const spends = [
      { spender: "alice", feature: "images" },
      { spender: "bob", feature: "chat" },
      { spender: "bob", feature: "images" },
      { spender: "carol" },
      {},
    ];
    const n = Math.min(race, 200);
    const results = await Promise.allSettled(
      Array.from({ length: n }, (_, i) => {
        const spend = spends[i % spends.length] as { spender?: string; feature?: string };
        return i % 3 === 2
          ? credits.reserveCredits(u, 1, spend).then((h) => credits.commitReservedCredits(h.id))
          : credits.deductCredits(u, 1, spend);
      }),
    );
    const spent = results.filter((r) => r.status === "fulfilled").length;
    expect(spent).toBeLessThanOrEqual(100);
    expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 100 - spent, reserved: 0, debt: 0 });
    // No spend is refused while credits it may use are left (nothing is given back here, so what a
    // refused spend may use stays 0).
    for (const [i, r] of results.entries()) {
      if (r.status === "fulfilled") continue;
      expect(r.reason).toBeInstanceOf(InsufficientCreditsError);
      const spend = spends[i % spends.length] as { spender?: string; feature?: string };
      expect((await credits.getUserCreditsInfo(u, spend)).available, JSON.stringify(spend)).toBe(0);
    }
    // How many succeed depends on the order the spends reach the account, not only on the rule: a
    // spend that matches two scoped grants (alice on images) may empty the one it shares with
    // another spend (bob on images) and leave credits in the one only it may use, after its last
    // try, while bob on images is refused — every draw in order, yet not every credit spent. So the
    // check is the rule itself: each spend, replayed in journal order, drew from the grants it may
    // use in the order of docs/teams-and-limits.md, and one entry was written per spend.
    expect(await expectNoOutOfScopeDraw(db, u)).toHaveLength(spent);
    expect(await expectScopedFirstDraws(db, u)).toHaveLength(spent);
    expect((await credits.audit(u)).ok).toBe(true);
  });
}
