import { ConflictError, CreditError } from "../../core/errors.js";
import { storageError } from "../../core/db/store/errors.js";
import { backoff, sleep } from "../../core/db/store/retry.js";

/**
 * What `init()` says on a server that cannot run multi-document transactions.
 */
export const STANDALONE_MESSAGE =
  "[credit-management] [mongodb] The server is a standalone mongod: MongoDB transactions need a replica set. " +
  "Use MongoDB Atlas, or start a single-node replica set: run `mongod --replSet rs0` and once " +
  '`mongosh --eval "rs.initiate()"` (Docker: `docker run -d -p 27017:27017 mongo:7 --replSet rs0`, then ' +
  '`docker exec <container> mongosh --eval "rs.initiate()"`), and connect with `?replicaSet=rs0` ' +
  "(or `?directConnection=true`).";

/** Duplicate key: a unique index refused the write. */
export const DUPLICATE_KEY = 11000;
/** Write conflict between transactions (MongoDB labels it TransientTransactionError). */
export const WRITE_CONFLICT = 112;
/**
 * DocumentDB (the engine of Azure Cosmos DB for MongoDB vCore) reports a PostgreSQL error it has no
 * MongoDB code for with the SQLSTATE packed into an integer, six bits a character, as PostgreSQL
 * packs it: a deadlock (40P01) or a serialization failure (40001) between two writers is the write
 * conflict mongod would report as 112.
 */
const sqlstate = (code: string) => [...code].reduce((n, ch, i) => n + (((ch.charCodeAt(0) - 48) & 63) << (6 * i)), 0);
const DOCUMENTDB_CONFLICTS = new Set([sqlstate("40P01"), sqlstate("40001")]);
const NAMESPACE_EXISTS = 48;
const INDEX_OPTIONS_CONFLICT = 85;
const INDEX_KEY_SPECS_CONFLICT = 86;

interface DriverError extends Error {
  code?: number | string;
  codeName?: string;
  errorLabels?: string[];
  hasErrorLabel?(label: string): boolean;
  writeErrors?: { code?: number }[] | { code?: number };
}

/**
 * A driver error (by shape, not `instanceof`: the client may come from another copy of the
 * `mongodb` package than the one this module resolves).
 */
export function isDriverError(error: unknown): error is DriverError {
  return error instanceof Error && error.name.startsWith("Mongo");
}

/** The server error code, looking into bulk write errors too. */
export function errorCode(error: unknown): number | undefined {
  if (!isDriverError(error)) return undefined;
  if (typeof error.code === "number") return error.code;
  const w = error.writeErrors;
  const first = Array.isArray(w) ? w[0] : w;
  return typeof first?.code === "number" ? first.code : undefined;
}

export function hasLabel(error: unknown, label: string): boolean {
  if (!isDriverError(error)) return false;
  if (typeof error.hasErrorLabel === "function") return error.hasErrorLabel(label);
  return Array.isArray(error.errorLabels) && error.errorLabels.includes(label);
}

/**
 * A driver refusal the next attempt of the unit of work can get past: another writer won the race
 * (write conflict, duplicate key, or anything the server labels transient).
 */
export function isRetryableConflict(error: unknown): boolean {
  return isWriteConflict(error) || errorCode(error) === DUPLICATE_KEY || hasLabel(error, "TransientTransactionError");
}

/** A write conflict: mongod's code, or DocumentDB's deadlock or serialization failure. */
export function isWriteConflict(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && (code === WRITE_CONFLICT || DOCUMENTDB_CONFLICTS.has(code));
}

/** Driver errors that mean the server could not be reached or the connection went (not a refusal). */
const UNREACHABLE_NAMES = new Set([
  "MongoNetworkError",
  "MongoNetworkTimeoutError",
  "MongoServerSelectionError",
  "MongoPoolClearedError",
  "MongoTopologyClosedError",
  "MongoNotConnectedError",
  "MongoServerClosedError",
]);
/**
 * Server codes of a node going away or no longer primary: HostUnreachable, HostNotFound,
 * NetworkTimeout, ShutdownInProgress, PrimarySteppedDown, SocketException, NotWritablePrimary,
 * InterruptedAtShutdown, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
 * NotPrimaryOrSecondary.
 */
const UNREACHABLE_CODES = new Set([6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436]);

/**
 * Whether a driver error means the server is unreachable (a network error, no server to select, a
 * node shutting down or stepping down), looking into its `cause`. The driver labels such errors
 * inside a transaction `TransientTransactionError` too, and they are retried as a lost race is
 * (a new attempt may get through); a unit of work that gives up on one reports an outage
 * (`StorageError`), not lost races.
 */
export function isUnreachable(error: unknown): boolean {
  for (let e = error, depth = 0; isDriverError(e) && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    if (UNREACHABLE_NAMES.has(e.name)) return true;
    const code = errorCode(e);
    if (code !== undefined && UNREACHABLE_CODES.has(code)) return true;
  }
  return false;
}

export const isNamespaceExists = (error: unknown): boolean => errorCode(error) === NAMESPACE_EXISTS;

export const isIndexConflict = (error: unknown): boolean => {
  const code = errorCode(error);
  return code === INDEX_OPTIONS_CONFLICT || code === INDEX_KEY_SPECS_CONFLICT;
};

/**
 * The one place driver errors become library errors: our own errors pass through, conflicts
 * become `ConflictError`, every other driver failure a `StorageError`; the original is the
 * `cause`. Anything else (a bug, a `TypeError`) passes through untouched rather than disguised.
 */
export function toCreditError(error: unknown, operation: string): unknown {
  if (error instanceof CreditError || !isDriverError(error)) return error;
  const what = `[credit-management] [mongodb] ${operation}`;
  if (isRetryableConflict(error)) {
    return new ConflictError(`${what}: a concurrent write won (${error.message})`, { operation }, error);
  }
  return storageError("mongodb", operation, error);
}

/** How often `writeOne` sends a write that lost to a conflict, and the pauses between. */
const WRITE_ATTEMPTS = 5;
const WRITE_BACKOFF = { base: 2, factor: 2, max: 50, floor: 0.5 };

/**
 * Runs one single-document write outside a transaction, converting its failure with
 * `toCreditError` (or `duplicate`, for a unique index's refusal, when given). mongod retries a
 * write conflict on one document itself and never reports it; DocumentDB reports the deadlock
 * behind two racing writes (two inserts under one unique index, seen on overlapping `subscribe`
 * calls). A conflict undoes the whole statement, so it is sent again, up to `WRITE_ATTEMPTS` times
 * in all, after a short jittered pause.
 */
export async function writeOne<T>(
  operation: string,
  run: () => Promise<T>,
  duplicate?: (error: unknown) => CreditError,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await run();
    } catch (error) {
      if (duplicate !== undefined && errorCode(error) === DUPLICATE_KEY) throw duplicate(error);
      if (attempt >= WRITE_ATTEMPTS || !isWriteConflict(error)) throw toCreditError(error, operation);
      await sleep(backoff(attempt, WRITE_BACKOFF));
    }
  }
}

/** Runs a driver call, converting its failure with `toCreditError`. */
export async function guard<T>(operation: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw toCreditError(error, operation);
  }
}
