import { warnOnFailure, type Logger } from "../logger.js";
import * as z from "zod/mini";
import type { DbManager } from "../db/types.js";
import { ConfigurationError, ValidationError } from "../errors.js";
import type { LedgerLogger } from "../ledger/index.js";
import { DateInput, UserId } from "../models/common.js";
import type { Grant, Reservation } from "../models/entities.js";
import { AsOf, ExpiringDays } from "../models/inputs.js";
import { parse } from "../models/parse.js";
import { BatchSize, type Subscription } from "../models/subscriptions.js";
import { parseConfig } from "../models/parse.js";
import type { CoreCreditService } from "./credit-service.js";
import type { DispatchReport, NotificationService } from "./notification-service.js";
import type { SubscriptionService } from "./subscription-service.js";
import { traceJob, type JobMessage } from "../diagnostics.js";
import { type CreditCore } from "./credit-core.js";
import { creditCore } from "./credit-service.js";

/**
 * Options of `new ExpirationService()`: the store, the services it drives, the ledger, the clock and the
 * logger. @public
 */
export interface ExpirationServiceOptions {
  /** The store. */
  db: DbManager;
  /** The credit service whose grants and holds the jobs settle. */
  credits: CoreCreditService;
  /** The subscription service whose periods the jobs renew. */
  subscriptions: SubscriptionService;
  /** The audit ledger; omit for none. */
  ledger?: LedgerLogger;
  /** Default: the credit service's clock. */
  clock?: () => Date;
  /** Where warnings and errors are logged. Default: none. */
  logger?: Logger;
  /**
   * With notifications on: `runAll()` also records the expiring-credit reminders and delivers the
   * outbox (`createCreditManager` passes its `notifications` when `queue` or `notifications` is given).
   */
  notifications?: NotificationService;
  /** The reminder windows `runAll()` records, in days (`sendExpiringReminders`). Default `[7]`; `[]`: none. */
  reminderDays?: readonly number[];
  /**
   * How long an idempotency key answers retries (`IdempotencyRetention`): `"forever"` (default) or
   * a window, after which `forgetIdempotencyKeys()` (and `runAll()`) forgets it.
   */
  idempotencyRetention?: IdempotencyRetention;
}

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const RETENTION_TEXT = /^([0-9]+)(ms|s|m|h|d)$/;
/** The shortest window: a key must outlive any retry of its request in flight. */
const MIN_RETENTION_MS = 60_000;
/** The longest window (100 years): past it, say `"forever"`. */
const MAX_RETENTION_MS = 100 * 365 * 86_400_000;

/** A window's length in ms, or null for "forever" (or text that is not a duration). */
function retentionText(value: string): number | null {
  const m = RETENTION_TEXT.exec(value);
  return m === null ? null : Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
}

/**
 * How long idempotency keys answer retries (docs/running-for-years.md): `"forever"` (the default:
 * every key for ever, as before), or a window of at least one minute — a number of milliseconds,
 * or text such as `"90s"`, `"15m"`, `"24h"`, `"30d"`. Within the window a retry with the same key
 * answers the first result; once the window has passed and the job has run, the key is forgotten
 * and a request with it is a new operation (a deduction charges again).
 * @public
 */
export const IdempotencyRetention = z.union([
  z.literal("forever"),
  z.number().check(z.int(), z.minimum(MIN_RETENTION_MS), z.maximum(MAX_RETENTION_MS)),
  z.string().check(
    z.refine(
      (v) => {
        const ms = retentionText(v);
        return ms !== null && ms >= MIN_RETENTION_MS && ms <= MAX_RETENTION_MS;
      },
      { error: `must be "forever", or a duration from 1m to 100 years such as "24h" or "30d" (ms, s, m, h, d)` },
    ),
  ),
]);
/**
 * How long idempotency keys answer retries (docs/running-for-years.md): `"forever"` (the default:
 * every key for ever, as before), or a window of at least one minute — a number of milliseconds,
 * or text such as `"90s"`, `"15m"`, `"24h"`, `"30d"`. Within the window a retry with the same key
 * answers the first result; once the window has passed and the job has run, the key is forgotten
 * and a request with it is a new operation (a deduction charges again).
 * @public
 */
