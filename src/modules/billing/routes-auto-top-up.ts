import * as z from "zod/mini";
import { Amount, AutoTopUpInput, AutoTopUpState, type AutoTopUpRule } from "../../models-entry.js";
import { HttpError, type RouteContext, type RouteDefinition } from "../../http/router.js";
import { adminRoute, self, target, userRoute } from "../../http/route-helpers.js";
import { AutoTopUpStateView, autoTopUpView, seen } from "../../http/views.js";

/**
 * What callers may do with their own auto top-up rule (docs/http.md, "Auto top-up"):
 * - `"none"` (default): read it only; an admin (or your billing, through the library) sets it;
 * - `"limits"`: change the amounts of a rule an admin set — `below`, `amount` or `toBalance`,
 *   `minAmount`, `maxAmount`, `maxPerMonth`, `maxFailures` — and disable or enable it; never its
 *   provider, customer, payment method or currency (the card that is charged);
 * - `"all"`: set the whole rule, the saved payment method included — only where your
 *   authentication ties the provider's customer to the caller (a caller naming another customer's
 *   card would be charging it).
 * @public
 */
export type SelfServiceAutoTopUp = "none" | "limits" | "all";

const tags = ["auto-top-up"];

/** `PUT /credits/auto-top-up` under `"limits"`: the amounts only (null clears an optional one). */
export const AutoTopUpLimitsBody = z.strictObject({
  below: z.optional(Amount),
  amount: z.optional(Amount),
  toBalance: z.optional(Amount),
  minAmount: z.optional(z.nullable(Amount)),
  maxAmount: z.optional(z.nullable(Amount)),
  maxPerMonth: z.optional(z.nullable(z.number().check(z.int(), z.minimum(1), z.maximum(10_000)))),
  maxFailures: z.optional(z.number().check(z.int(), z.minimum(1), z.maximum(100))),
});
export type AutoTopUpLimitsBody = z.infer<typeof AutoTopUpLimitsBody>;

export const AutoTopUpAnswer = z.object({ autoTopUp: z.nullable(AutoTopUpState) });
/** What a caller who is not an admin reads: no provider customer nor payment method (docs/service.md, "What each role sees"). */
export const AutoTopUpAnswerView = z.object({ autoTopUp: z.nullable(AutoTopUpStateView) });
/** `{ autoTopUp }` as the caller sees it. */
const answer = (ctx: RouteContext, state: AutoTopUpState | null) => ({ autoTopUp: seen(ctx, state, autoTopUpView) });

/** The stored rule as `setAutoTopUp` takes it. */
function inputOf(rule: AutoTopUpRule): AutoTopUpInput {
  return {
    below: rule.below,
    ...(rule.amount === null ? {} : { amount: rule.amount }),
    ...(rule.toBalance === null ? {} : { toBalance: rule.toBalance }),
    provider: rule.provider,
    customer: rule.customer,
    paymentMethod: rule.paymentMethod,
    currency: rule.currency,
    ...(rule.minAmount === null ? {} : { minAmount: rule.minAmount }),
    ...(rule.maxAmount === null ? {} : { maxAmount: rule.maxAmount }),
    ...(rule.maxPerMonth === null ? {} : { maxPerMonth: rule.maxPerMonth }),
    maxFailures: rule.maxFailures,
  };
}

/** The rule with the caller's amounts: `amount` replaces `toBalance` and the other way round. */
function merged(rule: AutoTopUpRule, b: AutoTopUpLimitsBody): AutoTopUpInput {
  const base = inputOf(rule);
  const out: Record<string, unknown> = { ...base };
  if (b.amount !== undefined) delete out.toBalance;
  if (b.toBalance !== undefined) delete out.amount;
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined) continue;
    if (v === null) delete out[k];
    else out[k] = v;
  }
  return out as AutoTopUpInput;
}

