import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, inject, it } from "vitest";
import { runCli } from "../src/cli/run.js";
import { redactedUrl, storePlace } from "../src/serve/store.js";
import { CREDIT_VARIABLES } from "../src/util/credit-env.js";
import { ConfigurationError, createCreditManager, createDbManagerFromEnv, InMemoryDbManager } from "../src/index.js";
import type { Logger } from "../src/core/logger.js";

const dir = mkdtempSync(join(tmpdir(), "cm-env-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cli(args: string[], env: Record<string, string>) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(args, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) }, { env });
  return { code, stdout, stderr };
}

/** The CLI as a program, with the test servers' store variables taken out of its environment. */
function program(env: Record<string, string>, ...args: string[]) {
  return spawnSync(process.execPath, [inject("cliEntry"), ...args], {
    encoding: "utf8",
    timeout: 60_000,
    cwd: dir,
    env: { ...process.env, CREDIT_MONGO_URI: undefined, CREDIT_PG_URL: undefined, CREDIT_REDIS_URL: undefined, ...env },
  });
}

describe("a misconfigured CREDIT_* variable stops with a ConfigurationError naming it", () => {
  it.each([
    ["blank CREDIT_PG_URL", { CREDIT_PG_URL: "" }, /CREDIT_PG_URL is set but blank/],
    ["all-space CREDIT_PG_URL", { CREDIT_PG_URL: "   " }, /CREDIT_PG_URL is set but blank/],
    ["blank CREDIT_MONGO_URI", { CREDIT_MONGO_URI: "" }, /CREDIT_MONGO_URI is set but blank/],
    [
      "blank CREDIT_PG_SCHEMA",
      { CREDIT_PG_URL: "postgres://u@127.0.0.1:1/x", CREDIT_PG_SCHEMA: " " },
      /CREDIT_PG_SCHEMA is set but blank/,
    ],
    [
      "misspelt CREDIT_PG_URI",
      { CREDIT_PG_URI: "postgres://u@h/x" },
      /CREDIT_PG_URI \(did you mean CREDIT_PG_URL\?\) is not a variable/,
    ],
    ["unknown CREDIT_STORE", { CREDIT_STORE: "pg" }, /CREDIT_STORE is not a variable of credit-management/],
  ])("createDbManagerFromEnv: %s", async (_name, env, message) => {
    const made = createDbManagerFromEnv(env);
    await expect(made).rejects.toThrow(ConfigurationError);
    await expect(createDbManagerFromEnv(env)).rejects.toThrow(message);
  });

  it("an environment without store variables is still the in-memory store; unset (undefined) is not blank", async () => {
    const db = await createDbManagerFromEnv({ CREDIT_PG_URL: undefined, HOME: "/" });
    expect(db).toBeInstanceOf(InMemoryDbManager);
  });

  it.each([
    [
      "worker",
      ["worker", "--once"],
      { CREDIT_PG_URI: "postgres://u:pw@127.0.0.1/x" },
      "CREDIT_PG_URI (did you mean CREDIT_PG_URL?)",
    ],
    ["serve", ["serve"], { CREDIT_PG_URL: "" }, "CREDIT_PG_URL is set but blank"],
    [
      "serve",
      ["serve"],
      { CREDIT_PG_URL: "postgres://u@127.0.0.1:1/x", CREDIT_PG_SCHEMA: "" },
      "CREDIT_PG_SCHEMA is set but blank",
    ],
    ["audit", ["audit", "--all"], { CREDIT_SQLITE_PATH: "  " }, "CREDIT_SQLITE_PATH is set but blank"],
    [
      "worker",
      ["worker", "--once"],
      { CREDIT_SQLITE_PATH: join(dir, "w.db"), CREDIT_JOURNAL_KEYS: "" },
      "CREDIT_JOURNAL_KEYS is set but blank",
    ],
    [
      "worker",
      ["worker", "--once"],
      {
        CREDIT_SQLITE_PATH: join(dir, "w.db"),
        CREDIT_JOURNAL_KEYS: JSON.stringify({ current: "k1", keys: { k1: "short" } }),
      },
      "CREDIT_JOURNAL_KEYS (keys.k1",
    ],
    [
      "serve",
      ["serve", "--port", "0"],
      {
        CREDIT_SQLITE_PATH: join(dir, "s.db"),
        CREDIT_JOURNAL_KEYS: JSON.stringify({ current: "k1", keys: { k1: "short" } }),
      },
      "CREDIT_JOURNAL_KEYS (keys.k1",
    ],
  ])("%s exits 2 naming it: %j", async (_command, args, env, message) => {
    const r = await cli(args, env);
    expect(r.stderr).toContain(message);
    expect(r.code).toBe(2);
  });

  it("as a program: a misspelt store variable exits 2 before anything is opened (no default SQLite file made)", () => {
    const r = program({ CREDIT_PG_URI: "postgres://u:secret@127.0.0.1/x" }, "worker", "--once");
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("CREDIT_PG_URI (did you mean CREDIT_PG_URL?) is not a variable of credit-management");
    expect(r.stderr).not.toContain("secret");
    const blank = program({ CREDIT_PG_URL: " " }, "serve", "--port", "0");
    expect(blank.status).toBe(2);
    expect(blank.stderr).toContain("CREDIT_PG_URL is set but blank");
    expect(spawnSync("ls", [dir], { encoding: "utf8" }).stdout).not.toContain("credit-management.sqlite");
  });

  it("the known variables are one list: the store's, the service's and the worker's", () => {
    for (const name of [
      "CREDIT_PG_URL",
      "CREDIT_PG_SCHEMA",
      "CREDIT_JOURNAL_KEYS",
      "CREDIT_PORT",
      "CREDIT_WORKER_JITTER",
    ])
      expect(CREDIT_VARIABLES.has(name)).toBe(true);
    expect(CREDIT_VARIABLES.has("CREDIT_PG_URI")).toBe(false);
  });
});

describe("serve and worker log the store they opened, without a secret", () => {
  it("the place: a SQLite file's path; a URL without its password or query, with the schema or database", () => {
    expect(storePlace({ kind: "sqlite", path: "/var/lib/credits.db" })).toBe("/var/lib/credits.db");
    const pg = storePlace({
      kind: "postgres",
      url: "postgres://app:s3cret@db.internal:5432/credits?sslmode=require&password=other",
      schema: "billing",
      partitions: undefined,
    });
    expect(pg).toBe("postgres://app:***@db.internal:5432/credits schema billing");
    const mongo = storePlace({
      kind: "mongodb",
      uri: "mongodb+srv://app:s3cret@cluster0.example.net/?retryWrites=true",
      db: "cm",
    });
    expect(mongo).toBe("mongodb+srv://app:***@cluster0.example.net/ database cm");
    expect(redactedUrl("postgres://app@db/credits")).toBe("postgres://app@db/credits");
  });
});

describe("createCreditManager without a store says once, through its logger, that it holds everything in memory", () => {
  const recorder = () => {
    const infos: string[] = [];
    const logger: Logger = {
      error: () => {},
      warn: () => {},
      debug: () => {},
      info: (a: unknown, b?: unknown) => void infos.push(String(b ?? a)),
    };
    return { logger, infos };
  };

  it("once per logger; not when the memory store is asked for; the default logger writes nothing", async () => {
    const { logger, infos } = recorder();
    const a = await createCreditManager({ logger });
    const b = await createCreditManager({ logger });
    expect(infos.filter((m) => m.includes("everything is held in memory"))).toHaveLength(1);
    await Promise.all([a.close(), b.close()]);
    const explicit = recorder();
    const c = await createCreditManager({ logger: explicit.logger, db: new InMemoryDbManager() });
    expect(explicit.infos.filter((m) => m.includes("in memory"))).toEqual([]);
    await c.close();
  });
});
