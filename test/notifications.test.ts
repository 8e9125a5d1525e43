import { describe, expect, it } from "vitest";
import {
  CallbackNotificationQueue,
  ConfigurationError,
  CreditService,
  InMemoryDbManager,
  InMemoryNotificationQueue,
  ValidationError,
  alertStates,
  createCreditManager,
  type NotificationMessage,
} from "../src/index.js";
import type { AccountWork } from "../src/core/domain/account-work.js";
import {
  backoffDelay,
  crossings,
  levelOf,
  notificationId,
  thresholdOf,
  type WorkEvent,
} from "../src/core/domain/notifications.js";
import { contextProbe } from "./fixtures/module-context.js";

describe("notification rules (pure)", () => {
  it("levels and crossings", () => {
    expect(levelOf(0, 10)).toBe("exhausted");
    expect(levelOf(-5, 0)).toBe("exhausted");
    expect(levelOf(9, 10)).toBe("low");
    // The line is on the alarm side (docs/notifications.md): exactly at the threshold is low.
    expect(levelOf(10, 10)).toBe("low");
    expect(levelOf(11, 10)).toBe("ok");
    expect(crossings(null, "low", 10)).toEqual([]);
    expect(crossings("ok", "exhausted", 10)).toEqual(["low_credits", "credits_exhausted"]);
    expect(crossings("ok", "exhausted", 0)).toEqual(["credits_exhausted"]);
    expect(crossings("exhausted", "low", 10)).toEqual([]);
    expect(crossings("exhausted", "ok", 10)).toEqual(["balance_restored"]);
    expect(crossings("low", "low", 10)).toEqual([]);
  });

  it("thresholds: the higher of absolute and percentage of the last allocation", () => {
    expect(thresholdOf({ lowCredits: 50 }, 1000)).toBe(50);
    expect(thresholdOf({ lowCreditsPercent: 10 }, 1000)).toBe(100);
    expect(thresholdOf({ lowCredits: 150, lowCreditsPercent: 10 }, 1000)).toBe(150);
    expect(thresholdOf({}, 1000)).toBe(0);
  });

  it("backoff doubles up to the cap, with at most 20% jitter below", () => {
    expect(backoffDelay(1, 1000, 60_000, 1)).toBe(1000);
    expect(backoffDelay(3, 1000, 60_000, 1)).toBe(4000);
    expect(backoffDelay(30, 1000, 60_000, 1)).toBe(60_000);
    expect(backoffDelay(3, 1000, 60_000, 0)).toBe(3200);
  });

  it("ids are strictly increasing in a process, even when the clock steps back", () => {
    const t = new Date("2030-01-01T00:00:00Z");
    const ids = [
      notificationId(t),
      notificationId(t),
      notificationId(new Date(t.getTime() - 5000)),
      notificationId(new Date(t.getTime() + 1)),
    ];
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids).size).toBe(4);
  });
});

