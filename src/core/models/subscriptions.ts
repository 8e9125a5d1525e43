import * as z from "zod/mini";
import {
  DateInput,
  DEFAULT_UNIT,
  EntityId,
  IdempotencyKey,
  Metadata,
  NonNegativeAmount,
  ShortText,
  UnitName,
  UserId,
} from "./common.js";
import { GrantScope } from "./limits.js";
import { Money } from "./cost-basis.js";
import { text } from "./text.js";

/** How long a plan's period is. @public */
export const BillingPeriod = z.enum(["daily", "weekly", "monthly", "yearly"]);
/** How long a plan's period is. @public */
export type BillingPeriod = z.infer<typeof BillingPeriod>;

/** What happens at a period's end to the period's credits nobody spent: see docs/subscriptions.md, "Rollover". @public */
export const RolloverPolicy = z.enum(["none", "all", "cap"]);
/** What happens at a period's end to the period's credits nobody spent: see docs/subscriptions.md, "Rollover". @public */
export type RolloverPolicy = z.infer<typeof RolloverPolicy>;

const RolloverInput = z.union([z.literal("none"), z.literal("all"), z.strictObject({ cap: NonNegativeAmount })]);

/**
 * Credits a plan allocates every period beside its general `creditsPerPeriod`
 * (docs/subscriptions.md, "Allowances"): a grant of `credits` for some spends only (`scope`: the
 * features and/or spenders it pays for, as `addCredits`' scope, docs/teams-and-limits.md), in
 * another unit (`unit`, docs/units.md), or both. `rollover`: what its unspent credits carry into
 * the next period; omitted: the plan's policy (and cap) applied to this allowance on its own — for
 * an allowance in another unit, none (the plan's rollover counts the default unit).
 */
export const PlanAllowance = z.strictObject({
  /** The spends it pays for; omitted (with a `unit`): any. */
  scope: z.optional(GrantScope),
  /** The unit its credits are in (docs/units.md); omitted: the default unit (then `scope` is required). */
  unit: z.optional(UnitName),
  credits: z
    .number({ error: "credits must be a number" })
    .check(
      z.int({ error: "credits must be a whole number" }),
      z.minimum(1, { error: "credits must be at least 1" }),
      z.maximum(Number.MAX_SAFE_INTEGER, { error: "credits must be a safe integer" }),
    ),
  /** "none", "all" or `{ cap }` credits; omitted: the plan's. */
  rollover: z.optional(RolloverInput),
});
export type PlanAllowance = z.infer<typeof PlanAllowance>;

/** A plan's allowances: at most 20, each with a scope or a unit other than the default, no two with the same scope and unit. */
export const PlanAllowances = z.array(PlanAllowance).check(
  z.maxLength(20, { error: "a plan has at most 20 allowances" }),
  z.refine((list) => list.every((a) => a.scope !== undefined || allowanceUnit(a) !== null), {
    error: "an allowance names a scope, a unit other than the default one, or both",
  }),
  z.refine((list) => new Set(list.map(allowanceKey)).size === list.length, {
    error: "two allowances have the same scope and unit",
  }),
);

/** The unit of an allowance (or a grant): null for the default one, named or not. */
export function allowanceUnit(a: { unit?: string | null | undefined }): string | null {
  return a.unit === undefined || a.unit === null || a.unit === DEFAULT_UNIT ? null : a.unit;
}

/**
 * The identity of an allowance (or of a grant, against a plan's allowances): its unit and its
 * scope (`scopeKey`); "" for the general credits (the default unit, no scope).
 */
export function allowanceKey(a: { scope?: GrantScope | null | undefined; unit?: string | null | undefined }): string {
  const unit = allowanceUnit(a);
  const scope = a.scope === undefined || a.scope === null ? null : scopeKey(a.scope);
  return unit === null && scope === null ? "" : JSON.stringify([unit, scope]);
}

