import type { IncomingMessage, ServerResponse } from "node:http";
import { Transform, type Readable } from "node:stream";
import { ResponseUsageReader } from "../pricing/rules-llm-usage.js";
import type { MeterSession } from "./service.js";
import { targetPathOf } from "./routes-paths.js";
import { common, headerOf, type MeteringOptionsBase } from "./routes-common.js";
import type { PricedRequest } from "./routes-fixed-price.js";

/**
 * What the plugin uses of a Fastify request and reply: no type of Fastify's own, so the package
 * needs no Fastify types (Fastify 4 and 5 fit these shapes).
 * @public
 */
export interface FastifyRequestLike {
  /** The request's URL. */
  url: string;
  /** The request's method. */
  method: string;
  /** The request's headers. */
  headers: IncomingMessage["headers"];
  /** The node request. */
  raw: IncomingMessage;
}
/** A Fastify reply, as the plugin uses it. @public */
export interface FastifyReplyLike {
  /** The reply's status. */
  statusCode: number;
  /** The node response. */
  raw: ServerResponse;
  /** Sets the status. */
  code(status: number): FastifyReplyLike;
  /** Sets a header. */
  header(name: string, value: string): FastifyReplyLike;
  /** Sends the body. */
  send(payload?: unknown): FastifyReplyLike;
}
type Done = (error?: Error) => void;
/** The part of a Fastify instance the plugin registers its hooks on. @public */
export interface FastifyInstanceLike {
  /** Adds a hook of the request's lifecycle. */
  addHook(name: string, hook: (...args: never[]) => unknown): unknown;
}

/** Options of `fastifyCreditMetering`: those of the other metering middlewares. @public */
export type FastifyCreditMeteringOptions = MeteringOptionsBase<FastifyRequestLike>;

/** A Fastify plugin: `app.register(fastifyCreditMetering(options))`. @public */
export type FastifyCreditMeteringPlugin = ((
  instance: FastifyInstanceLike,
  options: unknown,
  done: (error?: Error) => void,
) => void) & {
  [key: symbol]: unknown;
};

/**
 * Metering as a Fastify plugin, inside Fastify's lifecycle (its logging, error handler and reply
 * serialisation stay in charge):
 * - `onRequest`: who pays (`authenticate`, 401) and the hold of the estimate (402 when it cannot be
 *   placed), before the body is read;
 * - `preHandler`: the handler runs inside the usage context, so `recordUsage()` anywhere below it
 *   counts;
 * - `onSend`: commits the recorded usage (else the `usageKey` of a JSON payload; status >= 500
 *   releases) and sets `X-Credits-Deducted` before the reply goes out;
 * - the response's `close`: settles what is left — a stream (SSE) commits when it ends, a client
 *   that went away before the end releases the hold.
 *
 * With `price` (fixed-price metering, docs/metering.md "Fixed-price endpoints"): the cost and the
 * check in `onRequest` (402 before the handler), the one deduction in `onSend` with
 * `X-Credits-Deducted` (status >= 400 is not charged), a stream charged when it ended.
 *
 * The plugin is not encapsulated (as `fastify-plugin` would mark it): its hooks apply to the routes
 * of the instance it is registered on, wherever they are declared. Only paths under `pathPrefix`
 * are metered.
 * @public
 */
