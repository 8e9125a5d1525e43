import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import {
  postgresSql,
  sqliteSql,
  type OwnSql,
  type PgPoolLike,
  type SqliteLike,
} from "../modules/webhooks/store-sql.js";

/**
 * API keys of `credit-management serve` (docs/service.md, "Secure it"). A key is
 * `cmk_<id>_<secret>`: the id (public: `keys list` and `keys revoke` name it) finds the row, the
 * row holds the SHA-256 of the whole key, compared in constant time. The secret is 32 random bytes,
 * so a plain hash is enough (nothing to guess; no password stretching needed).
 *
 * The keys live beside the credit data in the same database, in a table (collection) of the
 * service's own, `credit_api_keys`, created on start if missing: they are the service's, not the
 * library's, so the `DbManager` contract and its schema version do not carry them (a library user
 * never has them; docs/service.md says so). The table's layout grows by added nullable columns
 * only, each added on start when missing (`init`), so a table made by an earlier release reads on:
 * `spender` (added with spend limits) is null for the keys created before it.
 */
export interface ApiKeyRecord {
  id: string;
  /** SHA-256 of the whole key, hex. */
  hash: string;
  role: "admin" | "user";
  /** The account a user key acts on (null for admin keys). */
  userId: string | null;
  /**
   * The spender a user key spends as within its account (docs/teams-and-limits.md, "API keys per
   * member"): its spends are recorded under it and its limits apply. Null: none (admin keys, and
   * keys created before the column existed).
   */
  spender: string | null;
  name: string | null;
  createdAt: string;
  revokedAt: string | null;
}

export interface KeyStore {
  init(): Promise<void>;
  insert(record: ApiKeyRecord): Promise<void>;
  get(id: string): Promise<ApiKeyRecord | null>;
  list(): Promise<ApiKeyRecord[]>;
  /** Whether a key with that id was there and not yet revoked. */
  revoke(id: string, at: string): Promise<boolean>;
  close(): Promise<void>;
}

export const KEY_TABLE = "credit_api_keys";
const KEY_FORMAT = /^cmk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

/** The SHA-256 of a key, as bytes. */
const digestOf = (key: string): Buffer => createHash("sha256").update(key).digest();

/** The SHA-256 of a key, hex (what a record's `hash` holds). */
export const hashKey = (key: string): string => digestOf(key).toString("hex");

/** The id part of a key, or null when `key` does not have a key's shape. */
export function keyIdOf(key: string): string | null {
  const m = KEY_FORMAT.exec(key);
  return m === null ? null : (m[1] as string);
}

/** Whether `key` hashes to `digest` (a record's `hash`, as bytes), compared in constant time. */
export function keyMatches(digest: Buffer, key: string): boolean {
  const got = digestOf(key);
  return digest.length === got.length && timingSafeEqual(digest, got);
}

/** A new key and its record (the key itself is shown once and never stored). */
export function newKey(
  role: "admin" | "user",
  userId: string | null,
  name: string | null,
  spender: string | null = null,
): { key: string; record: ApiKeyRecord } {
  const id = randomBytes(8).toString("hex");
  const key = `cmk_${id}_${randomBytes(32).toString("base64url")}`;
  return {
    key,
    record: {
      id,
      hash: hashKey(key),
      role,
      userId,
      spender,
      name,
      createdAt: new Date().toISOString(),
      revokedAt: null,
    },
  };
}

interface Row {
  id: string;
  hash: string;
  role: string;
  user_id: string | null;
  /** Absent in a MongoDB document written before the field existed. */
  spender?: string | null;
  name: string | null;
  created_at: string;
  revoked_at: string | null;
}
const fromRow = (r: Row): ApiKeyRecord => ({
  id: r.id,
  hash: r.hash,
  role: r.role === "admin" ? "admin" : "user",
  userId: r.user_id,
  spender: r.spender ?? null,
  name: r.name,
  createdAt: r.created_at,
  revokedAt: r.revoked_at,
});
const COLUMNS = "id, hash, role, user_id, name, created_at, revoked_at, spender";
const CREATE = (table: string) =>
  `CREATE TABLE IF NOT EXISTS ${table} (id VARCHAR(32) PRIMARY KEY, hash VARCHAR(64) NOT NULL, role VARCHAR(8) NOT NULL, user_id VARCHAR(256), name VARCHAR(256), created_at VARCHAR(32) NOT NULL, revoked_at VARCHAR(32), spender VARCHAR(256))`;
