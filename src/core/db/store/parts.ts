import type { NotificationStore } from "../types-notifications.js";
import type { SubscriptionStore } from "../types-subscriptions.js";

/** A part's methods may answer at once instead of with a promise (an in-process store). @beta */
export type Part<T> = {
  [K in keyof T]: NonNullable<T[K]> extends (...args: infer A) => Promise<infer R>
    ? (...args: A) => R | Promise<R>
    : T[K];
};

/** The core's sub-stores a `DbManager` forwards to (see `StoreBase` and `defineStore`). @beta */
export interface SideParts {
  /** The plans and subscriptions part. */
  subscriptions: Part<SubscriptionStore>;
  /** The outbox part. */
  outbox: Part<NotificationStore>;
}
