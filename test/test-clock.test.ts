// The test clock (docs/testing.md, "A test clock"): a subscription through three renewals with an
// expiry, a later grant and an alert in between, each stop reported, equal to the worker run on a
// real clock at each of those instants; on memory, SQLite and (with CREDIT_PG_URL) PostgreSQL.
import { randomUUID } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConflictError, createCreditManager, RuleViolationError, type CreditManager } from "../src/index.js";
import { createWorker } from "../src/worker/index.js";
import { createTestClock, type TestClock } from "../src/testing/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import type { DbManager } from "../src/core/db/types.js";
import { MongoClient } from "mongodb";
import type { JournalEntry } from "../src/models-public.js";

const DAY = 86_400_000;
const pgUrl = process.env.CREDIT_PG_URL;
const mongoUri = process.env.CREDIT_MONGO_URI;
/** MongoDB clients and their databases, dropped and closed after the run. */
const clients: Array<[MongoClient, string]> = [];
afterAll(async () => {
  for (const [c, dbName] of clients) {
    await c.db(dbName).dropDatabase();
    await c.close();
  }
});

const stores: Array<[string, () => DbManager, boolean]> = [
  ["memory", () => undefined as unknown as DbManager, true],
  ["sqlite", () => new SqliteDbManager({ filename: join(mkdtempSync(join(tmpdir(), "tc-")), "c.sqlite") }), true],
  [
    "postgres",
    () => new PostgresDbManager({ connectionString: pgUrl as string, schema: `tc_${randomUUID().slice(0, 8)}` }),
    pgUrl !== undefined,
  ],
  [
    "mongodb",
    () => {
      const client = new MongoClient(mongoUri as string);
      const dbName = `tc_${randomUUID().slice(0, 8)}`;
      clients.push([client, dbName]);
      return new MongoDbManager({ client, dbName });
    },
    mongoUri !== undefined,
  ],
];

/** The start: now, to the minute (every date in the test is relative to it). */
const START = Math.floor(Date.now() / 60_000) * 60_000;

/** An account's journal as times relative to START: what two runs must agree on. */
async function journal(m: CreditManager, u: string) {
  const { items } = await m.credits.getCreditHistory(u, { limit: 1000 });
  return items.reverse().map((e: JournalEntry) => ({
    type: e.type,
    amount: e.amount,
    occurredAt: e.occurredAt == null ? null : e.occurredAt.getTime() - START,
    createdAt: e.createdAt.getTime() - START,
    balanceAfter: e.balanceAfter,
  }));
}

/** The scenario's first moves at START, on a manager whose clock stands there. */
async function setUp(m: CreditManager, u: string) {
  await m.subscriptions.createPlan({ id: "monthly", name: "Monthly", creditsPerPeriod: 100, billingPeriod: "monthly" });
  await m.subscriptions.subscribe(u, "monthly");
  await m.credits.addCredits(u, 50, { expiresAt: new Date(START + 10 * DAY) });
  await m.credits.addCredits(u, 30, { effectiveAt: new Date(START + 40 * DAY) });
  await m.credits.deductCredits(u, 40); // from the 50 that expire first: 10 of them left
  await m.notifications.setAlerts(u, [{ id: "low", kind: "available", atOrBelow: 100 }]);
}

async function manager(db: DbManager | undefined, clock: () => Date) {
  return createCreditManager(db === undefined ? { clock, notifications: {} } : { db, clock, notifications: {} });
}

