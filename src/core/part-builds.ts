/**
 * The parts of the core a manager is given (docs/modules.md, "Parts of the core"): their public
 * shape, and how each builds, kept beside it. Types and a registry only: the factories that build
 * them (src/core/parts.ts) are what a manager without them never bundles.
 */
import type { Cache } from "./cache/index.js";
import type { DbManager } from "./db/types.js";
import type { LedgerLogger } from "./ledger/index.js";
import type { Logger } from "./logger.js";
import type { CoreCreditService } from "./services/credit-service.js";
import type { ExpirationService } from "./services/expiration-service.js";
import type { NotificationService } from "./services/notification-service.js";
import type { OutboxRecording } from "./services/outbox-recording.js";
import type { SubscriptionService } from "./services/subscription-service.js";

const isObject = (v: unknown) => typeof v === "object" && v !== null;

/**
 * A part of the core, named by the service it builds (docs/modules.md, "Parts of the core"):
 * `subscriptionsPart()`, `notificationsPart(options)`, `expirationPart(options)` make one each.
 * @public
 */
export interface CorePart<Name extends "subscriptions" | "notifications" | "expiration"> {
  /** The service the part builds: the manager's property of that name. */
  readonly part: Name;
}

/** The manager's `parts` option: the parts it builds besides `credits`, each under its service's name. @public */
export interface ManagerParts {
  /** `manager.subscriptions`: plans and subscriptions. */
  subscriptions?: CorePart<"subscriptions">;
  /** `manager.notifications`: the outbox and its dispatcher, alerts and domain events recorded. */
  notifications?: CorePart<"notifications">;
  /** `manager.expiration`: the maintenance jobs. */
  expiration?: CorePart<"expiration">;
}

/** The services a manager built from its `parts` option `P`. @public */
export type PartServices<P extends ManagerParts> = (P extends { subscriptions: CorePart<"subscriptions"> }
  ? { /** Plans and subscriptions. */ subscriptions: SubscriptionService }
  : unknown) &
  (P extends { notifications: CorePart<"notifications"> }
    ? { /** The outbox dispatcher, thresholds and emit hook. */ notifications: NotificationService }
    : unknown) &
  (P extends { expiration: CorePart<"expiration"> }
    ? { /** The maintenance jobs. */ expiration: ExpirationService }
    : unknown);

/** What every part's service is built over: the manager's store, ledger, cache, clock, logger and credits. */
export interface PartContext {
  db: DbManager;
  ledger: LedgerLogger;
  cache: Cache | undefined;
  clock: (() => Date) | undefined;
  logger: Logger;
  credits: CoreCreditService;
}

/** How each part builds its service (kept beside the part, never on it: its public shape is its name). */
export interface NotificationsBuild {
  /** What the credit service's units of work record; undefined: nothing (the dispatcher and `emit` only). */
  outbox: OutboxRecording | undefined;
  reminderDays: readonly number[] | undefined;
  /** Undefined: a recording for a credit service's units of work alone (`new CreditService({ alerts })`). */
  service: ((ctx: PartContext) => NotificationService) | undefined;
}
export interface SubscriptionsBuild {
  service(ctx: PartContext): SubscriptionService;
}
export interface ExpirationBuild {
  service(
    ctx: PartContext & {
      subscriptions: SubscriptionService | undefined;
      notifications: NotificationService | undefined;
      /** The notifications part's reminder windows. */
      reminderDays: readonly number[] | undefined;
    },
  ): ExpirationService;
}
const builds = new WeakMap<object, NotificationsBuild | SubscriptionsBuild | ExpirationBuild>();

/** A part named `name` that builds by `build` (its factory's side of it). */
export function definePart<P extends { readonly part: string }>(
  name: P["part"],
  build: P extends CorePart<"notifications">
    ? NotificationsBuild
    : P extends CorePart<"subscriptions">
      ? SubscriptionsBuild
      : ExpirationBuild,
): P {
  const part = Object.freeze({ part: name }) as P;
  builds.set(part, build);
  return part;
}

/** How the part `part` builds (the manager's side of the part). */
export function notificationsBuild(part: CorePart<"notifications">): NotificationsBuild {
  return builds.get(part) as NotificationsBuild;
}
/** How the part `part` builds (the manager's side of the part). */
export function subscriptionsBuild(part: CorePart<"subscriptions">): SubscriptionsBuild {
  return builds.get(part) as SubscriptionsBuild;
}
/** How the part `part` builds (the manager's side of the part). */
export function expirationBuild(part: CorePart<"expiration">): ExpirationBuild {
  return builds.get(part) as ExpirationBuild;
}
/** Whether `v` is a part named `name` made by its factory. */
export function isPart(v: unknown, name: string): boolean {
  return isObject(v) && (v as { part?: unknown }).part === name && builds.has(v as object);
}
