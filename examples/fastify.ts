/**
 * An AI-style endpoint on Fastify:   npx tsx examples/fastify.ts
 *
 * - The credit API runs through toNodeHandler in an `onRequest` hook (before Fastify reads the body,
 *   so the raw bytes reach the handler) and `reply.hijack()`.
 * - Metering: the `fastifyCreditMetering` plugin for /api/chat, inside Fastify's lifecycle: the hold in
 *   `onRequest`, the usage context around the handler, the commit and X-Credits-Deducted in `onSend`
 *   (or use `manager.credits.meter()` inside a route, as /api/summary does, to set it yourself).
 * Identity: `Authorization: Bearer <userId>`; `admin` is an admin. With no PORT set it runs a short
 * demo against itself and exits.
 */
import Fastify from "fastify";
import { createCreditManager, recordUsage } from "credit-management";
import { createCreditHandler, fastifyCreditMetering, toNodeHandler, type Identity } from "credit-management/http";

const manager = await createCreditManager();
await manager.credits.addCredits("user-1", 1_000);

const identify = (authorization: string | null | undefined): Identity | null => {
  const token = authorization?.replace(/^Bearer /, "");
  if (!token) return null;
  return token === "admin" ? { userId: "admin", admin: true } : { userId: token };
};

const credits = createCreditHandler(manager, { authenticate: (r) => identify(r.headers.get("authorization")) });
const creditsNode = toNodeHandler(credits);
const meter = fastifyCreditMetering({
  credits: manager.credits,
  authenticate: (request) => identify(request.headers.authorization),
  pathPrefix: "/api/chat",
  defaultEstimate: 100,
  maxEstimate: 4_000,
  usageKey: "usage.total_tokens",
  onSettled: (o) => console.log(`  [meter] ${o.userId}: held ${o.estimate}, ${o.outcome} ${o.charged}`),
});

const app = Fastify();
app.addHook("onRequest", async (request, reply) => {
  const path = request.url.split("?")[0] ?? "";
  if (credits.basePaths.some((b) => path === b || path.startsWith(`${b}/`))) {
    reply.hijack();
    await creditsNode(request.raw, reply.raw);
  }
});
await app.register(meter);

// Usage read from the JSON response (`usage.total_tokens`), as OpenAI-style APIs report it.
app.post("/api/chat", async (request) => {
  const prompt = String((request.body as { prompt?: string } | undefined)?.prompt ?? "");
  return { text: `echo: ${prompt}`, usage: { total_tokens: Math.ceil(prompt.length / 4) + 10 } };
});

// The core API inside a route: hold, record, commit — and set the header yourself.
app.post("/api/summary", async (request, reply) => {
  const user = identify(request.headers.authorization);
  if (!user) return reply.code(401).send({ error: { code: "UNAUTHORIZED", message: "Authentication required." } });
  let charged = 0;
  const text = await manager.credits.meter(
    user.userId,
    { estimate: 200, onSettled: (o) => (charged = o.charged) },
    async () => {
      recordUsage({ amount: 57, model: "tiny-1" });
      return "a short summary";
    },
  );
  return reply.header("x-credits-deducted", String(charged)).send({ text });
});

await app.listen({ port: Number(process.env.PORT ?? 0), host: "127.0.0.1" });
const address = app.server.address();
const base = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
console.log(`listening on ${base}`);
if (!process.env.PORT) {
  const auth = { authorization: "Bearer user-1", "content-type": "application/json" };
  const chat = await fetch(`${base}/api/chat`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ prompt: "hello there" }),
  });
  console.log("POST /api/chat", chat.status, await chat.json());
  const summary = await fetch(`${base}/api/summary`, { method: "POST", headers: auth, body: "{}" });
  console.log("POST /api/summary", summary.status, "X-Credits-Deducted:", summary.headers.get("x-credits-deducted"));
  await new Promise((r) => setTimeout(r, 20));
  console.log("GET /credits/balance", await (await fetch(`${base}/credits/balance`, { headers: auth })).json());
  await app.close();
  await manager.close();
}
