/**
 * `credit-management/core`: the ledger alone (ARCHITECTURE.md, "Where the core ends") — credits,
 * holds, expiry and the audit journal, with subscriptions, notifications and the jobs as parts a
 * manager is given — over the in-memory store or any store of the core contract, with none of the modules (promos and payments, revenue and usage
 * reports, the customer's state, metering, leases, pricing, customer tokens, archival). The package's
 * root, `credit-management`, is this and every module (docs/modules.md).
 */
export {
  createCreditManager,
  type CoreManagerOptions,
  type CoreManager,
  type OpenedCore,
  openCore,
} from "./manager.js";
// The parts of the core a manager is given (docs/modules.md, "Parts of the core").
export {
  expirationPart,
  type ExpirationPartOptions,
  notificationsPart,
  type NotificationsPartOptions,
  subscriptionsPart,
} from "./parts.js";
export type { CorePart, ManagerParts, PartServices } from "./part-builds.js";
export { CoreInMemoryDbManager } from "./db/memory/index.js";
export type { AuditCheck, AuditRead } from "./services/audit-check.js";
export type { UnitHook } from "./services/unit-of-work.js";
// The module seam (docs/modules.md, "Writing a module"), @beta.
export {
  accountColumn,
  moduleNotification,
  type AccountColumn,
  type CreditModule,
  type ModuleContext,
  type ModuleRegistry,
} from "./module.js";
export type { UnitContext } from "./services/unit-of-work.js";
export type { EntryMeta, NewGrant, UnitWork } from "./domain/unit-work.js";
