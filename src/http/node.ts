import type { IncomingMessage, ServerResponse } from "node:http";
import { ANSWER, errorAnswer, HttpError, JsonAnswer, type Answering } from "./router.js";
import { makeRequest, nodeRequest, urlOf } from "./node-request.js";
import { unreadText } from "./text-response.js";

/** A Fetch handler; `basePaths` (as `createCreditHandler` sets it) lets other paths fall through. @public */
export type FetchHandler = ((request: Request) => Promise<Response>) & { basePaths?: readonly string[] };

/** `(req, res, next?)`: node:http's request listener, and Express middleware when `next` is given. @public */
export type NodeHandler = (
  req: IncomingMessage,
  res: ServerResponse,
  next?: (error?: unknown) => void,
) => Promise<void>;

/**
 * Runs a Fetch handler on node:http, Express or Fastify: the IncomingMessage becomes a `Request`
 * (its body streamed untouched, so webhook signatures can be checked over the raw bytes; a client
 * that disconnects aborts `request.signal`), and the `Response` is streamed back with backpressure
 * (server-sent events flow as they are produced; a client that goes away cancels the body).
 *
 * A handler from `createCreditHandler` gets a stand-in `Request` instead (read as one; its body read
 * straight from the IncomingMessage; the real one made on first need), and its JSON answers are
 * written without a `Response` (docs/http.md).
 *
 * With Express, mount it before body parsers (or where none ran); if one already consumed the
 * stream, `req.rawBody` (a Buffer) or else the parsed `req.body` re-serialised as JSON is used.
 * With `next` and a handler from `createCreditHandler`, paths outside its base paths go to `next()`.
 * @public
 */
export function toNodeHandler(handler: FetchHandler): NodeHandler {
  // The credit handler (it offers its answers): a stand-in Request, read straight from `req`.
  const answer = (handler as FetchHandler & Answering)[ANSWER];
  return async (req, res, next) => {
    try {
      const target = (req as { originalUrl?: string }).originalUrl ?? req.url ?? "/";
      if (next && handler.basePaths && !underAny(target, handler.basePaths)) {
        next();
        return;
      }
      let request: Request;
      try {
        request = answer === undefined ? toRequest(req, res, target) : nodeRequest(req, res, target);
      } catch (error) {
        // The client's own request cannot be a URL (a malformed Host header): theirs to fix, a 400.
        if (!(error instanceof HttpError)) throw error;
        writeAnswer(res, errorAnswer(error));
        return;
      }
      // Its JSON answers are written as they are, with no Response built for them.
      const out = answer === undefined ? await handler(request) : await answer(request);
      await sendAnswer(res, out, req.method === "HEAD");
    } catch (error) {
      if (next) {
        next(error);
        return;
      }
      if (!res.headersSent) {
        res.statusCode = 500;
        res.setHeader("content-type", "application/json; charset=utf-8");
        res.end(JSON.stringify({ error: { code: "INTERNAL_ERROR", message: "Internal error." } }));
      } else {
        res.destroy(error as Error);
      }
    }
  };
}

function underAny(target: string, bases: readonly string[]): boolean {
  const path = target.split("?")[0] ?? "/";
  return bases.some((b) => b === "/" || path === b || path.startsWith(`${b}/`));
}

/**
 * The IncomingMessage as a Fetch `Request` whose signal aborts when the client goes away. Throws an
 * `HttpError` 400 when the Host header and target make no URL.
 */
export function toRequest(req: IncomingMessage, res: ServerResponse, target = req.url ?? "/"): Request {
  return makeRequest(req, res, urlOf(req, target));
}

/** @internal Writes a `JsonAnswer` (its status, headers and text, in one `res.end`) or a `Response`. */
export async function sendAnswer(res: ServerResponse, out: Response | JsonAnswer, head = false): Promise<void> {
  if (out instanceof JsonAnswer) writeAnswer(res, out, head);
  else await sendResponse(res, out, head);
}

/**
 * @internal Writes a `JsonAnswer`: the same bytes `sendResponse` writes for its `Response` (status,
 * headers, the text in one `res.end`, which gives it its Content-Length), without building one.
 */
export function writeAnswer(res: ServerResponse, answer: JsonAnswer, head = false): void {
  res.statusCode = answer.status;
  const headers = answer.headers;
  for (const name of Object.keys(headers)) res.setHeader(name, headers[name] as string);
  if (answer.text === null || head) res.end();
  else res.end(answer.text);
}

/** Writes a Fetch `Response` to a ServerResponse, streaming its body with backpressure. */
export async function sendResponse(res: ServerResponse, response: Response, head = false): Promise<void> {
  res.statusCode = response.status;
  if (response.statusText) res.statusMessage = response.statusText;
  for (const [name, value] of response.headers) {
    if (name !== "set-cookie") res.setHeader(name, value);
  }
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) res.setHeader("set-cookie", cookies);
  const text = unreadText(response);
  if (text !== undefined) {
    // Nobody read it since it was built: its stream is untouched and the text is the body.
    if (head) res.end();
    else res.end(text);
    return;
  }
  if (response.body === null || head) {
    // Cancelling a stream that already failed or closed rejects: nothing is left to read either way.
    if (response.body !== null) await response.body.cancel().catch(() => undefined);
    res.end();
    return;
  }
  const reader = response.body.getReader();
  // Whether the client is gone: it may have left before this started ("close" already emitted, when
  // writes return false and no "drain" ever comes), or leaves while the body streams.
  const gone = () => res.destroyed || res.writableEnded;
  const onClose = () => {
    // Cancelling a stream that already failed or closed rejects: nothing is left to read either way.
    if (!res.writableFinished) reader.cancel(new Error("The client disconnected.")).catch(() => undefined);
  };
  if (gone()) {
    onClose();
    return;
  }
  res.once("close", onClose);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done || gone()) break;
      if (!res.write(value)) {
        await new Promise<void>((resolve) => {
          const go = () => {
            res.off("drain", go);
            res.off("close", go);
            res.off("error", go);
            resolve();
          };
          res.on("drain", go);
          res.on("close", go);
          res.on("error", go);
          // "close" may have come between the write and now.
          if (gone()) go();
        });
        if (gone()) break;
      }
    }
  } catch (error) {
    // The body failed mid-stream: the status is gone already, so cut the connection.
    res.destroy(error as Error);
    return;
  } finally {
    res.off("close", onClose);
  }
  if (gone()) {
    // Left mid-stream: the body is cancelled, nothing more to write.
    // Cancelling a stream that already failed or closed rejects: nothing is left to read either way.
    await reader.cancel(new Error("The client disconnected.")).catch(() => undefined);
    return;
  }
  res.end();
}
