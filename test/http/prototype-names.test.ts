import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createCreditManager, InMemoryDbManager } from "../../src/index.js";
import type { DbManager } from "../../src/store.js";
import { SqliteDbManager } from "../../src/db/sqlite/index.js";
import { PostgresDbManager } from "../../src/db/postgres/index.js";
import { MongoDbManager } from "../../src/db/mongodb/index.js";
import { MongoClient } from "mongodb";
import pg from "pg";
import { createCreditHandler, type Identity } from "../../src/http/index.js";

/**
 * The names `Object.prototype` has (`constructor`, `toString`, `__proto__`, …) as units, features,
 * spenders, limits, plan ids and promo codes over HTTP, on every store: each is a name like any
 * other, or refused by its pattern with a 400 (docs/units.md).
 */
const NAMES = Object.getOwnPropertyNames(Object.prototype);
const pgUrl = process.env.CREDIT_PG_URL;
const mongoUri = process.env.CREDIT_MONGO_URI;
const dir = mkdtempSync(join(tmpdir(), "cm-proto-"));
const mongo = mongoUri === undefined ? null : new MongoClient(mongoUri);
/** What the stores made here leave behind: their PostgreSQL schemas and MongoDB databases, dropped at the end. */
const schemas: string[] = [];
const databases: string[] = [];
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  if (pgUrl !== undefined && schemas.length > 0) {
    const client = new pg.Client({ connectionString: pgUrl });
    await client.connect();
    for (const s of schemas) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    await client.end();
  }
  for (const d of databases) await mongo?.db(d).dropDatabase();
  await mongo?.close();
});
/** A fresh name, kept in `list` to be dropped. */
const fresh = (list: string[]) => {
  const name = `cm_proto_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  list.push(name);
  return name;
};

/** `Bearer <userId>[/<spender>]`; `Bearer admin:<id>` is an admin. */
const authenticate = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  if (token.startsWith("admin:")) return { userId: token, admin: true };
  const slash = token.indexOf("/");
  return slash < 0 ? { userId: token } : { userId: token.slice(0, slash), spender: token.slice(slash + 1) };
};
const ADMIN = "admin:ops";

const stores: Array<[string, (() => DbManager) | null]> = [
  ["memory", () => new InMemoryDbManager()],
  ["sqlite", () => new SqliteDbManager({ filename: join(dir, `${randomUUID()}.db`) })],
  [
    "postgres",
    pgUrl === undefined ? null : () => new PostgresDbManager({ connectionString: pgUrl, schema: fresh(schemas) }),
  ],
  ["mongodb", mongo === null ? null : () => new MongoDbManager({ client: mongo, dbName: fresh(databases) })],
];

for (const [name, make] of stores) {
  describe.skipIf(make === null)(`Object.prototype names over HTTP: ${name}`, () => {
    it("a unit, feature, spender, limit, plan id and promo code named like a member of Object.prototype", async () => {
      const features = Object.fromEntries(NAMES.map((n) => [n, { minAvailable: 1 }]));
      const m = await createCreditManager({ db: (make as () => DbManager)(), features });
      try {
        const handler = createCreditHandler(m, { authenticate });
        const call = async (method: string, path: string, who: string, body?: unknown) => {
          const res = await handler(
            new Request(`http://test${path}`, {
              method,
              headers: {
                authorization: `Bearer ${who}`,
                ...(body === undefined ? {} : { "content-type": "application/json" }),
              },
              ...(body === undefined ? {} : { body: JSON.stringify(body) }),
            }),
          );
          const text = await res.text();
          return { status: res.status, body: text === "" ? null : JSON.parse(text) };
        };
        const q = encodeURIComponent;
        const u = `acme-${randomUUID()}`;

        // The unit "constructor" (the one member the unit pattern takes) is a unit of its own.
        expect((await call("GET", `/credits/check?unit=constructor&amount=50`, u)).body).toMatchObject({
          allowed: false,
          available: 0,
        });
        await call("POST", `/admin/credits/users/${u}/add`, ADMIN, { amount: 1000 });
        expect((await call("GET", `/credits/check?unit=constructor&amount=50`, u)).body).toMatchObject({
          allowed: false,
          available: 0,
        });
        expect(
          (await call("POST", `/admin/credits/users/${u}/add`, ADMIN, { amount: 60, unit: "constructor" })).status,
        ).toBe(201);
        expect((await call("GET", `/credits/check?unit=constructor&amount=50`, u)).body).toMatchObject({
          allowed: true,
          available: 60,
        });
        const deducted = await call("POST", `/admin/credits/users/${u}/deduct`, ADMIN, {
          amount: 20,
          unit: "constructor",
        });
        expect(deducted.body).toMatchObject({ unit: "constructor", balanceAfter: 40 });
        expect((await call("GET", `/credits/balance?unit=constructor`, u)).body).toMatchObject({
          balance: 40,
          available: 40,
        });
        expect((await call("GET", `/credits/balance`, u)).body).toMatchObject({ balance: 1000 });
        for (const n of NAMES.filter((n) => n !== "constructor"))
          expect((await call("GET", `/credits/check?unit=${q(n)}&amount=1`, u)).status).toBe(400);

        // Every name as a feature (with its rule), a spender (a member's key), and a spender's limit.
        for (const n of NAMES) {
          expect((await call("GET", `/credits/check?feature=${q(n)}&amount=1`, u)).body).toMatchObject({
            allowed: true,
          });
          const member = `${u}/${n}`;
          const held = await call("POST", `/credits/reservations`, member, { amount: 1, feature: n });
          expect(held.status).toBe(201);
          expect(held.body).toMatchObject({ spender: n, feature: n });
          await call("POST", `/admin/credits/users/${u}/limits/set`, ADMIN, {
            limit: { spender: n, amount: 0, period: "day" },
          });
          expect((await call("POST", `/credits/reservations`, member, { amount: 1, feature: n })).status).toBe(429);
          expect((await call("GET", `/credits/check?feature=${q(n)}&amount=1`, member)).body).toMatchObject({
            allowed: false,
            reason: "limit",
          });
        }
        expect((await call("GET", `/admin/credits/users/${u}/limits`, ADMIN)).body.items).toHaveLength(NAMES.length);

        // Plan ids: unknown until created, then found; promo codes: created and claimed.
        for (const n of NAMES) {
          expect((await call("GET", `/credits/plans/${q(n)}`, u)).status).toBe(404);
          const plan = await call("POST", `/admin/credits/plans`, ADMIN, {
            id: n,
            name: n,
            creditsPerPeriod: 10,
            billingPeriod: "monthly",
          });
          expect(plan.status).toBe(201);
          expect((await call("GET", `/credits/plans/${q(n)}`, u)).body).toMatchObject({ id: n });
          expect((await call("GET", `/credits/promo/eligibility?promo_code=${q(n)}`, u)).body).toMatchObject({
            eligible: false,
          });
          expect((await call("POST", `/admin/credits/promos`, ADMIN, { code: n, credits: 1 })).status).toBe(201);
          expect((await call("POST", `/credits/promo/claim`, u, { promo_code: n })).status).toBe(201);
        }
        expect((await call("GET", `/credits/plans`, u)).body.items).toHaveLength(NAMES.length);

        const audit = await call("GET", `/admin/credits/users/${u}/audit?from=genesis`, ADMIN);
        expect(audit.body).toMatchObject({ ok: true, problems: [] });
      } finally {
        await m.close();
      }
    }, 120_000);
  });
}
