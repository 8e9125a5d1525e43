import * as z from "zod/mini";
import type { Cache } from "./core/cache/index.js";
import type { DbManager, StoreStats } from "./core/db/types.js";
import type { LedgerLogger } from "./core/ledger/index.js";
import { parse } from "./core/models/index.js";
import type { NotificationQueue } from "./core/queue/index.js";
import { SCHEMA_VERSION } from "./schema/sql.js";
import { withTimeout } from "./core/util/promise.js";

/** `ok`: working; `degraded`: serving, but something needs attention; `down`: cannot serve. @public */
export type HealthStatus = "ok" | "degraded" | "down";

/** One part's check. @public */
export interface HealthCheck {
  /** `up`, `degraded` or `down`. */
  status: HealthStatus;
  /** How long the check took, in ms (a timed-out check: the time-out). */
  latencyMs: number;
  /** Why it is not `ok`. */
  error?: string;
}

/** What `manager.health()` answers (docs/observability.md). @public */
export interface HealthReport {
  /** `down` when the store is; else `degraded` when any part is; else `ok`. */
  status: HealthStatus;
  /** When the checks ran (ISO). */
  checkedAt: string;
  /** `down` when it does not answer in time; `degraded` when its schema is not this release's. */
  store: HealthCheck & {
    name: string;
    /** The store's schema version; null for a store without one (memory, MongoDB). */
    schemaVersion: number | null;
    /** The version this release works with. */
    expectedSchemaVersion: number;
  };
  /** A failing cache degrades (reads go to the store); null without a cache. */
  cache: HealthCheck | null;
  /** The notification queue; null with notifications off. Unchecked (`ok`) when it has no `ping`. */
  queue: (HealthCheck & { checked: boolean }) | null;
  /** The JSONL mirror: `degraded` once a file error was counted; null without a file. */
  ledger:
    | (HealthCheck & {
        /** Lines collected but not yet handed to the file's writer. */
        backlog: number;
        fileErrors: number;
        lastFileError: string | null;
      })
    | null;
  /**
   * The outbox: `degraded` when its oldest pending row is older than `maxOutboxAgeMs`. Counts are
   * null when the store has no `stats()`.
   */
  outbox: HealthCheck & {
    pending: number | null;
    failed: number | null;
    /** Age of the oldest pending row, in ms (null: none pending, or unknown). */
    oldestPendingAgeMs: number | null;
  };
}

/** Options of `manager.health()`. @public */
export const HealthOptions = z.strictObject({
  /** Longest wait for each check, in ms: a store that does not answer by then is `down`. Default 2,000. */
  timeoutMs: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(60_000))),
  /** An outbox whose oldest pending row is older than this (ms) is `degraded`. Default 300,000. */
  maxOutboxAgeMs: z.optional(z.number().check(z.int(), z.minimum(1))),
});
/** Options of `manager.health()`. @public */
export type HealthOptions = z.input<typeof HealthOptions>;

/** What `health()` looks at. @internal */
export interface HealthDeps {
  db: DbManager;
  cache: Cache | undefined;
  queue: NotificationQueue | undefined;
  ledger: LedgerLogger;
  clock: () => Date;
}

/** The key the cache check reads (never written). */
const CACHE_PROBE = "credit-management:health";
/** The account the fallback store check reads (ids are user ids: this one is never created). */
const STORE_PROBE = "credit-management:health";

/** Runs `check` within `ms`: its value and latency, or the error's message. */
async function timed<T>(
  ms: number,
  check: () => Promise<T>,
): Promise<{ value?: T; error?: string; latencyMs: number }> {
  const started = performance.now();
  try {
    const timedOut = () => new Error(`timed out after ${ms} ms`);
    // The timer never keeps the process alive.
    const value = await withTimeout(Promise.resolve().then(check), ms, timedOut, { unref: true });
    return { value, latencyMs: Math.round(performance.now() - started) };
  } catch (error) {
    return {
      error: error instanceof Error ? error.message : String(error),
      latencyMs: Math.round(performance.now() - started),
    };
  }
}

/**
 * Checks every part at once, each within `timeoutMs`, so a hung store answers `down` in time
 * instead of hanging the probe. Never throws for a failing part: that is what it reports.
 * @internal
 */
