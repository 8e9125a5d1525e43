import { ConfigurationError, ConflictError } from "../../errors.js";
import type {
  Account,
  Grant,
  JournalEntry,
  LedgerEntry,
  Notification,
  Plan,
  Reservation,
  Subscription,
} from "../../models/index.js";
import type { Payment, Promo, PromoClaim } from "../../models/index.js";
import { SYSTEM_KEY_PREFIX } from "../../models/common.js";
import { decodeRow, encodeRow } from "../../schema/codec.js";
import { upgradeStatements } from "../../schema/migrations.js";
import {
  SCHEMA_COMPONENT,
  SCHEMA_VERSION,
  type SqlTable,
  generateSql,
  sqlTables,
  versionTableName,
} from "../../schema/sql.js";
import type { TableKey } from "../../schema/tables.js";
import { type Attempt, DefinedStore, type StoreDefinition } from "../store/define.js";
import { origin } from "../store/errors.js";
import type { Changes, JournalQuery, LedgerQuery, LoadRequest, LoadedState, ScanCursor } from "../types.js";
import type { ClaimQuery, NotificationUpdate } from "../types-notifications.js";
import type { SubscriptionCursor } from "../types-subscriptions.js";

export { SCHEMA_VERSION } from "../../schema/sql.js";

/**
 * The parts of a `better-sqlite3` database this store uses, as a structural type of its own (the
 * published declarations never import `better-sqlite3`'s types). A `new Database(file)` fits it.
 */
export interface SqliteDatabase {
  prepare(sql: string): SqliteStatement;
  exec(sql: string): unknown;
  pragma(source: string, options?: { simple?: boolean }): unknown;
  transaction<F extends () => unknown>(fn: F): { (): ReturnType<F>; immediate(): ReturnType<F> };
  close(): unknown;
}

/** A prepared statement of `SqliteDatabase`. */
export interface SqliteStatement {
  all(...params: unknown[]): unknown[];
  get(...params: unknown[]): unknown;
  run(...params: unknown[]): { changes: number };
}

type Database = SqliteDatabase;

export interface SqliteDbManagerOptions {
  /** The database file (created if missing; `":memory:"`: a private in-memory database). `better-sqlite3` must be installed. */
  filename?: string;
  /** An open `better-sqlite3` database instead: `close()` leaves it open. */
  database?: Database;
  /** Put in front of every table and index name, e.g. `"credits_"`. */
  tablePrefix?: string;
  /** How long a write waits for another process's write lock before it counts as a conflict, in ms. Default 5,000. */
  busyTimeoutMs?: number;
  /** Attempts of a unit of work that meets conflicts (another process wrote the account) before `ConflictError`. Default 10. */
  maxAttempts?: number;
  /** `init()` creates and upgrades the schema (default true); `false`: it only checks the version. */
  migrate?: boolean;
}

type Row = Record<string, unknown>;
type Param = string | number | bigint | Buffer | null;

/** A value as SQLite stores it: dates as ISO-8601 text in UTC (which sorts chronologically), booleans as 0/1. */
const param = (v: unknown): Param =>
  v instanceof Date ? v.toISOString() : typeof v === "boolean" ? (v ? 1 : 0) : ((v as Param) ?? null);

/** The connection, its statements and the tables (the schema generator's SQLite DDL). */
class Sqlite {
  db: Database | null;
  readonly t: Record<TableKey, SqlTable>;
  private readonly statements = new Map<string, SqliteStatement>();

  constructor(private readonly options: SqliteDbManagerOptions) {
    this.db = options.database ?? null;
    this.t = Object.fromEntries(
      sqlTables({ dialect: "sqlite", prefix: options.tablePrefix }).map((t) => [t.key, t]),
    ) as Record<TableKey, SqlTable>;
  }

  async open(): Promise<Database> {
    if (this.db !== null) return this.db;
    type Driver = new (filename: string) => Database;
    let Driver: Driver;
    try {
      const mod = (await import("better-sqlite3")) as unknown as { default?: Driver } & Driver;
      Driver = mod.default ?? mod;
    } catch (error) {
      throw new ConfigurationError(
        origin("sqlite", 'install the "better-sqlite3" package to use SqliteDbManager'),
        error,
      );
    }
    this.db = new Driver(this.options.filename ?? ":memory:");
    return this.db;
  }

