import type { TrialCredits } from "../models/index.js";
import { SYSTEM_KEY_PREFIX } from "../models/common.js";
import type { AccountWork } from "./account-work.js";

const DAY_MS = 86_400_000;

/** The idempotency key of a user's trial grant, in the library's own `cm:` namespace. */
export const trialKey = (userId: string): string => `${SYSTEM_KEY_PREFIX}trial:${userId}`;

/**
 * Grants the trial credits to an account this unit of work creates. "First created" is the
 * store's own insert: the unit of work loaded no account row (`work.isNew`), and saving it inserts
 * one, which every store guards (a second unit of work that raced to create the same account fails
 * its insert and runs again, now seeing the account). An account that existed — even at balance
 * zero, even from before trial credits were configured — never gets them. The entry's key
 * (`cm:trial:<userId>`) is unique per user as a second guard.
 */
export function grantTrial(work: AccountWork, trial: TrialCredits): void {
  if (!work.isNew) return;
  const expiresAt =
    trial.expiresInDays === undefined ? null : new Date(work.now.getTime() + trial.expiresInDays * DAY_MS);
  work.add(
    trial.amount,
    {
      expiresAt,
      priority: trial.priority ?? 0,
      source: "trial",
      sourceRef: null,
      description: trial.description ?? null,
      metadata: trial.metadata ?? null,
    },
    {
      idempotencyKey: trialKey(work.userId),
      description: trial.description,
      metadata: trial.metadata,
      unit: trial.unit ?? null,
    },
  );
}
