import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  createCreditManager,
  recordUsage,
  ReservationExpiredError,
  type CreditManager,
  type MeterOutcome,
} from "../src/index.js";
import { type DbManager } from "../src/store.js";
import { type JournalEntry } from "../src/models-public.js";
import type { DbTransaction } from "../src/store.js";
import { testStores } from "./fixtures/stores.js";

/**
 * The attempts of one keyed `meter()` call — a retry that starts while an earlier attempt still
 * runs, after its hold lapsed or after another attempt released it — are charged once between
 * them, whatever order they finish in, on every store.
 */

const T = Date.parse("2026-03-01T00:00:00Z");

/** Stores to run on (see test/fixtures/stores.ts); `another()` is a second handle, as another process has. */
const stores = testStores("meter");

/** A promise and the function that resolves it. */
function signal(): { done: Promise<void>; fire: () => void } {
  let fire!: () => void;
  const done = new Promise<void>((resolve) => (fire = resolve));
  return { done, fire };
}

/**
 * `db` with a pause: once a unit of work failed with `ReservationExpiredError`, the next one waits
 * for `resume()` — the moment a process has judged a hold lapsed and not yet charged the usage
 * after service.
 */
function pausing(db: DbManager): { db: DbManager; paused: Promise<void>; resume: () => void } {
  const paused = signal();
  const resumed = signal();
  let armed = false;
  const transaction = async <R>(userId: string, fn: (tx: DbTransaction) => Promise<R> | R): Promise<R> => {
    if (armed) {
      armed = false;
      paused.fire();
      await resumed.done;
    }
    try {
      return await db.transaction(userId, fn);
    } catch (error) {
      if (error instanceof ReservationExpiredError) armed = true;
      throw error;
    }
  };
  const proxy = new Proxy(db, {
    get(target, prop) {
      if (prop === "transaction") return transaction;
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { db: proxy, paused: paused.done, resume: resumed.fire };
}

/**
 * Starts an attempt whose `fn` waits for `finish()`, then records `usage` (null: nothing) and
 * returns `value`; resolves once `fn` runs (its hold is placed).
 */
async function blocked<V>(
  m: CreditManager,
  u: string,
  options: AttemptOptions,
  usage: number | null,
  value: V,
): Promise<{ result: Promise<V>; finish: () => void }> {
  const started = signal();
  const finish = signal();
  const result = m.credits.meter(u, options, async () => {
    started.fire();
    await finish.done;
    if (usage !== null) recordUsage({ amount: usage });
    return value;
  });
  await started.done;
  return { result, finish: finish.fire };
}

/** `meter()`'s options, `onSettled` included. */
type AttemptOptions = Parameters<CreditManager["credits"]["meter"]>[1];

/** Options for attempts of one keyed call (estimate 10); each records its settlement under its name. */
function attempts(
  idempotencyKey: string,
  ttlSeconds: number,
): { outcomes: Record<string, MeterOutcome>; options: (name: string) => AttemptOptions } {
  const outcomes: Record<string, MeterOutcome> = {};
  const options = (name: string): AttemptOptions => ({
    estimate: 10,
    ttlSeconds,
    idempotencyKey,
    onSettled: (o: MeterOutcome) => (outcomes[name] = o),
  });
  return { outcomes, options };
}

/**
 * A first attempt ("first", usage 9) blocked on its hold, then a retry with the same key
 * ("failed") that throws: it releases the hold the first still runs on.
 */
async function firstThenFailedRetry(
  m: CreditManager,
  u: string,
  options: (name: string) => AttemptOptions,
): Promise<{ result: Promise<string>; finish: () => void }> {
  const first = await blocked(m, u, options("first"), 9, "first");
  await expect(
    m.credits.meter(u, options("failed"), () => {
      throw new Error("boom");
    }),
  ).rejects.toThrow("boom");
  return first;
}

/** The journal entries that charged a keyed call (each carries the call's charge key). */
async function charges(m: CreditManager, userId: string): Promise<JournalEntry[]> {
  const items = (await m.credits.getCreditHistory(userId, { limit: 100 })).items;
  return items.filter((e) => e.type === "commit_reserved" || e.type === "deduct");
}

async function types(m: CreditManager, userId: string): Promise<string[]> {
  return (await m.credits.getCreditHistory(userId, { limit: 100 })).items.map((e) => e.type).reverse();
}

describe.each(stores)("keyed meter() attempts on $name", ({ open }) => {
  /** One manager (or two, for two processes) on a fresh store, closed and dropped after `body`. */
  async function withStore(
    body: (s: { db: DbManager; another: () => DbManager; clock: { now: number } }) => Promise<void>,
  ) {
    const { db, another, drop } = await open();
    try {
      await body({ db, another, clock: { now: T } });
    } finally {
      await drop();
    }
  }

  /** A manager on a fresh store, with its clock and a user holding 1,000 credits; closed after `body`. */
  async function withAccount(body: (s: { m: CreditManager; u: string; clock: { now: number } }) => Promise<void>) {
    await withStore(async ({ db, clock }) => {
      const m = await createCreditManager({ db, clock: () => new Date(clock.now) });
      try {
        const u = `u-${randomUUID()}`;
        await m.credits.addCredits(u, 1000);
        await body({ m, u, clock });
      } finally {
        await m.close();
      }
    });
  }

  it("two processes with clocks a second apart: the retry judges the hold lapsed while the first attempt commits it — one charge", async () => {
    await withStore(async ({ db, another, clock }) => {
      const m1 = await createCreditManager({ db, clock: () => new Date(clock.now) });
      const p2 = pausing(another());
      const m2 = await createCreditManager({ db: p2.db, clock: () => new Date(clock.now + 1000) });
      try {
        const u = `u-${randomUUID()}`;
        await m1.credits.addCredits(u, 1000);
        const { outcomes, options } = attempts("call-1", 5);
        const { result: first, finish: finish } = await blocked(m1, u, options("first"), 9, "first");
        // 4.5 s on process 1's clock: its hold has 0.5 s left. Process 2, a second ahead, sees it lapsed.
        clock.now = T + 4500;
        const retry = m2.credits.meter(u, options("retry"), () => {
          recordUsage({ amount: 7 });
          return "retry";
        });
        await p2.paused; // the retry found the hold lapsed and is about to charge after service
        finish();
        expect(await first).toBe("first"); // committed by process 1, whose clock says the hold is live
        p2.resume();
        expect(await retry).toBe("retry");

        const charged = await charges(m1, u);
        expect(charged.map((e) => [e.type, e.amount, e.idempotencyKey])).toEqual([
          ["commit_reserved", 9, "call-1:charge"],
        ]);
        expect(outcomes.first).toMatchObject({ outcome: "committed", charged: 9 });
        expect(outcomes.first?.replayed).toBeUndefined();
        // The retry is answered with the charge that stands; its own usage is not charged.
        expect(outcomes.retry).toMatchObject({
          outcome: "committed",
          charged: 9,
          replayed: true,
          usages: [{ amount: 7 }],
        });
        expect(outcomes.retry?.entry?.id).toBe(charged[0]?.id);
        expect(await m1.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 991, reserved: 0, debt: 0 });
        expect((await m1.credits.audit(u)).ok).toBe(true);
      } finally {
        await m2.close();
        await m1.close();
      }
    });
  });

  it("the first attempt outlives its hold, the retry charges, then the first finishes: it returns its value, charged once", async () => {
    await withAccount(async ({ m, u, clock }) => {
      const { outcomes, options } = attempts("k", 5);
      const { result: first, finish: finish } = await blocked(m, u, options("first"), 9, "first");
      clock.now = T + 6000; // the hold lapsed; the caller gave up and retries
      expect(
        await m.credits.meter(u, options("retry"), () => {
          recordUsage({ amount: 7 });
          return "retry";
        }),
      ).toBe("retry");
      expect(outcomes.retry).toMatchObject({ outcome: "committed", charged: 7, chargedAfterService: true });
      expect(outcomes.retry?.entry?.idempotencyKey).toBe("k:charge");
      finish();
      expect(await first).toBe("first");
      expect(outcomes.first).toMatchObject({
        outcome: "committed",
        charged: 7,
        replayed: true,
        chargedAfterService: true,
        usages: [{ amount: 9 }],
      });
      expect(outcomes.first?.entry?.id).toBe(outcomes.retry?.entry?.id);

      expect((await charges(m, u)).map((e) => e.amount)).toEqual([7]);
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 993, reserved: 0 });
      expect(await types(m, u)).toEqual(["add", "reserve", "release_reserved", "deduct"]);
      // The usage that was not charged is on record.
      const events = await m.ledger.getEntries({ eventType: "system", userId: u });
      expect(events.map((e) => [e.message, e.details])).toEqual([
        [
          expect.stringMatching(/another attempt/),
          expect.objectContaining({
            idempotencyKey: "k",
            requested: 9,
            charged: 7,
            chargeEntryId: outcomes.retry?.entry?.id,
          }),
        ],
      ]);
      expect((await m.credits.audit(u)).ok).toBe(true);
    });
  });

  it("a retry of a call that was charged (after its hold lapsed, or committed) runs fn and is answered with that charge, whatever it measured", async () => {
    await withAccount(async ({ m, u, clock }) => {
      const outcomes: MeterOutcome[] = [];
      const call = (key: string, amount: number, lapse = false) =>
        m.credits.meter(
          u,
          { estimate: 10, ttlSeconds: 5, idempotencyKey: key, onSettled: (o) => outcomes.push(o) },
          () => {
            if (lapse) clock.now += 6000;
            recordUsage({ amount });
            return amount;
          },
        );
      // Lapsed: charged after service, then retried with other usage (the caller never saw the answer).
      expect(await call("lapsed", 9, true)).toBe(9);
      expect(await call("lapsed", 4)).toBe(4);
      // Committed, then retried: same usage and other usage alike get the charge back.
      expect(await call("done", 5)).toBe(5);
      expect(await call("done", 5)).toBe(5);
      expect(await call("done", 6)).toBe(6);
      expect(outcomes.map((o) => [o.charged, o.replayed ?? false, o.entry?.idempotencyKey])).toEqual([
        [9, false, "lapsed:charge"],
        [9, true, "lapsed:charge"],
        [5, false, "done:charge"],
        [5, false, "done:charge"], // the same usage: an idempotent replay of the same charge
        [5, true, "done:charge"],
      ]);
      expect(outcomes[1]?.entry?.id).toBe(outcomes[0]?.entry?.id);
      expect(outcomes[4]?.entry?.id).toBe(outcomes[2]?.entry?.id);
      expect((await charges(m, u)).map((e) => e.amount).sort()).toEqual([5, 9]);
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 986, reserved: 0 });
      expect((await m.credits.audit(u)).ok).toBe(true);
    });
  });

  it("an attempt whose shared hold another attempt released still charges its usage once; a later attempt is answered with that charge", async () => {
    await withAccount(async ({ m, u }) => {
      const { outcomes, options } = attempts("k", 60);
      // A concurrent retry meets the same hold and fails: it releases the hold the first still runs on.
      const { result: first, finish: firstFinish } = await firstThenFailedRetry(m, u, options);
      // The next retry holds again (attempt 2) and runs.
      const { result: third, finish: thirdFinish } = await blocked(m, u, options("third"), 7, "third");
      firstFinish();
      expect(await first).toBe("first");
      expect(outcomes.first).toMatchObject({ outcome: "committed", charged: 9, chargedAfterService: true });
      expect(outcomes.first?.entry).toMatchObject({ type: "deduct", idempotencyKey: "k:charge" });
      expect(outcomes.first?.entry?.metadata).toMatchObject({ holdReleased: true });
      thirdFinish();
      expect(await third).toBe("third");
      expect(outcomes.third).toMatchObject({
        outcome: "committed",
        charged: 9,
        replayed: true,
        usages: [{ amount: 7 }],
      });
      expect(outcomes.third?.entry?.id).toBe(outcomes.first?.entry?.id);

      expect((await charges(m, u)).map((e) => e.amount)).toEqual([9]);
      // The third attempt's own hold went back.
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 991, reserved: 0 });
      expect(await types(m, u)).toEqual([
        "add",
        "reserve",
        "release_reserved",
        "reserve",
        "deduct",
        "release_reserved",
      ]);
      const releases = (await m.credits.getCreditHistory(u, { types: ["release_reserved"] })).items;
      expect(releases.map((e) => [e.idempotencyKey, e.metadata?.releaseReason])).toEqual([
        ["k:attempt-2:release", "already-charged"],
        ["k:release", "error"],
      ]);
      expect((await m.credits.audit(u)).ok).toBe(true);
    });
  });

  it("the later attempt charges first: an attempt whose shared hold was released and settles last is answered with that charge", async () => {
    await withAccount(async ({ m, u }) => {
      const { outcomes, options } = attempts("k", 60);
      const { result: first, finish } = await firstThenFailedRetry(m, u, options);
      expect(
        await m.credits.meter(u, options("third"), () => {
          recordUsage({ amount: 7 });
          return "third";
        }),
      ).toBe("third");
      expect(outcomes.third).toMatchObject({ outcome: "committed", charged: 7 });
      expect(outcomes.third?.entry).toMatchObject({ type: "commit_reserved", idempotencyKey: "k:charge" });
      finish();
      expect(await first).toBe("first");
      expect(outcomes.first).toMatchObject({
        outcome: "committed",
        charged: 7,
        replayed: true,
        usages: [{ amount: 9 }],
      });
      expect((await charges(m, u)).map((e) => e.amount)).toEqual([7]);
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 993, reserved: 0 });
      expect((await m.credits.audit(u)).ok).toBe(true);
    });
  });

  it("an attempt that measured nothing, on a hold another attempt committed meanwhile, is released quietly and returns its value", async () => {
    await withAccount(async ({ m, u }) => {
      const { outcomes, options } = attempts("k", 60);
      const { result: quiet, finish } = await blocked(m, u, options("quiet"), null, "nothing measured");
      expect(
        await m.credits.meter(u, options("measured"), () => {
          recordUsage({ amount: 4 });
          return "measured";
        }),
      ).toBe("measured");
      finish();
      expect(await quiet).toBe("nothing measured");
      expect(outcomes.quiet).toMatchObject({ outcome: "released", releaseReason: "no-usage", charged: 0 });
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 996, reserved: 0 });
      expect(await types(m, u)).toEqual(["add", "reserve", "commit_reserved"]);
      expect((await m.credits.audit(u)).ok).toBe(true);
    });
  });

  it("a crash between the hold and the charge: the retry charges once, and the attempt after it is answered with that charge", async () => {
    await withAccount(async ({ m, u, clock }) => {
      const options = { estimate: 10, ttlSeconds: 5, idempotencyKey: "k" };
      // The process that held died before settling: the hold is left to lapse.
      const lost = await m.credits.openMeter(u, options);
      lost.recordUsage({ amount: 3 });
      clock.now = T + 6000;
      const outcomes: MeterOutcome[] = [];
      const retry = (amount: number) =>
        m.credits.meter(u, { ...options, onSettled: (o) => outcomes.push(o) }, () => {
          recordUsage({ amount });
          return amount;
        });
      expect(await retry(7)).toBe(7);
      expect(await retry(8)).toBe(8);
      expect(outcomes.map((o) => [o.charged, o.replayed ?? false, o.chargedAfterService])).toEqual([
        [7, false, true],
        [7, true, true],
      ]);
      expect((await charges(m, u)).map((e) => [e.amount, e.idempotencyKey])).toEqual([[7, "k:charge"]]);
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 993, reserved: 0 });
      expect((await m.credits.audit(u)).ok).toBe(true);
    });
  });
});
