import type { ModuleStorePart } from "../../core/db/module-part.js";
import { revenueMemoryPart } from "./memory.js";
import { revenueMongoPart } from "./mongodb.js";
import { revenuePostgresPart } from "./postgres.js";
import { revenueSqlitePart } from "./sqlite.js";
import type { RevenueSummaryReads } from "./store.js";

/**
 * The revenue module's store part, one side per dialect: the closed periods of its reports
 * (docs/revenue.md, "Closing a month"; tables `period_closes` and `period_close_marks`, part of the
 * package's schema: src/modules/revenue/schema-tables.ts), and the revenue summary, on PostgreSQL
 * only (docs/revenue.md, "How it is computed"; its tables in ./schema-pg.ts).
 */
export const revenueStorePart: ModuleStorePart<RevenueSummaryReads> = {
  module: "revenue",
  memory: revenueMemoryPart,
  sqlite: revenueSqlitePart,
  postgres: revenuePostgresPart,
  mongodb: revenueMongoPart,
};
