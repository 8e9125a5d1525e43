import type * as PgModule from "pg";
import type { Pool, PoolClient, PoolConfig, QueryResult } from "pg";
import { ConfigurationError, ConflictError, StorageError } from "../../errors.js";
import type { Account, Grant, JournalEntry, LedgerEntry, Reservation } from "../../models/index.js";
import { type Column, snakeCase } from "../../schema/columns.js";
import { decodeRow } from "../../schema/codec.js";
import type { SqlTable } from "../../schema/sql.js";
import type {
  Changes,
  DbManager,
  DbTransaction,
  JournalQuery,
  LedgerQuery,
  LoadRequest,
  LoadedState,
  ScanCursor,
} from "../types.js";
import { GUARD_MARKER, PostgresSql, SCHEMA_VERSION, type Statement, executeText, prepareText } from "./sql.js";

export { SCHEMA_VERSION } from "./sql.js";

export interface PostgresDbManagerOptions {
  /** An existing pool. `close()` leaves it open: it is yours. */
  pool?: Pool;
  /** Creates a pool (`pg` must be installed); `close()` ends it. */
  connectionString?: string;
  /** More settings of the pool created from `connectionString` (size, timeouts, ssl, …). */
  poolConfig?: Omit<PoolConfig, "connectionString">;
  /** PostgreSQL schema of the tables (created by `init()`). Default: the connection's search_path. */
  schema?: string;
  /** Put in front of every table and index name, e.g. `"credits_"`. */
  tablePrefix?: string;
  /**
   * Prepare statements once per connection (default true). Set false behind a pooler that does
   * not keep sessions (PgBouncer in transaction mode): every statement is then sent in full.
   */
  preparedStatements?: boolean;
  /**
   * Attempts of a unit of work that meets a serialization failure, a deadlock or a concurrent
   * first write of the same new account before it fails with `ConflictError`. Default 10.
   */
  maxAttempts?: number;
}

/** Thrown inside an attempt when the unit of work should run again. */
class Retry extends Error {
  constructor(readonly reason: unknown) {
    super("retry");
  }
}

/** Statements each pooled connection has prepared (shared by every manager on a pool). */
const preparedOn = new WeakMap<object, Set<string>>();

/** SQLSTATEs after which the whole unit of work runs again. */
const RETRY_CODES = new Set(["40001", "40P01", "23505"]);

/**
 * The PostgreSQL store, on `pg`.
 *
 * A unit of work is one transaction that starts by locking the account row
 * (`SELECT … FOR UPDATE`), so units of work on one account run one after another across every
 * process, while different accounts run in parallel. It costs two round trips:
 *
 *  1. `BEGIN; EXECUTE lock; EXECUTE state` in one message: the lock, then (in a statement with a
 *     fresh READ COMMITTED snapshot, so it sees what the previous lock holder committed) the open
 *     grants, active holds and the idempotent entry as JSON;
 *  2. `EXECUTE save; COMMIT` in one message: one statement writes everything (a CTE of inserts
 *     and updates from JSON arrays) and fails unless the account row passed its `seq` guard.
 *
 * `save()` therefore queues the changes and they are written when the unit of work returns; a
 * unit of work that throws after `save()` writes nothing. Unique violations (two first writes of
 * a new account, an idempotency key), serialization failures and deadlocks run the unit of work
 * again with jittered backoff; there `load()` finds the key and the service answers with the first
 * result. Other database errors surface as `StorageError` with the driver's error as `cause`.
 */
export class PostgresDbManager implements DbManager {
  readonly name = "postgres";
  readonly capabilities = { multiProcess: true } as const;
  /** The SQL this manager runs (table names, DDL, statements). */
  readonly sql: PostgresSql;
  private pool: Pool | null;
  private poolPromise: Promise<Pool> | null = null;
  private readonly ownsPool: boolean;
  private readonly options: PostgresDbManagerOptions;
  private readonly maxAttempts: number;
  /** @internal */
  readonly prepared: boolean;
  private closed = false;
  /** Round trips to the server (for benchmarks and tests). */
  roundTrips = 0;

