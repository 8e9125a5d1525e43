import * as z from "zod";
import type { DbManager } from "../db/types.js";
import { HttpError } from "../http/router.js";
import { NotificationType, UserId } from "../models/index.js";
import {
  endpointOf,
  newEndpointId,
  type WebhookEndpointRecord,
  type WebhookEndpointStore,
} from "../webhooks/endpoint-store.js";
import { deliveryUserId, retryFailedWebhooks, sendTestWebhook, WebhookEndpoint } from "../webhooks/queue.js";
import { generateWebhookSecret } from "../webhooks/sign.js";

/**
 * The admin routes of `serve` for webhook endpoints (docs/service.md, "Webhooks";
 * docs/notifications.md "Webhooks"), under `/admin/webhooks`, for admin credentials only (the
 * caller checks). The same operations as `credit-management webhooks`, on the same store.
 * Resolves to null for a path that is not theirs.
 */
export type WebhookRoutes = (request: Request) => Promise<Response | null>;

export const WEBHOOKS_PREFIX = "/admin/webhooks";

const Create = z.strictObject({
  url: z.string().max(2048),
  types: z.array(NotificationType).max(100).optional(),
  description: z.string().max(256).optional(),
  development: z.boolean().optional(),
});
const Update = z.strictObject({
  url: z.string().max(2048).optional(),
  types: z.array(NotificationType).max(100).nullable().optional(),
  description: z.string().max(256).nullable().optional(),
  enabled: z.boolean().optional(),
  development: z.boolean().optional(),
});
const Rotate = z.strictObject({ dropOld: z.boolean().optional() });
const Retry = z.strictObject({ userId: UserId, eventId: z.string().max(64).optional() });

const json = (status: number, body: unknown): Response =>
  new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });

/** An endpoint as the routes show it: everything but its secrets (their count). */
const shown = ({ secrets, ...r }: WebhookEndpointRecord) => ({ ...r, secrets: secrets.length });

async function body<S extends z.ZodType>(request: Request, schema: S): Promise<z.output<S>> {
  let value: unknown = {};
  const text = await request.text();
  if (text.trim() !== "") {
    try {
      value = JSON.parse(text);
    } catch {
      throw new HttpError(400, "VALIDATION_ERROR", "The body is not JSON.");
    }
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success)
    throw new HttpError(
      400,
      "VALIDATION_ERROR",
      parsed.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; "),
    );
  return parsed.data;
}

/** Checks an endpoint as `webhookQueue` would take it: https unless development, a known shape. */
function checked(record: WebhookEndpointRecord): WebhookEndpointRecord {
  const r = WebhookEndpoint.safeParse(endpointOf(record));
  if (!r.success) throw new HttpError(400, "VALIDATION_ERROR", r.error.issues.map((i) => i.message).join("; "));
  return record;
}

export function webhookRoutes(
  store: WebhookEndpointStore,
  db: DbManager,
  options: { allowNetworks?: readonly string[] } = {},
): WebhookRoutes {
  return async (request) => {
    const url = new URL(request.url);
    if (url.pathname !== WEBHOOKS_PREFIX && !url.pathname.startsWith(`${WEBHOOKS_PREFIX}/`)) return null;
    const [id, action, ...extra] = url.pathname
      .slice(WEBHOOKS_PREFIX.length + 1)
      .split("/")
      .filter((p) => p !== "");
    const method = request.method;
    const notAllowed = () => new HttpError(405, "METHOD_NOT_ALLOWED", `${method} is not allowed on ${url.pathname}.`);
    if (extra.length > 0) throw new HttpError(404, "NOT_FOUND", `No route for ${method} ${url.pathname}.`);
    if (id === undefined) {
      if (method === "GET") return json(200, { endpoints: (await store.list()).map(shown) });
      if (method !== "POST") throw notAllowed();
      const b = await body(request, Create);
      const record = checked({
        id: newEndpointId(),
        url: b.url,
        secrets: [generateWebhookSecret()],
        types: b.types ?? null,
        enabled: true,
        development: b.development ?? false,
        description: b.description ?? null,
        createdAt: new Date().toISOString(),
        disabledReason: null,
      });
      await store.put(record);
      return json(201, { endpoint: shown(record), secret: record.secrets[0] });
    }
    const record = await store.get(id);
    if (record === null) throw new HttpError(404, "NOT_FOUND", `No webhook endpoint ${id}.`);
    if (action === undefined) {
      if (method === "GET") return json(200, shown(record));
      if (method === "DELETE") {
        await store.remove(id);
        return new Response(null, { status: 204 });
      }
      if (method !== "PATCH") throw notAllowed();
      const b = await body(request, Update);
      const next = checked({
        ...record,
        ...(b.url === undefined ? {} : { url: b.url }),
        ...(b.types === undefined ? {} : { types: b.types }),
        ...(b.description === undefined ? {} : { description: b.description }),
        ...(b.development === undefined ? {} : { development: b.development }),
        ...(b.enabled === undefined ? {} : { enabled: b.enabled, disabledReason: b.enabled ? null : "by hand" }),
      });
      await store.put(next);
      return json(200, shown(next));
    }
    if (method !== "POST" && !(method === "GET" && action === "deliveries")) throw notAllowed();
    switch (action) {
      case "rotate-secret": {
        const b = await body(request, Rotate);
        if (b.dropOld === true) {
          await store.put({ ...record, secrets: record.secrets.slice(0, 1) });
          return json(200, { secrets: 1 });
        }
        const secret = generateWebhookSecret();
        await store.put({ ...record, secrets: [secret, ...record.secrets].slice(0, 3) });
        return json(200, { secret, secrets: Math.min(3, record.secrets.length + 1) });
      }
      case "test": {
        try {
          const r = await sendTestWebhook(endpointOf(record), { allowNetworks: options.allowNetworks });
          return json(200, {
            id: r.id,
            status: r.status,
            ok: r.status >= 200 && r.status < 300,
            body: r.body.slice(0, 200),
          });
        } catch (error) {
          return json(200, { ok: false, error: (error as Error).message });
        }
      }
      case "deliveries": {
        const user = UserId.safeParse(url.searchParams.get("userId"));
        if (!user.success) throw new HttpError(400, "VALIDATION_ERROR", "userId: the account whose deliveries to list");
        const rows = await db.listNotifications(deliveryUserId(id, user.data), { limit: 100 });
        return json(200, {
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
        });
      }
      case "retry": {
        const b = await body(request, Retry);
        return json(200, { retried: await retryFailedWebhooks(db, id, b.userId, b.eventId) });
      }
      default:
        throw new HttpError(404, "NOT_FOUND", `No route for ${method} ${url.pathname}.`);
    }
  };
}
