import * as z from "zod/mini";
import { DEFAULT_UNIT, FeatureName, NonNegativeAmount, UnitName } from "./common.js";

/**
 * Who spends and on what (docs/teams-and-limits.md): a spend may name a `spender` (a member, an
 * API key, a project: any id the host chooses) and a `feature`. Both are recorded on the journal
 * entry; limits and scoped grants read them.
 */

// eslint-disable-next-line no-control-regex -- refusing control characters is the point
const printable = /^[^\u0000-\u001f\u007f]+$/;

/** A spender id chosen by the host: 1–255 printable characters. */
export const SpenderId = z
  .string({ error: "spender must be a string" })
  .check(
    z.minLength(1, { error: "spender must not be empty" }),
    z.maxLength(255, { error: "spender must be at most 255 characters" }),
    z.regex(printable, { error: "spender must not contain control characters" }),
  );

/** The optional `spender` and `feature` of a spend (deduct, reserve, commit, check, lease charge). */
export const SpendFields = {
  /** Who spends: a member, an API key, a project. Recorded on the entry; limits for it apply. */
  spender: z.optional(SpenderId),
  /** What the credits pay for. Recorded on the entry; limits for it apply. */
  feature: z.optional(FeatureName),
};

/** Calendar units of a limit's window, in UTC. @public */
export const LimitUnit = z.enum(["day", "week", "month", "year"]);
/** Calendar units of a limit's window, in UTC. @public */
export type LimitUnit = z.infer<typeof LimitUnit>;

/**
 * A limit's window: a calendar day, week (Monday to Monday), month or year in UTC, or `every` n of
 * them counted from 1970-01-01 (weeks from Monday 1969-12-29).
 * @public
 */
export const LimitPeriod = z.union([
  LimitUnit,
  z.strictObject({
    every: z.number().check(z.int({ error: "every must be a whole number" }), z.minimum(1), z.maximum(1000)),
    unit: LimitUnit,
  }),
]);
/**
 * A limit's window: a calendar day, week (Monday to Monday), month or year in UTC, or `every` n of
 * them counted from 1970-01-01 (weeks from Monday 1969-12-29).
 * @public
 */
export type LimitPeriod = z.infer<typeof LimitPeriod>;

/**
 * The `unit` of a limit that applies in every unit (docs/teams-and-limits.md, "A disabled
 * spender"): only with `amount: 0`, since no limit adds two units together.
 */
export const EVERY_UNIT = "*";

/** The credit unit a limit counts: a unit's name, or {@link EVERY_UNIT} (`"*"`). */
const LimitCreditUnit = z.union([UnitName, z.literal(EVERY_UNIT)]);

/** One limit as `setLimits` takes it. @public */
export const SpendLimitInput = z
  .strictObject({
    /** The spender it caps; omitted: every spend of the account (with `feature`: every spend on it). */
    spender: z.optional(SpenderId),
    /** The feature it caps; omitted: every feature. */
    feature: z.optional(FeatureName),
    /**
     * The credit unit it counts (docs/units.md): only spends in it. Omitted: the unit of `feature`'s
     * rule when it names one, else the default unit. `"*"` ({@link EVERY_UNIT}): every unit, with
     * `amount: 0` only (a disabled spender). Not the window's calendar `period.unit`.
     */
    unit: z.optional(LimitCreditUnit),
    /** Credits (of `unit`) that may be spent in one window; 0 refuses every spend it applies to. */
    amount: NonNegativeAmount,
    /** The window. Required unless `resetsWith` is "subscription". */
    period: z.optional(LimitPeriod),
    /** "subscription": the window is the account's current subscription period instead. */
    resetsWith: z.optional(z.literal("subscription")),
  })
  .check(
    z.refine((l) => (l.period === undefined) !== (l.resetsWith === undefined), {
      error: 'a limit needs exactly one of period and resetsWith: "subscription"',
      path: ["period"],
    }),
    z.refine((l) => l.unit !== EVERY_UNIT || l.amount === 0, {
      error: 'a limit in every unit (unit: "*") must have amount 0: no limit adds two units together',
      path: ["amount"],
    }),
  );
/** One limit as `setLimits` takes it. @public */
export type SpendLimitInput = z.input<typeof SpendLimitInput>;

/** Most limits one account may hold (they are loaded with the account on every spend). */
export const MAX_LIMITS = 100;

/** `setLimits(userId, limits)`: the account's whole list; a key (spender, feature, unit, window) at most once. */
export const SetLimitsInput = z.array(SpendLimitInput).check(
  z.maxLength(MAX_LIMITS, { error: `at most ${MAX_LIMITS} limits per account` }),
  z.refine((list) => new Set(list.map(limitKey)).size === list.length, {
    error: "each (spender, feature, unit, period) may have one limit",
  }),
);

/** `removeLimit(userId, which)`: the limits with exactly this spender, feature and unit (and period, when given). @public */
export const RemoveLimitInput = z.strictObject({
  spender: z.optional(SpenderId),
  feature: z.optional(FeatureName),
  /** The credit unit (docs/units.md); omitted: as for `setLimit`, the feature's or the default one; `"*"`: every unit. */
  unit: z.optional(LimitCreditUnit),
  period: z.optional(LimitPeriod),
  resetsWith: z.optional(z.literal("subscription")),
});
/** `removeLimit(userId, which)`: the limits with exactly this spender, feature and unit (and period, when given). @public */
export type RemoveLimitInput = z.input<typeof RemoveLimitInput>;

