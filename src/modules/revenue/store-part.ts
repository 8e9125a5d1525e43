import type { ModuleStorePart } from "../../core/db/module-part.js";
import { revenuePostgresPart } from "./postgres.js";
import type { RevenueSummaryReads } from "./store.js";

/**
 * The revenue module's store part: the revenue summary, on PostgreSQL only (docs/revenue.md, "How
 * it is computed"); its tables are part of the package's PostgreSQL schema (./schema-pg.ts).
 */
export const revenueStorePart: ModuleStorePart<RevenueSummaryReads> = {
  module: "revenue",
  postgres: revenuePostgresPart,
};