/**
 * A scope's identity, whatever the order of its lists: two allowances (or an allowance and a
 * grant) with the same key pay for the same spends.
 */
export function scopeKey(scope: GrantScope): string {
  const sorted = (xs: readonly string[] | undefined) => (xs === undefined ? null : [...new Set(xs)].sort());
  return JSON.stringify([sorted(scope.features), sorted(scope.spenders)]);
}

/** A plan id: chosen by the host (like "pro-monthly") or generated. */
export const PlanId = z
  .string({ error: "planId must be a string" })
  .check(
    z.minLength(1, { error: "planId must not be empty" }),
    z.maxLength(128, { error: "planId must be at most 128 characters" }),
    z.regex(/^[A-Za-z0-9._:-]+$/, { error: "planId may only contain letters, digits and . _ : -" }),
  );

/** A subscription plan (docs/subscriptions.md). @public */
export const Plan = z.object({
  id: PlanId,
  name: z.string().check(z.minLength(1), z.maxLength(200)),
  description: z.nullable(z.string()),
  /** Credits allocated at the start of every period; 0 for pay-as-you-go plans. */
  creditsPerPeriod: NonNegativeAmount,
  /** Price per period in the smallest currency unit (informational: the host bills). */
  price: NonNegativeAmount,
  /** ISO-4217 code, upper case. */
  currency: z.string().check(z.regex(/^[A-Z]{3}$/)),
  billingPeriod: BillingPeriod,
  /** Days after the period's start that its credits expire; null: at the period's end. */
  validityDays: z.nullable(z.number().check(z.int(), z.minimum(1), z.maximum(3650))),
  rollover: RolloverPolicy,
  /** Most credits carried into the next period when `rollover` is "cap". */
  rolloverCap: z.nullable(NonNegativeAmount),
  /**
   * Scoped credits allocated every period beside `creditsPerPeriod` (docs/subscriptions.md,
   * "Allowances"). Null or absent: none.
   */
  allowances: z.optional(z.nullable(PlanAllowances)),
  isActive: z.boolean(),
  metadata: z.nullable(Metadata),
  /** Increases by one with every write (the guard of concurrent updates). */
  version: NonNegativeAmount,
  createdAt: z.date(),
  updatedAt: z.date(),
});
/** A subscription plan (docs/subscriptions.md). @public */
export type Plan = z.infer<typeof Plan>;

/** A plan's fields a caller sets: on creation (with its id) and on update (any of them). */
const PlanFields = z.strictObject({
  name: text(200).check(z.minLength(1)),
  description: z.optional(ShortText),
  creditsPerPeriod: NonNegativeAmount,
  /** Per period, in the smallest unit of `currency`: 0 to 10¹³ (docs/revenue.md, "Figures are exact"). */
  price: z.optional(Money),
  currency: z.optional(
    z.string().check(z.regex(/^[A-Za-z]{3}$/, { error: "currency must be a 3-letter ISO-4217 code" })),
  ),
  billingPeriod: BillingPeriod,
  validityDays: z.optional(z.nullable(z.number().check(z.int(), z.minimum(1), z.maximum(3650)))),
  /** "none" (default), "all", or `{ cap }` credits. */
  rollover: z.optional(RolloverInput),
  /** Scoped credits per period beside `creditsPerPeriod` (docs/subscriptions.md, "Allowances"). Default none. */
  allowances: z.optional(PlanAllowances),
  isActive: z.optional(z.boolean()),
  metadata: z.optional(Metadata),
});

/** A plan to create (`subscriptions.createPlan()`): its credits per period, billing period, rollover and allowances. @public */
export const CreatePlanInput = z.strictObject({
  /** Default: a generated UUID. */
  id: z.optional(PlanId),
  ...PlanFields.shape,
});
/** A plan to create (`subscriptions.createPlan()`): its credits per period, billing period, rollover and allowances. @public */
export type CreatePlanInput = z.input<typeof CreatePlanInput>;

