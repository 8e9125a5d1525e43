/**
 * The customer's state in one read (docs/customer-state.md, "The state in one read"): the account
 * and its open grants from one snapshot of the store, then its subscription, made into the state by
 * `stateOf` (./rules.ts); and the same for many accounts, page by page.
 */
import { activeSubscription } from "../../core/services/subscription-periods.js";
import { byCodeUnit, stateOf, type AccountSnapshot, type CustomerState, type CustomerStatePage } from "./rules.js";
import { ConfigurationError } from "../../core/errors.js";
import type { Plan } from "../../core/models/index.js";
import type { ModuleContext } from "../../core/module.js";
import { alertStates } from "../../core/domain/notifications.js";

/** The unit of work that settles a due expiry before the state is read: named as the core's own settle. */
const SETTLE = { operation: "settle" } as const;

/** Accounts read at once by `listCustomerStates` (each its own unit of work). */
const PARALLEL = 8;

/** `CoreCreditService.getCustomerState` and `listCustomerStates`. */
export class CustomerStates {
  constructor(private readonly core: ModuleContext) {}

  /** One account's state. */
  async get(userId: string): Promise<CustomerState> {
    return this.read(userId, new Map());
  }

  /** A page of accounts' states. */
  async list(query: {
    cursor?: string | undefined;
    limit?: number | undefined;
    userIds?: string[] | undefined;
  }): Promise<CustomerStatePage> {
    const limit = query.limit ?? 100;
    const after = query.cursor ?? null;
    let ids: string[];
    if (query.userIds !== undefined) {
      const asked = [...new Set(query.userIds)].sort(byCodeUnit);
      ids = asked.filter((id) => after === null || id > after).slice(0, limit + 1);
    } else {
      const db = this.core.db;
      if (db.listAccountIds === undefined)
        throw new ConfigurationError(
          `[credit-management] the ${db.name} store cannot list its accounts (DbManager.listAccountIds): pass userIds`,
        );
      ids = await db.listAccountIds(after, limit + 1);
    }
    const more = ids.length > limit;
    const page = more ? ids.slice(0, limit) : ids;
    const plans = new Map<string, Promise<Plan | null>>();
    const items: CustomerState[] = new Array<CustomerState>(page.length);
    let next = 0;
    const worker = async () => {
      while (next < page.length) {
        const i = next++;
        items[i] = await this.read(page[i] as string, plans);
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL, page.length) }, worker));
    return { items, nextCursor: more ? (page[page.length - 1] as string) : null };
  }

  /** The state of `userId`: the account's snapshot, then its subscription (and plan, read once per call in `plans`). */
  private async read(userId: string, plans: Map<string, Promise<Plan | null>>): Promise<CustomerState> {
    const core = this.core;
    const snapshot = await this.snapshot(userId);
    const subscription = await activeSubscription(core.db, userId);
    let plan: Plan | null = null;
    if (subscription !== null) {
      let read = plans.get(subscription.planId);
      if (read === undefined) {
        read = core.db.getPlan(subscription.planId);
        plans.set(subscription.planId, read);
      }
      plan = await read;
    }
    const now = core.clock();
    // Every threshold with its state (docs/customer-state.md, "Alerts"), as `notifications.getAlerts`
    // lists them: by the thresholds this service keeps while it records notification events.
    const alerts = alertStates(snapshot.account, snapshot.grants, core.alerts, now);
    return stateOf(userId, snapshot, subscription, plan, core.features, now, alerts);
  }

  /**
   * The account and its open grants in one unit of work that writes nothing (one snapshot of the
   * store, never the cache); when an expiry is due, the unit of work that settles it answers with
   * what it left, as `getUserCreditsInfo`'s read does (src/core/services/balance-reads.ts).
   */
  private async snapshot(userId: string): Promise<AccountSnapshot> {
    const core = this.core;
    const loaded = await core.db.transaction(userId, async (tx) => {
      const state = await tx.load();
      return { account: state.account === null ? null : { ...state.account }, grants: [...state.grants] };
    });
    const next = loaded.account?.nextExpiryAt;
    if (next == null || next.getTime() > core.clock().getTime()) return loaded;
    // The work itself is the answer, read once the unit has committed: its save evaluates the
    // alerts on the account (docs/customer-state.md, "Alerts"), so the state answers the alert
    // states of the position it answers, as a second read at that seq does.
    const work = await core.runUnitOfWork(userId, {}, (w) => w, undefined, SETTLE);
    return work.isNew && !work.changed
      ? { account: null, grants: [] }
      : { account: { ...work.account }, grants: work.openGrants() };
  }
}
