import type { ModuleStorePart } from "../../core/db/module-part.js";
import { billingMemoryPart } from "./memory.js";
import { billingMongoPart } from "./mongodb.js";
import { billingPostgresPart } from "./postgres.js";
import { billingSqlitePart } from "./sqlite.js";
import type { PromoPaymentStore } from "./store.js";

/** The billing module's id: the key of its rows on `Changes.rows` and of its store part. */
export const BILLING = "billing";

/**
 * The billing module's store part (promo codes, their claims, payments), one side per dialect
 * (docs/writing-a-store.md, "A module's part"). Its tables are part of the package's schema
 * (`promos`, `promo_claims`, `payments`: src/modules/billing/schema-tables.ts).
 */
export const billingStorePart: ModuleStorePart<PromoPaymentStore> = {
  module: BILLING,
  memory: billingMemoryPart,
  sqlite: billingSqlitePart,
  postgres: billingPostgresPart,
  mongodb: billingMongoPart,
};