  constructor(options: PostgresDbManagerOptions) {
    if ((options.pool === undefined) === (options.connectionString === undefined)) {
      throw new ConfigurationError("[credit-management] [postgres] pass exactly one of `pool` or `connectionString`");
    }
    try {
      this.sql = new PostgresSql({ schema: options.schema, prefix: options.tablePrefix });
    } catch (error) {
      throw new ConfigurationError(`[credit-management] [postgres] ${(error as Error).message}`, error);
    }
    this.options = options;
    this.pool = options.pool ?? null;
    this.ownsPool = options.pool === undefined;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 10);
    this.prepared = options.preparedStatements !== false;
  }

  /**
   * Creates the schema, tables and indexes (the schema generator's DDL) when the store has none or
   * an older version, under an advisory lock so several processes may call it at once.
   */
  async init(): Promise<void> {
    const client = await this.connect();
    let broken = false;
    try {
      await client.query("BEGIN");
      await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [this.sql.lockKey]);
      if (this.sql.createSchema !== null) await client.query(this.sql.createSchema);
      await client.query(
        `CREATE TABLE IF NOT EXISTS ${this.sql.versionTable} (component TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
      );
      const found = await client.query<{ version: number }>(`SELECT version FROM ${this.sql.versionTable} WHERE component = 'credit-management'`);
      const version = found.rows[0]?.version ?? 0;
      if (version > SCHEMA_VERSION) {
        throw new ConfigurationError(
          `[credit-management] [postgres] the store's schema is version ${version}, newer than this release understands (${SCHEMA_VERSION}): upgrade credit-management`,
        );
      }
      if (version < SCHEMA_VERSION) {
        // Version 1 is the generator's DDL (idempotent). Later versions add their migrations here.
        await client.query(this.sql.ddl);
        await client.query(
          `INSERT INTO ${this.sql.versionTable} (component, version) VALUES ('credit-management', $1) ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version, updated_at = now()`,
          [SCHEMA_VERSION],
        );
      }
      await client.query("COMMIT");
    } catch (error) {
      broken = await rollback(client);
      if (error instanceof ConfigurationError) throw error;
      throw storageError("init", error);
    } finally {
      client.release(broken);
    }
  }

  /** Ends the pool if this manager created it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (!this.ownsPool) return;
    const pool = this.pool ?? (this.poolPromise ? await this.poolPromise.catch(() => null) : null);
    await pool?.end();
  }

  async transaction<T>(userId: string, fn: (tx: DbTransaction) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.connect();
      let broken = false;
      const tx = new PostgresTransaction(this, client, userId);
      try {
        let result: T;
        try {
          result = await fn(tx);
        } catch (error) {
          if (tx.open) broken = await rollback(client);
          tx.open = false;
          throw error;
        }
        await tx.finish();
        return result;
      } catch (error) {
        if (tx.open) broken = await rollback(client);
        if (tx.resync && !broken) await this.resyncPrepared(client);
        if (!(error instanceof Retry)) throw error;
        if (isConnectionLevel(error.reason)) broken = true;
        if (attempt >= this.maxAttempts) {
          throw new ConflictError(
            `[credit-management] [postgres] gave up on a unit of work on account ${userId} after ${attempt} conflicting attempts`,
            { userId, attempts: attempt },
            error.reason,
          );
        }
        await sleep(backoff(attempt));
      } finally {
        client.release(broken);
      }
    }
  }

  async getAccount(userId: string): Promise<Account | null> {
    const rows = await this.read("getAccount", `${this.sql.select("accounts")} WHERE user_id = $1`, [userId]);
    return rows[0] === undefined ? null : this.decode("accounts", rows[0]);
  }

  async getGrant(grantId: string): Promise<Grant | null> {
    const rows = await this.read("getGrant", `${this.sql.select("grants")} WHERE id = $1`, [grantId]);
    return rows[0] === undefined ? null : this.decode("grants", rows[0]);
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const rows = await this.read("getReservation", `${this.sql.select("reservations")} WHERE id = $1`, [reservationId]);
    return rows[0] === undefined ? null : this.decode("reservations", rows[0]);
  }

  async listGrants(userId: string, options?: { includeInactive?: boolean }): Promise<Grant[]> {
    const where = options?.includeInactive ? "" : " AND remaining > 0 AND closed_at IS NULL";
    const rows = await this.read("listGrants", `${this.sql.select("grants")} WHERE user_id = $1${where} ORDER BY created_at, id`, [userId]);
    return rows.map((r) => this.decode<Grant>("grants", r));
  }

  async listReservations(userId: string, options?: { status?: Reservation["status"] }): Promise<Reservation[]> {
    const params: unknown[] = [userId];
    let where = "";
    if (options?.status !== undefined) {
      params.push(options.status);
      where = " AND status = $2";
    }
    const rows = await this.read("listReservations", `${this.sql.select("reservations")} WHERE user_id = $1${where} ORDER BY created_at, id`, params);
    return rows.map((r) => this.decode<Reservation>("reservations", r));
  }

  async listJournal(userId: string, query: JournalQuery): Promise<JournalEntry[]> {
    const params: unknown[] = [userId];
    const where = ["user_id = $1"];
    const add = (sql: (n: number) => string, value: unknown) => {
      params.push(value);
      where.push(sql(params.length));
    };
    if (query.order === "desc" && query.beforeSeq !== undefined) add((n) => `seq < $${n}`, query.beforeSeq);
    if (query.order === "asc" && query.afterSeq !== undefined) add((n) => `seq > $${n}`, query.afterSeq);
    if (query.types !== undefined) add((n) => `type = ANY($${n}::text[])`, [...query.types]);
    if (query.from !== undefined) add((n) => `created_at >= $${n}`, query.from);
    if (query.to !== undefined) add((n) => `created_at < $${n}`, query.to);
    params.push(query.limit);
    const text = `${this.sql.select("journal")} WHERE ${where.join(" AND ")} ORDER BY seq ${query.order === "desc" ? "DESC" : "ASC"} LIMIT $${params.length}`;
    const rows = await this.read("listJournal", text, params);
    return rows.map((r) => this.decode<JournalEntry>("journal", r));
  }

  async findDueGrants(asOf: Date, limit: number, after?: ScanCursor): Promise<Grant[]> {
    const params: unknown[] = [asOf];
    let cursor = "";
    if (after !== undefined) {
      params.push(after.expiresAt, after.id);
      cursor = " AND (expires_at, id) > ($2, $3)";
    }
    params.push(limit);
    const text =
      `${this.sql.select("grants")} WHERE remaining > 0 AND closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1${cursor} ` +
      `ORDER BY expires_at, id LIMIT $${params.length}`;
    const rows = await this.read("findDueGrants", text, params);
    return rows.map((r) => this.decode<Grant>("grants", r));
  }

  async findExpiredReservations(asOf: Date, limit: number, after?: ScanCursor): Promise<Reservation[]> {
    const params: unknown[] = [asOf];
    let cursor = "";
    if (after !== undefined) {
      params.push(after.expiresAt, after.id);
      cursor = " AND (expires_at, id) > ($2, $3)";
    }
    params.push(limit);
    const text =
      `${this.sql.select("reservations")} WHERE status = 'active' AND expires_at <= $1${cursor} ` +
      `ORDER BY expires_at, id LIMIT $${params.length}`;
    const rows = await this.read("findExpiredReservations", text, params);
    return rows.map((r) => this.decode<Reservation>("reservations", r));
  }

  async insertLedgerEntry(entry: LedgerEntry): Promise<void> {
    const t = this.sql.tables.ledger;
    const columns = t.columns.map((c) => `"${c.name}"`).join(", ");
    const text = `INSERT INTO ${t.qualified} (${columns}) SELECT ${columns} FROM json_populate_record(NULL::${t.qualified}, $1::json)`;
    await this.read("insertLedgerEntry", text, [JSON.stringify(toRow(t.columns, entry))]);
  }

  async listLedgerEntries(query: LedgerQuery): Promise<LedgerEntry[]> {
    const params: unknown[] = [];
    const where: string[] = [];
    const add = (column: string, op: string, value: unknown) => {
      params.push(value);
      where.push(`${column} ${op} $${params.length}`);
    };
    if (query.eventType !== undefined) add("event_type", "=", query.eventType);
    if (query.userId !== undefined) add("user_id", "=", query.userId);
    if (query.before !== undefined) add("created_at", "<", query.before);
    params.push(query.limit);
    const text =
      `${this.sql.select("ledger")}${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ` +
      `ORDER BY created_at DESC, id DESC LIMIT $${params.length}`;
    const rows = await this.read("listLedgerEntries", text, params);
    return rows.map((r) => this.decode<LedgerEntry>("ledger", r));
  }

  // -----------------------------------------------------------------------------------------------

  /** @internal */
  decode<T>(key: keyof PostgresSql["tables"], row: Record<string, unknown>): T {
    return decodeRow<T>(this.sql.tables[key].columns, row);
  }

  /** @internal A pooled connection; a failure to get one is a StorageError. */
  async connect(): Promise<PoolClient> {
    if (this.closed) throw new StorageError("[credit-management] [postgres] the store is closed");
    try {
      const pool = this.pool ?? (await this.createPool());
      return await pool.connect();
    } catch (error) {
      throw storageError("connect", error);
    }
  }

  /** @internal Runs one statement outside a unit of work (prepared by name on each connection). */
  async read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    const client = await this.connect();
    let broken = false;
    try {
      this.roundTrips++;
      const result = await client.query(this.prepared ? { name: statementName(text), text, values: params } : { text, values: params });
      return result.rows as Record<string, unknown>[];
    } catch (error) {
      broken = isConnectionLevel(error);
      throw storageError(what, error);
    } finally {
      client.release(broken);
    }
  }

  /**
   * @internal `PREPARE` text for the statements `client` lacks, to put in front of the message
   * that runs them (prepared statements outlive a rollback, so this costs no round trip).
   */
  prepareFor(client: PoolClient, statements: readonly Statement[]): { text: string; names: string[] } {
    if (!this.prepared) return { text: "", names: [] };
    const done = preparedOn.get(client);
    const missing = statements.filter((s) => !done?.has(s.name));
    return { text: missing.map((s) => `${prepareText(s)}; `).join(""), names: missing.map((s) => s.name) };
  }

  /** @internal Records statements as prepared on `client` after their message succeeded. */
  markPrepared(client: PoolClient, names: readonly string[]): void {
    if (names.length === 0) return;
    let done = preparedOn.get(client);
    if (done === undefined) {
      done = new Set();
      preparedOn.set(client, done);
    }
    for (const n of names) done.add(n);
  }

  /** @internal After a failed message that carried PREPAREs: learn which exist now. */
  async resyncPrepared(client: PoolClient): Promise<void> {
    try {
      this.roundTrips++;
      const r = await client.query<{ name: string }>("SELECT name FROM pg_prepared_statements WHERE name LIKE 'cm\\_%'");
      preparedOn.set(client, new Set(r.rows.map((row) => row.name)));
    } catch {
      preparedOn.delete(client);
    }
  }

  private createPool(): Promise<Pool> {
    this.poolPromise ??= (async () => {
      let pg: typeof PgModule;
      try {
        const mod = (await import("pg")) as typeof PgModule & { default?: typeof PgModule };
        pg = mod.default ?? mod;
      } catch (error) {
        throw new ConfigurationError('[credit-management] [postgres] install the "pg" package to use PostgresDbManager', error);
      }
      const pool = new pg.Pool({ ...this.options.poolConfig, connectionString: this.options.connectionString });
      // An idle connection that dies must not crash the process; the next checkout reconnects.
      pool.on("error", () => {});
      this.pool = pool;
      return pool;
    })();
    return this.poolPromise;
  }
}

