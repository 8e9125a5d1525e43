import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { Readable } from "node:stream";
import { HttpError, RAW_BODY, tooLarge } from "./router.js";

/** What a request made from an IncomingMessage starts from: the URL and, possibly, its headers and body. */
interface Given {
  /** Headers already made for it (a stand-in's, with whatever a hook set on them). */
  headers?: Headers;
  /** The body, already read (by the router, through a stand-in). */
  body?: Uint8Array;
}

/**
 * A dot segment (`.`, `..`, literal or percent-encoded) in a request target's path: a URL parser
 * removes it, so `/admin/credits/users/%2E%2E/usage` would be answered as `/admin/credits/usage`.
 * A backslash separates segments too (it does in http URLs). Browsers and HTTP clients remove dot
 * segments before sending, so only a hand-made target has one (docs/http.md, "Account ids in URLs").
 */
const DOT_SEGMENT = /(?:^|[/\\])(?:\.|%2e){1,2}(?:[/\\]|$)/i;

/**
 * A target starting with two separators (`//host/…`, `/\host/…`): a URL parser reads what follows
 * as a host, so `//x/admin/credits/…` would be answered as `/admin/credits/…` — past a proxy that
 * forwards only `/credits/*` (docs/http.md, "Account ids in URLs").
 */
const HOST_PREFIX = /^[/\\]{2}/;

/**
 * The absolute URL of `target` on the request's host; an `HttpError` 400 when they make none, its
 * path holds a dot segment or it starts with two separators.
 */
export function urlOf(req: IncomingMessage, target: string): string {
  if (HOST_PREFIX.test(target))
    throw new HttpError(
      400,
      "VALIDATION_ERROR",
      "The request path starts with two slashes (// or /\\), which a URL parser reads as a host: send the path alone.",
    );
  const end = target.search(/[?#]/);
  if (DOT_SEGMENT.test(end < 0 ? target : target.slice(0, end)))
    throw new HttpError(
      400,
      "VALIDATION_ERROR",
      "The request path holds a dot segment (. or ..): send the path it stands for.",
    );
  const encrypted = (req.socket as { encrypted?: boolean } | null)?.encrypted === true;
  try {
    return new URL(target, `${encrypted ? "https" : "http"}://${req.headers.host ?? "localhost"}`).href;
  } catch {
    throw new HttpError(400, "VALIDATION_ERROR", "Invalid request URL (the Host header or the request target).");
  }
}

function headersOf(req: IncomingMessage): Headers {
  const headers = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.startsWith(":")) continue; // HTTP/2 pseudo-headers
    headers.append(name, raw[i + 1] as string);
  }
  return headers;
}

/**
 * @internal The `Request` of `toRequest` (src/http/node.ts): its signal aborts when the client goes
 * away; its body is the IncomingMessage's, streamed, or what a body parser left (`req.rawBody`, or
 * `req.body` re-serialised as JSON), or `given.body`.
 */
export function makeRequest(req: IncomingMessage, res: ServerResponse, url: string, given: Given = {}): Request {
  const controller = new AbortController();
  const abort = () => {
    if (!res.writableFinished) controller.abort(new Error("The client disconnected."));
  };
  // Made late (a stand-in's hook asked for it): the client may have left already.
  if (res.closed) abort();
  else res.once("close", abort);
  const method = req.method ?? "GET";
  const init: RequestInit & { duplex?: "half" } = {
    method,
    headers: given.headers ?? headersOf(req),
    signal: controller.signal,
  };
  if (method !== "GET" && method !== "HEAD") {
    const parsed = req as IncomingMessage & { rawBody?: unknown; body?: unknown };
    if (given.body !== undefined) {
      init.body = given.body;
    } else if (Buffer.isBuffer(parsed.rawBody) || typeof parsed.rawBody === "string") {
      init.body = parsed.rawBody as NonNullable<RequestInit["body"]>;
    } else if (req.readableEnded && parsed.body !== undefined) {
      init.body =
        Buffer.isBuffer(parsed.body) || typeof parsed.body === "string"
          ? (parsed.body as NonNullable<RequestInit["body"]>)
          : JSON.stringify(parsed.body);
    } else if (!req.readableEnded) {
      // node:stream/web's ReadableStream is the global one; the two type declarations differ in name only.
      init.body = Readable.toWeb(req) as unknown as ReadableStream<Uint8Array>;
      init.duplex = "half";
    }
  }
  return new Request(url, init);
}

