import type * as Fs from "node:fs";
import type * as FsPromises from "node:fs/promises";
import type * as Readline from "node:readline";
import { nodeBuiltin } from "../../core/util/runtime.js"; // files: loaded when an archive is written or read (docs/runtimes.md)
import * as z from "zod/mini";
import type { DbManager } from "../../core/db/types.js";
import type { ArchivePartitionsReport } from "../../core/db/types-partitions.js";
import { replayJournal, type AuditReport } from "../../core/domain/replay.js";
import { catchUpRevenue } from "../revenue/service.js";
import { ConfigurationError, ValidationError } from "../../core/errors.js";
import { DateInput, UserId, parse, type JournalEntry } from "../../core/models/index.js";
import { journalPages } from "../../core/services/history.js";

/** `credits.archiveJournal(options)` (docs/operations.md, "Checkpoints and archival"). @public */
export const ArchiveJournalOptions = z.strictObject({
  /** The JSONL file to write; it must not exist yet (an archive is never overwritten). */
  file: z.string().check(z.minLength(1)),
  /** One account; default every account of the store (`listAccountIds`). */
  userId: z.optional(UserId),
  /**
   * Archive up to the latest checkpoint written before this instant (default: the latest
   * checkpoint): what is newer stays in the store for history pages and audits.
   */
  before: z.optional(DateInput),
});
/** `credits.archiveJournal(options)` (docs/operations.md, "Checkpoints and archival"). @public */
export type ArchiveJournalOptions = z.input<typeof ArchiveJournalOptions>;

/** What `archiveJournal()` wrote. @public */
export interface ArchiveReport {
  /** The archive file written. */
  file: string;
  /** Accounts whose entries were archived. */
  accounts: number;
  /** Entries removed from the store (each is in the file). */
  entriesArchived: number;
  /** Lines written: the archived entries and, per account, the checkpoint that covers them. */
  linesWritten: number;
}

const PAGE = 1000;

/** `credits.archivePartitions(options)` (docs/running-for-years.md, "Partitioning on PostgreSQL"). @public */
export const ArchivePartitionsOptions = z.strictObject({
  /** Archive the partitions whose whole range ends at or before this instant. */
  before: DateInput,
  /** An existing directory for the files, one per partition: `<partition>.jsonl`. */
  dir: z.string().check(z.minLength(1)),
  /**
   * Write a checkpoint on every account whose last entry in such a partition has none after it
   * (default true); false: such an account refuses the archive (`ConflictError` naming them).
   */
  checkpoint: z.optional(z.boolean()),
  /** Keep the detached partitions as tables of their own (default false: dropped). */
  keepDetached: z.optional(z.boolean()),
});
/** `credits.archivePartitions(options)` (docs/running-for-years.md, "Partitioning on PostgreSQL"). @public */
export type ArchivePartitionsOptions = z.input<typeof ArchivePartitionsOptions>;

/**
 * Detaches and archives the time partitions of a partitioned PostgreSQL store (see
 * `PostgresDbManager.archivePartitions`); `checkpoint` writes an account's checkpoint.
 */
