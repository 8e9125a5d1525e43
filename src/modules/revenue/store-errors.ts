import { ConflictError } from "../../core/errors.js";

/**
 * The refusal of a close whose `through` is not after the latest close's (docs/revenue.md,
 * "Closing a month"): closes only move forward.
 */
export function closeGoesBack(store: string, through: Date, latest: Date): ConflictError {
  return new ConflictError(
    `[credit-management] [${store}] closePeriod: through ${through.toISOString()} is not after the latest close's, ${latest.toISOString()}: closes only move forward`,
    { through: through.toISOString(), latest: latest.toISOString() },
  );
}
