import { createHmac } from "node:crypto";
import diagnostics_channel from "node:diagnostics_channel";
import { afterEach, describe, expect, it } from "vitest";
import {
  CallbackNotificationQueue,
  createCreditManager,
  DIAGNOSTICS_CHANNELS,
  DIAGNOSTICS_VERSION,
  InMemoryDbManager,
  InsufficientCreditsError,
  RazorpayProvider,
  recordUsage,
  type DispatchMessage,
  type HoldMessage,
  type JobMessage,
  type MeteringMessage,
  type RefusalMessage,
  type UnitOfWorkMessage,
  type WebhookMessage,
} from "../src/index.js";
import { type DbManager } from "../src/store.js";
import type { DbTransaction } from "../src/store.js";

/** Subscriptions made by a test, undone after it. */
const undo: (() => void)[] = [];
afterEach(() => {
  for (const u of undo.splice(0)) u();
});

function listen<M>(name: string): M[] {
  const seen: M[] = [];
  const fn = (m: unknown) => seen.push(structuredClone(m) as M);
  diagnostics_channel.subscribe(name, fn);
  undo.push(() => diagnostics_channel.unsubscribe(name, fn));
  return seen;
}

/** Every event of a tracing channel: [event, a copy of the context at that moment]. */
function trace<M extends object>(name: string): [string, M][] {
  const seen: [string, M][] = [];
  const tc = diagnostics_channel.tracingChannel<unknown, M>(name);
  const copy = (m: M) =>
    ({ ...m, error: (m as { error?: unknown }).error === undefined ? undefined : "error", result: undefined }) as M;
  const handlers = {
    start: (m: M) => seen.push(["start", copy(m)]),
    end: (m: M) => seen.push(["end", copy(m)]),
    asyncStart: (m: M) => seen.push(["asyncStart", copy(m)]),
    asyncEnd: (m: M) => seen.push(["asyncEnd", copy(m)]),
    error: (m: M) => seen.push(["error", copy(m)]),
  };
  tc.subscribe(handlers);
  undo.push(() => tc.unsubscribe(handlers));
  return seen;
}

const ended = <M extends object>(events: [string, M][]) => events.filter(([e]) => e === "asyncEnd").map(([, m]) => m);

