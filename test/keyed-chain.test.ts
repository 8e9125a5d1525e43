// A keyed chain (docs/concepts.md, "A keyed chain"): with `journalKeys`, each entry's hash is an
// HMAC-SHA256 under a key kept outside the database, so someone who can write the database and
// rewrites an entry — recomputing every plain hash after it, as they can without a key — is found
// by audit(); a chain head kept elsewhere finds the journal rewritten or cut up to it. On every
// store, with the rows rewritten by the store's own driver.
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { type Db, MongoClient } from "mongodb";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { hashEntry, hashNewEntry } from "../src/core/domain/hash.js";
import { CoreInMemoryDbManager } from "../src/core/db/memory/index.js";
import { MongoDbManager } from "../src/db/mongodb/index.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { ConfigurationError, CreditService, ValidationError, createCreditManager } from "../src/index.js";
import type { DbManager } from "../src/store.js";
import type { JournalEntry } from "../src/models-public.js";
import { quoteIdent } from "../src/schema/sql.js";

const PG_URL = process.env.CREDIT_PG_URL;
const MONGO_URI = process.env.CREDIT_MONGO_URI;

const K1 = randomBytes(32);
const K2 = randomBytes(32).toString("base64");
const keys = { current: "k1", keys: { k1: K1 } };

/** A store, and how its own driver rewrites an account's entries (and the account's last hash) or removes one. */
interface Raw {
  db: DbManager;
  write(user: string, entries: readonly JournalEntry[]): Promise<void>;
  remove(user: string, seq: number): Promise<void>;
  /** Sets a stored grant's scope (JSON). */
  scope(user: string, grantId: string, scope: unknown): Promise<void>;
  close(): Promise<void>;
}

