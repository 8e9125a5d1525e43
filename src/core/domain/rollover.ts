import type { Reservation } from "../models/entities.js";
import type { JournalEntry } from "../models/records.js";
import {
  allowanceUnit,
  type Plan,
  type PlanAllowance,
  type Subscription,
  type SubscriptionIntent,
} from "../models/subscriptions.js";

/**
 * Rollover: what a subscription carries into the next period is what its period's grants had
 * **unspent and unheld at the period's end** — whoever expired them and whenever the job runs.
 * Credits a hold still held at the period's end are not carried: they expire when the hold returns
 * them (an `expire` entry with that hold's `reservationId`, see `AccountWork`), before or after
 * the job. Credits a hold returned after it had lapsed by the period's end were free at the end
 * (the hold only gave them back late), so they are carried. The rule is stated in
 * docs/subscriptions.md ("Rollover"); `applyIntent` (subscriptions.ts) carries it out.
 */

/** A rollover to carry out: `SubscriptionIntent["carry"]` when not null. */
export type Carry = NonNullable<SubscriptionIntent["carry"]>;

/**
 * What a renewal carries into the period `next`, by the policy of the plan that is ending
 * (docs/subscriptions.md, "Rollover"): nothing after a `changePlan(…, { when: "period_end",
 * credits: "expire" })`, or when the period had no credits of its own; else the period's unscoped
 * grants, capped at `rolloverCap` (`"cap"`; a missing cap carries nothing), not at all (`"all"`),
 * or not carried (`"none"`), as one grant that expires at the end of `next` — and the same for
 * each of the plan's allowances (docs/subscriptions.md, "Allowances"), by its own policy or else
 * the plan's, over the period's grants of its scope. Null when nothing would be carried; a plan
 * that no longer exists carries nothing.
 */
export function rolloverCarry(
  s: Pick<Subscription, "pendingCredits" | "periodGrantIds" | "currentPeriodEnd">,
  endingPlan: Pick<Plan, "rollover" | "rolloverCap" | "allowances"> | null,
  next: { end: Date },
): Carry | null {
  if (endingPlan === null || s.pendingCredits === "expire" || s.periodGrantIds.length === 0) return null;
  const policy = endingPlan.rollover;
  const allowances = (endingPlan.allowances ?? []).flatMap((a) => {
    const limit = allowanceLimit(a, endingPlan);
    return limit === undefined
      ? []
      : [
          {
            ...(a.scope === undefined ? {} : { scope: a.scope }),
            ...(a.unit === undefined ? {} : { unit: a.unit }),
            limit,
          },
        ];
  });
  if (policy === "none" && allowances.length === 0) return null;
  return {
    grantIds: s.periodGrantIds,
    periodEnd: s.currentPeriodEnd.getTime(),
    limit: policy === "all" ? null : policy === "none" ? 0 : (endingPlan.rolloverCap ?? 0),
    expiresAt: next.end.getTime(),
    ...(allowances.length === 0 ? {} : { allowances }),
  };
}

/**
 * How much of an allowance's unspent credits roll over (null: all), or undefined when none do:
 * its own `rollover` policy, else the plan's (docs/subscriptions.md, "Allowances") — but for an
 * allowance in another unit, none: the plan's policy and cap count the default unit (docs/units.md).
 */
export function allowanceLimit(
  a: Pick<PlanAllowance, "rollover" | "unit">,
  plan: Pick<Plan, "rollover" | "rolloverCap">,
): number | null | undefined {
  const own = allowanceUnit(a) === null ? undefined : "none";
  const r = a.rollover ?? own ?? (plan.rollover === "cap" ? { cap: plan.rolloverCap ?? 0 } : plan.rollover);
  if (r === "none") return undefined;
  return r === "all" ? null : r.cap;
}

/**
 * The credits a rollover grant receives: what the period's grants had unspent and unheld at its
 * end, up to the cap (`limit`; null: no cap) — and none when the grant would be born expired
 * (`expiresAt` at or before `now`: a period caught up late), since nobody could use it.
 */
export function rolloverAmount(unspent: number, carry: Pick<Carry, "limit" | "expiresAt">, now: Date): number {
  const moved = carry.limit === null ? unspent : Math.min(unspent, carry.limit);
  if (moved <= 0) return 0;
  return carry.expiresAt === null || carry.expiresAt > now.getTime() ? moved : 0;
}

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

/** A carried grant in a newest-first read of its expiries: its stored `expiredAmount` (`expired`), what the entries read so far took of it (`seen`), and `held` as in `GrantExpiries`. */
export interface ExpiryRead extends GrantExpiries {
  seen: number;
}

/**
 * Reads entry `e` — the next, newest first, of a user's `expire` and `reverse` entries — into the
 * carried grants still being read (`reading`, by id), and answers the ids whose closing entry it
 * is: all they expired has been seen, every later return with it. What came back to a grant after
 * it closed was not unspent and unheld at the period's end: an `expire` by a hold live then
 * (`holdLive`, answered with `liveAt`), and what a `reverse` gave back (spent then; the entry after
 * it expires it again: docs/concepts.md, "Giving a charge back"). Read newest first, a `reverse`
 * met before a grant's closing entry is one that came after it.
 */
export function readExpiry(
  reading: ReadonlyMap<string, ExpiryRead>,
  e: JournalEntry,
  holdLive: (reservationId: string) => boolean,
): string[] {
  const closing: string[] = [];
  for (const p of e.grants) {
    const x = reading.get(p.grantId);
    if (x === undefined) continue;
    if (e.type === "reverse") {
      if (p.kind !== "debt_paid") x.held += p.amount;
    } else if (e.type === "expire") {
      x.seen += p.amount;
      if (e.reservationId !== null && holdLive(e.reservationId)) x.held += p.amount;
      if (x.seen >= x.expired) closing.push(p.grantId);
    }
  }
  return closing;
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
