import { ConflictError, CreditError, LockTimeoutError } from "../../errors.js";
import type { Account, Grant, JournalEntry, Payment, Promo, Reservation } from "../../models/index.js";
import { decodeRow } from "../../schema/codec.js";
import type { SqlTable } from "../../schema/sql.js";
import type { ChargeRecord, Changes, DbManager, DbTransaction, LoadRequest, LoadedState } from "../types.js";
import { saveParts } from "./save-rows.js";
import { storageError, workerCode } from "./errors.js";
import type { PostgresDbManager } from "./index.js";
import { PostgresOutbox } from "./outbox.js";
import { decode as decodePromoRow, inUnit } from "./promos.js";
import { GUARD_MARKER, type Statement, arrayText, chargeOf } from "./sql.js";
import { PostgresSubscriptionStore } from "./subscriptions.js";
import { joinedStore } from "../store/joined.js";

/**
 * What the application's own transaction is reached through: anything with node-pg's
 * `query(text, values)` answering `{ rows }` — a `pg` client (`pool.connect()`) after `BEGIN`, or a
 * one-line adapter over Drizzle's or Kysely's transaction (docs/transactions.md). One statement per
 * call, with `$n` parameters; never a multi-statement text.
 */
export interface PgQueryable {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- rows are decoded by the table codecs
  query(text: string, values?: unknown[]): Promise<{ rows: any[] }>;
}

const typedTexts = new WeakMap<Statement, string>();
/**
 * A prepared statement's text with its parameter types written in (`$1` → `($1::json)`): sent
 * unprepared, the server would infer them, and `$1 -> 'c'` has no single answer.
 */
function typed(s: Statement): string {
  let text = typedTexts.get(s);
  if (text === undefined) {
    text = s.text.replace(/\$(\d+)/g, (m, n: string) => `(${m}::${s.types[Number(n) - 1] ?? "text"})`);
    typedTexts.set(s, text);
  }
  return text;
}

/** SQLSTATEs that abort the host's transaction and that a new attempt of it may not meet. */
const CONFLICT_CODES = new Set(["40001", "40P01", "23505"]);

/**
 * A driver error inside the host's transaction as the library reports it: the transaction is
 * aborted by then (PostgreSQL refuses every later statement), so a conflict is never retried here —
 * a serialization failure, a deadlock, a unique key taken by a concurrent first write or a failed
 * seq guard is a `ConflictError` (retry the whole transaction), a lock wait past `lock_timeout` a
 * `LockTimeoutError`, anything else a `StorageError`.
 */
function hostError(what: string, error: unknown): CreditError {
  if (error instanceof CreditError) return error;
  const code = (workerCode(error) as { code?: unknown } | null)?.code;
  const details = { operation: what, sqlstate: code, retry: "transaction" };
  if (code === "55P03")
    return new LockTimeoutError(
      `[credit-management] [postgres] ${what}: the account's row lock was not granted within lock_timeout; roll back and retry the transaction`,
      details,
      error,
    );
  const guard = code === "22P02" && String((error as Error).message).includes(GUARD_MARKER);
  if (guard || (typeof code === "string" && CONFLICT_CODES.has(code)))
    return new ConflictError(
      `[credit-management] [postgres] ${what} conflicted with a concurrent transaction (${String(code)}); roll back and retry the transaction`,
      details,
      error,
    );
  return storageError(what, error);
}

/**
 * `db` on the host's connection `client`, inside the transaction the application has open
 * (`manager.inTransaction`, docs/transactions.md): every read and every unit of work runs there,
 * without BEGIN or COMMIT of its own, so the application's commit or rollback decides for them.
 * Units of work run one after another (they share one connection), each once: no group commit,
 * no retry — a conflict aborts the host's transaction, which the application retries whole. They
 * neither read nor fill the state cache (the row's `xmin` keeps that cache right whatever the host
 * decides). @internal
 */
