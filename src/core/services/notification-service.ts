import { randomUUID } from "node:crypto";
import type { Logger } from "../logger.js";
import * as z from "zod/mini";
import type { DbManager } from "../db/types.js";
import {
  alertNotifications,
  alertStates,
  backoffDelay,
  newNotification,
  withOverride,
  type Thresholds,
} from "../domain/notifications.js";
import { expiresBeyondScan, expiringScanDays, hasEndedSpendWindow } from "../domain/alerts.js";
import { alertInputs, withRecounts } from "./alert-reads.js";
import { outboxRecording } from "./outbox-recording.js";
import { AlertThresholds, type AlertStatus, type AlertThreshold } from "../models/alerts.js";
import { Metadata, UserId } from "../models/common.js";
import { ExpiringDays } from "../models/inputs.js";
import {
  NotificationStatus,
  NotificationType,
  ThresholdSpec,
  type AlertState,
  type Notification,
} from "../models/notifications.js";
import { parse } from "../models/parse.js";
import { ConfigurationError, ValidationError } from "../errors.js";
import { DomainEventType, EventVersion } from "../models/notifications.js";
import { parseConfig } from "../models/parse.js";
import { dispatchChannel, traceJob, traced, tracePromise, type DispatchMessage } from "../diagnostics.js";
import { saveAccountOnly, UnitRunner } from "./unit-of-work.js";
import { creditCore } from "./credit-service.js";
import { moduleRegistry, type ModuleRegistry } from "../module.js";
import type { CoreCreditService } from "./credit-service.js";
import { withTimeout } from "../util/promise.js";
import { InMemoryNotificationQueue, type NotificationMessage, type NotificationQueue } from "../queue/index.js";
import type { NotificationUpdate } from "../db/types-notifications.js";

/** Options of `new NotificationService()`: the store, the queue, the thresholds, the clock and the logger. @public */
export interface NotificationServiceOptions {
  /** The store. */
  db: DbManager;
  /** Where notifications go. Default: an `InMemoryNotificationQueue`. */
  queue?: NotificationQueue;
  /** The service's low-credits threshold (users may override it with `setThreshold`). */
  thresholds?: ThresholdSpec;
  /**
   * The alert thresholds of every account without its own (docs/notifications.md, "Alerts"); an
   * account's own (`setAlerts`) replace them.
   */
  alerts?: AlertThreshold[];
  /** Source of "now". Default `() => new Date()`. */
  clock?: () => Date;
  /** Where warnings and errors are logged. Default: none. */
  logger?: Logger;
  /** Delivery attempts before a row is marked `failed`. Default 10. */
  maxAttempts?: number;
  /** First retry delay, in ms; doubles with each failure (±20% jitter). Default 1,000. */
  backoffBaseMs?: number;
  /** Longest retry delay, in ms. Default 3,600,000 (one hour). */
  backoffMaxMs?: number;
  /**
   * How long a dispatcher's claim on a row lasts, in ms: longer than a `publish` takes. A row whose
   * dispatcher died is claimed again after it. Default 60,000.
   */
  leaseMs?: number;
  /**
   * Longest wait for one `publish`, in ms; longer counts as a failed attempt (retried). Default
   * half of `leaseMs`, so a hung queue never holds a row past its claim nor the loop forever.
   */
  publishTimeoutMs?: number;
  /**
   * Work done before a row of a type is published, by the dispatcher that claimed it: a throw is a
   * failed attempt (retried with backoff, as a failed publish). A module charges what its rows ask
   * for this way (docs/modules.md). A type no module of `credits` registers is a `ValidationError`.
   * Also `setHandler`.
   */
  handlers?: Partial<Record<NotificationType, (row: Notification) => Promise<unknown>>>;
  /**
   * Whether notification events are recorded (`createCreditManager`: `queue`, `notifications` or
   * `domainEvents` given); `createWorker` runs the reminders and the dispatcher by default only
   * then (docs/operations.md, "The worker in your own code"). Default true.
   */
  recording?: boolean;
  /**
   * The credit service over the same store (`createCreditManager` gives its own): the unit of work
   * of `evaluateAlerts` (and the worker's alert rounds) settles the account as its units do, through
   * its journal file, cache and subscription periods. Without it, that unit of work settles over
   * `db` alone (no journal file, no cache to invalidate).
   */
  credits?: CoreCreditService;
}

