import type { CreditModule } from "../../core/module.js";
import { revenueAudit } from "./service.js";

/** The revenue module (docs/revenue.md) as a `CreditModule`: its check in `audit()`. */
export function revenueModule(): CreditModule {
  return { id: "revenue", auditCheck: revenueAudit };
}
