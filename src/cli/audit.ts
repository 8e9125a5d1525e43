import { closeSync, createReadStream, fstatSync, fsyncSync, openSync, readSync, writeSync } from "node:fs";
import { createInterface } from "node:readline";
import type { DbManager } from "../core/db/types.js";
import { canonicalEntry, hashEntry, ledgerLineOf } from "../core/domain/hash.js";
import type { AuditReport } from "../core/domain/replay.js";
import { verifyArchives } from "../modules/archive/service.js";
import type { JournalEntry } from "../core/models/index.js";
import type { CliIo } from "./run.js";
import { openCommandStore, withCommandManager, type StoreSource } from "./store.js";
import { addLeaseLine, compareWindow, leaseLineOf, leaseWindowOf, type FileWindow } from "../modules/leases/rules.js";
import { UsageError } from "../util/usage-error.js";

export interface AuditCommand {
  /** Accounts named on the command line (`--user`). */
  users: readonly string[];
  /** Every account of the store (`--all`). */
  all: boolean;
  /** One JSON object per account on standard output instead of text. */
  json: boolean;
  /** JSONL ledger files to check against the store (`--ledger-file`, all of them, rotated ones too). */
  ledgerFiles: readonly string[];
  /**
   * Accept an account's lines out of `seq` order within a file (`--unordered`): for a file that
   * several processes appended to at once. Default false: one writer keeps each account in order.
   */
  unordered?: boolean;
  /** Replay from each account's latest checkpoint (default) or from its first entry (`--from`). */
  from?: "checkpoint" | "genesis";
  /**
   * JSONL archives (`credits.archiveJournal`) to verify (`--archive`): alone, without a store; with
   * one, each account's closing checkpoint is compared with the store's.
   */
  archives?: readonly string[];
  /**
   * Append to the last of `ledgerFiles` the audited accounts' journal entries that none of the
   * files has (`--repair`: lines lost in a crash between the commit and the file), in order.
   */
  repair?: boolean;
  /** A SQLite file to audit instead of the environment's store (`--sqlite`). */
  sqlite?: string;
}

/** Where the audited store comes from (the package exports it under this name). */
export type { StoreSource as AuditSource } from "./store.js";

/** Accounts are listed from the store this many at a time (`--all`). */
const PAGE = 1000;

/** A journal entry none of the ledger files has (`--repair`); `gap`: the files have later lines of its account. */
interface LostEntry {
  entry: JournalEntry;
  gap: boolean;
}

/** What one ledger file line says about a transaction, by user and seq. */
interface FileLine {
  hash: string;
  file: string;
  line: number;
}

/**
 * `credit-management audit`: replays every named account's journal (`credits.audit`) — hash chain,
 * gap-free seq, balance, reserved, debt and grants recomputed and compared with the stored state —
 * and, with ledger files, checks every transaction line: its hash recomputes from its own text, and
 * it and the store's entry agree, both ways. Read-only: the store is opened without `init()` and no
 * ledger file is written. Resolves to the exit code: 0 all consistent, 1 a problem found, 3 an
 * account named with `--user` does not exist (and nothing else was wrong).
 */