export async function checkHealth(deps: HealthDeps, options: HealthOptions = {}): Promise<HealthReport> {
  const o = parse(HealthOptions, options, "options");
  const ms = o.timeoutMs ?? 2000;
  const maxAge = o.maxOutboxAgeMs ?? 300_000;
  const { db, cache, queue, ledger } = deps;
  const ping =
    db.ping === undefined
      ? async () => (await db.getAccount(STORE_PROBE), { schemaVersion: null })
      : () => (db.ping as NonNullable<DbManager["ping"]>).call(db);
  const stats = db.stats === undefined ? undefined : () => (db.stats as NonNullable<DbManager["stats"]>).call(db);
  const [s, st, c, q] = await Promise.all([
    timed(ms, ping),
    stats === undefined ? Promise.resolve(undefined) : timed<StoreStats>(ms, stats),
    cache === undefined ? Promise.resolve(undefined) : timed(ms, () => Promise.resolve(cache.get(CACHE_PROBE))),
    queue?.ping === undefined
      ? Promise.resolve(undefined)
      : timed(ms, () => (queue.ping as NonNullable<NotificationQueue["ping"]>).call(queue)),
  ]);
  const version = s.value?.schemaVersion ?? null;
  const store: HealthReport["store"] = {
    status: s.error !== undefined ? "down" : version !== null && version !== SCHEMA_VERSION ? "degraded" : "ok",
    latencyMs: s.latencyMs,
    name: db.name,
    schemaVersion: version,
    expectedSchemaVersion: SCHEMA_VERSION,
  };
  if (s.error !== undefined) store.error = s.error;
  else if (store.status === "degraded")
    store.error = `the store's schema is version ${version}, this release works with ${SCHEMA_VERSION}`;

  const now = deps.clock().getTime();
  const outbox: HealthReport["outbox"] = {
    status: "ok",
    latencyMs: st?.latencyMs ?? 0,
    pending: null,
    failed: null,
    oldestPendingAgeMs: null,
  };
  if (st?.value !== undefined) {
    const oldest = st.value.oldestPendingAt;
    outbox.pending = st.value.outboxPending;
    outbox.failed = st.value.outboxFailed;
    outbox.oldestPendingAgeMs = oldest === null ? null : Math.max(now - oldest.getTime(), 0);
    if (outbox.oldestPendingAgeMs !== null && outbox.oldestPendingAgeMs > maxAge) {
      outbox.status = "degraded";
      outbox.error = `the oldest pending notification is ${Math.round(outbox.oldestPendingAgeMs / 1000)} s old (more than ${Math.round(maxAge / 1000)} s): is a dispatcher running?`;
    }
  } else if (st?.error !== undefined) {
    outbox.status = "degraded";
    outbox.error = st.error;
  }

  const part = (r: { error?: string; latencyMs: number } | undefined): HealthCheck | null =>
    r === undefined
      ? null
      : r.error === undefined
        ? { status: "ok", latencyMs: r.latencyMs }
        : { status: "degraded", latencyMs: r.latencyMs, error: r.error };
  const cacheCheck = part(c);
  const queueCheck: HealthReport["queue"] =
    queue === undefined
      ? null
      : q === undefined
        ? { status: "ok", latencyMs: 0, checked: false }
        : { ...(part(q) as HealthCheck), checked: true };

  let ledgerCheck: HealthReport["ledger"] = null;
  if (ledger.filePath !== null) {
    const stats = ledger.stats;
    ledgerCheck = {
      status: stats.fileErrors > 0 ? "degraded" : "ok",
      latencyMs: 0,
      backlog: ledger.backlog,
      fileErrors: stats.fileErrors,
      lastFileError: stats.lastFileError,
    };
    if (stats.lastFileError !== null) ledgerCheck.error = stats.lastFileError;
  }

  const parts = [store, cacheCheck, queueCheck, ledgerCheck, outbox];
  const status: HealthStatus =
    store.status === "down" ? "down" : parts.some((p) => p !== null && p.status !== "ok") ? "degraded" : "ok";
  return {
    status,
    checkedAt: new Date(now).toISOString(),
    store,
    cache: cacheCheck,
    queue: queueCheck,
    ledger: ledgerCheck,
    outbox,
  };
}
