import { PartitionInterval } from "../schema/partitions.js";
import { IdempotencyRetention } from "../core/services/expiration-service.js";
import type { WorkerOptions } from "../worker/index.js";
import {
  PAYMENT_FLAGS,
  PAYMENT_OPTIONS,
  paymentSettings,
  type PaymentFlags,
  type PaymentSettings,
} from "../modules/billing/provider-settings.js";
import { UsageError } from "../util/usage-error.js";
import { LOG_LEVELS, type Env, type LogLevel } from "./settings.js";

/**
 * The settings of `credit-management worker` and of `serve --worker` (docs/operations.md): read
 * from the flags and the environment they are given, checked before anything connects; a bad one
 * is a `UsageError` naming it (exit 2). `workerOptions` turns them into `createWorker`'s
 * options.
 */

export type NotificationsMode = "off" | "record" | "deliver";
export type { LogLevel };

/** The worker's settings, once read and checked. Intervals in ms; 0: that task does not run. */
export interface WorkerSettings {
  once: boolean;
  jobsEveryMs: number;
  remindersEveryMs: number;
  dispatchEveryMs: number;
  /**
   * Charging the auto top-ups asked for (`auto_top_up_requested`) when the dispatch task does not
   * run (it charges them before it delivers): docs/promos-and-payments.md, "Auto top-up".
   */
  topUpEveryMs: number;
  /** The revenue summary's catch-up (docs/revenue.md, "Keeping the summary caught up"); 0: off (the default). */
  revenueEveryMs: number;
  /**
   * The usage rollup's catch-up (docs/usage.md, "Keeping the rollup caught up"); default 60 s, on
   * a store that keeps a rollup (PostgreSQL); 0: off.
   */
  usageEveryMs: number;
  /** Each pause is the interval ± jitter/2 of it; the first round waits up to jitter × interval. */
  jitter: number;
  batchSize: number;
  concurrency: number;
  dispatchLimit: number;
  /** With each jobs round, checkpoint accounts with this many entries since their last (undefined: off). */
  checkpointEntries: number | undefined;
  reminderDays: number[];
  notifications: NotificationsMode;
  redisUrl: string | undefined;
  redisStream: string;
  /** CREDIT_WEBHOOKS=on: deliver to the webhook endpoints of `credit-management webhooks` too (docs/notifications.md). */
  webhooks: boolean;
  cachePrefix: string | undefined;
  lowCredits: number | undefined;
  lowCreditsPercent: number | undefined;
  ledgerFile: string | undefined;
  logLevel: LogLevel;
  /** How long idempotency keys answer retries (`IdempotencyRetention`); "forever": never forgotten. */
  idempotencyRetention: string;
  /** STRIPE_API_BASE_URL: where the Stripe API is (a proxy, stripe-mock); undefined: Stripe's. */
  stripeBaseUrl: string | undefined;
  /**
   * The payments as your services configure them — `creditsPerUnit` above all, which sets what an
   * auto top-up charges and credits (docs/operations.md, "Payment settings"); Stripe's keys.
   */
  payments: PaymentSettings;
}

/** The worker's flags as `parseArgs` gives them (strings; flags win over their variables). */
export interface WorkerFlags extends PaymentFlags {
  once?: boolean;
  "jobs-every"?: string;
  "reminders-every"?: string;
  "dispatch-every"?: string;
  "top-up-every"?: string;
  "revenue-every"?: string;
  "usage-every"?: string;
  jitter?: string;
  "batch-size"?: string;
  concurrency?: string;
  "dispatch-limit"?: string;
  "log-level"?: string;
}

export const WORKER_FLAGS = {
  once: { type: "boolean" },
  "jobs-every": { type: "string" },
  "reminders-every": { type: "string" },
  "dispatch-every": { type: "string" },
  "top-up-every": { type: "string" },
  "revenue-every": { type: "string" },
  "usage-every": { type: "string" },
  jitter: { type: "string" },
  "batch-size": { type: "string" },
  concurrency: { type: "string" },
  "dispatch-limit": { type: "string" },
  "log-level": { type: "string" },
  ...PAYMENT_FLAGS,
} as const;

