import type { WebhookErrorCode } from "./errors.js";
import { createHash } from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import type { BlockList } from "node:net";
import * as z from "zod/mini";
import type { NotificationStore } from "../../core/db/types-notifications.js";
import { newNotification, notificationId } from "../../core/domain/notifications.js";
import type { Logger } from "../../core/logger.js";
import { NotificationType, parse } from "../../core/models/index.js";
import { eventEnvelope, type NotificationMessage, type NotificationQueue } from "../../core/queue/index.js";
import { CreditError } from "../../core/errors.js";
import { allowList, WebhookAddressError, type Lookup } from "./queue-guard.js";
import { postWebhook, WebhookTimeoutError, type PostResult } from "./queue-http.js";
import { secretKey, webhookHeaders } from "./queue-sign.js";

/**
 * Webhooks out (docs/notifications.md, "Webhooks"): a `NotificationQueue` that POSTs every outbox
 * event to the endpoints that want it, signed as Standard Webhooks.
 *
 * How it keeps the outbox's guarantees per endpoint: publishing an event writes one **delivery
 * row** per matching endpoint into the outbox itself (`insertNotifications`, deduplicated by the
 * event's id, so a redelivered event writes nothing new), under an outbox user of its own per
 * endpoint and account (`webhook:<endpoint>:<userId>`). The dispatcher then delivers those rows
 * like any other: claimed with a lease, at least once, in order per account and endpoint, retried
 * on the schedule this queue gives (`retryAfterMs` on the error it throws), `failed` at its end
 * and kept. A worker killed at any point loses nothing: the event row stays pending until its
 * delivery rows are stored, and a delivery row until its endpoint answered 2xx. One endpoint's
 * failures hold back only its own rows.
 */

const EndpointId = z
  .string()
  .check(z.regex(/^[A-Za-z0-9_-]{1,64}$/, { error: "an endpoint id is 1 to 64 letters, digits, _ or -" }));
const Secret = z
  .string()
  .check(z.refine((s) => secretKey(s) !== null, { error: "a secret is whsec_ and the base64 of 24 to 64 bytes" }));

/** A webhook endpoint: its id, its URL, its signing secrets and the event types it receives (docs/notifications.md). @public */
export const WebhookEndpoint = z
  .strictObject({
    /** Names the endpoint in delivery rows, logs and the admin routes. */
    id: EndpointId,
    /** Where events are POSTed: `https://…` (`http://` only with `development`). No user or password in it. */
    url: z.url({ protocol: /^https?$/, error: "url must be an http(s) URL" }),
    /** `whsec_…`; several while a secret is rotated (each message carries a signature per secret). */
    secret: z.union([Secret, z.array(Secret).check(z.minLength(1), z.maxLength(5))]),
    /** Event types the endpoint gets; absent or empty: all. */
    types: z.optional(z.array(NotificationType).check(z.maxLength(100))),
    /** False: no new deliveries are written for it, and its pending ones fail. Default true. */
    enabled: z.optional(z.boolean()),
    /** Allows `http://` (for a receiver on a development machine). Default false. */
    development: z.optional(z.boolean()),
  })
  .check(
    z.superRefine((e, ctx) => {
      // Zod runs this even when `url` failed its own check: a text that is no URL has its issue then.
      if (!URL.canParse(e.url)) return;
      const url = new URL(e.url);
      if (url.protocol !== "https:" && e.development !== true)
        ctx.addIssue({
          code: "custom",
          path: ["url"],
          message: "url must be https:// (http:// only for an endpoint marked development)",
        });
      if (url.username !== "" || url.password !== "")
        ctx.addIssue({ code: "custom", path: ["url"], message: "url must not carry a user or password" });
    }),
  );
/** A webhook endpoint: its id, its URL, its signing secrets and the event types it receives (docs/notifications.md). @public */
export type WebhookEndpoint = z.input<typeof WebhookEndpoint>;

/**
 * The default retry schedule: the waits after each failed attempt, in ms (about 3 days in all,
 * 10 attempts, each wait ±10%): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 20 h.
 */
export const DEFAULT_RETRY_SCHEDULE: readonly number[] = [
  5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 50_400_000, 72_000_000, 72_000_000,
];

