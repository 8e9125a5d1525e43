/**
 * `credit-management/models`: every zod model and type of the public API, the core's
 * (src/core/models/index.ts) and each module's (src/modules/<name>/model*.ts).
 */
export * from "./core/models/index.js";
export * from "./modules/billing/model-promos.js";
export * from "./modules/billing/model-payments.js";
export * from "./modules/billing/model-auto-top-up.js";
export * from "./modules/metering/model.js";
export * from "./modules/pricing/model.js";
export * from "./modules/leases/model.js";
export * from "./modules/revenue/model.js";
export * from "./modules/customer-tokens/model.js";
export * from "./modules/customer-state/model.js";
