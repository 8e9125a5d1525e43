import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type pg from "pg";
import { withPgClient } from "./fixtures/pg-admin.js";
import { afterAll, describe, expect, it } from "vitest";
import { runCli } from "../src/cli/run.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { ConfigurationError, ConflictError, ValidationError } from "../src/core/errors.js";
import { createCreditManager, type CreditManager } from "../src/index.js";
import { type JournalEntry } from "../src/models-public.js";
import { generateSql } from "../src/schema/sql.js";
import { partitionName, rangeAfter, rangeStart } from "../src/schema/partitions.js";

const url = process.env.CREDIT_PG_URL;
const DAY = 86_400_000;
const newSchema = (tag: string) => `cm_part_${tag}_${randomUUID().replace(/-/g, "").slice(0, 8)}`;
const schemas: string[] = [];

const admin = <T>(fn: (client: pg.Client) => Promise<T>): Promise<T> => withPgClient(url as string, fn);

/** The partition (table name) each of the user's journal entries is in, by seq. */
async function partitionsOf(schema: string, userId: string): Promise<Map<number, string>> {
  const r = await admin((c) =>
    c.query<{ seq: string; part: string }>(
      `SELECT seq, tableoid::regclass::text AS part FROM "${schema}".journal_entries WHERE user_id = $1 ORDER BY seq`,
      [userId],
    ),
  );
  return new Map(r.rows.map((row) => [Number(row.seq), row.part.replace(/^.*\./, "").replace(/"/g, "")]));
}

async function cli(args: string[], db: PostgresDbManager) {
  let stdout = "";
  const code = await runCli(args, { stdout: (t) => (stdout += t), stderr: () => {} }, { db });
  return { code, stdout };
}

describe("generateSql({ partitioned })", () => {
  it("partitions the journal and the ledger table by created_at; the outbox stays a plain table", () => {
    const sql = generateSql({ dialect: "postgres", partitioned: { interval: "day", ahead: 1 } });
    expect(sql).toMatch(
      /CREATE TABLE IF NOT EXISTS "journal_entries" \([^;]*PRIMARY KEY \("user_id", "seq", "created_at"\)\n\) PARTITION BY RANGE \("created_at"\);/,
    );
    expect(sql).toMatch(
      /CREATE TABLE IF NOT EXISTS "ledger_entries" \([^;]*PRIMARY KEY \("id", "created_at"\)\n\) PARTITION BY RANGE \("created_at"\);/,
    );
    expect(sql).not.toMatch(/"notifications" \([^;]*PARTITION BY/);
    // A unique index of a partitioned table would need created_at: the key's index is a plain one.
    expect(sql).toMatch(/CREATE INDEX IF NOT EXISTS "journal_entries_idempotency_key" ON "journal_entries"/);
    expect(sql).toContain(
      `CREATE TABLE IF NOT EXISTS "journal_entries_default" PARTITION OF "journal_entries" DEFAULT;`,
    );
    const today = rangeStart("day", new Date());
    for (const from of [today, rangeAfter("day", today)])
      expect(sql).toContain(
        `"${partitionName("journal_entries", from)}" PARTITION OF "journal_entries" FOR VALUES FROM ('${from.toISOString()}'::timestamptz)`,
      );
    expect(sql).not.toContain(partitionName("journal_entries", rangeAfter("day", today, 2)));
    // Unpartitioned DDL is unchanged: the key's index is unique there.
    expect(generateSql({ dialect: "postgres" })).toMatch(
      /CREATE UNIQUE INDEX IF NOT EXISTS "journal_entries_idempotency_key"/,
    );
    expect(() => generateSql({ dialect: "mysql", partitioned: "day" })).toThrow(/postgres dialect only/);
    expect(() => generateSql({ dialect: "postgres", partitioned: "day", distributed: true })).toThrow(
      /cannot be combined/,
    );
    expect(() => generateSql({ dialect: "postgres", partitioned: "hour" as "day" })).toThrow(/partitioned must be/);
  });

  it("credit-management schema --partitioned prints it; wrong uses are usage errors", async () => {
    let out = "";
    const run = (args: string[]) => runCli(args, { stdout: (t) => (out += t), stderr: (t) => (out += t) }, { env: {} });
    expect(await run(["schema", "--partitioned", "week", "--prefix", "cm_"])).toBe(0);
    expect(out).toContain(
      `CREATE TABLE IF NOT EXISTS "cm_journal_entries_default" PARTITION OF "cm_journal_entries" DEFAULT;`,
    );
    expect(out).toContain(`"${partitionName("cm_ledger_entries", rangeStart("week", new Date()))}" PARTITION OF`);
    for (const [args, error] of [
      [["schema", "--partitioned", "hour"], /--partitioned must be day, week or month, not "hour"/],
      [
        ["schema", "--partitioned", "day", "--dialect", "sqlite"],
        /--partitioned applies to a new PostgreSQL schema only/,
      ],
      [
        ["schema", "--partitioned", "day", "--from-version", "1"],
        /--partitioned applies to a new PostgreSQL schema only/,
      ],
      [["schema", "--partitioned", "day", "--dialect", "mongodb"], /--partitioned applies to --dialect postgres only/],
      [["audit", "--all", "--partitioned", "day"], /--partitioned applies to "schema" only/],
    ] as const) {
      out = "";
      expect(await run([...args])).toBe(2);
      expect(out).toMatch(error);
    }
  });

  it("week ranges start on Monday (UTC), month ranges on the first", () => {
    const at = new Date(Date.now());
    const week = rangeStart("week", at);
    expect(week.getUTCDay()).toBe(1);
    expect(at.getTime() - week.getTime()).toBeLessThan(7 * DAY);
    expect(rangeAfter("week", week).getTime() - week.getTime()).toBe(7 * DAY);
    const month = rangeStart("month", at);
    expect(month.getUTCDate()).toBe(1);
    expect(rangeAfter("month", month).getUTCMonth()).toBe((month.getUTCMonth() + 1) % 12);
  });
});

// Skipped without a server: CREDIT_PG_URL names the PostgreSQL to run against (.ci/run sets it).
describe.skipIf(!url /* reason: no server */)("PostgreSQL partitioned by time (docs/running-for-years.md)", () => {
  const managers: CreditManager[] = [];
  afterAll(async () => {
    for (const m of managers) await m.close();
    for (const s of schemas) await admin((c) => c.query(`DROP SCHEMA IF EXISTS "${s}" CASCADE`));
  });

  /** A store partitioned by day and a manager on it whose clock the test moves. */
  async function store(schema: string, clock: { now: number }) {
    const db = new PostgresDbManager({ connectionString: url, schema, partitions: { interval: "day" } });
    const m = await createCreditManager({ db, clock: () => new Date(clock.now) });
    managers.push(m);
    return { db, m };
  }

  it("init makes the DEFAULT partition and the days ahead; bad options are refused", async () => {
    const schema = newSchema("init");
    schemas.push(schema);
    const { db } = await store(schema, { now: Date.now() });
    const parts = await db.listPartitions();
    const today = rangeStart("day", new Date());
    const names = parts.filter((p) => p.table === "journal").map((p) => p.name);
    expect(names).toEqual(
      [0, 1, 2]
        .map((n) => partitionName("journal_entries", rangeAfter("day", today, n)))
        .concat("journal_entries_default"),
    );
    expect(parts.filter((p) => p.table === "ledger")).toHaveLength(4);
    expect((await db.ensurePartitions()).created).toEqual([]); // idempotent
    expect(() => new PostgresDbManager({ connectionString: url, partitions: { interval: "hour" as "day" } })).toThrow(
      ConfigurationError,
    );
    expect(() => new PostgresDbManager({ connectionString: url, partitions: { interval: "day", ahead: -1 } })).toThrow(
      /ahead/,
    );
  });

  it("CREDIT_PG_PARTITIONS: the worker's store is partitioned (month); a bad value is refused", async () => {
    const schema = newSchema("env");
    schemas.push(schema);
    const env = { CREDIT_PG_URL: url, CREDIT_PG_SCHEMA: schema, CREDIT_PG_PARTITIONS: "month" };
    let out = "";
    const io = { stdout: (t: string) => (out += t), stderr: (t: string) => (out += t) };
    expect(await runCli(["worker", "--once", "--log-level", "silent"], io, { env })).toBe(0);
    const db = new PostgresDbManager({ connectionString: url, schema });
    const names = (await db.listPartitions()).filter((p) => p.table === "journal").map((p) => p.name);
    await db.close();
    const month = rangeStart("month", new Date());
    expect(names).toEqual(
      [0, 1, 2]
        .map((n) => partitionName("journal_entries", rangeAfter("month", month, n)))
        .concat("journal_entries_default"),
    );
    out = "";
    // Exit 2 naming the variable, before any connection (docs/operations.md).
    expect(await runCli(["worker", "--once"], io, { env: { ...env, CREDIT_PG_PARTITIONS: "hourly" } })).toBe(2);
    expect(out).toMatch(/CREDIT_PG_PARTITIONS must be day, week or month, not "hourly"/);
  });

  it("init refuses partitions on a store whose journal is a plain table", async () => {
    const schema = newSchema("plain");
    schemas.push(schema);
    const plain = new PostgresDbManager({ connectionString: url, schema });
    await plain.init();
    const m = await createCreditManager({ db: plain, init: false });
    await expect(m.credits.archivePartitions({ before: new Date(), dir: tmpdir() })).rejects.toThrow(
      /is not partitioned: use archiveJournal/,
    );
    await plain.close();
    const db = new PostgresDbManager({ connectionString: url, schema, partitions: { interval: "week" } });
    await expect(db.init()).rejects.toThrow(/is a plain table: a store is partitioned when it is created/);
    await db.close();
  });

  it("convertToPartitioned: a plain store's journal and ledger become partitioned, rows and keys intact", async () => {
    const schema = newSchema("convert");
    schemas.push(schema);
    const clock = { now: Date.now() - 70 * DAY };
    const plain = await createCreditManager({
      db: new PostgresDbManager({ connectionString: url, schema }),
      clock: () => new Date(clock.now),
    });
    await plain.credits.addCredits("c", 50);
    await plain.credits.deductCredits("c", 5, { idempotencyKey: "old-key" });
    clock.now = Date.now();
    await plain.credits.deductCredits("c", 5);
    await plain.close();

    const db = new PostgresDbManager({ connectionString: url, schema, partitions: { interval: "month", ahead: 1 } });
    await expect(db.convertToPartitioned({ keepOld: true })).resolves.toMatchObject({
      tables: [
        { table: "journal", rows: 3, kept: "journal_entries_unpartitioned" },
        { table: "ledger", rows: 0, kept: "ledger_entries_unpartitioned" },
      ],
    });
    expect((await db.convertToPartitioned()).tables).toEqual([]); // already partitioned
    const m = await createCreditManager({ db, clock: () => new Date(clock.now) });
    managers.push(m);
    const parts = await partitionsOf(schema, "c");
    expect(parts.get(1)).toBe(partitionName("journal_entries", rangeStart("month", new Date(Date.now() - 70 * DAY))));
    expect(parts.get(3)).toBe(partitionName("journal_entries", rangeStart("month", new Date())));
    expect([...parts.values()]).not.toContain("journal_entries_default");
    // The key written before the conversion still answers its retry.
    const retry = await m.credits.deductCredits("c", 5, { idempotencyKey: "old-key" });
    expect(retry.seq).toBe(2);
    expect((await m.credits.getUserCreditsInfo("c")).balance).toBe(40);
    expect((await m.credits.audit("c", { from: "genesis" })).ok).toBe(true);
    // The copy into the partitioned journal did not count the entries in the usage rollup again
    // (docs/usage.md, "The daily rollup"); its catch-up reads the partitions.
    await m.credits.deductCredits("c", 3);
    await db.catchUpUsageRollup();
    const rollup = await admin((c) =>
      c.query(
        `SELECT sum(credits)::int AS credits, sum(requests)::int AS requests FROM "${schema}".usage_daily WHERE user_id = 'c'`,
      ),
    );
    expect(rollup.rows[0]).toEqual({ credits: 13, requests: 3 });
    expect((await m.credits.audit("c")).problems).toEqual([]);
    const old = await admin((c) => c.query(`SELECT count(*)::int AS n FROM "${schema}".journal_entries_unpartitioned`));
    expect(old.rows[0]?.n).toBe(3);
  });

  it("a retry in a later partition answers the first result; two pools with one key charge once", async () => {
    const schema = newSchema("keys");
    schemas.push(schema);
    // 23:00 UTC ten days ago: the next day's partition is an hour away.
    const day0 = rangeStart("day", new Date(Date.now() - 10 * DAY)).getTime();
    const clock = { now: day0 + 23 * 3_600_000 };
    const a = await store(schema, clock);
    const b = await store(schema, clock); // another pool, as another process would have
    await a.db.ensurePartitions(new Date(clock.now));
    await a.m.credits.addCredits("u", 100);
    const first = await a.m.credits.deductCredits("u", 10, { idempotencyKey: "order-1" });
    clock.now += 2 * 3_600_000; // 01:00 the next day
    const again = await b.m.credits.deductCredits("u", 10, { idempotencyKey: "order-1" });
    expect(again.id).toBe(first.id);
    expect((await b.m.credits.getUserCreditsInfo("u")).balance).toBe(90);
    const parts = await partitionsOf(schema, "u");
    expect(parts.get(first.seq)).toBe(partitionName("journal_entries", new Date(day0)));

    // Both pools at once, each key several times: every key charges once.
    const keys = Array.from({ length: 8 }, (_, i) => `race-${i}`);
    const results = await Promise.all(
      keys.flatMap((k) => [a, b, a, b].map((s) => s.m.credits.deductCredits("u", 1, { idempotencyKey: k }))),
    );
    for (const k of keys) expect(new Set(results.filter((e) => e.idempotencyKey === k).map((e) => e.id)).size).toBe(1);
    expect((await a.m.credits.getUserCreditsInfo("u")).balance).toBe(90 - keys.length);
    const later = await partitionsOf(schema, "u");
    expect(later.get(again.seq + 1)).toBe(partitionName("journal_entries", new Date(day0 + DAY)));
    expect(later.size).toBe(first.seq + keys.length);
    expect((await a.m.credits.audit("u", { from: "genesis" })).ok).toBe(true);
  });

  it("rows that reached the DEFAULT partition move into the partition made for their day", async () => {
    const schema = newSchema("default");
    schemas.push(schema);
    const clock = { now: Date.now() - 40 * DAY };
    const { db, m } = await store(schema, clock);
    await m.credits.addCredits("d", 5);
    await m.credits.deductCredits("d", 2);
    expect([...(await partitionsOf(schema, "d")).values()]).toEqual([
      "journal_entries_default",
      "journal_entries_default",
    ]);
    const report = await db.ensurePartitions(new Date(clock.now));
    expect(report.movedFromDefault).toBe(2);
    // The move is no new usage: the daily rollup counts the deduction once (docs/usage.md).
    await db.catchUpUsageRollup();
    const rollup = await admin((c) => c.query(`SELECT sum(credits)::int AS n FROM "${schema}".usage_daily`));
    expect(rollup.rows[0]?.n).toBe(2);
    const made = partitionName("journal_entries", rangeStart("day", new Date(clock.now)));
    expect([...(await partitionsOf(schema, "d")).values()]).toEqual([made, made]);
    expect((await m.credits.audit("d", { from: "genesis" })).problems).toEqual([]);
  });

  it("archives two days: checkpoints first, JSONL files the CLI verifies into the store; history and a void still work", async () => {
    const schema = newSchema("archive");
    schemas.push(schema);
    const dir = mkdtempSync(join(tmpdir(), "cm-partitions-"));
    const day0 = rangeStart("day", new Date(Date.now() - 20 * DAY)).getTime();
    const clock = { now: day0 + 3_600_000 };
    const { db, m } = await store(schema, clock);
    await db.ensurePartitions(new Date(day0 + 2 * DAY)); // days 0 … 4
    await db.ensurePartitions(new Date(day0));
    const grant = await m.credits.addCredits("u", 100);
    for (let i = 0; i < 3; i++) await m.credits.deductCredits("u", 5, { idempotencyKey: `d0-${i}` });
    await m.credits.addCredits("w", 7);
    clock.now = day0 + DAY + 3_600_000;
    await m.credits.checkpoint("u"); // day 1: a checkpoint in a partition that is archived too
    for (let i = 0; i < 2; i++) await m.credits.deductCredits("u", 3);
    clock.now = day0 + 3 * DAY;
    await m.credits.deductCredits("u", 1);

    // Refused without checkpoints, naming the accounts; nothing detached.
    const before = new Date(day0 + 2 * DAY);
    const refused = await m.credits.archivePartitions({ before, dir, checkpoint: false }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ConflictError);
    // u has one (seq 5, day 1) after its last entry of day 0; w has none.
    expect((refused as Error).message).toMatch(/1 account\(s\) have no checkpoint after their last entry in it \(w\)/);
    expect((await db.listPartitions()).some((p) => p.name === partitionName("journal_entries", new Date(day0)))).toBe(
      true,
    );
    await expect(m.credits.archivePartitions({ before: "yesterday", dir })).rejects.toThrow(ValidationError);
    await expect(m.credits.archivePartitions({ before, dir: join(dir, "missing") })).rejects.toThrow(
      /is not a directory/,
    );
    await expect(m.credits.archivePartitions({ before: new Date(clock.now + DAY), dir })).rejects.toThrow(
      /is in the future/,
    );

    const report = await m.credits.archivePartitions({ before, dir });
    expect(report.checkpointsWritten).toBe(2);
    const journal = report.partitions.filter((p) => p.table === "journal");
    expect(journal.map((p) => p.name)).toEqual(
      [0, 1].map((n) => partitionName("journal_entries", new Date(day0 + n * DAY))),
    );
    expect(journal.map((p) => [p.rows, p.accounts])).toEqual([
      [5, 2],
      [3, 1],
    ]);
    expect(report.partitions.filter((p) => p.table === "ledger")).toHaveLength(2);
    const left = (await db.listPartitions()).map((p) => p.name);
    for (const p of report.partitions) expect(left).not.toContain(p.name);
    const gone = await admin((c) =>
      c.query<{ n: string }>(`SELECT count(*) AS n FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)`, [
        schema,
        report.partitions.map((p) => p.name),
      ]),
    );
    expect(Number(gone.rows[0]?.n)).toBe(0); // detached and dropped

    const files = journal.map((p) => p.file);
    const lines = readFileSync(files[0] as string, "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as JournalEntry);
    expect(lines.map((e) => [e.userId, e.seq])).toEqual([
      ["u", 1],
      ["u", 2],
      ["u", 3],
      ["u", 4],
      ["w", 1],
    ]);

    // The store keeps what audit, history and a void need.
    expect(await m.credits.audit("u")).toMatchObject({ ok: true, from: "checkpoint" });
    expect((await m.credits.audit("w")).ok).toBe(true);
    const page = await m.credits.getCreditHistory("u", { limit: 1 });
    expect(page.items.map((e) => [e.seq, e.type])).toEqual([[9, "checkpoint"]]);
    const rest = await m.credits.getCreditHistory("u", { cursor: page.nextCursor as string });
    expect(rest.items.map((e) => e.seq)).toEqual([8]); // entries 1 to 7 are in the files
    const voided = await m.credits.voidGrant(grant.grants[0]?.grantId as string);
    expect(voided.type).toBe("void");
    expect((await m.credits.audit("u")).ok).toBe(true);

    // The CLI verifies both files as one sequence, linked to the store's checkpoint.
    const ok = await cli(["audit", "--archive", files[0] as string, "--archive", files[1] as string], db);
    expect(ok.stdout).toContain("2 accounts in the archives, 2 verified against the store");
    expect(ok.code).toBe(0);
    // The first file alone does not reach the store: u's entries 5 to 7 are missing.
    const first = await cli(["audit", "--archive", files[0] as string], db);
    expect(first.code).toBe(1);
    expect(first.stdout).toContain("the store has no entry 5 to continue the archive, which ends at seq 4");
    // The second starts at u's checkpoint of day 1: it verifies on its own, into the store.
    expect((await cli(["audit", "--archive", files[1] as string], db)).code).toBe(0);

    // A line edited in the second file is found.
    const tampered = join(dir, "tampered.jsonl");
    writeFileSync(
      tampered,
      readFileSync(files[1] as string, "utf8").replace(/"type":"deduct","amount":3,/, '"type":"deduct","amount":2,'),
    );
    const bad = await cli(["audit", "--archive", files[0] as string, "--archive", tampered], db);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/entry 6 was altered/);

    // Nothing left to archive: a second run changes nothing.
    expect((await m.credits.archivePartitions({ before, dir })).partitions).toEqual([]);
  });

  it("a file left by a stopped run is taken when it holds the same rows, refused when not; keepDetached keeps the table", async () => {
    const schema = newSchema("resume");
    schemas.push(schema);
    const dir = mkdtempSync(join(tmpdir(), "cm-partitions-resume-"));
    const day0 = rangeStart("day", new Date(Date.now() - 30 * DAY)).getTime();
    const clock = { now: day0 + 3_600_000 };
    const { db, m } = await store(schema, clock);
    await db.ensurePartitions(new Date(day0));
    await m.credits.addCredits("r", 10);
    await m.credits.deductCredits("r", 4);
    clock.now = day0 + 2 * DAY;
    const before = new Date(day0 + DAY);
    const name = partitionName("journal_entries", new Date(day0));
    const file = join(dir, `${name}.jsonl`);

    writeFileSync(file, "not the rows\n");
    await expect(m.credits.archivePartitions({ before, dir })).rejects.toThrow(/exists and differs from partition/);
    expect((await db.listPartitions()).map((p) => p.name)).toContain(name); // nothing detached

    writeFileSync(file, "");
    await expect(m.credits.archivePartitions({ before, dir, keepDetached: true })).rejects.toThrow(
      /exists and differs/,
    );
    rmSync(file);
    const first = await m.credits.archivePartitions({ before, dir, keepDetached: true });
    expect(first.partitions.map((p) => [p.name, p.rows])).toContainEqual([name, 2]); // the add and the deduction; the checkpoint is of day 2
    const written = readFileSync(file, "utf8");
    // Kept as a table of its own: put it back, as if the run had stopped after writing the file.
    await admin((c) =>
      c.query(
        `ALTER TABLE "${schema}".journal_entries ATTACH PARTITION "${schema}"."${name}" FOR VALUES FROM ('${new Date(day0).toISOString()}') TO ('${new Date(day0 + DAY).toISOString()}')`,
      ),
    );
    const again = await m.credits.archivePartitions({ before, dir });
    expect(again.partitions.find((p) => p.name === name)?.rows).toBe(
      first.partitions.find((p) => p.name === name)?.rows,
    );
    expect(readFileSync(file, "utf8")).toBe(written);
    expect((await db.listPartitions()).map((p) => p.name)).not.toContain(name);
    expect((await m.credits.audit("r")).ok).toBe(true);
  });
});
