import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { SCHEMA_VERSION } from "../src/schema/public.js";
import type { JournalEntry } from "../src/core/models/index.js";
import { CreditService } from "../src/credit-service.js";
import { runProcess } from "./fixtures/processes.js";
import { runDbManagerContract } from "../src/testing/index.js";
import { deep } from "./fixtures/depth.js";

const test = { describe, it, expect, beforeAll, afterAll };
const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

runDbManagerContract({
  name: "sqlite",
  create: async () => new SqliteDbManager({ filename: join(dir, "contract.db") }),
  // A second connection on the same file, with its own caches (as a second process has).
  createPeer: async () => new SqliteDbManager({ filename: join(dir, "contract.db") }),
  // 500 instead of 1,000 racing callers, as on MongoDB: the reserve race reads every active hold in
  // each unit of work (quadratic), ~20 s at 1,000 on this shared 2-core machine. 500 callers on 250
  // are still all in flight at once, far past the optimistic attempts before the locked one.
  raceSize: 500,
  propertyRuns: deep(60),
  test,
});

// The same contract with every unit of work's write in a transaction of its own.
runDbManagerContract({
  name: "sqlite, batch: false",
  create: async () => new SqliteDbManager({ filename: join(dir, "unbatched.db"), batch: false }),
  propertyRuns: 15,
  raceSize: 200,
  test,
});

describe("SqliteDbManager", () => {
  it("puts the database file in WAL mode", async () => {
    const db = new SqliteDbManager({ filename: join(dir, "wal.db") });
    await db.init();
    const Database = (await import("better-sqlite3")).default;
    const raw = new Database(join(dir, "wal.db"));
    expect(raw.pragma("journal_mode", { simple: true })).toBe("wal");
    raw.close();
    await db.close();
  });

  it("keeps what was committed when the file is opened again", async () => {
    const file = join(dir, "reopen.db");
    const first = new SqliteDbManager({ filename: file });
    await first.init();
    await new CreditService({ db: first }).addCredits("r", 42, { idempotencyKey: "once" });
    await first.close();
    await first.close(); // idempotent
    const second = new SqliteDbManager({ filename: file });
    await second.init();
    const credits = new CreditService({ db: second });
    expect(await credits.getUserCreditsInfo("r")).toMatchObject({ balance: 42 });
    await credits.addCredits("r", 42, { idempotencyKey: "once" });
    expect(await credits.getUserCreditsInfo("r")).toMatchObject({ balance: 42 });
    expect((await credits.audit("r")).ok).toBe(true);
    await second.close();
  });

  it("refuses to run before init() and names itself in its errors", async () => {
    const db = new SqliteDbManager({ filename: join(dir, "early.db") });
    await expect(db.getAccount("u")).rejects.toThrow("[credit-management] [sqlite] call init() first");
    await db.close();
  });

  it(
    "two processes deducting from the same accounts of one file: no double spend, nothing reported done lost, audits clean",
    { timeout: 120_000 },
    async () => {
      const file = join(dir, "procs.db");
      const users = 5;
      const supply = 60;
      const ops = 250; // per process, round robin: 100 asks per account for 60 credits
      const db = new SqliteDbManager({ filename: file });
      await db.init();
      const credits = new CreditService({ db });
      for (let u = 0; u < users; u++) await credits.addCredits(`s-${u}`, supply);
      type Run = {
        done: Array<Pick<JournalEntry, "id" | "userId" | "type" | "amount" | "idempotencyKey">>;
        refused: number;
        unexpected: string[];
      };
      const env = { HAMMER_FILE: file, HAMMER_USERS: String(users), HAMMER_OPS: String(ops) };
      const runs = await Promise.all([0, 1].map(() => runProcess<Run>("test/fixtures/sqlite-hammer.ts", env)));
      for (const r of runs) expect(r.unexpected).toEqual([]);
      const reported = new Map(runs.flatMap((r) => r.done).map((e) => [e.id, e]));
      // A key sent by both processes has one effect: both were told the same entry.
      const byKey = new Map<string, Set<string>>();
      for (const e of runs.flatMap((r) => r.done)) {
        if (e.idempotencyKey !== null)
          byKey.set(e.idempotencyKey, (byKey.get(e.idempotencyKey) ?? new Set()).add(e.id));
      }
      for (const ids of byKey.values()) expect(ids.size).toBe(1);
      expect(runs.reduce((n, r) => n + r.refused, 0)).toBeGreaterThan(0);
      for (let u = 0; u < users; u++) {
        const user = `s-${u}`;
        const journal = await db.listJournal(user, { order: "asc", limit: 10_000 });
        const deductions = journal.filter((e) => e.type === "deduct");
        // Exactly the supply was spent, each deduction once, and each was reported to a caller.
        expect(deductions.reduce((n, e) => n + e.amount, 0)).toBe(supply);
        for (const e of deductions) expect(reported.has(e.id), `unreported ${e.id}`).toBe(true);
        for (const e of reported.values()) if (e.userId === user) expect(journal.some((j) => j.id === e.id)).toBe(true);
        expect(journal.map((e) => e.seq)).toEqual(journal.map((_, k) => k + 1));
        expect(await credits.getUserCreditsInfo(user)).toMatchObject({ balance: 0 });
        expect((await credits.audit(user)).ok).toBe(true);
      }
      await db.close();
    },
  );
});

