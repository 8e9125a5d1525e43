/**
 * One credit manager for the server process, made on first use. Memory by default; PostgreSQL when
 * CREDIT_PG_URL is set (`npm install pg`), as `createDbManagerFromEnv` reads it. Kept on
 * `globalThis`: route handlers are separate modules, and `next dev` reloads them, so a module
 * variable could hold several managers (several stores, in memory).
 */
import { createCreditManager, createDbManagerFromEnv, type CreditManager } from "credit-management";
import { createCreditHandler, type Identity } from "credit-management/http";

const shared = globalThis as { creditManager?: Promise<CreditManager> };

export function credits(): Promise<CreditManager> {
  shared.creditManager ??= (async () =>
    createCreditManager({
      db: await createDbManagerFromEnv(),
      // 1 credit = $0.000001: what the streamed route's model costs per token (docs/llm-metering.md).
      pricing: {
        version: "example-1",
        models: [{ model: "tiny-1", input: { credits: 1 }, output: { credits: 3 } }],
      },
    }))();
  return shared.creditManager;
}

/** Your authentication here. The example: `Authorization: Bearer <userId>`; `admin` is an admin. */
export function identify(request: Request): Identity | null {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token === "admin" ? { userId: "admin", admin: true } : { userId: token };
}

/** The credit API (docs/http.md): `/credits/*` for the caller's account, `/admin/credits/*` for admins. */
export async function creditApi(request: Request): Promise<Response> {
  return createCreditHandler(await credits(), { authenticate: identify })(request);
}
