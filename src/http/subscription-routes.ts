import * as z from "zod/mini";
import { NotFoundError } from "../core/errors.js";
import {
  CancelOptions,
  ChangePlanOptions,
  CreatePlanInput,
  Plan,
  PlanId,
  ResumeOptions,
  SubscribeOptions,
  Subscription,
  UpdatePlanInput,
  parse,
} from "../core/models/index.js";
import { HttpError, type RouteContext, type RouteDefinition } from "./router.js";
import { adminRoute, self, target, userRoute, withKey } from "./route-helpers.js";
import { PlanView, planView, seen, SubscriptionView, subscriptionView } from "./views.js";

// ---- request schemas ----------------------------------------------------------------------------

/** `GET …/plans`: users see active plans only; admins may ask for inactive ones too. */
export const AdminListPlansParams = z.strictObject({ includeInactive: z.optional(z.boolean()) });
/** `POST /credits/subscription`: no `startAt` (backdating or scheduling a start is for admins). */
export const SelfSubscribeBody = z.extend(z.omit(SubscribeOptions, { startAt: true }), { planId: PlanId });
/** `POST /admin/credits/users/:userId/subscription`. */
export const AdminSubscribeBody = z.extend(SubscribeOptions, { planId: PlanId });
/** `POST …/subscription/change`. */
export const ChangePlanBody = z.extend(ChangePlanOptions, { planId: PlanId });

// ---- response schemas ---------------------------------------------------------------------------

export const PlanListSchema = z.object({ items: z.array(Plan) });
/** What a caller who is not an admin reads (docs/service.md, "What each role sees"). */
export const PlanListView = z.object({ items: z.array(PlanView) });

/**
 * A user route answering a subscription or a plan, its answer shown as the caller sees it (an
 * admin: whole; anyone else: without the operator's fields).
 */
function viewed(def: RouteDefinition): RouteDefinition {
  const handle = def.handle;
  if (def.response === Subscription)
    return {
      ...def,
      response: SubscriptionView,
      handle: async (ctx) => seen(ctx, (await handle(ctx)) as Subscription, subscriptionView),
    };
  if (def.response === Plan)
    return { ...def, response: PlanView, handle: async (ctx) => seen(ctx, (await handle(ctx)) as Plan, planView) };
  if (def.response === PlanListSchema)
    return {
      ...def,
      response: PlanListView,
      handle: async (ctx) => ({
        items: ((await handle(ctx)) as { items: Plan[] }).items.map((p) => seen(ctx, p, planView)),
      }),
    };
  return def;
}

// ---- options ------------------------------------------------------------------------------------

/**
 * Which plans a caller may subscribe to or change to on their own (admins: any active plan).
 * `"free"` (default): plans whose `price` is 0 only — the library does not take payments for
 * plans, so self-service on a paid plan would hand out its credits unpaid; `"all"`: any active
 * plan (your own billing gates it); `"none"`: only admins subscribe and change plans.
 * @public
 */
export type SelfServiceSubscriptions = "free" | "all" | "none";

// ---- handlers -----------------------------------------------------------------------------------

const planParam = (ctx: RouteContext) => parse(PlanId, ctx.params.planId, "path.planId");

async function subscriptionOf(ctx: RouteContext, userId: string): Promise<Subscription> {
  const s = await ctx.manager.subscriptions.getUserSubscription(userId);
  if (s === null) throw new NotFoundError(`User ${userId} has no active subscription.`, { userId });
  return s;
}

const plans = ["plans"];
const subscriptions = ["subscriptions"];

/**
 * Plan and subscription routes. Users: list active plans, read a plan, read their own
 * subscription, subscribe and change plan within `selfService`, cancel and resume their own.
 * Admins (under the admin base path): plans' create, update, deactivate, delete, and every
 * subscription action on any user's `/users/:userId/subscription`. See docs/http.md.
 */