class PostgresTransaction implements DbTransaction {
  /** A transaction is open on the connection (BEGIN sent, neither COMMIT nor ROLLBACK yet). */
  open = false;
  private loaded: { seq: number | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } | null = null;
  /** Rows as read in this unit of work: updates write only the columns that differ from them. */
  private readonly originals: { account: Account | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } = {
    account: null,
    grants: new Map(),
    holds: new Map(),
  };
  private pending: Changes | null = null;
  private saved = false;
  /** A message with PREPAREs failed: the connection's prepared statements must be listed again. */
  resync = false;

  constructor(
    private readonly db: PostgresDbManager,
    private readonly client: PoolClient,
    readonly userId: string,
  ) {}

  async load(request?: LoadRequest): Promise<LoadedState> {
    const { sql } = this.db;
    const key = request?.idempotencyKey ?? null;
    const begin = this.open ? "" : "BEGIN ISOLATION LEVEL READ COMMITTED; ";
    this.open = true;
    const text = (prepares: string) =>
      `${prepares}${begin}${executeText(sql.lock, [this.userId], this.db.prepared)}; ${executeText(sql.state, [this.userId, key], this.db.prepared)}`;
    const [row, state] = await this.message("load", [sql.lock, sql.state], text, 2);
    const reads = (state ?? {}) as { grants?: string | null; holds?: string | null; idem?: string | null };
    const account = row === undefined ? null : this.db.decode<Account>("accounts", row);
    const grants = parseRows<Grant>(sql.tables.grants, reads.grants);
    const reservations = parseRows<Reservation>(sql.tables.reservations, reads.holds);
    const idem = reads.idem ? decodeRow<JournalEntry>(sql.tables.journal.columns, JSON.parse(reads.idem)) : null;
    this.loaded = {
      seq: account?.seq ?? null,
      grants: new Map(grants.map((g) => [g.id, g])),
      holds: new Map(reservations.map((r) => [r.id, r])),
    };
    this.originals.account = account;
    for (const g of grants) this.originals.grants.set(g.id, g);
    for (const r of reservations) this.originals.holds.set(r.id, r);
    return { account, grants: [...grants], reservations: [...reservations], idempotent: idem };
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    // Under the account lock the loaded open grants are current: answer from them when we can.
    const loaded = this.loaded?.grants;
    if (loaded !== undefined && grantIds.every((id) => loaded.has(id))) return grantIds.map((id) => loaded.get(id) as Grant);
    const rows = await this.query(
      "getGrants",
      `${this.db.sql.select("grants")} WHERE user_id = $1 AND id = ANY($2::text[])`,
      [this.userId, [...grantIds]],
    );
    const byId = new Map(rows.map((r) => [r.id as string, this.db.decode<Grant>("grants", r)]));
    for (const g of byId.values()) if (!this.originals.grants.has(g.id)) this.originals.grants.set(g.id, g);
    return grantIds.flatMap((id) => byId.get(id) ?? []);
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const held = this.loaded?.holds.get(reservationId);
    if (held !== undefined) return held;
    const rows = await this.query(
      "getReservation",
      `${this.db.sql.select("reservations")} WHERE user_id = $1 AND id = $2`,
      [this.userId, reservationId],
    );
    if (rows[0] === undefined) return null;
    const r = this.db.decode<Reservation>("reservations", rows[0]);
    if (!this.originals.holds.has(r.id)) this.originals.holds.set(r.id, r);
    return r;
  }

