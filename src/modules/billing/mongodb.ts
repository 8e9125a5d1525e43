import type { ClientSession, Collection, Filter } from "mongodb";
import { ConflictError } from "../../core/errors.js";
import {
  Payment,
  Promo,
  PromoClaim,
  type Payment as PaymentT,
  type Promo as PromoT,
  type PromoClaim as PromoClaimT,
} from "../../models-entry.js";
import type { PromoPaymentChanges, PromoPaymentStore, PromoPaymentTransaction } from "./store.js";
import type { MongoBoundPart, MongoPartHost } from "../../db/mongodb/module-part.js";
import { fromDoc, kind, toDoc, type StoredDoc } from "../../db/mongodb/documents.js";
import { guard, writeOne } from "../../db/mongodb/errors.js";
import { ONE_BATCH, batchOf } from "../../db/mongodb/collections.js";

const PROMO = kind<PromoT>("code", Promo.shape);
const CLAIM = kind<PromoClaimT>("id", PromoClaim.shape);
const PAYMENT = kind<PaymentT>("id", Payment.shape);

/** Every field but the id, the owner and the immutable ones (see `updatableFields`). */
function paymentSet(p: PaymentT): Record<string, unknown> {
  const { id: _i, userId: _u, createdAt: _c, metadata: _m, ...rest } = p;
  return rest;
}

/**
 * The billing module's part of `MongoDbManager` (`billingStorePart.mongodb`): its reads, the three
 * reads inside units of work, and the writes of a unit's claims and payment updates.
 */
export function billingMongoPart(host: MongoPartHost): MongoBoundPart<PromoPaymentStore> {
  const store = new MongoPromoStore((name) => host.collection(name));
  return {
    reads: store,
    transaction: (tx): PromoPaymentTransaction => ({
      getPromo: (code) => tx.op((s) => store.getPromoIn(s, code)),
      countPromoClaims: (code) => tx.op((s) => store.countClaimsIn(s, code, tx.userId)),
      getPayment: (paymentId) => tx.op((s) => store.getPaymentIn(s, paymentId, tx.userId)),
    }),
    save: (session, rows) => store.saveIn(session, rows as PromoPaymentChanges),
  };
}

/**
 * Promos, claims and payments of `MongoDbManager` (collections `<prefix>promos`,
 * `<prefix>promo_claims`, `<prefix>payments`). The unit-of-work part (`saveIn`) writes in the
 * account's transaction: the promo's counter with the guard `uses < maxUses` (maxUses never
 * changes once created), the claim under its unique index, payments by compare-and-set on
 * `version`; a miss throws `ConflictError` and aborts the whole transaction.
 */
class MongoPromoStore implements PromoPaymentStore {
  readonly promos: Collection<StoredDoc>;
  readonly claims: Collection<StoredDoc>;
  readonly payments: Collection<StoredDoc>;

  constructor(col: (name: string) => Collection<StoredDoc>) {
    this.promos = col("promos");
    this.claims = col("promo_claims");
    this.payments = col("payments");
  }

  // ---- Inside a unit of work (driver errors unconverted: its manager must see their labels).

  async getPromoIn(session: ClientSession, code: string): Promise<PromoT | null> {
    const d = await this.promos.findOne({ _id: code }, { session });
    return d === null ? null : fromDoc<PromoT>(PROMO, d);
  }

  async countClaimsIn(session: ClientSession, code: string, userId: string): Promise<number> {
    return this.claims.countDocuments({ code, userId }, { session });
  }

  async getPaymentIn(session: ClientSession, id: string, userId: string): Promise<PaymentT | null> {
    const d = await this.payments.findOne({ _id: id, userId }, { session });
    return d === null ? null : fromDoc<PaymentT>(PAYMENT, d);
  }

  async saveIn(session: ClientSession, changes: PromoPaymentChanges): Promise<void> {
    if (changes.promoClaims === undefined && changes.paymentUpdates === undefined) return;
    for (const c of changes.promoClaims ?? []) {
      const promo = await this.getPromoIn(session, c.code);
      if (promo === null) throw new ConflictError(`[credit-management] [mongodb] promo ${c.code} does not exist`);
      const filter: Filter<StoredDoc> =
        promo.maxUses === null ? { _id: c.code } : { _id: c.code, uses: { $lt: promo.maxUses } };
      const res = await this.promos.updateOne(filter, { $inc: { uses: 1 } }, { session });
      if (res.matchedCount !== 1) {
        throw new ConflictError(`[credit-management] [mongodb] promo ${c.code} has no uses left`, {
          code: c.code,
          reason: "exhausted",
        });
      }
      await this.claims.insertOne(toDoc(CLAIM, c), { session });
    }
    for (const p of changes.paymentUpdates ?? []) {
      const res = await this.payments.updateOne(
        { _id: p.id, userId: p.userId, version: p.version - 1 },
        { $set: paymentSet(p) },
        { session },
      );
      if (res.matchedCount !== 1) {
        throw new ConflictError(`[credit-management] [mongodb] payment ${p.id} changed during the unit of work`, {
          paymentId: p.id,
        });
      }
    }
  }

