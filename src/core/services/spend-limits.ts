import { limitStatuses, replaceLimits, withLimit, withoutLimit } from "../../core/domain/limits.js";
import type { SubscriptionStore } from "../../core/db/types-subscriptions.js";
import {
  MutationOptions,
  RemoveLimitInput,
  SetLimitsInput,
  SpendLimitInput,
  UserId,
  parse,
  type LimitCycle,
  type SpendLimitStatus,
} from "../../core/models/index.js";
import type { BalanceReads } from "../../core/services/balance-reads.js";
import type { CreditCore } from "../../core/services/credit-core.js";

/**
 * An account's spend limits (docs/teams-and-limits.md): `CreditService`'s `setLimits`, `setLimit`,
 * `getLimits` and `removeLimit` delegate here; their documentation is there.
 */
export class SpendLimits {
  constructor(
    /** Its `CoreCreditService`'s units of work, entry fields and clock. */
    private readonly core: Pick<CreditCore, "db" | "units" | "meta" | "clock">,
    private readonly reads: BalanceReads,
  ) {}

  /** `CoreCreditService.setLimits`. */
  async setLimits(
    userId: string,
    limits: SpendLimitInput[],
    options: MutationOptions = {},
  ): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const list = parse(SetLimitsInput, limits, "limits");
    const o = parse(MutationOptions, options, "options");
    const cycle = list.some((l) => l.resetsWith === "subscription") ? await this.limitCycle(user) : null;
    const meta = this.core.meta("setLimits", o, () => ({ limits: list, ...o }));
    const set = await this.core.units.mutate("setLimits", user, meta, (work) => {
      work.setLimits(replaceLimits(work.account.limits ?? null, list, cycle, work.account.seq, work.inFlight()), meta);
      return work.account.limits ?? [];
    });
    return limitStatuses(set, this.core.clock().getTime());
  }

  /** `CoreCreditService.setLimit`. */
  async setLimit(userId: string, limit: SpendLimitInput, options: MutationOptions = {}): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const input = parse(SpendLimitInput, limit, "limit");
    const o = parse(MutationOptions, options, "options");
    const cycle = input.resetsWith === "subscription" ? await this.limitCycle(user) : null;
    const meta = this.core.meta("setLimit", o, () => ({ limit: input, ...o }));
    const set = await this.core.units.mutate("setLimit", user, meta, (work) => {
      work.setLimits(withLimit(work.account.limits ?? null, input, cycle, work.account.seq, work.inFlight()), meta);
      return work.account.limits ?? [];
    });
    return limitStatuses(set, this.core.clock().getTime());
  }

  /** The account's active subscription's cycle, which a `resetsWith: "subscription"` limit follows; null without one. */
  private async limitCycle(user: string): Promise<LimitCycle | null> {
    const subscriptions = this.core.db as Partial<SubscriptionStore>;
    const active = subscriptions.getActiveSubscription ? await subscriptions.getActiveSubscription(user) : null;
    return active === null ? null : { anchorAt: active.anchorAt.getTime(), billingPeriod: active.billingPeriod };
  }

  /** `CoreCreditService.getLimits`. */
  async getLimits(userId: string): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const { limits } = await this.reads.state(user, null);
    return limitStatuses(limits ?? [], this.core.clock().getTime());
  }

  /** `CoreCreditService.removeLimit`. */
  async removeLimit(
    userId: string,
    which: RemoveLimitInput,
    options: MutationOptions = {},
  ): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const w = parse(RemoveLimitInput, which, "limit");
    const o = parse(MutationOptions, options, "options");
    const meta = this.core.meta("removeLimit", o, () => ({ ...w, ...o }));
    const left = await this.core.units.mutate("removeLimit", user, meta, (work) => {
      const before = work.account.limits ?? [];
      const after = withoutLimit(before, w);
      if (after.length !== before.length) work.setLimits(after, meta);
      return after;
    });
    return limitStatuses(left, this.core.clock().getTime());
  }
}