/** Options of `webhookQueue()`: the endpoints, the retries, the address guard, the clock and the logger. @public */
export interface WebhookQueueOptions {
  /** The store whose outbox the manager uses: delivery rows are written to it. */
  db: NotificationStore;
  /** The endpoints, or a function that reads them (called again after `refreshMs`, and by `refresh()`). */
  endpoints: readonly WebhookEndpoint[] | (() => Promise<readonly WebhookEndpoint[]>);
  /** Longest wait for an endpoint's answer (connection, TLS, status and body), in ms. Default 10,000. */
  timeoutMs?: number;
  /** Waits after each failed attempt, in ms; attempts = length + 1. Default `DEFAULT_RETRY_SCHEDULE`. */
  retrySchedule?: readonly number[];
  /** Each wait varies by ± this fraction of it. Default 0.1. */
  jitter?: number;
  /** How long the endpoints read by a function are kept, in ms. Default 5,000. */
  refreshMs?: number;
  /**
   * Networks endpoints may reach although private, loopback or link-local (CIDR: `10.1.0.0/16`,
   * `127.0.0.1/32`). Default none.
   */
  allowNetworks?: readonly string[];
  /** Resolves names (default `dns.lookup`): every address it gives is checked. For tests. */
  lookup?: Lookup;
  /**
   * After an endpoint did not answer within `timeoutMs`, its deliveries are not sent for this long,
   * in ms (each fails at once and waits its turn in the schedule; the last attempt is always sent),
   * then one is sent as a probe: a hung endpoint costs the dispatcher's rounds at most one time-out
   * per cool-off, not one per delivery. Default 60,000.
   */
  coolOffMs?: number;
  /** Bytes of an answer read (the rest is dropped). Default 4,096. */
  maxResponseBytes?: number;
  /** An endpoint answered 410 Gone: it is disabled here; persist that (the CLI and `serve` do). */
  onDisabled?: (endpointId: string) => void | Promise<void>;
  /** Events also go to this queue (before the deliveries are written): Redis, NATS, a callback. Not closed by `close()`. */
  next?: NotificationQueue;
  /** Where failed deliveries are logged. */
  logger?: Logger;
  /** Source of "now". Default `() => new Date()`. */
  clock?: () => Date;
  /** Random numbers in [0, 1) for the jitter. */
  random?: () => number;
}

const Options = z.object({
  timeoutMs: z.optional(z.number().check(z.int(), z.minimum(100), z.maximum(120_000))),
  retrySchedule: z.optional(
    z.array(z.number().check(z.int(), z.minimum(0), z.maximum(7 * 86_400_000))).check(z.maxLength(50)),
  ),
  jitter: z.optional(z.number().check(z.minimum(0), z.maximum(1))),
  refreshMs: z.optional(z.number().check(z.int(), z.minimum(0), z.maximum(3_600_000))),
  allowNetworks: z.optional(z.array(z.string()).check(z.maxLength(100))),
  maxResponseBytes: z.optional(z.number().check(z.int(), z.minimum(0), z.maximum(1_048_576))),
  coolOffMs: z.optional(z.number().check(z.int(), z.minimum(0), z.maximum(86_400_000))),
});

/** A `WebhookEndpoint` as parsed: its defaults filled in (`queue.endpoints()`). @public */
export type ParsedWebhookEndpoint = z.output<typeof WebhookEndpoint>;

/** A delivery row's payload: the event and whom it goes to. */
interface DeliveryPayload {
  webhook: { endpointId: string; userId: string };
  event: ReturnType<typeof eventEnvelope>;
}

const PREFIX = "webhook:";

/** The outbox user of an account's deliveries to one endpoint: one per pair, so each is in order on its own. */
export function deliveryUserId(endpointId: string, userId: string): string {
  const plain = `${PREFIX}${endpointId}:${userId}`;
  return plain.length <= 256 ? plain : `${PREFIX}${endpointId}:#${createHash("sha256").update(userId).digest("hex")}`;
}

