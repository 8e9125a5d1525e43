/**
 * The factories of the core's parts (docs/modules.md, "Parts of the core"): subscriptions,
 * notifications and the maintenance jobs. `credit-management/core`'s `createCreditManager` builds
 * only the parts it is given, so a service that only holds and charges credits bundles none of
 * them; the package's root builds every part. Their public shape and registry:
 * src/core/part-builds.ts.
 */
import * as z from "zod/mini";
import { AlertThresholds } from "./models/alerts.js";
import { ThresholdSpec } from "./models/notifications.js";
import { parseConfig } from "./models/parse.js";
import type { NotificationQueue } from "./queue/index.js";
import { ExpirationService, IdempotencyRetention } from "./services/expiration-service.js";
import { NotificationService } from "./services/notification-service.js";
import { outboxRecording } from "./services/outbox-recording.js";
import { SubscriptionService } from "./services/subscription-service.js";
import { definePart, subscriptionsBuild, type CorePart } from "./part-builds.js";

/**
 * What the manager's `notifications` option holds (the package's root takes it as today, beside
 * `queue` and `domainEvents`): the low-credits thresholds, delivery settings, reminder windows and
 * alert thresholds.
 */
export const NotificationSettings = z.extend(ThresholdSpec, {
  /** Delivery attempts before a row is `failed`. Default 10. */
  maxAttempts: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
  /** First retry delay in ms (doubles per failure). Default 1,000. */
  backoffBaseMs: z.optional(z.number().check(z.int(), z.minimum(1))),
  /** Longest retry delay in ms. Default 3,600,000. */
  backoffMaxMs: z.optional(z.number().check(z.int(), z.minimum(1))),
  /** A dispatcher's claim on a row, in ms. Default 60,000. */
  leaseMs: z.optional(z.number().check(z.int(), z.minimum(100))),
  /** Longest wait for one publish, in ms (at most `leaseMs`). Default half of `leaseMs`. */
  publishTimeoutMs: z.optional(z.number().check(z.int(), z.minimum(1))),
  /** The expiring-credit reminder windows `expiration.runAll()` records, in days. Default `[7]`; `[]`: none. */
  reminderDays: z.optional(z.array(z.number().check(z.minimum(0), z.maximum(3650))).check(z.maxLength(16))),
  /**
   * The alert thresholds of every account without its own (docs/notifications.md, "Alerts"):
   * available credits, what is left as a percentage, spend in a calendar window, credits expiring
   * soon; `notifications.setAlerts` gives an account its own.
   */
  alerts: z.optional(AlertThresholds),
});

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/** Where notifications are delivered (`NotificationQueue`). */
export const QueueOption = z.custom<NotificationQueue>(
  (v) => isObject(v) && typeof (v as NotificationQueue).publish === "function",
  { error: "queue must implement NotificationQueue" },
);

/** Options of `notificationsPart`. @public */
export const NotificationsPartOptions = z.extend(NotificationSettings, {
  /** Where notifications are delivered. Default: an in-memory queue (`InMemoryNotificationQueue`). */
  queue: z.optional(QueueOption),
  /** Record a domain event per journal entry in the outbox, with the change (docs/events.md). Default false. */
  domainEvents: z.optional(z.boolean()),
});
/** Options of `notificationsPart`. @public */
export type NotificationsPartOptions = z.input<typeof NotificationsPartOptions>;

/** Options of `expirationPart`. @public */
export const ExpirationPartOptions = z.strictObject({
  /**
   * Idempotency keys: `retention` is how long a key answers retries — `"forever"` (default) or a
   * window such as `"24h"` or `"30d"` (at least 1m), after which `expiration.runAll()` /
   * `forgetIdempotencyKeys()` forgets it (docs/running-for-years.md).
   */
  idempotency: z.optional(z.strictObject({ retention: z.optional(IdempotencyRetention) })),
});
/** Options of `expirationPart`. @public */
export type ExpirationPartOptions = z.input<typeof ExpirationPartOptions>;

/** `manager.subscriptions`: plans, subscriptions, their periods and renewals (docs/subscriptions.md). @public */
export function subscriptionsPart(): CorePart<"subscriptions"> {
  return definePart<CorePart<"subscriptions">>("subscriptions", {
    service: ({ db, ledger, cache, clock, logger, credits }) =>
      new SubscriptionService({ db, ledger, cache, clock, logger, credits }),
  });
}

/**
 * `manager.notifications`, and notification events recorded in the unit of work of each change
 * (docs/notifications.md): low credits, exhaustion, alerts, lapsed holds, refusals, subscription
 * events, spend-limit crossings, feature flips, and a domain event per journal entry with
 * `domainEvents`. Bad options: `ConfigurationError`.
 * @public
 */
export function notificationsPart(options: NotificationsPartOptions = {}): CorePart<"notifications"> {
  return notificationsWith(parseConfig(NotificationsPartOptions, options, "notificationsPart"), true);
}

/**
 * The notifications part of validated settings; `recording` false: the dispatcher and `emit` only
 * (the package's root without `queue`, `notifications` or `domainEvents`).
 */
export function notificationsWith(
  n: z.output<typeof NotificationsPartOptions>,
  recording: boolean,
): CorePart<"notifications"> {
  const thresholds = { lowCredits: n.lowCredits, lowCreditsPercent: n.lowCreditsPercent };
  const alerts = n.alerts ?? [];
  return definePart<CorePart<"notifications">>("notifications", {
    outbox: recording ? outboxRecording({ ...thresholds, alerts }, n.domainEvents === true) : undefined,
    reminderDays: n.reminderDays,
    service: ({ db, clock, logger, credits }) =>
      new NotificationService({
        db,
        queue: n.queue,
        thresholds,
        alerts,
        clock,
        logger,
        maxAttempts: n.maxAttempts,
        backoffBaseMs: n.backoffBaseMs,
        backoffMaxMs: n.backoffMaxMs,
        leaseMs: n.leaseMs,
        publishTimeoutMs: n.publishTimeoutMs,
        recording,
        credits,
      }),
  });
}

/**
 * `manager.expiration`: the maintenance jobs (docs/operations.md) — holds released and grants
 * expired when due, subscriptions renewed, checkpoints, idempotency keys forgotten, and with the
 * notifications part the expiring-credit reminders and the outbox delivered. Bad options:
 * `ConfigurationError`.
 * @public
 */
export function expirationPart(options: ExpirationPartOptions = {}): CorePart<"expiration"> {
  const o = parseConfig(ExpirationPartOptions, options, "expirationPart");
  return definePart<CorePart<"expiration">>("expiration", {
    service: (ctx) =>
      new ExpirationService({
        db: ctx.db,
        credits: ctx.credits,
        // The jobs renew subscriptions whether or not the manager has the part: another manager may
        // have subscribed accounts in the same store.
        subscriptions: ctx.subscriptions ?? subscriptionsBuild(subscriptionsPart()).service(ctx),
        ledger: ctx.ledger,
        clock: ctx.clock,
        logger: ctx.logger,
        notifications: ctx.notifications?.recording === true ? ctx.notifications : undefined,
        reminderDays: ctx.reminderDays,
        idempotencyRetention: o.idempotency?.retention,
      }),
  });
}