/** What one `dispatchPending` call did. @public */
export interface DispatchReport {
  /** Rows claimed and handed to the queue. */
  claimed: number;
  /** Messages the queue accepted. */
  sent: number;
  /** Publish failed; the row waits for its next attempt. */
  retried: number;
  /** Publish failed for the last allowed time; the row is `failed`. */
  failed: number;
  /** Delivered, but the claim had lapsed and another dispatcher took the row over (it may deliver again). */
  lost: number;
}

/** An event the host or another service (subscriptions) records for a user. @public */
export const EmitInput = z.strictObject({
  /** Any notification type but the domain events, which only the journal records (docs/events.md). */
  type: NotificationType.check(
    z.refine((t) => !(DomainEventType.options as readonly string[]).includes(t), {
      message: "a domain event is recorded by the journal only",
    }),
  ),
  payload: z.optional(Metadata),
  /** The version of `payload`'s schema (default: the type's current one, docs/events.md "Versions"). */
  version: z.optional(EventVersion),
  /** Unique per user: a second event with the same key is not stored (once per grant and window, per period, …). */
  dedupeKey: z.optional(z.string().check(z.minLength(1), z.maxLength(255))),
});
/** An event the host or another service (subscriptions) records for a user. @public */
export type EmitInput = z.input<typeof EmitInput>;

/** The subscription events (the subscription service emits them through `emit`). @public */
export type SubscriptionEventType = Extract<
  NotificationType,
  "subscription_renewed" | "subscription_allocation" | "subscription_cancelled" | "subscription_ended"
>;

/** Options of `notifications.dispatchPending()`: how many rows a round claims. @public */
export const DispatchOptions = z.strictObject({
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
});
/** Options of `payments.handleWebhook()`. @public */
export const HandleOptions = z.strictObject({
  /** The types whose rows are handled (each needs a handler). */
  types: z.array(NotificationType).check(z.minLength(1), z.maxLength(64)),
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
});
/** Options of `notifications.start()`: how often the dispatcher runs. @public */
export const NotificationStartOptions = z.strictObject({
  intervalMs: z.optional(z.number().check(z.int(), z.minimum(10), z.maximum(3_600_000))),
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
});
/** A page of `notifications.list()`: size, cursor, status and type. @public */
export const NotificationListQuery = z.strictObject({
  status: z.optional(NotificationStatus),
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
});
/** Options of `notifications.sendExpiringReminders()`: the windows, in days before expiry. @public */
export const ReminderOptions = z.strictObject({
  days: ExpiringDays,
  /** Grants looked at per page. */
  pageSize: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
});
const NullableThresholds = z.nullable(ThresholdSpec);
const NullableAlerts = z.nullable(AlertThresholds);
/** Options of `notifications.evaluateAlerts()`. @public */
export const EvaluateAlertsOptions = z.strictObject({
  /** Grants looked at per page. */
  pageSize: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
});
/** Options of `notifications.purge()`: how old a delivered row must be to go. @public */
export const PurgeOptions = z.strictObject({
  olderThanDays: z.optional(z.number().check(z.minimum(0), z.maximum(36_500))),
  batchSize: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(100_000))),
});
/** `notifications.dispatchPending(options)`. @public */
export type DispatchOptions = z.input<typeof DispatchOptions>;
/** `notifications.handlePending(options)`. @public */
export type HandleOptions = z.input<typeof HandleOptions>;
/** `notifications.start(options)`. @public */
export type NotificationStartOptions = z.input<typeof NotificationStartOptions>;
/** `notifications.list(userId, query)`. @public */
export type NotificationListQuery = z.input<typeof NotificationListQuery>;
/** `notifications.remindExpiring(options)`. @public */
export type ReminderOptions = z.input<typeof ReminderOptions>;
/** `notifications.purge(options)`. @public */
export type PurgeOptions = z.input<typeof PurgeOptions>;
/** `notifications.evaluateExpiringAlerts(options)` and `evaluateEndedSpendWindows(options)`. @public */
export type EvaluateAlertsOptions = z.input<typeof EvaluateAlertsOptions>;

