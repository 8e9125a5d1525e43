import diagnostics_channel from "node:diagnostics_channel";

/**
 * The core's instrumentation on `node:diagnostics_channel` (docs/observability.md): its channels'
 * names, message shapes and channels. The package's full list, the modules' channels with these,
 * is `DIAGNOSTICS_CHANNELS` (src/diagnostics.ts).
 */

/** The core's channel names. */
export const CORE_CHANNELS = {
  unitOfWork: "credit-management:unit-of-work",
  refusal: "credit-management:refusal",
  hold: "credit-management:hold",
  job: "credit-management:job",
  dispatch: "credit-management:dispatch",
} as const;

/** How a unit of work ended. @public */
export type UnitOutcome =
  /** Committed (or changed nothing and needed no write). */
  | "ok"
  /** A repeated idempotency key: answered with the first result, nothing written. */
  | "replayed"
  /** `InsufficientCreditsError` (402). */
  | "refused"
  /** Another `CreditError` below 500: validation, not found, not active, expired, idempotency conflict. */
  | "rejected"
  /** A write conflict that survived the store's retries (`ConflictError`). */
  | "conflict"
  /** The store failed, or an unexpected error. */
  | "failed";

/**
 * The context object of the `unit-of-work` tracing channel. `start` sees the first three fields;
 * by `asyncEnd` (and `error`) the rest are set. Node adds `result` or `error`.
 * @public
 */
export interface UnitOfWorkMessage {
  /** The public method, or the service step (`claimPromo`, `subscriptionPeriod`, `settle`, …). */
  operation: string;
  /** The account of the unit of work. */
  userId: string;
  /** The store's `name` (`memory`, `postgres`, `mongodb`, …). */
  store: string;
  /** How the unit of work ended. */
  outcome: UnitOutcome;
  /** Wall time from start to end, in milliseconds. */
  durationMs: number;
  /** Times the store ran the unit of work (1 unless it met write conflicts). */
  attempts: number;
  /** Write conflicts met and retried: `attempts - 1`. */
  conflicts: number;
  /** Journal entries committed. */
  entries: number;
  /** The `CreditError` code when it failed with one. */
  errorCode: string | null;
  /** What the method resolved to, once it did. */
  result?: unknown;
  /** What the method threw, if it failed. */
  error?: unknown;
}

/** One refusal for lack of credits. @public */
export interface RefusalMessage {
  /** The public method refused. */
  operation: string;
  /** The account. */
  userId: string;
  /** `insufficient_credits`: `available` was short; `overdraft_limit`: usage beyond the overdraft limit. */
  reason: "insufficient_credits" | "overdraft_limit";
  /** Credits asked for. */
  requested: number;
  /** Credits the account had for it. */
  available: number;
}

/** A hold's change, published after its unit of work committed. @public */
export interface HoldMessage {
  /** What happened to the hold. */
  action: "reserved" | "committed" | "released" | "expired";
  /** The hold's account. */
  userId: string;
  /** The hold. */
  reservationId: string;
  /** The credits the hold earmarked. */
  amount: number;
  /** Credits captured (the commit's amount; 0 unless `committed`). */
  committed: number;
  /** The account's `reserved` after the change. */
  reservedAfter: number;
}

/** The context object of the `job` tracing channel. `start` sees `job` and `asOf`. @public */
export interface JobMessage {
  /** The job. */
  job:
    | "expireDueGrants"
    | "releaseExpiredHolds"
    | "renewDueSubscriptions"
    | "sendExpiringReminders"
    | "purgeNotifications"
    | "forgetIdempotencyKeys"
    | "checkpointAccounts";
  /** The instant the job works to (ISO). */
  asOf: string;
  /** Rows looked at (grants, holds, subscriptions, notifications). */
  scanned: number;
  /** Rows changed (grants expired, holds released, subscriptions advanced, reminders recorded, rows purged). */
  changed: number;
  /** Accounts or subscriptions that failed (left for the next run). */
  errors: number;
  /** Wall time of the job, in milliseconds. */
  durationMs: number;
  /** The job's report, once it ended. */
  result?: unknown;
  /** What the job threw, if it failed. */
  error?: unknown;
}

