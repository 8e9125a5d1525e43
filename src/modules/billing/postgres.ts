import { ConflictError } from "../../core/errors.js";
import { decodeRow } from "../../schema/codec.js";
import type { Payment, Promo, PromoClaim } from "../../models-entry.js";
import { quoteIdent, type SqlTable } from "../../schema/sql.js";
import type { PromoPaymentChanges, PromoPaymentStore, PromoPaymentTransaction } from "./store.js";
import { unlessTaken } from "../../db/postgres/errors.js";
import type { PostgresBoundPart, PostgresStoreHost, PostgresPartTx } from "../../db/postgres/module-part.js";
import { byId, list, one } from "../../db/postgres/reads.js";
import {
  GUARD_MARKER,
  type PostgresSql,
  type Statement,
  type Tables,
  cols,
  insertRowText,
  output,
  routedInsert,
  statement,
  toRow,
} from "../../db/postgres/sql.js";

const q = (name: string) => quoteIdent("postgres", name);

/** What the promo/payment store needs of `PostgresDbManager`. */
type Reader = PostgresStoreHost;

/** The claims of a promo (`$1`) by an account (`$2`), as `n`. */
const countClaimsText = (t: Tables): string =>
  `SELECT count(*)::int AS n FROM ${t.promoClaims.qualified} WHERE code = $1 AND user_id = $2`;

/**
 * The billing module's part of `PostgresDbManager` (`billingStorePart.postgres`; PostgreSQL and
 * Citus): its reads outside units of work, the three reads inside them, and the statement that
 * saves a save message's promo claims and payment updates.
 */
export function billingPostgresPart(host: PostgresStoreHost): PostgresBoundPart<PromoPaymentStore> {
  return {
    reads: new PostgresPromoStore(host),
    // The store's SQL as it is now (`init()` makes it distributed on Citus).
    transaction: (tx) => unitReads(tx, host.sql),
    save: (rows, distributedUser) =>
      promoPaymentSave(host.sql.tables, rows as readonly PromoPaymentChanges[], distributedUser),
  };
}

/** The reads a unit of work makes of promos, claims and payments, in its transaction (`sql`: the store's). */
function unitReads(tx: PostgresPartTx, sql: PostgresSql): PromoPaymentTransaction {
  return {
    async getPromo(code) {
      const [row] = await tx.read("getPromo", `${sql.select("promos")} WHERE code = $1`, [code]);
      return row === undefined ? null : decodeRow<Promo>(sql.tables.promos.columns, row);
    },
    async countPromoClaims(code) {
      const [row] = await tx.read("countPromoClaims", countClaimsText(sql.tables), [code, tx.userId]);
      return Number(row?.n ?? 0);
    },
    async getPayment(paymentId) {
      const [row] = await tx.read("getPayment", `${sql.select("payments")} WHERE id = $1 AND user_id = $2`, [
        paymentId,
        tx.userId,
      ]);
      return row === undefined ? null : decodeRow<Payment>(sql.tables.payments.columns, row);
    },
  };
}

/**
 * The statement a unit of work's promo claims and payment updates add to its batch's save (same
 * transaction, same message, before COMMIT). Parameter: `{ c: claims[], p: payments[] }`.
 *
 *  - `pc`: each promo's `uses` grows by its number of claims, only where `max_uses IS NULL OR
 *    uses + n <= max_uses` — the guard runs on the row as locked by the UPDATE (READ COMMITTED
 *    re-checks it after waiting for a concurrent claimer), so uses never pass max_uses;
 *  - `ic`: the claims, under the unique (code, user_id, claim_number) index;
 *  - `up`: payments, each only where the stored version is the new one minus one.
 *
 * The final SELECT fails the statement (and the transaction) unless every promo and payment row
 * passed its guard; the unit of work then runs again and decides on fresh reads.
 */
