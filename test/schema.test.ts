import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import pg from "pg";
import * as z from "zod/mini";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Grant } from "../src/core/models/index.js";
import { decodeRow, encodeValues } from "../src/schema/codec.js";
import { columnsOf } from "../src/schema/columns.js";
import { generateMongoSchema } from "../src/schema/mongo.js";
import { generateSql, quoteIdent, sqlTables, versionTableName } from "../src/schema/sql.js";
import { type TableKey, tableSpecs } from "../src/schema/tables.js";
import { samples } from "./fixtures/samples.js";

/** A model object as column → value: `encodeValues` keyed by the column names. */
function encodeRow(
  columns: Parameters<typeof encodeValues>[0],
  value: Record<string, unknown>,
  options?: Parameters<typeof encodeValues>[2],
): Record<string, unknown> {
  const values = encodeValues(columns, value, options);
  return Object.fromEntries(columns.map((c, i) => [c.name, values[i]]));
}

const PG_URL = process.env.CREDIT_PG_URL;
const MYSQL_URL = process.env.CREDIT_MYSQL_URL;
const hasSqlite = (() => {
  try {
    execFileSync("sqlite3", ["-version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

const keys = Object.keys(tableSpecs) as TableKey[];

describe("schema generator: columns from the zod models", () => {
  it("maps every field of every model, with nullability and enums", () => {
    for (const key of keys) {
      const fields = Object.keys(tableSpecs[key].model.shape);
      expect(columnsOf(tableSpecs[key].model).map((c) => c.field)).toEqual(fields);
    }
    const grant = new Map(columnsOf(Grant).map((c) => [c.field, c]));
    expect(grant.get("expiresAt")).toMatchObject({ name: "expires_at", kind: "datetime", nullable: true });
    expect(grant.get("amount")).toMatchObject({
      kind: "integer",
      nullable: false,
      minimum: 0,
      maximum: Number.MAX_SAFE_INTEGER,
    });
    expect(grant.get("closedReason")).toMatchObject({ kind: "enum", nullable: true, values: ["expired", "voided"] });
    expect(grant.get("metadata")).toMatchObject({ kind: "json", nullable: true });
    expect(grant.get("sourceRef")).toMatchObject({ kind: "string", maxLength: 255 });
  });

  it("emits PostgreSQL types, checks, keys and the indexes the adapters rely on", () => {
    const ddl = generateSql({ dialect: "postgres", schema: "credits", prefix: "cm_" });
    expect(ddl).toContain('CREATE SCHEMA IF NOT EXISTS "credits";');
    expect(ddl).toContain('"balance" BIGINT NOT NULL CHECK ("balance" BETWEEN -9007199254740991 AND 9007199254740991)');
    expect(ddl).toContain('"expires_at" TIMESTAMPTZ,');
    expect(ddl).toContain('"created_at" TIMESTAMPTZ NOT NULL');
    expect(ddl).toContain('"metadata" JSONB,');
    expect(ddl).toContain(
      `"status" TEXT COLLATE "C" NOT NULL CHECK ("status" IN ('active', 'committed', 'released', 'expired'))`,
    );
    expect(ddl).toContain('CONSTRAINT "cm_journal_entries_pkey" PRIMARY KEY ("user_id", "seq")');
    // The idempotency key's index holds a 16-byte digest of user id and key (docs/running-for-years.md).
    expect(ddl).toContain(
      `CREATE UNIQUE INDEX IF NOT EXISTS "cm_journal_entries_idempotency_key" ON "credits"."cm_journal_entries" ((substr(sha256(decode(replace("user_id" || E'\\n' || "idempotency_key", E'\\\\', E'\\\\\\\\'), 'escape')), 1, 16))) WHERE "idempotency_key" IS NOT NULL;`,
    );
    // Citus: the distribution column itself first in the unique index.
    expect(generateSql({ dialect: "postgres", distributed: true })).toContain(
      `CREATE UNIQUE INDEX IF NOT EXISTS "journal_entries_idempotency_key" ON "journal_entries" ("user_id", (substr(sha256(`,
    );
    expect(ddl).toContain(
      'CREATE INDEX IF NOT EXISTS "cm_grants_due" ON "credits"."cm_grants" ("expires_at", "id") WHERE "closed_at" IS NULL AND "expires_at" IS NOT NULL;',
    );
    expect(ddl).toContain(
      'CREATE INDEX IF NOT EXISTS "cm_reservations_status_expiry" ON "credits"."cm_reservations" ("status", "expires_at", "id");',
    );
    expect(ddl).not.toMatch(/DOUBLE PRECISION|\bTIMESTAMP\b(?!TZ)/);
  });

  it("--distributed: user_id in the primary key and every unique index of each distributed table, first but in promo_claims_code_user_n (docs/scaling-out.md)", () => {
    const ddl = generateSql({ dialect: "postgres", distributed: true });
    const distributed = [...ddl.matchAll(/create_distributed_table\('"(\w+)"'/g)].map((m) => m[1]);
    expect(distributed.sort()).toEqual(
      [
        "accounts",
        "grants",
        "journal_entries",
        "notifications",
        "payments",
        "period_close_marks",
        "promo_claims",
        "reservations",
        "subscriptions",
        "usage_daily",
        "usage_state",
      ].sort(),
    );
    // Plans, promos, the closes of revenue reports and the version row: a copy on every worker; the
    // ledger (rows without a user) stays local.
    expect([...ddl.matchAll(/create_reference_table\('"(\w+)"'/g)].map((m) => m[1]).sort()).toEqual([
      "period_closes",
      "plans",
      "promos",
      "schema_version",
    ]);
    expect(ddl).not.toMatch(/create_\w+_table\('"ledger_entries"'/);
    // Each call only where the table (function) is not distributed yet: the DDL runs again (init(), upgrades).
    const calls = ddl.match(/^SELECT create_.*$/gm) ?? [];
    for (const call of calls)
      expect(call).toMatch(
        / WHERE NOT EXISTS \(SELECT 1 FROM pg_dist_(partition WHERE logicalrelid = '.*'::regclass|object WHERE objid = '.*'::regprocedure AND distribution_argument_index IS NOT NULL)\);$/,
      );
    // The unit-of-work functions, delegated by their user argument (docs/scaling-out.md).
    expect(
      calls.filter((c) =>
        /create_distributed_function\('"unit_(load|save)"\(.*'p_user', colocate_with => '"accounts"'\)/.test(c),
      ),
    ).toHaveLength(2);
    // Each unique key: its table and its columns, in order.
    const keys = [
      ...[
        ...ddl.matchAll(/CREATE TABLE IF NOT EXISTS "(\w+)" \([\s\S]*?CONSTRAINT "\w+" PRIMARY KEY \(([^)]*)\)/g),
      ].map((m) => ({ name: `${m[1]}_pkey`, table: m[1], columns: m[2] as string })),
      ...[...ddl.matchAll(/CREATE UNIQUE INDEX IF NOT EXISTS "(\w+)" ON "(\w+)" \((.*)\)( WHERE .*)?;$/gm)].map(
        (m) => ({
          name: m[1] as string,
          table: m[2],
          columns: m[3] as string,
        }),
      ),
    ].filter((k) => distributed.includes(k.table));
    expect(keys.length).toBeGreaterThan(distributed.length); // primary keys and unique indexes
    // Citus refuses a unique key without the distribution column.
    for (const k of keys) expect(k.columns, k.name).toMatch(/"user_id"/);
    // Where it is not first: claims of a code by a user are looked up by code first; Citus needs the
    // column in the key, not at its front (MongoDB's sharding does: promo claims stay unsharded there).
    expect(keys.filter((k) => !k.columns.startsWith('"user_id"')).map((k) => [k.name, k.columns])).toEqual([
      ["promo_claims_code_user_n", '"code", "user_id", "claim_number"'],
    ]);
  });

  it("keeps the journal's hashes as bytes and its grants as JSON text on PostgreSQL only (docs/running-for-years.md)", () => {
    const pg = generateSql({ dialect: "postgres" });
    expect(pg).toContain('"hash" BYTEA NOT NULL');
    expect(pg).toContain('"prev_hash" BYTEA,');
    expect(pg).toContain('"grants" JSON NOT NULL');
    expect(pg).toContain('"forgotten_key" VARCHAR(255) COLLATE "C"');
    // Other JSON stays JSONB (metadata may be queried); other dialects keep their text.
    expect(pg).toContain('"metadata" JSONB');
    expect(generateSql({ dialect: "sqlite" })).toContain('"hash" TEXT NOT NULL');
    expect(generateSql({ dialect: "mysql" })).not.toContain("BYTEA");
  });

  it("stores the journal's grant portions as arrays of their values, and reads both those and the objects older rows hold", () => {
    const journal = sqlTables({ dialect: "sqlite" }).find((t) => t.key === "journal");
    const columns = journal?.columns ?? [];
    expect(columns.find((c) => c.field === "grants")?.tuple).toEqual(["grantId", "amount", "kind"]);
    const grants = [
      { grantId: "g-1", amount: 5 },
      { grantId: "g-2", amount: 3, kind: "returned" },
    ];
    const row = encodeRow(columns, { ...samples.journal, grants } as Record<string, unknown>);
    expect(row.grants).toBe('[["g-1",5],["g-2",3,"returned"]]');
    expect(decodeRow<{ grants: unknown }>(columns, row).grants).toEqual(grants);
    const older = { ...row, grants: JSON.stringify(grants) };
    expect(decodeRow<{ grants: unknown }>(columns, older).grants).toEqual(grants);
    // Only arrays of objects whose optional keys come last can be tuples.
    const Bad = z.object({ id: z.string(), parts: z.array(z.object({ a: z.optional(z.number()), b: z.string() })) });
    expect(() =>
      sqlTables({
        dialect: "sqlite",
        tables: { ...tableSpecs, grants: { ...tableSpecs.grants, model: Bad, tuples: ["parts"] } },
      }),
    ).toThrow(/tuples field "parts" is not an array of objects/);
  });

  it("emits MySQL and SQLite dialects", () => {
    const mysql = generateSql({ dialect: "mysql" });
    expect(mysql).toContain("`created_at` DATETIME(3) NOT NULL");
    expect(mysql).toContain("`metadata` JSON,");
    expect(mysql).toContain("`user_id` VARCHAR(256) NOT NULL");
    expect(mysql).toContain("UNIQUE KEY `journal_entries_idempotency_key` (`user_id`, `idempotency_key`)");
    expect(mysql).toContain("COLLATE=utf8mb4_bin");
    const sqlite = generateSql({ dialect: "sqlite" });
    expect(sqlite).toContain('"created_at" TEXT NOT NULL');
    expect(sqlite).toContain('"metadata" TEXT CHECK (json_valid("metadata"))');
    expect(sqlite).toContain('"amount" INTEGER NOT NULL');
  });

  it("changes its output when a model gains a field", () => {
    const Extended = z.object({
      ...Grant.shape,
      note: z.string().check(z.maxLength(40)),
      reviewed: z.nullable(z.boolean()),
    });
    const tables = { ...tableSpecs, grants: { ...tableSpecs.grants, model: Extended } };
    const before = generateSql({ dialect: "postgres" });
    const after = generateSql({ dialect: "postgres", tables });
    expect(before).not.toContain('"note"');
    expect(after).toContain('"note" VARCHAR(40) COLLATE "C" NOT NULL');
    expect(after).toContain('"reviewed" BOOLEAN,');
    expect(generateSql({ dialect: "mysql", tables })).toContain("`note` VARCHAR(40) NOT NULL");
    const grants = generateMongoSchema({ tables }).find((c) => c.name === "grants");
    expect(grants?.validator.$jsonSchema.required).toContain("note");
    expect((grants?.validator.$jsonSchema.properties as Record<string, unknown>).reviewed).toEqual({
      bsonType: ["bool", "null"],
    });
  });

  it("refuses names that would need quoting tricks or exceed identifier limits", () => {
    expect(() => generateSql({ dialect: "postgres", prefix: "a-b" })).toThrow(/prefix/);
    expect(() => generateSql({ dialect: "postgres", schema: "x; DROP" })).toThrow(/schema/);
    expect(() => generateSql({ dialect: "postgres", prefix: "p".repeat(40) })).toThrow(/longer than 63/);
  });

  it("emits MongoDB validators in MongoDB's dialect with the index specs", () => {
    const collections = generateMongoSchema({ prefix: "cm_" });
    expect(collections.map((c) => c.name)).toEqual([
      "cm_accounts",
      "cm_grants",
      "cm_reservations",
      "cm_journal_entries",
      "cm_ledger_entries",
      "cm_promos",
      "cm_promo_claims",
      "cm_payments",
      "cm_notifications",
      "cm_plans",
      "cm_subscriptions",
      "cm_period_closes",
      "cm_period_close_marks",
    ]);
    const text = JSON.stringify(collections);
    expect(text).not.toMatch(/"\$ref"|"\$defs"|"format"|"\$schema"|"propertyNames"|x-credit-management/);
    const journal = collections.find((c) => c.name === "cm_journal_entries");
    const props = journal?.validator.$jsonSchema.properties as Record<string, Record<string, unknown>>;
    expect(props.createdAt).toEqual({ bsonType: "date" });
    expect(props.seq).toMatchObject({ bsonType: ["int", "long", "double"], multipleOf: 1, minimum: 0 });
    expect(journal?.indexes).toContainEqual({
      key: { userId: 1, idempotencyKey: 1 },
      name: "idempotency_key",
      unique: true,
      partialFilterExpression: { idempotencyKey: { $type: "string" } },
    });
    expect(journal?.indexes).toContainEqual({ key: { userId: 1, seq: 1 }, name: "pkey", unique: true });
  });
});

/** Every stored column as the driver returns it, decoded back into the model. */
function expectRoundTrip(
  key: TableKey,
  row: Record<string, unknown>,
  columns = columnsOf(tableSpecs[key].model),
): void {
  const decoded = decodeRow(columns, row);
  expect(tableSpecs[key].model.parse(decoded)).toEqual(samples[key]);
}

// reason: skipped without a server: CREDIT_PG_URL names the PostgreSQL to apply the DDL to.
describe.skipIf(!PG_URL)("schema generator: PostgreSQL DDL applied to a server", () => {
  // reason: needs CREDIT_PG_URL (set by .ci/run); the run's closing block names it when skipped
  const schema = `cm_ddl_${randomUUID().replace(/-/g, "").slice(0, 10)}`;
  let client: pg.Client;
  beforeAll(async () => {
    client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    await client.query(generateSql({ dialect: "postgres", schema }));
    await client.query(generateSql({ dialect: "postgres", schema })); // idempotent
  });
  afterAll(async () => {
    await client?.query(`DROP SCHEMA IF EXISTS ${quoteIdent("postgres", schema)} CASCADE`);
    await client?.end();
  });

  it("round-trips one object of every model exactly", async () => {
    for (const table of sqlTables({ dialect: "postgres", schema })) {
      // Hex digests as bytes: PostgreSQL keeps the journal's hashes as BYTEA.
      const row = encodeRow(table.columns, samples[table.key] as Record<string, unknown>, { bytes: "buffer" });
      const names = Object.keys(row);
      await client.query(
        `INSERT INTO ${table.qualified} (${names.map((n) => `"${n}"`).join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})`,
        Object.values(row),
      );
      const back = await client.query(`SELECT * FROM ${table.qualified}`);
      expect(back.rows).toHaveLength(1);
      expectRoundTrip(table.key, back.rows[0], table.columns);
    }
  });

  it("enforces the keys, uniques and checks the adapters rely on", async () => {
    const t = Object.fromEntries(sqlTables({ dialect: "postgres", schema }).map((x) => [x.key, x.qualified]));
    const insertEntry = (seq: number, key: string | null) =>
      client.query(
        `INSERT INTO ${t.journal} (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, idempotency_key, created_at, hash) VALUES ($1, 'u2', $2, 'add', 1, 1, 0, 0, '[]', $3, now(), 'h')`,
        [randomUUID(), seq, key],
      );
    await insertEntry(1, null);
    await insertEntry(2, null); // keys may be absent on many entries
    await insertEntry(3, "k");
    await expect(insertEntry(3, null)).rejects.toMatchObject({ code: "23505" }); // (user_id, seq)
    await expect(insertEntry(4, "k")).rejects.toMatchObject({ code: "23505" }); // (user_id, idempotency_key)
    // The digest index tells keys apart byte for byte (a backslash is no escape), per user.
    await insertEntry(4, "k\\");
    await insertEntry(5, "K");
    await insertEntry(6, "\\k");
    await expect(insertEntry(7, "k\\")).rejects.toMatchObject({ code: "23505" });
    await client.query(
      `INSERT INTO ${t.journal} (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, idempotency_key, created_at, hash) VALUES ($1, 'u3', 1, 'add', 1, 1, 0, 0, '[]', 'k', now(), 'h')`,
      [randomUUID()],
    );
    await expect(client.query(`UPDATE ${t.grants} SET remaining = -1 WHERE id = 'g-1'`)).rejects.toMatchObject({
      code: "23514",
    });
    await expect(client.query(`UPDATE ${t.reservations} SET status = 'lost' WHERE id = 'r-1'`)).rejects.toMatchObject({
      code: "23514",
    });
    await expect(
      client.query(`UPDATE ${t.accounts} SET balance = 9007199254740992 WHERE user_id = 'user-ü-1'`),
    ).rejects.toMatchObject({ code: "23514" });
  });
});

// reason: skipped without a server: CREDIT_MYSQL_URL names the MySQL/MariaDB to apply the DDL to.
describe.skipIf(!MYSQL_URL)("schema generator: MySQL DDL applied to a server", () => {
  // reason: needs CREDIT_MYSQL_URL (set by .ci/run); the run's closing block names it when skipped
  const prefix = `cm_${randomUUID().replace(/-/g, "").slice(0, 8)}_`;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let conn: any;
  beforeAll(async () => {
    const mysql = await import("mysql2/promise");
    conn = await mysql.createConnection({
      uri: MYSQL_URL,
      multipleStatements: true,
      timezone: "Z",
      supportBigNumbers: true,
      bigNumberStrings: false,
      dateStrings: false,
    });
    await conn.query(generateSql({ dialect: "mysql", prefix }));
    await conn.query(generateSql({ dialect: "mysql", prefix })); // idempotent
  });
  afterAll(async () => {
    if (!conn) return;
    for (const table of sqlTables({ dialect: "mysql", prefix }))
      await conn.query(`DROP TABLE IF EXISTS ${table.qualified}`);
    await conn.query(`DROP TABLE IF EXISTS ${versionTableName("mysql", { prefix })}`);
    await conn.end();
  });

  it("round-trips one object of every model exactly", async () => {
    for (const table of sqlTables({ dialect: "mysql", prefix })) {
      const row = encodeRow(table.columns, samples[table.key] as Record<string, unknown>);
      const names = Object.keys(row);
      await conn.query(
        `INSERT INTO ${table.qualified} (${names.map((n) => `\`${n}\``).join(", ")}) VALUES (${names.map(() => "?").join(", ")})`,
        Object.values(row),
      );
      const [rows] = await conn.query(`SELECT * FROM ${table.qualified}`);
      expect(rows).toHaveLength(1);
      expectRoundTrip(table.key, rows[0], table.columns);
    }
  });

  it("enforces the unique idempotency key and the enum checks", async () => {
    const t = Object.fromEntries(sqlTables({ dialect: "mysql", prefix }).map((x) => [x.key, x.qualified]));
    const insertEntry = (seq: number, key: string | null) =>
      conn.query(
        `INSERT INTO ${t.journal} (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, idempotency_key, created_at, hash) VALUES (?, 'u2', ?, 'add', 1, 1, 0, 0, '[]', ?, NOW(3), 'h')`,
        [randomUUID(), seq, key],
      );
    await insertEntry(1, null);
    await insertEntry(2, null);
    await insertEntry(3, "k");
    await expect(insertEntry(4, "k")).rejects.toMatchObject({ code: "ER_DUP_ENTRY" });
    await expect(insertEntry(3, null)).rejects.toMatchObject({ code: "ER_DUP_ENTRY" });
    await expect(conn.query(`UPDATE ${t.reservations} SET status = 'lost' WHERE id = 'r-1'`)).rejects.toThrow(
      /CONSTRAINT|check/i,
    );
    // Ids compare case-sensitively (utf8mb4_bin): "G-1" is another grant than "g-1".
    const [rows] = await conn.query(`SELECT id FROM ${t.grants} WHERE id = 'G-1'`);
    expect(rows).toHaveLength(0);
  });
});

// reason: skipped when the sqlite3 command-line shell is not installed.
describe.skipIf(!hasSqlite)("schema generator: SQLite DDL applied with the sqlite3 shell", () => {
  // reason: needs the sqlite3 shell (set by .ci/run); the run's closing block names it when skipped
  it("creates every table and index, twice", () => {
    const ddl = generateSql({ dialect: "sqlite", prefix: "cm_" });
    const out = execFileSync("sqlite3", [":memory:"], {
      input: `${ddl}\n${ddl}\nSELECT type || ' ' || name FROM sqlite_master ORDER BY name;\n`,
      encoding: "utf8",
    });
    expect(out).toContain("table cm_journal_entries");
    expect(out).toContain("index cm_journal_entries_idempotency_key");
    expect(out).toContain("index cm_grants_due");
    expect(out).toContain("table cm_schema_version");
  });
});