/**
 * Notifications through an outbox (docs/notifications.md). Crossing events (`low_credits`,
 * `credits_exhausted`, `balance_restored`, `reservation_expired`, `transaction_error`, and a spend
 * limit's `limit_warning` and `limit_reached`: docs/teams-and-limits.md) are written by
 * `CreditService` inside the unit of work that causes them; this service adds the events that
 * change no account (`emit`, `sendExpiringReminders`), per-user thresholds, and the dispatcher that
 * delivers pending rows to the `NotificationQueue`: at least once, in order per user, with
 * exponential backoff, `failed` after `maxAttempts`.
 * @public
 */
export class NotificationService {
  /** The store whose outbox this service records and delivers. */
  readonly db: DbManager;
  /** Where notifications are delivered. */
  readonly queue: NotificationQueue;
  /** Whether notification events are recorded (`NotificationServiceOptions.recording`). */
  readonly recording: boolean;
  private readonly thresholds: Thresholds;
  private readonly clock: () => Date;
  private readonly logger: Logger | undefined;
  private readonly maxAttempts: number;
  private readonly backoffBaseMs: number;
  private readonly backoffMaxMs: number;
  private readonly leaseMs: number;
  private readonly publishTimeoutMs: number;
  private readonly handlers = new Map<NotificationType, (row: Notification) => Promise<unknown>>();
  /** The units of work that settle an account and evaluate its alerts (`evaluateAlerts`); none while not recording. */
  private readonly units: UnitRunner | undefined;
  private timer: NodeJS.Timeout | null = null;
  /** What the modules of `credits` registered, with the core's own. */
  private readonly registry: ModuleRegistry;
  private running: Promise<unknown> | null = null;
  private stopped = true;

  /** A notification service over `options.db`; `createCreditManager` builds one. */
  constructor(options: NotificationServiceOptions) {
    this.db = options.db;
    this.queue = options.queue ?? new InMemoryNotificationQueue();
    this.recording = options.recording ?? true;
    this.thresholds = {
      ...parseConfig(ThresholdSpec, options.thresholds ?? {}, "thresholds", "notifications"),
      alerts: parseConfig(AlertThresholds, options.alerts ?? [], "alerts", "notifications"),
    };
    this.clock = options.clock ?? (() => new Date());
    this.logger = options.logger;
    this.maxAttempts = options.maxAttempts ?? 10;
    this.backoffBaseMs = options.backoffBaseMs ?? 1000;
    this.backoffMaxMs = options.backoffMaxMs ?? 3_600_000;
    this.leaseMs = options.leaseMs ?? 60_000;
    this.publishTimeoutMs = options.publishTimeoutMs ?? Math.floor(this.leaseMs / 2);
    for (const [type, handler] of Object.entries(options.handlers ?? {})) {
      if (handler !== undefined) this.handlers.set(type, handler);
    }
    if (!this.recording && (this.thresholds.alerts?.length ?? 0) > 0) {
      // Nothing would ever evaluate them: `getAlerts` would answer `ok` forever.
      throw new ConfigurationError(
        "[credit-management] notifications: alerts are evaluated only while notification events are recorded: give createCreditManager `notifications` (or `queue`), or leave `alerts` out",
      );
    }
    this.units = this.recording ? this.evaluator(options.credits) : undefined;
    // The types `credits`' modules registered, with the core's (src/core/module.ts); without `credits`, the core's.
    this.registry = options.credits === undefined ? moduleRegistry() : creditCore(options.credits).registry;
    for (const type of this.handlers.keys()) this.registry.checkNotificationType(type, `handlers.${type}`);
    if (this.publishTimeoutMs > this.leaseMs) {
      // A publish still running when its claim lapses lets another dispatcher deliver the row again.
      throw new ConfigurationError(
        `[credit-management] notifications: publishTimeoutMs (${this.publishTimeoutMs}) must not exceed leaseMs (${this.leaseMs}): a publish must end before its claim lapses`,
      );
    }
  }

