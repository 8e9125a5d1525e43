import onExit from "on-exit-leak-free";
import type { Logger } from "../logger.js";
import type { DbManager } from "../db/types.js";
import { canonicalEntry } from "../domain/hash.js";
import { LedgerEntriesQuery } from "../models/inputs.js";
import { parse } from "../models/parse.js";
import type { JournalEntry, LedgerEntry } from "../models/records.js";
import { LedgerFile } from "./file.js";
import { nodeBuiltin, refuseOnWorkers } from "../util/runtime.js";
import { newId } from "../util/uuid.js";

/** Options of `new LedgerLogger()`: the store, the file and the clock. @public */
export interface LedgerLoggerOptions {
  /** The store ledger entries are written to. */
  db: DbManager;
  /** Path of the JSONL mirror (created with its folder); omit or false for none. */
  filePath?: string | false;
  /** Where the ledger reports its own trouble (a failing file). Default: silent. */
  logger?: Logger;
  /** Source of "now". Default `() => new Date()`. */
  clock?: () => Date;
  /** @internal The file's writer (the benchmark compares writers). Default: `LedgerFile`. */
  file?: (path: string, failed: (error: Error) => void) => LedgerFileLike;
}

/** @internal What the ledger asks of its file's writer (`LedgerFile`). */
export interface LedgerFileLike {
  reopen(): Promise<boolean>;
  write(chunk: string): void;
  flush(): Promise<void>;
  close(): Promise<void>;
  settle(): void;
}

/** Counters of the JSONL mirror. @public */
export interface LedgerStats {
  /** Lines handed to the file writer. */
  linesWritten: number;
  /** Write or open errors of the file (a failing file never fails a credit operation). */
  fileErrors: number;
  /** The latest file error, if any. */
  lastFileError: string | null;
}

/** Lines are handed to the writer in chunks of about this many characters (or each loop turn). */
const CHUNK = 64 * 1024;

/** The file of a ledger dropped unclosed is finished all the same (its thread would stay). */
const unclosed = new FinalizationRegistry<LedgerFileLike>((file) => void file.close());

/** A ledger's report of its file's failures, holding it weakly (its file's thread must not keep it). */
const reporter = (ledger: LedgerLogger) => {
  const ref = new WeakRef(ledger);
  return (error: Error) => ref.deref()?.fileFailed(error);
};

/**
 * The audit ledger. Transaction events are the journal entries themselves, written to the store
 * inside their unit of work (so they are never stored twice); error and system events are written
 * to the store right away. Every event is mirrored as one JSON line to the JSONL file: lines are
 * collected and handed over in one chunk per event-loop turn (or every 64 KiB) to the file's writer
 * thread (`LedgerFile`), which builds a journal entry's line from its canonical text and hash and
 * appends the chunk — the event loop only keeps the two texts the unit of work made anyway, joins
 * them and posts the chunk. `flush()` and `close()` write what is collected and wait for the file;
 * `reopen()` starts a new file after log rotation. A process that exits before the next turn —
 * `process.exit()`, an uncaught exception, an unhandled rejection — hands over what is collected on
 * its way out and waits for the thread to write it (the process's "exit" event, through
 * on-exit-leak-free, which holds the ledger weakly), so an operation that was reported done never
 * misses its line. (Not pino's worker-thread transport: it copies each line through a shared
 * buffer, decoded and re-encoded on the worker, which costs the event loop about a third of every
 * operation; a chunk is posted as one string, a copy of a few microseconds.)
 * @public
 */
export class LedgerLogger {
  /** The JSON-lines file the ledger appends to; null with none. */
  readonly filePath: string | null;
  private readonly db: DbManager;
  private readonly clock: () => Date;
  private readonly warn: Logger | undefined;
  private file: LedgerFileLike | null = null;
  /** Lines not yet handed to the writer (as pairs of texts, see `LedgerFile`), and their length in characters. */
  private pending: string[] = [];
  private pendingChars = 0;
  private scheduled = false;
  private readonly counters: LedgerStats = { linesWritten: 0, fileErrors: 0, lastFileError: null };
  private closed = false;

  /** An audit ledger over `options.db`, appending to `options.filePath` when given. */
  constructor(options: LedgerLoggerOptions) {
    this.db = options.db;
    this.clock = options.clock ?? (() => new Date());
    this.warn = options.logger;
    this.filePath = options.filePath ? options.filePath : null;
    if (this.filePath !== null) {
      // Refused here, when the manager is made, rather than at the first write (docs/runtimes.md).
      refuseOnWorkers(
        "The ledger file (`ledger: { filePath }`) and its writer thread",
        "a Worker has no file system to append to and no threads; leave `ledger` unset (the journal in the store is the record, and `credits.audit()` checks it)",
      );
      // A runtime without files (an edge runtime) is refused here too.
      nodeBuiltin("node:fs");
      this.file = (options.file ?? ((path, failed) => new LedgerFile(path, failed)))(this.filePath, reporter(this));
      void this.file.reopen();
      onExit.register(this, LedgerLogger.beforeExit);
      unclosed.register(this, this.file, this);
    }
  }

