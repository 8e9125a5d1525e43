import * as z from "zod/mini";
import {
  FeatureName,
  LimitPeriod,
  MutationOptions,
  NonNegativeAmount,
  RemoveLimitInput,
  SetLimitsInput,
  SpendLimitInput,
  SpenderId,
  UnitName,
  type SpendLimitStatus,
} from "../core/models/index.js";
import type { RouteContext, RouteDefinition } from "./router.js";
import { adminRoute, self, target, userRoute, withKey } from "./route-helpers.js";

// ---- schemas (the library's own models: HTTP and library validate alike) -----------------------

/** `PUT /admin/credits/users/:userId/limits`: the account's whole list of limits, replacing it. */
export const SetLimitsBody = z.extend(MutationOptions, { limits: SetLimitsInput });
/** `POST /admin/credits/users/:userId/limits/set`: one limit added, or changed in place (the others kept). */
export const SetLimitBody = z.extend(MutationOptions, { limit: SpendLimitInput });
/** `POST /admin/credits/users/:userId/limits/remove`: the limits with exactly this spender, feature and unit (and window). */
export const RemoveLimitBody = z.extend(MutationOptions, RemoveLimitInput.shape);

/** One limit as `getLimits` reports it: its window now, what it counted and what is left. */
export const SpendLimitStatusSchema = z.object({
  spender: z.nullable(SpenderId),
  feature: z.nullable(FeatureName),
  /** The credit unit it counts (docs/units.md); absent: the default unit. */
  unit: z.optional(UnitName),
  amount: NonNegativeAmount,
  period: z.nullable(LimitPeriod),
  resetsWith: z.nullable(z.literal("subscription")),
  /** Credits spent (and held) in the current window. */
  used: NonNegativeAmount,
  /** `amount - used`, never below 0. */
  remaining: NonNegativeAmount,
  windowStart: z.date(),
  /** When the window ends and `used` starts again from 0. */
  resetsAt: z.date(),
});
export const LimitListSchema = z.object({ items: z.array(SpendLimitStatusSchema) });

// ---- handlers -----------------------------------------------------------------------------------

/**
 * The limits a caller sees on their own account: all of them, or — for a caller bound to a spender
 * (a member's API key) — those that can apply to its spends (the account's, the features', its
 * own), not the other members' caps.
 */
function visibleTo(ctx: RouteContext, limits: SpendLimitStatus[]): SpendLimitStatus[] {
  const spender = ctx.identity?.spender;
  if (spender === undefined || ctx.identity?.admin === true) return limits;
  return limits.filter((l) => l.spender === null || l.spender === spender);
}

const limits = ["limits"];

/**
 * The spend-limit routes (docs/teams-and-limits.md, "Over HTTP"): a caller reads the limits of
 * their own account; only admins set or remove them.
 */
export const limitRoutes: RouteDefinition[] = [
  userRoute("GET", "/limits", {
    operationId: "getLimits",
    summary:
      "The spend limits of the caller's account, each with its window now, what it counted and when it resets (a caller bound to a spender: those that apply to it)",
    tags: limits,
    response: LimitListSchema,
    handle: async (ctx) => {
      return { items: visibleTo(ctx, await ctx.manager.credits.getLimits(self(ctx))) };
    },
  }),
  adminRoute("GET", "/users/:userId/limits", {
    operationId: "adminGetLimits",
    summary: "A user's spend limits, each with its window now, what it counted and when it resets",
    tags: limits,
    response: LimitListSchema,
    handle: async (ctx) => ({ items: await ctx.manager.credits.getLimits(target(ctx)) }),
  }),
  adminRoute("PUT", "/users/:userId/limits", {
    operationId: "adminSetLimits",
    summary:
      "Replace a user's spend limits (a limit kept with the same spender, feature and window keeps what its window counted)",
    tags: limits,
    body: SetLimitsBody,
    idempotent: true,
    response: LimitListSchema,
    errors: [409],
    handle: async (ctx) => {
      const { limits: list, ...options } = await ctx.body<z.infer<typeof SetLimitsBody>>();
      return { items: await ctx.manager.credits.setLimits(target(ctx), list, withKey(options, ctx)) };
    },
  }),
  adminRoute("POST", "/users/:userId/limits/set", {
    operationId: "adminSetLimit",
    summary:
      "Add one spend limit, or change the one with the same spender, feature and window (it keeps what its window counted); the user's other limits stay as they are",
    tags: limits,
    body: SetLimitBody,
    idempotent: true,
    response: LimitListSchema,
    errors: [409],
    handle: async (ctx) => {
      const { limit, ...options } = await ctx.body<z.infer<typeof SetLimitBody>>();
      return { items: await ctx.manager.credits.setLimit(target(ctx), limit, withKey(options, ctx)) };
    },
  }),
  adminRoute("POST", "/users/:userId/limits/remove", {
    operationId: "adminRemoveLimit",
    summary:
      "Remove a user's limits with exactly this spender, feature and unit (omitted: none, the default unit), and this window when given; answers the limits left",
    tags: limits,
    body: RemoveLimitBody,
    idempotent: true,
    response: LimitListSchema,
    errors: [409],
    handle: async (ctx) => {
      const { spender, feature, unit, period, resetsWith, ...options } =
        await ctx.body<z.infer<typeof RemoveLimitBody>>();
      const which = {
        ...(spender === undefined ? {} : { spender }),
        ...(feature === undefined ? {} : { feature }),
        ...(unit === undefined ? {} : { unit }),
        ...(period === undefined ? {} : { period }),
        ...(resetsWith === undefined ? {} : { resetsWith }),
      };
      return { items: await ctx.manager.credits.removeLimit(target(ctx), which, withKey(options, ctx)) };
    },
  }),
];
