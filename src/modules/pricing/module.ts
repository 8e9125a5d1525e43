import type { CreditModule } from "../../core/module.js";
import { PRICING_ERROR_CODES } from "./errors.js";

/** The pricing module (docs/llm-metering.md) as a `CreditModule`: its error codes. */
export function pricingModule(): CreditModule {
  return { id: "pricing", errorCodes: PRICING_ERROR_CODES };
}
