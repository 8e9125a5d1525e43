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
export type {
  ArchivePartitionsInput,
  ArchivePartitionsReport,
  EnsurePartitionsReport,
} from "./core/db/types-partitions.js";

// A module's store part (docs/writing-a-store.md, "A module's part").
export { ModuleParts } from "./core/db/module-part.js";
export type {
  BoundStorePart,
  MemoryBoundPart,
  ModuleRowLists,
  ModuleRows,
  ModuleStorePart,
} from "./core/db/module-part.js";
// What each built-in store hands a module's part, and what the part's side gives back.
export type { SqliteBoundPart, SqlitePartHost, SqlitePartTx } from "./db/sqlite/module-part.js";
export type {
  PostgresBoundPart,
  PostgresModuleSave,
  PostgresPartHost,
  PostgresPartTx,
} from "./db/postgres/module-part.js";
export type { MongoBoundPart, MongoPartHost, MongoPartTx } from "./db/mongodb/module-part.js";
