import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AccountWork, type NewGrant } from "../src/core/domain/account-work.js";
import { inScope, scopedTotals } from "../src/core/domain/scope.js";
import type { LoadedState } from "../src/core/domain/state.js";
import { InsufficientCreditsError } from "../src/core/errors.js";
import { InMemoryDbManager } from "../src/built-in-parts.js";
import { CreditService } from "../src/credit-service.js";
import { useTestApi } from "../src/core/testing/runner.js";
import { expectNoOutOfScopeDraw, expectScopedFirstDraws } from "../src/core/testing/scoped.js";
import type { Account, Grant, GrantScope, JournalEntry, Reservation } from "../src/core/models/index.js";
import { deep } from "./fixtures/depth.js";

/**
 * The scoped burn-down (docs/teams-and-limits.md, "Scoped credits") through the pure state machine:
 * each unit of work is built from what the previous one saved, as a store would load it.
 */

const T0 = Date.now();

/** One account's stored state, carried from unit of work to unit of work. */
class Account1 {
  account: Account | null = null;
  grants = new Map<string, Grant>();
  holds = new Map<string, Reservation>();
  entries: JournalEntry[] = [];
  private ids = 0;
  clock = T0;

  run<T>(fn: (work: AccountWork) => T): T {
    const state: LoadedState = {
      account: this.account,
      grants: [...this.grants.values()].filter((g) => g.remaining > 0 && g.closedAt === null),
      reservations: [...this.holds.values()].filter((h) => h.status === "active"),
      idempotent: null,
    };
    const work = new AccountWork("u", state, new Date(this.clock), () => `id-${++this.ids}`);
    if (work.needsSettle) work.settle();
    const out = fn(work);
    // Held grants a commit or release returns credits to are part of the work, as the stores load them.
    const c = work.changes();
    this.account = c.account;
    for (const g of [...c.insertGrants, ...c.updateGrants]) this.grants.set(g.id, g);
    for (const h of [...c.insertReservations, ...c.updateReservations]) this.holds.set(h.id, h);
    this.entries.push(...c.entries);
    return out;
  }

  /** A unit of work that first loads every grant the active holds draw from (as the services do). */
  runWithHeld<T>(fn: (work: AccountWork) => T): T {
    return this.run((work) => {
      work.include(work.missingHeldGrants().map((id) => this.grants.get(id) as Grant));
      return fn(work);
    });
  }
}

const grant = (over: Partial<NewGrant> = {}): NewGrant => ({
  expiresAt: null,
  priority: 0,
  source: "manual",
  sourceRef: null,
  description: null,
  metadata: null,
  ...over,
});
const images = (spenders?: string[]): GrantScope =>
  spenders ? { features: ["images"], spenders } : { features: ["images"] };

/** The grant ids (and amounts) an entry drew from. */
const drawn = (e: JournalEntry) => e.grants.map((p) => [p.grantId, p.amount]);