function deliveryOf(message: NotificationMessage): DeliveryPayload | null {
  if (!message.userId.startsWith(PREFIX)) return null;
  const p = message.payload as Partial<DeliveryPayload>;
  if (typeof p.webhook?.endpointId !== "string" || typeof p.event !== "object" || p.event === null) return null;
  return p as DeliveryPayload;
}

/** A failed attempt, as the dispatcher reads it (`NotificationQueue.publish`). @public */
export class WebhookDeliveryError extends CreditError<WebhookErrorCode> {
  /** An error for a delivery the endpoint refused or did not answer. */
  constructor(
    message: string,
    /** When to try again; undefined with `final`. */
    readonly retryAfterMs: number | undefined,
    /** No more attempts: the row is failed (kept for a manual retry). */
    readonly final: boolean,
    /** The endpoint's answer, when there was one. */
    readonly endpointStatus?: number,
  ) {
    super("WEBHOOK_DELIVERY_FAILED", 502, message);
  }
}

/** Webhooks out as a `NotificationQueue` (see the module comment and docs/notifications.md). @public */
export class WebhookQueue implements NotificationQueue {
  private readonly db: NotificationStore;
  private readonly source: WebhookQueueOptions["endpoints"];
  private readonly timeoutMs: number;
  private readonly schedule: readonly number[];
  private readonly jitter: number;
  private readonly refreshMs: number;
  private readonly allow: BlockList | null;
  private readonly maxResponseBytes: number;
  private readonly coolOffMs: number;
  /** Endpoints that last did not answer in time: until when their deliveries are held back, and whether a probe is out. */
  private readonly slow = new Map<string, { until: number; probing: boolean }>();
  private readonly options: WebhookQueueOptions;
  private readonly agents = {
    http: new http.Agent({ keepAlive: true, maxSockets: 16 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 16 }),
  };
  private cache: { at: number; endpoints: Map<string, ParsedWebhookEndpoint> } | null = null;
  private loading: Promise<Map<string, ParsedWebhookEndpoint>> | null = null;
  /** Endpoints that answered 410 here (until the endpoints read again say otherwise). */
  private readonly gone = new Set<string>();

  /** A queue that signs each message and posts it to the endpoints. */
  constructor(options: WebhookQueueOptions) {
    const o = parse(Options, options, "webhook queue options");
    this.options = options;
    this.db = options.db;
    this.source = options.endpoints;
    this.timeoutMs = o.timeoutMs ?? 10_000;
    this.schedule = o.retrySchedule ?? DEFAULT_RETRY_SCHEDULE;
    this.jitter = o.jitter ?? 0.1;
    this.refreshMs = o.refreshMs ?? 5000;
    this.maxResponseBytes = o.maxResponseBytes ?? 4096;
    this.coolOffMs = o.coolOffMs ?? 60_000;
    this.allow = allowOf(o.allowNetworks);
    if (typeof options.endpoints !== "function")
      this.cache = { at: Infinity, endpoints: this.check(options.endpoints) };
  }

  private check(list: readonly WebhookEndpoint[]): Map<string, ParsedWebhookEndpoint> {
    const map = new Map<string, ParsedWebhookEndpoint>();
    list.forEach((e, i) => {
      const endpoint = parse(WebhookEndpoint, e, `endpoints[${i}]`);
      map.set(endpoint.id, endpoint);
    });
    return map;
  }

