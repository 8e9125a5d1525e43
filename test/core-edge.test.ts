// Core edge cases found by an audit of the credit service (scratch/audit2-core): each test failed
// before its fix.
import { describe, expect, it } from "vitest";
import {
  createCreditManager,
  InMemoryCache,
  InMemoryDbManager,
  RuleViolationError,
  ValidationError,
  type CreditManager,
} from "../src/index.js";
import { slowAccountReads } from "./fixtures/slow-reads.js";

const T0 = Date.UTC(2031, 0, 1);

async function managerAt(
  start = T0,
  overdraftLimit: number | "unlimited" = 0,
): Promise<{ m: CreditManager; clock: { now: number } }> {
  const clock = { now: start };
  const m = await createCreditManager({ clock: () => new Date(clock.now), overdraftLimit });
  return { m, clock };
}

describe("expireCredits releases lapsed holds too", () => {
  it("without asOf: a lapsed hold on an expired grant is released and its credits expire", async () => {
    const { m, clock } = await managerAt();
    await m.credits.addCredits("u", 100, { expiresAt: new Date(T0 + 100_000) });
    const hold = await m.credits.reserveCredits("u", 40, { ttlSeconds: 60 });
    clock.now += 200_000;
    expect(await m.credits.expireCredits("u")).toBe(100);
    expect((await m.credits.getReservation(hold.id)).status).toBe("expired");
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 0, reserved: 0 });
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });

  it("with a past asOf: only what had lapsed by then", async () => {
    const { m, clock } = await managerAt();
    await m.credits.addCredits("u", 100);
    const early = await m.credits.reserveCredits("u", 10, { ttlSeconds: 60 });
    const late = await m.credits.reserveCredits("u", 20, { ttlSeconds: 600 });
    clock.now += 1_000_000;
    expect(await m.credits.expireCredits("u", new Date(T0 + 120_000))).toBe(0);
    expect((await m.credits.getReservation(early.id)).status).toBe("expired");
    expect((await m.credits.getReservation(late.id)).status).toBe("active");
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });
});

describe("addCredits: a retry after its expiresAt passed", () => {
  it("answers with the first entry (same key, same arguments); a new call is still refused", async () => {
    const { m, clock } = await managerAt();
    const expiresAt = new Date(T0 + 60_000);
    const first = await m.credits.addCredits("u", 50, { expiresAt, idempotencyKey: "webhook-1" });
    clock.now += 120_000;
    const again = await m.credits.addCredits("u", 50, { expiresAt, idempotencyKey: "webhook-1" });
    expect(again.id).toBe(first.id);
    await expect(m.credits.addCredits("u", 50, { expiresAt, idempotencyKey: "webhook-2" })).rejects.toBeInstanceOf(
      RuleViolationError,
    );
    await expect(m.credits.addCredits("u", 50, { expiresAt })).rejects.toBeInstanceOf(RuleViolationError);
    expect((await m.credits.getCreditHistory("u")).items.filter((e) => e.type === "add")).toHaveLength(1);
    await m.close();
  });
});

describe("meter(): options are checked before the hold", () => {
  it("a non-function onSettled is a ValidationError and nothing is charged", async () => {
    const { m } = await managerAt();
    await m.credits.addCredits("u", 100);
    let ran = false;
    await expect(
      m.credits.meter("u", { estimate: 10, onSettled: "log" as never }, () => {
        ran = true;
        return 7;
      }),
    ).rejects.toBeInstanceOf(ValidationError);
    expect(ran).toBe(false);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 100, reserved: 0 });
    await m.close();
  });
});

describe("amounts stay in the safe-integer range", () => {
  const MAX = Number.MAX_SAFE_INTEGER;

  it("an addition that would take the balance past MAX_SAFE_INTEGER is refused and changes nothing", async () => {
    const { m } = await managerAt();
    await m.credits.addCredits("u", MAX);
    await expect(m.credits.addCredits("u", 2)).rejects.toBeInstanceOf(RuleViolationError);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: MAX });
    await m.credits.deductCredits("u", MAX);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 0, debt: 0 });
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });

  it("a deduction after service that would take the debt past it is refused and changes nothing", async () => {
    const { m } = await managerAt(T0, "unlimited");
    await m.credits.deductCreditsAfterService("u", MAX);
    await expect(m.credits.deductCreditsAfterService("u", 1)).rejects.toBeInstanceOf(RuleViolationError);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: -MAX, debt: MAX });
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });
});

