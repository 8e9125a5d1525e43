import { createHash } from "node:crypto";
import { stringify } from "safe-stable-stringify";
import type { JournalEntry } from "../models/index.js";

/**
 * The canonical form of an entry that its hash covers: every field but `hash`, in a fixed order,
 * with object keys sorted, dates as ISO strings. Stable across backends and key reorderings
 * (PostgreSQL's JSONB reorders keys).
 */
export function canonicalEntry(entry: Omit<JournalEntry, "hash">): string {
  // Built by hand (it is on every write's path); only metadata needs the sorting stringifier.
  let grants = "";
  for (const g of entry.grants) grants += `${grants === "" ? "" : ","}[${JSON.stringify(g.grantId)},${g.amount}]`;
  return (
    `[${JSON.stringify(entry.id)},${JSON.stringify(entry.userId)},${entry.seq},"${entry.type}",${entry.amount},` +
    `${entry.balanceAfter},${entry.reservedAfter},${entry.debtAfter},[${grants}],${str(entry.reservationId)},` +
    `${str(entry.idempotencyKey)},${str(entry.fingerprint)},${str(entry.correlationId)},${str(entry.description)},` +
    `${entry.metadata === null ? "null" : (stringify(entry.metadata) ?? "null")},"${entry.createdAt.toISOString()}"]`
  );
}

const str = (v: string | null): string => (v === null ? "null" : JSON.stringify(v));

/** sha256(prevHash ‖ canonical entry), hex. */
export function hashEntry(entry: Omit<JournalEntry, "hash">): string {
  return createHash("sha256")
    .update(entry.prevHash ?? "")
    .update("\n")
    .update(canonicalEntry(entry))
    .digest("hex");
}

/** Digest of a request's arguments, stored with its idempotency key. */
export function fingerprint(operation: string, args: unknown): string {
  return createHash("sha256")
    .update(operation)
    .update("\n")
    .update(stringify(args) ?? "")
    .digest("base64url");
}