  /**
   * The unit-of-work runner of `evaluateAlerts`: `credits`' (its journal file, cache, subscription
   * periods, domain events and module hooks) with this service's thresholds; else one over `db`.
   */
  private evaluator(credits: CoreCreditService | undefined): UnitRunner {
    // No trial: an evaluation opens no account (one never changed is left alone).
    if (credits !== undefined) {
      const config = creditCore(credits).units.config;
      const outbox = outboxRecording(this.thresholds, config.outbox?.domainEvents ?? false);
      return new UnitRunner({ ...config, outbox, trial: undefined });
    }
    return new UnitRunner({
      db: this.db,
      ledger: undefined,
      cache: undefined,
      clock: this.clock,
      logger: this.logger,
      outbox: outboxRecording(this.thresholds, false),
      trial: undefined,
      features: {},
      checkpointEvery: undefined,
      outcomeWaitMs: 5000,
      periods: undefined,
      unitHooks: [],
    });
  }

  /**
   * Records an event for `userId` in the outbox (delivered by the dispatcher). Resolves to false
   * when an event with the same `dedupeKey` was already recorded for the user.
   */
  async emit(userId: string, event: EmitInput): Promise<boolean> {
    const user = parse(UserId, userId, "userId");
    const e = parse(EmitInput, event, "event");
    this.registry.checkNotificationType(e.type, "event.type");
    const row = newNotification(user, e.type, e.payload ?? {}, this.clock(), e.dedupeKey ?? null, e.version);
    return (await this.db.insertNotifications([row])) === 1;
  }

  /**
   * Sets (or with null, removes) this user's low-credits threshold. The alert level is recomputed
   * at once, in a unit of work on the account: crossing the new threshold records the event.
   */
  async setThreshold(userId: string, thresholds: ThresholdSpec | null): Promise<void> {
    const user = parse(UserId, userId, "userId");
    const spec = parse(NullableThresholds, thresholds, "thresholds");
    const override: AlertState["override"] =
      spec === null ? null : { lowCredits: spec.lowCredits ?? null, lowCreditsPercent: spec.lowCreditsPercent ?? null };
    await saveAccountOnly(this.db, user, this.clock, (account, now, grants) =>
      withOverride(account, override, this.thresholds, now, grants),
    );
  }

  /**
   * Sets this account's own alert thresholds (docs/notifications.md, "Alerts"), which replace the
   * service's; null: the service's again. Evaluated at once in a unit of work on the account: a
   * threshold already past its line records `alert_triggered` with the change. An account never
   * changed keeps them for its first change. A threshold removed records nothing. With notifications
   * not recorded (`recording` false) nothing would evaluate them: a list is a `ConfigurationError`
   * (null, removing an account's own thresholds, is accepted).
   */
  async setAlerts(userId: string, thresholds: AlertThreshold[] | null): Promise<void> {
    const user = parse(UserId, userId, "userId");
    const list = parse(NullableAlerts, thresholds, "thresholds");
    if (!this.recording && list !== null) {
      throw new ConfigurationError(
        "[credit-management] notifications.setAlerts: alerts are evaluated only while notification events are recorded: give createCreditManager `notifications` (or `queue`)",
      );
    }
    // The spend already captured in each `period_spend` window counts, recounted beside the unit of
    // work (src/core/services/alert-reads.ts).
    await withRecounts(this.db, user, (counted, inline) =>
      saveAccountOnly(this.db, user, this.clock, async (account, now, grants) => {
        const prev: AlertState = account.alert ?? { level: null, threshold: 0, lastAllocation: 0, override: null };
        account.alert = { ...prev, thresholds: list };
        // Without recording only null gets here: nothing to evaluate.
        if (!this.recording) return [];
        const inputs = await alertInputs(this.db, account, account.seq, this.thresholds.alerts, now, {
          recount: true,
          counted,
          inline,
        });
        return alertNotifications(account, [], grants, this.thresholds, now, inputs).notifications;
      }),
    );
  }