  async save(changes: Changes): Promise<void> {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    if (this.loaded !== null && changes.previousSeq !== this.loaded.seq) {
      throw new ConflictError(`account ${this.userId} changed during the unit of work`, { userId: this.userId });
    }
    const rows: Array<{ userId: string }> = [
      changes.account,
      ...changes.insertGrants,
      ...changes.updateGrants,
      ...changes.insertReservations,
      ...changes.updateReservations,
      ...changes.entries,
    ];
    if (rows.some((o) => o.userId !== this.userId)) {
      throw new Error(`save() of account ${this.userId} got a row of another account`);
    }
    this.pending = changes;
  }

  /** Writes the queued changes and commits (one round trip), or ends a read-only unit of work. */
  async finish(): Promise<void> {
    const changes = this.pending;
    if (changes === null) {
      if (this.open) {
        this.db.roundTrips++;
        await this.run("rollback", () => this.client.query("ROLLBACK"));
        this.open = false;
      }
      return;
    }
    const { sql } = this.db;
    const { tables } = sql;
    const originals = this.originals;
    const accountColumns = changes.previousSeq === null ? null : changedColumns(tables.accounts, [changes.account], () => originals.account);
    const grantColumns = changes.updateGrants.length === 0 ? null : changedColumns(tables.grants, changes.updateGrants, (g) => originals.grants.get(g.id));
    const reservationColumns =
      changes.updateReservations.length === 0 ? null : changedColumns(tables.reservations, changes.updateReservations, (r) => originals.holds.get(r.id));
    const payload: Record<string, unknown> = {
      a: accountColumns === null ? toRow(tables.accounts.columns, changes.account) : pick(tables.accounts, accountColumns, changes.account),
    };
    if (changes.previousSeq !== null) payload.prev = changes.previousSeq;
    if (changes.insertGrants.length > 0) payload.ig = changes.insertGrants.map((g) => toRow(tables.grants.columns, g));
    if (grantColumns !== null) payload.ug = changes.updateGrants.map((g) => pick(tables.grants, ["id", ...grantColumns], g));
    if (changes.insertReservations.length > 0) payload.ir = changes.insertReservations.map((r) => toRow(tables.reservations.columns, r));
    if (reservationColumns !== null) payload.ur = changes.updateReservations.map((r) => pick(tables.reservations, ["id", ...reservationColumns], r));
    if (changes.entries.length > 0) payload.e = changes.entries.map((e) => toRow(tables.journal.columns, e));
    const save = sql.save({
      accountColumns,
      insertGrants: changes.insertGrants.length > 0,
      grantColumns,
      insertReservations: changes.insertReservations.length > 0,
      reservationColumns,
      entries: changes.entries.length > 0,
    });
    // save() without load(): the write itself takes the row lock; its guard still applies.
    const begin = this.open ? "" : "BEGIN ISOLATION LEVEL READ COMMITTED; ";
    this.open = true;
    await this.message("save", [save], (p) => `${p}${begin}${executeText(save, [this.userId, JSON.stringify(payload)], this.db.prepared)}; COMMIT`, 2);
    this.open = false;
  }

