import { pino, type DestinationStream, type Logger as Pino } from "pino";
import type { Cache } from "../cache/index.js";
import { createDbManagerFromEnv, type DbEnv } from "../db/from-env.js";
import { InMemoryDbManager } from "../db/memory/index.js";
import type { DbManager } from "../db/types.js";
import { createCreditManager, type CreditManager } from "../manager.js";
import type { NotificationQueue } from "../queue/index.js";
import {
  PAYMENT_FLAGS,
  PAYMENT_OPTIONS,
  PaymentSettingsError,
  paymentSettings,
  type PaymentFlags,
  type PaymentSettings,
} from "../payments/settings.js";
import { PartitionInterval } from "../schema/partitions.js";
import { IdempotencyRetention } from "../services/expiration-service.js";

/**
 * `credit-management worker` (docs/operations.md): the jobs, the expiring-credit reminders, the
 * notification dispatcher and, when it does not deliver, the auto top-ups' charges, each on its own
 * interval (with jitter), or each once (`--once`).
 * Configured from the environment (the store URLs `createDbManagerFromEnv` reads, Redis for the
 * notification queue and the cache) and from flags, which win over their variables.
 */

/** A bad flag or variable: the CLI prints it and exits 2. */
export class WorkerUsageError extends Error {}

export type NotificationsMode = "off" | "record" | "deliver";
export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

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
  jitter: { type: "string" },
  "batch-size": { type: "string" },
  concurrency: { type: "string" },
  "dispatch-limit": { type: "string" },
  "log-level": { type: "string" },
  ...PAYMENT_FLAGS,
} as const;

