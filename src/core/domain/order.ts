import type { Grant } from "../models/index.js";

/**
 * Burn-down order: lower priority number first, then soonest expiry (never-expiring last), then
 * oldest, then id (so every backend agrees on ties). The order Stripe credit grants, Metronome
 * and OpenMeter use.
 * @beta
 */
export function compareGrants(a: Grant, b: Grant): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  const ea = a.expiresAt === null ? Infinity : a.expiresAt.getTime();
  const eb = b.expiresAt === null ? Infinity : b.expiresAt.getTime();
  if (ea !== eb) return ea < eb ? -1 : 1;
  const ca = a.createdAt.getTime();
  const cb = b.createdAt.getTime();
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

/** A grant credits can be drawn from at `now`: open, unspent and not past its expiry. */
export function isUsable(grant: Grant, now: Date): boolean {
  return (
    grant.remaining > 0 &&
    grant.closedAt === null &&
    (grant.expiresAt === null || grant.expiresAt.getTime() > now.getTime())
  );
}

/** A grant whose unspent credits are due to expire at `now`. */
export function isDue(grant: Grant, now: Date): boolean {
  return grant.closedAt === null && grant.expiresAt !== null && grant.expiresAt.getTime() <= now.getTime();
}
