import type * as Fs from "node:fs";
import type * as Path from "node:path";
import type * as WorkerThreads from "node:worker_threads";
import type { Worker } from "node:worker_threads";
import { canonicalEntry, ledgerLineOf, literalEnd } from "../domain/hash.js";
import { nodeBuiltin } from "../util/runtime.js";

// Loaded when a ledger file is opened, not when the package is imported (docs/runtimes.md).
const fs = (): typeof Fs => nodeBuiltin<typeof Fs>("node:fs");
const dirname = (path: string): string => nodeBuiltin<typeof Path>("node:path").dirname(path);

/**
 * The lines of a chunk the ledger hands over: pairs of texts separated by newlines (which JSON text
 * never holds raw) — a journal entry's canonical text and its hash, or an empty text and a line as
 * it is. Self-contained (and without function expressions, see `ledgerLineOf`): the writer thread
 * runs its source too.
 */
export function linesOf(chunk: string, lineOf: (canonical: string, hash: string) => string): string {
  const parts = chunk.split("\n");
  let lines = "";
  for (let i = 0; i + 1 < parts.length; i += 2) {
    const first = parts[i] as string;
    const second = parts[i + 1] as string;
    lines += first === "" ? `${second}\n` : lineOf(first, second);
  }
  return lines;
}

/**
 * What the writer thread runs (CommonJS, evaluated: nothing to resolve or bundle; the line is
 * built by the very functions the event loop uses, from their source). It takes messages in the
 * order they were posted: a string is a chunk to append to the current file (then the shared count
 * of finished chunks goes up, written or not); `{ id, fd }` syncs the current file and continues
 * in `fd` (-1: none); `{ id }` answers once everything before it is done; `{ id, close }` syncs the
 * file, answers and ends the thread. The event loop opens and closes the files. A failed write is
 * reported once and the file's later chunks are dropped, until the next file.
 */
const THREAD = `"use strict";
${literalEnd.toString()}
const lineOf = (${ledgerLineOf.toString()});
const linesOf = (${linesOf.toString()});
const { parentPort, workerData } = require("node:worker_threads");
const fs = require("node:fs");
const { state, probe } = workerData;
let fd = workerData.fd;
let failed = false;
process.on("exit", () => {
  Atomics.store(state, 1, 1);
  Atomics.notify(state, 0);
});
// The lines must come out as the event loop would make them (a tool that rewrote this module's
// functions could have broken their copies here); if not, they are left to the event loop.
let usable = false;
try {
  usable = linesOf(probe.chunk, lineOf) === probe.lines;
} catch {}
// The file must be the event loop's: Deno's descriptors belong to the thread that opened them
// (docs/runtimes.md), and a thread that cannot write it leaves the writing to the event loop.
try {
  if (usable && fd >= 0) fs.fstatSync(fd);
} catch {
  usable = false;
}
if (!usable) {
  Atomics.store(state, 2, 1);
  process.exit();
}
const pause = new Int32Array(new SharedArrayBuffer(4));
const writeAll = (bytes) => {
  for (let at = 0; at < bytes.length; ) {
    try {
      at += fs.writeSync(fd, bytes, at, bytes.length - at);
    } catch (error) {
      // A non-blocking pipe that is full: wait for its reader.
      if (error.code !== "EAGAIN") throw error;
      Atomics.wait(pause, 0, 0, 10);
    }
  }
};
const sync = () => {
  // Not every file can be synced (a pipe, /dev/null).
  if (fd >= 0) try { fs.fsyncSync(fd); } catch {}
};
parentPort.on("message", (m) => {
  if (typeof m === "string") {
    if (!failed && fd >= 0) {
      try {
        writeAll(Buffer.from(linesOf(m, lineOf), "utf8"));
      } catch (error) {
        failed = true;
        parentPort.postMessage({ error: String((error && error.message) || error) });
      }
    }
    Atomics.add(state, 0, 1);
    Atomics.notify(state, 0);
  } else if (m.fd !== undefined) {
    sync();
    fd = m.fd;
    failed = false;
    parentPort.postMessage({ id: m.id });
  } else if (m.close) {
    sync();
    parentPort.postMessage({ id: m.id });
    // Deno's node:worker_threads has no parentPort.close() (docs/runtimes.md): the thread ends itself.
    if (typeof parentPort.close === "function") parentPort.close();
    else process.exit();
  } else {
    parentPort.postMessage({ id: m.id });
  }
});`;