  /**
   * Each alert threshold of the account with its state, its value now and its line
   * (docs/notifications.md, "Alerts"): while notifications are recorded, the built-in low-credits
   * ones (`low_credits` when there is a low-credits threshold, `credits_exhausted`), then its own
   * thresholds, else the service's; while they are not, its own thresholds only (`alertStates`,
   * src/core/domain/notifications.ts, which the customer state's `alerts` use too). The state is the one
   * the account's last evaluation stored; `evaluateAlerts` evaluates it now.
   */
  async getAlerts(userId: string): Promise<AlertStatus[]> {
    const user = parse(UserId, userId, "userId");
    const account = await this.db.getAccount(user);
    const grants = account === null ? [] : await this.db.listGrants(user);
    return alertStates(account, grants, this.recording ? this.thresholds : undefined, this.clock());
  }

  /**
   * Evaluates the account's alerts now, in a unit of work on the account: what time alone moved (a
   * spend window that ended, a grant now within an `expiring` threshold's days) records its
   * events, as the worker does. The unit settles what is due first, as every unit of work does (a
   * grant past its expiry, a hold past its TTL), so the moves of that change go out together and
   * every threshold is read from the account as it is now. Writes nothing when nothing moved, or
   * when notifications are not recorded; an account never changed is left alone. Resolves to
   * `getAlerts`' answer after it.
   */
  async evaluateAlerts(userId: string): Promise<AlertStatus[]> {
    const user = parse(UserId, userId, "userId");
    await this.reevaluate(user);
    return this.getAlerts(user);
  }

  /** `evaluateAlerts` without reading the states back: what the worker's rounds run per account. */
  private async reevaluate(user: string): Promise<void> {
    if (this.units === undefined) return;
    await this.units.mutate("evaluateAlerts", user, {}, () => undefined, undefined, { settle: true, evaluate: true });
  }

  /**
   * The worker's part of the alerts (docs/notifications.md, "Alerts"): evaluates now every account
   * with an open grant expiring within the longest `expiring` threshold of the service's defaults
   * (at least 31 days), so a grant that time brought within a threshold's days records its
   * `alert_triggered` without waiting for a change. Scans grants by expiry (indexed), each account
   * once per call; an account with nothing moved writes nothing. Resolves to the accounts evaluated.
   * An account's own `expiring` threshold that looks further is `evaluateEndedSpendWindows`' (its
   * scan of accounts).
   */
  async evaluateExpiringAlerts(options: EvaluateAlertsOptions = {}): Promise<{ accounts: number }> {
    const o = parse(EvaluateAlertsOptions, options, "options");
    if (!this.recording) return { accounts: 0 }; // nothing would be recorded: no scan
    const pageSize = o.pageSize ?? 500;
    const now = this.clock();
    const days = expiringScanDays(this.thresholds.alerts);
    const until = new Date(now.getTime() + days * 86_400_000);
    const seen = new Set<string>();
    let after: { expiresAt: Date; id: string } | undefined;
    for (;;) {
      const page = await this.db.findDueGrants(until, pageSize, after);
      for (const g of page) {
        if (g.remaining <= 0 || g.expiresAt === null || g.expiresAt.getTime() <= now.getTime()) continue;
        // Not started: its credits are in no balance (docs/units.md, "Grants that start later").
        if (g.upcoming === true) continue;
        if (seen.has(g.userId)) continue;
        seen.add(g.userId);
        await this.reevaluate(g.userId);
      }
      const last = page[page.length - 1];
      if (page.length < pageSize || last === undefined) break;
      after = { expiresAt: last.expiresAt as Date, id: last.id };
    }
    return { accounts: seen.size };
  }

