import diagnostics_channel from "node:diagnostics_channel";

/** The payments' channel (`DIAGNOSTICS_CHANNELS.webhook`, docs/observability.md). */
export const WEBHOOK_CHANNEL = "credit-management:webhook";

/** A payment provider's webhook, once handled. @public */
export interface WebhookMessage {
  /** The provider's name. */
  provider: string;
  /** `WebhookResult.outcome`, or `rejected` (bad signature, contradicting event: 400), or `failed`. */
  outcome: "credited" | "reversed" | "updated" | "duplicate" | "unchanged" | "ignored" | "rejected" | "failed";
  /** The event's type, when it was read. */
  eventType: string | null;
  /** Wall time of the handling, in milliseconds. */
  durationMs: number;
}

/** Publishes a `WebhookMessage` per webhook handled. */
export const webhookChannel = diagnostics_channel.channel(WEBHOOK_CHANNEL);
