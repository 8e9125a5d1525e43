import type { Changes } from "../../core/domain/state.js";
import { type ConflictError, LockTimeoutError, StorageError } from "../../core/errors.js";
import { storageError as driverFailure } from "../../core/db/store/errors.js";
import { GUARD_MARKER } from "./sql.js";

/**
 * Errors that leave the connection unusable, so it is closed, not pooled: no SQLSTATE from the
 * server (a socket error such as ECONNRESET, a timeout), or class 08/57.
 */
export function isConnectionLevel(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code !== "string" || /^(08|57)/.test(code) || !/^[0-9A-Z]{5}$/.test(code);
}

/**
 * Whether a driver error means the connection is gone rather than that a statement failed: an
 * error the server did not send (the socket closed or was reset, a client no longer queryable
 * after its connection failed), or a server error of class 08 (connection exception) or 57P01–03
 * (the server is shutting down or starting, the session was terminated).
 */
export function isLostConnection(error: unknown): boolean {
  const e = error as { code?: unknown; severity?: unknown } | null;
  if (typeof e?.severity !== "string") return true;
  return typeof e.code === "string" && /^(08|57P0[123])/.test(e.code);
}

/**
 * Whether a message that commits (a save with its COMMIT, Citus's save call) failed with its
 * outcome unknown: the connection was lost (`isLostConnection`) while it was on its way or running.
 * A connection that was never made (refused, unknown host, the pool's wait for one, a node the
 * coordinator could not reach: 08001), or one node-pg knew was dead before it sent the message
 * ("not queryable"), sent nothing.
 */
export function leavesOutcomeUnknown(error: unknown): boolean {
  const e = error as { code?: unknown; message?: unknown } | null;
  if (e?.code === "08001" || e?.code === "ECONNREFUSED" || e?.code === "ENOTFOUND" || e?.code === "EAI_AGAIN")
    return false;
  const message = typeof e?.message === "string" ? e.message : "";
  if (message.startsWith("timeout exceeded when trying to connect") || message.endsWith("and is not queryable"))
    return false;
  return isLostConnection(error);
}

/**
 * A failure that a new attempt of the transaction may not meet: a serialization failure, a
 * deadlock, a unique key taken by a concurrent first write, or the save statement's guard (an
 * account moved, a row to update is gone).
 */
export function isConflict(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === "40001" || code === "40P01" || code === "23505") return true;
  return code === "22P02" && String((error as Error).message).includes(GUARD_MARKER);
}

/** A unique key taken (SQLSTATE 23505), seen through the `StorageError` that `read` wraps it in. */
export function isUniqueViolation(error: unknown): boolean {
  const e = error instanceof StorageError ? error.cause : error;
  return (e as { code?: unknown } | null)?.code === "23505";
}

/**
 * Awaits `write`; when it would take a unique key another row holds (SQLSTATE 23505), throws
 * `conflict`'s error instead.
 */
export async function unlessTaken<T>(write: Promise<T>, conflict: (cause: unknown) => ConflictError): Promise<T> {
  try {
    return await write;
  } catch (error) {
    if (isUniqueViolation(error)) throw conflict(error);
    throw error;
  }
}

/** A lock wait past `lock_timeout` (55P03): the account is held by a transaction that stays open. */
export function lockTimeout(db: { lockTimeoutMs: number }, what: string, error: unknown): LockTimeoutError {
  return new LockTimeoutError(
    `[credit-management] [postgres] ${what}: the account is locked by another transaction (still open after lockTimeoutMs = ${db.lockTimeoutMs}); nothing was written, the operation may be retried`,
    { operation: what, lockTimeoutMs: db.lockTimeoutMs },
    error,
  );
}

/** Refuses a save of `userId`'s unit of work with a row of another account: a unit writes one account. */
export function checkOneAccount(userId: string, changes: Changes): void {
  const rows: Array<{ userId: string }> = [
    changes.account,
    ...changes.insertGrants,
    ...changes.updateGrants,
    ...changes.insertReservations,
    ...changes.updateReservations,
    ...changes.entries,
    ...(changes.notifications ?? []),
  ];
  // A module's rows that name an account (a `userId`) name this one.
  for (const lists of Object.values(changes.rows ?? {}))
    for (const list of Object.values(lists ?? {}))
      for (const row of list ?? []) {
        const owner = (row as { userId?: unknown } | null)?.userId;
        if (typeof owner === "string") rows.push({ userId: owner });
      }
  if (rows.some((o) => o.userId !== userId))
    throw new Error(`save() of account ${userId} got a row of another account`);
}

/** A driver failure as `StorageError` (`[credit-management] [postgres] <what> failed (<SQLSTATE>): …`). */
export function storageError(what: string, error: unknown): StorageError {
  return driverFailure("postgres", what, error);
}

/**
 * Citus reports some errors of its workers under SQLSTATE XX000 (internal error) with the
 * worker's message, a unique violation above all (an `INSERT … SELECT` it runs through the
 * coordinator): gives such an error its own code back, in place, so that it is handled as on one
 * server (a retry, a conflict). Returns the error.
 */
export function workerCode<T>(error: T): T {
  const e = error as { code?: unknown; message?: unknown } | null;
  if (e?.code === "XX000" && typeof e.message === "string") {
    if (e.message.startsWith("duplicate key value violates unique constraint")) e.code = "23505";
    else if (e.message.startsWith("could not serialize access")) e.code = "40001";
    else if (e.message.startsWith("deadlock detected")) e.code = "40P01";
  }
  return error;
}
