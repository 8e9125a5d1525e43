// The contract suite (credit-management/testing) on whichever runtime runs this file: Node, Bun or
// Deno. It is run by .ci/runtimes/check.sh from a fresh project that installed the packed package,
// so it tests what a user gets. No test runner of the runtime is needed: the suite takes its test
// functions from its caller, and these are a small sequential runner with jest's `expect` (the
// `expect` package). Stores: in memory; SQLite in a file under the temporary folder, through two
// connections, on the driver `credit-management/sqlite` picks by itself (Bun's own `bun:sqlite`
// under Bun, `better-sqlite3` elsewhere) and, under Bun, once more on `better-sqlite3` 13 (a
// Node-API addon, so it loads on Bun and Deno too) asked for explicitly; and PostgreSQL through
// `pg` when CREDIT_PG_URL is set (a schema of its own, dropped at the end). Exits 1 on any
// failure, or when no test ran.
import { createRequire } from "node:module";
import pg from "pg";
import { InMemoryDbManager } from "credit-management";
import { PostgresDbManager } from "credit-management/postgres";
import { SqliteDbManager } from "credit-management/sqlite";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runDbManagerContract } from "credit-management/testing";

// Through require: Bun 1.4 gives `import { expect } from "expect"` (an ESM wrapper of a CommonJS
// module) as undefined; require gives it on all three runtimes. Given as it is: the suite passes a
// message only to an `expect` that takes one, and puts it in front of a failure for jest's, which
// does not (docs/testing.md).
const expect = createRequire(import.meta.url)("expect").expect;

const runtime =
  typeof globalThis.Bun !== "undefined"
    ? `Bun ${globalThis.Bun.version}`
    : typeof globalThis.Deno !== "undefined"
      ? `Deno ${globalThis.Deno.version.deno}`
      : `Node ${process.version}`;

/** describe/it/beforeAll/afterAll collected into a tree, then run in order. */
const root = { name: "", children: [], before: [], after: [] };
let current = root;
const test = {
  describe(name, body) {
    const node = { name, children: [], before: [], after: [] };
    current.children.push(node);
    const parent = current;
    current = node;
    try {
      body();
    } finally {
      current = parent;
    }
  },
  it(name, body, timeout) {
    current.children.push({ name, body, timeout });
  },
  beforeAll(body) {
    current.before.push(body);
  },
  afterAll(body) {
    current.after.push(body);
  },
  expect,
};

const withTimeout = (promise, ms, what) => {
  let timer;
  return Promise.race([
    Promise.resolve(promise).finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]);
};

let passed = 0;
const failed = [];
async function run(node, path) {
  const here = node.name ? [...path, node.name] : path;
  try {
    for (const hook of node.before) await withTimeout(hook(), 60_000, `${here.join(" > ")} beforeAll`);
  } catch (error) {
    failed.push([here.join(" > ") + " (beforeAll)", error]);
    console.error(`FAIL ${here.join(" > ")} (beforeAll)\n${error?.stack ?? error}`);
    return;
  }
  for (const child of node.children) {
    if (child.body === undefined) {
      await run(child, here);
      continue;
    }
    const name = [...here, child.name].join(" > ");
    try {
      await withTimeout(child.body(), child.timeout ?? 60_000, name);
      passed += 1;
    } catch (error) {
      failed.push([name, error]);
      console.error(`FAIL ${name}\n${error?.stack ?? error}`);
    }
  }
  for (const hook of node.after) {
    try {
      await withTimeout(hook(), 60_000, `${here.join(" > ")} afterAll`);
    } catch (error) {
      failed.push([here.join(" > ") + " (afterAll)", error]);
    }
  }
}

runDbManagerContract({ name: "memory", create: async () => new InMemoryDbManager(), test });

const bs3 = `better-sqlite3 ${createRequire(import.meta.url)("better-sqlite3/package.json").version}`;
// The default first (nothing passed: what a user gets), then under Bun better-sqlite3 explicitly.
// Each on its own file: two SQLite libraries in one process must not share a file (docs/runtimes.md).
const drivers = typeof globalThis.Bun !== "undefined" ? [undefined, "better-sqlite3"] : [undefined];
const sqliteRuns = [];
for (const driver of drivers) {
  const file = join(mkdtempSync(join(tmpdir(), "cm-rt-sqlite-")), "contract.db");
  const options = driver === undefined ? { filename: file } : { filename: file, driver };
  const chosen = new SqliteDbManager(options).driver;
  sqliteRuns.push(chosen === "better-sqlite3" ? bs3 : chosen);
  runDbManagerContract({
    name: `sqlite (${chosen}${driver === undefined ? ", the default" : ""})`,
    test,
    create: async () => new SqliteDbManager(options),
    // A second connection on the same file, with its own caches (as a second process has).
    createPeer: async () => new SqliteDbManager(options),
  });
}

const url = process.env.CREDIT_PG_URL;
const schema = `cm_rt_${Math.random().toString(36).slice(2, 12)}`;
if (url) {
  runDbManagerContract({
    name: "postgres",
    test,
    create: async () => new PostgresDbManager({ connectionString: url, schema, poolConfig: { max: 8 } }),
    createPeer: async () => new PostgresDbManager({ connectionString: url, schema, poolConfig: { max: 8 } }),
    destroy: async () => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    },
  });
}

const started = Date.now();
await run(root, []);
const sqlite = `SQLite (${sqliteRuns.join("; ")})`;
const stores = url ? `memory, ${sqlite} and PostgreSQL` : `memory and ${sqlite} (CREDIT_PG_URL not set: PostgreSQL not run)`;
console.log(
  `${runtime}: the contract suite on ${stores}: ${passed} passed, ${failed.length} failed (${((Date.now() - started) / 1000).toFixed(1)} s)`,
);
for (const [name] of failed) console.log(`  failed: ${name}`);
if (failed.length > 0 || passed === 0) process.exit(1);
