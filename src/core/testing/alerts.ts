/**
 * The alerts part of the `DbManager` contract (docs/notifications.md, "Alerts"): each threshold of
 * an account is `ok` or `in_alarm`, the line on the alarm side; exactly one `alert_triggered` per
 * move into alarm and one `alert_resolved` per unit of work that brings thresholds back, none
 * while the state holds, also under concurrent changes and through two managers.
 */
import { notificationsPart } from "../parts.js";
import { randomUUID } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it, useTestApi, type TestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import type { AlertStatus, AlertThreshold, Notification } from "../models/index.js";
import { CoreCreditService } from "../services/credit-service.js";
import { NotificationService } from "../services/notification-service.js";
import { SubscriptionService } from "../services/subscription-service.js";
import { DomainEvent } from "../models/events.js";
import { eventEnvelope } from "../queue/index.js";
import { commandsArbitrary, runAgainstModel } from "./properties.js";
import { DAY, HOUR, lazy, T0 } from "./support.js";
import { spendOfEntry, spendWindow } from "../domain/alerts.js";

/** Credits and notifications over `db` on one clock, with `defaults` as every account's thresholds. */
function services(db: DbManager, defaults: AlertThreshold[], start = T0) {
  const clock = { now: start };
  const now = () => new Date(clock.now);
  const credits = new CoreCreditService({ db, clock: now, notifications: notificationsPart({ alerts: defaults }) });
  const notifications = new NotificationService({ db, clock: now, alerts: defaults });
  return { credits, notifications, clock };
}

/** The user's alert events, oldest first. */
async function alertRows(notifications: NotificationService, userId: string): Promise<Notification[]> {
  return (await notifications.list(userId, { limit: 1000 })).filter(
    (r) => r.type === "alert_triggered" || r.type === "alert_resolved",
  );
}

/** `triggered:<id>` and `resolved:<id>,<id>` per event, oldest first. */
function describeRows(rows: readonly Notification[]): string[] {
  return rows.map((r) =>
    r.type === "alert_triggered"
      ? `triggered:${String(r.payload.thresholdId)}`
      : `resolved:${(r.payload.resolved as { thresholdId: string }[]).map((x) => x.thresholdId).join(",")}`,
  );
}

const LOW: AlertThreshold = { id: "low", kind: "available", atOrBelow: 100 };

/** The thresholds of `getAlerts` beside the built-in low-credits ones. */
const configured = (states: readonly AlertStatus[]) => states.filter((s) => s.source !== "builtIn");

/**
 * The alerts part of the contract (`runDbManagerContract` runs it). `test`: your runner's functions,
 * as in `ContractOptions.test`; by default those the suite already runs on.
 * @beta
 */
