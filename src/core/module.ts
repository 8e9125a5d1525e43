import * as z from "zod/mini";
import { ConfigurationError, ModuleError, ValidationError } from "./errors.js";
import type { DbManager, DbTransaction } from "./db/types.js";
import type { ModuleStorePart } from "./db/module-part.js";
import type { LedgerLogger } from "./ledger/index.js";
import type { Logger } from "./logger.js";
import { CORE_GRANT_SOURCES, GrantSource, Account } from "./models/entities.js";
import { CORE_NOTIFICATION_TYPES, DomainEventType, NotificationType } from "./models/notifications.js";
import type { AuditCheck } from "./services/audit-check.js";
import { newNotification } from "./domain/notifications.js";
import type { UnitContext, UnitHook } from "./services/unit-of-work.js";
import type { EntryMeta, UnitWork } from "./domain/unit-work.js";
import type { FeatureRule } from "./domain/checks.js";
import type { Thresholds } from "./domain/notifications.js";
import type { Reservation } from "./models/entities.js";
import type { CommitOptions, DeductOptions, ReleaseOptions, ReserveOptions } from "./models/inputs.js";
import type { Notification } from "./models/notifications.js";
import type { JournalEntry } from "./models/records.js";
import type { CreditErrorCode } from "./errors.js";

/*
 * The seam a module plugs into the core through (docs/modules.md, "Writing a module"), in the style
 * of better-auth's plugins: a module declares what it adds (error codes, notification and event
 * types, grant sources, its column on the account, its unit-of-work hook, its audit check, its store
 * part) and the core's own types list none of it. The package's modules (billing, metering, leases,
 * revenue, …) are written against this type, as a module outside the package is.
 */

/**
 * A module's own state on the account (the billing module's auto top-up, say), kept in a column of
 * the account row under `name` and validated with the module's `schema`. Read it with `get` and set
 * it on a unit of work's copy of the account (`changes.account` in a `unitHook`) with `set`; the core
 * copies it from load to save, validates what a module writes to it (docs/modules.md, "What a module
 * may change") and reads none of it. Build one with `accountColumn`.
 * @beta
 */
export interface AccountColumn<T> {
  /** The column's name on the account (unique among a manager's modules; no core field). */
  readonly name: string;
  /** The zod schema every value of the column passes, written or read. */
  readonly schema: z.core.$ZodType<T>;
  /**
   * The column's value on `account`, as its schema parses it; null when the account has none. A
   * stored value the schema refuses is a `ModuleError` naming the module that declares the column.
   */
  get(account: Account): T | null;
  /**
   * Sets the column on a unit of work's own copy of the account (never on a stored one). The core
   * validates the value with the schema before it saves it (a `ModuleError` when it is refused).
   */
  set(account: Account, value: T | null): void;
}

/** The core's own fields of the account, which no module column may take. */
const ACCOUNT_FIELDS: ReadonlySet<string> = new Set(Object.keys(Account.shape));

/** Whether `key` is one of the core's own fields of the account (a `unitHook` may change none). @internal */
export const isCoreAccountField = (key: string): boolean => ACCOUNT_FIELDS.has(key);

/** The module that declared each column, as the registry found it (named in a stored value's error). */
const columnOwners = new WeakMap<AccountColumn<unknown>, string>();

/**
 * `value` of `column` (of module `module`) if its schema accepts it, else a `ModuleError` naming the
 * module, the column and the account: `what` says where the value came from ("stored", "written").
 * @internal
 */
export function checkColumnValue<T>(
  module: string,
  column: AccountColumn<T>,
  userId: string,
  value: unknown,
  what: "stored" | "written",
): T | null {
  if (value === undefined || value === null) return null;
  const parsed = z.safeParse(column.schema, value);
  if (parsed.success) return parsed.data;
  const issues = parsed.error.issues.map((i) => ({ path: i.path.map(String).join("."), message: i.message }));
  const first = issues[0];
  const why = first === undefined ? "" : `: ${first.path === "" ? "" : `${first.path}: `}${first.message}`;
  throw new ModuleError(
    module,
    what === "stored"
      ? `[credit-management] module "${module}": account ${userId}'s column "${column.name}" holds a value its schema refuses${why}; this module's features on the account fail until the column is set again`
      : `[credit-management] module "${module}": the value written to account ${userId}'s column "${column.name}" is refused by its schema${why}; nothing was written`,
    { column: column.name, userId, columnValue: what, issues },
  );
}

