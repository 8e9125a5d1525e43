import type { Promo, PromoEligibility, PromoIneligibility } from "../../models-entry.js";

const MESSAGES: Record<PromoIneligibility, string> = {
  not_found: "No such promo code.",
  inactive: "This promo code is not active.",
  not_started: "This promo code is not valid yet.",
  ended: "This promo code has ended.",
  not_targeted: "This promo code is not available to this account.",
  exhausted: "This promo code has no uses left.",
  already_claimed: "This account has already claimed this promo code as often as it may.",
};

/**
 * Whether `userId` may claim `promo` at `now`, having claimed it `claimedByUser` times. The one
 * place the rules live; the claim re-checks them inside its unit of work, and the store's guarded
 * write enforces `maxUses` against concurrent claims.
 */
export function promoEligibility(
  code: string,
  promo: Promo | null,
  userId: string,
  claimedByUser: number,
  now: Date,
): PromoEligibility {
  const no = (reason: PromoIneligibility): PromoEligibility => ({
    eligible: false,
    code,
    reason,
    message: MESSAGES[reason],
  });
  if (promo === null) return no("not_found");
  // Targeting first: a user outside the list learns nothing about the promo's state or limits.
  if (promo.userIds !== null && !promo.userIds.includes(userId)) return no("not_targeted");
  if (!promo.isActive) return no("inactive");
  const t = now.getTime();
  if (promo.validFrom !== null && t < promo.validFrom.getTime()) return no("not_started");
  if (promo.validUntil !== null && t >= promo.validUntil.getTime()) return no("ended");
  if (claimedByUser >= promo.maxUsesPerUser) return no("already_claimed");
  if (promo.maxUses !== null && promo.uses >= promo.maxUses) return no("exhausted");
  return {
    eligible: true,
    code: promo.code,
    credits: promo.credits,
    creditsExpireInDays: promo.creditsExpireInDays,
    claimsLeftForUser: promo.maxUsesPerUser - claimedByUser,
  };
}
