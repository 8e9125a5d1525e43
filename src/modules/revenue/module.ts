import type { CreditModule } from "../../core/module.js";
import { revenueAudit } from "./service.js";
import { revenueStorePart } from "./store-part.js";

/** The revenue module (docs/revenue.md) as a `CreditModule`: its check in `audit()` and its summary's store part. */
export function revenueModule(): CreditModule {
  return { id: "revenue", auditCheck: revenueAudit, store: revenueStorePart };
}