export type IdempotencyRetention = z.input<typeof IdempotencyRetention>;

/** A window's length in ms (null: for ever), from a value `IdempotencyRetention` accepted. */
export function retentionMs(value: IdempotencyRetention): number | null {
  if (value === "forever") return null;
  return typeof value === "number" ? value : retentionText(value);
}

/** Options of `expiration.forgetIdempotencyKeys()`: how long keys are kept and how many go per statement. @public */
export const ForgetKeysOptions = z.strictObject({
  /** Default: the manager's `idempotency.retention`. */
  retention: z.optional(IdempotencyRetention),
  /** Keys forgotten per statement. Default 1,000. */
  batchSize: z.optional(BatchSize),
});
/** Options of `expiration.forgetIdempotencyKeys()`: how long keys are kept and how many go per statement. @public */
export type ForgetKeysOptions = z.input<typeof ForgetKeysOptions>;

/** What `forgetIdempotencyKeys()` did. @public */
export interface ForgetKeysReport extends JobBase {
  /** The job's name. */
  job: "forgetIdempotencyKeys";
  /** The window in ms; null: keys are kept for ever (nothing was done). */
  retentionMs: number | null;
  /** Keys of entries created before this instant (ISO) were forgotten; null with no window. */
  before: string | null;
  /** Idempotency keys forgotten. */
  keysForgotten: number;
}

/** Options of a maintenance job of `ExpirationService` (docs/operations.md): rows per scan and accounts at once. @public */
export const JobOptions = z.strictObject({
  /** Rows per indexed scan. Default 1,000. */
  batchSize: z.optional(BatchSize),
  /** Accounts processed at once within a batch. Default 8. */
  concurrency: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(256))),
});
/** Options of a maintenance job of `ExpirationService` (docs/operations.md): rows per scan and accounts at once. @public */
export type JobOptions = z.input<typeof JobOptions>;

/** Reminder windows in days, each as `sendExpiringReminders` takes it. */
const ReminderDays = z.array(ExpiringDays).check(z.maxLength(16));
/** Outbox rows one `runAll()` delivers at most (what is left waits for the next run or `start()`). */
const DISPATCH_LIMIT = 10_000;

/** The fields every job report starts with. */
function jobBase<J extends JobMessage["job"]>(job: J, asOf: Date) {
  return { job, asOf: asOf.toISOString(), errors: 0, durationMs: 0 };
}

/** What every job's report carries: the job, the instant it worked to, its errors and its duration. @public */
export interface JobBase {
  /** The job's name. */
  job: JobMessage["job"];
  /** The instant the job worked to (ISO). */
  asOf: string;
  /** Accounts (or subscriptions) that failed; each is logged as a ledger error and left for the next run. */
  errors: number;
  /** How long the job ran, in milliseconds. */
  durationMs: number;
}

/** What `expireDueGrants()` did. @public */
export interface ExpireGrantsReport extends JobBase {
  /** The job's name. */
  job: "expireDueGrants";
  /** Grants past their expiry looked at. */
  grantsScanned: number;
  /** Grants expired. */
  grantsExpired: number;
  /** Credits those grants held, now expired. */
  creditsExpired: number;
  /** Accounts touched. */
  users: number;
}

/** What `releaseExpiredHolds()` did. @public */
export interface ReleaseHoldsReport extends JobBase {
  /** The job's name. */
  job: "releaseExpiredHolds";
  /** Holds past their time to live looked at. */
  holdsScanned: number;
  /** Holds released. */
  holdsReleased: number;
  /** Credits those holds returned. */
  creditsReleased: number;
  /** Accounts touched. */
  users: number;
}

/** What `renewDueSubscriptions()` did. @public */
export interface RenewSubscriptionsReport extends JobBase {
  /** The job's name. */
  job: "renewDueSubscriptions";
  /** Subscriptions due looked at. */
  subscriptionsScanned: number;
  /** Account work completed: period allocations with their rollover, prorations, expiries. */
  intentsCompleted: number;
  /** Subscriptions renewed into a new period. */
  renewed: number;
  /** Subscriptions that ended (canceled at their period's end, or not renewing). */
  ended: number;
  /** Periods that had ended before the job reached them: closed without allocation. */
  periodsSkipped: number;
}

