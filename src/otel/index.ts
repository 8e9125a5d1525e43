/**
 * `credit-management/otel`: OpenTelemetry metrics and spans from the library's diagnostics
 * channels (docs/observability.md). Needs `@opentelemetry/api` (an optional peer dependency); the
 * rest of the package never loads it.
 */
import diagnostics_channel from "node:diagnostics_channel";
import {
  SpanKind,
  SpanStatusCode,
  ValueType,
  metrics,
  trace,
  type Attributes,
  type BatchObservableResult,
  type MeterProvider,
  type Span,
  type TracerProvider,
} from "@opentelemetry/api";
import * as z from "zod/mini";
import {
  DIAGNOSTICS_CHANNELS,
  type DispatchMessage,
  type HoldMessage,
  type JobMessage,
  type MeteringMessage,
  type RefusalMessage,
  type UnitOfWorkMessage,
  type WebhookMessage,
} from "../diagnostics.js";
import type { DbManager, StoreStats } from "../core/db/types.js";
import { parseConfig } from "../core/models/parse.js";
import { withTimeout } from "../core/util/promise.js";

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/** Options of `instrumentCreditManagement`, validated like every public input. @public */
const InstrumentOptions = z.strictObject({
  /** Where the metrics go. Default: the global provider (`metrics.setGlobalMeterProvider`). */
  meterProvider: z.optional(
    z.custom<MeterProvider>((v) => isObject(v) && typeof (v as MeterProvider).getMeter === "function", {
      error: "meterProvider must be an OpenTelemetry MeterProvider",
    }),
  ),
  /** Where the spans go. Default: the global provider (`trace.setGlobalTracerProvider`). */
  tracerProvider: z.optional(
    z.custom<TracerProvider>((v) => isObject(v) && typeof (v as TracerProvider).getTracer === "function", {
      error: "tracerProvider must be an OpenTelemetry TracerProvider",
    }),
  ),
  /**
   * The store the gauges read (active holds, held credits, the outbox): a manager (`{ db }`) or a
   * store. Omitted, or a store without `stats()`: no gauges. Read at a collection, at most once
   * every `statsIntervalMs`.
   */
  manager: z.optional(
    z.custom<{ db: DbManager }>((v) => isObject(v) && isObject((v as { db?: unknown }).db), {
      error: "manager must be a CreditManager (or { db })",
    }),
  ),
  /** Longest the gauges reuse one reading of the store, in ms. Default 10,000. */
  statsIntervalMs: z.optional(z.number().check(z.int(), z.minimum(0), z.maximum(3_600_000))),
  /** Longest wait for the store's reading, in ms (the gauges then report nothing). Default 2,000. */
  statsTimeoutMs: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(60_000))),
  /** Record metrics. Default true. */
  metrics: z.optional(z.boolean()),
  /** Record spans. Default true. */
  traces: z.optional(z.boolean()),
});
/** Options of `instrumentCreditManagement`, validated like every public input. @public */
export type InstrumentOptions = z.input<typeof InstrumentOptions>;

/** What `instrumentCreditManagement` returns. @public */
export interface CreditInstrumentation {
  /** Unsubscribes from the channels and removes the gauges' callback. Idempotent. */
  shutdown(): void;
}

/** The instrumentation scope's name (the meter's and the tracer's). @public */
export const INSTRUMENTATION_NAME = "credit-management";

/** Seconds, from milliseconds. */
const s = (ms: number) => ms / 1000;

/** Bucket bounds in seconds: units of work (0.5 ms … 10 s) and jobs and rounds (10 ms … 10 min). */
const FAST = {
  explicitBucketBoundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
};
const SLOW = { explicitBucketBoundaries: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600] };

/**
 * Subscribes to the library's diagnostics channels and records the metric set of
 * docs/observability.md, with a span around every unit of work, job run and dispatch round.
 * Call it once per process (it sees every manager of the process); `shutdown()` undoes it.
 * @public
 */