  /**
   * The worker's other part of the alerts (docs/notifications.md, "Alerts"): resolves the
   * `period_spend` thresholds in alarm whose window has ended (a calendar window, or a subscription
   * period), on accounts no change has evaluated since; and evaluates the accounts whose own
   * `expiring` thresholds look further ahead than `evaluateExpiringAlerts`' scan of grants, when a
   * grant may be within their days. Pages through every account (`listAccountIds`, one read of
   * each): a store that cannot list its accounts leaves them to the account's next change or
   * `evaluateAlerts` (`accounts: null`). Resolves to the accounts read and those evaluated.
   */
  async evaluateEndedSpendWindows(
    options: EvaluateAlertsOptions = {},
  ): Promise<{ accounts: number | null; evaluated: number }> {
    const o = parse(EvaluateAlertsOptions, options, "options");
    if (!this.recording) return { accounts: 0, evaluated: 0 }; // nothing would be recorded: no scan
    const listIds = this.db.listAccountIds?.bind(this.db);
    if (listIds === undefined) return { accounts: null, evaluated: 0 };
    const pageSize = o.pageSize ?? 500;
    const scanDays = expiringScanDays(this.thresholds.alerts);
    let accounts = 0;
    let evaluated = 0;
    let after: string | null = null;
    for (;;) {
      const ids = await listIds(after, pageSize);
      for (const id of ids) {
        accounts++;
        const account = await this.db.getAccount(id);
        if (account === null) continue;
        const now = this.clock();
        const due =
          hasEndedSpendWindow(account, this.thresholds.alerts, now) ||
          expiresBeyondScan(account, this.thresholds.alerts, now, scanDays);
        if (!due) continue;
        await this.reevaluate(id);
        evaluated++;
      }
      const last = ids[ids.length - 1];
      if (ids.length < pageSize || last === undefined) break;
      after = last;
    }
    return { accounts, evaluated };
  }

  /** A user's outbox rows, oldest first. */
  async list(userId: string, query: NotificationListQuery = {}): Promise<Notification[]> {
    const user = parse(UserId, userId, "userId");
    const q = parse(NotificationListQuery, query, "query");
    return this.db.listNotifications(user, { status: q.status, limit: q.limit ?? 100 });
  }

  /**
   * Records `expiring_credits` for every open grant that expires within `days` days: once per grant
   * and window (`dedupeKey` `expiring_credits:<grantId>:<days>d`), however often the job runs.
   * Scans grants by expiry (indexed), never every user.
   */
  async sendExpiringReminders(options: ReminderOptions): Promise<{ scanned: number; recorded: number }> {
    const o = parse(ReminderOptions, options, "options");
    const pageSize = o.pageSize ?? 500;
    const now = this.clock();
    return traceJob(
      "sendExpiringReminders",
      now,
      () => this.remind(o.days, pageSize, now),
      (r) => [r.scanned, r.recorded, 0],
    );
  }

  private async remind(days: number, pageSize: number, now: Date): Promise<{ scanned: number; recorded: number }> {
    const until = new Date(now.getTime() + days * 86_400_000);
    let scanned = 0;
    let recorded = 0;
    let after: { expiresAt: Date; id: string } | undefined;
    for (;;) {
      const page = await this.db.findDueGrants(until, pageSize, after);
      scanned += page.length;
      const rows = page
        .filter(
          (g) =>
            g.expiresAt !== null && g.expiresAt.getTime() > now.getTime() && g.remaining > 0 && g.upcoming !== true,
        )
        .map((g) =>
          newNotification(
            g.userId,
            "expiring_credits",
            { grantId: g.id, remaining: g.remaining, expiresAt: (g.expiresAt as Date).toISOString(), days },
            now,
            `expiring_credits:${g.id}:${days}d`,
          ),
        );
      if (rows.length > 0) recorded += await this.db.insertNotifications(rows);
      const last = page[page.length - 1];
      if (page.length < pageSize || last === undefined) break;
      after = { expiresAt: last.expiresAt as Date, id: last.id };
    }
    return { scanned, recorded };
  }

  /**
   * Delivers pending rows to the queue, up to `limit` (default 100): claims each user's oldest due
   * row (atomically: several dispatchers never hold one row), publishes the claimed rows
   * concurrently, marks them sent, or schedules a retry with backoff (`failed` after
   * `maxAttempts`), then claims again until nothing is due or `limit` is reached.
   */
  async dispatchPending(options: DispatchOptions = {}): Promise<DispatchReport> {
    const o = parse(DispatchOptions, options, "options");
    const limit = o.limit ?? 100;
    if (!traced(dispatchChannel)) return this.dispatch(limit, undefined);
    const started = performance.now();
    const message: DispatchMessage = {
      limit,
      claimed: 0,
      sent: 0,
      retried: 0,
      failed: 0,
      lost: 0,
      maxLagMs: 0,
      durationMs: 0,
    };
    return tracePromise(
      dispatchChannel,
      message,
      () => this.dispatch(limit, message),
      (m, report) => {
        m.durationMs = performance.now() - started;
        if (report !== undefined) Object.assign(m, report);
      },
    );
  }

