import type { MeterOutcome } from "./service.js";
import { ResponseUsageReader } from "../pricing/rules-llm-usage.js";
import { textResponse } from "../../http/text-response.js";
import { errorBody, json } from "../../http/router.js";
import { common, isJsonType, type CreditMeteringOptions } from "./routes-common.js";
import type { PricedRequest } from "./routes-fixed-price.js";
import { pathnameOf } from "./routes-paths.js";

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
 * @public
 */
export function creditMetering(options: CreditMeteringOptions) {
  const c = common(options);
  return (handler: (request: Request) => Response | Promise<Response>) =>
    async (request: Request): Promise<Response> => {
      const path = pathnameOf(request.url);
      if (!c.meters(path, request)) return handler(request);
      const begun = await c.begin(
        request,
        request.method,
        path,
        (name) => request.headers.get(name),
        () => request.signal.aborted,
      );
      if (begun === null) return clientClosed(c); // the client left: nobody reads it
      if ("answer" in begun) return begun.answer;
      if ("priced" in begun) return fixedPrice(c, begun.priced, request, handler, path);
      const session = begun.session;
      // LLM responses (`llm`): the usage is read from the body as it passes; a stream cut before
      // its usage arrived is charged as `missingUsage` says, not released.
      let reading: ResponseUsageReader | null = null;
      let status = 200;
      const cut = () => c.settle(request, session, c.settleEnd(session, false, status, reading));
      const onAbort = () => void cut();
      request.signal.addEventListener("abort", onAbort, { once: true });
      /** Settled, the client no longer watched: the handler's response with `X-Credits-Deducted`. */
      const answer = async (settling: Promise<MeterOutcome>, response: Response, body: Body) => {
        const outcome = await c.settle(request, session, settling);
        request.signal.removeEventListener("abort", onAbort);
        return withHeader(response, body, c.deductedHeader, outcome?.charged ?? 0);
      };
      /** The handler (or reading its body) failed: answered here, as on node (docs/metering.md, "When the handler throws"). */
      const failed = async (error: unknown) => {
        request.signal.removeEventListener("abort", onAbort);
        await c.notCharged(request, session);
        return c.handlerFailed(error, request.method, path);
      };

      let response: Response;
      try {
        response = await session.run(handler, request);
      } catch (error) {
        return failed(error);
      }
      if (session.settled) return response; // the client left while the handler ran
      if (response.status >= 500) return answer(session.release("error"), response, response.body);
      if (isJsonType(response.headers.get("content-type")) || response.body === null) {
        // The body is read only when the charge depends on it (`llm`, or a `usageKey` with nothing
        // recorded): else the recorded usage is committed and the handler's own Response goes out
        // with the header, its body untouched (docs/metering.md, "Metering", on Fetch-style apps).
        if (!c.readsBody(session)) return answer(session.commit(), response, response.body);
        let text: string | null = null;
        try {
          text = response.body === null ? null : await session.run(textOf, response);
        } catch (error) {
          return failed(error);
        }
        const type = response.headers.get("content-type");
        return answer(c.settleBody(session, response.status, text, type), response, text);
      }
      status = response.status;
      if (c.llm !== null) reading = new ResponseUsageReader(response.headers.get("content-type"));
      return passThrough(response, response.body as ReadableStream<Uint8Array>, {
        read: (reader) => session.run(() => reader.read()),
        chunk: (value) => reading?.push(value), // after the chunk is on its way: reading never delays it
        end: () => {
          request.signal.removeEventListener("abort", onAbort);
          return c.settle(request, session, c.settleEnd(session, true, status, reading));
        },
        // The upstream failed mid-stream: released, or (LLM) charged as a cut stream.
        failed: () => (reading === null ? c.notCharged(request, session) : cut()),
        cancelled: cut,
      });
    };
}

type Body = ConstructorParameters<typeof Response>[0];

const textOf = (response: Response) => response.text();

/** The answer to a client that left before the handler ran: nobody reads it, nothing was charged. */
const clientClosed = (c: Common): Response =>
  json(499, errorBody("CLIENT_CLOSED_REQUEST", "The client closed the request."), { [c.deductedHeader]: "0" });

type Common = ReturnType<typeof common<Request>>;

/**
 * A fixed-price request (the `price` option), checked: the handler; a response that ended well
 * (status < 400, the client still there, a streamed body read to its end) is charged once,
 * anything else never.
 */
async function fixedPrice(
  c: Common,
  priced: PricedRequest<Request>,
  request: Request,
  handler: (request: Request) => Response | Promise<Response>,
  path: string,
): Promise<Response> {
  let response: Response;
  try {
    response = await handler(request);
  } catch (error) {
    c.notCharged(request, priced);
    return c.handlerFailed(error, request.method, path);
  }
  if (
    response.status >= 400 ||
    request.signal.aborted ||
    response.body === null ||
    isJsonType(response.headers.get("content-type"))
  ) {
    const charged = await priced.ended(response.status, request.signal.aborted);
    return charged === null ? response : withHeader(response, response.body, c.deductedHeader, charged);
  }
  // A streamed body: charged when it was read to its end, not when the client left midway.
  return passThrough(response, response.body, {
    read: (reader) => reader.read(),
    end: () => priced.charge(),
    failed: () => priced.done || priced.notCharged("error"),
    cancelled: () => priced.done || priced.notCharged("aborted"),
  });
}

type Reader = ReadableStreamDefaultReader<Uint8Array>;

/** What `passThrough` does as a streamed body passes. */
interface Passing {
  /** Reads the next chunk (for a hold, in the usage context). */
  read(reader: Reader): ReturnType<Reader["read"]>;
  /** A chunk was handed on. */
  chunk?(value: Uint8Array): void;
  /** The body was read to its end: settled before the client sees the end. */
  end(): Promise<unknown>;
  /** The upstream failed midway. */
  failed(): unknown;
  /** The client went away (the body was cancelled). */
  cancelled(): unknown;
}

/** The response with its streamed `body` passed through as it is produced, telling `on` how it went. */
function passThrough(response: Response, body: ReadableStream<Uint8Array>, on: Passing): Response {
  const reader = body.getReader();
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { done, value } = await on.read(reader);
        if (done) {
          await on.end();
          controller.close();
        } else {
          controller.enqueue(value);
          on.chunk?.(value);
        }
      } catch (error) {
        await on.failed();
        controller.error(error);
      }
    },
    async cancel(reason) {
      await on.cancelled();
      // Cancelling a stream that already failed or closed rejects: nothing is left to read either way.
      await reader.cancel(reason).catch(() => undefined);
    },
  });
  return new Response(stream, { status: response.status, statusText: response.statusText, headers: response.headers });
}

function withHeader(response: Response, body: Body, name: string, charged: number): Response {
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