export const WORKER_OPTIONS = `Options of "worker" (each flag wins over its variable):
  --once                           One round of each task (jobs, reminders, dispatch, top-ups), then exit:
                                   0 every round succeeded; 1 a round failed (a job step, a delivery, the store).
                                   Any mode: 2 for a bad flag or variable (the message names it)
  --jobs-every DURATION            CREDIT_WORKER_JOBS_EVERY: lapsed holds, renewals, expiry. Default 60s
  --reminders-every DURATION       CREDIT_WORKER_REMINDERS_EVERY: expiring-credit reminders (notifications on). Default 1h
  --dispatch-every DURATION        CREDIT_WORKER_DISPATCH_EVERY: outbox delivery (CREDIT_NOTIFICATIONS=deliver). Default 1s
  --top-up-every DURATION          CREDIT_WORKER_TOP_UP_EVERY: charge the auto top-ups asked for, when the
                                   worker does not deliver (deliver: the dispatch round charges them). Runs
                                   when a provider can charge saved cards (STRIPE_SECRET_KEY). Default 1s
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
  CREDIT_MONGO_URI, CREDIT_MONGO_DB the MongoDB store (wins when set), or
  CREDIT_SQLITE_PATH               a SQLite store's file. One of them is required
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

type Env = Record<string, string | undefined>;

/** Reads and checks the flags and the environment; throws `WorkerUsageError` saying what is wrong. */
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
  const integer = (flag: keyof WorkerFlags | null, name: string, min: number, max: number): number | undefined => {
    const v = read(flag, name);
    if (v === undefined) return undefined;
    const n = /^[0-9]+$/.test(v.text) ? Number(v.text) : NaN;
    if (!(n >= min && n <= max))
      throw new WorkerUsageError(`${v.from} must be a whole number from ${min} to ${max}, not "${v.text}"`);
    return n;
  };
  const number = (flag: keyof WorkerFlags | null, name: string, min: number, max: number): number | undefined => {
    const v = read(flag, name);
    if (v === undefined) return undefined;
    const n = /^[0-9]+(\.[0-9]+)?$/.test(v.text) ? Number(v.text) : NaN;
    if (!(n >= min && n <= max))
      throw new WorkerUsageError(`${v.from} must be a number from ${min} to ${max}, not "${v.text}"`);
    return n;
  };

  const redisUrl = read(null, "CREDIT_REDIS_URL")?.text;
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) {
    throw new WorkerUsageError(`CREDIT_REDIS_URL must be a redis:// or rediss:// URL, not "${redisUrl}"`);
  }
  const webhooksText = read(null, "CREDIT_WEBHOOKS")?.text;
  if (webhooksText !== undefined && webhooksText !== "on" && webhooksText !== "off")
    throw new WorkerUsageError(`CREDIT_WEBHOOKS must be on or off, not "${webhooksText}"`);
  const webhooks = webhooksText === "on";
  const modeText = read(null, "CREDIT_NOTIFICATIONS")?.text;
  if (modeText !== undefined && modeText !== "off" && modeText !== "record" && modeText !== "deliver") {
    throw new WorkerUsageError(`CREDIT_NOTIFICATIONS must be off, record or deliver, not "${modeText}"`);
  }
  const notifications: NotificationsMode =
    (modeText as NotificationsMode | undefined) ?? (redisUrl === undefined && !webhooks ? "off" : "deliver");
  if (notifications === "deliver" && redisUrl === undefined && !webhooks) {
    throw new WorkerUsageError("CREDIT_NOTIFICATIONS=deliver needs CREDIT_REDIS_URL (the stream it delivers to)");
  }
  const cachePrefix = read(null, "CREDIT_REDIS_CACHE_PREFIX")?.text;
  if (cachePrefix !== undefined && redisUrl === undefined)
    throw new WorkerUsageError("CREDIT_REDIS_CACHE_PREFIX needs CREDIT_REDIS_URL");

  // Checked here, before any connection (the store's constructor would fail later, with exit 1).
  const partitions = read(null, "CREDIT_PG_PARTITIONS")?.text;
  if (partitions !== undefined && !PartitionInterval.safeParse(partitions).success)
    throw new WorkerUsageError(`CREDIT_PG_PARTITIONS must be day, week or month, not "${partitions}"`);

  const jobs = duration("jobs-every", "CREDIT_WORKER_JOBS_EVERY", 60_000);
  const reminders = duration("reminders-every", "CREDIT_WORKER_REMINDERS_EVERY", 3_600_000);
  const dispatch = duration("dispatch-every", "CREDIT_WORKER_DISPATCH_EVERY", 1000);
  const topUps = duration("top-up-every", "CREDIT_WORKER_TOP_UP_EVERY", 1000);
  let payments: PaymentSettings;
  try {
    payments = paymentSettings(flags, env);
  } catch (error) {
    if (error instanceof PaymentSettingsError) throw new WorkerUsageError(error.message);
    throw error;
  }
  if (notifications === "off" && reminders.given && reminders.ms > 0) {
    throw new WorkerUsageError(
      "reminders need notifications: set CREDIT_NOTIFICATIONS=record or deliver (or CREDIT_REDIS_URL)",
    );
  }
  if (webhooks && notifications !== "deliver")
    throw new WorkerUsageError("CREDIT_WEBHOOKS=on needs CREDIT_NOTIFICATIONS=deliver (or unset)");
  if (notifications !== "deliver" && dispatch.given && dispatch.ms > 0) {
    throw new WorkerUsageError(
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
      throw new WorkerUsageError(
        `CREDIT_REMINDER_DAYS must be up to 16 numbers of days (0 to 3650) separated by commas, or none, not "${daysText}"`,
      );
    }
  }

  const levelText = read("log-level", "CREDIT_LOG_LEVEL");
  if (levelText !== undefined && !LOG_LEVELS.includes(levelText.text as LogLevel)) {
    throw new WorkerUsageError(`${levelText.from} must be one of ${LOG_LEVELS.join(", ")}, not "${levelText.text}"`);
  }
  const ledgerFile = read(null, "CREDIT_LEDGER_FILE")?.text;
  const retentionText = read(null, "CREDIT_IDEMPOTENCY_RETENTION")?.text ?? "forever";
  const retention = /^[0-9]+$/.test(retentionText) ? Number(retentionText) : retentionText;
  if (!IdempotencyRetention.safeParse(retention).success) {
    throw new WorkerUsageError(
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
    logLevel: (levelText?.text as LogLevel | undefined) ?? "info",
    idempotencyRetention: retentionText,
    stripeBaseUrl: payments.stripe.baseUrl,
    payments,
  };
  if (
    settings.jobsEveryMs === 0 &&
    settings.remindersEveryMs === 0 &&
    settings.dispatchEveryMs === 0 &&
    settings.topUpEveryMs === 0
  ) {
    throw new WorkerUsageError(
      "every task is off: give at least one of --jobs-every, --reminders-every, --dispatch-every, --top-up-every a duration",
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
    throw new WorkerUsageError(
      `${from} must be a duration from 10ms to 24h (500ms, 30s, 5m, 1h or a number of ms), or 0/off, not "${text}"`,
    );
  }
  return ms;
}

/**
 * The pause before a task's round, in ms: the first up to `jitter × every` (replicas started
 * together drift apart), each later one `every ± jitter/2 × every` (on average `every`).
 */
export function pauseBefore(
  everyMs: number,
  jitter: number,
  first: boolean,
  random: () => number = Math.random,
): number {
  return Math.round(first ? everyMs * jitter * random() : everyMs * (1 - jitter / 2 + jitter * random()));
}

export interface WorkerIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

type TaskName = "jobs" | "reminders" | "dispatch" | "top-ups";
interface RoundResult {
  ok: boolean;
  /** A dispatch round that found nothing (on intervals logged at debug, not info: a dispatcher polls every second). */
  idle: boolean;
  report: Record<string, unknown>;
}

/**
 * Runs the worker until SIGTERM/SIGINT (or, with `once`, one round of each task). Resolves to the
 * exit code: 0 stopped cleanly (with `once`: every round succeeded), 1 a round or the start failed.
 */
export async function runWorker(settings: WorkerSettings, io: WorkerIo, env: DbEnv): Promise<number> {
  const destination: DestinationStream = { write: (line: string) => io.stdout(line) };
  const logger: Pino = pino({ name: "credit-management-worker", level: settings.logLevel }, destination);

  let stopping = false;
  let wake: (() => void) | null = null;
  const onStop = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.error(
        { signal },
        "second signal: exiting now; the rounds in flight are cut (their units of work are all there or not at all)",
      );
      process.exit(128 + (signal === "SIGINT" ? 2 : 15));
    }
    stopping = true;
    logger.info({ signal }, "stopping: finishing the rounds in flight");
    wake?.();
  };
  const onTerm = () => onStop("SIGTERM");
  const onInt = () => onStop("SIGINT");
  process.on("SIGTERM", onTerm);
  process.on("SIGINT", onInt);

  let manager: CreditManager | undefined;
  const closers: (() => Promise<unknown>)[] = [];
  const onHup = () => {
    void manager?.ledger.reopen().then(
      () => logger.info({ ledgerFile: settings.ledgerFile }, "ledger file reopened"),
      (error: unknown) => logger.error({ err: error }, "ledger file could not be reopened"),
    );
  };
  if (settings.ledgerFile !== undefined) process.on("SIGHUP", onHup);

  let db: DbManager | undefined;
  try {
    try {
      db = await createDbManagerFromEnv(env);
      if (db instanceof InMemoryDbManager) {
        throw new WorkerUsageError(
          "the worker works on your services' store: set CREDIT_PG_URL (and CREDIT_PG_SCHEMA), CREDIT_MONGO_URI (and CREDIT_MONGO_DB) or CREDIT_SQLITE_PATH",
        );
      }
      let queue: NotificationQueue | undefined;
      let cache: Cache | undefined;
      if (settings.redisUrl !== undefined) {
        const redis = await import("../redis/index.js");
        if (settings.notifications === "deliver") {
          const q = await redis.RedisStreamQueue.connect(settings.redisUrl, {
            stream: settings.redisStream,
            logger,
          });
          closers.push(() => q.close());
          queue = q;
        }
        if (settings.cachePrefix !== undefined) {
          const c = await redis.RedisCache.connect(settings.redisUrl, { keyPrefix: settings.cachePrefix, logger });
          closers.push(() => c.close());
          cache = c;
        }
      }
      if (settings.webhooks) {
        // The endpoints of `credit-management webhooks`, read again every few seconds (docs/notifications.md).
        const { openEndpointStore, allowedNetworks } = await import("./webhooks.js");
        const { webhookQueue, endpointOf } = await import("../webhooks/index.js");
        const e = env as Record<string, string | undefined>;
        const endpoints = await openEndpointStore(
          e.CREDIT_MONGO_URI?.trim()
            ? { kind: "mongodb", uri: e.CREDIT_MONGO_URI.trim(), db: e.CREDIT_MONGO_DB?.trim() || "credit_management" }
            : e.CREDIT_PG_URL?.trim()
              ? {
                  kind: "postgres",
                  url: e.CREDIT_PG_URL.trim(),
                  schema: e.CREDIT_PG_SCHEMA?.trim() || undefined,
                  partitions: undefined,
                }
              : { kind: "sqlite", path: e.CREDIT_SQLITE_PATH?.trim() ?? "" },
        );
        closers.push(() => endpoints.close());
        await endpoints.init();
        const w = webhookQueue({
          db,
          endpoints: async () => (await endpoints.list()).map(endpointOf),
          next: queue,
          allowNetworks: allowedNetworks(e),
          logger,
          onDisabled: async (id) => {
            const r = await endpoints.get(id);
            if (r !== null) await endpoints.put({ ...r, enabled: false, disabledReason: "410 Gone" });
          },
        });
        closers.push(() => w.close());
        queue = w;
      }
      manager = await createCreditManager({
        db,
        queue,
        // Webhooks carry every event: the journal's too (docs/events.md).
        ...(settings.webhooks ? { domainEvents: true } : {}),
        cache,
        logger,
        // The application's payment settings (docs/operations.md, "Payment settings").
        payments: {
          stripe: settings.payments.stripe,
          creditsPerUnit: settings.payments.creditsPerUnit,
          keyNamespace: settings.payments.keyNamespace,
        },
        ledger: settings.ledgerFile === undefined ? false : { filePath: settings.ledgerFile },
        idempotency: { retention: retentionSetting(settings.idempotencyRetention) },
        notifications:
          settings.notifications === "off"
            ? undefined
            : {
                lowCredits: settings.lowCredits,
                lowCreditsPercent: settings.lowCreditsPercent,
                reminderDays: settings.reminderDays,
              },
      });
    } catch (error) {
      if (error instanceof WorkerUsageError) throw error;
      logger.error({ err: error }, "worker could not start");
      // Not the manager's yet: its pool (or client) is closed here.
      if (manager === undefined) await db?.close().catch(() => undefined);
      return 1;
    }
    const { tasks, round } = workerTasks(manager, settings, logger);
    logger.info(
      {
        once: settings.once,
        notifications: settings.notifications,
        every: Object.fromEntries(tasks.map((t) => [t.name, t.everyMs])),
        jitter: settings.jitter,
        topUps: topUpsBy(manager, settings),
      },
      "worker started",
    );
    await warnUnchargedTopUps(manager, settings, logger);

    let ok = true;
    if (settings.once) {
      for (const task of tasks) {
        if (stopping) break;
        ok = (await round(task)) && ok;
      }
    } else {
      const rounds = startWorkerRounds(manager, settings, logger);
      await new Promise<void>((resolve) => {
        wake = resolve;
        if (stopping) resolve();
      });
      await rounds.stop();
    }
    await manager.close();
    for (const close of closers.splice(0)) await close();
    logger.info({ ok }, "worker stopped");
    return ok ? 0 : 1;
  } finally {
    wake = null;
    for (const close of closers) await close().catch(() => undefined);
    if (manager !== undefined) await manager.close().catch(() => undefined);
    process.off("SIGTERM", onTerm);
    process.off("SIGINT", onInt);
    process.off("SIGHUP", onHup);
  }
}

