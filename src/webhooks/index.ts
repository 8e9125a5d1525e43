export {
  webhookQueue,
  WebhookQueue,
  WebhookEndpoint,
  WebhookDeliveryError,
  DEFAULT_RETRY_SCHEDULE,
  deliveryUserId,
  type WebhookQueueOptions,
} from "./queue.js";
export { generateWebhookSecret, signWebhook, webhookHeaders } from "./sign.js";
export { WebhookAddressError, addressProblem, type Lookup } from "./guard.js";