export const WORKER_OPTIONS = `Options of "worker" (each flag wins over its variable):
  --once                           One round of each task on (jobs, reminders, dispatch, top-ups, usage, revenue), then exit:
                                   0 every round succeeded; 1 a round failed (a job step, a delivery, the store).
                                   Any mode: 2 for a bad flag or variable (the message names it)
  --jobs-every DURATION            CREDIT_WORKER_JOBS_EVERY: lapsed holds, renewals, expiry. Default 60s
  --reminders-every DURATION       CREDIT_WORKER_REMINDERS_EVERY: expiring-credit reminders (notifications on). Default 1h
  --dispatch-every DURATION        CREDIT_WORKER_DISPATCH_EVERY: outbox delivery (CREDIT_NOTIFICATIONS=deliver). Default 1s
  --top-up-every DURATION          CREDIT_WORKER_TOP_UP_EVERY: charge the auto top-ups asked for, when the
                                   worker does not deliver (deliver: the dispatch round charges them). Runs
                                   when a provider can charge saved cards (STRIPE_SECRET_KEY). Default 1s
  --revenue-every DURATION         CREDIT_WORKER_REVENUE_EVERY: fold new journal entries into PostgreSQL's
                                   revenue summary, so month-end reports have none left to add. Default off
  --usage-every DURATION           CREDIT_WORKER_USAGE_EVERY: add new journal entries to PostgreSQL's daily
                                   usage rollup, so reports across accounts have none left to add. Default 60s
                                   DURATION: 500ms, 30s, 5m, 1h or a number of ms; 0 or off: never
                                   (a pause counts from the end of a round: rounds of a task never overlap)
  --jitter FRACTION                CREDIT_WORKER_JITTER: each pause is the interval ± FRACTION/2 of it,
                                   the first up to FRACTION of it (0 to 1). Default 0.1
  --batch-size N                   CREDIT_WORKER_BATCH_SIZE: rows per scan of the jobs and reminders. Default 1000
  --concurrency N                  CREDIT_WORKER_CONCURRENCY: accounts a job works on at once. Default 8
  --dispatch-limit N               CREDIT_WORKER_DISPATCH_LIMIT: notifications one dispatch round delivers. Default 1000
  --log-level LEVEL                CREDIT_LOG_LEVEL: fatal, error, warn, info, debug, trace or silent. Default info
Payments (give the worker your services' settings: it charges and credits the auto top-ups):
${PAYMENT_OPTIONS}Environment of "worker":
  CREDIT_PG_URL, CREDIT_PG_SCHEMA  The PostgreSQL store (as createDbManagerFromEnv; CREDIT_PG_PARTITIONS=day,
                                   week or month: partitioned by time, each jobs round makes the partitions ahead), or
  CREDIT_MONGO_URI, CREDIT_MONGO_DB the MongoDB store, or
  CREDIT_SQLITE_PATH               a SQLite store's file: exactly one of the three (two is an error).
                                   None set: serve's default, ./credit-management.sqlite
  CREDIT_REDIS_URL                 Redis: the notification queue (a stream) and, with the prefix below, the cache
  CREDIT_REDIS_STREAM              The stream notifications are delivered to. Default credit-management:notifications
  CREDIT_REDIS_CACHE_PREFIX        Your services' RedisCache keyPrefix: the worker's writes invalidate their entries
  CREDIT_NOTIFICATIONS             off: no events, no reminders, no delivery; record: events and reminders
                                   go to the outbox, your services deliver them; deliver: and the worker
                                   delivers them to the stream (and the webhooks). Default deliver with
                                   CREDIT_REDIS_URL or CREDIT_WEBHOOKS=on, else off. In every mode the
                                   auto top-ups asked for are charged (--top-up-every)
  STRIPE_SECRET_KEY, APP_BASE_URL  Stripe, as your services have it: the worker charges auto top-ups with it
  CREDIT_WEBHOOKS                  on: every outbox event also goes to the webhook endpoints of
                                   "credit-management webhooks", signed (docs/notifications.md). Default off
  CREDIT_WEBHOOK_ALLOW_NETWORKS    CIDR networks webhook endpoints may reach although private or loopback
  CREDIT_LOW_CREDITS               The low_credits threshold, in credits (as notifications.lowCredits)
  CREDIT_LOW_CREDITS_PERCENT       The low_credits threshold, in percent (as notifications.lowCreditsPercent)
  CREDIT_REMINDER_DAYS             Reminder windows in days, comma-separated. Default 7; none: no reminders
  CREDIT_LEDGER_FILE               A JSONL ledger file to append to; SIGHUP reopens it (logrotate)
  CREDIT_IDEMPOTENCY_RETENTION     How long idempotency keys answer retries: forever (default) or 1m to
                                   100 years (24h, 30d): the jobs forget older keys (a retry is then a new operation)
  CREDIT_WORKER_CHECKPOINT_ENTRIES N: each jobs round also writes a checkpoint on every account with N
                                   entries or more since its last (checkpointAccounts). Default off
Signals: SIGTERM or SIGINT finishes the rounds in flight, then exits 0 (--once: its exit code); a
  second one exits at once (130 SIGINT, 143 SIGTERM); what a cut round did is all there or not at all.
  One JSON line (pino) per round on standard output.
`;

