import type { Logger } from "../../core/logger.js";
import { moduleRegistry } from "../../core/module.js";
import { billingModule } from "../billing/module.js";
import type { DbManager } from "../../core/db/types.js";
import type { NotificationQueue } from "../../core/queue/index.js";
import { allowedNetworks, openEndpointStore } from "../../serve/store.js";
import { endpointOf, type WebhookEndpointStore } from "./store.js";
import { webhookQueue, type WebhookQueue } from "./queue.js";
import type { Env, ServeSettings } from "../../serve/settings.js";
import type { RouteDefinition } from "../../http/router.js";
import { webhookRoutes } from "./serve-routes.js";

/** The notification types `serve` publishes: the core's and its modules'. */
export function publishedTypes(): ReadonlySet<string> {
  return moduleRegistry([billingModule()]).notificationTypes;
}

/**
 * `serve` or `credit-management worker` with `CREDIT_WEBHOOKS=on` (docs/service.md): the endpoint
 * store (the endpoints of `credit-management webhooks`, read again every few seconds:
 * docs/notifications.md), the admin routes under `/admin/webhooks` (`serve` only), and the queue
 * its manager records every event for (delivered by `--worker` or a `credit-management worker`
 * with `CREDIT_WEBHOOKS=on`).
 */
export async function serveWebhooks(
  db: DbManager,
  storeSettings: ServeSettings["store"],
  env: Env,
  logger: Logger,
  /** Where each event goes besides the endpoints (the worker's Redis stream with `--worker`). */
  next?: NotificationQueue,
): Promise<{ routes: RouteDefinition[]; queue: WebhookQueue; store: WebhookEndpointStore; close(): Promise<void> }> {
  const store = await openEndpointStore(storeSettings);
  await store.init();
  const allowNetworks = allowedNetworks(env);
  const queue = webhookQueue({
    db,
    endpoints: async () => (await store.list()).map(endpointOf),
    next,
    allowNetworks,
    logger,
    onDisabled: async (id) => {
      const r = await store.get(id);
      if (r !== null) await store.put({ ...r, enabled: false, disabledReason: "410 Gone" });
    },
  });
  return {
    routes: webhookRoutes(store, db, { allowNetworks, types: publishedTypes() }),
    queue,
    store,
    async close() {
      await queue.close();
      await store.close();
    },
  };
}
