/**
 * Bytes per deduction: how much the journal grows per keyed `deductCredits`, on
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
// The journal's field list only (what version 5 stored for every entry), not measured code.
import { tableSpecs } from "../src/schema/tables.js";

const { CreditService } = core;
const USERS = 100;
const CALLERS = 16;
const OPS = Number(process.env.BENCH_ROWS_OPS ?? 20_000);

/** One result row: bytes per deduction in one layout, beside version 5's and version 4's. */
function row(
  backend: string,
  opsPerSec: number,
  label: string,
  bytes: number,
  v5: number,
  v4: number,
  parts: string,
): BenchRow {
  return {
    backend,
    scenario: `journal bytes per keyed deduction, ${label} (${OPS.toLocaleString("en-US")} over ${USERS} users, ${CALLERS} callers)`,
    opsPerSec,
    note:
      `${Math.round(bytes)} bytes per deduction (schema version 5's layout, same entries, same run: ${Math.round(v5)}, ` +
      `${(bytes / v5).toFixed(2)}×; version 4's: ${Math.round(v4)}, ${(bytes / v4).toFixed(2)}×)${parts === "" ? "" : `; ${parts}`}`,
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
    const n = after.n;
    const per = (a: number) => Math.round(a / n);
    // The same entries copied (in key order, so every copy is packed alike) into each layout.
    const layout = (name: string, l: Layout) => copy(pool, schema, name, l);
    const v4 = await layout("journal_v4", { version: 4 });
    const v5 = await layout("journal_v5", { version: 5 });
    const today = await layout("journal_now", { version: 6 });
    const fp = await layout("journal_fp", { version: 6, fingerprintBytes: true });
    const noPrev = await layout("journal_noprev", { version: 6, fingerprintBytes: true, noPrevHash: true });
    const uuid = await layout("journal_uuid", { version: 6, fingerprintBytes: true, noPrevHash: true, uuidId: true });
    const b = (x: CopySize) =>
      `heap ${(x.heap / n).toFixed(0)}, primary key ${(x.pkey / n).toFixed(0)}, key index ${(x.key / n).toFixed(0)}`;
    return [
      row(
        "postgres",
        ops,
        "schema version 6",
        today.total / n,
        v5.total / n,
        v4.total / n,
        `${b(today)} (version 5: ${b(v5)}); ${await columnSizes(pool, `${schema}.journal_now`)}; ` +
          `the live table as the deductions left it: ${per(after.total)} (heap ${per(after.heap)}, ` +
          `indexes ${per(after.idx)}, TOAST ${per(after.toast)}); ${n} entries (${before.n} of them the accounts' first additions), after VACUUM`,
      ),
      row(
        "postgres",
        ops,
        "what if: version 6 + fingerprint as 32 bytes",
        fp.total / n,
        v5.total / n,
        v4.total / n,
        b(fp),
      ),
      row(
        "postgres",
        ops,
        "what if: and prev_hash not stored (derived on read)",
        noPrev.total / n,
        v5.total / n,
        v4.total / n,
        b(noPrev),
      ),
      row(
        "postgres",
        ops,
        "what if: and the entry id as uuid (16 bytes)",
        uuid.total / n,
        v5.total / n,
        v4.total / n,
        b(uuid),
      ),
    ];
  } finally {
    await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => {});
    await pool.end();
  }
}

/** A layout of the journal table: a schema version's, or today's with what-if changes. */
interface Layout {
  /** 4: hashes as hex text, grants as JSONB objects; 5: hashes as bytes, grants as JSON objects, the key index on the key's text; 6: today's. */
  version: 4 | 5 | 6;
  fingerprintBytes?: boolean;
  noPrevHash?: boolean;
  uuidId?: boolean;
}

interface CopySize {
  total: number;
  heap: number;
  pkey: number;
  key: number;
}

