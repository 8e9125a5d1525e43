/** The error codes of webhook delivery (docs/notifications.md). */
export const WEBHOOK_ERROR_CODES = ["WEBHOOK_DELIVERY_FAILED", "WEBHOOK_ADDRESS_REFUSED"] as const;
/** A code of webhook delivery's errors. */
export type WebhookErrorCode = (typeof WEBHOOK_ERROR_CODES)[number];