  private conn(): Database {
    if (this.db === null) throw new ConfigurationError(origin("sqlite", "call init() first"));
    return this.db;
  }

  private st(text: string): SqliteStatement {
    let s = this.statements.get(text);
    if (s === undefined) {
      s = this.conn().prepare(text);
      this.statements.set(text, s);
    }
    return s;
  }

  all(text: string, params: readonly unknown[] = []): Row[] {
    return this.st(text).all(...params.map(param)) as Row[];
  }
  run(text: string, params: readonly unknown[] = []): number {
    return this.st(text).run(...params.map(param)).changes;
  }
  /** Runs `fn` in one transaction (`immediate`: takes the write lock at once). */
  tx<T>(fn: () => T, immediate = false): T {
    const t = this.conn().transaction(fn);
    return immediate ? t.immediate() : t();
  }

  decode<T>(key: TableKey, row: Row | undefined): T | null {
    return row === undefined ? null : decodeRow<T>(this.t[key].columns, row);
  }
  list<T>(key: TableKey, text: string, params: readonly unknown[] = []): T[] {
    return this.all(`SELECT * FROM ${this.t[key].qualified} ${text}`, params).map((r) =>
      decodeRow<T>(this.t[key].columns, r),
    );
  }
  one<T>(key: TableKey, text: string, params: readonly unknown[] = []): T | null {
    return this.decode<T>(key, this.all(`SELECT * FROM ${this.t[key].qualified} ${text} LIMIT 1`, params)[0]);
  }
  insert(key: TableKey, rows: readonly object[], orIgnore = false): number {
    const t = this.t[key];
    const text = `INSERT ${orIgnore ? "OR IGNORE " : ""}INTO ${t.qualified} (${t.columns.map((c) => `"${c.name}"`).join(", ")}) VALUES (${t.columns.map(() => "?").join(", ")})`;
    let n = 0;
    for (const row of rows)
      n += this.run(text, Object.values(encodeRow(t.columns, row as Row, { dates: "iso", booleans: "int" })));
    return n;
  }
  /** Replaces a row found by its primary key (and `guard`, e.g. " AND version = ?"): false when none matched. */
  update(key: TableKey, row: object, guard = "", guardParams: readonly unknown[] = []): boolean {
    const t = this.t[key];
    const keys = new Set(t.spec.primaryKey.map((f) => t.columns.find((c) => c.field === f)?.name));
    const cols = t.columns.filter((c) => !keys.has(c.name));
    const values = encodeRow(t.columns, row as Row, { dates: "iso", booleans: "int" });
    const where = [...keys].map((k) => `"${k}" = ?`).join(" AND ");
    const text = `UPDATE ${t.qualified} SET ${cols.map((c) => `"${c.name}" = ?`).join(", ")} WHERE ${where}${guard}`;
    return (
      this.run(text, [
        ...cols.map((c) => values[c.name]),
        ...[...keys].map((k) => values[k as string]),
        ...guardParams,
      ]) === 1
    );
  }

