/**
 * Promo limits and once-only crediting hold across processes sharing a store, not only within one
 * process's per-account queue: two managers (two pools / clients, as two processes would have) on
 * the same MongoDB database or PostgreSQL schema claim and credit at once.
 */
import { randomUUID } from "node:crypto";
import { MongoClient } from "mongodb";
import { afterAll, describe, expect, it } from "vitest";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import type { DbManager } from "../src/core/db/types.js";
import { CreditService, PaymentService, PromoService } from "../src/index.js";
import { testEvent, unsignedTestProvider } from "../src/modules/billing/contract.js";
import { scriptedChargeProvider } from "../src/modules/billing/contract-auto-top-up.js";
import { billingStore } from "../src/modules/billing/store.js";

const mongoUri = process.env.CREDIT_MONGO_URI;
const pgUrl = process.env.CREDIT_PG_URL;
const stores: Array<{
  name: string;
  enabled: boolean;
  pair: () => Promise<[DbManager, DbManager]>;
  drop: () => Promise<void>;
}> = [];
const mongoDb = `credit_test_promo_proc_${process.pid}_${randomUUID().slice(0, 8)}`;
stores.push({
  name: "mongodb",
  enabled: Boolean(mongoUri),
  pair: async () => {
    const a = MongoDbManager.fromUri(mongoUri as string, mongoDb);
    const b = MongoDbManager.fromUri(mongoUri as string, mongoDb);
    await a.init();
    return [a, b];
  },
  drop: async () => {
    const client = new MongoClient(mongoUri as string);
    await client.db(mongoDb).dropDatabase();
    await client.close();
  },
});
const pgSchema = `promo_proc_${process.pid}_${randomUUID().slice(0, 8).replace(/-/g, "")}`;
stores.push({
  name: "postgres",
  enabled: Boolean(pgUrl),
  pair: async () => {
    const a = new PostgresDbManager({ connectionString: pgUrl as string, schema: pgSchema, poolConfig: { max: 6 } });
    const b = new PostgresDbManager({ connectionString: pgUrl as string, schema: pgSchema, poolConfig: { max: 6 } });
    await a.init();
    return [a, b];
  },
  drop: async () => {
    const { default: pg } = await import("pg");
    const c = new pg.Client({ connectionString: pgUrl as string });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS "${pgSchema}" CASCADE`);
    await c.end();
  },
});

for (const store of stores) {
  // reason: a backend whose server URL is not set is skipped; the others run
  describe.skipIf(!store.enabled)(`promos and payments across two managers: ${store.name}`, () => {
    // reason: needs its database URL (set by .ci/run); the run's closing block names it when skipped
    const opened: DbManager[] = [];
    afterAll(async () => {
      for (const db of opened) await db.close();
      await store.drop();
    });

    it("a 5-use code claimed by 40 users through two managers at once: 5 grants; a paid event through both: credited once", async () => {
      const [a, b] = await store.pair();
      opened.push(a, b);
      const promosA = new PromoService({ db: a });
      const promosB = new PromoService({ db: b });
      const code = `MULTI${randomUUID().slice(0, 8).toUpperCase()}`;
      await promosA.createPromo({ code, credits: 3, maxUses: 5 });
      const users = Array.from({ length: 40 }, (_, i) => `pp-${i}-${randomUUID()}`);
      const results = await Promise.allSettled(
        users.map((u, i) => (i % 2 === 0 ? promosA : promosB).claimPromo(u, code)),
      );
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(5);
      expect((await billingStore(a).getPromo(code))?.uses).toBe(5);

      const payA = new PaymentService({ db: a, providers: [unsignedTestProvider] });
      const payB = new PaymentService({ db: b, providers: [unsignedTestProvider] });
      const u = `pay-${randomUUID()}`;
      const p = await payA.createPaymentLink(u, { amount: 250, currency: "USD", provider: "test" });
      const paid = testEvent(p, { kind: "paid", providerPaymentId: `pi_${p.id}` });
      const outcomes = await Promise.all(
        Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? payA : payB).handleWebhook("test", paid, {})),
      );
      expect(outcomes.filter((o) => o.outcome === "credited")).toHaveLength(1);
      expect(await new CreditService({ db: b }).getUserCreditsInfo(u)).toMatchObject({ balance: 250 });
    });

    it("auto top-up: spends through three managers crossing at once ask for one top-up; three workers charge it under one key and credit it once", async () => {
      const [a, b] = await store.pair();
      const [c] = await store.pair();
      opened.push(a, b, c as DbManager);
      const dbs = [a, b, c as DbManager];
      const provider = scriptedChargeProvider([{ status: "succeeded", providerPaymentId: `pi_${randomUUID()}` }]);
      const credits = dbs.map((db) => new CreditService({ db }));
      const payments = dbs.map((db, i) => new PaymentService({ db, credits: credits[i], providers: [provider] }));
      const u = `atu-${randomUUID()}`;
      await credits[0]?.addCredits(u, 160);
      await payments[0]?.setAutoTopUp(u, {
        below: 100,
        amount: 1000,
        provider: "test",
        customer: "cus_1",
        paymentMethod: "pm_1",
        currency: "USD",
      });
      // 30 spends of 5, ten through each manager: available 160 → 10, crossing 100 once.
      await Promise.all(Array.from({ length: 30 }, (_, i) => credits[i % 3]?.deductCredits(u, 5)));
      const asked = (await a.listNotifications(u, { limit: 100 })).filter((n) => n.type === "auto_top_up_requested");
      expect(asked).toHaveLength(1);
      const results = await Promise.all(payments.map((p) => p.processAutoTopUp(u)));
      expect(results.filter((r) => r.outcome === "credited").length).toBeGreaterThanOrEqual(1);
      expect(new Set(provider.calls.map((x) => x.idempotencyKey))).toEqual(new Set([asked[0]?.payload.attemptId]));
      expect(await credits[1]?.getUserCreditsInfo(u)).toMatchObject({ available: 1010 });
      expect((await payments[2]?.getAutoTopUp(u))?.pending).toBeNull();
    });
  });
}
