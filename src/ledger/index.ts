import { randomUUID } from "node:crypto";
import onExit from "on-exit-leak-free";
import { pino, type Logger } from "pino";
import type { DbManager } from "../db/types.js";
import { ledgerLinePieces } from "../domain/hash.js";
import type { JournalEntry, LedgerEntry } from "../models/index.js";

export interface LedgerLoggerOptions {
  db: DbManager;
  /** Path of the JSONL mirror (created with its folder); omit or false for none. */
  filePath?: string | false;
  /** Where the ledger reports its own trouble (a failing file). Default: silent. */
  logger?: Logger;
  clock?: () => Date;
}

/** Counters of the JSONL mirror. */
export interface LedgerStats {
  /** Lines handed to the file writer. */
  linesWritten: number;
  /** Write or open errors of the file (a failing file never fails a credit operation). */
  fileErrors: number;
  /** The latest file error, if any. */
  lastFileError: string | null;
}

/** The part of pino's file destination (sonic-boom) the ledger uses. */
interface FileStream {
  write(chunk: Buffer): boolean;
  flush(cb: (error?: Error | null) => void): void;
  end(): void;
  on(event: "error", listener: (error: Error) => void): unknown;
  once(event: "close" | "error" | "ready", listener: (...args: unknown[]) => void): unknown;
}

/** Lines are handed to the writer in chunks of about this many characters (or each loop turn). */
const CHUNK = 64 * 1024;

/**
 * The audit ledger. Transaction events are the journal entries themselves, written to the store
 * inside their unit of work (so they are never stored twice); error and system events are written
 * to the store right away. Every event is mirrored as one JSON line to the JSONL file through pino's
 * file destination (`pino.destination`, sonic-boom): lines are collected and written in one chunk
 * per event-loop turn (or every 64 KiB), synchronously — a write of a chunk to the page cache costs
 * about a microsecond per line and keeps memory bounded however long a burst runs. `flush()` and
 * `close()` write what is collected; `reopen()` starts a new file after log rotation. A process that
 * exits before the next turn — `process.exit()`, an uncaught exception, an unhandled rejection —
 * writes what is collected on its way out (the process's "exit" event, through on-exit-leak-free,
 * which holds the ledger weakly), so an operation that was reported done never misses its line. (pino's
 * worker-thread transport was used before: copying each line through a shared buffer, decoding and
 * re-encoding it on the worker cost the event loop about a third of every operation.)
 */
export class LedgerLogger {
  readonly filePath: string | null;
  private readonly db: DbManager;
  private readonly clock: () => Date;
  private readonly warn: Logger | undefined;
  private stream: FileStream | null = null;
  /** Lines not yet handed to the writer, and their length in characters. */
  private pending: string[] = [];
  private pendingChars = 0;
  private scheduled = false;
  private readonly counters: LedgerStats = { linesWritten: 0, fileErrors: 0, lastFileError: null };
  private closed = false;
  /** Writers that failed (could not open the file, died): nothing to wait for. */
  private readonly broken = new WeakSet<FileStream>();

  constructor(options: LedgerLoggerOptions) {
    this.db = options.db;
    this.clock = options.clock ?? (() => new Date());
    this.warn = options.logger;
    this.filePath = options.filePath ? options.filePath : null;
    if (this.filePath !== null) {
      this.stream = this.open(this.filePath);
      onExit.register(this, LedgerLogger.beforeExit);
    }
  }

  /** On the process's way out: the lines of the last turn, written synchronously like any chunk. */
  private static beforeExit(ledger: LedgerLogger): void {
    if (!ledger.closed) ledger.drain();
  }