/** A job's walk (`ExpirationService.walkJob`): what it scans, and what it does with each key. */
interface Walk<T, R> {
  /** The report's counts on the job channel: scanned, changed, errors. */
  counts: (report: R) => [number, number, number];
  /** Stores the rows scanned in the report. */
  scanned: (report: R, rows: number) => void;
  /** A batch of up to `limit` rows strictly after `after` (the first batch: none). */
  scan: (after: T | undefined, limit: number) => Promise<T[]>;
  /** The account (or subscription) a row belongs to: each is processed once per batch. */
  keyOf: (row: T) => string;
  process: (key: string, row: T) => Promise<void>;
}

/** What `checkpointAccounts()` did. @public */
export interface CheckpointAccountsReport extends JobBase {
  /** The job's name. */
  job: "checkpointAccounts";
  /** Accounts looked at. */
  accountsScanned: number;
  /** Checkpoints written. */
  checkpointsWritten: number;
}

/** Options of `expiration.checkpointAccounts()`: a job's options and when an account is due a checkpoint. @public */
export const CheckpointJobOptions = z.extend(JobOptions, {
  /** Checkpoint an account once this many entries follow its latest checkpoint (or its start). Default 1,000. */
  everyEntries: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1_000_000_000))),
  /**
   * Also checkpoint an account with any entry since its latest checkpoint when that checkpoint (or,
   * without one, the account) was written before this instant.
   */
  olderThan: z.optional(DateInput),
});
/** Options of `expiration.checkpointAccounts()`: a job's options and when an account is due a checkpoint. @public */
export type CheckpointJobOptions = z.input<typeof CheckpointJobOptions>;

/** What `runAll()` did: each job's report. @public */
export interface RunAllReport {
  /** The instant the jobs worked to (ISO). */
  asOf: string;
  /** Holds released. */
  releaseExpiredHolds: ReleaseHoldsReport;
  /** Subscriptions renewed. */
  renewDueSubscriptions: RenewSubscriptionsReport;
  /** Grants expired. */
  expireDueGrants: ExpireGrantsReport;
  /** Per reminder window: grants looked at and reminders recorded. Null with notifications off. */
  sendExpiringReminders: { days: number; scanned: number; recorded: number }[] | null;
  /** Accounts whose alerts were evaluated for credits now expiring soon (docs/notifications.md, "Alerts"). Null with notifications off. */
  evaluateExpiringAlerts: { accounts: number } | null;
  /** Spend windows that ended with their alert in alarm, resolved (docs/notifications.md, "Alerts"). Null with notifications off. */
  evaluateEndedSpendWindows: { accounts: number | null; evaluated: number } | null;
  /** The outbox delivered after the jobs (their events included). Null with notifications off. */
  dispatchPending: DispatchReport | null;
  /** Idempotency keys past their window, forgotten. Null when keys are kept for ever (the default). */
  forgetIdempotencyKeys: ForgetKeysReport | null;
  /** How long the run took, in milliseconds. */
  durationMs: number;
}

/**
 * The jobs a scheduler calls (docs/subscriptions.md). Each walks an indexed scan in batches — never "load every
 * user" — and hands each account (or subscription) to the services, whose units of work and
 * guarded writes make the job safe to run from several workers at once: a grant is expired once, a
 * period allocated once. Each returns a report of counts and records it in the ledger as a system
 * event. A job that did not run for a while catches up in one run (docs/subscriptions.md, "Jobs").
 * @public
 */
export class ExpirationService {
  /** Runs the jobs' units of work (src/core/services/credit-core.ts). */
  private readonly core: CreditCore;
  private readonly clock: () => Date;
  /** The expiring-credit reminder windows, in days (`reminderDays`; the worker's reminders round). */
  readonly reminderDays: readonly number[];
  private readonly retention: number | null;

