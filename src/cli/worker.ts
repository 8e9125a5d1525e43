import { pino, type DestinationStream, type Logger as Pino } from "pino";
import { handleStopSignals, reopenLedgerOnHup, workerManagerParts } from "../serve/process-signals.js";
import type { DbEnv } from "../from-env.js";
import type { DbManager } from "../core/db/types.js";
import { createCreditManager, type CreditManager } from "../manager.js";
import type { NotificationQueue } from "../core/queue/index.js";
import { storeSettings } from "../serve/settings.js";
import { openCreditStore, storePlace } from "../serve/store.js";
import type { CliIo } from "./run.js";
import { closeQuietly } from "./store.js";
import { openWorkerResources } from "../serve/worker-resources.js";
import { workerOptions, type WorkerSettings } from "../serve/worker-settings.js";
import { createWorker, type CreditWorker } from "../worker/index.js";
import { UsageError } from "../util/usage-error.js";
import { journalKeysOf } from "../serve/journal-keys-env.js";

/**
 * `credit-management worker` (docs/operations.md): settings from the flags and the environment
 * (`workerSettings`), a manager on the store, queue, cache and payments they name, and the rounds
 * of `createWorker` on it — each task on its own interval (with jitter), or each once (`--once`) —
 * until a signal.
 */

/**
 * Runs the worker until SIGTERM/SIGINT (or, with `once`, one round of each task). Resolves to the
 * exit code: 0 stopped cleanly (with `once`: every round succeeded), 1 a round or the start failed.
 */
export async function runWorker(settings: WorkerSettings, io: CliIo, env: DbEnv): Promise<number> {
  const destination: DestinationStream = { write: (line: string) => io.stdout(line) };
  const logger: Pino = pino({ name: "credit-management-worker", level: settings.logLevel }, destination);

  let stopping = false;
  let wake: (() => void) | null = null;
  let manager: CreditManager | undefined;
  let worker: CreditWorker | undefined;
  const closers: (() => Promise<unknown>)[] = [];
  const stopHandlers = handleStopSignals(
    logger,
    "second signal: exiting now; the rounds in flight are cut (their units of work are all there or not at all)",
    (signal) => {
      stopping = true;
      logger.info({ signal }, "stopping: finishing the rounds in flight");
      wake?.();
      void worker?.stop();
    },
  );
  const hupHandler = reopenLedgerOnHup(settings.ledgerFile, logger, () => manager);

  // The store exactly as `serve` resolves it (docs/operations.md): on a machine where `serve` runs
  // on its default SQLite file, the worker works on that file too.
  const store = storeSettings(env as Record<string, string | undefined>);
  let db: DbManager | undefined;
  try {
    try {
      db = await openCreditStore(store);
      // The Redis stream and cache, ledger file, retention and thresholds: the same for `serve --worker`.
      const resources = await openWorkerResources(settings, logger);
      closers.push(() => resources.close());
      let webhooks: { queue: NotificationQueue } | undefined;
      if (settings.webhooks) {
        const { serveWebhooks } = await import("../modules/webhooks/serve.js");
        const w = await serveWebhooks(db, store, env as Record<string, string | undefined>, logger, resources.queue);
        closers.push(() => w.close());
        webhooks = w;
      }
      const journalKeys = journalKeysOf(env as Record<string, string | undefined>);
      manager = await createCreditManager({
        db,
        ...workerManagerParts(resources, webhooks),
        logger,
        // The journal's keys (docs/concepts.md, "A keyed chain"): the worker's entries are signed too.
        ...(journalKeys === undefined ? {} : { journalKeys }),
        // The application's payment settings (docs/operations.md, "Payment settings").
        payments: settings.payments,
      });
    } catch (error) {
      if (error instanceof UsageError) throw error;
      logger.error({ err: error }, "worker could not start");
      // Not the manager's yet: its pool (or client) is closed here.
      // Cleanup on the way out: the command's own result or error is what it reports.
      if (manager === undefined) await db?.close().catch(() => undefined);
      return 1;
    }
    const w = createWorker(manager, workerOptions(settings, logger));
    worker = w;
    logger.info(
      {
        // Which store it works on (docs/operations.md): no secret.
        store: store.kind,
        where: storePlace(store),
        once: settings.once,
        notifications: settings.notifications,
        every: Object.fromEntries(w.tasks.map((t) => [t.name, t.everyMs])),
        jitter: settings.jitter,
        topUps: w.topUpsBy,
      },
      "worker started",
    );

    let ok = true;
    if (settings.once) {
      // A signal stops it after the round in flight (the stop handler above).
      if (!stopping) ok = (await w.runOnce()).ok;
    } else {
      w.start();
      await new Promise<void>((resolve) => {
        wake = resolve;
        if (stopping) resolve();
      });
      await w.stop();
    }
    await manager.close();
    for (const close of closers.splice(0)) await close();
    logger.info({ ok }, "worker stopped");
    return ok ? 0 : 1;
  } finally {
    wake = null;
    await closeQuietly(...closers, () => manager?.close());
    stopHandlers();
    hupHandler();
  }
}
