/**
 * The customer's state, page by page (docs/customer-state.md, docs/benchmarks.md): on PostgreSQL,
 * `listCustomerStates` reading 1,000 accounts in one page — each with an open grant, a scoped grant,
 * a spend limit and a few journal entries, under three feature rules — by cursor over the store's
 * accounts and by a list of their ids. Target: at most one second per 1,000 accounts. The best of
 * five rounds, with the median in the note.
 *   tsx bench/customer-state.ts      → one JSON line: BenchRow[] (none without CREDIT_PG_URL)
 */
import { randomUUID } from "node:crypto";
import { core, postgres } from "./pkg.js";
import type { BenchRow } from "./lib.js";

const ACCOUNTS = 1000;
const ROUNDS = 5;

async function pgRows(): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const pool = new pg.Pool({ connectionString: url, max: 16 });
  const schema = `cm_state_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  try {
    const db = new PostgresDbManager({ pool, schema });
    await db.init();
    const m = await core.createCreditManager({
      db,
      init: false,
      features: {
        images: { minAvailable: 10 },
        chat: { minAvailable: 1 },
        export: { minAvailable: 0, enabled: false },
      },
    });
    const ids = Array.from({ length: ACCOUNTS }, (_, i) => `acct-${String(i).padStart(5, "0")}`);
    for (let i = 0; i < ACCOUNTS; i += 16)
      await Promise.all(
        ids.slice(i, i + 16).map(async (u) => {
          await m.credits.addCredits(u, 1_000, { expiresAt: new Date(Date.now() + 30 * 86_400_000) });
          await m.credits.addCredits(u, 200, { scope: { features: ["images"] } });
          await m.credits.setLimit(u, { feature: "chat", amount: 500, period: "day" });
          await m.credits.deductCredits(u, 30, { feature: "images" });
          await m.credits.deductCredits(u, 20, { feature: "chat" });
        }),
      );
    const time = async (read: () => Promise<{ items: unknown[] }>) => {
      const seconds: number[] = [];
      await read(); // warm-up
      for (let r = 0; r < ROUNDS; r++) {
        const start = process.hrtime.bigint();
        const page = await read();
        seconds.push(Number(process.hrtime.bigint() - start) / 1e9);
        if (page.items.length !== ACCOUNTS) throw new Error(`read ${page.items.length} accounts, not ${ACCOUNTS}`);
      }
      seconds.sort((a, b) => a - b);
      return { best: seconds[0] as number, median: seconds[Math.floor(ROUNDS / 2)] as number };
    };
    const byCursor = await time(() => m.credits.listCustomerStates({ limit: ACCOUNTS }));
    const byIds = await time(() => m.credits.listCustomerStates({ userIds: ids, limit: ACCOUNTS }));
    await m.close();
    const row = (how: string, t: { best: number; median: number }): BenchRow => ({
      backend: "postgres",
      scenario: `listCustomerStates: ${ACCOUNTS.toLocaleString("en-US")} accounts in one page, ${how} (accounts/s)`,
      opsPerSec: ACCOUNTS / t.best,
      target: "<= 1 s per 1,000 accounts",
      met: t.best <= 1,
      note: `${t.best.toFixed(3)} s for the page (best of ${ROUNDS}; median ${t.median.toFixed(3)} s)`,
    });
    return [row("by cursor", byCursor), row("by a list of ids", byIds)];
  } finally {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
    await pool.end();
  }
}

console.log(JSON.stringify(await pgRows()));