/** Chunks handed to the thread and not finished yet, beyond which `write` waits for it. */
const MAX_IN_FLIGHT = 16;
/** How long the process's way out, `flush()`, `reopen()` and `close()` wait for the thread, in ms. */
const PATIENCE = 5000;

/** What the thread checks its copies of the line functions against (built once, when first needed). */
let probe: { chunk: string; lines: string } | undefined;
function probeOf(): { chunk: string; lines: string } {
  if (probe === undefined) {
    const canonical = canonicalEntry({
      id: 'e-"1"\\',
      userId: "ü-sér ☕",
      seq: 2,
      type: "commit_reserved",
      amount: 1e15,
      balanceAfter: -3,
      reservedAfter: 0,
      debtAfter: 3,
      grants: [{ grantId: "g", amount: 1 }],
      reservationId: "r",
      idempotencyKey: null,
      fingerprint: null,
      correlationId: 'c,"createdAt":"x"',
      description: "😀\u2028",
      metadata: { createdAt: ',"correlationId":"y"' },
      createdAt: new Date(0),
      prevHash: "p",
    });
    const chunk = `${canonical}\n${"h".repeat(64)}\n\n{"eventType":"system"}`;
    probe = { chunk, lines: linesOf(chunk, ledgerLineOf) };
  }
  return probe;
}

/**
 * The JSONL file of a ledger: chunks of lines appended in order by a writer thread of its own, which
 * also builds the lines of journal entries from their canonical texts and hashes — so the event
 * loop pays neither for that nor for the write (the copy into the page cache, and on a growing file
 * the kernel's allocation of its pages). The file is opened here, synchronously (folders created),
 * so a file that cannot be opened is known at once; it is opened for appending, like any log, so
 * several writers (processes, or two ledgers of one process) may share it, as before.
 *
 * Nothing handed over is lost when the process leaves: `settle()` — run on the process's `exit`
 * event, which the thread outlives — waits until the thread has written every chunk (bounded by
 * `PATIENCE`). A thread that ended unasked (it crashed, or it cannot build the lines as the event
 * loop does) is replaced by writing on the event loop, synchronously, starting with the chunks it
 * had not finished — as everything is where no thread can be started (no `worker_threads`, or the
 * permission model refuses it). At most `MAX_IN_FLIGHT` chunks wait for the thread; beyond that,
 * `write` waits for it, so memory stays bounded and a process killed outright (SIGKILL) loses at
 * most those and the lines not handed over yet.
 */
export class LedgerFile {
  private fd = -1;
  private thread: Worker | null = null;
  /**
   * [0]: chunks the thread has finished; [1]: 1 once it has ended; [2]: 1 if it cannot make lines or reach the file;
   * [3]: always 0 (a pause: `Atomics.wait` on it).
   */
  private readonly state = new Int32Array(new SharedArrayBuffer(16));
  /** Chunks handed to the thread, and those it may not have finished yet (oldest first). */
  private sent = 0;
  private unfinished: string[] = [];
  private readonly replies = new Map<number, () => void>();
  private nextId = 0;
  private threadless = false;
  private closing = false;

  constructor(
    private readonly path: string,
    private readonly failed: (error: Error) => void,
  ) {}

  /**
   * Opens the file at the path (again, after log rotation moved the old one: the old file is
   * finished first). False (counted) when it cannot be opened: chunks are then dropped until a
   * later `reopen`.
   */
  reopen(): Promise<boolean> {
    const fd = openForAppending(this.path, this.failed);
    const old = this.fd;
    this.fd = fd;
    if (this.thread !== null) {
      return this.ask(this.thread, { fd }).then(() => {
        if (old >= 0) closeFile(old, this.failed);
        return fd >= 0;
      });
    }
    if (old >= 0) finishFile(old, this.failed);
    if (fd >= 0 && !this.threadless) this.start(fd);
    return Promise.resolve(fd >= 0);
  }