/** The columns added since the table's first layout, each nullable, in the order they came. */
const ADDED_COLUMNS = [{ name: "spender", type: "VARCHAR(256)" }];

/** A record's values in the order of `COLUMNS` (the SQL stores' insert). */
const valuesOf = (r: ApiKeyRecord) => [r.id, r.hash, r.role, r.userId, r.name, r.createdAt, r.revokedAt, r.spender];

/**
 * The keys in a SQL table, one implementation for SQLite and PostgreSQL: each statement (the
 * revoke's guard `revoked_at IS NULL` among them) is written once, with `$n` parameters.
 */
function sqlKeyStore(db: OwnSql): KeyStore {
  const table = db.table(KEY_TABLE);
  return {
    async init() {
      await db.prepare();
      await db.exec(CREATE(table));
      // A table an earlier release made lacks the columns added since: add each that is missing.
      // Two services starting at once may both try; the loser's ALTER fails and the probe after it
      // finds the column.
      for (const column of ADDED_COLUMNS) {
        const has = () =>
          db.rows(`SELECT ${column.name} FROM ${table} WHERE 1 = 0`, []).then(
            () => true,
            () => false,
          );
        if (await has()) continue;
        try {
          await db.exec(`ALTER TABLE ${table} ADD COLUMN ${column.name} ${column.type}`);
        } catch (error) {
          if (!(await has())) throw error;
        }
      }
    },
    async insert(r) {
      await db.changes(`INSERT INTO ${table} (${COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, valuesOf(r));
    },
    async get(id) {
      const rows = await db.rows<Row>(`SELECT ${COLUMNS} FROM ${table} WHERE id = $1`, [id]);
      return rows.length === 0 ? null : fromRow(rows[0] as Row);
    },
    async list() {
      return (await db.rows<Row>(`SELECT ${COLUMNS} FROM ${table} ORDER BY created_at, id`, [])).map(fromRow);
    },
    async revoke(id, at) {
      const sql = `UPDATE ${table} SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL`;
      return (await db.changes(sql, [at, id])) > 0;
    },
    close: () => db.close(),
  };
}

/** Keys in the SQLite file of the store (its own connection; WAL lets both write). */
export function sqliteKeyStore(db: SqliteLike): KeyStore {
  return sqlKeyStore(sqliteSql(db));
}

/** Keys in the PostgreSQL database (and schema) of the store. */
export function postgresKeyStore(pool: PgPoolLike, schema: string | undefined): KeyStore {
  return sqlKeyStore(postgresSql(pool, schema));
}

interface MongoCollectionLike {
  createIndex(spec: Record<string, 1>, options?: Record<string, unknown>): Promise<unknown>;
  insertOne(doc: Record<string, unknown>): Promise<unknown>;
  findOne(filter: Record<string, unknown>): Promise<Record<string, unknown> | null>;
  find(filter: Record<string, unknown>): {
    sort(s: Record<string, 1>): { toArray(): Promise<Record<string, unknown>[]> };
  };
  updateOne(filter: Record<string, unknown>, update: Record<string, unknown>): Promise<{ modifiedCount: number }>;
}

/** Keys in the MongoDB database of the store (collection `credit_api_keys`). */
export function mongoKeyStore(collection: MongoCollectionLike, close: () => Promise<void>): KeyStore {
  const fromDoc = (d: Record<string, unknown>): ApiKeyRecord => fromRow({ ...d, id: d._id as string } as Row);
  return {
    async init() {
      // _id is the key id: unique already.
    },
    async insert(r) {
      await collection.insertOne({
        _id: r.id,
        hash: r.hash,
        role: r.role,
        user_id: r.userId,
        spender: r.spender,
        name: r.name,
        created_at: r.createdAt,
        revoked_at: r.revokedAt,
      });
    },
    async get(id) {
      const d = await collection.findOne({ _id: id });
      return d === null ? null : fromDoc(d);
    },
    async list() {
      return (await collection.find({}).sort({ created_at: 1 }).toArray()).map(fromDoc);
    },
    async revoke(id, at) {
      return (
        (await collection.updateOne({ _id: id, revoked_at: null }, { $set: { revoked_at: at } })).modifiedCount > 0
      );
    },
    close,
  };
}