function saveStatement(t: Tables, distributed: { claims: number } | null = null): Statement {
  const { promos, promoClaims, payments } = t;
  const skip = new Set(["id", "user_id", "created_at"]);
  const set = payments.columns
    .filter((c) => !skip.has(c.name))
    .map((c) => `${q(c.name)} = x.${q(c.name)}`)
    .join(", ");
  const text =
    `WITH n AS (SELECT c.code, count(*)::bigint AS n FROM json_to_recordset($1->'c') AS c(code text) GROUP BY c.code), ` +
    `pc AS (UPDATE ${promos.qualified} t SET uses = t.uses + n.n FROM n WHERE t.code = n.code ` +
    `AND (t.max_uses IS NULL OR t.uses + n.n <= t.max_uses) RETURNING 1), ` +
    (distributed === null
      ? `ic AS (INSERT INTO ${promoClaims.qualified} (${cols(promoClaims)}) SELECT ${cols(promoClaims)} ` +
        `FROM json_populate_recordset(NULL::${promoClaims.qualified}, $1->'c')), `
      : // Citus: claims as VALUES rows and payments on the unit's user (`u`), each routed to its shard.
        distributed.claims > 0
        ? `ic AS (${routedInsert(promoClaims, "($1->'c')", distributed.claims)}), `
        : "") +
    `up AS (UPDATE ${payments.qualified} t SET ${set} FROM json_populate_recordset(NULL::${payments.qualified}, $1->'p') x ` +
    `WHERE t.id = x.id AND t.user_id = x.user_id${distributed === null ? "" : ` AND t.user_id = ($1->>'u')`} AND t.version = x.version - 1 RETURNING 1) ` +
    `SELECT CASE WHEN (SELECT count(*) FROM pc) = (SELECT count(*) FROM n) ` +
    `AND (SELECT count(*) FROM up) = json_array_length($1->'p') THEN 1 ` +
    // Not a constant (the planner would fold a constant cast and fail every time).
    `ELSE ('${GUARD_MARKER} (promo uses or payment version) ' || (SELECT count(*) FROM pc))::int END AS ok`;
  return statement(text, ["json"]);
}

const statements = new WeakMap<Tables, Statement>();
/** Citus: by number of claims (each a `VALUES` row). */
const distributedStatements = new WeakMap<Tables, Map<string, Statement>>();

/** The save statement for promo claims and payment updates, and its JSON argument; null when there are none. */
function promoPaymentSave(
  t: Tables,
  changes: readonly PromoPaymentChanges[],
  /** Citus: the one user of the unit of work (distributed saves are of one account). */
  distributedUser: string | null = null,
): { statement: Statement; arg: string } | null {
  const claims = changes.flatMap((c) => c.promoClaims ?? []);
  const updates = changes.flatMap((c) => c.paymentUpdates ?? []);
  if (claims.length === 0 && updates.length === 0) return null;
  let statement: Statement | undefined;
  if (distributedUser !== null) {
    const key = `${claims.length}`;
    const byCount = distributedStatements.get(t) ?? new Map<string, Statement>();
    distributedStatements.set(t, byCount);
    statement = byCount.get(key);
    if (statement === undefined) byCount.set(key, (statement = saveStatement(t, { claims: claims.length })));
  } else {
    statement = statements.get(t);
    if (statement === undefined) {
      statement = saveStatement(t);
      statements.set(t, statement);
    }
  }
  const arg = JSON.stringify({
    c: claims.map((c) => toRow(t.promoClaims.columns, c)),
    p: updates.map((p) => toRow(t.payments.columns, p)),
    ...(distributedUser === null ? {} : { u: distributedUser }),
  });
  return { statement, arg };
}

/**
 * Promos, claims and payments of `PostgresDbManager` outside units of work (tables `promos`,
 * `promo_claims`, `payments`; see `src/modules/billing/schema-tables.ts`).
 * (For this package's own modules; not part of the public API.)
 */
class PostgresPromoStore implements PromoPaymentStore {
  constructor(private readonly db: Reader) {}

  private get t(): Tables {
    return this.db.sql.tables;
  }

  private async insert(what: string, table: SqlTable, row: object): Promise<void> {
    const write = this.db.read(what, insertRowText(table, this.db.sql.distributed), [
      JSON.stringify(toRow(table.columns, row)),
    ]);
    await unlessTaken(
      write,
      (error) => new ConflictError(`[credit-management] [postgres] ${what}: the row exists`, undefined, error),
    );
  }

  insertPromo(promo: Promo): Promise<void> {
    return this.insert("insertPromo", this.t.promos, promo);
  }