export async function runAudit(command: AuditCommand, io: CliIo, source: StoreSource = {}): Promise<number> {
  const archives = command.archives ?? [];
  if (command.users.length === 0 && !command.all && archives.length > 0) {
    // The archives alone; against the store's checkpoints when there is a store.
    const { db, owned, memoryFromEnv } = await openCommandStore(command.sqlite, source);
    try {
      return await auditArchives(archives, command.json, io, memoryFromEnv ? undefined : db);
    } finally {
      if (owned) await db.close();
    }
  }
  const store = { name: "audit", sqlite: command.sqlite, writes: false };
  return withCommandManager(store, source, async (manager, db) => {
    if (command.all && db.listAccountIds === undefined) {
      throw new UsageError("this store cannot list its accounts: name them with --user");
    }
    const fileLines = new Map<string, Map<number, FileLine>>();
    /** Credit lease windows as the files tell them, by user, then by `<lease>:<window>`. */
    const leaseWindows = new Map<string, Map<string, FileWindow>>();
    let failed = 0;
    let missing = 0;
    let accounts = 0;
    let fileProblems = 0;
    for (const file of command.ledgerFiles)
      fileProblems += await readLedgerFile(file, fileLines, io, command.json, command.unordered === true, leaseWindows);
    /** `--repair`: the store's entries none of the files has, to append. */
    const lost: LostEntry[] | undefined = command.repair === true ? [] : undefined;

    /** The accounts with problems, named in the summary. */
    const failing: string[] = [];
    const audit = async (userId: string, named: boolean): Promise<void> => {
      accounts++;
      let report: AuditReport;
      try {
        report = await manager.credits.audit(userId, command.from === undefined ? {} : { from: command.from });
      } catch (error) {
        // One account the audit cannot read (a row the store cannot decode, say) is that account's
        // problem: the others are audited all the same.
        failed++;
        failing.push(userId);
        const message = `the audit could not run: ${error instanceof Error ? error.message : String(error)}`;
        if (command.json) io.stdout(`${JSON.stringify({ userId, ok: false, problems: [message] })}\n`);
        else io.stdout(`FAIL  ${JSON.stringify(userId)}: ${message}\n`);
        return;
      }
      // A name with no account and no journal is most likely a typo: "ok, 0 entries" would hide it.
      if (named && report.entries === 0 && (await db.getAccount(userId)) === null) {
        missing++;
        const lines = fileLines.get(userId);
        fileLines.delete(userId);
        if (lines !== undefined && lines.size > 0) failed++;
        if (command.json)
          io.stdout(
            `${JSON.stringify({ userId, ok: false, missing: true, problems: ["no such account in the store"] })}\n`,
          );
        else io.stdout(`MISSING ${JSON.stringify(userId)}: no such account in the store\n`);
        return;
      }
      const problems = [...report.problems];
      if (command.ledgerFiles.length > 0)
        problems.push(...(await compareWithFile(db, userId, fileLines.get(userId), leaseWindows.get(userId), lost)));
      fileLines.delete(userId);
      if (problems.length > 0) {
        failed++;
        failing.push(userId);
      }
      print(io, command.json, { ...report, ok: problems.length === 0, problems });
    };
    for (const userId of command.users) await audit(userId, true);
    if (command.all) {
      const named = new Set(command.users);
      let after: string | null = null;
      for (;;) {
        const page: string[] = await (db.listAccountIds as NonNullable<DbManager["listAccountIds"]>)(after, PAGE);
        for (const userId of page) if (!named.has(userId)) await audit(userId, false);
        if (page.length < PAGE) break;
        after = page[page.length - 1] as string;
      }
      // Lines of accounts the store does not have at all.
      for (const [userId, lines] of fileLines) {
        for (const [seq, at] of lines) {
          fileProblems++;
          problem(
            io,
            command.json,
            at,
            `user ${JSON.stringify(userId)} seq ${seq} is in the file but the store has no such account`,
          );
        }
      }
    }
    // The current file: the last one named (the rotated ones come first).
    if (lost !== undefined) repairLedgerFile(command.ledgerFiles.at(-1) as string, lost, io, command.json);
    const archiveCode = archives.length > 0 ? await auditArchives(archives, command.json, io, db) : 0;
    if (archiveCode !== 0) fileProblems++;
    const summary =
      `${accounts} account${accounts === 1 ? "" : "s"} audited: ${accounts - failed - missing} consistent, ${failed} with problems` +
      (failing.length > 0 ? ` (${namesOf(failing)})` : "") +
      (missing > 0 ? `, ${missing} not found` : "") +
      (command.ledgerFiles.length > 0
        ? `; ${fileProblems} problem${fileProblems === 1 ? "" : "s"} in the ledger files`
        : "");
    if (command.json) io.stderr(`${summary}\n`);
    else io.stdout(`${summary}\n`);
    return failed > 0 || fileProblems > 0 ? 1 : missing > 0 ? 3 : 0;
  });
}

/** The accounts of the summary: the first 20 by name, then how many more. */
function namesOf(users: readonly string[]): string {
  const shown = users.slice(0, 20).map((u) => JSON.stringify(u));
  return users.length > shown.length ? `${shown.join(", ")} and ${users.length - shown.length} more` : shown.join(", ");
}

function print(io: CliIo, json: boolean, report: AuditReport): void {
  if (json) {
    io.stdout(
      `${JSON.stringify({ userId: report.userId, ok: report.ok, entries: report.entries, balance: report.balance, reserved: report.reserved, debt: report.debt, problems: report.problems, ...(report.issues === undefined ? {} : { issues: report.issues }) })}\n`,
    );
    return;
  }
  const id = JSON.stringify(report.userId);
  if (report.ok) {
    io.stdout(
      `ok    ${id}: ${report.entries} entries, balance ${report.balance}, reserved ${report.reserved}, debt ${report.debt}\n`,
    );
    return;
  }
  io.stdout(`FAIL  ${id}: ${report.problems.length} problem${report.problems.length === 1 ? "" : "s"}\n`);
  for (const p of report.problems) io.stdout(`      - ${p}\n`);
}

function problem(io: CliIo, json: boolean, at: { file: string; line: number }, message: string): void {
  if (json) io.stdout(`${JSON.stringify({ file: at.file, line: at.line, problem: message })}\n`);
  else io.stdout(`FAIL  ${at.file}:${at.line}: ${message}\n`);
}