/** The context object of the `dispatch` tracing channel (one `dispatchPending` call). @public */
export interface DispatchMessage {
  /** The most rows the round may claim. */
  limit: number;
  /** Rows claimed. */
  claimed: number;
  /** Rows delivered. */
  sent: number;
  /** Rows that failed and will be retried. */
  retried: number;
  /** Rows given up on. */
  failed: number;
  /** Rows whose claim another dispatcher took over before this one marked them. */
  lost: number;
  /** Age of the oldest row claimed (now − its `createdAt`), in ms; 0 when none was claimed. */
  maxLagMs: number;
  /** Wall time of the round, in milliseconds. */
  durationMs: number;
  /** The round's report, once it ended. */
  result?: unknown;
  /** What the round threw, if it failed. */
  error?: unknown;
}

const tracing = diagnostics_channel.tracingChannel;

/** @internal */
export const unitOfWorkChannel = tracing<unknown, UnitOfWorkMessage & object>(CORE_CHANNELS.unitOfWork);
/** @internal */
export const jobChannel = tracing<unknown, JobMessage & object>(CORE_CHANNELS.job);
/** @internal */
export const dispatchChannel = tracing<unknown, DispatchMessage & object>(CORE_CHANNELS.dispatch);
/** @internal */
export const refusalChannel = diagnostics_channel.channel(CORE_CHANNELS.refusal);
/** @internal */
export const holdChannel = diagnostics_channel.channel(CORE_CHANNELS.hold);

type AnyTracing = typeof unitOfWorkChannel | typeof jobChannel | typeof dispatchChannel;

/**
 * @internal Whether anyone listens to a tracing channel. (`TracingChannel.hasSubscribers` is
 * Node ≥ 20.13; its five channels are read instead, as it does.)
 */
export function traced(tc: AnyTracing): boolean {
  return (
    tc.start.hasSubscribers ||
    tc.end.hasSubscribers ||
    tc.asyncStart.hasSubscribers ||
    tc.asyncEnd.hasSubscribers ||
    tc.error.hasSubscribers
  );
}

/**
 * @internal Runs `fn` traced on `tc` with `message` as context, as `TracingChannel.tracePromise`
 * does (start through `runStores`, end, then asyncStart and asyncEnd, error before them), after
 * `finish` filled in the message's closing fields — with one promise reaction instead of two.
 */
export function tracePromise<T, M extends object>(
  tc: diagnostics_channel.TracingChannel<unknown, M>,
  message: M,
  fn: () => Promise<T>,
  finish: (message: M, value: T | undefined, error: unknown) => void,
): Promise<T> {
  const m = message as M & { result?: unknown; error?: unknown };
  const settled = (failure: unknown) => {
    if (failure !== undefined) tc.error.publish(m);
    tc.asyncStart.publish(m);
    tc.asyncEnd.publish(m);
  };
  return tc.start.runStores(m, () => {
    let running: Promise<T>;
    try {
      running = fn();
    } catch (error) {
      finish(m, undefined, error);
      m.error = error;
      tc.error.publish(m);
      tc.end.publish(m);
      throw error;
    }
    tc.end.publish(m);
    return running.then(
      (value) => {
        finish(m, value, undefined);
        m.result = value;
        settled(undefined);
        return value;
      },
      (error: unknown) => {
        finish(m, undefined, error);
        m.error = error;
        settled(error);
        throw error;
      },
    );
  });
}

/**
 * @internal Runs one job run traced on the job channel (nothing but a check while nobody listens);
 * `counts` reads scanned, changed and errors from its report.
 */
export function traceJob<R>(
  job: JobMessage["job"],
  asOf: Date,
  run: () => Promise<R>,
  counts: (report: R) => [number, number, number],
): Promise<R> {
  if (!traced(jobChannel)) return run();
  const started = performance.now();
  const message: JobMessage = { job, asOf: asOf.toISOString(), scanned: 0, changed: 0, errors: 0, durationMs: 0 };
  return tracePromise(jobChannel, message, run, (m, report) => {
    m.durationMs = performance.now() - started;
    if (report !== undefined) [m.scanned, m.changed, m.errors] = counts(report);
  });
}
