import { mkdtempSync, rmSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DbManager } from "../src/core/db/types.js";
import { InMemoryDbManager } from "../src/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import type { MongoClient } from "mongodb";
import { runContractPart } from "../src/testing/index.js";

// The units part of the contract suite on every store, with two managers over one store: what
// `runDbManagerContract` runs among its parts, here on its own so that a change to units runs in
// seconds (docs/units.md).
const test = { describe, it, expect, beforeAll, afterAll };

/** Runs the units part over `make()` and a second manager `make()` over the same store. */
function onStore(name: string, make: () => Promise<DbManager>, destroy?: () => Promise<void>) {
  describe(`units: ${name}, two managers`, () => {
    let db: DbManager;
    let peer: DbManager;
    beforeAll(async () => {
      db = await make();
      await db.init();
      peer = name === "memory" ? db : await make();
      if (peer !== db) await peer.init();
    });
    afterAll(async () => {
      if (peer !== db) await peer.close();
      await db.close();
      await destroy?.();
    });
    runContractPart("units", () => db, { getPeer: () => peer, test });
  });
}

onStore("memory", async () => new InMemoryDbManager());

const dir = mkdtempSync(join(tmpdir(), "cm-units-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
onStore("sqlite", async () => new SqliteDbManager({ filename: join(dir, "units.db") }));

const pgUrl = process.env.CREDIT_PG_URL;
const pgSchema = `units_${process.pid}_${randomUUID().slice(0, 8)}`;
// reason: needs its database URL (CREDIT_PG_URL)
if (pgUrl !== undefined)
  onStore(
    "postgres",
    async () => new PostgresDbManager({ connectionString: pgUrl, schema: pgSchema, poolConfig: { max: 4 } }),
    async () => {
      const { default: pg } = await import("pg");
      const client = new pg.Client({ connectionString: pgUrl });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${pgSchema}" CASCADE`);
      await client.end();
    },
  );

const mongoUri = process.env.CREDIT_MONGO_URI;
const mongoDb = `credit_units_${process.pid}_${randomUUID().slice(0, 8)}`;
// reason: needs a MongoDB-compatible server (CREDIT_MONGO_URI)
if (mongoUri !== undefined) {
  const clients: MongoClient[] = [];
  onStore(
    "mongodb",
    async () => {
      const { MongoClient } = await import("mongodb");
      const client = new MongoClient(mongoUri);
      await client.connect();
      clients.push(client);
      return new MongoDbManager({ client, dbName: mongoDb });
    },
    async () => {
      await clients[0]?.db(mongoDb).dropDatabase();
      for (const c of clients) await c.close();
    },
  );
}

describe("units in domain events", () => {
  it("names the unit in the payload of an entry in another unit than the default one, and none otherwise", async () => {
    const { CreditService } = await import("../src/index.js");
    const { DomainEvent } = await import("../src/core/models/index.js");
    const db = new InMemoryDbManager();
    const credits = new CreditService({ db, domainEvents: true });
    await credits.addCredits("u", 10);
    await credits.addCredits("u", 5, { unit: "images" });
    await credits.deductCredits("u", 2, { unit: "images" });
    await credits.deductCredits("u", 3);
    const rows = (await db.listNotifications("u", { limit: 50 })).filter((n) => n.type.startsWith("credits_"));
    const seen = rows.map((n) => {
      const event = DomainEvent.parse({
        type: n.type,
        version: 1,
        id: n.id,
        userId: "u",
        occurredAt: n.createdAt.toISOString(),
        payload: n.payload,
      });
      const payload = event.payload as { unit?: string; amount: number; balanceAfter: number };
      return [n.type, payload.unit ?? null, payload.amount, payload.balanceAfter];
    });
    expect(seen).toEqual([
      ["credits_added", null, 10, 10],
      ["credits_added", "images", 5, 5],
      ["credits_deducted", "images", 2, 3],
      ["credits_deducted", null, 3, 7],
    ]);
  });
});
