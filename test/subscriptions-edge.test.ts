import { describe, expect, it } from "vitest";
import {
  ConflictError,
  IdempotencyConflictError,
  InMemoryNotificationQueue,
  NotFoundError,
  createCreditManager,
  type Subscription,
} from "../src/index.js";

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
    expect(await m.subscriptions.getUserSubscription("u")).toMatchObject({ cancelAtPeriodEnd: true, pendingPlanId: "pro" });
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
  for (const [target, credits] of [["pro", 1000], ["mini", 10]] as const) {
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
      expect(c.intent?.events?.map((e) => e.type) ?? []).toEqual(credits === "prorate" ? ["subscription_cancelled"] : []);
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
    const cancelled = rows.filter((r) => r.type === "subscription_cancelled").map((r) => (r.payload as { atPeriodEnd: boolean }).atPeriodEnd);
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
    await expect(m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 1 }, autoRenew: false }))
      .rejects.toBeInstanceOf(IdempotencyConflictError);
    await expect(m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 2 } }))
      .rejects.toBeInstanceOf(IdempotencyConflictError);
    await expect(m.subscriptions.subscribe("u", "basic", { idempotencyKey: "k1", metadata: { order: 1 }, startAt: new Date(T - DAY) }))
      .rejects.toBeInstanceOf(IdempotencyConflictError);
    await m.subscriptions.changePlan("u", "pro", { when: "period_end" });
    // A pending plan change does not make any plan acceptable...
    await expect(m.subscriptions.subscribe("u", "mini", { idempotencyKey: "k1", metadata: { order: 1 } }))
      .rejects.toBeInstanceOf(IdempotencyConflictError);
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
    expect(await m.expiration.checkCreditExpiration("b", new Date(T + DAY))).toEqual({ userId: "b", creditsExpired: 0 });
    const entries = await m.db.listJournal("b", { order: "asc", limit: 100 });
    expect(entries.filter((e) => e.type === "expire")).toHaveLength(0);
    expect(await m.expiration.checkCreditExpiration("b", new Date(T + 2 * DAY))).toEqual({ userId: "b", creditsExpired: 10 });
    expect(await m.expiration.checkCreditExpiration("b")).toEqual({ userId: "b", creditsExpired: 0 });
    await m.close();
  });
});
