import { randomUUID } from "node:crypto";
import { pino, type Logger } from "pino";
import type { DbManager } from "../db/types.js";
import { ledgerLine } from "../domain/hash.js";
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

type Destination = ReturnType<typeof pino.destination>;

/**
 * The audit ledger. Transaction events are the journal entries themselves, written to the store
 * inside their unit of work (so they are never stored twice); error and system events are written
 * to the store right away. Every event is mirrored as one JSON line to the JSONL file through pino
 * (append-only, buffered, flushed on `close()`; `reopen()` after log rotation).
 */
export class LedgerLogger {
  readonly filePath: string | null;
  private readonly db: DbManager;
  private readonly clock: () => Date;
  private readonly warn: Logger | undefined;
  private readonly dest: Destination | null;
  private readonly counters: LedgerStats = { linesWritten: 0, fileErrors: 0, lastFileError: null };
  private closed = false;
  /** The file opened; until then (or if it never does) there is nothing to flush or wait for. */
  private ready = false;

  constructor(options: LedgerLoggerOptions) {
    this.db = options.db;
    this.clock = options.clock ?? (() => new Date());
    this.warn = options.logger;
    this.filePath = options.filePath ? options.filePath : null;
    if (this.filePath === null) {
      this.dest = null;
      return;
    }
    // pino's own destination (sonic-boom): buffered, asynchronous appends, reopen for rotation.
    // Lines are the ledger entries as they are, so we hand it finished JSON (no level/pid noise).
    this.dest = pino.destination({ dest: this.filePath, sync: false, mkdir: true, minLength: 8 * 1024 });
    this.dest.on("error", (error: Error) => this.fileFailed(error));
    this.dest.once("ready", () => (this.ready = true));
  }

  /** Mirrors committed journal entries to the file (they are already in the store). */
  recordTransactions(entries: readonly JournalEntry[]): void {
    if (this.dest === null || this.closed) return;
    for (const e of entries) this.write(ledgerLine(e));
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

  /** Writes buffered lines to the file now. */
  async flush(): Promise<void> {
    const dest = this.dest;
    if (dest === null || this.closed) return;
    if (!(await this.opened())) return;
    await new Promise<void>((resolve) => {
      try {
        dest.flush((error?: Error | null) => {
          if (error) this.fileFailed(error);
          resolve();
        });
      } catch (error) {
        this.fileFailed(error as Error);
        resolve();
      }
    });
  }

  /** Reopens the file (after log rotation moved it away). */
  reopen(): void {
    if (this.dest === null || this.closed) return;
    try {
      this.dest.reopen();
    } catch (error) {
      this.fileFailed(error as Error);
    }
  }

  /** Flushes and closes the file. Idempotent. */
  async close(): Promise<void> {
    const dest = this.dest;
    if (dest === null || this.closed) return;
    if (!(await this.opened())) {
      this.closed = true;
      dest.destroy();
      return;
    }
    this.closed = true;
    await new Promise<void>((resolve) => {
      const done = () => resolve();
      dest.once("close", done);
      dest.once("error", done);
      try {
        dest.end();
      } catch (error) {
        this.fileFailed(error as Error);
        resolve();
      }
    });
  }

  /** Waits for a pending open (briefly, never forever); false when the file could not be opened. */
  private async opened(): Promise<boolean> {
    const dest = this.dest;
    if (dest === null) return false;
    if (this.ready) return true;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2000);
      timer.unref();
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      dest.once("ready", done);
      dest.once("error", done);
    });
    return this.ready;
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
    if (this.dest !== null && !this.closed) this.write(`${JSON.stringify(entry)}\n`);
    return entry;
  }

  private write(line: string): void {
    try {
      (this.dest as Destination).write(line);
      this.counters.linesWritten++;
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
