import { mkdtempSync, readFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import { createCreditManager } from "../src/index.js";

// Where no thread can be started (no worker_threads, or the permission model refuses it), the
// ledger writes its file on the event loop, as it did before it had a writer thread.
// The ledger loads node:worker_threads when it opens its file (process.getBuiltinModule,
// docs/runtimes.md), so that is where the threads are taken away.
const builtins = process as unknown as { getBuiltinModule: (id: string) => unknown };
const getBuiltinModule = builtins.getBuiltinModule.bind(process);
vi.spyOn(builtins, "getBuiltinModule").mockImplementation((id: string) =>
  id === "node:worker_threads"
    ? {
        Worker: class {
          constructor() {
            throw new Error("no threads here");
          }
        },
      }
    : getBuiltinModule(id),
);

const tmp = () => mkdtempSync(join(tmpdir(), "cm-ledger-threadless-"));
const ids = (file: string) =>
  readFileSync(file, "utf8")
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { id: string }).id);

describe("ledger file without a writer thread", () => {
  it("writes every line, in order, through flush, reopen and close, with no file error", async () => {
    const dir = tmp();
    const file = join(dir, "ledger.jsonl");
    const m = await createCreditManager({ ledger: { filePath: file } });
    expect((m.ledger as unknown as { file: { threadless: boolean } }).file.threadless).toBe(true);
    const before: string[] = [];
    for (let i = 0; i < 2000; i++) before.push((await m.credits.addCredits("u", 1)).id);
    await m.ledger.flush();
    expect(ids(file)).toEqual(before);
    renameSync(file, join(dir, "ledger.1.jsonl"));
    await m.ledger.reopen();
    const after = [(await m.credits.deductCredits("u", 5)).id, (await m.ledger.logSystem("done")).id];
    await m.close();
    expect(ids(join(dir, "ledger.1.jsonl"))).toEqual(before);
    expect(ids(file)).toEqual(after);
    expect(m.ledger.stats).toMatchObject({ linesWritten: 2002, fileErrors: 0 });
  });
});
