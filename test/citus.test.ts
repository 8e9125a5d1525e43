/**
 * The PostgreSQL store on a real Citus cluster (docs/scaling-out.md): `init()` distributes it, and
 * the store contract holds there, with one manager and with two over the same store.
 * `CREDIT_CITUS_URL` is the coordinator's URL (`.ci/run` starts the cluster with
 * `../shared/citus/up.sh`).
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PostgresDbManager, SCHEMA_VERSION } from "../src/db/postgres/index.js";
import { ConfigurationError } from "../src/errors.js";
import { CreditService } from "../src/services/credit-service.js";
import { runDbManagerContract } from "../src/testing/index.js";
import { runCli } from "../src/cli/run.js";

const url = process.env.CREDIT_CITUS_URL;
if (!url) console.warn("[citus.test] CREDIT_CITUS_URL is not set: the Citus cluster tests are skipped.");

/** What `npx credit-management <args>` prints. */
async function cli(...args: string[]): Promise<string> {
  let out = "";
  const code = await runCli(args, { stdout: (t) => (out += t), stderr: () => undefined });
  if (code !== 0) throw new Error(`credit-management ${args.join(" ")} exited with ${code}`);
  return out;
}

/** Applies SQL as an operator does: `psql -f` (statement by statement). */
function psql(sql: string): void {
  execFileSync("psql", [url as string, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"], {
    input: sql,
    stdio: ["pipe", "ignore", "pipe"],
  });
}
const newSchema = (tag: string) => `cm_${tag}_${randomUUID().replace(/-/g, "").slice(0, 10)}`;

async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await client.end();
}

// reason: needs a Citus cluster: CREDIT_CITUS_URL names its coordinator (.ci/run sets it); skipped with the notice above otherwise
describe.skipIf(!url)("PostgresDbManager on Citus", () => {
  const contractSchema = newSchema("citus");
  runDbManagerContract({
    test: { describe, it, expect, beforeAll, afterAll },
    name: "postgres on citus",
    create: async () =>
      new PostgresDbManager({ connectionString: url as string, schema: contractSchema, poolConfig: { max: 8 } }),
    // A second manager over the same store, with its own pool (as a second pod has).
    createPeer: async () =>
      new PostgresDbManager({ connectionString: url as string, schema: contractSchema, poolConfig: { max: 8 } }),
    destroy: async () => dropSchema(contractSchema),
  });
});

