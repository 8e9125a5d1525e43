import type { Account, Grant, GrantPortion, Reservation } from "../models/index.js";

/*
 * Shallow copies of the stored objects a unit of work changes: it never changes what it loaded
 * (the in-memory store hands it its own objects), only new copies of them.
 */

/** @internal `{ ...a }`. */
export function copyAccount(a: Account): Account {
  return { ...a, autoTopUp: a.autoTopUp ?? null };
}

/** @internal `{ ...g, remaining }`. */
export function withRemaining(g: Grant, remaining: number): Grant {
  return { ...g, remaining };
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
  return { ...h, status, settledAt, committedAmount, amount, allocations };
}
