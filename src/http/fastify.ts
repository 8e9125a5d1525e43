import type { IncomingMessage, ServerResponse } from "node:http";
import { Transform, type Readable } from "node:stream";
import { ResponseUsageReader, usageOfText } from "../domain/llm-usage.js";
import type { MeterSession } from "../services/metering.js";
import { common, headerOf, type MeterSpend, type MeteringOptionsBase, type PricedRequest } from "./metering/common.js";
import { errorBody, errorResponse, type Identity } from "./router.js";

/**
 * What the plugin uses of a Fastify request and reply: no type of Fastify's own, so the package
 * needs no Fastify types (Fastify 4 and 5 fit these shapes).
 */
export interface FastifyRequestLike {
  url: string;
  method: string;
  headers: IncomingMessage["headers"];
  raw: IncomingMessage;
}
export interface FastifyReplyLike {
  statusCode: number;
  raw: ServerResponse;
  code(status: number): FastifyReplyLike;
  header(name: string, value: string): FastifyReplyLike;
  send(payload?: unknown): FastifyReplyLike;
}
type Done = (error?: Error) => void;
/** The part of a Fastify instance the plugin registers its hooks on. */
export interface FastifyInstanceLike {
  addHook(name: string, hook: (...args: never[]) => unknown): unknown;
}

/** Options of `fastifyCreditMetering`: those of the other metering middlewares. */
export type FastifyCreditMeteringOptions = MeteringOptionsBase<FastifyRequestLike>;

/** A Fastify plugin: `app.register(fastifyCreditMetering(options))`. */
export type FastifyCreditMeteringPlugin = ((instance: FastifyInstanceLike, options: unknown, done: Done) => void) & {
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

  /** Settles what the response left open once it is done (streams, aborted clients). */
  const onClose = (request: FastifyRequestLike, reply: FastifyReplyLike, session: MeterSession) => () => {
    if (session.settled) return;
    const res = reply.raw;
    const reading = readings.get(request.raw);
    let settling;
    if (c.llm !== null && reading !== undefined)
      settling = c.settleReading(session, res.writableFinished ? reading.end() : reading.cut(), reply.statusCode);
    else
      settling = !res.writableFinished
        ? session.release("aborted")
        : reply.statusCode >= 500
          ? session.release("error")
          : session.commit();
    void c.settle(request, session, settling);
  };

  /**
   * Fixed price: the cost and the advisory check (402, and the handler does not run); the charge
   * comes in `onSend` (whole payloads) or when the response closes (streams), if it ended well.
   */
  const fixedRequest = async (
    request: FastifyRequestLike,
    reply: FastifyReplyLike,
    path: string,
    userId: string,
    fixed: NonNullable<typeof c.fixed>,
    spend: MeterSpend,
  ): Promise<void> => {
    let priced: PricedRequest<FastifyRequestLike>;
    try {
      const key = fixed.keyOf(headerOf(request, "idempotency-key"));
      const cost = await fixed.costOf(request);
      priced = await fixed.open(request, userId, cost, key, request.method, path, undefined, spend);
    } catch (error) {
      return refuse(reply, errorResponse(error));
    }
    const res = reply.raw;
    if (res.destroyed || res.writableEnded) return priced.drop(); // the client left: nothing runs, nothing is charged
    fixedOf.set(request.raw, priced);
    res.on("close", () => priced.closed(res.writableFinished, reply.statusCode));
  };

  const onRequest = async (request: FastifyRequestLike, reply: FastifyReplyLike): Promise<void> => {
    const q = request.url.indexOf("?");
    const path = q === -1 ? request.url : request.url.slice(0, q);
    if (!c.applies(path, c.routerFor(request))) return;
    let userId: string;
    let estimate: number;
    let spend: MeterSpend;
    try {
      const found = options.authenticate ? await options.authenticate(request) : null;
      const identity: Identity | null = c.identityOf(found, headerOf(request, "x-user-id"));
      if (identity === null)
        return refuse(reply, Response.json(errorBody("UNAUTHORIZED", "Authentication required."), { status: 401 }));
      userId = identity.userId;
      spend = c.spendOf(request, identity);
      if (c.fixed !== null) return fixedRequest(request, reply, path, userId, c.fixed, spend);
      estimate = c.estimate((name) => headerOf(request, name));
    } catch (error) {
      return refuse(reply, errorResponse(error));
    }
    let session: MeterSession;
    try {
      session = await c.openMeter(userId, c.meterOptions(estimate, request.method, path, spend));
    } catch (error) {
      return refuse(reply, errorResponse(error));
    }
    sessions.set(request.raw, session);
    const res = reply.raw;
    if (res.destroyed || res.writableEnded) {
      void c.settle(request, session, session.release("aborted"));
      return;
    }
    res.on("close", onClose(request, reply, session));
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
      if (reply.statusCode >= 400) {
        priced.notCharged("error");
        reply.header(c.deductedHeader, "0");
        return payload;
      }
      // The whole reply at once: charged first, so X-Credits-Deducted can say it.
      const charged = await priced.charge();
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
    let settling: Promise<unknown>;
    if (c.llm !== null) {
      const text = payload === null || payload === undefined ? "" : payload.toString();
      settling = c.settleReading(session, usageOfText(text, typeOf(reply)), reply.statusCode);
    } else if (reply.statusCode >= 500) settling = session.release("error");
    else {
      const amount =
        c.usagePath !== null && session.usages.length === 0 && whole ? c.usageOfBody(reply.raw, payload) : undefined;
      settling = session.commit(amount);
    }
    const outcome = await c.settle(request, session, settling as ReturnType<MeterSession["commit"]>);
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