  // ---- Outside units of work.

  async insertPromo(promo: PromoT): Promise<void> {
    await writeOne("insertPromo", () => this.promos.insertOne(toDoc(PROMO, promo)));
  }

  async getPromo(code: string): Promise<PromoT | null> {
    const d = await guard("getPromo", () => this.promos.findOne({ _id: code }));
    return d === null ? null : fromDoc<PromoT>(PROMO, d);
  }

  async listPromos(query: { limit: number; before?: { createdAt: Date; code: string } }): Promise<PromoT[]> {
    const b = query.before;
    const filter: Filter<StoredDoc> =
      b === undefined
        ? {}
        : { $or: [{ createdAt: { $lt: b.createdAt } }, { createdAt: b.createdAt, _id: { $lt: b.code } }] };
    const docs = await guard("listPromos", () =>
      this.promos.find(filter, batchOf(query.limit)).sort({ createdAt: -1, _id: -1 }).limit(query.limit).toArray(),
    );
    return docs.map((d) => fromDoc<PromoT>(PROMO, d));
  }

  async setPromoActive(code: string, isActive: boolean, updatedAt: Date): Promise<PromoT | null> {
    const d = await writeOne("setPromoActive", () =>
      this.promos.findOneAndUpdate({ _id: code }, { $set: { isActive, updatedAt } }, { returnDocument: "after" }),
    );
    return d === null ? null : fromDoc<PromoT>(PROMO, d);
  }

  async countPromoClaims(code: string, userId: string): Promise<number> {
    return guard("countPromoClaims", () => this.claims.countDocuments({ code, userId }));
  }

  async listPromoClaims(userId: string): Promise<PromoClaimT[]> {
    const docs = await guard("listPromoClaims", () =>
      this.claims.find({ userId }, ONE_BATCH).sort({ createdAt: 1, claimNumber: 1 }).toArray(),
    );
    return docs.map((d) => fromDoc<PromoClaimT>(CLAIM, d));
  }

  async insertPayment(payment: PaymentT): Promise<void> {
    await writeOne("insertPayment", () => this.payments.insertOne(toDoc(PAYMENT, payment)));
  }

  async getPayment(paymentId: string, userId?: string): Promise<PaymentT | null> {
    const d = await guard("getPayment", () =>
      this.payments.findOne(userId === undefined ? { _id: paymentId } : { userId, _id: paymentId }),
    );
    return d === null ? null : fromDoc<PaymentT>(PAYMENT, d);
  }

  async findPaymentByProviderId(provider: string, id: string): Promise<PaymentT | null> {
    const d = await guard("findPaymentByProviderId", () =>
      this.payments.findOne({
        $or: [
          { provider, providerRef: id },
          { provider, providerPaymentId: id },
        ],
      }),
    );
    return d === null ? null : fromDoc<PaymentT>(PAYMENT, d);
  }

  async listPayments(
    userId: string,
    query: { limit: number; before?: { createdAt: Date; id: string } },
  ): Promise<PaymentT[]> {
    const b = query.before;
    const filter: Filter<StoredDoc> =
      b === undefined
        ? { userId }
        : { userId, $or: [{ createdAt: { $lt: b.createdAt } }, { createdAt: b.createdAt, _id: { $lt: b.id } }] };
    const docs = await guard("listPayments", () =>
      this.payments.find(filter, batchOf(query.limit)).sort({ createdAt: -1, _id: -1 }).limit(query.limit).toArray(),
    );
    return docs.map((d) => fromDoc<PaymentT>(PAYMENT, d));
  }

  async updatePayment(payment: PaymentT): Promise<boolean> {
    const res = await writeOne("updatePayment", () =>
      this.payments.updateOne(
        { _id: payment.id, userId: payment.userId, version: payment.version - 1 },
        { $set: paymentSet(payment) },
      ),
    );
    return res.matchedCount === 1;
  }
}