/** Reads and checks the flags and the environment; throws `UsageError` saying what is wrong. */
export function workerSettings(flags: WorkerFlags, env: Env): WorkerSettings {
  const read = (flag: keyof WorkerFlags | null, name: string): { text: string; from: string } | undefined => {
    const given = flag === null ? undefined : flags[flag];
    if (typeof given === "string") return { text: given, from: `--${flag}` };
    const value = env[name];
    if (value === undefined || value.trim() === "") return undefined;
    return { text: value.trim(), from: name };
  };
  const duration = (flag: keyof WorkerFlags, name: string, fallback: number): { ms: number; given: boolean } => {
    const v = read(flag, name);
    if (v === undefined) return { ms: fallback, given: false };
    return { ms: parseDuration(v.text, v.from), given: true };
  };
  /** A number from `min` to `max` (`whole`: without a fraction), or undefined when not given. */
  const number = (flag: keyof WorkerFlags | null, name: string, min: number, max: number, whole = false) => {
    const v = read(flag, name);
    if (v === undefined) return undefined;
    const n = (whole ? /^[0-9]+$/ : /^[0-9]+(\.[0-9]+)?$/).test(v.text) ? Number(v.text) : NaN;
    if (!(n >= min && n <= max))
      throw new UsageError(`${v.from} must be a ${whole ? "whole " : ""}number from ${min} to ${max}, not "${v.text}"`);
    return n;
  };
  const integer = (flag: keyof WorkerFlags | null, name: string, min: number, max: number) =>
    number(flag, name, min, max, true);
  /** One of `values` (`words` lists them in the message), or undefined when not given. */
  const oneOf = <T extends string>(
    flag: keyof WorkerFlags | null,
    name: string,
    values: readonly T[],
    words: string,
  ) => {
    const v = read(flag, name);
    if (v !== undefined && !values.includes(v.text as T))
      throw new UsageError(`${v.from} must be ${words}, not "${v.text}"`);
    return v?.text as T | undefined;
  };

  const redisUrl = read(null, "CREDIT_REDIS_URL")?.text;
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) {
    throw new UsageError(`CREDIT_REDIS_URL must be a redis:// or rediss:// URL, not "${redisUrl}"`);
  }
  const webhooks = oneOf(null, "CREDIT_WEBHOOKS", ["on", "off"], "on or off") === "on";
  const modes = ["off", "record", "deliver"] as const;
  const notifications: NotificationsMode =
    oneOf(null, "CREDIT_NOTIFICATIONS", modes, "off, record or deliver") ??
    (redisUrl === undefined && !webhooks ? "off" : "deliver");
  if (notifications === "deliver" && redisUrl === undefined && !webhooks) {
    throw new UsageError("CREDIT_NOTIFICATIONS=deliver needs CREDIT_REDIS_URL (the stream it delivers to)");
  }
  const cachePrefix = read(null, "CREDIT_REDIS_CACHE_PREFIX")?.text;
  if (cachePrefix !== undefined && redisUrl === undefined)
    throw new UsageError("CREDIT_REDIS_CACHE_PREFIX needs CREDIT_REDIS_URL");

  // Checked here, before any connection (the store's constructor would fail later, with exit 1).
  oneOf(null, "CREDIT_PG_PARTITIONS", PartitionInterval.options, "day, week or month");

  const jobs = duration("jobs-every", "CREDIT_WORKER_JOBS_EVERY", 60_000);
  const reminders = duration("reminders-every", "CREDIT_WORKER_REMINDERS_EVERY", 3_600_000);
  const dispatch = duration("dispatch-every", "CREDIT_WORKER_DISPATCH_EVERY", 1000);
  const topUps = duration("top-up-every", "CREDIT_WORKER_TOP_UP_EVERY", 1000);
  const revenue = duration("revenue-every", "CREDIT_WORKER_REVENUE_EVERY", 0);
  const usage = duration("usage-every", "CREDIT_WORKER_USAGE_EVERY", 60_000);
  const payments = paymentSettings(flags, env);
  if (notifications === "off" && reminders.given && reminders.ms > 0) {
    throw new UsageError(
      "reminders need notifications: set CREDIT_NOTIFICATIONS=record or deliver (or CREDIT_REDIS_URL)",
    );
  }
  if (webhooks && notifications !== "deliver")
    throw new UsageError("CREDIT_WEBHOOKS=on needs CREDIT_NOTIFICATIONS=deliver (or unset)");
  if (notifications !== "deliver" && dispatch.given && dispatch.ms > 0) {
    throw new UsageError(
      "dispatch needs CREDIT_NOTIFICATIONS=deliver and CREDIT_REDIS_URL (the stream it delivers to)",
    );
  }

  const daysText = read(null, "CREDIT_REMINDER_DAYS")?.text;
  let reminderDays = [7];
  if (daysText !== undefined) {
    reminderDays = daysText === "none" ? [] : daysText.split(",").map((d) => Number(d.trim()));
    if (
      reminderDays.length > 16 ||
      reminderDays.some((d, i) => !/^[0-9]+(\.[0-9]+)?$/.test(daysText.split(",")[i]?.trim() ?? "") || !(d <= 3650))
    ) {
      throw new UsageError(
        `CREDIT_REMINDER_DAYS must be up to 16 numbers of days (0 to 3650) separated by commas, or none, not "${daysText}"`,
      );
    }
  }

  const logLevel = oneOf("log-level", "CREDIT_LOG_LEVEL", LOG_LEVELS, `one of ${LOG_LEVELS.join(", ")}`) ?? "info";
  const ledgerFile = read(null, "CREDIT_LEDGER_FILE")?.text;
  const retentionText = read(null, "CREDIT_IDEMPOTENCY_RETENTION")?.text ?? "forever";
  const retention = /^[0-9]+$/.test(retentionText) ? Number(retentionText) : retentionText;
  if (!IdempotencyRetention.safeParse(retention).success) {
    throw new UsageError(
      `CREDIT_IDEMPOTENCY_RETENTION must be forever or a duration from 1m to 100 years (90s, 15m, 24h, 30d or a number of ms), not "${retentionText}"`,
    );
  }

  const dispatchEveryMs = notifications === "deliver" ? dispatch.ms : 0;
  const settings: WorkerSettings = {
    once: flags.once === true,
    jobsEveryMs: jobs.ms,
    remindersEveryMs: notifications === "off" ? 0 : reminders.ms,
    dispatchEveryMs,
    // The dispatch round charges each top-up before it delivers it; without it, this task does.
    topUpEveryMs: dispatchEveryMs > 0 ? 0 : topUps.ms,
    revenueEveryMs: revenue.ms,
    usageEveryMs: usage.ms,
    jitter: number("jitter", "CREDIT_WORKER_JITTER", 0, 1) ?? 0.1,
    batchSize: integer("batch-size", "CREDIT_WORKER_BATCH_SIZE", 1, 10_000) ?? 1000,
    concurrency: integer("concurrency", "CREDIT_WORKER_CONCURRENCY", 1, 256) ?? 8,
    dispatchLimit: integer("dispatch-limit", "CREDIT_WORKER_DISPATCH_LIMIT", 1, 10_000) ?? 1000,
    checkpointEntries: integer(null, "CREDIT_WORKER_CHECKPOINT_ENTRIES", 1, 1_000_000_000),
    reminderDays,
    notifications,
    redisUrl,
    redisStream: read(null, "CREDIT_REDIS_STREAM")?.text ?? "credit-management:notifications",
    webhooks,
    cachePrefix,
    lowCredits: integer(null, "CREDIT_LOW_CREDITS", 0, Number.MAX_SAFE_INTEGER),
    lowCreditsPercent: number(null, "CREDIT_LOW_CREDITS_PERCENT", 0, 100),
    ledgerFile,
    logLevel,
    idempotencyRetention: retentionText,
    stripeBaseUrl: payments.stripe.baseUrl,
    payments,
  };
  if (
    settings.jobsEveryMs === 0 &&
    settings.remindersEveryMs === 0 &&
    settings.dispatchEveryMs === 0 &&
    settings.topUpEveryMs === 0 &&
    settings.revenueEveryMs === 0 &&
    // On by default, but only on PostgreSQL: counted when asked for.
    !(usage.given && usage.ms > 0)
  ) {
    throw new UsageError(
      "every task is off: give at least one of --jobs-every, --reminders-every, --dispatch-every, --top-up-every, --revenue-every, --usage-every a duration",
    );
  }
  return settings;
}

