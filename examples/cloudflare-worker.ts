/**
 * The credit API and metered routes on Cloudflare Workers, on PostgreSQL over TCP (`pg`).
 *
 *   npm install credit-management pg
 *   wrangler.jsonc: { "main": "cloudflare-worker.ts", "compatibility_date": "2026-11-01",
 *                     "compatibility_flags": ["nodejs_compat"] }   (docs/runtimes.md)
 *   wrangler secret put CREDIT_PG_URL
 *
 * `/credits` and `/admin/credits` are the credit API; `/api/summarize` is metered per request (a
 * JSON answer charged what the handler recorded) and `/api/chat` streams server-sent events billed
 * when the stream ends. Identity: `Authorization: Bearer <userId>`; `admin` is an admin (replace
 * with your own check). CI runs it in workerd against PostgreSQL over HTTP (docs/runtimes.md).
 *
 * A Worker may not use a socket opened by another request, so each request gets its manager and
 * its connection (closed when the response, streamed or not, has settled): put Hyperdrive (or
 * another pooler) in front of PostgreSQL so that connecting stays cheap.
 */
import { createCreditManager, recordUsage } from "credit-management";
import { createCreditHandler, creditMetering, type Identity } from "credit-management/http";
import { PostgresDbManager } from "credit-management/postgres";

export interface Env {
  /** postgres://… (a secret), or Hyperdrive's `connectionString`. */
  CREDIT_PG_URL: string;
  /** The schema of the store; default `public`. */
  CREDIT_PG_SCHEMA?: string;
}

interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
}

const identify = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token === "admin" ? { userId: "admin", admin: true } : { userId: token };
};

async function app(request: Request): Promise<Response> {
  const { pathname } = new URL(request.url);
  if (pathname === "/api/summarize") {
    recordUsage({ amount: 12, model: "tiny-1", provider: "example" });
    return Response.json({ summary: "Credits are counted per request." });
  }
  if (pathname === "/api/chat") {
    const words = ["Credits", "are", "counted", "per", "token."];
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        const word = words.shift();
        if (word === undefined) return controller.close();
        recordUsage({ amount: 3, model: "tiny-1", provider: "example" }); // 3 credits a streamed token
        controller.enqueue(new TextEncoder().encode(`data: ${word}\n\n`));
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }
  return new Response("not found", { status: 404 });
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const db = new PostgresDbManager({
      connectionString: env.CREDIT_PG_URL,
      schema: env.CREDIT_PG_SCHEMA,
      poolConfig: { max: 1 },
    });
    const manager = await createCreditManager({ db });
    let settle = (): void => undefined;
    const settled = new Promise<void>((resolve) => (settle = resolve));
    const credits = createCreditHandler(manager, { authenticate: identify });
    const metered = creditMetering({
      credits: manager.credits,
      authenticate: identify,
      pathPrefix: "/api",
      defaultEstimate: 50,
      // Headers are gone when a stream ends: the charged figure arrives here.
      onSettled: (o) => {
        console.log(`[meter] ${o.userId}: held ${o.estimate}, ${o.outcome} ${o.charged}`);
        settle();
      },
    })(app);
    const { pathname } = new URL(request.url);
    let response: Response | undefined;
    try {
      response = credits.basePaths.some((base) => pathname.startsWith(`${base}/`))
        ? await credits(request)
        : await metered(request);
    } finally {
      // A metered answer (2xx) settles when its body has been sent; anything else is done now.
      if (response === undefined || !pathname.startsWith("/api/") || response.status >= 300) settle();
      ctx.waitUntil(
        Promise.race([settled, new Promise((resolve) => setTimeout(resolve, 30_000))]).finally(() => manager.close()),
      );
    }
    return response;
  },
};
