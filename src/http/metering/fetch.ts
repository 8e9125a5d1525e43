import type { MeterOutcome, MeterSession } from "../../services/metering.js";
import { ResponseUsageReader, usageOfText } from "../../domain/llm-usage.js";
import { textResponse } from "../text-response.js";
import { errorBody, errorResponse, json } from "../router.js";
import {
  NO_BODY,
  common,
  isJsonType,
  type CreditMeteringOptions,
  type MeterSpend,
  type PricedRequest,
} from "./common.js";
import { pathnameOf } from "./paths.js";

/**
 * Metering for Fetch-style apps (Hono, Next.js, Bun, Deno, `createCreditHandler` hosts): wraps a
 * `(request) => Promise<Response>`. For each metered request it holds the estimate, runs the
 * handler inside the usage context (`recordUsage()` works anywhere below it), and then:
 * - a thrown handler or a status >= 500 releases the hold (a throw is answered here, as
 *   `createCreditHandler` answers errors: 500 `INTERNAL_ERROR`, the error to the manager's logger);
 * - a JSON response is read whole; the recorded usage (else the `usageKey` of the body) is
 *   committed and `X-Credits-Deducted` is set;
 * - any other body (server-sent events, streams) is passed through as it is produced and the
 *   recorded usage is committed when it ends, before the client sees its end (headers are gone by
 *   then: read the figure in `onSettled`); a client that goes away (the body is cancelled, or
 *   `request.signal` aborts) releases the hold; one already gone when the hold is placed gets a
 *   499 and the handler does not run.
 * 401 without identity, 402 when the hold cannot be placed, 400 for a malformed estimate header.
 */
export function creditMetering(options: CreditMeteringOptions) {
  const c = common(options);
  return (handler: (request: Request) => Response | Promise<Response>) =>
    async (request: Request): Promise<Response> => {
      const path = pathnameOf(request.url);
      if (!c.applies(path, c.routerFor(request))) return handler(request);
      let session: MeterSession;
      try {
        const found = options.authenticate ? await options.authenticate(request) : null;
        const identity = c.identityOf(found, request.headers.get("x-user-id"));
        if (identity === null) return json(401, errorBody("UNAUTHORIZED", "Authentication required."));
        const spend = c.spendOf(request, identity);
        if (c.fixed !== null) return fixedPrice(c, c.fixed, request, handler, identity.userId, path, spend);
        const estimate = c.estimate((name) => request.headers.get(name));
        session = await c.openMeter(identity.userId, c.meterOptions(estimate, request.method, path, spend));
      } catch (error) {
        return errorResponse(error);
      }
      const release = (reason: string) => c.settle(request, session, session.release(reason));
      if (request.signal.aborted) {
        // The client left while it was authenticated or the hold placed: nobody to answer.
        await release("aborted");
        return clientClosed(c);
      }
      // LLM responses (`llm`): the usage is read from the body as it passes; a stream cut before
      // its usage arrived is charged as `missingUsage` says, not released.
      let reading: ResponseUsageReader | null = null;
      let status = 200;
      const cut = () =>
        c.settle(
          request,
          session,
          reading === null ? session.release("aborted") : c.settleReading(session, reading.cut(), status),
        );
      const onAbort = () => void cut();
      request.signal.addEventListener("abort", onAbort, { once: true });

      let response: Response;
      try {
        response = await session.run(handler, request);
      } catch (error) {
        // Answered here, as on node (docs/metering.md, "When the handler throws").
        request.signal.removeEventListener("abort", onAbort);
        await release("error");
        return c.handlerFailed(error, request.method, path);
      }
      if (session.settled) return response; // the client left while the handler ran
      if (response.status >= 500) {
        await release("error");
        return withHeader(response, response.body, c.deductedHeader, 0);
      }
      if (isJsonType(response.headers.get("content-type")) || response.body === null) {
        // The body is read only when the charge depends on it (`llm`, or a `usageKey` with nothing
        // recorded): else the recorded usage is committed and the handler's own Response goes out
        // with the header, its body untouched (docs/metering.md, "Metering", on Fetch-style apps).
        if (c.llm === null && (c.usagePath === null || session.usages.length > 0)) {
          const outcome = await c.settle(request, session, session.commit());
          request.signal.removeEventListener("abort", onAbort);
          return withHeader(response, response.body, c.deductedHeader, outcome?.charged ?? 0);
        }
        let text: string | null = null;
        try {
          text = response.body === null ? null : await session.run(textOf, response);
        } catch (error) {
          request.signal.removeEventListener("abort", onAbort);
          await release("error");
          return c.handlerFailed(error, request.method, path);
        }
        let settling: Promise<MeterOutcome>;
        if (c.llm !== null) {
          settling = c.settleReading(
            session,
            text === null ? NO_BODY : usageOfText(text, response.headers.get("content-type")),
            response.status,
          );
        } else settling = session.commit(session.usages.length === 0 && text !== null ? c.usageFrom(text) : undefined);
        const outcome = await c.settle(request, session, settling);
        request.signal.removeEventListener("abort", onAbort);
        return withHeader(response, text, c.deductedHeader, outcome?.charged ?? 0);
      }
      const reader = (response.body as ReadableStream<Uint8Array>).getReader();
      status = response.status;
      if (c.llm !== null) reading = new ResponseUsageReader(response.headers.get("content-type"));
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          try {
            const { done, value } = await session.run(() => reader.read());
            if (done) {
              request.signal.removeEventListener("abort", onAbort);
              await c.settle(
                request,
                session,
                reading === null ? session.commit() : c.settleReading(session, reading.end(), status),
              );
              controller.close();
            } else {
              controller.enqueue(value);
              reading?.push(value); // after the chunk is on its way: reading never delays it
            }
          } catch (error) {
            // The upstream failed mid-stream: released, or (LLM) charged as a cut stream.
            if (reading === null) await release("error");
            else await cut();
            controller.error(error);
          }
        },
        async cancel(reason) {
          await cut();
          // Cancelling a stream that already failed or closed rejects: nothing is left to read either way.
          await reader.cancel(reason).catch(() => undefined);
        },
      });
      return new Response(body, {
        status: response.status,
        statusText: response.statusText,
        headers: response.headers,
      });
    };
}

