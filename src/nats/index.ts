/**
 * `credit-management/nats`: the outbox's events on NATS JetStream (docs/events.md), and a helper
 * that credits accounts from a JetStream consumer. `@nats-io/jetstream` and (for `servers`)
 * `@nats-io/transport-node` are optional peers: only this entry point imports them.
 */
import { jetstream, jetstreamManager, type Consumer, type JetStreamClient, type JsMsg } from "@nats-io/jetstream";
import type { Logger } from "../core/logger.js";
import * as z from "zod/mini";
import { ConfigurationError, ConflictError, CreditError, OutcomeUnknownError, StorageError } from "../core/errors.js";
import { parseConfig } from "../core/models/parse.js";
import { eventEnvelope, type NotificationMessage, type NotificationQueue } from "../core/queue/index.js";

/** A connection to NATS, as `connect()` of `@nats-io/transport-node` (or any transport) returns it. @public */
export type NatsConnection = Parameters<typeof jetstream>[0];

const SUBJECT_TOKEN = /^[A-Za-z0-9_-]+$/;
const Prefix = z.string().check(
  z.minLength(1),
  z.maxLength(200),
  z.refine(
    (p) => p.split(".").every((t) => SUBJECT_TOKEN.test(t)),
    "must be dot-separated tokens of letters, digits, _ and -",
  ),
);
const StreamName = z
  .string()
  .check(z.minLength(1), z.maxLength(100), z.regex(/^[A-Za-z0-9_-]+$/, "letters, digits, _ and - only"));

/** Options of `NatsJetStreamQueue`: the connection, the stream and how it publishes. @public */
const NatsJetStreamQueueOptions = z.strictObject({
  /** A connection you own (not closed by `close()`). Or `servers`. */
  connection: z.optional(
    z.custom<NatsConnection>(
      (v) => typeof v === "object" && v !== null && typeof (v as { request?: unknown }).request === "function",
      {
        error: "connection must be a NATS connection",
      },
    ),
  ),
  /** Server URL(s): the queue connects on first use (and again after a connection closed), and closes it in `close()`. */
  servers: z.optional(
    z.union([z.string().check(z.minLength(1)), z.array(z.string().check(z.minLength(1))).check(z.minLength(1))]),
  ),
  /** The stream that stores the events. Default `CREDIT_EVENTS`. */
  stream: z.optional(StreamName),
  /** Subjects are `<subjectPrefix>.<type>`. Default `evt.credits`. */
  subjectPrefix: z.optional(Prefix),
  /**
   * The stream's duplicate window, in ms: a message whose id the stream saw within it is dropped
   * (a redelivered outbox row). Default 3,600,000 (an hour). An existing stream with a shorter one
   * is a `ConfigurationError` in `init()`.
   */
  duplicateWindowMs: z.optional(z.number().check(z.int(), z.minimum(1000), z.maximum(7 * 86_400_000))),
  /** Create the stream in `init()` when it does not exist (default true); false: it must exist. */
  createStream: z.optional(z.boolean()),
  /** Longest wait for the stream's acknowledgement of one publish, in ms. Default 5,000. */
  timeoutMs: z.optional(z.number().check(z.int(), z.minimum(10), z.maximum(600_000))),
  logger: z.optional(
    z.custom<Logger>((v) => typeof v === "object" && v !== null && typeof (v as Logger).warn === "function"),
  ),
});
/** Options of `NatsJetStreamQueue`: the connection, the stream and how it publishes. @public */
export type NatsJetStreamQueueOptions = z.input<typeof NatsJetStreamQueueOptions>;

/**
 * A `NotificationQueue` that publishes each outbox row to JetStream (docs/events.md): the body is
 * the event envelope (`eventEnvelope`: `{ type, version, id, userId, occurredAt, payload }`) as
 * JSON, the subject `<subjectPrefix>.<type>`, and the row's id is the message id (`Nats-Msg-Id`),
 * so the stream drops a redelivery within its duplicate window. `publish` resolves once the stream
 * acknowledged the message (stored, or known as a duplicate); anything else throws, and the
 * dispatcher retries the row. Give it to `createCreditManager({ queue })`.
 * @public
 */
export class NatsJetStreamQueue implements NotificationQueue {
  /** The JetStream stream messages are published to. */
  readonly stream: string;
  /** Prepended to each message's subject. */
  readonly subjectPrefix: string;
  private readonly options: z.output<typeof NatsJetStreamQueueOptions>;
  private readonly duplicateWindowMs: number;
  private readonly timeoutMs: number;
  private connection: NatsConnection | undefined;
  private readonly owned: boolean;
  private ready: Promise<JetStreamClient> | undefined;
  private closed = false;

