/**
 * Metering middlewares (docs/metering.md): the Fetch middleware (`fetch.ts`), the node:http and
 * Express middleware (`node.ts`), what they and the Fastify plugin share (`common.ts`), and which
 * paths are metered (`paths.ts`).
 */
export {
  type CreditMeteringMiddlewareOptions,
  type CreditMeteringOptions,
  type LlmMeteringOptions,
  type MeteringLocals,
  type MeteringOptionsBase,
} from "./routes-common.js";
export { creditMetering } from "./routes-fetch.js";
export { creditMeteringMiddleware } from "./routes-node.js";
