import type { JournalEntry, Reservation } from "../../models/index.js";

/**
 * Copies of the in-memory store's rows for what it hands out and what it keeps: the store keeps
 * plain objects, so a caller that changed an object it was handed —
 * `(await db.getAccount(u)).balance += 1` — would otherwise change the store, and `audit` would
 * then report a mismatch.
 */
export const copy = <T>(row: T): T => structuredClone(row);

/**
 * A journal entry's copy (`copy`, written out: one is made for every entry saved, and an entry's
 * nested values are few — its portions, metadata, cost basis and date).
 */
export function copyEntry(e: JournalEntry): JournalEntry {
  return {
    ...e,
    grants: e.grants.map((p) => ({ ...p })),
    metadata: e.metadata === null ? null : structuredClone(e.metadata),
    spender: e.spender ?? null,
    feature: e.feature ?? null,
    costBasis: e.costBasis == null ? null : { ...e.costBasis },
    reverses: e.reverses ?? null,
    occurredAt: e.occurredAt == null ? null : new Date(e.occurredAt.getTime()),
    createdAt: new Date(e.createdAt.getTime()),
    takeBack: e.takeBack ?? null,
    paymentId: e.paymentId ?? null,
    shortfall: e.shortfall ?? null,
    hashVersion: e.hashVersion ?? null,
    keyId: e.keyId ?? null,
    scope: e.scope == null ? null : structuredClone(e.scope),
    effectiveAt: e.effectiveAt == null ? null : new Date(e.effectiveAt.getTime()),
  };
}

/** A hold's copy; spender and feature read back as null when it named none (as every store reads them). */
export function copyHold(r: Reservation): Reservation {
  return { ...copy(r), spender: r.spender ?? null, feature: r.feature ?? null };
}
