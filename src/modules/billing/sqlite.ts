import { ConflictError } from "../../core/errors.js";
import { origin } from "../../core/db/store/errors.js";
import type { Part } from "../../core/db/store/parts.js";
import type { Payment, Promo, PromoClaim } from "../../models-entry.js";
import type { SqliteBoundPart, SqliteStoreHost, SqliteStoreTx } from "../../db/sqlite/module-part.js";
import { isConflict } from "../../db/sqlite/unit.js";
import type { PromoPaymentChanges, PromoPaymentStore, PromoPaymentTransaction } from "./store.js";

/**
 * The billing module's part of `SqliteDbManager` (`billingStorePart.sqlite`): promos, claims and
 * payments in the store's file (docs/storage.md, SQLite). A unit of work's claims and payment
 * updates are written in its write transaction: each claim takes one use under the guard
 * `max_uses IS NULL OR uses < max_uses`, each payment update is a compare-and-set on `version`.
 */
export function billingSqlitePart(s: SqliteStoreHost): SqliteBoundPart<PromoPaymentStore> {
  return {
    reads: reads(s) as PromoPaymentStore,
    // The store hands its parts its own connection: the package's tables' statements
    // (`SqliteStoreHost`, src/db/sqlite/module-part.ts).
    transaction: (tx: SqliteStoreTx) => unitReads(tx),
    write: (db: SqliteStoreHost, rows) => write(db, rows as PromoPaymentChanges),
  };
}

function reads(s: SqliteStoreHost): Part<PromoPaymentStore> {
  const count = (text: string, params: unknown[]) => Number(s.all(text, params)[0]?.n ?? 0);
  const byId = <T>(id: string, userId: string | undefined) =>
    userId === undefined
      ? s.one<T>("payments", "WHERE id = ?", [id])
      : s.one<T>("payments", "WHERE user_id = ? AND id = ?", [userId, id]);
  const unique = (what: string, run: () => unknown) => {
    try {
      run();
    } catch (error) {
      if (isConflict(error)) throw new ConflictError(origin("sqlite", what), undefined, error);
      throw error;
    }
  };
  return {
    insertPromo: (promo: Promo) => unique(`insertPromo: promo ${promo.code} exists`, () => s.insert("promos", [promo])),
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
    getPayment: (id, userId) => byId<Payment>(id, userId),
    findPaymentByProviderId: (provider, id) =>
      s.one<Payment>("payments", "WHERE provider = ? AND provider_ref = ?", [provider, id]) ??
      s.one<Payment>("payments", "WHERE provider = ? AND provider_payment_id = ?", [provider, id]),
    listPayments: (userId, q) =>
      q.before === undefined
        ? s.list<Payment>("payments", "WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?", [userId, q.limit])
        : s.list<Payment>(
            "payments",
            "WHERE user_id = ? AND (created_at < ? OR (created_at = ? AND id < ?)) ORDER BY created_at DESC, id DESC LIMIT ?",
            [userId, q.before.createdAt, q.before.createdAt, q.before.id, q.limit],
          ),
    updatePayment: (p: Payment) => s.update("payments", p, " AND version = ?", [p.version - 1]),
  };
}

function unitReads({ db, userId }: SqliteStoreTx): PromoPaymentTransaction {
  return {
    getPromo: async (code) => db.one<Promo>("promos", "WHERE code = ?", [code]),
    countPromoClaims: async (code) =>
      Number(
        db.all(`SELECT count(*) AS n FROM ${db.t.promoClaims.qualified} WHERE code = ? AND user_id = ?`, [
          code,
          userId,
        ])[0]?.n ?? 0,
      ),
    getPayment: async (id) => db.one<Payment>("payments", "WHERE id = ? AND user_id = ?", [id, userId]),
  };
}

function write(s: SqliteStoreHost, c: PromoPaymentChanges): void {
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
}
