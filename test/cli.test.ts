import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, inject, it } from "vitest";
import { COMMAND_HELP, HELP, runCli } from "../src/cli/run.js";
import { generateSql } from "../src/schema/public.js";

async function cli(...args: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(args, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
  return { code, stdout, stderr };
}

describe("credit-management CLI", () => {
  const dir = mkdtempSync(join(tmpdir(), "cm-cli-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("prints help with --help, -h and help: the commands on one screen, each command's details in its own help", async () => {
    for (const args of [["--help"], ["-h"], ["help"]]) {
      const r = await cli(...args);
      expect(r.code, args.join(" ")).toBe(0);
      expect(r.stdout).toBe(HELP);
    }
    const lines = HELP.trimEnd().split("\n");
    expect(lines.length).toBeLessThanOrEqual(40);
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(100);
    // Every command is listed, and its options are left to its own help.
    const commands = Object.keys(COMMAND_HELP);
    expect(commands.sort()).toEqual([
      "accounts",
      "audit",
      "close-period",
      "keys",
      "revenue",
      "reverse",
      "schema",
      "serve",
      "webhooks",
      "worker",
    ]);
    for (const command of commands) expect(HELP, command).toMatch(new RegExp(`^  ${command} +\\S`, "m"));
    expect(HELP).not.toContain("--dialect postgres|mysql|sqlite");
    expect(HELP).not.toContain("--ledger-file FILE");
    expect(HELP).toContain("credit-management <command> --help");
  });

  it("each command's help: <command> --help, <command> -h (after other arguments too) and help <command> print the same", async () => {
    const expected: Record<string, string[]> = {
      schema: ["--dialect postgres|mysql|sqlite", "Examples:"],
      audit: ["--ledger-file FILE", "Examples:"],
      worker: ["--once", "CREDIT_WORKER_JOBS_EVERY", "Examples:"],
      serve: ["--port N", "Exit codes", "Examples:"],
      keys: ["keys create --role admin|user:ID"],
      webhooks: ["rotate-secret ID"],
      accounts: ["limits set ID --amount N --period P"],
      revenue: ["--month YYYY-MM"],
      reverse: ["--reason TEXT", "--show", "Examples:"],
    };
    for (const [command, parts] of Object.entries(expected)) {
      const text = COMMAND_HELP[command] as string;
      expect(text, command).toMatch(new RegExp(`^Usage: credit-management ${command} `));
      for (const part of parts) expect(text, `${command}: ${part}`).toContain(part);
      for (const args of [
        [command, "--help"],
        [command, "-h"],
        ["help", command],
        [command, "x", "--port", "1", "--help"],
      ])
        expect(await cli(...args), args.join(" ")).toEqual({ code: 0, stdout: text, stderr: "" });
    }
    // help of a command that does not exist: exit 2, on standard error.
    const r = await cli("help", "migrate");
    expect(r).toMatchObject({ code: 2, stdout: "" });
    expect(r.stderr).toContain('unknown command "migrate"');
    // A --help after -- is an argument, not the flag: the command runs (and here refuses it).
    expect((await cli("schema", "--", "--help")).code).toBe(2);
  });

  it("a usage error points at the command's own help", async () => {
    expect((await cli("schema", "--bogus")).stderr).toContain('Run "credit-management schema --help" for usage.');
    expect((await cli("audit")).stderr).toContain('Run "credit-management audit --help" for usage.');
    expect((await cli("serve", "--bogus")).stderr).toContain('Run "credit-management serve --help" for usage.');
    expect((await cli("keys", "create")).stderr).toContain('Run "credit-management keys --help" for usage.');
    expect((await cli("migrate")).stderr).toContain('Run "credit-management --help" for usage.');
  });

  it("prints the DDL of each dialect (postgres by default)", async () => {
    expect((await cli("schema")).stdout).toBe(generateSql({ dialect: "postgres" }));
    expect((await cli("schema", "--backend", "sql", "--dialect", "mysql", "--prefix", "cm_")).stdout).toBe(
      generateSql({ dialect: "mysql", prefix: "cm_" }),
    );
    expect((await cli("schema", "--backend", "sql", "--dialect", "sqlite")).stdout).toContain(
      'CREATE TABLE IF NOT EXISTS "accounts"',
    );
    expect((await cli("schema", "--schema", "credits")).stdout).toContain('"credits"."journal_entries"');
  });

  it("prints MongoDB validators as JSON with --backend nosql", async () => {
    const r = await cli("schema", "--backend", "nosql");
    expect(r.code).toBe(0);
    const parsed = JSON.parse(r.stdout) as Array<{ name: string; validator: { $jsonSchema: unknown } }>;
    expect(parsed.map((c) => c.name)).toContain("journal_entries");
    expect(parsed[0]?.validator.$jsonSchema).toMatchObject({ bsonType: "object" });
  });

  it("writes to --out instead of standard output", async () => {
    const file = join(dir, "schema.sql");
    const r = await cli("schema", "--dialect", "postgres", "--out", file);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain(file);
    expect(readFileSync(file, "utf8")).toBe(generateSql({ dialect: "postgres" }));
  });

  it("exits 2 with a clear message on a bad flag, value or command", async () => {
    const cases: Array<[string[], RegExp]> = [
      [["schema", "--bogus"], /Unknown option '--bogus'/],
      [["schema", "--dialect", "oracle"], /--dialect must be one of postgres, mysql, sqlite, mongodb, not "oracle"/],
      [["schema", "--backend", "graph"], /--backend must be "sql" or "nosql"/],
      [["schema", "--backend", "nosql", "--dialect", "mysql"], /--dialect applies to --backend sql only/],
      [["schema", "--prefix", "bad-prefix"], /prefix "bad-prefix" may only contain/],
      [["schema", "--dialect", "mysql", "--distributed"], /--distributed applies to --dialect postgres only \(Citus\)/],
      [["schema", "--dialect", "mongodb", "--distributed"], /--distributed applies to --dialect postgres only/],
      [["migrate"], /unknown command "migrate"/],
      [[], /missing command/],
      [["schema", "--out"], /argument missing|--out/],
      [["audit"], /audit needs --user ID \(repeatable\), --all or --archive FILE/],
      [["audit", "--user", ""], /--user needs an account id/],
      [["audit", "--all", "--dialect", "mysql"], /--dialect applies to "schema" only/],
      [["schema", "--all"], /--all applies to "audit" only/],
      [["audit", "--all", "--ledger-file", ""], /--ledger-file needs a file name/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(...args);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr, args.join(" ")).toMatch(message);
      expect(r.stderr).toContain("--help");
      expect(r.stdout).toBe("");
    }
  });

  /** @see issue 24, item 13 */
  it("prints its version, and each command's own help", async () => {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string };
    for (const flag of ["--version", "-v"])
      expect(await cli(flag)).toEqual({ code: 0, stdout: `${pkg.version}\n`, stderr: "" });
    const schema = await cli("schema", "--help");
    expect(schema.code).toBe(0);
    expect(schema.stdout).toMatch(/^Usage: credit-management schema /);
    expect(schema.stdout).toContain("--from-version N");
    expect(schema.stdout).not.toContain("--ledger-file");
    const audit = await cli("audit", "-h");
    expect(audit.stdout).toMatch(/^Usage: credit-management audit /);
    expect(audit.stdout).toContain("3: an account named with --user does not exist");
    expect(audit.stdout).not.toContain("--dialect");
  });

  /** @see issue 24, items 13 and 20: runCli is exported, and an account that does not exist is not "ok". */
  it("audit --user of an account that does not exist says so, with exit code 3 (runCli from the package root)", async () => {
    const { InMemoryDbManager, createCreditManager, runCli: exported } = await import("../src/index.js");
    const db = new InMemoryDbManager();
    const manager = await createCreditManager({ db });
    await manager.credits.addCredits("alice", 5);
    let stdout = "";
    const io = { stdout: (t: string) => void (stdout += t), stderr: () => undefined };
    expect(await exported(["audit", "--user", "alice", "--user", "nobody"], io, { db })).toBe(3);
    expect(stdout).toContain('MISSING "nobody": no such account in the store');
    expect(stdout).toMatch(/^ok {4}"alice": 1 entries/m);
    expect(stdout).toContain("2 accounts audited: 1 consistent, 0 with problems, 1 not found");
    stdout = "";
    expect(await exported(["audit", "--user", "alice"], io, { db })).toBe(0);
    await manager.close();
  });

  it("runs as a program: exit codes reach the shell", async () => {
    const run = (...args: string[]) =>
      spawnSync(process.execPath, [inject("cliEntry"), ...args], {
        encoding: "utf8",
        timeout: 30_000,
      });
    const bad = run("schema", "--nope");
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("Unknown option '--nope'");
    expect(run("--version").stdout).toMatch(/^\d+\.\d+\.\d+/);
    const ok = run("schema", "--dialect", "sqlite");
    expect(ok.status).toBe(0);
    expect(ok.stdout).toBe(generateSql({ dialect: "sqlite" }));
  });
});