const textOf = (response: Response) => response.text();

/** The answer to a client that left before the handler ran: nobody reads it, nothing was charged. */
const clientClosed = (c: Common): Response =>
  json(499, errorBody("CLIENT_CLOSED_REQUEST", "The client closed the request."), { [c.deductedHeader]: "0" });

type Common = ReturnType<typeof common<Request>>;

/**
 * A fixed-price request (the `price` option): the cost and the check (402 without running the
 * handler), then the handler; a response that ended well (status < 400, the client still there,
 * a streamed body read to its end) is charged once, anything else never.
 */
async function fixedPrice(
  c: Common,
  fixed: NonNullable<Common["fixed"]>,
  request: Request,
  handler: (request: Request) => Response | Promise<Response>,
  userId: string,
  path: string,
  spend: MeterSpend,
): Promise<Response> {
  let priced: PricedRequest<Request>;
  try {
    const key = fixed.keyOf(request.headers.get("idempotency-key"));
    const cost = await fixed.costOf(request);
    priced = await fixed.open(request, userId, cost, key, request.method, path, undefined, spend);
  } catch (error) {
    return errorResponse(error);
  }
  if (request.signal.aborted) {
    priced.drop();
    return clientClosed(c);
  }
  let response: Response;
  try {
    response = await handler(request);
  } catch (error) {
    priced.notCharged("error");
    return c.handlerFailed(error, request.method, path);
  }
  if (response.status >= 400 || request.signal.aborted) {
    priced.notCharged(response.status >= 400 ? "error" : "aborted");
    return withHeader(response, response.body, c.deductedHeader, 0);
  }
  if (response.body === null || isJsonType(response.headers.get("content-type"))) {
    const charged = await priced.charge();
    if (charged === null) return response;
    try {
      response.headers.set(c.deductedHeader, String(charged)); // the handler's own Response: no copy
      return response;
    } catch {
      return withHeader(response, response.body, c.deductedHeader, charged);
    }
  }
  // A streamed body: charged when it was read to its end, not when the client left midway.
  const reader = response.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await reader.read();
        if (done) {
          await priced.charge();
          controller.close();
        } else controller.enqueue(value);
      } catch (error) {
        if (!priced.done) priced.notCharged("error");
        controller.error(error);
      }
    },
    async cancel(reason) {
      if (!priced.done) priced.notCharged("aborted");
      // Cancelling a stream that already failed or closed rejects: nothing is left to read either way.
      await reader.cancel(reason).catch(() => undefined);
    },
  });
  return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

function withHeader(
  response: Response,
  body: ConstructorParameters<typeof Response>[0],
  name: string,
  charged: number,
): Response {
  let headers = response.headers;
  try {
    // A Response the handler built has mutable headers: no copy. One from fetch() is immutable.
    headers.set(name, String(charged));
    // Its own body, unread: the handler's Response as it is.
    if (body === response.body && !response.bodyUsed) return response;
  } catch {
    headers = new Headers(response.headers);
    headers.set(name, String(charged));
  }
  const init = { status: response.status, statusText: response.statusText, headers };
  if (typeof body !== "string") return new Response(body, init);
  headers.delete("content-length");
  return textResponse(body, init);
}