// Spelled as the fields made optional rather than `CreatePlanInput.omit({ id })`: an omitted key
// set is a union whose order the declaration emitter does not keep, so the API report would move.
/** The fields of a plan to change (`subscriptions.updatePlan()`); those omitted keep their value. @public */
export const UpdatePlanInput = z.partial(PlanFields);
/** The fields of a plan to change (`subscriptions.updatePlan()`); those omitted keep their value. @public */
export type UpdatePlanInput = z.input<typeof UpdatePlanInput>;

/** Where a subscription is: active, canceled (running to its period's end) or expired. @public */
export const SubscriptionStatus = z.enum(["active", "canceled", "expired"]);
/** Where a subscription is: active, canceled (running to its period's end) or expired. @public */
export type SubscriptionStatus = z.infer<typeof SubscriptionStatus>;

/** What a plan change does with the credits of the old plan's period: keep them, expire them, or prorate. @public */
export const CreditsOnChange = z.enum(["keep", "expire", "prorate"]);
/** What a plan change does with the credits of the old plan's period: keep them, expire them, or prorate. @public */
export type CreditsOnChange = z.infer<typeof CreditsOnChange>;

/**
 * Account work a subscription still owes (allocation, rollover, expiry, proration), written with
 * the state change that caused it and carried out by one idempotent unit of work on the account
 * (keyed by `key`), by whoever gets to it first: the caller, another worker or the renewal job.
 * Times are epoch milliseconds.
 */
/**
 * What the credits of an allocation or a prorated change were sold for (docs/revenue.md,
 * "Subscriptions"): `amount` in the smallest unit of `currency`, for all the grants it creates
 * together. Absent: free credits (a plan without a price).
 */
const IntentPrice = z.object({ amount: NonNegativeAmount, currency: z.string().check(z.regex(/^[A-Z]{3}$/)) });

/** Which allowance a part of a subscription's work is for: its scope and unit (absent: none, the default unit). */
const AllowanceOf = { scope: z.optional(GrantScope), unit: z.optional(UnitName) };

/** Account work a subscription still owes (allocation, rollover, expiry, proration). */
export const SubscriptionIntent = z.object({
  /** Idempotency key of the account unit of work: `sub:<id>:<periodStart ISO>[:change<n>]`. */
  key: z.string(),
  /**
   * Grant a new allocation of this many credits, expiring then (ms; null never), and one scoped
   * grant per allowance (`allowances`, absent when the plan has none), expiring with it.
   */
  allocate: z.nullable(
    z.object({
      amount: NonNegativeAmount,
      expiresAt: z.nullable(z.number()),
      allowances: z.optional(z.array(z.object({ ...AllowanceOf, amount: NonNegativeAmount }))),
      /** The plan's price for the period: the cost basis of the grants (docs/revenue.md). */
      price: z.optional(IntentPrice),
    }),
  ),
  /**
   * Move what the unscoped ones of these grants lost to expiry at `periodEnd` (up to `limit`, null:
   * all) into a rollover grant; and for each of `allowances` (absent: none), what those with its
   * scope lost, up to its `limit`, into a rollover grant with that scope.
   */
  carry: z.nullable(
    z.object({
      grantIds: z.array(z.string()),
      periodEnd: z.number(),
      limit: z.nullable(NonNegativeAmount),
      expiresAt: z.nullable(z.number()),
      allowances: z.optional(z.array(z.object({ ...AllowanceOf, limit: z.nullable(NonNegativeAmount) }))),
    }),
  ),
  /** Expire what these grants have left, now. */
  expireGrantIds: z.array(z.string()),
  /**
   * Prorated change: > 0 adds a grant expiring at `expiresAt`; < 0 removes up to that much from the
   * period's unscoped grants. Each of `allowances` (absent: none) the same for its scope.
   */
  prorate: z.nullable(
    z.object({
      delta: z.number().check(z.int()),
      expiresAt: z.nullable(z.number()),
      allowances: z.optional(z.array(z.object({ ...AllowanceOf, delta: z.number().check(z.int()) }))),
      /** The prorated price of the grants it adds: their cost basis (docs/revenue.md). */
      price: z.optional(IntentPrice),
    }),
  ),
  /** The period's grant ids after this work: the new grants, plus the current ones when true. */
  keepPeriodGrants: z.boolean(),
  /**
   * When the work was due (epoch ms): a renewal's period start. Its entries are dated then
   * (`occurredAt`) however late it runs (docs/concepts.md, "Two times on every entry"). Absent: the
   * work is dated when it is done (a subscription, a plan change, a cancellation).
   */
  dueAt: z.optional(z.number()),
  /**
   * Lifecycle events the state change owes (`subscription_cancelled`, `subscription_ended`),
   * written to the notification outbox by this unit of work (when notifications are on). Not part
   * of the work's fingerprint.
   */
  events: z.optional(
    z.array(
      z.object({
        type: z.enum(["subscription_cancelled", "subscription_ended"]),
        payload: z.record(z.string(), z.unknown()),
        dedupeKey: z.string().check(z.maxLength(255)),
      }),
    ),
  ),
});
export type SubscriptionIntent = z.infer<typeof SubscriptionIntent>;

