/**
 * `credit-management/http`: the credit API as a Fetch handler, its node:http/Express/Fastify
 * adapter, and metering for Fetch-style and node apps. No web framework is a dependency.
 */
export { createCreditHandler, type CreditHandler, type CreditHandlerOptions } from "./handler.js";
export { toNodeHandler, type FetchHandler, type NodeHandler } from "./node.js";
export {
  creditMetering,
  creditMeteringMiddleware,
  type CreditMeteringMiddlewareOptions,
  type CreditMeteringOptions,
  type LlmMeteringOptions,
  type MeteringLocals,
} from "../modules/metering/routes.js";
export {
  fastifyCreditMetering,
  type FastifyCreditMeteringOptions,
  type FastifyCreditMeteringPlugin,
  type FastifyInstanceLike,
  type FastifyRequestLike,
} from "../modules/metering/routes-fastify.js";
export type { MeteringOptionsBase } from "../modules/metering/routes-common.js";
export type { CoreErrorCode, CreditErrorCode } from "../errors.js";
export type { OpenApiOptions } from "./openapi.js";
export {
  HttpError,
  json,
  type Authenticate,
  type HttpMethod,
  type Identity,
  type RouteContext,
  type RouteDefinition,
} from "./router.js";
export type { SelfServiceSubscriptions } from "./subscription-routes.js";
export type { SelfServiceAutoTopUp } from "../modules/billing/routes-auto-top-up.js";
