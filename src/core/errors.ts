/**
 * Typed errors. Every error the library throws on purpose is a `CreditError` with a stable
 * UPPER_SNAKE `code` and the HTTP `status` it maps to. Messages say what was asked and what
 * was available for the caller's own account, never anything about another user.
 * @public
 */

/**
 * The codes of the core's own errors. A module adds its codes through its `CreditModule`'s
 * `errorCodes` (docs/modules.md, "Writing a module"); the package's root entry's `CreditErrorCode`
 * is this union with the codes of every module the package brings (exported there as `CoreErrorCode`).
 * @public
 */
export type CreditErrorCode =
  | "VALIDATION_ERROR"
  | "RULE_VIOLATION"
  | "INSUFFICIENT_CREDITS"
  | "SPEND_LIMIT_EXCEEDED"
  | "NOT_FOUND"
  | "RESERVATION_NOT_ACTIVE"
  | "RESERVATION_EXPIRED"
  | "IDEMPOTENCY_CONFLICT"
  | "CONFLICT"
  | "CONFIGURATION_ERROR"
  | "STORAGE_ERROR"
  | "OUTCOME_UNKNOWN"
  | "MODULE_ERROR";

/** Base class of every error the library throws on purpose. @public */
export class CreditError<Code extends string = CreditErrorCode> extends Error {
  /** Stable machine-readable code (the core's, or one a module declares in its `errorCodes`). */
  readonly code: Code;
  /** HTTP status this error maps to. */
  readonly status: number;
  /** Structured, caller-safe details (field issues, amounts asked and available, …). */
  readonly details: Record<string, unknown> | undefined;

  /** An error with `code`, `message` and what the caller needs to act on it. */
  constructor(
    code: Code,
    status: number,
    message: string,
    options?: { details?: Record<string, unknown>; cause?: unknown },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.details = options?.details;
  }

