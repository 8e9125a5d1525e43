/**
 * Bytes per deduction (issue 32): how much the journal grows per keyed `deductCredits`, on
 * PostgreSQL (journal_entries: heap, TOAST and every index, `pg_total_relation_size`, after
 * `VACUUM`), MongoDB (the journal collection: `collStats`/`$collStats` where the server has them,
 * else the BSON size of its documents + the index sizes `dbStats` reports) and SQLite (the
 * `dbstat` pages of the journal table and its indexes). 20,000 deductions (BENCH_ROWS_OPS) with an
 * idempotency key each over 100 users, 16 callers, measured as the growth over the accounts'
 * first entries. Each backend also copies its entries into a table (collection) in the layout of
 * schema version 4 (hashes and fingerprint as hex text), so today's layout and version 4's are
 * measured side by side in the same run. Alone: `npx tsx bench/rows.ts` (with CREDIT_PG_URL,
 * CREDIT_MONGO_URI; SQLite always).
 */
import { randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";
import { core, mongodb, postgres } from "./pkg.js";
import { type BenchRow, measure, printTable } from "./lib.js";

const { CreditService } = core;
const USERS = 100;
const CALLERS = 16;
const OPS = Number(process.env.BENCH_ROWS_OPS ?? 20_000);

/** One result row: bytes per deduction today and in version 4's layout, and the parts. */
function row(backend: string, opsPerSec: number, today: number, v4: number, parts: string): BenchRow {
  return {
    backend,
    scenario: `journal bytes per keyed deduction (${OPS.toLocaleString("en-US")} over ${USERS} users, ${CALLERS} callers)`,
    opsPerSec,
    note:
      `${Math.round(today)} bytes per deduction (schema version 4's layout, same entries, same run: ${Math.round(v4)}; ` +
      `${(today / v4).toFixed(2)}×); ${parts}`,
  };
}

async function pgRows(): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const schema = `cm_rows_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  const pool = new pg.Pool({ connectionString: url, max: CALLERS });
  try {
    const db = new PostgresDbManager({ pool, schema });
    await db.init();
    const credits = new CreditService({ db });
    const size = async (table: string) => {
      await pool.query(`VACUUM ANALYZE ${schema}.${table}`);
      const r = await pool.query<{ total: string; heap: string; toast: string; idx: string; n: string }>(
        `SELECT pg_total_relation_size('${schema}.${table}') AS total, pg_relation_size('${schema}.${table}') AS heap, ` +
          `pg_indexes_size('${schema}.${table}') AS idx, (SELECT count(*) FROM ${schema}.${table}) AS n, ` +
          `pg_total_relation_size('${schema}.${table}') - pg_relation_size('${schema}.${table}') - pg_indexes_size('${schema}.${table}') AS toast`,
      );
      const x = r.rows[0] as { total: string; heap: string; toast: string; idx: string; n: string };
      return {
        total: Number(x.total),
        heap: Number(x.heap),
        idx: Number(x.idx),
        toast: Number(x.toast),
        n: Number(x.n),
      };
    };
    for (let i = 0; i < USERS; i++) await credits.addCredits(`u${i}`, 1_000_000_000);
    const before = await size("journal_entries");
    const ops = await measure(OPS, CALLERS, (i) =>
      credits.deductCredits(`u${(i * 7919) % USERS}`, 1 + (i % 5), { idempotencyKey: `req-${randomUUID()}` }),
    );
    const after = await size("journal_entries");
    // The same entries copied (in key order, so both copies are packed alike) into today's layout
    // and into version 4's: hashes as hex text.
    const today = await copy(pool, schema, "journal_now", false);
    const v4 = await copy(pool, schema, "journal_v4", true);
    const n = after.n;
    const per = (a: number) => Math.round(a / n);
    return [
      row(
        "postgres",
        ops,
        today / n,
        v4 / n,
        `copies in key order; the live table as the deductions left it: ${per(after.total)} (heap ${per(after.heap)}, ` +
          `indexes ${per(after.idx)}, TOAST ${per(after.toast)}); ${n} entries (${before.n} of them the accounts' first additions), after VACUUM`,
      ),
    ];
  } finally {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
    await pool.end();
  }
}

/**
 * The journal's entries copied, in key order, into a table with the journal's two indexes: as they
 * are, or in version 4's layout (`v4`: hashes as hex text, no forgotten_key). Returns its total
 * size in bytes (heap, TOAST, indexes), after VACUUM.
 */
async function copy(
  pool: { query: (text: string) => Promise<{ rows: Array<Record<string, unknown>> }> },
  schema: string,
  name: string,
  v4: boolean,
): Promise<number> {
  const cols = await pool.query(
    `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '${schema}' AND table_name = 'journal_entries' ORDER BY ordinal_position`,
  );
  const select = cols.rows
    .map((c) => {
      const column = `"${String(c.column_name)}"`;
      if (!v4) return column;
      if (c.column_name === "forgotten_key") return null;
      if (c.data_type === "bytea") return `encode(${column}, 'hex') COLLATE "C" AS ${column}`;
      if (c.data_type === "json") return `${column}::jsonb AS ${column}`;
      return column;
    })
    .filter((c) => c !== null)
    .join(", ");
  const t = `${schema}.${name}`;
  await pool.query(`CREATE TABLE ${t} AS SELECT ${select} FROM ${schema}.journal_entries ORDER BY user_id, seq`);
  await pool.query(`ALTER TABLE ${t} ADD PRIMARY KEY (user_id, seq)`);
  await pool.query(`CREATE UNIQUE INDEX ON ${t} (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL`);
  await pool.query(`VACUUM ANALYZE ${t}`);
  const r = await pool.query(`SELECT pg_total_relation_size('${t}') AS total`);
  return Number(r.rows[0]?.total);
}

