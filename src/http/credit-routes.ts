import * as z from "zod/mini";
import { NotFoundError } from "../core/errors.js";
import {
  AddCreditsOptions,
  Amount,
  CheckOptions,
  CommitOptions,
  CreditsInfo,
  CreditsInfoOptions,
  CustomerTokenOptions,
  DeductOptions,
  EntityId,
  EntryType,
  Grant,
  GrantsQuery,
  AuditOptions,
  HistoryQuery,
  JournalEntry,
  parse,
  ReleaseOptions,
  Reservation,
  ReserveOptions,
  ReverseChargeOptions,
  UserId,
  VoidGrantOptions,
} from "../models-entry.js";
import { HttpError, type RouteContext, type RouteDefinition } from "./router.js";
import { adminRoute, self, target, userRoute, withKey } from "./route-helpers.js";
import { customerTokensOn } from "../credit-service.js";
import { EntryView, entryView, GrantView, grantView, ReservationView, reservationView, seen } from "./views.js";

// ---- request schemas (built from the core models, so HTTP and library validate alike) ----------

/** `POST /credits/reservations` and the admin equivalent. */
export const ReserveBody = z.extend(ReserveOptions, { amount: Amount });
/** `POST …/reservations/:id/commit` (the owner is the caller, not a field). */
export const CommitBody = z.omit(CommitOptions, { userId: true });
/** `POST …/reservations/:id/release` (the owner is the caller, not a field). */
export const ReleaseBody = z.omit(ReleaseOptions, { userId: true });
/** `POST /admin/credits/users/:userId/add`. */
export const AddBody = z.extend(AddCreditsOptions, { amount: Amount });
/** `POST /admin/credits/users/:userId/deduct`. */
export const DeductBody = z.extend(DeductOptions, {
  amount: Amount,
  /** Usage already delivered: take what unheld grants have and record the rest as debt. */
  afterService: z.optional(z.boolean()),
});

export const HistoryParams = z.strictObject({
  limit: HistoryQuery.shape.limit,
  cursor: HistoryQuery.shape.cursor,
  /** Comma-separated or repeated: `types=deduct,commit_reserved`. */
  types: z.optional(z.array(EntryType).check(z.minLength(1))),
  from: z.optional(z.iso.datetime({ offset: true })),
  to: z.optional(z.iso.datetime({ offset: true })),
  /** Only the entries recorded under this spender (a caller bound to a spender: its own, always). */
  spender: HistoryQuery.shape.spender,
  /** Only the entries recorded for this feature. */
  feature: HistoryQuery.shape.feature,
});
export const ExpiringParams = z.strictObject({
  /** Days ahead, 0–3650, default 7. */
  days: z.optional(z.number().check(z.minimum(0), z.maximum(3650))),
});

// ---- response schemas ---------------------------------------------------------------------------

export const HistoryPageSchema = z.object({ items: z.array(JournalEntry), nextCursor: z.nullable(z.string()) });
export const ExpiringSchema = z.object({ userId: UserId, total: z.number().check(z.int()), grants: z.array(Grant) });
export const GrantListSchema = z.object({ items: z.array(Grant) });
// What a caller who is not an admin reads on the user routes (docs/service.md, "What each role sees").
export const HistoryPageView = z.object({ items: z.array(EntryView), nextCursor: z.nullable(z.string()) });
export const ExpiringView = z.object({ userId: UserId, total: z.number().check(z.int()), grants: z.array(GrantView) });
export const GrantListView = z.object({ items: z.array(GrantView) });
export const SettledHoldView = z.object({ reservation: ReservationView, entry: EntryView });
export const CheckSchema = z.object({
  allowed: z.boolean(),
  available: z.number().check(z.int()),
  required: z.number().check(z.int()),
  reason: z.enum(["ok", "insufficient_credits", "limit"]),
  /** With reason "limit": when the tightest limit's window ends. */
  resetsAt: z.optional(z.date()),
  /** With reason "limit": what that limit has left in its window. */
  limitRemaining: z.optional(z.number().check(z.int())),
});
export const AuditSchema = z.object({
  userId: UserId,
  ok: z.boolean(),
  /** Where the replay started: the latest checkpoint (default) or the first entry. */
  from: z.enum(["checkpoint", "genesis"]),
  fromSeq: z.number().check(z.int()),
  problems: z.array(z.string()),
  entries: z.number().check(z.int()),
  balance: z.number().check(z.int()),
  reserved: z.number().check(z.int()),
  debt: z.number().check(z.int()),
  available: z.number().check(z.int()),
  grants: z.record(z.string(), z.number().check(z.int())),
  activeReservations: z.record(z.string(), z.number().check(z.int())),
});

