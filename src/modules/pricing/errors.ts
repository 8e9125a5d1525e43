import { CreditError } from "../../core/errors.js";

/** The error codes of the pricing module and the metering of model calls (docs/llm-metering.md). */
export const PRICING_ERROR_CODES = [
  "UNKNOWN_MODEL",
  "RUN_BUDGET_EXCEEDED",
] as const satisfies readonly PricingErrorCode[];
/** A code of the pricing module's errors. @public */
export type PricingErrorCode = "UNKNOWN_MODEL" | "RUN_BUDGET_EXCEEDED";

/**
 * Usage of a model the price book does not price, and the book has no `default`: refused, never
 * billed as free (docs/llm-metering.md). Nothing was changed.
 * @public
 */
export class UnknownModelError extends CreditError<"UNKNOWN_MODEL"> {
  /** An error for a model the price book has no rates for. */
  constructor(model: string, provider: string | undefined, priceBook: string) {
    super(
      "UNKNOWN_MODEL",
      422,
      `No price for model "${model}"${provider === undefined ? "" : ` of provider "${provider}"`} in price book ${priceBook}: add it to the book, or give the book a \`default\` to bill unknown models.`,
      { details: { model, ...(provider === undefined ? {} : { provider }), priceBook } },
    );
  }
}

/**
 * A model call would take a run past its `maxRunCredits` (the AI SDK middleware,
 * docs/llm-metering.md): refused before the provider is called. `details.requested` is the call's
 * hold, `details.maxRunCredits` the cap, `details.charged` and `details.held` what the run's earlier
 * calls were charged and still hold, `details.remaining` what is left. HTTP 402. Nothing was changed.
 * @public
 */
export class RunBudgetExceededError extends CreditError<"RUN_BUDGET_EXCEEDED"> {
  /** An error for a run of calls beyond its budget. */
  constructor(details: { requested: number; maxRunCredits: number; charged: number; held: number; remaining: number }) {
    super(
      "RUN_BUDGET_EXCEEDED",
      402,
      `This run may spend at most ${details.maxRunCredits} credits: ${details.remaining} remain, the next model call needs ${details.requested}.`,
      { details },
    );
  }
}
