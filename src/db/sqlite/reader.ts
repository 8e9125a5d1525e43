import type * as WorkerThreads from "node:worker_threads";
import type { Worker } from "node:worker_threads";
import { nodeBuiltin } from "../../core/util/runtime.js";
import type { SqliteDriver } from "./options.js";

// The SQLite store's reader thread (docs/storage.md, "Reports off the event loop"): the queries of
// reports, which may read a large part of the journal, run on a thread of their own, on a
// read-only connection to the same WAL file, so that a report never holds up the event loop (the
// driver is synchronous: a statement on the event loop's connection stops everything else until it
// is done).

type Row = Record<string, unknown>;

/**
 * What the thread runs (CommonJS, evaluated: nothing to bundle). It opens `file` read-only with the
 * store's driver, says `{ ready }` (or `{ failed }` and ends), then answers each `{ id, text,
 * params }` with `{ id, rows }` or `{ id, error }`, one at a time in the order asked. A lock it meets
 * (a checkpoint of the WAL) it waits for here, off the event loop.
 */
const THREAD = `"use strict";
const { parentPort, workerData } = require("node:worker_threads");
const { createRequire } = require("node:module");
let db;
let finalize = () => {};
try {
  if (workerData.driver === "bun:sqlite") {
    const { Database } = require(["bun", "sqlite"].join(":"));
    db = new Database(workerData.file, { readonly: true });
    db.exec("PRAGMA busy_timeout = 5000");
    finalize = (s) => s.finalize();
  } else {
    let Driver;
    let failure;
    for (const base of workerData.bases) {
      try {
        Driver = createRequire(base)("better-sqlite3");
        break;
      } catch (error) {
        failure = error;
      }
    }
    if (Driver === undefined) throw failure || new Error("better-sqlite3 cannot be found");
    db = new Driver(workerData.file, { readonly: true, fileMustExist: true });
    db.pragma("busy_timeout = 5000");
  }
  parentPort.postMessage({ ready: true });
} catch (error) {
  parentPort.postMessage({ failed: String((error && error.message) || error) });
  process.exit();
}
parentPort.on("message", (m) => {
  let statement;
  try {
    statement = db.prepare(m.text);
    parentPort.postMessage({ id: m.id, rows: statement.all(...m.params) });
  } catch (error) {
    parentPort.postMessage({ id: m.id, error: { message: String((error && error.message) || error), code: error && error.code } });
  } finally {
    if (statement !== undefined) finalize(statement);
  }
});`;

/** A query on the thread: its answer, or null when the thread ended before it (then the event loop runs it). */
interface Pending {
  resolve(rows: Row[] | null): void;
  reject(error: Error): void;
}

/**
 * The reader thread of one store, started at the first report. `all(text, params, here)` answers the
 * rows of a read-only statement from the thread; where there is no thread — a database in memory
 * or handed in without its file, no `worker_threads` (or the permission model refuses it), a driver
 * the thread cannot load — `here()` runs it on the event loop, as a store without the thread
 * would (docs/storage.md, "Reports off the event loop").
 */
export class SqliteReader {
  private thread: Worker | null = null;
  private starting: Promise<Worker | null> | null = null;
  /** No thread can be had: every query runs on the event loop. */
  private threadless: boolean;
  private readonly pending = new Map<number, Pending>();
  private next = 0;

  constructor(
    /** The file the thread opens; null: none (a database in memory). */
    private readonly file: string | null,
    private readonly driver: SqliteDriver,
  ) {
    this.threadless = file === null;
  }

  async all(text: string, params: readonly unknown[], here: () => Row[] | Promise<Row[]>): Promise<Row[]> {
    const thread = this.threadless ? null : await (this.starting ??= this.start());
    if (thread === null) return here();
    const id = this.next++;
    const rows = await new Promise<Row[] | null>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Held while a query is out: an unreferenced thread would let the process end before it answers.
      if (this.pending.size === 1) thread.ref();
      thread.postMessage({ id, text, params });
    });
    return rows ?? here();
  }

  private start(): Promise<Worker | null> {
    return new Promise((resolve) => {
      let thread: Worker;
      try {
        const { Worker } = nodeBuiltin<typeof WorkerThreads>("node:worker_threads");
        const cwd = typeof process.cwd === "function" ? process.cwd() : ".";
        // Where the thread looks for better-sqlite3: beside the app's entry script, then its working folder.
        const bases = [process.argv[1], `${cwd}/`].filter((b): b is string => typeof b === "string" && b !== "");
        thread = new Worker(THREAD, {
          eval: true,
          execArgv: [],
          workerData: { file: this.file, driver: this.driver, bases },
        });
      } catch {
        this.threadless = true;
        resolve(null);
        return;
      }
      thread.on("message", (m: { ready?: true; failed?: string; id?: number; rows?: Row[]; error?: Row }) => {
        if (m.ready === true) {
          // Held until it is ready (the caller waits for it); then only while a query is out.
          thread.unref();
          this.thread = thread;
          resolve(thread);
        } else if (m.failed !== undefined) {
          this.threadless = true;
          resolve(null);
        } else {
          const p = this.pending.get(m.id as number);
          if (p === undefined) return;
          this.pending.delete(m.id as number);
          if (this.pending.size === 0) thread.unref();
          if (m.error !== undefined)
            p.reject(Object.assign(new Error(String(m.error.message)), { code: m.error.code }));
          else p.resolve(m.rows ?? []);
        }
      });
      const ended = () => {
        // Ended without being asked (or before it was ready): the event loop takes the queries over.
        this.threadless = true;
        this.thread = null;
        resolve(null);
        for (const p of this.pending.values()) p.resolve(null);
        this.pending.clear();
      };
      thread.on("error", ended);
      thread.on("exit", ended);
    });
  }

  /** Ends the thread (a query still out runs on the event loop, if its caller still waits). */
  async close(): Promise<void> {
    const thread = this.thread ?? (this.starting === null ? null : await this.starting);
    this.threadless = true;
    this.thread = null;
    this.starting = null;
    if (thread === null) return;
    await thread.terminate();
  }
}
