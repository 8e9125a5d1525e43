import type { Cache } from "../core/cache/index.js";
import { warnOnFailure, type Logger } from "../core/logger.js";
import type { CreditManagerOptions } from "../manager.js";
import type { NotificationQueue } from "../core/queue/index.js";
import type { WorkerSettings } from "./worker-settings.js";

/**
 * What the worker's settings give its manager besides the store (docs/operations.md, "Settings"):
 * the notification stream and the cache on Redis, the ledger file, idempotency retention and the
 * notification thresholds. `credit-management worker` and `serve --worker` build their managers
 * from this one function, so both record, deliver and forget the same way.
 */
export interface WorkerResources {
  /** The Redis notification stream (`CREDIT_REDIS_URL`, notifications `deliver`); undefined: none. */
  queue: NotificationQueue | undefined;
  /** Your services' `RedisCache` (`CREDIT_REDIS_CACHE_PREFIX`); undefined: none. */
  cache: Cache | undefined;
  /** The manager's options these settings name (queue and cache not included: see above). */
  options: Pick<CreditManagerOptions, "ledger" | "idempotency" | "notifications">;
  /** Closes what was opened, in reverse order. */
  close(): Promise<void>;
}

/** Opens the Redis connections the settings name (nothing without `CREDIT_REDIS_URL`). */
export async function openWorkerResources(settings: WorkerSettings, logger: Logger): Promise<WorkerResources> {
  const closers: (() => Promise<unknown>)[] = [];
  const close = async () => {
    for (const c of closers.splice(0).reverse()) await c().catch(warnOnFailure(logger, "closing a worker resource"));
  };
  let queue: NotificationQueue | undefined;
  let cache: Cache | undefined;
  try {
    if (settings.redisUrl !== undefined) {
      const redis = await import("../redis/index.js");
      if (settings.notifications === "deliver") {
        const q = await redis.RedisStreamQueue.connect(settings.redisUrl, { stream: settings.redisStream, logger });
        closers.push(() => q.close());
        queue = q;
      }
      if (settings.cachePrefix !== undefined) {
        const c = await redis.RedisCache.connect(settings.redisUrl, { keyPrefix: settings.cachePrefix, logger });
        closers.push(() => c.close());
        cache = c;
      }
    }
  } catch (error) {
    await close();
    throw error;
  }
  return { queue, cache, options: workerManagerOptions(settings), close };
}

/** The ledger file, idempotency retention and notification thresholds of the worker's settings. */
export function workerManagerOptions(settings: WorkerSettings): WorkerResources["options"] {
  return {
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
  };
}

/** The retention setting as the manager takes it: a number of ms, or the text. */
function retentionSetting(text: string): number | string {
  return /^[0-9]+$/.test(text) ? Number(text) : text;
}
