import { closeSync, fsyncSync } from "node:fs";
import { createRequire } from "node:module";
import type { SonicBoom as Sonic } from "sonic-boom";
import { ledgerLineOf } from "../src/core/domain/hash.js";
import { linesOf, openForAppending } from "../src/core/ledger/file.js";

// CommonJS without named exports Node can see: loaded as it is.
const SonicBoom = createRequire(import.meta.url)("sonic-boom") as typeof Sonic;
type SonicBoom = Sonic;

/**
 * The JSONL file written through pino's own writer, sonic-boom, instead of the ledger's
 * worker thread (`LedgerFile`): the event loop builds the lines and sonic-boom appends them —
 * `sync: false`: by `fs.write` on libuv's pool, `sync: true`: by `fs.writeSync` at once. Kept as the
 * candidate the benchmark measures against the thread (`npm run bench`, "ledger file writer" rows,
 * bench/ledger-writer.ts); the same surface as `LedgerFile`, handed to `LedgerLogger` through its
 * internal `file` option. `minLength: 1` writes at once as `0` would, but makes `flush(cb)` wait
 * for the write in flight (with 0 it calls back at once).
 */
export class SonicLedgerFile {
  private fd = -1;
  private sonic: SonicBoom | null = null;

  constructor(
    private readonly path: string,
    private readonly failed: (error: Error) => void,
    private readonly sync: boolean,
  ) {}

  reopen(): Promise<boolean> {
    const old = this.sonic;
    const oldFd = this.fd;
    const fd = openForAppending(this.path, this.failed);
    this.fd = fd;
    this.sonic = fd < 0 ? null : this.open(fd);
    return (old === null ? Promise.resolve() : finish(old, oldFd, this.failed)).then(() => fd >= 0);
  }

  write(chunk: string): void {
    this.sonic?.write(linesOf(chunk, ledgerLineOf));
  }

  flush(): Promise<void> {
    const sonic = this.sonic;
    if (sonic === null) return Promise.resolve();
    return new Promise((resolve) => sonic.flush(() => resolve()));
  }

  async close(): Promise<void> {
    const sonic = this.sonic;
    this.sonic = null;
    if (sonic !== null) await finish(sonic, this.fd, this.failed);
    this.fd = -1;
  }

  /** On the process's way out: what is buffered, written at once. */
  settle(): void {
    try {
      this.sonic?.flushSync();
    } catch (error) {
      this.failed(error as Error);
    }
  }

  private open(fd: number): SonicBoom {
    const sonic = new SonicBoom({ fd, sync: this.sync, minLength: 1 });
    sonic.on("error", (error: Error) => this.failed(error));
    return sonic;
  }
}

/** Everything written, fsync'd, closed. */
function finish(sonic: SonicBoom, fd: number, failed: (error: Error) => void): Promise<void> {
  return new Promise<void>((resolve) => {
    sonic.flush(() => {
      try {
        fsyncSync(fd);
      } catch {
        // Not every file can be synced (a pipe, /dev/null).
      }
      try {
        closeSync(fd);
      } catch (error) {
        failed(error as Error);
      }
      resolve();
    });
  });
}
