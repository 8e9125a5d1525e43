import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ExpirationService, SubscriptionService, ValidationError, createCreditManager } from "../src/index.js";
import { testStores } from "./fixtures/stores.js";

const T = Date.UTC(2031, 0, 31, 12);
const DAY = 86_400_000;

describe("subscriptions and jobs through createCreditManager", () => {
  it("wires subscriptions and expiration; jobs report counts and log a system ledger entry", async () => {
    const clock = { now: T };
    const m = await createCreditManager({ clock: () => new Date(clock.now) });
    expect(m.subscriptions).toBeInstanceOf(SubscriptionService);
    expect(m.expiration).toBeInstanceOf(ExpirationService);
    await m.credits.addCredits("a", 10, { expiresAt: new Date(T + DAY) });
    await m.credits.addCredits("b", 5, { expiresAt: new Date(T + DAY) });
    await m.credits.reserveCredits("b", 2, { ttlSeconds: 60 });
    clock.now = T + 2 * DAY;
    const report = await m.expiration.runAll();
    expect(report.releaseExpiredHolds).toMatchObject({
      holdsScanned: 1,
      holdsReleased: 1,
      creditsReleased: 2,
      users: 1,
      errors: 0,
    });
    expect(report.expireDueGrants).toMatchObject({ grantsScanned: 1, users: 1, errors: 0 });
    // b's grant expired with its hold's release (the holds job settled it); a's by the grants job.
    expect(report.expireDueGrants.creditsExpired).toBe(10);
    expect(await m.credits.getUserCreditsInfo("b")).toMatchObject({ balance: 0, reserved: 0 });
    const system = await m.ledger.getEntries({ eventType: "system" });
    expect(system.map((e) => e.message).sort()).toEqual([
      "job expireDueGrants",
      "job releaseExpiredHolds",
      "job renewDueSubscriptions",
    ]);
    expect(system.find((e) => e.message === "job expireDueGrants")?.details).toMatchObject({ grantsScanned: 1 });
    await m.close();
  });

  it("refuses bad input and job times in the future with ValidationError", async () => {
    const m = await createCreditManager();
    await expect(m.expiration.expireDueGrants(new Date(Date.now() + 60_000))).rejects.toBeInstanceOf(ValidationError);
    await expect(m.expiration.renewDueSubscriptions(undefined, { batchSize: 0 })).rejects.toBeInstanceOf(
      ValidationError,
    );
    await expect(
      m.subscriptions.createPlan({ name: "x", creditsPerPeriod: 1.5, billingPeriod: "monthly" }),
    ).rejects.toBeInstanceOf(ValidationError);
    await expect(
      m.subscriptions.createPlan({ name: "x", creditsPerPeriod: 1, billingPeriod: "hourly" as never }),
    ).rejects.toBeInstanceOf(ValidationError);
    await expect(m.subscriptions.subscribe("u", "bad plan id!")).rejects.toBeInstanceOf(ValidationError);
    await expect(m.subscriptions.changePlan("u", "p", { when: "later" as never })).rejects.toBeInstanceOf(
      ValidationError,
    );
    await m.close();
  });

  it("checkCreditExpiration and allocateSubscriptionCredits work per user; a future start allocates at its start", async () => {
    const clock = { now: T };
    const m = await createCreditManager({ clock: () => new Date(clock.now) });
    const plan = await m.subscriptions.createPlan({
      id: "pro",
      name: "Pro",
      creditsPerPeriod: 50,
      billingPeriod: "weekly",
      validityDays: 3,
    });
    const s = await m.subscriptions.subscribe("u", plan.id, { startAt: new Date(T + DAY) });
    expect(s.intent).not.toBeNull();
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(0);
    clock.now = T + DAY;
    const started = await m.expiration.allocateSubscriptionCredits("u");
    expect(started?.intent).toBeNull();
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(50);
    // validityDays: 3 days after the period's start.
    clock.now = T + 4 * DAY;
    expect(await m.expiration.checkCreditExpiration("u")).toEqual({ userId: "u", creditsExpired: 50 });
    expect(await m.expiration.allocateSubscriptionCredits("nobody")).toBeNull();
    await m.close();
  });
});

