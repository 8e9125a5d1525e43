/**
 * `createWorker` (docs/operations.md, "The worker in your own code"): the worker's rounds on the
 * manager it is given — its rate, providers and queue — reading no environment.
 */
import { afterEach, describe, expect, it } from "vitest";
import {
  createCreditManager,
  CreditError,
  InMemoryNotificationQueue,
  ConfigurationError,
  type CreditManager,
} from "../src/index.js";
import { scriptedChargeProvider } from "../src/modules/billing/contract-auto-top-up.js";
import { createWorker } from "../src/worker/index.js";

const opened: CreditManager[] = [];
afterEach(async () => {
  for (const m of opened.splice(0)) await m.close();
});

async function manager(options: Parameters<typeof createCreditManager>[0] = {}) {
  const m = await createCreditManager(options);
  opened.push(m);
  return m;
}

/** A logger that keeps each line (pino's shape: `(obj, msg)`). */
function lines() {
  const kept: { level: string; msg: string; obj: Record<string, unknown> }[] = [];
  const at =
    (level: string) =>
    (obj: object | string, msg?: string): void => {
      kept.push(typeof obj === "string" ? { level, msg: obj, obj: {} } : { level, msg: msg ?? "", obj: { ...obj } });
    };
  return { kept, logger: { error: at("error"), warn: at("warn"), info: at("info"), debug: at("debug") } };
}

