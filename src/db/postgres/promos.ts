import { createHash } from "node:crypto";
import { ConflictError } from "../../errors.js";
import type { Payment, Promo, PromoClaim } from "../../models/index.js";
import { decodeRow } from "../../schema/codec.js";
import { quoteIdent, type SqlTable } from "../../schema/sql.js";
import type { PromoPaymentChanges, PromoPaymentStore } from "../types-promos.js";
import { GUARD_MARKER, type Statement, type Tables, column as col, cols, output, routedInsert, toRow } from "./sql.js";

const q = (name: string) => quoteIdent("postgres", name);

/** What the promo/payment store needs of `PostgresDbManager`. */
interface Reader {
  read(what: string, text: string, params: unknown[]): Promise<Record<string, unknown>[]>;
  readonly sql?: { readonly distributed: boolean };
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
  const types = ["json"];
  const name = `cm_${createHash("sha256").update(types.join(",")).update("\n").update(text).digest("hex").slice(0, 24)}`;
  return { name, text, types };
}

const statements = new WeakMap<Tables, Statement>();
/** Citus: by number of claims (each a `VALUES` row). */
const distributedStatements = new WeakMap<Tables, Map<string, Statement>>();

/** @internal The save statement for promo claims and payment updates, and its JSON argument; null when there are none. */
export function promoPaymentSave(
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

/** @internal Reads a unit of work makes inside its transaction. */
export const inUnit = {
  getPromo: (t: Tables, code: string) => ({
    text: `SELECT ${output(t.promos)} FROM ${t.promos.qualified} WHERE code = $1`,
    params: [code],
  }),
  countClaims: (t: Tables, code: string, userId: string) => ({
    text: `SELECT count(*)::int AS n FROM ${t.promoClaims.qualified} WHERE code = $1 AND user_id = $2`,
    params: [code, userId],
  }),
  getPayment: (t: Tables, id: string, userId: string) => ({
    text: `SELECT ${output(t.payments)} FROM ${t.payments.qualified} WHERE id = $1 AND user_id = $2`,
    params: [id, userId],
  }),
};

/** @internal Decoding of the promo and payment rows. */
export const decode = {
  promo: (t: Tables, row: Record<string, unknown>) => decodeRow<Promo>(t.promos.columns, row),
  claim: (t: Tables, row: Record<string, unknown>) => decodeRow<PromoClaim>(t.promoClaims.columns, row),
  payment: (t: Tables, row: Record<string, unknown>) => decodeRow<Payment>(t.payments.columns, row),
};

/**
 * Promos, claims and payments of `PostgresDbManager` outside units of work (tables `promos`,
 * `promo_claims`, `payments`; see `src/schema/tables-promos.ts`).
 * (For this package's own modules; not part of the public API.)
 */
export class PostgresPromoStore implements PromoPaymentStore {
  constructor(
    private readonly db: Reader,
    private readonly t: Tables,
  ) {}

  private async insert(what: string, table: SqlTable, row: object): Promise<void> {
    const c = cols(table);
    const text =
      this.db.sql?.distributed === true
        ? routedInsert(table, "$1::json", null)
        : `INSERT INTO ${table.qualified} (${c}) SELECT ${c} FROM json_populate_record(NULL::${table.qualified}, $1::json)`;
    try {
      await this.db.read(what, text, [JSON.stringify(toRow(table.columns, row))]);
    } catch (error) {
      const code = (error as { cause?: { code?: unknown } }).cause?.code;
      if (code === "23505")
        throw new ConflictError(`[credit-management] [postgres] ${what}: the row exists`, undefined, error);
      throw error;
    }
  }

  insertPromo(promo: Promo): Promise<void> {
    return this.insert("insertPromo", this.t.promos, promo);
  }

  async getPromo(code: string): Promise<Promo | null> {
    const { text, params } = inUnit.getPromo(this.t, code);
    const [row] = await this.db.read("getPromo", text, params);
    return row === undefined ? null : decode.promo(this.t, row);
  }

  async listPromos(query: { limit: number; before?: { createdAt: Date; code: string } }): Promise<Promo[]> {
    const b = query.before;
    const where = b === undefined ? "" : "WHERE (created_at, code) < ($2, $3) ";
    const params: unknown[] = b === undefined ? [query.limit] : [query.limit, b.createdAt, b.code];
    const rows = await this.db.read(
      "listPromos",
      `SELECT ${output(this.t.promos)} FROM ${this.t.promos.qualified} ${where}ORDER BY ${col(this.t.promos, "created_at")} DESC, code DESC LIMIT $1`,
      params,
    );
    return rows.map((r) => decode.promo(this.t, r));
  }

  async setPromoActive(code: string, isActive: boolean, updatedAt: Date): Promise<Promo | null> {
    const rows = await this.db.read(
      "setPromoActive",
      // Citus takes no function but immutable ones in a RETURNING list (output's to_char).
      this.db.sql?.distributed === true
        ? `WITH u AS (UPDATE ${this.t.promos.qualified} SET is_active = $2, updated_at = $3 WHERE code = $1 RETURNING *) SELECT ${output(this.t.promos, "u")} FROM u`
        : `UPDATE ${this.t.promos.qualified} SET is_active = $2, updated_at = $3 WHERE code = $1 RETURNING ${output(this.t.promos)}`,
      [code, isActive, updatedAt],
    );
    return rows[0] === undefined ? null : decode.promo(this.t, rows[0]);
  }

  async countPromoClaims(code: string, userId: string): Promise<number> {
    const { text, params } = inUnit.countClaims(this.t, code, userId);
    const [row] = await this.db.read("countPromoClaims", text, params);
    return Number(row?.n ?? 0);
  }

  async listPromoClaims(userId: string): Promise<PromoClaim[]> {
    const rows = await this.db.read(
      "listPromoClaims",
      `SELECT ${output(this.t.promoClaims)} FROM ${this.t.promoClaims.qualified} WHERE user_id = $1 ORDER BY ${col(this.t.promoClaims, "created_at")}, claim_number`,
      [userId],
    );
    return rows.map((r) => decode.claim(this.t, r));
  }

  insertPayment(payment: Payment): Promise<void> {
    return this.insert("insertPayment", this.t.payments, payment);
  }

  async getPayment(paymentId: string, userId?: string): Promise<Payment | null> {
    const select = `SELECT ${output(this.t.payments)} FROM ${this.t.payments.qualified}`;
    const [row] =
      userId === undefined
        ? await this.db.read("getPayment", `${select} WHERE id = $1`, [paymentId])
        : await this.db.read("getPayment", `${select} WHERE user_id = $2 AND id = $1`, [paymentId, userId]);
    return row === undefined ? null : decode.payment(this.t, row);
  }

  async findPaymentByProviderId(provider: string, id: string): Promise<Payment | null> {
    const p = this.t.payments;
    const [row] = await this.db.read(
      "findPaymentByProviderId",
      `SELECT ${output(p)} FROM ${p.qualified} WHERE provider = $1 AND provider_ref = $2 ` +
        `UNION ALL SELECT ${output(p)} FROM ${p.qualified} WHERE provider = $1 AND provider_payment_id = $2 LIMIT 1`,
      [provider, id],
    );
    return row === undefined ? null : decode.payment(this.t, row);
  }

  async listPayments(
    userId: string,
    query: { limit: number; before?: { createdAt: Date; id: string } },
  ): Promise<Payment[]> {
    const b = query.before;
    const where = b === undefined ? "" : "AND (created_at, id) < ($3, $4) ";
    const params: unknown[] = b === undefined ? [userId, query.limit] : [userId, query.limit, b.createdAt, b.id];
    const rows = await this.db.read(
      "listPayments",
      `SELECT ${output(this.t.payments)} FROM ${this.t.payments.qualified} WHERE user_id = $1 ${where}ORDER BY ${col(this.t.payments, "created_at")} DESC, id DESC LIMIT $2`,
      params,
    );
    return rows.map((r) => decode.payment(this.t, r));
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
