import * as z from "zod/mini";
import { LoggerOption, silentLogger, type Logger } from "../core/logger.js";
import type { CreditManager } from "../manager.js";
import { parseConfig } from "../core/models/parse.js";
import { catchUpRevenue } from "../modules/revenue/service.js";
import { revenueSummaryOf } from "../modules/revenue/store.js";
import { pauseBefore } from "./schedule.js";

// The type of the `logger` option.
export type { Logger } from "../core/logger.js";

/**
 * The worker's rounds as a library (docs/operations.md, "The worker in your own code"): the jobs,
 * the expiring-credit reminders, the outbox dispatcher, the auto top-ups' charges, the revenue
 * summary's catch-up and the usage rollup's, on the manager it is given — its store, payment
 * providers and rate, queue and thresholds. It reads no environment: `credit-management worker`
 * and `serve --worker` build a manager from theirs and run this. `runOnce()` runs one round of each task (a cron route, a BullMQ job, a CronJob);
 * `start()` runs each on its interval until `stop()`.
 */

/** The worker's tasks, in the order `runOnce` runs them. @public */
export type WorkerTaskName = "jobs" | "reminders" | "dispatch" | "top-ups" | "revenue" | "usage";

/** An interval in ms: 0 (the task is off) or 10 ms to 24 hours. */
const Interval = z.number().check(
  z.int(),
  z.refine((v) => v === 0 || (v >= 10 && v <= 86_400_000), { error: "must be 0 (off) or 10 to 86,400,000 ms" }),
);

/** `createWorker(manager, options)`, validated like every public input. @public */
export const WorkerOptions = z.strictObject({
  /** `releaseExpiredHolds`, `renewDueSubscriptions`, `expireDueGrants` (and more, below), in ms. Default 60,000; 0: off. */
  jobsEveryMs: z.optional(Interval),
  /** The expiring-credit reminders, in ms. Default 3,600,000 when the manager records notifications, else 0 (off). */
  remindersEveryMs: z.optional(Interval),
  /**
   * The outbox dispatcher (`notifications.dispatchPending`: delivery to the manager's queue, each
   * auto top-up charged before its row), in ms. Default 1,000 when the manager records
   * notifications, else 0 (off).
   */
  dispatchEveryMs: z.optional(Interval),
  /**
   * The auto top-ups' charges when the dispatcher does not run (`notifications.handlePending`), in
   * ms. Default 1,000; off while `dispatchEveryMs` runs (it charges them) or no payment provider can
   * charge a saved method.
   */
  topUpEveryMs: z.optional(Interval),
  /**
   * The revenue summary's catch-up (docs/revenue.md, "Keeping the summary caught up"): the journal
   * entries written since, folded into the summary so a report has none left to add, in ms. Default
   * 0 (off); runs only on a store that keeps a summary (PostgreSQL).
   */
  revenueEveryMs: z.optional(Interval),
  /** Journal entries one revenue round folds at most (1,000–10,000,000; the rest is the next round's). Default 200,000. */
  revenueEntries: z.optional(z.number().check(z.int(), z.minimum(1000), z.maximum(10_000_000))),
  /**
   * The daily usage rollup's catch-up (docs/usage.md, "Keeping the rollup caught up"): the journal
   * entries written since, added to the rollup so a report across accounts has none left to add,
   * in ms. Default 60,000; runs only on a store that keeps a rollup (PostgreSQL).
   */
  usageEveryMs: z.optional(Interval),
  /** Journal entries one usage round adds at most (1,000–10,000,000; the rest is the next round's). Default 200,000. */
  usageEntries: z.optional(z.number().check(z.int(), z.minimum(1000), z.maximum(10_000_000))),
  /** Each pause is the interval ± jitter/2 of it; the first waits up to jitter × interval (0 to 1). Default 0.1. */
  jitter: z.optional(z.number().check(z.minimum(0), z.maximum(1))),
  /** Rows per indexed scan of the jobs and reminders (1–10,000). Default 1,000. */
  batchSize: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
  /** Accounts a job works on at once (1–256). Default 8. */
  concurrency: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(256))),
  /** Notifications one dispatch (or top-ups) round handles at most (1–10,000). Default 1,000. */
  dispatchLimit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(10_000))),
  /**
   * With each jobs round, a checkpoint on every account with this many entries or more since its
   * last (`checkpointAccounts`; docs/operations.md, "Checkpoints and archival"). Default: none.
   */
  checkpointEntries: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1_000_000_000))),
  /** The reminder windows, in days. Default: the manager's (`notifications.reminderDays`, default `[7]`). */
  reminderDays: z.optional(z.array(z.number().check(z.minimum(0), z.maximum(3650))).check(z.maxLength(16))),
  /**
   * Where each round writes its line (pino's shapes: `(obj, msg)`): info for a round, warn for one
   * that left work for the next, error for one that failed. Default: nothing written.
   */
  logger: z.optional(LoggerOption),
});
/** `createWorker(manager, options)`, validated like every public input. @public */
export type WorkerOptions = z.input<typeof WorkerOptions>;