interface WorkerTask {
  name: TaskName;
  everyMs: number;
  round: () => Promise<RoundResult>;
}

/** The tasks that run (interval > 0) and `round`, which runs one of them and logs it as one line. */
function workerTasks(m: CreditManager, settings: WorkerSettings, logger: Pino) {
  const tasks: WorkerTask[] = [
    { name: "jobs" as const, everyMs: settings.jobsEveryMs, round: () => jobsRound(m, settings) },
    { name: "reminders" as const, everyMs: settings.remindersEveryMs, round: () => remindersRound(m, settings) },
    { name: "dispatch" as const, everyMs: settings.dispatchEveryMs, round: () => dispatchRound(m, settings) },
    {
      name: "top-ups" as const,
      // Without a provider that can charge, every attempt would fail (and use up its retries):
      // the rows wait, untouched, and warnUnchargedTopUps says so.
      everyMs: topUpsBy(m, settings) === "top-ups" ? settings.topUpEveryMs : 0,
      round: () => topUpsRound(m, settings),
    },
  ].filter((t) => t.everyMs > 0);
  const round = async (task: WorkerTask): Promise<boolean> => {
    logger.debug({ task: task.name }, "round started");
    const started = performance.now();
    try {
      const r = await task.round();
      const line = { task: task.name, ok: r.ok, durationMs: Math.round(performance.now() - started), ...r.report };
      if (!r.ok) logger.warn(line, `${task.name} round: some work failed (left for the next round)`);
      else if (r.idle && !settings.once) logger.debug(line, `${task.name} round: nothing to do`);
      else logger.info(line, `${task.name} round`);
      return r.ok;
    } catch (error) {
      logger.error(
        { task: task.name, ok: false, durationMs: Math.round(performance.now() - started), err: error },
        `${task.name} round failed`,
      );
      return false;
    }
  };
  return { tasks, round };
}