  async init(): Promise<void> {
    const db = await this.open();
    db.pragma("journal_mode = WAL");
    db.pragma(`busy_timeout = ${Math.max(0, this.options.busyTimeoutMs ?? 5000)}`);
    db.pragma("synchronous = FULL"); // a commit reported done survives a power loss too
    const naming = { prefix: this.options.tablePrefix };
    this.tx(() => {
      const table = versionTableName("sqlite", naming);
      const exists = db
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
        .get(`${naming.prefix ?? ""}schema_version`);
      const found =
        exists === undefined
          ? undefined
          : (db.prepare(`SELECT version FROM ${table} WHERE component = ?`).get(SCHEMA_COMPONENT) as
              { version: number } | undefined);
      const version = found?.version ?? 0;
      if (version > SCHEMA_VERSION)
        throw new ConfigurationError(
          origin(
            "sqlite",
            `the store's schema is version ${version}, newer than this release understands (${SCHEMA_VERSION}): upgrade credit-management`,
          ),
        );
      if (version === SCHEMA_VERSION) return;
      if (this.options.migrate === false) {
        throw new ConfigurationError(
          origin(
            "sqlite",
            `the store's schema is version ${version}, this release needs ${SCHEMA_VERSION}, and this manager does not migrate (migrate: false): apply \`npx credit-management schema --dialect sqlite${version > 0 ? ` --from-version ${version}` : ""}\` first`,
          ),
        );
      }
      if (version > 0)
        for (const s of upgradeStatements({ dialect: "sqlite", fromVersion: version, ...naming })) db.exec(s);
      db.exec(generateSql({ dialect: "sqlite", ...naming }));
    }, true);
  }

  close(): void {
    if (this.options.database === undefined) this.db?.close();
    this.db = null;
  }
}

/** A driver refusal the next attempt can get past: a unique key taken, or the write lock held past the busy timeout. */
function isConflict(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return (
    typeof code === "string" &&
    (code.startsWith("SQLITE_CONSTRAINT_UNIQUE") ||
      code === "SQLITE_CONSTRAINT_PRIMARYKEY" ||
      code.startsWith("SQLITE_BUSY"))
  );
}

/**
 * One attempt of a unit of work. `load` reads the account in one read transaction; `save` queues;
 * `commit` writes everything in one write transaction that first moves the account row from the
 * `seq` it was loaded at (the guard): if another process wrote the account since, nothing is
 * written and the unit of work runs again. Writes never wait across an `await`.
 */
class SqliteAttempt implements Attempt {
  private pending: Changes | undefined;
  private saved = false;

  constructor(
    private readonly s: Sqlite,
    readonly userId: string,
  ) {}

  load(request?: LoadRequest): LoadedState {
    const { s, userId } = this;
    return s.tx(() => ({
      account: s.one<Account>("accounts", "WHERE user_id = ?", [userId]),
      grants: s.list<Grant>("grants", "WHERE user_id = ? AND closed_at IS NULL AND remaining > 0", [userId]),
      reservations: s.list<Reservation>("reservations", "WHERE user_id = ? AND status = 'active'", [userId]),
      idempotent:
        request?.idempotencyKey === undefined
          ? null
          : s.one<JournalEntry>("journal", "WHERE user_id = ? AND idempotency_key = ?", [
              userId,
              request.idempotencyKey,
            ]),
    }));
  }
  async getGrants(ids: readonly string[]): Promise<Grant[]> {
    if (ids.length === 0) return [];
    return this.s.list<Grant>("grants", `WHERE user_id = ? AND id IN (${ids.map(() => "?").join(", ")})`, [
      this.userId,
      ...ids,
    ]);
  }
  async getReservation(id: string): Promise<Reservation | null> {
    return this.s.one<Reservation>("reservations", "WHERE id = ? AND user_id = ?", [id, this.userId]);
  }
  async getPromo(code: string): Promise<Promo | null> {
    return this.s.one<Promo>("promos", "WHERE code = ?", [code]);
  }
  async countPromoClaims(code: string): Promise<number> {
    return Number(
      this.s.all(`SELECT count(*) AS n FROM ${this.s.t.promoClaims.qualified} WHERE code = ? AND user_id = ?`, [
        code,
        this.userId,
      ])[0]?.n ?? 0,
    );
  }
  async getPayment(id: string): Promise<Payment | null> {
    return this.s.one<Payment>("payments", "WHERE id = ? AND user_id = ?", [id, this.userId]);
  }
  save(changes: Changes): void {
    if (this.saved) throw new Error("save() may be called once per unit of work");
    this.saved = true;
    this.pending = changes;
  }

