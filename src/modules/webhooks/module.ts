import type { CreditModule } from "../../core/module.js";
import { WEBHOOK_ERROR_CODES } from "./errors.js";

/** Webhook delivery (docs/notifications.md) as a `CreditModule`: its error codes. */
export function webhooksModule(): CreditModule {
  return { id: "webhooks", errorCodes: WEBHOOK_ERROR_CODES };
}