  /** A queue that publishes each message to a NATS JetStream stream. */
  constructor(options: NatsJetStreamQueueOptions) {
    const o = parseConfig(NatsJetStreamQueueOptions, options, "options", "NatsJetStreamQueue");
    if ((o.connection === undefined) === (o.servers === undefined)) {
      throw new ConfigurationError(
        "[credit-management] NatsJetStreamQueue: give either `connection` (yours) or `servers` (the queue connects), not both nor neither",
      );
    }
    this.options = o;
    this.connection = o.connection;
    this.owned = o.connection === undefined;
    this.stream = o.stream ?? "CREDIT_EVENTS";
    this.subjectPrefix = o.subjectPrefix ?? "evt.credits";
    this.duplicateWindowMs = o.duplicateWindowMs ?? 3_600_000;
    this.timeoutMs = o.timeoutMs ?? 5000;
  }

  /** The subject an event of `type` is published to. */
  subjectOf(type: string): string {
    return `${this.subjectPrefix}.${type}`;
  }

  /**
   * Connects (with `servers`), then creates the stream when it does not exist (subjects
   * `<subjectPrefix>.>`, the duplicate window) or checks the one that does: it must capture
   * `<subjectPrefix>.>` and keep ids at least `duplicateWindowMs`, else `ConfigurationError`.
   * Called by the first `publish` when you do not.
   */
  async init(): Promise<void> {
    await this.client();
  }

  /** Publishes the message, and resolves once the stream acknowledged it. */
  async publish(message: NotificationMessage): Promise<void> {
    const js = await this.client();
    const body = JSON.stringify(eventEnvelope(message));
    const ack = await js.publish(this.subjectOf(message.type), body, {
      msgID: message.id,
      timeout: this.timeoutMs,
      expect: { streamName: this.stream },
    });
    if (ack.duplicate)
      this.options.logger?.debug?.(
        { id: message.id, seq: ack.seq },
        "credit-management: NATS dropped a redelivered event (duplicate id)",
      );
  }

  /** Closes the connection the queue made (`servers`); a connection you gave stays open. */
  async close(): Promise<void> {
    this.closed = true;
    const nc = this.connection;
    this.ready = undefined;
    if (this.owned && nc !== undefined && !nc.isClosed()) await nc.close();
  }

  private client(): Promise<JetStreamClient> {
    if (this.closed) return Promise.reject(new StorageError("NatsJetStreamQueue is closed"));
    const nc = this.connection;
    if (this.ready !== undefined && nc !== undefined && !nc.isClosed()) return this.ready;
    const ready = this.setup();
    this.ready = ready;
    // A failure (server down, stream refused) is not kept: the next publish tries again.
    ready.catch(() => {
      if (this.ready === ready) this.ready = undefined;
    });
    return ready;
  }

  private async setup(): Promise<JetStreamClient> {
    let nc = this.connection;
    if (nc === undefined || (this.owned && nc.isClosed())) {
      const transport = (await import("@nats-io/transport-node")) as { connect(o: object): Promise<NatsConnection> };
      nc = await transport.connect({ servers: this.options.servers, timeout: this.timeoutMs });
      this.connection = nc;
    }
    const jsm = await jetstreamManager(nc, { timeout: this.timeoutMs });
    const subjects = `${this.subjectPrefix}.>`;
    const windowNanos = this.duplicateWindowMs * 1_000_000;
    const info = await jsm.streams.info(this.stream).catch((error: unknown) => {
      if (
        (error as { name?: string }).name === "StreamNotFoundError" ||
        /stream not found/i.test(String((error as Error).message))
      )
        return null;
      throw error;
    });
    if (info === null) {
      if (this.options.createStream === false) {
        throw new ConfigurationError(
          `[credit-management] NatsJetStreamQueue: stream ${this.stream} does not exist (createStream: false)`,
        );
      }
      await jsm.streams.add({ name: this.stream, subjects: [subjects], duplicate_window: windowNanos });
    } else {
      const covered = info.config.subjects?.some((s) => captures(s, this.subjectPrefix));
      if (covered !== true) {
        throw new ConfigurationError(
          `[credit-management] NatsJetStreamQueue: stream ${this.stream} does not capture ${subjects} (its subjects: ${(info.config.subjects ?? []).join(", ")})`,
        );
      }
      if (info.config.duplicate_window < windowNanos) {
        throw new ConfigurationError(
          `[credit-management] NatsJetStreamQueue: stream ${this.stream} keeps message ids for ${info.config.duplicate_window / 1_000_000} ms, less than duplicateWindowMs (${this.duplicateWindowMs}): a redelivered event could be stored twice`,
        );
      }
    }
    return jetstream(nc, { timeout: this.timeoutMs });
  }
}