  /**
   * Sends one simple-protocol message of several statements (with the PREPAREs the connection
   * lacks in front) and returns the first row of each of the last `count` statements.
   */
  private async message(
    what: string,
    statements: readonly Statement[],
    text: (prepares: string) => string,
    count = 1,
  ): Promise<Array<Record<string, unknown> | undefined>> {
    const prepare = this.db.prepareFor(this.client, statements);
    return this.run(what, async () => {
      this.db.roundTrips++;
      let result: QueryResult | QueryResult[];
      try {
        result = (await this.client.query(text(prepare.text))) as unknown as QueryResult | QueryResult[];
      } catch (error) {
        // Which PREPAREs ran is learnt after the rollback (an aborted transaction answers nothing).
        if (prepare.names.length > 0) this.resync = true;
        throw error;
      }
      this.db.markPrepared(this.client, prepare.names);
      const list = Array.isArray(result) ? result : [result];
      return list.slice(list.length - count).map((r) => r.rows[0] as Record<string, unknown> | undefined);
    });
  }

  private async query(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    return this.run(what, async () => {
      this.db.roundTrips++;
      const r = await this.client.query(this.db.prepared ? { name: statementName(text), text, values: params } : { text, values: params });
      return r.rows as Record<string, unknown>[];
    });
  }

