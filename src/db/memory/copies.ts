import { copyAccount as shallowAccount, holdWith, withRemaining } from "../../domain/copies.js";
import type { Account, Grant, LedgerEntry, Reservation } from "../../models/index.js";

/**
 * Copies of the in-memory store's rows for its public reads: the store keeps the objects its units
 * of work saved (the library never changes them afterwards), so a reader that changed what it was
 * handed — `(await db.getAccount(u)).balance += 1` — would change the store, and `audit` would then
 * report a mismatch. Each copy is the units of work's one-shape literal (fast on V8, complete by
 * `satisfies`) with its own Dates, and metadata and other nested values cloned: a field of the
 * model that is an object or a Date must be replaced here too.
 */

const date = (d: Date): Date => new Date(d.getTime());
const dateOrNull = (d: Date | null): Date | null => (d === null ? null : new Date(d.getTime()));
const clone = <T>(v: T): T => (v === null || typeof v !== "object" ? v : structuredClone(v));

export function copyAccount(a: Account): Account {
  const c = shallowAccount(a);
  c.nextExpiryAt = dateOrNull(a.nextExpiryAt);
  c.alert = clone(a.alert);
  c.autoTopUp = clone(a.autoTopUp ?? null);
  c.limits = clone(a.limits);
  c.createdAt = date(a.createdAt);
  c.updatedAt = date(a.updatedAt);
  return c;
}

export function copyGrant(g: Grant): Grant {
  const c = withRemaining(g, g.remaining);
  c.expiresAt = dateOrNull(g.expiresAt);
  c.metadata = clone(g.metadata);
  c.createdAt = date(g.createdAt);
  c.closedAt = dateOrNull(g.closedAt);
  return c;
}

export function copyReservation(r: Reservation): Reservation {
  const allocations = r.allocations.map((p) => ({ grantId: p.grantId, amount: p.amount }));
  const c = holdWith(r, r.status, dateOrNull(r.settledAt), r.committedAmount, r.amount, allocations);
  c.expiresAt = date(r.expiresAt);
  c.metadata = clone(r.metadata);
  c.createdAt = date(r.createdAt);
  return c;
}

export const copyLedgerEntry = (e: LedgerEntry): LedgerEntry => structuredClone(e);