describe("createWorker", () => {
  it("the reminders round evaluates the expiring alerts time moved: one alert_triggered, however often it runs", async () => {
    const clock = { now: Date.now() };
    const m = await manager({
      clock: () => new Date(clock.now),
      notifications: { reminderDays: [], alerts: [{ id: "soon", kind: "expiring", withinDays: 3, atOrAbove: 50 }] },
    });
    await m.credits.addCredits("eve", 80, { expiresAt: new Date(clock.now + 5 * 86_400_000) });
    const w = createWorker(m);
    await w.runOnce();
    const alerts = async () =>
      (await m.notifications.list("eve")).filter((r) => r.type === "alert_triggered").map((r) => r.payload);
    expect(await alerts()).toEqual([]);
    clock.now += 2 * 86_400_000 + 1000; // the grant is now within 3 days
    await w.runOnce();
    await w.runOnce();
    expect(await alerts()).toEqual([expect.objectContaining({ thresholdId: "soon", value: 80, line: 50 })]);
  });

  it("the reminders round covers an account's own expiring threshold that looks further than the defaults (beyond 31 days)", async () => {
    const clock = { now: Date.now() };
    const m = await manager({ clock: () => new Date(clock.now), notifications: { reminderDays: [] } });
    await m.credits.addCredits("ian", 80, { expiresAt: new Date(clock.now + 70 * 86_400_000) });
    await m.credits.addCredits("ivy", 80, { expiresAt: new Date(clock.now + 70 * 86_400_000) });
    await m.notifications.setAlerts("ian", [{ id: "quarter", kind: "expiring", withinDays: 60, atOrAbove: 50 }]);
    const w = createWorker(m);
    const alerts = async () =>
      (await m.notifications.list("ian")).filter((r) => r.type === "alert_triggered").map((r) => r.payload);
    await w.runOnce();
    expect(await alerts()).toEqual([]);
    clock.now += 11 * 86_400_000; // the grant is now within 60 days, beyond the scan of grants' 31
    await w.runOnce();
    await w.runOnce();
    expect(await alerts()).toEqual([expect.objectContaining({ thresholdId: "quarter", value: 80, line: 50 })]);
    expect(await m.notifications.list("ivy")).toEqual([]); // no threshold of its own: nothing to do
  });

  it("the reminders round resolves a spend window that ended, before the account's next change", async () => {
    const clock = { now: Date.now() };
    const m = await manager({
      clock: () => new Date(clock.now),
      notifications: {
        reminderDays: [],
        alerts: [{ id: "daily", kind: "period_spend", atOrAbove: 30, window: "day" }],
      },
    });
    await m.credits.addCredits("kai", 100);
    await m.credits.deductCredits("kai", 30); // on the line: in alarm
    await m.credits.addCredits("quiet", 5); // another account, nothing in alarm
    const w = createWorker(m);
    const types = async () => (await m.notifications.list("kai")).map((r) => r.type);
    await w.runOnce();
    expect(await types()).toEqual(["alert_triggered"]);
    clock.now += 86_400_000; // the day is over
    const summary = await w.runOnce();
    expect(summary.rounds[1]?.report).toMatchObject({ endedSpendWindows: 1 });
    expect(await types()).toEqual(["alert_triggered", "alert_resolved"]);
    await w.runOnce(); // once only
    expect(await types()).toEqual(["alert_triggered", "alert_resolved"]);
  });

  it("runOnce: a round of each task that runs, in order, with a summary per task; the jobs as the worker runs them", async () => {
    const queue = new InMemoryNotificationQueue();
    const m = await manager({ queue, notifications: { reminderDays: [3] } });
    await m.credits.addCredits("ada", 100, { expiresAt: new Date(Date.now() + 86_400_000) });
    await m.notifications.emit("ada", { type: "subscription_renewed", dedupeKey: "r1" });
    const log = lines();
    const w = createWorker(m, { logger: log.logger });
    // The manager records notifications: reminders and delivery on; the dispatcher charges top-ups.
    expect(w.tasks).toEqual([
      { name: "jobs", everyMs: 60_000 },
      { name: "reminders", everyMs: 3_600_000 },
      { name: "dispatch", everyMs: 1000 },
    ]);
    expect(w.topUpsBy).toBe("dispatch");
    const summary = await w.runOnce();
    expect(summary.ok).toBe(true);
    expect(summary.rounds.map((r) => [r.task, r.ok])).toEqual([
      ["jobs", true],
      ["reminders", true],
      ["dispatch", true],
    ]);
    expect(summary.rounds[0]?.report).toMatchObject({
      releaseExpiredHolds: { errors: 0 },
      renewDueSubscriptions: { errors: 0 },
      expireDueGrants: { errors: 0 },
    });
    // Keys kept for ever (the manager's default): nothing forgotten, nothing said.
    expect(summary.rounds[0]?.report).not.toHaveProperty("forgetIdempotencyKeys");
    // The manager's reminder windows, the grant expiring within them reminded once; its account's
    // alerts evaluated (docs/notifications.md, "Alerts").
    expect(summary.rounds[1]?.report).toEqual({
      reminders: [{ days: 3, scanned: 1, recorded: 1 }],
      expiringAlerts: 1,
      endedSpendWindows: 0,
    });
    // Delivered to the manager's queue: the emitted event and the reminder.
    expect(summary.rounds[2]?.report).toMatchObject({ claimed: 2, sent: 2, retried: 0, failed: 0 });
    expect(queue.messages.map((n) => n.type).sort()).toEqual(["expiring_credits", "subscription_renewed"]);
    // One line per round, as `credit-management worker --once` writes them.
    expect(log.kept.filter((l) => l.level === "info").map((l) => l.msg)).toEqual([
      "jobs round",
      "reminders round",
      "dispatch round",
    ]);
    expect(log.kept.find((l) => l.msg === "dispatch round")?.obj).toMatchObject({
      task: "dispatch",
      ok: true,
      sent: 2,
    });
  });

  it("charges auto top-ups with the manager's providers and rate: { USD: 2 }, a 500-cent rule credits 1,000", async () => {
    const provider = scriptedChargeProvider([{ status: "succeeded", providerPaymentId: "pi_1" }]);
    const m = await manager({ payments: { providers: [provider], creditsPerUnit: { USD: 2 } } });
    await m.credits.addCredits("ada", 150);
    await m.payments.setAutoTopUp("ada", {
      below: 100,
      amount: 500,
      provider: "test",
      customer: "cus_1",
      paymentMethod: "pm_1",
      currency: "usd",
    });
    await m.credits.deductCredits("ada", 100); // 50: crosses
    // Nothing records notifications: no reminders, no dispatcher; the top-ups task charges them.
    const w = createWorker(m);
    expect(w.tasks.map((t) => t.name)).toEqual(["jobs", "top-ups"]);
    expect(w.topUpsBy).toBe("top-ups");
    const summary = await w.runOnce();
    expect(summary.ok).toBe(true);
    expect(summary.rounds.find((r) => r.task === "top-ups")?.report).toMatchObject({ claimed: 1, sent: 1 });
    expect(provider.calls.map((c) => [c.amount, c.credits])).toEqual([[500, 1000]]);
    expect((await m.credits.getUserCreditsInfo("ada")).available).toBe(1050);
  });

  it("reads no environment: the variables of `credit-management worker` change nothing", async () => {
    const saved = { ...process.env };
    Object.assign(process.env, {
      CREDIT_WORKER_JOBS_EVERY: "off",
      CREDIT_WORKER_JITTER: "1",
      CREDIT_REMINDER_DAYS: "1,2",
      CREDIT_CREDITS_PER_UNIT: "USD=85",
    });
    try {
      const m = await manager({ notifications: {} });
      const w = createWorker(m);
      expect(w.tasks.map((t) => [t.name, t.everyMs])).toEqual([
        ["jobs", 60_000],
        ["reminders", 3_600_000],
        ["dispatch", 1000],
      ]);
      const r = await w.runOnce();
      expect(r.rounds[1]?.report).toEqual({
        reminders: [{ days: 7, scanned: 0, recorded: 0 }],
        expiringAlerts: 0,
        endedSpendWindows: 0,
      });
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
    }
  });

  it("start() runs each task on its interval; stop() waits for the round in flight and schedules none after", async () => {
    const m = await manager();
    const log = lines();
    let releasing = 0;
    const release = m.expiration.releaseExpiredHolds.bind(m.expiration);
    m.expiration.releaseExpiredHolds = async (...args) => {
      releasing++;
      await new Promise((r) => setTimeout(r, 30));
      return release(...args);
    };
    const w = createWorker(m, { jobsEveryMs: 20, jitter: 0, topUpEveryMs: 0, logger: log.logger });
    w.start();
    w.start(); // once is enough
    await expect
      .poll(() => log.kept.filter((l) => l.msg === "jobs round").length, { timeout: 5000 })
      .toBeGreaterThan(2);
    // Stopped mid-round: the round finishes (its line is written) before stop() resolves.
    while (releasing === log.kept.filter((l) => l.msg === "jobs round").length)
      await new Promise((r) => setTimeout(r, 2));
    await w.stop();
    const rounds = log.kept.filter((l) => l.msg === "jobs round").length;
    expect(rounds).toBe(releasing);
    await new Promise((r) => setTimeout(r, 100));
    expect(log.kept.filter((l) => l.msg === "jobs round").length).toBe(rounds);
    // Rounds never overlap within a task: each started after the previous one's line.
    expect(releasing).toBe(rounds);
  });

  it("a round that throws is reported, not thrown; stop() during runOnce ends it after the round in flight", async () => {
    const m = await manager({ queue: new InMemoryNotificationQueue() });
    m.expiration.releaseExpiredHolds = async () => {
      throw new Error("store down");
    };
    const log = lines();
    const w = createWorker(m, { logger: log.logger });
    const r = await w.runOnce();
    expect(r.ok).toBe(false);
    expect(r.rounds[0]).toMatchObject({ task: "jobs", ok: false });
    expect((r.rounds[0]?.error as Error).message).toBe("store down");
    expect(r.rounds.map((x) => x.task)).toEqual(["jobs", "reminders", "dispatch"]);
    expect(log.kept.find((l) => l.level === "error")?.msg).toBe("jobs round failed");

    m.expiration.releaseExpiredHolds = async () => {
      await new Promise((res) => setTimeout(res, 50));
      throw new Error("slow");
    };
    const once = w.runOnce();
    await new Promise((res) => setTimeout(res, 10));
    await w.stop();
    expect((await once).rounds.map((x) => x.task)).toEqual(["jobs"]);
  });

  it("refuses bad options with ConfigurationError, naming them", async () => {
    const m = await manager();
    for (const [options, message] of [
      [{ jobsEveryMs: 5 }, /jobsEveryMs/],
      [{ jitter: 2 }, /jitter/],
      [{ batchSize: 0 }, /batchSize/],
      [{ logger: {} }, /logger/],
      [{ usageEveryMs: 5 }, /usageEveryMs/],
      [{ usageEveryMs: -1000 }, /usageEveryMs/],
      [{ usageEntries: 999 }, /usageEntries/],
      [{ usageEntries: 1.5e3 + 0.5 }, /usageEntries/],
      [{ every: 1 }, /every/],
    ] as const) {
      expect(() => createWorker(m, options as never)).toThrow(ConfigurationError);
      expect(() => createWorker(m, options as never)).toThrow(CreditError);
      expect(() => createWorker(m, options as never)).toThrow(message);
    }
  });

  it("runs no usage round where the store keeps no usage rollup to catch up (memory, SQLite, MongoDB)", async () => {
    const m = await manager();
    expect(m.db.catchUpUsage).toBeUndefined();
    expect(createWorker(m, { usageEveryMs: 1000 }).tasks.map((t) => t.name)).not.toContain("usage");
    expect(createWorker(m).tasks.map((t) => t.name)).toEqual(["jobs"]);
    const { SqliteDbManager } = await import("../src/db/sqlite/index.js");
    const { MongoDbManager } = await import("../src/db/mongodb/index.js");
    expect("catchUpUsage" in SqliteDbManager.prototype).toBe(false);
    expect("catchUpUsage" in MongoDbManager.prototype).toBe(false);
    const { PostgresDbManager } = await import("../src/db/postgres/index.js");
    expect("catchUpUsage" in PostgresDbManager.prototype).toBe(true);
  });
});
