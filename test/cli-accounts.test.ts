import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import pg from "pg";
import { runCli } from "../src/cli/run.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import type { DbManager } from "../src/core/db/types.js";
import { calendarWindow } from "../src/core/domain/limits.js";
import { SpendLimitError } from "../src/core/errors.js";
import { createCreditManager, InMemoryDbManager, type CreditManager } from "../src/index.js";

const dir = mkdtempSync(join(tmpdir(), "cm-accounts-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cli(args: string[], db?: DbManager, env: Record<string, string> = {}) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(
    ["accounts", ...args],
    { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) },
    db === undefined
      ? { env: { CREDIT_PG_URL: undefined, CREDIT_MONGO_URI: undefined, CREDIT_SQLITE_PATH: undefined, ...env } }
      : { db },
  );
  return { code, stdout, stderr };
}

/**
 * An organisation "acme": unscoped and scoped credits, two limits, spends by alice and with no
 * spender, a subscription; "solo" has credits only.
 */
async function activity(manager: CreditManager): Promise<void> {
  const { credits, subscriptions } = manager;
  await credits.addCredits("acme", 1000);
  await credits.addCredits("acme", 200, { scope: { features: ["images"] } });
  await credits.setLimits("acme", [
    { spender: "alice", amount: 100, period: "month" },
    { amount: 500, period: { every: 2, unit: "week" } },
  ]);
  await credits.deductCredits("acme", 30, { spender: "alice" });
  await credits.deductCredits("acme", 12, { spender: "alice", feature: "images" });
  await credits.deductCredits("acme", 7);
  await credits.reserveCredits("acme", 25, { spender: "bob" });
  await subscriptions.createPlan({ id: "pro", name: "Pro", creditsPerPeriod: 50, billingPeriod: "monthly" });
  await subscriptions.subscribe("acme", "pro");
  await credits.addCredits("solo", 5);
}

/** What the library answers for "acme", as `accounts show --json` prints it. */
async function expected(manager: CreditManager, userId: string) {
  const { credits } = manager;
  const info = await credits.getUserCreditsInfo(userId);
  const month = calendarWindow("month", Date.now());
  const usage = await credits.getUsage({
    account: userId,
    from: new Date(month.start),
    to: new Date(month.end),
    interval: null,
    groupBy: ["spender"],
    kinds: ["spend"],
  });
  const s = await manager.subscriptions.getUserSubscription(userId);
  return JSON.parse(
    JSON.stringify({
      balance: info.balance,
      reserved: info.reserved,
      available: info.available,
      debt: info.debt,
      scoped: info.scoped ?? [],
      limits: await credits.getLimits(userId),
      usage: usage.rows.map((r) => ({ spender: r.spender ?? null, credits: r.credits, requests: r.requests })),
      subscription: s === null ? null : { id: s.id, planId: s.planId, status: s.status },
    }),
  ) as Record<string, unknown>;
}

function shown(stdout: string) {
  const j = JSON.parse(stdout) as Record<string, unknown> & {
    spendThisMonth: { bySpender: unknown[] };
    subscription: { id: string; planId: string; status: string } | null;
  };
  return {
    balance: j.balance,
    reserved: j.reserved,
    available: j.available,
    debt: j.debt,
    scoped: j.scoped,
    limits: j.limits,
    usage: j.spendThisMonth.bySpender,
    subscription:
      j.subscription === null
        ? null
        : { id: j.subscription.id, planId: j.subscription.planId, status: j.subscription.status },
  };
}

/** Everything a bad `limits set` must leave as it was: the journal's length and the limits. */
async function snapshot(manager: CreditManager, userId: string) {
  return {
    entries: (await manager.credits.getCreditHistory(userId, { limit: 500 })).items.length,
    limits: JSON.stringify(await manager.credits.getLimits(userId)),
  };
}

