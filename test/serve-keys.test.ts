import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { mongoKeyStore, newKey, postgresKeyStore, sqliteKeyStore, type KeyStore } from "../src/serve/keys.js";
import { memoryKeyStore } from "./memory-key-store.js";

/** The key stores of `serve` (docs/service.md, "Secure it"): one contract, every store. */

const dir = mkdtempSync(join(tmpdir(), "serve-keys-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pgUrl = process.env.CREDIT_PG_URL;
const stores: [string, () => KeyStore | null][] = [
  ["memory", () => memoryKeyStore()],
  ["SQLite", () => sqliteKeyStore(new Database(join(dir, "keys.sqlite")))],
  [
    "PostgreSQL",
    () =>
      pgUrl === undefined
        ? null
        : postgresKeyStore(new pg.Pool({ connectionString: pgUrl, max: 2 }), `keys_${process.pid}`),
  ],
];

describe.each(stores)("serve's keys on %s", (name, make) => {
  // reason: PostgreSQL is only reachable when CREDIT_PG_URL is set (CI sets it)
  it.skipIf(name === "PostgreSQL" && pgUrl === undefined)(
    "stores, finds and lists keys; revokes an active key once, and never an unknown one",
    async () => {
      const keys = make() as KeyStore;
      await keys.init();
      await keys.init(); // again: the table is there already
      try {
        const admin = newKey("admin", null, "ops");
        const alice = newKey("user", "alice", null);
        await keys.insert(admin.record);
        await keys.insert(alice.record);
        expect(await keys.get(alice.record.id)).toEqual(alice.record);
        expect(await keys.get("0000000000000000")).toBeNull();
        expect((await keys.list()).map((r) => r.id).sort()).toEqual([admin.record.id, alice.record.id].sort());
        const at = new Date().toISOString();
        expect(await keys.revoke(alice.record.id, at)).toBe(true);
        // Revoked already: the first revocation's time stays.
        expect(await keys.revoke(alice.record.id, new Date(Date.now() + 1000).toISOString())).toBe(false);
        expect(await keys.revoke("0000000000000000", at)).toBe(false);
        expect((await keys.get(alice.record.id))?.revokedAt).toBe(at);
        expect((await keys.get(admin.record.id))?.revokedAt).toBeNull();

        // A member's key: bound to its account and a spender (docs/teams-and-limits.md).
        const bob = newKey("user", "acme", "Bob's laptop", "bob");
        await keys.insert(bob.record);
        expect(await keys.get(bob.record.id)).toEqual(bob.record);
        expect(bob.record.spender).toBe("bob");
        expect((await keys.get(alice.record.id))?.spender).toBeNull();
      } finally {
        if (name === "PostgreSQL") {
          const pool = new pg.Pool({ connectionString: pgUrl, max: 1 });
          await pool.query(`DROP SCHEMA "keys_${process.pid}" CASCADE`);
          await pool.end();
        }
        await keys.close();
      }
    },
  );
});

/** The key table's layout before keys had a spender (the release before spend limits). */
const OLD_CREATE = (table: string) =>
  `CREATE TABLE ${table} (id VARCHAR(32) PRIMARY KEY, hash VARCHAR(64) NOT NULL, role VARCHAR(8) NOT NULL, user_id VARCHAR(256), name VARCHAR(256), created_at VARCHAR(32) NOT NULL, revoked_at VARCHAR(32))`;
const OLD_ROW = ["00112233445566aa", "ab".repeat(32), "user", "acme", "old", new Date().toISOString(), null];

describe("a key table made before keys had a spender", () => {
  it("SQLite: init adds the column; the keys created before read as spender absent", async () => {
    const file = join(dir, "old-keys.sqlite");
    const raw = new Database(file);
    raw.exec(OLD_CREATE("credit_api_keys"));
    raw.prepare("INSERT INTO credit_api_keys VALUES (?, ?, ?, ?, ?, ?, ?)").run(...OLD_ROW);
    raw.close();
    const keys = sqliteKeyStore(new Database(file));
    await keys.init();
    await keys.init(); // the column is there already
    try {
      expect(await keys.get("00112233445566aa")).toMatchObject({ userId: "acme", spender: null, name: "old" });
      const bob = newKey("user", "acme", null, "bob");
      await keys.insert(bob.record);
      expect((await keys.get(bob.record.id))?.spender).toBe("bob");
    } finally {
      await keys.close();
    }
  });

  // reason: PostgreSQL is only reachable when CREDIT_PG_URL is set (CI sets it)
  it.skipIf(pgUrl === undefined)("PostgreSQL: two services starting at once both add the column, once", async () => {
    const schema = `old_keys_${process.pid}`;
    const admin = new pg.Pool({ connectionString: pgUrl, max: 1 });
    await admin.query(`CREATE SCHEMA "${schema}"`);
    const a = postgresKeyStore(new pg.Pool({ connectionString: pgUrl, max: 2 }), schema);
    const b = postgresKeyStore(new pg.Pool({ connectionString: pgUrl, max: 2 }), schema);
    try {
      await admin.query(OLD_CREATE(`"${schema}".credit_api_keys`));
      await admin.query(`INSERT INTO "${schema}".credit_api_keys VALUES ($1, $2, $3, $4, $5, $6, $7)`, OLD_ROW);
      await Promise.all([a.init(), b.init()]);
      expect(await a.get("00112233445566aa")).toMatchObject({ userId: "acme", spender: null });
      const bob = newKey("user", "acme", null, "bob");
      await b.insert(bob.record);
      expect((await a.get(bob.record.id))?.spender).toBe("bob");
    } finally {
      await a.close();
      await b.close();
      await admin.query(`DROP SCHEMA "${schema}" CASCADE`);
      await admin.end();
    }
  });

  it("MongoDB: a document without the field reads as spender absent", async () => {
    const docs = new Map<string, Record<string, unknown>>([
      [
        "00112233445566aa",
        {
          _id: "00112233445566aa",
          hash: "ab".repeat(32),
          role: "user",
          user_id: "acme",
          name: null,
          created_at: new Date().toISOString(),
          revoked_at: null,
        },
      ],
    ]);
    const keys = mongoKeyStore(
      {
        createIndex: async () => undefined,
        insertOne: async (d) => void docs.set(d._id as string, d),
        findOne: async (f) => docs.get(f._id as string) ?? null,
        find: () => ({ sort: () => ({ toArray: async () => [...docs.values()] }) }),
        updateOne: async () => ({ modifiedCount: 0 }),
      },
      async () => undefined,
    );
    expect(await keys.get("00112233445566aa")).toMatchObject({ userId: "acme", spender: null });
    const bob = newKey("user", "acme", null, "bob");
    await keys.insert(bob.record);
    expect(await keys.get(bob.record.id)).toEqual(bob.record);
  });
});
