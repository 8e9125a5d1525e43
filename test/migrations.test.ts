import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../src/cli/run.js";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { generateUpgradeSql, upgradeStatements } from "../src/schema/migrations.js";
import { SCHEMA_VERSION, generateSql, quoteIdent } from "../src/schema/sql.js";
import type { Migration } from "../src/schema/migrations.js";
import { setNextVersion } from "../src/schema/version.js";

// The upgrade machinery (src/schema/migrations.ts) against a version after this release's that only
// these tests define: each kind of change a step can make, as the statements it generates. A store
// written at this release's version and upgraded by init() on each backend:
// test/schema-next-version.test.ts; version 2's own step, from a store version 1 wrote:
// test/schema-v2.test.ts and test/schema-fixtures.test.ts.

const PG_URL = process.env.CREDIT_PG_URL;

/** The version after this release's, which only these tests define. */
const AFTER = SCHEMA_VERSION + 1;

/** The next version, for the statements: columns added (one filled), a check replaced, an index added. */
const NEXT: Migration = {
  to: AFTER,
  summary: "a test's next version",
  columns: [
    { table: "grants", field: "expiredAmount", fill: "0" },
    { table: "accounts", field: "alert" },
  ],
  checks: [{ table: "notifications", field: "type" }],
  indexes: [{ table: "journal", index: "created" }],
};
const next = (step: Migration = NEXT) => setNextVersion({ version: AFTER, sql: [step], mongo: [] });
/** The store a test's next version upgrades: at this release's version. */
const at = SCHEMA_VERSION;