/**
 * Whether a stream subject captures every `<prefix>.<type>`: `<prefix>.>`, `<prefix>.*`, or a
 * `>` wildcard at a token boundary before them (`evt.>`, `>`).
 */
function captures(subject: string, prefix: string): boolean {
  if (subject === `${prefix}.>` || subject === `${prefix}.*` || subject === ">") return true;
  return subject.endsWith(".>") && `${prefix}.`.startsWith(subject.slice(0, -1));
}

// -------------------------------------------------------------------------------------------------
// Consuming inbound events

/** What a handler gets beside the parsed event. @public */
export interface InboundContext {
  /** The message's subject. */
  subject: string;
  /** A stable id of the message: `<stream>:<stream sequence>` (the same on every redelivery). */
  messageId: string;
  /** 1 on the first delivery. */
  deliveryCount: number;
}

/** How one subject's messages are read and applied. @public */
export interface InboundHandler<T> {
  /** Validates the JSON body; a body it refuses is a poison message (dead-lettered at once). */
  schema: z.core.$ZodType<T>;
  /**
   * Applies the event. Make it idempotent (an idempotency key from the event's id), so that a
   * redelivered message changes nothing. Throwing a `CreditError` other than `StorageError` and
   * `ConflictError` dead-letters the message at once (the request itself is wrong); anything else
   * is retried, up to `maxDeliveries`.
   */
  handle(event: T, context: InboundContext): Promise<unknown>;
}

/** Declares a handler, typing `handle`'s event by its schema. @public */
export function inboundHandler<T>(
  schema: z.core.$ZodType<T>,
  handle: (event: T, context: InboundContext) => Promise<unknown>,
): InboundHandler<T> {
  return { schema, handle };
}

/** Options of `consumeCreditEvents()`: the connection, the stream, the consumer and the handler. @public */
export interface ConsumeCreditEventsOptions {
  /** A JetStream consumer (`js.consumers.get(stream, durable)`), whose stream captures the inbound subjects. */
  consumer: Consumer;
  /** The client the dead letters are published with. */
  js: JetStreamClient;
  /** Handlers by exact subject. A subject without one is dead-lettered. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  handlers: Record<string, InboundHandler<any>>;
  /** Where poison messages go (a subject some stream captures, so they are kept). */
  deadLetterSubject: string;
  /** Deliveries of a failing message before it is dead-lettered. Default 5. */
  maxDeliveries?: number;
  /** Delay before a failed message is delivered again, in ms (times the delivery count). Default 1,000. */
  retryDelayMs?: number;
  /** Where failures of the handler are logged. */
  logger?: Logger;
}

/** What one message came to. @public */
export type InboundOutcome = "applied" | "retry" | "dead_lettered";

/** A running consumer loop. @public */
export interface CreditEventConsumer {
  /** Stops pulling; resolves once the message in hand is settled. */
  stop(): Promise<void>;
  /** Resolves when the loop ended (after `stop()`, or when the consumer's messages end). */
  readonly done: Promise<void>;
  /** Counts of outcomes so far. */
  readonly counts: Readonly<Record<InboundOutcome, number>>;
}

const hasFunction = (name: string) => (v: unknown) =>
  typeof v === "object" && v !== null && typeof (v as Record<string, unknown>)[name] === "function";
const Handler = z.custom<InboundHandler<unknown>>(
  (v) => hasFunction("handle")(v) && hasFunction("safeParse")((v as { schema?: unknown }).schema),
  { error: "each handler must be { schema: a zod schema, handle: a function } (see inboundHandler)" },
);
const ConsumeOptions = z.strictObject({
  consumer: z.custom<Consumer>(hasFunction("consume"), {
    error: "consumer must be a JetStream consumer (js.consumers.get(stream, durable))",
  }),
  js: z.custom<JetStreamClient>(hasFunction("publish"), { error: "js must be a JetStream client (jetstream(nc))" }),
  handlers: z.record(z.string().check(z.minLength(1)), Handler),
  logger: z.optional(z.custom<Logger>(hasFunction("warn"))),
  deadLetterSubject: Prefix,
  maxDeliveries: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
  retryDelayMs: z.optional(z.number().check(z.int(), z.minimum(0), z.maximum(3_600_000))),
});

