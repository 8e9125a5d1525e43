import * as z from "zod/mini";
import {
  AlertId,
  CreditsInfo,
  AlertStateName,
  FeatureName,
  GrantScope,
  GrantSource,
  Metadata,
  NonNegativeAmount,
  PlanId,
  SignedAmount,
  SubscriptionStatus,
  UnitName,
  UserId,
} from "../core/models/index.js";
import type { CustomerState } from "../modules/customer-state/rules.js";
import { CustomerStatesQuery } from "../modules/customer-state/model.js";
import type { RouteContext, RouteDefinition } from "./router.js";
import { adminRoute, self, target, userRoute } from "./route-helpers.js";
import { SpendLimitStatusSchema } from "./limit-routes.js";
import { OPERATOR_FIELDS } from "./views.js";

// ---- schemas (docs/customer-state.md, "Over HTTP") ---------------------------------------------

/** A grant behind a feature's figures, as an admin reads it (the operator's notes included). */
export const StateGrantSchema = z.object({
  id: z.string(),
  /** Its unit (docs/units.md); absent: the default unit. */
  unit: z.optional(UnitName),
  source: GrantSource,
  amount: NonNegativeAmount,
  left: NonNegativeAmount,
  expiresAt: z.nullable(z.date()),
  scope: z.nullable(GrantScope),
  description: z.nullable(z.string()),
  metadata: z.nullable(Metadata),
  sourceRef: z.nullable(z.string()),
  /** When it starts, for a grant added to start later (docs/units.md); null: when it was created. */
  effectiveAt: z.nullable(z.date()),
});

const FeatureStateFields = {
  feature: FeatureName,
  /** The unit its figures are in (its rule's, docs/units.md); absent: the default unit. */
  unit: z.optional(UnitName),
  allowed: z.boolean(),
  reason: z.enum(["ok", "feature_off", "insufficient_credits", "limit"]),
  required: z.number().check(z.int()),
  granted: NonNegativeAmount,
  used: z.number().check(z.int()),
  left: SignedAmount,
  resetsAt: z.nullable(z.date()),
  limit: z.nullable(
    z.object({ amount: NonNegativeAmount, used: NonNegativeAmount, remaining: NonNegativeAmount, resetsAt: z.date() }),
  ),
  rule: z.nullable(
    z.object({ minAvailable: NonNegativeAmount, enabled: z.boolean(), plans: z.nullable(z.array(PlanId)) }),
  ),
};

/** One alert threshold with its state (`AlertStatus`, docs/customer-state.md, "Alerts"). */
const AlertStatusSchema = z.object({
  threshold: z.looseObject({ id: AlertId, kind: z.enum(["available", "left_percent", "period_spend", "expiring"]) }),
  state: AlertStateName,
  value: z.nullable(z.number()),
  line: z.number(),
  crossings: z.nullable(z.number().check(z.int())),
  source: z.enum(["builtIn", "default", "account"]),
});

const StateFields = {
  userId: UserId,
  seq: NonNegativeAmount,
  readAt: z.date(),
  balance: SignedAmount,
  reserved: NonNegativeAmount,
  available: SignedAmount,
  debt: NonNegativeAmount,
  /** Every unit but the default one, with its own figures, as `getUserCreditsInfo`'s (docs/units.md). */
  units: CreditsInfo.shape.units,
  limits: z.array(SpendLimitStatusSchema),
  subscription: z.nullable(
    z.object({
      id: z.string(),
      planId: PlanId,
      planName: z.nullable(z.string()),
      status: SubscriptionStatus,
      currentPeriodStart: z.date(),
      currentPeriodEnd: z.date(),
      renews: z.boolean(),
      cancelAtPeriodEnd: z.boolean(),
      pendingPlanId: z.nullable(PlanId),
    }),
  ),
  alerts: z.array(AlertStatusSchema),
};