describe("diagnostics channels (docs/observability.md)", () => {
  it("names a versioned contract", () => {
    expect(DIAGNOSTICS_VERSION).toBe(1);
    expect(Object.values(DIAGNOSTICS_CHANNELS).every((n) => n.startsWith("credit-management:"))).toBe(true);
  });

  it("a unit of work: start with the operation, asyncEnd with outcome, attempts, entries and duration; a refusal with its reason", async () => {
    const units = trace<UnitOfWorkMessage>(DIAGNOSTICS_CHANNELS.unitOfWork);
    const refusals = listen<RefusalMessage>(DIAGNOSTICS_CHANNELS.refusal);
    const m = await createCreditManager();
    await m.credits.addCredits("u1", 100);
    for (let i = 0; i < 3; i++) await m.credits.deductCredits("u1", 10, { idempotencyKey: `k${i}` });
    await m.credits.deductCredits("u1", 10, { idempotencyKey: "k0" }); // a retry: replayed
    await expect(m.credits.deductCredits("u1", 1000)).rejects.toBeInstanceOf(InsufficientCreditsError);
    await expect(m.credits.deductCredits("u1", 5, { idempotencyKey: "k1" })).rejects.toMatchObject({
      code: "IDEMPOTENCY_CONFLICT",
    });

    expect(units.filter(([e]) => e === "start").map(([, u]) => u.operation)).toEqual([
      "addCredits",
      "deductCredits",
      "deductCredits",
      "deductCredits",
      "deductCredits",
      "deductCredits",
      "deductCredits",
    ]);
    const done = ended(units);
    expect(done.map((u) => u.outcome)).toEqual(["ok", "ok", "ok", "ok", "replayed", "refused", "rejected"]);
    expect(done[1]).toMatchObject({
      operation: "deductCredits",
      userId: "u1",
      store: "memory",
      attempts: 1,
      conflicts: 0,
      entries: 1,
      errorCode: null,
    });
    expect(done[4]).toMatchObject({ entries: 0 });
    expect(done[5]).toMatchObject({ errorCode: "INSUFFICIENT_CREDITS", entries: 0 });
    expect(done[6]).toMatchObject({ errorCode: "IDEMPOTENCY_CONFLICT" });
    for (const u of done) expect(u.durationMs).toBeGreaterThanOrEqual(0);
    // The failed ones went through `error` before `asyncEnd`.
    expect(units.filter(([e]) => e === "error")).toHaveLength(2);
    expect(refusals).toEqual([
      { operation: "deductCredits", userId: "u1", reason: "insufficient_credits", requested: 1000, available: 70 },
    ]);
    await m.close();
  });

  it("counts the attempts of a unit of work that met a write conflict", async () => {
    const units = trace<UnitOfWorkMessage>(DIAGNOSTICS_CHANNELS.unitOfWork);
    const inner = new InMemoryDbManager();
    // A store whose first attempt of every unit of work is lost to a conflict: it runs `fn` once on a
    // transaction whose save writes nothing, then again for real, as a store retrying would.
    const conflicting: DbManager = Object.create(inner, {
      transaction: {
        value: <T>(userId: string, fn: (tx: DbTransaction) => Promise<T> | T) =>
          inner.transaction(userId, async (tx) => {
            const lost = Object.create(tx, { save: { value: () => undefined } }) as DbTransaction;
            await fn(lost);
            return fn(tx);
          }),
      },
    });
    const m = await createCreditManager({ db: conflicting });
    await m.credits.addCredits("u1", 10);
    expect(ended(units)).toEqual([expect.objectContaining({ outcome: "ok", attempts: 2, conflicts: 1, entries: 1 })]);
    expect((await m.credits.getUserCreditsInfo("u1")).balance).toBe(10);
    await m.close();
  });

  it("holds: placed, committed, released and lapsed, with the account's reserved after each", async () => {
    const holds = listen<HoldMessage>(DIAGNOSTICS_CHANNELS.hold);
    let now = Date.now();
    const m = await createCreditManager({ clock: () => new Date(now) });
    await m.credits.addCredits("u1", 100);
    const a = await m.credits.reserveCredits("u1", 30);
    const b = await m.credits.reserveCredits("u1", 20);
    const c = await m.credits.reserveCredits("u1", 10, { ttlSeconds: 60 });
    await m.credits.commitReservedCredits(a.id, { amount: 25 });
    await m.credits.releaseReservedCredits(b.id);
    now += 61_000;
    await m.credits.getUserCreditsInfo("u1"); // settles: the last hold lapsed
    expect(holds).toEqual([
      { action: "reserved", userId: "u1", reservationId: a.id, amount: 30, committed: 0, reservedAfter: 30 },
      { action: "reserved", userId: "u1", reservationId: b.id, amount: 20, committed: 0, reservedAfter: 50 },
      { action: "reserved", userId: "u1", reservationId: c.id, amount: 10, committed: 0, reservedAfter: 60 },
      { action: "committed", userId: "u1", reservationId: a.id, amount: 30, committed: 25, reservedAfter: 30 },
      { action: "released", userId: "u1", reservationId: b.id, amount: 20, committed: 0, reservedAfter: 10 },
      { action: "expired", userId: "u1", reservationId: c.id, amount: 10, committed: 0, reservedAfter: 0 },
    ]);
    await m.close();
  });

  it("metering: what a settled call charged and released, and why", async () => {
    const metered = listen<MeteringMessage>(DIAGNOSTICS_CHANNELS.metering);
    const m = await createCreditManager();
    await m.credits.addCredits("u1", 100);
    await m.credits.meter("u1", { estimate: 40 }, () => {
      recordUsage({ amount: 12 });
    });
    await m.credits.meter("u1", { estimate: 40 }, () => undefined);
    await expect(
      m.credits.meter("u1", { estimate: 40 }, () => {
        throw new Error("the model failed");
      }),
    ).rejects.toThrow("the model failed");
    expect(metered.map(({ reservationId: _r, ...rest }) => rest)).toEqual([
      { userId: "u1", estimate: 40, outcome: "committed", charged: 12, released: 28, reason: null, shortfall: 0 },
      { userId: "u1", estimate: 40, outcome: "released", charged: 0, released: 40, reason: "no-usage", shortfall: 0 },
      { userId: "u1", estimate: 40, outcome: "released", charged: 0, released: 40, reason: "error", shortfall: 0 },
    ]);
    await m.close();
  });

  it("jobs and dispatch rounds: traced runs with scanned, changed and the outbox's lag", async () => {
    const jobs = trace<JobMessage>(DIAGNOSTICS_CHANNELS.job);
    const rounds = trace<DispatchMessage>(DIAGNOSTICS_CHANNELS.dispatch);
    let now = Date.now();
    const delivered: string[] = [];
    const m = await createCreditManager({
      clock: () => new Date(now),
      queue: new CallbackNotificationQueue(async (message) => {
        delivered.push(message.type);
      }),
      notifications: { lowCredits: 50, reminderDays: [] },
    });
    await m.credits.addCredits("u1", 100, { expiresAt: new Date(now + 60_000) });
    await m.credits.addCredits("u2", 100, { expiresAt: new Date(now + 60_000) });
    await m.credits.deductCredits("u1", 60); // low_credits, recorded now
    now += 120_000;
    const report = await m.expiration.runAll();
    expect(report.expireDueGrants.grantsExpired).toBe(2);
    const done = ended(jobs);
    expect(done.map((j) => j.job)).toEqual(["releaseExpiredHolds", "renewDueSubscriptions", "expireDueGrants"]);
    expect(done[2]).toMatchObject({ scanned: 2, changed: 2, errors: 0, asOf: new Date(now).toISOString() });
    const [round] = ended(rounds);
    expect(round).toMatchObject({ limit: 10_000, claimed: delivered.length, sent: delivered.length, failed: 0 });
    expect(delivered).toContain("low_credits");
    // The low-credits row waited the two minutes the clock moved.
    expect(round?.maxLagMs).toBeGreaterThanOrEqual(120_000);
    await m.close();
  });

  it("webhooks: the outcome per provider, a refused signature included", async () => {
    const hooks = listen<WebhookMessage>(DIAGNOSTICS_CHANNELS.webhook);
    const secret = "whsec_test";
    const m = await createCreditManager({
      payments: {
        providers: [
          new RazorpayProvider({
            keyId: "k",
            keySecret: "s",
            webhookSecret: secret,
            callbackUrl: "https://app.example/paid",
          }),
        ],
      },
    });
    const body = JSON.stringify({ event: "refund.created", payload: {}, created_at: Math.floor(Date.now() / 1000) });
    const sign = (b: string, key = secret) => ({
      "X-Razorpay-Signature": createHmac("sha256", key).update(b).digest("hex"),
    });
    await m.payments.handleWebhook("razorpay", body, sign(body));
    await expect(m.payments.handleWebhook("razorpay", body, sign(body, "wrong"))).rejects.toMatchObject({
      code: "WEBHOOK_REJECTED",
    });
    expect(hooks.map((h) => [h.provider, h.outcome])).toEqual([
      ["razorpay", expect.stringMatching(/^(ignored|unchanged)$/)],
      ["razorpay", "rejected"],
    ]);
    await m.close();
  });

  it("stops publishing once the last subscriber leaves, and starts again with a new one", async () => {
    const m = await createCreditManager();
    const units = trace<UnitOfWorkMessage>(DIAGNOSTICS_CHANNELS.unitOfWork);
    await m.credits.addCredits("u1", 10);
    expect(ended(units)).toHaveLength(1);
    for (const u of undo.splice(0)) u();
    await m.credits.deductCredits("u1", 1);
    expect(ended(units)).toHaveLength(1);
    const again = trace<UnitOfWorkMessage>(DIAGNOSTICS_CHANNELS.unitOfWork);
    await m.credits.deductCredits("u1", 1);
    expect(ended(again).map((u) => u.operation)).toEqual(["deductCredits"]);
    await m.close();
  });
});
