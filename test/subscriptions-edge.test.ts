import { describe, expect, it } from "vitest";
import {
  ConfigurationError,
  ConflictError,
  CreditService,
  IdempotencyConflictError,
  InMemoryDbManager,
  InMemoryNotificationQueue,
  NotFoundError,
  OutcomeUnknownError,
  StorageError,
  SubscriptionService,
  createCreditManager,
} from "../src/index.js";
import { type Subscription } from "../src/models-public.js";

const T = Date.UTC(2031, 0, 10, 12);
const DAY = 86_400_000;

async function setup(options: { notifications?: boolean } = {}) {
  const clock = { now: T };
  const m = await createCreditManager({
    clock: () => new Date(clock.now),
    ...(options.notifications === true ? { queue: new InMemoryNotificationQueue() } : {}),
  });
  await m.subscriptions.createPlan({ id: "basic", name: "Basic", creditsPerPeriod: 100, billingPeriod: "monthly" });
  await m.subscriptions.createPlan({ id: "pro", name: "Pro", creditsPerPeriod: 1000, billingPeriod: "monthly" });
  await m.subscriptions.createPlan({ id: "mini", name: "Mini", creditsPerPeriod: 10, billingPeriod: "monthly" });
  return { m, clock };
}

type Manager = Awaited<ReturnType<typeof setup>>["m"];

/**
 * Runs `competitor` (another writer) just before the next guarded subscription write lands, so that
 * write finds the version it read gone: a deterministic lost-update race.
 */
function raceNextWrite(m: Manager, competitor: () => Promise<unknown>): void {
  const db = m.subscriptions.db;
  const original = db.updateSubscription.bind(db);
  let armed = true;
  db.updateSubscription = async (s: Subscription, expectedVersion: number) => {
    if (armed) {
      armed = false;
      await competitor();
    }
    return original(s, expectedVersion);
  };
}

describe("subscription changes racing other writers are saved or refused, never lost", () => {
  it("changePlan(period_end) losing the race to a cancel is re-applied on what the cancel saved", async () => {
    const { m } = await setup();
    await m.subscriptions.subscribe("u", "basic");
    raceNextWrite(m, () => m.subscriptions.cancel("u", { atPeriodEnd: true }));
    const changed = await m.subscriptions.changePlan("u", "pro", { when: "period_end" });
    expect(changed).toMatchObject({ cancelAtPeriodEnd: true, pendingPlanId: "pro" });
    expect(await m.subscriptions.getUserSubscription("u")).toMatchObject({
      cancelAtPeriodEnd: true,
      pendingPlanId: "pro",
    });
    await m.close();
  });

  it("changePlan(now, prorate) losing the race to a cancel still changes the plan and its credits", async () => {
    const { m } = await setup();
    await m.subscriptions.subscribe("u", "basic");
    raceNextWrite(m, () => m.subscriptions.cancel("u", { atPeriodEnd: true }));
    const changed = await m.subscriptions.changePlan("u", "pro", { when: "now", credits: "prorate" });
    expect(changed).toMatchObject({ planId: "pro", cancelAtPeriodEnd: true, intent: null });
    expect(await m.subscriptions.getUserSubscription("u")).toMatchObject({ planId: "pro", cancelAtPeriodEnd: true });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1000);
    await m.close();
  });

  it("resume losing the race to a cancel at period end is re-applied", async () => {
    const { m } = await setup();
    await m.subscriptions.subscribe("u", "basic", { autoRenew: false });
    raceNextWrite(m, () => m.subscriptions.cancel("u", { atPeriodEnd: true }));
    const resumed = await m.subscriptions.resume("u");
    expect(resumed).toMatchObject({ cancelAtPeriodEnd: false, autoRenew: true });
    expect(await m.subscriptions.getUserSubscription("u")).toMatchObject({ cancelAtPeriodEnd: false, autoRenew: true });
    await m.close();
  });

  it("re-checks preconditions on retry: a change made meanwhile by someone else is refused, not reported as done", async () => {
    const { m } = await setup();
    await m.subscriptions.subscribe("u", "basic");
    raceNextWrite(m, () => m.subscriptions.changePlan("u", "pro"));
    await expect(m.subscriptions.changePlan("u", "pro")).rejects.toBeInstanceOf(ConflictError);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1000);

    await m.subscriptions.subscribe("v", "basic");
    raceNextWrite(m, () => m.subscriptions.cancel("v", { atPeriodEnd: false }));
    await expect(m.subscriptions.changePlan("v", "pro")).rejects.toBeInstanceOf(NotFoundError);
    expect(await m.subscriptions.getUserSubscription("v")).toBeNull();
    expect((await m.credits.getUserCreditsInfo("v")).balance).toBe(100);
    await m.close();
  });
});

