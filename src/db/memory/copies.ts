import type { Account, Grant, LedgerEntry, Reservation } from "../../models/index.js";

/**
 * Copies of the in-memory store's rows for its public reads: the store keeps the objects its units
 * of work saved (the library never changes them afterwards), so a reader that changed what it was
 * handed — `(await db.getAccount(u)).balance += 1` — would change the store, and `audit` would then
 * report a mismatch. Each copy is a literal of one shape (fast on V8, and `satisfies` keeps it
 * complete: a field added to the model and missing here does not compile), with its own Dates;
 * metadata and other nested values are cloned.
 */

const date = (d: Date): Date => new Date(d.getTime());
const dateOrNull = (d: Date | null): Date | null => (d === null ? null : new Date(d.getTime()));
const clone = <T>(v: T): T => (v === null || typeof v !== "object" ? v : structuredClone(v));

export function copyAccount(a: Account): Account {
  return {
    userId: a.userId,
    balance: a.balance,
    reserved: a.reserved,
    debt: a.debt,
    seq: a.seq,
    lastHash: a.lastHash,
    nextExpiryAt: dateOrNull(a.nextExpiryAt),
    alert: clone(a.alert),
    createdAt: date(a.createdAt),
    updatedAt: date(a.updatedAt),
  } satisfies Record<keyof Account, unknown>;
}

export function copyGrant(g: Grant): Grant {
  return {
    id: g.id,
    userId: g.userId,
    amount: g.amount,
    remaining: g.remaining,
    expiresAt: dateOrNull(g.expiresAt),
    priority: g.priority,
    source: g.source,
    sourceRef: g.sourceRef,
    description: g.description,
    metadata: clone(g.metadata),
    createdAt: date(g.createdAt),
    expiredAmount: g.expiredAmount,
    closedAt: dateOrNull(g.closedAt),
    closedReason: g.closedReason,
  } satisfies Record<keyof Grant, unknown>;
}

export function copyReservation(r: Reservation): Reservation {
  return {
    id: r.id,
    userId: r.userId,
    amount: r.amount,
    status: r.status,
    allocations: r.allocations.map((p) => ({ grantId: p.grantId, amount: p.amount })),
    expiresAt: date(r.expiresAt),
    reason: r.reason,
    metadata: clone(r.metadata),
    createdAt: date(r.createdAt),
    settledAt: dateOrNull(r.settledAt),
    committedAmount: r.committedAmount,
  } satisfies Record<keyof Reservation, unknown>;
}

export const copyLedgerEntry = (e: LedgerEntry): LedgerEntry => structuredClone(e);
