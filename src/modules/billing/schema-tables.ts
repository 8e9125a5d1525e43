import { Payment } from "./model-payments.js";
import { Promo, PromoClaim } from "./model-promos.js";
import type { TableSpec } from "../../schema/tables.js";

/** Tables of promo codes, their claims and payments (see `src/modules/billing/store.ts`). */
export const promoPaymentTableSpecs: Record<"promos" | "promoClaims" | "payments", TableSpec> = {
  promos: {
    name: "promos",
    model: Promo,
    // The upper-cased code; the claim's guarded `uses` update finds the row by it.
    primaryKey: ["code"],
    indexes: [{ name: "created", fields: ["createdAt", "code"] }],
  },
  promoClaims: {
    name: "promo_claims",
    model: PromoClaim,
    primaryKey: ["id"],
    indexes: [
      // One claim per (code, user, claim number): the backstop of the per-user limit, and the
      // count a claim makes of its user's earlier claims.
      { name: "code_user_n", fields: ["code", "userId", "claimNumber"], unique: true },
      { name: "user_created", fields: ["userId", "createdAt"] },
    ],
  },
  payments: {
    name: "payments",
    model: Payment,
    primaryKey: ["id"],
    indexes: [
      { name: "user_created", fields: ["userId", "createdAt", "id"] },
      { name: "provider_ref", fields: ["provider", "providerRef"], where: [{ field: "providerRef", op: "notNull" }] },
      {
        name: "provider_payment",
        fields: ["provider", "providerPaymentId"],
        unique: true,
        where: [{ field: "providerPaymentId", op: "notNull" }],
      },
    ],
  },
};
