import { test } from "vitest";
import pg from "pg";
import { usageScan } from "../src/services/usage.js";
import { usageSql } from "../src/db/postgres/usage.js";
test("explain", async () => {
  const now = new Date();
  const from = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1));
  const to = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1));
  const scan = usageScan({ from, to, interval: null, groupBy: ["account"], kinds: ["spend"], orderBy: "credits", limit: 100 });
  const { text, params } = usageSql('"cm_bench_usage_1000000"."journal_entries"', scan);
  const c = new pg.Client({ connectionString: "postgres://postgres@127.0.0.1:5432/usage_test" });
  await c.connect();
  const r = await c.query("EXPLAIN (ANALYZE, BUFFERS) " + text, params);
  console.log(r.rows.map((x) => x["QUERY PLAN"]).join("\n"));
  await c.end();
}, 60000);
