import type { IncomingMessage, ServerResponse } from "node:http";
import type { MeterOutcome, MeterSession } from "./service.js";
import { ResponseUsageReader } from "../pricing/rules-llm-usage.js";
import { isPromiseLike } from "../../core/util/promise.js";
import { common, headerOf, type CreditMeteringMiddlewareOptions, type MeteringLocals } from "./routes-common.js";
import type { PricedRequest } from "./routes-fixed-price.js";
import { nodePathOf } from "./routes-paths.js";

type Next = (error?: Error) => void;
type Common = ReturnType<typeof common<IncomingMessage>>;
type End = (this: ServerResponse, ...args: unknown[]) => ServerResponse;
type Write = (this: ServerResponse, ...args: unknown[]) => boolean;

/** Where a metered ServerResponse keeps its request's state (one object per request, no closures). */
const METERED = Symbol("credit-management.metered");
type MeteredResponse = ServerResponse & { [METERED]?: NodeMetered };

/** One metered node request: its session, the response's own `write`/`end`. */
class NodeMetered {
  /** Written in parts (`res.write`): the headers are out before the end. */
  parts = false;
  /** Usage read from the body of an end that could not wait (committed when the response closes). */
  pending: number | undefined = undefined;
  /** `llm`: the usage of the body, read as it is written. */
  reading: ResponseUsageReader | null = null;

  constructor(
    readonly c: Common,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly session: MeterSession,
    readonly locals: Partial<MeteringLocals> | undefined,
    readonly write: Write,
    readonly end: End,
  ) {}

  /** Settles and reports once (`onSettled`, `res.locals`); a failed settlement reports nothing. */
  settle(p: Promise<MeterOutcome>): Promise<MeterOutcome | null> {
    return this.c.settle(this.req, this.session, p, this.locals);
  }

  /** `llm`: reads a written chunk for its usage (after it was handed to the socket). */
  read(chunk: unknown, encoding: unknown): void {
    if (chunk === undefined || chunk === null || typeof chunk === "function") return;
    const res = this.res;
    this.reading ??= new ResponseUsageReader(typeHeader(res));
    if (typeof chunk === "string") {
      if (typeof encoding === "string" && encoding !== "utf8" && encoding !== "utf-8")
        this.reading.push(Buffer.from(chunk, encoding as BufferEncoding));
      else this.reading.push(chunk);
    } else if (chunk instanceof Uint8Array) this.reading.push(chunk);
  }
}

function meteredWrite(this: MeteredResponse, ...args: unknown[]): boolean {
  const [chunk, encoding] = args;
  const m = this[METERED] as NodeMetered;
  m.parts = true;
  const ok = m.write.apply(this, args);
  if (m.c.llm !== null && !m.session.settled) m.read(chunk, encoding);
  return ok;
}

function meteredEnd(this: MeteredResponse, ...args: unknown[]): ServerResponse {
  const [chunk, encoding] = args;
  const m = this[METERED] as NodeMetered;
  const session = m.session;
  if (session.settled) return m.end.apply(this, args);
  const c = m.c;
  if (m.parts || this.headersSent) {
    // The header is gone already: settled when the response closes, from what the body said.
    if (c.llm !== null) m.read(chunk, encoding);
    else if (!m.parts && c.readsBody(session))
      m.pending = c.usageOfBody(session, textOf(chunk, encoding), typeHeader(this));
    return m.end.apply(this, args);
  }
  // The whole body in one end: settled first, then the end with the header set.
  const text = c.readsBody(session) ? textOf(chunk, encoding) : null;
  const settling = m.settle(c.settleBody(session, this.statusCode, text, typeHeader(this)));
  endWhenCharged(this, m.end, c.deductedHeader, settling.then(chargedOf), args);
  return this;
}

/** The response is done (finished, or its client went away): settle whatever is not settled yet. */
function onMeteredClose(this: MeteredResponse): void {
  const m = this[METERED];
  if (m === undefined || m.session.settled) return;
  void m.settle(m.c.settleEnd(m.session, this.writableFinished, this.statusCode, m.reading, m.pending));
}