  /**
   * Runs the handlers of pending rows of `types` (up to `limit`, default 100) **without publishing
   * them**: claims the due rows of those types as `dispatchPending` claims rows (several
   * dispatchers, and a dispatcher beside it, never hold one row at once; a lapsed claim is taken
   * over), runs the row's handler, and marks the row `sent` — settled, not delivered anywhere; a
   * throw is a failed attempt, retried with the same backoff (`failed` after `maxAttempts`). A
   * user's older rows of other types do not hold these back. The worker charges auto top-ups this
   * way when it does not deliver (docs/promos-and-payments.md, "Auto top-up"). A type without a
   * handler is a `ValidationError`.
   */
  async handlePending(options: HandleOptions): Promise<DispatchReport> {
    const o = parse(HandleOptions, options, "options");
    const missing = o.types.filter((t) => !this.handlers.has(t));
    if (missing.length > 0) {
      throw new ValidationError(`Invalid options.types: no handler for ${missing.join(", ")}`, [
        { path: "types", message: `no handler (setHandler): ${missing.join(", ")}` },
      ]);
    }
    return this.dispatch(o.limit ?? 100, undefined, [...new Set(o.types)]);
  }

  /**
   * `dispatchPending`; `message` (while someone listens) gets the age of the oldest row claimed.
   * With `types`, `handlePending`: rows of those types, handled and not published.
   */
  private async dispatch(
    limit: number,
    message: DispatchMessage | undefined,
    types?: NotificationType[],
  ): Promise<DispatchReport> {
    const report: DispatchReport = { claimed: 0, sent: 0, retried: 0, failed: 0, lost: 0 };
    const token = randomUUID();
    while (report.claimed < limit) {
      const claimed = await this.db.claimNotifications({
        now: this.clock(),
        limit: limit - report.claimed,
        leaseMs: this.leaseMs,
        token,
        ...(types === undefined ? {} : { types }),
      });
      // A store that does not know `types` claimed rows of other types: given back untouched.
      const rows = types === undefined ? claimed : claimed.filter((r) => types.includes(r.type));
      const foreign = claimed.filter((r) => !rows.includes(r));
      for (const r of foreign) await this.release(r, token);
      if (rows.length === 0) break;
      report.claimed += rows.length;
      if (message !== undefined) {
        const now = this.clock().getTime();
        for (const row of rows) message.maxLagMs = Math.max(message.maxLagMs, now - row.createdAt.getTime());
      }
      const settled = report.sent + report.failed;
      await Promise.all(rows.map((row) => this.deliver(row, token, report, types === undefined)));
      // Such a store would give the same rows again: one round is all it gets.
      if (foreign.length > 0) break;
      // Only a row settled in this round (sent, or failed for good) can have made its user's next
      // row due; rows that wait for a retry free nothing, so a round that settled none ends it.
      if (report.sent + report.failed === settled) break;
    }
    return report;
  }

  /**
   * Deletes delivered and failed rows settled more than `olderThanDays` days ago (default 30), in
   * batches of `batchSize` (default 1,000). Pending rows are never deleted. A deleted row's dedupe
   * key is free again: keep rows longer than your longest reminder window. Resolves to the rows
   * deleted.
   */
  async purge(options: PurgeOptions = {}): Promise<number> {
    const o = parse(PurgeOptions, options, "options");
    const before = new Date(this.clock().getTime() - (o.olderThanDays ?? 30) * 86_400_000);
    const batch = o.batchSize ?? 1000;
    return traceJob(
      "purgeNotifications",
      before,
      async () => {
        let total = 0;
        for (;;) {
          const n = await this.db.purgeNotifications(before, batch);
          total += n;
          if (n < batch) return total;
        }
      },
      (n) => [n, n, 0],
    );
  }

