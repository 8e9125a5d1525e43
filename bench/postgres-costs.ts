/**
 * Where a group-commit batch's server time goes on PostgreSQL (docs/benchmarks.md,
 * "PostgreSQL"): the server backend's CPU per transaction (from /proc, so the
 * server must run on this host) and the wall time of each, for the parts of a unit-of-work
 * transaction measured alone, on a store made by `init()` of the built package:
 *
 *  - `BEGIN; COMMIT` with nothing written, then with the unit of work's settings statement;
 *  - the same with a journal `INSERT` of 1 and of 16 rows (the rows a batch of 1 and of 16
 *    deductions writes), with the usage rollup's trigger on and off: what the trigger costs per
 *    statement and per row, and what a COMMIT that flushes WAL costs;
 *  - the raw conditional `UPDATE` alone (the targets' denominator), one per transaction.
 *
 * Each case runs `BENCH_TX` transactions (default 400) on one connection, the cases in turn,
 * `BENCH_ROUNDS` rounds (default 3, the order reversed every other round); the table gives the
 * median per transaction and the range.
 *
 *   npx tsup --silent && CREDIT_PG_URL=… npx tsx bench/postgres-costs.ts
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import pg from "pg";
import { postgres } from "./pkg.js";

const url = process.env.CREDIT_PG_URL;
if (!url) {
  console.log("CREDIT_PG_URL is not set: nothing to measure.");
  process.exit(0);
}
const TX = Number(process.env.BENCH_TX ?? 400);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const USERS = 1000;

const { PostgresDbManager } = await postgres();
const schema = `cm_costs_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
const pool = new pg.Pool({ connectionString: url, max: 2 });
const client = await pool.connect();

/** CPU µs so far of the backend `pid` (utime + stime, 10 ms ticks). */
function backendCpu(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10_000;
}

try {
  const db = new PostgresDbManager({ pool, schema });
  await db.init();
  const t = (name: string) => `"${schema}"."${name}"`;
  await client.query(`CREATE TABLE ${t("raw_balances")} (user_id TEXT PRIMARY KEY, balance BIGINT NOT NULL)`);
  await client.query(
    `INSERT INTO ${t("raw_balances")} SELECT 'u' || i, 1000000000 FROM generate_series(0, ${USERS - 1}) i`,
  );
  const pid = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
  backendCpu(pid); // fails here, before any figure, when the server is not on this host
  const settings = "SELECT set_config('enable_seqscan', 'off', true), set_config('TimeZone', 'UTC', true)";
  let seq = 0;
  // A batch's journal rows: distinct accounts, the next seq of each (as group commit writes them).
  const insert = (rows: number) => {
    const values: string[] = [];
    for (let i = 0; i < rows; i++) {
      const n = seq++;
      values.push(
        `('e${n}', 'u${n % USERS}', ${Math.floor(n / USERS)}, 'deduct', 1, 100, 0, 0, '[{"grantId":"g","amount":1}]', now(), '\\x00'::bytea)`,
      );
    }
    return `INSERT INTO ${t("journal_entries")} (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, created_at, hash) VALUES ${values.join(", ")}`;
  };
  const trigger = (on: boolean) =>
    client.query(`ALTER TABLE ${t("journal_entries")} ${on ? "ENABLE" : "DISABLE"} TRIGGER USER`);
  let raw = 0;
  interface Case {
    name: string;
    rollup?: boolean;
    rows?: number;
    body: () => string[];
    cpu: number[];
    wall: number[];
  }
  const cases: Case[] = [
    { name: "BEGIN; COMMIT (nothing written)", body: () => [], cpu: [], wall: [] },
    { name: "… with the unit of work's settings statement", body: () => [settings], cpu: [], wall: [] },
    {
      name: "… and a journal INSERT of 1 row, rollup trigger off",
      rollup: false,
      rows: 1,
      body: () => [settings, insert(1)],
      cpu: [],
      wall: [],
    },
    {
      name: "… and a journal INSERT of 1 row, rollup trigger on",
      rollup: true,
      rows: 1,
      body: () => [settings, insert(1)],
      cpu: [],
      wall: [],
    },
    {
      name: "… and a journal INSERT of 16 rows, rollup trigger off",
      rollup: false,
      rows: 16,
      body: () => [settings, insert(16)],
      cpu: [],
      wall: [],
    },
    {
      name: "… and a journal INSERT of 16 rows, rollup trigger on",
      rollup: true,
      rows: 16,
      body: () => [settings, insert(16)],
      cpu: [],
      wall: [],
    },
    {
      name: "raw conditional UPDATE, one per transaction (autocommit)",
      body: () => [
        `UPDATE ${t("raw_balances")} SET balance = balance - 1 WHERE user_id = 'u${raw++ % USERS}' AND balance >= 1`,
      ],
      cpu: [],
      wall: [],
    },
  ];
  // Every rollup row exists before the figures (a deduction's upsert updates its account's day).
  await trigger(true);
  for (let i = 0; i < USERS / 16; i++) await client.query(insert(16));
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? cases : [...cases].reverse();
    for (const c of order) {
      if (c.rollup !== undefined) await trigger(c.rollup);
      const autocommit = c.name.startsWith("raw");
      const c0 = backendCpu(pid);
      const w0 = process.hrtime.bigint();
      for (let i = 0; i < TX; i++) {
        // One message per transaction, as a batch sends its save and COMMIT together.
        const text = autocommit ? c.body()[0]! : ["BEGIN", ...c.body(), "COMMIT"].join("; ");
        await client.query(text);
      }
      c.wall.push(Number(process.hrtime.bigint() - w0) / 1000 / TX);
      c.cpu.push((backendCpu(pid) - c0) / TX);
    }
  }
  await trigger(true);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const range = (xs: number[]) => `${Math.round(Math.min(...xs))}–${Math.round(Math.max(...xs))}`;
  console.log(
    `\n${ROUNDS} rounds of ${TX} transactions per case, one connection, load average ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")}\n`,
  );
  console.log(
    "| transaction | server CPU µs per transaction (median; range) | per row | wall µs per transaction (median; range) |",
  );
  console.log("| --- | --- | --- | --- |");
  for (const c of cases) {
    const cpu = median(c.cpu);
    console.log(
      `| ${c.name} | ${Math.round(cpu)} (${range(c.cpu)}) | ${c.rows === undefined ? "—" : Math.round(cpu / c.rows)} | ${Math.round(median(c.wall))} (${range(c.wall)}) |`,
    );
  }
  const by = (name: string) => median(cases.find((c) => c.name.includes(name))!.cpu);
  const fixed = by("1 row, rollup trigger on") - by("1 row, rollup trigger off");
  const perRow = (by("16 rows, rollup trigger on") - by("16 rows, rollup trigger off") - fixed) / 15;
  console.log(
    `\nThe rollup's trigger: about ${Math.round(fixed)} µs per statement and ${Math.round(perRow)} µs per further row of server CPU; ` +
      `a COMMIT that flushes WAL (1 row written, trigger off, less the settings transaction): ${Math.round(by("1 row, rollup trigger off") - by("settings"))} µs.`,
  );
} finally {
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
  client.release();
  await pool.end();
}
