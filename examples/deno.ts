/**
 * The credit API and a metered route under Deno.serve:
 *   deno run --allow-env --allow-sys=hostname --allow-net examples/deno.ts
 *
 * The imports are bare names: from a project with a package.json (`npm install credit-management`)
 * or with `"imports": { "credit-management": "npm:credit-management@^0.1" }` in deno.json; or write
 * `npm:credit-management` in the imports themselves. The permissions are explained in
 * docs/runtimes.md. Memory by default; PostgreSQL when CREDIT_PG_URL is set (add `pg`). The
 * credit API is at /credits and /admin/credits; /api/summarize is metered per request (a JSON
 * answer charged what the handler recorded) and /api/chat streams server-sent events billed when
 * the stream ends. Identity: `Authorization: Bearer <userId>`; `admin` is an admin. With no PORT
 * set it runs a short demo against itself over HTTP and exits (CI runs it: docs/runtimes.md).
 */
import { createCreditManager, createDbManagerFromEnv, recordUsage } from "credit-management";
import { createCreditHandler, creditMetering, type Identity } from "credit-management/http";

// Deno's own types declare this (`deno check`); the one call used here is declared so the example
// also type-checks in this repository, under Node's types.
declare const Deno: {
  version: { deno: string };
  serve(
    options: { port: number; hostname: string; onListen?: () => void },
    handler: (request: Request) => Promise<Response>,
  ): { addr: { port: number }; shutdown(): Promise<void> };
};

const manager = await createCreditManager({ db: await createDbManagerFromEnv() });
await manager.credits.addCredits("user-1", 1_000);

const identify = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token === "admin" ? { userId: "admin", admin: true } : { userId: token };
};
const credits = createCreditHandler(manager, { authenticate: identify });

async function app(request: Request): Promise<Response> {
  const { pathname } = new URL(request.url);
  if (credits.basePaths.some((base) => pathname.startsWith(`${base}/`))) return credits(request);
  if (pathname === "/api/summarize") {
    recordUsage({ amount: 12, model: "tiny-1", provider: "example" });
    return Response.json({ summary: "Credits are counted per request." });
  }
  if (pathname === "/api/chat") {
    const words = ["Credits", "are", "counted", "per", "token."];
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const word = words.shift();
        if (word === undefined) return controller.close();
        await new Promise((r) => setTimeout(r, 5));
        recordUsage({ amount: 3, model: "tiny-1", provider: "example" }); // 3 credits a streamed token
        controller.enqueue(new TextEncoder().encode(`data: ${word}\n\n`));
      },
    });
    return new Response(body, { headers: { "content-type": "text/event-stream" } });
  }
  return new Response("not found", { status: 404 });
}

const metered = creditMetering({
  credits: manager.credits,
  authenticate: identify,
  pathPrefix: "/api",
  defaultEstimate: 50,
  // Headers are gone when a stream ends: the charged figure arrives here.
  onSettled: (o, request) =>
    console.log(`[meter] ${o.userId} ${new URL(request.url).pathname}: held ${o.estimate}, ${o.outcome} ${o.charged}`),
})(app);

const server = Deno.serve({ port: Number(process.env.PORT ?? 0), hostname: "127.0.0.1", onListen() {} }, metered);
const base = `http://127.0.0.1:${server.addr.port}`;
console.log(`Deno ${Deno.version.deno}: listening on ${base}`);

if (!process.env.PORT) {
  const auth = { authorization: "Bearer user-1" };
  const json = await fetch(`${base}/api/summarize`, { method: "POST", headers: auth });
  console.log(`POST /api/summarize: ${json.status}, X-Credits-Deducted: ${json.headers.get("x-credits-deducted")}`);
  await json.text();
  const sse = await fetch(`${base}/api/chat`, { method: "POST", headers: auth });
  console.log(`POST /api/chat (SSE): ${sse.status}, ${JSON.stringify(await sse.text())}`);
  const balance = await fetch(`${base}/credits/balance`, { headers: auth });
  console.log(
    `GET /credits/balance: ${balance.status}, balance ${((await balance.json()) as { balance: number }).balance}`,
  );
  const stranger = await fetch(`${base}/api/summarize`, {
    method: "POST",
    headers: { authorization: "Bearer nobody" },
  });
  console.log(`POST /api/summarize (no credits): ${stranger.status}`);
  await stranger.text();
  await server.shutdown();
  await manager.close();
}
