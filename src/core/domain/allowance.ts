/**
 * What a scope of grants was granted in its current allowance (docs/customer-state.md, "What was
 * granted"): the grants added since the scope last had nothing left, the ones drawn to their last
 * credit included. The open grants say what they were given themselves; what the grants drawn out
 * since then were given is kept on the account, per scope of grants, and changed only in the
 * account's unit of work (`trackAllowance`), so every store and every manager over one store
 * answers the same figures.
 *
 * It is kept among the account's alert marks, under keys no alert id can take (an alert id has no
 * `~`: src/core/models/alerts.ts), so it travels in the row every store already writes.
 */

import { own, setOwn } from "./own.js";
import type { GrantScope } from "../models/limits.js";
import type { Account, AlertMark, Grant } from "../models/index.js";
import { isOpenGrant } from "./order.js";

/** The prefix of the marks that hold what a scope's drawn-out grants were given. */
const PREFIX = "~";

/** What the grants of one scope drawn to their last credit in its current allowance were given. */
export interface DrawnOut {
  /** The grants' scope (null: unscoped, the pool). */
  scope: GrantScope | null;
  /** The grants' credit unit (docs/units.md); null: the default unit. */
  unit: string | null;
  amount: number;
}

/**
 * The mark key of a scope of grants: `~` for the pool, else `~` and the scope's lists, escaped so
 * the key holds no `.` nor `$` (a key of a stored document). Grants of another unit than the
 * default one have their own allowances (docs/units.md: no figure adds two units): `~@unit:` and
 * the same.
 */
export function scopeKey(scope: GrantScope | null | undefined, unit: string | null = null): string {
  const prefix = unit === null ? PREFIX : `${PREFIX}@${unit}:`;
  if (scope === null || scope === undefined) return prefix;
  const text = JSON.stringify([scope.features ?? null, scope.spenders ?? null]);
  return prefix + encodeURIComponent(text).replaceAll(".", "%2E");
}

function scopeOfKey(key: string): DrawnOut {
  let unit: string | null = null;
  let rest = key.slice(PREFIX.length);
  if (rest.startsWith("@")) {
    const end = rest.indexOf(":");
    unit = rest.slice(1, end);
    rest = rest.slice(end + 1);
  }
  if (rest === "") return { scope: null, unit, amount: 0 };
  const [features, spenders] = JSON.parse(decodeURIComponent(rest)) as [string[] | null, string[] | null];
  return {
    scope: { ...(features === null ? {} : { features }), ...(spenders === null ? {} : { spenders }) },
    unit,
    amount: 0,
  };
}

/** True when a mark key holds a scope's drawn-out amount rather than an alert threshold's state. */
export function isAllowanceKey(key: string): boolean {
  return key.startsWith(PREFIX);
}

/** What each scope's grants drawn out in its current allowance were given (none: nothing drawn out). */
export function drawnOutOf(account: Account | null): DrawnOut[] {
  const marks = account?.alert?.marks;
  if (marks === undefined) return [];
  const out: DrawnOut[] = [];
  for (const [key, mark] of Object.entries(marks))
    if (isAllowanceKey(key) && (mark.spent ?? 0) > 0) out.push({ ...scopeOfKey(key), amount: mark.spent ?? 0 });
  return out;
}

/** What `account` holds in every unit. */
function reservedOf(account: Account | null): number {
  let reserved = account?.reserved ?? 0;
  for (const f of Object.values(account?.units ?? {})) reserved += f.reserved;
  return reserved;
}

/** A grant drawn to its last credit (spent, or held) and not closed: its amount counts as drawn out. */
function drawnOut(g: Grant): boolean {
  return g.remaining === 0 && g.closedAt === null;
}

/** The allowance a scope's drawn-out amount counts in, by its stored mark; null: nothing counted. */
function counting(stored: Readonly<Record<string, AlertMark>> | undefined, key: string): number | null {
  const mark = own(stored, key);
  return mark === undefined || (mark.spent ?? 0) <= 0 ? null : (mark.allowance ?? 0);
}

