/**
 * A SQLite process killed while it commits (docs/concepts.md, "Certain and uncertain errors"): the
 * call it was making is wholly applied or not at all once the file is opened again, and the key it
 * recorded before the call resolves which: the same key answers the stored entry, or applies it now,
 * once.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { CreditService } from "../src/credit-service.js";

const dir = mkdtempSync(join(tmpdir(), "cm-sqlite-kill-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Starts the spender on `file`, kills it (SIGKILL) `afterMs` after its 20th call began; resolves to the keys it printed. */
function spendUntilKilled(file: string, afterMs: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "test/fixtures/sqlite-spender.ts"], {
      env: { ...process.env, SPEND_FILE: file },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    let timer: NodeJS.Timeout | undefined;
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.split("\n").length > 20) timer ??= setTimeout(() => child.kill("SIGKILL"), afterMs);
    });
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", reject);
    child.on("exit", (_code, signal) => {
      if (signal !== "SIGKILL") reject(new Error(`the spender ended by itself: ${err}`));
      else resolve(out.split("\n").filter((l) => l !== ""));
    });
  });
}

describe("SQLite: a process killed during its commits", () => {
  it.each([0, 3, 11])(
    "killed %i ms in: the last call is applied wholly or not at all, and its key resolves it",
    async (afterMs) => {
      const file = join(dir, `kill-${afterMs}.db`);
      const setup = new SqliteDbManager({ filename: file });
      await setup.init();
      await new CreditService({ db: setup }).addCredits("u", 100_000);
      await setup.close();

      const keys = await spendUntilKilled(file, afterMs);
      expect(keys.length).toBeGreaterThanOrEqual(20);
      const last = keys[keys.length - 1] as string;

      const db = new SqliteDbManager({ filename: file });
      await db.init();
      const credits = new CreditService({ db });
      const deducts = (await db.listJournal("u", { order: "asc", limit: 100_000 })).filter((e) => e.type === "deduct");
      // Every call before the last one was answered: its entry is there. The last is there or not.
      const stored = new Set(deducts.map((e) => e.idempotencyKey));
      for (const k of keys.slice(0, -1)) expect(stored.has(k), k).toBe(true);
      expect(deducts.length === keys.length || deducts.length === keys.length - 1).toBe(true);
      // Wholly: balance, journal and audit agree.
      expect((await credits.getUserCreditsInfo("u")).balance).toBe(100_000 - deducts.length);
      expect((await credits.audit("u")).ok).toBe(true);
      // The recorded key resolves it: the stored entry, or the spend applied now, once.
      const before = deducts.find((e) => e.idempotencyKey === last);
      const answer = await credits.deductCredits("u", 1, { idempotencyKey: last });
      if (before !== undefined) expect(answer.id).toBe(before.id);
      expect((await credits.getUserCreditsInfo("u")).balance).toBe(100_000 - keys.length);
      await db.close();
    },
    60_000,
  );
});
