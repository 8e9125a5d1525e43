/**
 * `credit-management/store`: the contract a store implements (`DbManager` and its parts), for
 * writing your own backend; `credit-management/testing` has the suite that checks one. See
 * docs/storage.md, "Your own backend".
 */
export type {
  Changes,
  DbCapabilities,
  DbManager,
  DbTransaction,
  JournalQuery,
  LedgerQuery,
  LoadRequest,
  LoadedState,
  ScanCursor,
  StoreStats,
} from "./db/types.js";
export type { SubscriptionCursor, SubscriptionStore } from "./db/types-subscriptions.js";
export type { PromoPaymentStore, PromoPaymentTransaction, PromoPaymentChanges } from "./db/types-promos.js";
export type { NotificationStore, ClaimQuery, NotificationUpdate } from "./db/types-notifications.js";
export { compareGrants } from "./domain/order.js";
