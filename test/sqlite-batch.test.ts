import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { SqliteDbManager, type SqliteDatabase } from "../src/db/sqlite/index.js";
import { CreditService } from "../src/credit-service.js";
import {
  ConfigurationError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  StorageError,
} from "../src/core/errors.js";

// Group commit on SQLite (docs/storage.md, SQLite, "Group commit"): the writes of units of
// work on different accounts committing in the same turn share one write transaction.

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-batch-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A better-sqlite3 database on `file` that counts the write transactions begun on it (not savepoints). */
function counted(file: string): { database: SqliteDatabase; raw: Database.Database; writes: () => number } {
  const raw = new Database(file);
  let writes = 0;
  const database = new Proxy(raw, {
    get(target, key) {
      if (key === "transaction") {
        return (fn: () => unknown) => {
          const t = target.transaction(fn);
          const immediate = t.immediate;
          return Object.assign((...args: []) => t(...args), {
            immediate: (...args: []) => {
              if (!target.inTransaction) writes++;
              return immediate(...args);
            },
          });
        };
      }
      const value = Reflect.get(target, key, target) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as unknown as SqliteDatabase;
  return { database, raw, writes: () => writes };
}

const open: Array<{ db: SqliteDbManager; raw: Database.Database }> = [];
afterEach(async () => {
  for (const { db, raw } of open.splice(0)) {
    await db.close();
    raw.close();
  }
});

let files = 0;
async function store(options: { batch?: false | { maxUnits?: number } } = {}) {
  const c = counted(join(dir, `batch-${++files}.db`));
  const db = new SqliteDbManager({ database: c.database, ...options });
  open.push({ db, raw: c.raw });
  await db.init();
  return { db, raw: c.raw, writes: c.writes, credits: new CreditService({ db }) };
}

describe("SqliteDbManager group commit", () => {
  it("commits the units of work started together in one write transaction; a refused one writes nothing", async () => {
    const { credits, writes } = await store();
    const users = Array.from({ length: 20 }, (_, i) => `b-${i}`);
    await Promise.all(users.map((u, i) => (i % 2 === 0 ? credits.addCredits(u, 10) : Promise.resolve())));
    const before = writes();
    const results = await Promise.allSettled(users.map((u) => credits.deductCredits(u, 4)));
    expect(writes() - before).toBe(1);
    results.forEach((r, i) => {
      if (i % 2 === 0) expect(r.status).toBe("fulfilled");
      else expect(r.status === "rejected" && r.reason).toBeInstanceOf(InsufficientCreditsError);
    });
    for (const [i, u] of users.entries()) {
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: i % 2 === 0 ? 6 : 0 });
      expect((await credits.audit(u)).ok).toBe(true);
    }
  });

  it("a unit whose write fails gets its own error and writes nothing; the rest of its batch commits", async () => {
    const { db, raw, credits, writes } = await store();
    const users = Array.from({ length: 8 }, (_, i) => `f-${i}`);
    await Promise.all(users.map((u) => credits.addCredits(u, 10)));
    raw.exec(
      "CREATE TRIGGER refuse BEFORE INSERT ON journal_entries WHEN NEW.description = 'refused' " +
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
    );
    const before = writes();
    const results = await Promise.allSettled(
      users.map((u, i) => credits.addCredits(u, 5, { description: i === 3 ? "refused" : "fine" })),
    );
    expect(writes() - before).toBe(1);
    results.forEach((r, i) => {
      if (i === 3) expect(r.status === "rejected" && r.reason).toBeInstanceOf(StorageError);
      else expect(r.status).toBe("fulfilled");
    });
    for (const [i, u] of users.entries()) {
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: i === 3 ? 10 : 15 });
      const journal = await db.listJournal(u, { order: "asc", limit: 10 });
      expect(journal.map((e) => e.seq)).toEqual(i === 3 ? [1] : [1, 2]);
      expect((await credits.audit(u)).ok).toBe(true);
    }
    // Nothing of the refused unit is left: its account row and its rollup are as before.
    expect(raw.prepare("SELECT balance, seq FROM accounts WHERE user_id = ?").get("f-3")).toEqual({
      balance: 10,
      seq: 1,
    });
  });

  it("idempotency keys in one batch: each applies once, and the same key sent again answers the first entry", async () => {
    const { db, credits, writes } = await store();
    const users = Array.from({ length: 10 }, (_, i) => `k-${i}`);
    const before = writes();
    const first = await Promise.all(users.map((u) => credits.addCredits(u, 5, { idempotencyKey: "same" })));
    expect(writes() - before).toBe(1);
    // Each key again, twice at once, beside a new key: the first entries, and the new one once.
    const again = await Promise.all(
      users.flatMap((u) => [
        credits.addCredits(u, 5, { idempotencyKey: "same" }),
        credits.addCredits(u, 5, { idempotencyKey: "same" }),
        credits.addCredits(u, 7, { idempotencyKey: "other" }),
      ]),
    );
    for (const [i, u] of users.entries()) {
      expect(again[3 * i]?.id).toBe(first[i]?.id);
      expect(again[3 * i + 1]?.id).toBe(first[i]?.id);
      expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 12 });
      expect(await db.listJournal(u, { order: "asc", limit: 10 })).toHaveLength(2);
    }
    // Another amount under a key already used: refused, nothing written.
    const conflicting = await Promise.allSettled(
      users.map((u) => credits.addCredits(u, 6, { idempotencyKey: "same" })),
    );
    for (const r of conflicting) expect(r.status === "rejected" && r.reason).toBeInstanceOf(IdempotencyConflictError);
    for (const u of users) expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 12 });
  });

  it("a batch holds at most maxUnits writes", async () => {
    const { credits, writes } = await store({ batch: { maxUnits: 4 } });
    const users = Array.from({ length: 12 }, (_, i) => `m-${i}`);
    const before = writes();
    await Promise.all(users.map((u) => credits.addCredits(u, 3)));
    expect(writes() - before).toBe(3);
    for (const u of users) expect(await credits.getUserCreditsInfo(u)).toMatchObject({ balance: 3 });
  });

  it("refuses a batch option that is not false or a whole maxUnits from 1", () => {
    for (const batch of [{ maxUnits: 0 }, { maxUnits: 2.5 }, { maxUnits: Number.NaN }, true, null, "yes"])
      expect(() => new SqliteDbManager({ batch: batch as false })).toThrow(ConfigurationError);
  });

  it("batch: false gives every unit of work a write transaction of its own", async () => {
    const { credits, writes } = await store({ batch: false });
    const users = Array.from({ length: 6 }, (_, i) => `n-${i}`);
    const before = writes();
    await Promise.all(users.map((u) => credits.addCredits(u, 3)));
    expect(writes() - before).toBe(6);
  });

  it("two managers on one file, deducting from the same accounts at once: no double spend, audits clean", async () => {
    const file = join(dir, "peers.db");
    const a = new SqliteDbManager({ filename: file });
    const b = new SqliteDbManager({ filename: file });
    await a.init();
    await b.init();
    const ca = new CreditService({ db: a });
    const cb = new CreditService({ db: b });
    const users = Array.from({ length: 5 }, (_, i) => `p-${i}`);
    for (const u of users) await ca.addCredits(u, 20);
    const asks = Array.from({ length: 200 }, (_, i) =>
      (i % 2 === 0 ? ca : cb).deductCredits(users[i % 5] as string, 1),
    );
    const results = await Promise.allSettled(asks);
    const done = results.filter((r) => r.status === "fulfilled").length;
    for (const r of results) if (r.status === "rejected") expect(r.reason).toBeInstanceOf(InsufficientCreditsError);
    expect(done).toBe(100);
    for (const u of users) {
      expect(await ca.getUserCreditsInfo(u)).toMatchObject({ balance: 0 });
      expect((await cb.audit(u)).ok).toBe(true);
    }
    await a.close();
    await b.close();
  });
});