describe("changePlan before the first period starts", () => {
  for (const [target, credits] of [
    ["pro", 1000],
    ["mini", 10],
  ] as const) {
    it(`prorate to ${target}: the unstarted period gets the new plan's full allocation (${credits})`, async () => {
      const { m, clock } = await setup();
      await m.subscriptions.subscribe("u", "basic", { startAt: new Date(T + 5 * DAY) });
      const c = await m.subscriptions.changePlan("u", target, { when: "now", credits: "prorate" });
      expect(c.intent?.allocate?.amount).toBe(credits);
      expect(c.intent?.prorate).toBeNull();
      expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(0);
      clock.now = T + 5 * DAY;
      await m.expiration.runAll();
      expect(await m.subscriptions.getUserSubscription("u")).toMatchObject({ planId: target, intent: null });
      expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(credits);
      expect((await m.credits.audit("u")).ok).toBe(true);
      await m.close();
    });
  }

  for (const credits of ["prorate", "keep"] as const) {
    it(`changePlan(now, ${credits}) keeps the subscription_cancelled event the pending work carries`, async () => {
      const { m, clock } = await setup({ notifications: true });
      await m.subscriptions.subscribe("u", "basic", { startAt: new Date(T + 2 * DAY) });
      await m.subscriptions.cancel("u");
      const c = await m.subscriptions.changePlan("u", "pro", { when: "now", credits });
      expect(c.intent?.events?.map((e) => e.type) ?? []).toEqual(
        credits === "prorate" ? ["subscription_cancelled"] : [],
      );
      clock.now = T + 2 * DAY;
      await m.expiration.runAll();
      clock.now = T + 45 * DAY;
      await m.expiration.runAll();
      const types = (await m.db.listNotifications("u", { limit: 100 })).map((r) => r.type);
      expect(types.filter((t) => t === "subscription_cancelled")).toHaveLength(1);
      expect(types.filter((t) => t === "subscription_ended")).toHaveLength(1);
      await m.close();
    });
  }
});

describe("cancel before the first period starts", () => {
  it("an immediate cancel keeps the subscription_cancelled event an earlier cancel at period end left pending", async () => {
    const { m } = await setup({ notifications: true });
    await m.subscriptions.subscribe("u", "basic", { startAt: new Date(T + 2 * DAY) });
    await m.subscriptions.cancel("u", { atPeriodEnd: true });
    await m.subscriptions.cancel("u", { atPeriodEnd: false });
    const rows = await m.db.listNotifications("u", { limit: 100 });
    const cancelled = rows
      .filter((r) => r.type === "subscription_cancelled")
      .map((r) => (r.payload as { atPeriodEnd: boolean }).atPeriodEnd);
    expect(cancelled.sort()).toEqual([false, true]);
    expect(rows.filter((r) => r.type === "subscription_ended")).toHaveLength(1);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(0);
    await m.close();
  });
});