  /** Appends a chunk (see `linesOf`). */
  write(chunk: string): void {
    if (this.fd < 0) return;
    if (this.thread === null) return this.writeHere(chunk);
    this.forget();
    if (this.unfinished.length >= MAX_IN_FLIGHT) {
      this.wait(this.sent - MAX_IN_FLIGHT + 1);
      if (this.thread === null) return this.writeHere(chunk);
      this.forget();
    }
    this.thread.postMessage(chunk);
    this.sent++;
    this.unfinished.push(chunk);
  }

  /** Resolves once everything written so far is in the file (or after `PATIENCE`). */
  flush(): Promise<void> {
    return this.thread === null ? Promise.resolve() : this.ask(this.thread, {}).then(() => undefined);
  }

  /** Finishes the file (everything written, fsync, close) and the thread. */
  async close(): Promise<void> {
    const thread = this.thread;
    if (thread !== null) {
      // The thread stays `thread` until it answered: a process leaving meanwhile still waits for it.
      // The file stays open meanwhile: a thread that ends without having written everything (on
      // Deno it cannot reach the file, and finds out only once it runs) leaves the rest to the
      // event loop, which writes it here (docs/runtimes.md, "Deno").
      this.closing = true;
      const answered = await this.ask(thread, { close: true });
      if (this.thread === thread) this.thread = null;
      // No answer in time: the thread is stuck (a hung disk); it must not keep the process.
      if (!answered) await thread.terminate();
    }
    const fd = this.fd;
    this.fd = -1;
    if (fd >= 0) finishFile(fd, this.failed);
  }

  /**
   * On the process's way out: waits (synchronously) until the thread has written everything handed
   * to it, at most `PATIENCE` ms; if it ended first, its unfinished chunks are written here.
   */
  settle(): void {
    if (this.thread !== null) this.wait(this.sent);
  }

  private start(fd: number): void {
    Atomics.store(this.state, 0, 0);
    Atomics.store(this.state, 1, 0);
    this.sent = 0;
    this.unfinished = [];
    try {
      const thread = new (nodeBuiltin<typeof WorkerThreads>("node:worker_threads").Worker)(THREAD, {
        eval: true,
        execArgv: [],
        workerData: { fd, state: this.state, probe: probeOf() },
      });
      thread.on("message", (m: { id?: number; error?: string }) => {
        if (m.error !== undefined) this.failed(new Error(m.error));
        else this.replies.get(m.id as number)?.();
      });
      thread.on("error", (error: Error) => this.ended(thread, error));
      thread.on("exit", () => this.ended(thread, null));
      // After the listeners: a "message" listener refs the thread's port again, and a ledger that
      // was never closed would then keep the process alive (until its finalizer ran, if ever).
      thread.unref();
      this.thread = thread;
    } catch {
      // No thread to be had (no worker_threads, or the permission model refuses it): the event
      // loop writes, as it always did.
      this.threadless = true;
    }
  }

  /** The thread ended: as asked (`close`), or else the event loop takes over. */
  private ended(thread: Worker, error: Error | null): void {
    if (this.thread !== thread) return;
    Atomics.store(this.state, 1, 1);
    // Ended as asked only if it wrote every chunk: a thread that could not write (state[2]) ends
    // on its own, possibly after `close` was asked, and its chunks are then the event loop's.
    if (
      this.closing &&
      error === null &&
      Atomics.load(this.state, 2) === 0 &&
      Atomics.load(this.state, 0) >= this.sent
    ) {
      this.thread = null;
      this.answerAll();
    } else {
      this.takeOver(error);
    }
  }

