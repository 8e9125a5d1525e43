import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { ConfigurationError, createCreditManager, ValidationError } from "../src/index.js";
import { type DbManager } from "../src/store.js";
import { testStores, type TestStore } from "./fixtures/stores.js";

// Idempotency keys with a retention window (docs/running-for-years.md), on every store: memory and
// SQLite always, PostgreSQL and MongoDB when CREDIT_PG_URL / CREDIT_MONGO_URI are set.
const dir = mkdtempSync(join(tmpdir(), "cm-retention-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const stores: TestStore[] = [
  ...testStores("retention"),
  {
    name: "sqlite",
    open: async () => {
      const db = new SqliteDbManager({ filename: join(dir, `retention-${Math.random().toString(36).slice(2)}.db`) });
      return { db, another: () => db, drop: async () => undefined };
    },
  },
];

const HOUR = 3_600_000;

/** A manager on `db` with a clock the test moves, keys kept for an hour. */
async function setup(db: DbManager, retention: string | number = "1h") {
  let now = Date.now();
  const m = await createCreditManager({ db, clock: () => new Date(now), idempotency: { retention } });
  return {
    m,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

describe.each(stores)("idempotency keys with a retention window: $name", (store) => {
  it("a retry within the window answers the first result; after the job, the key is a new operation; the audit stays clean", async () => {
    const opened = await store.open();
    try {
      const { m, advance } = await setup(opened.db);
      await m.credits.addCredits("u1", 100);
      const first = await m.credits.deductCredits("u1", 10, { idempotencyKey: "order-1" });
      advance(30 * 60_000);
      const retry = await m.credits.deductCredits("u1", 10, { idempotencyKey: "order-1" });
      expect(retry.id).toBe(first.id);
      // Younger than the window: the job leaves it.
      const early = await m.expiration.forgetIdempotencyKeys();
      expect(early.keysForgotten).toBe(0);
      expect(early.retentionMs).toBe(HOUR);
      expect((await m.credits.deductCredits("u1", 10, { idempotencyKey: "order-1" })).id).toBe(first.id);
      expect((await m.credits.getUserCreditsInfo("u1")).balance).toBe(90);

      advance(31 * 60_000); // 61 minutes after the deduction
      // Not forgotten until the job runs: the window is a minimum.
      expect((await m.credits.deductCredits("u1", 10, { idempotencyKey: "order-1" })).id).toBe(first.id);
      const report = await m.expiration.forgetIdempotencyKeys();
      expect(report.keysForgotten).toBe(1);
      expect(report.before).toBe(new Date(Date.parse(report.asOf) - HOUR).toISOString());
      const again = await m.credits.deductCredits("u1", 10, { idempotencyKey: "order-1" });
      expect(again.id).not.toBe(first.id);
      expect((await m.credits.getUserCreditsInfo("u1")).balance).toBe(80);
      // The new entry's key is remembered again, for its own window.
      expect((await m.credits.deductCredits("u1", 10, { idempotencyKey: "order-1" })).id).toBe(again.id);
      expect((await m.expiration.forgetIdempotencyKeys()).keysForgotten).toBe(0);

      // The first entry still carries its key (its hash covers it), and the chain verifies.
      const history = await m.credits.getCreditHistory("u1");
      const keyed = history.items.filter((e) => e.idempotencyKey === "order-1").map((e) => e.id);
      expect(keyed.sort()).toEqual([first.id, again.id].sort());
      const audit = await m.credits.audit("u1");
      expect(audit.problems).toEqual([]);
      expect(audit.ok).toBe(true);
      await m.close();
    } finally {
      await opened.drop();
    }
  });

  it("forgets in batches until none is left, only keys past the window, on every account", async () => {
    const opened = await store.open();
    try {
      const { m, advance } = await setup(opened.db, 2 * HOUR);
      for (const u of ["a", "b", "c"]) await m.credits.addCredits(u, 1000);
      for (let i = 0; i < 5; i++)
        await m.credits.deductCredits(["a", "b", "c"][i % 3] as string, 1, { idempotencyKey: `old-${i}` });
      advance(3 * HOUR);
      await m.credits.deductCredits("a", 1, { idempotencyKey: "fresh" });
      const report = await m.expiration.forgetIdempotencyKeys(undefined, { batchSize: 2 });
      expect(report.keysForgotten).toBe(5);
      // A retry of an old key charges again; the fresh one still answers its first result.
      const before = (await m.credits.getUserCreditsInfo("a")).balance;
      await m.credits.deductCredits("a", 1, { idempotencyKey: "old-0" });
      await m.credits.deductCredits("a", 1, { idempotencyKey: "fresh" });
      expect((await m.credits.getUserCreditsInfo("a")).balance).toBe(before - 1);
      for (const u of ["a", "b", "c"]) expect((await m.credits.audit(u)).ok).toBe(true);
      // runAll forgets too, with a window configured.
      advance(3 * HOUR);
      const all = await m.expiration.runAll();
      expect(all.forgetIdempotencyKeys?.keysForgotten).toBe(2); // "fresh" and the second "old-0"
      await m.close();
    } finally {
      await opened.drop();
    }
  });

  it("never forgets the library's own keys (cm:…: payments, refunds, subscription periods), only clients' keys", async () => {
    const opened = await store.open();
    try {
      const { m, advance } = await setup(opened.db);
      await m.subscriptions.createPlan({ id: "basic", name: "Basic", creditsPerPeriod: 100, billingPeriod: "monthly" });
      await m.subscriptions.subscribe("s1", "basic");
      await m.credits.deductCredits("s1", 1, { idempotencyKey: "client-key" });
      const journal = await opened.db.listJournal("s1", { order: "asc", limit: 10 });
      const system = journal.filter((e) => e.idempotencyKey?.startsWith("cm:") === true);
      expect(system.length).toBeGreaterThan(0);
      advance(2 * HOUR);
      expect((await m.expiration.forgetIdempotencyKeys()).keysForgotten).toBe(1);
      // Every system key still finds its entry: a unit of work asking for one gets it back.
      for (const e of system) {
        const found = await opened.db.transaction(
          "s1",
          async (tx) => (await tx.load({ idempotencyKey: e.idempotencyKey as string })).idempotent,
        );
        expect(found?.id).toBe(e.id);
      }
      const client = await opened.db.transaction(
        "s1",
        async (tx) => (await tx.load({ idempotencyKey: "client-key" })).idempotent,
      );
      expect(client).toBeNull();
      expect((await m.credits.audit("s1")).ok).toBe(true);
      await m.close();
    } finally {
      await opened.drop();
    }
  });

  it("keeps every key for ever by default: the job does nothing", async () => {
    const opened = await store.open();
    try {
      let now = Date.now();
      const m = await createCreditManager({ db: opened.db, clock: () => new Date(now) });
      await m.credits.addCredits("u1", 100);
      const first = await m.credits.deductCredits("u1", 5, { idempotencyKey: "k" });
      now += 400 * 24 * HOUR;
      const report = await m.expiration.forgetIdempotencyKeys();
      expect(report).toMatchObject({ retentionMs: null, before: null, keysForgotten: 0 });
      expect((await m.expiration.runAll()).forgetIdempotencyKeys).toBeNull();
      expect((await m.credits.deductCredits("u1", 5, { idempotencyKey: "k" })).id).toBe(first.id);
      // A window given to one run applies to that run.
      expect((await m.expiration.forgetIdempotencyKeys(undefined, { retention: "30d" })).keysForgotten).toBe(1);
      expect((await m.credits.deductCredits("u1", 5, { idempotencyKey: "k" })).id).not.toBe(first.id);
      await m.close();
    } finally {
      await opened.drop();
    }
  });
});

describe("idempotency retention: bad settings are refused", () => {
  it.each([["5s"], [1000], ["24 hours"], ["-1h"], [1.5], [""], [null]])("retention %j", async (retention) => {
    await expect(createCreditManager({ idempotency: { retention: retention as never } })).rejects.toBeInstanceOf(
      ConfigurationError,
    );
  });

  it("a run's own retention is checked too", async () => {
    const m = await createCreditManager({});
    await expect(m.expiration.forgetIdempotencyKeys(undefined, { retention: "1s" })).rejects.toBeInstanceOf(
      ValidationError,
    );
    await expect(m.expiration.forgetIdempotencyKeys(undefined, { batchSize: 0 })).rejects.toBeInstanceOf(
      ValidationError,
    );
    await m.close();
  });

  it("accepts durations from a minute to 100 years", async () => {
    for (const retention of ["1m", "90s", "24h", "30d", 60_000, "forever"]) {
      const m = await createCreditManager({ idempotency: { retention } });
      await m.close();
    }
  });
});
