/**
 * Scoped grants, as pure functions (docs/teams-and-limits.md): a grant with a scope pays only for
 * the spends it matches — its features (when it lists some) include the spend's feature, and its
 * spenders (when it lists some) the spend's spender. A spend draws first from the scoped grants
 * that match it, in burn-down order (priority, then expiry, then age: ./order.ts), then from the
 * unscoped grants in the same order; a scoped grant never pays for a spend outside its scope.
 */

import type { GrantScope } from "../models/limits.js";
import type { DrawnOut } from "./allowance.js";
import type { Spend } from "./limits.js";
import { compareGrants, isUsable } from "./order.js";
import type { Account, Grant } from "../models/index.js";

/** True when a grant with `scope` may pay for `spend` (an unscoped grant pays for any). */
export function inScope(scope: GrantScope | null | undefined, spend: Spend): boolean {
  if (scope === null || scope === undefined) return true;
  if (scope.features !== undefined && (spend.feature === null || !scope.features.includes(spend.feature))) return false;
  if (scope.spenders !== undefined && (spend.spender === null || !scope.spenders.includes(spend.spender))) return false;
  return true;
}

/**
 * The grants usable at `now` that may pay for `spend`, in the order they pay: the matching scoped
 * ones first, then the unscoped ones, each group in burn-down order.
 */
export function spendOrder(grants: readonly Grant[], spend: Spend, now: Date): Grant[] {
  const scoped: Grant[] = [];
  const open: Grant[] = [];
  for (const g of grants) {
    if (!isUsable(g, now)) continue;
    const scope = g.scope;
    if (scope === null || scope === undefined) open.push(g);
    else if (inScope(scope, spend)) scoped.push(g);
  }
  scoped.sort(compareGrants);
  open.sort(compareGrants);
  return scoped.concat(open);
}

/** What the grants behind a spend were granted in their current allowance, what was drawn from them, and what they hold for it. */
export interface GrantFigures {
  /** The open grants behind it, in the order a spend draws them (`spendOrder`). */
  grants: Grant[];
  /**
   * What they were granted in their current allowance: the open grants, and those drawn to their
   * last credit since their scope last had nothing left (./allowance.ts).
   */
  granted: number;
  /** What has been drawn from them: spent, or held now. */
  used: number;
  /** What they hold for the spend now, less the debt (may be negative). */
  left: number;
}

/**
 * The figures of the grants behind `spend` (its scoped grants, then the pool): the usable ones at
 * `now`, and what the grants `drawn` out in each scope's current allowance were given
 * (`drawnOutOf`, ./allowance.ts). What the customer state reports per feature
 * (docs/customer-state.md, "What was granted"), and what a `left_percent` alert compares
 * (docs/customer-state.md, "Alerts"). `debt`: the account's, owed for spends of any scope.
 */
export function figuresBehind(
  grants: readonly Grant[],
  spend: Spend,
  debt: number,
  now: Date,
  drawn: readonly DrawnOut[] = [],
): GrantFigures {
  const behind = spendOrder(grants, spend, now);
  let granted = 0;
  let held = 0;
  for (const g of behind) {
    granted += g.amount;
    held += g.remaining;
  }
  for (const d of drawn) if (inScope(d.scope, spend)) granted += d.amount;
  return { grants: behind, granted, used: granted - held, left: held - debt };
}

/** Credits of usable grants at `now` that may not pay for `spend` (scoped ones outside it). */
export function outOfScope(grants: readonly Grant[], spend: Spend, now: Date): number {
  let total = 0;
  for (const g of grants) if (isUsable(g, now) && !inScope(g.scope, spend)) total += g.remaining;
  return total;
}

/** What a plain `getUserCreditsInfo` answers per scope: the credits left in usable scoped grants. */
export interface ScopeTotal {
  features: string[] | null;
  spenders: string[] | null;
  remaining: number;
}

/**
 * The credits left in the usable scoped grants at `now`, one total per distinct scope (its lists
 * sorted, so the same scope given in another order is one total), in a stable order
 * (docs/teams-and-limits.md, "Scoped credits").
 */
export function scopedTotals(grants: readonly Grant[], now: Date): ScopeTotal[] {
  const totals = new Map<string, ScopeTotal>();
  for (const g of grants) {
    const scope = g.scope;
    if (scope === null || scope === undefined || !isUsable(g, now)) continue;
    const features = scope.features === undefined ? null : [...scope.features].sort();
    const spenders = scope.spenders === undefined ? null : [...scope.spenders].sort();
    const key = JSON.stringify([features, spenders]);
    const total = totals.get(key);
    if (total === undefined) totals.set(key, { features, spenders, remaining: g.remaining });
    else total.remaining += g.remaining;
  }
  return [...totals.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, t]) => t);
}

/**
 * The account's `available` (docs/customer-state.md, "The state in one read"): what a spend naming
 * no feature nor spender may use, its unheld credits less the debt (`balance − reserved`) less the
 * unheld credits of its scoped grants. An account never given a scoped grant answers
 * `balance − reserved` without reading its grants. What `getUserCreditsInfo`, the customer state,
 * the low-credits level and the `available` alerts all call `available`.
 */
export function availableOf(account: Account, grants: () => readonly Grant[], now: Date): number {
  const unheld = account.balance - account.reserved;
  if (account.scoped !== true) return unheld;
  // The default unit's scoped grants (docs/units.md).
  const own = account.units == null ? grants() : grants().filter((g) => (g.unit ?? null) === null);
  return unheld - outOfScope(own, { spender: null, feature: null }, now);
}
