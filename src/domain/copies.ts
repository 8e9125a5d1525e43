import type { Account, Grant, GrantPortion, Reservation } from "../models/index.js";

/*
 * Copies of the stored objects a unit of work changes, written as literals rather than spreads:
 * V8 copies these objects (whose number fields change representation as amounts grow) with
 * `{ ...o }` on its slow path, a property at a time — about 7% of a deduction — and a literal of
 * one shape in a few instructions. `satisfies` keeps each list complete: a field added to the model
 * and missing here does not compile. (The in-memory store's public reads build their deep copies
 * on these: `src/db/memory/copies.ts`.)
 */

/** @internal `{ ...a }`. */
export function copyAccount(a: Account): Account {
  return {
    userId: a.userId,
    balance: a.balance,
    reserved: a.reserved,
    debt: a.debt,
    seq: a.seq,
    lastHash: a.lastHash,
    nextExpiryAt: a.nextExpiryAt,
    alert: a.alert,
    autoTopUp: a.autoTopUp ?? null,
    limits: a.limits,
    scoped: a.scoped,
    createdAt: a.createdAt,
    updatedAt: a.updatedAt,
  } satisfies Record<keyof Account, unknown>;
}

/** @internal `{ ...g, remaining }`. */
export function withRemaining(g: Grant, remaining: number): Grant {
  return {
    id: g.id,
    userId: g.userId,
    amount: g.amount,
    remaining,
    expiresAt: g.expiresAt,
    priority: g.priority,
    source: g.source,
    sourceRef: g.sourceRef,
    description: g.description,
    metadata: g.metadata,
    createdAt: g.createdAt,
    expiredAmount: g.expiredAmount,
    closedAt: g.closedAt,
    closedReason: g.closedReason,
    scope: g.scope,
    costBasis: g.costBasis,
  } satisfies Record<keyof Grant, unknown>;
}

/** @internal `{ ...h, status, settledAt, committedAmount, amount, allocations }`. */
export function holdWith(
  h: Reservation,
  status: Reservation["status"],
  settledAt: Date | null,
  committedAmount: number | null,
  amount: number,
  allocations: GrantPortion[],
): Reservation {
  return {
    id: h.id,
    userId: h.userId,
    amount,
    status,
    allocations,
    expiresAt: h.expiresAt,
    reason: h.reason,
    metadata: h.metadata,
    createdAt: h.createdAt,
    settledAt,
    committedAmount,
    spender: h.spender,
    feature: h.feature,
  } satisfies Record<keyof Reservation, unknown>;
}