const EMPTY = new Uint8Array(0);
/** The stand-in's real `Request`, made on first need. */
const REAL = Symbol("real");

/**
 * @internal A stand-in for the `Request` of an IncomingMessage, for the credit handler on node
 * (`toNodeHandler`, `serve`): `url`, `method` and `headers` are its own, and the router reads the
 * body straight from the IncomingMessage (`RAW_BODY`), so a request that needs no more builds no
 * `Request`, no web stream and no `AbortController` (docs/benchmarks.md, "HTTP
 * metering", the credit API). Everything else a `Request` has (`signal`, `clone()`, `json()`, …) makes the real one,
 * once, and answers from it: it is `instanceof Request`, and a hook reads it as one. Only `fetch()`
 * and `new Request()` need the real one: `request.clone()` gives it (docs/http.md).
 */
class NodeRequest {
  readonly #req: IncomingMessage;
  readonly #res: ServerResponse;
  readonly #url: string;
  #headers: Headers | null = null;
  #real: Request | null = null;
  /** The body as the router read it; null while it reads, undefined before. */
  #body: Uint8Array | null | undefined = undefined;

  constructor(req: IncomingMessage, res: ServerResponse, url: string) {
    this.#req = req;
    this.#res = res;
    this.#url = url;
  }

  get url(): string {
    return this.#url;
  }

  get method(): string {
    return this.#req.method ?? "GET";
  }