/**
 * Runs the worker's tasks on their intervals (with jitter) on `m` until `stop()`, which waits for
 * the rounds in flight (`credit-management worker`, and `serve --worker` in the server's process).
 */
export function startWorkerRounds(m: CreditManager, settings: WorkerSettings, logger: Pino): { stop(): Promise<void> } {
  const { tasks, round } = workerTasks(m, settings, logger);
  let stopping = false;
  const timers = new Set<NodeJS.Timeout>();
  const inFlight = new Set<Promise<unknown>>();
  const schedule = (task: WorkerTask, first: boolean) => {
    if (stopping) return;
    const timer = setTimeout(
      () => {
        timers.delete(timer);
        if (stopping) return;
        const p = round(task).finally(() => {
          inFlight.delete(p);
          schedule(task, false);
        });
        inFlight.add(p);
      },
      pauseBefore(task.everyMs, settings.jitter, first),
    );
    timers.add(timer);
  };
  for (const task of tasks) schedule(task, true);
  return {
    async stop() {
      stopping = true;
      for (const t of timers) clearTimeout(t);
      await Promise.all([...inFlight]);
    },
  };
}

/** The retention setting as the manager takes it: a number of ms, or the text. */
function retentionSetting(text: string): number | string {
  return /^[0-9]+$/.test(text) ? Number(text) : text;
}