/**
 * Credits accounts from a JetStream consumer (docs/events.md): each message is parsed by its
 * subject's handler, applied, then acknowledged. A redelivery is applied again (idempotent
 * handlers make that a no-op). A poison message — no handler, not JSON, refused by the schema,
 * refused by the credits engine, or failing `maxDeliveries` times — is published to
 * `deadLetterSubject` (its body: `{ reason, error, subject, messageId, deliveryCount, data }`) and
 * then acknowledged; should that publish fail, the message is retried instead, so none is lost.
 * @public
 */
export function consumeCreditEvents(options: ConsumeCreditEventsOptions): CreditEventConsumer {
  const parsed = parseConfig(ConsumeOptions, options, "options", "consumeCreditEvents");
  const maxDeliveries = parsed.maxDeliveries ?? 5;
  const retryDelayMs = parsed.retryDelayMs ?? 1000;
  const counts: Record<InboundOutcome, number> = { applied: 0, retry: 0, dead_lettered: 0 };
  let stopped = false;
  let messages: Awaited<ReturnType<Consumer["consume"]>> | undefined;

  const deadLetter = async (
    m: JsMsg,
    context: InboundContext,
    reason: string,
    error: unknown,
  ): Promise<InboundOutcome> => {
    const body = {
      reason,
      error: error instanceof Error ? `${error.name}: ${error.message}` : String(error),
      subject: m.subject,
      messageId: context.messageId,
      deliveryCount: context.deliveryCount,
      data: m.string(),
    };
    try {
      await options.js.publish(parsed.deadLetterSubject, JSON.stringify(body), {
        msgID: `dead:${context.messageId}`,
      });
    } catch (failure) {
      options.logger?.warn(
        { err: failure, messageId: context.messageId },
        "credit-management: could not dead-letter a message; it is retried",
      );
      m.nak(retryDelayMs);
      return "retry";
    }
    options.logger?.warn(
      { reason, messageId: context.messageId, subject: m.subject },
      "credit-management: message dead-lettered",
    );
    m.ack();
    return "dead_lettered";
  };

  const handleOne = async (m: JsMsg): Promise<InboundOutcome> => {
    const context: InboundContext = {
      subject: m.subject,
      messageId: `${m.info.stream}:${m.info.streamSequence}`,
      deliveryCount: m.info.deliveryCount,
    };
    const handler = Object.hasOwn(options.handlers, m.subject) ? options.handlers[m.subject] : undefined;
    if (handler === undefined) return deadLetter(m, context, "no_handler", `no handler for ${m.subject}`);
    let json: unknown;
    try {
      json = JSON.parse(m.string());
    } catch (error) {
      return deadLetter(m, context, "invalid_payload", error);
    }
    const event = z.safeParse(handler.schema, json);
    if (!event.success) return deadLetter(m, context, "invalid_payload", z.prettifyError(event.error));
    try {
      await handler.handle(event.data, context);
    } catch (error) {
      // Retried: the store failed (nothing applied), a conflict, or an outcome not known
      // (docs/concepts.md, "Certain and uncertain errors"); any other refusal is final.
      const transient =
        error instanceof StorageError || error instanceof ConflictError || error instanceof OutcomeUnknownError;
      if (error instanceof CreditError && !transient) return deadLetter(m, context, "refused", error);
      if (context.deliveryCount >= maxDeliveries) return deadLetter(m, context, "failed", error);
      options.logger?.warn(
        { err: error, messageId: context.messageId, deliveryCount: context.deliveryCount },
        "credit-management: inbound event failed; retried",
      );
      m.nak(retryDelayMs * context.deliveryCount);
      return "retry";
    }
    m.ack();
    return "applied";
  };

  const done = (async () => {
    messages = await options.consumer.consume();
    if (stopped) await messages.close();
    for await (const m of messages) {
      counts[await handleOne(m)]++;
      if (stopped) break;
    }
  })();
  // The loop's end is reported through `done`; a failure nobody awaits is logged, not unhandled.
  done.catch((error: unknown) =>
    options.logger?.error({ err: error }, "credit-management: the inbound event consumer stopped"),
  );
  return {
    counts,
    done,
    async stop() {
      stopped = true;
      await messages?.close();
      // `done`'s failure was logged when the loop ended (above): stopping only waits for it.
      await done.catch(() => undefined);
    },
  };
}