  /** On the process's way out: the lines of the last turn handed over, and everything written. */
  private static beforeExit(ledger: LedgerLogger): void {
    if (!ledger.closed) ledger.drain();
    ledger.file?.settle();
  }

  /**
   * Mirrors committed journal entries to the file (they are already in the store). `canonicals`:
   * their canonical texts where the caller has them (see `ledgerLineOf`).
   */
  recordTransactions(entries: readonly JournalEntry[], canonicals?: readonly string[]): void {
    if (this.file === null || this.closed) return;
    for (let i = 0; i < entries.length; i++) {
      // The canonical text and the hash: the writer thread makes the line of them (`ledgerLineOf`).
      const entry = entries[i] as JournalEntry;
      const canonical = canonicals?.[i] ?? canonicalEntry(entry);
      this.pending.push(canonical);
      this.pendingChars += canonical.length;
      this.write(entry.hash);
    }
  }

  /**
   * @internal Appends one line, as it is, to the file only (a credit lease's charge, hold and
   * settle lines: docs/metering.md, "Leases"). Nothing without a file.
   */
  recordLine(line: string): void {
    if (this.file === null || this.closed) return;
    this.pending.push("");
    this.write(line);
  }

  /** Records an error event (store + file). */
  async logError(
    message: string,
    details: Record<string, unknown> = {},
    context: { userId?: string; correlationId?: string } = {},
  ): Promise<LedgerEntry> {
    return this.record("error", message, details, context);
  }

  /** Records a system event such as a job report (store + file). */
  async logSystem(
    message: string,
    details: Record<string, unknown> = {},
    context: { userId?: string; correlationId?: string } = {},
  ): Promise<LedgerEntry> {
    return this.record("system", message, details, context);
  }

  /** System and error events, newest first. For transactions read the journal (`getCreditHistory`). */
  async getEntries(query: LedgerEntriesQuery = {}): Promise<LedgerEntry[]> {
    const q = parse(LedgerEntriesQuery, query, "query");
    return this.db.listLedgerEntries({ ...q, limit: q.limit ?? 100 });
  }

  /** Counts of the entries written and the errors met since the ledger started. */
  get stats(): LedgerStats {
    return { ...this.counters };
  }

  /** Lines collected for the file but not yet handed to its writer (`manager.health()`). */
  get backlog(): number {
    return this.pending.length / 2;
  }

  /** Hands every buffered line to the writer and waits until they are in the file. */
  async flush(): Promise<void> {
    if (this.file === null || this.closed) return;
    this.drain();
    await this.file.flush();
  }

  /** Starts a new file at the same path (after log rotation moved the old one away). */
  async reopen(): Promise<void> {
    if (this.file === null || this.closed) return;
    this.drain();
    await this.file.reopen();
  }

  /** Writes what is buffered and closes the file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.drain();
    this.closed = true;
    // Registered until the file is finished: a process that leaves meanwhile still waits for it.
    if (this.file !== null) {
      unclosed.unregister(this);
      await this.file.close();
    }
    onExit.unregister(this);
  }

  private async record(
    eventType: "error" | "system",
    message: string,
    details: Record<string, unknown>,
    context: { userId?: string; correlationId?: string },
  ): Promise<LedgerEntry> {
    const entry: LedgerEntry = {
      id: newId(),
      eventType,
      userId: context.userId ?? null,
      correlationId: context.correlationId ?? null,
      message,
      details,
      createdAt: this.clock(),
    };
    await this.db.insertLedgerEntry(entry);
    if (this.file !== null && !this.closed) {
      // A line as it is: after an empty first text.
      this.pending.push("");
      this.write(JSON.stringify(entry));
    }
    return entry;
  }

  private write(line: string): void {
    this.pending.push(line);
    this.pendingChars += line.length;
    this.counters.linesWritten++;
    if (this.pendingChars >= CHUNK) this.drain();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.drain());
    }
  }

  private drain(): void {
    this.scheduled = false;
    if (this.pending.length === 0 || this.file === null) return;
    // One flat string (join), not a rope of texts the thread would have to flatten.
    const chunk = this.pending.join("\n");
    this.pending = [];
    this.pendingChars = 0;
    this.file.write(chunk);
  }

  /** @internal Counts (and logs) a failure of the file. */
  fileFailed(error: Error): void {
    this.counters.fileErrors++;
    this.counters.lastFileError = error.message;
    this.warn?.warn({ err: error, filePath: this.filePath }, "credit-management: ledger file write failed");
  }
}