export function instrumentCreditManagement(options: InstrumentOptions = {}): CreditInstrumentation {
  const o = parseConfig(InstrumentOptions, options, "options", "otel");
  const undo: (() => void)[] = [];
  const tracer =
    o.traces === false ? null : (o.tracerProvider ?? trace.getTracerProvider()).getTracer(INSTRUMENTATION_NAME);
  if (o.metrics !== false) undo.push(...recordMetrics(o.meterProvider ?? metrics.getMeterProvider(), o));
  if (tracer !== null) {
    const spans = new WeakMap<object, Span>();
    const spanned = <M extends object>(
      name: string,
      begin: (m: M) => { name: string; attributes: Attributes },
      end: (m: M, span: Span) => boolean,
    ) => {
      const tc = diagnostics_channel.tracingChannel<unknown, M>(name);
      const handlers = {
        start(m: M) {
          const b = begin(m);
          spans.set(m, tracer.startSpan(b.name, { kind: SpanKind.INTERNAL, attributes: b.attributes }));
        },
        end() {},
        asyncStart() {},
        asyncEnd(m: M) {
          const span = spans.get(m);
          if (span === undefined) return;
          spans.delete(m);
          const failed = end(m, span);
          const error = (m as { error?: unknown }).error;
          if (failed) {
            if (error instanceof Error) span.recordException(error);
            span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : undefined });
          }
          span.end();
        },
        error() {},
      };
      tc.subscribe(handlers);
      undo.push(() => tc.unsubscribe(handlers));
    };
    spanned<UnitOfWorkMessage>(
      DIAGNOSTICS_CHANNELS.unitOfWork,
      (m) => ({
        name: `credit-management ${m.operation}`,
        attributes: {
          "credit_management.operation": m.operation,
          "credit_management.user_id": m.userId,
          "credit_management.store": m.store,
        },
      }),
      (m, span) => {
        span.setAttributes({
          "credit_management.outcome": m.outcome,
          "credit_management.attempts": m.attempts,
          "credit_management.conflicts": m.conflicts,
          "credit_management.entries": m.entries,
        });
        if (m.errorCode !== null) span.setAttribute("credit_management.error_code", m.errorCode);
        return m.outcome === "failed" || m.outcome === "conflict";
      },
    );
    spanned<JobMessage>(
      DIAGNOSTICS_CHANNELS.job,
      (m) => ({
        name: `credit-management job ${m.job}`,
        attributes: { "credit_management.job": m.job, "credit_management.as_of": m.asOf },
      }),
      (m, span) => {
        span.setAttributes({
          "credit_management.scanned": m.scanned,
          "credit_management.changed": m.changed,
          "credit_management.errors": m.errors,
        });
        return m.error !== undefined;
      },
    );
    spanned<DispatchMessage>(
      DIAGNOSTICS_CHANNELS.dispatch,
      (m) => ({ name: "credit-management dispatch", attributes: { "credit_management.limit": m.limit } }),
      (m, span) => {
        span.setAttributes({
          "credit_management.claimed": m.claimed,
          "credit_management.sent": m.sent,
          "credit_management.retried": m.retried,
          "credit_management.failed": m.failed,
          "credit_management.lost": m.lost,
          "credit_management.max_lag_ms": m.maxLagMs,
        });
        return m.error !== undefined;
      },
    );
  }
  let done = false;
  return {
    shutdown() {
      if (done) return;
      done = true;
      for (const u of undo.splice(0)) u();
    },
  };
}

