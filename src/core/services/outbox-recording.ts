import type { Changes, DbManager } from "../db/types.js";
import type { AccountWork } from "../domain/account-work.js";
import { featureFlips, type FeatureRule } from "../domain/checks.js";
import { domainEvents } from "../domain/events.js";
import {
  alertNotifications,
  eventNotifications,
  expiredHoldNotifications,
  limitNotifications,
  newNotification,
  type Thresholds,
} from "../domain/notifications.js";
import type { Account, Notification } from "../models/index.js";
import { AlertThresholds } from "../models/alerts.js";
import { parseConfig } from "../models/parse.js";
import { definePart, type CorePart } from "../part-builds.js";
import { alertInputs, RecountNeeded, recountSpend, type SpendRecount } from "./alert-reads.js";

/*
 * What a unit of work records in the outbox while notifications are on (docs/notifications.md): the
 * domain events, lapsed holds, subscription events, spend-limit crossings, the alert crossings and
 * the features a change flipped. The notifications part hands it to the credit service
 * (`notificationsPart`, docs/modules.md, "Parts of the core"); without it a unit of work records
 * nothing, and none of this is in a bundle that never turns notifications on.
 */

/** The outbox recording of a credit service's units of work (`UnitRunnerOptions.outbox`); not exported by an entry. */
export interface OutboxRecording {
  /** The thresholds of the alerts the units of work evaluate. */
  readonly thresholds: Thresholds;
  /** Whether each journal entry records its domain event (docs/events.md). */
  readonly domainEvents: boolean;
  /**
   * The outbox rows of a change, set on `changes.notifications` (none: nothing set). In id order:
   * the domain events of its journal entries, lapsed holds (their release is what may move the
   * alert level), what the unit of work recorded itself (subscription events), the spend limits'
   * thresholds it reached (docs/teams-and-limits.md, "Limit notifications"), the alert crossing,
   * then the features it flipped. Resolves to whether it recorded a row or moved the account's
   * alert state.
   */
  record(
    db: DbManager,
    features: Readonly<Record<string, FeatureRule>>,
    work: AccountWork,
    changes: Changes,
    recount: { counted: SpendRecount | undefined; inline: boolean },
  ): Promise<boolean>;
  /**
   * The `period_spend` windows a unit of work that threw `error` asks to be counted beside it
   * (src/core/services/alert-reads.ts), counted; undefined for any other error.
   */
  recount(db: DbManager, userId: string, error: unknown): Promise<SpendRecount> | undefined;
}

/** The outbox recording with `thresholds`, and the domain events when `events`. */
export function outboxRecording(thresholds: Thresholds, events: boolean): OutboxRecording {
  return {
    thresholds,
    domainEvents: events,
    async record(db, features, work, changes, recount) {
      const journal = events ? domainEvents(work.userId, changes.entries, changes, work.now) : [];
      const expired = expiredHoldNotifications(changes.updateReservations, work.now);
      const recorded = eventNotifications(work.events, work.userId, work.now);
      const limits = limitNotifications(work.userId, work.limitsCrossed, changes.account.seq, work.now);
      // What the alerts need read beside the unit of work (rarely anything: src/core/services/alert-reads.ts).
      const inputs = await alertInputs(db, changes.account, work.loaded?.seq ?? 0, thresholds.alerts, work.now, {
        cycle: work.subscriptionCycle,
        ...recount,
      });
      const evaluated = alertNotifications(
        changes.account,
        changes.entries,
        () => work.openGrants(),
        thresholds,
        work.now,
        inputs,
      );
      const flipped = featureNotifications(features, work, changes.account);
      const all = [...journal, ...expired, ...recorded, ...limits, ...evaluated.notifications, ...flipped];
      if (all.length > 0) changes.notifications = all;
      return all.length > 0 || evaluated.moved;
    },
    recount(db, userId, error) {
      if (!(error instanceof RecountNeeded)) return undefined;
      return recountSpend(db, userId, error.thresholds, error.cycle, error.at);
    },
  };
}

/** `feature_status_changed` for each feature whose allowed state the unit of work flipped. */
function featureNotifications(
  features: Readonly<Record<string, FeatureRule>>,
  work: AccountWork,
  after: Account,
): readonly Notification[] {
  if (Object.keys(features).length === 0) return [];
  const was = work.loaded;
  const before = was === null ? 0 : was.balance - was.reserved;
  const now = after.balance - after.reserved;
  return featureFlips(before, now, features).map((f) =>
    newNotification(
      work.userId,
      "feature_status_changed",
      { ...f, available: now, previousAvailable: before },
      work.now,
      null,
    ),
  );
}

/**
 * The notifications a `CreditService` given `alerts` or `domainEvents` records (its units of work
 * only: `new CreditService({ alerts })`); the alert thresholds validated. Undefined: neither given.
 */
export function recordingOf(
  alerts: Thresholds | undefined,
  events: boolean,
  service: string,
): CorePart<"notifications"> | undefined {
  if (alerts === undefined && !events) return undefined;
  const list =
    alerts?.alerts === undefined ? [] : parseConfig(AlertThresholds, alerts.alerts, "alerts.alerts", service);
  const thresholds = { lowCredits: alerts?.lowCredits, lowCreditsPercent: alerts?.lowCreditsPercent };
  // Its units of work only: no service (a manager builds its notifications from `notificationsPart`).
  return definePart<CorePart<"notifications">>("notifications", {
    outbox: outboxRecording({ ...thresholds, alerts: list }, events),
    reminderDays: undefined,
    service: undefined,
  });
}