/**
 * Updates `account` (the unit of work's copy) after a change: a grant drawn to its last credit
 * (spent, or held) adds what it was given to its scope's allowance, and stays there whatever
 * happens to it after (its expiry, a void) unless credits are given back to it while it is open (a
 * hold released, a charge reversed: it is an open grant again). A scope left with no open grant
 * while the account holds nothing starts again: its next grant begins a new allowance.
 *
 * Which allowance counted a grant: the scope's mark names the one its amount counts in
 * (`allowance`: the account's `seq` after the unit of work that drew out the first grant it counts;
 * a later allowance's first grant is drawn out by a later unit, of a higher seq), and a grant
 * drawn out records it (`drawnOutIn`, set through `record`). Credits given back to a grant take
 * its amount off only when it records the allowance the mark names: one drawn out in an allowance
 * that has ended since was never counted by the current one, and joins it as an open grant. A
 * store version 1 wrote kept neither: a grant drawn out there has no number and was counted by no
 * allowance, so credits given back to it take nothing (docs/customer-state.md, "What was granted").
 *
 * `touched`: each grant the change wrote, as the change leaves it, with the version it was loaded
 * with (undefined: created by the change). `open`: the account's open grants after the change, read
 * only when a grant left the open ones or the account's last hold ended. `record`: writes a touched
 * grant again (another `drawnOutIn`), called only for a grant drawn out or given credits back.
 */
export function trackAllowance(
  account: Account,
  loaded: Account | null,
  touched: ReadonlyArray<{ before: Grant | undefined; after: Grant }>,
  open: () => readonly Grant[],
  record: (grant: Grant) => void,
): void {
  // From what the account was loaded with, so a second `changes()` of one work moves nothing more.
  const stored = loaded?.alert?.marks;
  let deltas: Map<string, number> | null = null;
  let left = false;
  for (const { before, after } of touched) {
    if ((before === undefined || isOpenGrant(before)) && !isOpenGrant(after)) left = true;
    // Drawn out (from open or made here), or given credits back (drawn out, open again). A grant
    // drawn out and then closed (expired, voided) stays drawn out: it was spent, or held, to its last credit.
    const was = before !== undefined && drawnOut(before);
    let delta = 0;
    let key: string;
    if (!was && drawnOut(after)) {
      key = scopeKey(after.scope, after.unit ?? null);
      // Nothing counted yet: this unit's drawn-out grants begin the count, named by its seq.
      const n = counting(stored, key) ?? account.seq;
      if (after.drawnOutIn !== n) record({ ...after, drawnOutIn: n });
      delta = after.amount;
    } else if (was && isOpenGrant(after)) {
      key = scopeKey(after.scope, after.unit ?? null);
      const n = before.drawnOutIn ?? null;
      if (n !== null && n === counting(stored, key)) delta = -after.amount;
      if (after.drawnOutIn != null) record({ ...after, drawnOutIn: null });
    } else continue;
    if (delta === 0) continue;
    (deltas ??= new Map()).set(key, (deltas.get(key) ?? 0) + delta);
  }
  const holdsEnded = reservedOf(loaded) > 0 && reservedOf(account) === 0;
  if (deltas === null && !left && !holdsEnded) return;
  const amounts = new Map<string, number>();
  if (stored !== undefined)
    for (const [key, mark] of Object.entries(stored)) if (isAllowanceKey(key)) amounts.set(key, mark.spent ?? 0);
  for (const [key, delta] of deltas ?? []) amounts.set(key, Math.max(0, (amounts.get(key) ?? 0) + delta));
  if ((left || holdsEnded) && reservedOf(account) === 0 && amounts.size > 0) {
    // The scopes with nothing open start again. Without scoped grants, the pool's open grants
    // hold balance − reserved + debt (each unit's): nothing to read.
    const live = new Set<string>();
    if (account.scoped !== true) {
      if (account.balance + account.debt > 0) live.add(scopeKey(null));
      for (const [unit, f] of Object.entries(account.units ?? {}))
        if (f.balance + f.debt > 0) live.add(scopeKey(null, unit));
      // (A grant that has not started holds nothing yet: docs/units.md.)
    } else for (const g of open()) if (g.upcoming !== true) live.add(scopeKey(g.scope, g.unit ?? null));
    for (const key of amounts.keys()) if (!live.has(key)) amounts.set(key, 0);
  }
  const marks = account.alert?.marks;
  const allowanceOf = (key: string) => counting(stored, key) ?? account.seq;
  let changed = false;
  for (const [key, amount] of amounts) {
    const mark = own(marks, key);
    if ((mark?.spent ?? 0) !== amount || (amount > 0 && (mark?.allowance ?? 0) !== allowanceOf(key))) changed = true;
  }
  if (!changed) return;
  const next: Record<string, AlertMark> = {};
  if (marks !== undefined)
    for (const [key, mark] of Object.entries(marks))
      if (!isAllowanceKey(key))
        Object.defineProperty(next, key, { value: mark, writable: true, enumerable: true, configurable: true });
  for (const [key, amount] of amounts)
    if (amount > 0) setOwn(next, key, { state: "ok", crossings: 0, spent: amount, allowance: allowanceOf(key) });
  const prev = account.alert ?? { level: null, threshold: 0, lastAllocation: 0, override: null };
  account.alert = { ...prev, marks: next };
}
