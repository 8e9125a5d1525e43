// SQLite's daily usage rollup (docs/usage.md, "The daily rollup"), part of schema version 2: set
// here as the next version (setNextVersion), as the upgrade machinery's own tests do. The usage
// part of the contract suite on a store that keeps it (random journals and queries against a naive
// sum over the journal: holds, lease windows, take-backs, reversals, late usage; the audit compares
// the rollup with the journal), and a store written at version 1, upgraded, whose rollup the first
// report fills.
import { mkdtempSync, rmSync } from "node:fs";
import Database from "better-sqlite3";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { setNextVersion } from "../src/schema/version.js";
import { SQLITE_ROLLUP_VERSION } from "../src/schema/sqlite-rollup.js";
import { runUsageContract, playUsage, usageService } from "../src/testing/usage.js";
import { runAlertsContract } from "../src/core/testing/alerts.js";
import { CreditService } from "../src/credit-service.js";
import { USAGE_MEASURES, UsageAccumulator, type UsageBucket } from "../src/core/domain/usage.js";

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-rollup-"));
const DAY = 86_400_000;
const HOUR = 3_600_000;
const next = () =>
  setNextVersion({
    version: SQLITE_ROLLUP_VERSION,
    sql: [{ to: SQLITE_ROLLUP_VERSION, summary: "SQLite's daily usage rollup", columns: [] }],
    mongo: [],
  });