describe("schema upgrades: the statements", () => {
  afterEach(() => setNextVersion(null));

  it("version 2: the journal's take_back, payment_id, shortfall, hash_version, key_id and scope, take_back, payment_id and shortfall set from what version 1 wrote; nothing to upgrade at 2", () => {
    expect(SCHEMA_VERSION).toBe(2);
    for (const dialect of ["postgres", "mysql", "sqlite"] as const)
      expect(upgradeStatements({ dialect, fromVersion: 2 })).toEqual([]);
    expect(generateSql({ dialect: "postgres" })).toContain(
      `INSERT INTO "schema_version" (component, version) VALUES ('credit-management', 2)`,
    );
    const statements = upgradeStatements({ dialect: "postgres", fromVersion: 1, schema: "billing" });
    expect(statements.slice(0, 6)).toEqual([
      `ALTER TABLE "billing"."journal_entries" ADD COLUMN IF NOT EXISTS "take_back" TEXT COLLATE "C" CHECK ("take_back" IN ('refund', 'clawback'));`,
      `ALTER TABLE "billing"."journal_entries" ADD COLUMN IF NOT EXISTS "payment_id" VARCHAR(128) COLLATE "C";`,
      `ALTER TABLE "billing"."journal_entries" ADD COLUMN IF NOT EXISTS "shortfall" BIGINT CHECK ("shortfall" BETWEEN 1 AND 9007199254740991);`,
      `ALTER TABLE "billing"."journal_entries" ADD COLUMN IF NOT EXISTS "hash_version" BIGINT CHECK ("hash_version" BETWEEN 1 AND 2);`,
      expect.stringMatching(/^ALTER TABLE "billing"\."journal_entries" ADD COLUMN IF NOT EXISTS "key_id" TEXT/),
      `ALTER TABLE "billing"."journal_entries" ADD COLUMN IF NOT EXISTS "scope" JSONB;`,
    ]);
    // Grants that start later (docs/units.md): NULL on the rows there are, every one started.
    expect(statements.slice(6, 9)).toEqual([
      `ALTER TABLE "billing"."journal_entries" ADD COLUMN IF NOT EXISTS "effective_at" TIMESTAMPTZ;`,
      `ALTER TABLE "billing"."grants" ADD COLUMN IF NOT EXISTS "effective_at" TIMESTAMPTZ;`,
      `ALTER TABLE "billing"."grants" ADD COLUMN IF NOT EXISTS "upcoming" BOOLEAN;`,
    ]);
    // Each row's unit (docs/units.md): NULL, the default unit, on the rows there are.
    expect(statements.slice(9, 13)).toEqual([
      `ALTER TABLE "billing"."accounts" ADD COLUMN IF NOT EXISTS "units" JSONB;`,
      expect.stringMatching(/^ALTER TABLE "billing"\."grants" ADD COLUMN IF NOT EXISTS "unit" TEXT/),
      expect.stringMatching(/^ALTER TABLE "billing"\."reservations" ADD COLUMN IF NOT EXISTS "unit" TEXT/),
      expect.stringMatching(/^ALTER TABLE "billing"\."journal_entries" ADD COLUMN IF NOT EXISTS "unit" TEXT/),
    ]);
    // The allowance a grant was drawn out in (docs/customer-state.md): NULL on the rows there are.
    expect(statements[13]).toBe(
      `ALTER TABLE "billing"."grants" ADD COLUMN IF NOT EXISTS "drawn_out_in" BIGINT CHECK ("drawn_out_in" BETWEEN 0 AND 9007199254740991);`,
    );
    // The key id of an account's latest entry (docs/concepts.md, "A keyed chain"): NULL on the rows
    // there are, whose entries version 1 wrote without a key.
    expect(statements[14]).toBe(
      `ALTER TABLE "billing"."accounts" ADD COLUMN IF NOT EXISTS "last_key_id" TEXT COLLATE "C";`,
    );
    // Only the entries that have none yet: it can run again.
    // The journal's types gain `start`.
    expect(statements[15]).toMatch(
      /^ALTER TABLE "billing"\."journal_entries" DROP CONSTRAINT IF EXISTS "journal_entries_type_check", ADD CONSTRAINT .*'start'/,
    );
    // Grant sources and notification types: any lower-case identifier (a module's own too).
    expect(statements.slice(16, 19)).toEqual([
      `ALTER TABLE "billing"."grants" DROP CONSTRAINT IF EXISTS "grants_source_check", ADD CONSTRAINT "grants_source_check" CHECK ("source" ~ '^[a-z][a-z0-9_]{0,63}$');`,
      `ALTER TABLE "billing"."journal_entries" DROP CONSTRAINT IF EXISTS "journal_entries_source_check", ADD CONSTRAINT "journal_entries_source_check" CHECK ("source" ~ '^[a-z][a-z0-9_]{0,63}$');`,
      `ALTER TABLE "billing"."notifications" DROP CONSTRAINT IF EXISTS "notifications_type_check", ADD CONSTRAINT "notifications_type_check" CHECK ("type" ~ '^[a-z][a-z0-9_]{0,63}$');`,
    ]);
    expect(statements[19]).toMatch(
      /^UPDATE "billing"\."journal_entries" AS j SET "take_back" = CASE WHEN .* 'Lost dispute' THEN 'clawback' WHEN .* THEN 'refund' END WHERE j\."take_back" IS NULL AND j\.type IN \('deduct', 'commit_reserved', 'void'\) AND .*'paymentId'.*'refundedAmount'.*;$/,
    );
    // The payment an entry credits or takes back from (docs/revenue.md, "Payments"): an addition by
    // its payment's row, a take-back by its metadata where the account has that payment.
    expect(statements.slice(20, 22)).toEqual([
      `UPDATE "billing"."journal_entries" AS j SET "payment_id" = p."id" FROM "billing"."payments" AS p WHERE j."payment_id" IS NULL AND j."type" = 'add' AND p."user_id" = j."user_id" AND p."credit_entry_id" = j."id";`,
      expect.stringMatching(
        /^UPDATE "billing"\."journal_entries" AS j SET "payment_id" = p\."id" FROM "billing"\."payments" AS p WHERE j\."payment_id" IS NULL AND j\."take_back" IS NOT NULL AND p\."user_id" = j\."user_id" AND p\."id" = .*'paymentId'.*;$/,
      ),
    ]);
    // What was served and not paid (docs/metering.md, "Served and not paid"): a charge's metadata
    // `shortfall` as version 1 wrote it, a whole number of at least 1, before the rollup's reads it.
    expect(statements[24]).toBe(
      `UPDATE "billing"."journal_entries" SET "shortfall" = ("metadata" -> 'shortfall')::text::numeric::bigint WHERE "shortfall" IS NULL AND "type" IN ('deduct', 'commit_reserved') AND jsonb_typeof(("metadata" -> 'shortfall')) = 'number' AND ("metadata" -> 'shortfall')::text::numeric BETWEEN 1 AND 9007199254740991 AND ("metadata" -> 'shortfall')::text::numeric = trunc(("metadata" -> 'shortfall')::text::numeric);`,
    );
    expect(statements[25]).toMatch(
      /^ALTER TABLE IF EXISTS "billing"\."usage_daily" ADD COLUMN IF NOT EXISTS "shortfall"/,
    );
    // The revenue summary, which read the metadata, filled again from the journal by the next report.
    expect(statements.at(-1)).toMatch(
      /^DO \$cm\$ BEGIN IF to_regclass\('"billing"\."revenue_state"'\) IS NOT NULL THEN TRUNCATE /,
    );
    for (const dialect of ["mysql", "sqlite"] as const)
      expect(upgradeStatements({ dialect, fromVersion: 1 }).filter((x) => x.startsWith("UPDATE"))).toHaveLength(4);
  });

  it("adds a later version's columns (PostgreSQL: IF NOT EXISTS, the fill's DEFAULT dropped after), replaces its checks", () => {
    next();
    const statements = upgradeStatements({ dialect: "postgres", fromVersion: at, prefix: "cm_", schema: "billing" });
    expect(statements.slice(0, 3)).toEqual([
      'ALTER TABLE "billing"."cm_grants" ADD COLUMN IF NOT EXISTS "expired_amount" BIGINT NOT NULL DEFAULT 0 CHECK ("expired_amount" BETWEEN 0 AND 9007199254740991);',
      'ALTER TABLE "billing"."cm_grants" ALTER COLUMN "expired_amount" DROP DEFAULT;',
      'ALTER TABLE "billing"."cm_accounts" ADD COLUMN IF NOT EXISTS "alert" JSONB;',
    ]);
    expect(statements[3]).toMatch(
      /^ALTER TABLE "billing"\."cm_notifications" DROP CONSTRAINT IF EXISTS "cm_notifications_type_check", ADD CONSTRAINT "cm_notifications_type_check" CHECK \("type" ~ '\^\[a-z\]\[a-z0-9_\]\{0,63\}\$'\);$/,
    );
    // PostgreSQL and SQLite get a new index from the DDL that follows the steps; MySQL here.
    expect(statements).toHaveLength(4);
    // On Citus, the check's drop and its new definition are two statements.
    // A column with a check: added, then its check named as PostgreSQL names an inline one (Citus
    // adds no column with a constraint in one command).
    const citus = upgradeStatements({ dialect: "postgres", fromVersion: at, distributed: true });
    expect(citus.slice(0, 4)).toEqual([
      'ALTER TABLE "grants" ADD COLUMN IF NOT EXISTS "expired_amount" BIGINT NOT NULL DEFAULT 0;',
      'ALTER TABLE "grants" DROP CONSTRAINT IF EXISTS "grants_expired_amount_check";',
      'ALTER TABLE "grants" ADD CONSTRAINT "grants_expired_amount_check" CHECK ("expired_amount" BETWEEN 0 AND 9007199254740991);',
      'ALTER TABLE "grants" ALTER COLUMN "expired_amount" DROP DEFAULT;',
    ]);
    expect(citus.slice(-2)).toEqual([
      'ALTER TABLE "notifications" DROP CONSTRAINT IF EXISTS "notifications_type_check";',
      expect.stringMatching(/^ALTER TABLE "notifications" ADD CONSTRAINT "notifications_type_check" CHECK/),
    ]);
  });

  it("MySQL: the columns, the check by MODIFY COLUMN, and the added index", () => {
    next();
    expect(upgradeStatements({ dialect: "mysql", fromVersion: at })).toEqual([
      "ALTER TABLE `grants` ADD COLUMN `expired_amount` BIGINT NOT NULL DEFAULT 0 CHECK (`expired_amount` BETWEEN 0 AND 9007199254740991);",
      "ALTER TABLE `grants` ALTER COLUMN `expired_amount` DROP DEFAULT;",
      "ALTER TABLE `accounts` ADD COLUMN `alert` JSON;",
      "ALTER TABLE `notifications` MODIFY COLUMN `type` VARCHAR(64) NOT NULL CHECK (CHAR_LENGTH(`type`) BETWEEN 1 AND 64);",
      "CREATE INDEX `journal_entries_created` ON `journal_entries` (`created_at`);",
    ]);
  });

  it("SQLite: a filled column or a changed check rebuilds the table as a fresh install's, rows copied (the fill in the copy)", () => {
    next();
    const statements = upgradeStatements({ dialect: "sqlite", fromVersion: at });
    expect(statements.filter((s) => s.includes("ADD COLUMN"))).toEqual([
      'ALTER TABLE "accounts" ADD COLUMN "alert" TEXT CHECK (json_valid("alert"));',
    ]);
    expect(statements.find((s) => s.startsWith('INSERT INTO "grants__rebuild"'))).toMatch(
      /^INSERT INTO "grants__rebuild" \(.*"expired_amount".*\) SELECT .*, 0, .* FROM "grants";$/,
    );
    expect(statements).toContain('ALTER TABLE "notifications__rebuild" RENAME TO "notifications";');
    expect(statements.filter((s) => s.startsWith("DROP TABLE IF EXISTS"))).toEqual([
      'DROP TABLE IF EXISTS "grants__rebuild";',
      'DROP TABLE IF EXISTS "notifications__rebuild";',
    ]);
  });

  it("a table the version introduced is created whole by the DDL: no step changes it", () => {
    next({ ...NEXT, tables: ["grants", "notifications"] });
    expect(upgradeStatements({ dialect: "postgres", fromVersion: at })).toEqual([
      'ALTER TABLE "accounts" ADD COLUMN IF NOT EXISTS "alert" JSONB;',
    ]);
  });

  it("runs a step's own statements after its columns, per dialect", () => {
    next({
      to: AFTER,
      summary: "statements",
      columns: [],
      statements: (dialect, naming, tables) =>
        dialect === "mysql" ? [] : [`-- ${dialect} ${naming.prefix ?? ""} ${tables.get("journal")?.qualified ?? ""}`],
    });
    expect(upgradeStatements({ dialect: "sqlite", fromVersion: at, prefix: "cm_" })).toEqual([
      '-- sqlite cm_ "cm_journal_entries"',
    ]);
    expect(upgradeStatements({ dialect: "mysql", fromVersion: at })).toEqual([]);
  });

  it("the script: its steps' summaries, the steps, today's DDL and last the version row; versions it does not know refused", () => {
    next();
    const script = generateUpgradeSql({ dialect: "postgres", fromVersion: at, schema: "billing" });
    expect(script.split("\n").slice(0, 2)).toEqual([
      `-- credit-management: upgrade of the postgres schema from version ${at} to ${AFTER}.`,
      `-- version ${AFTER}: a test's next version`,
    ]);
    expect(script.indexOf("DROP DEFAULT")).toBeLessThan(
      script.indexOf('CREATE TABLE IF NOT EXISTS "billing"."accounts"'),
    );
    expect(script.trimEnd().split("\n").at(-1)).toBe(
      `INSERT INTO "billing"."schema_version" (component, version) VALUES ('credit-management', ${AFTER}) ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, updated_at = now();`,
    );
    // At the version it is at: only today's DDL (idempotent) and the version row.
    expect(generateUpgradeSql({ dialect: "postgres", fromVersion: AFTER })).not.toContain("DROP DEFAULT");
    for (const bad of [0, AFTER + 1, 1.5, Number.NaN]) {
      expect(() => upgradeStatements({ dialect: "postgres", fromVersion: bad })).toThrow(/fromVersion must be/);
    }
    setNextVersion(null);
    expect(() => upgradeStatements({ dialect: "postgres", fromVersion: AFTER })).toThrow(
      `fromVersion must be a whole number from 1 to ${SCHEMA_VERSION}, got ${AFTER}`,
    );
  });

  it("a next version must be above this release's", () => {
    expect(() => setNextVersion({ version: SCHEMA_VERSION, sql: [], mongo: [] })).toThrow(
      `must be above ${SCHEMA_VERSION}`,
    );
  });

  it("is what `credit-management schema --from-version N` prints; a bad N is a usage error", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const io = { stdout: (t: string) => void out.push(t), stderr: (t: string) => void err.push(t) };
    expect(await runCli(["schema", "--dialect", "mysql", "--prefix", "cm_", "--from-version", "1"], io)).toBe(0);
    expect(out.join("")).toBe(generateUpgradeSql({ dialect: "mysql", prefix: "cm_", fromVersion: 1 }));
    for (const bad of ["0", String(SCHEMA_VERSION + 1), "two", "1.5"]) {
      expect(await runCli(["schema", "--from-version", bad], io)).toBe(2);
    }
    expect(err.join("")).toContain(`--from-version must be a schema version from 1 to ${SCHEMA_VERSION}`);
    // MongoDB: the mongosh upgrade script (test/mongodb-schema.test.ts).
    out.length = 0;
    expect(await runCli(["schema", "--backend", "nosql", "--from-version", "1"], io)).toBe(0);
    expect(out.join("")).toContain("upgrade of the MongoDB collections from schema version 1");
  });
});