  getPromo(code: string): Promise<Promo | null> {
    return one(this.db, "getPromo", "promos", "WHERE code = $1", [code]);
  }

  listPromos(query: { limit: number; before?: { createdAt: Date; code: string } }): Promise<Promo[]> {
    const b = query.before;
    const where = b === undefined ? "" : "WHERE (created_at, code) < ($2, $3) ";
    const params: unknown[] = b === undefined ? [query.limit] : [query.limit, b.createdAt, b.code];
    const order = `${this.db.sql.column("promos", "created_at")} DESC, code DESC`;
    return list(this.db, "listPromos", "promos", `${where}ORDER BY ${order} LIMIT $1`, params);
  }

  async setPromoActive(code: string, isActive: boolean, updatedAt: Date): Promise<Promo | null> {
    const rows = await this.db.read(
      "setPromoActive",
      // Citus takes no function but immutable ones in a RETURNING list (output's to_char).
      this.db.sql.distributed
        ? `WITH u AS (UPDATE ${this.t.promos.qualified} SET is_active = $2, updated_at = $3 WHERE code = $1 RETURNING *) SELECT ${output(this.t.promos, "u")} FROM u`
        : `UPDATE ${this.t.promos.qualified} SET is_active = $2, updated_at = $3 WHERE code = $1 RETURNING ${output(this.t.promos)}`,
      [code, isActive, updatedAt],
    );
    return rows[0] === undefined ? null : decodeRow<Promo>(this.t.promos.columns, rows[0]);
  }

  async countPromoClaims(code: string, userId: string): Promise<number> {
    const [row] = await this.db.read("countPromoClaims", countClaimsText(this.t), [code, userId]);
    return Number(row?.n ?? 0);
  }

  listPromoClaims(userId: string): Promise<PromoClaim[]> {
    const order = `${this.db.sql.column("promoClaims", "created_at")}, claim_number`;
    return list(this.db, "listPromoClaims", "promoClaims", `WHERE user_id = $1 ORDER BY ${order}`, [userId]);
  }

  insertPayment(payment: Payment): Promise<void> {
    return this.insert("insertPayment", this.t.payments, payment);
  }

  getPayment(paymentId: string, userId?: string): Promise<Payment | null> {
    return byId(this.db, "getPayment", "payments", paymentId, userId);
  }

  async findPaymentByProviderId(provider: string, id: string): Promise<Payment | null> {
    const p = this.t.payments;
    const [row] = await this.db.read(
      "findPaymentByProviderId",
      `SELECT ${output(p)} FROM ${p.qualified} WHERE provider = $1 AND provider_ref = $2 ` +
        `UNION ALL SELECT ${output(p)} FROM ${p.qualified} WHERE provider = $1 AND provider_payment_id = $2 LIMIT 1`,
      [provider, id],
    );
    return row === undefined ? null : decodeRow<Payment>(this.t.payments.columns, row);
  }

  listPayments(userId: string, query: { limit: number; before?: { createdAt: Date; id: string } }): Promise<Payment[]> {
    const b = query.before;
    const where = b === undefined ? "" : "AND (created_at, id) < ($3, $4) ";
    const params: unknown[] = b === undefined ? [userId, query.limit] : [userId, query.limit, b.createdAt, b.id];
    const order = `${this.db.sql.column("payments", "created_at")} DESC, id DESC`;
    return list(this.db, "listPayments", "payments", `WHERE user_id = $1 ${where}ORDER BY ${order} LIMIT $2`, params);
  }

  async updatePayment(payment: Payment): Promise<boolean> {
    const p = this.t.payments;
    const skip = new Set(["id", "user_id", "created_at"]);
    const set = p.columns
      .filter((c) => !skip.has(c.name))
      .map((c) => `${q(c.name)} = x.${q(c.name)}`)
      .join(", ");
    const rows = await this.db.read(
      "updatePayment",
      `UPDATE ${p.qualified} t SET ${set} FROM json_populate_record(NULL::${p.qualified}, $1::json) x ` +
        `WHERE t.id = x.id AND t.user_id = x.user_id AND t.version = x.version - 1 RETURNING 1`,
      [JSON.stringify(toRow(p.columns, payment))],
    );
    return rows.length === 1;
  }
}
