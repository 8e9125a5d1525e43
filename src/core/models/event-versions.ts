import { CORE_NOTIFICATION_TYPES, type NotificationType } from "./notifications.js";

/**
 * The current version of every core type's payload schema (1 for all in this release); a module's
 * types are at version 1 unless their notification names another.
 */
export const EVENT_VERSIONS: Readonly<Partial<Record<NotificationType, number>>> = Object.freeze(
  Object.fromEntries(CORE_NOTIFICATION_TYPES.map((t) => [t, 1])),
);
