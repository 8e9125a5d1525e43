/**
 * The outbox part of the `DbManager` contract: rows written in the unit of work (and rolled back
 * with it), one event per threshold crossing under concurrency, atomic claims in order per user,
 * guarded completion, dedupe keys, and the dispatcher's retries on top of them.
 *
 * Tests that claim rows run at their own early instant (`epoch`), in descending order, and settle
 * every row they create, so the store-wide claims of one test never see rows of another.
 */
import { notificationsPart } from "../parts.js";
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi, type TestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import type { ClaimQuery, NotificationUpdate } from "../db/types-notifications.js";
import { AccountWork } from "../domain/account-work.js";
import { newNotification } from "../domain/notifications.js";
import { ConfigurationError, InsufficientCreditsError, ValidationError } from "../errors.js";
import type { Notification } from "../models/index.js";
import { InMemoryNotificationQueue, eventEnvelope, type NotificationMessage } from "../queue/index.js";
import { DomainEvent } from "../models/events.js";
import { DomainEventType } from "../models/notifications.js";
import { CoreCreditService } from "../services/credit-service.js";
import { NotificationService } from "../services/notification-service.js";
import { scribble } from "./scribble.js";
import { DAY, lazy, T0 } from "./support.js";

/** Instants before any other test's rows: the k-th claiming test runs at 1999 − k. */
const epoch = (k: number) => Date.UTC(1999 - k, 0, 1);

function services(
  db: DbManager,
  start: number,
  thresholds = { lowCredits: 20 },
  queue = new InMemoryNotificationQueue(),
) {
  const clock = { now: start };
  const now = () => new Date(clock.now);
  const credits = new CoreCreditService({ db, clock: now, notifications: notificationsPart(thresholds) });
  const notifications = new NotificationService({
    db,
    clock: now,
    thresholds,
    queue,
    backoffBaseMs: 1000,
    backoffMaxMs: 60_000,
    maxAttempts: 3,
    leaseMs: 10_000,
  });
  return { credits, notifications, clock, queue };
}

const types = (rows: readonly Notification[]) => rows.map((r) => r.type);

/** Claims the rows due at `now` under `token` for 5 s: at most 10, unless `extra` says otherwise. */
function claim(db: DbManager, token: string, now: Date, extra: Partial<ClaimQuery> = {}): Promise<Notification[]> {
  return db.claimNotifications({ now, limit: 10, leaseMs: 5000, token, ...extra });
}

/**
 * Claims and settles with `settle` every row due an hour after `at`, store-wide, so that later
 * claims in a shared store never see the rows a test left.
 */
async function settleAllDue(db: DbManager, at: number, token: string, settle: NotificationUpdate): Promise<void> {
  const due = () => claim(db, token, new Date(at + 3_600_000));
  for (let rows = await due(); rows.length > 0; rows = await due()) {
    for (const r of rows) await db.completeNotification(r.id, r.claimToken as string, settle);
  }
}

/**
 * The outbox part of the contract (`runDbManagerContract` runs it). `test`: your runner's functions,
 * as in `ContractOptions.test`; by default those the suite already runs on, else the runner's globals.
 * @beta
 */