  /** An expiration service over `options.db`; `createCreditManager` builds one. */
  constructor(private readonly options: ExpirationServiceOptions) {
    this.core = creditCore(options.credits);
    this.clock = options.clock ?? this.core.clock;
    this.reminderDays = parseConfig(ReminderDays, options.reminderDays ?? [7], "reminderDays", "ExpirationService");
    this.retention = retentionMs(
      parseConfig(
        IdempotencyRetention,
        options.idempotencyRetention ?? "forever",
        "idempotency.retention",
        "ExpirationService",
      ),
    );
  }

  /**
   * Forgets the idempotency keys of journal entries older than the retention window (`retention`,
   * default the manager's `idempotency.retention`), in statements of `batchSize`, until none is
   * left: a retry with such a key is then a new operation. The entries keep their keys — the audit
   * still verifies them — but the keys leave the unique index, so it stops growing with the
   * journal (docs/running-for-years.md). With keys kept for ever (the default) it does nothing.
   */
  async forgetIdempotencyKeys(now?: Date | string, options: ForgetKeysOptions = {}): Promise<ForgetKeysReport> {
    const asOf = this.asOf(now);
    const o = parse(ForgetKeysOptions, options, "options");
    const window = o.retention === undefined ? this.retention : retentionMs(o.retention);
    const before = window === null ? null : new Date(asOf.getTime() - window);
    const report: ForgetKeysReport = {
      ...jobBase("forgetIdempotencyKeys", asOf),
      retentionMs: window,
      before: before?.toISOString() ?? null,
      keysForgotten: 0,
    };
    const counts = (r: ForgetKeysReport): [number, number, number] => [r.keysForgotten, r.keysForgotten, r.errors];
    // Keys kept for ever: nothing to do, and nothing to record.
    if (before === null) return traceJob(report.job, asOf, async () => report, counts);
    return this.runJob(report, asOf, counts, async () => {
      const forget = this.options.db.forgetIdempotencyKeys;
      if (forget === undefined) {
        throw new ConfigurationError(
          `[credit-management] the ${this.options.db.name} store cannot forget idempotency keys (it has no forgetIdempotencyKeys): keep the retention "forever"`,
        );
      }
      const limit = o.batchSize ?? 1000;
      for (;;) {
        const n = await forget.call(this.options.db, before, limit);
        report.keysForgotten += n;
        if (n < limit) break;
      }
    });
  }

  /** Expires the unspent part of every grant due at `now` (default: the clock), account by account. */
  async expireDueGrants(now?: Date | string, options: JobOptions = {}): Promise<ExpireGrantsReport> {
    const asOf = this.asOf(now);
    const o = parse(JobOptions, options, "options");
    const report: ExpireGrantsReport = {
      ...jobBase("expireDueGrants", asOf),
      grantsScanned: 0,
      grantsExpired: 0,
      creditsExpired: 0,
      users: 0,
    };
    return this.walkJob(report, asOf, o, {
      counts: (r) => [r.grantsScanned, r.grantsExpired, r.errors],
      scanned: (r, rows) => (r.grantsScanned = rows),
      scan: (after: Grant | undefined, limit) =>
        this.options.db.findDueGrants(asOf, limit, after && { expiresAt: after.expiresAt as Date, id: after.id }),
      keyOf: (g) => g.userId,
      process: async (userId) => {
        const { grants, credits } = await this.core.runUnitOfWork(
          userId,
          {},
          async (work) => {
            const before = work.entries.length;
            const amount = work.expireDue(asOf, { description: "credits expired (expiry job)" });
            const closed = work.entries.slice(before).reduce((n, e) => n + e.grants.length, 0);
            return { grants: closed, credits: amount };
          },
          undefined,
          { settle: false, operation: "expireDueGrants" },
        );
        report.users++;
        report.grantsExpired += grants;
        report.creditsExpired += credits;
      },
    });
  }