describe("NotificationService through createCreditManager", () => {
  it("records nothing unless a queue or thresholds are given", async () => {
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db });
    await m.credits.addCredits("u", 10);
    await m.credits.deductCredits("u", 10);
    expect(await m.notifications.list("u")).toEqual([]);
    expect((await db.getAccount("u"))?.alert).toBeNull();
    await m.close();
  });

  it("start() delivers in the background through a callback queue; close() stops it", async () => {
    const got: NotificationMessage[] = [];
    const m = await createCreditManager({
      queue: new CallbackNotificationQueue((msg) => void got.push(msg)),
      notifications: { lowCredits: 5 },
    });
    m.notifications.start({ intervalMs: 10 });
    await m.credits.addCredits("u", 10);
    await m.credits.deductCredits("u", 6);
    for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(got.map((g) => [g.userId, g.type, g.attempt])).toEqual([["u", "low_credits", 1]]);
    await m.close();
    await m.credits.deductCredits("u", 4);
    await new Promise((r) => setTimeout(r, 50));
    expect(got).toHaveLength(1); // stopped
    expect((await m.notifications.list("u", { status: "pending" })).map((r) => r.type)).toEqual(["credits_exhausted"]);
  });

  it("a promo claim runs through the same unit of work as credits: it raises balance_restored too", async () => {
    const m = await createCreditManager({ queue: new InMemoryNotificationQueue(), notifications: { lowCredits: 10 } });
    await m.credits.addCredits("u", 20);
    await m.credits.deductCredits("u", 15);
    await m.promos.createPromo({ code: "BACK", credits: 50 });
    await m.promos.claimPromo("u", "back");
    const types = (await m.notifications.list("u", { status: "pending" })).map((r) => r.type);
    expect(types).toEqual(["low_credits", "balance_restored"]);
    await m.close();
  });

  it("domain events: an addition that only pays debt still names its source (no grant); an under-commit is one hold_settled", async () => {
    const m = await createCreditManager({ domainEvents: true, overdraftLimit: "unlimited" });
    await m.credits.deductCreditsAfterService("d", 30); // into debt
    await m.credits.addCredits("d", 20, { source: "promo", sourceRef: "WELCOME" }); // all of it pays debt
    await m.credits.addCredits("d", 50, { source: "payment" }); // 10 debt, 40 granted
    const hold = await m.credits.reserveCredits("d", 30);
    await m.credits.commitReservedCredits(hold.id, { amount: 12 });
    const rows = await m.notifications.list("d");
    const payloads = rows.filter((r) => r.type === "credits_added").map((r) => r.payload);
    expect(payloads).toMatchObject([
      { source: "promo", sourceRef: "WELCOME", grantId: null, debtPaid: 20, amount: 20, debtAfter: 10 },
      { source: "payment", debtPaid: 10, amount: 50, debtAfter: 0, balanceAfter: 40 },
    ]);
    expect(payloads[1]?.grantId).toEqual(expect.any(String));
    const settled = rows.filter((r) => r.type === "hold_settled").map((r) => r.payload);
    expect(settled).toMatchObject([
      {
        outcome: "committed",
        heldAmount: 30,
        capturedAmount: 12,
        returnedAmount: 18,
        balanceAfter: 28,
        reservedAfter: 0,
      },
    ]);
    await m.close();
  });

  it("validates every input and changes nothing on bad input", async () => {
    const queue = new InMemoryNotificationQueue();
    const m = await createCreditManager({ queue });
    await m.credits.addCredits("u", 10);
    await expect(m.notifications.setThreshold("u", { lowCredits: -1 })).rejects.toBeInstanceOf(ValidationError);
    await expect(m.notifications.setThreshold("u", { lowCredit: 5 } as never)).rejects.toBeInstanceOf(ValidationError);
    await expect(m.notifications.dispatchPending({ limit: 0 })).rejects.toBeInstanceOf(ValidationError);
    await expect(m.notifications.sendExpiringReminders({ days: -1 })).rejects.toBeInstanceOf(ValidationError);
    await expect(m.notifications.emit("", { type: "low_credits" })).rejects.toBeInstanceOf(ValidationError);
    // Domain events are the journal's: the host cannot emit one (docs/events.md).
    await expect(
      m.notifications.emit("u", { type: "credits_added" as never, payload: { amount: 5 } }),
    ).rejects.toBeInstanceOf(ValidationError);
    await expect(createCreditManager({ queue: {} as never })).rejects.toBeInstanceOf(ConfigurationError);
    await expect(createCreditManager({ domainEvents: "yes" as never })).rejects.toBeInstanceOf(ConfigurationError);
    expect(() => new CreditService({ db: new InMemoryDbManager(), domainEvents: 1 as never })).toThrow(
      ConfigurationError,
    );
    expect((await m.db.getAccount("u"))?.alert?.override).toBeNull();
    expect(await m.notifications.list("u")).toEqual([]);
    await m.close();
  });
});

