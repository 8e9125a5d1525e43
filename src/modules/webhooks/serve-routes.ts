import * as z from "zod/mini";
import type { DbManager } from "../../core/db/types.js";
import { HttpError, type HttpMethod, type RouteDefinition } from "../../http/router.js";
import { rootRoute, type RouteFields } from "../../http/route-helpers.js";
import { NotificationStatus, NotificationType, UserId } from "../../core/models/index.js";
import {
  endpointOf,
  endpointProblem,
  newEndpoint,
  rotateSecret,
  type WebhookEndpointRecord,
  type WebhookEndpointStore,
  unknownType,
} from "./store.js";
import { deliveryUserId, retryFailedWebhooks, sendTestWebhook } from "./queue.js";

/**
 * The admin routes of `serve` for webhook endpoints (docs/service.md, "Webhooks";
 * docs/notifications.md "Webhooks"), under `/admin/webhooks`, admins only: the operations of
 * `credit-management webhooks` on the same store, as routes of the credit handler (validated by
 * their zod schemas, in its OpenAPI document).
 */
export const WEBHOOKS_PATH = "/admin/webhooks";

const Create = z.strictObject({
  url: z.string().check(z.maxLength(2048)),
  types: z.optional(z.array(NotificationType).check(z.maxLength(100))),
  description: z.optional(z.string().check(z.maxLength(256))),
  development: z.optional(z.boolean()),
});
const Update = z.strictObject({
  url: z.optional(z.string().check(z.maxLength(2048))),
  types: z.optional(z.nullable(z.array(NotificationType).check(z.maxLength(100)))),
  description: z.optional(z.nullable(z.string().check(z.maxLength(256)))),
  enabled: z.optional(z.boolean()),
  development: z.optional(z.boolean()),
});
const Rotate = z.strictObject({ dropOld: z.optional(z.boolean()) });
const Retry = z.strictObject({ userId: UserId, eventId: z.optional(z.string().check(z.maxLength(64))) });
const DeliveriesQuery = z.object({ userId: UserId });

const Endpoint = z.object({
  id: z.string(),
  url: z.string(),
  types: z.nullable(z.array(z.string())),
  enabled: z.boolean(),
  development: z.boolean(),
  description: z.nullable(z.string()),
  createdAt: z.string(),
  disabledReason: z.nullable(z.string()),
  secrets: z
    .number()
    .check(z.int(), z.describe("How many secrets sign each message (2 or 3 during a rotation); never the secrets")),
});
const Delivery = z.object({
  id: z.string(),
  eventId: z.nullable(z.string()),
  type: z.string(),
  status: NotificationStatus,
  attempts: z.number().check(z.int()),
  lastError: z.nullable(z.string()),
  nextAttemptAt: z.nullable(z.string()),
  createdAt: z.string(),
  settledAt: z.nullable(z.string()),
});

/** An endpoint as the routes show it: everything but its secrets (their count). */
const shown = ({ secrets, ...r }: WebhookEndpointRecord) => ({ ...r, secrets: secrets.length });

/**
 * Checks an endpoint as `webhookQueue` takes it (https unless development, a known shape), with
 * types among `known`.
 */
function checked(record: WebhookEndpointRecord, known: ReadonlySet<string>): WebhookEndpointRecord {
  const problem = endpointProblem(record);
  if (problem !== null) throw new HttpError(400, "VALIDATION_ERROR", problem);
  const unknown = unknownType(record.types, known);
  if (unknown !== null)
    throw new HttpError(400, "VALIDATION_ERROR", `types: "${unknown}" is not an event type (docs/events.md)`);
  return record;
}