/** Grant portions stored as arrays (version 6) as the objects versions 4 and 5 stored, as the adapter wrote them. */
const GRANTS_AS_OBJECTS =
  `(SELECT coalesce('[' || string_agg(CASE WHEN json_typeof(t) = 'array' THEN '{"grantId":' || to_json(t->>0)::text || ',"amount":' || (t->>1) || ` +
  `coalesce(',"kind":' || to_json(t->>2)::text, '') || '}' ELSE t::text END, ',' ORDER BY o) || ']', '[]') FROM json_array_elements("grants") WITH ORDINALITY AS x(t, o))`;

/**
 * The journal's entries copied, in key order, into a table of `layout` with the journal's two
 * indexes. Returns its sizes in bytes (total: heap, TOAST, indexes), after VACUUM.
 */
async function copy(
  pool: { query: (text: string) => Promise<{ rows: Array<Record<string, unknown>> }> },
  schema: string,
  name: string,
  layout: Layout,
): Promise<CopySize> {
  const cols = await pool.query(
    `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '${schema}' AND table_name = 'journal_entries' ORDER BY ordinal_position`,
  );
  const select = cols.rows
    .map((c) => {
      const column = `"${String(c.column_name)}"`;
      if (c.column_name === "grants" && layout.version < 6)
        return `${GRANTS_AS_OBJECTS}::${layout.version === 4 ? "jsonb" : "json"} AS ${column}`;
      if (c.column_name === "fingerprint" && layout.fingerprintBytes === true)
        return `decode(translate(${column}, '-_', '+/') || '=', 'base64') AS ${column}`;
      if (c.column_name === "prev_hash" && layout.noPrevHash === true) return null;
      if (c.column_name === "id" && layout.uuidId === true) return `${column}::uuid AS ${column}`;
      if (layout.version > 4) return column;
      if (c.column_name === "forgotten_key") return null;
      if (c.data_type === "bytea") return `encode(${column}, 'hex') COLLATE "C" AS ${column}`;
      return column;
    })
    .filter((c) => c !== null)
    .join(", ");
  const t = `${schema}.${name}`;
  await pool.query(`CREATE TABLE ${t} AS SELECT ${select} FROM ${schema}.journal_entries ORDER BY user_id, seq`);
  await pool.query(`ALTER TABLE ${t} ADD CONSTRAINT ${name}_pkey PRIMARY KEY (user_id, seq)`);
  if (layout.version < 6) {
    await pool.query(
      `CREATE UNIQUE INDEX ${name}_key ON ${t} (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL`,
    );
  } else {
    // Today's index, as the schema made it for the journal.
    const def = await pool.query(
      `SELECT pg_get_indexdef('${schema}.journal_entries_idempotency_key'::regclass) AS def`,
    );
    const today = String(def.rows[0]?.def);
    await pool.query(today.replace(/INDEX \S+ ON \S+/, `INDEX ${name}_key ON ${t}`));
  }
  await pool.query(`VACUUM ANALYZE ${t}`);
  const r = await pool.query(
    `SELECT pg_total_relation_size('${t}') AS total, pg_relation_size('${t}') AS heap, ` +
      `pg_relation_size('${schema}.${name}_pkey') AS pkey, pg_relation_size('${schema}.${name}_key') AS key`,
  );
  const x = r.rows[0] ?? {};
  return { total: Number(x.total), heap: Number(x.heap), pkey: Number(x.pkey), key: Number(x.key) };
}