describe("smaller input and idempotency gaps", () => {
  it("getGrants validates its options (null, unknown keys) as a ValidationError", async () => {
    const { m } = await managerAt();
    await m.credits.addCredits("u", 5);
    await expect(m.credits.getGrants("u", null as never)).rejects.toBeInstanceOf(ValidationError);
    await expect(m.credits.getGrants("u", { inactive: true } as never)).rejects.toBeInstanceOf(ValidationError);
    expect(await m.credits.getGrants("u", { includeInactive: true })).toHaveLength(1);
    await m.close();
  });

  it("a keyed commit of the full hold and its retry naming the hold's amount are the same call", async () => {
    const { m } = await managerAt();
    await m.credits.addCredits("u", 100);
    const hold = await m.credits.reserveCredits("u", 40);
    const first = await m.credits.commitReservedCredits(hold.id, { idempotencyKey: "c-1" });
    const again = await m.credits.commitReservedCredits(hold.id, { idempotencyKey: "c-1", amount: 40 });
    expect(again.id).toBe(first.id);
    expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 60, reserved: 0 });
    await m.close();
  });
});

describe("the balance cache and a write that races a read", () => {
  it("a read whose store answer is overtaken by a write does not cache the old balance", async () => {
    const db = new InMemoryDbManager();
    const query = slowAccountReads(db);
    const m = await createCreditManager({ db, cache: new InMemoryCache({ max: 100, ttlSeconds: 60 }) });
    await m.credits.addCredits("u", 100);
    query.slow = true;
    const reads = [m.credits.getUserCreditsInfo("u"), m.credits.getUserCreditsInfo("u")];
    await new Promise((r) => setTimeout(r, 5));
    query.slow = false;
    await m.credits.addCredits("u", 50); // commits and invalidates while both reads are in flight
    expect((await Promise.all(reads)).map((i) => i.balance)).toEqual([100, 100]); // what they read
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(150); // not the old value, cached
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(150);
    await m.close();
  });
});

describe("cached reads are the caller's own", () => {
  it("a result changed by its caller changes neither the cache nor the next read", async () => {
    const m = await createCreditManager({ cache: new InMemoryCache({ max: 100, ttlSeconds: 60 }) });
    await m.credits.addCredits("u", 100);
    const missed = await m.credits.getUserCreditsInfo("u"); // read from the store, then cached
    missed.balance = -1;
    missed.available = 1e9;
    const hit = await m.credits.getUserCreditsInfo("u"); // from the cache
    expect(hit).toEqual({ userId: "u", balance: 100, reserved: 0, available: 100, debt: 0 });
    hit.balance = -2;
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(100);
    const plan = await m.subscriptions.createPlan({
      name: "Pro",
      creditsPerPeriod: 10,
      billingPeriod: "monthly",
      metadata: { tier: 1 },
    });
    const read = await m.subscriptions.getPlan(plan.id); // from the store, then cached
    read.name = "changed";
    const cached = await m.subscriptions.getPlan(plan.id); // from the cache
    expect(cached.name).toBe("Pro");
    (cached.metadata as { tier: number }).tier = 2;
    const [listed] = await m.subscriptions.listPlans();
    (listed as { name: string }).name = "changed";
    expect(await m.subscriptions.getPlan(plan.id)).toMatchObject({ name: "Pro", metadata: { tier: 1 } });
    expect((await m.subscriptions.listPlans())[0]?.name).toBe("Pro");
    await m.close();
  });
});

describe("reads of an account with an expiry due", () => {
  /** Records the account reads the service makes of `db`. */
  function recordReads(db: InMemoryDbManager, reads: string[]): void {
    const getAccount = db.getAccount.bind(db);
    db.getAccount = (u) => (reads.push("getAccount"), getAccount(u));
    const getAccountCredits = db.getAccountCredits.bind(db);
    db.getAccountCredits = (u) => (reads.push("getAccountCredits"), getAccountCredits(u));
    const listGrants = db.listGrants.bind(db);
    db.listGrants = (u, o) => (reads.push("listGrants"), listGrants(u, o));
  }

  it("getGrants and getUserCreditsInfo settle it in a unit of work, then read the account no second time", async () => {
    const clock = { now: T0 };
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db, clock: () => new Date(clock.now) });
    for (const u of ["u", "v"]) {
      await m.credits.addCredits(u, 100, { expiresAt: new Date(T0 + 100_000) });
      await m.credits.addCredits(u, 5);
    }
    const reads: string[] = [];
    recordReads(db, reads);
    clock.now += 200_000;
    expect((await m.credits.getGrants("u")).map((g) => g.remaining)).toEqual([5]);
    expect(reads).toEqual(["getAccount", "listGrants"]);
    reads.length = 0;
    expect(await m.credits.getUserCreditsInfo("v")).toMatchObject({ balance: 5, available: 5 });
    expect(reads).toEqual(["getAccountCredits"]);
    expect((await m.credits.getGrants("u", { includeInactive: true })).map((g) => g.remaining).sort()).toEqual([0, 5]);
    await m.close();
  });
});
