export {
  webhookQueue,
  WebhookQueue,
  WebhookEndpoint,
  WebhookDeliveryError,
  DEFAULT_RETRY_SCHEDULE,
  deliveryUserId,
  sendTestWebhook,
  retryFailedWebhooks,
  type RetryOptions,
  type TestOptions,
  type WebhookQueueOptions,
} from "./queue.js";
export { generateWebhookSecret, signWebhook, webhookHeaders } from "./sign.js";
export { WebhookAddressError, addressProblem, type Lookup } from "./guard.js";
export {
  endpointOf,
  newEndpointId,
  memoryEndpointStore,
  sqliteEndpointStore,
  postgresEndpointStore,
  mongoEndpointStore,
  ENDPOINT_TABLE,
  type WebhookEndpointRecord,
  type WebhookEndpointStore,
} from "./endpoint-store.js";