  /** Maps driver errors: conflicts to `Retry`, the rest to `StorageError`. */
  private async run<T>(what: string, body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code !== undefined && RETRY_CODES.has(code)) throw new Retry(error);
      if (code === "22P02" && String((error as Error).message).includes(GUARD_MARKER)) throw new Retry(error);
      if (code === "26000" || code === "42P05") {
        // Our record of the connection's prepared statements was wrong (someone ran DISCARD or
        // DEALLOCATE, or a failed message left it unsure): list them again and retry.
        this.resync = true;
        throw new Retry(error);
      }
      throw storageError(what, error);
    }
  }
}

/** A model object as the JSON object `json_populate_record(set)` reads (column names; dates as ISO text). */
function toRow(columns: readonly Column[], value: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const v = value as Record<string, unknown>;
  for (const c of columns) out[c.name] = v[c.field] ?? null;
  return out;
}

/** Only `names` of a model object, by column name. */
function pick(table: SqlTable, names: readonly string[], value: object): Record<string, unknown> {
  const v = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const c of table.columns) if (names.includes(c.name)) out[c.name] = v[c.field] ?? null;
  return out;
}

/**
 * The columns (in table order) in which `rows` differ from the rows as read; every non-key
 * column when a row was not read in this unit of work.
 */
function changedColumns<T extends object>(table: SqlTable, rows: readonly T[], original: (row: T) => object | null | undefined): string[] {
  const candidates = updatable(table);
  const changed = new Set<string>();
  for (const row of rows) {
    const before = original(row) as Record<string, unknown> | null | undefined;
    const after = row as Record<string, unknown>;
    for (const c of candidates) {
      if (changed.has(c.name)) continue;
      if (before === null || before === undefined || !sameValue(before[c.field], after[c.field])) changed.add(c.name);
    }
  }
  const names = candidates.filter((c) => changed.has(c.name)).map((c) => c.name);
  return names.length > 0 ? names : candidates.map((c) => c.name);
}

