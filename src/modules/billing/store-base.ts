import { StoreBase } from "../../core/db/store/base.js";
import type { Part, SideParts } from "../../core/db/store/parts.js";
import type { Payment, Promo, PromoClaim } from "../../models-entry.js";
import type { PromoPaymentStore } from "./store.js";

/** The core's sub-stores and the billing module's part (`promos`). @beta */
export interface BillingParts extends SideParts {
  /** The promos and payments part. */
  promos: Part<PromoPaymentStore>;
}

/**
 * `StoreBase` with the billing module's part forwarded to `parts.promos`: the base of the stores
 * built into the package (memory, PostgreSQL, MongoDB; SQLite through `defineStore`), which carry it.
 * @beta
 */
export abstract class BillingStoreBase extends StoreBase implements PromoPaymentStore {
  /** The sub-stores this store forwards to. */
  protected abstract override readonly parts: BillingParts;

  /** Stores a new promo. */
  async insertPromo(promo: Promo): Promise<void> {
    return this.parts.promos.insertPromo(promo);
  }
  /** The promo of that code; null when there is none. */
  async getPromo(code: string): Promise<Promo | null> {
    return this.parts.promos.getPromo(code);
  }
  /** A page of promos, newest first. */
  async listPromos(query: { limit: number; before?: { createdAt: Date; code: string } }): Promise<Promo[]> {
    return this.parts.promos.listPromos(query);
  }
  /** Turns a promo on or off; resolves to it, or null when there is none. */
  async setPromoActive(code: string, isActive: boolean, updatedAt: Date): Promise<Promo | null> {
    return this.parts.promos.setPromoActive(code, isActive, updatedAt);
  }
  /** How many times the user claimed the promo. */
  async countPromoClaims(code: string, userId: string): Promise<number> {
    return this.parts.promos.countPromoClaims(code, userId);
  }
  /** The user's promo claims. */
  async listPromoClaims(userId: string): Promise<PromoClaim[]> {
    return this.parts.promos.listPromoClaims(userId);
  }
  /** Stores a new payment. */
  async insertPayment(payment: Payment): Promise<void> {
    return this.parts.promos.insertPayment(payment);
  }
  /** The payment; null when there is none (or it is another user's). */
  async getPayment(paymentId: string, userId?: string): Promise<Payment | null> {
    return this.parts.promos.getPayment(paymentId, userId);
  }
  /** The payment the provider knows by that id; null when there is none. */
  async findPaymentByProviderId(provider: string, id: string): Promise<Payment | null> {
    return this.parts.promos.findPaymentByProviderId(provider, id);
  }
  /** A page of the user's payments, newest first. */
  async listPayments(
    userId: string,
    query: { limit: number; before?: { createdAt: Date; id: string } },
  ): Promise<Payment[]> {
    return this.parts.promos.listPayments(userId, query);
  }
  /** Saves a payment's new state; resolves to whether it was there. */
  async updatePayment(payment: Payment): Promise<boolean> {
    return this.parts.promos.updatePayment(payment);
  }
}