export function fastifyCreditMetering(options: FastifyCreditMeteringOptions): FastifyCreditMeteringPlugin {
  const c = common(options);
  const sessions = new WeakMap<IncomingMessage, MeterSession>();
  /** Fixed price (`price`): the requests that passed the check, until they are charged or not. */
  const fixedOf = new WeakMap<IncomingMessage, PricedRequest<FastifyRequestLike>>();
  /** `llm`: the usage of a streamed payload, read as it passes. */
  const readings = new WeakMap<IncomingMessage, ResponseUsageReader>();

  const refuse = async (reply: FastifyReplyLike, response: Response): Promise<void> => {
    reply.code(response.status);
    for (const [k, v] of response.headers) reply.header(k, v);
    reply.send(await response.text());
  };

  const onRequest = async (request: FastifyRequestLike, reply: FastifyReplyLike): Promise<void> => {
    const path = targetPathOf(request.url);
    if (!c.meters(path, request)) return;
    const res = reply.raw;
    const begun = await c.begin(
      request,
      request.method,
      path,
      (name) => headerOf(request, name),
      () => res.destroyed || res.writableEnded,
    );
    if (begun === null) return; // the client left: nothing runs, nothing is charged
    if ("answer" in begun) return refuse(reply, begun.answer);
    if ("priced" in begun) {
      // Fixed price, checked: the charge comes in `onSend` (whole payloads) or when the response
      // closes (streams), if it ended well.
      const priced = begun.priced;
      fixedOf.set(request.raw, priced);
      res.on("close", () => priced.closed(res.writableFinished, reply.statusCode));
      return;
    }
    const session = begun.session;
    sessions.set(request.raw, session);
    // Settles what the response left open once it is done (streams, aborted clients).
    res.on("close", () => {
      if (session.settled) return;
      const reading = readings.get(request.raw) ?? null;
      void c.settle(request, session, c.settleEnd(session, res.writableFinished, reply.statusCode, reading));
    });
  };

  const preHandler = (request: FastifyRequestLike, _reply: FastifyReplyLike, done: Done): void => {
    const session = sessions.get(request.raw);
    if (session === undefined || session.settled) done();
    else session.run(done);
  };

  const onSend = async (request: FastifyRequestLike, reply: FastifyReplyLike, payload: unknown): Promise<unknown> => {
    const priced = fixedOf.get(request.raw);
    if (priced !== undefined) {
      // A stream is charged when the response closes, once it ended well.
      if (
        priced.done ||
        !(payload === null || payload === undefined || typeof payload === "string" || Buffer.isBuffer(payload))
      )
        return payload;
      // The whole reply at once: charged first (unless status >= 400), so X-Credits-Deducted can say it.
      const charged = await priced.ended(reply.statusCode);
      if (charged !== null) reply.header(c.deductedHeader, String(charged));
      return payload;
    }
    const session = sessions.get(request.raw);
    if (session === undefined || session.settled) return payload;
    const whole = typeof payload === "string" || Buffer.isBuffer(payload);
    // A stream's end is not here: it is settled when the response closes.
    if (!whole && payload !== null && payload !== undefined) {
      if (c.llm === null || typeof (payload as Readable).pipe !== "function") return payload;
      // `llm`: read the stream's usage as it passes through, chunk by chunk, without holding it.
      const reading = new ResponseUsageReader(typeOf(reply));
      readings.set(request.raw, reading);
      const tap = new Transform({
        transform(chunk: Buffer | string, _encoding, callback) {
          callback(null, chunk);
          reading.push(chunk);
        },
      });
      (payload as Readable).on("error", (error) => tap.destroy(error));
      return (payload as Readable).pipe(tap);
    }
    const text = !c.readsBody(session) ? null : payload === null || payload === undefined ? "" : payload.toString();
    const outcome = await c.settle(request, session, c.settleBody(session, reply.statusCode, text, typeOf(reply)));
    if (outcome !== null) reply.header(c.deductedHeader, String(outcome.charged));
    return payload;
  };

  const plugin = ((instance: FastifyInstanceLike, _options: unknown, done: Done) => {
    instance.addHook("onRequest", onRequest);
    instance.addHook("preHandler", preHandler);
    instance.addHook("onSend", onSend);
    done();
  }) as FastifyCreditMeteringPlugin;
  // Fastify's mark for a plugin whose hooks belong to the instance it is registered on.
  plugin[Symbol.for("skip-override")] = true;
  plugin[Symbol.for("fastify.display-name")] = "credit-management-metering";
  return plugin;
}

function typeOf(reply: FastifyReplyLike): string | undefined {
  const type =
    (reply as { getHeader?: (name: string) => unknown }).getHeader?.("content-type") ??
    reply.raw.getHeader("content-type");
  return type === undefined || type === null ? undefined : String(type);
}
