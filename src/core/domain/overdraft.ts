import type { EntryMeta } from "./account-work.js";

/**
 * The overdraft rules of docs/concepts.md ("Overdraft and debt"), as pure functions: a charge of
 * usage already delivered may take `available` below zero, down to −`overdraftLimit` (no limit:
 * unbounded). Metering charges what the limit allows instead of refusing a call already served
 * (docs/metering.md), and records what it could not charge.
 */

/**
 * The most an after-service charge may take from an account with `available` credits: what keeps
 * available ≥ −`overdraftLimit`, never below zero (an account already past its limit, after the
 * limit was lowered, has none); unbounded without a limit.
 */
export function headroom(available: number, overdraftLimit: number | null): number {
  return overdraftLimit === null ? Infinity : Math.max(0, available + overdraftLimit);
}

/** What a charge of `requested` credits takes when only `headroom` is allowed (0: nothing). */
export function chargeWithinLimit(requested: number, headroom: number): number {
  return Math.min(requested, headroom);
}

/**
 * What a commit of `requested` credits on a hold of `held` captures when only `headroom` is
 * allowed beyond the hold: the hold is always the caller's, the excess only up to the headroom.
 */
export function commitWithinLimit(requested: number, held: number, headroom: number): number {
  return Math.min(requested, held + headroom);
}

/**
 * The meta of a charge the overdraft limit cut from `requested` to `charge`: its metadata adds
 * `requested` (what was asked, for the reader); unchanged when nothing was cut. What was served and
 * not paid is the entry's own `shortfall`, which the charge records (`AccountWork.deductUpToLimit`,
 * `commitUpToLimit`): never a metadata key (docs/metering.md, "Served and not paid").
 */
export function requestedMeta(meta: EntryMeta, requested: number, charge: number): EntryMeta {
  return charge === requested ? meta : { ...meta, metadata: { ...meta.metadata, requested } };
}
