import type { Grant } from "../models/index.js";

/**
 * Burn-down order: lower priority number first, then soonest expiry (never-expiring last), then
 * oldest (by its start: `startOf`), then id (so every backend agrees on ties). The order Stripe credit grants, Metronome
 * and OpenMeter use.
 * @beta
 */
export function compareGrants(a: Grant, b: Grant): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  const ea = a.expiresAt === null ? Infinity : a.expiresAt.getTime();
  const eb = b.expiresAt === null ? Infinity : b.expiresAt.getTime();
  if (ea !== eb) return ea < eb ? -1 : 1;
  const ca = startOf(a).getTime();
  const cb = startOf(b).getTime();
  if (ca !== cb) return ca - cb;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/**
 * A grant the account loads with its state: not closed and with credits left (expiry aside). What
 * every store's "open grants" are (the in-memory index, the adapters' queries and state caches).
 */
export function isOpenGrant(grant: Grant): boolean {
  return grant.remaining > 0 && grant.closedAt === null;
}

/** A grant credits can be drawn from at `now`: started, open, unspent and not past its expiry. */
export function isUsable(grant: Grant, now: Date): boolean {
  return (
    grant.upcoming !== true &&
    grant.remaining > 0 &&
    grant.closedAt === null &&
    (grant.expiresAt === null || grant.expiresAt.getTime() > now.getTime())
  );
}

/** A grant whose unspent credits are due to expire at `now`. */
export function isDue(grant: Grant, now: Date): boolean {
  return grant.closedAt === null && grant.expiresAt !== null && grant.expiresAt.getTime() <= now.getTime();
}

/**
 * When a grant's age in the burn-down order counts from (docs/units.md, "Grants that start
 * later"): its start, for one added to start later; else when it was created.
 */
export function startOf(grant: Grant): Date {
  return grant.effectiveAt ?? grant.createdAt;
}

/**
 * A grant added to start later whose start has not been recorded yet (docs/units.md, "Grants that
 * start later"): its credits are in no balance, nothing draws them and it pays no debt.
 */
export function isUpcoming(grant: Grant): boolean {
  return grant.upcoming === true;
}

/** An upcoming grant whose start is at or before `t`: the next settlement starts it. */
export function startsBy(grant: Grant, t: Date): boolean {
  return grant.upcoming === true && grant.closedAt === null && (grant.effectiveAt?.getTime() ?? 0) <= t.getTime();
}
