import * as z from "zod/mini";
import {
  Amount,
  DateInput,
  EntityId,
  IdempotencyKey,
  CallerMetadata,
  Metadata,
  NonNegativeAmount,
  ShortText,
  UserId,
} from "../../core/models/common.js";
import { text } from "../../core/models/text.js";

/**
 * A promo code as typed by users: 1–64 letters, digits, `-` or `_`. Codes are case-insensitive:
 * they are stored and compared upper-cased.
 */
export const PromoCode = z.pipe(
  z
    .string({ error: "promo code must be a string" })
    .check(
      z.trim(),
      z.minLength(1, { error: "promo code must not be empty" }),
      z.maxLength(64, { error: "promo code must be at most 64 characters" }),
      z.regex(/^[A-Za-z0-9_-]+$/, { error: "promo code may only contain letters, digits, '-' and '_'" }),
    ),
  z.transform((s) => s.toUpperCase()),
);

/** A promo code and its limits. `uses` counts claims over all users. @public */
export const Promo = z.object({
  /** Upper-cased; unique. */
  code: z.string().check(z.maxLength(64)),
  /** Credits each claim grants. */
  credits: Amount,
  /** Days after the claim until the granted credits expire; null: never. */
  creditsExpireInDays: z.nullable(z.number().check(z.int(), z.minimum(1), z.maximum(3650))),
  /** Users who may claim it; null: everyone. */
  userIds: z.nullable(z.array(UserId)),
  /** Claims over all users; null: unlimited. */
  maxUses: z.nullable(z.number().check(z.int(), z.minimum(1))),
  /** Claims per user (default 1). */
  maxUsesPerUser: z.number().check(z.int(), z.minimum(1)),
  /** Claims before this instant are refused; null: from creation. */
  validFrom: z.nullable(z.date()),
  /** Claims at or after this instant are refused; null: no end. */
  validUntil: z.nullable(z.date()),
  isActive: z.boolean(),
  /** Claims so far, over all users. */
  uses: NonNegativeAmount,
  description: z.nullable(z.string()),
  metadata: z.nullable(Metadata),
  createdAt: z.date(),
  updatedAt: z.date(),
});
/** A promo code and its limits. `uses` counts claims over all users. @public */
export type Promo = z.infer<typeof Promo>;

/** One claim of a promo by a user: unique per (code, userId, claimNumber). @public */
export const PromoClaim = z.object({
  id: EntityId,
  code: z.string().check(z.maxLength(64)),
  userId: UserId,
  /** 1 for the user's first claim of this code, 2 for the second, … */
  claimNumber: z.number().check(z.int(), z.minimum(1)),
  credits: Amount,
  /** The grant the claim created (null when the credits all went to paying debt). */
  grantId: z.nullable(EntityId),
  /** The journal entry of the claim. */
  entryId: EntityId,
  createdAt: z.date(),
});
/** One claim of a promo by a user: unique per (code, userId, claimNumber). @public */
export type PromoClaim = z.infer<typeof PromoClaim>;

/** Input of `PromoService.createPromo`. @public */
export const CreatePromoInput = z.strictObject({
  code: PromoCode,
  credits: Amount,
  /** Days after each claim until its credits expire; omitted: never. */
  creditsExpireInDays: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(3650))),
  /** Only these users may claim it; omitted: everyone. At most 10,000 (use a code per cohort beyond). */
  userIds: z.optional(z.array(UserId).check(z.minLength(1), z.maxLength(10_000))),
  /** Claims over all users; omitted: unlimited. */
  maxUses: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(Number.MAX_SAFE_INTEGER))),
  /** Claims per user. Default 1. */
  maxUsesPerUser: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1_000_000))),
  validFrom: z.optional(DateInput),
  validUntil: z.optional(DateInput),
  /** Default true. */
  isActive: z.optional(z.boolean()),
  description: z.optional(ShortText),
  metadata: z.optional(CallerMetadata),
});
/** Input of `PromoService.createPromo`. @public */
export type CreatePromoInput = z.input<typeof CreatePromoInput>;

/** Options of `PromoService.claimPromo`. @public */
export const ClaimPromoOptions = z.strictObject({
  correlationId: z.optional(text(255).check(z.minLength(1))),
  /** A retried claim with the same key returns the first claim's entry instead of claiming again. */
  idempotencyKey: z.optional(IdempotencyKey),
});
/** Options of `PromoService.claimPromo`. @public */
export type ClaimPromoOptions = z.input<typeof ClaimPromoOptions>;

/** Why a user may not claim a promo now. @public */
export const PromoIneligibility = z.enum([
  "not_found",
  "inactive",
  "not_started",
  "ended",
  "not_targeted",
  "exhausted",
  "already_claimed",
]);
/** Why a user may not claim a promo now. @public */
export type PromoIneligibility = z.infer<typeof PromoIneligibility>;

/** What `checkEligibility` answers. @public */
export type PromoEligibility =
  | { eligible: true; code: string; credits: number; creditsExpireInDays: number | null; claimsLeftForUser: number }
  | { eligible: false; code: string; reason: PromoIneligibility; message: string };
