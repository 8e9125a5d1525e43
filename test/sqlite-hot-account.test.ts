/**
 * One hot SQLite account, three processes (docs/storage.md, SQLite): 8 callers in each spend on it
 * at once under `maxAttempts: 2`, so that units of work keep running out of optimistic attempts.
 * Such a unit runs once more holding the write lock from its first read, which cannot conflict:
 * no spend that had room is refused with `ConflictError`, every spend a process reported done is
 * in the journal (and nothing else is), the balance is the grant less their sum, and the account
 * audits clean.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager } from "../src/manager.js";
import type { JournalEntry } from "../src/index.js";
import { runProcess } from "./fixtures/processes.js";

interface Report {
  done: { id: string; amount: number }[];
  conflicts: number;
  unexpected: string[];
}

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-hot-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("SqliteDbManager: one hot account, three processes, maxAttempts 2", () => {
  it("refuses no spend with ConflictError; every reported spend is in the journal; balance and audit agree", async () => {
    const file = join(dir, "hot.db");
    const manager = await createCreditManager({ db: new SqliteDbManager({ filename: file }) });
    const { credits } = manager;
    const supply = 100_000;
    await credits.addCredits("hot", supply);
    const start = String(Date.now() + 1500);
    const reports = await Promise.all(
      [7, 8, 9].map((seed) =>
        runProcess<Report>("test/fixtures/sqlite-hot-account.ts", {
          HOT_FILE: file,
          HOT_OPS: "200",
          HOT_CALLERS: "8",
          HOT_MAX_ATTEMPTS: "2",
          HOT_SEED: String(seed),
          HOT_START: start,
        }),
      ),
    );
    expect(reports.flatMap((r) => r.unexpected)).toEqual([]);
    expect(reports.map((r) => r.conflicts)).toEqual([0, 0, 0]);
    const done = reports.flatMap((r) => r.done);
    expect(done.length).toBe(600);

    const entries: JournalEntry[] = [];
    for (let cursor: string | null | undefined = undefined; cursor !== null;) {
      const page = await credits.getCreditHistory("hot", { limit: 1000, ...(cursor ? { cursor } : {}) });
      entries.push(...page.items);
      cursor = page.nextCursor;
    }
    const spends = entries.filter((e) => e.type === "deduct" || e.type === "commit_reserved");
    expect(spends.map((e) => e.id).sort()).toEqual(done.map((d) => d.id).sort());
    const spent = done.reduce((s, d) => s + d.amount, 0);
    expect(spends.reduce((s, e) => s + e.amount, 0)).toBe(spent);
    expect(await credits.getUserCreditsInfo("hot")).toMatchObject({ balance: supply - spent });
    expect((await credits.audit("hot", { from: "genesis" })).ok).toBe(true);
    await manager.close();
  }, 120_000);
});
