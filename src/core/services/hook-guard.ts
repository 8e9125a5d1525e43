import type { Changes } from "../db/types.js";
import type { ModuleRows } from "../domain/state.js";
import { ModuleError } from "../errors.js";
import type { Logger } from "../logger.js";
import { checkColumnValue, isCoreAccountField, type AccountColumn } from "../module.js";
import type { Account, Notification } from "../models/index.js";
import type { UnitHook } from "./unit-of-work.js";

/*
 * A module's `unitHook`, run inside a unit of work's save (docs/modules.md, "What a module may
 * change"): it adds outbox rows, attaches its rows and may set its module's own column on
 * `changes.account`, validated with the column's schema. Everything else of the changes is the
 * core's — the account's fields (balance, debt, seq, …), its grants, holds and journal entries — and
 * another module's column is that module's: a hook that changes any of it is a `ModuleError` naming
 * the module and what it changed, thrown before the save, so nothing is written. The check compares
 * each field and each listed row's own fields before and after the hook (shallowly: what they
 * point at is the core's, written by it alone).
 */

/** A unit hook with the module it belongs to. @internal */
export interface RegisteredHook {
  readonly hook: UnitHook;
  /** The module's id; undefined for a hook of the `unitHooks` option (which changes no column). */
  readonly module: string | undefined;
  /** The module's column, the one part of the account the hook may set. */
  readonly column: AccountColumn<unknown> | undefined;
  /**
   * False for a module of this package (`PACKAGE_MODULE`, src/core/module.ts): its hook runs
   * unchecked, as the core's own code does, since the comparison costs every unit of work a copy of
   * its changes. A module written outside the package is always checked.
   */
  readonly guarded: boolean;
}

/** The changes' top-level fields, the account's and each listed row's, as they were before a hook. */
interface Before {
  readonly top: Readonly<Record<string, unknown>>;
  readonly account: Readonly<Record<string, unknown>>;
  readonly lists: ReadonlyMap<string, readonly Readonly<Record<string, unknown>>[]>;
}

/** The fields of `Changes` a hook changes itself: its outbox rows (returned) and module rows (`attach`). */
const HOOK_FIELDS: ReadonlySet<string> = new Set(["notifications", "rows"]);

function snapshot(changes: Changes): Before {
  const top: Record<string, unknown> = { ...changes };
  const lists = new Map<string, Record<string, unknown>[]>();
  for (const [key, value] of Object.entries(top))
    if (!HOOK_FIELDS.has(key) && Array.isArray(value))
      lists.set(
        key,
        value.map((row: unknown) => ({ ...(row as Record<string, unknown>) })),
      );
  return { top, account: { ...changes.account }, lists };
}

/**
 * Runs `registered`'s hook on `unit`, and resolves to its outbox rows; a `ModuleError` when it
 * changed what is not its own (see above) or wrote a value its column's schema refuses. A hook that
 * finds a stored column value its schema refuses (a `ModuleError` of a stored value) is that
 * module's feature failing on the account, not the unit of work: what it did is undone, the error is
 * logged, and the unit goes on without it.
 */
export function runUnitHook(
  registered: RegisteredHook,
  unit: { loaded: Account | null; now: Date; changes: Changes; attach(rows: ModuleRows): void },
  logger: Logger | undefined,
): readonly Notification[] {
  const { changes } = unit;
  if (!registered.guarded) return runTrusted(registered, unit, logger);
  const before = snapshot(changes);
  let rows: readonly Notification[];
  try {
    rows = registered.hook(unit);
  } catch (error) {
    if (!(error instanceof ModuleError) || error.details?.["columnValue"] !== "stored") throw error;
    changes.rows = before.top["rows"] as ModuleRows | undefined;
    changes.notifications = before.top["notifications"] as readonly Notification[] | undefined;
    const own = registered.column?.name;
    if (own !== undefined) Reflect.set(changes.account, own, before.account[own]);
    logger?.warn(
      { err: error, module: error.module, userId: changes.account.userId },
      "credit-management: a module's column holds a value its schema refuses; its unit hook is skipped on this account",
    );
    rows = [];
  }
  check(registered, changes, before);
  return rows;
}

/**
 * A hook of this package's own module: run as is; a stored column value its schema refuses skips
 * the hook on this account (logged), as for a guarded one, undoing only its own column.
 */
function runTrusted(
  registered: RegisteredHook,
  unit: { loaded: Account | null; now: Date; changes: Changes; attach(rows: ModuleRows): void },
  logger: Logger | undefined,
): readonly Notification[] {
  const { changes } = unit;
  const own = registered.column?.name;
  const rowsBefore = changes.rows;
  const notificationsBefore = changes.notifications;
  const columnBefore = own === undefined ? undefined : (changes.account as unknown as Record<string, unknown>)[own];
  try {
    return registered.hook(unit);
  } catch (error) {
    if (!(error instanceof ModuleError) || error.details?.["columnValue"] !== "stored") throw error;
    changes.rows = rowsBefore;
    changes.notifications = notificationsBefore;
    if (own !== undefined) Reflect.set(changes.account, own, columnBefore);
    logger?.warn(
      { err: error, module: error.module, userId: changes.account.userId },
      "credit-management: a module's column holds a value its schema refuses; its unit hook is skipped on this account",
    );
    return [];
  }
}

/** A `ModuleError` when the hook changed what is not its own; its column's new value validated. */
function check(registered: RegisteredHook, changes: Changes, before: Before): void {
  const module = registered.module ?? "(a unitHooks option)";
  const refuse = (what: string, field: string): never => {
    throw new ModuleError(
      module,
      `[credit-management] module "${module}": its unitHook changed ${what}, which is not its own to change (docs/modules.md, "What a module may change"); nothing was saved`,
      { field },
    );
  };
  const top = changes as unknown as Record<string, unknown>;
  for (const key of new Set([...Object.keys(before.top), ...Object.keys(top)]))
    if (!HOOK_FIELDS.has(key) && !Object.is(top[key], before.top[key])) refuse(`the unit's ${key}`, key);
  for (const [key, rows] of before.lists) {
    const now = top[key] as readonly Record<string, unknown>[];
    if (now.length !== rows.length) refuse(`the unit's ${key}`, key);
    for (let i = 0; i < rows.length; i++) {
      const was = rows[i] as Record<string, unknown>;
      const is = now[i] as Record<string, unknown>;
      for (const field of new Set([...Object.keys(was), ...Object.keys(is)]))
        if (!Object.is(was[field], is[field])) refuse(`${field} of the unit's ${key}`, `${key}.${field}`);
    }
  }
  const account = changes.account as unknown as Record<string, unknown>;
  const own = registered.column;
  let ownChanged = false;
  for (const key of new Set([...Object.keys(before.account), ...Object.keys(account)])) {
    if (Object.is(account[key], before.account[key])) continue;
    if (key === own?.name) ownChanged = true;
    else if (isCoreAccountField(key)) refuse(`the account's ${key}`, `account.${key}`);
    else refuse(`the account's column "${key}" (another module's)`, `account.${key}`);
  }
  if (own !== undefined && ownChanged)
    own.set(changes.account, checkColumnValue(module, own, changes.account.userId, account[own.name], "written"));
}
