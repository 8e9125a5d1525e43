import { open } from "node:fs/promises";
import { createReadStream } from "node:fs";
import { createInterface } from "node:readline";
import * as z from "zod";
import type { DbManager } from "../db/types.js";
import { replayJournal, type AuditReport } from "../domain/replay.js";
import { ConfigurationError } from "../errors.js";
import { DateInput, UserId, parse, type JournalEntry } from "../models/index.js";

/** `credits.archiveJournal(options)` (docs/operations.md, "Checkpoints and archival"). */
export const ArchiveJournalOptions = z.strictObject({
  /** The JSONL file to write; it must not exist yet (an archive is never overwritten). */
  file: z.string().min(1),
  /** One account; default every account of the store (`listAccountIds`). */
  userId: UserId.optional(),
  /**
   * Archive up to the latest checkpoint written before this instant (default: the latest
   * checkpoint): what is newer stays in the store for history pages and audits.
   */
  before: DateInput.optional(),
});
export type ArchiveJournalOptions = z.input<typeof ArchiveJournalOptions>;

export interface ArchiveReport {
  file: string;
  /** Accounts whose entries were archived. */
  accounts: number;
  /** Entries removed from the store (each is in the file). */
  entriesArchived: number;
  /** Lines written: the archived entries and, per account, the checkpoint that covers them. */
  linesWritten: number;
}

const PAGE = 1000;

/**
 * Moves every entry older than an account's latest checkpoint (written before `before`) out of the
 * store into a JSONL file: one entry a line (its fields and hash as stored), each account's entries
 * in seq order, ending with the checkpoint that covers them (which stays in the store). The file is
 * written and flushed to disk (fsync) before anything is removed, so an entry is always in the store
 * or in a file; a crash in between leaves it in both, and the next run archives it again.
 */
export async function archiveJournal(db: DbManager, options: ArchiveJournalOptions): Promise<ArchiveReport> {
  const o = parse(ArchiveJournalOptions, options, "options");
  const remove = db.deleteJournalBefore?.bind(db);
  if (remove === undefined)
    throw new ConfigurationError(`[credit-management] the ${db.name} store cannot remove journal entries`);
  if (o.userId === undefined && db.listAccountIds === undefined)
    throw new ConfigurationError(`[credit-management] the ${db.name} store cannot list its accounts: give userId`);
  const report: ArchiveReport = { file: o.file, accounts: 0, entriesArchived: 0, linesWritten: 0 };
  const out = await open(o.file, "wx");
  try {
    /** Accounts written to the file and not yet removed from the store: user → the checkpoint's seq. */
    let pending: [string, number][] = [];
    const flush = async () => {
      if (pending.length === 0) return;
      await out.datasync();
      for (const [userId, seq] of pending) report.entriesArchived += await remove(userId, seq);
      pending = [];
    };
    const archiveOne = async (userId: string) => {
      const [cp] = await db.listJournal(userId, {
        order: "desc",
        types: ["checkpoint"],
        limit: 1,
        ...(o.before === undefined ? {} : { to: o.before }),
      });
      if (cp === undefined) return;
      let after = 0;
      let lines = "";
      let count = 0;
      for (;;) {
        const page = await db.listJournal(userId, { order: "asc", afterSeq: after, limit: PAGE });
        for (const e of page) {
          if (e.seq > cp.seq) break;
          lines += `${JSON.stringify(e)}\n`;
          count++;
        }
        const last = page[page.length - 1];
        if (page.length < PAGE || last === undefined || last.seq >= cp.seq) break;
        after = last.seq;
        if (lines.length > 1 << 20) {
          await out.write(lines);
          lines = "";
        }
      }
      // Only the checkpoint itself: nothing before it is left to archive.
      if (count <= 1) return;
      await out.write(lines);
      report.linesWritten += count;
      report.accounts++;
      pending.push([userId, cp.seq]);
    };
    if (o.userId !== undefined) await archiveOne(o.userId);
    else {
      const listIds = (db.listAccountIds as NonNullable<DbManager["listAccountIds"]>).bind(db);
      let after: string | null = null;
      for (;;) {
        const ids = await listIds(after, PAGE);
        for (const id of ids) await archiveOne(id);
        await flush();
        if (ids.length < PAGE) break;
        after = ids[ids.length - 1] as string;
      }
    }
    await flush();
  } finally {
    await out.close();
  }
  return report;
}

/** What `verifyArchive` found for one account of an archive. */
export interface ArchiveAccountReport extends AuditReport {
  /** The checkpoint that closes the account's part of the archive (null when it has none). */
  checkpoint: { seq: number; hash: string } | null;
}

/**
 * Checks a JSONL archive (`archiveJournal`) account by account, without a store: every entry's
 * hash recomputes from its content and chains to the one before, seq has no gap, and replaying the
 * entries — from the first entry, or from the checkpoint the part starts with — gives exactly the
 * state the checkpoint that ends the part records. Lines that cannot be read are reported in
 * `problems` (keyed by line number).
 */
export async function verifyArchive(file: string): Promise<{ accounts: ArchiveAccountReport[]; problems: string[] }> {
  const problems: string[] = [];
  const byUser = new Map<string, JournalEntry[]>();
  const lines = createInterface({ input: createReadStream(file, { encoding: "utf8" }), crlfDelay: Infinity });
  let n = 0;
  for await (const text of lines) {
    n++;
    if (text.trim() === "") continue;
    let e: JournalEntry;
    try {
      const raw = JSON.parse(text) as JournalEntry & { createdAt: string };
      if (typeof raw !== "object" || raw === null || typeof raw.userId !== "string" || typeof raw.seq !== "number")
        throw new Error("not an entry");
      e = { ...raw, createdAt: new Date(raw.createdAt) };
    } catch {
      problems.push(`${file}:${n}: not a journal entry`);
      continue;
    }
    let list = byUser.get(e.userId);
    if (list === undefined) byUser.set(e.userId, (list = []));
    list.push(e);
  }
  const accounts: ArchiveAccountReport[] = [];
  for (const [userId, entries] of byUser) {
    const report = replayJournal(userId, entries, null);
    const first = entries[0] as JournalEntry;
    const last = entries[entries.length - 1] as JournalEntry;
    if (first.seq !== 1 && first.type !== "checkpoint")
      report.problems.push(`the archive starts at seq ${first.seq}, which is neither the first entry nor a checkpoint`);
    if (last.type !== "checkpoint")
      report.problems.push(`the archive ends at seq ${last.seq}, which is not the checkpoint that covers it`);
    report.ok = report.problems.length === 0;
    accounts.push({ ...report, checkpoint: last.type === "checkpoint" ? { seq: last.seq, hash: last.hash } : null });
  }
  return { accounts, problems };
}