const stores: Record<string, () => Promise<Raw>> = {
  memory: async () => {
    const db = new CoreInMemoryDbManager();
    // The store's own rows (private: only a test reaches them, as a database writer would its tables).
    type Rows = { journal: JournalEntry[]; account: { lastHash: string }; grants: Map<string, { scope: unknown }> };
    const rows = (u: string) => (db as unknown as { accounts: Map<string, Rows> }).accounts.get(u)!;
    return {
      db,
      write: async (u, entries) => {
        const r = rows(u);
        for (const e of entries) r.journal[e.seq - 1] = { ...e };
        r.account.lastHash = r.journal[r.journal.length - 1]!.hash;
      },
      remove: async (u, seq) => {
        rows(u).journal.splice(seq - 1, 1);
      },
      scope: async (u, id, scope) => {
        rows(u).grants.get(id)!.scope = scope;
      },
      close: async () => undefined,
    };
  },
  sqlite: async () => {
    const dir = mkdtempSync(join(tmpdir(), "cm-keyed-"));
    const filename = join(dir, "store.db");
    const db = new SqliteDbManager({ filename });
    await db.init();
    const raw = new Database(filename);
    return {
      db,
      write: async (u, entries) => {
        const set = raw.prepare(
          "UPDATE journal_entries SET amount = ?, description = ?, key_id = ?, prev_hash = ?, hash = ? WHERE user_id = ? AND seq = ?",
        );
        for (const e of entries) set.run(e.amount, e.description, e.keyId ?? null, e.prevHash, e.hash, u, e.seq);
        raw.prepare("UPDATE accounts SET last_hash = ? WHERE user_id = ?").run(entries.at(-1)!.hash, u);
      },
      remove: async (u, seq) => {
        raw.prepare("DELETE FROM journal_entries WHERE user_id = ? AND seq = ?").run(u, seq);
      },
      scope: async (_u, id, scope) => {
        raw.prepare("UPDATE grants SET scope = ? WHERE id = ?").run(JSON.stringify(scope), id);
      },
      close: async () => {
        raw.close();
        await db.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  ...(PG_URL === undefined
    ? {}
    : {
        postgres: async (): Promise<Raw> => {
          const schema = `cm_keyed_${randomUUID().replace(/-/g, "").slice(0, 8)}`;
          const db = new PostgresDbManager({ connectionString: PG_URL, schema });
          await db.init();
          const client = new pg.Client({ connectionString: PG_URL });
          await client.connect();
          const t = (n: string) => `${quoteIdent("postgres", schema)}.${n}`;
          return {
            db,
            write: async (u, entries) => {
              for (const e of entries)
                await client.query(
                  `UPDATE ${t("journal_entries")} SET amount = $1, description = $2, key_id = $3, prev_hash = decode($4, 'hex'), hash = decode($5, 'hex') WHERE user_id = $6 AND seq = $7`,
                  [e.amount, e.description, e.keyId ?? null, e.prevHash, e.hash, u, e.seq],
                );
              await client.query(`UPDATE ${t("accounts")} SET last_hash = $1 WHERE user_id = $2`, [
                entries.at(-1)!.hash,
                u,
              ]);
            },
            remove: async (u, seq) => {
              await client.query(`DELETE FROM ${t("journal_entries")} WHERE user_id = $1 AND seq = $2`, [u, seq]);
            },
            scope: async (_u, id, scope) => {
              await client.query(`UPDATE ${t("grants")} SET scope = $1::jsonb WHERE id = $2`, [
                JSON.stringify(scope),
                id,
              ]);
            },
            close: async () => {
              await db.close();
              await client.query(`DROP SCHEMA IF EXISTS ${quoteIdent("postgres", schema)} CASCADE`);
              await client.end();
            },
          };
        },
      }),
  ...(MONGO_URI === undefined
    ? {}
    : {
        mongodb: async (): Promise<Raw> => {
          const client = await new MongoClient(MONGO_URI).connect();
          const mdb: Db = client.db(`cm_keyed_${process.pid}_${randomUUID().slice(0, 8)}`);
          const db = new MongoDbManager({ db: mdb, collectionPrefix: "cm_" });
          await db.init();
          const journal = mdb.collection("cm_journal");
          return {
            db,
            write: async (u, entries) => {
              for (const e of entries)
                await journal.updateOne(
                  { userId: u, seq: e.seq },
                  {
                    $set: {
                      amount: e.amount,
                      description: e.description,
                      prevHash: e.prevHash,
                      hash: e.hash,
                      ...(e.keyId == null ? {} : { keyId: e.keyId }),
                    },
                    ...(e.keyId == null ? { $unset: { keyId: "" } } : {}),
                  },
                );
              await mdb
                .collection("cm_accounts")
                .updateOne({ _id: u as never }, { $set: { lastHash: entries.at(-1)!.hash } });
            },
            remove: async (u, seq) => {
              await journal.deleteOne({ userId: u, seq });
            },
            scope: async (_u, id, scope) => {
              await mdb.collection("cm_grants").updateOne({ _id: id as never }, { $set: { scope } });
            },
            close: async () => {
              await db.close();
              await mdb.dropDatabase().catch(() => undefined);
              await client.close();
            },
          };
        },
      }),
};

/**
 * The entries from `from` on as someone without the key writes them: `change` applied to the entry
 * at `from`, then every hash after it recomputed as plain SHA-256 (with `unkey`: the key id dropped too).
 */
function rewritten(
  entries: readonly JournalEntry[],
  from: number,
  change: (e: JournalEntry) => JournalEntry,
  unkey: boolean,
): JournalEntry[] {
  const out: JournalEntry[] = [];
  let prevHash = entries[from - 2]?.hash ?? null;
  for (const e of entries.slice(from - 1)) {
    const changed = e.seq === from ? change(e) : e;
    const { hash: _, ...rest } = { ...changed, prevHash, ...(unkey ? { keyId: null } : {}) };
    // Plain SHA-256 of the entry as stored (its key id kept or dropped): all a writer without the key can do.
    const hash = hashNewEntry(rest).hash;
    out.push({ ...rest, hash });
    prevHash = hash;
  }
  return out;
}

/** Four entries: an addition, three spends. */
async function fund(credits: CreditService, u: string): Promise<JournalEntry[]> {
  await credits.addCredits(u, 100);
  await credits.deductCredits(u, 10, { description: "chat" });
  await credits.deductCredits(u, 20, { description: "images" });
  await credits.deductCredits(u, 5, { description: "chat" });
  return (await credits.getCreditHistory(u, { limit: 10 })).items.reverse();
}

for (const [name, open] of Object.entries(stores)) {
  describe(`a keyed chain: ${name}`, () => {
    const opened: Raw[] = [];
    const store = async () => {
      const raw = await open();
      opened.push(raw);
      return raw;
    };
    afterAll(async () => {
      for (const raw of opened) await raw.close();
    });

    it("signs new entries with the current key; a rewrite with the plain chain recomputed after it is found, with or without the key id", async () => {
      const raw = await store();
      const credits = new CreditService({ db: raw.db, journalKeys: keys });
      for (const [u, unkey] of [
        [`kept-${randomUUID()}`, false],
        [`dropped-${randomUUID()}`, true],
      ] as const) {
        const entries = await fund(credits, u);
        expect(entries.map((e) => [e.keyId, e.hashVersion])).toEqual(Array(4).fill(["k1", 2]));
        expect((await credits.audit(u, { from: "genesis" })).problems).toEqual([]);
        // The description of entry 2 changed (nothing the replay's sums see), the plain chain recomputed.
        await raw.write(
          u,
          rewritten(entries, 2, (e) => ({ ...e, description: "images" }), unkey),
        );
        const { problems } = await credits.audit(u, { from: "genesis" });
        expect(problems).toContain(
          unkey
            ? "entry 2 is not keyed, though entry 1 before it is: written again without the key"
            : "entry 2 was altered: its hash does not match its content",
        );
        // The account still records its keyed head, which the rewritten journal no longer ends with.
        if (unkey) expect(problems).toContain("stored lastKeyId is not the key id of the last entry");
      }
      // The same rewrite of an unkeyed chain is invisible to its audit: what the key buys.
      const plain = new CreditService({ db: raw.db });
      const u = `plain-${randomUUID()}`;
      const entries = await fund(plain, u);
      await raw.write(
        u,
        rewritten(entries, 2, (e) => ({ ...e, description: "images" }), true),
      );
      expect((await plain.audit(u, { from: "genesis" })).problems).toEqual([]);
    });

    it("a rewritten amount with the plain chain recomputed: the keyed audit names the entry", async () => {
      const raw = await store();
      const credits = new CreditService({ db: raw.db, journalKeys: keys });
      const u = `amount-${randomUUID()}`;
      const entries = await fund(credits, u);
      await raw.write(
        u,
        rewritten(entries, 3, (e) => ({ ...e, amount: 2 }), false),
      );
      const { problems } = await credits.audit(u, { from: "genesis" });
      expect(problems).toContain("entry 3 was altered: its hash does not match its content");
      expect(problems).toContain("entry 4 was altered: its hash does not match its content");
    });

    it("rotation: entries keep the key they were signed with; a key an entry names that is not given is a clear error", async () => {
      const raw = await store();
      const u = `rotate-${randomUUID()}`;
      await new CreditService({ db: raw.db, journalKeys: keys }).addCredits(u, 10);
      const rotated = new CreditService({ db: raw.db, journalKeys: { current: "k2", keys: { k1: K1, k2: K2 } } });
      await rotated.deductCredits(u, 3);
      const history = (await rotated.getCreditHistory(u)).items.reverse();
      expect(history.map((e) => e.keyId)).toEqual(["k1", "k2"]);
      expect((await rotated.audit(u)).problems).toEqual([]);
      const withoutK1 = new CreditService({ db: raw.db, journalKeys: { current: "k2", keys: { k2: K2 } } });
      // A key the manager does not hold: a problem of the account, with its kind, not an error.
      const report = await withoutK1.audit(u);
      expect(report.ok).toBe(false);
      expect(report.issues).toEqual([
        { kind: "unknown key", keyId: "k1", seq: 1, entries: 1, message: expect.stringMatching(/journal key "k1"/) },
      ]);
      expect(report.problems).toEqual([report.issues![0]!.message]);
      expect(report.balance).toBe(7);
      const none = await new CreditService({ db: raw.db }).audit(u);
      expect(none.issues?.map((i) => [i.kind, i.keyId, i.entries])).toEqual([
        ["unknown key", "k1", 1],
        ["unknown key", "k2", 1],
      ]);
    });

    it("a manager without keys refuses to write after a keyed entry: a ConfigurationError naming the account and the key, nothing written", async () => {
      const raw = await store();
      const keyed = new CreditService({ db: raw.db, journalKeys: keys });
      // A replica started without the keys.
      const plain = new CreditService({ db: raw.db });
      const u = `replica-${randomUUID()}`;
      await fund(keyed, u);
      const hold = await keyed.reserveCredits(u, 5);
      const before = (await keyed.getCreditHistory(u, { limit: 10 })).items;
      const account = await raw.db.getAccount(u);
      expect(account?.lastKeyId).toBe("k1");
      const refusal = new RegExp(
        `account "${u}" has a keyed journal: its latest entry is signed with the journal key "k1"`,
      );
      for (const write of [
        () => plain.deductCredits(u, 1),
        () => plain.addCredits(u, 10),
        () => plain.reserveCredits(u, 1),
        () => plain.commitReservedCredits(hold.id),
        () => plain.checkpoint(u),
      ]) {
        const refused = write();
        await expect(refused).rejects.toThrow(ConfigurationError);
        await expect(refused).rejects.toThrow(refusal);
      }
      expect((await plain.getCreditHistory(u, { limit: 10 })).items).toEqual(before);
      expect(await raw.db.getAccount(u)).toEqual(account);
      expect((await keyed.audit(u, { from: "genesis" })).problems).toEqual([]);
      // The keyed manager goes on; a rotated key is recorded as the head's.
      await new CreditService({ db: raw.db, journalKeys: { current: "k2", keys: { k1: K1, k2: K2 } } }).deductCredits(
        u,
        1,
      );
      expect((await raw.db.getAccount(u))?.lastKeyId).toBe("k2");
      await expect(plain.deductCredits(u, 1)).rejects.toThrow(/journal key "k2"/);

      // An unkeyed account: the manager without keys writes as before, until a keyed entry.
      const v = `unkeyed-${randomUUID()}`;
      await plain.addCredits(v, 10);
      await plain.deductCredits(v, 1);
      expect((await raw.db.getAccount(v))?.lastKeyId ?? null).toBeNull();
      await keyed.deductCredits(v, 1);
      expect((await raw.db.getAccount(v))?.lastKeyId).toBe("k1");
      await expect(plain.deductCredits(v, 1)).rejects.toThrow(ConfigurationError);
      const report = await keyed.audit(v, { from: "genesis" });
      expect(report.problems).toEqual([]);
      expect(report.balance).toBe(8);
    });

    it("a scoped grant's scope is in its add entry's hash: the stored grant's scope is checked against it", async () => {
      const raw = await store();
      const credits = new CreditService({ db: raw.db, journalKeys: keys });
      const u = `scope-${randomUUID()}`;
      const add = await credits.addCredits(u, 50, { scope: { features: ["images"] } });
      expect(add.scope).toEqual({ features: ["images"] });
      expect((await credits.getCreditHistory(u)).items[0]!.scope).toEqual({ features: ["images"] });
      expect((await credits.audit(u)).problems).toEqual([]);
      const grantId = add.grants[0]!.grantId;
      await raw.scope(u, grantId, { features: ["images", "chat"] });
      expect((await credits.audit(u)).problems).toContain(
        `grant ${grantId}'s scope is not the one its add entry recorded`,
      );
      // The entry's own scope changed: its hash no longer matches.
      const { hash, ...entry } = (await credits.getCreditHistory(u)).items[0]!;
      await raw.scope(u, grantId, { features: ["images"] });
      expect(hashEntry({ ...entry, scope: { features: ["chat"] } }, new Map([["k1", K1]]))).not.toBe(hash);
      expect((await credits.audit(u)).ok).toBe(true);
    });

    it("a head kept elsewhere: audit against it finds the journal rewritten or cut up to its seq", async () => {
      const raw = await store();
      // Unkeyed, where a rewrite with the chain recomputed is otherwise invisible.
      const credits = new CreditService({ db: raw.db });
      const u = `head-${randomUUID()}`;
      const entries = await fund(credits, u);
      const head = await credits.journalHead(u);
      expect(head).toEqual({ userId: u, seq: 4, hash: entries[3]!.hash });
      expect((await credits.audit(u, { head: head! })).problems).toEqual([]);
      // Later entries are fine: the journal still reaches the head.
      await credits.deductCredits(u, 1);
      expect((await credits.audit(u, { head: head! })).ok).toBe(true);
      const all = (await credits.getCreditHistory(u, { limit: 10 })).items.reverse();
      await raw.write(
        u,
        rewritten(all, 2, (e) => ({ ...e, description: "images" }), true),
      );
      expect((await credits.audit(u, { head: head! })).problems).toEqual([
        "entry 4 does not have the hash of the head kept: the journal up to it was rewritten",
      ]);
      // Cut: the last entries removed.
      const v = `cut-${randomUUID()}`;
      await fund(credits, v);
      const kept = (await credits.journalHead(v))!;
      await raw.remove(v, 4);
      expect((await credits.audit(v, { head: kept })).problems[0]).toBe(
        "the journal ends at seq 3, before the head kept at seq 4: entries were removed",
      );
      // Another account's head, or one that is no head, is refused.
      await expect(credits.audit(u, { head: kept })).rejects.toThrow(ValidationError);
      await expect(credits.audit(u, { head: { ...kept, hash: "x" } as never })).rejects.toThrow(ValidationError);
      expect(await credits.journalHead(`none-${randomUUID()}`)).toBeNull();
    });
  });
}

describe("journalKeys options", () => {
  it("are validated: key ids, key length, current among keys", async () => {
    const db = new CoreInMemoryDbManager();
    for (const bad of [
      { current: "k1", keys: { k1: "short" } },
      { current: "k2", keys: { k1: K1 } },
      { current: "k 1", keys: { "k 1": K1 } },
      { current: "k1", keys: { k1: new Uint8Array(8) } },
      { current: "k1" },
    ]) {
      expect(() => new CreditService({ db, journalKeys: bad as never })).toThrow(ConfigurationError);
      await expect(createCreditManager({ db, journalKeys: bad as never })).rejects.toThrow(/journalKeys/);
    }
    const m = await createCreditManager({ db, journalKeys: { current: "a.1", keys: { "a.1": "x".repeat(32) } } });
    expect((await m.credits.addCredits("u", 1)).keyId).toBe("a.1");
    expect((await m.credits.audit("u")).ok).toBe(true);
  });
});
