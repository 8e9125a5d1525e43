import type { Changes } from "../../core/domain/state.js";
import type { ModuleParts } from "../../core/db/module-part.js";
import type { PostgresBoundPart, PostgresPartTx } from "./module-part.js";
import { ConflictError } from "../../core/errors.js";
import type { Account, Grant, JournalEntry, Reservation } from "../../models-entry.js";
import { decodeRow } from "../../schema/codec.js";
import type { SqlTable } from "../../schema/sql.js";
import type { ChargeRecord, LoadedState } from "../../core/db/types.js";
import type { TableKey } from "../../schema/tables.js";
import type { PostgresDbManager } from "./index.js";
import { type PostgresSql, type Tables, arrayText, chargeOf, toRow } from "./sql.js";

// What the PostgreSQL store reads: rows of a table by one statement outside units of work
// (`list`, `one`, `byId`, `scanDue`, through the store's `read`, which on the application's
// connection is that connection's: ./host.ts), and what a unit of work reads inside its
// transaction (`UnitReads`).

/** The store, or the store on the application's connection. */
type Reader = Pick<PostgresDbManager, "read" | "sql">;

/** The rows of `table` that `rest` (its WHERE, ORDER BY, LIMIT) picks, decoded. */
export async function list<T>(
  db: Reader,
  what: string,
  table: TableKey,
  rest: string,
  params: unknown[],
): Promise<T[]> {
  const rows = await db.read(what, `${db.sql.select(table)} ${rest}`, params);
  const { columns } = db.sql.tables[table];
  return rows.map((r) => decodeRow<T>(columns, r));
}

/** The first row of {@link list}, or null. */
export async function one<T>(
  db: Reader,
  what: string,
  table: TableKey,
  rest: string,
  params: unknown[],
): Promise<T | null> {
  return (await list<T>(db, what, table, rest, params))[0] ?? null;
}

/** A row of `table` by its id (and its owner's, when `userId` is given). */
export function byId<T>(db: Reader, what: string, table: TableKey, id: string, userId?: string): Promise<T | null> {
  return userId === undefined
    ? one(db, what, table, "WHERE id = $1", [id])
    : one(db, what, table, "WHERE user_id = $2 AND id = $1", [id, userId]);
}

/**
 * Rows of `table` matching `where` whose `column` is at most `asOf`, in (column, id) order after
 * the cursor (`after`: the last row's).
 */
export function scanDue<T>(
  db: Reader,
  what: string,
  table: TableKey,
  column: string,
  where: string,
  asOf: Date,
  limit: number,
  after: { at: Date; id: string } | undefined,
): Promise<T[]> {
  const params: unknown[] = after === undefined ? [asOf, limit] : [asOf, limit, after.at, after.id];
  const cursor = after === undefined ? "" : ` AND (${column}, id) > ($3, $4)`;
  const order = `${db.sql.column(table, column)}, id`;
  return list(db, what, table, `WHERE ${where} AND ${column} <= $1${cursor} ORDER BY ${order} LIMIT $2`, params);
}

/** An account's rows as a unit of work starts from them (null: no account yet). */
export interface StartState {
  account: Account | null;
  grants: readonly Grant[];
  reservations: readonly Reservation[];
}

/**
 * The state statement's row (`PostgresSql.state`) decoded: the account (null when there is none,
 * or when the row is the version of the cached state, which the statement then leaves out), its
 * open grants and active holds, and the entry of the idempotency key.
 */
export function stateOf(tables: Tables, row: Record<string, unknown> | undefined): LoadedState {
  const json = (name: string) => (row?.present === true ? (row[name] as string | null | undefined) : null);
  const idem = row?.idem as string | null | undefined;
  const account = json("account");
  return {
    account: account ? decodeRow<Account>(tables.accounts.columns, JSON.parse(account)) : null,
    grants: parseRows<Grant>(tables.grants, json("grants")),
    reservations: parseRows<Reservation>(tables.reservations, json("holds")),
    idempotent: idem ? decodeRow<JournalEntry>(tables.journal.columns, JSON.parse(idem)) : null,
  };
}

/**
 * An account's state as text that is the same when the rows are (`verifyStateCache`): stored
 * columns only, keys sorted, null and undefined alike, dates as ISO text, grants and holds by id.
 */
export function stateText(tables: Tables, s: StartState): string {
  const canon = (v: unknown): unknown => {
    if (v instanceof Date) return v.toISOString();
    if (Array.isArray(v)) return v.map(canon);
    if (v === null || typeof v !== "object") return v;
    const o = v as Record<string, unknown>;
    return Object.fromEntries(
      Object.keys(o)
        .sort()
        .filter((k) => o[k] !== null && o[k] !== undefined)
        .map((k) => [k, canon(o[k])]),
    );
  };
  const rows = (table: SqlTable, xs: ReadonlyArray<{ id: string }>) =>
    [...xs].sort((a, b) => (a.id < b.id ? -1 : 1)).map((x) => toRow(table.columns, x));
  return JSON.stringify(
    canon({
      account: s.account === null ? null : toRow(tables.accounts.columns, s.account),
      grants: rows(tables.grants, s.grants),
      reservations: rows(tables.reservations, s.reservations),
    }),
  );
}

