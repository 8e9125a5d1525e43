import { limitStatuses, replaceLimits, withLimit, withoutLimit } from "../../core/domain/limits.js";
import { ValidationError } from "../../core/errors.js";
import type { SubscriptionStore } from "../../core/db/types-subscriptions.js";
import { UserId } from "../models/common.js";
import { MutationOptions } from "../models/inputs.js";
import {
  EVERY_UNIT,
  RemoveLimitInput,
  SetLimitsInput,
  SpendLimitInput,
  limitKey,
  type LimitCycle,
  type SpendLimitStatus,
} from "../models/limits.js";
import { parse } from "../models/parse.js";
import type { BalanceReads } from "../../core/services/balance-reads.js";
import type { CreditCore } from "../../core/services/credit-core.js";

/**
 * An account's spend limits (docs/teams-and-limits.md): `CreditService`'s `setLimits`, `setLimit`,
 * `getLimits` and `removeLimit` delegate here; their documentation is there.
 */
export class SpendLimits {
  constructor(
    /** Its `CoreCreditService`'s units of work, entry fields and clock. */
    private readonly core: Pick<CreditCore, "db" | "units" | "meta" | "clock" | "unitOf">,
    private readonly reads: BalanceReads,
  ) {}

  /** `CoreCreditService.setLimits`. */
  async setLimits(
    userId: string,
    limits: SpendLimitInput[],
    options: MutationOptions = {},
  ): Promise<SpendLimitStatus[]> {
    const user = parse(UserId, userId, "userId");
    const list = parse(SetLimitsInput, limits, "limits").map((l) => this.inUnit(l));
    const keys = new Set(list.map(limitKey));
    if (keys.size !== list.length)
      throw new ValidationError("Invalid limits: each (spender, feature, unit, period) may have one limit", [
        { path: "", message: "a limit without unit is in its feature's unit: two limits have the same key" },
      ]);
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
    const input = this.inUnit(parse(SpendLimitInput, limit, "limit"));
    const o = parse(MutationOptions, options, "options");
    const cycle = input.resetsWith === "subscription" ? await this.limitCycle(user) : null;
    const meta = this.core.meta("setLimit", o, () => ({ limit: input, ...o }));
    const set = await this.core.units.mutate("setLimit", user, meta, (work) => {
      work.setLimits(withLimit(work.account.limits ?? null, input, cycle, work.account.seq, work.inFlight()), meta);
      return work.account.limits ?? [];
    });
    return limitStatuses(set, this.core.clock().getTime());
  }

  /**
   * `limit` in the credit unit it counts (docs/units.md): the one it names, else its feature's
   * rule's, else the default unit (`unit` undefined). Naming another unit than its feature's rule is
   * a `ValidationError`.
   */
  private inUnit<T extends { feature?: string | undefined; unit?: string | undefined }>(limit: T): T {
    if (limit.unit === EVERY_UNIT) return limit;
    const unit = this.core.unitOf(limit.feature, limit.unit);
    if (unit === limit.unit) return limit;
    const { unit: _named, ...rest } = limit;
    return (unit === undefined ? rest : { ...rest, unit }) as T;
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
    const w = this.inUnit(parse(RemoveLimitInput, which, "limit"));
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
