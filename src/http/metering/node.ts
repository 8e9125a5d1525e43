import type { IncomingMessage, ServerResponse } from "node:http";
import type { MeterOutcome, MeterSession } from "../../services/metering.js";
import { ResponseUsageReader } from "../../domain/llm-usage.js";
import { errorBody, errorResponse, json } from "../router.js";
import { isPromiseLike } from "../../util/promise.js";
import {
  NO_BODY,
  PricedRequest,
  common,
  headerOf,
  type CreditMeteringMiddlewareOptions,
  type MeteringLocals,
} from "./common.js";
import { nodePathOf } from "./paths.js";

type Next = (error?: Error) => void;
type Common = ReturnType<typeof common<IncomingMessage>>;
type End = (this: ServerResponse, ...args: unknown[]) => ServerResponse;
type Write = (this: ServerResponse, ...args: unknown[]) => boolean;

/** Where a metered ServerResponse keeps its request's state (one object per request, no closures). */
const METERED = Symbol("credit-management.metered");
type MeteredResponse = ServerResponse & { [METERED]?: NodeMetered };

/** One metered node request: its session, the response's own `write`/`end`, what `end` deferred. */
class NodeMetered {
  /** Written in parts (`res.write`): the headers are out before the end. */
  parts = false;
  /** Usage read from the body of an end that could not wait (committed when the response closes). */
  pending: number | undefined = undefined;
  /** `llm`: the usage of the body, read as it is written. */
  reading: ResponseUsageReader | null = null;
  private endChunk: unknown;
  private endEncoding: unknown;
  private endCallback: unknown;

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

  /** `res.end(body)` before the headers went out: settle first, then end with the header set. */
  endAfterSettling(p: Promise<MeterOutcome>, chunk: unknown, encoding: unknown, cb: unknown): void {
    this.endChunk = chunk;
    this.endEncoding = encoding;
    this.endCallback = cb;
    p.then(
      (outcome) => {
        this.c.report(this.req, this.session, outcome, this.locals);
        this.finishEnd(outcome.charged);
      },
      () => this.finishEnd(null),
    );
  }

