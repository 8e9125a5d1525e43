import * as z from "zod/mini";
import {
  ClaimPromoOptions,
  CreatePaymentInput,
  CreatePromoInput,
  PaymentHistoryQuery,
  PaymentId,
  Payment,
  Promo,
  PromoClaim,
  PromoCode,
  PromoIneligibility,
  parse,
} from "../../models-entry.js";
import { HttpError, type RouteDefinition } from "../../http/router.js";
import { adminRoute, rootRoute, self, target, userRoute, withKey } from "../../http/route-helpers.js";
import { EntryView, entryView, PaymentView, paymentView, seen } from "../../http/views.js";

// ---- request schemas ----------------------------------------------------------------------------

/** `GET /credits/promo/eligibility?promo_code=`. */
export const EligibilityParams = z.strictObject({ promo_code: PromoCode });
/** `POST /credits/promo/claim`. */
export const ClaimBody = z.extend(ClaimPromoOptions, { promo_code: PromoCode });
export const ListPromosParams = z.strictObject({
  limit: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(1000))),
  cursor: z.optional(z.string().check(z.minLength(1), z.maxLength(300))),
});
/** What a payment provider's name looks like in `/webhooks/:provider`. */
const ProviderName = z.string().check(z.minLength(1), z.maxLength(64), z.regex(/^[a-z0-9_-]+$/));
/** `POST /admin/credits/promos/:code/activation`. */
export const ActivationBody = z.strictObject({ isActive: z.boolean() });

// ---- response schemas ---------------------------------------------------------------------------

export const PaymentPageSchema = z.object({ items: z.array(Payment), nextCursor: z.nullable(z.string()) });
/** What a caller who is not an admin reads (docs/service.md, "What each role sees"). */
export const PaymentPageView = z.object({ items: z.array(PaymentView), nextCursor: z.nullable(z.string()) });
export const PromoPageSchema = z.object({ items: z.array(Promo), nextCursor: z.nullable(z.string()) });
export const EligibilitySchema = z.object({
  eligible: z.boolean(),
  code: z.string(),
  credits: z.optional(z.number().check(z.int())),
  creditsExpireInDays: z.optional(z.nullable(z.number().check(z.int()))),
  claimsLeftForUser: z.optional(z.number().check(z.int())),
  reason: z.optional(PromoIneligibility),
  message: z.optional(z.string()),
});
export const ClaimSchema = z.object({ claim: PromoClaim, entry: EntryView });
export const WebhookResultSchema = z.object({
  received: z.literal(true),
  outcome: z.enum(["credited", "reversed", "updated", "duplicate", "unchanged", "ignored"]),
  eventType: z.string(),
  paymentId: z.nullable(z.string()),
  status: z.nullable(z.string()),
  reason: z.optional(z.string()),
});

// ---- handlers -----------------------------------------------------------------------------------

const payments = ["payments"];
const promos = ["promos"];

/**
 * Payment routes: the caller's own payments under `basePath`, and the providers' webhooks at
 * `/webhooks/:provider` (public: the signature is the authentication; the raw body is handed over
 * untouched).
 */