  commit(): void {
    const c = this.pending;
    if (c === undefined) return;
    const { s } = this;
    const stale = () =>
      new ConflictError(origin("sqlite", `account ${this.userId} changed during the unit of work`), {
        userId: this.userId,
      });
    try {
      s.tx(() => {
        if (c.previousSeq === null) s.insert("accounts", [c.account]);
        else if (!s.update("accounts", c.account, " AND seq = ?", [c.previousSeq])) throw stale();
        s.insert("grants", c.insertGrants);
        for (const g of c.updateGrants) s.update("grants", g);
        s.insert("reservations", c.insertReservations);
        for (const r of c.updateReservations) s.update("reservations", r);
        s.insert("journal", c.entries);
        for (const claim of c.promoClaims ?? []) {
          const took = s.run(
            `UPDATE ${s.t.promos.qualified} SET uses = uses + 1 WHERE code = ? AND (max_uses IS NULL OR uses < max_uses)`,
            [claim.code],
          );
          if (took !== 1)
            throw new ConflictError(origin("sqlite", `promo ${claim.code} has no use left`), { code: claim.code });
        }
        s.insert("promoClaims", c.promoClaims ?? []);
        for (const p of c.paymentUpdates ?? []) {
          if (!s.update("payments", p, " AND user_id = ? AND version = ?", [p.userId, p.version - 1]))
            throw new ConflictError(origin("sqlite", `payment ${p.id} changed`), { paymentId: p.id });
        }
        s.insert("notifications", c.notifications ?? []);
      }, true);
    } catch (error) {
      if (isConflict(error))
        throw new ConflictError(
          origin("sqlite", `a concurrent write won (${(error as Error).message})`),
          { userId: this.userId },
          error,
        );
      throw error;
    }
  }
}

/** SQL conditions and their parameters, built one by one. */
function conditions() {
  const where: string[] = [];
  const params: unknown[] = [];
  const add = (condition: string, ...values: unknown[]) => {
    where.push(condition);
    params.push(...values);
  };
  return { where, params, add };
}

/** `(col, id) > (at, id)`: resume a scan ordered by (col, id) strictly after a cursor. */
const after = (col: string, cursor: { at: Date; id: string } | undefined): [string, unknown[]] =>
  cursor === undefined ? ["", []] : [` AND (${col} > ? OR (${col} = ? AND id > ?))`, [cursor.at, cursor.at, cursor.id]];