/**
 * Lapsed holds, renewals, expiry — in `runAll`'s order (docs/subscriptions.md, "Jobs") — and,
 * with a retention window, the idempotency keys past it (docs/running-for-years.md).
 */
async function jobsRound(m: CreditManager, s: WorkerSettings): Promise<RoundResult> {
  const options = { batchSize: s.batchSize, concurrency: s.concurrency };
  const { job: _h, asOf, ...releaseExpiredHolds } = await m.expiration.releaseExpiredHolds(undefined, options);
  const { job: _r, asOf: _ra, ...renewDueSubscriptions } = await m.expiration.renewDueSubscriptions(asOf, options);
  const { job: _e, asOf: _ea, ...expireDueGrants } = await m.expiration.expireDueGrants(asOf, options);
  let errors = releaseExpiredHolds.errors + renewDueSubscriptions.errors + expireDueGrants.errors;
  const report: Record<string, unknown> = { asOf, releaseExpiredHolds, renewDueSubscriptions, expireDueGrants };
  if (s.idempotencyRetention !== "forever") {
    const {
      job: _k,
      asOf: _ka,
      ...forgetIdempotencyKeys
    } = await m.expiration.forgetIdempotencyKeys(asOf, {
      batchSize: s.batchSize,
    });
    report.forgetIdempotencyKeys = forgetIdempotencyKeys;
  }
  if (s.checkpointEntries !== undefined) {
    // docs/operations.md, "Checkpoints and archival".
    const {
      job: _c,
      asOf: _ca,
      ...checkpointAccounts
    } = await m.expiration.checkpointAccounts({
      everyEntries: s.checkpointEntries,
      ...options,
    });
    errors += checkpointAccounts.errors;
    report.checkpointAccounts = checkpointAccounts;
  }
  // A store partitioned by time (CREDIT_PG_PARTITIONS): the partitions ahead (docs/running-for-years.md).
  const ensured = await m.db.ensurePartitions?.(new Date(asOf));
  if (ensured !== undefined && (ensured.created.length > 0 || ensured.movedFromDefault > 0))
    report.ensurePartitions = ensured;
  return { ok: errors === 0, idle: false, report };
}