describe("subscribe idempotency and re-subscribing", () => {
  it("a retry with the same key after an immediate cancel returns the first subscription and allocates nothing", async () => {
    const { m, clock } = await setup();
    const a = await m.subscriptions.subscribe("u", "pro", { idempotencyKey: "checkout-42" });
    await m.subscriptions.cancel("u", { atPeriodEnd: false });
    clock.now += 60_000;
    const b = await m.subscriptions.subscribe("u", "pro", { idempotencyKey: "checkout-42" });
    expect(b).toMatchObject({ id: a.id, status: "canceled" });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1000);
    expect(await m.subscriptions.listUserSubscriptions("u")).toHaveLength(1);
    // A new key subscribes again.
    const c = await m.subscriptions.subscribe("u", "pro", { idempotencyKey: "checkout-43" });
    expect(c.id).not.toBe(a.id);
    await m.close();
  });

  it("a retry with the same key and other arguments is an IdempotencyConflictError and changes nothing", async () => {
    const { m } = await setup();
    const first = await m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 1 } });
    await expect(
      m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 1 }, autoRenew: false }),
    ).rejects.toBeInstanceOf(IdempotencyConflictError);
    await expect(
      m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 2 } }),
    ).rejects.toBeInstanceOf(IdempotencyConflictError);
    await expect(
      m.subscriptions.subscribe("u", "basic", {
        idempotencyKey: "k1",
        metadata: { order: 1 },
        startAt: new Date(T - DAY),
      }),
    ).rejects.toBeInstanceOf(IdempotencyConflictError);
    await m.subscriptions.changePlan("u", "pro", { when: "period_end" });
    // A pending plan change does not make any plan acceptable...
    await expect(
      m.subscriptions.subscribe("u", "mini", { idempotencyKey: "k1", metadata: { order: 1 } }),
    ).rejects.toBeInstanceOf(IdempotencyConflictError);
    // ...and the exact retry still returns the first subscription.
    const again = await m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 1 } });
    expect(again).toMatchObject({ id: first.id, planId: "basic", autoRenew: true, pendingPlanId: "pro" });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(100);
    expect(await m.subscriptions.listUserSubscriptions("u")).toHaveLength(1);
    await m.close();
  });

  for (const how of ["cancelled at period end", "not auto-renewing"] as const) {
    it(`subscribes again once a subscription ${how} has passed its period's end, with no job or read in between`, async () => {
      const { m, clock } = await setup();
      const old = await m.subscriptions.subscribe("u", "pro", { autoRenew: how !== "not auto-renewing" });
      if (how === "cancelled at period end") await m.subscriptions.cancel("u", { atPeriodEnd: true });
      clock.now = T + 40 * DAY;
      const s = await m.subscriptions.subscribe("u", "pro");
      expect(s).toMatchObject({ status: "active", planId: "pro" });
      expect(s.id).not.toBe(old.id);
      const all = await m.subscriptions.listUserSubscriptions("u");
      expect(all.map((x) => x.status)).toEqual([how === "cancelled at period end" ? "canceled" : "expired", "active"]);
      await m.close();
    });
  }

  it("still refuses a second subscription while the first is running", async () => {
    const { m, clock } = await setup();
    await m.subscriptions.subscribe("u", "pro");
    await m.subscriptions.cancel("u", { atPeriodEnd: true });
    clock.now = T + 10 * DAY;
    await expect(m.subscriptions.subscribe("u", "pro")).rejects.toBeInstanceOf(ConflictError);
    await m.close();
  });
});

describe("checkCreditExpiration(user, asOf)", () => {
  it("expires only what was due at asOf, like credits.expireCredits", async () => {
    const { m, clock } = await setup();
    await m.credits.addCredits("b", 10, { expiresAt: new Date(T + 2 * DAY) });
    clock.now = T + 3 * DAY;
    expect(await m.expiration.checkCreditExpiration("b", new Date(T + DAY))).toEqual({
      userId: "b",
      creditsExpired: 0,
    });
    const entries = await m.db.listJournal("b", { order: "asc", limit: 100 });
    expect(entries.filter((e) => e.type === "expire")).toHaveLength(0);
    expect(await m.expiration.checkCreditExpiration("b", new Date(T + 2 * DAY))).toEqual({
      userId: "b",
      creditsExpired: 10,
    });
    expect(await m.expiration.checkCreditExpiration("b")).toEqual({ userId: "b", creditsExpired: 0 });
    await m.close();
  });
});

