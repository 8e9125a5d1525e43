import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, realpathSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import pg from "pg";
import { afterAll, describe, expect, inject, it } from "vitest";
import { HELP, runCli } from "../src/cli/run.js";
import { WORKER_OPTIONS, parseDuration, workerSettings } from "../src/serve/worker-settings.js";
import { pauseBefore } from "../src/worker/schedule.js";
import { workerOptions } from "../src/serve/worker-settings.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { SqliteDbManager } from "../src/db/sqlite/index.js";
import { serveSettings, storeSettings } from "../src/serve/settings.js";
import { createCreditManager, type CreditManager } from "../src/index.js";
import type { JournalEntry, Notification } from "../src/core/models/index.js";

async function cli(args: string[], env: Record<string, string> = {}) {
  let stdout = "";
  let stderr = "";
  const code = await runCli(args, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) }, { env });
  return { code, stdout, stderr };
}

describe("credit-management worker: flags and environment", () => {
  it("--help lists every flag and variable of the worker", async () => {
    const r = await cli(["worker", "--help"]);
    expect(r.code).toBe(0);
    for (const name of [
      "--once",
      "--jobs-every",
      "--reminders-every",
      "--dispatch-every",
      "--top-up-every",
      "--jitter",
      "--batch-size",
      "--concurrency",
      "--dispatch-limit",
      "--log-level",
      "CREDIT_WORKER_JOBS_EVERY",
      "CREDIT_WORKER_REMINDERS_EVERY",
      "CREDIT_WORKER_DISPATCH_EVERY",
      "CREDIT_WORKER_TOP_UP_EVERY",
      "STRIPE_SECRET_KEY",
      "STRIPE_API_BASE_URL",
      "CREDIT_WORKER_JITTER",
      "CREDIT_WORKER_BATCH_SIZE",
      "CREDIT_WORKER_CONCURRENCY",
      "CREDIT_WORKER_DISPATCH_LIMIT",
      "CREDIT_LOG_LEVEL",
      "CREDIT_PG_URL",
      "CREDIT_PG_SCHEMA",
      "CREDIT_MONGO_URI",
      "CREDIT_MONGO_DB",
      "CREDIT_REDIS_URL",
      "CREDIT_REDIS_STREAM",
      "CREDIT_REDIS_CACHE_PREFIX",
      "CREDIT_NOTIFICATIONS",
      "CREDIT_LOW_CREDITS",
      "CREDIT_LOW_CREDITS_PERCENT",
      "CREDIT_REMINDER_DAYS",
      "CREDIT_LEDGER_FILE",
      "CREDIT_IDEMPOTENCY_RETENTION",
      "CREDIT_WORKER_CHECKPOINT_ENTRIES",
      "CREDIT_WORKER_REVENUE_EVERY",
      "--usage-every",
      "CREDIT_WORKER_USAGE_EVERY",
      "SIGTERM",
      "SIGHUP",
    ]) {
      expect(r.stdout, name).toContain(name);
    }
    // The general help lists the command; its options are in its own help.
    expect(HELP).toMatch(/^ {2}worker {4}/m);
    expect(r.stdout).toContain(WORKER_OPTIONS);
  });

  it("reads durations with units; 0 and off turn a task off", () => {
    expect(parseDuration("500ms", "x")).toBe(500);
    expect(parseDuration("30s", "x")).toBe(30_000);
    expect(parseDuration("1.5m", "x")).toBe(90_000);
    expect(parseDuration("2h", "x")).toBe(7_200_000);
    expect(parseDuration("250", "x")).toBe(250);
    expect(parseDuration("off", "x")).toBe(0);
    expect(() => parseDuration("5d", "--jobs-every")).toThrow(/--jobs-every must be a duration/);
    expect(() => parseDuration("25h", "--jobs-every")).toThrow(/from 10ms to 24h/);
  });

  it("spreads the rounds: the first within jitter × interval, the others within interval ± jitter/2", () => {
    expect([0, 0.5, 0.999].map((r) => pauseBefore(60_000, 0.1, true, () => r))).toEqual([0, 3000, 5994]);
    expect([0, 0.5, 0.999].map((r) => pauseBefore(60_000, 0.1, false, () => r))).toEqual([57_000, 60_000, 62_994]);
    expect(pauseBefore(60_000, 0, false, () => 0.7)).toBe(60_000);
    expect(pauseBefore(60_000, 0, true, () => 0.7)).toBe(0);
    expect(pauseBefore(1000, 1, false, () => 0)).toBe(500);
  });

  it("takes its defaults and the variables, and a flag wins over its variable", () => {
    const defaults = workerSettings({}, { CREDIT_PG_URL: "postgres://x" });
    expect(defaults).toMatchObject({
      once: false,
      jobsEveryMs: 60_000,
      remindersEveryMs: 0,
      dispatchEveryMs: 0,
      // Not delivering: the worker charges the auto top-ups asked for itself (docs/promos-and-payments.md).
      topUpEveryMs: 1000,
      notifications: "off",
      jitter: 0.1,
      stripeBaseUrl: undefined,
    });
    const redis = workerSettings({}, { CREDIT_REDIS_URL: "redis://h:6379" });
    expect(redis).toMatchObject({
      notifications: "deliver",
      remindersEveryMs: 3_600_000,
      dispatchEveryMs: 1000,
      // The dispatch round charges each top-up before it delivers it.
      topUpEveryMs: 0,
      reminderDays: [7],
    });
    expect(workerSettings({ "top-up-every": "5s" }, { CREDIT_NOTIFICATIONS: "record" }).topUpEveryMs).toBe(5000);
    expect(workerSettings({}, { CREDIT_WORKER_TOP_UP_EVERY: "off", CREDIT_WORKER_JOBS_EVERY: "1m" }).topUpEveryMs).toBe(
      0,
    );
    expect(workerSettings({}, { STRIPE_API_BASE_URL: "http://127.0.0.1:12111" }).stripeBaseUrl).toBe(
      "http://127.0.0.1:12111",
    );
    const set = workerSettings(
      { "batch-size": "50", once: true },
      {
        CREDIT_REDIS_URL: "redis://h",
        CREDIT_WORKER_BATCH_SIZE: "20",
        CREDIT_WORKER_CONCURRENCY: "3",
        CREDIT_WORKER_JOBS_EVERY: "5m",
        CREDIT_REMINDER_DAYS: "1, 7",
        CREDIT_NOTIFICATIONS: "record",
        CREDIT_LOW_CREDITS: "10",
        CREDIT_LOG_LEVEL: "debug",
        CREDIT_WORKER_CHECKPOINT_ENTRIES: "500",
        CREDIT_WORKER_REVENUE_EVERY: "5m",
        CREDIT_WORKER_USAGE_EVERY: "30s",
      },
    );
    expect(set).toMatchObject({
      once: true,
      batchSize: 50,
      concurrency: 3,
      jobsEveryMs: 300_000,
      reminderDays: [1, 7],
      notifications: "record",
      dispatchEveryMs: 0,
      lowCredits: 10,
      logLevel: "debug",
      checkpointEntries: 500,
      revenueEveryMs: 300_000,
      usageEveryMs: 30_000,
    });
    expect(workerSettings({}, {}).checkpointEntries).toBeUndefined();
    expect(workerSettings({}, {}).revenueEveryMs).toBe(0);
    expect(workerSettings({ "jobs-every": "0", "top-up-every": "0", "revenue-every": "1m" }, {}).revenueEveryMs).toBe(
      60_000,
    );
    // The usage round: on by default (it runs only on PostgreSQL), a flag wins over its variable, off turns it off.
    expect(workerSettings({}, {}).usageEveryMs).toBe(60_000);
    expect(workerSettings({ "usage-every": "2m" }, { CREDIT_WORKER_USAGE_EVERY: "5m" }).usageEveryMs).toBe(120_000);
    expect(workerSettings({}, { CREDIT_WORKER_USAGE_EVERY: "off" }).usageEveryMs).toBe(0);
    expect(workerSettings({ "usage-every": "0" }, {}).usageEveryMs).toBe(0);
    expect(workerOptions(workerSettings({ "usage-every": "90s" }, {}), undefined).usageEveryMs).toBe(90_000);
    // Asked for, it is a task of its own; by default it does not count (a SQLite worker would have none).
    expect(workerSettings({ "jobs-every": "0", "top-up-every": "0", "usage-every": "1m" }, {}).usageEveryMs).toBe(
      60_000,
    );
    expect(workerSettings({}, { CREDIT_REDIS_URL: "redis://h", CREDIT_REMINDER_DAYS: "none" }).reminderDays).toEqual(
      [],
    );
  });

  it("keeps idempotency keys for ever unless CREDIT_IDEMPOTENCY_RETENTION gives a window", () => {
    expect(workerSettings({}, { CREDIT_PG_URL: "postgres://x" }).idempotencyRetention).toBe("forever");
    for (const w of ["30d", "24h", "90s", "86400000"])
      expect(workerSettings({}, { CREDIT_IDEMPOTENCY_RETENTION: w }).idempotencyRetention).toBe(w);
    for (const bad of ["10s", "soon", "1000", "-1h"])
      expect(() => workerSettings({}, { CREDIT_IDEMPOTENCY_RETENTION: bad })).toThrow(
        new RegExp(`CREDIT_IDEMPOTENCY_RETENTION must be forever or a duration .*not "${bad}"`),
      );
  });

  it("refuses a bad flag or variable with exit code 2, naming it, before connecting to anything", async () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["worker", "--jitter", "2"], {}, /--jitter must be a number from 0 to 1, not "2"/],
      [["worker", "--batch-size", "0"], {}, /--batch-size must be a whole number from 1 to 10000/],
      [["worker"], { CREDIT_WORKER_CONCURRENCY: "many" }, /CREDIT_WORKER_CONCURRENCY must be a whole number/],
      [["worker", "--jobs-every", "soon"], {}, /--jobs-every must be a duration/],
      [
        ["worker"],
        { CREDIT_WORKER_CHECKPOINT_ENTRIES: "0" },
        /CREDIT_WORKER_CHECKPOINT_ENTRIES must be a whole number/,
      ],
      [
        ["worker", "--log-level", "loud"],
        {},
        /--log-level must be one of fatal, error, warn, info, debug, trace, silent/,
      ],
      [["worker"], { CREDIT_NOTIFICATIONS: "sometimes" }, /CREDIT_NOTIFICATIONS must be off, record or deliver/],
      [["worker"], { CREDIT_NOTIFICATIONS: "deliver" }, /needs CREDIT_REDIS_URL/],
      [["worker"], { CREDIT_REDIS_URL: "localhost:6379" }, /CREDIT_REDIS_URL must be a redis:\/\//],
      [["worker"], { CREDIT_REDIS_CACHE_PREFIX: "app:" }, /CREDIT_REDIS_CACHE_PREFIX needs CREDIT_REDIS_URL/],
      [
        ["worker", "--dispatch-every", "1s"],
        { CREDIT_REDIS_URL: "redis://h", CREDIT_NOTIFICATIONS: "record" },
        /dispatch needs CREDIT_NOTIFICATIONS=deliver/,
      ],
      [["worker", "--reminders-every", "1h"], {}, /reminders need notifications/],
      [
        ["worker"],
        { CREDIT_REDIS_URL: "redis://h", CREDIT_REMINDER_DAYS: "7,x" },
        /CREDIT_REMINDER_DAYS must be up to 16 numbers/,
      ],
      [["worker"], { CREDIT_LOW_CREDITS_PERCENT: "120" }, /CREDIT_LOW_CREDITS_PERCENT must be a number from 0 to 100/],
      [["worker", "--jobs-every", "0", "--top-up-every", "off"], {}, /every task is off/],
      [["worker", "--jobs-every", "0", "--top-up-every", "off", "--usage-every", "off"], {}, /every task is off/],
      [["worker", "--usage-every", "soon"], {}, /--usage-every must be a duration/],
      [
        ["worker"],
        { CREDIT_WORKER_USAGE_EVERY: "25h" },
        /CREDIT_WORKER_USAGE_EVERY must be a duration from 10ms to 24h/,
      ],
      [["worker", "--top-up-every", "soon"], {}, /--top-up-every must be a duration/],
      [
        ["worker"],
        { STRIPE_API_BASE_URL: "api.stripe.com" },
        /STRIPE_API_BASE_URL must be an http:\/\/ or https:\/\/ URL/,
      ],
      // A store that could not be reached: refused before the worker tries (it was exit 1 after the pool failed).
      [
        ["worker", "--once"],
        { CREDIT_PG_URL: "postgres://postgres@127.0.0.1:1/none", CREDIT_PG_PARTITIONS: "year" },
        /CREDIT_PG_PARTITIONS must be day, week or month, not "year"/,
      ],
      [["worker", "--dialect", "mysql"], {}, /--dialect applies to "schema" only/],
      [["schema", "--once"], {}, /--once applies to "worker" only/],
      // Two stores: refused as serve refuses them.
      [
        ["worker", "--once"],
        { CREDIT_PG_URL: "postgres://postgres@127.0.0.1:1/none", CREDIT_SQLITE_PATH: "x.sqlite" },
        /choose one store: CREDIT_PG_URL and CREDIT_SQLITE_PATH/,
      ],
    ];
    for (const [args, env, message] of cases) {
      const r = await cli(args, env);
      expect(r.code, args.join(" ") + JSON.stringify(env)).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });
});

