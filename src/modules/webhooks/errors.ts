/** The error codes of webhook delivery (docs/notifications.md). */
export const WEBHOOK_ERROR_CODES = [
  "WEBHOOK_DELIVERY_FAILED",
  "WEBHOOK_ADDRESS_REFUSED",
] as const satisfies readonly WebhookErrorCode[];
/** A code of webhook delivery's errors. @public */
export type WebhookErrorCode = "WEBHOOK_DELIVERY_FAILED" | "WEBHOOK_ADDRESS_REFUSED";
