import type { MemoryBoundPart } from "../../core/db/module-part.js";
import type { DbTransaction } from "../../core/db/types.js";
import { ConflictError } from "../../core/errors.js";
import type { Payment, Promo, PromoClaim } from "../../models-entry.js";
import type { PromoPaymentChanges, PromoPaymentStore, PromoPaymentTransaction } from "./store.js";

const copy = <T>(o: T): T => structuredClone(o);

/**
 * The billing module's part of the in-memory store (`billingStorePart.memory`): promos, claims and
 * payments. A unit of work's promo claims and payment updates are checked and applied with its
 * account's changes, synchronously at commit, so the `maxUses` guard and the payment
 * compare-and-set hold with nothing interleaving, whatever other accounts do at the same time.
 */
export function billingMemoryPart(): MemoryBoundPart<PromoPaymentStore> {
  const rows = new MemoryPromoPayments();
  return {
    reads: rows,
    transaction: (tx: DbTransaction): PromoPaymentTransaction => ({
      getPromo: (code: string) => rows.getPromo(code),
      countPromoClaims: (code: string) => rows.countPromoClaims(code, tx.userId),
      getPayment: (paymentId: string) => rows.getPayment(paymentId, tx.userId),
    }),
    check: (changes) => rows.check(changes as PromoPaymentChanges),
    apply: (changes) => rows.apply(changes as PromoPaymentChanges),
  };
}

/** Promos, claims and payments in memory. */
class MemoryPromoPayments implements PromoPaymentStore {
  private readonly promos = new Map<string, Promo>();
  /** `${code}\u0000${userId}` → claims, in claim order. */
  private readonly claims = new Map<string, PromoClaim[]>();
  private readonly claimsByUser = new Map<string, PromoClaim[]>();
  private readonly payments = new Map<string, Payment>();
  /** `${provider}\u0000${providerRef or providerPaymentId}` → payment id. */
  private readonly byProviderId = new Map<string, string>();
  private readonly paymentsByUser = new Map<string, Set<string>>();

  /** Refuses claims and payment updates whose guards fail (before anything is written). */
  check(changes: PromoPaymentChanges): void {
    if (changes.promoClaims === undefined && changes.paymentUpdates === undefined) return;
    const taken = new Map<string, number>();
    for (const c of changes.promoClaims ?? []) {
      const p = this.promos.get(c.code);
      if (p === undefined) throw new ConflictError(`promo ${c.code} does not exist`);
      const uses = p.uses + (taken.get(c.code) ?? 0);
      if (p.maxUses !== null && uses >= p.maxUses) {
        throw new ConflictError(`promo ${c.code} has no uses left`, { code: c.code, reason: "exhausted" });
      }
      taken.set(c.code, (taken.get(c.code) ?? 0) + 1);
      if ((this.claims.get(claimKey(c.code, c.userId)) ?? []).some((x) => x.claimNumber === c.claimNumber)) {
        throw new ConflictError(`claim ${c.claimNumber} of promo ${c.code} by this user exists`);
      }
    }
    for (const p of changes.paymentUpdates ?? []) {
      if (this.payments.get(p.id)?.version !== p.version - 1) {
        throw new ConflictError(`payment ${p.id} changed during the unit of work`, { paymentId: p.id });
      }
    }
  }

  /** Applies a unit of work's promo and payment rows to the billing module's tables. */
  apply(changes: PromoPaymentChanges): void {
    if (changes.promoClaims === undefined && changes.paymentUpdates === undefined) return;
    for (const c of changes.promoClaims ?? []) {
      const p = this.promos.get(c.code) as Promo;
      this.promos.set(c.code, { ...p, uses: p.uses + 1 });
      push(this.claims, claimKey(c.code, c.userId), copy(c));
      push(this.claimsByUser, c.userId, copy(c));
    }
    for (const p of changes.paymentUpdates ?? []) this.putPayment(p);
  }

  /** Stores a new promo. */
  async insertPromo(promo: Promo): Promise<void> {
    if (this.promos.has(promo.code)) throw new ConflictError(`promo ${promo.code} exists`, { code: promo.code });
    this.promos.set(promo.code, copy(promo));
  }