  /** The error as JSON: its name, code, message and details. */
  toJSON(): { code: Code; message: string; details?: Record<string, unknown> } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

/** One field-level problem of a rejected input. @public */
export interface ValidationIssue {
  /** Dotted path of the field ("" for the whole value). */
  path: string;
  /** What is wrong with the value. */
  message: string;
}

/** Input did not match its zod model. Nothing was changed. @public */
export class ValidationError extends CreditError {
  /** Each problem of the input, with its path. */
  readonly issues: ValidationIssue[];
  /** An error for an input its schema refused. */
  constructor(message: string, issues: ValidationIssue[] = [], cause?: unknown) {
    super("VALIDATION_ERROR", 400, message, { details: { issues }, cause });
    this.issues = issues;
  }
}

/**
 * The input is well-formed but a rule refuses it (an `expiresAt` that is not in the future, an
 * `asOf` in the future). HTTP 422. Nothing was changed.
 * @public
 */
export class RuleViolationError extends CreditError {
  /** Each rule the input broke. */
  readonly issues: ValidationIssue[];
  /** An error for a valid input that a rule refuses. */
  constructor(message: string, issues: ValidationIssue[] = []) {
    super("RULE_VIOLATION", 422, message, { details: { issues } });
    this.issues = issues;
  }
}

/**
 * Usage recorded with an `occurredAt` outside what the manager accepts (docs/usage.md, "Late
 * usage"): earlier than its late-usage window (`lateUsageWindowDays`, default 35) before now, or
 * later than now. A `RuleViolationError` (code `RULE_VIOLATION`, HTTP 422) whose issue is at
 * `occurredAt`; `earliest` is the oldest instant accepted when it was refused. Nothing was changed.
 * @public
 */
export class LateUsageError extends RuleViolationError {
  /** An error for usage dated before the account's late-usage window. */
  constructor(
    message: string,
    /** The `occurredAt` refused. */
    readonly occurredAt: Date,
    /** The earliest `occurredAt` accepted at the time of the refusal. */
    readonly earliest: Date,
  ) {
    super(message, [{ path: "occurredAt", message }]);
  }
}

/** The account does not have the credits an operation needs. Nothing was changed. @public */
export class InsufficientCreditsError extends CreditError {
  /** An error for credits asked for beyond those available. */
  constructor(message: string, details: { requested: number; available: number; [k: string]: unknown }) {
    super("INSUFFICIENT_CREDITS", 402, message, { details });
  }
}

/**
 * A spend would pass a spend limit that applies to it (docs/teams-and-limits.md). `details.limit`
 * is the limit (spender, feature, amount, period), `details.used` and `details.remaining` what its
 * window has counted and has left, `details.resetsAt` (ISO) when the window ends. HTTP 429.
 * Nothing was changed.
 * @public
 */
export class SpendLimitError extends CreditError {
  /** An error for a spend beyond a spend limit. */
  constructor(
    message: string,
    details: {
      requested: number;
      limit: Record<string, unknown>;
      used: number;
      remaining: number;
      resetsAt: string;
      [k: string]: unknown;
    },
  ) {
    super("SPEND_LIMIT_EXCEEDED", 429, message, { details });
  }
}

/** A user, grant, hold, plan, subscription or payment that does not exist (or is another user's). @public */
export class NotFoundError extends CreditError {
  /** An error for something that does not exist. */
  constructor(message: string, details?: Record<string, unknown>) {
    super("NOT_FOUND", 404, message, details === undefined ? undefined : { details });
  }
}

/** The reservation was already committed or released. @public */
export class ReservationNotActiveError extends CreditError {
  /** An error for a hold that was already committed, released or expired. */
  constructor(reservationId: string, status: string) {
    super("RESERVATION_NOT_ACTIVE", 409, `Reservation ${reservationId} is not active (it is ${status}).`, {
      details: { reservationId, status },
    });
  }
}

/** The reservation passed its TTL before it was committed; its credits were released. @public */
export class ReservationExpiredError extends CreditError {
  /** An error for a hold past its time to live. */
  constructor(reservationId: string, expiresAt: Date) {
    super("RESERVATION_EXPIRED", 410, `Reservation ${reservationId} expired at ${expiresAt.toISOString()}.`, {
      details: { reservationId, expiresAt: expiresAt.toISOString() },
    });
  }
}

/** An idempotency key was reused with different arguments. @public */
export class IdempotencyConflictError extends CreditError {
  /** An error for a key reused with other arguments. */
  constructor(idempotencyKey: string) {
    super(
      "IDEMPOTENCY_CONFLICT",
      409,
      `Idempotency key "${idempotencyKey}" was already used with different arguments.`,
      { details: { idempotencyKey } },
    );
  }
}

/** A concurrent write won; the operation may be retried. Adapters retry these themselves first. @public */
export class ConflictError extends CreditError {
  /** An error for a write that lost to a concurrent one more times than it retries. */
  constructor(message: string, details?: Record<string, unknown>, cause?: unknown) {
    super("CONFLICT", 409, message, { details, cause });
  }
}

/**
 * The account's lock was not granted in time: another transaction holds it and stayed open longer
 * than the store's bounded wait (PostgreSQL `lockTimeoutMs`; an application's own transaction
 * holding the account, docs/transactions.md). Nothing was written; the operation (or the
 * application's transaction) may be retried. A `ConflictError` (code `CONFLICT`, HTTP 409).
 * @public
 */
export class LockTimeoutError extends ConflictError {}

/** The library or a backend is set up wrongly (missing option, standalone MongoDB, …). @public */
export class ConfigurationError extends CreditError {
  /** An error for options or a store that cannot work together. */
  constructor(message: string, cause?: unknown) {
    super("CONFIGURATION_ERROR", 500, message, { cause });
  }
}

/**
 * A module of the manager (docs/modules.md, "What a module may change") asked for what it did not
 * declare — another module's column, a capability such as a looser overdraft limit — or changed
 * what the core owns in its `unitHook`, or wrote a value its column's schema refuses; or its column
 * on an account holds a stored value its schema refuses. `module` names the module (and `details`
 * the column, capability or field). Nothing was changed. HTTP 500, code `MODULE_ERROR`.
 * @public
 */
export class ModuleError extends CreditError {
  /** The module's id. */
  readonly module: string;
  /** An error of module `module`; `details` say what (its column, the capability, the core's field). */
  constructor(module: string, message: string, details: Record<string, unknown> = {}, cause?: unknown) {
    super("MODULE_ERROR", 500, message, { details: { module, ...details }, cause });
    this.module = module;
  }
}

/** The store failed in a way that is not a conflict (connection lost, …). @public */
export class StorageError extends CreditError {
  /** An error from the store (a driver error, wrapped, as its `cause`). */
  constructor(message: string, cause?: unknown) {
    super("STORAGE_ERROR", 503, message, { cause });
  }
}

/** What an `OutcomeUnknownError` knows of the change whose outcome it could not learn. @public */
export interface OutcomeUnknownDetails {
  /** The account the change was for, when known. */
  userId?: string;
  /** The ids of the journal entries the change would have written (none known: empty). */
  entryIds: readonly string[];
  /** The call's idempotency key, if it had one. */
  idempotencyKey?: string;
}

/**
 * The store was sent the commit of a change and the answer never came (the connection died after
 * COMMIT, or `commitTransaction`, was sent), and the store did not answer again in time to learn
 * what happened: the change may or may not be applied (docs/concepts.md, "Certain and uncertain
 * errors"). Retry under the same idempotency key: it applies the change once or answers its first
 * result. Without a key, look the first of `entryIds` up in the account's journal
 * (`getCreditHistory`) before doing the call again. HTTP 503, code `OUTCOME_UNKNOWN`.
 * @public
 */
export class OutcomeUnknownError extends CreditError {
  /** The account of the operation. */
  readonly userId: string | undefined;
  /** The journal entries the operation would have written: look them up to learn whether it happened. */
  readonly entryIds: readonly string[];
  /** The operation's idempotency key: a retry with it answers the first result. */
  readonly idempotencyKey: string | undefined;
  /** An error for an operation whose commit was sent and whose answer was lost. */
  constructor(message: string, details: OutcomeUnknownDetails, cause?: unknown) {
    super("OUTCOME_UNKNOWN", 503, message, {
      details: {
        ...(details.userId === undefined ? {} : { userId: details.userId }),
        entryIds: [...details.entryIds],
        ...(details.idempotencyKey === undefined ? {} : { idempotencyKey: details.idempotencyKey }),
      },
      cause,
    });
    this.userId = details.userId;
    this.entryIds = details.entryIds;
    this.idempotencyKey = details.idempotencyKey;
  }
}

/** Whether `error` is a `CreditError` (the core's or a module's). @public */
export function isCreditError(error: unknown): error is CreditError<string> {
  return error instanceof CreditError;
}
