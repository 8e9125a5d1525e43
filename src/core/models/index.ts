/**
 * The core's models (docs/concepts.md): accounts, grants, holds, the journal, subscriptions,
 * notifications and alerts, limits, usage queries, the customer state. The modules' models are in
 * their folders (src/modules/<name>/model*.ts); `credit-management/models` exports both
 * (src/models-entry.ts).
 */
export * from "./common.js";
export * from "./entities.js";
export * from "./records.js";
export * from "./inputs.js";
export { parse } from "./parse.js";
export * from "./subscriptions.js";
export * from "./alerts.js";
export * from "./notifications.js";
export * from "./events.js";
export * from "./limits.js";
export * from "./usage.js";
export * from "./cost-basis.js";