/**
 * A typed column of a module on the account (see `AccountColumn`), its values validated with
 * `schema` (from `zod` or `zod/mini`). `name` is a camelCase identifier; a core field's name is a
 * `ConfigurationError`.
 * @beta
 */
export function accountColumn<T>(name: string, schema: z.core.$ZodType<T>): AccountColumn<T> {
  if (!/^[a-z][A-Za-z0-9]{0,62}$/.test(name) || ACCOUNT_FIELDS.has(name))
    throw new ConfigurationError(`[credit-management] accountColumn: "${name}" is no free camelCase column name`);
  if (typeof schema !== "object" || schema === null || !("_zod" in schema))
    throw new ConfigurationError(`[credit-management] accountColumn "${name}": its schema must be a zod schema`);
  const column: AccountColumn<T> = {
    name,
    schema,
    get: (account) =>
      checkColumnValue(
        columnOwners.get(column as AccountColumn<unknown>) ?? `(the module of column ${name})`,
        column,
        account.userId,
        Reflect.get(account, name),
        "stored",
      ),
    set: (account, value) => {
      Reflect.set(account, name, value);
    },
  };
  return column;
}

/**
 * An outbox row of one of a module's notification or event types (`notificationTypes`,
 * `eventTypes`) for `userId`, pending from `now`: what a module's `unitHook` returns to record it
 * with the unit of work (docs/modules.md, "Writing a module"). `dedupeKey`: rows of one key are
 * delivered once.
 * @beta
 */
export function moduleNotification(
  userId: string,
  type: string,
  payload: Record<string, unknown>,
  now: Date,
  dedupeKey: string | null = null,
): Notification {
  return newNotification(userId, type, payload, now, dedupeKey);
}

/**
 * What the core hands a module's `init` (docs/modules.md, "Writing a module"): the manager's store,
 * ledger file, clock, logger and options, and the core's operations below its public methods — holds,
 * commits and deductions of input already validated, a charge capped at the overdraft limit, and a
 * unit of work of the module's own on an account. The package's own modules (metering, leases, the
 * customer's state) reach the core through this and nothing else.
 *
 * The operations take input already validated, in the shapes `credit-management/models` names
 * (`ReserveOptions`, `CommitOptions`, `ReleaseOptions`, `DeductOptions`): they validate none of it
 * again (metering parses a call's options once, when it opens). A module validates what it is
 * given, with its own model, before it calls them. Each is a function of its own: it may be called
 * detached.
 * @beta
 */