/** A task that runs, and its interval in ms. @public */
export interface WorkerTask {
  /** The task's name. */
  name: WorkerTaskName;
  /** How often the task runs, in milliseconds. */
  everyMs: number;
}

/** What one round of a task did. @public */
export interface WorkerRound {
  /** The task that ran. */
  task: WorkerTaskName;
  /** False when some work failed (a job step, a delivery, a charge: left for the next round) or the round threw. */
  ok: boolean;
  /** A dispatch, top-ups, revenue or usage round that found nothing to do. */
  idle: boolean;
  /** How long the round took, in milliseconds. */
  durationMs: number;
  /** The round's report (the jobs' reports, the reminders per window, the dispatch counts), as logged. */
  report: Record<string, unknown>;
  /** What the round threw (the store unreachable, …), when it did. */
  error?: unknown;
}

/** What `runOnce` did: a round per task that runs. @public */
export interface WorkerRunSummary {
  /** Every round succeeded. */
  ok: boolean;
  /** The rounds run. */
  rounds: WorkerRound[];
}

/** `createWorker`'s answer. @public */
export interface CreditWorker {
  /** The tasks that run (interval above 0), in `runOnce`'s order. */
  readonly tasks: readonly WorkerTask[];
  /**
   * Who charges the auto top-ups asked for: the dispatch task (before it delivers each row), the
   * top-ups task, or nobody (no provider can charge a saved method, or `topUpEveryMs: 0`).
   */
  readonly topUpsBy: "dispatch" | "top-ups" | "nobody";
  /**
   * One round of each task — jobs, reminders, dispatch, top-ups, revenue, usage, so the jobs'
   * events go out in the same run — each logged as one line. A round that throws is reported (`ok: false`, `error`),
   * not thrown. `stop()` meanwhile ends it after the round in flight.
   */
  runOnce(): Promise<WorkerRunSummary>;
  /** Runs each task on its interval (with jitter) until `stop()`; a pause counts from the end of a round. */
  start(): void;
  /** Stops scheduling rounds and waits for the rounds in flight (of `start` and `runOnce`). */
  stop(): Promise<void>;
}

/** The options with their defaults filled in (`checkpointEntries` has none: undefined is off). */
type Settings = Required<Omit<z.output<typeof WorkerOptions>, "logger" | "checkpointEntries" | "reminderDays">> & {
  checkpointEntries: number | undefined;
  reminderDays: readonly number[];
};

type RoundResult = Pick<WorkerRound, "ok" | "idle" | "report">;

/**
 * The worker's rounds on `manager` (see `CreditWorker`). Throws `ConfigurationError` for bad options.
 * Any number of workers may run at once on one store, in as many processes: every job, reminder,
 * delivery and charge is done once (docs/operations.md, "The worker").
 * @public
 */