describe("proration prorates against what the period is on", () => {
  it("ignores an operator's updatePlan of the current plan mid-period (it applies from the next period)", async () => {
    const { m, clock } = await setup();
    await m.subscriptions.createPlan({ id: "pro-b", name: "Pro B", creditsPerPeriod: 1000, billingPeriod: "monthly" });
    await m.subscriptions.subscribe("u", "pro");
    await m.subscriptions.updatePlan("pro", { creditsPerPeriod: 0 });
    clock.now += 60_000;
    const changed = await m.subscriptions.changePlan("u", "pro-b", { when: "now", credits: "prorate" });
    expect(changed).toMatchObject({ planId: "pro-b", periodCredits: 1000 });
    // 1000 → 1000: nothing to prorate (against the plan's new 0 it would have added ~1000).
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(1000);
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });

  it("a second prorated change prorates against the plan the first one moved to, as it was then", async () => {
    const { m, clock } = await setup();
    for (const [id, credits] of [
      ["d100", 100],
      ["d500", 500],
      ["d300", 300],
    ] as const) {
      await m.subscriptions.createPlan({ id, name: id, creditsPerPeriod: credits, billingPeriod: "daily" });
    }
    await m.subscriptions.subscribe("u", "d100");
    clock.now = T + DAY / 4;
    await m.subscriptions.changePlan("u", "d500");
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(100 + 300); // (500 − 100) × 3/4
    await m.subscriptions.updatePlan("d500", { creditsPerPeriod: 50 });
    clock.now = T + DAY / 2;
    const changed = await m.subscriptions.changePlan("u", "d300");
    expect(changed.periodCredits).toBe(300);
    // (300 − 500) × 1/2 = −100 (against the updated 50 it would have added 125).
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(300);
    // The next period gets the plan's figure as it is then.
    clock.now = T + DAY;
    await m.expiration.runAll();
    expect(await m.subscriptions.getUserSubscription("u")).toMatchObject({
      planId: "d300",
      periodCredits: 300,
      periodIndex: 1,
    });
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });
});

describe("rollover of credits held at the period's end", () => {
  const H = 3_600_000;
  // A daily plan of 100 rolling everything over; 40 held from 23:00 over the period's end at 24:00.
  const scenarios: Record<string, (m: Manager, clock: { now: number }, holdId: string) => Promise<void>> = {
    "the job runs at the period's end, the hold is released later": async (m, clock, id) => {
      clock.now = T + 24 * H;
      await m.expiration.runAll();
      clock.now = T + 25 * H;
      await m.credits.releaseReservedCredits(id);
    },
    "the hold is released before the job runs": async (m, clock, id) => {
      clock.now = T + 25 * H;
      await m.credits.releaseReservedCredits(id);
    },
    "the hold lapses before the job runs": async (_m, clock) => {
      clock.now = T + 27 * H;
    },
    "the hold is committed in part before the job runs": async (m, clock, id) => {
      clock.now = T + 25 * H;
      await m.credits.commitReservedCredits(id, { amount: 30 });
    },
  };
  for (const [name, between] of Object.entries(scenarios)) {
    it(`carries what was unspent and unheld then (60), whenever the job runs: ${name}`, async () => {
      const { m, clock } = await setup();
      await m.subscriptions.createPlan({
        id: "daily",
        name: "Daily",
        creditsPerPeriod: 100,
        billingPeriod: "daily",
        rollover: "all",
      });
      await m.subscriptions.subscribe("u", "daily");
      clock.now = T + 23 * H;
      const hold = await m.credits.reserveCredits("u", 40, { ttlSeconds: 3 * 3600 });
      await between(m, clock, hold.id);
      clock.now = T + 27.5 * H;
      await m.expiration.runAll();
      const grants = await m.credits.getGrants("u", { includeInactive: true });
      expect(grants.filter((g) => g.source === "rollover").map((g) => g.amount)).toEqual([60]);
      // The held 40 expired (what was not spent of it) with the period's grant.
      const first = grants.find((g) => g.source === "subscription" && g.createdAt.getTime() === T);
      expect(first?.expiredAmount).toBe(name.includes("committed") ? 70 : 100);
      expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(160);
      expect((await m.credits.audit("u")).ok).toBe(true);
      await m.close();
    });
  }
});

