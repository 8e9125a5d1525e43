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
} from "./queue.js";
export { generateWebhookSecret } from "./sign.js";
export { WebhookAddressError, type Lookup, type LookupCallback } from "./guard.js";
export {
  endpointOf,
  memoryEndpointStore,
  sqliteEndpointStore,
  postgresEndpointStore,
  mongoEndpointStore,
  type WebhookEndpointRecord,
  type WebhookEndpointStore,
  type MongoCollectionLike,
} from "./endpoint-store.js";
export type { PgPoolLike, SqliteLike } from "./own-sql.js";
export type { PostResult } from "./http.js";