export function createWorker(manager: CreditManager, options: WorkerOptions = {}): CreditWorker {
  const o = parseConfig(WorkerOptions, options, "options", "worker");
  const logger = o.logger ?? silentLogger;
  const recording = manager.notifications.recording;
  const s: Settings = {
    jobsEveryMs: o.jobsEveryMs ?? 60_000,
    remindersEveryMs: o.remindersEveryMs ?? (recording ? 3_600_000 : 0),
    dispatchEveryMs: o.dispatchEveryMs ?? (recording ? 1000 : 0),
    topUpEveryMs: o.topUpEveryMs ?? 1000,
    revenueEveryMs: o.revenueEveryMs ?? 0,
    revenueEntries: o.revenueEntries ?? 200_000,
    usageEveryMs: o.usageEveryMs ?? 60_000,
    usageEntries: o.usageEntries ?? 200_000,
    jitter: o.jitter ?? 0.1,
    batchSize: o.batchSize ?? 1000,
    concurrency: o.concurrency ?? 8,
    dispatchLimit: o.dispatchLimit ?? 1000,
    checkpointEntries: o.checkpointEntries,
    reminderDays: o.reminderDays ?? manager.expiration.reminderDays,
  };
  const topUpsBy = whoChargesTopUps(manager, s);
  const rounds: Record<WorkerTaskName, () => Promise<RoundResult>> = {
    jobs: () => jobsRound(manager, s),
    reminders: () => remindersRound(manager, s),
    dispatch: () => dispatchRound(manager, s),
    "top-ups": () => topUpsRound(manager, s),
    revenue: () => revenueRound(manager, s),
    usage: () => usageRound(manager, s),
  };
  const tasks: WorkerTask[] = (
    [
      { name: "jobs", everyMs: s.jobsEveryMs },
      { name: "reminders", everyMs: s.remindersEveryMs },
      { name: "dispatch", everyMs: s.dispatchEveryMs },
      // Without a provider that can charge, every attempt would fail (and use up its retries):
      // the rows wait, untouched, and the start's warning says so.
      { name: "top-ups", everyMs: topUpsBy === "top-ups" ? s.topUpEveryMs : 0 },
      // A store without a revenue summary replays the journal for each report: nothing to keep.
      { name: "revenue", everyMs: revenueSummaryOf(manager.db) === undefined ? 0 : s.revenueEveryMs },
      // A store without a usage rollup (or one kept on the write path) has nothing to catch up.
      { name: "usage", everyMs: manager.db.catchUpUsage === undefined ? 0 : s.usageEveryMs },
    ] as const
  ).filter((t) => t.everyMs > 0);

  /** Runs one round of `task` and logs it as one line (`once`: an idle round at info, not debug). */
  const round = async (task: WorkerTask, once: boolean): Promise<WorkerRound> => {
    logger.debug({ task: task.name }, "round started");
    const started = performance.now();
    try {
      const r = await rounds[task.name]();
      const durationMs = Math.round(performance.now() - started);
      const line = { task: task.name, ok: r.ok, durationMs, ...r.report };
      if (!r.ok) logger.warn(line, `${task.name} round: some work failed (left for the next round)`);
      else if (r.idle && !once) logger.debug(line, `${task.name} round: nothing to do`);
      else logger.info(line, `${task.name} round`);
      return { task: task.name, ...r, durationMs };
    } catch (error) {
      const durationMs = Math.round(performance.now() - started);
      logger.error({ task: task.name, ok: false, durationMs, err: error }, `${task.name} round failed`);
      return { task: task.name, ok: false, idle: false, durationMs, report: {}, error };
    }
  };

  // `stop()` moves to a new generation: what runs under an older one schedules nothing more.
  let generation = 0;
  let started = false;
  let warned: Promise<void> | null = null;
  const warnOnce = () => (warned ??= warnUnchargedTopUps(manager, topUpsBy, logger));
  const timers = new Set<NodeJS.Timeout>();
  const inFlight = new Set<Promise<unknown>>();
  const track = <T>(p: Promise<T>): Promise<T> => {
    inFlight.add(p);
    // Bookkeeping only: `p` itself goes back to the caller, which handles its failure.
    void p.finally(() => inFlight.delete(p)).catch(() => undefined);
    return p;
  };
  const schedule = (task: WorkerTask, first: boolean, gen: number) => {
    if (gen !== generation) return;
    const timer = setTimeout(
      () => {
        timers.delete(timer);
        if (gen !== generation) return;
        void track(round(task, false)).finally(() => schedule(task, false, gen));
      },
      pauseBefore(task.everyMs, s.jitter, first),
    );
    timers.add(timer);
  };

  return {
    tasks,
    topUpsBy,
    async runOnce() {
      const gen = generation;
      await track(warnOnce());
      const done: WorkerRound[] = [];
      for (const task of tasks) {
        if (gen !== generation) break;
        done.push(await track(round(task, true)));
      }
      return { ok: done.every((r) => r.ok), rounds: done };
    },
    start() {
      if (started) return;
      started = true;
      void track(warnOnce());
      for (const task of tasks) schedule(task, true, generation);
    },
    async stop() {
      generation++;
      started = false;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
    },
  };
}

