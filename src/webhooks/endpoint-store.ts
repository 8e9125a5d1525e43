import { randomBytes } from "node:crypto";
import type { WebhookEndpoint } from "./queue.js";

/**
 * Where `credit-management webhooks` and the worker keep webhook endpoints (docs/notifications.md,
 * "Webhooks"): beside the credit data in the same database, in a table (collection) of the
 * service's own, `credit_webhook_endpoints`, created when missing — like the API keys of `serve`
 * (src/serve/keys.ts), it is the service's, not the library's, so the `DbManager` contract and its
 * schema version do not carry it. A library user passes endpoints to `webhookQueue` directly.
 * Each row is the endpoint as JSON: its secrets are stored as given (signing needs them).
 */
export interface WebhookEndpointRecord {
  id: string;
  url: string;
  /** The newest first: each message is signed with all of them (several during a rotation). */
  secrets: string[];
  /** Event types it gets; null: all. */
  types: string[] | null;
  enabled: boolean;
  development: boolean;
  description: string | null;
  createdAt: string;
  /** Why it was disabled (`410 Gone`, `by hand`), null while enabled. */
  disabledReason: string | null;
}

export interface WebhookEndpointStore {
  init(): Promise<void>;
  list(): Promise<WebhookEndpointRecord[]>;
  get(id: string): Promise<WebhookEndpointRecord | null>;
  /** Inserts or replaces the endpoint with that id. */
  put(record: WebhookEndpointRecord): Promise<void>;
  /** Whether there was one to remove. */
  remove(id: string): Promise<boolean>;
  close(): Promise<void>;
}

export const ENDPOINT_TABLE = "credit_webhook_endpoints";

/** A new endpoint id: `we_` and 16 hex digits. */
export const newEndpointId = (): string => `we_${randomBytes(8).toString("hex")}`;

/** The endpoint as `webhookQueue` takes it. */
export function endpointOf(r: WebhookEndpointRecord): WebhookEndpoint {
  return {
    id: r.id,
    url: r.url,
    secret: r.secrets,
    ...(r.types === null ? {} : { types: r.types as WebhookEndpoint["types"] }),
    enabled: r.enabled,
    development: r.development,
  };
}

const CREATE = (table: string) => `CREATE TABLE IF NOT EXISTS ${table} (id VARCHAR(64) PRIMARY KEY, doc TEXT NOT NULL)`;
const parseDoc = (doc: string) => JSON.parse(doc) as WebhookEndpointRecord;

/** What `serve`'s own stores (these endpoints, the API keys) use of a SQLite connection. */
export interface SqliteLike {
  prepare(sql: string): {
    get(...p: unknown[]): unknown;
    all(...p: unknown[]): unknown[];
    run(...p: unknown[]): { changes: number };
  };
  exec(sql: string): unknown;
  pragma(s: string): unknown;
  close(): unknown;
}

/** Endpoints in the SQLite file of the store (its own connection). */
export function sqliteEndpointStore(db: SqliteLike): WebhookEndpointStore {
  return {
    async init() {
      db.pragma("busy_timeout = 5000");
      db.exec(CREATE(ENDPOINT_TABLE));
    },
    async list() {
      return (db.prepare(`SELECT doc FROM ${ENDPOINT_TABLE} ORDER BY id`).all() as { doc: string }[]).map((r) =>
        parseDoc(r.doc),
      );
    },
    async get(id) {
      const row = db.prepare(`SELECT doc FROM ${ENDPOINT_TABLE} WHERE id = ?`).get(id) as { doc: string } | undefined;
      return row === undefined ? null : parseDoc(row.doc);
    },
    async put(r) {
      db.prepare(
        `INSERT INTO ${ENDPOINT_TABLE} (id, doc) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc`,
      ).run(r.id, JSON.stringify(r));
    },
    async remove(id) {
      return db.prepare(`DELETE FROM ${ENDPOINT_TABLE} WHERE id = ?`).run(id).changes > 0;
    },
    async close() {
      db.close();
    },
  };
}

/** What `serve`'s own stores use of a `pg` pool. */
export interface PgPoolLike {
  query(sql: string, params?: unknown[]): Promise<{ rows: unknown[]; rowCount: number | null }>;
  end(): Promise<void>;
}

/** Endpoints in the PostgreSQL database (and schema) of the store. */
export function postgresEndpointStore(pool: PgPoolLike, schema: string | undefined): WebhookEndpointStore {
  const quoted = schema === undefined ? undefined : `"${schema.replace(/"/g, '""')}"`;
  const table = quoted === undefined ? ENDPOINT_TABLE : `${quoted}.${ENDPOINT_TABLE}`;
  return {
    async init() {
      if (quoted !== undefined) await pool.query(`CREATE SCHEMA IF NOT EXISTS ${quoted}`);
      await pool.query(CREATE(table));
    },
    async list() {
      return ((await pool.query(`SELECT doc FROM ${table} ORDER BY id`)).rows as { doc: string }[]).map((r) =>
        parseDoc(r.doc),
      );
    },
    async get(id) {
      const { rows } = await pool.query(`SELECT doc FROM ${table} WHERE id = $1`, [id]);
      return rows.length === 0 ? null : parseDoc((rows[0] as { doc: string }).doc);
    },
    async put(r) {
      await pool.query(
        `INSERT INTO ${table} (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc`,
        [r.id, JSON.stringify(r)],
      );
    },
    async remove(id) {
      return ((await pool.query(`DELETE FROM ${table} WHERE id = $1`, [id])).rowCount ?? 0) > 0;
    },
    async close() {
      await pool.end();
    },
  };
}

interface MongoCollectionLike {
  find(filter: Record<string, unknown>): {
    sort(s: Record<string, 1>): { toArray(): Promise<Record<string, unknown>[]> };
  };
  findOne(filter: Record<string, unknown>): Promise<Record<string, unknown> | null>;
  replaceOne(
    filter: Record<string, unknown>,
    doc: Record<string, unknown>,
    options: { upsert: boolean },
  ): Promise<unknown>;
  deleteOne(filter: Record<string, unknown>): Promise<{ deletedCount: number }>;
}

/** Endpoints in the MongoDB database of the store (collection `credit_webhook_endpoints`, `_id` the endpoint's id). */
export function mongoEndpointStore(collection: MongoCollectionLike, close: () => Promise<void>): WebhookEndpointStore {
  return {
    async init() {},
    async list() {
      return (await collection.find({}).sort({ _id: 1 }).toArray()).map((d) => parseDoc(d.doc as string));
    },
    async get(id) {
      const d = await collection.findOne({ _id: id });
      return d === null ? null : parseDoc(d.doc as string);
    },
    async put(r) {
      await collection.replaceOne({ _id: r.id }, { _id: r.id, doc: JSON.stringify(r) }, { upsert: true });
    },
    async remove(id) {
      return (await collection.deleteOne({ _id: id })).deletedCount > 0;
    },
    close,
  };
}

/** Endpoints in process memory (tests). */
export function memoryEndpointStore(): WebhookEndpointStore {
  const rows = new Map<string, string>();
  return {
    async init() {},
    async list() {
      return [...rows.keys()].sort().map((id) => parseDoc(rows.get(id) as string));
    },
    async get(id) {
      const doc = rows.get(id);
      return doc === undefined ? null : parseDoc(doc);
    },
    async put(r) {
      rows.set(r.id, JSON.stringify(r));
    },
    async remove(id) {
      return rows.delete(id);
    },
    async close() {},
  };
}
