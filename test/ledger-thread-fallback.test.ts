import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import type * as Hash from "../src/core/domain/hash.js";
import { createCreditManager } from "../src/index.js";

// The writer thread builds the lines from the source of the event loop's functions. A tool that
// rewrote those (a bundler's helper, an instrumenter) could make its copy build other lines: the
// thread checks its copy on a sample and, if it differs, leaves the file to the event loop.
vi.mock("../src/core/domain/hash.js", async (importOriginal) => {
  const original = await importOriginal<typeof Hash>();
  const ledgerLineOf = (canonical: string, hash: string) => original.ledgerLineOf(canonical, hash);
  ledgerLineOf.toString = () => "function (canonical, hash) { return 'not the line\\n'; }";
  return { ...original, ledgerLineOf };
});

describe("ledger file whose thread cannot build the lines", () => {
  it("writes every line on the event loop instead, with no file error", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "cm-ledger-fallback-")), "ledger.jsonl");
    const m = await createCreditManager({ ledger: { filePath: file } });
    const ids: string[] = [];
    for (let i = 0; i < 3000; i++) ids.push((await m.credits.addCredits("u", 1)).id);
    await m.ledger.flush();
    await new Promise((resolve) => setTimeout(resolve, 100));
    for (let i = 0; i < 10; i++) ids.push((await m.credits.deductCredits("u", 1)).id);
    await m.close();
    const text = readFileSync(file, "utf8");
    expect(text).not.toContain("not the line");
    expect(
      text
        .trim()
        .split("\n")
        .map((l) => (JSON.parse(l) as { id: string }).id),
    ).toEqual(ids);
    expect((m.ledger as unknown as { file: { threadless: boolean } }).file.threadless).toBe(true);
    expect(m.ledger.stats.fileErrors).toBe(0);
  });
});

describe("ledger file closed before its thread found it cannot write", () => {
  /** @see issue 60 */
  it("writes what was accepted before close() (Deno's quick start: operations, then close at once)", async () => {
    const file = join(mkdtempSync(join(tmpdir(), "cm-ledger-fallback-")), "ledger.jsonl");
    const m = await createCreditManager({ ledger: { filePath: file } });
    const ids = [(await m.credits.addCredits("u", 100)).id, (await m.credits.deductCredits("u", 30)).id];
    ids.push((await m.credits.addCredits("v", 5)).id);
    // No turn of the event loop since the manager was made: the thread has not started yet.
    await m.close();
    const text = readFileSync(file, "utf8");
    expect(
      text
        .trim()
        .split("\n")
        .filter((l) => l !== "")
        .map((l) => (JSON.parse(l) as { id: string }).id),
    ).toEqual(ids);
    expect(m.ledger.stats.fileErrors).toBe(0);
  });
});
