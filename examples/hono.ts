/**
 * An AI-style streaming endpoint on Hono, metered per request:   npx tsx examples/hono.ts
 *
 * creditMetering() wraps the app's fetch handler: every /api request holds an estimate, the
 * handler records usage as the "model" streams tokens (server-sent events), and the hold is
 * committed when the stream ends (or released if the client goes away). The credit API is mounted
 * at /credits and /admin/credits. Identity: `Authorization: Bearer <userId>`; `admin` is an admin.
 * With no PORT set it runs a short demo against itself and exits.
 */
import { serve } from "@hono/node-server";
import { Hono } from "hono";
import { streamSSE } from "hono/streaming";
import { createCreditManager, recordUsage } from "credit-management";
import { createCreditHandler, creditMetering, type Identity } from "credit-management/http";

const manager = await createCreditManager();
await manager.credits.addCredits("user-1", 1_000);

const identify = (request: Request): Identity | null => {
  const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
  if (!token) return null;
  return token === "admin" ? { userId: "admin", admin: true } : { userId: token };
};

const credits = createCreditHandler(manager, { authenticate: identify });
const app = new Hono();
app.all("/credits/*", (c) => credits(c.req.raw));
app.all("/admin/credits/*", (c) => credits(c.req.raw));

app.post("/api/chat", (c) =>
  streamSSE(c, async (stream) => {
    for (const word of ["Credits", "are", "counted", "per", "token."]) {
      await new Promise((r) => setTimeout(r, 10));
      recordUsage({ amount: 3, model: "tiny-1", provider: "example" }); // 3 credits per streamed token
      await stream.writeSSE({ data: word });
    }
  }),
);

const metered = creditMetering({
  credits: manager.credits,
  authenticate: identify,
  pathPrefix: "/api",
  defaultEstimate: 50,
  maxEstimate: 2_000,
  // Headers are gone when a stream ends: the charged figure arrives here.
  onSettled: (o) => console.log(`  [meter] ${o.userId}: held ${o.estimate}, ${o.outcome} ${o.charged}`),
})(app.fetch);

const server = serve({ fetch: metered, port: Number(process.env.PORT ?? 0), hostname: "127.0.0.1" }, async (info) => {
  const base = `http://127.0.0.1:${info.port}`;
  console.log(`listening on ${base}`);
  if (process.env.PORT) return;
  const res = await fetch(`${base}/api/chat`, { method: "POST", headers: { authorization: "Bearer user-1" } });
  console.log("POST /api/chat (SSE):", JSON.stringify(await res.text()));
  const balance = await fetch(`${base}/credits/balance`, { headers: { authorization: "Bearer user-1" } });
  console.log("GET /credits/balance", await balance.json());
  server.close();
  await manager.close();
});
