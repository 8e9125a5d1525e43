import { CreditModel, type ModelGrant, type ModelHold } from "../../src/core/testing/model.js";

/**
 * The simulation's model of every account: `CreditModel` (src/core/testing/model.ts, which shares no
 * code with src/core/domain) per user and per unit (docs/units.md: no operation moves credits
 * between units, so each unit is an account of its own), all at the simulation's virtual time, with
 * what the sim needs beside it: a copy to predict an operation's outcome without changing anything,
 * and expiring a grant now (a subscription's credits expired by a plan change or a cancel).
 */
export class AccountsModel {
  /** By user, then by unit (null: the default unit), in the order the units were first used. */
  private readonly accounts = new Map<string, Map<string | null, CreditModel>>();

  /** `overdraftLimits`: each unit's overdraft limit (null: unbounded; a unit not named: none, as the service's). */
  constructor(
    public now: number,
    private readonly overdraftLimits: Readonly<Record<string, number | null>> = {},
  ) {}

  /** `userId`'s default unit. */
  of(userId: string): CreditModel {
    return this.unit(userId, null);
  }

  /** `userId`'s `unit` (null: the default one). */
  unit(userId: string, unit: string | null): CreditModel {
    let units = this.accounts.get(userId);
    if (units === undefined) this.accounts.set(userId, (units = new Map()));
    let m = units.get(unit);
    if (m === undefined) {
      units.set(unit, (m = new CreditModel(this.now)));
      // The default unit's limit is the sim's unbounded one; another unit's its own, or none.
      if (unit !== null) m.overdraftLimit = unit in this.overdraftLimits ? (this.overdraftLimits[unit] ?? null) : 0;
    }
    m.now = this.now;
    return m;
  }

  /** `userId`'s units modelled so far, the default one first: [unit, model]. */
  units(userId: string): Array<[string | null, CreditModel]> {
    this.of(userId);
    const all = [...(this.accounts.get(userId) ?? new Map<string | null, CreditModel>())];
    for (const [, m] of all) m.now = this.now;
    return all;
  }

  /** What `userId` holds in all its units (an allowance ends only while this is 0: docs/customer-state.md). */
  held(userId: string): number {
    return this.units(userId).reduce((n, [, m]) => n + m.reserved, 0);
  }

  /** The unit whose model has hold `id` of `userId` (undefined: none). */
  unitOfHold(userId: string, id: string): string | null | undefined {
    for (const [unit, m] of this.units(userId)) if (findHold(m, id) !== undefined) return unit;
    return undefined;
  }

  /** The unit whose model has grant `id` of `userId` (undefined: none). */
  unitOfGrant(userId: string, id: string): string | null | undefined {
    for (const [unit, m] of this.units(userId)) if (findGrant(m, id) !== undefined) return unit;
    return undefined;
  }

  users(): string[] {
    return [...this.accounts.keys()];
  }
}

/** A deep copy of one account's model (for a prediction that must not change it). */
export function cloneModel(m: CreditModel): CreditModel {
  const c = new CreditModel(m.now);
  c.balance = m.balance;
  c.reserved = m.reserved;
  c.debt = m.debt;
  c.overdrawn = m.overdrawn;
  c.overdraftLimit = m.overdraftLimit;
  c.grants = m.grants.map((g) => ({ ...g }));
  c.holds = m.holds.map((h) => ({ ...h, parts: h.parts.map(([id, a]) => [id, a] as [string, number]) }));
  return c;
}

export function findGrant(m: CreditModel, id: string): ModelGrant | undefined {
  return m.grants.find((g) => g.id === id);
}

export function findHold(m: CreditModel, id: string): ModelHold | undefined {
  return m.holds.find((h) => h.id === id);
}

export function heldAmount(h: ModelHold): number {
  return h.parts.reduce((s, [, a]) => s + a, 0);
}

/** A model grant with the instant `expireGrantNow` closed it (copied with the grant by `cloneModel`). */
export type ClosedGrant = ModelGrant & { closedAt?: number };

/**
 * Expires what is left of an open grant now (its held parts expire when their hold returns them),
 * or at its `expiresAt` when that has passed: the instant credits given back to it later expire at.
 */
export function expireGrantNow(m: CreditModel, g: ModelGrant): number {
  if (g.closed !== null) return 0;
  const amount = g.remaining;
  // A grant that has not started is in no balance (docs/units.md).
  if (g.upcoming !== true) m.balance -= amount;
  g.remaining = 0;
  g.closed = "expired";
  const closedAt = Math.min(m.now, g.expiresAt ?? Number.POSITIVE_INFINITY);
  (g as ClosedGrant).closedAt = closedAt;
  // Closed at its expiry (not early, by a plan change): what a rollover carries of it.
  if (closedAt === g.expiresAt) g.expiredAtExpiry = amount;
  return amount;
}

/** Open grants with credits left, by id. */
export function openGrants(m: CreditModel): Record<string, number> {
  const out: Record<string, number> = {};
  for (const g of m.grants) if (g.closed === null && g.remaining > 0) out[g.id] = g.remaining;
  return out;
}

/**
 * The grants half of `CreditModel.settle()` (the expiry job settles grants only, holds stay): the
 * grants whose start has come start first (docs/units.md), then the due ones expire.
 */
export function settleGrants(m: CreditModel): void {
  m.startDue();
  for (const g of m.grants) {
    if (g.closed === null && g.expiresAt !== null && g.expiresAt <= m.now) expireGrantNow(m, g);
  }
}
