/**
 * The plans, subscriptions and jobs part of the `DbManager` contract suite (called by
 * `runDbManagerContract`). Fast on purpose: it runs on every backend.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it, useTestApi } from "./runner.js";
import type { DbManager } from "../db/types.js";
import { ConflictError, IdempotencyConflictError, NotFoundError, ValidationError } from "../errors.js";
import type { JournalEntry, Plan, Subscription } from "../models/index.js";
import { scribble } from "./scribble.js";
import { DAY, lazy, managerServices, type PartOptions } from "./support.js";

async function journal(db: DbManager, userId: string): Promise<JournalEntry[]> {
  return db.listJournal(userId, { order: "asc", limit: 10_000 });
}

/** Entries that created subscription or rollover grants, with the credits they created. */
/** The amounts of the user's rollover grants. */
async function rollovers(db: DbManager, userId: string): Promise<number[]> {
  return (await db.listGrants(userId, { includeInactive: true }))
    .filter((g) => g.source === "rollover")
    .map((g) => g.amount);
}

async function allocations(db: DbManager, userId: string) {
  const grants = await db.listGrants(userId, { includeInactive: true });
  return grants
    .filter((g) => g.source === "subscription" || g.source === "rollover")
    .sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || (a.source < b.source ? -1 : 1))
    .map((g) => ({ source: g.source, amount: g.amount, expiresAt: g.expiresAt?.toISOString() ?? null }));
}