describe("subscription events", () => {
  it("records one subscription_allocation outbox event per period, in the allocation's unit of work", async () => {
    const clock = { now: T };
    const { InMemoryNotificationQueue } = await import("../src/index.js");
    const m = await createCreditManager({ clock: () => new Date(clock.now), queue: new InMemoryNotificationQueue() });
    await m.subscriptions.createPlan({ id: "d", name: "Daily", creditsPerPeriod: 5, billingPeriod: "daily" });
    await m.subscriptions.subscribe("u", "d");
    clock.now = T + DAY;
    await Promise.all([m.expiration.renewDueSubscriptions(), m.expiration.renewDueSubscriptions()]);
    const rows = await m.db.listNotifications("u", { limit: 100 });
    const allocations = rows.filter((r) => r.type === "subscription_allocation");
    expect(allocations).toHaveLength(2);
    expect(allocations.map((r) => (r.payload as { credits: number }).credits)).toEqual([5, 5]);
    await m.close();
  });
  it("records subscription_cancelled on a cancel and subscription_ended when the subscription ends, once each", async () => {
    const clock = { now: T };
    const { InMemoryNotificationQueue } = await import("../src/index.js");
    const m = await createCreditManager({ clock: () => new Date(clock.now), queue: new InMemoryNotificationQueue() });
    await m.subscriptions.createPlan({
      id: "d",
      name: "Daily",
      creditsPerPeriod: 5,
      billingPeriod: "daily",
      rollover: "all",
    });
    const s = await m.subscriptions.subscribe("u", "d");
    const events = async (user: string) =>
      (await m.db.listNotifications(user, { limit: 100 })).filter(
        (r) => r.type === "subscription_cancelled" || r.type === "subscription_ended",
      );

    // At period end: cancelled now (once, however often it is asked), ended by the renewal job.
    await m.subscriptions.cancel("u");
    await m.subscriptions.cancel("u");
    expect((await events("u")).map((r) => r.type)).toEqual(["subscription_cancelled"]);
    expect((await events("u"))[0]?.payload).toMatchObject({ subscriptionId: s.id, planId: "d", atPeriodEnd: true });
    // Resumed and cancelled again: a second cancellation event.
    await m.subscriptions.resume("u");
    await m.subscriptions.cancel("u");
    expect((await events("u")).map((r) => r.type)).toEqual(["subscription_cancelled", "subscription_cancelled"]);
    // The cancel kept the period's grants (rollover still sees them).
    expect((await m.subscriptions.getUserSubscription("u"))?.periodGrantIds).toHaveLength(1);
    clock.now = T + DAY;
    await Promise.all([m.expiration.renewDueSubscriptions(), m.expiration.renewDueSubscriptions()]);
    const after = await events("u");
    expect(after.map((r) => r.type)).toEqual([
      "subscription_cancelled",
      "subscription_cancelled",
      "subscription_ended",
    ]);
    expect(after[2]?.payload).toMatchObject({ subscriptionId: s.id, status: "canceled", reason: "cancelled" });
    expect((await m.subscriptions.listUserSubscriptions("u"))[0]).toMatchObject({
      status: "canceled",
      intent: null,
      nextRunAt: null,
    });
    await m.expiration.renewDueSubscriptions();
    expect(await events("u")).toHaveLength(3);

    // Immediately: both, in the cancel's unit of work; credits kept.
    await m.subscriptions.subscribe("v", "d");
    await m.subscriptions.cancel("v", { atPeriodEnd: false });
    expect((await events("v")).map((r) => [r.type, r.payload.atPeriodEnd ?? r.payload.reason])).toEqual([
      ["subscription_cancelled", false],
      ["subscription_ended", "cancelled"],
    ]);
    expect((await m.credits.getUserCreditsInfo("v")).balance).toBe(5);

    // No auto-renew: ended (expired) at the period's end, no cancellation.
    await m.subscriptions.subscribe("w", "d", { autoRenew: false });
    clock.now = T + 2 * DAY;
    await m.expiration.runAll();
    expect((await events("w")).map((r) => [r.type, r.payload.status, r.payload.reason])).toEqual([
      ["subscription_ended", "expired", "not_renewed"],
    ]);
    await m.close();
  });

  it("records no lifecycle events when notifications are off, and cancels the same", async () => {
    const m = await createCreditManager({ clock: () => new Date(T) });
    await m.subscriptions.createPlan({ id: "d", name: "Daily", creditsPerPeriod: 5, billingPeriod: "daily" });
    await m.subscriptions.subscribe("u", "d");
    const done = await m.subscriptions.cancel("u", { atPeriodEnd: false });
    expect(done).toMatchObject({ status: "canceled", intent: null });
    expect(await m.db.listNotifications("u", { limit: 100 })).toEqual([]);
    await m.close();
  });
});

/** Stores to run a scenario on (see test/fixtures/stores.ts). */
const stores = testStores("jobs");

