/**
 * The window of late usage (docs/usage.md, "Late usage"): how far back a deduction may say its usage
 * happened (`occurredAt`), decided against the unit of work's clock. Pure: no I/O.
 */
import { LateUsageError } from "../errors.js";

const DAY_MS = 86_400_000;
/**
 * How far ahead of the manager's clock an `occurredAt` may be and still count as now: the clocks of
 * the machines that report usage and of the one that records it never agree exactly.
 */
export const CLOCK_SKEW_MS = 60_000;

/**
 * The `occurredAt` to record for usage said to have happened at `occurredAt`, recorded at `now`:
 * itself when it is before now and at most `windowDays` days before it; undefined (the usage is
 * on time: the entry gets none) when it is now or up to a minute ahead. Refused with a
 * `LateUsageError` when it is older than the window or later than that minute.
 */
export function lateOccurredAt(occurredAt: Date, now: Date, windowDays: number): Date | undefined {
  const at = occurredAt.getTime();
  const t = now.getTime();
  const earliest = new Date(t - windowDays * DAY_MS);
  if (at > t + CLOCK_SKEW_MS)
    throw new LateUsageError(
      `Invalid occurredAt: ${occurredAt.toISOString()} is in the future (now is ${now.toISOString()})`,
      occurredAt,
      earliest,
    );
  if (at >= t) return undefined;
  if (at < earliest.getTime())
    throw new LateUsageError(
      `Invalid occurredAt: ${occurredAt.toISOString()} is more than ${windowDays} days ago, the late-usage window (lateUsageWindowDays); the earliest accepted now is ${earliest.toISOString()}`,
      occurredAt,
      earliest,
    );
  return occurredAt;
}