export const paymentRoutes: RouteDefinition[] = [
  userRoute("POST", "/payments/create", {
    operationId: "createPayment",
    summary: "Opens a checkout at the provider for a top-up; answers the pending payment with its checkoutUrl",
    tags: payments,
    body: CreatePaymentInput,
    idempotent: true,
    status: 201,
    response: PaymentView,
    errors: [409, 502],
    handle: async (ctx) =>
      seen(
        ctx,
        await ctx.manager.payments.createPaymentLink(self(ctx), withKey(await ctx.body<CreatePaymentInput>(), ctx)),
        paymentView,
      ),
  }),
  userRoute("GET", "/payments/history", {
    operationId: "getPaymentHistory",
    summary: "The caller's payments, newest first, with cursor paging",
    tags: payments,
    query: PaymentHistoryQuery,
    response: PaymentPageView,
    handle: async (ctx) => {
      const page = await ctx.manager.payments.getPaymentHistory(self(ctx), ctx.query<PaymentHistoryQuery>());
      return { items: page.items.map((p) => seen(ctx, p, paymentView)), nextCursor: page.nextCursor };
    },
  }),
  userRoute("GET", "/payments/:id", {
    operationId: "getPayment",
    summary: "One of the caller's payments (404 for another user's)",
    tags: payments,
    response: PaymentView,
    errors: [404],
    handle: async (ctx) =>
      seen(
        ctx,
        await ctx.manager.payments.getPayment(self(ctx), parse(PaymentId, ctx.params.id, "path.id")),
        paymentView,
      ),
  }),
  adminRoute("GET", "/users/:userId/payments", {
    operationId: "adminGetPaymentHistory",
    summary: "A user's payments, newest first, with cursor paging",
    tags: ["admin", ...payments],
    query: PaymentHistoryQuery,
    response: PaymentPageSchema,
    handle: (ctx) => ctx.manager.payments.getPaymentHistory(target(ctx), ctx.query<PaymentHistoryQuery>()),
  }),
  rootRoute("POST", "/webhooks/:provider", "public", {
    operationId: "paymentWebhook",
    summary: "A payment provider's webhook (razorpay, stripe): signature checked over the raw body",
    description:
      "400 on a bad or stale signature or an event contradicting the stored payment (nothing changed); " +
      "200 for everything applied, repeated or ignored, so the provider stops retrying.",
    tags: payments,
    response: WebhookResultSchema,
    errors: [404],
    rawBody: true,
    handle: async (ctx) => {
      const name = ProviderName.safeParse(ctx.params.provider);
      // A name no provider can have is answered as one nobody configured is: 404, not a 500.
      if (!name.success) throw new HttpError(404, "NOT_FOUND", "No such payment provider.");
      const provider = name.data;
      const result = await ctx.manager.payments.handleWebhook(provider, await ctx.rawBody(), ctx.request.headers);
      return { received: true, ...result };
    },
  }),
];

/** Promo routes: eligibility and claims for the caller; create, list and (de)activate for admins. */
export const promoRoutes: RouteDefinition[] = [
  userRoute("GET", "/promo/eligibility", {
    operationId: "checkPromoEligibility",
    summary: "Whether the caller may claim a promo code, or the reason why not",
    tags: promos,
    query: EligibilityParams,
    response: EligibilitySchema,
    handle: (ctx) =>
      ctx.manager.promos.checkEligibility(self(ctx), ctx.query<z.infer<typeof EligibilityParams>>().promo_code),
  }),
  userRoute("POST", "/promo/claim", {
    operationId: "claimPromo",
    summary: "Claims a promo code: a grant of its credits (source promo)",
    tags: promos,
    body: ClaimBody,
    idempotent: true,
    status: 201,
    response: ClaimSchema,
    errors: [404, 409],
    handle: async (ctx) => {
      const { promo_code, ...options } = await ctx.body<z.infer<typeof ClaimBody>>();
      const { claim, entry } = await ctx.manager.promos.claimPromo(self(ctx), promo_code, withKey(options, ctx));
      return { claim, entry: seen(ctx, entry, entryView) };
    },
  }),
  adminRoute("POST", "/promos", {
    operationId: "createPromo",
    summary: "Creates a promo code (case-insensitive, unique)",
    tags: ["admin", ...promos],
    body: CreatePromoInput,
    status: 201,
    response: Promo,
    errors: [409],
    handle: async (ctx) => ctx.manager.promos.createPromo(await ctx.body<CreatePromoInput>()),
  }),
  adminRoute("GET", "/promos", {
    operationId: "listPromos",
    summary: "Promo codes, newest first, with their claim counts (uses)",
    tags: ["admin", ...promos],
    query: ListPromosParams,
    response: PromoPageSchema,
    handle: (ctx) => ctx.manager.promos.listPromos(ctx.query<z.infer<typeof ListPromosParams>>()),
  }),
  adminRoute("POST", "/promos/:code/activation", {
    operationId: "setPromoActive",
    summary: "Turns a promo code on or off",
    tags: ["admin", ...promos],
    body: ActivationBody,
    response: Promo,
    errors: [404],
    handle: async (ctx) =>
      ctx.manager.promos.setPromoActive(
        parse(PromoCode, ctx.params.code, "path.code"),
        (await ctx.body<{ isActive: boolean }>()).isActive,
      ),
  }),
];
