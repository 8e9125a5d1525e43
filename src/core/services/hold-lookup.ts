import type { DbManager, DbTransaction } from "../db/types.js";
import { NotFoundError } from "../errors.js";
import type { JournalEntry, Reservation } from "../models/index.js";

// Holds found by their id alone, for `CreditService`'s commit, release and `getReservation`
// (docs/usage.md): which account a hold is of, before the unit of work that reads it.

/**
 * The user whose hold `id` is (`NotFoundError` if none): all a commit or release by id needs to
 * know before its unit of work, which reads the hold itself. A store that can say it without
 * reading (and copying) the whole hold does (`DbManager.reservationOwner`).
 */
export async function ownerOfReservation(db: DbManager, id: string): Promise<string> {
  if (db.reservationOwner === undefined) return (await findReservation(db, id)).userId;
  const owner = await db.reservationOwner(id);
  if (owner === null) throw new NotFoundError(`Reservation ${id} not found.`, { reservationId: id });
  return owner;
}

/** The hold `id` (of `userId`, when given), or `NotFoundError`. */
export async function findReservation(db: DbManager, id: string, userId?: string): Promise<Reservation> {
  const r = await db.getReservation(id, userId);
  // A store may answer by id alone (`defineStore` drivers): another user's hold is not found either.
  if (r === null || (userId !== undefined && r.userId !== userId))
    throw new NotFoundError(`Reservation ${id} not found.`, { reservationId: id });
  return r;
}

/** A repeated `reserveCredits` key: the hold its first entry placed. */
export async function replayHold(entry: JournalEntry, tx: DbTransaction): Promise<Reservation> {
  const r = await tx.getReservation(entry.reservationId ?? "");
  if (r === null) throw new NotFoundError(`Reservation of idempotency key ${entry.idempotencyKey} not found.`);
  return r;
}

/** The caller's own copy of a hold (the store may keep the one it saved). */
export function copyHold(r: Reservation): Reservation {
  return { ...r, allocations: r.allocations.map((p) => ({ ...p })) };
}