/** Rows of `table` from a `json_agg` (none: no rows). */
function parseRows<T>(table: SqlTable, json: string | null | undefined): T[] {
  if (!json) return [];
  return (JSON.parse(json) as Record<string, unknown>[]).map((row) => decodeRow<T>(table.columns, row));
}

/**
 * What a unit of work on PostgreSQL reads inside its transaction, and the state its save is
 * checked against — the same for a unit in a batch (./unit-tx.ts) and one in the application's
 * own transaction (./host.ts), which differ in how a statement reaches the connection (`query`)
 * and in what must happen before one runs (`beforeRead`).
 */
export abstract class UnitReads {
  abstract readonly userId: string;
  /** The seq the save must start from, and the open grants and active holds as loaded. */
  protected state: { seq: number | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } | null = null;
  /** Rows as read in this unit of work: updates write only the columns that differ from them. */
  readonly originals: { account: Account | null; grants: Map<string, Grant>; holds: Map<string, Reservation> } = {
    account: null,
    grants: new Map(),
    holds: new Map(),
  };

  protected abstract get sql(): PostgresSql;
  /** One statement on the unit's connection, inside its transaction. */
  protected abstract query(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]>;

  /** Before a statement of a read (`charge`: a charge's entries; `module`: a module's rows). */
  protected abstract beforeRead(what: "rows" | "charge" | "module"): Promise<void>;
  /** The module parts of the store. */
  protected abstract get modules(): ModuleParts<PostgresBoundPart>;

  /** The unit starts from `from`: its save must start from that seq, and updates are compared with its rows. */
  protected startFrom(from: StartState): void {
    const { account, grants, reservations } = from;
    this.state = {
      seq: account?.seq ?? null,
      grants: new Map(grants.map((g) => [g.id, g])),
      holds: new Map(reservations.map((r) => [r.id, r])),
    };
    this.originals.account = account;
    for (const g of grants) this.originals.grants.set(g.id, g);
    for (const r of reservations) this.originals.holds.set(r.id, r);
  }

  /** Refuses a save that does not start from the loaded seq (the service's unit of work changed its mind). */
  protected checkSave(changes: Changes): void {
    if (this.state !== null && changes.previousSeq !== this.state.seq) {
      throw new ConflictError(`account ${this.userId} changed during the unit of work`, { userId: this.userId });
    }
  }

  async getGrants(grantIds: readonly string[]): Promise<Grant[]> {
    // Under the account lock the loaded open grants are current: answer from them when we can.
    const loaded = this.state?.grants;
    if (loaded !== undefined && grantIds.every((id) => loaded.has(id)))
      return grantIds.map((id) => loaded.get(id) as Grant);
    await this.beforeRead("rows");
    const { sql } = this;
    const rows = await this.query("getGrants", `${sql.select("grants")} WHERE user_id = $1 AND id = ANY($2::text[])`, [
      this.userId,
      arrayText([...grantIds]),
    ]);
    const byId = new Map(rows.map((r) => [r.id as string, decodeRow<Grant>(sql.tables.grants.columns, r)]));
    for (const g of byId.values()) if (!this.originals.grants.has(g.id)) this.originals.grants.set(g.id, g);
    return grantIds.flatMap((id) => byId.get(id) ?? []);
  }

  async getReservation(reservationId: string): Promise<Reservation | null> {
    const held = this.state?.holds.get(reservationId);
    if (held !== undefined) return held;
    await this.beforeRead("rows");
    const { sql } = this;
    const [row] = await this.query("getReservation", `${sql.select("reservations")} WHERE user_id = $1 AND id = $2`, [
      this.userId,
      reservationId,
    ]);
    if (row === undefined) return null;
    const r = decodeRow<Reservation>(sql.tables.reservations.columns, row);
    if (!this.originals.holds.has(r.id)) this.originals.holds.set(r.id, r);
    return r;
  }

  async getCharge(entryId: string): Promise<ChargeRecord | null> {
    await this.beforeRead("charge");
    const { sql } = this;
    return chargeOf(
      sql.tables.journal,
      await this.query("getCharge", sql.chargeText(), [this.userId, entryId]),
      entryId,
    );
  }

  /** The reads of `module`'s part in this unit of work (`DbTransaction.part`). */
  part(module: string): object | undefined {
    const bound = this.modules.get(module);
    if (bound?.transaction === undefined) return undefined;
    const tx: PostgresPartTx = {
      userId: this.userId,
      sql: this.sql,
      read: async (what, text, params) => {
        await this.beforeRead("module");
        return this.query(what, text, params);
      },
    };
    return bound.transaction(tx);
  }
}