  /**
   * Mirrors committed journal entries to the file (they are already in the store). `canonicals`:
   * their canonical texts where the caller has them (see `ledgerLine`).
   */
  recordTransactions(entries: readonly JournalEntry[], canonicals?: readonly string[]): void {
    if (this.stream === null || this.closed) return;
    for (let i = 0; i < entries.length; i++) {
      // In three pieces, joined once with the rest of the chunk.
      const [head, details, tail] = ledgerLinePieces(entries[i] as JournalEntry, canonicals?.[i]);
      this.pending.push(head, details);
      this.pendingChars += head.length + details.length;
      this.write(tail);
    }
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
  async getEntries(query: { eventType?: "error" | "system"; userId?: string; before?: Date; limit?: number } = {}) {
    return this.db.listLedgerEntries({ ...query, limit: query.limit ?? 100 });
  }

  get stats(): LedgerStats {
    return { ...this.counters };
  }

  /** Hands every buffered line to the writer and waits until they are in the file. */
  async flush(): Promise<void> {
    const stream = this.stream;
    if (stream === null || this.closed) return;
    this.drain();
    if (this.broken.has(stream)) return;
    await new Promise<void>((resolve) => {
      // A writer that dies while flushing never answers: bounded, like close().
      const timer = setTimeout(resolve, 5000);
      try {
        stream.flush((error) => {
          clearTimeout(timer);
          if (error) this.fileFailed(error);
          resolve();
        });
      } catch (error) {
        clearTimeout(timer);
        this.fileFailed(error as Error);
        resolve();
      }
    });
  }

  /** Starts a new file at the same path (after log rotation moved the old one away). */
  async reopen(): Promise<void> {
    if (this.filePath === null || this.closed) return;
    const old = this.stream;
    this.drain();
    this.stream = this.open(this.filePath);
    if (old !== null) await this.end(old);
  }

  /** Writes what is buffered and closes the file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.drain();
    this.closed = true;
    onExit.unregister(this);
    if (this.stream !== null) await this.end(this.stream);
  }

  /** The file's writer, or null (counted in `stats`) when it cannot be opened. */
  private open(filePath: string): FileStream | null {
    let stream: FileStream;
    try {
      // Buffer mode: the chunk is encoded once, here. In its default (utf8) mode sonic-boom measures
      // every string chunk (Buffer.byteLength) and encodes it a second time after writing it.
      stream = pino.destination({ dest: filePath, sync: true, mkdir: true, contentMode: "buffer" }) as unknown as FileStream;
    } catch (error) {
      this.fileFailed(error as Error);
      return null;
    }
    stream.on("error", (error: Error) => {
      this.broken.add(stream);
      this.fileFailed(error);
    });
    return stream;
  }

  private async end(stream: FileStream): Promise<void> {
    if (this.broken.has(stream)) return;
    await new Promise<void>((resolve) => {
      // Referenced on purpose: its "close" (all lines written, file closed) must be awaited, not
      // raced by the process running out of work.
      const timer = setTimeout(resolve, 5000);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      stream.once("close", done);
      try {
        stream.end();
      } catch (error) {
        this.fileFailed(error as Error);
        done();
      }
    });
  }

  private async record(
    eventType: "error" | "system",
    message: string,
    details: Record<string, unknown>,
    context: { userId?: string; correlationId?: string },
  ): Promise<LedgerEntry> {
    const entry: LedgerEntry = {
      id: randomUUID(),
      eventType,
      userId: context.userId ?? null,
      correlationId: context.correlationId ?? null,
      message,
      details,
      createdAt: this.clock(),
    };
    await this.db.insertLedgerEntry(entry);
    if (this.stream !== null && !this.closed) this.write(`${JSON.stringify(entry)}\n`);
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
    if (this.pending.length === 0 || this.stream === null) return;
    if (this.broken.has(this.stream)) {
      // The lines are in the store; the file cannot take them. Counted once per failure already.
      this.pending = [];
      this.pendingChars = 0;
      return;
    }
    // One flat string (join), not a rope of lines the writer would have to flatten.
    const chunk = Buffer.from(this.pending.join(""), "utf8");
    this.pending = [];
    this.pendingChars = 0;
    try {
      this.stream.write(chunk);
    } catch (error) {
      this.fileFailed(error as Error);
    }
  }

  private fileFailed(error: Error): void {
    this.counters.fileErrors++;
    this.counters.lastFileError = error.message;
    this.warn?.warn({ err: error, filePath: this.filePath }, "credit-management: ledger file write failed");
  }
}
