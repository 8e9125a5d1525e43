import type { NotificationType } from "../models/index.js";
import type { EventEnvelope } from "../models/events.js";

/** What a `NotificationQueue` receives: one outbox row, as JSON-friendly values. @public */
export interface NotificationMessage {
  /** Stable across redeliveries: consumers drop a message whose id they have seen. */
  id: string;
  /** The account the event is about. */
  userId: string;
  /** The event's type. */
  type: NotificationType;
  /**
   * The version of `payload`'s schema for `type`, as the row was recorded (docs/events.md,
   * "Versions"). The dispatcher always sets it; a message built without it is version 1.
   */
  version?: number;
  /** The event's fields, as `type` and `version` define them (docs/events.md). */
  payload: Record<string, unknown>;
  /** ISO-8601 time the event was recorded. */
  createdAt: string;
  /** 1 on the first delivery attempt, 2 on the first retry, … */
  attempt: number;
  /**
   * The row's dedupe key where it has one (an alert event's `alert_triggered:<id>:<n>`, a
   * reminder's, …): the store records at most one row per key and user, so one key is one event.
   * Null: none. The dispatcher always sets it; a message built without it has none.
   */
  dedupeKey?: string | null;
}

/**
 * Where the dispatcher delivers notifications. `publish` resolving means the message was accepted
 * (the row is then marked sent); throwing means it was not (the row is retried with backoff). The
 * error thrown may carry `retryAfterMs` (a number: the next attempt after that many ms instead of
 * the dispatcher's backoff) and `final: true` (no more attempts: the row is `failed` now); the
 * dispatcher's `maxAttempts` still bounds the attempts.
 * @public
 */
export interface NotificationQueue {
  /** Delivers one message: resolves when it was accepted, throws when it was not (the row is retried). */
  publish(message: NotificationMessage): Promise<void>;
  /** Releases what the queue created (not a client handed to it). */
  close?(): Promise<void>;
  /** Optional: resolves once the queue's backend answers, rejects when it cannot (`manager.health()`). */
  ping?(): Promise<void>;
}

/** Keeps messages in an array: for tests and development. @public */
export class InMemoryNotificationQueue implements NotificationQueue {
  /** Every message published, in order. */
  readonly messages: NotificationMessage[] = [];

  /** Keeps a copy of the message. */
  async publish(message: NotificationMessage): Promise<void> {
    this.messages.push(structuredClone(message));
  }

  /** Messages of one user (and type), in delivery order. */
  of(userId: string, type?: NotificationType): NotificationMessage[] {
    return this.messages.filter((m) => m.userId === userId && (type === undefined || m.type === type));
  }

  /** Forgets every message. */
  clear(): void {
    this.messages.length = 0;
  }
}

/** Hands every message to a function the host supplies (email, SMS, push, a webhook…). @public */
export class CallbackNotificationQueue implements NotificationQueue {
  /** A queue that hands each message to `callback`; the message is accepted when it resolves. */
  constructor(private readonly callback: (message: NotificationMessage) => void | Promise<void>) {}

  /** Calls the callback with the message. */
  async publish(message: NotificationMessage): Promise<void> {
    await this.callback(message);
  }
}

/**
 * The published form of an outbox message (docs/events.md): `{ type, version, id, userId,
 * occurredAt, payload }`, with the version of the payload's schema the row was recorded with. What the NATS adapter
 * sends as a message's body; parse it with the `DomainEvent` model of `credit-management/models`.
 * @public
 */
export function eventEnvelope(message: NotificationMessage): EventEnvelope {
  return {
    type: message.type,
    version: message.version ?? 1,
    id: message.id,
    userId: message.userId,
    occurredAt: message.createdAt,
    payload: message.payload,
  };
}