describe("rollover of a period whose credits were all held at its end", () => {
  it("carries nothing when the hold returns them after the end (the grant is closed before they come back)", async () => {
    const H = 3_600_000;
    const { m, clock } = await setup();
    await m.subscriptions.createPlan({
      id: "daily",
      name: "Daily",
      creditsPerPeriod: 100,
      billingPeriod: "daily",
      rollover: "all",
    });
    await m.subscriptions.subscribe("u", "daily");
    clock.now = T + 23 * H;
    const hold = await m.credits.reserveCredits("u", 100, { ttlSeconds: 3 * 3600 });
    clock.now = T + 25 * H;
    await m.credits.releaseReservedCredits(hold.id); // nothing else was due: this unit of work settles nothing first
    const entries = await m.db.listJournal("u", { order: "asc", limit: 100 });
    expect(entries.filter((e) => e.type === "expire").map((e) => [e.amount, e.reservationId])).toEqual([
      [100, hold.id],
    ]);
    clock.now = T + 26 * H;
    await m.expiration.runAll();
    const grants = await m.credits.getGrants("u", { includeInactive: true });
    expect(grants.filter((g) => g.source === "rollover")).toEqual([]);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(100);
    expect((await m.credits.audit("u")).ok).toBe(true);
    await m.close();
  });
});

describe("rollover of credits a hold had stopped holding before the period's end", () => {
  const H = 3_600_000;
  for (const touched of [false, true]) {
    it(`carries them, whether or not the lapsed hold was settled before the end (${touched ? "it was" : "it was not"})`, async () => {
      const { m, clock } = await setup();
      await m.subscriptions.createPlan({
        id: "daily",
        name: "Daily",
        creditsPerPeriod: 100,
        billingPeriod: "daily",
        rollover: "all",
      });
      await m.subscriptions.subscribe("u", "daily");
      clock.now = T + 20 * H;
      await m.credits.reserveCredits("u", 40, { ttlSeconds: 2 * 3600 }); // lapses at 22:00, before the end at 24:00
      if (touched) {
        clock.now = T + 23 * H;
        expect((await m.credits.getUserCreditsInfo("u")).available).toBe(100);
      }
      clock.now = T + 25 * H;
      await m.expiration.runAll();
      const grants = await m.credits.getGrants("u", { includeInactive: true });
      expect(grants.filter((g) => g.source === "rollover").map((g) => g.amount)).toEqual([100]);
      expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(200);
      expect((await m.credits.audit("u")).ok).toBe(true);
      await m.close();
    });
  }
});

describe("renewDueSubscriptions with a past asOf", () => {
  it("never allocates a period that has already ended: the outcome is that of a run now", async () => {
    const results: unknown[] = [];
    for (const pastRunFirst of [false, true]) {
      const clock = { now: Date.UTC(2031, 0, 1) };
      const m = await createCreditManager({ clock: () => new Date(clock.now) });
      await m.subscriptions.createPlan({
        id: "p",
        name: "P",
        creditsPerPeriod: 100,
        billingPeriod: "monthly",
        rollover: "all",
      });
      await m.subscriptions.subscribe("u", "p");
      await m.credits.deductCredits("u", 60);
      clock.now = Date.UTC(2031, 3, 15); // the scheduler was down until Apr 15
      if (pastRunFirst) {
        const r = await m.expiration.renewDueSubscriptions(new Date(Date.UTC(2031, 1, 15)));
        expect(r).toMatchObject({ renewed: 1, periodsSkipped: 2, errors: 0 });
      }
      await m.expiration.runAll();
      const grants = await m.credits.getGrants("u", { includeInactive: true });
      // No grant was born expired.
      for (const g of grants) expect(g.expiresAt === null || g.expiresAt.getTime() > g.createdAt.getTime()).toBe(true);
      expect((await m.credits.audit("u")).ok).toBe(true);
      results.push({
        balance: (await m.credits.getUserCreditsInfo("u")).balance,
        grants: grants.map((g) => `${g.source}:${g.amount}:${g.expiresAt?.toISOString().slice(0, 10)}`).sort(),
        period: (await m.subscriptions.getUserSubscription("u"))?.currentPeriodStart.toISOString().slice(0, 10),
      });
      await m.close();
    }
    // January's unspent 40 rolls into April (the last allocated period's unspent, once).
    expect(results[0]).toEqual({
      balance: 140,
      grants: ["rollover:40:2031-05-01", "subscription:100:2031-02-01", "subscription:100:2031-05-01"],
      period: "2031-04-01",
    });
    expect(results[1]).toEqual(results[0]);
  });
});

