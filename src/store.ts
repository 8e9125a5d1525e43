/**
 * `credit-management/store`: the contract a store implements (`DbManager` and its parts), and
 * `defineStore`, which builds one from its parts, for writing your own backend;
 * `credit-management/testing` has the suite that checks one, part by part. See
 * docs/writing-a-store.md.
 */
export type {
  AccountCredits,
  AccountStore,
  ChargeRecord,
  Changes,
  DbCapabilities,
  DbManager,
  DbTransaction,
  JournalQuery,
  JournalStore,
  LedgerQuery,
  LoadRequest,
  LoadedState,
  OptionalPart,
  ScanCursor,
  StoreStats,
} from "./core/db/types.js";
export type { SubscriptionCursor, SubscriptionStore } from "./core/db/types-subscriptions.js";
export type {
  BillingChanges,
  PromoPaymentStore,
  PromoPaymentTransaction,
  PromoPaymentChanges,
} from "./modules/billing/store.js";
export type { NotificationStore, ClaimQuery, NotificationUpdate, OutboxQuery } from "./core/db/types-notifications.js";
export { compareGrants } from "./core/domain/order.js";
export type {
  UsageBucket,
  UsageCatchUp,
  UsageRollupRow,
  UsageMeasure,
  UsageScan,
  UsageSums,
} from "./core/domain/usage.js";
export { defineStore, DefinedStore } from "./db/store/define.js";
export type { AccountsPart, Attempt, StoreDefinition, UnitOfWorkPart } from "./db/store/define.js";
export type { Part, SideParts } from "./core/db/store/parts.js";
export { StoreBase } from "./core/db/store/base.js";
export { BillingStoreBase, type BillingParts } from "./modules/billing/store-base.js";