/** The expiring-credit reminders of each window (recorded once per grant and window). */
async function remindersRound(m: CreditManager, s: WorkerSettings): Promise<RoundResult> {
  const windows: { days: number; scanned: number; recorded: number }[] = [];
  for (const days of s.reminderDays) {
    windows.push({ days, ...(await m.notifications.sendExpiringReminders({ days, pageSize: s.batchSize })) });
  }
  return { ok: true, idle: false, report: { reminders: windows } };
}

/**
 * Who charges the auto top-ups asked for: the dispatch round (before it delivers each row), the
 * top-ups task (the worker does not deliver), or nobody (no provider can charge a saved method;
 * --top-up-every off).
 */
export function topUpsBy(m: CreditManager, s: WorkerSettings): "dispatch" | "top-ups" | "nobody" {
  if (s.dispatchEveryMs > 0) return "dispatch";
  if (s.topUpEveryMs === 0 || m.payments.chargingProviders().length === 0) return "nobody";
  return "top-ups";
}

/**
 * At start, when the worker cannot charge auto top-ups (no provider can charge a saved card: a
 * dispatch round would fail them, the top-ups task does not run) or will not (the top-ups task off)
 * while some are waiting: one warning naming the fix. Looks at one waiting row
 * (claimed and given back at once, no attempt counted). docs/promos-and-payments.md, "Auto top-up".
 */
export async function warnUnchargedTopUps(m: CreditManager, s: WorkerSettings, logger: Pino): Promise<void> {
  const noProvider = m.payments.chargingProviders().length === 0;
  if (topUpsBy(m, s) !== "nobody" && !noProvider) return;
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

/**
 * Charges the auto top-ups asked for (`auto_top_up_requested`) without delivering the rows
 * (`handlePending`): claimed as the dispatcher claims them, so two workers (or a worker beside a
 * dispatcher) never charge one twice; a failure (time-out, 5xx) is retried with the outbox's backoff.
 */
async function topUpsRound(m: CreditManager, s: WorkerSettings): Promise<RoundResult> {
  const r = await m.notifications.handlePending({ types: ["auto_top_up_requested"], limit: s.dispatchLimit });
  return { ok: r.retried + r.failed === 0, idle: r.claimed === 0, report: { ...r } };
}

/** Delivers due outbox rows to the queue; a delivery that failed (retried later) fails the round. */
async function dispatchRound(m: CreditManager, s: WorkerSettings): Promise<RoundResult> {
  const r = await m.notifications.dispatchPending({ limit: s.dispatchLimit });
  return { ok: r.retried + r.failed === 0, idle: r.claimed === 0, report: { ...r } };
}
