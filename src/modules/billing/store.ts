import type { DbManager, DbTransaction } from "../../core/db/types.js";
import { ConfigurationError } from "../../core/errors.js";
import type { Payment, Promo, PromoClaim } from "../../models-entry.js";
import { BILLING, billingStorePart } from "./store-part.js";

export { BILLING };

/**
 * The part of the storage contract that promo codes and payment top-ups need (see `DbManager`).
 *
 * Guarantees an adapter gives:
 *  - promo codes are unique (`insertPromo` throws `ConflictError` on a duplicate);
 *  - a claim saved with a unit of work (`Changes.rows.billing.promoClaims`) takes one use from the promo with a
 *    guarded write that is part of the unit of work's transaction — `uses = uses + 1` only where
 *    `maxUses` is null or `uses < maxUses` — and inserts the claim, unique per
 *    (code, userId, claimNumber); a refused guard or unique index fails the whole unit of work with
 *    `ConflictError` (nothing saved);
 *  - a payment update (`updatePayment`, `Changes.rows.billing.paymentUpdates`) is a compare-and-set on
 *    `version`: it writes only where the stored `version` is `payment.version - 1`.
 * @beta
 */
export interface PromoPaymentStore {
  /** Inserts a promo; `ConflictError` when its code exists. */
  insertPromo(promo: Promo): Promise<void>;
  /** A promo by its (upper-cased) code. */
  getPromo(code: string): Promise<Promo | null>;
  /** Promos, newest first, at most `limit`; `before`: createdAt strictly older than this (paging). */
  listPromos(query: { limit: number; before?: { createdAt: Date; code: string } }): Promise<Promo[]>;
  /** Sets `isActive` (and `updatedAt`) only, never `uses`. Returns the promo after, or null. */
  setPromoActive(code: string, isActive: boolean, updatedAt: Date): Promise<Promo | null>;
  /** How many times `userId` claimed `code`. */
  countPromoClaims(code: string, userId: string): Promise<number>;
  /** A user's claims, oldest first. */
  listPromoClaims(userId: string): Promise<PromoClaim[]>;

  /** Inserts a payment; `ConflictError` when its id exists. */
  insertPayment(payment: Payment): Promise<void>;
  /** `userId`, when the caller knows the owner: the lookup is keyed by it (docs/scaling-out.md). */
  getPayment(paymentId: string, userId?: string): Promise<Payment | null>;
  /** The payment of `provider` whose `providerRef` or `providerPaymentId` is `id`. */
  findPaymentByProviderId(provider: string, id: string): Promise<Payment | null>;
  /** A user's payments, newest first (createdAt, then id), strictly after the cursor. */
  listPayments(userId: string, query: { limit: number; before?: { createdAt: Date; id: string } }): Promise<Payment[]>;
  /** Compare-and-set: writes `payment` where the stored version is `payment.version - 1`. False on a miss. */
  updatePayment(payment: Payment): Promise<boolean>;
}

/** Reads a unit of work makes for promos and payments (inside its transaction). @beta */
export interface PromoPaymentTransaction {
  /** The promo, read inside the transaction. */
  getPromo(code: string): Promise<Promo | null>;
  /** Claims of `code` by this unit of work's user. */
  countPromoClaims(code: string): Promise<number>;
  /** A payment of this unit of work's user, read inside the transaction. */
  getPayment(paymentId: string): Promise<Payment | null>;
}

/**
 * What a unit of work saves for promos and payments, atomically with its account changes: the
 * billing module's rows (`Changes.rows.billing`), which the billing part of the store writes.
 */
export type PromoPaymentChanges = {
  /** Claims to record; each takes one use from its promo under the `maxUses` guard. */
  promoClaims?: PromoClaim[];
  /** Payments of this user to write, each a compare-and-set on `version - 1`. */
  paymentUpdates?: Payment[];
};

/** The billing module's rows of `changes` (`Changes.rows.billing`), if any. */
export const billingRows = (changes: {
  rows?: { readonly [module: string]: unknown };
}): PromoPaymentChanges | undefined => changes.rows?.[BILLING] as PromoPaymentChanges | undefined;

/** A store with the billing part: what the billing module's services read and write. */
export type BillingDb = DbManager & PromoPaymentStore;

const STORE_METHODS = [
  "insertPromo",
  "getPromo",
  "listPromos",
  "setPromoActive",
  "countPromoClaims",
  "listPromoClaims",
  "insertPayment",
  "getPayment",
  "findPaymentByProviderId",
  "listPayments",
  "updatePayment",
] as const satisfies readonly (keyof PromoPaymentStore)[];

const TRANSACTION_METHODS = [
  "getPromo",
  "countPromoClaims",
  "getPayment",
] as const satisfies readonly (keyof PromoPaymentTransaction)[];

const noPart = (store: string, method: string): ConfigurationError =>
  new ConfigurationError(
    `[credit-management] [${store}] ${method}: this store has no promos part (promo codes and payments: docs/writing-a-store.md, "A module's part")`,
  );

/**
 * `db` as the billing module uses it: the store's core methods, and the billing part's (bound with
 * `usePart` on first use: docs/writing-a-store.md, "A module's part"). A store without a billing
 * part of its dialect answers the part's methods with `ConfigurationError`.
 */
export function billingStore(db: DbManager): BillingDb {
  const part = db.usePart?.(billingStorePart) ?? null;
  return new Proxy(db, {
    get(target, prop) {
      if ((STORE_METHODS as readonly PropertyKey[]).includes(prop)) {
        if (part === null) return () => Promise.reject(noPart(target.name, String(prop)));
        const method = part[prop as keyof PromoPaymentStore] as (...a: unknown[]) => unknown;
        return method.bind(part);
      }
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as BillingDb;
}

/** A unit of work's transaction as the billing module reads it; `ConfigurationError` where the store has no promos part. */
export function billingTx(tx: DbTransaction, store: string): PromoPaymentTransaction {
  const part = tx.part?.(BILLING) as Partial<PromoPaymentTransaction> | undefined;
  const lacking = TRANSACTION_METHODS.find((m) => typeof part?.[m] !== "function");
  if (part === undefined || lacking !== undefined) throw noPart(store, lacking ?? TRANSACTION_METHODS[0]);
  return part as PromoPaymentTransaction;
}
