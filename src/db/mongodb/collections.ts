import type { Collection, Filter } from "mongodb";
import type { ScanCursor } from "../../core/db/types.js";
import type { StoredDoc } from "./documents.js";

// The MongoDB store's collections and how its reads ask for them (docs/storage.md, MongoDB):
// BSON options, batch sizes, a scan's cursor.

/** The collections of one manager, with the BSON options the mapping relies on. */
export interface Collections {
  accounts: Collection<StoredDoc>;
  grants: Collection<StoredDoc>;
  reservations: Collection<StoredDoc>;
  journal: Collection<StoredDoc>;
  ledger: Collection<StoredDoc>;
  notifications: Collection<StoredDoc>;
  plans: Collection<StoredDoc>;
  subscriptions: Collection<StoredDoc>;
}

/**
 * Numbers come back as JS numbers (int32 and double are exact up to Number.MAX_SAFE_INTEGER; an
 * Int64 written by another tool is converted too), whatever the client's own settings say.
 */
export const BSON_OPTIONS = {
  promoteValues: true,
  promoteLongs: true,
  useBigInt64: false,
  ignoreUndefined: false,
} as const;

/**
 * Reads that return a whole list ask for it in one batch (the server still caps a batch at 16 MB):
 * one round trip instead of a `find` and `getMore`s.
 */
const MAX_BATCH = 10_000;
export const ONE_BATCH = { batchSize: MAX_BATCH } as const;
export const batchOf = (limit: number) => ({ batchSize: Math.max(1, Math.min(limit, MAX_BATCH)) });

/** Resume a scan ordered by (expiresAt, _id) strictly after `after`. */
export function afterCursor(after: ScanCursor | undefined): Filter<StoredDoc> {
  if (after === undefined) return {};
  return { $or: [{ expiresAt: { $gt: after.expiresAt } }, { expiresAt: after.expiresAt, _id: { $gt: after.id } }] };
}