export interface ModuleContext {
  /** The manager's store. */
  readonly db: DbManager;
  /** The ledger file, when there is one. */
  readonly ledger: LedgerLogger | undefined;
  /** The manager's clock. */
  readonly clock: () => Date;
  /**
   * True when `clock` is the real clock (no `clock` option): a module that needs the time in ms
   * only may read `Date.now()` then, with no `Date` made (leases do, per charge).
   */
  readonly realClock: boolean;
  /** The manager's logger, when there is one. */
  readonly logger: Logger | undefined;
  /** What the manager's modules registered, with the core's own. */
  readonly registry: ModuleRegistry;
  /** The default unit's overdraft limit in credits (the `overdraftLimit` option, default 0); null: unlimited. */
  readonly overdraftLimit: number | null;
  /** The `features` rules, validated (docs/trial-and-checks.md; a feature's unit: docs/units.md). */
  readonly features: Readonly<Record<string, FeatureRule>>;
  /** The alert thresholds whose events the manager records (docs/notifications.md, "Alerts"); undefined: none. */
  readonly alerts: Thresholds | undefined;
  /**
   * The unit a call acts in (docs/units.md, "Features in a unit"): the one `feature`'s rule names,
   * else `unit`; undefined: the default unit. Naming a unit other than the feature's is a
   * `ValidationError`.
   */
  unitOf(feature: string | undefined, unit: string | undefined): string | undefined;
  /**
   * `reserveCredits` of validated input: resolves to the stored hold (read it, never change it), or
   * with `callerCopy` to a copy of the caller's own.
   */
  hold(userId: string, amount: number, options: ReserveOptions, callerCopy?: boolean): Promise<Reservation>;
  /**
   * `commitReservedCredits` of `userId`'s hold `reservationId` (no owner lookup), of validated input.
   * `upToLimit` (usage already delivered): past the overdraft limit it commits what the limit
   * allows instead of refusing; a clamped entry records its `shortfall` and its metadata adds `requested`.
   */
  commitHold(userId: string, reservationId: string, options: CommitOptions, upToLimit?: boolean): Promise<JournalEntry>;
  /** `releaseReservedCredits` of `userId`'s hold `reservationId` (no owner lookup), of validated input. */
  releaseHold(userId: string, reservationId: string, options: ReleaseOptions): Promise<JournalEntry>;
  /**
   * `deductCredits` of validated input; `allowDebt`: `deductCreditsAfterService` (into debt within
   * the overdraft limit).
   */
  deduct(userId: string, amount: number, options: DeductOptions, allowDebt?: boolean): Promise<JournalEntry>;
  /**
   * An after-service deduction of `amount`, or of what the overdraft limit allows when that is less
   * (usage already delivered), decided inside the unit of work; a clamped entry records its
   * `shortfall` and its metadata adds `requested`; when the limit allows nothing, an entry of 0 credits whose
   * `shortfall` is the whole amount (a request served leaves its entry, docs/metering.md). A
   * repeated key answers with the first entry. Its options are validated.
   */
  chargeUpToLimit(userId: string, amount: number, options: DeductOptions): Promise<JournalEntry>;
  /**
   * One unit of work of the module's own on `userId`'s account, run as the core runs its operations:
   * load (by `meta.idempotencyKey`, whose repeat is answered by `replay`), settle what time has done,
   * run `body` (which may run again when the store retries), save in one transaction with the rows
   * `unit.attach`es, then the ledger file and the cache. `meta`: the fields of the entries it
   * records. `body`'s `UnitWork` applies the core's rules unless the module declared the capability
   * to pass one (`CreditModule.capabilities`): an operation that asks for an undeclared one is a
   * `ModuleError`, and nothing is written. `options.operation`: its name in diagnostics (docs/observability.md; default
   * `unitOfWork`); `settle: false` leaves expiries for `body`; `periods: false` brings no due
   * subscription period first.
   */
  runUnitOfWork<T>(
    userId: string,
    meta: EntryMeta,
    body: (work: UnitWork, tx: DbTransaction, unit: UnitContext) => Promise<T> | T,
    replay?: (entry: JournalEntry, tx: DbTransaction) => Promise<T>,
    options?: { operation?: string; settle?: boolean; periods?: boolean },
  ): Promise<T>;
  /**
   * Changes the module's column (`accountColumn`) on `userId`'s account, and nothing else of it, in
   * a unit of work of its own, guarded as every unit of work is (docs/concepts.md, "The unit of
   * work"): `change` gets the column's value as stored (null: none) and the unit's time, and
   * returns the new value with the outbox rows to record with it (`moduleNotification`), or null to
   * write nothing. It may run again when the store retries. No journal entry is recorded: a column
   * moves no credits. Resolves to the column's value after. A new account is made with it.
   *
   * `column` must be the one the module declared (another is a `ModuleError` naming the module and
   * the column, and nothing is written); the new value is validated with its schema (a
   * `ModuleError`, nothing written). A stored value the schema refuses reaches `change` as null,
   * with the `ModuleError` that says so as `malformed`: `change` may replace it; null then
   * rejects with that error.
   */
  changeColumn<T>(
    userId: string,
    column: AccountColumn<T>,
    change: (
      value: T | null,
      now: Date,
      malformed?: ModuleError,
    ) => { value: T | null; notifications?: readonly Notification[] } | null,
  ): Promise<T | null>;
}

/** A capability a module may declare (`CreditModule.capabilities`). @internal */
export type ModuleCapability = NonNullable<CreditModule["capabilities"]>[number];

/** The capabilities a module may declare. */
const CAPABILITIES: ReadonlySet<string> = new Set<ModuleCapability>(["overdraftLimit", "spendLimits", "takeBack"]);

/**
 * A module of a credit manager (docs/modules.md, "Writing a module"): what it adds to the core.
 * Every field but `id` is optional. A module is a plain object; a module with options is a function
 * that returns one (`referrals({ bonus: 10 })`), one per manager.
 * @beta
 */
