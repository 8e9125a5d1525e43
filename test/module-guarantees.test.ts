// What a module may change (docs/modules.md, "What a module may change", "Capabilities"): modules
// written here against the package's public entries only (the built package, as a user's app
// imports it) cannot break what the core guarantees, on every store — another module's column, a
// malformed stored column value, a unitHook that changes the core's fields, and UnitWork's
// rule-passing options without a declared capability.
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import * as z from "zod/mini";
import { createCreditManager, InMemoryDbManager, ModuleError } from "credit-management";
import { accountColumn, createCreditManager as createCoreManager } from "credit-management/core";
import type { CreditModule, EntryMeta, ModuleContext } from "credit-management/core";
import type { DbManager } from "credit-management/store";
import { SqliteDbManager } from "credit-management/sqlite";
import { PostgresDbManager } from "credit-management/postgres";
import { MongoDbManager } from "credit-management/mongodb";

const dir = mkdtempSync(join(tmpdir(), "cm-guarantees-"));

/** A store of each kind this run can reach: one per kind, shared by the cases (each on its own accounts). */
interface Store {
  name: string;
  db: () => DbManager;
}
const stores: Store[] = [
  { name: "memory", db: () => new InMemoryDbManager() },
  { name: "sqlite", db: () => new SqliteDbManager({ filename: join(dir, `${randomUUID()}.db`) }) },
];
const cleanups: (() => Promise<void>)[] = [];
const pgUrl = process.env.CREDIT_PG_URL;
if (pgUrl !== undefined && pgUrl !== "") {
  stores.push({
    name: "postgres",
    db: () => {
      const schema = `cm_guard_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
      cleanups.push(async () => {
        const c = new pg.Client({ connectionString: pgUrl });
        await c.connect();
        await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
        await c.end();
      });
      return new PostgresDbManager({ connectionString: pgUrl, schema, poolConfig: { max: 4 } });
    },
  });
}
const mongoUri = process.env.CREDIT_MONGO_URI;
if (mongoUri !== undefined && mongoUri !== "") {
  stores.push({
    name: "mongodb",
    db: () => {
      const client = new MongoClient(mongoUri);
      const dbName = `credit_test_guard_${randomUUID().slice(0, 8)}`;
      cleanups.push(async () => {
        await client.db(dbName).dropDatabase();
        await client.close();
      });
      return new MongoDbManager({ client, dbName });
    },
  });
}

afterAll(async () => {
  for (const c of cleanups) await c().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

/** A module that keeps its context, with what it declares. */
function module(id: string, declared: Omit<CreditModule, "id" | "init"> = {}) {
  const seen: { ctx?: ModuleContext } = {};
  const m: CreditModule = {
    id,
    ...declared,
    init: (c) => void (seen.ctx = c),
  };
  const ctx = (): ModuleContext => {
    if (seen.ctx === undefined) throw new Error(`${id}: not initialised`);
    return seen.ctx;
  };
  return { module: m, ctx };
}

/** The rejection of `promise`, which must be a `ModuleError`. */
async function moduleError(promise: Promise<unknown>): Promise<ModuleError> {
  const error: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ModuleError);
  return error as ModuleError;
}

/** An auto top-up rule as the billing module stores it, but $999,999.99 a charge. */
const lavishRule = {
  rule: {
    below: 10,
    amount: 99_999_999,
    toBalance: null,
    provider: "stripe",
    customer: "cus_x",
    paymentMethod: "pm_x",
    currency: "USD",
    minAmount: null,
    maxAmount: null,
    maxPerMonth: null,
    maxFailures: 3,
  },
  enabled: true,
  disabledReason: null,
  pending: null,
  month: null,
  monthCount: 0,
  failures: 0,
  lastError: null,
};

describe.each(stores)("what a module may change: $name", (store) => {
  it("changeColumn of a column the module did not declare is a ModuleError naming both, and writes nothing", async () => {
    const rogue = module("rogue");
    const own = accountColumn("tier", z.object({ level: z.int().check(z.minimum(1)) }));
    const tiers = module("tiers", { accountColumn: own });
    const m = await createCreditManager({ db: store.db(), modules: [rogue.module, tiers.module] });
    try {
      const u = `cc-${randomUUID()}`;
      await m.credits.addCredits(u, 20);
      // The billing module's column, named by an accessor of the rogue module's own making.
      const billing = accountColumn("autoTopUp", z.unknown());
      const error = await moduleError(rogue.ctx().changeColumn(u, billing, () => ({ value: lavishRule })));
      expect(error.module).toBe("rogue");
      expect(error.details).toMatchObject({ module: "rogue", column: "autoTopUp" });
      expect(error.message).toMatch(/module "rogue".*"autoTopUp"/);
      // Another module's declared column is not the rogue's either.
      await moduleError(rogue.ctx().changeColumn(u, own, () => ({ value: { level: 2 } })));
      const account = await m.db.getAccount(u);
      expect((account as Record<string, unknown> | null)?.["autoTopUp"] ?? null).toBeNull();
      expect(await m.payments.getAutoTopUp(u)).toBeNull();
      // Its own column: a value its schema refuses is a ModuleError, nothing written; a good one is written.
      const bad = await moduleError(tiers.ctx().changeColumn(u, own, () => ({ value: { level: 0 } })));
      expect(bad.details).toMatchObject({ module: "tiers", column: "tier" });
      expect(await tiers.ctx().changeColumn(u, own, (v) => (v === null ? { value: { level: 3 } } : null))).toEqual({
        level: 3,
      });
      expect((await m.credits.getUserCreditsInfo(u)).balance).toBe(20);
      expect((await m.credits.audit(u)).ok).toBe(true);
    } finally {
      await m.close();
    }
  });

  it("a malformed stored column value fails its module's feature with a ModuleError; the account's other writes go on", async () => {
    const db = store.db();
    // A core manager whose module declares the same column with no rule: how a malformed value
    // reaches the store here (in life: a hand edit, a bug of another version).
    const lax = module("lax", { accountColumn: accountColumn("autoTopUp", z.unknown()) });
    const core = await createCoreManager({ db, modules: [lax.module] });
    const m = await createCreditManager({ db });
    try {
      const u = `bad-${randomUUID()}`;
      await m.credits.addCredits(u, 100);
      const garbage = { rule: null, enabled: true, pending: null };
      await lax.ctx().changeColumn(u, accountColumn("autoTopUp", z.unknown()), () => ({ value: garbage }));
      // Spends and additions: the billing module's hook cannot read its column, the spend goes on.
      await m.credits.deductCredits(u, 95);
      await m.credits.addCredits(u, 5);
      await m.credits.deductCredits(u, 7);
      expect((await m.credits.getUserCreditsInfo(u)).balance).toBe(3);
      // The auto top-up itself: a clear error naming the billing module and its column.
      const error = await moduleError(m.payments.getAutoTopUp(u));
      expect(error.module).toBe("billing");
      expect(error.details).toMatchObject({ column: "autoTopUp", userId: u, columnValue: "stored" });
      await moduleError(m.payments.processAutoTopUp(u));
      // Disabling works: the rule its schema refuses is removed.
      expect(await m.payments.disableAutoTopUp(u)).toBeNull();
      expect(await m.payments.getAutoTopUp(u)).toBeNull();
      await m.credits.deductCredits(u, 1);
      expect((await m.credits.getUserCreditsInfo(u)).balance).toBe(2);
      expect((await m.credits.audit(u)).ok).toBe(true);
    } finally {
      await m.close();
      await core.close().catch(() => undefined);
    }
  });

  it("a unitHook that changes the core's fields or another module's column is a ModuleError, and nothing is saved", async () => {
    const inflate = module("inflate", {
      unitHook: ({ changes }) => {
        if (changes.entries.some((e) => e.type === "deduct")) changes.account.balance += 1000;
        return [];
      },
    });
    const m = await createCreditManager({ db: store.db(), modules: [inflate.module] });
    const u = `hook-${randomUUID()}`;
    try {
      await m.credits.addCredits(u, 10);
      const error = await moduleError(m.credits.deductCredits(u, 4));
      expect(error.module).toBe("inflate");
      expect(error.details).toMatchObject({ field: "account.balance" });
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 10 });
      expect((await m.credits.journalHead(u))?.seq).toBe(1);
      expect((await m.credits.audit(u)).ok).toBe(true);
    } finally {
      await m.close();
    }
    // A hook that sets the billing module's column, or changes a grant the unit writes.
    const grabber = module("grabber", {
      unitHook: ({ changes }) => {
        if (changes.entries.some((e) => e.type === "deduct")) Reflect.set(changes.account, "autoTopUp", lavishRule);
        return [];
      },
    });
    const minter = module("minter", {
      unitHook: ({ changes }) => {
        const g = changes.insertGrants[0];
        if (g !== undefined) (g as { remaining: number }).remaining += 1000;
        return [];
      },
    });
    for (const [rogue, call, field] of [
      [grabber, (c: typeof m.credits) => c.deductCredits(u, 4), "account.autoTopUp"],
      [minter, (c: typeof m.credits) => c.addCredits(u, 1), "insertGrants.remaining"],
    ] as const) {
      const other = await createCreditManager({ db: store.db(), modules: [rogue.module] });
      try {
        await other.credits.addCredits(u, 10).catch(() => undefined);
        const before = await other.credits.journalHead(u);
        const error = await moduleError(call(other.credits));
        expect(error.details).toMatchObject({ field });
        expect((await other.credits.journalHead(u))?.seq).toBe(before?.seq);
        expect(await other.payments.getAutoTopUp(u)).toBeNull();
      } finally {
        await other.close();
      }
    }
  });

  it("UnitWork's options that pass the core's rules need a declared capability", async () => {
    const all: CreditModule["capabilities"] = ["overdraftLimit", "spendLimits", "takeBack"];
    const plain = module("plain");
    const payer = module("payer", { capabilities: all });
    const m = await createCreditManager({ db: store.db(), modules: [plain.module, payer.module] });
    try {
      const u = `cap-${randomUUID()}`;
      await m.credits.addCredits(u, 5);
      await m.credits.setLimits(u, [{ amount: 0, period: "day" }]);
      const head = (await m.credits.journalHead(u))?.seq;
      const meta: EntryMeta = { description: "take it all", takeBack: "refund" };
      const asks = [
        { capability: "overdraftLimit", meta: { description: "x" }, options: { overdraftLimit: null } },
        { capability: "spendLimits", meta: { description: "x" }, options: { overdraftLimit: 0, limits: "skip" } },
        { capability: "takeBack", meta, options: { overdraftLimit: 0 } },
      ] as const;
      for (const ask of asks) {
        const error = await moduleError(
          plain
            .ctx()
            .runUnitOfWork(u, {}, (work) =>
              work.deduct(1_000_000, ask.meta, { allowDebt: true, limits: "force", ...ask.options }),
            ),
        );
        expect(error.module).toBe("plain");
        expect(error.details).toMatchObject({ capability: ask.capability });
      }
      // All three at once (the 1,000,000 of debt past an overdraft of 0): refused, nothing written.
      await moduleError(
        plain
          .ctx()
          .runUnitOfWork(u, {}, (work) =>
            work.deduct(1_000_000, meta, { allowDebt: true, overdraftLimit: null, limits: "skip" }),
          ),
      );
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 5, debt: 0 });
      expect((await m.credits.journalHead(u))?.seq).toBe(head);
      // Within the core's rules, the plain module's deduction is the core's: the spend limit of 0 refuses it.
      await expect(
        plain.ctx().runUnitOfWork(u, {}, (work) => work.deduct(1, {}, { allowDebt: false, overdraftLimit: 0 })),
      ).rejects.toThrow(/limit/i);
      // A module that declares them may (the payments module's take-backs do).
      const entry = await payer
        .ctx()
        .runUnitOfWork(u, {}, (work) =>
          work.deduct(1_000_000, meta, { allowDebt: true, overdraftLimit: null, limits: "skip" }),
        );
      expect(entry).toMatchObject({ type: "deduct", amount: 1_000_000, takeBack: "refund" });
      expect(await m.credits.getUserCreditsInfo(u)).toMatchObject({ balance: 5 - 1_000_000 });
      expect((await m.credits.audit(u)).ok).toBe(true);
    } finally {
      await m.close();
    }
  });
});
