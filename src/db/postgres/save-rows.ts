import type { Changes } from "../../core/domain/state.js";
import type { ModuleParts, ModuleRowLists } from "../../core/db/module-part.js";
import type { PostgresBoundPart, PostgresModuleSave } from "./module-part.js";
import { type Column, snakeCase } from "../../schema/columns.js";
import type { SqlTable } from "../../schema/sql.js";
import type { SaveItem } from "./chain.js";
import { type PostgresSql, type SaveArg, type SaveStatement, arrayText, toRow } from "./sql.js";

/**
 * @internal The statement that writes every queued change of `txs` and its arguments, and the
 * statements of the modules' parts that have rows to save (`PostgresBoundPart.save`: the batch's
 * save; a host transaction's unit, ./host.ts).
 */
export function saveParts(
  sql: PostgresSql,
  txs: ReadonlyArray<Pick<SaveItem, "userId" | "pendingChanges" | "originals"> & { readonly xmin?: string | null }>,
  modules: ModuleParts<PostgresBoundPart>,
): { save: SaveStatement; saveArgs: Array<string | null>; extra: PostgresModuleSave[] } {
  const { tables } = sql;
  const updates = txs.filter((tx) => tx.pendingChanges.previousSeq !== null);
  const accountColumns =
    updates.length === 0
      ? null
      : changedColumns(
          tables.accounts,
          updates.map((tx) => [tx.pendingChanges.account, tx.originals.account] as const),
        );
  const grantUpdates = txs.flatMap((tx) =>
    tx.pendingChanges.updateGrants.map((g) => [g, tx.originals.grants.get(g.id)] as const),
  );
  const holdUpdates = txs.flatMap((tx) =>
    tx.pendingChanges.updateReservations.map((r) => [r, tx.originals.holds.get(r.id)] as const),
  );
  const grantColumns = grantUpdates.length === 0 ? null : changedColumns(tables.grants, grantUpdates);
  const reservationColumns = holdUpdates.length === 0 ? null : changedColumns(tables.reservations, holdUpdates);
  const args: Partial<Record<SaveArg, string>> = {};
  const json = (rows: readonly unknown[]) => JSON.stringify(rows);
  if (accountColumns !== null) {
    args.a = json(
      updates.map((tx) => {
        const row = pick(tables.accounts, ["user_id", ...accountColumns], tx.pendingChanges.account);
        row.prev = tx.pendingChanges.previousSeq;
        if (tx.xmin != null) row.xmin = tx.xmin;
        return row;
      }),
    );
    args.ak = arrayText(updates.map((tx) => tx.userId));
    args.xk = arrayText(updates.filter((tx) => tx.xmin != null).map((tx) => tx.userId));
  }
  const all = <T>(get: (c: Changes) => readonly T[]) => txs.flatMap((tx) => get(tx.pendingChanges));
  const inserts = txs.filter((tx) => tx.pendingChanges.previousSeq === null).map((tx) => tx.pendingChanges.account);
  if (inserts.length > 0) args.ai = json(inserts.map((a) => toRow(tables.accounts.columns, a, "drop")));
  const newGrants = all((c) => c.insertGrants);
  if (newGrants.length > 0) args.ig = json(newGrants.map((g) => toRow(tables.grants.columns, g, "drop")));
  if (grantColumns !== null) {
    args.ug = json(grantUpdates.map(([g]) => pick(tables.grants, ["id", "user_id", ...grantColumns], g)));
    args.ugk = arrayText(grantUpdates.map(([g]) => g.id));
  }
  const newHolds = all((c) => c.insertReservations);
  if (newHolds.length > 0) args.ir = json(newHolds.map((r) => toRow(tables.reservations.columns, r, "drop")));
  if (reservationColumns !== null) {
    args.ur = json(holdUpdates.map(([r]) => pick(tables.reservations, ["id", "user_id", ...reservationColumns], r)));
    args.urk = arrayText(holdUpdates.map(([r]) => r.id));
  }
  const entries = all((c) => c.entries);
  if (entries.length > 0) args.e = json(entries.map((e) => toRow(tables.journal.columns, e, "drop")));
  const notifications = all((c) => c.notifications ?? []);
  if (notifications.length > 0) args.n = json(notifications.map((n) => toRow(tables.notifications.columns, n, "drop")));
  const save = sql.save({
    accountColumns,
    insertAccounts: inserts.length > 0,
    insertGrants: newGrants.length > 0,
    grantColumns,
    insertReservations: newHolds.length > 0,
    reservationColumns,
    entries: entries.length > 0,
    ...(notifications.length > 0 ? { notifications: true } : {}),
    ...(sql.distributed
      ? {
          rows: {
            ai: inserts.length,
            ig: newGrants.length,
            ir: newHolds.length,
            e: entries.length,
            n: notifications.length,
          },
        }
      : {}),
  });
  if (sql.distributed) args.uk = arrayText([...new Set(txs.map((tx) => tx.userId))]);
  const saveArgs = save.args.map((name) => args[name] ?? null);
  // The modules' rows (./module-part.ts): each module's guarded statement, same message.
  const extra: PostgresModuleSave[] = [];
  if (modules.any && txs.some((tx) => tx.pendingChanges.rows !== undefined)) {
    for (const { module, part } of modules.bound) {
      if (part.save === undefined) continue;
      const rows = txs.flatMap((tx): ModuleRowLists[] => {
        const lists = tx.pendingChanges.rows?.[module];
        return lists === undefined ? [] : [lists];
      });
      if (rows.length === 0) continue;
      const statement = part.save(rows, sql.distributed ? (txs[0]?.userId ?? null) : null);
      if (statement !== null) extra.push(statement);
    }
  }
  return { save, saveArgs, extra };
}

/** Only `names` of a model object, by column name (null fields left out: they read as NULL). */
function pick(table: SqlTable, names: readonly string[], value: object): Record<string, unknown> {
  const v = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const c of table.columns) {
    if (!names.includes(c.name)) continue;
    const x = v[c.field];
    if (x !== null && x !== undefined) out[c.name] = x;
  }
  return out;
}

/**
 * The columns (in table order) in which the rows differ from the rows as read; every updatable
 * column when a row was not read in its unit of work.
 */
function changedColumns(table: SqlTable, rows: ReadonlyArray<readonly [object, object | null | undefined]>): string[] {
  const candidates = updatable(table);
  const changed = new Set<string>();
  for (const [row, original] of rows) {
    const before = original as Record<string, unknown> | null | undefined;
    const after = row as Record<string, unknown>;
    for (const c of candidates) {
      if (changed.has(c.name)) continue;
      if (before === null || before === undefined || !sameValue(before[c.field], after[c.field])) changed.add(c.name);
    }
  }
  const names = candidates.filter((c) => changed.has(c.name)).map((c) => c.name);
  return names.length > 0 ? names : candidates.map((c) => c.name);
}

const updatableColumns = new WeakMap<SqlTable, Column[]>();
/** Columns an update may write: not the key, the owner or the creation time. */
function updatable(table: SqlTable): Column[] {
  let list = updatableColumns.get(table);
  if (list === undefined) {
    const keys = new Set(["user_id", "created_at", ...table.spec.primaryKey.map(snakeCase)]);
    list = table.columns.filter((c) => !keys.has(c.name));
    updatableColumns.set(table, list);
  }
  return list;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a instanceof Date && b instanceof Date) return a.getTime() === b.getTime();
  return false;
}
