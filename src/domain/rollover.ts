import type { JournalEntry, Reservation } from "../models/index.js";

/**
 * Rollover: what a subscription carries into the next period is what its period's grants had
 * **unspent and unheld at the period's end** — whoever expired them and whenever the job runs.
 * Credits a hold still held at the period's end are not carried: they expire when the hold returns
 * them (an `expire` entry with that hold's `reservationId`, see `AccountWork`), before or after
 * the job. Credits a hold returned after it had lapsed by the period's end were free at the end
 * (the hold only gave them back late), so they are carried.
 */

/** Per carried grant: what its expiries took in all (`expired`), and the part of it unspent and unheld at the period's end (`atExpiry`). */
export type PeriodEndExpiry = Map<string, { expired: number; atExpiry: number }>;

/** What `expire` entries took of one grant (`expired`), and the part of it that holds live at the period's end returned (`held`). */
export interface GrantExpiries {
  expired: number;
  held: number;
}

/**
 * True when `hold` (one that returned credits to a grant after the grant's expiry at `at`) still
 * held them at `at`: it had not lapsed by then. A lapsed hold (status "expired") cannot be released
 * or committed, so one that ended otherwise was settled after `at`, while live. Unknown: held.
 */
export function liveAt(hold: Reservation | null | undefined, at: number): boolean {
  return hold === null || hold === undefined || hold.status !== "expired" || hold.expiresAt.getTime() > at;
}

/** What a grant had unspent and unheld at the period's end, from all its expiries. */
export function unspentAtEnd(x: GrantExpiries): number {
  return Math.max(0, x.expired - x.held);
}

/**
 * The expiries of `grantId` among `entries` (a unit of work's own: its settlement, the period's
 * closing expiry, returns of holds): what they took, and what holds live at `periodEnd` returned.
 */
export function expiriesIn(
  entries: readonly JournalEntry[],
  grantId: string,
  periodEnd: number,
  holdOf: (reservationId: string) => Reservation | null | undefined,
): GrantExpiries {
  const out: GrantExpiries = { expired: 0, held: 0 };
  for (const e of entries) {
    if (e.type !== "expire") continue;
    for (const p of e.grants) {
      if (p.grantId !== grantId) continue;
      out.expired += p.amount;
      if (e.reservationId !== null && liveAt(holdOf(e.reservationId), periodEnd)) out.held += p.amount;
    }
  }
  return out;
}