/** The arguments of the `subscribe` call that created a subscription (see `Subscription.request`). @public */
export const SubscribeRequest = z.object({
  planId: PlanId,
  autoRenew: z.boolean(),
  /** Epoch ms; null: no `startAt` was given (the cycle started at `createdAt`). */
  startAt: z.nullable(z.number().check(z.int())),
});
/** The arguments of the `subscribe` call that created a subscription (see `Subscription.request`). @public */
export type SubscribeRequest = z.infer<typeof SubscribeRequest>;

/** A user's subscription. At most one per user is `active`. @public */
export const Subscription = z.object({
  id: EntityId,
  userId: UserId,
  planId: PlanId,
  status: SubscriptionStatus,
  /** The period length `anchorAt` and `periodIndex` count in (the plan's when the cycle started). */
  billingPeriod: BillingPeriod,
  /** Start of the billing cycle: periods are computed from it (see `src/core/domain/periods.ts`). */
  anchorAt: z.date(),
  periodIndex: NonNegativeAmount,
  currentPeriodStart: z.date(),
  currentPeriodEnd: z.date(),
  autoRenew: z.boolean(),
  cancelAtPeriodEnd: z.boolean(),
  /** Plan the next period switches to (`changePlan(…, { when: "period_end" })`). */
  pendingPlanId: z.nullable(PlanId),
  /** "expire": no rollover at that switch. */
  pendingCredits: z.nullable(z.enum(["keep", "expire"])),
  /** Grants of the current period (allocation, rollover, proration): what rollover looks at. */
  periodGrantIds: z.array(z.string()),
  intent: z.nullable(SubscriptionIntent),
  /** When the renewal job must look at it next: its period's end, now while it owes account work, null once ended. Indexed. */
  nextRunAt: z.nullable(z.date()),
  /** Increases by one with every write (the guard of concurrent transitions). */
  version: NonNegativeAmount,
  idempotencyKey: z.nullable(z.string()),
  metadata: z.nullable(Metadata),
  createdAt: z.date(),
  updatedAt: z.date(),
  canceledAt: z.nullable(z.date()),
  endedAt: z.nullable(z.date()),
  /**
   * Credits per period the current period is on: its allocation (0 when it got none), or the
   * `creditsPerPeriod` of the plan a prorated `changePlan` moved it to. What proration prorates
   * against (an operator's `updatePlan` mid-period does not change it). Null or absent: the plan's
   * current figure is used then.
   */
  periodCredits: z.optional(z.nullable(NonNegativeAmount)),
  /**
   * The allowances the current period is on (docs/subscriptions.md, "Allowances"): what it
   * allocated of each scope, or those of the plan a prorated `changePlan` moved it to; what
   * proration prorates each allowance against. Null or absent: the plan's current allowances are
   * used then.
   */
  periodAllowances: z.optional(z.nullable(z.array(z.object({ ...AllowanceOf, credits: NonNegativeAmount })))),
  /**
   * What the `subscribe` call that created the subscription asked for (`startAt` in epoch ms, null
   * when not given), so a retry with its idempotency key is compared with that call, not with what
   * plan changes, `resume` or a new cycle made of the subscription since. Null or absent: none
   * recorded.
   */
  request: z.optional(z.nullable(SubscribeRequest)),
  /**
   * The idempotency keys of the `cancel`, `resume` and `changePlan` calls that changed it (the
   * latest 100), each with its call's fingerprint: a retry with one of them is answered without
   * changing anything, another call with it is an `IdempotencyConflictError`. Null or absent when
   * none was keyed.
   */
  changeKeys: z.optional(z.nullable(z.array(z.object({ key: z.string(), fingerprint: z.string() })))),
});
/** A user's subscription. At most one per user is `active`. @public */
export type Subscription = z.infer<typeof Subscription>;