/** `GET /admin/credits/users/:userId/entries/:entryId/reversals`: a charge and what was given back of it. */
export const ReversalsSchema = z.object({
  charge: JournalEntry,
  /** Its `reverse` entries, oldest first. */
  reversals: z.array(JournalEntry),
  /** Credits given back so far: the sum of `reversals`. */
  reversed: z.number().check(z.int()),
  /** What can still be given back: the charge's amount less `reversed`. */
  remaining: z.number().check(z.int()),
});

/** `POST /admin/credits/users/:userId/customer-token`'s answer. */
export const CustomerTokenSchema = z.object({
  token: z.string(),
  expiresAt: z.iso.datetime(),
});

// ---- handlers -----------------------------------------------------------------------------------

const entryOf = (ctx: RouteContext) => parse(EntityId, ctx.params.entryId, "path.entryId");

/**
 * A user's spend on their own account, recorded under the caller's spender (docs/teams-and-limits.md,
 * "Over HTTP"): the identity's, whatever the request says; a request naming another spender is a
 * 403, so a member's key cannot spend under another member's cap (nor, without a spender of its
 * own, under anyone's). Admins, on their own account, name any.
 */
export function ownSpend<T extends { spender?: string | undefined }>(ctx: RouteContext, fields: T): T {
  const identity = ctx.identity;
  if (identity === null || identity.admin === true) return fields;
  if (identity.customer !== undefined) {
    // A customer token reads the account's figures (docs/usage.md, "For your customers"): a
    // query may name the token's own spender, no other.
    const mine = identity.customer.spender;
    if (fields.spender !== undefined && fields.spender !== mine)
      throw new HttpError(
        403,
        "FORBIDDEN",
        mine === undefined
          ? "Your customer token names no spender: a query cannot name one."
          : `Your customer token is for the spender ${JSON.stringify(mine)}: a query cannot name another.`,
      );
    return fields;
  }
  const own = identity.spender;
  if (fields.spender !== undefined && fields.spender !== own) {
    throw new HttpError(
      403,
      "FORBIDDEN",
      own === undefined
        ? "Your credentials name no spender: a spend cannot choose one."
        : "Your spends are recorded under your credentials' spender: a spend cannot name another.",
    );
  }
  return own === undefined ? fields : { ...fields, spender: own };
}

/**
 * The caller's reservation, or 404 — the same 404 whether it does not exist or belongs to someone
 * else, so ids cannot be probed. A caller bound to a spender reaches only the holds placed under
 * it. Admins reach every reservation.
 */
async function ownReservation(ctx: RouteContext) {
  const id = parse(EntityId, ctx.params.id, "path.id");
  const r = await ctx.manager.credits.getReservation(id);
  const identity = ctx.identity;
  if (
    !identity?.admin &&
    (r.userId !== identity?.userId || (identity.spender !== undefined && r.spender !== identity.spender))
  ) {
    throw new NotFoundError(`Reservation ${id} not found.`, { reservationId: id });
  }
  return r;
}

/**
 * The hold a commit or release names, and its owner: a user settles only their own holds, so the
 * caller is the owner (the store routes by it; another user's hold is a 404 from the settle itself);
 * an admin may settle anyone's, whose owner is read first, and so is a hold a caller bound to a
 * spender names (only its own spender's).
 */
async function holdToSettle(ctx: RouteContext): Promise<{ id: string; userId: string }> {
  if (ctx.identity !== null && ctx.identity.admin !== true && ctx.identity.spender === undefined) {
    return { id: parse(EntityId, ctx.params.id, "path.id"), userId: ctx.identity.userId };
  }
  const r = await ownReservation(ctx);
  return { id: r.id, userId: r.userId };
}

/**
 * What a user may read of their own account's spends (docs/teams-and-limits.md, "Over HTTP"): a
 * caller bound to a spender reads only the entries recorded under it (naming another is a 403);
 * the account's own credentials and admins read every entry, or filter by any spender.
 */