// reason: needs its server, whose URL .ci/run sets; without it the suite is skipped
describe.skipIf(!PG_URL)("schema upgrades on PostgreSQL", () => {
  // reason: needs CREDIT_PG_URL (set by .ci/run); the run's closing block names it when skipped
  const run = randomUUID().replace(/-/g, "").slice(0, 8);
  const schemas: string[] = [];
  let client: pg.Client;
  const newSchema = async (label: string): Promise<string> => {
    const name = `cm_mig_${run}_${label}`;
    schemas.push(name);
    await client.query(`CREATE SCHEMA ${quoteIdent("postgres", name)}`);
    return name;
  };
  /** Runs SQL text with unqualified names inside `schema`. */
  const inSchema = async (schema: string, sql: string) => {
    await client.query(`SET search_path TO ${quoteIdent("postgres", schema)}`);
    try {
      await client.query(sql);
    } finally {
      await client.query("RESET search_path");
    }
  };
  beforeAll(async () => {
    client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
  });
  afterAll(async () => {
    for (const s of schemas) await client?.query(`DROP SCHEMA IF EXISTS ${quoteIdent("postgres", s)} CASCADE`);
    await client?.end();
  });

  it("the version 2 step gives a version 1 rollup its shortfall column, set from the entries its rows hold", async () => {
    const schema = await newSchema("v1_shortfall");
    await inSchema(schema, readFileSync(join(import.meta.dirname, "fixtures/schema/v1/postgres.sql"), "utf8"));
    const day = new Date(Math.floor(Date.now() / 86_400_000) * 86_400_000 - 86_400_000 + 3_600_000);
    // Two served requests: one charged 2, one charged nothing past the limit (its shortfall 3), both in the rollup.
    await inSchema(
      schema,
      `INSERT INTO journal_entries (id, user_id, seq, type, amount, balance_after, reserved_after, debt_after, grants, metadata, created_at, hash)
         VALUES ('e1', 'u', 1, 'deduct', 2, 0, 0, 0, '[]', NULL, '${day.toISOString()}', '\\x00'),
                ('e2', 'u', 2, 'deduct', 0, 0, 0, 0, '[]', '{"requested":3,"shortfall":3}', '${day.toISOString()}', '\\x00');
       INSERT INTO usage_daily VALUES ('u', '${day.toISOString().slice(0, 10)}', 'spend', 2, 2, 0, 0, 0);
       INSERT INTO usage_state VALUES ('u', 2);`,
    );
    for (const statement of upgradeStatements({ dialect: "postgres", fromVersion: 1 }))
      await inSchema(schema, statement);
    const rows = await client.query(
      `SELECT credits::int, requests::int, shortfall::int, unit FROM ${quoteIdent("postgres", schema)}.usage_daily`,
    );
    expect(rows.rows).toEqual([{ credits: 2, requests: 2, shortfall: 3, unit: "" }]);
  });

  it("stats() counts failed (and pending) outbox rows off partial indexes: no scan of the outbox", async () => {
    const schema = await newSchema("stats_plan");
    const db = new PostgresDbManager({ connectionString: PG_URL as string, schema });
    await db.init();
    const n = `${quoteIdent("postgres", schema)}.notifications`;
    // 20,019 delivered rows, 40 failed, 41 pending: enough rows for the planner to weigh a scan.
    await client.query(
      `INSERT INTO ${n} (id, user_id, type, version, status, payload, attempts, next_attempt_at, created_at, settled_at)
       SELECT lpad(i::text, 12, '0'), 'u' || (i % 500), 'low_credits', 1,
              CASE WHEN i % 500 = 0 THEN 'failed' WHEN i % 500 = 1 THEN 'pending' ELSE 'sent' END,
              '{}', 1, now(), now(), now()
         FROM generate_series(1, 20100) AS i`,
    );
    await client.query(`VACUUM ANALYZE ${n}`);
    const sent: string[] = [];
    const read = db.read.bind(db);
    db.read = (what, text, params) => {
      if (what === "stats") sent.push(text);
      return read(what, text, params);
    };
    try {
      const stats = await db.stats();
      const counts = await client.query(`SELECT status, count(*)::int AS n FROM ${n} GROUP BY status ORDER BY status`);
      expect(counts.rows).toEqual([
        { status: "failed", n: 40 },
        { status: "pending", n: 41 },
        { status: "sent", n: 20_019 },
      ]);
      expect(stats).toMatchObject({ outboxFailed: 40, outboxPending: 41 });
      expect(sent).toHaveLength(1);
      const plan = async () => {
        const explained = await client.query(`EXPLAIN (FORMAT JSON) ${sent[0]}`);
        const nodes: { "Node Type": string; "Relation Name"?: string; "Index Name"?: string }[] = [];
        const walk = (node: Record<string, unknown>) => {
          nodes.push(node as (typeof nodes)[number]);
          for (const child of (node.Plans as Record<string, unknown>[] | undefined) ?? []) walk(child);
        };
        walk((explained.rows[0]["QUERY PLAN"] as { Plan: Record<string, unknown> }[])[0]!.Plan);
        return nodes.filter((x) => x["Relation Name"] === "notifications");
      };
      const outbox = await plan();
      expect(outbox.filter((x) => x["Node Type"] === "Seq Scan")).toEqual([]);
      expect(outbox.map((x) => x["Index Name"])).toContain("notifications_failed");
      // The same query without that index reads the whole outbox: the check above can fail.
      await client.query(`DROP INDEX ${quoteIdent("postgres", schema)}.notifications_failed`);
      expect((await plan()).map((x) => x["Node Type"])).toContain("Seq Scan");
    } finally {
      await db.close();
    }
  });

  it("a manager that does not migrate refuses an empty schema and a newer version, and creates nothing", async () => {
    const empty = await newSchema("empty");
    const checking = new PostgresDbManager({ connectionString: PG_URL as string, schema: empty, migrate: false });
    try {
      await expect(checking.init()).rejects.toThrow(/no credit-management schema.*\(migrate: false\)/);
      const tables = await client.query(
        "SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = $1",
        [empty],
      );
      expect(tables.rows[0].n).toBe(0);
      await inSchema(
        empty,
        `${generateSql({ dialect: "postgres" })}\nUPDATE schema_version SET version = ${SCHEMA_VERSION + 1};`,
      );
      await expect(checking.init()).rejects.toThrow(/newer than this release/);
    } finally {
      await checking.close();
    }
  });
});
