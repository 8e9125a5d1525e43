import { randomBytes } from "node:crypto";
import { WebhookEndpoint } from "./queue.js";
import { generateWebhookSecret } from "./queue-sign.js";
import { postgresSql, sqliteSql, type OwnSql, type PgPoolLike, type SqliteLike } from "./store-sql.js";

/**
 * Where `credit-management webhooks` and the worker keep webhook endpoints (docs/notifications.md,
 * "Webhooks"): beside the credit data in the same database, in a table (collection) of the
 * service's own, `credit_webhook_endpoints`, created when missing — like the API keys of `serve`
 * (src/serve/keys.ts), it is the service's, not the library's, so the `DbManager` contract and its
 * schema version do not carry it. A library user passes endpoints to `webhookQueue` directly.
 * Each row is the endpoint as JSON: its secrets are stored as given (signing needs them).
 * @public
 */
export interface WebhookEndpointRecord {
  /** The endpoint's id. */
  id: string;
  /** Where events are posted. */
  url: string;
  /** The newest first: each message is signed with all of them (several during a rotation). */
  secrets: string[];
  /** Event types it gets; null: all. */
  types: string[] | null;
  /** Whether events are posted to it. */
  enabled: boolean;
  /** Whether `http://` and private addresses are allowed. */
  development: boolean;
  /** What the endpoint is for. */
  description: string | null;
  /** When the endpoint was added. */
  createdAt: string;
  /** Why it was disabled (`410 Gone`, `by hand`), null while enabled. */
  disabledReason: string | null;
}

/** Where webhook endpoints are kept, for the console and `serve`. @public */
export interface WebhookEndpointStore {
  /** Creates the table (or collection) where missing. */
  init(): Promise<void>;
  /** Every endpoint. */
  list(): Promise<WebhookEndpointRecord[]>;
  /** The endpoint; null when there is none. */
  get(id: string): Promise<WebhookEndpointRecord | null>;
  /** Inserts or replaces the endpoint with that id. */
  put(record: WebhookEndpointRecord): Promise<void>;
  /** Whether there was one to remove. */
  remove(id: string): Promise<boolean>;
  /** Closes what the store opened. */
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

/** A new endpoint (`webhooks add`, `POST /admin/webhooks`): enabled, with one fresh secret. */
export function newEndpoint(
  fields: Pick<WebhookEndpointRecord, "url" | "types" | "development" | "description">,
): WebhookEndpointRecord {
  return {
    id: newEndpointId(),
    url: fields.url,
    secrets: [generateWebhookSecret()],
    types: fields.types,
    enabled: true,
    development: fields.development,
    description: fields.description,
    createdAt: new Date().toISOString(),
    disabledReason: null,
  };
}

/**
 * What is wrong with the endpoint as `webhookQueue` would take it (https unless development, a
 * known shape), or null; each caller throws it as its own error.
 */
export function endpointProblem(record: WebhookEndpointRecord): string | null {
  const r = WebhookEndpoint.safeParse(endpointOf(record));
  return r.success ? null : r.error.issues.map((i) => i.message).join("; ");
}

/**
 * The first of `types` not among `known` (the types `serve` publishes: `publishedTypes()`), or
 * null: an endpoint subscribed to a misspelt type would wait for events that never come, so
 * `webhooks add` and the admin routes refuse it (docs/notifications.md, "Webhooks").
 */
export function unknownType(types: readonly string[] | null | undefined, known: ReadonlySet<string>): string | null {
  return types?.find((t) => !known.has(t)) ?? null;
}

/**
 * The endpoint after a secret rotation: a new secret first, signed beside at most two older ones
 * until `dropOld` keeps only the newest (docs/notifications.md, "Webhooks").
 */
export function rotateSecret(record: WebhookEndpointRecord, dropOld: boolean): WebhookEndpointRecord {
  return {
    ...record,
    secrets: dropOld ? record.secrets.slice(0, 1) : [generateWebhookSecret(), ...record.secrets].slice(0, 3),
  };
}

const CREATE = (table: string) => `CREATE TABLE IF NOT EXISTS ${table} (id VARCHAR(64) PRIMARY KEY, doc TEXT NOT NULL)`;
const parseDoc = (doc: string) => JSON.parse(doc) as WebhookEndpointRecord;

/**
 * The endpoints in a SQL table, one implementation for SQLite and PostgreSQL: each statement is
 * written once, with `$n` parameters (own-sql.ts runs it on either).
 */
function sqlEndpointStore(db: OwnSql): WebhookEndpointStore {
  const table = db.table(ENDPOINT_TABLE);
  return {
    async init() {
      await db.prepare();
      await db.exec(CREATE(table));
    },
    async list() {
      return (await db.rows<{ doc: string }>(`SELECT doc FROM ${table} ORDER BY id`, [])).map((r) => parseDoc(r.doc));
    },
    async get(id) {
      const [row] = await db.rows<{ doc: string }>(`SELECT doc FROM ${table} WHERE id = $1`, [id]);
      return row === undefined ? null : parseDoc(row.doc);
    },
    async put(r) {
      await db.changes(
        `INSERT INTO ${table} (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc`,
        [r.id, JSON.stringify(r)],
      );
    },
    async remove(id) {
      return (await db.changes(`DELETE FROM ${table} WHERE id = $1`, [id])) > 0;
    },
    close: () => db.close(),
  };
}

/** Endpoints in the SQLite file of the store (its own connection). @public */
export function sqliteEndpointStore(db: SqliteLike): WebhookEndpointStore {
  return sqlEndpointStore(sqliteSql(db));
}

/** Endpoints in the PostgreSQL database (and schema) of the store. @public */
export function postgresEndpointStore(pool: PgPoolLike, schema: string | undefined): WebhookEndpointStore {
  return sqlEndpointStore(postgresSql(pool, schema));
}

/** The part of a MongoDB collection `mongoEndpointStore` uses. @public */
export interface MongoCollectionLike {
  /** Documents matching the filter. */
  find(filter: Record<string, unknown>): {
    sort(s: Record<string, 1>): { toArray(): Promise<Record<string, unknown>[]> };
  };
  /** The first document matching the filter. */
  findOne(filter: Record<string, unknown>): Promise<Record<string, unknown> | null>;
  /** Replaces (or, with `upsert`, inserts) a document. */
  replaceOne(
    filter: Record<string, unknown>,
    doc: Record<string, unknown>,
    options: { upsert: boolean },
  ): Promise<unknown>;
  /** Deletes a document. */
  deleteOne(filter: Record<string, unknown>): Promise<{ deletedCount: number }>;
}

/** Endpoints in the MongoDB database of the store (collection `credit_webhook_endpoints`, `_id` the endpoint's id). @public */
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

/** Endpoints in process memory (tests). @public */
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