/**
 * Ends a response whose `res.end(...args)` waited for its charge (its headers not sent): with
 * `X-Credits-Deducted` set to the credits charged, unless the charge failed (null).
 */
function endWhenCharged(
  res: ServerResponse,
  end: End,
  header: string,
  charging: Promise<number | null>,
  args: unknown[],
): void {
  void charging.then((charged) => {
    if (charged !== null && !res.headersSent) res.setHeader(header, String(charged));
    end.apply(res, args);
  });
}

const chargedOf = (outcome: MeterOutcome | null) => (outcome === null ? null : outcome.charged);

/** A written chunk as text (null when there is none): a string in its encoding, bytes as UTF-8. */
function textOf(chunk: unknown, encoding: unknown): string | null {
  if (typeof chunk === "string")
    return typeof encoding === "string" && encoding !== "utf8" && encoding !== "utf-8"
      ? Buffer.from(chunk, encoding as BufferEncoding).toString()
      : chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString();
  return null;
}

/** The content type a node response set, if it is readable (after `writeHead(status, headers)` it may not be). */
function typeHeader(res: ServerResponse): string | undefined {
  const type = res.getHeader("content-type");
  return type === undefined ? undefined : String(type);
}

/** Writes a Fetch `Response` built by the error helpers (401, 400, 402, 5xx) to a node response. */
function reply(res: ServerResponse, response: Response): void {
  if (res.headersSent) {
    // Too late for a status: the response is cut, as node cuts one whose handler failed.
    res.destroy();
    return;
  }
  res.statusCode = response.status;
  for (const [k, v] of response.headers) res.setHeader(k, v);
  void response.text().then((text) => res.end(text));
}

/**
 * The handler threw: logged once (the manager's logger), the request settled
 * without a charge by `notCharged`, and answered by the middleware (500, `X-Credits-Deducted: 0`)
 * unless its response was already sent whole (then it stands) or under way (then it is cut).
 */
function handlerFailed(
  c: Common,
  req: IncomingMessage,
  res: ServerResponse,
  error: unknown,
  settled: MeterSession | PricedRequest<IncomingMessage>,
): void {
  const answer = c.handlerFailed(error, req.method, nodePathOf(req));
  if (res.writableEnded) return; // answered already: settled by its own end
  void c.notCharged(req, settled, localsOf(res));
  for (const name of res.headersSent ? [] : res.getHeaderNames()) res.removeHeader(name);
  reply(res, answer);
}

/** Express's `res.locals`, where there are any. */
const localsOf = (res: ServerResponse) => (res as { locals?: Partial<MeteringLocals> }).locals;

/**
 * What the rest of the chain returned (`next()`: the handler, on plain node:http): a promise that
 * rejects is the handler failing too. Left alone, out of a promise callback (the middleware waited
 * for the store), its rejection would go unhandled, which ends a default Node process.
 */
function watchChain(
  out: unknown,
  c: Common,
  req: IncomingMessage,
  res: ServerResponse,
  settled: MeterSession | PricedRequest<IncomingMessage>,
): void {
  if (isPromiseLike(out)) out.then(undefined, (error: unknown) => handlerFailed(c, req, res, error, settled));
}

/** Where a fixed-price response keeps its request (`fixed.open`) and the `end` it replaced. */
const FIXED = Symbol("credit-management.fixed-price");
type FixedResponse = ServerResponse & {
  [FIXED]?: { priced: PricedRequest<IncomingMessage>; deductedHeader: string; end: End };
};

function fixedEnd(this: FixedResponse, ...args: unknown[]): ServerResponse {
  const { priced, deductedHeader, end } = this[FIXED] as NonNullable<FixedResponse[typeof FIXED]>;
  if (priced.done || this.headersSent) return end.apply(this, args); // settled on close
  const charging = priced.ended(this.statusCode);
  if (typeof charging === "number") {
    this.setHeader(deductedHeader, "0"); // not charged (status >= 400)
    return end.apply(this, args);
  }
  // The whole response in one end: charge first, so X-Credits-Deducted can say it.
  endWhenCharged(this, end, deductedHeader, charging, args);
  return this;
}

