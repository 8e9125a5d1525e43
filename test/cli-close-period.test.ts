/** `credit-management close-period` (docs/cli.md, "Closing a month"; docs/revenue.md, "Closing a month") on SQLite. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCli } from "../src/cli/run.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager } from "../src/index.js";

const dir = mkdtempSync(join(tmpdir(), "cm-close-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const DAY = 86_400_000;
const HOUR = 3_600_000;

async function cli(args: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(
    args,
    { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) },
    { env: { CREDIT_PG_URL: undefined, CREDIT_MONGO_URI: undefined, CREDIT_SQLITE_PATH: undefined } },
  );
  return { code, stdout, stderr };
}

describe("credit-management close-period on SQLite (--sqlite FILE)", () => {
  it("closes through a date, lists the closes, refuses one going back; what is recorded later is catch-up", async () => {
    const file = join(dir, "credits.db");
    const today = Math.floor(Date.now() / DAY) * DAY;
    const manager = await createCreditManager({ db: new SqliteDbManager({ filename: file }) });
    try {
      await manager.credits.addCredits("acme", 50, { costBasis: { perCredit: "2", currency: "USD" } });
      const through = new Date(today).toISOString().slice(0, 10);
      const closed = await cli(["close-period", "--through", through, "--sqlite", file, "--json"]);
      expect(closed).toMatchObject({ code: 0, stderr: "" });
      expect(JSON.parse(closed.stdout)).toMatchObject({ through: new Date(today).toISOString(), accounts: 1 });
      const listed = await cli(["close-period", "--list", "--sqlite", file]);
      expect(listed.code).toBe(0);
      expect(listed.stdout).toMatch(
        new RegExp(`^ *THROUGH +CLOSED AT +ACCOUNTS\\n *${new Date(today).toISOString()} .* 1\\n$`),
      );
      const back = await cli(["close-period", "--through", new Date(today - DAY).toISOString(), "--sqlite", file]);
      expect(back.code).toBe(2);
      expect(back.stderr).toContain("after the latest close");
      expect((await cli(["close-period", "--sqlite", file])).code).toBe(2);
      // Usage of yesterday evening, recorded now: today's catch-up row.
      await manager.credits.deductCreditsAfterService("acme", 5, { occurredAt: new Date(today - 2 * HOUR) });
      const from = new Date(today).toISOString();
      const to = new Date(today + DAY).toISOString();
      const report = await cli(["revenue", "--from", from, "--to", to, "--interval", "none", "--sqlite", file]);
      expect(report.code).toBe(0);
      expect(report.stdout).toContain("CATCH-UP OF CLOSE");
      expect(report.stdout).toMatch(new RegExp(`USD +${new Date(today).toISOString()} +0 +0 +10 +0 +0 +0 +0\\n`));
      expect((await manager.credits.listPeriodCloses()).map((c) => c.through.getTime())).toEqual([today]);
    } finally {
      await manager.close();
    }
  });
});