/** The same checks on any store: given to runCli, or named by `env` (then `db` is the test's own view). */
function suite(
  name: string,
  open: () => Promise<{ manager: CreditManager; db?: DbManager; env?: Record<string, string>; flags?: string[] }>,
) {
  describe(name, () => {
    let manager: CreditManager;
    let run: (args: string[]) => ReturnType<typeof cli>;
    beforeAll(async () => {
      const o = await open();
      manager = o.manager;
      run = (args) => cli([...args, ...(o.flags ?? [])], o.db, o.env);
      await activity(manager);
    });
    afterAll(async () => manager.close());

    it("show --json: the credits, scoped credits, limits, spend by spender and subscription the service answers", async () => {
      const r = await run(["show", "acme", "--json"]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const want = await expected(manager, "acme");
      const got = shown(r.stdout);
      // Most spend first; alice's two spends are one row.
      expect(got.usage).toEqual([
        { spender: "alice", credits: 42, requests: 2 },
        { spender: null, credits: 7, requests: 1 },
      ]);
      const byText = (rows: unknown) => (rows as unknown[]).map((row) => JSON.stringify(row)).sort();
      expect({ ...got, usage: byText(got.usage) }).toEqual({ ...want, usage: byText(want.usage) });
      expect(got).toMatchObject({ balance: 1201, reserved: 25, scoped: [{ features: ["images"], remaining: 188 }] });
      expect(got.subscription).toMatchObject({ planId: "pro", status: "active" });
    });

    it("show: the same as aligned text tables", async () => {
      const r = await run(["show", "acme"]);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^Account "acme"$/m);
      expect(r.stdout).toMatch(/^ {2}balance {4}1201$/m);
      expect(r.stdout).toMatch(/^ {2}held {9}25$/m);
      expect(r.stdout).toMatch(/^ {2}images +\* +188$/m);
      expect(r.stdout).toMatch(/^ {2}SPENDER +FEATURE +PERIOD +USED +AMOUNT +REMAINING +RESETS AT$/m);
      expect(r.stdout).toMatch(/^ {2}alice +\* +month +42 +100 +58 +\d{4}-\d\d-01T00:00:00\.000Z$/m);
      expect(r.stdout).toMatch(/^ {2}\* +\* +2week +74 +500 +426 /m);
      // Aligned: numbers end under their header's end, text starts under its header.
      const lines = r.stdout.split("\n");
      const header = lines.find((l) => l.startsWith("  SPENDER  FEATURE")) as string;
      for (const row of lines.filter((l) => /^ {2}\S+ +\S+ +(month|2week) /.test(l))) {
        expect(row.search(/\d{4}-\d\d-\d\dT/)).toBe(header.indexOf("RESETS AT"));
        expect(row.indexOf(" month ") + row.indexOf(" 2week ") + 2).toBe(header.indexOf("PERIOD"));
        expect(row.search(/\d+ +\d+ +\d{4}-/) + row.match(/\d+(?= +\d+ +\d{4}-)/)![0].length).toBe(
          header.indexOf("AMOUNT") + "AMOUNT".length,
        );
      }
      expect(r.stdout).toMatch(/^ {2}alice +42 +2$/m);
      expect(r.stdout).toMatch(/^ {2}\(no spender\) +7 +1$/m);
      expect(r.stdout).toMatch(/^ {2}plan +pro$/m);
      const solo = await run(["show", "solo"]);
      expect(solo.code).toBe(0);
      expect(solo.stdout).toMatch(/Spend limits\n {2}none\n/);
      expect(solo.stdout).toMatch(/Subscription\n {2}none\n/);
    });

    it("a limit set through the CLI refuses a spend past it; setting it again keeps what its window counted", async () => {
      const set = await run([
        "limits",
        "set",
        "acme",
        "--amount",
        "20",
        "--period",
        "day",
        "--spender",
        "carol",
        "--json",
      ]);
      expect(set.stderr).toBe("");
      expect(set.code).toBe(0);
      expect(JSON.parse(set.stdout)).toEqual(
        JSON.parse(JSON.stringify({ userId: "acme", limits: await manager.credits.getLimits("acme") })),
      );
      await manager.credits.deductCredits("acme", 15, { spender: "carol" });
      await expect(manager.credits.deductCredits("acme", 6, { spender: "carol" })).rejects.toBeInstanceOf(
        SpendLimitError,
      );
      await manager.credits.deductCredits("acme", 6, { spender: "dave" }); // another member: not capped by carol's limit
      const raised = await run([
        "limits",
        "set",
        "acme",
        "--amount",
        "30",
        "--period",
        "day",
        "--spender",
        "carol",
        "--json",
      ]);
      expect(raised.code).toBe(0);
      const limits = (
        JSON.parse(raised.stdout) as { limits: { spender: string | null; used: number; remaining: number }[] }
      ).limits;
      expect(limits.filter((l) => l.spender === "carol")).toMatchObject([{ used: 15, remaining: 15 }]);
      expect(limits).toHaveLength(3); // alice's and the account's are still there
      await manager.credits.deductCredits("acme", 6, { spender: "carol" });

      const listed = await run(["limits", "acme", "--json"]);
      expect(JSON.parse(listed.stdout)).toEqual(
        JSON.parse(JSON.stringify({ userId: "acme", limits: await manager.credits.getLimits("acme") })),
      );
      const removed = await run(["limits", "remove", "acme", "--spender", "carol"]);
      expect(removed.code).toBe(0);
      expect(removed.stdout).not.toMatch(/carol/);
      await manager.credits.deductCredits("acme", 20, { spender: "carol" });
      const again = await run(["limits", "remove", "acme", "--spender", "carol"]);
      expect(again.code).toBe(1);
      expect(again.stderr).toContain('"acme" has no limit of spender "carol" and feature *; nothing removed');
    });

    it("bad input: exit 2 with the library's message, nothing changed", async () => {
      const before = await snapshot(manager, "acme");
      const cases: [string[], RegExp][] = [
        [["--amount=-5", "--period", "day"], /amount must not be negative/],
        [["--amount", "1.5", "--period", "day"], /amount must be a whole number/],
        [["--amount", "abc", "--period", "day"], /--amount must be a number, not "abc"/],
        [["--amount", "5", "--period", "5000day"], /period\.every: Too big/],
        [["--amount", "5", "--period", "fortnight"], /--period must be day, week, month, year/],
        [["--amount", "5", "--period", "day", "--spender", "a\u0007b"], /spender must not contain control characters/],
        [["--amount", "5", "--period", "day", "--feature", "no spaces"], /feature must be letters, digits/],
        [["--amount", "5"], /needs --period P/],
        [["--period", "day"], /needs --amount N/],
      ];
      for (const [flags, message] of cases) {
        const r = await run(["limits", "set", "acme", ...flags]);
        expect([r.code, r.stderr]).toEqual([2, expect.stringMatching(message)]);
        expect(r.stdout).toBe("");
      }
      expect(await snapshot(manager, "acme")).toEqual(before);
      const dup = await run(["limits", "remove", "acme", "--period", "1000000week"]);
      expect(dup.code).toBe(2);
      expect(await snapshot(manager, "acme")).toEqual(before);
    });

    it("an unknown account: exit 3, and no account made by setting its limits", async () => {
      for (const args of [
        ["show", "nobody"],
        ["limits", "nobody"],
        ["limits", "set", "nobody", "--amount", "5", "--period", "day"],
      ]) {
        const r = await run(args);
        expect([r.code, r.stderr]).toEqual([3, 'credit-management: no such account "nobody"\n']);
      }
      expect(await manager.credits.getCreditHistory("nobody")).toMatchObject({ items: [] });
      expect(await manager.credits.getLimits("nobody")).toEqual([]);
    });

    it("usage mistakes: exit 2", async () => {
      for (const args of [
        [],
        ["list"],
        ["show"],
        ["show", "acme", "extra"],
        ["show", "acme", "--amount", "5"],
        ["limits", "acme", "--spender", "x"],
        ["show", "--nope", "acme"],
      ]) {
        const r = await run(args);
        expect([args, r.code]).toEqual([args, 2]);
        expect(r.stderr).toContain('Run "credit-management accounts --help" for usage.');
      }
      const help = await run(["--help"]);
      expect([help.code, help.stdout]).toEqual([0, expect.stringContaining("limits set ID --amount N --period P")]);
    });
  });
}

