import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { memoryKeyStore, newKey, postgresKeyStore, sqliteKeyStore, type KeyStore } from "../src/serve/keys.js";

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