  private finishEnd(charged: number | null): void {
    const res = this.res;
    if (charged !== null && !res.headersSent) res.setHeader(this.c.deductedHeader, String(charged));
    this.end.call(res, this.endChunk, this.endEncoding, this.endCallback);
    this.endChunk = this.endEncoding = this.endCallback = undefined;
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
  const [chunk, encoding, cb] = args;
  const m = this[METERED] as NodeMetered;
  const session = m.session;
  if (session.settled) return m.end.apply(this, args);
  if (m.c.llm !== null) {
    if (m.parts || this.headersSent) {
      m.read(chunk, encoding);
      return m.end.apply(this, args); // settled when the response closes
    }
    // The whole body in one end: its usage now, the header set.
    m.read(chunk, encoding);
    const reading = m.reading === null ? NO_BODY : m.reading.end();
    m.reading = null;
    m.endAfterSettling(m.c.settleReading(session, reading, this.statusCode), chunk, encoding, cb);
    return this;
  }
  // The usage of the body: only with a `usageKey` and when the handler recorded none.
  const amount =
    m.c.usagePath !== null && session.usages.length === 0 && !m.parts ? m.c.usageOfBody(this, chunk) : undefined;
  if (m.parts || this.headersSent) {
    m.pending = amount; // committed when the response closes; the header is gone already
    return m.end.apply(this, args);
  }
  m.endAfterSettling(this.statusCode >= 500 ? session.release("error") : session.commit(amount), chunk, encoding, cb);
  return this;
}

/** The response is done (finished, or its client went away): settle whatever is not settled yet. */
function onMeteredClose(this: MeteredResponse): void {
  const m = this[METERED];
  if (m === undefined || m.session.settled) return;
  const session = m.session;
  if (m.c.llm !== null && m.reading !== null) {
    // An LLM response that was written: billed from its usage, or as a cut stream.
    void m.settle(
      m.c.settleReading(session, this.writableFinished ? m.reading.end() : m.reading.cut(), this.statusCode),
    );
  } else if (!this.writableFinished) void m.settle(session.release("aborted"));
  else if (m.c.llm !== null) void m.settle(m.c.settleReading(session, NO_BODY, this.statusCode));
  else void m.settle(this.statusCode >= 500 ? session.release("error") : session.commit(m.pending));
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
  if (settled instanceof PricedRequest) {
    if (!settled.done) settled.notCharged("error");
  } else {
    const locals = (res as { locals?: Partial<MeteringLocals> }).locals;
    void c.settle(req, settled, settled.release("error"), locals);
  }
  for (const name of res.headersSent ? [] : res.getHeaderNames()) res.removeHeader(name);
  reply(res, answer);
}

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
  const [chunk, encoding, cb] = args;
  const { priced, deductedHeader, end } = this[FIXED] as NonNullable<FixedResponse[typeof FIXED]>;
  if (priced.done || this.headersSent) return end.apply(this, args); // settled on close
  if (this.statusCode >= 400) {
    priced.notCharged("error");
    this.setHeader(deductedHeader, "0");
    return end.apply(this, args);
  }
  // The whole response in one end: charge first, so X-Credits-Deducted can say it.
  void priced.charge().then((n) => {
    if (n !== null && !this.headersSent) this.setHeader(deductedHeader, String(n));
    end.call(this, chunk, encoding, cb);
  });
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
  if (res.destroyed || res.writableEnded) return priced.drop(); // the client left: nothing ran, nothing charged
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
 */
export function creditMeteringMiddleware(options: CreditMeteringMiddlewareOptions) {
  const c = common(options);

  /** The hold is placed: intercept the end of the response and run the rest of the chain. */
  const start = (req: IncomingMessage, res: MeteredResponse, next: Next, session: MeterSession): void => {
    try {
      const locals = (res as { locals?: Partial<MeteringLocals> }).locals;
      if (res.destroyed || res.writableEnded) {
        // The client left (or the response ended) while it was authenticated or the hold placed:
        // "close" has fired already, so release now and run nothing.
        void c.settle(req, session, session.release("aborted"), locals);
        return;
      }
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

  /**
   * Who pays and how much: then, at a fixed price, the check (set aside in the lease block, or read
   * on the store) and the chain; else the hold, then the chain. Any error before the chain runs is
   * the answer (401, 400, 402, 429, 5xx).
   */
  const meter = async (req: IncomingMessage, res: ServerResponse, next: Next, path: string): Promise<void> => {
    let priced: PricedRequest<IncomingMessage> | null = null;
    let session: MeterSession | null = null;
    try {
      const found = options.authenticate ? await options.authenticate(req) : null;
      const identity = c.identityOf(found, found ? undefined : headerOf(req, "x-user-id")); // the header only when no one was found
      if (identity === null) return reply(res, json(401, errorBody("UNAUTHORIZED", "Authentication required.")));
      const spend = c.spendOf(req, identity);
      if (c.fixed !== null) {
        const key = c.fixed.keyOf(headerOf(req, "idempotency-key"));
        const cost = await c.fixed.costOf(req);
        if (res.destroyed || res.writableEnded) return; // the client left: nothing checked, nothing set aside
        const locals = (res as { locals?: Partial<MeteringLocals> }).locals;
        priced = await c.fixed.open(req, identity.userId, cost, key, req.method, path, locals, spend);
      } else {
        const estimate = c.estimate((name) => headerOf(req, name));
        session = await c.openMeter(identity.userId, c.meterOptions(estimate, req.method, path, spend));
      }
    } catch (error) {
      return reply(res, errorResponse(error));
    }
    if (priced !== null) fixedGo(c, req, res, next, priced);
    else start(req, res, next, session as MeterSession);
  };

  return (req: IncomingMessage, res: ServerResponse, next: Next): void => {
    const path = nodePathOf(req);
    if (!c.applies(path, c.routerFor(req))) {
      next();
      return;
    }
    void meter(req, res, next, path);
  };
}