function definition(s: Sqlite, options: SqliteDbManagerOptions): StoreDefinition {
  const count = (text: string, params: unknown[]) => Number(s.all(text, params)[0]?.n ?? 0);
  const unique = (what: string, run: () => unknown) => {
    try {
      run();
    } catch (error) {
      if (isConflict(error)) throw new ConflictError(origin("sqlite", what), undefined, error);
      throw error;
    }
  };
  return {
    name: "sqlite",
    multiProcess: true,
    maxAttempts: options.maxAttempts,
    init: () => s.init(),
    close: () => s.close(),
    accounts: {
      begin: (userId) => new SqliteAttempt(s, userId),
      getAccount: (userId) => s.one<Account>("accounts", "WHERE user_id = ?", [userId]),
      getGrant: (id, userId) =>
        userId === undefined
          ? s.one<Grant>("grants", "WHERE id = ?", [id])
          : s.one<Grant>("grants", "WHERE user_id = ? AND id = ?", [userId, id]),
      getReservation: (id, userId) =>
        userId === undefined
          ? s.one<Reservation>("reservations", "WHERE id = ?", [id])
          : s.one<Reservation>("reservations", "WHERE user_id = ? AND id = ?", [userId, id]),
      listGrants: (userId, o) =>
        s.list<Grant>(
          "grants",
          `WHERE user_id = ?${o?.includeInactive ? "" : " AND remaining > 0 AND closed_at IS NULL"} ORDER BY created_at, rowid`,
          [userId],
        ),
      listReservations: (userId, o) =>
        o?.status === undefined
          ? s.list<Reservation>("reservations", "WHERE user_id = ? ORDER BY created_at, rowid", [userId])
          : s.list<Reservation>("reservations", "WHERE user_id = ? AND status = ? ORDER BY created_at, rowid", [
              userId,
              o.status,
            ]),
      listAccountIds: (from, limit) =>
        s
          .all(`SELECT user_id FROM ${s.t.accounts.qualified} WHERE user_id > ? ORDER BY user_id LIMIT ?`, [
            from ?? "",
            limit,
          ])
          .map((r) => r.user_id as string),
      findDueGrants: (asOf: Date, limit: number, cursor?: ScanCursor) => {
        const [more, params] = after("expires_at", cursor && { at: cursor.expiresAt, id: cursor.id });
        return s.list<Grant>(
          "grants",
          `WHERE remaining > 0 AND closed_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?${more} ORDER BY expires_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
      findExpiredReservations: (asOf: Date, limit: number, cursor?: ScanCursor) => {
        const [more, params] = after("expires_at", cursor && { at: cursor.expiresAt, id: cursor.id });
        return s.list<Reservation>(
          "reservations",
          `WHERE status = 'active' AND expires_at <= ?${more} ORDER BY expires_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
    },
    journal: {
      listJournal: (userId, q: JournalQuery) => {
        const { where, params, add } = conditions();
        add("user_id = ?", userId);
        if (q.order === "desc" && q.beforeSeq !== undefined) add("seq < ?", q.beforeSeq);
        if (q.order === "asc" && q.afterSeq !== undefined) add("seq > ?", q.afterSeq);
        if (q.types !== undefined) add(`type IN (${q.types.map(() => "?").join(", ") || "NULL"})`, ...q.types);
        if (q.from !== undefined) add("created_at >= ?", q.from);
        if (q.to !== undefined) add("created_at < ?", q.to);
        return s.list<JournalEntry>(
          "journal",
          `WHERE ${where.join(" AND ")} ORDER BY seq ${q.order === "desc" ? "DESC" : "ASC"} LIMIT ?`,
          [...params, q.limit],
        );
      },
      // The key moves to forgotten_key: out of the unique index, still part of the entry.
      forgetIdempotencyKeys: (before: Date, limit: number) => {
        const t = s.t.journal.qualified;
        return s.run(
          `UPDATE ${t} SET forgotten_key = idempotency_key, idempotency_key = NULL WHERE (user_id, seq) IN ` +
            `(SELECT user_id, seq FROM ${t} WHERE idempotency_key IS NOT NULL AND created_at < ? ` +
            `AND substr(idempotency_key, 1, ${SYSTEM_KEY_PREFIX.length}) <> ? LIMIT ?)`,
          [before, SYSTEM_KEY_PREFIX, limit],
        );
      },
      // docs/operations.md, "Checkpoints and archival": after archiveJournal wrote them to a file.
      deleteJournalBefore: (userId: string, beforeSeq: number) =>
        s.run(`DELETE FROM ${s.t.journal.qualified} WHERE user_id = ? AND seq < ?`, [userId, beforeSeq]),
      insertLedgerEntry: (entry: LedgerEntry) => void s.insert("ledger", [entry]),
      listLedgerEntries: (q: LedgerQuery) => {
        const { where, params, add } = conditions();
        if (q.eventType !== undefined) add("event_type = ?", q.eventType);
        if (q.userId !== undefined) add("user_id = ?", q.userId);
        if (q.before !== undefined && q.beforeId !== undefined) {
          // The same instant as the previous page's last entry: those inserted before it.
          where.push(
            `(created_at < ? OR (created_at = ? AND rowid < coalesce((SELECT rowid FROM ${s.t.ledger.qualified} WHERE id = ?), 0)))`,
          );
          params.push(q.before, q.before, q.beforeId);
        } else if (q.before !== undefined) add("created_at < ?", q.before);
        return s.list<LedgerEntry>(
          "ledger",
          `${where.length > 0 ? `WHERE ${where.join(" AND ")} ` : ""}ORDER BY created_at DESC, rowid DESC LIMIT ?`,
          [...params, q.limit],
        );
      },
    },
    subscriptions: {
      insertPlan: (plan: Plan) => unique(`plan ${plan.id} already exists`, () => s.insert("plans", [plan])),
      getPlan: (id) => s.one<Plan>("plans", "WHERE id = ?", [id]),
      listPlans: (o) => s.list<Plan>("plans", `${o.includeInactive ? "" : "WHERE is_active = 1 "}ORDER BY id`),
      updatePlan: (plan, expected) => s.update("plans", plan, " AND version = ?", [expected]),
      deletePlan: (id, expected) =>
        s.run(`DELETE FROM ${s.t.plans.qualified} WHERE id = ? AND version = ?`, [id, expected]) === 1,
      planHasSubscribers: (id) =>
        count(
          `SELECT count(*) AS n FROM ${s.t.subscriptions.qualified} WHERE status = 'active' AND (plan_id = ? OR pending_plan_id = ?)`,
          [id, id],
        ) > 0,
      insertSubscription: (sub: Subscription) =>
        unique(`user ${sub.userId} already has an active subscription`, () => s.insert("subscriptions", [sub])),
      getSubscription: (id, userId) =>
        userId === undefined
          ? s.one<Subscription>("subscriptions", "WHERE id = ?", [id])
          : s.one<Subscription>("subscriptions", "WHERE user_id = ? AND id = ?", [userId, id]),
      getActiveSubscription: (userId) =>
        s.one<Subscription>("subscriptions", "WHERE user_id = ? AND status = 'active'", [userId]),
      listSubscriptions: (userId) =>
        s.list<Subscription>("subscriptions", "WHERE user_id = ? ORDER BY created_at, id", [userId]),
      updateSubscription: (sub, expected) => {
        let done = false;
        unique(
          `user ${sub.userId} already has an active subscription`,
          () => (done = s.update("subscriptions", sub, " AND version = ?", [expected])),
        );
        return done;
      },
      findDueSubscriptions: (asOf: Date, limit: number, cursor?: SubscriptionCursor) => {
        const [more, params] = after("next_run_at", cursor && { at: cursor.nextRunAt, id: cursor.id });
        return s.list<Subscription>(
          "subscriptions",
          `WHERE next_run_at IS NOT NULL AND next_run_at <= ?${more} ORDER BY next_run_at, id LIMIT ?`,
          [asOf, ...params, limit],
        );
      },
    },
    promos: {
      insertPromo: (promo: Promo) =>
        unique(`insertPromo: promo ${promo.code} exists`, () => s.insert("promos", [promo])),
      getPromo: (code) => s.one<Promo>("promos", "WHERE code = ?", [code]),
      listPromos: (q) =>
        q.before === undefined
          ? s.list<Promo>("promos", "ORDER BY created_at DESC, code DESC LIMIT ?", [q.limit])
          : s.list<Promo>(
              "promos",
              "WHERE created_at < ? OR (created_at = ? AND code < ?) ORDER BY created_at DESC, code DESC LIMIT ?",
              [q.before.createdAt, q.before.createdAt, q.before.code, q.limit],
            ),
      setPromoActive: (code, isActive, at) => {
        s.run(`UPDATE ${s.t.promos.qualified} SET is_active = ?, updated_at = ? WHERE code = ?`, [isActive, at, code]);
        return s.one<Promo>("promos", "WHERE code = ?", [code]);
      },
      countPromoClaims: (code, userId) =>
        count(`SELECT count(*) AS n FROM ${s.t.promoClaims.qualified} WHERE code = ? AND user_id = ?`, [code, userId]),
      listPromoClaims: (userId) =>
        s.list<PromoClaim>("promoClaims", "WHERE user_id = ? ORDER BY created_at, claim_number", [userId]),
      insertPayment: (p: Payment) => unique(`insertPayment: payment ${p.id} exists`, () => s.insert("payments", [p])),
      getPayment: (id, userId) =>
        userId === undefined
          ? s.one<Payment>("payments", "WHERE id = ?", [id])
          : s.one<Payment>("payments", "WHERE user_id = ? AND id = ?", [userId, id]),
      findPaymentByProviderId: (provider, id) =>
        s.one<Payment>("payments", "WHERE provider = ? AND provider_ref = ?", [provider, id]) ??
        s.one<Payment>("payments", "WHERE provider = ? AND provider_payment_id = ?", [provider, id]),
      listPayments: (userId, q) =>
        q.before === undefined
          ? s.list<Payment>("payments", "WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", [
              userId,
              q.limit,
            ])
          : s.list<Payment>(
              "payments",
              "WHERE user_id = ? AND (created_at < ? OR (created_at = ? AND id < ?)) ORDER BY created_at DESC, id DESC LIMIT ?",
              [userId, q.before.createdAt, q.before.createdAt, q.before.id, q.limit],
            ),
      updatePayment: (p: Payment) => s.update("payments", p, " AND version = ?", [p.version - 1]),
    },
    outbox: {
      insertNotifications: (rows: readonly Notification[]) => s.tx(() => s.insert("notifications", rows, true), true),
      claimNotifications: (q: ClaimQuery) => {
        if (q.limit <= 0) return [];
        const t = s.t.notifications.qualified;
        const until = new Date(q.now.getTime() + q.leaseMs);
        return s.tx(() => {
          // Only the oldest pending row of each user, so a user's events go out in id order.
          const picked = s.list<Notification>(
            "notifications",
            `WHERE status = 'pending' AND next_attempt_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?) ` +
              `AND NOT EXISTS (SELECT 1 FROM ${t} p WHERE p.user_id = ${t}.user_id AND p.status = 'pending' AND p.id < ${t}.id) ORDER BY next_attempt_at, id LIMIT ?`,
            [q.now, q.now, q.limit],
          );
          for (const n of picked)
            s.run(`UPDATE ${t} SET claimed_until = ?, claim_token = ? WHERE id = ?`, [until, q.token, n.id]);
          return picked.map((n) => ({ ...n, claimedUntil: until, claimToken: q.token }));
        }, true);
      },
      completeNotification: (id, token, u: NotificationUpdate) =>
        s.run(
          `UPDATE ${s.t.notifications.qualified} SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, settled_at = ?, claimed_until = NULL, claim_token = NULL WHERE id = ? AND claim_token = ? AND status = 'pending'`,
          [u.status, u.attempts, u.nextAttemptAt, u.lastError, u.settledAt, id, token],
        ) === 1,
      purgeNotifications: (before, limit) =>
        limit <= 0
          ? 0
          : s.run(
              `DELETE FROM ${s.t.notifications.qualified} WHERE id IN (SELECT id FROM ${s.t.notifications.qualified} WHERE settled_at IS NOT NULL AND settled_at < ? AND status <> 'pending' ORDER BY settled_at LIMIT ?)`,
              [before, limit],
            ),
      listNotifications: (userId, q) =>
        q.status === undefined
          ? s.list<Notification>("notifications", "WHERE user_id = ? ORDER BY id LIMIT ?", [userId, q.limit])
          : s.list<Notification>("notifications", "WHERE user_id = ? AND status = ? ORDER BY id LIMIT ?", [
              userId,
              q.status,
              q.limit,
            ]),
    },
  };
}

/**
 * The SQLite store (`credit-management/sqlite`), on `better-sqlite3`: a persistent embedded store
 * for single-node services and tests, built with `defineStore`. The file is in WAL mode, so
 * readers never wait for the writer; several processes may share it. A unit of work reads its
 * account in one read transaction and writes everything in one write transaction guarded on the
 * account's `seq` (another process that wrote the account in between makes it run again, with
 * backoff); in this process, units of work on one account run one after another.
 *
 * ```ts
 * const db = new SqliteDbManager({ filename: "credits.db" });
 * const credits = await createCreditManager({ db }); // runs db.init(): tables, WAL
 * ```
 */
export class SqliteDbManager extends DefinedStore {
  constructor(options: SqliteDbManagerOptions = {}) {
    if (options.database !== undefined && options.filename !== undefined) {
      throw new ConfigurationError(origin("sqlite", "pass `filename` or `database`, not both"));
    }
    let s: Sqlite;
    try {
      s = new Sqlite(options);
    } catch (error) {
      throw new ConfigurationError(origin("sqlite", (error as Error).message), error);
    }
    super(definition(s, options));
  }
}
