import { randomUUID } from "node:crypto";
import pg from "pg";
import { describe, it } from "vitest";
import { PostgresDbManager } from "../src/db/postgres/index.js";
import { runDbManagerContract } from "../src/testing/index.js";

const url = process.env.CREDIT_PG_URL;
if (!url) console.warn("[postgres.test] CREDIT_PG_URL is not set: the PostgreSQL contract suite is skipped.");

// Skipped without a server: CREDIT_PG_URL names the PostgreSQL to run against (.ci/run sets it).
describe.skipIf(!url)("PostgresDbManager", () => {
  if (!url) return it.skip("needs CREDIT_PG_URL", () => {});
  const schema = `cm_test_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
  runDbManagerContract({
    name: "postgres",
    create: async () => new PostgresDbManager({ connectionString: url, schema, poolConfig: { max: 8 } }),
    destroy: async () => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    },
  });
});