  /** The endpoints, read again when `refreshMs` passed (or `refresh()` was called). */
  async endpoints(): Promise<Map<string, ParsedWebhookEndpoint>> {
    const now = Date.now();
    if (this.cache !== null && now - this.cache.at < this.refreshMs) return this.cache.endpoints;
    if (this.cache !== null && this.cache.at === Infinity) return this.cache.endpoints;
    this.loading ??= (async () => {
      try {
        const endpoints = this.check(await (this.source as () => Promise<readonly WebhookEndpoint[]>)());
        this.cache = { at: Date.now(), endpoints };
        for (const [id, e] of endpoints) if (e.enabled === true) this.gone.delete(id);
        return endpoints;
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  /** Reads the endpoints again at the next message (after an endpoint was added, changed or removed). */
  refresh(): void {
    if (this.cache !== null && this.cache.at !== Infinity) this.cache.at = -Infinity;
  }

  /** Posts the message to each endpoint that receives its type. */
  async publish(message: NotificationMessage): Promise<void> {
    const delivery = deliveryOf(message);
    if (delivery === null) return this.fanOut(message);
    return this.deliver(message, delivery);
  }

  /** An event: to `next`, then one delivery row per endpoint that wants it (a redelivery adds none). */
  private async fanOut(message: NotificationMessage): Promise<void> {
    if (this.options.next !== undefined) await this.options.next.publish(message);
    const endpoints = await this.endpoints();
    const event = eventEnvelope(message);
    const now = this.options.clock?.() ?? new Date();
    const rows = [];
    for (const e of endpoints.values()) {
      if (e.enabled === false || this.gone.has(e.id)) continue;
      if (e.types !== undefined && e.types.length > 0 && !e.types.includes(message.type)) continue;
      const payload: DeliveryPayload = { webhook: { endpointId: e.id, userId: message.userId }, event };
      rows.push(
        newNotification(
          deliveryUserId(e.id, message.userId),
          message.type,
          payload as never,
          now,
          message.id,
          event.version,
        ),
      );
    }
    if (rows.length > 0) await this.db.insertNotifications(rows);
  }

  private wait(attempt: number): number | undefined {
    const base = this.schedule[attempt - 1];
    if (base === undefined) return undefined;
    const r = this.options.random?.() ?? Math.random();
    return Math.round(base * (1 - this.jitter + 2 * this.jitter * r));
  }

  /** One attempt of a delivery row: resolves on a 2xx, else throws when (and whether) to try again. */
  private async deliver(message: NotificationMessage, d: DeliveryPayload): Promise<void> {
    const id = d.webhook.endpointId;
    const fail = (reason: string, status?: number, final = false): never => {
      const after = final ? undefined : this.wait(message.attempt);
      throw new WebhookDeliveryError(
        `webhook ${id}: ${reason}${after === undefined ? " (no more attempts)" : ""}`,
        after,
        after === undefined,
        status,
      );
    };
    const endpoint = (await this.endpoints()).get(id);
    if (endpoint === undefined) return fail("the endpoint was removed", undefined, true);
    if (endpoint.enabled === false || this.gone.has(id)) return fail("the endpoint is disabled", undefined, true);
    const slow = this.slow.get(id);
    const last = this.schedule[message.attempt - 1] === undefined;
    if (slow !== undefined && !last && (slow.probing || Date.now() < slow.until)) {
      return fail(
        `not sent: the endpoint did not answer in time lately (cool-off until ${new Date(slow.until).toISOString()})`,
      );
    }
    if (slow !== undefined) slow.probing = true;
    const body = JSON.stringify(d.event);
    const headers = signedHeaders(endpoint, d.event.id, this.options.clock?.() ?? new Date(), body);
    let result: PostResult;
    try {
      result = await postWebhook(new URL(endpoint.url), headers, body, {
        timeoutMs: this.timeoutMs,
        maxResponseBytes: this.maxResponseBytes,
        allow: this.allow,
        lookup: this.options.lookup,
        agents: this.agents,
      });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      if (error instanceof WebhookTimeoutError)
        this.slow.set(id, { until: Date.now() + this.coolOffMs, probing: false });
      else this.slow.delete(id);
      // A refused address is the endpoint's configuration: retried like any failure (it may be fixed).
      return fail(error instanceof WebhookAddressError ? `refused: ${reason}` : reason);
    }
    this.slow.delete(id);
    if (result.status >= 200 && result.status < 300) return;
    if (result.status === 410) {
      this.gone.add(id);
      this.options.logger?.warn({ endpointId: id }, "credit-management: webhook endpoint answered 410 Gone: disabled");
      await this.options.onDisabled?.(id);
      return fail("the endpoint answered 410 Gone and is now disabled", 410, true);
    }
    const text = result.body.replace(/\s+/g, " ").trim().slice(0, 200);
    return fail(
      result.status >= 300 && result.status < 400
        ? `answered ${result.status} (redirects are not followed)`
        : `answered ${result.status}${text === "" ? "" : `: ${text}`}`,
      result.status,
    );
  }

  /** Closes the HTTP connections the queue keeps open. */
  async close(): Promise<void> {
    this.agents.http.destroy();
    this.agents.https.destroy();
  }
}

/** `new WebhookQueue(options)`: see it, and docs/notifications.md "Webhooks". @public */
export function webhookQueue(options: WebhookQueueOptions): WebhookQueue {
  return new WebhookQueue(options);
}

/** Options of `sendTestWebhook()`. @public */
export interface TestOptions {
  /** Networks the endpoint may be in, private ones included. */
  allowNetworks?: readonly string[];
  /** How long the request may take, in milliseconds. */
  timeoutMs?: number;
  /** The DNS lookup used to check the endpoint's address. */
  lookup?: Lookup;
}

/** The networks let through the address guard (`allowNetworks`), or null when none are. */
function allowOf(networks: readonly string[] | undefined): BlockList | null {
  return networks === undefined || networks.length === 0 ? null : allowList(networks);
}

/** The headers of one delivery of `body` to `endpoint`, signed at `now` with each of its secrets. */
function signedHeaders(endpoint: Pick<WebhookEndpoint, "secret">, id: string, now: Date, body: string) {
  const secrets = Array.isArray(endpoint.secret) ? endpoint.secret : [endpoint.secret];
  return webhookHeaders(secrets, id, Math.floor(now.getTime() / 1000), body);
}

/**
 * Sends one signed test event (`type: "webhook_test"`, a fresh id, not stored) to `endpoint`, with
 * the same checks as a delivery (`credit-management webhooks test`). Resolves to the endpoint's
 * status and the start of its answer; rejects when it could not be sent (a refused address, no
 * answer in time).
 * @public
 */
export async function sendTestWebhook(
  endpoint: WebhookEndpoint,
  options: TestOptions = {},
): Promise<PostResult & { id: string }> {
  const e = parse(WebhookEndpoint, endpoint, "endpoint");
  const allow = allowOf(options.allowNetworks);
  const now = new Date();
  const id = `test_${notificationId(now)}`;
  const body = JSON.stringify({
    type: "webhook_test",
    version: 1,
    id,
    userId: "",
    occurredAt: now.toISOString(),
    payload: { endpointId: e.id },
  });
  const agents = { http: new http.Agent(), https: new https.Agent() };
  try {
    const result = await postWebhook(new URL(e.url), signedHeaders(e, id, now, body), body, {
      timeoutMs: options.timeoutMs ?? 10_000,
      maxResponseBytes: 4096,
      allow,
      lookup: options.lookup,
      agents,
    });
    return { ...result, id };
  } finally {
    agents.http.destroy();
    agents.https.destroy();
  }
}

/** Options of `retryFailedWebhooks()`. @public */
export interface RetryOptions {
  /**
   * Makes the retry idempotent: a second call with the same key writes nothing for the deliveries
   * it already wrote (the console's form key). Default: a fresh key per call.
   */
  retryKey?: string;
}

/**
 * A manual retry (`credit-management webhooks retry`): each failed delivery of `userId`'s events
 * to `endpointId` (or only that of `eventId`) is written again as a new pending delivery row with
 * the same event (same `webhook-id`), delivered on a fresh schedule after the account's pending
 * ones; the failed row stays as it was. Resolves to the rows written (0 when `options.retryKey`
 * was used before for them).
 * @public
 */
export async function retryFailedWebhooks(
  db: NotificationStore,
  endpointId: string,
  userId: string,
  eventId?: string,
  options: RetryOptions = {},
): Promise<number> {
  const owner = deliveryUserId(endpointId, userId);
  // Every row of `owner` is a delivery this module wrote, with a DeliveryPayload.
  const failed = (await db.listNotifications(owner, { status: "failed", limit: 1000 })).filter(
    (r) => eventId === undefined || (r.payload as unknown as DeliveryPayload).event?.id === eventId,
  );
  const now = new Date();
  const rows = failed.map((r) =>
    newNotification(
      owner,
      r.type,
      r.payload,
      now,
      `${(r.payload as unknown as DeliveryPayload).event.id}:retry:${options.retryKey ?? notificationId(now)}`,
      r.version,
    ),
  );
  return rows.length === 0 ? 0 : db.insertNotifications(rows);
}
