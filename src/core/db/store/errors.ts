import { ConflictError, CreditError, OutcomeUnknownError, StorageError } from "../../errors.js";

/** `[credit-management] [<store>] …`: every store error names its origin. */
export function origin(store: string, message: string): string {
  return `[credit-management] [${store}] ${message}`;
}

/**
 * A driver failure of `store`'s `operation` as a `StorageError` naming the store, the operation and
 * the driver's code, with the original as `cause` (a `StorageError` passes through).
 */
export function storageError(store: string, operation: string, error: unknown): StorageError {
  if (error instanceof StorageError) return error;
  const e = error as { message?: unknown; code?: unknown } | null;
  const code = typeof e?.code === "string" ? ` (${e.code})` : "";
  const message = typeof e?.message === "string" ? e.message : String(error);
  return new StorageError(origin(store, `${operation} failed${code}: ${message}`), error);
}

/** A failure as the library reports it: its own errors pass through, anything else is a `StorageError`. */
export function storeError(store: string, operation: string, error: unknown): CreditError {
  return error instanceof CreditError ? error : storageError(store, operation, error);
}

/**
 * A unit of work on `userId` that met a conflict at each of its `attempts` (`cause`: the last):
 * nothing was written, and the caller may run it again.
 */
export function gaveUp(store: string, userId: string, attempts: number, cause: unknown): ConflictError {
  return new ConflictError(
    origin(store, `gave up on a unit of work on account ${userId} after ${attempts} conflicting attempts`),
    { userId, attempts },
    cause,
  );
}

/**
 * The commit of a unit of work was sent to `store` and the connection failed before the answer
 * (`cause`): it may or may not be applied. The unit-of-work runner looks up what it wrote and
 * answers the real outcome where it can (docs/concepts.md, "Certain and uncertain errors").
 */
export function outcomeUnknown(store: string, cause: unknown): OutcomeUnknownError {
  const e = cause instanceof StorageError && cause.cause !== undefined ? cause.cause : cause;
  const message = typeof (e as { message?: unknown } | null)?.message === "string" ? (e as Error).message : String(e);
  return new OutcomeUnknownError(
    origin(store, `the connection failed after the commit was sent (${message}): the change may or may not be applied`),
    { entryIds: [] },
    cause,
  );
}
