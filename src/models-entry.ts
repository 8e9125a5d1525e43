/**
 * Every zod model and type of the package, the core's (src/core/models/index.ts) and each module's
 * (src/modules/<name>/model*.ts), their building blocks included: the package's own index of them.
 * The entry point `credit-management/models` (src/models-public.ts) exports those a user passes or
 * receives.
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