  /** The promo of that code; null when there is none. */
  async getPromo(code: string): Promise<Promo | null> {
    const p = this.promos.get(code);
    return p === undefined ? null : copy(p);
  }

  /** A page of promos, newest first. */
  async listPromos(query: { limit: number; before?: { createdAt: Date; code: string } }): Promise<Promo[]> {
    const b = query.before;
    return [...this.promos.values()]
      .filter((p) => b === undefined || newerFirst(p.createdAt, p.code, b.createdAt, b.code) > 0)
      .sort((x, y) => newerFirst(x.createdAt, x.code, y.createdAt, y.code))
      .slice(0, query.limit)
      .map(copy);
  }

  /** Turns a promo on or off; resolves to it, or null when there is none. */
  async setPromoActive(code: string, isActive: boolean, updatedAt: Date): Promise<Promo | null> {
    const p = this.promos.get(code);
    if (p === undefined) return null;
    const next = { ...p, isActive, updatedAt };
    this.promos.set(code, next);
    return copy(next);
  }

  /** How many times the user claimed the promo. */
  async countPromoClaims(code: string, userId: string): Promise<number> {
    return this.claims.get(claimKey(code, userId))?.length ?? 0;
  }

  /** The user's promo claims. */
  async listPromoClaims(userId: string): Promise<PromoClaim[]> {
    return (this.claimsByUser.get(userId) ?? []).map(copy);
  }

  /** Stores a new payment. */
  async insertPayment(payment: Payment): Promise<void> {
    if (this.payments.has(payment.id)) throw new ConflictError(`payment ${payment.id} exists`);
    this.putPayment(payment);
  }

  /** The payment; null when there is none (or it is another user's). */
  async getPayment(paymentId: string, userId?: string): Promise<Payment | null> {
    const p = this.payments.get(paymentId);
    return p === undefined || (userId !== undefined && p.userId !== userId) ? null : copy(p);
  }

  /** The payment the provider knows by that id; null when there is none. */
  async findPaymentByProviderId(provider: string, id: string): Promise<Payment | null> {
    const pid = this.byProviderId.get(`${provider}\u0000${id}`);
    return pid === undefined ? null : this.getPayment(pid);
  }

  /** A page of the user's payments, newest first. */
  async listPayments(
    userId: string,
    query: { limit: number; before?: { createdAt: Date; id: string } },
  ): Promise<Payment[]> {
    const b = query.before;
    return [...(this.paymentsByUser.get(userId) ?? [])]
      .map((id) => this.payments.get(id) as Payment)
      .filter((p) => b === undefined || newerFirst(p.createdAt, p.id, b.createdAt, b.id) > 0)
      .sort((x, y) => newerFirst(x.createdAt, x.id, y.createdAt, y.id))
      .slice(0, query.limit)
      .map(copy);
  }

  /** Saves a payment's new state; resolves to whether it was there. */
  async updatePayment(payment: Payment): Promise<boolean> {
    if (this.payments.get(payment.id)?.version !== payment.version - 1) return false;
    this.putPayment(payment);
    return true;
  }

  private putPayment(p: Payment): void {
    this.payments.set(p.id, copy(p));
    if (p.providerRef !== null) this.byProviderId.set(`${p.provider}\u0000${p.providerRef}`, p.id);
    if (p.providerPaymentId !== null) this.byProviderId.set(`${p.provider}\u0000${p.providerPaymentId}`, p.id);
    let ids = this.paymentsByUser.get(p.userId);
    if (ids === undefined) this.paymentsByUser.set(p.userId, (ids = new Set()));
    ids.add(p.id);
  }
}

const claimKey = (code: string, userId: string) => `${code}\u0000${userId}`;

function push<T>(m: Map<string, T[]>, k: string, v: T): void {
  const list = m.get(k);
  if (list === undefined) m.set(k, [v]);
  else list.push(v);
}

/** Newest first, then id descending: negative when (a, ida) comes before (b, idb). */
function newerFirst(a: Date, ida: string, b: Date, idb: string): number {
  const d = b.getTime() - a.getTime();
  if (d !== 0) return d;
  return ida > idb ? -1 : ida < idb ? 1 : 0;
}