describe.each(stores)("the test clock on %s", (name, makeDb, runs) => {
  it.runIf(runs)(
    "advances a subscription through three renewals, an expiry, a later grant and an alert: each stop reported, equal to the worker run at each instant",
    async () => {
      const u = `tc-${randomUUID()}`;
      const clock = createTestClock(new Date(START));
      const a = await manager(name === "memory" ? undefined : makeDb(), clock.now);
      let manual = START;
      const b = await manager(name === "memory" ? undefined : makeDb(), () => new Date(manual));
      try {
        clock.attach(a);
        await setUp(a, u);
        await setUp(b, u);
        expect((await a.notifications.getAlerts(u)).find((x) => x.threshold.id === "low")?.state).toBe("ok");

        const steps = await clock.advance(new Date(START + 95 * DAY));
        expect(clock.status).toBe("ready");
        expect(clock.now().getTime()).toBe(START + 95 * DAY);
        const at = steps.map((s) => s.at.getTime() - START);
        // The expiry at +10 days, three renewals (calendar months: 28 to 31 days apart), then the end.
        expect(at).toHaveLength(5);
        expect(at[0]).toBe(10 * DAY);
        expect(at[4]).toBe(95 * DAY);
        for (const step of steps.slice(0, 4)) expect(step.accounts).toContain(u);
        expect(steps[0]!.entries.map((e) => [e.type, e.amount])).toEqual([["expire", 10]]);
        for (const step of steps.slice(1, 4)) {
          const renewal = step.entries.filter((e) => e.type === "add");
          expect(renewal.map((e) => e.amount)).toEqual([100]);
          // On time: recorded at its period's start, so no second time.
          expect(renewal[0]!.occurredAt ?? null).toBeNull();
          expect(step.rounds.every((r) => r.ok)).toBe(true);
        }
        // The later grant starts at +40 days, dated there, settled by the next stop (the second renewal).
        const started = steps[2]!.entries.find((e) => e.type === "start");
        expect(started?.occurredAt?.getTime()).toBe(START + 40 * DAY);
        expect(await a.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 130, available: 130 });
        // The alert fired at the expiry (available 100) and resolved when the later grant started.
        const events = (await a.notifications.list(u, { limit: 1000 }))
          .filter((n) => n.type === "alert_triggered" || n.type === "alert_resolved")
          .map((n) => n.type);
        expect(events).toEqual(["alert_triggered", "alert_resolved"]);

        // The same instants on a real clock's worker give the same journal.
        const worker = createWorker(b, { jitter: 0 });
        for (const t of at) {
          manual = START + t;
          await worker.runOnce();
        }
        expect(await journal(b, u)).toEqual(await journal(a, u));
        expect((await a.credits.audit(u, { from: "genesis" })).problems).toEqual([]);
      } finally {
        await a.close();
        await b.close();
      }
    },
  );
});

describe("the test clock's limits", () => {
  const attached = async (): Promise<[TestClock, CreditManager]> => {
    const clock = createTestClock(new Date(START), { maxDays: 30, maxSteps: 2 });
    const m = await createCreditManager({ clock: clock.now });
    clock.attach(m);
    return [clock, m];
  };

  it("moves forward only, at most maxDays at once; past either, nothing moves", async () => {
    const [clock, m] = await attached();
    await expect(clock.advance(new Date(START - 1))).rejects.toBeInstanceOf(RuleViolationError);
    await expect(clock.advance(new Date(START - 1))).rejects.toThrow(/only moves forward/);
    await expect(clock.advance(new Date(START + 31 * DAY))).rejects.toThrow(/at most 30 days/);
    expect(clock.now().getTime()).toBe(START);
    await m.close();
  });

  it("more instants due than maxSteps stops with an error at the last one run", async () => {
    const [clock, m] = await attached();
    for (const d of [1, 2, 3]) await m.credits.addCredits("u", 1, { expiresAt: new Date(START + d * DAY) });
    await expect(clock.advance(new Date(START + 10 * DAY))).rejects.toThrow(/More than 2 instants/);
    expect(clock.now().getTime()).toBe(START + 2 * DAY);
    expect(clock.status).toBe("ready");
    await m.close();
  });

  it("a second advance while one runs is a ConflictError that moves nothing of its own", async () => {
    const [clock, m] = await attached();
    await m.credits.addCredits("u", 1, { expiresAt: new Date(START + DAY) });
    const first = clock.advance(new Date(START + 2 * DAY));
    expect(clock.status).toBe("advancing");
    await expect(clock.advance(new Date(START + 3 * DAY))).rejects.toBeInstanceOf(ConflictError);
    expect((await first).map((s) => s.at.getTime() - START)).toEqual([DAY, 2 * DAY]);
    expect(clock.now().getTime()).toBe(START + 2 * DAY);
    expect(clock.status).toBe("ready");
    await m.close();
  });

  it("refuses a manager on another clock, an advance with none attached, and bad options", async () => {
    const clock = createTestClock(new Date(START));
    await expect(clock.advance(new Date(START + DAY))).rejects.toBeInstanceOf(RuleViolationError);
    const other = await createCreditManager({ clock: () => new Date(START - DAY) });
    expect(() => clock.attach(other)).toThrow(RuleViolationError);
    await other.close();
    expect(() => createTestClock(new Date(START), { maxDays: 0 })).toThrow(/maxDays/);
    expect(() => createTestClock("not a date")).toThrow();
  });
});
