/**
 * `credit-management/console`: an operator's console in the browser — accounts, their journal,
 * grants and holds, subscriptions, payments, promos, the outbox, the jobs and LLM usage, with a
 * few admin actions — as one Fetch handler that Express, Fastify, Hono and node:http mount like
 * the credit handler (docs/console.md).
 */
export {
  createConsoleHandler,
  type ConsoleAccess,
  type ConsoleHandler,
  type ConsoleHandlerOptions,
  type ConsoleRole,
} from "./handler.js";
export { toNodeHandler } from "../http/node.js";