/** The average stored size of each column of a deduction (`pg_column_size`) and of the whole row with its header. */
async function columnSizes(
  pool: { query: (text: string) => Promise<{ rows: Array<Record<string, unknown>> }> },
  table: string,
): Promise<string> {
  const [schema, name] = table.split(".") as [string, string];
  const cols = await pool.query(
    `SELECT column_name FROM information_schema.columns WHERE table_schema = '${schema}' AND table_name = '${name}' ORDER BY ordinal_position`,
  );
  const names = cols.rows.map((c) => String(c.column_name));
  const r = await pool.query(
    `SELECT ${names.map((c, i) => `avg(pg_column_size("${c}")) AS c${i}`).join(", ")}, avg(pg_column_size(j.*)) AS whole FROM ${table} j WHERE type = 'deduct'`,
  );
  const x = r.rows[0] ?? {};
  const parts = names
    .map((c, i) => [c, x[`c${i}`]] as const)
    .filter(([, v]) => v !== null)
    .map(([c, v]) => `${c} ${Number(v).toFixed(0)}`);
  return `a deduction's row ${Number(x.whole).toFixed(0)} bytes with its header: ${parts.join(", ")} (null columns: a bit each)`;
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
    const live = client.db(dbName).collection("credit_journal");
    // The same documents copied in key order into two collections with the journal's indexes,
    // built after the copy (so both are packed alike): as they are, and in version 5's form
    // (every field present, null where unset; hashes as hex text): the baseline of the same run.
    const fields = Object.keys(tableSpecs.journal.model.shape).filter((f) => f !== "id");
    const docs = await live.find().sort({ userId: 1, seq: 1 }).toArray();
    const asV5 = (d: (typeof docs)[number]) => {
      const out: Record<string, unknown> = { _id: d._id };
      for (const f of fields) {
        const v = d[f] ?? null;
        out[f] =
          (v as { _bsontype?: string } | null)?._bsontype === "Binary"
            ? (v as { toString(e: "hex"): string }).toString("hex")
            : v;
      }
      return out;
    };
    const copyOf = async (name: string, rows: Array<Record<string, unknown>>) => {
      const c = client.db(dbName).collection(name);
      for (let i = 0; i < rows.length; i += 1000) await c.insertMany(rows.slice(i, i + 1000) as never[]);
      await c.createIndex({ userId: 1, seq: 1 }, { name: "user_seq", unique: true });
      await c.createIndex(
        { userId: 1, idempotencyKey: 1 },
        {
          name: "user_idempotency_key",
          unique: true,
          partialFilterExpression: { idempotencyKey: { $type: "string" } },
        },
      );
      return c;
    };
    const journal = await copyOf("credit_journal_now", docs);
    const v5 = await copyOf("credit_journal_v5", docs.map(asV5));
    const statsOf = async (c: typeof journal) => {
      const [stats] = await c
        .aggregate<{ storageStats: Record<string, unknown> }>([{ $collStats: { storageStats: {} } }])
        .toArray();
      return stats?.storageStats ?? {};
    };
    const s = await statsOf(journal);
    const old = await statsOf(v5);
    const inPlace = await statsOf(live);
    const n = Number(s.count);
    const per = (x: unknown) => Math.round(Number(x) / n);
    const total = (x: Record<string, unknown>) => per(Number(x.size) + Number(x.totalIndexSize));
    const indexes = (x: Record<string, unknown>) =>
      Object.entries((x.indexSizes as Record<string, number>) ?? {})
        .map(([k, v]) => `${k} ${per(v)}`)
        .join(", ");
    return [
      {
        backend: "mongodb",
        scenario: `journal bytes per keyed deduction, schema version 6 (${ops.toLocaleString("en-US")} over ${USERS} users, ${CALLERS} callers)`,
        opsPerSec: rate,
        note:
          `${total(s)} bytes per entry (version 5's documents, same entries, same run: ${total(old)}, ${(total(s) / total(old)).toFixed(2)}×): ` +
          `documents (BSON) ${per(s.size)} (version 5: ${per(old.size)}), indexes ${per(s.totalIndexSize)} (${indexes(s)}; ` +
          `version 5: ${per(old.totalIndexSize)}); copies in key order, indexes built after; the live collection as the deductions left it: ` +
          `${total(inPlace)} (documents ${per(inPlace.size)}, indexes ${per(inPlace.totalIndexSize)}: ${indexes(inPlace)}); ${n} entries ($collStats storageStats)`,
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