export interface CreditModule<Column = unknown> {
  /** The module's id: lower-case letters, digits and `-`, unique among a manager's modules. */
  readonly id: string;
  /** The codes of the module's errors (each a `CreditError` it throws; UPPER_SNAKE). */
  readonly errorCodes?: readonly string[];
  /** The notification types the module records in the outbox (lower_snake). */
  readonly notificationTypes?: readonly string[];
  /** The domain event types the module records (lower_snake; docs/events.md). */
  readonly eventTypes?: readonly string[];
  /** The grant sources the module adds credits with (lower_snake). */
  readonly grantSources?: readonly string[];
  /**
   * The module's column on the account (`accountColumn`): the only part of the account it may
   * change (`ModuleContext.changeColumn`, `AccountColumn.set` in its `unitHook`).
   */
  readonly accountColumn?: AccountColumn<Column>;
  /**
   * What the module may do in its units of work (`ModuleContext.runUnitOfWork`) beyond the rules
   * every public method applies (docs/modules.md, "Capabilities"); default none. `overdraftLimit`:
   * a deduction or commit with an overdraft limit looser than the manager's; `spendLimits`: a
   * deduction that skips the spend limits (`limits: "skip"`) or counts them without refusing
   * (`limits: "force"` without `allowDebt`); `takeBack`: entries that take credits back for a
   * refund or a lost dispute (`EntryMeta.takeBack`). An operation of `UnitWork` that asks for one
   * the module did not declare is a `ModuleError`, and nothing is written. The billing module
   * declares `overdraftLimit` and `takeBack` (a refund takes back credits already spent, into debt).
   */
  readonly capabilities?: readonly ("overdraftLimit" | "spendLimits" | "takeBack")[];
  /** Work the module does inside every unit of work that writes (its outbox rows, its column). */
  readonly unitHook?: UnitHook;
  /** The module's check of an account in `audit()`, after the journal's replay. */
  readonly auditCheck?: AuditCheck;
  /**
   * The module's store part: its tables and rows, a side per kind of store (docs/writing-a-store.md,
   * "A module's part"). The credit service binds it to its store (`DbManager.usePart`).
   */
  readonly store?: ModuleStorePart;
  /** Called once by the credit service the module is given to, with the core's context. */
  init?(ctx: ModuleContext): void;
}

/**
 * What a manager's modules registered, with the core's own values: the error codes, notification
 * and event types and grant sources it accepts. Built by the credit service from its modules.
 * @beta
 */
export interface ModuleRegistry {
  /** The manager's modules, in the order given. */
  readonly modules: readonly CreditModule[];
  /** Every error code: the core's and the modules'. */
  readonly errorCodes: ReadonlySet<string>;
  /** Every notification type: the core's and the modules'. */
  readonly notificationTypes: ReadonlySet<string>;
  /** Every event type the modules declare. */
  readonly eventTypes: ReadonlySet<string>;
  /** Every grant source: the core's and the modules'. */
  readonly grantSources: ReadonlySet<string>;
  /** A `ValidationError` (at `path`) unless `source` is the core's or a module's grant source. */
  checkGrantSource(source: string, path?: string): void;
  /** A `ValidationError` (at `path`) unless `type` is the core's or a module's notification type. */
  checkNotificationType(type: string, path?: string): void;
}

const CORE_ERROR_CODES: readonly CreditErrorCode[] = [
  "VALIDATION_ERROR",
  "RULE_VIOLATION",
  "INSUFFICIENT_CREDITS",
  "SPEND_LIMIT_EXCEEDED",
  "NOT_FOUND",
  "RESERVATION_NOT_ACTIVE",
  "RESERVATION_EXPIRED",
  "IDEMPOTENCY_CONFLICT",
  "CONFLICT",
  "CONFIGURATION_ERROR",
  "STORAGE_ERROR",
  "OUTCOME_UNKNOWN",
  "MODULE_ERROR",
];

const MODULE_ID = /^[a-z][a-z0-9-]{0,63}$/;
const ERROR_CODE = /^[A-Z][A-Z0-9_]{0,63}$/;

/** A `ConfigurationError` naming the module and what is wrong with it. */
const badModule = (id: string, what: string) => new ConfigurationError(`[credit-management] module "${id}": ${what}`);