// reason: needs a Citus cluster (CREDIT_CITUS_URL, set by .ci/run); skipped with the notice above otherwise
describe.skipIf(!url)("a store on Citus: init() distributes it (docs/scaling-out.md)", () => {
  const schemas: string[] = [];
  let admin: pg.Client;
  beforeAll(async () => {
    admin = new pg.Client({ connectionString: url });
    await admin.connect();
  });
  afterAll(async () => {
    for (const s of schemas) await dropSchema(s);
    await admin.end();
  });

  /** The store's tables as Citus keeps them: h (distributed by hash), n (reference), local. */
  async function layout(schema: string): Promise<Record<string, string>> {
    const r = await admin.query<{ name: string; kind: string }>(
      `SELECT c.relname AS name, coalesce(p.partmethod::text || ':' || coalesce(a.attname, '') || ':' || ` +
        `(p.colocationid = (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = format('%I.accounts', n.nspname)::regclass))::text, 'local') AS kind ` +
        `FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid ` +
        `LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = column_to_column_name(p.logicalrelid, p.partkey) ` +
        `WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1`,
      [schema],
    );
    return Object.fromEntries(r.rows.map((x) => [x.name, x.kind]));
  }

  const DISTRIBUTED = {
    accounts: "h:user_id:true",
    grants: "h:user_id:true",
    journal_entries: "h:user_id:true",
    ledger_entries: "local",
    notifications: "h:user_id:true",
    payments: "h:user_id:true",
    plans: "n::false",
    promo_claims: "h:user_id:true",
    promos: "n::false",
    reservations: "h:user_id:true",
    schema_version: "n::false",
    subscriptions: "h:user_id:true",
    usage_daily: "h:user_id:true",
  };

  it("init() on a coordinator creates every per-account table distributed by user_id and colocated, plans, promos and the version row as reference tables, the ledger local; a second init() changes nothing", async () => {
    const schema = newSchema("init");
    schemas.push(schema);
    const managers = [0, 1].map(() => new PostgresDbManager({ connectionString: url as string, schema }));
    await Promise.all(managers.map((m) => m.init()));
    await managers[0]?.init();
    expect(await layout(schema)).toEqual(DISTRIBUTED);
    expect(managers.map((m) => m.sql.distributed)).toEqual([true, true]);
    // The usage rollup's trigger runs on the journal's shards and writes the rollup's (colocated) shard.
    const credits = new CreditService({ db: managers[0] as PostgresDbManager });
    await credits.addCredits("rollup-user", 10);
    await credits.deductCredits("rollup-user", 4);
    const rollup = await admin.query(
      `SELECT kind, credits::int AS credits FROM "${schema}".usage_daily WHERE user_id = $1`,
      ["rollup-user"],
    );
    expect(rollup.rows).toEqual([{ kind: "spend", credits: 4 }]);
    expect((await credits.audit("rollup-user")).ok).toBe(true);
    await Promise.all(managers.map((m) => m.close()));
  });

  it("`schema --distributed`, applied by hand with psql, gives the same store; migrate: false then runs on it", async () => {
    const schema = newSchema("cli");
    schemas.push(schema);
    const ddl = await cli("schema", "--dialect", "postgres", "--schema", schema, "--distributed");
    expect(ddl).toContain(`SELECT create_distributed_table('"${schema}"."accounts"', 'user_id')`);
    psql(ddl);
    expect(await layout(schema)).toEqual(DISTRIBUTED);
    const db = new PostgresDbManager({ connectionString: url as string, schema, migrate: false });
    await db.init();
    expect(db.sql.distributed).toBe(true);
    const credits = new CreditService({ db });
    await credits.addCredits("cli-user", 5);
    expect((await credits.getUserCreditsInfo("cli-user")).balance).toBe(5);
    await db.close();
  });

  it("upgrades a distributed store: init() from an older version, and `schema --from-version N --distributed` by hand", async () => {
    for (const how of ["init", "cli"] as const) {
      const schema = newSchema(`up${how}`);
      schemas.push(schema);
      const first = new PostgresDbManager({ connectionString: url as string, schema });
      await first.init();
      await new CreditService({ db: first }).addCredits("old-user", 7);
      await first.close();
      // Back to version 12: the columns version 13 added are not there yet.
      await admin.query(`ALTER TABLE "${schema}".plans DROP COLUMN allowances`);
      await admin.query(`ALTER TABLE "${schema}".subscriptions DROP COLUMN period_allowances`);
      await admin.query(`UPDATE "${schema}".schema_version SET version = 12`);
      if (how === "cli") {
        psql(await cli("schema", "--dialect", "postgres", "--schema", schema, "--from-version", "12", "--distributed"));
      }
      const db = new PostgresDbManager({ connectionString: url as string, schema, migrate: how === "init" });
      await db.init();
      expect(await layout(schema)).toEqual(DISTRIBUTED);
      const version = await admin.query(`SELECT version FROM "${schema}".schema_version`);
      expect(version.rows).toEqual([{ version: SCHEMA_VERSION }]);
      const columns = await admin.query(
        `SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = $1 AND column_name IN ('allowances', 'period_allowances') ORDER BY 1`,
        [schema],
      );
      expect(columns.rows.length).toBe(2);
      const credits = new CreditService({ db });
      await credits.deductCredits("old-user", 2);
      expect((await credits.getUserCreditsInfo("old-user")).balance).toBe(5);
      expect((await credits.audit("old-user")).ok).toBe(true);
      await db.close();
    }
  });

  it("distributed: false keeps plain tables on the coordinator; a store made so stays so, and `distributed: true` refuses it", async () => {
    const schema = newSchema("local");
    schemas.push(schema);
    const local = new PostgresDbManager({ connectionString: url as string, schema, distributed: false });
    await local.init();
    expect(local.sql.distributed).toBe(false);
    expect(Object.values(await layout(schema)).every((k) => k === "local")).toBe(true);
    await new CreditService({ db: local }).addCredits("local-user", 3);
    await local.close();
    const auto = new PostgresDbManager({ connectionString: url as string, schema });
    await auto.init();
    expect(auto.sql.distributed).toBe(false);
    expect((await new CreditService({ db: auto }).getUserCreditsInfo("local-user")).balance).toBe(3);
    await auto.close();
    const forced = new PostgresDbManager({ connectionString: url as string, schema, distributed: true });
    await expect(forced.init()).rejects.toBeInstanceOf(ConfigurationError);
    await forced.close();
    // And a distributed store is not read as a plain one.
    const other = newSchema("dist");
    schemas.push(other);
    const made = new PostgresDbManager({ connectionString: url as string, schema: other });
    await made.init();
    await made.close();
    const plain = new PostgresDbManager({ connectionString: url as string, schema: other, distributed: false });
    await expect(plain.init()).rejects.toBeInstanceOf(ConfigurationError);
    await plain.close();
  });
});

const pgUrl = process.env.CREDIT_PG_URL;
// reason: needs a PostgreSQL server without Citus (CREDIT_PG_URL, set by .ci/run)
describe.skipIf(!pgUrl)("distributed: true on a server without Citus", () => {
  it("init() fails with ConfigurationError and creates nothing", async () => {
    const schema = newSchema("nocitus");
    const db = new PostgresDbManager({ connectionString: pgUrl as string, schema, distributed: true });
    await expect(db.init()).rejects.toThrow(/no Citus extension/);
    await db.close();
    const c = new pg.Client({ connectionString: pgUrl });
    await c.connect();
    const found = await c.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema]);
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    await c.end();
    expect(found.rows).toEqual([]);
  });
});