/**
 * Who charges the auto top-ups asked for: the dispatch round (before it delivers each row), the
 * top-ups task (no dispatch), or nobody (no provider can charge a saved method; top-ups off).
 */
function whoChargesTopUps(m: CreditManager, s: Settings): CreditWorker["topUpsBy"] {
  if (s.dispatchEveryMs > 0) return "dispatch";
  if (s.topUpEveryMs === 0 || m.payments.chargingProviders().length === 0) return "nobody";
  return "top-ups";
}

/**
 * When the worker cannot charge auto top-ups (no provider can charge a saved card: a dispatch
 * round would fail them, the top-ups task does not run) or will not (the top-ups task off) while
 * some are waiting: one warning naming the fix. Looks at one waiting row (claimed and given back at
 * once, no attempt counted). docs/promos-and-payments.md, "Auto top-up".
 */
async function warnUnchargedTopUps(m: CreditManager, by: CreditWorker["topUpsBy"], logger: Logger): Promise<void> {
  const noProvider = m.payments.chargingProviders().length === 0;
  if (by !== "nobody" && !noProvider) return;
  try {
    const token = `probe-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    const rows = await m.db.claimNotifications({
      now: new Date(),
      limit: 1,
      leaseMs: 1000,
      token,
      types: ["auto_top_up_requested"],
    });
    for (const r of rows) {
      await m.db.completeNotification(
        r.id,
        token,
        {
          status: "pending",
          attempts: r.attempts,
          nextAttemptAt: r.nextAttemptAt,
          lastError: r.lastError,
          settledAt: null,
        },
        r.userId,
      );
    }
    if (!rows.some((r) => r.type === "auto_top_up_requested")) return;
    logger.warn(
      {
        fix: !noProvider
          ? "unset --top-up-every / CREDIT_WORKER_TOP_UP_EVERY (or run a dispatcher: CREDIT_NOTIFICATIONS=deliver)"
          : "set STRIPE_SECRET_KEY (and APP_BASE_URL) in the worker's environment, as your services have them",
        userId: rows[0]?.userId,
      },
      !noProvider
        ? "auto top-ups are waiting and this worker does not charge them (--top-up-every off): they stay asked for, blocking their rules, until something charges them"
        : "auto top-ups are waiting and no payment provider can charge a saved card here: they stay asked for, blocking their rules, until a worker with STRIPE_SECRET_KEY charges them",
    );
  } catch (error) {
    logger.warn({ err: error }, "could not look for auto top-ups waiting to be charged");
  }
}

/** A job's result as the round's report gives it: the job's name left out, `asOf` said once at its top. */
function withoutJobAndAsOf<T extends { job: unknown; asOf: unknown }>(result: T): Omit<T, "job" | "asOf"> {
  const { job: _job, asOf: _asOf, ...rest } = result;
  return rest;
}

/**
 * Lapsed holds, renewals, expiry — in `runAll`'s order (docs/subscriptions.md, "Jobs") — and,
 * with the manager's retention window, the idempotency keys past it (docs/running-for-years.md).
 */
async function jobsRound(m: CreditManager, s: Settings): Promise<RoundResult> {
  const options = { batchSize: s.batchSize, concurrency: s.concurrency };
  const held = await m.expiration.releaseExpiredHolds(undefined, options);
  const asOf = held.asOf;
  const releaseExpiredHolds = withoutJobAndAsOf(held);
  const renewDueSubscriptions = withoutJobAndAsOf(await m.expiration.renewDueSubscriptions(asOf, options));
  const expireDueGrants = withoutJobAndAsOf(await m.expiration.expireDueGrants(asOf, options));
  let errors = releaseExpiredHolds.errors + renewDueSubscriptions.errors + expireDueGrants.errors;
  const report: Record<string, unknown> = { asOf, releaseExpiredHolds, renewDueSubscriptions, expireDueGrants };
  // Keys kept for ever (the default): nothing to forget, and nothing said.
  const forgetIdempotencyKeys = withoutJobAndAsOf(
    await m.expiration.forgetIdempotencyKeys(asOf, { batchSize: s.batchSize }),
  );
  if (forgetIdempotencyKeys.retentionMs !== null) report.forgetIdempotencyKeys = forgetIdempotencyKeys;
  if (s.checkpointEntries !== undefined) {
    // docs/operations.md, "Checkpoints and archival".
    const checkpointAccounts = withoutJobAndAsOf(
      await m.expiration.checkpointAccounts({ everyEntries: s.checkpointEntries, ...options }),
    );
    errors += checkpointAccounts.errors;
    report.checkpointAccounts = checkpointAccounts;
  }
  // A store partitioned by time: the partitions ahead (docs/running-for-years.md).
  const ensured = await m.db.ensurePartitions?.(new Date(asOf));
  if (ensured !== undefined && (ensured.created.length > 0 || ensured.movedFromDefault > 0))
    report.ensurePartitions = ensured;
  return { ok: errors === 0, idle: false, report };
}

/** The expiring-credit reminders of each window (recorded once per grant and window). */
async function remindersRound(m: CreditManager, s: Settings): Promise<RoundResult> {
  const windows: { days: number; scanned: number; recorded: number }[] = [];
  for (const days of s.reminderDays) {
    windows.push({ days, ...(await m.notifications.sendExpiringReminders({ days, pageSize: s.batchSize })) });
  }
  // The alert thresholds time moves: credits now expiring within a threshold's days (docs/notifications.md, "Alerts").
  const alerts = await m.notifications.evaluateExpiringAlerts({ pageSize: s.batchSize });
  const ended = await m.notifications.evaluateEndedSpendWindows({ pageSize: s.batchSize });
  return {
    ok: true,
    idle: false,
    report: { reminders: windows, expiringAlerts: alerts.accounts, endedSpendWindows: ended.evaluated },
  };
}

/** Delivers due outbox rows to the manager's queue; a delivery that failed (retried later) fails the round. */
async function dispatchRound(m: CreditManager, s: Settings): Promise<RoundResult> {
  const r = await m.notifications.dispatchPending({ limit: s.dispatchLimit });
  return { ok: r.retried + r.failed === 0, idle: r.claimed === 0, report: { ...r } };
}

/**
 * Charges the auto top-ups asked for (`auto_top_up_requested`) without delivering the rows
 * (`handlePending`): claimed as the dispatcher claims them, so two workers (or a worker beside a
 * dispatcher) never charge one twice; a failure (time-out, 5xx) is retried with the outbox's backoff.
 */
async function topUpsRound(m: CreditManager, s: Settings): Promise<RoundResult> {
  const r = await m.notifications.handlePending({ types: ["auto_top_up_requested"], limit: s.dispatchLimit });
  return { ok: r.retried + r.failed === 0, idle: r.claimed === 0, report: { ...r } };
}

/**
 * Folds the journal entries written since the last round (or report) into the store's revenue
 * summary, at most `revenueEntries` of them (docs/revenue.md, "Keeping the summary caught up"):
 * a report after it adds nothing, or only what was written since.
 */
async function revenueRound(m: CreditManager, s: Settings): Promise<RoundResult> {
  const r = await catchUpRevenue(m.db, { maxEntries: s.revenueEntries });
  return { ok: true, idle: r.entries === 0, report: { revenue: r } };
}

/**
 * Adds the journal entries written since the last round (or report) to the store's daily usage
 * rollup, at most `usageEntries` of them (docs/usage.md, "Keeping the rollup caught up"): a report
 * across accounts after it adds nothing, or only what was written since.
 */
async function usageRound(m: CreditManager, s: Settings): Promise<RoundResult> {
  const r = (await m.db.catchUpUsage?.({ maxEntries: s.usageEntries })) ?? { accounts: 0, entries: 0, more: false };
  return { ok: true, idle: r.entries === 0, report: { usage: r } };
}
