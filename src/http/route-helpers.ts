import { parse, UserId } from "../core/models/index.js";
import type { HttpMethod, RouteContext, RouteDefinition } from "./router.js";

/** What a built-in route declares besides where it is and who may call it. */
export type RouteFields = Omit<RouteDefinition, "method" | "base" | "path" | "access">;

/** A route on the caller's own account: under the user base path, for any authenticated caller. */
export const userRoute = (method: HttpMethod, path: string, fields: RouteFields): RouteDefinition => ({
  method,
  base: "user",
  path,
  access: "user",
  ...fields,
});

/** A route on any account: under the admin base path, for admins only. */
export const adminRoute = (method: HttpMethod, path: string, fields: RouteFields): RouteDefinition => ({
  method,
  base: "admin",
  path,
  access: "admin",
  ...fields,
});

/** A route at its own path, under no base path (health, metrics, webhooks), with its own access. */
export const rootRoute = (
  method: HttpMethod,
  path: string,
  access: RouteDefinition["access"],
  fields: RouteFields,
): RouteDefinition => ({
  method,
  base: "root",
  path,
  access,
  ...fields,
});

/** The caller's account, on a route that needs identity. */
export const self = (ctx: RouteContext): string => (ctx.identity as { userId: string }).userId;

/** The account an admin route names in its path (`:userId`). */
export const target = (ctx: RouteContext): string => parse(UserId, ctx.params.userId, "path.userId");

/** The options with the request's idempotency key, when it has one (the header's or the body's). */
export const withKey = <T extends object>(options: T, ctx: RouteContext): T =>
  ctx.idempotencyKey === undefined ? options : { ...options, idempotencyKey: ctx.idempotencyKey };