/** The instruments and their subscriptions; returns what undoes them. */
function recordMetrics(provider: MeterProvider, o: z.output<typeof InstrumentOptions>): (() => void)[] {
  const meter = provider.getMeter(INSTRUMENTATION_NAME);
  const undo: (() => void)[] = [];
  /** A counter of whole things (`unit`: UCUM, `{operation}`, …). */
  const counter = (name: string, unit: string, description: string) =>
    meter.createCounter(name, { description, unit, valueType: ValueType.INT });
  /** A histogram of durations in seconds, with its buckets. */
  const seconds = (name: string, advice: typeof FAST, description: string) =>
    meter.createHistogram(name, { description, unit: "s", advice });
  /** A gauge of whole things, read from the store. */
  const gauge = (name: string, unit: string, description: string) =>
    meter.createObservableGauge(name, { description, unit, valueType: ValueType.INT });
  const operations = counter("credit_management.operations", "{operation}", "Units of work, by operation and outcome");
  const duration = seconds("credit_management.operation.duration", FAST, "Duration of units of work");
  const retries = counter(
    "credit_management.store.retries",
    "{retry}",
    "Units of work run again after a write conflict",
  );
  const conflicts = counter(
    "credit_management.store.conflicts",
    "{conflict}",
    "Write conflicts met by units of work (retried, or given up as ConflictError)",
  );
  const refusals = counter(
    "credit_management.refusals",
    "{refusal}",
    "Operations refused for lack of credits (HTTP 402)",
  );
  const holds = counter("credit_management.holds", "{hold}", "Holds placed and ended, by action");
  const jobRuns = counter("credit_management.job.runs", "{run}", "Job runs, by job and outcome");
  const jobDuration = seconds("credit_management.job.duration", SLOW, "Duration of job runs");
  const jobScanned = counter("credit_management.job.scanned", "{row}", "Rows job runs looked at");
  const jobChanged = counter("credit_management.job.changed", "{row}", "Rows job runs changed");
  const jobErrors = counter("credit_management.job.errors", "{error}", "Accounts or subscriptions a job run failed on");
  const dispatched = counter(
    "credit_management.outbox.dispatched",
    "{notification}",
    "Outbox rows handed to the queue, by result",
  );
  const dispatchDuration = seconds("credit_management.outbox.dispatch.duration", SLOW, "Duration of dispatch rounds");
  const lag = seconds("credit_management.outbox.lag", SLOW, "Age of the oldest row a dispatch round claimed");
  const webhooks = counter("credit_management.webhooks", "{webhook}", "Payment webhooks, by provider and outcome");
  const metered = counter("credit_management.metering.calls", "{call}", "Metered calls settled, by outcome and reason");
  const meteredCredits = counter(
    "credit_management.metering.credits",
    "{credit}",
    "Credits of metered calls, charged or released",
  );

  const on = <M>(name: string, fn: (m: M) => void) => {
    const listener = (m: unknown) => fn(m as M);
    diagnostics_channel.subscribe(name, listener);
    undo.push(() => diagnostics_channel.unsubscribe(name, listener));
  };
  const onEnd = <M extends object>(name: string, fn: (m: M) => void) => {
    const tc = diagnostics_channel.tracingChannel<unknown, M>(name);
    // Node takes any of the five handlers; @types/node's type asks for all of them.
    const handlers = { asyncEnd: fn } as diagnostics_channel.TracingChannelSubscribers<M>;
    tc.subscribe(handlers);
    undo.push(() => tc.unsubscribe(handlers));
  };
  onEnd<UnitOfWorkMessage>(DIAGNOSTICS_CHANNELS.unitOfWork, (m) => {
    const attrs = { operation: m.operation, outcome: m.outcome, store: m.store };
    operations.add(1, attrs);
    duration.record(s(m.durationMs), attrs);
    if (m.conflicts === 0 && m.outcome !== "conflict") return;
    const store = { operation: m.operation, store: m.store };
    if (m.conflicts > 0) retries.add(m.conflicts, store);
    const met = m.conflicts + (m.outcome === "conflict" ? 1 : 0);
    if (met > 0) conflicts.add(met, store);
  });
  on<RefusalMessage>(DIAGNOSTICS_CHANNELS.refusal, (m) =>
    refusals.add(1, { operation: m.operation, reason: m.reason }),
  );
  on<HoldMessage>(DIAGNOSTICS_CHANNELS.hold, (m) => holds.add(1, { action: m.action }));
  onEnd<JobMessage>(DIAGNOSTICS_CHANNELS.job, (m) => {
    const job = { job: m.job };
    jobRuns.add(1, { job: m.job, outcome: m.error === undefined ? "ok" : "failed" });
    jobDuration.record(s(m.durationMs), job);
    if (m.scanned > 0) jobScanned.add(m.scanned, job);
    if (m.changed > 0) jobChanged.add(m.changed, job);
    if (m.errors > 0) jobErrors.add(m.errors, job);
  });
  onEnd<DispatchMessage>(DIAGNOSTICS_CHANNELS.dispatch, (m) => {
    for (const result of ["sent", "retried", "failed", "lost"] as const)
      if (m[result] > 0) dispatched.add(m[result], { result });
    dispatchDuration.record(s(m.durationMs));
    if (m.claimed > 0) lag.record(s(m.maxLagMs));
  });
  on<WebhookMessage>(DIAGNOSTICS_CHANNELS.webhook, (m) =>
    webhooks.add(1, { provider: m.provider, outcome: m.outcome }),
  );
  on<MeteringMessage>(DIAGNOSTICS_CHANNELS.metering, (m) => {
    metered.add(1, { outcome: m.outcome, reason: m.reason ?? "none" });
    if (m.charged > 0) meteredCredits.add(m.charged, { kind: "charged" });
    if (m.released > 0) meteredCredits.add(m.released, { kind: "released" });
  });

  const db = o.manager?.db;
  if (db !== undefined && typeof db.stats === "function") {
    const read = storeReader(db, o.statsIntervalMs ?? 10_000, o.statsTimeoutMs ?? 2000);
    const activeHolds = gauge("credit_management.holds.active", "{hold}", "Active holds (store)");
    const held = gauge("credit_management.holds.credits", "{credit}", "Credits earmarked by active holds (store)");
    const pending = gauge(
      "credit_management.outbox.pending",
      "{notification}",
      "Outbox rows waiting for delivery (store)",
    );
    const failed = gauge("credit_management.outbox.failed", "{notification}", "Outbox rows failed for good (store)");
    const oldest = meter.createObservableGauge("credit_management.outbox.oldest_age", {
      description: "Age of the oldest pending outbox row (store)",
      unit: "s",
    });
    const callback = async (result: BatchObservableResult) => {
      const stats = await read();
      if (stats === null) return;
      result.observe(activeHolds, stats.activeHolds);
      result.observe(held, stats.heldCredits);
      result.observe(pending, stats.outboxPending);
      result.observe(failed, stats.outboxFailed);
      result.observe(
        oldest,
        stats.oldestPendingAt === null ? 0 : Math.max(Date.now() - stats.oldestPendingAt.getTime(), 0) / 1000,
      );
    };
    const observables = [activeHolds, held, pending, failed, oldest];
    meter.addBatchObservableCallback(callback, observables);
    undo.push(() => meter.removeBatchObservableCallback(callback, observables));
  }
  return undo;
}

/** `db.stats()`, reused for `intervalMs`, within `timeoutMs`; null when it failed (nothing is observed). */
function storeReader(db: DbManager, intervalMs: number, timeoutMs: number): () => Promise<StoreStats | null> {
  let last: { at: number; stats: Promise<StoreStats | null> } | null = null;
  return () => {
    const now = Date.now();
    if (last !== null && now - last.at < intervalMs) return last.stats;
    // A store that fails to answer reports nothing this collection (null), as a slow one does.
    const reading = Promise.resolve().then(() => (db.stats as NonNullable<DbManager["stats"]>).call(db));
    const stats = withTimeout(reading, timeoutMs, () => new Error("timed out"), { unref: true }).catch(() => null);
    last = { at: now, stats };
    return stats;
  };
}
