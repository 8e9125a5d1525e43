/**
 * `credit-management/core`: the ledger alone (ARCHITECTURE.md, "Where the core ends") — credits,
 * holds, expiry, subscriptions, notifications and the audit journal over the in-memory store or any
 * store of the core contract, with none of the modules (promos and payments, revenue and usage
 * reports, the customer's state, metering, leases, pricing, customer tokens, archival). The package's
 * root, `credit-management`, is this and every module (docs/modules.md).
 */
export { createCreditManager, CoreManagerOptions, type CoreManager, type CoreParts, openCore } from "./manager.js";
export {
  CoreCreditService,
  type CoreCreditServiceOptions,
  type ExpiringCredits,
  type HistoryPage,
  type ChargeReversals,
} from "./services/credit-service.js";
export {
  SubscriptionService,
  type AdvanceResult,
  type SubscriptionServiceOptions,
} from "./services/subscription-service.js";
export { ExpirationService, type ExpirationServiceOptions } from "./services/expiration-service.js";
export { NotificationService, type NotificationServiceOptions } from "./services/notification-service.js";
export {
  InMemoryNotificationQueue,
  CallbackNotificationQueue,
  type NotificationQueue,
  type NotificationMessage,
} from "./queue/index.js";
export { LedgerLogger, type LedgerLoggerOptions } from "./ledger/index.js";
export type { Logger } from "./logger.js";
export { InMemoryCache, type Cache, type InMemoryCacheOptions } from "./cache/index.js";
export { CoreInMemoryDbManager } from "./db/memory/index.js";
export type { DbManager } from "./db/types.js";
export type { AuditReport } from "./domain/replay.js";
export type { AuditCheck, AuditRead } from "./services/audit-check.js";
export type { UnitHook } from "./services/unit-of-work.js";
export type { CheckResult } from "./domain/checks.js";
export * from "./errors.js";
export type {
  Account,
  AddCreditsOptions,
  CommitOptions,
  CreditsInfo,
  DeductOptions,
  Grant,
  JournalEntry,
  Plan,
  ReleaseOptions,
  Reservation,
  ReserveOptions,
  Subscription,
} from "./models/index.js";

// The module seam (docs/modules.md, "Writing a module"), @beta.
export {
  accountColumn,
  moduleNotification,
  moduleRegistry,
  type AccountColumn,
  type CreditModule,
  type ModuleContext,
  type ModuleRegistry,
} from "./module.js";
export type { UnitContext } from "./services/unit-of-work.js";
export type { ModuleRows } from "./domain/state.js";
