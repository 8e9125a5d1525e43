/**
 * The customer's state in one read (`getCustomerState`, `listCustomerStates`;
 * docs/customer-state.md): the figures of one snapshot, each feature decided as `check()` decides
 * it, and never a lagging copy — a spend through one manager is in the next read through the other.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "../core/testing/runner.js";
import type { DbManager } from "../core/db/types.js";
import { InMemoryCache } from "../core/cache/index.js";
import { ConfigurationError, ValidationError } from "../core/errors.js";
import type { AlertThreshold, FeatureRules } from "../core/models/index.js";
import { NotificationService } from "../core/services/notification-service.js";
import { CreditService } from "../credit-service.js";
import { SubscriptionService } from "../core/services/subscription-service.js";
import { DAY, T0, type PartOptions } from "../core/testing/support.js";

const RULES: FeatureRules = {
  images: { minAvailable: 10 },
  export: { minAvailable: 0, enabled: false },
  studio: { minAvailable: 1, plans: ["cs-studio"] },
};

/** The customer state's part of the contract: `getCustomerState` on the store. @beta */
export function runCustomerStateContract(
  getDb: () => DbManager,
  options: PartOptions & {
    getPeer?: () => DbManager;
    /** False for a store without the outbox part: the cases that read its rows leave them out. */
    outbox?: boolean;
  } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const prefix = `cs-${randomUUID()}`;
  let n = 0;
  const user = () => `${prefix}-${String(++n).padStart(3, "0")}`;
  const clock = { now: T0 };
  const service = (db: DbManager = getDb(), features: FeatureRules = RULES, overdraftLimit: number | "unlimited" = 0) =>
    new CreditService({
      db,
      clock: () => new Date(clock.now),
      cache: new InMemoryCache(),
      features,
      subscriptions: true,
      overdraftLimit,
    });

  describe("customer state", () => {
    it("an account never used: zeros at seq 0, the rules' features, and nothing created", async () => {
      const credits = service();
      const u = user();
      const state = await credits.getCustomerState(u);
      expect(state).toMatchObject({ userId: u, seq: 0, balance: 0, reserved: 0, available: 0, debt: 0 });
      expect(state.features.map((f) => [f.feature, f.allowed, f.reason])).toEqual([
        ["export", false, "feature_off"],
        ["images", false, "insufficient_credits"],
        ["studio", false, "feature_off"],
      ]);
      expect(state.limits).toEqual([]);
      expect(state.subscription).toBeNull();
      expect(await getDb().getAccount(u)).toBeNull();
    });

    it("alerts: the state's are getAlerts' answer, and left_percent reads the state's figures", async () => {
      const chat: AlertThreshold = { id: "chat", kind: "left_percent", atOrBelow: 50, feature: "chat" };
      const now = () => new Date(clock.now);
      const credits = new CreditService({ db: getDb(), clock: now, alerts: { alerts: [chat] } });
      const notifications = new NotificationService({ db: getDb(), clock: now, alerts: [chat] });
      const u = user();
      await credits.addCredits(u, 300);
      await credits.addCredits(u, 100, { scope: { features: ["chat"] } });
      await credits.deductCredits(u, 80, { feature: "chat" });
      await credits.deductCredits(u, 140);
      const state = await credits.getCustomerState(u);
      const figures = state.features.find((f) => f.feature === "chat")!;
      expect(figures).toMatchObject({ granted: 400, used: 220, left: 180 });
      const [alert] = (await notifications.getAlerts(u)).filter((a) => a.source !== "builtIn");
      expect(alert).toMatchObject({ state: "in_alarm", value: (figures.left * 100) / figures.granted });
      expect(state.alerts).toEqual(await notifications.getAlerts(u));
    });

    it("what was granted: the grants spent to their last credit since their scope last had nothing left", async () => {
      const credits = service();
      const peer = service(options.getPeer?.() ?? getDb());
      const u = user();
      const images = async (via: CreditService = credits) =>
        (await via.getCustomerState(u)).features.find((f) => f.feature === "images");
      await credits.addCredits(u, 1000);
      await credits.addCredits(u, 100);
      await credits.deductCredits(u, 1000); // the 1,000 spent to its last credit
      expect(await images()).toMatchObject({ granted: 1100, used: 1000, left: 100 });
      expect(await images(peer)).toMatchObject({ granted: 1100, used: 1000, left: 100 });
      await credits.addCredits(u, 1000); // a top-up while something is left adds to the allowance
      expect(await images()).toMatchObject({ granted: 2100, used: 1000, left: 1100 });
      // A scoped grant spent out counts behind its feature while its scope has something left.
      await credits.addCredits(u, 50, { scope: { features: ["images"] } });
      await credits.addCredits(u, 50, { scope: { features: ["images"] } });
      await credits.deductCredits(u, 50, { feature: "images" });
      expect(await images()).toMatchObject({ granted: 2200, used: 1050, left: 1150 });
      // Its scope left with nothing: its next grant starts a new allowance there.
      await credits.deductCredits(u, 50, { feature: "images" });
      expect(await images()).toMatchObject({ granted: 2100, used: 1000, left: 1100 });
      // The pool spent out: the next grant starts a new allowance.
      await credits.deductCredits(u, 1100);
      expect(await images()).toMatchObject({ granted: 0, used: 0, left: 0 });
      await credits.addCredits(u, 300);
      await credits.deductCredits(u, 100);
      expect(await images()).toMatchObject({ granted: 300, used: 100, left: 200 });
      expect(await images(peer)).toMatchObject({ granted: 300, used: 100, left: 200 });
    });

    it("what was granted: a charge given back to a grant spent out in an ended allowance makes it an open grant of the current one", async () => {
      const credits = service();
      const peer = service(options.getPeer?.() ?? getDb());
      const u = user();
      const images = async (via: CreditService = credits) =>
        (await via.getCustomerState(u)).features.find((f) => f.feature === "images");
      const old = (await credits.addCredits(u, 100)).grants[0]!.grantId;
      const first = await credits.deductCredits(u, 100); // spent out: nothing left, the allowance ends
      expect(await images()).toMatchObject({ granted: 0, used: 0, left: 0 });
      await credits.addCredits(u, 200);
      await credits.addCredits(u, 300);
      await credits.deductCredits(u, 250); // the 200 spent out in the new allowance, 250 left of the 300
      expect(await images()).toMatchObject({ granted: 500, used: 250, left: 250 });
      // The old grant open again: counted once, as an open grant; the 200 spent out still counts.
      await credits.reverseCharge(u, first.id, { reason: "failed" });
      expect((await getDb().getGrant(old))?.remaining).toBe(100);
      expect(await images()).toMatchObject({ granted: 600, used: 250, left: 350 });
      expect(await images(peer)).toMatchObject({ granted: 600, used: 250, left: 350 });
      // Spent out again, now in the current allowance (the oldest grant is drawn first)…
      const second = await credits.deductCredits(u, 100);
      expect(second.grants).toEqual([{ grantId: old, amount: 100 }]);
      expect(await images()).toMatchObject({ granted: 600, used: 350, left: 250 });
      // …and given back again: open once more, counted once.
      await credits.reverseCharge(u, second.id, { reason: "failed" });
      expect(await images()).toMatchObject({ granted: 600, used: 250, left: 350 });
      expect(await images(peer)).toMatchObject({ granted: 600, used: 250, left: 350 });
      // Spent out, every grant: the allowance ends, and the next grant starts a new one.
      await credits.deductCredits(u, 350);
      expect(await images()).toMatchObject({ granted: 0, used: 0, left: 0 });
      await credits.addCredits(u, 40);
      expect(await images()).toMatchObject({ granted: 40, used: 0, left: 40 });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("available is one figure: the state's, getUserCreditsInfo's, the available alert's and the low-credits level's (scoped credits left out)", async () => {
      const low: AlertThreshold = { id: "low", kind: "available", atOrBelow: 450 };
      const now = () => new Date(clock.now);
      const credits = new CreditService({ db: getDb(), clock: now, alerts: { lowCredits: 450, alerts: [low] } });
      const notifications = new NotificationService({
        db: getDb(),
        clock: now,
        thresholds: { lowCredits: 450 },
        alerts: [low],
      });
      const u = user();
      await credits.addCredits(u, 500);
      await credits.addCredits(u, 200, { scope: { features: ["images"] } });
      await credits.deductCredits(u, 100); // the pool: 400; with the scoped grant, 600 unheld
      const state = await credits.getCustomerState(u);
      expect(state.available).toBe(400);
      expect((await credits.getUserCreditsInfo(u)).available).toBe(400);
      const alerts = await notifications.getAlerts(u);
      expect(alerts.map((a) => [a.threshold.id, a.state, a.value])).toEqual([
        ["low_credits", "in_alarm", 400],
        ["credits_exhausted", "ok", 400],
        ["low", "in_alarm", 400],
      ]);
      expect(state.alerts).toEqual(alerts);
      if (options.outbox === false) return; // the events are outbox rows: a store without it keeps none
      const rows = await notifications.list(u);
      expect(rows.find((r) => r.type === "low_credits")?.payload).toMatchObject({ available: 400 });
      expect(rows.find((r) => r.type === "alert_triggered")?.payload).toMatchObject({ thresholdId: "low", value: 400 });
    });

    it("alerts: a read that settles a due expiry answers the alert states of the position it answers; a second read at that seq answers the same", async () => {
      const low: AlertThreshold = { id: "low", kind: "available", atOrBelow: 100 };
      const now = () => new Date(clock.now);
      const credits = new CreditService({ db: getDb(), clock: now, alerts: { alerts: [low] } });
      const u = user();
      await credits.addCredits(u, 150, { expiresAt: new Date(clock.now + DAY) });
      await credits.addCredits(u, 50);
      clock.now += DAY + 1000; // the 150 has expired: 50 left, under the line
      try {
        const first = await credits.getCustomerState(u);
        expect(first.seq).toBe(3);
        expect(first.available).toBe(50);
        expect(first.alerts.find((a) => a.threshold.id === "low")).toMatchObject({ state: "in_alarm", value: 50 });
        const second = await credits.getCustomerState(u);
        expect(second.seq).toBe(first.seq);
        expect({ ...second, readAt: first.readAt }).toEqual(first);
      } finally {
        clock.now -= DAY + 1000;
      }
    });

    it("one snapshot: balance, each feature's grants, figures and decision as check() answers it", async () => {
      const credits = service();
      const u = user();
      const pool = await credits.addCredits(u, 100, { description: "welcome", expiresAt: new Date(T0 + 30 * DAY) });
      await credits.addCredits(u, 40, { scope: { features: ["images"] }, source: "promo" });
      await credits.addCredits(u, 5, { scope: { features: ["video"] } });
      await credits.deductCredits(u, 15, { feature: "images" }); // from the images grant
      await credits.reserveCredits(u, 30); // from the pool
      await credits.setLimit(u, { feature: "video", amount: 3, period: "day" });
      await credits.deductCredits(u, 3, { feature: "video" });
      const state = await credits.getCustomerState(u);
      const info = await credits.getUserCreditsInfo(u);
      expect(state).toMatchObject({
        balance: info.balance,
        reserved: 30,
        available: info.available,
        debt: 0,
        seq: (await getDb().getAccount(u))!.seq,
      });
      expect(state.features.map((f) => f.feature)).toEqual(["export", "images", "studio", "video"]);
      const images = state.features.find((f) => f.feature === "images")!;
      expect(images).toMatchObject({ allowed: true, reason: "ok", granted: 140, used: 45, left: 95, required: 10 });
      expect(images.grants.map((g) => [g.source, g.amount, g.left, g.scope])).toEqual([
        ["promo", 40, 25, { features: ["images"] }],
        ["manual", 100, 70, null],
      ]);
      expect(images.grants[1]).toMatchObject({ id: pool.grants[0]!.grantId, description: "welcome" });
      expect(images.grants[1]!.expiresAt?.getTime()).toBe(T0 + 30 * DAY);
      const video = state.features.find((f) => f.feature === "video")!;
      expect(video).toMatchObject({ allowed: false, reason: "limit", granted: 105, used: 33, left: 72 });
      expect(video.limit).toMatchObject({ amount: 3, used: 3, remaining: 0 });
      expect(video.resetsAt?.getTime()).toBe(T0 + DAY);
      expect(state.limits).toHaveLength(1);
      expect(state.limits[0]).toMatchObject({ feature: "video", used: 3, remaining: 0 });
      for (const f of state.features) {
        const check = await credits.check(u, { feature: f.feature });
        expect({ allowed: f.allowed, reason: f.reason, available: f.left }, f.feature).toEqual({
          allowed: check.allowed,
          reason: check.reason,
          available: check.available,
        });
      }
    });

    it("debt is taken from every feature's left; check() denies a feature with no rule as the view does", async () => {
      const credits = service(getDb(), RULES, "unlimited");
      const u = user();
      await credits.addCredits(u, 5, { scope: { features: ["chat"] } });
      await credits.deductCreditsAfterService(u, 8); // the pool is empty: 8 of debt
      const state = await credits.getCustomerState(u);
      expect(state).toMatchObject({ balance: -3, debt: 8, available: -8 });
      const chat = state.features.find((f) => f.feature === "chat")!;
      expect(chat).toMatchObject({ granted: 5, used: 0, left: -3, allowed: false, reason: "insufficient_credits" });
      expect(chat.rule).toBeNull();
      expect(await credits.check(u, { feature: "chat" })).toMatchObject({
        allowed: false,
        reason: "insufficient_credits",
        available: -3,
      });
    });

    it("the subscription, its period and its plan's allowance; a feature its plan grants is on", async () => {
      const db = getDb();
      if (db.capabilities.parts?.subscriptions === false) return;
      const credits = service(db);
      const subscriptions = new SubscriptionService({ db, credits, clock: () => new Date(clock.now) });
      const planId = "cs-studio";
      if ((await subscriptions.getPlan(planId).catch(() => null)) === null)
        await subscriptions.createPlan({
          id: planId,
          name: "Studio",
          creditsPerPeriod: 100,
          billingPeriod: "monthly",
          allowances: [{ scope: { features: ["renders"] }, credits: 20 }],
        });
      const u = user();
      const sub = await subscriptions.subscribe(u, planId, { autoRenew: true });
      const state = await credits.getCustomerState(u);
      expect(state.subscription).toMatchObject({
        id: sub.id,
        planId,
        planName: "Studio",
        status: "active",
        renews: true,
        cancelAtPeriodEnd: false,
      });
      expect(state.subscription!.currentPeriodEnd.getTime()).toBe(sub.currentPeriodEnd.getTime());
      const renders = state.features.find((f) => f.feature === "renders")!;
      expect(renders).toMatchObject({ allowed: true, granted: 120, left: 120 });
      expect(renders.resetsAt?.getTime()).toBe(sub.currentPeriodEnd.getTime());
      expect(state.features.find((f) => f.feature === "studio")).toMatchObject({ allowed: true, reason: "ok" });
      expect(await credits.check(u, { feature: "studio" })).toMatchObject({ allowed: true, reason: "ok" });
      expect(await credits.check(user(), { feature: "studio" })).toMatchObject({ reason: "feature_off" });
    });

    it("never a lagging copy: a spend through one manager is in the next read through the other", async () => {
      const a = service(getDb());
      const b = service(options.getPeer?.() ?? getDb());
      const u = user();
      await a.addCredits(u, 50);
      expect((await a.getCustomerState(u)).balance).toBe(50);
      expect((await a.getUserCreditsInfo(u)).balance).toBe(50); // A's cache holds 50
      await b.deductCredits(u, 20, { feature: "images" });
      const state = await a.getCustomerState(u);
      expect(state).toMatchObject({ balance: 30, seq: 2 });
      expect(state.features.find((f) => f.feature === "images")).toMatchObject({ used: 20, left: 30 });
    });

    it("a due expiry is settled before the state is answered", async () => {
      const credits = service();
      const u = user();
      await credits.addCredits(u, 10, { expiresAt: new Date(clock.now + DAY) });
      await credits.addCredits(u, 4);
      clock.now += 2 * DAY;
      try {
        const state = await credits.getCustomerState(u);
        expect(state).toMatchObject({ balance: 4, seq: 3 });
        expect(state.features.find((f) => f.feature === "images")).toMatchObject({ granted: 4, left: 4 });
      } finally {
        clock.now -= 2 * DAY;
      }
    });

    it("listCustomerStates pages by cursor, over the store's accounts or a list of ids", async () => {
      const credits = service();
      const list = `${prefix}-list`;
      const ids = [1, 2, 3, 4, 5].map((i) => `${list}-${i}`);
      for (const [i, id] of ids.entries()) await credits.addCredits(id, i + 1);
      if (getDb().listAccountIds === undefined) {
        // A store that cannot list its accounts reads only the ids it is given.
        await expect(credits.listCustomerStates({ cursor: list, limit: 3 })).rejects.toBeInstanceOf(ConfigurationError);
      } else {
        const first = await credits.listCustomerStates({ cursor: list, limit: 3 });
        expect(first.items.map((s) => [s.userId, s.balance])).toEqual([
          [ids[0], 1],
          [ids[1], 2],
          [ids[2], 3],
        ]);
        expect(first.nextCursor).toBe(ids[2]);
        const second = await credits.listCustomerStates({ cursor: first.nextCursor!, limit: 2 });
        expect(second.items.map((s) => s.userId)).toEqual([ids[3], ids[4]]);
        expect(second.items[0]).toEqual({
          ...(await credits.getCustomerState(ids[3]!)),
          readAt: second.items[0]!.readAt,
        });
      }

      const unknown = `${list}-9`;
      const asked = [ids[4]!, unknown, ids[1]!, ids[4]!];
      const page1 = await credits.listCustomerStates({ userIds: asked, limit: 2 });
      expect(page1.items.map((s) => s.userId)).toEqual([ids[1], ids[4]]);
      expect(page1.nextCursor).toBe(ids[4]);
      const page2 = await credits.listCustomerStates({ userIds: asked, limit: 2, cursor: page1.nextCursor! });
      expect(page2.items.map((s) => [s.userId, s.seq, s.balance])).toEqual([[unknown, 0, 0]]);
      expect(page2.nextCursor).toBeNull();
      expect(await getDb().getAccount(unknown)).toBeNull();
      expect(page1.items[0]).toMatchObject({ balance: 2 });
    });

    it("a bad query is a ValidationError", async () => {
      const credits = service();
      await expect(credits.listCustomerStates({ limit: 0 })).rejects.toBeInstanceOf(ValidationError);
      await expect(credits.listCustomerStates({ limit: 1001 })).rejects.toBeInstanceOf(ValidationError);
      await expect(credits.listCustomerStates({ userIds: [] })).rejects.toBeInstanceOf(ValidationError);
      await expect(credits.getCustomerState("")).rejects.toBeInstanceOf(ValidationError);
    });
  });
}