export function ownView<T extends { spender?: string | undefined }>(ctx: RouteContext, fields: T): T {
  const own = ctx.identity?.admin === true ? undefined : ctx.identity?.spender;
  if (own === undefined) return fields;
  if (fields.spender !== undefined && fields.spender !== own)
    throw new HttpError(403, "FORBIDDEN", "Your credentials read only the entries of their own spender.");
  return { ...fields, spender: own };
}

// Each answer as the caller sees it: an admin the whole records, anyone else the account holder's view.
const history = (user: (ctx: RouteContext) => string) => async (ctx: RouteContext) => {
  const page = await ctx.manager.credits.getCreditHistory(
    user(ctx),
    ownView(ctx, ctx.query<z.infer<typeof HistoryParams>>()),
  );
  return { items: page.items.map((e) => seen(ctx, e, entryView)), nextCursor: page.nextCursor };
};
const expiring = (user: (ctx: RouteContext) => string) => async (ctx: RouteContext) => {
  const e = await ctx.manager.credits.getExpiringCredits(
    user(ctx),
    ctx.query<z.infer<typeof ExpiringParams>>().days ?? 7,
  );
  return { userId: e.userId, total: e.total, grants: e.grants.map((g) => seen(ctx, g, grantView)) };
};
const grants = (user: (ctx: RouteContext) => string) => async (ctx: RouteContext) => ({
  items: (await ctx.manager.credits.getGrants(user(ctx), ctx.query<z.infer<typeof GrantsQuery>>())).map((g) =>
    seen(ctx, g, grantView),
  ),
});
const check = (user: (ctx: RouteContext) => string) => async (ctx: RouteContext) =>
  ctx.manager.credits.check(user(ctx), ownSpend(ctx, ctx.query<z.infer<typeof CheckOptions>>()));
const reserve = (user: (ctx: RouteContext) => string) => async (ctx: RouteContext) => {
  const { amount, ...options } = await ctx.body<z.infer<typeof ReserveBody>>();
  const hold = await ctx.manager.credits.reserveCredits(user(ctx), amount, withKey(ownSpend(ctx, options), ctx));
  return seen(ctx, hold, reservationView);
};
/** A settled hold and the entry that settled it, as the caller sees them. */
const settled = async (ctx: RouteContext, id: string, entry: JournalEntry) => ({
  reservation: seen(ctx, await ctx.manager.credits.getReservation(id), reservationView),
  entry: seen(ctx, entry, entryView),
});

const credits = ["credits"];
const admin = ["admin"];
const e = { notFound: 404, conflict: 409, gone: 410, payment: 402, rule: 422, forbidden: 403, limit: 429 };

