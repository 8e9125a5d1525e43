/**
 * The SQLite store on a file (WAL, `synchronous = FULL`, as `SqliteDbManager` sets them): deductions
 * per second through the package against a raw better-sqlite3 baseline on the same kind of file in
 * the same run (one `UPDATE` of a balance row per transaction, the transaction function made once).
 * One caller in a loop; the two sides alternate in rounds (ABBA), the mean of each side compared.
 * No target: the row shows what the store's unit of work costs over the bare write
 * (docs/benchmarks.md, "SQLite").
 *   tsx bench/sqlite.ts        (also run by `npm run bench`; BENCH_SQLITE=0 skips it there)
 * BENCH_SQLITE_OPS: deductions per round and side (default 3,000).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { printTable, type BenchRow } from "./lib.js";
import { core, sqlite } from "./pkg.js";

const OPS = Number(process.env.BENCH_SQLITE_OPS ?? 3000);
const USERS = 50;

export async function run(): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), "bench-sqlite-"));
  const raw = new Database(join(dir, "raw.sqlite"));
  const database = new Database(join(dir, "store.sqlite"));
  let manager: Awaited<ReturnType<typeof core.createCreditManager>> | undefined;
  try {
    raw.pragma("journal_mode = WAL");
    raw.pragma("synchronous = FULL");
    raw.exec("CREATE TABLE balances (user_id TEXT PRIMARY KEY, balance INTEGER NOT NULL)");
    const insert = raw.prepare("INSERT INTO balances VALUES (?, ?)");
    for (let i = 0; i < USERS; i++) insert.run(`u${i}`, 1e12);
    const update = raw.prepare("UPDATE balances SET balance = balance - ? WHERE user_id = ? AND balance >= ?");
    const deductRaw = raw.transaction((userId: string) => update.run(1, userId, 1).changes);

    database.pragma("journal_mode = WAL");
    const { SqliteDbManager } = await sqlite();
    manager = await core.createCreditManager({ db: new SqliteDbManager({ database }) });
    const store = manager;
    for (let i = 0; i < USERS; i++) await manager.credits.addCredits(`u${i}`, 1e12);

    const sides = {
      raw: async (n: number) => {
        for (let i = 0; i < n; i++) deductRaw(`u${i % USERS}`);
      },
      store: async (n: number) => {
        for (let i = 0; i < n; i++) await store.credits.deductCredits(`u${i % USERS}`, 1);
      },
    };
    await sides.raw(OPS / 2); // warm-up
    await sides.store(OPS / 2);
    const rates: Record<keyof typeof sides, number[]> = { raw: [], store: [] };
    for (const order of [
      ["raw", "store"],
      ["store", "raw"],
      ["store", "raw"],
      ["raw", "store"],
    ] as const) {
      for (const side of order) {
        const t = performance.now();
        await sides[side](OPS);
        rates[side].push(OPS / ((performance.now() - t) / 1000));
      }
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const baseline = "SQLite file: raw better-sqlite3 UPDATE in a transaction";
    return [
      { backend: "sqlite", scenario: baseline, opsPerSec: Math.round(mean(rates.raw)) },
      {
        backend: "sqlite",
        scenario: "SQLite file: deductCredits (1 caller, 50 users)",
        opsPerSec: Math.round(mean(rates.store)),
        baseline,
        ratio: mean(rates.store) / mean(rates.raw),
        note: `rounds (ops/s): raw ${rates.raw.map(Math.round).join(", ")}; store ${rates.store.map(Math.round).join(", ")}`,
      },
    ];
  } finally {
    await manager?.close();
    raw.close();
    database.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) printTable(await run());