describe("SQLite's daily usage rollup", () => {
  beforeAll(next);
  afterAll(() => {
    setNextVersion(null);
    rmSync(dir, { recursive: true, force: true });
  });

  const db = new SqliteDbManager({ filename: join(dir, "contract.db") });
  beforeAll(() => db.init());
  afterAll(() => db.close());
  runUsageContract(() => db, { test: { describe, it, expect, beforeAll, afterAll }, runs: 12 });
  // The alerts' part: a period_spend recount reads the rollup's whole days, as of the account's seq then.
  runAlertsContract(() => db, { test: { describe, it, expect, beforeAll, afterAll }, raceSize: 50, runs: 10 });

  it("a report as of an earlier seq (a recount) reads the rollup's whole days, less what came after that seq, plus what it lacks", async () => {
    const clock = { now: Math.floor(Date.now() / DAY) * DAY - 6 * DAY + 3 * HOUR };
    const credits = usageService(db, clock);
    const u = `through-${Date.now()}`;
    await playUsage(credits, clock, u, [
      { op: "deduct", amount: 7, feature: "chat", spender: "bob" },
      { op: "step", ms: DAY },
      { op: "hold", amount: 20, capture: 12 },
      { op: "deduct", amount: 9, feature: "search" },
      { op: "reverse", pick: 0, percent: 50 },
      { op: "step", ms: DAY },
      { op: "late", amount: 4, agoMs: 2 * DAY, feature: "chat", spender: "bob" },
      { op: "deduct", amount: 3, feature: "chat", spender: "bob" },
      { op: "reverse", pick: 1, percent: 100 },
      { op: "step", ms: DAY },
      { op: "deduct", amount: 5, feature: "chat" },
    ]);
    const journal = await db.listJournal(u, { order: "asc", limit: 1000 });
    const head = journal[journal.length - 1]!.seq;
    const start = Math.floor(journal[0]!.createdAt.getTime() / DAY) * DAY - 3 * DAY;
    const boundaries = [start, start + 2 * DAY, start + 5 * DAY, start + 10 * DAY];
    for (let through = 1; through <= head; through++) {
      const scan = {
        account: u,
        from: new Date(boundaries[0]!),
        to: new Date(boundaries[3]!),
        interval: null,
        timeZone: "UTC",
        groupBy: ["feature", "spender"] as const,
        kinds: ["spend", "refund", "clawback"] as const,
        orderBy: "start" as const,
        limit: 10_000,
        boundaries,
        throughSeq: through,
      };
      const reference = new UsageAccumulator({ ...scan, groupBy: [...scan.groupBy], kinds: [...scan.kinds] });
      for (const e of journal) reference.add(u, e);
      const answer = await db.usage!({ ...scan, groupBy: [...scan.groupBy], kinds: [...scan.kinds] });
      // (What the rollup holds past the seq, taken away, may leave a group at zero.)
      const counted = (bs: UsageBucket[]) => bs.filter((b) => USAGE_MEASURES.some((m) => b[m] !== 0));
      expect(counted(answer), `through seq ${through}`).toEqual(counted(reference.result()));
    }
  });

  it("a store written at version 1 is upgraded; its first report adds the journal to the rollup, and answers what the journal sums to", async () => {
    setNextVersion(null);
    const file = join(dir, "v1.db");
    const clock = { now: Math.floor(Date.now() / DAY) * DAY - 20 * DAY + 5 * HOUR };
    const old = new SqliteDbManager({ filename: file });
    await old.init();
    const ops = [
      { op: "deduct", amount: 7, feature: "chat" },
      { op: "step", ms: DAY },
      { op: "hold", amount: 20, capture: 12 },
      { op: "takeBack", amount: 3, dispute: true },
      {
        op: "window",
        amount: 30,
        requests: 4,
        parts: [{ model: "small", feature: "chat", credits: 25, requests: 4, inputTokens: 9 }],
      },
      { op: "step", ms: DAY },
      { op: "deduct", amount: 5, feature: "search", spender: "bob" },
    ] as Parameters<typeof playUsage>[3];
    await playUsage(usageService(old, clock), clock, "u1", ops);
    await old.close();
    next();
    const upgraded = new SqliteDbManager({ filename: file });
    await upgraded.init();
    const credits = new CreditService({ db: upgraded, clock: () => new Date(clock.now) });
    // More entries after the upgrade: the cursor is behind, so the unit of work leaves them to the catch-up.
    await playUsage(credits, clock, "u1", [{ op: "deduct", amount: 4, feature: "chat", spender: "bob" }]);
    const from = new Date(Math.floor(clock.now / DAY) * DAY - 10 * DAY);
    const to = new Date(Math.floor(clock.now / DAY) * DAY + DAY);
    const query = {
      account: "u1",
      from,
      to,
      interval: "day" as const,
      groupBy: ["feature" as const, "spender" as const],
    };
    const viaRollup = await credits.getUsage(query);
    expect(await upgraded.usageRollup!("u1")).not.toEqual([]);
    // The same report from the journal alone: a window that is not a whole UTC day reads no rollup.
    const journal = await credits.getUsage({ ...query, from: new Date(from.getTime() + 1) });
    expect(viaRollup.rows.length).toBeGreaterThan(3);
    expect(viaRollup.rows).toEqual(journal.rows);
    expect((await credits.audit("u1")).problems).toEqual([]);
    // The whole days are the rollup's: a row changed by hand shows in the report, and the audit finds it.
    const raw = new Database(file);
    const tamper = (by: number) =>
      raw.prepare(`UPDATE usage_daily SET credits = credits + ? WHERE user_id = 'u1' AND feature = 'search'`).run(by);
    tamper(100);
    const search = (r: { rows: { feature?: string | null; credits: number }[] }) =>
      r.rows.filter((x) => x.feature === "search").reduce((n, x) => n + x.credits, 0);
    expect(search(await credits.getUsage(query))).toBe(search(journal) + 100);
    expect((await credits.audit("u1")).problems).not.toEqual([]);
    tamper(-100);
    raw.close();
    // Later entries are added by their unit of work, in its transaction.
    const before = JSON.stringify(await upgraded.usageRollup!("u1"));
    await credits.deductCredits("u1", 2, { feature: "chat" });
    expect(JSON.stringify(await upgraded.usageRollup!("u1"))).not.toBe(before);
    expect((await credits.audit("u1")).problems).toEqual([]);
    await upgraded.close();
  });
});