/** A fixed-price response is done: one written in parts is charged now if it finished well. */
function onFixedClose(this: FixedResponse): void {
  this[FIXED]?.priced.closed(this.writableFinished, this.statusCode);
}

/** Fixed price, checked: intercept the end of the response and run the rest of the chain. */
function fixedGo(
  c: Common,
  req: IncomingMessage,
  res: FixedResponse,
  next: Next,
  priced: PricedRequest<IncomingMessage>,
): void {
  try {
    res[FIXED] = { priced, deductedHeader: c.deductedHeader, end: res.end as End };
    res.end = fixedEnd as typeof res.end;
    watchChain(next(), c, req, res, priced);
  } catch (error) {
    // The handler threw: answered here (docs/metering.md, "When the handler throws").
    handlerFailed(c, req, res, error, priced);
  } finally {
    // The close is watched only while the response still owes its outcome: a handler that ended it
    // within next() (synchronously) was charged, or not, by fixedEnd. One that ended it in parts, or
    // answers later, is settled when it closes ("close" comes in a later turn; `closed` if it came).
    if (!priced.done) {
      if (res.closed) onFixedClose.call(res);
      else res.on("close", onFixedClose);
    }
  }
}

/**
 * Metering for node:http and Express (and anything that hands over `req, res, next`): holds the
 * estimate, calls `next()` inside the usage context, and settles when the response ends:
 * - `res.end(body)` with headers not yet sent (Express `res.json()`/`res.send()`, node `res.end()`):
 *   the end waits for the commit, so `X-Credits-Deducted` is set; usage is the recorded usage, else
 *   the `usageKey` of a JSON body;
 * - a response written in parts (`res.write`, SSE, `res.writeHead` first, Fastify): headers are out
 *   already, so the commit happens when the response is done and the figure goes to `onSettled` and
 *   `res.locals.creditsDeducted` (Express);
 * - status >= 500 releases; so does a client that disconnects before the response finished (one
 *   already gone when the hold is placed: released at once, `next()` is not called).
 * 401 without identity, 402 when the hold cannot be placed, 400 for a malformed estimate header.
 * @public
 */
export function creditMeteringMiddleware(
  options: CreditMeteringMiddlewareOptions,
): (req: IncomingMessage, res: ServerResponse, next: (error?: Error) => void) => void {
  const c = common(options);

  /** The hold is placed: intercept the end of the response and run the rest of the chain. */
  const start = (req: IncomingMessage, res: MeteredResponse, next: Next, session: MeterSession): void => {
    try {
      const locals = localsOf(res);
      if (locals) {
        locals.creditReservationId = session.reservationId;
        locals.creditEstimate = session.estimate;
      }
      res[METERED] = new NodeMetered(c, req, res, session, locals, res.write as Write, res.end as End);
      res.write = meteredWrite as typeof res.write;
      res.end = meteredEnd as typeof res.end;
      res.on("close", onMeteredClose);
      watchChain(session.run(next), c, req, res, session);
    } catch (error) {
      // The handler threw: answered here (docs/metering.md, "When the handler throws").
      handlerFailed(c, req, res, error, session);
    }
  };

  /** Who pays and how much (`begin`), then the rest of the chain at a fixed price or with the hold. */
  const meter = async (req: IncomingMessage, res: ServerResponse, next: Next, path: string): Promise<void> => {
    const begun = await c.begin(
      req,
      req.method,
      path,
      (name) => headerOf(req, name),
      () => res.destroyed || res.writableEnded,
      localsOf(res),
    );
    if (begun === null) return; // the client left: nothing ran
    if ("answer" in begun) reply(res, begun.answer);
    else if ("priced" in begun) fixedGo(c, req, res, next, begun.priced);
    else start(req, res, next, begun.session);
  };

  return (req: IncomingMessage, res: ServerResponse, next: Next): void => {
    const path = nodePathOf(req);
    if (!c.meters(path, req)) {
      next();
      return;
    }
    void meter(req, res, next, path);
  };
}
