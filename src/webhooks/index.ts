export {
  webhookQueue,
  WebhookQueue,
  WebhookEndpoint,
  WebhookDeliveryError,
  sendTestWebhook,
  retryFailedWebhooks,
  type RetryOptions,
  type TestOptions,
  type WebhookQueueOptions,
} from "./queue.js";
export { generateWebhookSecret } from "./sign.js";
export { WebhookAddressError, type Lookup } from "./guard.js";
export {
  endpointOf,
  memoryEndpointStore,
  sqliteEndpointStore,
  postgresEndpointStore,
  mongoEndpointStore,
  type WebhookEndpointRecord,
  type WebhookEndpointStore,
} from "./endpoint-store.js";