/** The plans and subscriptions part of the contract (renewals, plan changes, cancellation, the outbox events). @beta */
export function runSubscriptionContract(getDb: () => DbManager, options: PartOptions = {}): void {
  if (options.test !== undefined) useTestApi(options.test);
  const db = lazy(getDb);
  const user = () => `sub-${randomUUID()}`;
  const planId = () => `plan-${randomUUID().slice(0, 12)}`;
  // Jan 31 at noon, in a year far from the other tests' data.
  const T = Date.UTC(2031, 0, 31, 12);

  describe("plans and subscriptions", () => {
    it("writes subscription_cancelled and subscription_ended to the outbox once each, with concurrent renewals", async () => {
      const { subscriptions, expiration, clock } = managerServices(db, T, { alerts: true });
      const id = planId();
      await subscriptions.createPlan({
        id,
        name: "Daily",
        creditsPerPeriod: 5,
        billingPeriod: "daily",
        rollover: "all",
      });
      const [u1, u2] = [user(), user()];
      const s1 = await subscriptions.subscribe(u1, id);
      await subscriptions.subscribe(u2, id);
      await subscriptions.cancel(u1);
      await subscriptions.cancel(u2, { atPeriodEnd: false });
      const lifecycle = async (u: string) =>
        (await db.listNotifications(u, { limit: 100 }))
          .filter((r) => r.type === "subscription_cancelled" || r.type === "subscription_ended")
          .map((r) => r.type)
          .sort();
      expect(await lifecycle(u1)).toEqual(["subscription_cancelled"]);
      expect(await lifecycle(u2)).toEqual(["subscription_cancelled", "subscription_ended"]);
      expect((await db.getSubscription(s1.id))?.periodGrantIds).toHaveLength(1);
      clock.now = T + DAY;
      await Promise.all([expiration.renewDueSubscriptions(), expiration.renewDueSubscriptions()]);
      expect(await lifecycle(u1)).toEqual(["subscription_cancelled", "subscription_ended"]);
      expect(await db.getSubscription(s1.id)).toMatchObject({ status: "canceled", intent: null, nextRunAt: null });
    });

    it("cancel, resume and changePlan take an idempotency key: a retry returns the subscription and changes nothing; other arguments conflict", async () => {
      const { subscriptions, credits, clock } = managerServices(db, T);
      const plan = (p: string, n: number) =>
        subscriptions.createPlan({ id: p, name: p, creditsPerPeriod: n, billingPeriod: "monthly" });
      const [basic, pro] = [planId(), planId()];
      await plan(basic, 100);
      await plan(pro, 300);
      const u = user();
      await subscriptions.subscribe(u, basic, { idempotencyKey: "sub-1" });
      const state = async () => ({
        subs: await db.listSubscriptions(u),
        journal: (await journal(db, u)).length,
        info: await credits.getUserCreditsInfo(u),
      });

      const cancelled = await subscriptions.cancel(u, { idempotencyKey: "cancel-1" });
      expect(cancelled.cancelAtPeriodEnd).toBe(true);
      let before = await state();
      clock.now += 1000;
      const again = await subscriptions.cancel(u, { idempotencyKey: "cancel-1" });
      expect({ ...again, changeKeys: undefined, updatedAt: undefined }).toEqual({
        ...cancelled,
        changeKeys: undefined,
        updatedAt: undefined,
      });
      expect(await state()).toEqual(before);
      await expect(subscriptions.cancel(u, { idempotencyKey: "cancel-1", atPeriodEnd: false })).rejects.toBeInstanceOf(
        IdempotencyConflictError,
      );
      await expect(subscriptions.resume(u, { idempotencyKey: "cancel-1" })).rejects.toBeInstanceOf(
        IdempotencyConflictError,
      );
      // The subscribe call's key is not a change's.
      await expect(subscriptions.cancel(u, { idempotencyKey: "sub-1" })).rejects.toBeInstanceOf(
        IdempotencyConflictError,
      );
      expect(await state()).toEqual(before);

      const resumed = await subscriptions.resume(u, { idempotencyKey: "resume-1" });
      expect(resumed.cancelAtPeriodEnd).toBe(false);
      before = await state();
      expect((await subscriptions.resume(u, { idempotencyKey: "resume-1" })).version).toBe(resumed.version);
      expect(await state()).toEqual(before);

      // A prorated change moves credits: its retry moves none.
      const changed = await subscriptions.changePlan(u, pro, { idempotencyKey: "change-1" });
      expect(changed.planId).toBe(pro);
      before = await state();
      expect((await subscriptions.changePlan(u, pro, { idempotencyKey: "change-1" })).planId).toBe(pro);
      expect(await state()).toEqual(before);
      await expect(subscriptions.changePlan(u, basic, { idempotencyKey: "change-1" })).rejects.toBeInstanceOf(
        IdempotencyConflictError,
      );
      await expect(
        subscriptions.changePlan(u, pro, { idempotencyKey: "change-1", when: "period_end" }),
      ).rejects.toBeInstanceOf(IdempotencyConflictError);
      expect(await state()).toEqual(before);

      // A cancel now ends the subscription: its retry still answers (the ended subscription), not 404.
      const ended = await subscriptions.cancel(u, { atPeriodEnd: false, idempotencyKey: "cancel-now" });
      expect(ended.status).not.toBe("active");
      before = await state();
      expect((await subscriptions.cancel(u, { atPeriodEnd: false, idempotencyKey: "cancel-now" })).id).toBe(ended.id);
      expect(await state()).toEqual(before);
      // Without a key: as before (nothing active now).
      await expect(subscriptions.cancel(u)).rejects.toBeInstanceOf(NotFoundError);
      // A key is validated by the models.
      await expect(subscriptions.resume(u, { idempotencyKey: "" })).rejects.toBeInstanceOf(ValidationError);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("hands out copies: mutating a plan or subscription read (or written) changes nothing stored", async () => {
      const { subscriptions } = managerServices(db, T);
      const id = (
        await subscriptions.createPlan({
          name: "Copies",
          creditsPerPeriod: 10,
          billingPeriod: "daily",
          metadata: { tier: ["a"] },
        })
      ).id;
      const u = user();
      const sub = await subscriptions.subscribe(u, id, { metadata: { from: { ad: 1 } } });
      const extra: Plan = { ...((await db.getPlan(id)) as Plan), id: planId(), metadata: { k: [1] } };
      const extraId = extra.id;
      await db.insertPlan(extra);
      scribble(extra);
      const reads = async () => ({
        plan: await db.getPlan(id),
        extra: await db.getPlan(extraId),
        plans: (await db.listPlans({ includeInactive: true })).filter((p) => p.id === id),
        sub: await db.getSubscription(sub.id),
        active: await db.getActiveSubscription(u),
        subs: await db.listSubscriptions(u),
        due: (await db.findDueSubscriptions(new Date(T + 2 * DAY), 10_000)).filter((s) => s.userId === u),
      });
      const before = await reads();
      expect(before.extra?.metadata).toEqual({ k: [1] });
      expect(before.due).toHaveLength(1);
      scribble(await reads());
      expect(await reads()).toEqual(before);
      expect(await subscriptions.getUserSubscription(u)).toMatchObject({ id: sub.id, planId: id, status: "active" });
    });

    it("stores plans with guarded writes; refuses a duplicate id", async () => {
      const { subscriptions } = managerServices(db, T);
      const id = planId();
      const p = await subscriptions.createPlan({
        id,
        name: "Pro",
        creditsPerPeriod: 100,
        billingPeriod: "monthly",
        rollover: { cap: 50 },
        price: 900,
        currency: "eur",
      });
      expect(p).toMatchObject({
        id,
        rollover: "cap",
        rolloverCap: 50,
        currency: "EUR",
        version: 1,
        isActive: true,
        validityDays: null,
      });
      await expect(
        subscriptions.createPlan({ id, name: "x", creditsPerPeriod: 1, billingPeriod: "daily" }),
      ).rejects.toBeInstanceOf(ConflictError);
      expect(await db.updatePlan({ ...p, name: "stale" }, 7)).toBe(false);
      expect((await subscriptions.getPlan(id)).name).toBe("Pro");
      // Cached reads are invalidated by writes.
      const updated = await subscriptions.updatePlan(id, { name: "Pro 2", rollover: "all" });
      expect(updated).toMatchObject({ name: "Pro 2", rollover: "all", rolloverCap: null, version: 2 });
      expect((await subscriptions.getPlan(id)).name).toBe("Pro 2");
      await subscriptions.deactivatePlan(id);
      expect((await subscriptions.listPlans()).some((x) => x.id === id)).toBe(false);
      expect((await subscriptions.listPlans({ includeInactive: true })).some((x) => x.id === id)).toBe(true);
      await subscriptions.deletePlan(id);
      await expect(subscriptions.getPlan(id)).rejects.toBeInstanceOf(NotFoundError);
      await expect(
        subscriptions.createPlan({ name: "bad", creditsPerPeriod: -1, billingPeriod: "monthly" } as never),
      ).rejects.toBeInstanceOf(ValidationError);
    });

    it("subscribes once per user, allocates the first period (idempotently) and refuses deleting a plan with subscribers", async () => {
      const { subscriptions, credits } = managerServices(db, T);
      const id = (await subscriptions.createPlan({ name: "Basic", creditsPerPeriod: 100, billingPeriod: "monthly" }))
        .id;
      const u = user();
      const s = await subscriptions.subscribe(u, id, { idempotencyKey: "signup-1" });
      expect(s).toMatchObject({ status: "active", planId: id, periodIndex: 0, intent: null, version: 2 });
      expect(s.currentPeriodEnd.toISOString()).toBe(
        new Date(Date.UTC(2031, 1, 28, 12) + (T - Date.UTC(2031, 0, 31, 12))).toISOString(),
      );
      expect(s.nextRunAt?.getTime()).toBe(s.currentPeriodEnd.getTime());
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(100);
      const again = await subscriptions.subscribe(u, id, { idempotencyKey: "signup-1" });
      expect(again.id).toBe(s.id);
      await expect(subscriptions.subscribe(u, id)).rejects.toBeInstanceOf(ConflictError);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(100);
      const [g] = await credits.getGrants(u);
      expect(g).toMatchObject({
        source: "subscription",
        amount: 100,
        sourceRef: `sub:${s.id}:${s.currentPeriodStart.toISOString()}`,
      });
      expect(g?.expiresAt?.getTime()).toBe(s.currentPeriodEnd.getTime());
      await expect(subscriptions.deletePlan(id)).rejects.toBeInstanceOf(ConflictError);
      expect((await subscriptions.getPlan(id)).isActive).toBe(true);
      expect(await subscriptions.getUserSubscription(user())).toBeNull();
    });

    /** Once, overlapping calls with one key got "already has an active subscription". */
    it("calls of subscribe with one idempotency key, overlapping, all answer the one subscription they made", async () => {
      const { subscriptions, credits } = managerServices(db, T);
      const id = (await subscriptions.createPlan({ name: "Webhook", creditsPerPeriod: 70, billingPeriod: "monthly" }))
        .id;
      const u = user();
      const calls = Array.from({ length: 40 }, (_, i) =>
        new Promise((resolve) => setTimeout(resolve, i % 8)).then(() =>
          subscriptions.subscribe(u, id, { idempotencyKey: "checkout-7" }),
        ),
      );
      const results = await Promise.allSettled(calls);
      const rejected = results
        .filter((r) => r.status === "rejected")
        .map((r) => (r as PromiseRejectedResult).reason as Error);
      expect(rejected.map((e) => e.message)).toEqual([]);
      const ids = new Set(results.map((r) => (r as PromiseFulfilledResult<{ id: string }>).value.id));
      expect(ids.size).toBe(1);
      expect(await subscriptions.listUserSubscriptions(u)).toHaveLength(1);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(70);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    /** Once, a paying subscriber had 0 credits from the period's end until the job ran. */
    it("a credit operation or read after the period's end brings the next period at once; racing the job, it is allocated once", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const id = (await subscriptions.createPlan({ name: "Lazy", creditsPerPeriod: 100, billingPeriod: "monthly" })).id;
      const [u, v] = [user(), user()];
      const s = await subscriptions.subscribe(u, id);
      await subscriptions.subscribe(v, id);
      await credits.deductCredits(u, 30);
      // Ten seconds into the next period, before any job ran: the deduction is served from it.
      clock.now = s.currentPeriodEnd.getTime() + 10_000;
      await credits.deductCredits(u, 90);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(10);
      const keys = (await journal(db, u)).map((e) => e.idempotencyKey).filter((k) => k?.startsWith("cm:sub:"));
      expect(keys).toEqual([
        `cm:sub:${s.id}:${s.currentPeriodStart.toISOString()}`,
        `cm:sub:${s.id}:${s.currentPeriodEnd.toISOString()}`,
      ]);
      expect((await subscriptions.getUserSubscription(u))?.periodIndex).toBe(1);
      // A read brings it too; the job and reads racing at the boundary allocate once.
      const [report, info] = await Promise.all([
        expiration.runAll(),
        credits.getUserCreditsInfo(v),
        credits.getUserCreditsInfo(v),
      ]);
      expect(info.balance).toBe(100);
      expect(report.renewDueSubscriptions.errors).toBe(0);
      expect((await allocations(db, v)).length).toBe(2);
      expect((await credits.getUserCreditsInfo(v)).balance).toBe(100);
      for (const x of [u, v]) expect((await credits.audit(x)).ok).toBe(true);
    });

    it("renews at period end once, rolls over up to the cap even when the period's grant was expired first", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const id = (
        await subscriptions.createPlan({
          name: "Cap",
          creditsPerPeriod: 100,
          billingPeriod: "monthly",
          rollover: { cap: 30 },
        })
      ).id;
      const u = user();
      const s = await subscriptions.subscribe(u, id);
      await credits.deductCredits(u, 60);
      clock.now = s.currentPeriodEnd.getTime() + 1000;
      // The expiry job expires the 40 left before any renewal ran (a read would bring the next
      // period at once: see "brings the next period" below).
      await expiration.expireDueGrants();
      expect((await db.getAccount(u))?.balance).toBe(0);
      const r1 = await expiration.renewDueSubscriptions();
      const version = (await db.getActiveSubscription(u))?.version;
      await expiration.renewDueSubscriptions();
      expect(r1.renewed).toBeGreaterThanOrEqual(1);
      expect((await db.getActiveSubscription(u))?.version).toBe(version);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(130);
      const next = await subscriptions.getUserSubscription(u);
      expect(next).toMatchObject({ periodIndex: 1, intent: null });
      expect(next?.currentPeriodStart.toISOString().slice(5, 10)).toBe("02-28");
      expect(next?.currentPeriodEnd.toISOString().slice(5, 10)).toBe("03-31");
      expect((await allocations(db, u)).map((a) => `${a.source}:${a.amount}`)).toEqual([
        "subscription:100",
        "rollover:30",
        "subscription:100",
      ]);
      expect((await credits.audit(u)).ok).toBe(true);
      const entries = await db.listLedgerEntries({ eventType: "system", limit: 5 });
      expect(entries.some((e) => e.message === "job renewDueSubscriptions")).toBe(true);
    });

    it("catches up a job that did not run for three months: the current period only, rollover from the last allocated one", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const id = (
        await subscriptions.createPlan({ name: "All", creditsPerPeriod: 10, billingPeriod: "monthly", rollover: "all" })
      ).id;
      const u = user();
      const s = await subscriptions.subscribe(u, id);
      clock.now = T + 100 * DAY; // May 11: Feb 28, Mar 31 and Apr 30 periods were never renewed
      const advanced = await expiration.allocateSubscriptionCredits(u);
      expect(advanced).toMatchObject({ periodIndex: 3, intent: null });
      expect(advanced?.currentPeriodStart.toISOString().slice(5, 10)).toBe("04-30");
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(20);
      // Each entry dated when its money moved (docs/concepts.md, "Two times on every entry"): the
      // first period's credits expired at its end, the current period's allocation and rollover at
      // its start, all recorded on May 11.
      const dated = (await credits.getCreditHistory(u, { limit: 10 })).items
        .reverse()
        .map((e) => `${e.type}:${e.amount}@${(e.occurredAt ?? e.createdAt).toISOString().slice(5, 10)}`);
      expect(dated).toEqual([
        `add:10@${s.currentPeriodStart.toISOString().slice(5, 10)}`,
        `expire:10@${s.currentPeriodEnd.toISOString().slice(5, 10)}`,
        "add:10@04-30",
        "add:10@04-30",
      ]);
      await expiration.renewDueSubscriptions();
      expect((await db.getActiveSubscription(u))?.version).toBe(advanced?.version);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(20);
      expect((await subscriptions.listUserSubscriptions(u)).map((x) => x.id)).toEqual([s.id]);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("changePlan now/prorate adds or removes the prorated difference and keeps the period", async () => {
      const { subscriptions, credits, clock } = managerServices(db, T);
      const small = (await subscriptions.createPlan({ name: "S", creditsPerPeriod: 100, billingPeriod: "daily" })).id;
      const big = (await subscriptions.createPlan({ name: "B", creditsPerPeriod: 500, billingPeriod: "daily" })).id;
      const u = user();
      const s = await subscriptions.subscribe(u, small);
      clock.now = T + DAY / 4;
      const up = await subscriptions.changePlan(u, big);
      expect(up).toMatchObject({
        planId: big,
        currentPeriodStart: s.currentPeriodStart,
        currentPeriodEnd: s.currentPeriodEnd,
      });
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(100 + 300); // (500 − 100) × 3/4
      await credits.deductCredits(u, 350);
      clock.now = T + DAY / 2;
      await subscriptions.changePlan(u, small, { when: "now", credits: "prorate" });
      // (100 − 500) × 1/2 = −200, but only the 50 unspent can go.
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(0);
      expect((await credits.audit(u)).ok).toBe(true);
      await expect(subscriptions.changePlan(u, small)).rejects.toBeInstanceOf(ConflictError);
    });

    it("prorates against what the period is on, stored with it (not the plan's figure an operator changed since)", async () => {
      const { subscriptions, credits, clock } = managerServices(db, T);
      const a = (await subscriptions.createPlan({ name: "A", creditsPerPeriod: 100, billingPeriod: "daily" })).id;
      const b = (await subscriptions.createPlan({ name: "B", creditsPerPeriod: 500, billingPeriod: "daily" })).id;
      const u = user();
      await subscriptions.subscribe(u, a);
      expect((await db.getActiveSubscription(u))?.periodCredits).toBe(100);
      await subscriptions.updatePlan(a, { creditsPerPeriod: 0 });
      clock.now = T + DAY / 4;
      await subscriptions.changePlan(u, b);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(100 + 300); // (500 − 100) × 3/4
      expect((await db.getActiveSubscription(u))?.periodCredits).toBe(500);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("allowances: each period allocates a plan's allowances as scoped grants; a spend of another feature never uses them; they roll over and prorate on their own", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const images = { features: ["images"] };
      const a = await subscriptions.createPlan({
        name: "Images",
        creditsPerPeriod: 100,
        billingPeriod: "daily",
        rollover: { cap: 30 },
        allowances: [{ scope: images, credits: 40, rollover: "all" }],
      });
      expect(a.allowances).toEqual([{ scope: images, credits: 40, rollover: "all" }]);
      expect((await subscriptions.getPlan(a.id)).allowances).toEqual(a.allowances);
      // Two allowances with one scope (in any order) are refused, and nothing is written.
      const twice = { scope: { features: ["a", "b"] }, credits: 1 };
      await expect(
        subscriptions.createPlan({
          name: "Bad",
          creditsPerPeriod: 1,
          billingPeriod: "daily",
          allowances: [twice, { ...twice, scope: { features: ["b", "a"] } }],
        }),
      ).rejects.toBeInstanceOf(ValidationError);
      await expect(
        subscriptions.updatePlan(a.id, { allowances: [{ scope: {}, credits: 1 }] } as never),
      ).rejects.toBeInstanceOf(ValidationError);
      expect((await subscriptions.getPlan(a.id)).version).toBe(1);

      const u = user();
      await subscriptions.subscribe(u, a.id);
      expect((await credits.getUserCreditsInfo(u, { feature: "images" })).available).toBe(140);
      expect((await credits.getUserCreditsInfo(u, { feature: "chat" })).available).toBe(100);
      expect((await credits.getUserCreditsInfo(u)).scoped).toEqual([
        { features: ["images"], spenders: null, remaining: 40 },
      ]);
      // A chat spend never uses the images allowance: 101 is refused though the balance is 140.
      await expect(credits.deductCredits(u, 101, { feature: "chat" })).rejects.toThrow();
      await credits.deductCredits(u, 90, { feature: "chat" });
      await credits.deductCredits(u, 15, { feature: "images" }); // from the allowance first
      expect((await credits.getUserCreditsInfo(u, { feature: "images" })).available).toBe(35);

      // Next period: 10 general credits roll (cap 30), the allowance's 25 roll (its own "all").
      clock.now = T + DAY;
      await expiration.renewDueSubscriptions();
      expect((await credits.getUserCreditsInfo(u, { feature: "chat" })).available).toBe(110);
      expect((await credits.getUserCreditsInfo(u, { feature: "images" })).available).toBe(110 + 65);

      // A prorated change a quarter into the period: the allowance 40 → 80 adds 30 images credits.
      const b = await subscriptions.createPlan({
        name: "More images",
        creditsPerPeriod: 100,
        billingPeriod: "daily",
        allowances: [{ scope: { features: ["images"] }, credits: 80 }],
      });
      clock.now = T + DAY + DAY / 4;
      const changed = await subscriptions.changePlan(u, b.id);
      expect(changed.periodAllowances).toEqual([{ scope: images, credits: 80 }]);
      expect((await credits.getUserCreditsInfo(u, { feature: "images" })).available).toBe(110 + 95);
      expect((await credits.getUserCreditsInfo(u, { feature: "chat" })).available).toBe(110);
      // Back to 40 half-way through: only the allowance decreases, by trunc((40 − 80) × 1/2) = 20,
      // taken from the period's images grants, never from the general ones.
      clock.now = T + DAY + DAY / 2;
      await subscriptions.changePlan(u, a.id);
      expect((await credits.getUserCreditsInfo(u, { feature: "images" })).available).toBe(110 + 75);
      expect((await credits.getUserCreditsInfo(u, { feature: "chat" })).available).toBe(110);
      // Cancelled now with expiry: the allowances' credits go with the rest.
      await subscriptions.cancel(u, { atPeriodEnd: false, credits: "expire" });
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(0);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("allowances in other units: each period grants each unit its own credits, which roll over and prorate on their own, never mixed with the default unit", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const a = await subscriptions.createPlan({
        name: "Units",
        creditsPerPeriod: 100,
        billingPeriod: "daily",
        rollover: { cap: 30 },
        // seconds names no rollover: none (the plan's cap counts the default unit).
        allowances: [
          { unit: "images", credits: 40, rollover: "all" },
          { unit: "seconds", credits: 10 },
        ],
      });
      expect((await subscriptions.getPlan(a.id)).allowances).toEqual(a.allowances);
      // An allowance names a scope or another unit; two of one unit (and scope) are refused.
      for (const allowances of [
        [{ credits: 1 }],
        [{ unit: "credits", credits: 1 }],
        [{ unit: "Images", credits: 1 }],
        [
          { unit: "images", credits: 1 },
          { unit: "images", credits: 2 },
        ],
      ])
        await expect(subscriptions.updatePlan(a.id, { allowances } as never)).rejects.toBeInstanceOf(ValidationError);
      expect((await subscriptions.getPlan(a.id)).version).toBe(1);
      const figures = async (u: string) => ({
        credits: (await credits.getUserCreditsInfo(u)).balance,
        images: (await credits.getUserCreditsInfo(u, { unit: "images" })).balance,
        seconds: (await credits.getUserCreditsInfo(u, { unit: "seconds" })).balance,
      });

      const u = user();
      await subscriptions.subscribe(u, a.id);
      expect(await figures(u)).toEqual({ credits: 100, images: 40, seconds: 10 });
      const grants = await db.listGrants(u);
      expect(grants.map((g) => `${g.unit ?? "credits"}:${g.amount}`).sort()).toEqual([
        "credits:100",
        "images:40",
        "seconds:10",
      ]);
      await credits.deductCredits(u, 90);
      await credits.deductCredits(u, 15, { unit: "images" });
      await credits.deductCredits(u, 4, { unit: "seconds" });

      // Next period: 10 credits roll (cap 30), 25 images (their own "all"), no seconds.
      clock.now = T + DAY;
      await expiration.renewDueSubscriptions();
      expect(await figures(u)).toEqual({ credits: 110, images: 65, seconds: 10 });

      // A prorated change a quarter in, to a plan of 80 images and no seconds: + trunc(40 × 3/4)
      // images, − trunc(10 × 3/4) seconds from the period's seconds grant; credits unchanged.
      const b = await subscriptions.createPlan({
        name: "More images",
        creditsPerPeriod: 100,
        billingPeriod: "daily",
        allowances: [{ unit: "images", credits: 80 }],
      });
      clock.now = T + DAY + DAY / 4;
      const changed = await subscriptions.changePlan(u, b.id);
      expect(changed.periodAllowances).toEqual([{ unit: "images", credits: 80 }]);
      expect(await figures(u)).toEqual({ credits: 110, images: 95, seconds: 3 });
      // Back half-way through: images trunc((40 − 80) × 1/2) = −20, seconds trunc(10 × 1/2) = +5.
      clock.now = T + DAY + DAY / 2;
      await subscriptions.changePlan(u, a.id);
      expect(await figures(u)).toEqual({ credits: 110, images: 75, seconds: 8 });
      // The seconds the plan gave back are a grant in seconds, beside the period's own.
      const seconds = (await db.listGrants(u)).filter((g) => g.unit === "seconds").map((g) => g.amount);
      expect(seconds.sort((x, y) => x - y)).toEqual([5, 10]);
      // Cancelled now with expiry: every unit's period credits go.
      await subscriptions.cancel(u, { atPeriodEnd: false, credits: "expire" });
      expect(await figures(u)).toEqual({ credits: 0, images: 0, seconds: 0 });
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("answers an exact subscribe retry after changePlan(now) with the subscription (the call's arguments are stored)", async () => {
      const { subscriptions, credits, clock } = managerServices(db, T);
      const a = (await subscriptions.createPlan({ name: "A", creditsPerPeriod: 10, billingPeriod: "monthly" })).id;
      const b = (await subscriptions.createPlan({ name: "B", creditsPerPeriod: 20, billingPeriod: "monthly" })).id;
      const u = user();
      const startAt = new Date(T - 3 * DAY);
      const first = await subscriptions.subscribe(u, a, { idempotencyKey: "signup", autoRenew: false, startAt });
      expect((await db.getSubscription(first.id))?.request).toEqual({
        planId: a,
        autoRenew: false,
        startAt: startAt.getTime(),
      });
      clock.now = T + DAY;
      await subscriptions.changePlan(u, b, { when: "now", credits: "keep" });
      await subscriptions.resume(u);
      const balance = (await credits.getUserCreditsInfo(u)).balance;
      const again = await subscriptions.subscribe(u, a, { idempotencyKey: "signup", autoRenew: false, startAt });
      expect(again).toMatchObject({ id: first.id, planId: b, autoRenew: true });
      await expect(
        subscriptions.subscribe(u, b, { idempotencyKey: "signup", autoRenew: false }),
      ).rejects.toBeInstanceOf(IdempotencyConflictError);
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(balance);
      expect(await subscriptions.listUserSubscriptions(u)).toHaveLength(1);
    });

    it("rolls over what was unspent and unheld at the period's end, whenever the job runs", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const p = (
        await subscriptions.createPlan({ name: "Held", creditsPerPeriod: 100, billingPeriod: "daily", rollover: "all" })
      ).id;
      const H = DAY / 24;
      const [u1, u2, u3] = [user(), user(), user()];
      for (const u of [u1, u2, u3]) await subscriptions.subscribe(u, p);
      clock.now = T + 20 * H;
      await credits.reserveCredits(u3, 30, { ttlSeconds: 2 * 3600 }); // lapses before the end: not held then
      clock.now = T + 23 * H;
      const h1 = await credits.reserveCredits(u1, 40, { ttlSeconds: 3 * 3600 }); // released after the end
      await credits.reserveCredits(u2, 40, { ttlSeconds: 2 * 3600 }); // lapses after the end
      clock.now = T + 25 * H;
      await credits.releaseReservedCredits(h1.id);
      clock.now = T + 26 * H;
      await expiration.runAll();
      expect(await rollovers(db, u1)).toEqual([60]);
      expect(await rollovers(db, u2)).toEqual([60]);
      expect(await rollovers(db, u3)).toEqual([100]);
      for (const u of [u1, u2, u3]) expect((await credits.audit(u)).ok).toBe(true);
    });

    it("rolls over the same when credits come back to the ended period's closed grant before the renewal", async () => {
      // The period's grant closes without renewing (the expiry job alone), then a hold live at the
      // end gives 30 back and a reversal 20 (docs/concepts.md, "Giving a charge back"): both expire
      // again. Neither was unspent and unheld at the end, so the renewal carries the 50 that were,
      // as it does when it runs first.
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const p = (
        await subscriptions.createPlan({ name: "Back", creditsPerPeriod: 100, billingPeriod: "daily", rollover: "all" })
      ).id;
      const H = DAY / 24;
      const [late, first] = [user(), user()];
      const holds = new Map<string, string>();
      const charges = new Map<string, string>();
      for (const u of [late, first]) {
        await subscriptions.subscribe(u, p);
        clock.now = T + 23 * H;
        holds.set(u, (await credits.reserveCredits(u, 30, { ttlSeconds: 3 * 3600 })).id);
        charges.set(u, (await credits.deductCredits(u, 20)).id);
        clock.now = T;
      }
      clock.now = T + 25 * H;
      await expiration.expireDueGrants();
      await expiration.allocateSubscriptionCredits(first); // this one's renewal before the returns
      for (const u of [late, first]) {
        await credits.releaseReservedCredits(holds.get(u) as string);
        await credits.reverseCharge(u, charges.get(u) as string, { amount: 20, reason: "correction" });
      }
      await expiration.renewDueSubscriptions();
      expect(await rollovers(db, first)).toEqual([50]);
      expect(await rollovers(db, late)).toEqual([50]);
      for (const u of [late, first]) expect((await credits.audit(u)).ok).toBe(true);
    });

    it("changePlan now/keep and now/expire start a new period; period_end switches at renewal", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T);
      const a = (
        await subscriptions.createPlan({ name: "A", creditsPerPeriod: 100, billingPeriod: "monthly", rollover: "all" })
      ).id;
      const b = (await subscriptions.createPlan({ name: "B", creditsPerPeriod: 40, billingPeriod: "weekly" })).id;
      const u1 = user();
      await subscriptions.subscribe(u1, a);
      clock.now = T + 2 * DAY;
      const kept = await subscriptions.changePlan(u1, b, { credits: "keep" });
      expect(kept).toMatchObject({ planId: b, billingPeriod: "weekly", periodIndex: 0 });
      expect(kept.currentPeriodStart.getTime()).toBe(clock.now);
      expect(kept.currentPeriodEnd.getTime()).toBe(clock.now + 7 * DAY);
      expect((await credits.getUserCreditsInfo(u1)).balance).toBe(140);
      await expect(subscriptions.changePlan(u1, a, { credits: "prorate" })).rejects.toBeInstanceOf(ValidationError);
      await subscriptions.changePlan(u1, a, { credits: "expire" });
      // The weekly period's 40 expire, the monthly allocation comes; the first 100 stay.
      expect((await credits.getUserCreditsInfo(u1)).balance).toBe(200);

      clock.now = T;
      const u2 = user();
      const s2 = await subscriptions.subscribe(u2, a);
      await expect(subscriptions.changePlan(u2, b, { when: "period_end", credits: "prorate" })).rejects.toBeInstanceOf(
        ValidationError,
      );
      const pending = await subscriptions.changePlan(u2, b, { when: "period_end", credits: "expire" });
      expect(pending).toMatchObject({ planId: a, pendingPlanId: b, pendingCredits: "expire" });
      expect((await credits.getUserCreditsInfo(u2)).balance).toBe(100);
      clock.now = s2.currentPeriodEnd.getTime();
      await expiration.renewDueSubscriptions();
      const switched = await subscriptions.getUserSubscription(u2);
      expect(switched).toMatchObject({ planId: b, billingPeriod: "weekly", periodIndex: 0, pendingPlanId: null });
      expect(switched?.currentPeriodStart.getTime()).toBe(s2.currentPeriodEnd.getTime());
      // "expire": no rollover of plan A's "all" at the switch.
      expect((await credits.getUserCreditsInfo(u2)).balance).toBe(40);
      expect((await credits.audit(u2)).ok).toBe(true);
    });

    it("cancels at period end (resume undoes it), ends non-renewing ones, cancels now with expiry; pay-as-you-go periods", async () => {
      const { subscriptions, credits, expiration, clock } = managerServices(db, T, { overdraftLimit: "unlimited" });
      const p = (await subscriptions.createPlan({ name: "C", creditsPerPeriod: 10, billingPeriod: "weekly" })).id;
      const payg = (await subscriptions.createPlan({ name: "PAYG", creditsPerPeriod: 0, billingPeriod: "daily" })).id;
      const [u1, u2, u3, u4] = [user(), user(), user(), user()];
      await subscriptions.subscribe(u1, p);
      await subscriptions.subscribe(u2, p, { autoRenew: false });
      await subscriptions.subscribe(u3, p);
      await subscriptions.subscribe(u4, payg);
      expect((await subscriptions.cancel(u1)).cancelAtPeriodEnd).toBe(true);
      expect((await subscriptions.resume(u1)).cancelAtPeriodEnd).toBe(false);
      await subscriptions.cancel(u1, { atPeriodEnd: true });
      await expect(subscriptions.cancel(u3, { credits: "expire" })).rejects.toBeInstanceOf(ValidationError);
      const now3 = await subscriptions.cancel(u3, { atPeriodEnd: false, credits: "expire" });
      expect(now3).toMatchObject({ status: "canceled", intent: null, nextRunAt: null });
      expect((await credits.getUserCreditsInfo(u3)).balance).toBe(0);
      clock.now = T + 7 * DAY;
      await expiration.renewDueSubscriptions();
      expect(await subscriptions.getUserSubscription(u1)).toBeNull();
      expect(await subscriptions.getUserSubscription(u2)).toBeNull();
      const [h1] = await subscriptions.listUserSubscriptions(u1);
      const [h2] = await subscriptions.listUserSubscriptions(u2);
      expect(h1).toMatchObject({ status: "canceled", nextRunAt: null });
      expect(h2).toMatchObject({ status: "expired" });
      // Nothing allocated for a period that never came.
      expect((await allocations(db, u1)).length).toBe(1);
      // Pay-as-you-go: periods advance, no credits; usage goes to debt as usual.
      const s4 = (await subscriptions.getUserSubscription(u4)) as Subscription;
      expect(s4.periodIndex).toBe(7);
      expect((await credits.getUserCreditsInfo(u4)).balance).toBe(0);
      await credits.deductCreditsAfterService(u4, 5);
      expect((await credits.getUserCreditsInfo(u4)).debt).toBe(5);
      // A new subscription after the old one ended.
      await subscriptions.subscribe(u1, p);
      expect((await subscriptions.listUserSubscriptions(u1)).map((x) => x.status)).toEqual(["canceled", "active"]);
    });

    it("a crash between the allocation and the subscription write allocates once when retried", async () => {
      const { subscriptions, credits, clock } = managerServices(db, T);
      const p = (await subscriptions.createPlan({ name: "Crash", creditsPerPeriod: 25, billingPeriod: "daily" })).id;
      const u = user();
      const s = await subscriptions.subscribe(u, p);
      clock.now = s.currentPeriodEnd.getTime();
      let failNext = true;
      const flaky = new Proxy(db, {
        get(target, prop, receiver) {
          if (prop === "updateSubscription") {
            return async (next: Subscription, v: number) => {
              if (failNext && next.intent === null) {
                failNext = false;
                throw new Error("process died");
              }
              return target.updateSubscription(next, v);
            };
          }
          const value = Reflect.get(target, prop, receiver) as unknown;
          return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      const crashing = managerServices(flaky, clock.now).subscriptions;
      const current = (await db.getActiveSubscription(u)) as Subscription;
      await expect(crashing.advance(current)).rejects.toThrow("process died");
      expect((await db.getActiveSubscription(u))?.intent).not.toBeNull();
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(25);
      const done = await subscriptions.getUserSubscription(u);
      expect(done).toMatchObject({ intent: null, periodIndex: 1 });
      expect((await credits.getUserCreditsInfo(u)).balance).toBe(25);
      expect((await allocations(db, u)).length).toBe(2);
    });

    it("two job runners started together allocate each period once and expire each grant once", async () => {
      const a = managerServices(db, T);
      const b = managerServices(db, T);
      const p: Plan = await a.subscriptions.createPlan({
        name: "Race",
        creditsPerPeriod: 7,
        billingPeriod: "daily",
        rollover: { cap: 3 },
      });
      const users = Array.from({ length: 12 }, user);
      for (const u of users) {
        await a.subscriptions.subscribe(u, p.id);
        await a.credits.addCredits(u, 5, { expiresAt: new Date(T + DAY / 2) });
        await a.credits.addCredits(u, 4, { expiresAt: new Date(T + DAY / 3) });
        await a.credits.reserveCredits(u, 2, { ttlSeconds: 60 });
      }
      for (const s of [a, b]) s.clock.now = T + 2 * DAY + 1000;
      const [r1, r2] = await Promise.all([
        a.expiration.runAll(undefined, { batchSize: 5 }),
        b.expiration.runAll(undefined, { batchSize: 7 }),
      ]);
      expect(r1.renewDueSubscriptions.errors + r2.renewDueSubscriptions.errors).toBe(0);
      for (const u of users) {
        const entries = await journal(db, u);
        const keys = entries.filter((e) => e.idempotencyKey?.startsWith("cm:sub:")).map((e) => e.idempotencyKey);
        expect(new Set(keys).size).toBe(keys.length);
        // Periods 0 and 2: period 1 (day 2) had ended before any runner reached it.
        expect(keys).toHaveLength(2);
        // No grant loses more than it had (a held part returned after expiry expires in a second entry).
        const lost = new Map<string, number>();
        for (const e of entries.filter((x) => x.type === "expire"))
          for (const g of e.grants) lost.set(g.grantId, (lost.get(g.grantId) ?? 0) + g.amount);
        for (const g of await db.listGrants(u, { includeInactive: true })) {
          expect(lost.get(g.id) ?? 0).toBe(g.expiredAmount);
          expect(g.expiredAmount).toBeLessThanOrEqual(g.amount);
        }
        // Period 2 holds its 7 and 3 (the cap) rolled over from period 0's unspent 7.
        expect((await a.credits.getUserCreditsInfo(u)).balance).toBe(10);
        expect((await a.credits.audit(u)).ok).toBe(true);
        expect((await db.getActiveSubscription(u))?.periodIndex).toBe(2);
      }
      // Nothing of these users is left due (the renewals settled most of it, the jobs the rest).
      const left = await db.findDueGrants(new Date(a.clock.now), 100_000);
      expect(left.filter((g) => users.includes(g.userId))).toEqual([]);
      const holds = await db.findExpiredReservations(new Date(a.clock.now), 100_000);
      expect(holds.filter((h) => users.includes(h.userId))).toEqual([]);
    });

    it("scans due subscriptions in (nextRunAt, id) order with a cursor", async () => {
      const { subscriptions } = managerServices(db, T);
      const p = (await subscriptions.createPlan({ name: "Scan", creditsPerPeriod: 1, billingPeriod: "daily" })).id;
      const far = T + 5000 * DAY;
      const users = [user(), user(), user()];
      for (const [i, u] of users.entries()) {
        const svc = managerServices(db, far + i * 1000).subscriptions;
        await svc.subscribe(u, p);
      }
      const mine = (xs: Subscription[]) => xs.filter((s) => users.includes(s.userId));
      const due = mine(await db.findDueSubscriptions(new Date(far + DAY + 1000), 10_000));
      expect(due.map((s) => s.userId)).toEqual(users.slice(0, 2));
      const first = due[0] as Subscription;
      const rest = mine(
        await db.findDueSubscriptions(new Date(far + DAY + 5000), 10_000, {
          nextRunAt: first.nextRunAt as Date,
          id: first.id,
        }),
      );
      expect(rest.map((s) => s.userId)).toEqual(users.slice(1));
      const stale = { ...first, planId: "other" };
      expect(await db.updateSubscription(stale, first.version + 5)).toBe(false);
      await expect(db.insertSubscription({ ...first, id: randomUUID() })).rejects.toBeInstanceOf(ConflictError);
    });
  });
}