describe("NotificationService details", () => {
  it("events a unit of work records (subscription events) commit with its change, in order", async () => {
    const { CreditService, NotificationService } = await import("../src/index.js");
    // Events are explicit on the unit of work (`AccountWork.recordEvent`).
    // A module's unit of work hands the core's work wrapped (src/core/services/module-work.ts).
    const core = (work: object) => ((work as { work?: AccountWork }).work ?? work) as AccountWork;
    const recordEvent = (work: object, event: WorkEvent) => core(work).recordEvent(event);
    const db = new InMemoryDbManager();
    const probe = contextProbe();
    const credits = new CreditService({ db, alerts: { lowCredits: 50 }, modules: [probe.module] });
    const notifications = new NotificationService({ db });
    // (The core's own account work: the test reaches `recordEvent`, which modules are not handed.)
    const mutate = (u: string, meta: object, body: (work: AccountWork) => Promise<unknown>) =>
      probe.ctx().runUnitOfWork(u, meta, (work) => body(work as AccountWork), undefined, { periods: false });
    await credits.addCredits("s", 100);
    await mutate("s", {}, async (work) => {
      recordEvent(work, { type: "subscription_allocation", payload: { amount: 10 }, dedupeKey: "alloc:1" });
      return work.deduct(60, {}, { allowDebt: false, overdraftLimit: null });
    });
    await expect(
      mutate("s", {}, async (work) => {
        recordEvent(work, { type: "subscription_renewed", payload: {}, dedupeKey: null });
        throw new Error("rolled back");
      }),
    ).rejects.toThrow("rolled back");
    expect((await notifications.list("s")).map((r) => r.type)).toEqual(["subscription_allocation", "low_credits"]);
    // Without notifications on, recorded events are dropped (no outbox growth).
    const quietProbe = contextProbe();
    new CreditService({ db, modules: [quietProbe.module] });
    await quietProbe.ctx().runUnitOfWork("q", {}, async (work) => {
      recordEvent(work, { type: "subscription_allocation", payload: {}, dedupeKey: null });
      return work.add(
        1,
        { expiresAt: null, priority: 0, source: "manual", sourceRef: null, description: null, metadata: null },
        {},
      );
    });
    expect(await notifications.list("q")).toEqual([]);
  });

  it("getAlerts and the customer state's alerts are one answer; without events recorded, no alert can be set (ConfigurationError)", async () => {
    const { NotificationService } = await import("../src/index.js");
    const low = { id: "low", kind: "available", atOrBelow: 100 } as const;
    // Recorded (the manager): the built-in level first, then the defaults, in both reads.
    const m = await createCreditManager({
      db: new InMemoryDbManager(),
      notifications: { lowCredits: 20, alerts: [low] },
    });
    await m.credits.addCredits("v", 30);
    await m.credits.deductCredits("v", 15);
    const states = await m.notifications.getAlerts("v");
    expect(states.map((a) => [a.threshold.id, a.state, a.source])).toEqual([
      ["low_credits", "in_alarm", "builtIn"],
      ["credits_exhausted", "ok", "builtIn"],
      ["low", "in_alarm", "default"],
    ]);
    expect((await m.credits.getCustomerState("v")).alerts).toEqual(states);
    await m.close();
    // Not recorded: nothing keeps a level nor evaluates thresholds, so none may be set: defaults
    // and `setAlerts` are a ConfigurationError naming what to configure, and nothing is stored.
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db });
    expect(() => new NotificationService({ db, recording: false, alerts: [low] })).toThrow(ConfigurationError);
    expect(() => new NotificationService({ db, recording: false, alerts: [low] })).toThrow(/notifications/);
    const notifications = new NotificationService({ db, recording: false });
    await credits.addCredits("u", 50);
    expect(await notifications.getAlerts("u")).toEqual([]);
    expect((await credits.getCustomerState("u")).alerts).toEqual([]);
    const before = await db.getAccount("u");
    await expect(notifications.setAlerts("u", [{ id: "mine", kind: "available", atOrBelow: 100 }])).rejects.toThrow(
      /setAlerts: alerts are evaluated only while notification events are recorded: give createCreditManager `notifications`/,
    );
    expect(await db.getAccount("u")).toEqual(before);
    await notifications.setAlerts("u", null); // removing is no alert set: accepted
    expect(await notifications.getAlerts("u")).toEqual([]);
    // The same on a manager made without notification options.
    const bare = await createCreditManager({ db: new InMemoryDbManager() });
    await bare.credits.addCredits("w", 49);
    await expect(bare.notifications.setAlerts("w", [low])).rejects.toBeInstanceOf(ConfigurationError);
    expect(await bare.notifications.getAlerts("w")).toEqual([]);
    await bare.close();
  });

  it("evaluateAlerts on an account nobody has touched opens none, trial credits or not", async () => {
    const db = new InMemoryDbManager();
    const m = await createCreditManager({
      db,
      trial: { amount: 50 },
      notifications: { alerts: [{ id: "low", kind: "available", atOrBelow: 100 }] },
    });
    expect(await m.notifications.evaluateAlerts("nobody")).toMatchObject([
      { threshold: { id: "credits_exhausted" }, value: null },
      { threshold: { id: "low" }, value: null },
    ]);
    expect(await db.getAccount("nobody")).toBeNull();
    expect(await m.notifications.list("nobody")).toEqual([]);
    await m.close();
  });

  it("the dispatcher's message carries the row's dedupeKey (null without one); alertStates is the root's, getAlerts' answer", async () => {
    const queue = new InMemoryNotificationQueue();
    const low = { id: "low", kind: "available", atOrBelow: 100 } as const;
    const m = await createCreditManager({ db: new InMemoryDbManager(), queue, notifications: { alerts: [low] } });
    await m.credits.addCredits("k", 50); // low: triggered
    await m.notifications.emit("k", { type: "subscription_renewed" });
    await m.notifications.dispatchPending();
    const messages = queue.of("k");
    expect(messages.find((x) => x.type === "alert_triggered")?.dedupeKey).toBe("alert_triggered:low:1");
    expect(messages.find((x) => x.type === "subscription_renewed")?.dedupeKey).toBeNull();
    const account = await m.db.getAccount("k");
    const grants = await m.db.listGrants("k");
    expect(alertStates(account, grants, { alerts: [low] }, new Date())).toEqual(await m.notifications.getAlerts("k"));
    await m.close();
  });

  it("evaluateAlerts saves the account only when its alert state moved: a spend window that ended moves it without an event", async () => {
    const { NotificationService } = await import("../src/index.js");
    const clock = { now: Date.parse("2030-01-01T10:00:00.000Z") };
    const now = () => new Date(clock.now);
    const daily = { id: "daily", kind: "period_spend", atOrAbove: 100, window: "day" } as const;
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, clock: now, alerts: { alerts: [daily] } });
    const notifications = new NotificationService({ db, clock: now, alerts: [daily] });
    await credits.addCredits("w", 100);
    await credits.deductCredits("w", 10);
    const before = await db.getAccount("w");
    clock.now += 60_000;
    await notifications.evaluateAlerts("w"); // nothing moved: nothing written
    expect(await db.getAccount("w")).toEqual(before);
    clock.now += 86_400_000; // the next day: the window's count starts again, still ok
    expect(await notifications.evaluateAlerts("w")).toMatchObject([{}, { state: "ok", value: 0 }]);
    const after = await db.getAccount("w");
    expect(after?.updatedAt.getTime()).toBe(clock.now);
    expect(after?.alert?.marks?.daily).toMatchObject({ state: "ok", spent: 0 });
    expect(before?.alert?.marks?.daily).toMatchObject({ state: "ok", spent: 10 });
    expect((await notifications.list("w")).filter((r) => r.type.startsWith("alert_"))).toEqual([]);
  });

  it("a publish that never answers counts as a failed attempt after publishTimeoutMs", async () => {
    const { NotificationService } = await import("../src/index.js");
    const db = new InMemoryDbManager();
    const hung = { publish: () => new Promise<void>(() => undefined) };
    const n = new NotificationService({ db, queue: hung, publishTimeoutMs: 30 });
    await n.emit("h", { type: "subscription_ended" });
    expect(await n.dispatchPending()).toMatchObject({ claimed: 1, retried: 1 });
    expect((await n.list("h"))[0]).toMatchObject({
      status: "pending",
      attempts: 1,
      lastError: "publish did not answer within 30 ms",
    });
  });

  it("purge() deletes settled rows older than the cut-off, never pending ones", async () => {
    const { NotificationService } = await import("../src/index.js");
    const db = new InMemoryDbManager();
    const clock = { now: Date.parse("2030-01-01T00:00:00Z") };
    const n = new NotificationService({ db, clock: () => new Date(clock.now) });
    await n.emit("p", { type: "subscription_ended" });
    await n.dispatchPending();
    await n.emit("p", { type: "subscription_renewed" });
    clock.now += 31 * 86_400_000;
    expect(await n.purge()).toBe(1);
    expect((await n.list("p")).map((r) => [r.type, r.status])).toEqual([["subscription_renewed", "pending"]]);
    await expect(n.purge({ olderThanDays: -1 })).rejects.toBeInstanceOf(ValidationError);
  });
});