/**
 * The idempotency index under a steady load with the retention job: rounds of keyed deductions,
 * the (injected) clock half the window on per round, then `forgetIdempotencyKeys` and VACUUM (what
 * autovacuum does). Without the job the index grows with every round; with it, it levels off.
 */
async function pgSteady(): Promise<BenchRow[]> {
  const url = process.env.CREDIT_PG_URL;
  if (!url) return [];
  const { default: pg } = await import("pg");
  const { PostgresDbManager } = await postgres();
  const pool = new pg.Pool({ connectionString: url, max: CALLERS });
  const schemas = ["keep", "forget"].map((s) => `cm_rows_${s}_${randomUUID().replace(/-/g, "").slice(0, 8)}`);
  const ROUNDS = 8;
  const PER_ROUND = Math.max(500, Math.round(OPS / 10));
  try {
    const sizes: Record<string, number[]> = {};
    let opsPerSec = 0;
    for (const schema of schemas) {
      const forget = schema.includes("forget");
      let now = Date.now();
      const m = await core.createCreditManager({
        db: new PostgresDbManager({ pool, schema }),
        clock: () => new Date(now),
        idempotency: { retention: forget ? "1h" : "forever" },
      });
      for (let i = 0; i < USERS; i++) await m.credits.addCredits(`u${i}`, 1_000_000_000);
      const kb: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const rate = await measure(PER_ROUND, CALLERS, (i) =>
          m.credits.deductCredits(`u${(i * 7919) % USERS}`, 1, { idempotencyKey: `req-${randomUUID()}` }),
        );
        if (forget) opsPerSec = Math.max(opsPerSec, rate);
        now += 30 * 60_000;
        await m.expiration.forgetIdempotencyKeys();
        await pool.query(`VACUUM ${schema}.journal_entries`);
        const s = await pool.query(`SELECT pg_relation_size('${schema}.journal_entries_idempotency_key') AS b`);
        kb.push(Math.round(Number(s.rows[0]?.b) / 1024));
      }
      sizes[forget ? "forget" : "keep"] = kb;
      await m.close();
    }
    return [
      {
        backend: "postgres",
        scenario: `idempotency index under steady load (${ROUNDS} rounds of ${PER_ROUND.toLocaleString("en-US")} keyed deductions, window 2 rounds)`,
        opsPerSec,
        note:
          `index KB after each round with the retention job: ${sizes.forget?.join(", ")}; ` +
          `keys kept for ever (same run): ${sizes.keep?.join(", ")}; VACUUM after each round`,
      },
    ];
  } finally {
    for (const schema of schemas) await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
    await pool.end();
  }
}

/**
 * MongoDB: the journal collection's BSON bytes and index bytes per entry (`$collStats` storage
 * stats: `size` is the documents' BSON, `totalIndexSize` the indexes; the server's own storage,
 * `storageSize`, beside them).
 */
async function mongoRows(): Promise<BenchRow[]> {
  const uri = process.env.CREDIT_MONGO_URI;
  if (!uri) return [];
  const { MongoClient } = await import("mongodb");
  const { MongoDbManager } = await mongodb();
  const client = await new MongoClient(uri).connect();
  const dbName = `credit_rows_${process.pid}_${randomUUID().slice(0, 8)}`;
  try {
    const db = new MongoDbManager({ client, dbName });
    await db.init();
    const credits = new CreditService({ db });
    for (let i = 0; i < USERS; i++) await credits.addCredits(`u${i}`, 1_000_000_000);
    const ops = Math.min(OPS, Number(process.env.BENCH_ROWS_MONGO_OPS ?? 5000));
    const rate = await measure(ops, CALLERS, (i) =>
      credits.deductCredits(`u${(i * 7919) % USERS}`, 1 + (i % 5), { idempotencyKey: `req-${randomUUID()}` }),
    );
    const [stats] = await client
      .db(dbName)
      .collection("credit_journal")
      .aggregate<{ storageStats: Record<string, unknown> }>([{ $collStats: { storageStats: {} } }])
      .toArray();
    const s = stats?.storageStats ?? {};
    const n = Number(s.count);
    const per = (x: unknown) => Math.round(Number(x) / n);
    return [
      {
        backend: "mongodb",
        scenario: `journal bytes per keyed deduction (${ops.toLocaleString("en-US")} over ${USERS} users, ${CALLERS} callers)`,
        opsPerSec: rate,
        note:
          `${per(Number(s.size) + Number(s.totalIndexSize))} bytes per entry: documents (BSON) ${per(s.size)}, ` +
          `indexes ${per(s.totalIndexSize)} (${Object.entries((s.indexSizes as Record<string, number>) ?? {})
            .map(([k, v]) => `${k} ${per(v)}`)
            .join(
              ", ",
            )}); the server's storage ${per(s.storageSize)} + indexes; ${n} entries ($collStats storageStats)`,
      },
    ];
  } finally {
    await client
      .db(dbName)
      .dropDatabase()
      .catch(() => undefined);
    await client.close();
  }
}

export async function run(): Promise<BenchRow[]> {
  return [...(await pgRows()), ...(await pgSteady()), ...(await mongoRows())];
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  printTable(await run());
}