suite("credit-management accounts (in-memory store given to runCli)", async () => {
  const db = new InMemoryDbManager();
  return { manager: await createCreditManager({ db }), db };
});

const sqliteFile = join(dir, "store.db");
suite("credit-management accounts on SQLite (--sqlite FILE)", async () => {
  const manager = await createCreditManager({ db: new SqliteDbManager({ filename: sqliteFile }) });
  // The flag wins over the environment's file (which does not exist).
  return { manager, env: { CREDIT_SQLITE_PATH: join(dir, "not-this.db") }, flags: ["--sqlite", sqliteFile] };
});

describe("credit-management accounts on SQLite: the store from the environment, the ledger file, no store", () => {
  const file = join(dir, "env.db");
  const ledger = join(dir, "ledger.jsonl");
  let manager: CreditManager;
  beforeAll(async () => {
    manager = await createCreditManager({ db: new SqliteDbManager({ filename: file }), ledger: { filePath: ledger } });
    await activity(manager);
    await manager.ledger.flush();
  });
  afterAll(async () => manager.close());

  it("CREDIT_SQLITE_PATH: shows the service's answers; a limit it sets goes to CREDIT_LEDGER_FILE and the audit agrees", async () => {
    const env = { CREDIT_SQLITE_PATH: file, CREDIT_LEDGER_FILE: ledger };
    const r = await cli(["show", "acme", "--json"], undefined, env);
    expect(r.code).toBe(0);
    expect(shown(r.stdout)).toMatchObject({ balance: 1201, reserved: 25 });
    const set = await cli(
      ["limits", "set", "acme", "--amount", "10", "--period", "week", "--feature", "images"],
      undefined,
      env,
    );
    expect([set.code, set.stderr]).toEqual([0, ""]);
    expect(set.stdout).toMatch(/^ {2}\* +images +week +0 +10 +10 /m);
    await expect(manager.credits.deductCredits("acme", 11, { feature: "images" })).rejects.toBeInstanceOf(
      SpendLimitError,
    );
    const last = readFileSync(ledger, "utf8").trim().split("\n").at(-1) as string;
    expect(JSON.parse(last)).toMatchObject({ eventType: "transaction", details: { userId: "acme", type: "limits" } });
    const audit = await runCli(
      ["audit", "--all", "--ledger-file", ledger],
      { stdout: () => {}, stderr: () => {} },
      { env: { CREDIT_SQLITE_PATH: file } },
    );
    expect(audit).toBe(0);
  });

  it("a missing SQLite file or no store in the environment: exit 2, nothing created", async () => {
    const missing = join(dir, "nothing-here.db");
    const r = await cli(["show", "acme", "--sqlite", missing]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/\[sqlite\] cannot open .*nothing-here\.db/);
    expect(existsSync(missing)).toBe(false);
    const none = await cli(["show", "acme"]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("accounts reads a store: set CREDIT_MONGO_URI");
  });
});

const pgUrl = process.env.CREDIT_PG_URL;
// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!pgUrl)("credit-management accounts against PostgreSQL (CREDIT_PG_URL)", () => {
  const schema = `cm_accounts_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  afterAll(async () => {
    const client = new pg.Client({ connectionString: pgUrl });
    await client.connect();
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await client.end();
  });
  suite("the store CREDIT_PG_URL and CREDIT_PG_SCHEMA name", async () => {
    const { PostgresDbManager } = await import("../src/db/postgres/index.js");
    const manager = await createCreditManager({
      db: new PostgresDbManager({ connectionString: pgUrl as string, schema }),
    });
    return { manager, env: { CREDIT_PG_URL: pgUrl as string, CREDIT_PG_SCHEMA: schema } };
  });
});

const mongoUri = process.env.CREDIT_MONGO_URI;
// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!mongoUri)("credit-management accounts against MongoDB (CREDIT_MONGO_URI)", () => {
  const dbName = `credit_accounts_${process.pid}_${randomUUID().slice(0, 8)}`;
  afterAll(async () => {
    const { MongoClient } = await import("mongodb");
    const client = new MongoClient(mongoUri as string);
    await client.db(dbName).dropDatabase();
    await client.close();
  });
  suite("the store CREDIT_MONGO_URI and CREDIT_MONGO_DB name", async () => {
    const { MongoDbManager } = await import("../src/db/mongodb/index.js");
    const manager = await createCreditManager({ db: MongoDbManager.fromUri(mongoUri as string, dbName) });
    return { manager, env: { CREDIT_MONGO_URI: mongoUri as string, CREDIT_MONGO_DB: dbName } };
  });
});

const redisUrl = process.env.CREDIT_REDIS_URL;
// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!redisUrl)(
  "credit-management accounts with the services' Redis cache (CREDIT_REDIS_CACHE_PREFIX)",
  () => {
    const file = join(dir, "cached.db");
    const prefix = `cm-accounts-${randomUUID().slice(0, 8)}:`;
    let manager: CreditManager;
    let cache: { close(): Promise<void> };
    beforeAll(async () => {
      const { RedisCache } = await import("../src/redis/index.js");
      const c = await RedisCache.connect(redisUrl as string, { keyPrefix: prefix });
      cache = c;
      manager = await createCreditManager({ db: new SqliteDbManager({ filename: file }), cache: c });
      await manager.credits.addCredits("acme", 100);
    });
    afterAll(async () => {
      await manager.close();
      await cache.close();
    });

    it("a limit set through the CLI invalidates what the services cached of the account", async () => {
      const env = { CREDIT_SQLITE_PATH: file, CREDIT_REDIS_URL: redisUrl as string };
      expect(await manager.credits.getLimits("acme")).toEqual([]); // now cached
      // Without the cache's prefix the CLI cannot invalidate it: the services read the cached answer.
      const blind = await cli(["limits", "set", "acme", "--amount", "5", "--period", "day"], undefined, env);
      expect(blind.code).toBe(0);
      expect(await manager.credits.getLimits("acme")).toEqual([]);
      const seen = await cli(["limits", "set", "acme", "--amount", "7", "--period", "day"], undefined, {
        ...env,
        CREDIT_REDIS_CACHE_PREFIX: prefix,
      });
      expect(seen.code).toBe(0);
      expect(await manager.credits.getLimits("acme")).toMatchObject([{ amount: 7, period: "day" }]);
      expect(await manager.credits.check("acme", { amount: 8 })).toMatchObject({ allowed: false });
    });

    it("CREDIT_REDIS_CACHE_PREFIX without CREDIT_REDIS_URL: exit 2", async () => {
      const r = await cli(["show", "acme"], undefined, { CREDIT_SQLITE_PATH: file, CREDIT_REDIS_CACHE_PREFIX: prefix });
      expect([r.code, r.stderr]).toEqual([
        2,
        expect.stringContaining("CREDIT_REDIS_CACHE_PREFIX needs CREDIT_REDIS_URL"),
      ]);
    });
  },
);