describe("subscribe retries are compared with the call that subscribed", () => {
  for (const credits of ["prorate", "keep", "expire"] as const) {
    it(`an exact retry after changePlan(now, ${credits}) returns the subscription and changes nothing`, async () => {
      const { m, clock } = await setup();
      const first = await m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 1 } });
      clock.now += DAY;
      const changed = await m.subscriptions.changePlan("u", "pro", { when: "now", credits });
      const balance = (await m.credits.getUserCreditsInfo("u")).balance;
      clock.now += 60_000;
      const again = await m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 1 } });
      expect(again).toMatchObject({ id: first.id, planId: "pro", version: changed.version });
      expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(balance);
      expect(await m.subscriptions.listUserSubscriptions("u")).toHaveLength(1);
      // Still compared: the plan it is on now is not the plan that call asked for.
      for (const plan of ["pro", "mini"]) {
        await expect(
          m.subscriptions.subscribe("u", plan, { idempotencyKey: "k1", metadata: { order: 1 } }),
        ).rejects.toBeInstanceOf(IdempotencyConflictError);
      }
      await m.close();
    });
  }

  it("an exact retry after resume (autoRenew) or with the first call's startAt after a new cycle returns the subscription", async () => {
    const { m, clock } = await setup();
    const a = await m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", autoRenew: false });
    await m.subscriptions.resume("u");
    expect(await m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", autoRenew: false })).toMatchObject({
      id: a.id,
      autoRenew: true,
    });
    await expect(m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1" })).rejects.toBeInstanceOf(
      IdempotencyConflictError,
    );

    const startAt = new Date(T - 5 * DAY);
    const b = await m.subscriptions.subscribe("v", "basic", { idempotencyKey: "k2", startAt });
    clock.now += DAY;
    await m.subscriptions.changePlan("v", "pro", { when: "now", credits: "keep" }); // a new cycle: anchor = now
    expect(await m.subscriptions.subscribe("v", "basic", { idempotencyKey: "k2", startAt })).toMatchObject({
      id: b.id,
      planId: "pro",
    });
    expect(await m.subscriptions.subscribe("v", "basic", { idempotencyKey: "k2" })).toMatchObject({ id: b.id });
    await expect(
      m.subscriptions.subscribe("v", "basic", { idempotencyKey: "k2", startAt: new Date(clock.now - DAY) }),
    ).rejects.toBeInstanceOf(IdempotencyConflictError);
    // Without startAt the cycle started at the call's time: that is the startAt it is compared with.
    const c = await m.subscriptions.subscribe("w", "basic", { idempotencyKey: "k3" });
    clock.now += 60_000;
    await m.subscriptions.changePlan("w", "pro", { when: "now", credits: "keep" });
    expect(await m.subscriptions.subscribe("w", "basic", { idempotencyKey: "k3", startAt: c.createdAt })).toMatchObject(
      { id: c.id },
    );
    await m.close();
  });
});

/**
 * @see issue 26, item 4: the simulation (seed 12) found a subscriber refused for lack of credits
 * after the period's end, before the renewal job ran, because the period's allocation had been
 * spent (or voided): with no open period grant left to expire, nothing told the deduction that the
 * period had ended (docs/subscriptions.md, "Periods start on time").
 */
