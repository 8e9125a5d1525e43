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
  type ParsedWebhookEndpoint,
} from "../modules/webhooks/queue.js";
export { generateWebhookSecret } from "../modules/webhooks/queue-sign.js";
export { WebhookAddressError, type Lookup, type LookupCallback } from "../modules/webhooks/queue-guard.js";
export type { WebhookErrorCode } from "../modules/webhooks/errors.js";
export {
  memoryEndpointStore,
  sqliteEndpointStore,
  postgresEndpointStore,
  mongoEndpointStore,
  type WebhookEndpointRecord,
  type WebhookEndpointStore,
  type MongoCollectionLike,
} from "../modules/webhooks/store.js";
export type { PgPoolLike, SqliteLike } from "../modules/webhooks/store-sql.js";
export type { PostResult } from "../modules/webhooks/queue-http.js";