export function runAlertsContract(
  getDb: () => DbManager,
  options: { raceSize?: number; runs?: number; seed?: number; test?: TestApi } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const raceSize = options.raceSize ?? 50;
  const runs = options.runs ?? 15;
  const seed = options.seed ?? 20;
  const db = lazy(getDb);
  const user = () => `al-${randomUUID()}`;

  describe("alerts", () => {
    it("available: the line is on the alarm side; one event per move, none while the state holds", async () => {
      const { credits, notifications } = services(db, [LOW]);
      const u = user();
      await credits.addCredits(u, 150);
      await credits.deductCredits(u, 49); // 101: ok
      expect(await alertRows(notifications, u)).toEqual([]);
      await credits.deductCredits(u, 1); // 100: exactly on the line, in alarm
      await credits.deductCredits(u, 1); // 99: still in alarm, nothing
      await credits.addCredits(u, 1); // 100: still in alarm (resolves only strictly above)
      await credits.addCredits(u, 1); // 101: resolved
      await credits.deductCredits(u, 1); // 100: in alarm again
      const rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:low", "resolved:low", "triggered:low"]);
      expect(rows[0]!.payload).toMatchObject({
        thresholdId: "low",
        kind: "available",
        value: 100,
        line: 100,
        crossing: 1,
      });
      expect(rows[1]!.payload).toMatchObject({
        resolved: [{ thresholdId: "low", value: 101, line: 100, crossing: 1 }],
      });
      expect(rows[2]!.payload).toMatchObject({ value: 100, crossing: 2 });
      // Stable, distinct dedupe keys: a consumer drops a redelivery by the row id or the key.
      expect(rows.map((r) => r.dedupeKey)).toEqual([
        "alert_triggered:low:1",
        "alert_resolved:2",
        "alert_triggered:low:3",
      ]);
      // Each is a published event of the documented schema (docs/events.md).
      for (const r of rows) {
        const published = DomainEvent.parse(eventEnvelope({ ...r, createdAt: r.createdAt.toISOString(), attempt: 1 }));
        expect(published).toMatchObject({ type: r.type, version: 1, id: r.id, userId: u });
      }
      // The built-in low-credits thresholds first (no low-credits threshold here: exhaustion only).
      expect(await notifications.getAlerts(u)).toEqual([
        {
          threshold: { id: "credits_exhausted", kind: "available", atOrBelow: 0 },
          state: "ok",
          value: 100,
          line: 0,
          crossings: null,
          source: "builtIn",
        },
        { threshold: LOW, state: "in_alarm", value: 100, line: 100, crossings: 2, source: "default" },
      ]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("getAlerts lists the low-credits level as its two built-in thresholds, on the same account record", async () => {
      const clock = { now: T0 };
      const now = () => new Date(clock.now);
      const credits = new CoreCreditService({
        db,
        clock: now,
        notifications: notificationsPart({ lowCredits: 50, alerts: [LOW] }),
      });
      const notifications = new NotificationService({ db, clock: now, thresholds: { lowCredits: 50 }, alerts: [LOW] });
      const u = user();
      await credits.addCredits(u, 60);
      expect((await notifications.getAlerts(u)).map((s) => [s.threshold.id, s.state, s.line, s.source])).toEqual([
        ["low_credits", "ok", 50, "builtIn"],
        ["credits_exhausted", "ok", 0, "builtIn"],
        ["low", "in_alarm", 100, "default"],
      ]);
      await credits.deductCredits(u, 10); // 50: on the low-credits line
      await credits.deductCredits(u, 50); // 0: exhausted
      expect((await notifications.getAlerts(u)).map((s) => [s.threshold.id, s.state, s.value])).toEqual([
        ["low_credits", "in_alarm", 0],
        ["credits_exhausted", "in_alarm", 0],
        ["low", "in_alarm", 0],
      ]);
      const types = (await notifications.list(u)).map((r) => r.type);
      expect(types).toEqual(["alert_triggered", "low_credits", "credits_exhausted"]);
      // Their ids are the built-in thresholds': refused for your own.
      await expect(
        notifications.setAlerts(u, [{ id: "low_credits", kind: "available", atOrBelow: 1 }]),
      ).rejects.toMatchObject({ name: "ValidationError" });
    });

    it("holds count against available; the resolutions of one unit of work are one event", async () => {
      const both: AlertThreshold[] = [LOW, { id: "zero", kind: "available", atOrBelow: 0 }];
      const { credits, notifications } = services(db, both);
      const u = user();
      await credits.addCredits(u, 200);
      const hold = await credits.reserveCredits(u, 200); // 0 available: both in alarm
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:low", "triggered:zero"]);
      await credits.releaseReservedCredits(hold.id); // 200: both back in one change
      expect(describeRows(await alertRows(notifications, u))).toEqual([
        "triggered:low",
        "triggered:zero",
        "resolved:low,zero",
      ]);
    });

    it("left_percent: what is left at or below a percentage of what the open grants were given", async () => {
      const { credits, notifications } = services(db, [{ id: "pct", kind: "left_percent", atOrBelow: 40 }]);
      const u = user();
      await credits.addCredits(u, 1000);
      await credits.addCredits(u, 100); // given 1,100 in all (not a share of this latest addition)
      await credits.deductCredits(u, 600); // 500 of 1,100: 45.5 %
      expect(await alertRows(notifications, u)).toEqual([]);
      await credits.deductCredits(u, 60); // 440 of 1,100 = 40 %: on the line
      let rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:pct"]);
      expect(rows[0]!.payload).toMatchObject({ value: 40, line: 40 });
      const hold = await credits.reserveCredits(u, 100); // held is drawn: 340 of 1,100
      await credits.releaseReservedCredits(hold.id); // back to 440: still in alarm
      await credits.addCredits(u, 100); // 540 of 1,200 = 45 %
      rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:pct", "resolved:pct"]);
      expect(rows[1]!.payload).toMatchObject({ resolved: [{ thresholdId: "pct", value: 45 }] });
      // Spent to the last credit: nothing open is behind it, 0 % left.
      await credits.deductCredits(u, 540);
      expect(configured(await notifications.getAlerts(u))[0]).toMatchObject({ state: "in_alarm", value: 0 });
    });

    it("left_percent of a feature: its scoped grants and the pool, by the customer state's figures", async () => {
      const chat: AlertThreshold = { id: "chat", kind: "left_percent", atOrBelow: 50, feature: "chat" };
      const pool: AlertThreshold = { id: "pool", kind: "left_percent", atOrBelow: 50 };
      const { credits, notifications } = services(db, [chat, pool]);
      const u = user();
      await credits.addCredits(u, 300);
      await credits.addCredits(u, 100, { scope: { features: ["chat"] } });
      await credits.deductCredits(u, 80, { feature: "chat" }); // the chat grant first: 20 left in it
      await credits.deductCredits(u, 140); // the pool: 160 of 300 (53.3 %); behind chat 180 of 400 (45 %)
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:chat"]);
      const [c, p] = configured(await notifications.getAlerts(u));
      // Behind chat: 400 granted, 220 used, 180 left (the customer state's figures: its own suite).
      expect(c).toMatchObject({ state: "in_alarm", value: (180 * 100) / 400 });
      expect(p).toMatchObject({ state: "ok", value: (160 * 100) / 300 });
      // The chat grant spent to its last credit leaves its scope with nothing: its allowance starts
      // again (as in the customer state), so behind chat is the pool alone again, 160 of 300.
      await credits.deductCredits(u, 20, { feature: "chat" });
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:chat", "resolved:chat"]);
      expect(configured(await notifications.getAlerts(u))[0]).toMatchObject({ state: "ok", value: (160 * 100) / 300 });
      // Nothing open behind the pool: 0 % left.
      await credits.deductCredits(u, 160);
      expect(configured(await notifications.getAlerts(u))).toMatchObject([
        { state: "in_alarm", value: 0 },
        { state: "in_alarm", value: 0 },
      ]);
    });

    it("left_percent: a grant spent to its last credit stays granted until the pool has nothing left", async () => {
      const { credits, notifications } = services(db, [{ id: "pct", kind: "left_percent", atOrBelow: 20 }]);
      const u = user();
      await credits.addCredits(u, 1000);
      await credits.addCredits(u, 100);
      await credits.deductCredits(u, 1000); // the 1,000 spent to its last credit: 100 of 1,100 left
      let rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:pct"]);
      expect(rows[0]!.payload).toMatchObject({ value: (100 * 100) / 1100, line: 20 });
      // A top-up while something is left adds to the allowance: 1,100 of 2,100.
      await credits.addCredits(u, 1000);
      expect(configured(await notifications.getAlerts(u))[0]).toMatchObject({
        state: "ok",
        value: (1100 * 100) / 2100,
      });
      // Spent out: nothing left, and the next grant starts a new allowance.
      await credits.deductCredits(u, 1100);
      expect(configured(await notifications.getAlerts(u))[0]).toMatchObject({ state: "in_alarm", value: 0 });
      await credits.addCredits(u, 200);
      expect(configured(await notifications.getAlerts(u))[0]).toMatchObject({ state: "ok", value: 100 });
      await credits.deductCredits(u, 170); // 30 of 200: 15 %
      rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual([
        "triggered:pct",
        "resolved:pct",
        "triggered:pct",
        "resolved:pct",
        "triggered:pct",
      ]);
      expect(rows[4]!.payload).toMatchObject({ value: 15 });
    });

    it("left_percent: a grant that expires or is voided with credits left leaves both figures; a held one counts", async () => {
      const { credits, notifications, clock } = services(db, [{ id: "pct", kind: "left_percent", atOrBelow: 90 }]);
      const u = user();
      const value = async () => configured(await notifications.getAlerts(u))[0]!.value;
      await credits.addCredits(u, 1000);
      await credits.addCredits(u, 200, { expiresAt: new Date(clock.now + HOUR) }); // drawn first (soonest expiry)
      await credits.deductCredits(u, 200); // spent to its last credit: 1,000 of 1,200 left
      expect(await value()).toBe((1000 * 100) / 1200);
      await credits.addCredits(u, 300, { expiresAt: new Date(clock.now + HOUR) });
      expect(await value()).toBe((1300 * 100) / 1500);
      clock.now += 2 * HOUR;
      await notifications.evaluateAlerts(u); // the 300 expired unspent: it leaves both figures
      expect(await value()).toBe((1000 * 100) / 1200); // the spent 200 counts past its expiry
      const voided = await credits.addCredits(u, 100);
      await credits.voidGrant(voided.grants[0]!.grantId); // voided unspent: it leaves both figures
      expect(await value()).toBe((1000 * 100) / 1200);
      // Held to the last credit: nothing is left, but the allowance holds while credits are held.
      const hold = await credits.reserveCredits(u, 1000);
      expect(await value()).toBe(0);
      await credits.releaseReservedCredits(hold.id);
      expect(configured(await notifications.getAlerts(u))[0]).toMatchObject({
        state: "in_alarm",
        value: (1000 * 100) / 1200,
      });
    });

    it("left_percent: two managers over one store read the same allowance", async () => {
      const pct: AlertThreshold = { id: "pct", kind: "left_percent", atOrBelow: 20 };
      const a = services(db, [pct]);
      const b = services(db, [pct]);
      const u = user();
      await a.credits.addCredits(u, 1000);
      await b.credits.addCredits(u, 100);
      await a.credits.deductCredits(u, 600);
      await b.credits.deductCredits(u, 400); // the 1,000 spent out through the other manager
      for (const side of [a, b])
        expect(configured(await side.notifications.getAlerts(u))[0]).toMatchObject({
          state: "in_alarm",
          value: (100 * 100) / 1100,
        });
      await a.credits.addCredits(u, 1000);
      await b.credits.deductCredits(u, 50);
      for (const side of [a, b])
        expect(configured(await side.notifications.getAlerts(u))[0]).toMatchObject({
          state: "ok",
          value: (1050 * 100) / 2100,
        });
      expect(describeRows(await alertRows(a.notifications, u))).toEqual(["triggered:pct", "resolved:pct"]);
    });

    it("period_spend: captured spend in the calendar window, by spender; resolved when the window ends", async () => {
      const spend: AlertThreshold = { id: "day", kind: "period_spend", atOrAbove: 50, window: "day", spender: "bob" };
      const { credits, notifications, clock } = services(db, [spend]);
      const u = user();
      await credits.addCredits(u, 1000);
      await credits.deductCredits(u, 30, { spender: "bob" });
      await credits.deductCredits(u, 100, { spender: "alice" }); // not bob's
      const hold = await credits.reserveCredits(u, 40, { spender: "bob" }); // a hold is not spend
      expect(await alertRows(notifications, u)).toEqual([]);
      await credits.commitReservedCredits(hold.id, { amount: 20 }); // 50: on the line
      let rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:day"]);
      expect(rows[0]!.payload).toMatchObject({ value: 50, line: 50 });
      expect(typeof rows[0]!.payload.resetsAt).toBe("string");
      await credits.deductCredits(u, 10, { spender: "bob" }); // 60: still in alarm
      expect(await alertRows(notifications, u)).toHaveLength(1);
      // The next day: the window ended, evaluated now (as the worker does).
      clock.now += DAY;
      const states = configured(await notifications.evaluateAlerts(u));
      expect(states[0]).toMatchObject({ state: "ok", value: 0 });
      rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:day", "resolved:day"]);
      expect(rows[1]!.payload).toMatchObject({ resolved: [{ thresholdId: "day", value: 0 }] });
      // Evaluating again changes nothing and records nothing.
      await notifications.evaluateAlerts(u);
      expect(await alertRows(notifications, u)).toHaveLength(2);
      // Or the next unit of work on the account, whichever comes first.
      await credits.deductCredits(u, 50, { spender: "bob" });
      clock.now += DAY;
      await credits.deductCredits(u, 1, { spender: "alice" });
      expect(describeRows(await alertRows(notifications, u))).toEqual([
        "triggered:day",
        "resolved:day",
        "triggered:day",
        "resolved:day",
      ]);
    });

    it("period_spend counts the spend captured earlier in its window: when setAlerts sets it, and when a default first applies", async () => {
      const bob: AlertThreshold = { id: "bob", kind: "period_spend", atOrAbove: 50, window: "day", spender: "bob" };
      const { credits, notifications, clock } = services(db, []);
      const u = user();
      await credits.addCredits(u, 1000);
      clock.now += HOUR;
      await credits.deductCredits(u, 25, { spender: "bob" }); // the day before: not this window's
      clock.now += DAY;
      const charge = await credits.deductCredits(u, 30, { spender: "bob" });
      await credits.deductCredits(u, 100, { spender: "alice" }); // not bob's
      const hold = await credits.reserveCredits(u, 40, { spender: "bob" });
      await credits.commitReservedCredits(hold.id, { amount: 25 }); // 55
      await credits.reverseCharge(u, charge.id, { amount: 5, reason: "goodwill" }); // 50: on the line
      await notifications.setAlerts(u, [bob]);
      let rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:bob"]);
      expect(rows[0]!.payload).toMatchObject({ value: 50, line: 50 });
      // Set again: its window counted again, not added twice.
      await notifications.setAlerts(u, [bob]);
      expect(configured(await notifications.getAlerts(u))).toMatchObject([{ state: "in_alarm", value: 50 }]);
      expect(await alertRows(notifications, u)).toHaveLength(1);
      await credits.deductCredits(u, 1, { spender: "bob" });
      expect(configured(await notifications.getAlerts(u))).toMatchObject([{ state: "in_alarm", value: 51 }]);

      // A default the account meets for the first time (a manager with new defaults) counts it too.
      const v = user();
      await credits.addCredits(v, 1000);
      await credits.deductCredits(v, 45, { spender: "bob" });
      const later = services(db, [bob], clock.now);
      await later.credits.deductCredits(v, 5, { spender: "bob" }); // 45 + 5
      rows = await alertRows(later.notifications, v);
      expect(describeRows(rows)).toEqual(["triggered:bob"]);
      expect(rows[0]!.payload).toMatchObject({ value: 50 });
      expect((await credits.audit(v)).ok).toBe(true);
    });

    it("period_spend's recount beside the unit of work equals the journal's count: spenders, features, time zones, holds, reversals", async () => {
      const big = 1_000_000;
      const list: AlertThreshold[] = [
        { id: "month", kind: "period_spend", atOrAbove: big, window: "month" },
        { id: "bob-day", kind: "period_spend", atOrAbove: big, window: "day", spender: "bob" },
        {
          id: "chat-week-ny",
          kind: "period_spend",
          atOrAbove: big,
          window: "week",
          feature: "chat",
          timeZone: "America/New_York",
        },
        {
          id: "bob-chat-tokyo",
          kind: "period_spend",
          atOrAbove: big,
          window: "day",
          spender: "bob",
          feature: "chat",
          timeZone: "Asia/Tokyo",
        },
        { id: "lone", kind: "period_spend", atOrAbove: big, window: "month", spender: "nobody" },
      ];
      const { credits, notifications, clock } = services(db, []);
      const u = user();
      await credits.addCredits(u, 100_000);
      const usages = (amount: number) => ({
        usages: [
          { amount: amount - 1, model: "m1", inputTokens: 10, outputTokens: 0 },
          { amount: 1, model: "m2", inputTokens: 0, outputTokens: 3 },
        ],
      });
      const charges = [];
      for (let i = 0; i < 24; i++) {
        clock.now += 7 * HOUR;
        const spender = ["bob", "alice", undefined][i % 3];
        const feature = i % 2 === 0 ? "chat" : "search";
        charges.push(await credits.deductCredits(u, 10 + i, { spender, feature, metadata: usages(10 + i) }));
        if (i % 5 === 0) {
          const hold = await credits.reserveCredits(u, 30, { spender: "bob", feature: "chat" });
          await credits.commitReservedCredits(hold.id, { amount: 20 + i });
        }
      }
      clock.now += HOUR;
      const last = await credits.deductCredits(u, 9, { spender: "bob", feature: "chat" });
      await credits.reverseCharge(u, last.id, { amount: 2, reason: "goodwill" });
      // Reversals placed at their charges' times: part of one, the whole of another, one of yesterday's.
      await credits.reverseCharge(u, charges[23]!.id, { amount: 7, reason: "goodwill" });
      await credits.reverseCharge(u, charges[21]!.id, { reason: "refund" });
      await credits.reverseCharge(u, charges[20]!.id, { amount: 3, reason: "goodwill" });
      // The journal's count of each threshold's window, entry by entry (the reference).
      const expected = async (at: number) => {
        const journal = await db.listJournal(u, { order: "asc", limit: 10_000 });
        const out: Record<string, number> = {};
        for (const t of list) {
          if (t.kind !== "period_spend") continue;
          const w = spendWindow(t, at, null)!;
          out[t.id] = Math.max(
            0,
            journal.reduce((n, e) => n + spendOfEntry(t, e, w), 0),
          );
        }
        return out;
      };
      const values = async () =>
        Object.fromEntries(configured(await notifications.getAlerts(u)).map((s) => [s.threshold.id, s.value]));
      await notifications.setAlerts(u, list);
      const counted = await expected(clock.now);
      expect(counted.month! > 0).toBe(true);
      expect(counted["bob-chat-tokyo"]).toBe(7);
      expect(await values()).toEqual(counted);
      // A default met for the first time is recounted by the change's unit of work, then the change added.
      const v = user();
      const first = services(db, [], clock.now);
      await first.credits.addCredits(v, 1000);
      const a = await first.credits.deductCredits(v, 40, { spender: "bob", feature: "chat" });
      await first.credits.reverseCharge(v, a.id, { amount: 15, reason: "goodwill" });
      const later = services(db, list, clock.now);
      await later.credits.deductCredits(v, 5, { spender: "bob", feature: "chat" });
      const states = configured(await later.notifications.getAlerts(v));
      expect(Object.fromEntries(states.map((s) => [s.threshold.id, s.value]))).toMatchObject({
        month: 30,
        "bob-day": 30,
        lone: 0,
      });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("period_spend's recount holds no lock: a change on the account commits while it runs, and is counted once", async () => {
      if (db.usage === undefined) return;
      const month: AlertThreshold = { id: "month", kind: "period_spend", atOrAbove: 100, window: "month" };
      let entered!: () => void;
      const inRecount = new Promise<void>((resolve) => (entered = resolve));
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let scans = 0;
      // The store, its usage scan held until the test releases it.
      const gated = new Proxy(db, {
        get(target, key) {
          if (key === "usage")
            return async (scan: Parameters<NonNullable<DbManager["usage"]>>[0]) => {
              scans++;
              entered();
              await released;
              return target.usage!(scan);
            };
          const v = Reflect.get(target, key, target) as unknown;
          return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
      const { credits, clock } = services(db, []);
      const u = user();
      await credits.addCredits(u, 1000);
      await credits.deductCredits(u, 60);
      const held = services(gated, [], clock.now);
      const setting = held.notifications.setAlerts(u, [month]);
      await Promise.race([
        inRecount,
        setting.then(() => {
          throw new Error("the window was counted inside the unit of work");
        }),
      ]);
      // The account is free while its window is counted: this change commits first.
      let done = false;
      await credits.deductCredits(u, 30).then(() => (done = true));
      expect(done).toBe(true);
      release();
      await setting;
      expect(configured(await held.notifications.getAlerts(u))).toMatchObject([{ state: "ok", value: 90 }]);
      expect(scans).toBe(1);
      // The next change adds to the mark: no recount.
      await held.credits.deductCredits(u, 10);
      expect(configured(await held.notifications.getAlerts(u))).toMatchObject([{ state: "in_alarm", value: 100 }]);
      expect(scans).toBe(1);
    });

    it("period_spend over the subscription period: that period's spend, resolved by the renewal; nothing without a subscription", async () => {
      if (db.capabilities.parts?.subscriptions === false) return;
      const sub: AlertThreshold = { id: "sub", kind: "period_spend", atOrAbove: 50, window: "subscription_period" };
      const clock = { now: T0 };
      const now = () => new Date(clock.now);
      const credits = new CoreCreditService({
        db,
        clock: now,
        notifications: notificationsPart({ alerts: [sub] }),
        subscriptions: true,
      });
      const notifications = new NotificationService({ db, clock: now, alerts: [sub] });
      const subscriptions = new SubscriptionService({ db, credits, clock: now });
      const plan = await subscriptions.createPlan({ name: "alerts", creditsPerPeriod: 500, billingPeriod: "monthly" });
      const u = user();
      await credits.addCredits(u, 200);
      await credits.deductCredits(u, 80); // no subscription: no period to count in
      expect(configured(await notifications.getAlerts(u))).toMatchObject([{ state: "ok", value: null }]);
      clock.now += HOUR;
      const s = await subscriptions.subscribe(u, plan.id, { autoRenew: true });
      await credits.deductCredits(u, 30); // the 80 before the period are not its spend
      expect(configured(await notifications.getAlerts(u))).toMatchObject([{ state: "ok", value: 30 }]);
      await credits.deductCredits(u, 20); // 50: on the line
      let rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:sub"]);
      expect(rows[0]!.payload).toMatchObject({
        value: 50,
        windowStart: s.currentPeriodStart.toISOString(),
        resetsAt: s.currentPeriodEnd.toISOString(),
      });
      // The period ends; the renewal's unit of work (here brought by the read) resolves it.
      clock.now = s.currentPeriodEnd.getTime() + HOUR;
      const renewed = await subscriptions.getUserSubscription(u);
      expect(renewed?.currentPeriodStart.getTime()).toBe(s.currentPeriodEnd.getTime());
      rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:sub", "resolved:sub"]);
      expect(rows[1]!.payload).toMatchObject({ resolved: [{ thresholdId: "sub", value: 0 }] });
      await credits.deductCredits(u, 10);
      expect(configured(await notifications.getAlerts(u))).toMatchObject([{ state: "ok", value: 10 }]);
      // Set on an account with a subscription: the period's spend so far counts at once.
      await notifications.setAlerts(u, [{ ...sub, id: "sub10", atOrAbove: 10 }]);
      expect(describeRows(await alertRows(notifications, u))).toEqual([
        "triggered:sub",
        "resolved:sub",
        "triggered:sub10",
      ]);
      // Cancelled now: no period any more, nothing counted.
      await subscriptions.cancel(u, { atPeriodEnd: false });
      expect(configured(await notifications.getAlerts(u))).toMatchObject([{ state: "ok", value: null }]);
      expect(describeRows(await alertRows(notifications, u))).toEqual([
        "triggered:sub",
        "resolved:sub",
        "triggered:sub10",
        "resolved:sub10",
      ]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("expiring: what is left of grants expiring within N days, holds excluded; the time-based move by evaluateAlerts", async () => {
      const exp: AlertThreshold = { id: "exp", kind: "expiring", withinDays: 7, atOrAbove: 100 };
      const { credits, notifications, clock } = services(db, [exp]);
      const u = user();
      await credits.addCredits(u, 150, { expiresAt: new Date(T0 + 10 * DAY) });
      await credits.addCredits(u, 500); // never expires
      expect(await alertRows(notifications, u)).toEqual([]);
      clock.now += 3 * DAY + HOUR; // the grant is now within 7 days
      expect(configured(await notifications.getAlerts(u))[0]).toMatchObject({ state: "ok", value: 150 });
      await notifications.evaluateAlerts(u);
      const rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:exp"]);
      expect(rows[0]!.payload).toMatchObject({ value: 150, line: 100 });
      // A hold on the expiring grant takes its credits out of what is left of it.
      const hold = await credits.reserveCredits(u, 60); // burns the expiring grant first
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:exp", "resolved:exp"]);
      await credits.releaseReservedCredits(hold.id);
      expect(describeRows(await alertRows(notifications, u))).toEqual([
        "triggered:exp",
        "resolved:exp",
        "triggered:exp",
      ]);
    });

    it("an alert id Object.prototype has (__proto__, constructor, toString) is stored as any other: recorded once, reported, and the account keeps spending", async () => {
      const ids = ["__proto__", "constructor", "toString", "hasOwnProperty"];
      const own = ids.map((id): AlertThreshold => ({ id, kind: "available", atOrBelow: 100 }));
      const { credits, notifications } = services(db, []);
      const u = user();
      await credits.addCredits(u, 150);
      await notifications.setAlerts(u, own);
      await credits.deductCredits(u, 60); // 90: every one crosses
      await credits.deductCredits(u, 10); // still in alarm: nothing more
      const hold = await credits.reserveCredits(u, 5);
      await credits.commitReservedCredits(hold.id);
      expect(describeRows(await alertRows(notifications, u))).toEqual(ids.map((id) => `triggered:${id}`));
      const states = configured(await notifications.getAlerts(u));
      expect(states.map((a) => [a.threshold.id, a.state, a.value, a.crossings])).toEqual(
        ids.map((id) => [id, "in_alarm", 75, 1]),
      );
      const stored = (await db.getAccount(u))?.alert?.marks;
      expect(Object.getPrototypeOf(stored)).toBe(Object.prototype);
      for (const id of ids) expect(Object.getOwnPropertyDescriptor(stored, id)?.value).toMatchObject({ crossings: 1 });
      await credits.addCredits(u, 100); // 175: every one resolves, in one event
      expect(describeRows(await alertRows(notifications, u)).at(-1)).toBe(`resolved:${ids.join(",")}`);
      // As a default threshold too: an account crossing it keeps spending.
      const d = services(db, [{ id: "__proto__", kind: "available", atOrBelow: 100 }]);
      const v = user();
      await d.credits.addCredits(v, 150);
      await d.credits.deductCredits(v, 60);
      await d.credits.deductCredits(v, 10);
      expect(describeRows(await alertRows(d.notifications, v))).toEqual(["triggered:__proto__"]);
      expect(configured(await d.notifications.getAlerts(v))).toMatchObject([{ state: "in_alarm", crossings: 1 }]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("evaluateAlerts settles what is due first (an expired grant, a lapsed hold): the moves of that change go out together, from the account as it is now", async () => {
      const exp: AlertThreshold = { id: "exp", kind: "expiring", withinDays: 7, atOrAbove: 100 };
      const { credits, notifications, clock } = services(db, [LOW, exp]);
      const u = user();
      await credits.addCredits(u, 150, { expiresAt: new Date(T0 + 5 * DAY) });
      await credits.addCredits(u, 50);
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:exp"]); // 200 available: ok
      clock.now = T0 + 5 * DAY + HOUR; // the grant of 150 has expired: 50 left
      const states = configured(await notifications.evaluateAlerts(u));
      expect(states.map((a) => [a.threshold.id, a.state, a.value])).toEqual([
        ["low", "in_alarm", 50],
        ["exp", "ok", 0],
      ]);
      const rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:exp", "triggered:low", "resolved:exp"]);
      // One change (the expiry), one seq: both moves carry it.
      const account = await db.getAccount(u);
      expect(rows.slice(1).map((r) => r.payload.seq)).toEqual([account?.seq, account?.seq]);
      expect((await credits.getUserCreditsInfo(u)).available).toBe(50);
      // A hold that lapsed: released by the evaluation, which reads what it gave back.
      await credits.addCredits(u, 100); // 150: low resolves
      await credits.reserveCredits(u, 100, { ttlSeconds: 60 }); // 50: low again
      expect(describeRows(await alertRows(notifications, u)).slice(3)).toEqual(["resolved:low", "triggered:low"]);
      clock.now += 120_000;
      expect(configured(await notifications.evaluateAlerts(u))[0]).toMatchObject({ state: "ok", value: 150 });
      expect(describeRows(await alertRows(notifications, u)).slice(5)).toEqual(["resolved:low"]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("a never-funded account fires nothing until its first change, evaluated like any other", async () => {
      const { credits, notifications } = services(db, [LOW]);
      const u = user();
      await notifications.setAlerts(u, [{ id: "small", kind: "available", atOrBelow: 50 }]);
      expect(configured(await notifications.evaluateAlerts(u))).toEqual([
        {
          threshold: { id: "small", kind: "available", atOrBelow: 50 },
          state: "ok",
          value: null,
          line: 50,
          crossings: 0,
          source: "account",
        },
      ]);
      expect(await alertRows(notifications, u)).toEqual([]);
      await credits.addCredits(u, 30); // its first change: 30 <= 50
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:small"]);
      // An account nobody has touched: the defaults, no value, nothing stored.
      const v = user();
      expect(await notifications.getAlerts(v)).toMatchObject([
        { threshold: { id: "credits_exhausted" }, state: "ok", value: null, source: "builtIn" },
        { threshold: LOW, state: "ok", value: null, line: 100, crossings: 0, source: "default" },
      ]);
      expect(await db.getAccount(v)).toBeNull();
    });

    it("setAlerts: an account's own thresholds replace the defaults; one set past its line fires at once; null restores the defaults", async () => {
      const { credits, notifications } = services(db, [LOW]);
      const u = user();
      await credits.addCredits(u, 300);
      await notifications.setAlerts(u, [{ id: "big", kind: "available", atOrBelow: 500 }]);
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:big"]);
      await credits.deductCredits(u, 250); // 50: the default `low` does not apply to this account
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:big"]);
      await notifications.setAlerts(u, null); // the defaults again: `low` is in alarm at once
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:big", "triggered:low"]);
      expect(configured(await notifications.getAlerts(u))).toMatchObject([
        { threshold: LOW, state: "in_alarm", source: "default" },
      ]);
      // Set again under an old id: its events keep distinct dedupe keys.
      await notifications.setAlerts(u, [{ id: "big", kind: "available", atOrBelow: 500 }]);
      const rows = await alertRows(notifications, u);
      expect(describeRows(rows)).toEqual(["triggered:big", "triggered:low", "triggered:big"]);
      expect(new Set(rows.map((r) => r.dedupeKey)).size).toBe(3);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("refuses bad thresholds with a ValidationError, changing nothing", async () => {
      const { credits, notifications } = services(db, []);
      const u = user();
      await credits.addCredits(u, 10);
      const before = await db.getAccount(u);
      const bad: unknown[] = [
        [{ id: "a", kind: "available" }],
        [{ id: "a", kind: "nope", atOrBelow: 1 }],
        [LOW, LOW],
        [{ id: "bad id!", kind: "available", atOrBelow: 1 }],
        [{ id: "p", kind: "left_percent", atOrBelow: 101 }],
        [{ id: "s", kind: "period_spend", atOrAbove: 5, window: "year" }],
        [{ id: "s", kind: "period_spend", atOrAbove: 5, window: "day", timeZone: "Mars/Olympus" }],
        [{ id: "s", kind: "period_spend", atOrAbove: 5, window: "subscription_period", timeZone: "UTC" }],
        [{ id: "p", kind: "left_percent", atOrBelow: 5, feature: "" }],
        [{ id: "e", kind: "expiring", withinDays: -1, atOrAbove: 5 }],
      ];
      for (const list of bad) {
        await expect(notifications.setAlerts(u, list as AlertThreshold[])).rejects.toMatchObject({
          name: "ValidationError",
        });
      }
      expect(await db.getAccount(u)).toEqual(before);
      expect(() => new NotificationService({ db, alerts: [LOW, LOW] })).toThrow(/alerts/);
      for (const call of [
        () => notifications.getAlerts(""),
        () => notifications.evaluateAlerts(""),
        () => notifications.setAlerts("", null),
        () => notifications.evaluateExpiringAlerts({ pageSize: 0 }),
        () => notifications.evaluateEndedSpendWindows({ pageSize: 0 }),
      ]) {
        await expect(call()).rejects.toMatchObject({ name: "ValidationError" });
      }
    });

    it(`a seeded random run of spends, holds, grants, expiry and window ends records exactly the alert events an independent model predicts (${runs} runs, seed ${seed})`, async () => {
      const stats = { events: 0, onLine: 0 };
      await fc.assert(
        fc.asyncProperty(commandsArbitrary({ min: 20, max: 50 }), thresholdsArbitrary(), (commands, thresholds) =>
          runAgainstModel(db, commands, thresholds, stats),
        ),
        { numRuns: runs, seed },
      );
      // Not vacuous: the runs moved thresholds, and met values exactly on their lines.
      expect(stats.events).toBeGreaterThanOrEqual(runs + 1);

      expect(stats.onLine).toBeGreaterThanOrEqual(1);
    });

    it(`${raceSize} concurrent deductions around the line record exactly one alert_triggered`, async () => {
      const { credits, notifications } = services(db, [{ id: "line", kind: "available", atOrBelow: raceSize }]);
      const u = user();
      await credits.addCredits(u, 2 * raceSize);
      // The last deductions are refused for lack of credits: expected, the events are what is checked.
      await Promise.all(Array.from({ length: raceSize + 10 }, () => credits.deductCredits(u, 2).catch(() => null)));
      expect(describeRows(await alertRows(notifications, u))).toEqual(["triggered:line"]);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(0);
    });
  });
}

/**
 * One threshold of each kind, with lines that the property test's amounts (1 to 60) land exactly on
 * now and then; `expiring` within minutes, as its grants expire within 10 minutes.
 */
function thresholdsArbitrary(): fc.Arbitrary<AlertThreshold[]> {
  return fc
    .record({
      low: fc.integer({ min: -20, max: 40 }),
      pct: fc.integer({ min: 0, max: 100 }),
      spend: fc.integer({ min: 1, max: 40 }),
      within: fc.constantFrom(0.002, 0.004, 0.007),
      expiring: fc.integer({ min: 1, max: 50 }),
    })
    .map((x): AlertThreshold[] => [
      { id: "low", kind: "available", atOrBelow: x.low },
      { id: "pct", kind: "left_percent", atOrBelow: x.pct },
      { id: "day", kind: "period_spend", atOrAbove: x.spend, window: "day" },
      { id: "exp", kind: "expiring", withinDays: x.within, atOrAbove: x.expiring },
    ]);
}
