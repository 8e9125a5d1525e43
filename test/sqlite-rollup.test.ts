// SQLite's daily usage rollup (docs/usage.md, "On SQLite"): a report as of an earlier seq (what a
// period_spend recount asks) at every seq of a journal with holds, reversals and late usage, against
// the journal; the frozen store of version 1 upgraded, its rollup filled by the first reads. The
// usage and alerts parts of the contract suite run on it in test/sqlite.test.ts (random journals
// and queries against a naive sum, the audit comparing the rollup with the journal).
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { playUsage, usageService } from "../src/testing/usage.js";
import { CreditService } from "../src/credit-service.js";
import { USAGE_MEASURES, UsageAccumulator, type UsageBucket, type UsageScan } from "../src/core/domain/usage.js";
import { ACCOUNTS, FIXTURES } from "./fixtures/schema/write.js";

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-rollup-"));
const DAY = 86_400_000;
const HOUR = 3_600_000;

describe("SQLite's daily usage rollup", () => {
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const db = new SqliteDbManager({ filename: join(dir, "rollup.db") });
  beforeAll(() => db.init());
  afterAll(() => db.close());

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

  it("the frozen store of version 1, upgraded: its first reads add each account's journal to the rollup, which answers what the journal sums to", async () => {
    const file = join(dir, "v1.sqlite");
    copyFileSync(join(FIXTURES, "v1", "store.sqlite"), file);
    const upgraded = new SqliteDbManager({ filename: file });
    await upgraded.init();
    const credits = new CreditService({ db: upgraded });
    let rows = 0;
    for (const account of ACCOUNTS) {
      const journal = await upgraded.listJournal(account, { order: "asc", limit: 10_000 });
      const first = Math.floor(journal[0]!.createdAt.getTime() / DAY) * DAY - 400 * DAY;
      const last = Math.floor(journal[journal.length - 1]!.createdAt.getTime() / DAY) * DAY + 2 * DAY;
      const boundaries: number[] = [];
      for (let b = first; b <= last; b += DAY) boundaries.push(b);
      const scan: UsageScan = {
        account,
        from: new Date(first),
        to: new Date(last),
        interval: "day",
        timeZone: "UTC",
        groupBy: ["feature", "spender", "model"],
        kinds: ["spend", "refund", "clawback"],
        orderBy: "start",
        limit: 100_000,
        boundaries,
      };
      const viaRollup = await upgraded.usage!(scan);
      rows += (await upgraded.usageRollup!(account))!.length;
      expect(viaRollup, account).toEqual(await upgraded.usage!({ ...scan, fromJournal: true }));
      expect((await credits.audit(account)).problems, account).toEqual([]);
    }
    expect(rows).toBeGreaterThan(0);
    // From then on the units of work add their entries, in their transaction.
    const before = JSON.stringify(await upgraded.usageRollup!("alice"));
    await credits.addCredits("alice", 10);
    await credits.deductCredits("alice", 2, { feature: "chat", spender: "k" });
    expect(JSON.stringify(await upgraded.usageRollup!("alice"))).not.toBe(before);
    expect((await credits.audit("alice")).problems).toEqual([]);
    await upgraded.close();
  });

  it("a row changed by hand shows in a report of whole UTC days, and the audit finds it", async () => {
    const clock = { now: Math.floor(Date.now() / DAY) * DAY - 3 * DAY + 5 * HOUR };
    const credits = usageService(db, clock);
    const u = `tamper-${Date.now()}`;
    await playUsage(credits, clock, u, [
      { op: "deduct", amount: 7, feature: "chat" },
      { op: "step", ms: DAY },
      { op: "deduct", amount: 5, feature: "search", spender: "bob" },
    ]);
    const query = {
      account: u,
      from: new Date(Math.floor(clock.now / DAY) * DAY - 5 * DAY),
      to: new Date(Math.floor(clock.now / DAY) * DAY + DAY),
      interval: "day" as const,
      groupBy: ["feature" as const],
    };
    const search = async () =>
      (await credits.getUsage(query)).rows.filter((x) => x.feature === "search").reduce((n, x) => n + x.credits, 0);
    expect(await search()).toBe(5);
    expect((await credits.audit(u)).problems).toEqual([]);
    const { default: Database } = await import("better-sqlite3");
    const raw = new Database(join(dir, "rollup.db"));
    const tamper = (by: number) =>
      raw.prepare("UPDATE usage_daily SET credits = credits + ? WHERE user_id = ? AND feature = 'search'").run(by, u);
    tamper(100);
    expect(await search()).toBe(105);
    expect((await credits.audit(u)).problems).not.toEqual([]);
    tamper(-100);
    raw.close();
  });
});
