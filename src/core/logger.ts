import * as z from "zod/mini";

/**
 * What the library logs through: the four methods it calls, in pino's shapes — `(obj, msg?)` or
 * `(msg)`. pino and its child loggers fit, so do `console` and winston loggers; nothing of pino's
 * own type (levels, bindings, serializers) is asked for (docs/api.md, "Configuration").
 * @public
 */
export interface Logger {
  /** Logs an error: a record with a message, or a message. */
  error(obj: object, msg?: string): void;
  /** Logs an error: a record with a message, or a message. */
  error(msg: string): void;
  /** Logs a warning: a record with a message, or a message. */
  warn(obj: object, msg?: string): void;
  /** Logs a warning: a record with a message, or a message. */
  warn(msg: string): void;
  /** Logs information: a record with a message, or a message. */
  info(obj: object, msg?: string): void;
  /** Logs information: a record with a message, or a message. */
  info(msg: string): void;
  /** Logs a debugging detail: a record with a message, or a message. */
  debug(obj: object, msg?: string): void;
  /** Logs a debugging detail: a record with a message, or a message. */
  debug(msg: string): void;
}

const nothing = (): void => undefined;

/** The default logger: writes nothing (as `pino({ enabled: false })`), until a `logger` is given. */
export const silentLogger: Logger = Object.freeze({ error: nothing, warn: nothing, info: nothing, debug: nothing });

const METHODS = ["error", "warn", "info", "debug"] as const;

/** Whether `value` has the four methods of `Logger`. */
function isLogger(value: unknown): value is Logger {
  if ((typeof value !== "object" && typeof value !== "function") || value === null) return false;
  const v = value as Record<string, unknown>;
  return METHODS.every((m) => typeof v[m] === "function");
}

/** The `logger` option of the manager and the worker: anything with the four methods of `Logger`. */
export const LoggerOption = z.custom<Logger>(isLogger, {
  error: "logger must have error, warn, info and debug methods (pino, a child logger, console or winston)",
});

/**
 * A `.catch` handler for a best-effort step whose failure must not change the caller's outcome (a
 * ledger note written after the operation is done, a resource closed on the way out): the failure
 * is logged at warn, as "credit-management: <step> failed", instead of being lost.
 */
export function warnOnFailure(logger: Logger | undefined, step: string): (error: unknown) => void {
  return (error) => logger?.warn({ err: error }, `credit-management: ${step} failed`);
}

/** The loggers `noteMemoryStore` has told: each is told once. */
const toldOfMemory = new WeakSet<Logger>();

/**
 * Says once per logger, at info, that a manager made without a store holds everything in memory
 * (docs/storage.md): lost when the process ends. Not said when the memory store is given
 * explicitly (`db: new InMemoryDbManager()`), nor by the default logger, which writes nothing.
 */
export function noteMemoryStore(logger: Logger): void {
  if (toldOfMemory.has(logger)) return;
  toldOfMemory.add(logger);
  logger.info(
    { store: "memory" },
    "credit-management: no store given (db): everything is held in memory and lost when the process ends; pass db: new InMemoryDbManager() to ask for that explicitly",
  );
}
