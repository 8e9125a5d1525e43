import type { Changes } from "../../core/domain/state.js";
import type { ModuleParts } from "../../core/db/module-part.js";
import { bindPostgres, type PostgresBoundPart } from "./module-part.js";
import { ConflictError, CreditError, LockTimeoutError } from "../../core/errors.js";
import type { DbManager, DbTransaction, LoadRequest, LoadedState } from "../../core/db/types.js";
import { saveParts } from "./save-rows.js";
import { isConflict, storageError, workerCode } from "./errors.js";
import type { PostgresDbManager } from "./index.js";
import { PostgresOutbox } from "./outbox.js";
import { type PostgresSql, type Statement, arrayText } from "./sql.js";
import { PostgresSubscriptionStore } from "./subscriptions.js";
import { UnitReads, stateOf } from "./reads.js";
import { joinedStore } from "../store/joined.js";

/**
 * What the application's own transaction is reached through: anything with node-pg's
 * `query(text, values)` answering `{ rows }` — a `pg` client (`pool.connect()`) after `BEGIN`, or a
 * one-line adapter over Drizzle's or Kysely's transaction (docs/transactions.md). One statement per
 * call, with `$n` parameters; never a multi-statement text.
 * @public
 */
export interface PgQueryable {
  /** Runs a statement with its values; resolves to the rows. */
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
  if (isConflict(error))
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
  // A part's statements that go together run in the host's own transaction, on its client.
  const inTransaction: PostgresDbManager["inTransaction"] = (what, fn) =>
    fn((text, params = []) => query(what, text, params));
  const scoped: PostgresDbManager = joinedStore(
    db,
    { read: query, inTransaction, partsValue: undefined },
    async (userId, fn) => {
      const unit = new HostUnit(scoped, query, userId);
      const value = await fn(unit);
      await unit.write();
      return value;
    },
  );
  // The sub-stores read through `read`: built on the scoped store, they use the host's client.
  const parts = {
    subscriptionStore: new PostgresSubscriptionStore(scoped),
    outbox: new PostgresOutbox(scoped),
    // The modules' parts too (./module-part.ts).
    modules: db.modules.rebound((part) => bindPostgres(part, scoped)),
  };
  for (const [key, value] of Object.entries(parts))
    Object.defineProperty(scoped, key, { value, writable: true, configurable: true });
  return scoped;
}

/** The `DbTransaction` of one unit of work on the host's connection. */
class HostUnit extends UnitReads implements DbTransaction {
  private pending: Changes | null = null;

  constructor(
    private readonly db: PostgresDbManager,
    private readonly run: (what: string, text: string, params: unknown[]) => Promise<Record<string, unknown>[]>,
    readonly userId: string,
  ) {
    super();
  }

  protected get modules(): ModuleParts<PostgresBoundPart> {
    return this.db.modules;
  }

  protected get sql(): PostgresSql {
    return this.db.sql;
  }

  protected query(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    return this.run(what, text, params);
  }

  /** Nothing to wait for: the host's transaction is open. */
  protected async beforeRead(): Promise<void> {}

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
    await this.run("load", typed(sql.lockOne), [this.userId]);
    const key = request?.idempotencyKey ?? null;
    const [row] = await this.run("load", typed(sql.state), [arrayText([this.userId]), arrayText([key]), "{NULL}"]);
    const state = stateOf(sql.tables, row);
    this.startFrom(state);
    return state;
  }

  save(changes: Changes): void {
    if (this.pending !== null) throw new Error("save() may be called once per unit of work");
    this.checkSave(changes);
    this.pending = changes;
  }

  /** Writes what `save` queued (the batch's save statement, for this one unit), in the host's transaction. */
  async write(): Promise<void> {
    if (this.pending === null) return;
    const { save, saveArgs, extra } = saveParts(this.db.sql, [this], this.db.modules);
    for (const x of extra) await this.run("save", typed(x.statement), [x.arg]);
    await this.run("save", typed(save), saveArgs);
  }
}