  /**
   * Releases every hold whose TTL ended at or before `now` (default: the clock; never later than
   * the clock), account by account: their credits return to their grants. Like a lazy settlement
   * of the account made at `now`, each unit of work first expires the account's grants due at
   * `now`, then releases its holds lapsed at `now`, oldest first. With a past `now`, a hold that
   * lapsed after it is left active for a later run (or the account's next touch, which settles by
   * the clock); it was already unusable by its holder, who is judged by the clock. The release is
   * recorded when it happens (the clock), as the grants job records an expiry; credits a hold
   * returns to a grant that is past its expiry by then expire at once (docs/concepts.md).
   */
  async releaseExpiredHolds(now?: Date | string, options: JobOptions = {}): Promise<ReleaseHoldsReport> {
    const asOf = this.asOf(now);
    const o = parse(JobOptions, options, "options");
    const report: ReleaseHoldsReport = {
      ...jobBase("releaseExpiredHolds", asOf),
      holdsScanned: 0,
      holdsReleased: 0,
      creditsReleased: 0,
      users: 0,
    };
    return this.walkJob(report, asOf, o, {
      counts: (r) => [r.holdsScanned, r.holdsReleased, r.errors],
      scanned: (r, rows) => (r.holdsScanned = rows),
      scan: (after: Reservation | undefined, limit) =>
        this.options.db.findExpiredReservations(asOf, limit, after && { expiresAt: after.expiresAt, id: after.id }),
      keyOf: (r) => r.userId,
      process: async (userId) => {
        // Settled as of `asOf`, not the clock: what lapsed after it is left alone.
        const released = await this.core.settleAsOf(userId, asOf, "releaseExpiredHolds");
        report.users++;
        report.holdsReleased += released.holdsReleased;
        report.creditsReleased += released.creditsReleased;
      },
    });
  }

  /**
   * Renews every subscription whose period ended by `now`: completes owed account work, allocates
   * the new period (with rollover), moves the period on, ends subscriptions that were cancelled or
   * do not auto-renew.
   */
  async renewDueSubscriptions(now?: Date | string, options: JobOptions = {}): Promise<RenewSubscriptionsReport> {
    const asOf = this.asOf(now);
    const o = parse(JobOptions, options, "options");
    const report: RenewSubscriptionsReport = {
      ...jobBase("renewDueSubscriptions", asOf),
      subscriptionsScanned: 0,
      intentsCompleted: 0,
      renewed: 0,
      ended: 0,
      periodsSkipped: 0,
    };
    return this.walkJob(report, asOf, o, {
      counts: (r) => [r.subscriptionsScanned, r.renewed + r.ended + r.periodsSkipped, r.errors],
      scanned: (r, rows) => (r.subscriptionsScanned = rows),
      scan: (after: Subscription | undefined, limit) =>
        this.options.db.findDueSubscriptions(
          asOf,
          limit,
          after && { nextRunAt: after.nextRunAt as Date, id: after.id },
        ),
      keyOf: (s) => s.id,
      process: async (_id, s) => {
        const r = await this.options.subscriptions.advance(s, asOf);
        report.intentsCompleted += r.intentsCompleted;
        report.renewed += r.renewed;
        report.ended += r.ended;
        report.periodsSkipped += r.periodsSkipped;
      },
    });
  }

