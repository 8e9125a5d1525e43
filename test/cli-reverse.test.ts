import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { runCli } from "../src/cli/run.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { createCreditManager, InMemoryDbManager, type CreditManager } from "../src/index.js";

/** `credit-management reverse` (docs/cli.md, "Reverse"; docs/corrections.md). */
const dir = mkdtempSync(join(tmpdir(), "cm-reverse-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cli(args: string[], source: Parameters<typeof runCli>[2]) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(
    ["reverse", ...args],
    { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) },
    source,
  );
  return { code, stdout, stderr };
}

describe("credit-management reverse", () => {
  let db: InMemoryDbManager;
  let m: CreditManager;
  let charge: string;

  beforeEach(async () => {
    db = new InMemoryDbManager();
    m = await createCreditManager({ db });
    await m.credits.addCredits("acme", 1_000);
    charge = (await m.credits.deductCredits("acme", 120, { feature: "render" })).id;
  });

  it("gives back part of a charge, once per key, then the rest; --show prints the reversals", async () => {
    const first = await cli([charge, "--user", "acme", "--amount", "50", "--reason", "job failed", "--key", "t-1"], {
      db,
    });
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/^Gave back 50 credits of charge #2 of "acme" \(deduct, 120 credits, /);
    expect(first.stdout).toMatch(/given back +50 of 120\n/);
    expect(first.stdout).toMatch(/left +70\n/);
    expect(first.stdout).toMatch(/balance +930\n/);
    expect(first.stdout).toContain("job failed");
    // The same key again: nothing more given back, the first reversal printed.
    const again = await cli(
      [charge, "--user", "acme", "--amount", "50", "--reason", "job failed", "--key", "t-1", "--json"],
      { db },
    );
    expect(again.code).toBe(0);
    const json = JSON.parse(again.stdout) as {
      reversal: { amount: number; reverses: string };
      reversed: number;
      remaining: number;
    };
    expect(json).toMatchObject({ reversal: { amount: 50, reverses: charge }, reversed: 50, remaining: 70 });
    expect((await m.credits.getUserCreditsInfo("acme")).balance).toBe(930);

    const rest = await cli([charge, "--user", "acme", "--reason", "the rest"], { db });
    expect(rest.code).toBe(0);
    expect(rest.stdout).toMatch(/^Gave back 70 credits/);
    const show = await cli([charge, "--user", "acme", "--show"], { db });
    expect(show.code).toBe(0);
    expect(show.stdout).toMatch(/^Reversals of charge #2 of "acme"/);
    expect(show.stdout).toMatch(/left +0\n/);
    expect(show.stdout).toContain("the rest");
    expect((await m.credits.getUserCreditsInfo("acme")).balance).toBe(1_000);
  });

  it("--show prints a reason's control and bidi characters as the console does, never raw", async () => {
    const reason = "ok\u001b[2J\nlast reversal: 0 credits\u202Eevil";
    expect((await cli([charge, "--user", "acme", "--amount", "5", "--reason", reason], { db })).code).toBe(0);
    const show = await cli([charge, "--user", "acme", "--show"], { db });
    expect(show.code).toBe(0);
    // eslint-disable-next-line no-control-regex -- no raw control character may reach the terminal
    expect(show.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u202e]/);
    expect(show.stdout).toContain(
      "ok\u27e8U+001B\u27e9[2J\u27e8U+000A\u27e9last reversal: 0 credits\u27e8U+202E\u27e9evil",
    );
    // --json keeps the reason as stored (JSON escapes it).
    const json = await cli([charge, "--user", "acme", "--show", "--json"], { db });
    expect((JSON.parse(json.stdout) as { reversals: { description: string }[] }).reversals[0]?.description).toBe(
      reason,
    );
  });

  it("exits 2 for bad usage or what the library refuses, 3 for no such account or entry; nothing changes", async () => {
    const journal = async () => (await db.listJournal("acme", { order: "desc", limit: 100 })).length;
    const n = await journal();
    const cases: [string[], number, RegExp][] = [
      [[], 2, /needs the charge's entry id/],
      [[charge], 2, /needs --user ID/],
      [[charge, "--user", "acme"], 2, /needs --reason TEXT/],
      [[charge, "--user", "acme", "--reason", " "], 2, /needs --reason TEXT/],
      [[charge, "--user", "acme", "--show", "--reason", "x"], 2, /--reason gives back: not with --show/],
      [[charge, "--user", "acme", "--reason", "x", "--amount", "lots"], 2, /--amount must be a number/],
      [[charge, "--user", "acme", "--reason", "x", "--amount", "1.5"], 2, /amount/i],
      [[charge, "--user", "acme", "--reason", "x", "--amount", "121"], 2, /RULE|left|more/i],
      [[charge, "--user", "acme", "--reason", "x", "--bogus"], 2, /Unknown option/],
      [[charge, "--user", "nobody", "--reason", "x"], 3, /no such account "nobody"/],
      [["no-such-entry", "--user", "acme", "--reason", "x"], 3, /./],
    ];
    for (const [args, code, message] of cases) {
      const r = await cli(args, { db });
      expect(r.code, args.join(" ")).toBe(code);
      expect(r.stderr, args.join(" ")).toMatch(message);
      expect(r.stdout, args.join(" ")).toBe("");
    }
    // An addition is no charge.
    const [grant] = await db.listJournal("acme", { order: "asc", limit: 1 });
    expect((await cli([grant!.id, "--user", "acme", "--reason", "x"], { db })).code).toBe(2);
    expect(await journal()).toBe(n);
    // Without a store in the environment: bad usage, naming the variables.
    const none = await cli([charge, "--user", "acme", "--reason", "x"], {
      env: { CREDIT_PG_URL: undefined, CREDIT_MONGO_URI: undefined, CREDIT_SQLITE_PATH: undefined },
    });
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("CREDIT_SQLITE_PATH");
  });

  it("writes to a SQLite file and its ledger file, as the other commands that write", async () => {
    const file = join(dir, "credits.sqlite");
    const ledgerFile = join(dir, "ledger.jsonl");
    const store = new SqliteDbManager({ filename: file });
    const own = await createCreditManager({ db: store });
    await own.credits.addCredits("acme", 100);
    const id = (await own.credits.deductCredits("acme", 40)).id;
    await own.close();
    const r = await cli([id, "--user", "acme", "--reason", "double-reported", "--sqlite", file], {
      env: { CREDIT_LEDGER_FILE: ledgerFile },
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = readFileSync(ledgerFile, "utf8").trim().split("\n");
    expect(lines.some((l) => l.includes('"reverse"') && l.includes(id))).toBe(true);
    const after = new SqliteDbManager({ filename: file });
    const check = await createCreditManager({ db: after });
    expect((await check.credits.getUserCreditsInfo("acme")).balance).toBe(100);
    expect((await check.credits.audit("acme")).ok).toBe(true);
    await check.close();
  });

  it("has its own help, listed in the CLI's", async () => {
    const r = await runCli(["reverse", "--help"], { stdout: () => undefined, stderr: () => undefined });
    expect(r).toBe(0);
    let help = "";
    await runCli(["help"], { stdout: (t) => (help += t), stderr: () => undefined });
    expect(help).toMatch(/^ {2}reverse +Give back a charge/m);
  });
});