describe("a period whose credits are all spent or voided still starts the next one on time", () => {
  for (const how of ["spent", "voided", "held and committed"] as const) {
    it(`deduct and reserve after the period's end, with the allocation ${how}`, async () => {
      const { m, clock } = await setup();
      await m.subscriptions.createPlan({ id: "daily", name: "Daily", creditsPerPeriod: 100, billingPeriod: "daily" });
      const s = await m.subscriptions.subscribe("u", "daily");
      if (how === "spent") await m.credits.deductCredits("u", 100);
      if (how === "voided") await m.credits.voidGrant(s.periodGrantIds[0] as string);
      if (how === "held and committed") {
        const hold = await m.credits.reserveCredits("u", 100);
        await m.credits.commitReservedCredits(hold.id);
      }
      expect((await m.credits.getUserCreditsInfo("u")).available).toBe(0);
      clock.now += DAY + 1000;
      // No job has run: the deduction itself must bring the new period's 100 first.
      await expect(m.credits.deductCredits("u", 30)).resolves.toMatchObject({ type: "deduct", amount: 30 });
      await expect(m.credits.reserveCredits("u", 70)).resolves.toMatchObject({ amount: 70 });
      expect(await m.credits.getUserCreditsInfo("u")).toMatchObject({ balance: 70, reserved: 70, available: 0 });
      const current = await m.subscriptions.getUserSubscription("u");
      expect(current?.currentPeriodStart.getTime()).toBe(T + DAY);
      expect((await m.credits.audit("u")).ok).toBe(true);
      // And a refusal that no period explains stays a refusal (once: nothing allocated twice).
      await expect(m.credits.deductCredits("u", 1)).rejects.toMatchObject({ code: "INSUFFICIENT_CREDITS" });
      expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(70);
    });
  }

  it("a storage failure or an unknown outcome while bringing the period is a 503, not a false refusal (402)", async () => {
    const { m, clock } = await setup();
    await m.subscriptions.createPlan({ id: "daily", name: "Daily", creditsPerPeriod: 100, billingPeriod: "daily" });
    await m.subscriptions.subscribe("u", "daily");
    await m.credits.deductCredits("u", 100);
    clock.now += DAY + 1000;
    const db = m.subscriptions.db;
    const original = db.getActiveSubscription.bind(db);
    db.getActiveSubscription = () => Promise.reject(new StorageError("the store is down"));
    await expect(m.credits.deductCredits("u", 30)).rejects.toBeInstanceOf(StorageError);
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(0);
    // Nor is a period whose outcome is unknown (its commit's answer lost): it may be there.
    db.getActiveSubscription = () =>
      Promise.reject(new OutcomeUnknownError("the commit's answer was lost", { entryIds: [] }));
    await expect(m.credits.deductCredits("u", 30)).rejects.toBeInstanceOf(OutcomeUnknownError);
    db.getActiveSubscription = original;
    // Once the store answers, the period comes and the same deduction succeeds.
    await expect(m.credits.deductCredits("u", 30)).resolves.toMatchObject({ amount: 30 });
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(70);
  });
});

describe("hand-wired SubscriptionService", () => {
  it("needs its CreditService built with subscriptions: true, which brings a due period before an operation", async () => {
    const db = new InMemoryDbManager();
    const clock = { now: T };
    const now = () => new Date(clock.now);
    expect(() => new SubscriptionService({ db, credits: new CreditService({ db, clock: now }) })).toThrow(
      ConfigurationError,
    );
    expect(() => new SubscriptionService({ db, credits: new CreditService({ db, clock: now }) })).toThrow(
      /subscriptions: true/,
    );
    expect(() => new CreditService({ db, subscriptions: "yes" as never })).toThrow(ConfigurationError);
    const credits = new CreditService({ db, clock: now, subscriptions: true });
    const subscriptions = new SubscriptionService({ db, credits, clock: now });
    const plan = await subscriptions.createPlan({ name: "Pro", creditsPerPeriod: 100, billingPeriod: "monthly" });
    await subscriptions.subscribe("u", plan.id);
    await credits.deductCredits("u", 100);
    clock.now += 32 * DAY;
    // The period ended with its credits spent: the deduction brings the next period, then succeeds.
    const entry = await credits.deductCredits("u", 30);
    expect(entry.balanceAfter).toBe(70);
  });
});