/** The subscription cycle a `resetsWith: "subscription"` limit follows (times in ms since the epoch). */
export const LimitCycle = z.strictObject({
  anchorAt: z.number().check(z.int()),
  billingPeriod: z.enum(["daily", "weekly", "monthly", "yearly"]),
});
export type LimitCycle = z.infer<typeof LimitCycle>;

/** A limit's notification thresholds: 80 % (`warning`) and 100 % (`reached`) of its amount. @public */
export const LimitAlert = z.enum(["warning", "reached"]);
/** A limit's notification thresholds: 80 % (`warning`) and 100 % (`reached`) of its amount. @public */
export type LimitAlert = z.infer<typeof LimitAlert>;

/**
 * A limit as the account keeps it, with what was spent in its current window. Kept on the account
 * (`Account.limits`, stored as JSON: times are ms since the epoch), so the unit of work that
 * debits checks and counts it with no extra read.
 * @public
 */
export const SpendLimit = z.object({
  spender: z.nullable(SpenderId),
  feature: z.nullable(FeatureName),
  /** The credit unit it counts (docs/units.md); absent or null: the default unit; `"*"`: every unit. */
  unit: z.optional(z.nullable(LimitCreditUnit)),
  amount: NonNegativeAmount,
  /** Null when the limit follows the subscription (`cycle`). */
  period: z.nullable(LimitPeriod),
  /** The subscription cycle, for `resetsWith: "subscription"`; else null. */
  cycle: z.nullable(LimitCycle),
  /**
   * The account's `seq` when the limit was set (docs/teams-and-limits.md, "Late usage and
   * reversals"): it counts the spends recorded after it, so a reversal gives it back only a charge
   * whose entry's seq is higher. Kept while the limit is changed in place; a limit removed and set
   * again, or a subscription limit whose cycle moved, counts from when that happened.
   */
  since: z.number().check(z.int(), z.nonnegative()),
  /** Credits counted in the window starting at `windowStart`. */
  used: NonNegativeAmount,
  /** Start (ms since the epoch) of the window `used` counts; null before the first spend. */
  windowStart: z.nullable(z.number().check(z.int())),
  /**
   * The highest threshold notified in the window `windowStart` (docs/teams-and-limits.md, "Limit
   * notifications"): `warning` (80 %), `reached` (100 %), or null. A spend sends only the thresholds
   * above it, so each is sent once per window. Absent: read from `used` (the thresholds it is past
   * count as sent).
   */
  alerted: z.optional(z.nullable(LimitAlert)),
});
/**
 * A limit as the account keeps it, with what was spent in its current window. Kept on the account
 * (`Account.limits`, stored as JSON: times are ms since the epoch), so the unit of work that
 * debits checks and counts it with no extra read.
 * @public
 */
export type SpendLimit = z.infer<typeof SpendLimit>;

/** A limit as `getLimits` reports it: its window now and what is left in it. @public */
export interface SpendLimitStatus {
  /** The spender the limit is on; null: the account. */
  spender: string | null;
  /** The feature the limit is on; null: every feature. */
  feature: string | null;
  /** The credit unit it counts (docs/units.md); absent: the default unit. */
  unit?: string;
  /** The limit, in credits (of its unit) per period. */
  amount: number;
  /** The limit's period. */
  period: LimitPeriod | null;
  /** What starts the limit's period again. */
  resetsWith: "subscription" | null;
  /** Credits spent (and held) in the current window. */
  used: number;
  /** `amount - used`, never below 0. */
  remaining: number;
  /** The start of the period now running. */
  windowStart: Date;
  /** When the window ends and `used` starts again from 0. */
  resetsAt: Date;
}

/** Which scoped grants may pay (docs/teams-and-limits.md): a grant with a scope pays only spends it matches. @public */
export const GrantScope = z
  .strictObject({
    /** The features it pays for; omitted: any. */
    features: z.optional(z.array(FeatureName).check(z.minLength(1), z.maxLength(100))),
    /** The spenders it pays for; omitted: any. */
    spenders: z.optional(z.array(SpenderId).check(z.minLength(1), z.maxLength(100))),
  })
  .check(
    z.refine((s) => s.features !== undefined || s.spenders !== undefined, {
      error: "a scope names features, spenders or both",
    }),
  );
/** Which scoped grants may pay (docs/teams-and-limits.md): a grant with a scope pays only spends it matches. @public */
export type GrantScope = z.infer<typeof GrantScope>;

/** The key a limit is known by: spender, feature, credit unit and window. */
export function limitKey(l: {
  spender?: string | null | undefined;
  feature?: string | null | undefined;
  unit?: string | null | undefined;
  period?: LimitPeriod | null | undefined;
  resetsWith?: string | null | undefined;
}): string {
  const p = l.period ?? null;
  const window =
    p === null
      ? `cycle:${l.resetsWith ?? "subscription"}`
      : typeof p === "string" || p.every === 1
        ? typeof p === "string"
          ? p
          : p.unit
        : `${p.every}${p.unit}`;
  const unit = l.unit == null || l.unit === DEFAULT_UNIT ? null : l.unit;
  const key: unknown[] = [l.spender ?? null, l.feature ?? null, window];
  if (unit !== null) key.push(unit);
  return JSON.stringify(key);
}
