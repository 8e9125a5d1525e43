// PostgreSQL's daily usage rollup (docs/usage.md, "The daily rollup"): what it keeps, the reports
// that read it, the audit that checks it, and its catch-ups racing writes and each other. What a
// usage report answers on every store (random journals against a naive sum over the journal, the
// metadata of holds, top accounts) is the `usage` part of the contract suite
// (src/testing/usage.ts), run on each store by its own test file.
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PostgresDbManager } from "../src/db/postgres/index.js";
import { createCreditManager, type CreditManager, type CreditService } from "../src/index.js";
import { playUsage, usageService } from "../src/testing/usage.js";
import { createWorker } from "../src/worker/index.js";
import type { OpenedStore } from "./fixtures/stores.js";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

// The daily rollup of PostgreSQL (docs/usage.md, "The daily rollup"): kept by the journal's
// trigger, read by fleet reports of whole UTC days, checked by audit.
// reason: needs a PostgreSQL server, whose URL .ci/run sets in CREDIT_PG_URL; skipped without it
describe.skipIf(!process.env.CREDIT_PG_URL)("the daily usage rollup on PostgreSQL", () => {
  // reason: needs CREDIT_PG_URL; skipped otherwise
  let opened: OpenedStore;
  let m: CreditManager;
  let played: CreditService;
  let client: pg.Client;
  let schema: string;
  const clock = { now: 0 };

  beforeAll(async () => {
    const { PostgresDbManager } = await import("../src/db/postgres/index.js");
    const { default: pgDriver } = await import("pg");
    const { randomUUID } = await import("node:crypto");
    schema = `cm_rollup_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
    const db = new PostgresDbManager({ connectionString: process.env.CREDIT_PG_URL as string, schema });
    opened = { db, another: () => db, drop: async () => undefined };
    clock.now = Math.floor(Date.now() / DAY) * DAY - 10 * DAY + 5 * HOUR;
    m = await createCreditManager({ db, clock: () => new Date(clock.now) });
    // The operations are played by credits whose module context runs the take-backs (as payments' does).
    played = usageService(db, clock);
    client = new pgDriver.Client({ connectionString: process.env.CREDIT_PG_URL });
    await client.connect();
  });
  afterAll(async () => {
    await m?.close();
    await client?.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await client?.end();
    void opened;
  });

  it("holds each account's usage by UTC day and kind, the fleet report reads it, and a tampered row fails audit", async () => {
    await playUsage(played, clock, "r1", [
      { op: "deduct", amount: 7, feature: "chat" },
      { op: "step", ms: DAY },
      { op: "hold", amount: 20, capture: 12 },
      { op: "takeBack", amount: 3, dispute: true },
      {
        op: "window",
        amount: 30,
        requests: 4,
        parts: [{ model: "small", feature: "chat", credits: 25, requests: 4, inputTokens: 9 }],
      },
    ]);
    await playUsage(played, clock, "r2", [
      { op: "takeBack", amount: 5, dispute: false },
      { op: "deduct", amount: 2 },
    ]);
    const readRollup = () =>
      client.query(
        `SELECT user_id, to_char(day, 'YYYY-MM-DD') AS day, kind, credits::int, requests::int, input_tokens::int AS input FROM "${schema}".usage_daily ORDER BY 1, 2, 3`,
      );
    // Nothing on the journal's write path (schema 18): the rollup is caught up by its readers.
    expect((await readRollup()).rows).toEqual([]);
    const day = (ms: number) => new Date(ms).toISOString().slice(0, 10);
    const d0 = Math.floor(Date.now() / DAY) * DAY - 10 * DAY;
    // Rows the rollup alone answers: a report over whole days (which first adds the entries the
    // rollup does not hold yet), then after a change to the rollup only.
    const top = () =>
      m.credits.getUsage({
        from: new Date(d0),
        to: new Date(d0 + 3 * DAY),
        interval: null,
        groupBy: ["account"],
        orderBy: "credits",
        kinds: ["spend"],
      });
    expect((await top()).rows.map((r) => [r.account, r.credits])).toEqual([
      ["r1", 49],
      ["r2", 2],
    ]);
    const rollup = await readRollup();
    expect(rollup.rows).toEqual(
      [
        { user_id: "r1", day: day(d0), kind: "spend", credits: 7, requests: 1, input: 0 },
        { user_id: "r1", day: day(d0 + DAY), kind: "spend", credits: 42, requests: 2, input: 9 },
        { user_id: "r1", day: day(d0 + DAY), kind: "clawback", credits: 3, requests: 0, input: 0 },
        { user_id: "r2", day: day(d0 + DAY), kind: "spend", credits: 2, requests: 1, input: 0 },
        { user_id: "r2", day: day(d0 + DAY), kind: "refund", credits: 5, requests: 0, input: 0 },
      ].sort((a, b) => (a.user_id + a.day + a.kind < b.user_id + b.day + b.kind ? -1 : 1)),
    );
    expect((await m.credits.audit("r1")).ok).toBe(true);
    await client.query(
      `UPDATE "${schema}".usage_daily SET credits = credits + 100 WHERE user_id = 'r2' AND kind = 'spend'`,
    );
    expect((await top()).rows.map((r) => [r.account, r.credits])).toEqual([
      ["r2", 102],
      ["r1", 49],
    ]);
    const report = await m.credits.audit("r2");
    expect(report.ok).toBe(false);
    expect(report.problems).toEqual([
      `usage rollup: ${day(d0 + DAY)} spend has credits 102, requests 1, tokens 0/0/0, the journal credits 2, requests 1, tokens 0/0/0`,
    ]);
    await client.query(`DELETE FROM "${schema}".usage_daily WHERE user_id = 'r1' AND kind = 'clawback'`);
    expect((await m.credits.audit("r1")).problems).toEqual([
      `usage rollup: ${day(d0 + DAY)} clawback has none, the journal credits 3, requests 0, tokens 0/0/0`,
    ]);
  });

  it("counts every entry of a group commit once, with catch-ups running meanwhile: one statement's entries of several accounts, several of one account among them (compare-and-set on each account's cursor, schema 18)", async () => {
    const db = opened.db as unknown as { roundTrips: number; catchUpUsageRollup(userId?: string): Promise<number> };
    const calls = Array.from({ length: 40 }, (_, i) => ({ account: `g${i % 5}`, amount: 1 + (i % 3), tokens: 10 * i }));
    for (let i = 0; i < 5; i++) await m.credits.addCredits(`g${i}`, 1000);
    const start = db.roundTrips;
    let catchUps = 0;
    await Promise.all([
      ...calls.map((c) =>
        m.credits.deductCredits(c.account, c.amount, {
          metadata: { usages: [{ model: "m", amount: c.amount, inputTokens: c.tokens }] },
        }),
      ),
      // Catch-ups of every account and of one, concurrent with the writes and with each other.
      ...Array.from({ length: 6 }, (_, i) =>
        db.catchUpUsageRollup(i % 2 === 0 ? undefined : `g${i % 5}`).then(() => catchUps++),
      ),
    ]);
    expect(catchUps).toBe(6);
    // Group commit put several deductions in each statement (fewer round trips than calls).
    expect(db.roundTrips - start).toBeLessThan(calls.length + 6 * 2);
    await db.catchUpUsageRollup();
    const rows = await client.query(
      `SELECT user_id, kind, credits::int, requests::int, input_tokens::int AS input FROM "${schema}".usage_daily WHERE user_id LIKE 'g%' ORDER BY 1, 2`,
    );
    const expected = [0, 1, 2, 3, 4].map((g) => {
      const mine = calls.filter((c) => c.account === `g${g}`);
      return {
        user_id: `g${g}`,
        kind: "spend",
        credits: mine.reduce((n, c) => n + c.amount, 0),
        requests: mine.length,
        input: mine.reduce((n, c) => n + c.tokens, 0),
      };
    });
    expect(rows.rows).toEqual(expected);
    for (let g = 0; g < 5; g++) expect((await m.credits.audit(`g${g}`)).problems).toEqual([]);
  });

  // The worker's usage round (docs/usage.md, "Keeping the rollup caught up").
  type Pg = PostgresDbManager;
  /** The accounts behind their rollup cursor, and their entries the rollup does not hold yet. */
  const behind = async () =>
    (
      await client.query<{ accounts: number; entries: number }>(
        `SELECT count(*)::int AS accounts, coalesce(sum(a.seq - coalesce(s.through_seq, 0)), 0)::int AS entries ` +
          `FROM "${schema}".accounts a LEFT JOIN "${schema}".usage_state s ON s.user_id = a.user_id WHERE a.seq > coalesce(s.through_seq, 0)`,
      )
    ).rows[0]!;
  const cursors = async () =>
    (await client.query(`SELECT user_id, through_seq::int AS at FROM "${schema}".usage_state ORDER BY 1`)).rows;
  const rollupOf = async (prefix: string) =>
    (
      await client.query(
        `SELECT user_id, to_char(day, 'YYYY-MM-DD') AS day, kind, credits::int, requests::int, input_tokens::int AS input ` +
          `FROM "${schema}".usage_daily WHERE user_id LIKE $1 ORDER BY 1, 2, 3`,
        [`${prefix}%`],
      )
    ).rows;
  /** A report across accounts by day that reads the rollup (whole UTC days around the clock). */
  const fleet = (c: CreditManager, prefix: string) => async () =>
    (
      await c.credits.getUsage({
        from: new Date(Math.floor(clock.now / DAY) * DAY - 12 * DAY),
        to: new Date(Math.floor(clock.now / DAY) * DAY + 2 * DAY),
        interval: "day",
        groupBy: ["account"],
      })
    ).rows.filter((r) => r.account?.startsWith(prefix));
  const spend = (user: string, amount: number, tokens: number) =>
    m.credits.deductCredits(user, amount, { metadata: { usages: [{ model: "m", amount, inputTokens: tokens }] } });

  it("the worker's usage round brings every cursor to the journal's head in bounded statements; a report after it adds nothing and reads what the journal sums to", async () => {
    const db = opened.db as unknown as Pg;
    for (let u = 0; u < 4; u++) {
      await playUsage(played, clock, `u${u}`, [
        { op: "deduct", amount: 3 + u, feature: "chat" },
        { op: "step", ms: DAY },
        { op: "takeBack", amount: 2, dispute: true },
        ...Array.from({ length: 2 * u }, (_, i) => ({ op: "deduct" as const, amount: 1 + i })),
      ]);
      await spend(`u${u}`, 5, 100 * u);
    }
    const before = await behind();
    expect(before.accounts).toBeGreaterThanOrEqual(4);
    // Bounded: at most 7 entries, 2 a statement (an account with more in pieces).
    const statements: number[] = [];
    const readWithoutJit = db.readWithoutJit.bind(db);
    db.readWithoutJit = async (...args: Parameters<Pg["readWithoutJit"]>) => {
      const rows = await readWithoutJit(...args);
      statements.push(rows.reduce((n, r) => n + (r.moved === true ? Number(r.entries) : 0), 0));
      return rows;
    };
    try {
      expect(await db.catchUpUsage({ maxEntries: 7, batchEntries: 2 })).toMatchObject({ entries: 7, more: true });
    } finally {
      db.readWithoutJit = readWithoutJit;
    }
    expect(statements.length).toBeGreaterThanOrEqual(4);
    expect(Math.max(...statements)).toBeLessThanOrEqual(2);
    expect(statements.reduce((a, b) => a + b, 0)).toBe(7);
    const left = await behind();
    expect(left.entries).toBe(before.entries - 7);

    const worker = createWorker(m, { jobsEveryMs: 0, topUpEveryMs: 0, usageEveryMs: 60_000 });
    expect(worker.tasks).toEqual([{ name: "usage", everyMs: 60_000 }]);
    const first = await worker.runOnce();
    expect(first.ok).toBe(true);
    expect(first.rounds[0]).toMatchObject({
      task: "usage",
      idle: false,
      report: { usage: { accounts: left.accounts, entries: left.entries, more: false } },
    });
    // Every cursor at its account's seq.
    expect(await behind()).toEqual({ accounts: 0, entries: 0 });
    const off = await client.query(
      `SELECT a.user_id FROM "${schema}".accounts a LEFT JOIN "${schema}".usage_state s ON s.user_id = a.user_id ` +
        `WHERE a.seq > 0 AND s.through_seq IS DISTINCT FROM a.seq`,
    );
    expect(off.rows).toEqual([]);
    // The rollup is what the journal sums to: the audit's comparison, and the same report through the journal alone.
    for (let u = 0; u < 4; u++) expect((await m.credits.audit(`u${u}`)).problems).toEqual([]);
    const { PostgresDbManager } = await import("../src/db/postgres/index.js");
    const journalOnly = new PostgresDbManager({ connectionString: process.env.CREDIT_PG_URL as string, schema });
    (journalOnly as unknown as { hasRollup: boolean }).hasRollup = false;
    const viaJournal = await createCreditManager({ db: journalOnly, init: false });
    try {
      const cursorsThen = await cursors();
      const rollupThen = await rollupOf("u");
      const rows = await fleet(m, "u")();
      expect(rows.length).toBeGreaterThanOrEqual(8);
      expect(rows).toEqual(await fleet(viaJournal, "u")());
      // The report after the round had nothing to add: no cursor moved, no rollup row changed.
      expect(await cursors()).toEqual(cursorsThen);
      expect(await rollupOf("u")).toEqual(rollupThen);
    } finally {
      await viaJournal.close();
    }
    expect((await worker.runOnce()).rounds[0]).toMatchObject({
      idle: true,
      report: { usage: { accounts: 0, entries: 0, more: false } },
    });
  });

  it("rounds, a report and an account's catch-up at once count every entry once: the report has every entry written before it", async () => {
    const db = opened.db as unknown as Pg;
    const users = ["k0", "k1", "k2", "k3", "k4"];
    for (const u of users) await m.credits.addCredits(u, 10_000);
    const sums = new Map(users.map((u) => [u, { credits: 0, requests: 0, input: 0 }]));
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 30; i++) {
        const u = users[(i * 7 + round) % users.length]!;
        const amount = 1 + ((i + round) % 4);
        await spend(u, amount, 10 * i);
        const s = sums.get(u)!;
        s.credits += amount;
        s.requests++;
        s.input += 10 * i;
      }
      const [a, b, report] = await Promise.all([
        db.catchUpUsage({ maxEntries: 1_000_000, batchEntries: 3 }),
        db.catchUpUsage({ maxEntries: 1_000_000, batchEntries: 4 }),
        fleet(m, "k")(),
        db.catchUpUsageRollup("k2"),
      ]);
      expect(a.more || b.more).toBe(false);
      const spent = report
        .filter((r) => r.kind === "spend")
        .map((r) => [r.account, r.credits, r.requests, r.inputTokens] as const);
      const totals = users.map((u) => {
        const mine = spent.filter((r) => r[0] === u);
        return [u, ...[1, 2, 3].map((k) => mine.reduce((n, r) => n + (r[k] as number), 0))];
      });
      expect(totals, `round ${round}`).toEqual(
        users.map((u) => [u, sums.get(u)!.credits, sums.get(u)!.requests, sums.get(u)!.input]),
      );
    }
    expect(await behind()).toEqual({ accounts: 0, entries: 0 });
    const rows = (await rollupOf("k")).filter((r) => r.kind === "spend");
    expect(
      users.map((u) =>
        rows
          .filter((r) => r.user_id === u)
          .reduce((n, r) => [n[0]! + r.credits, n[1]! + r.requests, n[2]! + r.input], [0, 0, 0]),
      ),
    ).toEqual(users.map((u) => [sums.get(u)!.credits, sums.get(u)!.requests, sums.get(u)!.input]));
    for (const u of users) expect((await m.credits.audit(u)).problems).toEqual([]);
  });

  it("a report whose compare-and-set another catch-up won part of the way (the round's piece) catches up again: it has every entry", async () => {
    const { rollupCatchUpOneSql } = await import("../src/schema/rollup.js");
    const db = opened.db as unknown as Pg;
    await m.credits.addCredits("p1", 100);
    await db.catchUpUsageRollup("p1");
    for (let i = 1; i <= 3; i++) await spend("p1", i, 0);
    const [{ at }] = (
      await client.query(`SELECT through_seq::int AS at FROM "${schema}".usage_state WHERE user_id = 'p1'`)
    ).rows as [{ at: number }];
    // Another session holds p1's cursor row: the report's catch-up waits on it at its compare-and-set.
    const other = new (await import("pg")).default.Client({ connectionString: process.env.CREDIT_PG_URL });
    await other.connect();
    try {
      await other.query("BEGIN");
      await other.query(`SELECT 1 FROM "${schema}".usage_state WHERE user_id = 'p1' FOR UPDATE`);
      const report = fleet(m, "p")();
      for (let i = 0; ; i++) {
        const waiting = await client.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%usage_state%'`,
        );
        if (waiting.rows[0].n > 0) break;
        if (i > 200) throw new Error("the report's catch-up never waited on the cursor");
        await new Promise((r) => setTimeout(r, 25));
      }
      // Meanwhile the other moves the cursor one entry only (as a round's piece would), and commits.
      const moved = await other.query(rollupCatchUpOneSql(`"${schema}"."journal_entries"`, { schema }), [
        "p1",
        at,
        at + 1,
      ]);
      expect(moved.rows[0].n).toBe(1);
      await other.query("COMMIT");
      const rows = (await report).filter((r) => r.kind === "spend");
      expect(rows.reduce((n, r) => n + r.credits, 0)).toBe(6);
      expect(rows.reduce((n, r) => n + r.requests, 0)).toBe(3);
    } finally {
      await other.end();
    }
    expect((await m.credits.audit("p1")).problems).toEqual([]);
  });
});