describe.each(stores)("releaseExpiredHolds(asOf) on $name", ({ open }) => {
  const MIN = 60_000;
  it("releases exactly the holds lapsed at asOf (not those lapsed by the clock), settling the account as of asOf", async () => {
    const clock = { now: T };
    const { db, drop } = await open();
    const m = await createCreditManager({ db, clock: () => new Date(clock.now) });
    try {
      const u = `u-${randomUUID()}`;
      const v = `v-${randomUUID()}`;
      await m.credits.addCredits(u, 100); // never expires, drawn first (priority 0)
      const late = await m.credits.addCredits(u, 50, { expiresAt: new Date(T + 90 * MIN), priority: 5 });
      const lateGrant = late.grants[0]?.grantId as string;
      const h1 = await m.credits.reserveCredits(u, 10, { ttlSeconds: 60 }); // lapses at T+1min
      const h2 = await m.credits.reserveCredits(u, 20, { ttlSeconds: 3600 }); // lapses at T+60min
      await m.credits.addCredits(v, 10);
      const hv = await m.credits.reserveCredits(v, 5, { ttlSeconds: 7200 }); // lapses at T+120min

      clock.now = T + 180 * MIN; // everything has lapsed by the clock
      // A future asOf would release live holds early: refused, and nothing changes.
      await expect(m.expiration.releaseExpiredHolds(new Date(clock.now + 1))).rejects.toBeInstanceOf(ValidationError);
      expect((await db.getReservation(h1.id))?.status).toBe("active");

      const past = await m.expiration.releaseExpiredHolds(new Date(T + 30 * MIN));
      expect(past).toMatchObject({
        asOf: new Date(T + 30 * MIN).toISOString(),
        holdsScanned: 1,
        holdsReleased: 1,
        creditsReleased: 10,
        users: 1,
        errors: 0,
      });
      // h1 released, recorded when it happened (the clock); h2 and v's hold lapsed after asOf: untouched.
      expect(await db.getReservation(h1.id)).toMatchObject({ status: "expired", settledAt: new Date(clock.now) });
      expect((await db.getReservation(h2.id))?.status).toBe("active");
      expect((await db.getReservation(hv.id))?.status).toBe("active");
      expect(await db.getAccount(u)).toMatchObject({ balance: 150, reserved: 20 });
      // The grant due at T+90min was not expired by a run as of T+30min.
      expect(await db.getGrant(lateGrant)).toMatchObject({ remaining: 50, closedAt: null });
      expect((await db.listJournal(u, { order: "desc", limit: 1 }))[0]).toMatchObject({
        type: "release_reserved",
        amount: 10,
        reservationId: h1.id,
      });

      // The same run again changes nothing; a run by the clock releases the rest and expires the
      // late grant (grants first), as a settlement of the account would.
      expect(await m.expiration.releaseExpiredHolds(new Date(T + 30 * MIN))).toMatchObject({
        holdsScanned: 0,
        holdsReleased: 0,
      });
      const now = await m.expiration.releaseExpiredHolds();
      expect(now).toMatchObject({ holdsScanned: 2, holdsReleased: 2, creditsReleased: 25, users: 2, errors: 0 });
      expect(await db.getGrant(lateGrant)).toMatchObject({ remaining: 0, closedReason: "expired", expiredAmount: 50 });
      expect(await db.getAccount(u)).toMatchObject({ balance: 100, reserved: 0 });
      expect(await db.getAccount(v)).toMatchObject({ balance: 10, reserved: 0 });
      expect((await m.credits.audit(u)).ok).toBe(true);
      expect((await m.credits.audit(v)).ok).toBe(true);
    } finally {
      await m.close();
      await drop();
    }
  });

  it("runAll(asOf) releases holds as of asOf too", async () => {
    const clock = { now: T };
    const { db, drop } = await open();
    const m = await createCreditManager({ db, clock: () => new Date(clock.now) });
    try {
      const u = `u-${randomUUID()}`;
      await m.credits.addCredits(u, 100);
      await m.credits.reserveCredits(u, 10, { ttlSeconds: 60 });
      const h2 = await m.credits.reserveCredits(u, 20, { ttlSeconds: 3600 });
      clock.now = T + 180 * MIN;
      const r = await m.expiration.runAll(new Date(T + 30 * MIN));
      expect(r.releaseExpiredHolds).toMatchObject({ holdsReleased: 1, creditsReleased: 10 });
      expect((await db.getReservation(h2.id))?.status).toBe("active");
      // Committing it is judged by the clock: the hold has lapsed (a past asOf never extends a TTL).
      await expect(m.credits.commitReservedCredits(h2.id)).rejects.toMatchObject({ code: "RESERVATION_EXPIRED" });
    } finally {
      await m.close();
      await drop();
    }
  });
});
