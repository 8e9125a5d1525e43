import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Worker } from "node:worker_threads";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { canonicalEntry, ledgerLineOf } from "../src/core/domain/hash.js";
import { createCreditManager, InMemoryDbManager } from "../src/index.js";
import { type JournalEntry } from "../src/models-public.js";
import { deep } from "./fixtures/depth.js";

const tmp = () => mkdtempSync(join(tmpdir(), "cm-ledger-file-"));
const fixture = join(dirname(fileURLToPath(import.meta.url)), "fixtures", "ledger-exit-burst.ts");
const lines = (file: string) =>
  readFileSync(file, "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { id: string; details: JournalEntry });

/**
 * The line of a journal entry, built here independently of the library's line code: the ledger
 * entry's fields as JSON.stringify writes them and the entry's canonical text (the hash format,
 * pinned in hash-format.test.ts) with its hash as `details`.
 */
function expectedLine(e: JournalEntry): string {
  return (
    `{"id":${JSON.stringify(e.id)},"eventType":"transaction","userId":${JSON.stringify(e.userId)},` +
    `"correlationId":${JSON.stringify(e.correlationId)},"message":"${e.type} ${e.amount}","details":` +
    `${canonicalEntry(e).slice(0, -1)},"hash":"${e.hash}"},"createdAt":"${e.createdAt.toISOString()}"}\n`
  );
}

describe("ledger file (writer thread)", () => {
  // A burst in one turn leaves chunks with the thread (some unwritten, at most 16: beyond, the
  // event loop waits for it) and more collected; the process's "exit" waits for all of them.
  it.each(["exit", "throw", "reject"])(
    "a process that leaves (%s) right after a burst has every line once, in order",
    (how) => {
      const file = join(tmp(), "ledger.jsonl");
      const child = spawnSync(process.execPath, ["--import", "tsx", fixture, file, how, "6000"], { encoding: "utf8" });
      expect(child.status, child.stderr).toBe(how === "exit" ? 3 : 1);
      const { ids, threaded } = JSON.parse(readFileSync(`${file}.ids`, "utf8")) as { ids: string[]; threaded: boolean };
      expect(threaded).toBe(true);
      expect(ids).toHaveLength(6000);
      expect(lines(file).map((l) => l.id)).toEqual(ids);
    },
  );

  it("a chunk the thread wrote before the process left is not written again", () => {
    const file = join(tmp(), "ledger.jsonl");
    const child = spawnSync(process.execPath, ["--import", "tsx", fixture, file, "exit", "3000", "spin"], {
      encoding: "utf8",
    });
    expect(child.status, child.stderr).toBe(3);
    const { ids, threaded } = JSON.parse(readFileSync(`${file}.ids`, "utf8")) as { ids: string[]; threaded: boolean };
    expect(threaded).toBe(true);
    expect(lines(file).map((l) => l.id)).toEqual(ids);
  });

  it("writes each line byte for byte as the ledger line of its entry", async () => {
    const file = join(tmp(), "ledger.jsonl");
    const db = new InMemoryDbManager();
    const m = await createCreditManager({ db, ledger: { filePath: file } });
    const user = 'ü "quoted" \\ user ☕';
    await m.credits.addCredits(user, 100, {
      description: 'a,"createdAt":"x" 😀',
      metadata: { createdAt: ',"correlationId":"y"', n: 1 },
    });
    await m.credits.deductCredits(user, 7, {
      correlationId: 'c,"createdAt":"2000-01-01T00:00:00.000Z"',
      idempotencyKey: 'k"1"',
    });
    const hold = await m.credits.reserveCredits(user, 20, { reason: "r" });
    await m.credits.commitReservedCredits(hold.id, { amount: 5, correlationId: "\u2028" });
    await m.ledger.logSystem("done", { note: "café" });
    await m.close();
    const journal = await db.listJournal(user, { order: "asc", limit: 100 });
    const text = readFileSync(file, "utf8");
    const written = text
      .split("\n")
      .slice(0, journal.length)
      .map((l) => `${l}\n`);
    expect(written).toEqual(journal.map(expectedLine));
    expect(journal.map((e) => ledgerLineOf(canonicalEntry(e), e.hash))).toEqual(journal.map(expectedLine));
    expect(JSON.parse(text.trim().split("\n").at(-1) as string)).toMatchObject({
      eventType: "system",
      message: "done",
      details: { note: "café" },
    });
  });

  it("builds the line from the canonical text alone, whatever the strings and metadata hold", () => {
    const text = fc.string({ unit: "grapheme", maxLength: 10 });
    const tricky = fc.constantFrom('"', "\\", ',"createdAt":"', ',"correlationId":', '","amount":', "\n", "\u0001");
    const str = fc.oneof(
      text,
      tricky,
      fc.tuple(text, tricky, text).map((p) => p.join("")),
    );
    const entry = fc.record({
      id: str,
      userId: str,
      seq: fc.nat(),
      type: fc.constantFrom("add", "deduct", "expire", "void", "reserve", "commit_reserved", "release_reserved"),
      amount: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)),
      balanceAfter: fc.integer(),
      reservedAfter: fc.nat(),
      debtAfter: fc.nat(),
      grants: fc.array(fc.record({ grantId: str, amount: fc.nat() }), { maxLength: 3 }),
      reservationId: fc.option(str),
      idempotencyKey: fc.option(str),
      fingerprint: fc.option(str),
      correlationId: fc.option(str),
      description: fc.option(str),
      metadata: fc.option(fc.dictionary(str, fc.oneof(str, fc.integer())), { nil: null }),
      createdAt: fc.date({ min: new Date(-8.64e15), max: new Date(8.64e15), noInvalidDate: true }),
      prevHash: fc.option(fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 64, maxLength: 64 })),
      hash: fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 64, maxLength: 64 }),
    });
    fc.assert(
      fc.property(entry, (e) => {
        expect(ledgerLineOf(canonicalEntry(e), e.hash)).toBe(expectedLine(e));
      }),
      { numRuns: deep(3000) },
    );
  });

  it("flush() resolves once the file has every line", async () => {
    const file = join(tmp(), "ledger.jsonl");
    const m = await createCreditManager({ ledger: { filePath: file } });
    const ids: string[] = [];
    for (let i = 0; i < 2000; i++) ids.push((await m.credits.addCredits("u", 1)).id);
    await m.ledger.flush();
    expect(lines(file).map((l) => l.id)).toEqual(ids);
    await m.close();
  });

  it("reopen() finishes the old file first: lines before it there, lines after it in the new one", async () => {
    const dir = tmp();
    const file = join(dir, "ledger.jsonl");
    const m = await createCreditManager({ ledger: { filePath: file } });
    const before: string[] = [];
    for (let i = 0; i < 3000; i++) before.push((await m.credits.addCredits("u", 1)).id);
    renameSync(file, join(dir, "ledger.1.jsonl"));
    await m.ledger.reopen();
    const after: string[] = [];
    for (let i = 0; i < 500; i++) after.push((await m.credits.deductCredits("u", 1)).id);
    await m.close();
    expect(lines(join(dir, "ledger.1.jsonl")).map((l) => l.id)).toEqual(before);
    expect(lines(file).map((l) => l.id)).toEqual(after);
  });

  it("two ledgers of one process may share a file (it is appended to, as any log)", async () => {
    const file = join(tmp(), "ledger.jsonl");
    const a = await createCreditManager({ ledger: { filePath: file } });
    const b = await createCreditManager({ ledger: { filePath: file } });
    const ids: string[] = [];
    for (let i = 0; i < 1500; i++) {
      ids.push((await a.credits.addCredits("a", 1)).id);
      ids.push((await b.credits.addCredits("b", 1)).id);
    }
    await Promise.all([a.close(), b.close()]);
    expect(
      lines(file)
        .map((l) => l.id)
        .sort(),
    ).toEqual([...ids].sort());
  });

  it("if the writer thread dies, the event loop writes what it had not and what comes after (counted once)", async () => {
    const file = join(tmp(), "ledger.jsonl");
    const m = await createCreditManager({ ledger: { filePath: file } });
    const ids: string[] = [];
    for (let i = 0; i < 1000; i++) ids.push((await m.credits.addCredits("u", 1)).id);
    await m.ledger.flush();
    const thread = (m.ledger as unknown as { file: { thread: Worker } }).file.thread;
    await thread.terminate();
    await new Promise((resolve) => setImmediate(resolve));
    for (let i = 0; i < 1000; i++) ids.push((await m.credits.deductCredits("u", 1)).id);
    await m.ledger.flush();
    expect(lines(file).map((l) => l.id)).toEqual(ids);
    expect(m.ledger.stats).toMatchObject({ fileErrors: 1, lastFileError: "the ledger's writer thread ended" });
    await m.close();
  });

  // reason: /dev/full (a device that refuses every write) exists on Linux only
  it.runIf(existsSync("/dev/full"))("a file that refuses writes is counted and never fails an operation", async () => {
    const m = await createCreditManager({ ledger: { filePath: "/dev/full" } });
    for (let i = 0; i < 100; i++) await m.credits.addCredits("u", 1);
    await m.ledger.flush();
    expect((await m.credits.getUserCreditsInfo("u")).balance).toBe(100);
    expect(m.ledger.stats.fileErrors).toBe(1);
    expect(m.ledger.stats.lastFileError).toMatch(/ENOSPC/);
    await m.close();
  });
});
