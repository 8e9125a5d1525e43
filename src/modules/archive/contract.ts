/**
 * Archival over the store (part of `runDbManagerContract`'s accounts part): the journal before a
 * checkpoint moves to a file the archive check verifies (docs/operations.md, "Checkpoints and archival").
 */
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "../../core/testing/runner.js";
import type { DbManager } from "../../core/db/types.js";
import type { JournalEntry } from "../../core/models/index.js";
import { accountWithClock, lazy } from "../../core/testing/support.js";
import { archiveJournal, verifyArchive } from "./service.js";

export function runArchiveContract(getDb: () => DbManager): void {
  const db = lazy(getDb);
  const user = () => `arch-${randomUUID()}`;

  describe("archival", () => {
    it("archiveJournal moves the entries before a checkpoint to a file the archive check verifies; the store keeps the rest", async () => {
      if (db.deleteJournalBefore === undefined) {
        console.warn(`[contract] ${db.name}: no deleteJournalBefore, the archive case is not run`);
        return;
      }
      const { u, credits } = accountWithClock(db, user);
      await credits.addCredits(u, 100);
      for (let i = 0; i < 5; i++) await credits.deductCredits(u, 3);
      const cp = (await credits.checkpoint(u)) as JournalEntry;
      await credits.deductCredits(u, 1);
      const dir = await mkdtemp(join(tmpdir(), "cm-contract-"));
      try {
        const file = join(dir, "archive.jsonl");
        const report = await archiveJournal(db, { file, userId: u });
        expect(report).toMatchObject({ accounts: 1, entriesArchived: cp.seq - 1, linesWritten: cp.seq });
        const kept = await db.listJournal(u, { order: "asc", limit: 10 });
        expect(kept.map((e) => e.seq)).toEqual([cp.seq, cp.seq + 1]);
        expect((await db.listJournal(u, { order: "desc", beforeSeq: cp.seq, limit: 10 })).length).toBe(0);
        const audit = await credits.audit(u);
        expect(audit.problems).toEqual([]);
        expect(audit.balance).toBe(84);
        const verified = await verifyArchive(file);
        expect(verified.problems).toEqual([]);
        expect(verified.accounts.map((a) => [a.userId, a.ok, a.checkpoint?.hash])).toEqual([[u, true, cp.hash]]);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
}