/** @see issue 24, item 5: the documented schedule sent no reminders and delivered nothing. */
describe("expiration.runAll() runs everything a deployment schedules", () => {
  const DAY = 86_400_000;

  it("with notifications on: the jobs, then the expiring reminders, then delivery of the outbox", async () => {
    let now = Date.now();
    const queue = new InMemoryNotificationQueue();
    const manager = await createCreditManager({ queue, clock: () => new Date(now), notifications: { lowCredits: 50 } });
    const { credits, expiration } = manager;
    await credits.addCredits("soon", 100, { expiresAt: new Date(now + 3 * DAY) });
    await credits.addCredits("later", 100, { expiresAt: new Date(now + 30 * DAY) });
    await credits.deductCredits("later", 60); // low: 40 < 50
    await credits.reserveCredits("later", 10, { ttlSeconds: 60 });
    now += 120_000;
    const report = await expiration.runAll();
    expect(report.releaseExpiredHolds.holdsReleased).toBe(1);
    expect(report.sendExpiringReminders).toEqual([{ days: 7, scanned: 1, recorded: 1 }]);
    expect(report.dispatchPending).toMatchObject({ sent: 3, failed: 0 });
    expect(queue.of("soon").map((m) => m.type)).toEqual(["expiring_credits"]);
    expect(queue.of("later").map((m) => m.type)).toEqual(["low_credits", "reservation_expired"]);
    // A second run finds nothing new: the reminder is once per grant and window.
    const again = await expiration.runAll();
    expect(again.sendExpiringReminders).toEqual([{ days: 7, scanned: 1, recorded: 0 }]);
    expect(again.dispatchPending).toMatchObject({ claimed: 0 });
    await manager.close();
  });

  it("reminder windows are configurable; with notifications off, neither step runs", async () => {
    const now = Date.now();
    const queue = new InMemoryNotificationQueue();
    const on = await createCreditManager({
      queue,
      clock: () => new Date(now),
      notifications: { reminderDays: [1, 30] },
    });
    await on.credits.addCredits("u", 100, { expiresAt: new Date(now + 3 * DAY) });
    const report = await on.expiration.runAll();
    expect(report.sendExpiringReminders?.map((r) => [r.days, r.recorded])).toEqual([
      [1, 0],
      [30, 1],
    ]);
    expect(queue.of("u", "expiring_credits")).toHaveLength(1);
    await on.close();
    const off = await createCreditManager({ clock: () => new Date(now) });
    await off.credits.addCredits("u", 100, { expiresAt: new Date(now + 3 * DAY) });
    const quiet = await off.expiration.runAll();
    expect(quiet.sendExpiringReminders).toBeNull();
    expect(quiet.dispatchPending).toBeNull();
    await off.close();
    await expect(createCreditManager({ notifications: { reminderDays: [-1] } })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
    await expect(createCreditManager({ notifications: { leaseMs: 1000, publishTimeoutMs: 5000 } })).rejects.toThrow(
      /publishTimeoutMs/,
    );
  });
});