export async function archivePartitions(
  db: DbManager,
  options: ArchivePartitionsOptions,
  checkpoint: (userId: string) => Promise<unknown>,
  now: Date,
): Promise<ArchivePartitionsReport> {
  const o = parse(ArchivePartitionsOptions, options, "options");
  if (o.before.getTime() > now.getTime())
    throw new ValidationError(
      `[credit-management] archivePartitions: before (${o.before.toISOString()}) is in the future: only partitions that no longer take writes are archived`,
      [{ path: "options.before", message: "must not be in the future" }],
    );
  const archive = db.archivePartitions?.bind(db);
  if (archive === undefined)
    throw new ConfigurationError(
      `[credit-management] the ${db.name} store has no time partitions (PostgresDbManager with \`partitions\`): use archiveJournal`,
    );
  // A folder that cannot be read (missing, no access) is refused just below, naming it.
  const dir = await nodeBuiltin<typeof FsPromises>("node:fs/promises")
    .stat(o.dir)
    .catch(() => null);
  if (dir === null || !dir.isDirectory())
    throw new ConfigurationError(`[credit-management] archivePartitions: ${o.dir} is not a directory`);
  // The revenue summary reads every entry before partitions go (docs/revenue.md).
  await catchUpRevenue(db);
  return archive({
    before: o.before,
    dir: o.dir,
    keepDetached: o.keepDetached === true,
    checkpoint: o.checkpoint === false ? null : checkpoint,
  });
}

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
  const out = await nodeBuiltin<typeof FsPromises>("node:fs/promises").open(o.file, "wx");
  try {
    /** Accounts written to the file and not yet removed from the store: user → the checkpoint's seq. */
    let pending: [string, number][] = [];
    const flush = async () => {
      if (pending.length === 0) return;
      await out.datasync();
      // The revenue summary reads every entry before it goes (docs/revenue.md, "Limits of this
      // release"): an entry removed unread would be missing from its reports for good.
      for (const [userId] of pending) await catchUpRevenue(db, { userId });
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
      let lines = "";
      let count = 0;
      for await (const page of journalPages(db, userId)) {
        for (const e of page) {
          if (e.seq > cp.seq) break;
          lines += `${JSON.stringify(e)}\n`;
          count++;
        }
        if ((page[page.length - 1]?.seq ?? cp.seq) >= cp.seq) break;
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
export function verifyArchive(file: string): Promise<{ accounts: ArchiveAccountReport[]; problems: string[] }> {
  return verifyArchives([file]);
}

/** The journal reads `verifyArchives` makes of a store. */
export type ArchiveStore = Pick<DbManager, "listJournal">;

/**
 * Checks a sequence of JSONL archives as one: each account's entries from every file (an entry in
 * two files must be the same entry), in seq order — `archiveJournal` files, whose parts end at a
 * checkpoint, and `archivePartitions` files, one per time partition, whose parts end wherever the
 * partition did. Every hash recomputes and chains to the one before (across files), seq has no
 * gap, the part starts at the account's first entry or at a checkpoint, and the replay ends exactly
 * at the state of a checkpoint: the archive's last entry, or — with `store` — the first checkpoint
 * of the store's entries that continue the archive (seq after seq, each chained to the last),
 * which are replayed too. With `store`, an archive's closing checkpoint must be the store's entry
 * at that seq, unless the store no longer has entries that old (archived further since).
 */
export async function verifyArchives(
  files: readonly string[],
  store?: ArchiveStore,
): Promise<{ accounts: ArchiveAccountReport[]; problems: string[] }> {
  const problems: string[] = [];
  const byUser = new Map<string, Map<number, JournalEntry>>();
  for (const file of files) {
    const lines = nodeBuiltin<typeof Readline>("node:readline").createInterface({
      input: nodeBuiltin<typeof Fs>("node:fs").createReadStream(file, { encoding: "utf8" }),
      crlfDelay: Infinity,
    });
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
      let entries = byUser.get(e.userId);
      if (entries === undefined) byUser.set(e.userId, (entries = new Map()));
      const seen = entries.get(e.seq);
      if (seen !== undefined && seen.hash !== e.hash)
        problems.push(
          `${file}:${n}: entry ${e.seq} of ${JSON.stringify(e.userId)} differs from the same entry in an earlier file`,
        );
      // An entry in two files (a checkpoint that ends one archive and starts the next) is kept once.
      if (seen === undefined) entries.set(e.seq, e);
    }
  }
  const accounts: ArchiveAccountReport[] = [];
  for (const [userId, bySeq] of byUser) {
    const entries = [...bySeq.entries()].sort((a, b) => a[0] - b[0]).map(([, e]) => e);
    const first = entries[0] as JournalEntry;
    let last = entries[entries.length - 1] as JournalEntry;
    const early: string[] = [];
    let closing: JournalEntry | null = last.type === "checkpoint" ? last : null;
    if (closing === null && store !== undefined) {
      // The store continues the archive up to its first checkpoint (replayed with it).
      let after = last.seq;
      pages: for await (const page of journalPages(store, userId, after)) {
        for (const e of page) {
          if (e.seq !== after + 1) break pages;
          entries.push(e);
          after = e.seq;
          if (e.type === "checkpoint") break pages;
        }
      }
      const tail = entries[entries.length - 1] as JournalEntry;
      if (tail.seq === last.seq)
        early.push(`the store has no entry ${last.seq + 1} to continue the archive, which ends at seq ${last.seq}`);
      else if (tail.type !== "checkpoint")
        early.push(`the store's entries after the archive (seq ${last.seq + 1} to ${tail.seq}) reach no checkpoint`);
      else closing = tail;
      last = tail;
    }
    // No keys here: a keyed entry's links are checked, not its HMAC (audit() checks that, with the key).
    const report = replayJournal(userId, entries, null, "links only");
    report.problems.unshift(...early);
    if (first.seq !== 1 && first.type !== "checkpoint")
      report.problems.push(`the archive starts at seq ${first.seq}, which is neither the first entry nor a checkpoint`);
    if (closing === null && store === undefined)
      report.problems.push(`the archive ends at seq ${last.seq}, which is not the checkpoint that covers it`);
    if (store !== undefined && closing !== null && bySeq.get(closing.seq) === closing) {
      // The archive's own closing checkpoint: the store's entry at that seq.
      const [stored] = await store.listJournal(userId, { order: "asc", afterSeq: closing.seq - 1, limit: 1 });
      if (stored === undefined || stored.seq !== closing.seq) {
        // Archived further since: a later archive starts with this checkpoint.
        const [firstKept] = await store.listJournal(userId, { order: "asc", limit: 1 });
        if (firstKept === undefined || firstKept.seq < closing.seq)
          report.problems.push(`the store has no entry at the archive's closing checkpoint (seq ${closing.seq})`);
      } else if (stored.hash !== closing.hash) {
        report.problems.push(`the archive's closing checkpoint (seq ${closing.seq}) differs from the store's`);
      }
    }
    report.ok = report.problems.length === 0;
    accounts.push({ ...report, checkpoint: closing === null ? null : { seq: closing.seq, hash: closing.hash } });
  }
  return { accounts, problems };
}
