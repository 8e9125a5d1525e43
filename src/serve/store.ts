import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import { createDbManagerFromEnv } from "../from-env.js";
import type { SqliteDatabase } from "../db/sqlite/index.js";
import type { DbManager } from "../core/db/types.js";
import {
  mongoEndpointStore,
  postgresEndpointStore,
  sqliteEndpointStore,
  type WebhookEndpointStore,
} from "../modules/webhooks/store.js";
import { onBun } from "../core/util/runtime.js";
import { refuseDriverForNode } from "../db/sqlite/driver-version.js";
import { mongoKeyStore, postgresKeyStore, sqliteKeyStore, type KeyStore } from "./keys.js";
import type { Env, ServeSettings } from "./settings.js";

/** better-sqlite3 (the default store's driver on Node.js, an optional peer) is missing: the CLI exits 3. */
export class MissingDriverError extends Error {
  override name = "MissingDriverError";
}

/**
 * What opens the SQLite file of `serve`, `keys` and `webhooks`: under Bun, Bun's own `bun:sqlite`
 * (as `credit-management/sqlite` does there: docs/runtimes.md, "SQLite on Bun"); elsewhere
 * `better-sqlite3`, from the working directory's node_modules too (npx runs the package from its
 * cache). Null when `better-sqlite3` is needed and missing.
 */
export async function sqliteOpener(): Promise<((file: string) => SqliteDatabase) | null> {
  if (onBun()) {
    const { loadBunSqlite, openBunSqlite } = await import("../db/sqlite/bun.js");
    const Database = await loadBunSqlite();
    return (file) => openBunSqlite(Database, file);
  }
  let Database: new (file: string) => SqliteDatabase;
  // Before the driver loads: a better-sqlite3 that needs a newer Node.js crashes the process.
  refuseDriverForNode();
  try {
    const require = createRequire(`${process.cwd()}/`);
    let mod: unknown;
    try {
      mod = require("better-sqlite3");
    } catch {
      mod = await import("better-sqlite3");
    }
    Database = ((mod as { default?: unknown }).default ?? mod) as typeof Database;
  } catch {
    return null;
  }
  return (file) => new Database(file);
}

/** The credit store alone (`worker`): as `serve` opens it, without the key store. */
export async function openCreditStore(store: ServeSettings["store"]): Promise<DbManager> {
  const { db, keys } = await openStores(store);
  await keys.close();
  return db;
}

/** The credit store and the key store of `serve` and `keys`, on the same database. */
export async function openStores(
  store: ServeSettings["store"],
): Promise<{ db: DbManager; keys: KeyStore; where: string }> {
  if (store.kind === "sqlite") {
    const { open, path } = await sqliteFile(store.path);
    const { SqliteDbManager } = await import("../db/sqlite/index.js");
    const main = open(path);
    main.pragma("journal_mode = WAL");
    const db = new SqliteDbManager({ database: main });
    const close = db.close.bind(db);
    // The manager leaves a database it was given open: close it with the store.
    (db as { close(): Promise<void> }).close = async () => {
      await close();
      main.close();
    };
    return { db, keys: sqliteKeyStore(open(path)), where: path };
  }
  const db = await createDbManagerFromEnv(
    store.kind === "postgres"
      ? { CREDIT_PG_URL: store.url, CREDIT_PG_SCHEMA: store.schema, CREDIT_PG_PARTITIONS: store.partitions }
      : { CREDIT_MONGO_URI: store.uri, CREDIT_MONGO_DB: store.db },
  );
  if (store.kind === "postgres") {
    return { db, keys: postgresKeyStore(await ownPgPool(store.url), store.schema), where: storePlace(store) };
  }
  const { collection, close } = await ownMongoCollection(store, "credit_api_keys");
  return { db, keys: mongoKeyStore(collection, close), where: storePlace(store) };
}

/**
 * Where the store is, for the start-up log of `serve` and `worker` (docs/operations.md): the SQLite
 * file's full path; the PostgreSQL or MongoDB URL without its password or its query (which may hold
 * one), with the schema or database. No secret.
 */
export function storePlace(store: ServeSettings["store"]): string {
  if (store.kind === "sqlite") return resolve(store.path);
  const url = redactedUrl(store.kind === "postgres" ? store.url : store.uri);
  if (store.kind === "postgres")
    return `${url}${store.schema === undefined ? "" : ` schema ${store.schema}`}${store.partitions === undefined ? "" : ` partitioned by ${store.partitions}`}`;
  return `${url} database ${store.db}`;
}

/** `url` with its password replaced by `***`, and without its query and fragment. */
export function redactedUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    u.search = "";
    u.hash = "";
    return u.toString();
  } catch {
    // The store's own settings checked it is a URL; should one not parse, nothing of it is shown.
    return "(a URL that does not parse)";
  }
}

/** The store of `serve` for the webhook endpoints: its own connection, as the API keys have. */
export async function openEndpointStore(store: ServeSettings["store"]): Promise<WebhookEndpointStore> {
  if (store.kind === "sqlite") {
    const { open, path } = await sqliteFile(store.path);
    return sqliteEndpointStore(open(path));
  }
  if (store.kind === "postgres") return postgresEndpointStore(await ownPgPool(store.url), store.schema);
  const { collection, close } = await ownMongoCollection(store, "credit_webhook_endpoints");
  return mongoEndpointStore(collection, close);
}

/** The store's SQLite file, its folder made, and what opens a connection to it. */
async function sqliteFile(file: string): Promise<{ open: (file: string) => SqliteDatabase; path: string }> {
  const open = await sqliteOpener();
  if (open === null)
    throw new MissingDriverError(
      "the default store is a SQLite file and needs better-sqlite3: npm install better-sqlite3 (or set CREDIT_PG_URL or CREDIT_MONGO_URI)",
    );
  const path = resolve(file);
  mkdirSync(dirname(path), { recursive: true });
  return { open, path };
}

/** A collection of `serve`'s own in the store's MongoDB database, on a client of its own. */
async function ownMongoCollection(store: { uri: string; db: string }, name: string) {
  const { MongoClient } = await import("mongodb");
  const client = new MongoClient(store.uri);
  return { collection: client.db(store.db).collection(name) as never, close: () => client.close() };
}

/** A small `pg` pool of `serve`'s own (the API keys, the webhook endpoints), beside the store's. */
async function ownPgPool(url: string) {
  // CommonJS `pg` imported as a module: its exports are under `default` on some runtimes.
  const pg = await import("pg");
  const pool = new (pg.default?.Pool ?? pg.Pool)({ connectionString: url, max: 2 });
  // A dropped idle connection is replaced on the next query; without a listener it would end the process.
  pool.on("error", () => {});
  return pool;
}

/** CREDIT_WEBHOOK_ALLOW_NETWORKS as a list. */
export function allowedNetworks(env: Env): string[] {
  return (env.CREDIT_WEBHOOK_ALLOW_NETWORKS ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}