describe("SqliteDbManager with a database handed in", () => {
  it("uses it, and close() leaves it open", async () => {
    const Database = (await import("better-sqlite3")).default;
    const raw = new Database(join(dir, "handed.db"));
    const db = new SqliteDbManager({ database: raw, tablePrefix: "cm_" });
    await db.init();
    await new CreditService({ db }).addCredits("h", 5);
    await db.close();
    expect(raw.prepare('SELECT balance FROM "cm_accounts" WHERE user_id = ?').get("h")).toEqual({ balance: 5 });
    raw.close();
  });
});

describe("SqliteDbManager: a unit of work out of optimistic attempts runs once more holding the write lock", () => {
  it.each(["filename", "database"] as const)(
    "wins over a writer it conflicted with, which then waits for it (the store given a %s)",
    async (given) => {
      const file = join(dir, `locked-${given}.db`);
      const Database = (await import("better-sqlite3")).default;
      const raw = given === "database" ? new Database(file) : undefined;
      // maxAttempts 1: the first conflict sends the unit of work to its locked attempt.
      const a = new SqliteDbManager({
        ...(raw === undefined ? { filename: file } : { database: raw, tablePrefix: "cm_" }),
        maxAttempts: 1,
      });
      const b = new SqliteDbManager({ filename: file, ...(raw === undefined ? {} : { tablePrefix: "cm_" }) });
      await a.init();
      await b.init();
      const credits = new CreditService({ db: a });
      const other = new CreditService({ db: b }); // as another process
      await credits.addCredits("x", 100);
      // Every attempt of a's units of work lets b write the account between its load and commit.
      let attempts = 0;
      let late: Promise<JournalEntry> | undefined;
      const transaction = a.transaction.bind(a);
      a.transaction = (userId, fn) =>
        transaction(userId, async (tx) => {
          const value = await fn(tx);
          attempts++;
          if (attempts === 1)
            await other.deductCredits("x", 1); // the optimistic attempt: a conflict
          else {
            // The locked attempt: b's write must wait for its commit.
            late = other.deductCredits("x", 2);
            await new Promise((r) => setTimeout(r, 50));
          }
          return value;
        });
      expect(await credits.deductCredits("x", 5)).toMatchObject({ amount: 5, balanceAfter: 94 });
      expect(attempts).toBe(2);
      expect(await late).toMatchObject({ amount: 2, balanceAfter: 92 });
      const history = await credits.getCreditHistory("x", { limit: 10 });
      expect(history.items.map((e) => e.amount)).toEqual([2, 5, 1, 100]); // newest first
      expect((await credits.audit("x", { from: "genesis" })).ok).toBe(true);
      await a.close();
      await b.close();
      raw?.close();
    },
  );
});

