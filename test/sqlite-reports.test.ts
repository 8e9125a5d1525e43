import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { CreditService } from "../src/credit-service.js";
import { runProcess } from "./fixtures/processes.js";

const DAY = 86_400_000;
/** Entries of the one account: a report long enough that reading it on the event loop stalls it visibly. */
const ENTRIES = 20_000;
/** The longest the event loop may go without running a timer while a report runs (a loaded 2-core machine). */
const BOUND_MS = 150;

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-reports-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * `ENTRIES` deductions of `alice` with an LLM usage each, over the last 20 days, written straight
 * into the file with her account's row (the hash chain is not what is read here).
 */
async function loadJournal(file: string): Promise<void> {
  const Database = (await import("better-sqlite3")).default;
  const raw = new Database(file);
  const first = Date.now() - 20 * DAY;
  const step = (20 * DAY - 60_000) / ENTRIES;
  raw.exec(
    `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < ${ENTRIES - 1}) ` +
      `INSERT INTO journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, spender, feature, created_at, hash) ` +
      `SELECT 'e' || i, 'alice', i + 1, 'deduct', 1 + i % 20, 0, 0, 0, '[]', ` +
      `json_object('usages', json_array(json_object('amount', 1 + i % 20, 'model', CASE i % 3 WHEN 0 THEN 'a' WHEN 1 THEN 'b' ELSE 'c' END, 'inputTokens', 100, 'outputTokens', 10))), ` +
      `'key-' || (i % 7), 'chat', strftime('%Y-%m-%dT%H:%M:%fZ', (${first} + i * ${step}) / 1000.0, 'unixepoch'), '00' FROM s`,
  );
  // The account's row, at the journal's last seq, as every unit of work leaves it: the usage rollup
  // catches up to that seq at the first report (docs/usage.md, "On SQLite").
  raw
    .prepare(
      `INSERT INTO accounts (user_id, balance, reserved, debt, seq, created_at, updated_at) VALUES ('alice', 0, 0, 0, ?, ?, ?)`,
    )
    .run(ENTRIES, new Date(first).toISOString(), new Date().toISOString());
  raw.close();
}

/** Runs `fn` while a 5 ms timer notes the longest wait between its turns: how long the event loop was held. */
async function longestStall<T>(fn: () => Promise<T>): Promise<{ result: T; stallMs: number; tookMs: number }> {
  let last = performance.now();
  let stallMs = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    stallMs = Math.max(stallMs, now - last);
    last = now;
  }, 5);
  const started = performance.now();
  try {
    const result = await fn();
    const tookMs = performance.now() - started;
    stallMs = Math.max(stallMs, performance.now() - last);
    return { result, stallMs, tookMs };
  } finally {
    clearInterval(timer);
  }
}

/** A store over `file` handed in without its name: its reports run on the event loop. */
async function namelessStore(file: string): Promise<{ db: SqliteDbManager; close(): Promise<void> }> {
  const raw = new (await import("better-sqlite3")).default(file);
  const db = new SqliteDbManager({
    database: {
      prepare: (text) => raw.prepare(text),
      exec: (text) => raw.exec(text),
      pragma: (source, options) => raw.pragma(source, options),
      transaction: (fn) => raw.transaction(fn),
      close: () => raw.close(),
    },
  });
  await db.init();
  return {
    db,
    close: async () => {
      await db.close();
      raw.close();
    },
  };
}

/** The longest stall of `query`'s report read on the event loop, and the credits it counted. */
async function onTheLoop(
  file: string,
  query: Parameters<CreditService["getUsage"]>[0],
): Promise<{ loopStallMs: number; loopCredits: number }> {
  const nameless = await namelessStore(file);
  try {
    const credits = new CreditService({ db: nameless.db });
    await credits.getUsage(query); // the statements prepared, as the thread's were
    const { result, stallMs } = await longestStall(() => credits.getUsage(query));
    return { loopStallMs: stallMs, loopCredits: result.rows.reduce((n, r) => n + r.credits, 0) };
  } finally {
    await nameless.close();
  }
}

/** docs/storage.md, "Reports off the event loop". */
describe("SQLite usage reports off the event loop", () => {
  const file = join(dir, "reports.db");
  let db: SqliteDbManager;
  let credits: CreditService;
  beforeAll(async () => {
    db = new SqliteDbManager({ filename: file });
    await db.init();
    await loadJournal(file);
    credits = new CreditService({ db });
  }, 60_000);
  afterAll(() => db.close());

  // Days in a zone other than UTC: the usage rollup keeps UTC days, so this report reads the
  // journal (docs/usage.md, "On SQLite") — the read the thread takes off the event loop.
  const query = () => ({
    account: "alice",
    from: new Date(Date.now() - 30 * DAY),
    to: new Date(),
    interval: "day" as const,
    timeZone: "Etc/GMT-1",
    groupBy: ["model" as const],
  });

  it("keeps the event loop running while one account's report reads its journal", async () => {
    await credits.getUsage(query()); // starts the reader thread
    const { result, stallMs, tookMs } = await longestStall(() => credits.getUsage(query()));
    const credited = result.rows.reduce((n, r) => n + r.credits, 0);
    // Every entry counted: 1 + i % 20 credits each.
    let expected = 0;
    for (let i = 0; i < ENTRIES; i++) expected += 1 + (i % 20);
    expect(credited).toBe(expected);
    // The same report read on the event loop (the file handed in without its name, so no thread
    // can open it), side by side in this run: what the thread spares the loop, whatever the
    // machine's speed.
    const { loopStallMs, loopCredits } = await onTheLoop(file, query());
    expect(loopCredits).toBe(expected);
    const timings = JSON.stringify({ stallMs, tookMs, loopStallMs });
    // The thread holds the event loop for a small part of what the same read on the loop holds it…
    expect(stallMs * 3, timings).toBeLessThan(loopStallMs);
    // …and never for more than a few turns.
    expect(stallMs, timings).toBeLessThan(BOUND_MS);
  }, 60_000);

  it("answers a report across accounts with the same figures on the thread as on the event loop", async () => {
    const fleet = {
      from: new Date(Date.now() - 30 * DAY),
      to: new Date(),
      interval: null,
      groupBy: ["account" as const],
    };
    const onThread = await credits.getUsage(fleet);
    // The same file handed in without its name: no file for a thread, so the event loop reads it.
    const nameless = await namelessStore(file);
    try {
      const here = await new CreditService({ db: nameless.db }).getUsage(fleet);
      expect(onThread.rows).toEqual(here.rows);
      expect(onThread.rows.length).toBe(1);
    } finally {
      await nameless.close();
    }
  });

  it("answers a script whose only work is the report: the thread holds the process until it has answered", async () => {
    const credits = await runProcess<number[]>("test/fixtures/sqlite-report-exit.ts", {
      CM_FILE: join(dir, "exit.db"),
    });
    expect(credits).toEqual([3]);
  }, 60_000);
});