/**
 * Reads a JSONL ledger file: every transaction line must parse and its hash must recompute from the
 * entry it carries (a line edited after it was written does not); each account's lines come once
 * and, unless `unordered`, in `seq` order within the file (a reader that follows the hash chain
 * line by line relies on it). Keeps each line's hash by user and seq for the comparison with the
 * store. Returns the number of problems printed.
 */
async function readLedgerFile(
  file: string,
  into: Map<string, Map<number, FileLine>>,
  io: CliIo,
  json: boolean,
  unordered: boolean,
  leases: Map<string, Map<string, FileWindow>>,
): Promise<number> {
  let problems = 0;
  let n = 0;
  /** Per user, the last seq of this file and its line. */
  const last = new Map<string, { seq: number; line: number }>();
  /** A problem of the line being read. */
  const bad = (message: string) => {
    problems++;
    problem(io, json, { file, line: n }, message);
  };
  const lines = createInterface({ input: createReadStream(file, { encoding: "utf8" }), crlfDelay: Infinity });
  for await (const text of lines) {
    n++;
    if (text.trim() === "") continue;
    let event: { eventType?: unknown; details?: unknown };
    try {
      event = JSON.parse(text) as typeof event;
    } catch {
      bad("not a JSON line");
      continue;
    }
    if (event.eventType === "lease") {
      // A credit lease's line (docs/metering.md, "Leases"): summed by window, compared below.
      const lease = leaseLineOf(event);
      if (lease === null) {
        bad("a lease line without its user, lease and window");
        continue;
      }
      let byUser = leases.get(lease.userId);
      if (byUser === undefined) leases.set(lease.userId, (byUser = new Map()));
      addLeaseLine(byUser, lease);
      continue;
    }
    if (event.eventType !== "transaction") continue;
    const entry = event.details as (Omit<JournalEntry, "createdAt"> & { createdAt: string }) | undefined;
    if (
      entry === undefined ||
      entry === null ||
      typeof entry !== "object" ||
      typeof entry.userId !== "string" ||
      typeof entry.seq !== "number"
    ) {
      bad("a transaction line without its entry");
      continue;
    }
    let recomputed: string | null = null;
    // A keyed entry's HMAC needs its key, which the file's audit has not: its links are checked.
    const keyed = typeof entry.keyId === "string";
    try {
      // A line is the entry's hashed text, which carries no hash version: the fields version 2 adds
      // appear when set and an entry of version 1 has none, so hashing it as version 2 is right for
      // both (docs/concepts.md, "A keyed chain").
      // Its times are ISO strings on the line: the hash covers them as dates.
      const date = (v: unknown) => (typeof v === "string" ? new Date(v) : (v as Date | null | undefined));
      if (!keyed)
        recomputed = hashEntry({
          ...entry,
          hashVersion: 2,
          createdAt: new Date(entry.createdAt),
          occurredAt: date(entry.occurredAt),
          effectiveAt: date(entry.effectiveAt),
        });
    } catch {
      // An entry too broken to hash: reported below as a mismatch.
    }
    if (!keyed && recomputed !== entry.hash) {
      bad(`user ${JSON.stringify(entry.userId)} seq ${entry.seq}: the line's hash does not match its content`);
    }
    let byUser = into.get(entry.userId);
    if (byUser === undefined) into.set(entry.userId, (byUser = new Map()));
    const seen = byUser.get(entry.seq);
    if (seen !== undefined) {
      bad(
        seen.hash !== entry.hash
          ? `user ${JSON.stringify(entry.userId)} seq ${entry.seq} differs from the line at ${seen.file}:${seen.line}`
          : `user ${JSON.stringify(entry.userId)} seq ${entry.seq} is written twice (first at ${seen.file}:${seen.line})`,
      );
      continue;
    }
    const before = last.get(entry.userId);
    if (!unordered && before !== undefined && entry.seq < before.seq) {
      bad(
        `user ${JSON.stringify(entry.userId)} seq ${entry.seq} comes after seq ${before.seq} (line ${before.line}): an account's lines are out of order`,
      );
    }
    if (before === undefined || entry.seq > before.seq) last.set(entry.userId, { seq: entry.seq, line: n });
    byUser.set(entry.seq, { hash: entry.hash, file, line: n });
  }
  return problems;
}

/**
 * The store's journal of one account against the file's lines for it: missing, extra, different.
 * With `lost`, an entry in none of the files is put there (to append) instead of being a problem.
 */
