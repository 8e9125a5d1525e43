import { StoreBase } from "../../core/db/store/base.js";
import type { Part, SideParts } from "../../core/db/store/parts.js";
import type { Payment, Promo, PromoClaim } from "../../models-entry.js";
import type { PromoPaymentStore } from "./store.js";

/** The core's sub-stores and the billing module's part (`promos`). */
export interface BillingParts extends SideParts {
  promos: Part<PromoPaymentStore>;
}

/**
 * `StoreBase` with the billing module's part forwarded to `parts.promos`: the base of the stores
 * built into the package (memory, PostgreSQL, MongoDB; SQLite through `defineStore`), which carry it.
 */
export abstract class BillingStoreBase extends StoreBase implements PromoPaymentStore {
  protected abstract override readonly parts: BillingParts;

  async insertPromo(promo: Promo): Promise<void> {
    return this.parts.promos.insertPromo(promo);
  }
  async getPromo(code: string): Promise<Promo | null> {
    return this.parts.promos.getPromo(code);
  }
  async listPromos(query: { limit: number; before?: { createdAt: Date; code: string } }): Promise<Promo[]> {
    return this.parts.promos.listPromos(query);
  }
  async setPromoActive(code: string, isActive: boolean, updatedAt: Date): Promise<Promo | null> {
    return this.parts.promos.setPromoActive(code, isActive, updatedAt);
  }
  async countPromoClaims(code: string, userId: string): Promise<number> {
    return this.parts.promos.countPromoClaims(code, userId);
  }
  async listPromoClaims(userId: string): Promise<PromoClaim[]> {
    return this.parts.promos.listPromoClaims(userId);
  }
  async insertPayment(payment: Payment): Promise<void> {
    return this.parts.promos.insertPayment(payment);
  }
  async getPayment(paymentId: string, userId?: string): Promise<Payment | null> {
    return this.parts.promos.getPayment(paymentId, userId);
  }
  async findPaymentByProviderId(provider: string, id: string): Promise<Payment | null> {
    return this.parts.promos.findPaymentByProviderId(provider, id);
  }
  async listPayments(
    userId: string,
    query: { limit: number; before?: { createdAt: Date; id: string } },
  ): Promise<Payment[]> {
    return this.parts.promos.listPayments(userId, query);
  }
  async updatePayment(payment: Payment): Promise<boolean> {
    return this.parts.promos.updatePayment(payment);
  }
}
