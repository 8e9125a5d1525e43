import type { DbManager } from "../db/types.js";
import type { EntryMeta } from "../domain/account-work.js";
import { limitStatuses, replaceLimits, withLimit, withoutLimit } from "../domain/limits.js";
import type { SubscriptionStore } from "../db/types-subscriptions.js";
import {
  MutationOptions,
  RemoveLimitInput,
  SetLimitsInput,
  SpendLimitInput,
  UserId,
  parse,
  type LimitCycle,
  type SpendLimitStatus,
} from "../models/index.js";
import type { BalanceReads } from "./balance-reads.js";
import type { UnitRunner } from "./unit-of-work.js";

/** What spend limits use of their `CreditService`. */
export interface SpendLimitDeps {
  db: DbManager;
  units: UnitRunner;
  reads: BalanceReads;
  clock: () => Date;
  /** The entry fields of validated options (`CreditService`'s, with the idempotency fingerprint). */
  meta: (operation: string, o: MutationOptions, args: () => Record<string, unknown>) => EntryMeta;
}

/**
 * An account's spend limits (docs/teams-and-limits.md): `CreditService`'s `setLimits`, `setLimit`,
 * `getLimits` and `removeLimit` delegate here; their documentation is there.
 */
export class SpendLimits {
  constructor(private readonly d: SpendLimitDeps) {}

  /** `CreditService.setLimits`. */
  async setLimits(
    userId: string,
    limits: SpendLimitInput[],
    options: MutationOptions = {},
  ): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const list = parse(SetLimitsInput, limits, "limits");
    const o = parse(MutationOptions, options, "options");
    const cycle = list.some((l) => l.resetsWith === "subscription") ? await this.limitCycle(user) : null;
    const meta = this.d.meta("setLimits", o, () => ({ limits: list, ...o }));
    const set = await this.d.units.mutate("setLimits", user, meta, (work) => {
      work.setLimits(replaceLimits(work.account.limits ?? null, list, cycle), meta);
      return work.account.limits ?? [];
    });
    return limitStatuses(set, this.d.clock().getTime());
  }

  /** `CreditService.setLimit`. */
  async setLimit(userId: string, limit: SpendLimitInput, options: MutationOptions = {}): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const input = parse(SpendLimitInput, limit, "limit");
    const o = parse(MutationOptions, options, "options");
    const cycle = input.resetsWith === "subscription" ? await this.limitCycle(user) : null;
    const meta = this.d.meta("setLimit", o, () => ({ limit: input, ...o }));
    const set = await this.d.units.mutate("setLimit", user, meta, (work) => {
      work.setLimits(withLimit(work.account.limits ?? null, input, cycle), meta);
      return work.account.limits ?? [];
    });
    return limitStatuses(set, this.d.clock().getTime());
  }

  /** The account's active subscription's cycle, which a `resetsWith: "subscription"` limit follows; null without one. */
  private async limitCycle(user: string): Promise<LimitCycle | null> {
    const subscriptions = this.d.db as Partial<SubscriptionStore>;
    const active = subscriptions.getActiveSubscription ? await subscriptions.getActiveSubscription(user) : null;
    return active === null ? null : { anchorAt: active.anchorAt.getTime(), billingPeriod: active.billingPeriod };
  }

  /** `CreditService.getLimits`. */
  async getLimits(userId: string): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const { limits } = await this.d.reads.state(user, null);
    return limitStatuses(limits ?? [], this.d.clock().getTime());
  }

  /** `CreditService.removeLimit`. */
  async removeLimit(
    userId: string,
    which: RemoveLimitInput,
    options: MutationOptions = {},
  ): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const w = parse(RemoveLimitInput, which, "limit");
    const o = parse(MutationOptions, options, "options");
    const meta = this.d.meta("removeLimit", o, () => ({ ...w, ...o }));
    const left = await this.d.units.mutate("removeLimit", user, meta, (work) => {
      const before = work.account.limits ?? [];
      const after = withoutLimit(before, w);
      if (after.length !== before.length) work.setLimits(after, meta);
      return after;
    });
    return limitStatuses(left, this.d.clock().getTime());
  }
}