describe("credit-management worker: the store serve uses", () => {
  it("resolves the store as serve does: the same answer for every environment", () => {
    for (const env of [
      {},
      { CREDIT_SQLITE_PATH: "data/credits.sqlite" },
      { CREDIT_PG_URL: "postgres://u@h/db", CREDIT_PG_SCHEMA: "billing", CREDIT_PG_PARTITIONS: "month" },
      { CREDIT_MONGO_URI: "mongodb://h/?replicaSet=rs0" },
      { CREDIT_MONGO_URI: "mongodb://h/?replicaSet=rs0", CREDIT_MONGO_DB: "billing" },
    ])
      expect(storeSettings(env), JSON.stringify(env)).toEqual(serveSettings({}, env).store);
  });

  it("with no store set, works on serve's default SQLite file in the working directory", async () => {
    const dir = mkdtempSync(join(tmpdir(), "cli-worker-default-"));
    try {
      const file = join(dir, "credit-management.sqlite");
      // A grant that expired a minute ago, written where serve keeps its data by default.
      const past = { t: Date.now() - 86_400_000 };
      const m = await createCreditManager({
        db: new SqliteDbManager({ filename: file }),
        clock: () => new Date(past.t),
      });
      await m.credits.addCredits("alice", 50, { expiresAt: new Date(Date.now() - 60_000) });
      await m.close();
      const child = spawn(process.execPath, [inject("cliEntry"), "worker", "--once"], {
        cwd: dir,
        env: {
          ...process.env,
          CREDIT_MONGO_URI: undefined,
          CREDIT_PG_URL: undefined,
          CREDIT_SQLITE_PATH: undefined,
          CREDIT_REDIS_URL: undefined,
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.stderr.on("data", (d: Buffer) => (out += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
      expect(code, out).toBe(0);
      expect(out).toContain('"grantsExpired":1');
      // Its log names the store it worked on.
      const started = out
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as { msg: string; store?: string; where?: string })
        .find((l) => l.msg === "worker started");
      expect([started?.store, started?.where]).toEqual(["sqlite", realpathSync(file)]);
      const after = await createCreditManager({ db: new SqliteDbManager({ filename: file }) });
      expect((await after.credits.getUserCreditsInfo("alice")).balance).toBe(0);
      await after.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

interface Line {
  level: number;
  msg: string;
  task?: string;
  ok?: boolean;
  [field: string]: unknown;
}

/** The worker as a child process (this run's build of the sources, as the CLI tests run it), its log lines parsed. */
function startWorker(args: string[], env: Record<string, string>) {
  const child = spawn(process.execPath, [inject("cliEntry"), "worker", ...args], {
    env: { ...process.env, CREDIT_MONGO_URI: undefined, CREDIT_REDIS_URL: undefined, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: Line[] = [];
  let stderr = "";
  let rest = "";
  const waiting: { test: (l: Line) => boolean; resolve: (l: Line) => void }[] = [];
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  child.stdout.on("data", (d: Buffer) => {
    rest += d.toString();
    for (let at = rest.indexOf("\n"); at >= 0; at = rest.indexOf("\n")) {
      const line = JSON.parse(rest.slice(0, at)) as Line;
      rest = rest.slice(at + 1);
      lines.push(line);
      for (const w of [...waiting]) {
        if (w.test(line)) {
          waiting.splice(waiting.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    lines,
    stderr: () => stderr,
    exited,
    waitFor(test: (l: Line) => boolean, ms = 45_000): Promise<Line> {
      const seen = lines.find(test);
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise<Line>((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new Error(
                `no such line within ${ms} ms; got:\n${lines.map((l) => JSON.stringify(l)).join("\n")}\n${stderr}`,
              ),
            ),
          ms,
        );
        waiting.push({ test, resolve: (l) => (clearTimeout(timer), resolve(l)) });
      });
    },
  };
}

const round = (task: string) => (l: Line) => l.task === task && l.ok !== undefined;

const pgUrl = process.env.CREDIT_PG_URL;
const redisUrl = process.env.CREDIT_REDIS_URL;
// reason: the worker runs as a process on a shared store; needs CREDIT_PG_URL (set by .ci/run)
describe.skipIf(!pgUrl)("credit-management worker as a process on PostgreSQL (CREDIT_PG_URL)", () => {
  // reason: needs its database URL (set by .ci/run); skipped otherwise
  const schemas: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), "cm-worker-"));
  const managers: CreditManager[] = [];
  afterAll(async () => {
    for (const m of managers) await m.close();
    const client = new pg.Client({ connectionString: pgUrl });
    await client.connect();
    for (const s of schemas) await client.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`);
    await client.end();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A fresh schema, and a manager on it whose clock runs `daysAgo` days behind (to make work due now). */
  async function store(daysAgo: number) {
    const schema = `cm_worker_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
    schemas.push(schema);
    const past = await createCreditManager({
      db: new PostgresDbManager({ connectionString: pgUrl as string, schema }),
      clock: () => new Date(Date.now() - daysAgo * 86_400_000),
    });
    const now = await createCreditManager({
      db: new PostgresDbManager({ connectionString: pgUrl as string, schema }),
      notifications: {},
    });
    managers.push(past, now);
    return { schema, past, now, env: { CREDIT_PG_URL: pgUrl as string, CREDIT_PG_SCHEMA: schema } };
  }

  async function inParallel<T>(items: readonly T[], n: number, fn: (item: T) => Promise<unknown>): Promise<void> {
    let next = 0;
    await Promise.all(
      Array.from({ length: n }, async () => {
        while (next < items.length) await fn(items[next++] as T);
      }),
    );
  }

  const journal = async (m: CreditManager, userId: string): Promise<JournalEntry[]> =>
    m.db.listJournal(userId, { order: "asc", limit: 1000 });

  /** Users with one grant each that expired an hour ago (added by a clock a day behind). */
  async function dueGrants(past: CreditManager, count: number, prefix: string): Promise<string[]> {
    const users = Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
    await inParallel(users, 8, (u) => past.credits.addCredits(u, 5, { expiresAt: new Date(Date.now() - 3_600_000) }));
    return users;
  }

  it("with CREDIT_IDEMPOTENCY_RETENTION, a jobs round forgets the keys past the window (a retry then charges again)", async () => {
    const { past, now, env } = await store(2);
    await past.credits.addCredits("keyed", 100);
    const old = await past.credits.deductCredits("keyed", 5, { idempotencyKey: "two-days-old" });
    await now.credits.deductCredits("keyed", 5, { idempotencyKey: "fresh" });
    const w = startWorker(["--once"], { ...env, CREDIT_IDEMPOTENCY_RETENTION: "1d" });
    expect((await w.exited).code, w.stderr()).toBe(0);
    expect(w.lines.find(round("jobs"))).toMatchObject({
      ok: true,
      forgetIdempotencyKeys: { retentionMs: 86_400_000, keysForgotten: 1 },
    });
    expect((await now.credits.deductCredits("keyed", 5, { idempotencyKey: "two-days-old" })).id).not.toBe(old.id);
    expect((await now.credits.getUserCreditsInfo("keyed")).balance).toBe(85);
    expect((await now.credits.audit("keyed")).ok).toBe(true);
  });

  it("CREDIT_WORKER_CHECKPOINT_ENTRIES: a jobs round checkpoints the accounts with that many entries since their last", async () => {
    const { now, env } = await store(0);
    for (const u of ["busy", "quiet"]) await now.credits.addCredits(u, 10);
    for (let i = 0; i < 3; i++) await now.credits.deductCredits("busy", 1);
    const w = startWorker(["--once"], { ...env, CREDIT_WORKER_CHECKPOINT_ENTRIES: "3" });
    expect((await w.exited).code, w.stderr()).toBe(0);
    expect(w.lines.find(round("jobs"))).toMatchObject({
      ok: true,
      checkpointAccounts: { accountsScanned: 2, checkpointsWritten: 1, errors: 0 },
    });
    expect((await now.credits.latestCheckpoint("busy"))?.seq).toBe(5);
    // The usage round (on by default on PostgreSQL), after the jobs: both accounts' entries, the checkpoint's too, into the rollup.
    expect(w.lines.find(round("usage"))).toMatchObject({ ok: true, usage: { accounts: 2, entries: 6, more: false } });
    expect(await now.credits.latestCheckpoint("quiet")).toBeUndefined();
    expect((await now.credits.audit("busy")).fromSeq).toBe(5);
  });

  it("SIGTERM mid-round: the round in flight is finished and recorded, then exit 0", async () => {
    const { past, now, env } = await store(1);
    const users = await dueGrants(past, 300, "t");
    const ledgerFile = join(dir, "sigterm.jsonl");
    const w = startWorker(
      ["--jobs-every", "1h", "--jitter", "0", "--batch-size", "10", "--concurrency", "1", "--log-level", "debug"],
      {
        ...env,
        CREDIT_LEDGER_FILE: ledgerFile,
      },
    );
    await w.waitFor((l) => l.msg === "round started" && l.task === "jobs");
    w.child.kill("SIGTERM");
    expect(await w.exited).toEqual({ code: 0, signal: null });
    const msgs = w.lines.map((l) => l.msg);
    const stopping = msgs.indexOf("stopping: finishing the rounds in flight");
    const jobs = w.lines.findIndex(round("jobs"));
    // The signal came while the round ran; the round still did all of its work.
    expect(stopping).toBeGreaterThan(-1);
    expect(jobs).toBeGreaterThan(stopping);
    expect(w.lines[jobs]).toMatchObject({
      ok: true,
      expireDueGrants: { grantsExpired: 300, creditsExpired: 1500, errors: 0 },
    });
    expect(msgs.at(-1)).toBe("worker stopped");
    // The store agrees: every grant expired exactly once, every journal replays.
    await inParallel(users, 8, async (u) => {
      const entries = await journal(now, u);
      expect(entries.map((e) => e.type)).toEqual(["add", "expire"]);
      expect((await now.credits.audit(u)).ok).toBe(true);
    });
    expect(await now.db.findDueGrants(new Date(), 10)).toEqual([]);
    // The job's report is in the ledger (store and file), and the file has every expiry's line.
    const reports = await now.ledger.getEntries({ eventType: "system" });
    expect(reports.find((e) => e.message === "job expireDueGrants")?.details).toMatchObject({ grantsExpired: 300 });
    const lines = readFileSync(ledgerFile, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { eventType: string; details: { type?: string } });
    expect(lines.filter((l) => l.eventType === "transaction" && l.details.type === "expire")).toHaveLength(300);
  });

  it("a second signal exits at once (143); what the cut round did is whole, the rest is done by the next round", async () => {
    const { past, now, env } = await store(1);
    const users = await dueGrants(past, 300, "k");
    const w = startWorker(
      ["--jobs-every", "1h", "--jitter", "0", "--batch-size", "5", "--concurrency", "1", "--log-level", "debug"],
      env,
    );
    await w.waitFor((l) => l.msg === "round started" && l.task === "jobs");
    w.child.kill("SIGTERM");
    await w.waitFor((l) => l.msg === "stopping: finishing the rounds in flight");
    // Wait until some accounts are done, then cut the round.
    const client = new pg.Client({ connectionString: pgUrl });
    await client.connect();
    const expired = async () =>
      Number(
        (
          await client.query(
            `SELECT count(*) AS n FROM "${env.CREDIT_PG_SCHEMA}".journal_entries WHERE type = 'expire'`,
          )
        ).rows[0].n,
      );
    while ((await expired()) === 0) await new Promise((r) => setTimeout(r, 20));
    w.child.kill("SIGTERM");
    expect((await w.exited).code).toBe(143);
    expect(w.lines.find(round("jobs"))).toBeUndefined();
    expect(await expired()).toBeLessThan(300);
    // Each account is either all done or untouched.
    await inParallel(users, 8, async (u) => {
      const types = (await journal(now, u)).map((e) => e.type);
      expect([["add"], ["add", "expire"]]).toContainEqual(types);
      expect((await now.credits.audit(u)).ok).toBe(true);
    });
    // The audit command agrees: every journal replays to the stored state.
    expect((await cli(["audit", "--all"], env)).code).toBe(0);
    // The next round does exactly the rest. Counted now, not at the exit: a COMMIT the worker sent
    // just before it died is still the server's to finish, and may land after the exit was seen.
    const done = await expired();
    await client.end();
    expect(done).toBeLessThan(300);
    const next = startWorker(["--once"], env);
    expect((await next.exited).code).toBe(0);
    expect(next.lines.find(round("jobs"))).toMatchObject({ ok: true, expireDueGrants: { grantsExpired: 300 - done } });
    await inParallel(users, 8, async (u) =>
      expect((await journal(now, u)).map((e) => e.type)).toEqual(["add", "expire"]),
    );
  });

  it("--once exits 1 when a round failed (a delivery, the store), and what failed is left for the next round", async () => {
    const { now, env } = await store(0);
    await now.notifications.emit("f", { type: "subscription_renewed", dedupeKey: "once" });
    // Nothing listens on port 1: the publish fails, the row waits for its retry.
    const w = startWorker(["--once"], { ...env, CREDIT_REDIS_URL: "redis://127.0.0.1:1" });
    expect((await w.exited).code).toBe(1);
    expect(w.lines.find(round("jobs"))).toMatchObject({ ok: true });
    expect(w.lines.find(round("dispatch"))).toMatchObject({ ok: false, claimed: 1, sent: 0, retried: 1 });
    const [row] = await now.notifications.list("f");
    expect(row).toMatchObject({ status: "pending", attempts: 1 });
    // A store that cannot be reached: the start fails, exit 1, said on the log.
    const down = startWorker(["--once"], { CREDIT_PG_URL: "postgres://postgres@127.0.0.1:1/test" });
    expect((await down.exited).code).toBe(1);
    expect(down.lines.at(-1)).toMatchObject({ msg: "worker could not start" });
  });

  it("SIGHUP reopens the ledger file (logrotate moved it): later lines go to the new file", async () => {
    const { past, env } = await store(1);
    await dueGrants(past, 2, "h1");
    const ledgerFile = join(dir, "hup.jsonl");
    const w = startWorker(["--jobs-every", "200ms", "--jitter", "0"], { ...env, CREDIT_LEDGER_FILE: ledgerFile });
    await w.waitFor((l) => round("jobs")(l) && (l.expireDueGrants as { grantsExpired: number }).grantsExpired === 2);
    renameSync(ledgerFile, `${ledgerFile}.1`);
    w.child.kill("SIGHUP");
    await w.waitFor((l) => l.msg === "ledger file reopened");
    await dueGrants(past, 3, "h2");
    await w.waitFor((l) => round("jobs")(l) && (l.expireDueGrants as { grantsExpired: number }).grantsExpired === 3);
    w.child.kill("SIGTERM");
    expect((await w.exited).code).toBe(0);
    const users = (file: string) =>
      readFileSync(file, "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { eventType: string; userId: string | null })
        .filter((l) => l.eventType === "transaction")
        .map((l) => l.userId)
        .sort();
    expect(users(`${ledgerFile}.1`)).toEqual(["h1-0", "h1-1"]);
    expect(users(ledgerFile)).toEqual(["h2-0", "h2-1", "h2-2"]);
  });

  // reason: deliveries go to a Redis stream; needs CREDIT_REDIS_URL (set by .ci/run)
  it.skipIf(!redisUrl)("two workers at once: each renewal, expiry and delivery happens once", async () => {
    // reason: needs CREDIT_REDIS_URL for the stream (set by .ci/run)
    const { past, now, env } = await store(1.5);
    // Daily subscriptions started a day and a half ago: each is due for one renewal.
    await past.subscriptions.createPlan({
      id: "daily",
      name: "Daily",
      creditsPerPeriod: 10,
      price: 0,
      currency: "USD",
      billingPeriod: "daily",
    });
    const subscribers = Array.from({ length: 40 }, (_, i) => `s-${i}`);
    await inParallel(subscribers, 8, (u) => past.subscriptions.subscribe(u, "daily"));
    const holders = await dueGrants(past, 120, "g");
    // Events waiting in the outbox.
    const emitted = Array.from({ length: 60 }, (_, i) => `n-${i}`);
    await inParallel(emitted, 8, (u) =>
      now.notifications.emit(u, { type: "subscription_renewed", payload: { i: u }, dedupeKey: "seed" }),
    );
    const stream = `cm-worker-test:${randomUUID()}`;
    const workerEnv = {
      ...env,
      CREDIT_REDIS_URL: redisUrl as string,
      CREDIT_REDIS_STREAM: stream,
      CREDIT_REMINDER_DAYS: "none",
    };
    const args = ["--once", "--batch-size", "7", "--concurrency", "4", "--dispatch-limit", "60"];
    const a = startWorker(args, workerEnv);
    const b = startWorker(args, workerEnv);
    expect([(await a.exited).code, (await b.exited).code], a.stderr() + b.stderr()).toEqual([0, 0]);
    const rounds = [...a.lines, ...b.lines];
    const sum = (task: string, pick: (l: Line) => number) =>
      rounds.filter(round(task)).reduce((n, l) => n + pick(l), 0);
    // Renewals: 40 in all, between the two workers; each subscriber's journal has one allocation per period.
    expect(sum("jobs", (l) => (l.renewDueSubscriptions as { renewed: number }).renewed)).toBe(40);
    for (const u of subscribers) {
      const adds = (await journal(now, u)).filter((e) => e.type === "add");
      expect(adds).toHaveLength(2);
      expect(new Set(adds.map((e) => e.idempotencyKey)).size).toBe(2);
      expect((await now.credits.audit(u)).ok).toBe(true);
    }
    // Expiries: one per grant in the journals, and the two reports together count each once.
    for (const u of holders) expect((await journal(now, u)).filter((e) => e.type === "expire")).toHaveLength(1);
    let expiredByJob = 0;
    for (const u of [...subscribers, ...holders]) {
      for (const e of await journal(now, u))
        if (e.type === "expire" && e.description === "credits expired (expiry job)") expiredByJob += e.grants.length;
    }
    expect(expiredByJob).toBeGreaterThanOrEqual(120);
    expect(sum("jobs", (l) => (l.expireDueGrants as { grantsExpired: number }).grantsExpired)).toBe(expiredByJob);
    // Deliveries: every outbox row sent once, each in the stream once (by one worker or the other).
    const redis = new Redis(redisUrl as string);
    try {
      const entries = (await redis.xrange(stream, "-", "+")) as [string, string[]][];
      const ids = entries.map(([, fields]) => fields[fields.indexOf("id") + 1]);
      const rows: Notification[] = [];
      for (const u of [...subscribers, ...emitted, ...holders])
        rows.push(...(await now.notifications.list(u, { limit: 1000 })));
      // The events seeded, and one per renewal; anything more (a second of a user's, or one of a
      // grant holder's) is shown whole.
      const seen = new Set<string>();
      const extra = rows.filter((r) => {
        const first = !seen.has(r.userId) && !holders.includes(r.userId);
        seen.add(r.userId);
        return !first;
      });
      expect(extra.map((r) => [r.userId, r.type, r.dedupeKey, r.createdAt, r.payload])).toEqual([]);
      expect(rows.length).toBe(60 + 40);
      expect(rows.every((r) => r.status === "sent")).toBe(true);
      expect(ids.length).toBe(rows.length);
      expect(new Set(ids)).toEqual(new Set(rows.map((r) => r.id)));
      expect(sum("dispatch", (l) => l.sent as number)).toBe(rows.length);
      expect(sum("dispatch", (l) => (l.lost as number) + (l.retried as number))).toBe(0);
    } finally {
      await redis.del(stream);
      await redis.quit();
    }
  });
});