/** Options of `subscriptions.subscribe()`: renewal, start and trial. @public */
export const SubscribeOptions = z.strictObject({
  /** Renew at every period's end. Default true. */
  autoRenew: z.optional(z.boolean()),
  /** Start (the billing anchor). Default now; may be in the past (backdating) or the future. */
  startAt: z.optional(DateInput),
  idempotencyKey: z.optional(IdempotencyKey),
  metadata: z.optional(Metadata),
});
/** Options of `subscriptions.subscribe()`: renewal, start and trial. @public */
export type SubscribeOptions = z.input<typeof SubscribeOptions>;

/** Options of `subscriptions.changePlan()`: when the change takes effect and what happens to the credits of the old plan. @public */
export const ChangePlanOptions = z.strictObject({
  /** Default "now". */
  when: z.optional(z.enum(["now", "period_end"])),
  /** Default "prorate" with "now", "keep" with "period_end" (where "prorate" is refused). */
  credits: z.optional(CreditsOnChange),
  /** Same key + same arguments → the subscription, nothing changed again; other arguments → `IdempotencyConflictError`. */
  idempotencyKey: z.optional(IdempotencyKey),
});
/** Options of `subscriptions.changePlan()`: when the change takes effect and what happens to the credits of the old plan. @public */
export type ChangePlanOptions = z.input<typeof ChangePlanOptions>;

/** Options of `subscriptions.cancel()`: at the period's end or now, and what happens to the period's credits. @public */
export const CancelOptions = z.strictObject({
  /** Default true: the subscription runs to its period's end and then ends. */
  atPeriodEnd: z.optional(z.boolean()),
  /** Immediate cancel only: "keep" (default) leaves the period's credits to their expiry; "expire" expires them now. */
  credits: z.optional(z.enum(["keep", "expire"])),
  /** As for `changePlan`. */
  idempotencyKey: z.optional(IdempotencyKey),
});
/** Options of `subscriptions.cancel()`: at the period's end or now, and what happens to the period's credits. @public */
export type CancelOptions = z.input<typeof CancelOptions>;

/** Options of `subscriptions.resume()`. @public */
export const ResumeOptions = z.strictObject({
  /** As for `changePlan`. */
  idempotencyKey: z.optional(IdempotencyKey),
});
/** Options of `subscriptions.resume()`. @public */
export type ResumeOptions = z.input<typeof ResumeOptions>;

/** Options of `subscriptions.listPlans()`: whether inactive plans are included. @public */
export const ListPlansOptions = z.strictObject({ includeInactive: z.optional(z.boolean()) });
/** Options of `subscriptions.listPlans()`: whether inactive plans are included. @public */
export type ListPlansOptions = z.input<typeof ListPlansOptions>;

/** Rows per scan of a job, 1–10,000. */
export const BatchSize = z.number().check(z.int(), z.minimum(1), z.maximum(10_000));