/** Adds `values` of module `id` to `into`, each of `shape`, none taken already. */
function register(
  id: string,
  field: string,
  values: readonly string[] | undefined,
  into: Set<string>,
  shape: (v: string) => boolean,
) {
  for (const v of values ?? []) {
    if (typeof v !== "string" || !shape(v)) throw badModule(id, `${field} has a malformed value ${JSON.stringify(v)}`);
    if (into.has(v)) throw badModule(id, `${field} "${v}" is registered already`);
    into.add(v);
  }
}

/**
 * The registry of `modules` (see `ModuleRegistry`): a `ConfigurationError` for a module without a
 * proper id, two modules of one id, a malformed value, a value the core or another module has, or
 * two modules of one account column.
 * @beta
 */
export function moduleRegistry(modules: readonly CreditModule[] = []): ModuleRegistry {
  const errorCodes = new Set<string>(CORE_ERROR_CODES);
  const notificationTypes = new Set<string>(CORE_NOTIFICATION_TYPES);
  const eventTypes = new Set<string>(DomainEventType.options);
  const grantSources = new Set<string>(CORE_GRANT_SOURCES);
  const ids = new Set<string>();
  const columns = new Set<string>();
  for (const m of modules) {
    const id = typeof m?.id === "string" ? m.id : String(m?.id);
    if (!MODULE_ID.test(id)) throw badModule(id, "id must be lower-case letters, digits and -");
    if (ids.has(id)) throw badModule(id, "two modules have this id");
    ids.add(id);
    register(id, "errorCodes", m.errorCodes, errorCodes, (v) => ERROR_CODE.test(v));
    register(
      id,
      "notificationTypes",
      m.notificationTypes,
      notificationTypes,
      (v) => NotificationType.safeParse(v).success,
    );
    register(id, "eventTypes", m.eventTypes, eventTypes, (v) => NotificationType.safeParse(v).success);
    // A module's domain events are notification types too (they are outbox rows).
    for (const t of m.eventTypes ?? []) notificationTypes.add(t);
    register(id, "grantSources", m.grantSources, grantSources, (v) => GrantSource.safeParse(v).success);
    if (m.accountColumn !== undefined) {
      if (columns.has(m.accountColumn.name)) throw badModule(id, `account column "${m.accountColumn.name}" is taken`);
      if (!("_zod" in Object(m.accountColumn.schema)))
        throw badModule(id, `account column "${m.accountColumn.name}" has no schema (accountColumn(name, schema))`);
      columns.add(m.accountColumn.name);
      columnOwners.set(m.accountColumn as AccountColumn<unknown>, id);
    }
    for (const c of m.capabilities ?? [])
      if (!CAPABILITIES.has(c)) throw badModule(id, `capabilities has an unknown value ${JSON.stringify(c)}`);
  }
  const check = (set: ReadonlySet<string>, what: string, value: string, path: string) => {
    if (set.has(value)) return;
    const message = `${path}: "${value}" is no ${what} of the core nor of a module of this manager (docs/modules.md)`;
    throw new ValidationError(`Invalid ${message}`, [{ path, message: `unknown ${what} "${value}"` }]);
  };
  return {
    modules,
    errorCodes,
    notificationTypes,
    eventTypes,
    grantSources,
    checkGrantSource: (source, path = "options.source") => check(grantSources, "grant source", source, path),
    checkNotificationType: (type, path = "type") => check(notificationTypes, "notification type", type, path),
  };
}

/** The `ConfigurationError` of a module's service asked for before the module's `init` ran. @internal */
/**
 * @internal Marks a module of this package (`credit-management`'s own, reviewed and tested with the
 * core): its `unitHook` runs without the hook guard's before-and-after comparison
 * (src/core/services/hook-guard.ts), which costs every unit of work a copy of its changes. A module
 * written outside the package is always guarded.
 */
export const PACKAGE_MODULE: unique symbol = Symbol("credit-management.package-module");

/** @internal `m`, marked as a module of this package (`PACKAGE_MODULE`). */
export function packageModule<T extends object>(m: T): T {
  Object.defineProperty(m, PACKAGE_MODULE, { value: true });
  return m;
}

/** @internal True for a module of this package (`PACKAGE_MODULE`). */
export const isPackageModule = (m: object): boolean => (m as { [PACKAGE_MODULE]?: unknown })[PACKAGE_MODULE] === true;

export const notInitialised = (id: string) =>
  new ConfigurationError(`[credit-management] module "${id}" is not initialised: give it to a CreditService first`);