  /**
   * Everything a deployment schedules, in order: release lapsed holds, renew subscriptions, expire
   * due grants; then, with notifications on, record the expiring-credit reminders (`reminderDays`)
   * and deliver the outbox (up to 10,000 rows a run). One call per minute from one or several
   * workers is enough; each step is safe to run concurrently.
   */
  async runAll(now?: Date | string, options: JobOptions = {}): Promise<RunAllReport> {
    const asOf = this.asOf(now);
    const started = performance.now();
    const releaseExpiredHolds = await this.releaseExpiredHolds(asOf, options);
    const renewDueSubscriptions = await this.renewDueSubscriptions(asOf, options);
    const expireDueGrants = await this.expireDueGrants(asOf, options);
    let sendExpiringReminders: RunAllReport["sendExpiringReminders"] = null;
    let evaluateExpiringAlerts: RunAllReport["evaluateExpiringAlerts"] = null;
    let evaluateEndedSpendWindows: RunAllReport["evaluateEndedSpendWindows"] = null;
    let dispatchPending: DispatchReport | null = null;
    const notifications = this.options.notifications;
    if (notifications !== undefined) {
      // Last, so that the events of the jobs above are delivered in the same run.
      const pageSize = options.batchSize;
      sendExpiringReminders = [];
      for (const days of this.reminderDays) {
        sendExpiringReminders.push({ days, ...(await notifications.sendExpiringReminders({ days, pageSize })) });
      }
      evaluateExpiringAlerts = await notifications.evaluateExpiringAlerts({ pageSize });
      evaluateEndedSpendWindows = await notifications.evaluateEndedSpendWindows({ pageSize });
      dispatchPending = await notifications.dispatchPending({ limit: DISPATCH_LIMIT });
    }
    const forgetIdempotencyKeys =
      this.retention === null ? null : await this.forgetIdempotencyKeys(asOf, { batchSize: options.batchSize });
    return {
      asOf: asOf.toISOString(),
      releaseExpiredHolds,
      renewDueSubscriptions,
      expireDueGrants,
      sendExpiringReminders,
      evaluateExpiringAlerts,
      evaluateEndedSpendWindows,
      dispatchPending,
      forgetIdempotencyKeys,
      durationMs: Math.round(performance.now() - started),
    };
  }

  /**
   * The Python `credit_management` package's `check_credit_expiration` (docs/migrating-from-python.md):
   * expires this user's due grants and releases lapsed holds. With
   * `asOf` (not in the future), only what was due by then expires — like `credits.expireCredits` —
   * and nothing that lapsed after it is settled (holds are left to the next unit of work or job).
   */
  async checkCreditExpiration(
    userId: string,
    asOf?: Date | string,
  ): Promise<{ userId: string; creditsExpired: number }> {
    const user = parse(UserId, userId, "userId");
    const at = this.asOf(asOf);
    // Without `asOf`, the account is settled by the clock first, and what that expired counts too.
    const creditsExpired = await this.core.runUnitOfWork(
      user,
      {},
      async (work) => {
        const settled = work.entries.filter((e) => e.type === "expire").reduce((n, e) => n + e.amount, 0);
        return settled + work.expireDue(at, {});
      },
      undefined,
      { settle: asOf === undefined, operation: "checkCreditExpiration" },
    );
    return { userId: user, creditsExpired };
  }

  /**
   * Brings one user's subscription up to `now` (owed allocation, renewals, rollover:
   * docs/subscriptions.md). Idempotent. Resolves to the subscription, or null when the user has none.
   */
  async allocateSubscriptionCredits(userId: string, now?: Date | string): Promise<Subscription | null> {
    const user = parse(UserId, userId, "userId");
    const at = this.asOf(now);
    const s = await this.options.db.getActiveSubscription(user);
    if (s === null) return null;
    return structuredClone((await this.options.subscriptions.advance(s, at)).subscription);
  }

  // ---------------------------------------------------------------------------------------------

  /** `now` as given (not in the future: jobs never act ahead of the clock) or the clock. */
  private asOf(now: Date | string | undefined): Date {
    const clock = this.clock();
    const at = parse(AsOf, now, "now");
    if (at === undefined) return clock;
    if (at.getTime() > clock.getTime()) {
      throw new ValidationError(`Invalid now: ${at.toISOString()} is in the future`, [
        { path: "now", message: "must not be in the future" },
      ]);
    }
    return at;
  }