export function runNotificationContract(
  getDb: () => DbManager,
  options: { raceSize?: number; test?: TestApi } = {},
): void {
  if (options.test !== undefined) useTestApi(options.test);
  const raceSize = options.raceSize ?? 50;
  const db = lazy(getDb);
  const user = () => `n-${randomUUID()}`;

  describe("notifications", () => {
    it("records feature_status_changed when a change of available flips a feature, in the same unit of work; none otherwise", async () => {
      const u = user();
      const now = () => new Date(T0);
      const features = { export: { minAvailable: 50 }, chat: { minAvailable: 1 } };
      const credits = new CoreCreditService({ db, clock: now, notifications: notificationsPart(), features });
      const notifications = new NotificationService({ db, clock: now, thresholds: {} });
      const flips = async () =>
        (await notifications.list(u)).filter((r) => r.type === "feature_status_changed").map((r) => r.payload);
      await credits.addCredits(u, 10); // chat on
      await credits.addCredits(u, 10); // nothing flips
      await credits.reserveCredits(u, 20); // available 0: chat off
      expect(await flips()).toEqual([
        { feature: "chat", allowed: true, minAvailable: 1, available: 10, previousAvailable: 0 },
        { feature: "chat", allowed: false, minAvailable: 1, available: 0, previousAvailable: 20 },
      ]);
      await expect(credits.deductCredits(u, 1)).rejects.toBeInstanceOf(InsufficientCreditsError);
      await credits.addCredits(u, 60); // both on, in name order
      expect((await flips()).slice(2)).toEqual([
        { feature: "chat", allowed: true, minAvailable: 1, available: 60, previousAvailable: 0 },
        { feature: "export", allowed: true, minAvailable: 50, available: 60, previousAvailable: 0 },
      ]);
    });

    it("records a domain event per journal entry with domainEvents on, in the unit of work and in seq order; none with it off", async () => {
      const u = user();
      const clock = { now: T0 };
      const now = () => new Date(clock.now);
      const credits = new CoreCreditService({
        db,
        clock: now,
        notifications: notificationsPart({ domainEvents: true }),
      }); // the domain events alone
      const notifications = new NotificationService({ db, clock: now });
      await credits.addCredits(u, 100, { source: "manual", sourceRef: "order-1", expiresAt: new Date(T0 + 30 * DAY) });
      const adjustment = await credits.addCredits(u, 5, { source: "adjustment" });
      await credits.deductCredits(u, 10, { idempotencyKey: "use-1" });
      await credits.deductCredits(u, 10, { idempotencyKey: "use-1" }); // a retry: no entry, no event
      const held = await credits.reserveCredits(u, 30, { reason: "llm-call" });
      await credits.commitReservedCredits(held.id, { amount: 20 });
      const released = await credits.reserveCredits(u, 10);
      await credits.releaseReservedCredits(released.id);
      await credits.voidGrant(adjustment.grants[0]!.grantId);
      await expect(credits.deductCredits(u, 1000)).rejects.toBeInstanceOf(InsufficientCreditsError); // rolled back: no event
      await credits.addCredits(u, 7, { expiresAt: new Date(T0 + DAY) });
      clock.now = T0 + 2 * DAY;
      await credits.expireCredits(u);
      const rows = (await notifications.list(u)).filter((r) => r.type !== "transaction_error");
      expect(types(rows)).toEqual([
        "credits_added",
        "credits_adjusted",
        "credits_deducted",
        "hold_placed",
        "hold_settled",
        "hold_placed",
        "hold_settled",
        "credits_voided",
        "credits_added",
        "credits_expired",
      ]);
      const events = rows.map((r) =>
        DomainEvent.parse(
          eventEnvelope({
            id: r.id,
            userId: r.userId,
            type: r.type,
            version: r.version,
            payload: r.payload,
            createdAt: r.createdAt.toISOString(),
            attempt: 1,
          }),
        ),
      );
      expect(events.map((e) => (e.payload as { seq: number }).seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]); // the under-commit's unused part is in its one entry
      expect(events[0]).toMatchObject({
        type: "credits_added",
        version: 1,
        id: rows[0]!.id,
        userId: u,
        occurredAt: new Date(T0).toISOString(),
        payload: {
          amount: 100,
          source: "manual",
          sourceRef: "order-1",
          expiresAt: new Date(T0 + 30 * DAY).toISOString(),
          debtPaid: 0,
          balanceAfter: 100,
          availableAfter: 100,
        },
      });
      expect(events[2]!.payload).toMatchObject({ amount: 10, idempotencyKey: "use-1", balanceAfter: 95 });
      expect(events[3]!.payload).toMatchObject({
        reservationId: held.id,
        reason: "llm-call",
        amount: 30,
        availableAfter: 65,
      });
      expect(events[4]!.payload).toMatchObject({
        reservationId: held.id,
        outcome: "committed",
        heldAmount: 30,
        capturedAmount: 20,
        returnedAmount: 10,
        grants: [{ amount: 20 }, { amount: 10, kind: "returned" }],
        balanceAfter: 75,
        reservedAfter: 0,
        availableAfter: 75,
      });
      expect(events[6]!.payload).toMatchObject({
        reservationId: released.id,
        outcome: "released",
        heldAmount: 10,
        capturedAmount: 0,
        returnedAmount: 10,
      });
      expect(events[7]!.payload).toMatchObject({
        amount: 5,
        balanceAfter: 70,
        grants: [{ grantId: adjustment.grants[0]!.grantId, amount: 5 }],
      });
      expect(events[9]!.payload).toMatchObject({ amount: 7, balanceAfter: 70, grants: [{ amount: 7 }] });
      expect(events[9]!.occurredAt).toBe(new Date(T0 + 2 * DAY).toISOString());
      // Without the option, the same operations record no domain event.
      const v = user();
      const quiet = new CoreCreditService({ db, clock: now, notifications: notificationsPart() });
      await quiet.addCredits(v, 10);
      await quiet.deductCredits(v, 3);
      expect(
        (await notifications.list(v)).filter((r) => (DomainEventType.options as readonly string[]).includes(r.type)),
      ).toEqual([]);
    });

    it("records one event per crossing: low, exhausted, restored (none on the account's first change)", async () => {
      const u = user();
      const { credits, notifications } = services(db, T0);
      await credits.addCredits(u, 100);
      await credits.deductCredits(u, 85); // 15 < 20: low
      await credits.deductCredits(u, 10); // still low
      await credits.deductCredits(u, 5); // 0: exhausted
      await credits.addCredits(u, 10); // 10: still under the threshold, no event
      await credits.addCredits(u, 40); // 50: restored
      const rows = await notifications.list(u);
      expect(types(rows)).toEqual(["low_credits", "credits_exhausted", "balance_restored"]);
      expect(rows[0]).toMatchObject({ userId: u, status: "pending", attempts: 0, dedupeKey: null, claimedUntil: null });
      expect(rows[0]?.payload).toMatchObject({ available: 15, threshold: 20, level: "low", previousLevel: "ok" });
      expect((await db.getAccount(u))?.alert).toEqual({
        level: "ok",
        threshold: 20,
        lastAllocation: 40,
        override: null,
      });
      expect(rows.map((r) => r.id)).toEqual([...rows.map((r) => r.id)].sort());
    });

    it("a deduction past the threshold and zero at once records low_credits then credits_exhausted", async () => {
      const u = user();
      const { credits, notifications } = services(db, T0);
      await credits.addCredits(u, 100);
      await credits.deductCredits(u, 100);
      expect(types(await notifications.list(u))).toEqual(["low_credits", "credits_exhausted"]);
    });

    it("holds count: reserving under the threshold is low; a lapsed hold records reservation_expired", async () => {
      const u = user();
      const { credits, notifications, clock } = services(db, T0);
      await credits.addCredits(u, 50);
      const hold = await credits.reserveCredits(u, 40, { ttlSeconds: 60 });
      clock.now += 61_000;
      await credits.getUserCreditsInfo(u); // settles the lapsed hold
      const rows = await notifications.list(u);
      expect(types(rows)).toEqual(["low_credits", "reservation_expired", "balance_restored"]);
      expect(rows.find((r) => r.type === "reservation_expired")).toMatchObject({
        dedupeKey: `reservation_expired:${hold.id}`,
        payload: { reservationId: hold.id, amount: 40 },
      });
    });

    it(`${raceSize} concurrent deductions around the threshold record exactly one low_credits`, async () => {
      const u = user();
      const n = raceSize;
      const { credits, notifications } = services(db, T0, { lowCredits: n });
      await credits.addCredits(u, 2 * n);
      await Promise.all(Array.from({ length: n + 10 }, () => credits.deductCredits(u, 2).catch((e: unknown) => e)));
      // Every refusal happened at the same account state (seq): one transaction_error.
      expect(types(await notifications.list(u))).toEqual(["low_credits", "credits_exhausted", "transaction_error"]);
    });

    it(`limit_warning and limit_reached: once per limit, window and threshold, also under ${raceSize} concurrent spends; a released hold does not re-arm, a new amount or window does (docs/teams-and-limits.md)`, async () => {
      const u = user();
      const { credits, notifications, clock } = services(db, T0, { lowCredits: 0 });
      await credits.addCredits(u, 10_000);
      await credits.setLimits(u, [
        { spender: "alice", amount: 100, period: "month" },
        { amount: 5000, period: "month" },
      ]);
      const limitRows = async () =>
        (await notifications.list(u, { limit: 1000 })).filter((r) => r.type.startsWith("limit_"));
      await credits.deductCredits(u, 79, { spender: "alice" });
      expect(await limitRows()).toEqual([]);
      // A hold counts when placed: 84 of 100 sends 80 %, in the hold's unit of work.
      const hold = await credits.reserveCredits(u, 5, { spender: "alice" });
      const [warning] = await limitRows();
      expect(warning).toMatchObject({
        type: "limit_warning",
        version: 1,
        status: "pending",
        payload: {
          limit: { spender: "alice", feature: null, amount: 100, period: "month", resetsWith: null },
          threshold: 0.8,
          used: 84,
          remaining: 16,
          windowStart: new Date(T0).toISOString(),
          resetsAt: new Date(Date.UTC(2030, 1, 1)).toISOString(),
        },
      });
      const w = warning as Notification;
      const published = { ...w, createdAt: w.createdAt.toISOString(), attempt: 1 };
      expect(DomainEvent.parse(eventEnvelope(published))).toMatchObject({ type: "limit_warning", version: 1 });
      // Released (79) and spent again (84): 80 % was sent in this window, nothing new.
      await credits.releaseReservedCredits(hold.id);
      await credits.deductCredits(u, 5, { spender: "alice" });
      expect(await limitRows()).toHaveLength(1);
      // Many spends at once past 100 %: exactly one limit_reached.
      const results = await Promise.allSettled(
        Array.from({ length: raceSize }, () => credits.deductCredits(u, 1, { spender: "alice" })),
      );
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(Math.min(raceSize, 16));
      const reached = (await limitRows()).filter((r) => r.type === "limit_reached");
      expect(reached).toHaveLength(raceSize >= 16 ? 1 : 0);
      if (raceSize >= 16) expect(reached[0]?.payload).toMatchObject({ threshold: 1, used: 100, remaining: 0 });
      // Raised to 200: 100 is below 80 % of it, so a spend that reaches 160 sends 80 % again.
      await credits.setLimits(u, [
        { spender: "alice", amount: 200, period: "month" },
        { amount: 5000, period: "month" },
      ]);
      await credits.deductCredits(u, 60, { spender: "alice" });
      expect((await limitRows()).at(-1)?.payload).toMatchObject({
        threshold: 0.8,
        used: 160,
        limit: { amount: 200 },
      });
      // The next month: a new window, both thresholds again (one spend past both: both, in order).
      clock.now = Date.UTC(2030, 1, 2);
      const before = (await limitRows()).length;
      await credits.deductCredits(u, 200, { spender: "alice" });
      expect(types((await limitRows()).slice(before))).toEqual(["limit_warning", "limit_reached"]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("writes nothing when the unit of work fails after save, or loses the seq race", async () => {
      const u = user();
      const { credits, notifications } = services(db, T0);
      await credits.addCredits(u, 100);
      const attempt = (seq: number | null, fail: boolean) =>
        db.transaction(u, async (tx) => {
          const state = await tx.load();
          const work = new AccountWork(u, state, new Date(T0), randomUUID);
          work.deduct(90, {}, { allowDebt: false, overdraftLimit: null });
          const changes = work.changes();
          changes.notifications = [newNotification(u, "low_credits", { x: 1 }, new Date(T0), null)];
          if (seq !== null) changes.previousSeq = seq;
          await tx.save(changes);
          if (fail) throw new Error("boom after save");
        });
      await expect(attempt(null, true)).rejects.toThrow("boom after save");
      await expect(attempt(99, false)).rejects.toThrow();
      expect(await notifications.list(u)).toEqual([]);
      expect((await db.getAccount(u))?.balance).toBe(100);
    });

    it("records transaction_error once per account state for refusals for lack of credits", async () => {
      const u = user();
      const { credits, notifications } = services(db, T0);
      await credits.addCredits(u, 5);
      for (let i = 0; i < 3; i++)
        await expect(credits.deductCredits(u, 10)).rejects.toBeInstanceOf(InsufficientCreditsError);
      await credits.addCredits(u, 1);
      await expect(credits.reserveCredits(u, 10)).rejects.toBeInstanceOf(InsufficientCreditsError);
      const rows = (await notifications.list(u)).filter((r) => r.type === "transaction_error");
      expect(rows.map((r) => r.payload.seq)).toEqual([1, 2]);
      expect(rows[0]?.payload).toMatchObject({ code: "INSUFFICIENT_CREDITS", requested: 10, available: 5 });
    });

    it("per-user thresholds (absolute or a percentage of the last allocation) override the service's", async () => {
      const u = user();
      const { credits, notifications } = services(db, T0, { lowCredits: 0 });
      await credits.addCredits(u, 1000);
      await notifications.setThreshold(u, { lowCreditsPercent: 25 });
      await credits.deductCredits(u, 700); // 300 >= 250
      expect(await notifications.list(u)).toEqual([]);
      await credits.deductCredits(u, 60); // 240 < 250
      expect(types(await notifications.list(u))).toEqual(["low_credits"]);
      await notifications.setThreshold(u, { lowCredits: 100 }); // 240 >= 100: restored at once
      expect(types(await notifications.list(u))).toEqual(["low_credits", "balance_restored"]);
      expect((await db.getAccount(u))?.alert?.override).toEqual({ lowCredits: 100, lowCreditsPercent: null });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("a threshold set before an account's first addition: the first top-up is evaluated from ok, like any change", async () => {
      const { credits, notifications } = services(db, T0, { lowCredits: 0 });
      const u = user();
      await notifications.setThreshold(u, { lowCredits: 50 });
      expect((await db.getAccount(u))?.alert).toEqual({
        level: null,
        threshold: 50,
        lastAllocation: 0,
        override: { lowCredits: 50, lowCreditsPercent: null },
      });
      await credits.addCredits(u, 100); // not a restoration: the account was never low
      expect(await notifications.list(u)).toEqual([]);
      expect((await db.getAccount(u))?.alert).toMatchObject({ level: "ok", threshold: 50 });
      await credits.deductCredits(u, 60); // 40 < 50
      expect(types(await notifications.list(u))).toEqual(["low_credits"]);
      // A never-funded account fires nothing until its first change, which is evaluated like any
      // other (docs/notifications.md): a first top-up under the threshold is a move into `low`.
      const v = user();
      await notifications.setThreshold(v, { lowCredits: 50 });
      await notifications.setThreshold(v, { lowCredits: 60 }); // still no history
      expect(await notifications.list(v)).toEqual([]);
      await credits.addCredits(v, 30);
      expect(types(await notifications.list(v))).toEqual(["low_credits"]);
      expect((await db.getAccount(v))?.alert).toMatchObject({ level: "low", threshold: 60 });
      await credits.addCredits(v, 30); // 60: exactly on the line, still low
      expect(types(await notifications.list(v))).toEqual(["low_credits"]);
      await credits.addCredits(v, 1); // 61 > 60: restored
      expect(types(await notifications.list(v))).toEqual(["low_credits", "balance_restored"]);
    });

    it("expiring_credits: once per grant and window however often the job runs", async () => {
      const u = user();
      const { credits, notifications } = services(db, T0);
      const far = T0 + 500 * DAY; // no other test's grants expire this late
      const { clock } = { clock: { now: far } };
      const reminders = new NotificationService({ db, clock: () => new Date(clock.now) });
      const credits2 = new CoreCreditService({ db, clock: () => new Date(clock.now) });
      await credits2.addCredits(u, 10, { expiresAt: new Date(far + 2 * DAY) });
      await credits2.addCredits(u, 10, { expiresAt: new Date(far + 9 * DAY) });
      await reminders.sendExpiringReminders({ days: 3 });
      await reminders.sendExpiringReminders({ days: 3 });
      await reminders.sendExpiringReminders({ days: 7 });
      const rows = (await notifications.list(u)).filter((r) => r.type === "expiring_credits");
      expect(rows.map((r) => r.dedupeKey?.replace(/:.*:/, ":*:"))).toEqual([
        "expiring_credits:*:3d",
        "expiring_credits:*:7d",
      ]);
      expect(rows[0]?.payload).toMatchObject({ remaining: 10, days: 3 });
      void credits;
    });

    it("emit() stores an event once per dedupe key and validates its input", async () => {
      const u = user();
      const { notifications } = services(db, T0);
      expect(
        await notifications.emit(u, { type: "subscription_renewed", payload: { planId: "p" }, dedupeKey: "renew:1" }),
      ).toBe(true);
      expect(
        await notifications.emit(u, { type: "subscription_renewed", payload: { planId: "p" }, dedupeKey: "renew:1" }),
      ).toBe(false);
      await expect(notifications.emit(u, { type: "nope" as never })).rejects.toMatchObject({
        code: "VALIDATION_ERROR",
      });
      expect(await notifications.list(u)).toHaveLength(1);
    });

    it("hands out copies: mutating an outbox row read, claimed (or written) changes nothing stored", async () => {
      const at = epoch(3);
      const u = user();
      const row = newNotification(u, "low_credits", { nested: { n: 1 } }, new Date(at), null);
      const id = row.id;
      await db.insertNotifications([row]);
      scribble(row);
      const [claimed] = (await claim(db, "copies", new Date(at + 1000), { limit: 100 })).filter((r) => r.userId === u);
      expect(claimed).toMatchObject({ id, payload: { nested: { n: 1 } } });
      const list = () => db.listNotifications(u, { limit: 10 });
      const before = await list();
      scribble(claimed);
      scribble(await list());
      expect(await list()).toEqual(before);
      // Settled and purged, so neither a later claim nor a later purge (of another test in a shared store) meets it.
      const done = {
        status: "sent" as const,
        attempts: 1,
        nextAttemptAt: new Date(at + 1000),
        lastError: null,
        settledAt: new Date(at + 1000),
      };
      expect(await db.completeNotification(id, "copies", done)).toBe(true);
      await db.purgeNotifications(new Date(at + 1001), 100);
      expect(await list()).toEqual([]);
    });

    it("claims atomically: each user's oldest due row only, never one row twice; completion is guarded", async () => {
      const at = epoch(0);
      const [a, b] = [user(), user()];
      const rows = [a, a, b].map((u, i) => newNotification(u, "low_credits", { i }, new Date(at), null));
      const later = newNotification(b, "low_credits", { i: 9 }, new Date(at + 60_000), null);
      expect(await db.insertNotifications([...rows, later])).toBe(4);
      const now = new Date(at + 1000);
      const claims = await Promise.all([1, 2, 3, 4].map((k) => claim(db, `t${k}`, now)));
      const claimed = claims.flat().filter((r) => r.userId === a || r.userId === b);
      expect(claimed.map((r) => r.payload.i).sort()).toEqual([0, 2]);
      expect(new Set(claimed.map((r) => r.id)).size).toBe(2);
      const first = claimed.find((r) => r.payload.i === 0) as Notification;
      const settle = { status: "sent" as const, attempts: 1, nextAttemptAt: now, lastError: null, settledAt: now };
      expect(await db.completeNotification(first.id, "wrong-token", settle)).toBe(false);
      expect(await db.completeNotification(first.id, first.claimToken as string, settle)).toBe(true);
      expect(await db.completeNotification(first.id, first.claimToken as string, settle)).toBe(false);
      // a's next row is now its head; b's head is still claimed, its later row is not due anyway.
      const next = (await claim(db, "t5", now)).filter((r) => r.userId === a || r.userId === b);
      expect(next.map((r) => r.payload.i)).toEqual([1]);
      for (const r of next) expect(await db.completeNotification(r.id, r.claimToken as string, settle)).toBe(true);
      // b's claim lapses: claimed again by someone else.
      const lapsed = (await claim(db, "t6", new Date(at + 7000))).filter((r) => r.userId === b);
      expect(lapsed.map((r) => r.payload.i)).toEqual([2]);
      for (const r of lapsed) expect(await db.completeNotification(r.id, r.claimToken as string, settle)).toBe(true);
      const bRow = (await claim(db, "t7", new Date(at + 61_000))).filter((r) => r.userId === b);
      expect(bRow.map((r) => r.payload.i)).toEqual([9]);
      await db.completeNotification(later.id, "t7", settle);
      expect(await db.listNotifications(a, { status: "sent", limit: 10 })).toHaveLength(2);
      // Purging deletes rows settled before the cut-off (all above settled at +1000), never pending ones.
      const pendingRow = {
        ...newNotification(a, "low_credits", { i: 50 }, new Date(at), "keep"),
        nextAttemptAt: new Date(at + 3_600_000),
      };
      await db.insertNotifications([pendingRow]);
      expect(await db.purgeNotifications(new Date(at + 1000), 100)).toBe(0);
      expect(await db.purgeNotifications(new Date(at + 1001), 3)).toBe(3);
      expect(await db.purgeNotifications(new Date(at + 1001), 100)).toBe(1);
      expect(await db.listNotifications(b, { limit: 10 })).toEqual([]);
      expect((await db.listNotifications(a, { limit: 10 })).map((r) => r.payload.i)).toEqual([50]);
      const last = (await claim(db, "t8", new Date(at + 3_600_000))).filter((r) => r.userId === a);
      expect(last.map((r) => r.payload.i)).toEqual([50]);
      for (const r of last) await db.completeNotification(r.id, "t8", settle);
      expect(await db.purgeNotifications(new Date(at + 1001), 100)).toBe(1);
      // Its dedupe key is free again.
      expect(
        await db.insertNotifications([
          { ...newNotification(a, "low_credits", {}, new Date(at), "keep"), status: "sent", settledAt: new Date(at) },
        ]),
      ).toBe(1);
      expect(await db.purgeNotifications(new Date(at + 1), 100)).toBe(1);
    });

    it("listOutbox pages through pending rows by next attempt and failed rows newest first", async () => {
      // reason: listOutbox is optional (the console's outbox page; a store without it lists per user)
      if (db.listOutbox === undefined) return;
      const list = db.listOutbox.bind(db);
      const at = epoch(5);
      const [a, b] = [user(), user()];
      const pending = [a, b, a, b].map((u, i) => ({
        ...newNotification(u, "low_credits", { i }, new Date(at), null),
        // Far ahead: due for no dispatcher the other tests run.
        nextAttemptAt: new Date(Date.UTC(2999, 0, 1) + (i % 2) * 1000),
      }));
      const failed = [a, b, a].map((u, i) => ({
        ...newNotification(u, "low_credits", { i: 10 + i }, new Date(at), null),
        status: "failed" as const,
        lastError: `boom ${i}`,
        settledAt: new Date(at + i * 1000),
      }));
      expect(await db.insertNotifications([...pending, ...failed])).toBe(7);
      const all = async (status: "pending" | "failed") => {
        const seen: Notification[] = [];
        let after: { at: Date; id: string } | undefined;
        for (let page = 0; page < 5000; page++) {
          const rows = await list({ status, limit: 3, ...(after === undefined ? {} : { after }) });
          seen.push(...rows);
          const last = rows[rows.length - 1];
          if (rows.length < 3 || last === undefined) break;
          after = { at: (status === "pending" ? last.nextAttemptAt : last.settledAt) as Date, id: last.id };
        }
        return seen.filter((r) => r.userId === a || r.userId === b);
      };
      const byTime = (x: Notification, y: Notification) =>
        x.nextAttemptAt.getTime() - y.nextAttemptAt.getTime() || (x.id < y.id ? -1 : 1);
      expect((await all("pending")).map((r) => r.id)).toEqual(
        pending
          .slice()
          .sort(byTime)
          .map((r) => r.id),
      );
      const newest = await all("failed");
      expect(newest.map((r) => r.payload.i)).toEqual([12, 11, 10]);
      expect(newest[0]?.lastError).toBe("boom 2");
    });

    it("a user whose oldest row waits for its backoff never hides other users' due rows", async () => {
      const at = epoch(1);
      const [blocked, other] = [user(), user()];
      const head = {
        ...newNotification(blocked, "low_credits", { i: 0 }, new Date(at), null),
        nextAttemptAt: new Date(at + 3_600_000),
      };
      const behind = Array.from({ length: 30 }, (_, i) =>
        newNotification(blocked, "low_credits", { i: i + 1 }, new Date(at), null),
      );
      const mine = newNotification(other, "low_credits", { i: 99 }, new Date(at + 1), null);
      await db.insertNotifications([head, ...behind, mine]);
      const now = new Date(at + 1000);
      const claimed = (await claim(db, "b1", now, { limit: 2 })).filter(
        (r) => r.userId === blocked || r.userId === other,
      );
      expect(claimed.map((r) => r.payload.i)).toEqual([99]);
      const settle = { status: "failed" as const, attempts: 1, nextAttemptAt: now, lastError: null, settledAt: now };
      expect(await db.completeNotification(mine.id, "b1", settle)).toBe(true);
      // Settle the blocked user's rows too.
      await settleAllDue(db, at, "b2", settle);
      expect(await db.listNotifications(blocked, { status: "pending", limit: 100 })).toEqual([]);
    });

    it("claims by type: every due row of those types, whatever older rows its user has; never one row twice; handlePending handles them without publishing", async () => {
      const at = epoch(6);
      const [a, b] = [user(), user()];
      const ask = ["expiring_credits" as const];
      const head = newNotification(a, "low_credits", { i: 0 }, new Date(at), null);
      const asks = [a, a, b].map((u, i) => newNotification(u, "expiring_credits", { i: i + 1 }, new Date(at), null));
      const later = {
        ...newNotification(b, "expiring_credits", { i: 9 }, new Date(at), null),
        nextAttemptAt: new Date(at + 60_000),
      };
      expect(await db.insertNotifications([head, ...asks, later])).toBe(5);
      const mine = (rows: Notification[]) => rows.filter((r) => r.userId === a || r.userId === b);
      const now = new Date(at + 1000);
      const claims = await Promise.all([1, 2, 3, 4].map((k) => claim(db, `y${k}`, now, { types: ask })));
      const claimed = mine(claims.flat());
      // a's low_credits row (older, never claimed here) holds none of a's top-up rows back.
      expect(claimed.map((r) => r.payload.i).sort()).toEqual([1, 2, 3]);
      expect(new Set(claimed.map((r) => r.id)).size).toBe(3);
      // Held: neither a typed claim nor the dispatcher's takes them; the dispatcher gets a's head.
      expect(mine(await claim(db, "y5", now, { types: ask }))).toEqual([]);
      const heads = mine(await claim(db, "y5", now));
      expect(heads.map((r) => r.payload.i)).toEqual([0]);
      // Their claims lapse: taken over.
      const lapsed = mine(await claim(db, "y6", new Date(at + 7000), { types: ask }));
      expect(lapsed.map((r) => r.payload.i).sort()).toEqual([1, 2, 3]);
      for (const r of lapsed)
        expect(
          await db.completeNotification(r.id, "y6", {
            status: "pending",
            attempts: 0,
            nextAttemptAt: now,
            lastError: null,
            settledAt: null,
          }),
        ).toBe(true);

      // handlePending: the handler runs once per row, the row is settled `sent`, nothing is published.
      const queue = new InMemoryNotificationQueue();
      const { notifications, clock } = services(db, at + 8000, { lowCredits: 20 }, queue);
      const handled: unknown[] = [];
      let fail = true;
      notifications.setHandler("expiring_credits", async (row) => {
        if (row.payload.i === 2 && fail) {
          fail = false;
          throw new Error("provider down");
        }
        handled.push(row.payload.i);
      });
      await expect(notifications.handlePending({ types: ["low_credits"] })).rejects.toBeInstanceOf(ValidationError);
      let report = await notifications.handlePending({ types: ask, limit: 100 });
      expect(report).toMatchObject({ sent: 2, retried: 1, failed: 0, lost: 0 });
      expect(handled.sort()).toEqual([1, 3]);
      const failed = (await notifications.list(a)).find((r) => r.payload.i === 2);
      expect(failed).toMatchObject({ status: "pending", attempts: 1, lastError: "provider down" });
      // The same backoff as a failed delivery (1 s base, ±20%): not before it.
      expect((await notifications.handlePending({ types: ask })).claimed).toBe(0);
      clock.now += 120_000;
      report = await notifications.handlePending({ types: ask });
      expect(report).toMatchObject({ claimed: 2, sent: 2 }); // a's retried row, and b's later one
      expect(handled.sort()).toEqual([1, 2, 3, 9]);
      expect(queue.messages.length).toBe(0);
      expect((await notifications.list(b)).map((r) => r.status)).toEqual(["sent", "sent"]);
      // a's low_credits row is still pending, for the dispatcher (the store-wide claim below settles it).
      expect((await notifications.list(a, { status: "pending" })).map((r) => r.type)).toEqual(["low_credits"]);
      const settle = { status: "sent" as const, attempts: 1, nextAttemptAt: now, lastError: null, settledAt: now };
      await settleAllDue(db, at, "y7", settle);
      expect(await db.listNotifications(a, { status: "pending", limit: 10 })).toEqual([]);
    });

    it("the dispatcher delivers in order per user with stable ids, retries with backoff, and marks failed", async () => {
      const at = epoch(2);
      const u = user();
      const flaky = user();
      const doomed = user();
      const seen: NotificationMessage[] = [];
      let failures = 0;
      const queue = {
        async publish(m: NotificationMessage) {
          if (m.userId === doomed) throw new Error("queue down");
          if (m.userId === flaky && failures++ < 2) throw new Error("transient");
          seen.push(m);
        },
      };
      const { credits, notifications, clock } = services(db, at, { lowCredits: 20 }, queue as never);
      await credits.addCredits(u, 100);
      await credits.deductCredits(u, 100); // low, exhausted
      await credits.addCredits(u, 100); // restored
      await notifications.emit(flaky, { type: "subscription_cancelled" });
      await notifications.emit(doomed, { type: "subscription_ended" });
      clock.now += 1;
      let report = await notifications.dispatchPending({ limit: 100 });
      expect(report).toMatchObject({ sent: 3, retried: 2, failed: 0 });
      expect(seen.filter((m) => m.userId === u).map((m) => m.type)).toEqual([
        "low_credits",
        "credits_exhausted",
        "balance_restored",
      ]);
      // Not due before the backoff.
      report = await notifications.dispatchPending();
      expect(report.claimed).toBe(0);
      for (let i = 0; i < 3; i++) {
        clock.now += 120_000;
        await notifications.dispatchPending();
      }
      const flakyMsgs = seen.filter((m) => m.userId === flaky);
      expect(flakyMsgs).toHaveLength(1);
      expect(flakyMsgs[0]?.attempt).toBe(3);
      const [flakyRow] = await notifications.list(flaky);
      expect(flakyRow).toMatchObject({ status: "sent", attempts: 3, id: flakyMsgs[0]?.id });
      const [doomedRow] = await notifications.list(doomed);
      expect(doomedRow).toMatchObject({ status: "failed", attempts: 3, lastError: "queue down" });
      expect((await notifications.list(u, { status: "sent" })).map((r) => r.id)).toEqual(
        seen.filter((m) => m.userId === u).map((m) => m.id),
      );
    });
    /** Once, PostgreSQL claimed every due row whatever the limit. */
    it("a row keeps the version of its payload's schema: stored, claimed and handed to the queue (docs/events.md)", async () => {
      const at = epoch(5);
      const u = user();
      const sent: NotificationMessage[] = [];
      const clock = { now: at };
      const notifications = new NotificationService({
        db,
        clock: () => new Date(clock.now),
        queue: { publish: async (m) => void sent.push(m) },
      });
      await db.insertNotifications([
        newNotification(u, "low_credits", { i: 0 }, new Date(at), null),
        newNotification(u, "subscription_renewed", { i: 1 }, new Date(at + 1), null, 2),
      ]);
      clock.now = at + 2;
      expect(await notifications.emit(u, { type: "subscription_renewed", payload: { i: 2 }, version: 3 })).toBe(true);
      await expect(notifications.emit(u, { type: "subscription_renewed", version: 0 })).rejects.toBeInstanceOf(
        ValidationError,
      );
      expect((await notifications.list(u)).map((r) => r.version)).toEqual([1, 2, 3]);
      clock.now = at + 10_000;
      await notifications.dispatchPending({ limit: 100 });
      const mine = sent.filter((m) => m.userId === u);
      expect(mine.map((m) => [m.payload.i, m.version])).toEqual([
        [0, 1],
        [1, 2],
        [2, 3],
      ]);
      expect(mine.map((m) => eventEnvelope(m).version)).toEqual([1, 2, 3]);
    });

    it("claims at most `limit` rows, in the store and through dispatchPending({ limit })", async () => {
      const at = epoch(3);
      const rows = Array.from({ length: 8 }, (_, i) =>
        newNotification(user(), "low_credits", { i }, new Date(at + i), null),
      );
      await db.insertNotifications(rows);
      const now = new Date(at + 1000);
      const first = await db.claimNotifications({ now, limit: 3, leaseMs: 30_000, token: "l1" });
      expect(first.map((r) => r.payload.i)).toEqual([0, 1, 2]);
      const sent: NotificationMessage[] = [];
      const notifications = new NotificationService({
        db,
        clock: () => new Date(at + 10_000),
        queue: { publish: async (m) => void sent.push(m) },
      });
      const report = await notifications.dispatchPending({ limit: 3 });
      expect(report).toMatchObject({ claimed: 3, sent: 3 });
      expect(sent.map((m) => m.payload.i)).toEqual([3, 4, 5]);
      // The rest: two due now; the three claimed first once their lease has lapsed.
      const rest = await notifications.dispatchPending({ limit: 100 });
      expect(rest).toMatchObject({ claimed: 2, sent: 2 });
      const late = new NotificationService({
        db,
        clock: () => new Date(at + 60_000),
        queue: { publish: async (m) => void sent.push(m) },
      });
      expect(await late.dispatchPending({ limit: 100 })).toMatchObject({ claimed: 3, sent: 3 });
      expect(sent.map((m) => m.payload.i).sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    });

    /** Once, a round that only failed a row for good ended the call. */
    it("dispatchPending goes on after a row fails for good: that user's next row is due at once", async () => {
      const at = epoch(4);
      const u = user();
      // The head row has used all but one of its attempts (maxAttempts 3 in services()).
      const head = { ...newNotification(u, "low_credits", { i: 0 }, new Date(at), null), attempts: 2 };
      const next = newNotification(u, "balance_restored", { i: 1 }, new Date(at), null);
      await db.insertNotifications([head, next]);
      const sent: NotificationMessage[] = [];
      const queue = {
        async publish(m: NotificationMessage) {
          if (m.payload.i === 0) throw new Error("rejected");
          sent.push(m);
        },
      };
      const { notifications } = services(db, at + 1, { lowCredits: 20 }, queue as never);
      const report = await notifications.dispatchPending();
      expect(report).toMatchObject({ claimed: 2, sent: 1, failed: 1, retried: 0 });
      expect(sent.map((m) => m.type)).toEqual(["balance_restored"]);
      expect((await notifications.list(u)).map((r) => r.status)).toEqual(["failed", "sent"]);
    });

    it("refuses a publish timeout longer than the lease", () => {
      expect(() => new NotificationService({ db, leaseMs: 1000, publishTimeoutMs: 1001 })).toThrow(ConfigurationError);
      expect(() => new NotificationService({ db, leaseMs: 1000, publishTimeoutMs: 1000 })).not.toThrow();
    });
  });
}
