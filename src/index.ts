export { createCreditManager, type CreditManager } from "./manager.js";
export type { TransactionScope, TransactionOptions, TransactionSession, SessionSource } from "./transactions.js";
export { CreditService, type CreditServiceOptions } from "./credit-service.js";
export {
  CoreCreditService,
  type CoreCreditServiceOptions,
  type ExpiringCredits,
  type HistoryPage,
  type ChargeReversals,
} from "./core/services/credit-service.js";
// What `CoreCreditServiceOptions.notifications` takes (`notificationsPart` of credit-management/core).
export type { CorePart } from "./core/part-builds.js";
export type { CustomerGrant, CustomerToken } from "./modules/customer-tokens/service.js";
export { revenueCsv } from "./modules/revenue/csv.js";
export { usageCsv } from "./modules/usage/csv.js";
export {
  SubscriptionService,
  type AdvanceResult,
  type SubscriptionServiceOptions,
} from "./core/services/subscription-service.js";
export {
  ExpirationService,
  type ExpirationServiceOptions,
  type CheckpointAccountsReport,
  type ExpireGrantsReport,
  type ForgetKeysReport,
  type ForgetKeysOptions,
  type IdempotencyRetention,
  type ReleaseHoldsReport,
  type RenewSubscriptionsReport,
  type RunAllReport,
} from "./core/services/expiration-service.js";
/**
 * Billing-period arithmetic in UTC, as pure functions: the periods of a subscription computed from
 * its anchor (docs/subscriptions.md).
 * @public
 */
export * as periods from "./core/domain/periods.js";
export {
  PromoService,
  type PromoServiceOptions,
  type PromoClaimResult,
  type PromoPage,
} from "./modules/billing/service-promos.js";
export {
  PaymentService,
  type PaymentServiceOptions,
  type WebhookResult,
  type PaymentPage,
  type AutoTopUpResult,
} from "./modules/billing/service-payments.js";
export {
  RazorpayProvider,
  STRIPE_API_VERSION,
  StripeProvider,
  type RazorpayProviderOptions,
  type StripeProviderOptions,
  type CheckoutRequest,
  type CheckoutResult,
  type FetchLike,
  type HeadersLike,
  type OffSessionChargeRequest,
  type OffSessionChargeResult,
  type PaymentEvent,
  type PaymentEventKind,
  type PaymentProvider,
} from "./modules/billing/providers.js";
export {
  NotificationService,
  type NotificationServiceOptions,
  type DispatchReport,
  type SubscriptionEventType,
} from "./core/services/notification-service.js";
export {
  InMemoryNotificationQueue,
  CallbackNotificationQueue,
  eventEnvelope,
  type NotificationQueue,
  type NotificationMessage,
} from "./core/queue/index.js";
export type { Thresholds } from "./core/domain/notifications.js";
export { alertStates } from "./core/domain/notifications.js";
export {
  addLlmUsage,
  currentMeter,
  recordUsage,
  type MeterContext,
  type MeterOutcome,
} from "./modules/metering/service.js";
export type { LeaseCharge, LeaseRecovery } from "./modules/leases/service.js";
export {
  PricingService,
  usageOfResponse,
  type PricingServiceOptions,
  type UsageInput,
} from "./modules/pricing/service.js";
export { LedgerLogger, type LedgerLoggerOptions, type LedgerStats } from "./core/ledger/index.js";
export type { Logger } from "./core/logger.js";
export type { HealthCheck, HealthReport, HealthStatus } from "./health.js";
export {
  DIAGNOSTICS_CHANNELS,
  DIAGNOSTICS_VERSION,
  type DispatchMessage,
  type HoldMessage,
  type JobMessage,
  type MeteringMessage,
  type RefusalMessage,
  type UnitOfWorkMessage,
  type UnitOutcome,
  type WebhookMessage,
} from "./diagnostics.js";
export { InMemoryCache, type Cache, type InMemoryCacheOptions } from "./core/cache/index.js";
export { InMemoryDbManager } from "./built-in-parts.js";
export { createDbManagerFromEnv, type DbEnv } from "./from-env.js";
export type { AuditReport } from "./core/domain/replay.js";
export type { CheckReason, CheckResult, FeatureRule } from "./core/domain/checks.js";
export type {
  CustomerState,
  CustomerStatePage,
  FeatureLimit,
  FeatureState,
  StateGrant,
  SubscriptionState,
} from "./modules/customer-state/rules.js";
export type { CreditManagerOptions } from "./manager.js";
export type { JobBase } from "./core/services/expiration-service.js";
export type {
  DispatchOptions,
  EvaluateAlertsOptions,
  HandleOptions,
  NotificationListQuery,
  NotificationStartOptions,
  PurgeOptions,
  ReminderOptions,
} from "./core/services/notification-service.js";
export type { ArchivePartitionsOptions } from "./modules/archive/service.js";
export type { LeaseSpend } from "./modules/leases/service.js";
export type { SetAside } from "./modules/metering/service.js";
export type { JobOptions, CheckpointJobOptions } from "./core/services/expiration-service.js";
export type { PaymentManagerOptions } from "./modules/billing/providers.js";
export type { EmitInput } from "./core/services/notification-service.js";
export type { ListPromosQuery } from "./modules/billing/service-promos.js";
export type { HealthOptions } from "./health.js";
export type { ArchiveJournalOptions, ArchiveReport } from "./modules/archive/service.js";
export type { MeterSession } from "./modules/metering/service.js";
export type { CreditLeases } from "./modules/leases/service.js";
import type { CliIo } from "./cli/run.js";
import type { AuditSource } from "./cli/audit.js";
export type { CliIo, AuditSource };

/**
 * Runs the CLI with `args` (without node and the script). Resolves to the exit code: 0 done, 1
 * failed (or, for `audit`, a problem found), 2 bad usage (the message says what was wrong); 3, for
 * `audit` and `accounts`, an account named does not exist. `source`: the store `audit` and
 * `accounts` read, or the environment `audit`, `accounts` and `worker` read, instead of the
 * process's (tests).
 * @public
 */
export async function runCli(args: readonly string[], io: CliIo, source: AuditSource = {}): Promise<number> {
  // The CLI (the service, its HTTP server, pino, files) is loaded when it runs, not when the
  // package is imported: the core needs no Node-only module at import (docs/runtimes.md).
  const cli = await import("./cli/run.js");
  return cli.runCli(args, io, source);
}

// The errors: the core's and every module's, with the full `CreditErrorCode` (src/errors.ts).
export * from "./errors.js";