  /**
   * Writes a checkpoint entry on every account with `everyEntries` (default 1,000) entries or more
   * since its latest checkpoint — or with any entry since a checkpoint written before `olderThan`
   * (docs/operations.md, "Checkpoints and archival"). Pages through the store's accounts
   * (`listAccountIds`); a store without it cannot run this job.
   */
  async checkpointAccounts(options: CheckpointJobOptions = {}): Promise<CheckpointAccountsReport> {
    const o = parse(CheckpointJobOptions, options, "options");
    const listIds = this.options.db.listAccountIds?.bind(this.options.db);
    if (listIds === undefined)
      throw new ConfigurationError(`[credit-management] the ${this.options.db.name} store cannot list its accounts`);
    const asOf = this.clock();
    const every = o.everyEntries ?? 1000;
    const report: CheckpointAccountsReport = {
      ...jobBase("checkpointAccounts", asOf),
      accountsScanned: 0,
      checkpointsWritten: 0,
    };
    return this.walkJob(report, asOf, o, {
      counts: (r) => [r.accountsScanned, r.checkpointsWritten, r.errors],
      scanned: (r, rows) => (r.accountsScanned = rows),
      scan: (after: string | undefined, limit) => listIds(after ?? null, limit),
      keyOf: (id) => id,
      process: async (userId) => {
        const account = await this.options.db.getAccount(userId);
        if (account === null) return;
        const last = await this.options.credits.latestCheckpoint(userId);
        const since = account.seq - (last?.seq ?? 0);
        const old =
          o.olderThan !== undefined && (last?.createdAt ?? account.createdAt).getTime() < o.olderThan.getTime();
        if (since < every && !(old && since > 0)) return;
        const written = await this.options.credits.checkpoint(userId, { minEntries: since >= every ? every : 1 });
        if (written !== null) report.checkpointsWritten++;
      },
    });
  }

  /**
   * Runs a job, traced on the job channel (docs/observability.md): `fill` counts into `report`,
   * which is then timed, recorded in the ledger and returned.
   */
  private runJob<R extends JobBase>(
    report: R,
    asOf: Date,
    counts: (report: R) => [number, number, number],
    fill: () => Promise<void>,
  ): Promise<R> {
    return traceJob(
      report.job,
      asOf,
      async () => {
        const started = performance.now();
        await fill();
        report.durationMs = Math.round(performance.now() - started);
        await this.record(report);
        return report;
      },
      counts,
    );
  }

  /** `runJob` of a job that walks a scan (`walk`), the rows it scanned stored in its report (`scanned`). */
  private walkJob<T, R extends JobBase>(
    report: R,
    asOf: Date,
    o: { batchSize?: number; concurrency?: number },
    w: Walk<T, R>,
  ): Promise<R> {
    return this.runJob(report, asOf, w.counts, async () => w.scanned(report, await this.walk(report, o, w)));
  }

  /**
   * Walks a scan in batches, each resuming strictly after the last row of the one before (`after`):
   * the walk ends even when rows stay due (a failing account). Each batch's keys (accounts or
   * subscriptions) are processed `concurrency` at a time, each once per batch with its first row;
   * a key that fails counts in `report.errors`. Resolves to the rows scanned.
   */
  private async walk<T>(
    report: JobBase,
    o: { batchSize?: number; concurrency?: number },
    { scan, keyOf, process }: Pick<Walk<T, JobBase>, "scan" | "keyOf" | "process">,
  ): Promise<number> {
    const limit = o.batchSize ?? 1000;
    const concurrency = o.concurrency ?? 8;
    let scanned = 0;
    let after: T | undefined;
    for (;;) {
      const rows = await scan(after, limit);
      scanned += rows.length;
      const keys = new Map<string, T>();
      for (const row of rows) {
        const key = keyOf(row);
        if (!keys.has(key)) keys.set(key, row);
      }
      // One iterator shared by the workers: each takes the next key.
      const queue = keys.entries();
      const worker = async () => {
        for (const [key, row] of queue) {
          try {
            await process(key, row);
          } catch (error) {
            report.errors++;
            this.options.logger?.error({ err: error, key }, "credit-management: job step failed");
            await this.options.ledger
              ?.logError("job step failed", { key, error: error instanceof Error ? error.message : String(error) })
              .catch(warnOnFailure(this.options.logger, "writing a failed job step's ledger event"));
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, keys.size) }, worker));
      after = rows[rows.length - 1];
      if (rows.length < limit) return scanned;
    }
  }

  private async record(report: JobBase): Promise<void> {
    try {
      await this.options.ledger?.logSystem(`job ${report.job}`, { ...report });
    } catch (error) {
      this.options.logger?.warn({ err: error }, "credit-management: could not record the job report");
    }
  }
}
