/**
 * Instrumentation on `node:diagnostics_channel`, the way undici and Node itself instrument: named
 * channels that cost one property read per operation while nobody subscribes (a message is built
 * only when `hasSubscribers` says someone listens). Metrics and tracing integrations — ours,
 * `credit-management/otel`, or your own — subscribe to them. See docs/observability.md. The core
 * publishes on its channels (src/core/diagnostics.ts), the payments and metering modules on theirs.
 */
import { CORE_CHANNELS } from "./core/diagnostics.js";
import { WEBHOOK_CHANNEL } from "./modules/billing/diagnostics.js";
import { METERING_CHANNEL } from "./modules/metering/diagnostics.js";

/**
 * The version of the channels' contract: the channel names and message shapes. Within a version,
 * fields are only ever added; a field removed or changed gets new channel names.
 * @public
 */
export const DIAGNOSTICS_VERSION = 1;

/** The channel names (`diagnostics_channel.channel(name)` / `tracingChannel(name)`). @public */
export const DIAGNOSTICS_CHANNELS = {
  /** Tracing channel (start, end, asyncStart, asyncEnd, error): one unit of work on an account. */
  unitOfWork: CORE_CHANNELS.unitOfWork,
  /** Channel: an operation refused for lack of credits (HTTP 402). */
  refusal: CORE_CHANNELS.refusal,
  /** Channel: a hold placed, committed, released or lapsed (after its unit of work committed). */
  hold: CORE_CHANNELS.hold,
  /** Tracing channel: one run of a job (`expiration.*`, `notifications.sendExpiringReminders`, `purge`). */
  job: CORE_CHANNELS.job,
  /** Tracing channel: one `notifications.dispatchPending` round. */
  dispatch: CORE_CHANNELS.dispatch,
  /** Channel: a payment provider's webhook handled (or refused). */
  webhook: WEBHOOK_CHANNEL,
  /** Channel: a metered call settled (charged or released). */
  metering: METERING_CHANNEL,
} as const;

export type {
  DispatchMessage,
  HoldMessage,
  JobMessage,
  RefusalMessage,
  UnitOfWorkMessage,
  UnitOutcome,
} from "./core/diagnostics.js";
export type { WebhookMessage } from "./modules/billing/diagnostics.js";
export type { MeteringMessage } from "./modules/metering/diagnostics.js";