/** The credit routes: the caller's own account under `basePath`, any account under `adminBasePath`. */
export const creditRoutes: RouteDefinition[] = [
  userRoute("GET", "/balance", {
    customer: true,
    operationId: "getBalance",
    summary:
      "The caller's balance, reserved, available (for the caller's spender and `feature`: scoped grants) and debt, with totals per scope",
    tags: credits,
    query: CreditsInfoOptions,
    response: CreditsInfo,
    errors: [e.forbidden],
    handle: (ctx) =>
      ctx.manager.credits.getUserCreditsInfo(self(ctx), ownSpend(ctx, ctx.query<z.infer<typeof CreditsInfoOptions>>())),
  }),
  userRoute("GET", "/check", {
    operationId: "checkAllowed",
    summary: "Whether the caller may use a feature and/or spend an amount now (allowed, available, required, reason)",
    tags: credits,
    query: CheckOptions,
    response: CheckSchema,
    handle: check(self),
  }),
  userRoute("GET", "/history", {
    operationId: "getHistory",
    summary:
      "The caller's journal, newest first, with cursor paging and type/date/spender/feature filters; a caller bound to a spender reads only its own entries",
    tags: credits,
    query: HistoryParams,
    response: HistoryPageView,
    errors: [e.forbidden],
    handle: history(self),
  }),
  userRoute("GET", "/expiring", {
    operationId: "getExpiringCredits",
    summary: "The caller's unspent credits expiring within `days` days (default 7)",
    tags: credits,
    query: ExpiringParams,
    response: ExpiringView,
    handle: expiring(self),
  }),
  userRoute("GET", "/grants", {
    customer: true,
    operationId: "getGrants",
    summary: "The caller's grants in burn-down order",
    tags: credits,
    query: GrantsQuery,
    response: GrantListView,
    handle: grants(self),
  }),
  userRoute("POST", "/reservations", {
    operationId: "createReservation",
    summary: "Hold credits of the caller's account",
    tags: credits,
    body: ReserveBody,
    idempotent: true,
    status: 201,
    response: ReservationView,
    errors: [e.payment, e.forbidden, e.conflict, e.limit],
    handle: reserve(self),
  }),
  userRoute("GET", "/reservations/:id", {
    operationId: "getReservation",
    summary: "One of the caller's reservations (admins: any)",
    tags: credits,
    response: ReservationView,
    errors: [e.notFound],
    handle: async (ctx) => seen(ctx, await ownReservation(ctx), reservationView),
  }),
  userRoute("POST", "/reservations/:id/commit", {
    operationId: "commitReservation",
    summary: "Capture a hold: all of it, or `amount` (less returns the rest, more is taken as usage)",
    tags: credits,
    body: CommitBody,
    idempotent: true,
    response: SettledHoldView,
    errors: [e.payment, e.notFound, e.conflict, e.gone],
    handle: async (ctx) => {
      const options = await ctx.body<z.infer<typeof CommitBody>>();
      const { id, userId } = await holdToSettle(ctx);
      const entry = await ctx.manager.credits.commitReservedCredits(id, { ...withKey(options, ctx), userId });
      return settled(ctx, id, entry);
    },
  }),
  userRoute("POST", "/reservations/:id/release", {
    operationId: "releaseReservation",
    summary: "Return a hold's credits",
    tags: credits,
    body: ReleaseBody,
    idempotent: true,
    response: SettledHoldView,
    errors: [e.notFound, e.conflict, e.gone],
    handle: async (ctx) => {
      const options = await ctx.body<z.infer<typeof ReleaseBody>>();
      const { id, userId } = await holdToSettle(ctx);
      const entry = await ctx.manager.credits.releaseReservedCredits(id, { ...withKey(options, ctx), userId });
      return settled(ctx, id, entry);
    },
  }),

  // ---- admin ------------------------------------------------------------------------------------
  adminRoute("GET", "/users/:userId/balance", {
    operationId: "adminGetBalance",
    summary: "A user's balance (available for a `spender` and `feature`: scoped grants), with totals per scope",
    tags: admin,
    query: CreditsInfoOptions,
    response: CreditsInfo,
    handle: (ctx) =>
      ctx.manager.credits.getUserCreditsInfo(target(ctx), ctx.query<z.infer<typeof CreditsInfoOptions>>()),
  }),
  adminRoute("GET", "/users/:userId/check", {
    operationId: "adminCheckAllowed",
    summary: "Whether a user may use a feature and/or spend an amount now",
    tags: admin,
    query: CheckOptions,
    response: CheckSchema,
    handle: check(target),
  }),
  adminRoute("GET", "/users/:userId/history", {
    operationId: "adminGetHistory",
    summary: "A user's journal",
    tags: admin,
    query: HistoryParams,
    response: HistoryPageSchema,
    handle: history(target),
  }),
  adminRoute("GET", "/users/:userId/expiring", {
    operationId: "adminGetExpiringCredits",
    summary: "A user's credits expiring within `days` days",
    tags: admin,
    query: ExpiringParams,
    response: ExpiringSchema,
    handle: expiring(target),
  }),
  adminRoute("GET", "/users/:userId/grants", {
    operationId: "adminGetGrants",
    summary: "A user's grants",
    tags: admin,
    query: GrantsQuery,
    response: GrantListSchema,
    handle: grants(target),
  }),
  adminRoute("GET", "/users/:userId/audit", {
    operationId: "adminAudit",
    summary:
      "Replay a user's journal (from its latest checkpoint, or from=genesis) and check it against the stored state",
    tags: admin,
    query: AuditOptions,
    response: AuditSchema,
    handle: (ctx) => ctx.manager.credits.audit(target(ctx), ctx.query<z.infer<typeof AuditOptions>>()),
  }),
  adminRoute("POST", "/users/:userId/add", {
    operationId: "adminAddCredits",
    summary: "Add credits to a user (a new grant)",
    tags: admin,
    body: AddBody,
    idempotent: true,
    status: 201,
    response: JournalEntry,
    errors: [e.conflict, e.rule],
    handle: async (ctx) => {
      const { amount, ...options } = await ctx.body<z.infer<typeof AddBody>>();
      return ctx.manager.credits.addCredits(target(ctx), amount, withKey(options, ctx));
    },
  }),
  adminRoute("POST", "/users/:userId/deduct", {
    operationId: "adminDeductCredits",
    summary:
      "Deduct credits from a user (`afterService: true` for usage already delivered; `occurredAt` for usage recorded late)",
    tags: admin,
    body: DeductBody,
    idempotent: true,
    response: JournalEntry,
    errors: [e.payment, e.conflict, e.limit, e.rule],
    handle: async (ctx) => {
      const { amount, afterService, ...options } = await ctx.body<z.infer<typeof DeductBody>>();
      const user = target(ctx);
      const o = withKey(options, ctx);
      return afterService
        ? ctx.manager.credits.deductCreditsAfterService(user, amount, o)
        : ctx.manager.credits.deductCredits(user, amount, o);
    },
  }),
  adminRoute("POST", "/users/:userId/entries/:entryId/reverse", {
    operationId: "adminReverseCharge",
    summary:
      "Give back a charge, in whole or `amount`, to the grants it drew from (their expiry and cost basis unchanged)",
    description:
      "`reason` is required and recorded as the `reverse` entry's description. The charge's reversals never sum past it (422); the same key answers the first reversal again. docs/corrections.md.",
    tags: admin,
    body: ReverseChargeOptions,
    idempotent: true,
    status: 201,
    response: JournalEntry,
    errors: [e.notFound, e.conflict, e.rule],
    handle: async (ctx) => {
      const options = await ctx.body<z.infer<typeof ReverseChargeOptions>>();
      return ctx.manager.credits.reverseCharge(target(ctx), entryOf(ctx), withKey(options, ctx));
    },
  }),
  adminRoute("GET", "/users/:userId/entries/:entryId/reversals", {
    operationId: "adminGetReversals",
    summary: "A charge, its reversals, what was given back of it and what is left to give back",
    tags: admin,
    response: ReversalsSchema,
    errors: [e.notFound, e.rule],
    handle: (ctx) => ctx.manager.credits.getReversals(target(ctx), entryOf(ctx)),
  }),
  adminRoute("POST", "/users/:userId/reservations", {
    operationId: "adminCreateReservation",
    summary: "Hold credits of a user",
    tags: admin,
    body: ReserveBody,
    idempotent: true,
    status: 201,
    response: Reservation,
    errors: [e.payment, e.conflict, e.limit],
    handle: reserve(target),
  }),
  adminRoute("POST", "/users/:userId/customer-token", {
    operationId: "adminCreateCustomerToken",
    summary: "A short-lived token that reads this user's balance, grants and usage only (for the customer page)",
    description:
      "Signed with the service's customer token secret; `spender` narrows the usage it reads to that spender's; `ttlSeconds` is at most 86,400. 501 when customer tokens are off (docs/usage.md, \"For your customers\").",
    tags: admin,
    body: CustomerTokenOptions,
    status: 201,
    response: CustomerTokenSchema,
    errors: [501],
    handle: async (ctx) => {
      const options = await ctx.body<z.infer<typeof CustomerTokenOptions>>();
      const user = target(ctx);
      if (!customerTokensOn(ctx.manager.credits))
        throw new HttpError(501, "CUSTOMER_TOKENS_OFF", "Customer tokens are off: no customer token secret is set.");
      const t = await ctx.manager.credits.customerToken(user, options);
      return { token: t.token, expiresAt: t.expiresAt.toISOString() };
    },
  }),
  adminRoute("POST", "/grants/:grantId/void", {
    operationId: "adminVoidGrant",
    summary: "Remove what is left of a grant (refunds, disputes)",
    tags: admin,
    // `userId`, the grant's owner when the admin knows it, routes the void to that account (one
    // shard on a distributed store); another user's grant is a 404.
    body: VoidGrantOptions,
    idempotent: true,
    response: JournalEntry,
    errors: [e.notFound, e.conflict],
    handle: async (ctx) => {
      const options = await ctx.body<z.infer<typeof VoidGrantOptions>>();
      return ctx.manager.credits.voidGrant(parse(EntityId, ctx.params.grantId, "path.grantId"), withKey(options, ctx));
    },
  }),
];