  get headers(): Headers {
    if (this.#real !== null) return this.#real.headers;
    this.#headers ??= headersOf(this.#req);
    return this.#headers;
  }

  /** The real `Request`, made on first need, with the headers and body this one already has. */
  [REAL](): Request {
    if (this.#real === null) {
      const given: Given = { headers: this.headers };
      const read = this.#body !== undefined;
      if (read) given.body = this.#body ?? EMPTY;
      this.#real = makeRequest(this.#req, this.#res, this.#url, given);
      // Read (or being read) by the router: used, as on a Fetch host (`bodyUsed`; reading it again
      // is a TypeError). Routes read it through `ctx.rawBody()` / `ctx.body()`.
      // Only marks the body used: the router has its bytes already, so a failed read loses nothing.
      if (read) this.#real.arrayBuffer().catch(() => undefined);
    }
    return this.#real;
  }

  /** For the router (`readBody`): the body, at most `limit` bytes; null: read the real one's. */
  [RAW_BODY](limit: number): Promise<Uint8Array> | null {
    if (this.#real !== null || this.#body !== undefined) return null;
    const req = this.#req as IncomingMessage & { rawBody?: unknown };
    const method = this.method;
    if (method === "GET" || method === "HEAD") return Promise.resolve(EMPTY);
    // A body parser ran (Express): the real one's body is what it left.
    if (req.rawBody !== undefined || req.readableEnded) return null;
    this.#body = null;
    return readBody(req, limit).then((bytes) => {
      this.#body = bytes;
      return bytes;
    });
  }
}

/** The longest a connection lingers after its 413, in ms (docs/http.md, "Errors → status"). */
const LINGER_MS = 5000;
/** A lingering connection on which nothing arrived for this long is closed at once, in ms. */
const LINGER_IDLE_MS = 2000;

/**
 * The 413 of a body past `limit` on node: it says `Connection: close`, and the connection lingers
 * after it (`linger`).
 */
const tooLargeHere = (req: IncomingMessage, limit: number) => {
  linger(req);
  const error = tooLarge(limit);
  return new HttpError(error.status, error.code, error.message, error.details, { connection: "close" });
};

/**
 * Lingering close, as nginx's `lingering_close`: the rest of the body is read and dropped (nothing
 * kept), and once the answer is written the connection's sending side is ended (the client reads
 * the 413 and the end) but its receiving side goes on reading and dropping what the client still
 * sends — until the client ends, nothing came for `LINGER_IDLE_MS`, or `LINGER_MS` passed — and only
 * then is it closed. Closed at once, with bytes of the body unread, the kernel would answer the
 * client with a reset, which fails its next write (EPIPE) and can discard the 413 before it is read.
 * Node.js closes a `Connection: close` answer's socket through its `destroySoon` (on the answer's
 * "finish"): that socket's is replaced. Where there is none (another runtime's node:http), nothing
 * changes.
 */
function linger(req: IncomingMessage): void {
  const socket = req.socket as (Socket & { destroySoon?: () => void }) | null;
  // Read and drop the rest of the body: the parser keeps reading the socket.
  req.on("error", () => undefined);
  req.resume();
  // HTTP/2 streams end by themselves, and their socket is not theirs to touch.
  if (req.httpVersionMajor >= 2 || socket === null || typeof socket.destroySoon !== "function") return;
  if (socket.destroyed) return;
  socket.destroySoon = () => {
    if (socket.destroyed) return;
    const close = () => {
      clearTimeout(total);
      clearTimeout(idle);
      socket.off("data", quiet);
      socket.destroy();
    };
    const total = setTimeout(close, LINGER_MS);
    const idle = setTimeout(close, LINGER_IDLE_MS);
    const quiet = () => idle.refresh();
    total.unref();
    idle.unref();
    socket.on("data", quiet);
    socket.once("end", close);
    socket.once("close", close);
    socket.on("error", () => undefined);
    socket.end();
  };
}

/**
 * The IncomingMessage's body, refused (413) past `limit` bytes, declared or sent. Past the limit it
 * stops keeping it, and leaves the connection to the answer: destroying it here would cut the 413
 * before it is written (a chunked body, which declares no length, was answered with nothing).
 */
function readBody(req: IncomingMessage, limit: number): Promise<Uint8Array> {
  const declared = Number(req.headers["content-length"] ?? "NaN");
  if (declared > limit) return Promise.reject(tooLargeHere(req, limit));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.byteLength;
      if (size > limit) {
        done();
        // The connection ends after the 413: a client that resets it then is no error of ours.
        reject(tooLargeHere(req, limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      done();
      resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size));
    };
    const onError = (error: Error) => {
      done();
      reject(error);
    };
    const onClose = () => {
      done();
      reject(new Error("The client disconnected before the body was sent."));
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
}

// Everything else a Request has, answered by the real one.
const own = new Set(["constructor", "url", "method", "headers"]);
for (const name of Object.getOwnPropertyNames(Request.prototype)) {
  if (own.has(name)) continue;
  const d = Object.getOwnPropertyDescriptor(Request.prototype, name) as PropertyDescriptor;
  if (typeof d.value === "function") {
    Object.defineProperty(NodeRequest.prototype, name, {
      configurable: true,
      writable: true,
      value(this: NodeRequest, ...args: unknown[]) {
        const real = this[REAL]();
        return (Reflect.get(real, name) as (...a: unknown[]) => unknown).apply(real, args);
      },
    });
  } else if (d.get !== undefined) {
    Object.defineProperty(NodeRequest.prototype, name, {
      configurable: true,
      get(this: NodeRequest) {
        return Reflect.get(this[REAL](), name) as unknown;
      },
    });
  }
}
Object.setPrototypeOf(NodeRequest.prototype, Request.prototype);

/**
 * @internal The stand-in `Request` for `req` (see `NodeRequest`); an `HttpError` 400 when the Host
 * header and target make no URL.
 */
export function nodeRequest(req: IncomingMessage, res: ServerResponse, target = req.url ?? "/"): Request {
  // A Request by its prototype and its members (above), not by its declared type.
  return new NodeRequest(req, res, urlOf(req, target)) as unknown as Request;
}