const updatableColumns = new WeakMap<SqlTable, Column[]>();
/** Columns an update may write: not the key, the owner or the creation time. */
function updatable(table: SqlTable): Column[] {
  let list = updatableColumns.get(table);
  if (list === undefined) {
    const keys = new Set(["user_id", "created_at", ...table.spec.primaryKey.map(snakeCase)]);
    list = table.columns.filter((c) => !keys.has(c.name));
    updatableColumns.set(table, list);
  }
  return list;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a instanceof Date && b instanceof Date) return a.getTime() === b.getTime();
  return false;
}

function parseRows<T>(table: SqlTable, json: string | null | undefined): T[] {
  if (!json) return [];
  return (JSON.parse(json) as Record<string, unknown>[]).map((row) => decodeRow<T>(table.columns, row));
}

const names = new Map<string, string>();
/** A stable, short prepared-statement name for a query text. */
function statementName(text: string): string {
  let name = names.get(text);
  if (name === undefined) {
    name = `cmq_${names.size.toString(36)}_${hash(text)}`;
    names.set(text, name);
  }
  return name;
}

function hash(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(36);
}

/** Rolls back an open transaction; true when the connection should be thrown away. */
async function rollback(client: PoolClient): Promise<boolean> {
  try {
    await client.query("ROLLBACK");
    return false;
  } catch {
    return true;
  }
}

/** Errors that leave the connection unusable (no SQLSTATE from the server, or class 08/57). */
function isConnectionLevel(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code !== "string" || /^(08|57)/.test(code) || !/^[0-9A-Z]{5}$/.test(code);
}

function storageError(what: string, error: unknown): StorageError {
  if (error instanceof StorageError) return error;
  const e = error as { message?: string; code?: string };
  const code = typeof e.code === "string" ? ` (${e.code})` : "";
  return new StorageError(`[credit-management] [postgres] ${what} failed${code}: ${e.message ?? String(error)}`, error);
}

function backoff(attempt: number): number {
  const cap = Math.min(250, 4 * 2 ** attempt);
  return cap / 2 + Math.random() * (cap / 2);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}