  /**
   * Writing continues on the event loop, starting with what the thread had not finished. A thread
   * that could not make the lines is not a failure of the file; any other end is counted.
   */
  private takeOver(error: Error | null): void {
    if (Atomics.load(this.state, 2) === 1) this.threadless = true;
    else this.failed(error ?? new Error("the ledger's writer thread ended"));
    this.thread = null;
    this.forget();
    const rest = this.unfinished;
    this.unfinished = [];
    for (const chunk of rest) this.writeHere(chunk);
    this.answerAll();
  }

  /** Nothing more will answer: whoever waits for the thread stops waiting. */
  private answerAll(): void {
    for (const reply of [...this.replies.values()]) reply();
  }

  /** Drops the chunks the thread has finished from `unfinished`. */
  private forget(): void {
    const done = this.unfinished.length - (this.sent - Atomics.load(this.state, 0));
    if (done > 0) this.unfinished.splice(0, done);
  }

  /**
   * Blocks until the thread has finished `count` chunks, it ended (the event loop then takes over),
   * or `PATIENCE` passed.
   */
  private wait(count: number): void {
    const deadline = Date.now() + PATIENCE;
    for (;;) {
      const done = Atomics.load(this.state, 0);
      if (done >= count) return;
      if (Atomics.load(this.state, 1) === 1) return this.takeOver(null);
      const left = deadline - Date.now();
      if (left <= 0) return;
      Atomics.wait(this.state, 0, done, Math.min(left, 50));
    }
  }

  /** Posts a control message; resolves true once the thread answered, false after `PATIENCE`. */
  private ask(thread: Worker, message: { fd?: number; close?: true }): Promise<boolean> {
    const id = this.nextId++;
    return new Promise<boolean>((resolve) => {
      // Referenced on purpose: the answer must be awaited, not raced by the process running out of
      // work (the thread itself does not keep the process).
      const timer = setTimeout(() => {
        this.replies.delete(id);
        resolve(false);
      }, PATIENCE);
      this.replies.set(id, () => {
        clearTimeout(timer);
        this.replies.delete(id);
        resolve(true);
      });
      thread.postMessage({ ...message, id });
    });
  }

  /** Writes a chunk on the event loop (no thread). */
  private writeHere(chunk: string): void {
    if (this.fd < 0) return;
    const bytes = Buffer.from(linesOf(chunk, ledgerLineOf), "utf8");
    try {
      for (let at = 0; at < bytes.length;) {
        try {
          at += fs().writeSync(this.fd, bytes, at, bytes.length - at);
        } catch (error) {
          // A non-blocking pipe that is full: wait for its reader.
          if ((error as NodeJS.ErrnoException).code !== "EAGAIN") throw error;
          Atomics.wait(this.state, 3, 0, 10);
        }
      }
    } catch (error) {
      this.failed(error as Error);
      // Like the thread: a file that failed takes nothing more until the next one.
      closeFile(this.fd, () => {});
      this.fd = -1;
    }
  }
}

/** Opens `path` for appending (its folders created); -1 (reported) when it cannot be opened. */
export function openForAppending(path: string, failed: (error: Error) => void): number {
  try {
    makeFolders(dirname(path));
    return fs().openSync(path, "a");
  } catch (error) {
    failed(error as Error);
    return -1;
  }
}

/**
 * `mkdir -p` that fails instead of looping: Node's `{ recursive: true }` spins for ever where a
 * parent exists but cannot hold children (a path under /proc, a dangling symlink), walking back and
 * forth between ENOENT and EEXIST. Here each level is tried once.
 */
function makeFolders(dir: string, parentMade = false): void {
  try {
    fs().mkdirSync(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return;
    const parent = dirname(dir);
    // Once the parent exists, a second ENOENT is final.
    if (code !== "ENOENT" || parentMade || parent === dir) throw error;
    makeFolders(parent);
    makeFolders(dir, true);
  }
}

function finishFile(fd: number, failed: (error: Error) => void): void {
  try {
    fs().fsyncSync(fd);
  } catch {
    // Not every file can be synced (a pipe, /dev/null).
  }
  closeFile(fd, failed);
}

function closeFile(fd: number, failed: (error: Error) => void): void {
  try {
    fs().closeSync(fd);
  } catch (error) {
    failed(error as Error);
  }
}