/** "500ms", "30s", "5m", "1h", "60000" (ms); "0" or "off": never. At most 24 hours. */
export function parseDuration(text: string, from: string): number {
  if (text === "off" || text === "0") return 0;
  const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$/.exec(text);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m?.[2] ?? "ms") as "ms" | "s" | "m" | "h"];
  const ms = m === null ? NaN : Math.round(Number(m[1]) * unit);
  if (!(ms >= 10 && ms <= 86_400_000)) {
    throw new UsageError(
      `${from} must be a duration from 10ms to 24h (500ms, 30s, 5m, 1h or a number of ms), or 0/off, not "${text}"`,
    );
  }
  return ms;
}

/** `createWorker`'s options from the settings (the manager the command builds carries the rest). */
export function workerOptions(s: WorkerSettings, logger: WorkerOptions["logger"]): WorkerOptions {
  return {
    jobsEveryMs: s.jobsEveryMs,
    remindersEveryMs: s.remindersEveryMs,
    dispatchEveryMs: s.dispatchEveryMs,
    topUpEveryMs: s.topUpEveryMs,
    revenueEveryMs: s.revenueEveryMs,
    usageEveryMs: s.usageEveryMs,
    jitter: s.jitter,
    batchSize: s.batchSize,
    concurrency: s.concurrency,
    dispatchLimit: s.dispatchLimit,
    checkpointEntries: s.checkpointEntries,
    reminderDays: s.reminderDays,
    logger,
  };
}