export function hostStore(db: PostgresDbManager, client: PgQueryable): DbManager {
  const query = async (what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> => {
    try {
      db.roundTrips++;
      const result = await client.query(text, params);
      return result.rows as Record<string, unknown>[];
    } catch (error) {
      throw hostError(what, error);
    }
  };
  const scoped: PostgresDbManager = joinedStore(db, { read: query, partsValue: undefined }, async (userId, fn) => {
    const unit = new HostUnit(db, query, userId);
    const value = await fn(unit);
    await unit.write();
    return value;
  });
  // The sub-stores read through `read`: built on the scoped store, they use the host's client.
  const parts = { subscriptionStore: new PostgresSubscriptionStore(scoped), outbox: new PostgresOutbox(scoped) };
  for (const [key, value] of Object.entries(parts))
    Object.defineProperty(scoped, key, { value, writable: true, configurable: true });
  return scoped;
}

/** The `DbTransaction` of one unit of work on the host's connection. */
class HostUnit implements DbTransaction {
  private state: { seq: number | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } | null = null;
  private pending: Changes | null = null;
  readonly originals = {
    account: null as Account | null,
    grants: new Map<string, Grant>(),
    holds: new Map<string, Reservation>(),
  };

  constructor(
    private readonly db: PostgresDbManager,
    private readonly query: (what: string, text: string, params: unknown[]) => Promise<Record<string, unknown>[]>,
    readonly userId: string,
  ) {}

  get pendingChanges(): Changes {
    return this.pending as Changes;
  }

  /**
   * Locks the account row (held until the host's transaction ends), then reads its state in a
   * statement of its own (under READ COMMITTED a fresh snapshot: what the lock's previous holder
   * committed). Never from the state cache.
   */
  async load(request?: LoadRequest): Promise<LoadedState> {
    const { sql } = this.db;
    const t = sql.tables;
    await this.query("load", typed(sql.lockOne), [this.userId]);
    const key = request?.idempotencyKey ?? null;
    const [row] = await this.query("load", typed(sql.state), [arrayText([this.userId]), arrayText([key]), "{NULL}"]);
    const text = (name: string) => (row?.present === true || name === "idem" ? (row?.[name] as string | null) : null);
    const one = <T>(table: SqlTable, json: string | null | undefined) =>
      json ? decodeRow<T>(table.columns, JSON.parse(json)) : null;
    const many = <T>(table: SqlTable, json: string | null | undefined): T[] =>
      json ? (JSON.parse(json) as Record<string, unknown>[]).map((r) => decodeRow<T>(table.columns, r)) : [];
    const account = one<Account>(t.accounts, text("account"));
    const grants = many<Grant>(t.grants, text("grants"));
    const reservations = many<Reservation>(t.reservations, text("holds"));
    this.state = {
      seq: account?.seq ?? null,
      grants: new Map(grants.map((g) => [g.id, g])),
      holds: new Map(reservations.map((r) => [r.id, r])),
    };
    this.originals.account = account;
    for (const g of grants) this.originals.grants.set(g.id, g);
    for (const r of reservations) this.originals.holds.set(r.id, r);
    const idempotent = one<JournalEntry>(t.journal, text("idem"));
    return { account, grants, reservations, idempotent };
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    const loaded = this.state?.grants;
    if (loaded !== undefined && grantIds.every((id) => loaded.has(id)))
      return grantIds.map((id) => loaded.get(id) as Grant);
    const { sql } = this.db;
    const rows = await this.query("getGrants", `${sql.select("grants")} WHERE user_id = $1 AND id = ANY($2::text[])`, [
      this.userId,
      arrayText([...grantIds]),
    ]);
    const byId = new Map(rows.map((r) => [r.id as string, decodeRow<Grant>(sql.tables.grants.columns, r)]));
    for (const g of byId.values()) if (!this.originals.grants.has(g.id)) this.originals.grants.set(g.id, g);
    return grantIds.flatMap((id) => byId.get(id) ?? []);
  }

  async getCharge(entryId: string): Promise<ChargeRecord | null> {
    const { sql } = this.db;
    return chargeOf(
      sql.tables.journal,
      await this.query("getCharge", sql.chargeText(), [this.userId, entryId]),
      entryId,
    );
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const held = this.state?.holds.get(reservationId);
    if (held !== undefined) return held;
    const { sql } = this.db;
    const [row] = await this.query("getReservation", `${sql.select("reservations")} WHERE user_id = $1 AND id = $2`, [
      this.userId,
      reservationId,
    ]);
    if (row === undefined) return null;
    const r = decodeRow<Reservation>(sql.tables.reservations.columns, row);
    if (!this.originals.holds.has(r.id)) this.originals.holds.set(r.id, r);
    return r;
  }

  async getPromo(code: string): Promise<Promo | null> {
    const { tables } = this.db.sql;
    const { text, params } = inUnit.getPromo(tables, code);
    const [row] = await this.query("getPromo", text, params);
    return row === undefined ? null : decodePromoRow.promo(tables, row);
  }

  async countPromoClaims(code: string): Promise<number> {
    const { text, params } = inUnit.countClaims(this.db.sql.tables, code, this.userId);
    const [row] = await this.query("countPromoClaims", text, params);
    return Number(row?.n ?? 0);
  }

  async getPayment(paymentId: string): Promise<Payment | null> {
    const { tables } = this.db.sql;
    const { text, params } = inUnit.getPayment(tables, paymentId, this.userId);
    const [row] = await this.query("getPayment", text, params);
    return row === undefined ? null : decodePromoRow.payment(tables, row);
  }

  save(changes: Changes): void {
    if (this.pending !== null) throw new Error("save() may be called once per unit of work");
    if (this.state !== null && changes.previousSeq !== this.state.seq)
      throw new ConflictError(`account ${this.userId} changed during the unit of work`, { userId: this.userId });
    this.pending = changes;
  }

  /** Writes what `save` queued (the batch's save statement, for this one unit), in the host's transaction. */
  async write(): Promise<void> {
    if (this.pending === null) return;
    const { save, saveArgs, extra } = saveParts(this.db.sql, [this]);
    if (extra !== null) await this.query("save", typed(extra.statement), [extra.arg]);
    await this.query("save", typed(save), saveArgs);
  }
}
