import type { Logger } from "../core/logger.js";
import type { CreditManager, CreditManagerOptions } from "../manager.js";
import type { NotificationQueue } from "../core/queue/index.js";
import { releaseStopSignals } from "./signals.js";
import type { WorkerResources } from "./worker-resources.js";

/**
 * What `serve` (with or without --worker) and `credit-management worker` do alike around their
 * run: the stop signals, SIGHUP for the ledger file, and the manager options of the worker's
 * settings and the webhook queue (docs/service.md, docs/operations.md).
 */

/**
 * Installs the SIGTERM/SIGINT handlers: the first signal calls `onStop`; a second one logs
 * `secondSignalMessage` and exits at once (128 + the signal's number). A signal the bin held while
 * the modules loaded (signals.ts) is handled as if it had just arrived, so the command stops once
 * it has started. Returns a function that removes the handlers.
 */
export function handleStopSignals(
  logger: Logger,
  secondSignalMessage: string,
  onStop: (signal: NodeJS.Signals) => void,
): () => void {
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (signalled) {
      logger.error({ signal }, secondSignalMessage);
      process.exit(128 + (signal === "SIGINT" ? 2 : 15));
    }
    signalled = true;
    onStop(signal);
  };
  const onTerm = () => onSignal("SIGTERM");
  const onInt = () => onSignal("SIGINT");
  process.on("SIGTERM", onTerm);
  process.on("SIGINT", onInt);
  // In the same turn as installing the handlers above, so no signal is missed.
  const early = releaseStopSignals();
  if (early !== null) onSignal(early);
  return () => {
    process.off("SIGTERM", onTerm);
    process.off("SIGINT", onInt);
  };
}

/**
 * With a ledger file, SIGHUP reopens it (log rotation) on the manager `manager()` returns, once
 * there is one. Returns a function that removes the handler.
 */
export function reopenLedgerOnHup(
  ledgerFile: string | undefined,
  logger: Logger,
  manager: () => CreditManager | undefined,
): () => void {
  const onHup = () => {
    void manager()
      ?.ledger.reopen()
      .then(
        () => logger.info({ ledgerFile }, "ledger file reopened"),
        (error: unknown) => logger.error({ err: error }, "ledger file could not be reopened"),
      );
  };
  if (ledgerFile !== undefined) process.on("SIGHUP", onHup);
  return () => process.off("SIGHUP", onHup);
}

/**
 * The manager options of the worker's settings (its Redis stream and cache, ledger file,
 * idempotency retention and thresholds) and of the webhooks: their queue, which delivers to the
 * worker's stream too, and every event, the journal's too (docs/events.md).
 */
export function workerManagerParts(
  resources: WorkerResources | undefined,
  webhooks: { queue: NotificationQueue } | undefined,
): Partial<CreditManagerOptions> {
  return {
    ...(resources === undefined ? {} : { queue: resources.queue, cache: resources.cache, ...resources.options }),
    ...(webhooks === undefined ? {} : { queue: webhooks.queue, domainEvents: true }),
  };
}