describe("scoped burn-down in AccountWork", () => {
  it("a spend in scope draws its scoped grants first (priority, expiry, age), then unscoped; a plain spend never a scoped one", () => {
    const a = new Account1();
    const pool = a.run((w) => w.add(100, grant({ priority: 0 }), {})).grants[0]!.grantId;
    const late = a.run((w) => w.add(10, grant({ scope: images(), expiresAt: new Date(T0 + 9e6) }), {})).grants[0]!
      .grantId;
    const soon = a.run((w) => w.add(10, grant({ scope: images(), expiresAt: new Date(T0 + 5e6) }), {})).grants[0]!
      .grantId;
    const bobs = a.run((w) => w.add(10, grant({ scope: { spenders: ["bob"] } }), {})).grants[0]!.grantId;
    expect(a.account?.scoped).toBe(true);

    // "images" by alice: the two image grants (sooner expiry first), then the pool; never bob's.
    const e = a.run((w) =>
      w.deduct(25, { spender: "alice", feature: "images" }, { allowDebt: false, overdraftLimit: null }),
    );
    expect(drawn(e)).toEqual([
      [soon, 10],
      [late, 10],
      [pool, 5],
    ]);
    // A plain spend: only the pool (95) may pay; bob's 10 is not available to it.
    expect(a.run((w) => w.availableFor({ spender: null, feature: null }))).toBe(95);
    expect(a.run((w) => w.available)).toBe(105);
    expect(() => a.run((w) => w.deduct(96, {}, { allowDebt: false, overdraftLimit: null }))).toThrow(
      InsufficientCreditsError,
    );
    // Bob, any feature: his grant first, then the pool.
    expect(drawn(a.run((w) => w.deduct(15, { spender: "bob" }, { allowDebt: false, overdraftLimit: null })))).toEqual([
      [bobs, 10],
      [pool, 5],
    ]);
  });

  it("after service: a spend takes what its scope allows and the rest becomes debt; scoped credits pay no debt", () => {
    const a = new Account1();
    a.run((w) => w.add(10, grant(), {}));
    const img = a.run((w) => w.add(50, grant({ scope: images() }), {})).grants[0]!.grantId;
    const e = a.run((w) => w.deduct(30, {}, { allowDebt: true, overdraftLimit: null }));
    expect(e.grants.map((p) => p.grantId)).not.toContain(img);
    expect(a.account).toMatchObject({ debt: 20, balance: 30 });
    // A new scoped grant does not pay the debt a plain spend ran up; a plain one does.
    a.run((w) => w.add(5, grant({ scope: images() }), {}));
    expect(a.account?.debt).toBe(20);
    a.run((w) => w.add(25, grant(), {}));
    expect(a.account?.debt).toBe(0);
    // The overdraft limit counts only what the spend may use.
    expect(() => a.run((w) => w.deduct(10, {}, { allowDebt: true, overdraftLimit: 4 }))).toThrow(
      InsufficientCreditsError,
    );
    expect(a.run((w) => w.deduct(9, {}, { allowDebt: true, overdraftLimit: 4 })).amount).toBe(9);
  });

  it("holds keep their scope: commit spends the held scoped credits, a release returns them and they pay no debt", () => {
    const a = new Account1();
    const img = a.run((w) => w.add(40, grant({ scope: images(["alice"]) }), {})).grants[0]!.grantId;
    a.run((w) => w.add(10, grant(), {}));
    // Alice on images may use 50; bob on images only 10.
    expect(() => a.run((w) => w.reserve(11, 60, null, { spender: "bob", feature: "images" }))).toThrow(
      InsufficientCreditsError,
    );
    const hold = a.run((w) => w.reserve(45, 60, null, { spender: "alice", feature: "images" })).reservation;
    expect(hold.allocations.map((p) => [p.grantId, p.amount])).toEqual([
      [img, 40],
      [expect.any(String), 5],
    ]);
    // A plain after-service spend runs up debt (5 left unscoped, it takes 8).
    a.run((w) => w.deduct(8, {}, { allowDebt: true, overdraftLimit: null }));
    expect(a.account?.debt).toBe(3);
    // The release: the unscoped part pays the debt, the scoped 40 goes back to its grant untouched.
    const release = a.runWithHeld((w) => w.releaseHold(a.holds.get(hold.id)!, "released", {}).entry);
    expect(release.grants.find((p) => p.grantId === img)?.amount).toBe(40);
    expect(a.grants.get(img)?.remaining).toBe(40);
    expect(a.account).toMatchObject({ debt: 0, reserved: 0, balance: 42 });
  });

  it("expiry and voids stay per grant", () => {
    const a = new Account1();
    const img = a.run((w) => w.add(30, grant({ scope: images(), expiresAt: new Date(T0 + 1000) }), {})).grants[0]!
      .grantId;
    a.run((w) => w.add(10, grant(), {}));
    a.clock = T0 + 2000;
    a.run(() => undefined); // settles: the scoped grant expires
    expect(a.grants.get(img)).toMatchObject({ remaining: 0, closedReason: "expired", expiredAmount: 30 });
    expect(a.run((w) => w.availableFor({ spender: null, feature: "images" }))).toBe(10);
    const voided = a.run((w) => w.add(20, grant({ scope: images() }), {})).grants[0]!.grantId;
    a.run((w) => w.voidGrant(a.grants.get(voided)!, {}));
    expect(a.run((w) => w.availableFor({ spender: null, feature: "images" }))).toBe(10);
  });

  it("an account never given a scoped grant keeps its plain burn-down (no scoped flag)", () => {
    const a = new Account1();
    a.run((w) => w.add(10, grant(), {}));
    a.run((w) => w.deduct(5, { spender: "alice", feature: "images" }, { allowDebt: false, overdraftLimit: null }));
    expect(a.account?.scoped ?? null).toBeNull();
  });

  it("property: no grant ever pays for a spend outside its scope; balance = Σ remaining + Σ held − debt", () => {
    const spenders = [null, "alice", "bob"] as const;
    const features = [null, "images", "chat"] as const;
    const scopes: (GrantScope | null)[] = [
      null,
      { features: ["images"] },
      { spenders: ["alice"] },
      { features: ["chat"], spenders: ["bob", "alice"] },
    ];
    const op = fc.oneof(
      fc.record({
        kind: fc.constant("add" as const),
        n: fc.integer({ min: 1, max: 50 }),
        scope: fc.constantFrom(...scopes),
        priority: fc.integer({ min: 0, max: 2 }),
      }),
      fc.record({
        kind: fc.constantFrom("deduct" as const, "after" as const, "reserve" as const),
        n: fc.integer({ min: 1, max: 60 }),
        spender: fc.constantFrom(...spenders),
        feature: fc.constantFrom(...features),
      }),
      fc.record({ kind: fc.constantFrom("commit" as const, "release" as const), n: fc.integer({ min: 0, max: 80 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
        const a = new Account1();
        for (const o of ops) {
          try {
            if (o.kind === "add") a.run((w) => w.add(o.n, grant({ scope: o.scope, priority: o.priority }), {}));
            else if (o.kind === "deduct" || o.kind === "after") {
              const meta = { spender: o.spender ?? undefined, feature: o.feature ?? undefined };
              a.run((w) => w.deduct(o.n, meta, { allowDebt: o.kind === "after", overdraftLimit: null }));
            } else if (o.kind === "reserve") {
              a.run((w) =>
                w.reserve(o.n, 600, null, { spender: o.spender ?? undefined, feature: o.feature ?? undefined }),
              );
            } else {
              const hold = [...a.holds.values()].find((h) => h.status === "active");
              if (hold === undefined) continue;
              if (o.kind === "commit") a.runWithHeld((w) => w.commit(hold, o.n, {}, null));
              else a.runWithHeld((w) => w.releaseHold(hold, "released", {}));
            }
          } catch (error) {
            if (!(error instanceof InsufficientCreditsError)) throw error;
          }
        }
        // Every credit drawn for a spend came from a grant whose scope matches that spend.
        for (const e of a.entries) {
          if (e.type !== "deduct" && e.type !== "reserve") continue;
          const spend = { spender: e.spender ?? null, feature: e.feature ?? null };
          for (const p of e.grants) expect(inScope(a.grants.get(p.grantId)?.scope ?? null, spend)).toBe(true);
        }
        const acc = a.account;
        if (acc === null) return;
        let remaining = 0;
        for (const g of a.grants.values()) remaining += g.remaining;
        expect(acc.balance).toBe(remaining + acc.reserved - acc.debt);
      }),
      { numRuns: deep(300) },
    );
  });
});

describe("scopedTotals (what a plain getUserCreditsInfo answers per scope)", () => {
  const stored = (id: string, remaining: number, scope: GrantScope | null, over: Partial<Grant> = {}): Grant =>
    ({
      id,
      userId: "u",
      amount: remaining,
      remaining,
      scope,
      priority: 0,
      expiresAt: null,
      closedAt: null,
      createdAt: new Date(T0),
      ...over,
    }) as Grant;

  it("one total per scope whatever the order of its lists; unscoped, spent, closed and expired grants left out", () => {
    const now = new Date(T0);
    const totals = scopedTotals(
      [
        stored("a", 5, { features: ["images", "chat"] }),
        stored("b", 7, { features: ["chat", "images"] }),
        stored("c", 3, { spenders: ["alice"] }),
        stored("d", 100, null),
        stored("e", 4, { features: ["chat", "images"] }, { expiresAt: new Date(T0 - 1) }),
        stored("f", 6, { spenders: ["alice"] }, { closedAt: new Date(T0 - 1) }),
      ],
      now,
    );
    expect(totals).toEqual([
      { features: ["chat", "images"], spenders: null, remaining: 12 },
      { features: null, spenders: ["alice"], remaining: 3 },
    ]);
  });
});

/**
 * What the contract suite's race of scoped spends (src/core/testing/scoped.ts) may claim: every spend
 * draws in the order docs/teams-and-limits.md gives, but how many succeed depends on the order the
 * spends reach the account.
 */
describe("the contract's race of scoped spends: what it may claim", () => {
  useTestApi({ describe, it, expect, beforeAll, afterAll });
  const spends = [
    { spender: "alice", feature: "images" },
    { spender: "bob", feature: "chat" },
    { spender: "bob", feature: "images" },
    { spender: "carol" },
    {},
  ];

  it("in an order a race may take (alice on images first), every draw is in order and 10 credits stay in alice's grant", async () => {
    const db = new InMemoryDbManager();
    const clock = { now: T0 };
    const credits = new CreditService({ db, clock: () => new Date(clock.now) });
    await credits.addCredits("u", 40);
    await credits.addCredits("u", 30, { scope: { features: ["images"] } });
    clock.now += 1000; // alice's grant is younger: alice on images draws the images grant first
    await credits.addCredits("u", 20, { scope: { spenders: ["alice"] } });
    await credits.addCredits("u", 10, { scope: { features: ["chat"], spenders: ["bob"] } });
    // The race's 200 spends (40 of each kind), alice's on images reaching the account first.
    const order = Array.from({ length: 200 }, (_, i) => i).sort((a, b) => Number(a % 5 !== 0) - Number(b % 5 !== 0));
    const refused: number[] = [];
    for (const i of order) {
      const spend = spends[i % 5] as { spender?: string; feature?: string };
      await credits.deductCredits("u", 1, spend).catch((error: unknown) => {
        expect(error).toBeInstanceOf(InsufficientCreditsError);
        refused.push(i);
      });
    }
    // 30 of alice's on images from the images grant, 10 from hers; bob's on images find the pool only.
    expect(await credits.getUserCreditsInfo("u")).toMatchObject({ balance: 10 });
    expect((await credits.getUserCreditsInfo("u", spends[0])).available).toBe(10);
    for (const i of refused) expect((await credits.getUserCreditsInfo("u", spends[i % 5])).available).toBe(0);
    expect(await expectScopedFirstDraws(db, "u")).toHaveLength(90);
    expect(await expectNoOutOfScopeDraw(db, "u")).toHaveLength(90);
  });

  it("expectScopedFirstDraws fails a spend that drew the pool while a scoped grant it matches had credits", async () => {
    const at = new Date(T0);
    const grant = (id: string, scope: GrantScope | null): Grant =>
      ({
        id,
        userId: "u",
        amount: 10,
        remaining: 10,
        priority: 0,
        expiresAt: null,
        createdAt: at,
        closedAt: null,
        scope,
      }) as Grant;
    const entry = (seq: number, type: JournalEntry["type"], grantId: string, extra: object = {}): JournalEntry =>
      ({
        id: `e${seq}`,
        userId: "u",
        seq,
        type,
        amount: 1,
        grants: [{ grantId, amount: 1 }],
        createdAt: at,
        ...extra,
      }) as JournalEntry;
    const stored = (journal: JournalEntry[]) =>
      ({
        listGrants: async () => [grant("pool", null), grant("images", { features: ["images"] })],
        listJournal: async () => journal,
      }) as unknown as InMemoryDbManager;
    const adds = [
      { ...entry(1, "add", "pool"), amount: 10, grants: [{ grantId: "pool", amount: 10 }] },
      { ...entry(2, "add", "images"), amount: 10, grants: [{ grantId: "images", amount: 10 }] },
    ];
    const inOrder = [...adds, entry(3, "deduct", "images", { feature: "images" })];
    expect(await expectScopedFirstDraws(stored(inOrder), "u")).toHaveLength(1);
    const poolFirst = [...adds, entry(3, "deduct", "pool", { feature: "images" })];
    await expect(expectScopedFirstDraws(stored(poolFirst), "u")).rejects.toThrow(/entry 3 .* drew in the order/);
  });
});