describe("SqliteDbManager while another connection holds the write lock", () => {
  /** Ticks of a 5 ms timer while `run` runs, and the longest gap between two (a blocked event loop). */
  async function timed<T>(run: () => Promise<T>) {
    let ticks = 0;
    let last = performance.now();
    let longestGapMs = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      longestGapMs = Math.max(longestGapMs, now - last);
      last = now;
      ticks++;
    }, 5);
    const started = performance.now();
    try {
      const result = await run().then(
        (value) => ({ value }),
        (error: unknown) => ({ error }),
      );
      return { ...result, ms: performance.now() - started, ticks, longestGapMs };
    } finally {
      clearInterval(timer);
    }
  }

  it("waits without blocking the event loop, and writes once the lock is free", async () => {
    const file = join(dir, "busy.db");
    const db = new SqliteDbManager({ filename: file });
    await db.init();
    const credits = new CreditService({ db });
    await credits.addCredits("b", 10);
    const Database = (await import("better-sqlite3")).default;
    const other = new Database(file);
    other.exec("BEGIN IMMEDIATE"); // the write lock, as another process's long write holds it
    const release = setTimeout(() => other.exec("COMMIT"), 400); // fires only if the event loop is free
    const r = await timed(() => credits.addCredits("b", 5));
    clearTimeout(release);
    other.close();
    expect(r).not.toHaveProperty("error");
    expect(r.ms).toBeGreaterThanOrEqual(350);
    // The timer kept firing during the wait. A blocking wait would give no tick and one gap of the
    // busy timeout (5 s), since the COMMIT above could not fire before it; the bounds leave room for
    // a loaded machine (at load 27, 15 ticks of the 80 a quiet one counts).
    expect(r.ms).toBeLessThan(5000);
    expect(r.ticks).toBeGreaterThanOrEqual(5);
    expect(r.longestGapMs).toBeLessThan(1000);
    expect(await credits.getUserCreditsInfo("b")).toMatchObject({ balance: 15 });
    await db.close();
  });

  it("gives up after busyTimeoutMs per attempt (a conflict), without blocking meanwhile", async () => {
    const file = join(dir, "busy-long.db");
    const db = new SqliteDbManager({ filename: file, busyTimeoutMs: 300, maxAttempts: 1 });
    await db.init();
    const credits = new CreditService({ db });
    const Database = (await import("better-sqlite3")).default;
    const other = new Database(file);
    other.exec("BEGIN IMMEDIATE");
    const r = await timed(() => credits.addCredits("c", 5));
    other.exec("ROLLBACK");
    other.close();
    expect((r as { error?: Error }).error?.name).toBe("ConflictError");
    // The optimistic attempt's write waited busyTimeoutMs, then the locked attempt's BEGIN IMMEDIATE.
    expect((r as { error?: Error }).error?.message).toMatch(/after 2 conflicting attempts$/);
    expect(String(((r as { error?: Error }).error?.cause as Error).message)).toMatch(
      /the write lock stayed taken for busyTimeoutMs \(300 ms\)/,
    );
    expect(r.ms).toBeGreaterThanOrEqual(580);
    expect(r.ms).toBeLessThan(3000);
    expect(r.ticks).toBeGreaterThanOrEqual(15);
    expect(r.longestGapMs).toBeLessThan(250);
    expect(await db.getAccount("c")).toBeNull(); // nothing written
    await credits.addCredits("c", 5); // the lock is free again
    await db.close();
  });
});

describe("SqliteDbManager ping(), stats() and openExisting()", () => {
  it("ping() answers the schema version; stats() counts holds and the outbox", async () => {
    const db = new SqliteDbManager({ filename: join(dir, "stats.db") });
    await db.init();
    expect(await db.ping()).toEqual({ schemaVersion: SCHEMA_VERSION });
    expect(await db.stats()).toEqual({
      activeHolds: 0,
      heldCredits: 0,
      outboxPending: 0,
      outboxFailed: 0,
      oldestPendingAt: null,
    });
    const credits = new CreditService({ db });
    await credits.addCredits("s", 100);
    await credits.reserveCredits("s", 30);
    await credits.reserveCredits("s", 12);
    expect(await db.stats()).toMatchObject({ activeHolds: 2, heldCredits: 42 });
    await db.close();
  });

  it("openExisting() reads a store without creating or migrating anything, and refuses a file that is not one", async () => {
    const file = join(dir, "existing.db");
    const made = new SqliteDbManager({ filename: file });
    await made.init();
    await new CreditService({ db: made }).addCredits("e", 7);
    await made.close();
    const reader = new SqliteDbManager({ filename: file });
    await reader.openExisting();
    expect(await reader.getAccount("e")).toMatchObject({ balance: 7 });
    await reader.close();

    const missing = join(dir, "missing.db");
    await expect(new SqliteDbManager({ filename: missing }).openExisting()).rejects.toThrow(
      /\[sqlite\] cannot open .*missing\.db/,
    );
    expect(existsSync(missing)).toBe(false); // not created
    const Database = (await import("better-sqlite3")).default;
    const foreign = join(dir, "foreign.db");
    const raw = new Database(foreign);
    raw.exec("CREATE TABLE notes (id INTEGER PRIMARY KEY)");
    raw.close();
    await expect(new SqliteDbManager({ filename: foreign }).openExisting()).rejects.toThrow(
      /is not a credit-management store/,
    );
    const check = new Database(foreign);
    expect(check.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all()).toEqual([{ name: "notes" }]);
    check.close();
  });
});