async function compareWithFile(
  db: DbManager,
  userId: string,
  lines: Map<number, FileLine> | undefined,
  leases: Map<string, FileWindow> | undefined,
  lost?: LostEntry[],
): Promise<string[]> {
  const problems: string[] = [];
  const windows = new Set<string>();
  const file = lines ?? new Map<number, FileLine>();
  let afterSeq = 0;
  let last = 0;
  for (;;) {
    const page = await db.listJournal(userId, { order: "asc", afterSeq, limit: PAGE });
    for (const entry of page) {
      const line = file.get(entry.seq);
      if (line === undefined && lost !== undefined)
        lost.push({ entry, gap: [...file.keys()].some((seq) => seq > entry.seq) });
      else if (line === undefined) problems.push(`seq ${entry.seq} is in the store but in none of the ledger files`);
      else if (line.hash !== entry.hash)
        problems.push(`seq ${entry.seq} differs between the store and ${line.file}:${line.line}`);
      // A lease's settle: its window's per-request lines add up to it.
      const window = leaseWindowOf(entry.metadata);
      if (window !== null) {
        const key = `${window.lease}:${window.window}`;
        windows.add(key);
        const differs = compareWindow(window, leases?.get(key));
        if (differs !== null) problems.push(`seq ${entry.seq}: ${differs}`);
      }
      last = entry.seq;
    }
    if (page.length < PAGE) break;
    afterSeq = last;
  }
  for (const [seq, line] of file) {
    if (seq > last) problems.push(`seq ${seq} is in ${line.file}:${line.line} but not in the store`);
  }
  for (const [key, w] of leases ?? []) {
    if (w.requests > 0 && !windows.has(key))
      problems.push(
        `lease ${w.lease} window ${w.window}: ${w.requests} charges for ${w.total} credits in the ledger file were never settled (run the leases' recover())`,
      );
  }
  return problems;
}

/**
 * `--repair`: appends `lost` (journal entries of the store that none of the ledger files has) to
 * `file`, oldest first (by `createdAt`, then account and `seq`), as the ledger writes them, and
 * syncs it. A file whose last line was cut off gets a newline first, so the cut line stays one bad
 * line. Reports how many were appended; an entry older than a line of its account already in the
 * files (a gap in the middle) leaves that account out of `seq` order in the file: say so, since
 * later audits of the file then need `--unordered`.
 */
function repairLedgerFile(file: string, lost: LostEntry[], io: CliIo, json: boolean): void {
  lost.sort(
    ({ entry: a }, { entry: b }) =>
      a.createdAt.getTime() - b.createdAt.getTime() ||
      (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0) ||
      a.seq - b.seq,
  );
  const unordered = new Set(lost.filter((l) => l.gap).map((l) => l.entry.userId));
  if (lost.length > 0) {
    let text = "";
    for (const { entry } of lost) text += ledgerLineOf(canonicalEntry(entry), entry.hash);
    const fd = openSync(file, "a+");
    try {
      const size = fstatSync(fd).size;
      if (size > 0) {
        const last = Buffer.alloc(1);
        readSync(fd, last, 0, 1, size - 1);
        if (last[0] !== 0x0a) text = `\n${text}`;
      }
      const bytes = Buffer.from(text, "utf8");
      for (let at = 0; at < bytes.length;) at += writeSync(fd, bytes, at, bytes.length - at);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }
  const note =
    unordered.size > 0
      ? ` (${unordered.size} account${unordered.size === 1 ? "" : "s"} now out of seq order in the file: audit it with --unordered)`
      : "";
  if (json) io.stdout(`${JSON.stringify({ file, repaired: lost.length, unordered: [...unordered] })}\n`);
  else io.stdout(`repaired ${file}: appended ${lost.length} missing entr${lost.length === 1 ? "y" : "ies"}${note}\n`);
}

/**
 * `--archive`: verifies each JSONL archive (`verifyArchive`) and, with a store, that the checkpoint
 * closing each account's part is the store's entry at that seq (docs/operations.md, "Checkpoints and
 * archival"). Prints one line per account and file; resolves to 0 (all verified) or 1.
 */
async function auditArchives(
  files: readonly string[],
  json: boolean,
  io: CliIo,
  db: DbManager | undefined,
): Promise<number> {
  let failed = 0;
  // One sequence: an account's part may run across files (one per time partition) and on into the store.
  const { accounts, problems } = await verifyArchives(files, db);
  for (const p of problems) {
    failed++;
    if (json) io.stdout(`${JSON.stringify({ files, problem: p })}\n`);
    else io.stdout(`FAIL  ${p}\n`);
  }
  for (const report of accounts) {
    if (!report.ok) failed++;
    print(io, json, { ...report, userId: report.userId });
  }
  const what = files.length === 1 ? `${files[0]}: ` : `${files.length} archive files (${files.join(", ")}): `;
  const summary = `${what}${accounts.length} account${accounts.length === 1 ? "" : "s"} in the archive${files.length === 1 ? "" : "s"}, ${accounts.filter((a) => a.ok).length} verified${db === undefined ? " (no store to compare with)" : " against the store"}`;
  if (json) io.stderr(`${summary}\n`);
  else io.stdout(`${summary}\n`);
  return failed > 0 ? 1 : 0;
}