/**
 * Auto top-up routes (docs/http.md, "Auto top-up"; the rule: docs/promos-and-payments.md, "Auto
 * top-up"). Admins: read, set and disable any account's rule under `/users/:userId/auto-top-up`.
 * Callers: read their own at `/auto-top-up`; change or disable it as `selfService` allows (403
 * otherwise). Each attempt is a payment (`metadata.autoTopUp: true`) in the payment history.
 */
export function autoTopUpRoutes(selfService: SelfServiceAutoTopUp = "none"): RouteDefinition[] {
  const refuse = (what: string) => {
    throw new HttpError(403, "FORBIDDEN", `${what}: only an admin (or your billing) can do it here.`);
  };
  return [
    userRoute("GET", "/auto-top-up", {
      operationId: "getAutoTopUp",
      summary: "The caller's auto top-up rule and its state (null when none)",
      tags,
      response: AutoTopUpAnswerView,
      handle: async (ctx) => answer(ctx, await ctx.manager.payments.getAutoTopUp(self(ctx))),
    }),
    userRoute("PUT", "/auto-top-up", {
      operationId: "setAutoTopUp",
      summary:
        selfService === "all"
          ? "Sets the caller's auto top-up rule (and enables it)"
          : "Changes the amounts of the caller's auto top-up rule (and enables it), when the service allows it",
      tags,
      body: selfService === "all" ? AutoTopUpInput : AutoTopUpLimitsBody,
      response: AutoTopUpAnswerView,
      errors: [403, 404],
      handle: async (ctx) => {
        const user = self(ctx);
        if (selfService === "none") return refuse("Changing the auto top-up rule");
        if (selfService === "all")
          return answer(ctx, await ctx.manager.payments.setAutoTopUp(user, await ctx.body<AutoTopUpInput>()));
        const current = await ctx.manager.payments.getAutoTopUp(user);
        if (current === null)
          throw new HttpError(404, "NOT_FOUND", "No auto top-up is set up for this account: an admin sets it first.");
        const b = await ctx.body<AutoTopUpLimitsBody>();
        return answer(ctx, await ctx.manager.payments.setAutoTopUp(user, merged(current.rule, b)));
      },
    }),
    userRoute("POST", "/auto-top-up/disable", {
      operationId: "disableAutoTopUp",
      summary: "Disables the caller's auto top-up (kept; a top-up in flight completes), when the service allows it",
      tags,
      response: AutoTopUpAnswerView,
      errors: [403],
      handle: async (ctx) => {
        if (selfService === "none") return refuse("Disabling the auto top-up");
        return answer(ctx, await ctx.manager.payments.disableAutoTopUp(self(ctx)));
      },
    }),
    adminRoute("GET", "/users/:userId/auto-top-up", {
      operationId: "adminGetAutoTopUp",
      summary: "A user's auto top-up rule and its state (null when none)",
      tags: ["admin", ...tags],
      response: AutoTopUpAnswer,
      handle: async (ctx) => ({ autoTopUp: await ctx.manager.payments.getAutoTopUp(target(ctx)) }),
    }),
    adminRoute("PUT", "/users/:userId/auto-top-up", {
      operationId: "adminSetAutoTopUp",
      summary: "Sets (or replaces) a user's auto top-up rule and enables it",
      tags: ["admin", ...tags],
      body: AutoTopUpInput,
      response: AutoTopUpAnswer,
      handle: async (ctx) => ({
        autoTopUp: await ctx.manager.payments.setAutoTopUp(target(ctx), await ctx.body<AutoTopUpInput>()),
      }),
    }),
    adminRoute("POST", "/users/:userId/auto-top-up/disable", {
      operationId: "adminDisableAutoTopUp",
      summary: "Disables a user's auto top-up (kept; a top-up in flight completes)",
      tags: ["admin", ...tags],
      response: AutoTopUpAnswer,
      handle: async (ctx) => ({ autoTopUp: await ctx.manager.payments.disableAutoTopUp(target(ctx)) }),
    }),
  ];
}