/** `credits.getCustomerState()` as an admin reads it. */
export const CustomerStateSchema = z.object({
  ...StateFields,
  features: z.array(z.object({ ...FeatureStateFields, grants: z.array(StateGrantSchema) })),
  /** Grants that start later and have not started (docs/units.md), in no figure until then. */
  upcoming: z.array(StateGrantSchema),
});

const mask = Object.fromEntries(
  OPERATOR_FIELDS.grant.filter((f) => f in StateGrantSchema.shape).map((f) => [f, true]),
) as { description: true; metadata: true; sourceRef: true };

/** A grant as the account holder reads it: without the operator's notes (docs/service.md, "What each role sees"). */
export const StateGrantView = z.omit(StateGrantSchema, mask);

/** The customer's state as a user, member or customer token reads it. */
export const CustomerStateView = z.object({
  ...StateFields,
  features: z.array(z.object({ ...FeatureStateFields, grants: z.array(StateGrantView) })),
  /** Grants that start later and have not started (docs/units.md), in no figure until then. */
  upcoming: z.array(StateGrantView),
});

export const CustomerStatePageSchema = z.object({
  items: z.array(CustomerStateSchema),
  nextCursor: z.nullable(UserId),
});

/** `GET /admin/credits/states`: `userIds` comma-separated or repeated. */
export const CustomerStatesParams = CustomerStatesQuery;

// ---- handlers -----------------------------------------------------------------------------------

/**
 * `state` as a caller who is not an admin reads it: the grants without the operator's notes, and —
 * for a caller bound to a spender — the limits that can apply to its spends (as `GET /credits/limits`)
 * and the alerts about the whole account or its own spend (a `period_spend` threshold of another
 * spender counts that spender's spend, which the caller may not read).
 */
export function customerStateView(ctx: RouteContext, state: CustomerState): z.output<typeof CustomerStateView> {
  // A member's key names its spender; a customer token its own (docs/teams-and-limits.md, "Over HTTP").
  const spender = ctx.identity?.spender ?? ctx.identity?.customer?.spender;
  return {
    ...state,
    limits:
      spender === undefined ? state.limits : state.limits.filter((l) => l.spender === null || l.spender === spender),
    alerts:
      spender === undefined
        ? state.alerts
        : state.alerts.filter(
            (a) =>
              a.threshold.kind !== "period_spend" ||
              a.threshold.spender === undefined ||
              a.threshold.spender === spender,
          ),
    features: state.features.map((f) => ({
      ...f,
      grants: f.grants.map(({ description: _d, metadata: _m, sourceRef: _s, ...grant }) => grant),
    })),
    upcoming: state.upcoming.map(({ description: _d, metadata: _m, sourceRef: _s, ...grant }) => grant),
  };
}

const seenState = (ctx: RouteContext, state: CustomerState) =>
  ctx.identity?.admin === true ? state : customerStateView(ctx, state);

const tags = ["customer state"];

/** The customer's state routes (docs/customer-state.md, "Over HTTP"). */
export const customerStateRoutes: RouteDefinition[] = [
  userRoute("GET", "/state", {
    customer: true,
    operationId: "getCustomerState",
    summary:
      "What the caller's account may do now, from one snapshot: balance, each feature's decision and figures, limits, subscription and alerts (without the operator's notes)",
    tags,
    response: CustomerStateView,
    handle: async (ctx) => seenState(ctx, await ctx.manager.credits.getCustomerState(self(ctx))),
  }),
  adminRoute("GET", "/users/:userId/state", {
    operationId: "adminGetCustomerState",
    summary: "What a user's account may do now, from one snapshot (the operator's notes included)",
    tags,
    response: CustomerStateSchema,
    handle: (ctx) => ctx.manager.credits.getCustomerState(target(ctx)),
  }),
  adminRoute("GET", "/states", {
    operationId: "adminListCustomerStates",
    summary: "The states of many accounts, page by page by cursor, optionally only those of `userIds`",
    tags,
    query: CustomerStatesParams,
    response: CustomerStatePageSchema,
    handle: (ctx) => ctx.manager.credits.listCustomerStates(ctx.query<z.infer<typeof CustomerStatesParams>>()),
  }),
];