export function subscriptionRoutes(selfService: SelfServiceSubscriptions = "free"): RouteDefinition[] {
  /** Refuses (403) a self-service subscribe or change the rule does not allow. */
  const mayChooseSelf = async (ctx: RouteContext, planId: string) => {
    if (selfService === "all") return;
    if (selfService === "free") {
      const plan = await ctx.manager.subscriptions.getPlan(planId);
      if (plan.price === 0) return;
    }
    throw new HttpError(403, "FORBIDDEN", "This plan can only be subscribed to through billing or by an admin.");
  };

  /**
   * A free plan's credits cost nothing to allocate again, so a user moves on or off one only at a
   * period's end: otherwise cancelling now and subscribing again, or changing now between free plans
   * (each change a new cycle with its full allocation, or a prorated top-up after spending), would
   * allocate its credits over and over within one period. Admins are not bound by this.
   */
  const notNowOnFree = async (ctx: RouteContext, planId: string, what: string) => {
    if ((await ctx.manager.subscriptions.getPlan(planId)).price === 0) {
      throw new HttpError(
        403,
        "FORBIDDEN",
        `${what} takes effect at the period's end on a free plan; only an admin can do it now.`,
      );
    }
  };

  const user = [
    userRoute("GET", "/plans", {
      operationId: "listPlans",
      summary: "The active plans",
      tags: plans,
      response: PlanListSchema,
      handle: async (ctx) => ({ items: await ctx.manager.subscriptions.listPlans() }),
    }),
    userRoute("GET", "/plans/:planId", {
      operationId: "getPlan",
      summary: "One plan (also an inactive one: a subscriber may still be on it)",
      tags: plans,
      response: Plan,
      errors: [404],
      handle: (ctx) => ctx.manager.subscriptions.getPlan(planParam(ctx)),
    }),
    userRoute("GET", "/subscription", {
      operationId: "getSubscription",
      summary: "The caller's active subscription (404 when there is none)",
      tags: subscriptions,
      response: Subscription,
      errors: [404],
      handle: (ctx) => subscriptionOf(ctx, self(ctx)),
    }),
    userRoute("POST", "/subscription", {
      operationId: "subscribe",
      summary: "Subscribes the caller to a plan and allocates the first period's credits",
      description:
        "Self-service plans only (by default those with price 0; 403 otherwise). 409 when the caller already " +
        "has an active subscription, unless the request repeats its Idempotency-Key.",
      tags: subscriptions,
      body: SelfSubscribeBody,
      idempotent: true,
      status: 201,
      response: Subscription,
      errors: [403, 404, 409],
      handle: async (ctx) => {
        const { planId, ...options } = await ctx.body<z.infer<typeof SelfSubscribeBody>>();
        await mayChooseSelf(ctx, planId);
        return ctx.manager.subscriptions.subscribe(self(ctx), planId, withKey(options, ctx));
      },
    }),
    userRoute("POST", "/subscription/change", {
      operationId: "changePlan",
      summary: "Moves the caller's subscription to another plan (now or at the period's end)",
      description:
        "Self-service plans only (by default those with price 0; 403 otherwise). A change to a free plan takes effect at " +
        'the period\'s end (when: period_end); now is 403 (admins only). See docs/subscriptions.md, "Changing plans".',
      tags: subscriptions,
      body: ChangePlanBody,
      idempotent: true,
      response: Subscription,
      errors: [403, 404, 409],
      handle: async (ctx) => {
        const { planId, ...options } = await ctx.body<z.infer<typeof ChangePlanBody>>();
        await mayChooseSelf(ctx, planId);
        if ((options.when ?? "now") === "now")
          await notNowOnFree(ctx, planId, 'A change to a free plan (use when: "period_end")');
        return ctx.manager.subscriptions.changePlan(self(ctx), planId, withKey(options, ctx));
      },
    }),
    userRoute("POST", "/subscription/cancel", {
      operationId: "cancelSubscription",
      summary: "Cancels the caller's subscription, at the period's end (default) or now",
      description:
        "Cancelling a free plan now (atPeriodEnd: false) is 403: at the period's end only (admins may cancel it now).",
      tags: subscriptions,
      body: CancelOptions,
      idempotent: true,
      response: Subscription,
      errors: [403, 404, 409],
      handle: async (ctx) => {
        const options = await ctx.body<CancelOptions>();
        // None active: the service answers (a retry of a keyed cancel now replays; else 404).
        const current = await ctx.manager.subscriptions.getUserSubscription(self(ctx));
        if (options.atPeriodEnd === false && current !== null) {
          await notNowOnFree(ctx, current.planId, "Cancelling (use atPeriodEnd: true)");
        }
        return ctx.manager.subscriptions.cancel(self(ctx), withKey(options, ctx));
      },
    }),
    userRoute("POST", "/subscription/resume", {
      operationId: "resumeSubscription",
      summary: "Undoes the caller's cancellation at period end (and turns renewal on)",
      tags: subscriptions,
      body: ResumeOptions,
      idempotent: true,
      response: Subscription,
      errors: [403, 404, 409],
      handle: async (ctx) => {
        const options = await ctx.body<ResumeOptions>();
        const current = await subscriptionOf(ctx, self(ctx));
        // Renewal allocates again: on a plan the caller may not choose, only an admin turns it back on.
        if (current.cancelAtPeriodEnd || !current.autoRenew) await mayChooseSelf(ctx, current.planId);
        return ctx.manager.subscriptions.resume(self(ctx), withKey(options, ctx));
      },
    }),
  ].map(viewed);

  const admin: RouteDefinition[] = [
    adminRoute("GET", "/plans", {
      operationId: "adminListPlans",
      summary: "Plans, inactive ones too with includeInactive=true",
      tags: ["admin", ...plans],
      query: AdminListPlansParams,
      response: PlanListSchema,
      handle: async (ctx) => ({
        items: await ctx.manager.subscriptions.listPlans(ctx.query<z.infer<typeof AdminListPlansParams>>()),
      }),
    }),
    adminRoute("POST", "/plans", {
      operationId: "createPlan",
      summary: "Creates a plan",
      tags: ["admin", ...plans],
      body: CreatePlanInput,
      status: 201,
      response: Plan,
      errors: [409],
      handle: async (ctx) => ctx.manager.subscriptions.createPlan(await ctx.body<CreatePlanInput>()),
    }),
    adminRoute("PATCH", "/plans/:planId", {
      operationId: "updatePlan",
      summary: "Changes a plan's fields (current periods keep what they were allocated)",
      tags: ["admin", ...plans],
      body: UpdatePlanInput,
      response: Plan,
      errors: [404, 409],
      handle: async (ctx) => ctx.manager.subscriptions.updatePlan(planParam(ctx), await ctx.body<UpdatePlanInput>()),
    }),
    adminRoute("POST", "/plans/:planId/deactivate", {
      operationId: "deactivatePlan",
      summary: "Deactivates a plan: no new subscriptions; current subscribers keep it",
      tags: ["admin", ...plans],
      response: Plan,
      errors: [404],
      handle: (ctx) => ctx.manager.subscriptions.deactivatePlan(planParam(ctx)),
    }),
    adminRoute("DELETE", "/plans/:planId", {
      operationId: "deletePlan",
      summary: "Deletes a plan nobody is subscribed to (409 otherwise)",
      tags: ["admin", ...plans],
      status: 204,
      errors: [404, 409],
      handle: async (ctx) => {
        await ctx.manager.subscriptions.deletePlan(planParam(ctx));
        return null;
      },
    }),
    adminRoute("GET", "/users/:userId/subscription", {
      operationId: "adminGetSubscription",
      summary: "A user's active subscription (404 when there is none)",
      tags: ["admin", ...subscriptions],
      response: Subscription,
      errors: [404],
      handle: (ctx) => subscriptionOf(ctx, target(ctx)),
    }),
    adminRoute("POST", "/users/:userId/subscription", {
      operationId: "adminSubscribe",
      summary: "Subscribes a user to any active plan (startAt may backdate or schedule the start)",
      tags: ["admin", ...subscriptions],
      body: AdminSubscribeBody,
      idempotent: true,
      status: 201,
      response: Subscription,
      errors: [404, 409],
      handle: async (ctx) => {
        const { planId, ...options } = await ctx.body<z.infer<typeof AdminSubscribeBody>>();
        return ctx.manager.subscriptions.subscribe(target(ctx), planId, withKey(options, ctx));
      },
    }),
    adminRoute("POST", "/users/:userId/subscription/change", {
      operationId: "adminChangePlan",
      summary: "Moves a user's subscription to another plan",
      tags: ["admin", ...subscriptions],
      body: ChangePlanBody,
      idempotent: true,
      response: Subscription,
      errors: [404, 409],
      handle: async (ctx) => {
        const { planId, ...options } = await ctx.body<z.infer<typeof ChangePlanBody>>();
        return ctx.manager.subscriptions.changePlan(target(ctx), planId, withKey(options, ctx));
      },
    }),
    adminRoute("POST", "/users/:userId/subscription/cancel", {
      operationId: "adminCancelSubscription",
      summary: "Cancels a user's subscription",
      tags: ["admin", ...subscriptions],
      body: CancelOptions,
      idempotent: true,
      response: Subscription,
      errors: [404, 409],
      handle: async (ctx) =>
        ctx.manager.subscriptions.cancel(target(ctx), withKey(await ctx.body<CancelOptions>(), ctx)),
    }),
    adminRoute("POST", "/users/:userId/subscription/resume", {
      operationId: "adminResumeSubscription",
      summary: "Undoes a user's cancellation at period end",
      tags: ["admin", ...subscriptions],
      body: ResumeOptions,
      idempotent: true,
      response: Subscription,
      errors: [404, 409],
      handle: async (ctx) =>
        ctx.manager.subscriptions.resume(target(ctx), withKey(await ctx.body<ResumeOptions>(), ctx)),
    }),
  ];
  return [...user, ...admin];
}