  /** Runs `dispatchPending` every `intervalMs` (default 1,000) until `stop()`. Rounds never overlap. */
  start(options: NotificationStartOptions = {}): void {
    const o = parse(NotificationStartOptions, options, "options");
    if (!this.stopped) return;
    this.stopped = false;
    const interval = o.intervalMs ?? 1000;
    const tick = () => {
      this.timer = null;
      this.running = this.dispatchPending({ limit: o.limit })
        .catch((error: unknown) =>
          this.logger?.error({ err: error }, "credit-management: notification dispatch failed"),
        )
        .finally(() => {
          this.running = null;
          if (!this.stopped) this.timer = setTimeout(tick, interval);
        });
    };
    this.timer = setTimeout(tick, 0);
  }

  /** Stops the loop and waits for the round in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /**
   * Sets (or with null, removes) the work done before rows of `type` are published (see
   * `NotificationServiceOptions.handlers`). It must be idempotent: a row may be handled again after
   * a failed publish, a lapsed claim or a crash.
   */
  setHandler(type: NotificationType, handler: ((row: Notification) => Promise<unknown>) | null): void {
    parse(NotificationType, type, "type");
    this.registry.checkNotificationType(type, "type");
    if (handler === null) this.handlers.delete(type);
    else this.handlers.set(type, handler);
  }

  /** Gives a claimed row back as it was (no attempt counted). */
  private async release(row: Notification, token: string): Promise<void> {
    await this.db.completeNotification(
      row.id,
      token,
      {
        status: "pending",
        attempts: row.attempts,
        nextAttemptAt: row.nextAttemptAt,
        lastError: row.lastError,
        settledAt: null,
      },
      row.userId,
    );
  }

  /** Runs the row's handler, then (`publish`) publishes it; settles it, or schedules its retry. */
  private async deliver(row: Notification, token: string, report: DispatchReport, publish = true): Promise<void> {
    const attempt = row.attempts + 1;
    const message: NotificationMessage = {
      id: row.id,
      userId: row.userId,
      type: row.type,
      version: row.version,
      payload: row.payload,
      createdAt: row.createdAt.toISOString(),
      attempt,
      dedupeKey: row.dedupeKey,
    };
    let update: NotificationUpdate;
    let outcome: "sent" | "retried" | "failed";
    try {
      const handler = this.handlers.get(row.type);
      if (handler !== undefined) await handler(row);
      if (publish)
        await withTimeout(
          this.queue.publish(message),
          this.publishTimeoutMs,
          () => new Error(`publish did not answer within ${this.publishTimeoutMs} ms`),
        );
      const now = this.clock();
      update = { status: "sent", attempts: attempt, nextAttemptAt: row.nextAttemptAt, lastError: null, settledAt: now };
      outcome = "sent";
    } catch (error) {
      const now = this.clock();
      // A queue may say when to try again, or that trying again is useless (NotificationQueue.publish).
      const hint = error as { retryAfterMs?: unknown; final?: unknown } | null;
      const last = attempt >= this.maxAttempts || hint?.final === true;
      const after =
        typeof hint?.retryAfterMs === "number" && hint.retryAfterMs >= 0
          ? hint.retryAfterMs
          : backoffDelay(attempt, this.backoffBaseMs, this.backoffMaxMs);
      const reason = error instanceof Error ? error.message : String(error);
      this.logger?.warn(
        { err: error, notificationId: row.id, userId: row.userId, type: row.type, attempt },
        last
          ? "credit-management: notification failed for good"
          : publish
            ? "credit-management: notification delivery failed; will retry"
            : "credit-management: notification handler failed; will retry",
      );
      update = {
        status: last ? "failed" : "pending",
        attempts: attempt,
        nextAttemptAt: last ? now : new Date(now.getTime() + after),
        lastError: reason.slice(0, 1000),
        settledAt: last ? now : null,
      };
      outcome = last ? "failed" : "retried";
    }
    // Not completed: the claim had lapsed and another dispatcher took the row over.
    const ok = await this.db.completeNotification(row.id, token, update, row.userId);
    report[ok ? outcome : "lost"]++;
  }
}