export function webhookRoutes(
  store: WebhookEndpointStore,
  db: DbManager,
  options: {
    allowNetworks?: readonly string[];
    /** The notification types an endpoint may name (`publishedTypes()`). */
    types: ReadonlySet<string>;
  },
): RouteDefinition[] {
  const tags = ["webhooks"];
  const one = async (id: string | undefined): Promise<WebhookEndpointRecord> => {
    const record = id === undefined ? null : await store.get(id);
    if (record === null) throw new HttpError(404, "NOT_FOUND", `No webhook endpoint ${id}.`);
    return record;
  };
  /** An admin route at its own path, not under the credit API's admin base path. */
  const route = (method: HttpMethod, path: string, fields: RouteFields): RouteDefinition =>
    rootRoute(method, path, "admin", { tags, ...fields });
  return [
    route("GET", WEBHOOKS_PATH, {
      operationId: "listWebhookEndpoints",
      summary: "The webhook endpoints (without their secrets)",
      response: z.object({ endpoints: z.array(Endpoint) }),
      handle: async () => ({ endpoints: (await store.list()).map(shown) }),
    }),
    route("POST", WEBHOOKS_PATH, {
      operationId: "addWebhookEndpoint",
      summary: "Adds an endpoint; answers its secret (whsec_…), which the receiver verifies with",
      body: Create,
      status: 201,
      response: z.object({ endpoint: Endpoint, secret: z.string() }),
      handle: async (ctx) => {
        const b = await ctx.body<z.output<typeof Create>>();
        const record = checked(
          newEndpoint({
            url: b.url,
            types: b.types ?? null,
            development: b.development ?? false,
            description: b.description ?? null,
          }),
          options.types,
        );
        await store.put(record);
        return { endpoint: shown(record), secret: record.secrets[0] };
      },
    }),
    route("GET", `${WEBHOOKS_PATH}/:id`, {
      operationId: "getWebhookEndpoint",
      summary: "One endpoint",
      response: Endpoint,
      errors: [404],
      handle: async (ctx) => shown(await one(ctx.params.id)),
    }),
    route("PATCH", `${WEBHOOKS_PATH}/:id`, {
      operationId: "updateWebhookEndpoint",
      summary: "Changes an endpoint: enabled (turn it back on after a 410), url, types, description",
      body: Update,
      response: Endpoint,
      errors: [404],
      handle: async (ctx) => {
        const record = await one(ctx.params.id);
        const b = await ctx.body<z.output<typeof Update>>();
        const next = checked(
          {
            ...record,
            ...(b.url === undefined ? {} : { url: b.url }),
            ...(b.types === undefined ? {} : { types: b.types }),
            ...(b.description === undefined ? {} : { description: b.description }),
            ...(b.development === undefined ? {} : { development: b.development }),
            ...(b.enabled === undefined ? {} : { enabled: b.enabled, disabledReason: b.enabled ? null : "by hand" }),
          },
          options.types,
        );
        await store.put(next);
        return shown(next);
      },
    }),
    route("DELETE", `${WEBHOOKS_PATH}/:id`, {
      operationId: "removeWebhookEndpoint",
      summary: "Removes an endpoint (its pending deliveries then fail)",
      status: 204,
      errors: [404],
      handle: async (ctx) => {
        await one(ctx.params.id);
        await store.remove(ctx.params.id as string);
        return new Response(null, { status: 204 });
      },
    }),
    route("POST", `${WEBHOOKS_PATH}/:id/rotate-secret`, {
      operationId: "rotateWebhookSecret",
      summary: "A new secret, signed beside the previous one until dropOld keeps only the newest",
      body: Rotate,
      response: z.object({ secret: z.optional(z.string()), secrets: z.number().check(z.int()) }),
      errors: [404],
      handle: async (ctx) => {
        const record = await one(ctx.params.id);
        const b = await ctx.body<z.output<typeof Rotate>>();
        const next = rotateSecret(record, b.dropOld === true);
        await store.put(next);
        return b.dropOld === true ? { secrets: 1 } : { secret: next.secrets[0], secrets: next.secrets.length };
      },
    }),
    route("POST", `${WEBHOOKS_PATH}/:id/test`, {
      operationId: "testWebhookEndpoint",
      summary: "Sends a signed webhook_test event now and answers what the endpoint said",
      response: z.object({
        ok: z.boolean(),
        id: z.optional(z.string()),
        status: z.optional(z.number().check(z.int())),
        body: z.optional(z.string()),
        error: z.optional(z.string()),
      }),
      errors: [404],
      handle: async (ctx) => {
        const record = await one(ctx.params.id);
        try {
          const r = await sendTestWebhook(endpointOf(record), { allowNetworks: options.allowNetworks });
          return { ok: r.status >= 200 && r.status < 300, id: r.id, status: r.status, body: r.body.slice(0, 200) };
        } catch (error) {
          return { ok: false, error: (error as Error).message };
        }
      },
    }),
    route("GET", `${WEBHOOKS_PATH}/:id/deliveries`, {
      operationId: "listWebhookDeliveries",
      summary: "An account's deliveries to the endpoint (oldest first, at most 100): status, attempts, last error",
      query: DeliveriesQuery,
      response: z.object({ deliveries: z.array(Delivery) }),
      errors: [404],
      handle: async (ctx) => {
        const record = await one(ctx.params.id);
        const { userId } = ctx.query<z.output<typeof DeliveriesQuery>>();
        const rows = await db.listNotifications(deliveryUserId(record.id, userId), { limit: 100 });
        return {
          deliveries: rows.map((r) => ({
            id: r.id,
            eventId: (r.payload as { event?: { id?: string } }).event?.id ?? null,
            type: r.type,
            status: r.status,
            attempts: r.attempts,
            lastError: r.lastError,
            nextAttemptAt: r.status === "pending" ? r.nextAttemptAt.toISOString() : null,
            createdAt: r.createdAt.toISOString(),
            settledAt: r.settledAt?.toISOString() ?? null,
          })),
        };
      },
    }),
    route("POST", `${WEBHOOKS_PATH}/:id/retry`, {
      operationId: "retryWebhookDeliveries",
      summary: "Delivers an account's failed deliveries to the endpoint again (same webhook-id)",
      body: Retry,
      response: z.object({ retried: z.number().check(z.int()) }),
      errors: [404],
      handle: async (ctx) => {
        const record = await one(ctx.params.id);
        const b = await ctx.body<z.output<typeof Retry>>();
        return { retried: await retryFailedWebhooks(db, record.id, b.userId, b.eventId) };
      },
    }),
  ];
}
